//! Small talk, and asking for a person (read from the request, not from the
//! words "someone" or "agent").

use crate::consent::keywords::normalize;

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

pub(super) fn asks_for_person(w: &[String]) -> bool {
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
    // "i want a person", "need a human", "can a person help me"; not "I
    // do not need a person" or "I don't want a human".
    let asked = |phrase: &[&str]| {
        w.windows(phrase.len()).enumerate().any(|(i, x)| {
            x == phrase
                && !(1..=3).any(|d| {
                    i >= d
                        && matches!(
                            w[i - d].as_str(),
                            "dont" | "never" | "not" | "no" | "doesnt"
                        )
                })
        })
    };
    let wants = asked(&["want", "a", "person"])
        || asked(&["want", "a", "human"])
        || asked(&["need", "a", "person"])
        || asked(&["need", "a", "human"])
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
