//! What a customer wants done with their appointment: move it, keep it,
//! cancel it, or shift it by some minutes.

use super::*;

use crate::consent::keywords::normalize;

/// How far a customer moves what they have, if they say so in hours or
/// minutes: "push it back an hour" is +60, "can we do 30 minutes earlier"
/// is -30, "an hour later" is +60. `None` without an amount and a
/// direction.
pub fn shift_minutes(text: &str) -> Option<i64> {
    let w = normalize(text);
    let mut amount: Option<i64> = None;
    for (i, x) in w.iter().enumerate() {
        let unit = match x.as_str() {
            "hour" | "hours" | "hr" | "hrs" => 60,
            "minutes" | "minute" | "mins" | "min" => 1,
            "half" if w.get(i + 1).is_some_and(|n| n == "hour") => {
                amount = Some(30);
                continue;
            }
            _ => continue,
        };
        if amount.is_some() {
            continue;
        }
        let n = i.checked_sub(1).map(|p| w[p].as_str());
        let half = i >= 2 && w[i - 2] == "half";
        let count: i64 = match n {
            Some("a" | "an") if half && unit == 60 => {
                amount = Some(30);
                continue;
            }
            Some("a" | "an" | "one") => 1,
            Some("two") => 2,
            Some("three") => 3,
            Some(d) if d.parse::<i64>().is_ok() => d.parse().expect("checked"),
            Some("half") => {
                amount = Some(30);
                continue;
            }
            _ => continue,
        };
        amount = Some(count * unit);
    }
    let amount = amount.filter(|a| *a > 0 && *a <= 12 * 60)?;
    let later = w
        .iter()
        .any(|x| matches!(x.as_str(), "back" | "later" | "after"));
    let earlier = w.iter().any(|x| {
        matches!(
            x.as_str(),
            "earlier" | "forward" | "sooner" | "before" | "up"
        )
    });
    match (later, earlier) {
        (true, false) => Some(amount),
        (false, true) => Some(-amount),
        _ => None,
    }
}

/// "never mind", "keep it", "I'll keep my wednesday appointment": the
/// customer drops a change and keeps what they have.
pub fn keeps(text: &str) -> bool {
    let w = crate::consent::keywords::normalize(text);
    let has = |phrase: &[&str]| w.windows(phrase.len()).any(|x| x == phrase);
    w.iter()
        .any(|x| matches!(x.as_str(), "keep" | "nevermind" | "nvm"))
        || has(&["never", "mind"])
        || has(&["forget", "it"])
        || has(&["leave", "it"])
}

/// What a customer asks about the appointment they have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppointmentAsk {
    /// Another time: "move", "push it back", "can we do friday instead", "R".
    Reschedule,
    /// Call it off: "cancel my appointment", "I can't make it".
    Cancel,
    /// "When is my appointment?"
    When,
}

/// Reads `text` as a request about an existing appointment, if it is one.
/// Phrases are matched on whole words after `normalize` (apostrophes
/// vanish: "can't" is "cant").
pub fn appointment_ask(text: &str) -> Option<AppointmentAsk> {
    let w = crate::consent::keywords::normalize(text);
    let has = |phrase: &[&str]| w.windows(phrase.len()).any(|x| x == phrase);
    let any = |phrases: &[&[&str]]| phrases.iter().any(|p| has(p));
    if w.len() == 1 && matches!(w[0].as_str(), "r" | "reschedule") {
        return Some(AppointmentAsk::Reschedule);
    }
    // A question about when comes first: "when is my appointment, I might
    // need to move it" asks; the next message moves.
    let asks_when = any(&[
        &["when", "is", "my"],
        &["whens", "my"],
        &["what", "time", "is", "my"],
        &["what", "day", "is", "my"],
        &["when", "am", "i", "booked"],
        &["when", "am", "i", "scheduled"],
        &["when", "was", "my"],
        &["do", "i", "have", "an", "appointment"],
        &["do", "i", "have", "an", "appt"],
        &["do", "i", "have", "something"],
        &["do", "i", "have", "anything"],
        &["remind", "me", "when"],
        &["remind", "me", "what"],
        &["forgot", "when"],
        &["forgot", "what"],
        &["what", "time", "should", "i"],
        &["what", "time", "do", "i"],
        &["what", "date"],
        &["what", "day", "was"],
        &["what", "day", "am", "i"],
        &["what", "day", "is", "it"],
        &["resend", "the", "time"],
        &["is", "my", "appt"],
        &["is", "my", "appointment"],
        &["whens", "my"],
        &["when", "do", "i", "come"],
    ]) || (w.len() <= 8
        && has(&["is", "it"])
        && w.iter().any(|x| x == "or")
        && w.iter().filter(|x| weekday(x).is_some()).count() >= 2);
    if asks_when {
        return Some(AppointmentAsk::When);
    }
    let cancels = any(&[
        &["cancel"],
        &["cancel", "it"],
        &["call", "it", "off"],
        &["cant", "make", "it"],
        &["cannot", "make", "it"],
        &["can", "not", "make", "it"],
        &["wont", "make", "it"],
        &["wont", "be", "able", "to", "make"],
        &["not", "going", "to", "make", "it"],
        &["not", "gonna", "make", "it"],
        &["cant", "come"],
        &["cant", "attend"],
        &["wont", "be", "coming"],
        &["no", "longer", "need"],
        &["dont", "need", "the", "appointment"],
        &["dont", "need", "the", "appt"],
        &["wont", "be", "able", "to", "come"],
        &["not", "coming"],
        &["call", "off"],
        &["scratch", "my"],
        &["take", "me", "off", "the", "schedule"],
        &["cant", "come", "in"],
        &["wont", "make"],
    ]) && !any(&[&["dont", "cancel"], &["not", "cancel"]]);
    if cancels && !w.iter().any(|x| x == "instead" || x == "reschedule") {
        return Some(AppointmentAsk::Cancel);
    }
    let moves = any(&[
        &["reschedule"],
        &["rebook"],
        &["move"],
        &["moving"],
        &["push", "it", "back"],
        &["push", "back"],
        &["push", "it"],
        &["bring", "it", "forward"],
        &["change", "my", "appointment"],
        &["change", "the", "appointment"],
        &["change", "the", "time"],
        &["change", "the", "day"],
        &["change", "it"],
        &["different", "time"],
        &["different", "day"],
        &["another", "time"],
        &["another", "day"],
        &["other", "time"],
        &["later", "time"],
        &["earlier", "time"],
        &["instead"],
        &["resched"],
        &["bump", "me"],
        &["bump", "it"],
        &["another", "date"],
        &["different", "date"],
        &["anything", "later"],
        &["anything", "earlier"],
        &["too", "early"],
        &["too", "late"],
        &["switch", "to"],
        &["swap", "to"],
    ]);
    (moves || shift_minutes(text).is_some()).then_some(AppointmentAsk::Reschedule)
}
