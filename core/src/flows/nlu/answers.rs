//! Answers to the bot's own questions: yes or no, a name, an email.

use crate::consent::keywords::normalize;

/// Yes, no, or neither.
pub fn yes_no(text: &str) -> Option<bool> {
    let w = normalize(text);
    if w.is_empty() && text.contains(['\u{1F44D}', '\u{1F44C}', '\u{2705}']) {
        // 👍, 👌, ✅
        return Some(true);
    }
    let first = w.first().map(String::as_str)?;
    const YES: &[&str] = &[
        "yes",
        "yeah",
        "yea",
        "ya",
        "yah",
        "yess",
        "yesss",
        "yep",
        "yup",
        "sure",
        "ok",
        "okay",
        "correct",
        "right",
        "confirm",
        "confirmed",
        "absolutely",
        "definitely",
        "y",
        "c",
        "perfect",
        "sounds",
        "alright",
        "k",
        "kk",
    ];
    const NO: &[&str] = &["no", "nope", "nah", "n", "not", "cancel", "negative"];
    let has = |phrase: &[&str]| w.windows(phrase.len()).any(|x| x == phrase);
    // Refusals in other words come first: "that doesn't work for me".
    let refuses = has(&["doesnt", "work"])
        || has(&["dont", "work"])
        || has(&["wont", "work"])
        || has(&["rather", "not"])
        || has(&["not", "really"])
        || has(&["cant", "do", "that"])
        || has(&["no", "thanks"]);
    if w.len() <= 8 && refuses {
        return Some(false);
    }
    if w.len() <= 6 && YES.contains(&first) {
        return Some(true);
    }
    if w.len() <= 6 && NO.contains(&first) {
        return Some(false);
    }
    let agrees = has(&["go", "ahead"])
        || has(&["thats", "fine"])
        || has(&["that", "works"])
        || has(&["works", "for", "me"])
        || has(&["for", "sure"])
        || has(&["of", "course"])
        || has(&["please", "do"])
        || has(&["lets", "do", "it"])
        || has(&["book", "it"])
        || has(&["sounds", "good"])
        || has(&["sounds", "great"]);
    if w.len() <= 8 && agrees {
        return Some(true);
    }
    None
}

/// A name the customer gives ("I'm Jordan", "my name is Jordan Lee", "this
/// is Dana"); with `asked`, a short bare answer counts too.
pub fn name(text: &str, asked: bool) -> Option<String> {
    let lower = text.to_lowercase();
    let starts = [
        "my name is ",
        "my names ",
        "name's ",
        "i'm ",
        "i am ",
        "this is ",
        "it's ",
        "call me ",
    ];
    let mut rest = None;
    for s in starts {
        if let Some(i) = lower.find(s) {
            let before_ok = i == 0 || !lower.as_bytes()[i - 1].is_ascii_alphabetic();
            if before_ok {
                rest = Some(&text[i + s.len()..]);
                break;
            }
        }
    }
    let candidate = match rest {
        Some(r) => r,
        None if asked => text,
        None => return None,
    };
    // A name ends with its sentence.
    let candidate = candidate
        .split(['.', ',', '!', '?', ';', '\n'])
        .next()
        .unwrap_or("");
    let words: Vec<&str> = candidate
        .split(|c: char| !(c.is_alphabetic() || c == '-' || c == '\''))
        .filter(|w| !w.is_empty())
        .take_while(|w| {
            // Names are capitalized when introduced in a sentence.
            rest.is_none() || w.chars().next().is_some_and(char::is_uppercase)
        })
        .take(3)
        .collect();
    const NOT_NAMES: &[&str] = &[
        "looking",
        "interested",
        "calling",
        "trying",
        "here",
        "good",
        "fine",
        "not",
        "just",
        "available",
        "free",
        "sorry",
    ];
    if words.is_empty()
        || words
            .iter()
            .any(|w| NOT_NAMES.contains(&w.to_lowercase().as_str()))
        || (asked && rest.is_none() && candidate.split_whitespace().count() > 3)
    {
        return None;
    }
    let cap = |w: &&str| {
        let mut c = w.chars();
        match c.next() {
            Some(f) => f.to_uppercase().chain(c).collect::<String>(),
            None => String::new(),
        }
    };
    Some(words.iter().map(cap).collect::<Vec<_>>().join(" "))
}

/// The first email address in `text`.
pub fn email(text: &str) -> Option<String> {
    text.split(|c: char| c.is_whitespace() || c == ',' || c == ';' || c == '<' || c == '>')
        .map(|t| t.trim_matches(|c: char| !c.is_alphanumeric()))
        .find(|t| {
            t.split_once('@').is_some_and(|(l, d)| {
                !l.is_empty() && d.contains('.') && !d.starts_with('.') && !d.ends_with('.')
            })
        })
        .map(str::to_lowercase)
}
