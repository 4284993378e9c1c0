//! Built-in understanding, with no external service: intents by keywords
//! and phrase similarity, and slots: dates and times in the customer's
//! time zone ("next Tuesday afternoon", "tomorrow at 3"), yes/no, names,
//! emails and phone numbers. Pure and synchronous.

use chrono::{Datelike, Duration, LocalResult, NaiveDate, NaiveTime, TimeZone, Timelike, Weekday};
use chrono_tz::Tz;
use threadline_protocol::Timestamp;

use crate::consent::keywords::normalize;

/// Words that carry no intent.
const STOPWORDS: &[&str] = &[
    "a", "an", "the", "i", "im", "me", "my", "to", "for", "of", "and", "or", "is", "are", "am",
    "be", "it", "its", "this", "that", "in", "on", "at", "you", "your", "we", "our", "do", "can",
    "could", "would", "will", "please", "hi", "hello", "hey", "so", "just", "with", "some", "any",
    "like", "want", "need", "get", "id", "ill", "there", "what", "how", "which", "u", "ur", "r",
    "guys", "does", "did", "have", "got", "know", "tell", "pls", "plz", "thx", "ya", "yall", "hey",
    "here", "was", "were", "has", "been", "if", "just",
];

/// An intent the flow file defines.
#[derive(Debug, Clone)]
pub struct IntentModel {
    pub name: String,
    /// Example phrases, normalized to content words.
    examples: Vec<Vec<String>>,
    /// Keywords or phrases (normalized words) that mark the intent.
    keywords: Vec<Vec<String>>,
    /// The one-word keywords as written (normalized, not stemmed), long
    /// enough to be matched with a typo ("apointment", "insurence").
    fuzzy: Vec<String>,
}

fn content_words(text: &str) -> Vec<String> {
    let mut w: Vec<String> = normalize(text)
        .into_iter()
        .filter(|w| !STOPWORDS.contains(&w.as_str()))
        .map(|w| stem(&w))
        .collect();
    w.sort();
    w.dedup();
    w
}

/// A light stemmer: plural and -ing endings, so "cleanings" meets "cleaning".
fn stem(w: &str) -> String {
    let w = w.strip_suffix('s').filter(|s| s.len() >= 3).unwrap_or(w);
    let w = w.strip_suffix("ing").filter(|s| s.len() >= 3).unwrap_or(w);
    w.to_owned()
}

impl IntentModel {
    pub fn new(name: &str, examples: &[String], keywords: &[String]) -> IntentModel {
        IntentModel {
            name: name.to_owned(),
            examples: examples.iter().map(|e| content_words(e)).collect(),
            keywords: keywords
                .iter()
                .map(|k| normalize(k).iter().map(|w| stem(w)).collect::<Vec<_>>())
                .filter(|k: &Vec<String>| !k.is_empty())
                .collect(),
            fuzzy: keywords
                .iter()
                .map(|k| normalize(k))
                .filter(|k| k.len() == 1 && k[0].chars().count() >= 6)
                .map(|mut k| k.remove(0))
                .collect(),
        }
    }
}

/// The best intent for `text` and how sure (0..1); `None` below `floor`.
pub fn classify<'a>(models: &'a [IntentModel], text: &str, floor: f32) -> Option<(&'a str, f32)> {
    classify_words(models, &normalize(text), floor)
}

/// `classify` of a message already normalized (`normalize`).
pub fn classify_words<'a>(
    models: &'a [IntentModel],
    raw: &[String],
    floor: f32,
) -> Option<(&'a str, f32)> {
    let all: Vec<String> = raw.iter().map(|w| stem(w)).collect();
    let words = {
        let mut w: Vec<String> = all
            .iter()
            .filter(|w| !STOPWORDS.contains(&w.as_str()))
            .cloned()
            .collect();
        w.sort();
        w.dedup();
        w
    };
    let mut best: Option<(&str, f32)> = None;
    for m in models {
        let mut score = 0f32;
        for k in &m.keywords {
            if all.windows(k.len()).any(|win| win == k.as_slice()) {
                score = score.max(0.85);
            }
        }

        for ex in &m.examples {
            if ex.is_empty() || words.is_empty() {
                continue;
            }
            let common = ex.iter().filter(|w| words.binary_search(w).is_ok()).count();
            // Dice coefficient over content words.
            let s = 2.0 * common as f32 / (ex.len() + words.len()) as f32;
            score = score.max(s);
        }
        if best.is_none_or(|(_, b)| score > b) {
            best = Some((m.name.as_str(), score));
        }
    }
    // Nothing certain: a keyword with a typo ("apointment", "insurence"),
    // one letter off (two in long words), the first letter right.
    if best.is_none_or(|(_, s)| s < 0.75) {
        let near = |k: &str| {
            let limit = if k.len() >= 9 { 2 } else { 1 };
            raw.iter().any(|w| {
                w.len() >= 5
                    && w.as_bytes()[0] == k.as_bytes()[0]
                    && w.len().abs_diff(k.len()) <= limit
                    && strsim::osa_distance(w, k) <= limit
            })
        };
        if let Some(m) = models.iter().find(|m| m.fuzzy.iter().any(|k| near(k))) {
            best = Some((m.name.as_str(), 0.75));
        }
    }
    best.filter(|(_, s)| *s >= floor)
}

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

/// A moment the customer named, in their zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct When {
    pub at: Timestamp,
    /// A time of day was given (else `at` is the day's start of business).
    pub has_time: bool,
    /// A day was given (else it is today or the next day with that time).
    pub has_day: bool,
}

const WEEKDAYS: [(&str, Weekday); 14] = [
    ("monday", Weekday::Mon),
    ("tuesday", Weekday::Tue),
    ("wednesday", Weekday::Wed),
    ("thursday", Weekday::Thu),
    ("friday", Weekday::Fri),
    ("saturday", Weekday::Sat),
    ("sunday", Weekday::Sun),
    ("mon", Weekday::Mon),
    ("tue", Weekday::Tue),
    ("tues", Weekday::Tue),
    ("wed", Weekday::Wed),
    ("thu", Weekday::Thu),
    ("thurs", Weekday::Thu),
    ("fri", Weekday::Fri),
];

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];

fn weekday(w: &str) -> Option<Weekday> {
    match w {
        "sat" => Some(Weekday::Sat),
        "sun" => Some(Weekday::Sun),
        _ => WEEKDAYS.iter().find(|(n, _)| *n == w).map(|(_, d)| *d),
    }
}

fn month(w: &str) -> Option<u32> {
    if w.len() < 3 {
        return None;
    }
    MONTHS
        .iter()
        .position(|m| w.starts_with(m) && (w.len() == 3 || "january february march april may june july august september october november december".split(' ').any(|full| full == w) || w == "sept"))
        .map(|i| i as u32 + 1)
}

/// Resolves a local date and time in `tz`: a time that does not exist
/// (spring forward) moves past the gap; one that exists twice (fall back)
/// is the first.
pub fn local(tz: Tz, d: NaiveDate, t: NaiveTime) -> Timestamp {
    let mut dt = d.and_time(t);
    for _ in 0..4 {
        match tz.from_local_datetime(&dt) {
            LocalResult::Single(x) => return Timestamp(x.timestamp_millis()),
            LocalResult::Ambiguous(a, _) => return Timestamp(a.timestamp_millis()),
            LocalResult::None => dt += Duration::minutes(30),
        }
    }
    Timestamp(tz.from_utc_datetime(&dt).timestamp_millis())
}

/// Words for date and time reading: lowercase, split on anything but
/// letters, digits, ':' and '/' (so "3:30pm" and "3/14" stay whole).
/// Casual spellings become the usual word ("2morrow" is "tomorrow"), a few
/// phrases one token ("day after tomorrow", "o'clock", "first thing",
/// "end of the day"), and number words digits ("two thirty" is "2:30").
fn time_words(text: &str) -> Vec<String> {
    let mut lower = text.to_lowercase();
    if lower.contains(['@', '\'', '\u{2019}']) {
        lower = lower.replace('@', " at ").replace(['\'', '\u{2019}'], "");
    }
    let raw: Vec<String> = lower
        .split(|c: char| !(c.is_alphanumeric() || c == ':' || c == '/'))
        .map(|w| w.trim_matches([':', '/']))
        .filter(|w| !w.is_empty())
        .map(|w| match w {
            "2morrow" | "2moro" | "tomorow" | "tmw" | "tomm" | "tmrow" | "2mrw" | "tommorow"
            | "tommorrow" => "tomorrow".to_owned(),
            "thurs" | "thur" | "thu" => "thursday".to_owned(),
            "tues" | "tue" => "tuesday".to_owned(),
            "weds" | "wed" => "wednesday".to_owned(),
            "noonish" => "noon".to_owned(),
            other => other.to_owned(),
        })
        .collect();
    let number = |w: &str| -> Option<u32> {
        Some(match w {
            "one" => 1,
            "two" => 2,
            "three" => 3,
            "four" => 4,
            "five" => 5,
            "six" => 6,
            "seven" => 7,
            "eight" => 8,
            "nine" => 9,
            "ten" => 10,
            "eleven" => 11,
            "twelve" => 12,
            _ => return None,
        })
    };
    let minutes = |w: &str| -> Option<u32> {
        Some(match w {
            "fifteen" => 15,
            "thirty" => 30,
            "forty" | "fortyfive" => 45,
            _ => return None,
        })
    };
    let mut out: Vec<String> = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let w = raw[i].as_str();
        let at = |k: usize| raw.get(i + k).map(String::as_str);
        let phrase = |p: &[&str]| p.iter().enumerate().all(|(k, x)| at(k) == Some(*x));
        if phrase(&["day", "after", "tomorrow"]) || phrase(&["day", "after", "tmrw"]) {
            out.push("dayaftertomorrow".into());
            i += 3;
        } else if phrase(&["o", "clock"]) {
            out.push("oclock".into());
            i += 2;
        } else if phrase(&["first", "thing"]) {
            out.push("firstthing".into());
            i += 2;
        } else if phrase(&["end", "of", "the", "day"]) {
            out.push("endofday".into());
            i += 4;
        } else if phrase(&["end", "of", "day"]) {
            out.push("endofday".into());
            i += 3;
        } else if let Some(h) = number(w) {
            // "two thirty", "four forty five", "four o'clock", "at four".
            match at(1).and_then(minutes) {
                Some(m) => {
                    out.push(format!("{h}:{m:02}"));
                    i += if at(1) == Some("forty") && at(2) == Some("five") {
                        3
                    } else {
                        2
                    };
                }
                None => {
                    out.push(h.to_string());
                    i += 1;
                }
            }
        } else {
            out.push(w.to_owned());
            i += 1;
        }
    }
    out
}

/// Nouns a small number counts rather than tells the time of ("2 kids",
/// "3 fillings", "the 3rd floor").
const COUNTED: &[&str] = &[
    "kid", "kids", "child", "children", "people", "person", "of", "fillings", "filling", "teeth",
    "tooth", "crowns", "crown", "floor", "years", "year", "yrs", "weeks", "week", "days", "day",
    "months", "month", "minutes", "mins", "hours", "hrs", "times", "visits", "x", "percent",
    "dollars", "bucks", "grade", "st", "street", "ave", "avenue", "rd", "road", "blocks", "miles",
];

/// Finds a date and/or time in `text`, relative to `now` in `tz`.
pub fn when(text: &str, now: Timestamp, tz: Tz) -> Option<When> {
    let words = time_words(text);
    let today = tz.timestamp_millis_opt(now.0).single()?.date_naive();
    let mut day: Option<NaiveDate> = None;
    let mut time: Option<NaiveTime> = None;
    let mut part: Option<u32> = None; // hour implied by morning/afternoon/evening
    let mut pm_hint: Option<bool> = None;
    let mut named_today = false;
    // A small number with nothing saying it is a time: one if the message
    // names a day or a part of it ("tmrw 9", "this afternoon maybe 3").
    let mut bare: Option<NaiveTime> = None;
    let mut i = 0;
    while i < words.len() {
        let w = words[i].as_str();
        let next = words.get(i + 1).map(String::as_str);
        match w {
            "today" | "tonight" => {
                day = Some(today);
                if w == "tonight" {
                    part = Some(19);
                    pm_hint = Some(true);
                }
            }
            "tomorrow" | "tmrw" | "tmr" => day = Some(today + Duration::days(1)),
            "dayaftertomorrow" => day = Some(today + Duration::days(2)),
            "firstthing" => {
                part = Some(9);
                pm_hint = Some(false);
            }
            "lunch" | "lunchtime" => {
                part = Some(12);
                pm_hint = Some(true);
            }
            "endofday" => {
                part = Some(16);
                pm_hint = Some(true);
            }
            // "half past 2", "quarter past 3", "quarter to 4".
            "half" | "quarter"
                if matches!(next, Some("past" | "to"))
                    && words
                        .get(i + 2)
                        .and_then(|n| n.parse::<u32>().ok())
                        .is_some_and(|h| (1..=12).contains(&h)) =>
            {
                let h: u32 = words[i + 2].parse().expect("checked");
                let (h, m) = match (w, next) {
                    ("half", Some("past")) => (h, 30),
                    ("quarter", Some("past")) => (h, 15),
                    ("quarter", _) => (if h == 1 { 12 } else { h - 1 }, 45),
                    _ => (h, 0),
                };
                time = NaiveTime::from_hms_opt(h, m, 0);
                i += 2;
            }
            // "in an hour", "in 2 hours", "in 30 minutes", "2 hrs from now".
            "in" if relative_minutes(&words[i + 1..]).is_some() => {
                let m = relative_minutes(&words[i + 1..]).expect("checked");
                let at = Timestamp(now.0 + m * 60_000);
                return Some(When {
                    at,
                    has_time: true,
                    has_day: false,
                });
            }
            _ if next == Some("from")
                && words.get(i + 2).map(String::as_str) == Some("now")
                && i > 0
                && relative_minutes(&words[i - 1..=i]).is_some() =>
            {
                let m = relative_minutes(&words[i - 1..=i]).expect("checked");
                return Some(When {
                    at: Timestamp(now.0 + m * 60_000),
                    has_time: true,
                    has_day: false,
                });
            }
            "morning" => {
                part = Some(9);
                pm_hint = Some(false);
            }
            "afternoon" => {
                part = Some(14);
                pm_hint = Some(true);
            }
            "evening" => {
                part = Some(18);
                pm_hint = Some(true);
            }
            "noon" | "midday" => time = NaiveTime::from_hms_opt(12, 0, 0),
            "am" | "pm" if time.is_some() => {
                let t = time.expect("checked");
                let h = t.hour() % 12 + if w == "pm" { 12 } else { 0 };
                time = t.with_hour(h);
                pm_hint = Some(w == "pm");
            }
            "next" | "this" if next.and_then(weekday).is_some() => {
                let wd = weekday(next.expect("checked")).expect("checked");
                day = Some(if w == "next" {
                    // "Next Wednesday" is Wednesday of next week (weeks
                    // run Monday to Sunday): said on a Tuesday, eight days
                    // away, not tomorrow.
                    let monday = today
                        + Duration::days(7 - i64::from(today.weekday().num_days_from_monday()));
                    monday + Duration::days(i64::from(wd.num_days_from_monday()))
                } else {
                    // "This Friday": the coming one.
                    next_weekday(today, wd, false)
                });
                named_today = w == "this" && day == Some(today);
                i += 1;
            }
            _ => {
                if let Some(wd) = weekday(w) {
                    // The coming one; today only if the time is still ahead
                    // (decided once the time is known, below).
                    day = Some(next_weekday(today, wd, false));
                    named_today = day == Some(today);
                } else if let Some(m) = month(w) {
                    if let Some(d) = next.and_then(ordinal) {
                        day = date_ahead(today, m, d);
                        i += 1;
                    }
                } else if let Some(t) = clock(w, next).filter(|_| {
                    // A phone number ("555 0123") is not a time.
                    !(w.len() >= 3
                        && w.chars().all(|c| c.is_ascii_digit())
                        && next
                            .is_some_and(|n| n.len() >= 3 && n.chars().all(|c| c.is_ascii_digit())))
                }) {
                    // A number is a time only when it reads as one: "3pm",
                    // "3:30", "3 pm", "at 3", "between 2 and 4", "is 11
                    // ok", "5 works" (not "2 crowns", "budget 1500").
                    let marked = w.ends_with("am")
                        || w.ends_with("pm")
                        || w.ends_with("ish")
                        || w.contains(':');
                    let prev = i.checked_sub(1).map(|p| words[p].as_str());
                    let small = w.len() <= 2;
                    let counted = next.is_some_and(|n| COUNTED.contains(&n));
                    if counted && !marked {
                        // "like 3 years", "at 2 kids' practice": a count.
                    } else if marked
                        || matches!(next, Some("am" | "pm" | "oclock" | "ish"))
                        || matches!(
                            prev,
                            Some(
                                "at" | "by"
                                    | "around"
                                    | "after"
                                    | "before"
                                    | "from"
                                    | "between"
                                    | "about"
                                    | "abt"
                                    | "like"
                                    | "maybe"
                                    | "say"
                            )
                        )
                        || (small
                            && time.is_none()
                            && matches!(
                                next,
                                Some(
                                    "ok" | "okay"
                                        | "works"
                                        | "work"
                                        | "good"
                                        | "fine"
                                        | "pls"
                                        | "please"
                                )
                            ))
                    {
                        if time.is_none() {
                            time = Some(t);
                        }
                    } else if small {
                        bare.get_or_insert(t);
                    }
                } else if let Some((m, d)) = slash_date(w) {
                    day = date_ahead(today, m, d);
                } else if let Some(d) = ordinal(w).filter(|_| {
                    (w.ends_with("th")
                        || w.ends_with("st")
                        || w.ends_with("nd")
                        || w.ends_with("rd"))
                        && !next.is_some_and(|n| COUNTED.contains(&n))
                }) {
                    if let Some(m) = next.and_then(month) {
                        day = date_ahead(today, m, d);
                        i += 1;
                    } else if i > 0 && words[i - 1] == "the" {
                        day = day_of_month_ahead(today, d);
                    }
                }
            }
        }
        i += 1;
    }
    if time.is_none() && (day.is_some() || part.is_some()) {
        time = bare;
    }
    // A bare hour: business sense (1-7 is afternoon) unless told.
    if let Some(t) = time {
        if t.hour() < 12 && t.hour() >= 1 {
            let pm = match pm_hint {
                Some(p) => p,
                None => t.hour() <= 7,
            };
            if pm && !text.to_lowercase().contains("am") {
                time = t.with_hour(t.hour() + 12);
            }
        }
    }
    let time_given = time.is_some();
    let t = time.or_else(|| part.and_then(|h| NaiveTime::from_hms_opt(h, 0, 0)));
    if day.is_none() && t.is_none() {
        return None;
    }
    let has_day = day.is_some();
    let mut d = day.unwrap_or(today);
    let t_or_open = t.unwrap_or_else(|| NaiveTime::from_hms_opt(9, 0, 0).expect("valid"));
    // A weekday said on that very weekday, for a time already past, means
    // next week; a time alone that has passed today means tomorrow.
    let candidate = local(tz, d, t_or_open);
    if candidate.0 <= now.0 {
        if !has_day {
            d += Duration::days(1);
        } else if d == today && named_today {
            d += Duration::days(7);
        }
    }
    Some(When {
        at: local(tz, d, t_or_open),
        has_time: time_given || part.is_some(),
        has_day,
    })
}

/// Minutes in "an hour", "2 hours", "30 minutes", "half an hour", "2 hrs"
/// at the start of `w`.
fn relative_minutes(w: &[String]) -> Option<i64> {
    let first = w.first()?.as_str();
    let second = w.get(1).map(String::as_str);
    let (count, unit) = match (first, second) {
        ("half", Some("an" | "a")) if w.get(2).is_some_and(|u| u == "hour") => return Some(30),
        ("an" | "a" | "one", Some(u)) => (1, u),
        (n, Some(u)) => (n.parse::<i64>().ok().filter(|n| (1..=12).contains(n))?, u),
        _ => return None,
    };
    let per = match unit {
        "hour" | "hours" | "hr" | "hrs" => 60,
        "minute" | "minutes" | "min" | "mins" => 1,
        _ => return None,
    };
    Some(count * per)
}

/// The coming `wd`: today counts unless `after_today` ("next Tuesday"
/// said on a Tuesday is a week away).
fn next_weekday(today: NaiveDate, wd: Weekday, after_today: bool) -> NaiveDate {
    let ahead =
        (7 + wd.num_days_from_monday() as i64 - today.weekday().num_days_from_monday() as i64) % 7;
    let ahead = if ahead == 0 && after_today { 7 } else { ahead };
    today + Duration::days(ahead)
}

fn ordinal(w: &str) -> Option<u32> {
    let digits: String = w.chars().take_while(char::is_ascii_digit).collect();
    let rest = &w[digits.len()..];
    if digits.is_empty() || !matches!(rest, "" | "st" | "nd" | "rd" | "th") {
        return None;
    }
    digits.parse().ok().filter(|d| (1..=31).contains(d))
}

fn slash_date(w: &str) -> Option<(u32, u32)> {
    // normalize() split "3/14" into separate words; handled by the caller
    // joining them is not needed: accept "3-14" style tokens too.
    let (m, d) = w.split_once(['/', '-'])?;
    Some((m.parse().ok()?, d.parse().ok()?))
}

fn date_ahead(today: NaiveDate, m: u32, d: u32) -> Option<NaiveDate> {
    let this = NaiveDate::from_ymd_opt(today.year(), m, d)?;
    if this >= today {
        Some(this)
    } else {
        NaiveDate::from_ymd_opt(today.year() + 1, m, d)
    }
}

fn day_of_month_ahead(today: NaiveDate, d: u32) -> Option<NaiveDate> {
    let this = NaiveDate::from_ymd_opt(today.year(), today.month(), d);
    match this {
        Some(x) if x >= today => Some(x),
        _ => {
            let (y, m) = if today.month() == 12 {
                (today.year() + 1, 1)
            } else {
                (today.year(), today.month() + 1)
            };
            NaiveDate::from_ymd_opt(y, m, d)
        }
    }
}

/// A clock time: "3", "15", "3pm" (one token), "3:30", "1530".
fn clock(w: &str, next: Option<&str>) -> Option<NaiveTime> {
    if let Some((hh, rest)) = w.split_once(':') {
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let suffix = &rest[digits.len()..];
        if digits.len() != 2 || !matches!(suffix, "" | "am" | "pm") || hh.is_empty() || hh.len() > 2
        {
            return None;
        }
        let (mut h, m): (u32, u32) = (hh.parse().ok()?, digits.parse().ok()?);
        if h > 23 || m > 59 {
            return None;
        }
        if suffix == "pm" && h < 12 {
            h += 12;
        }
        if suffix == "am" && h == 12 {
            h = 0;
        }
        return NaiveTime::from_hms_opt(h, m, 0);
    }
    let (num, suffix) = match w.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&w[..i], &w[i..]),
        None => (w, ""),
    };
    if num.is_empty() {
        return None;
    }
    let (mut h, m): (u32, u32) = match (num.len(), suffix) {
        // "4ish" is about 4: the hour itself.
        (1 | 2, "" | "am" | "pm" | "oclock" | "ish") => (num.parse().ok()?, 0),
        (3 | 4, "") if next.is_none_or(|n| n != "th") => {
            let v: u32 = num.parse().ok()?;
            (v / 100, v % 100)
        }
        _ => return None,
    };
    if h > 23 || m > 59 {
        return None;
    }
    if suffix == "pm" && h < 12 {
        h += 12;
    }
    if suffix == "am" && h == 12 {
        h = 0;
    }
    NaiveTime::from_hms_opt(h, m, 0)
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;
    use chrono_tz::America::{Los_Angeles, New_York};

    use super::*;

    fn t(s: &str) -> Timestamp {
        Timestamp(DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis())
    }

    fn at(text: &str, now: &str, tz: Tz) -> String {
        let w = when(text, t(now), tz).unwrap_or_else(|| panic!("no time in {text:?}"));
        tz.timestamp_millis_opt(w.at.0)
            .unwrap()
            .format("%a %Y-%m-%d %H:%M %Z")
            .to_string()
    }

    // Tuesday 2026-03-03, 10:00 in New York.
    const NOW: &str = "2026-03-03T15:00:00Z";

    #[test]
    fn days_and_times_in_the_customers_zone() {
        for (text, want) in [
            ("tomorrow at 3", "Wed 2026-03-04 15:00 EST"),
            ("Tuesday at 3", "Tue 2026-03-03 15:00 EST"),
            ("next Tuesday afternoon", "Tue 2026-03-10 14:00 EDT"),
            // "Next <weekday>" is that day of next week (Monday to Sunday).
            ("next wednesday at 3", "Wed 2026-03-11 15:00 EDT"),
            ("next monday morning", "Mon 2026-03-09 09:00 EDT"),
            ("this friday at 2", "Fri 2026-03-06 14:00 EST"),
            ("can I come thursday at 10am?", "Thu 2026-03-05 10:00 EST"),
            ("friday 3:30pm works", "Fri 2026-03-06 15:30 EST"),
            ("today at noon", "Tue 2026-03-03 12:00 EST"),
            // 8-11 without am/pm is business hours: 9 has passed, so tomorrow.
            ("at 9", "Wed 2026-03-04 09:00 EST"),
            ("at 4", "Tue 2026-03-03 16:00 EST"),
            ("can u do tmrw around 4ish?", "Wed 2026-03-04 16:00 EST"),
            ("thursday 11ish", "Thu 2026-03-05 11:00 EST"),
            ("friday 2 ish", "Fri 2026-03-06 14:00 EST"),
            ("March 14th at 11am", "Sat 2026-03-14 11:00 EDT"),
            ("the 20th in the morning", "Fri 2026-03-20 09:00 EDT"),
            ("Monday", "Mon 2026-03-09 09:00 EDT"),
            ("tonight", "Tue 2026-03-03 19:00 EST"),
        ] {
            assert_eq!(at(text, NOW, New_York), want, "{text:?}");
        }
        // The same words mean the customer's own wall clock elsewhere.
        assert_eq!(
            at("tomorrow at 3", NOW, Los_Angeles),
            "Wed 2026-03-04 15:00 PST"
        );
        assert!(when("I have a question about my bill", t(NOW), New_York).is_none());
        assert!(when("I need 2 crowns", t(NOW), New_York).is_none());
        assert!(when("my budget is 1500 a year", t(NOW), New_York).is_none());
    }

    #[test]
    fn a_weekday_said_on_that_day_for_a_time_gone_is_next_week() {
        // Tuesday 16:00: "Tuesday at 3" has passed today.
        assert_eq!(
            at("Tuesday at 3", "2026-03-03T21:00:00Z", New_York),
            "Tue 2026-03-10 15:00 EDT"
        );
    }

    #[test]
    fn dst_gaps_and_overlaps_resolve_without_crashing() {
        // 2026-03-08 02:30 does not exist in New York: moved past the gap.
        assert_eq!(
            at("Sunday at 2:30am", "2026-03-05T15:00:00Z", New_York),
            "Sun 2026-03-08 03:00 EDT"
        );
        // 2026-11-01 01:30 exists twice: the first (EDT).
        assert_eq!(
            at("Sunday at 1:30am", "2026-10-29T15:00:00Z", New_York),
            "Sun 2026-11-01 01:30 EDT"
        );
        // After fall back, "tomorrow at 3" is on standard time.
        assert_eq!(
            at("tomorrow at 3", "2026-10-31T15:00:00Z", New_York),
            "Sun 2026-11-01 15:00 EST"
        );
    }

    #[test]
    fn yes_no_names_and_emails() {
        for y in ["Yes", "yeah sure", "C", "ok sounds good", "Confirm"] {
            assert_eq!(yes_no(y), Some(true), "{y}");
        }
        for n in ["no", "Nope", "not really", "cancel it"] {
            assert_eq!(yes_no(n), Some(false), "{n}");
        }
        assert_eq!(yes_no("what time is it"), None);
        assert_eq!(
            name("Hi, I'm Jordan Lee and I need help", false).as_deref(),
            Some("Jordan Lee")
        );
        assert_eq!(
            name("my name is dana", false),
            None,
            "uncapitalized in a sentence"
        );
        assert_eq!(name("dana", true).as_deref(), Some("Dana"));
        assert_eq!(name("I'm looking for a quote", false), None);
        assert_eq!(name("This is Sam", false).as_deref(), Some("Sam"));
        assert_eq!(
            email("reach me at Jo.Lee@Example.com, thanks").as_deref(),
            Some("jo.lee@example.com")
        );
        assert_eq!(email("no email here @ all"), None);
    }

    #[test]
    fn intents_by_keywords_and_similar_phrases() {
        let models = vec![
            IntentModel::new(
                "book",
                &[
                    "I need a cleaning".into(),
                    "can I book an appointment".into(),
                ],
                &["book".into(), "appointment".into(), "schedule".into()],
            ),
            IntentModel::new(
                "hours",
                &["when are you open".into(), "what are your hours".into()],
                &["hours".into(), "open".into()],
            ),
            IntentModel::new(
                "quote",
                &[
                    "how much is home insurance".into(),
                    "I want a quote for auto insurance".into(),
                ],
                &["quote".into(), "price".into()],
            ),
        ];
        assert_eq!(
            classify(&models, "I'd like to schedule a cleaning", 0.3).map(|x| x.0),
            Some("book")
        );
        assert_eq!(
            classify(&models, "Are you OPEN on Saturdays?", 0.3).map(|x| x.0),
            Some("hours")
        );
        assert_eq!(
            classify(&models, "need cleanings for my kids", 0.3).map(|x| x.0),
            Some("book")
        );
        assert_eq!(
            classify(&models, "how much would auto insurance cost", 0.3).map(|x| x.0),
            Some("quote")
        );
        assert_eq!(classify(&models, "the weather is nice", 0.3), None);
    }
}

/// A message that asks nothing of the flow, or asks about the assistant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmallTalk {
    /// "thanks!", "thx", "thank you so much"
    Thanks,
    /// "ok", "cool", "got it", "👍": nothing to answer unless it answers
    /// a question the bot asked.
    Ack,
    /// "bye", "see you then", "have a good day"
    Bye,
    /// "are you a bot?", "am I talking to a real person?"
    AsksIfBot,
}

/// Reads `text` as small talk, if that is all it is (at most eight words,
/// every one of them small talk), or as a question whether the customer
/// is talking to a machine.
pub fn small_talk(text: &str) -> Option<SmallTalk> {
    small_talk_words(&normalize(text), text)
}

/// `small_talk` of `text` already normalized into `w`.
pub fn small_talk_words(w: &[String], text: &str) -> Option<SmallTalk> {
    let has = |phrase: &[&str]| w.windows(phrase.len()).any(|x| x == phrase);
    let any = |set: &[&str]| w.iter().any(|x| set.contains(&x.as_str()));
    let only = |set: &[&str]| w.iter().all(|x| set.contains(&x.as_str()));
    let about_bot = any(&[
        "bot",
        "robot",
        "chatbot",
        "automated",
        "automatic",
        "ai",
        "human",
        "machine",
    ]) || has(&["auto", "generated"])
        || has(&["real", "person"])
        || has(&["live", "person"])
        || w.last().is_some_and(|x| x == "real");
    let asks = has(&["are", "you"])
        || has(&["are", "these"])
        || has(&["is", "it"])
        || has(&["are", "u"])
        || has(&["r", "u"])
        || has(&["is", "this"])
        || has(&["am", "i", "talking"])
        || has(&["am", "i", "texting"])
        || has(&["am", "i", "chatting"])
        || has(&["am", "i", "speaking"]);
    if about_bot && asks && w.len() <= 12 {
        return Some(SmallTalk::AsksIfBot);
    }
    if w.is_empty() {
        // Only emoji: a thumbs-up, a smile.
        return text
            .chars()
            .any(|c| !c.is_ascii() && !c.is_whitespace())
            .then_some(SmallTalk::Ack);
    }
    if w.len() > 8 {
        return None;
    }
    const THANKS: &[&str] = &[
        "thanks",
        "thank",
        "thx",
        "ty",
        "tysm",
        "thankyou",
        "appreciate",
        "appreciated",
        "cheers",
        "tks",
        "thnx",
        "thanx",
    ];
    const POLITE: &[&str] = &[
        "you",
        "u",
        "so",
        "very",
        "much",
        "a",
        "lot",
        "it",
        "i",
        "really",
        "ok",
        "okay",
        "great",
        "cool",
        "perfect",
        "awesome",
        "again",
        "for",
        "that",
        "the",
        "help",
        "all",
        "your",
        "bunch",
        "tons",
        "ton",
        "heaps",
        "everything",
        "ya",
        "yall",
        "guys",
    ];
    const BYE: &[&str] = &[
        "goodnight",
        "night",
        "bye",
        "goodbye",
        "byee",
        "cya",
        "ttyl",
        "later",
        "see",
        "you",
        "ya",
        "then",
        "have",
        "a",
        "good",
        "great",
        "nice",
        "day",
        "night",
        "evening",
        "weekend",
        "talk",
        "soon",
        "u",
        "thanks",
        "ok",
        "okay",
        "there",
        "tomorrow",
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
    ];
    const ACK: &[&str] = &[
        "okie",
        "okey",
        "oki",
        "aight",
        "ight",
        "ok",
        "okay",
        "k",
        "kk",
        "cool",
        "great",
        "got",
        "it",
        "noted",
        "alright",
        "awesome",
        "nice",
        "understood",
        "gotcha",
    ];
    let thanks = any(THANKS);
    if thanks
        && w.iter()
            .all(|x| THANKS.contains(&x.as_str()) || POLITE.contains(&x.as_str()))
    {
        return Some(SmallTalk::Thanks);
    }
    if (any(&[
        "bye",
        "goodbye",
        "byee",
        "cya",
        "ttyl",
        "goodnight",
        "night",
        "soon",
    ]) || has(&["see", "you"])
        || has(&["see", "ya"])
        || has(&["have", "a"]))
        && only(BYE)
    {
        return Some(SmallTalk::Bye);
    }
    if only(ACK) || w == ["will", "do"] {
        return Some(SmallTalk::Ack);
    }
    None
}

/// The customer asks for a person: "talk to a person", "can I speak with
/// someone real", "a human please", "representative". Not "I'm calling for
/// someone else" or "I'm a travel agent": the words must ask.
pub fn wants_person(text: &str) -> bool {
    wants_person_words(&normalize(text), text)
}

/// `wants_person` of `text` already normalized into `w`.
pub fn wants_person_words(w: &[String], text: &str) -> bool {
    // "Are you a real person?" asks about the assistant.
    asks_for_person(w) && small_talk_words(w, text) != Some(SmallTalk::AsksIfBot)
}

fn asks_for_person(w: &[String]) -> bool {
    let has = |phrase: &[&str]| w.windows(phrase.len()).any(|x| x == phrase);
    const WHO: &[&str] = &[
        "person",
        "human",
        "someone",
        "somebody",
        "anyone",
        "anybody",
        "agent",
        "representative",
        "rep",
        "staff",
        "operator",
        "manager",
        "people",
        "real",
        "actual",
        "live",
        "man",
        "woman",
        "receptionist",
        "desk",
        "office",
        "dr",
        "doctor",
        "dentist",
        "hygienist",
        "nurse",
    ];
    // Someone to call or text them back: "can someone from the office call
    // me back", "pls have someone call me", "can a receptionist text me".
    let asker = |x: &String| {
        matches!(
            x.as_str(),
            "someone" | "somebody" | "receptionist" | "person" | "human" | "anyone"
        )
    };
    let callback = w.windows(2).enumerate().any(|(i, p)| {
        let verb = match p[0].as_str() {
            "call" | "text" | "ring" | "phone" => true,
            // "give me a call", "give me a ring" (not "give me directions")
            "give" => w
                .get(i + 2..(i + 4).min(w.len()))
                .is_some_and(|r| r.iter().any(|x| x == "call" || x == "ring")),
            _ => false,
        };
        verb && p[1] == "me" && w[..i].iter().any(asker)
    });
    // "is there a person i can call", "is there anyone there i can talk to".
    let is_there = has(&["is", "there"])
        && w.iter().any(asker)
        && w.iter()
            .any(|x| matches!(x.as_str(), "call" | "talk" | "speak"));
    // "i want a person", "need a human", "can a person help me".
    let wants = has(&["want", "a", "person"])
        || has(&["want", "a", "human"])
        || has(&["need", "a", "person"])
        || has(&["need", "a", "human"])
        || has(&["a", "person", "help"])
        || has(&["someone", "help", "me"])
        || has(&["put", "me", "through"])
        || has(&["customer", "service"]);
    if callback || is_there || wants {
        return true;
    }
    // "talk to a person", "speak with someone", "chat with a human".
    for (i, x) in w.iter().enumerate() {
        if matches!(
            x.as_str(),
            "talk" | "speak" | "chat" | "connect" | "transfer" | "put"
        ) {
            let after = &w[i + 1..w.len().min(i + 6)];
            let declined = (1..=3)
                .any(|d| i >= d && matches!(w[i - d].as_str(), "dont" | "never" | "no" | "not"));
            // The customer asks for themselves: "can i talk", "let me
            // talk", "i'd like to speak", or the message starts with it (not
            // "my son will talk to his dentist").
            let mine = i == 0
                || (1..=3).any(|d| {
                    i >= d
                        && matches!(
                            w[i - d].as_str(),
                            "i" | "me"
                                | "can"
                                | "could"
                                | "let"
                                | "want"
                                | "need"
                                | "id"
                                | "like"
                                | "please"
                                | "pls"
                                | "may"
                                | "wanna"
                                | "just"
                        )
                });
            let towards = !declined
                && mine
                && after
                    .first()
                    .is_some_and(|a| matches!(a.as_str(), "to" | "with" | "me"));
            let who = after.iter().any(|a| WHO.contains(&a.as_str()));
            let elsewhere = after.iter().any(|a| a == "else");
            if towards && who && !elsewhere {
                return true;
            }
        }
    }
    // A short request: "a human please", "representative", "real person".
    let short = w.len() <= 5;
    short
        && (has(&["real", "person"])
            || has(&["a", "human"])
            || has(&["live", "agent"])
            || has(&["live", "person"])
            || w.iter()
                .any(|x| matches!(x.as_str(), "representative" | "operator" | "human"))
            || (w.len() <= 3 && w.iter().any(|x| x == "agent")))
        && !w.iter().any(|x| matches!(x.as_str(), "im" | "am"))
}

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

#[cfg(test)]
mod appointment_tests {
    use super::*;

    #[test]
    fn small_talk_is_told_apart_from_requests() {
        use SmallTalk::*;
        for (text, want) in [
            ("thx", Some(Thanks)),
            ("Thank you so much!!", Some(Thanks)),
            ("ok thanks", Some(Thanks)),
            ("ty", Some(Thanks)),
            ("ok", Some(Ack)),
            ("got it", Some(Ack)),
            ("👍", Some(Ack)),
            ("bye!", Some(Bye)),
            ("see you thursday", Some(Bye)),
            ("have a good day", Some(Bye)),
            ("Wait, am I talking to a robot?", Some(AsksIfBot)),
            ("r u a bot", Some(AsksIfBot)),
            ("is this automated?", Some(AsksIfBot)),
            ("are you real?", Some(AsksIfBot)),
            ("thanks, can I book a cleaning", None),
            ("ok what times do you have tomorrow", None),
            ("is this the real address?", None),
            ("?", None),
        ] {
            assert_eq!(small_talk(text), want, "{text}");
        }
    }

    #[test]
    fn moves_by_an_amount() {
        for (text, want) in [
            ("can we push it back an hour?", Some(60)),
            ("push it back 2 hours", Some(120)),
            ("could we do 30 minutes earlier", Some(-30)),
            ("half an hour later please", Some(30)),
            ("an hour earlier?", Some(-60)),
            ("can we move it", None),
            ("I'll be an hour", None),
        ] {
            assert_eq!(shift_minutes(text), want, "{text}");
        }
    }

    #[test]
    fn requests_about_an_appointment_in_plain_words() {
        use AppointmentAsk::*;
        for (text, want) in [
            ("I'd like to move my appointment", Some(Reschedule)),
            ("reschedule to friday at 3pm please", Some(Reschedule)),
            ("can we push it back an hour?", Some(Reschedule)),
            ("can we do friday instead", Some(Reschedule)),
            ("R", Some(Reschedule)),
            ("Need a different time", Some(Reschedule)),
            ("cancel my appointment", Some(Cancel)),
            ("I can't make it anymore", Some(Cancel)),
            ("I won't be able to make it tomorrow", Some(Cancel)),
            ("sorry, can't come on thursday", Some(Cancel)),
            ("when is my appointment?", Some(When)),
            ("what time is my appointment", Some(When)),
            ("When's my appointment again", Some(When)),
            ("please don't cancel it, see you then", None),
            ("yes", None),
            ("thanks, see you thursday", None),
            ("what are your hours", None),
        ] {
            assert_eq!(appointment_ask(text), want, "{text}");
        }
    }
}
