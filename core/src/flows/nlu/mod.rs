//! Built-in understanding, with no external service: intents by keywords
//! and phrase similarity, and slots: dates and times in the customer's
//! time zone ("next Tuesday afternoon", "tomorrow at 3"), yes/no, names,
//! emails and phone numbers. Pure and synchronous.

use crate::consent::keywords::normalize;

mod answers;
mod appointment;
mod talk;
mod time;

pub use answers::{email, name, yes_no};
pub use appointment::{appointment_ask, keeps, shift_minutes, AppointmentAsk};
pub use talk::{small_talk, small_talk_words, wants_person, wants_person_words, SmallTalk};
pub use time::{local, soonest, when, When};
// Used across the parts.
use time::weekday;

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

#[cfg(test)]
mod tests;

#[cfg(test)]
mod appointment_tests;
