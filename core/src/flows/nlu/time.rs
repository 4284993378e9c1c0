//! Times and dates as people write them (`when`), in the customer's zone.

use chrono::{Datelike, Duration, LocalResult, NaiveDate, NaiveTime, TimeZone, Timelike, Weekday};
use chrono_tz::Tz;
use threadline_protocol::Timestamp;

/// A moment the customer named, in their zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct When {
    pub at: Timestamp,
    /// A time of day was given (else `at` is the day's start of business).
    pub has_time: bool,
    /// A day was given (else it is today or the next day with that time).
    pub has_day: bool,
}

pub(super) const WEEKDAYS: [(&str, Weekday); 14] = [
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

pub(super) const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];

pub(super) fn weekday(w: &str) -> Option<Weekday> {
    match w {
        "sat" => Some(Weekday::Sat),
        "sun" => Some(Weekday::Sun),
        _ => WEEKDAYS.iter().find(|(n, _)| *n == w).map(|(_, d)| *d),
    }
}

pub(super) fn month(w: &str) -> Option<u32> {
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
pub(super) fn time_words(text: &str) -> Vec<String> {
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
pub(super) const COUNTED: &[&str] = &[
    "kid", "kids", "child", "children", "people", "person", "of", "fillings", "filling", "teeth",
    "tooth", "crowns", "crown", "floor", "years", "year", "yrs", "weeks", "week", "days", "day",
    "months", "month", "minutes", "mins", "hours", "hrs", "times", "visits", "x", "percent",
    "dollars", "bucks", "grade", "st", "street", "ave", "avenue", "rd", "road", "blocks", "miles",
];

/// Finds a date and/or time in `text`, relative to `now` in `tz`.
/// "As soon as possible", "asap", "the earliest you have", "first
/// available", "next opening": any time, the sooner the better.
pub fn soonest(text: &str) -> bool {
    let words = super::normalize(text);
    let has = |w: &str| words.iter().any(|x| x == w);
    let pair = |a: &str, b: &str| words.windows(2).any(|p| p[0] == a && p[1] == b);
    has("asap")
        || has("soonest")
        || has("earliest")
        || (pair("soon", "as") && has("possible"))
        || ((has("first") || has("next")) && (has("available") || has("opening") || has("slot")))
}

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
    // "Next week": a weekday named with it is that day of next week
    // (weeks run Monday to Sunday). Alone it names no day: the customer
    // is asked which (a front desk would ask, not pick Monday).
    let next_monday = today + Duration::days(7 - i64::from(today.weekday().num_days_from_monday()));
    let next_week = words.windows(2).any(|p| p[0] == "next" && p[1] == "week");
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
                    day = Some(match next_week {
                        true => next_monday + Duration::days(i64::from(wd.num_days_from_monday())),
                        false => next_weekday(today, wd, false),
                    });
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
                    // A correction: "make it 4", "change it to 4", "move
                    // to 4", "4 instead".
                    let before = i.checked_sub(2).map(|p| words[p].as_str());
                    let corrects = small
                        && (matches!(
                            (before, prev),
                            (
                                Some("make" | "change" | "move" | "switch" | "bump" | "it"),
                                Some("it" | "to")
                            )
                        ) || next == Some("instead"));
                    if counted && !marked {
                        // "like 3 years", "at 2 kids' practice": a count.
                    } else if marked
                        || corrects
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
pub(super) fn relative_minutes(w: &[String]) -> Option<i64> {
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
pub(super) fn next_weekday(today: NaiveDate, wd: Weekday, after_today: bool) -> NaiveDate {
    let ahead =
        (7 + wd.num_days_from_monday() as i64 - today.weekday().num_days_from_monday() as i64) % 7;
    let ahead = if ahead == 0 && after_today { 7 } else { ahead };
    today + Duration::days(ahead)
}

pub(super) fn ordinal(w: &str) -> Option<u32> {
    let digits: String = w.chars().take_while(char::is_ascii_digit).collect();
    let rest = &w[digits.len()..];
    if digits.is_empty() || !matches!(rest, "" | "st" | "nd" | "rd" | "th") {
        return None;
    }
    digits.parse().ok().filter(|d| (1..=31).contains(d))
}

pub(super) fn slash_date(w: &str) -> Option<(u32, u32)> {
    // normalize() split "3/14" into separate words; handled by the caller
    // joining them is not needed: accept "3-14" style tokens too.
    let (m, d) = w.split_once(['/', '-'])?;
    Some((m.parse().ok()?, d.parse().ok()?))
}

pub(super) fn date_ahead(today: NaiveDate, m: u32, d: u32) -> Option<NaiveDate> {
    let this = NaiveDate::from_ymd_opt(today.year(), m, d)?;
    if this >= today {
        Some(this)
    } else {
        NaiveDate::from_ymd_opt(today.year() + 1, m, d)
    }
}

pub(super) fn day_of_month_ahead(today: NaiveDate, d: u32) -> Option<NaiveDate> {
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
pub(super) fn clock(w: &str, next: Option<&str>) -> Option<NaiveTime> {
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
