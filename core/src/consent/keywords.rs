//! Classifies an inbound text or speech turn as an opt-out, opt-in or help
//! request, before the conversation logic sees it.
//!
//! Matching normalizes first, so de minimis variance does not defeat it
//! (CTIA 5.1.3): Unicode NFKC (full-width letters), removal of zero-width
//! and other invisible characters, case folding, Unicode's confusable
//! skeletons (UTS #39) for non-ASCII lookalikes such as Cyrillic `Ѕ`, and
//! surrounding punctuation. Then:
//!
//! 1. the whole message, minus politeness ("please", "now", "thanks"...),
//!    equal to a keyword or keyword phrase: Twilio's defaults, the FCC's
//!    per-se words ("opt out" with a space included), tenant extras, and
//!    enabled language packs;
//! 2. ordinary-language revocations anywhere in the message: "please stop
//!    texting me", "stop calling me", "don't text me anymore", "unsubscribe
//!    me", "remove me from your list", "I want to opt out". A stop word
//!    counts only next to a contacting word, so "I can't stop laughing" and
//!    "see you at the end" are not opt-outs.
//!
//! Pure and synchronous; the consent actor decides what a match means for
//! the contact's consent (YES is an opt-in only after an opt-out).

use std::collections::HashSet;

use unicode_normalization::UnicodeNormalization;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Keyword {
    OptOut,
    OptIn,
    Help,
}

/// Keyword sets, per tenant.
#[derive(Debug, Clone)]
pub struct Keywords {
    opt_out: HashSet<String>,
    opt_in: HashSet<String>,
    help: HashSet<String>,
    /// Every word that any rule needs to see: an all-ASCII message that
    /// contains none of them (as a substring, ignoring case) cannot match,
    /// and is answered without normalizing or allocating.
    triggers: Vec<String>,
}

/// Twilio's defaults and the FCC's per-se revocation words.
const OPT_OUT: &[&str] = &[
    "stop",
    "stopall",
    "stop all",
    "unsubscribe",
    "cancel",
    "end",
    "quit",
    "revoke",
    "optout",
    "opt out",
    "opt me out",
    "unsubscribe me",
    "remove me",
    "stop it",
    "just stop",
    "unsub",
];
const OPT_IN: &[&str] = &["start", "yes", "unstop"];
const HELP: &[&str] = &["help", "info"];

/// A language pack adds keywords; none is on unless the tenant enables it.
pub fn language_pack(code: &str) -> Option<[&'static [&'static str]; 3]> {
    match code {
        "es" => Some([
            &["parar", "cancelar", "alto", "detener", "baja"],
            &["comenzar", "inicio", "reanudar"],
            &["ayuda"],
        ]),
        _ => None,
    }
}

const FILLER: &[&str] = &[
    "please", "pls", "plz", "now", "thanks", "thank", "you", "thx", "ok", "okay", "asap",
];
const STOP_VERBS: &[&str] = &["stop", "quit", "cease", "end"];
const CONTACT_WORDS: &[&str] = &[
    "text",
    "texts",
    "texting",
    "txt",
    "txting",
    "message",
    "messages",
    "messaging",
    "msg",
    "msgs",
    "contact",
    "contacting",
    "call",
    "calls",
    "calling",
    "sending",
    "send",
    "email",
    "emails",
    "emailing",
    "spamming",
    "spam",
    "sms",
    "reminders",
    "notifications",
    "alerts",
];
const NEGATIONS: &[&str] = &["dont", "never"];
const CANT: &[&str] = &["cant", "cannot", "couldnt", "wont", "wouldnt", "didnt"];

fn invisible(c: char) -> bool {
    matches!(
        c,
        '\u{200B}'..='\u{200F}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}' | '\u{00AD}' | '\u{180E}'
    )
}

/// The normalized words of `text`.
pub fn normalize(text: &str) -> Vec<String> {
    if text.is_ascii() {
        // NFKC, invisible characters and confusables are all outside
        // ASCII: the same words, without walking the Unicode tables.
        let mut words = Vec::new();
        for w in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '\'')) {
            let w: String = w
                .chars()
                .filter(|c| *c != '\'')
                .map(|c| c.to_ascii_lowercase())
                .collect();
            if !w.is_empty() {
                words.push(w);
            }
        }
        return words;
    }
    let mut folded = String::with_capacity(text.len());
    for c in text.nfkc().filter(|c| !invisible(*c)) {
        if c.is_ascii() {
            folded.push(c.to_ascii_lowercase());
        } else {
            let mut buf = [0u8; 4];
            for p in unicode_security::confusable_detection::skeleton(c.encode_utf8(&mut buf)) {
                folded.extend(p.to_lowercase());
            }
        }
    }
    folded
        // Apostrophes vanish ("don't" → "dont"); other punctuation separates.
        .replace(['\'', '\u{2019}'], "")
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

fn phrase_set(words: &[&str]) -> HashSet<String> {
    words.iter().map(|w| normalize(w).join(" ")).collect()
}

impl Default for Keywords {
    fn default() -> Self {
        Keywords::new(&[], &[], &[], &[])
    }
}

impl Keywords {
    /// Defaults plus tenant extras plus the named language packs.
    pub fn new(
        extra_opt_out: &[String],
        extra_opt_in: &[String],
        extra_help: &[String],
        packs: &[String],
    ) -> Keywords {
        let extra = |v: &[String]| v.iter().map(|s| normalize(s).join(" ")).collect::<Vec<_>>();
        let mut k = Keywords {
            opt_out: phrase_set(OPT_OUT),
            opt_in: phrase_set(OPT_IN),
            help: phrase_set(HELP),
            triggers: Vec::new(),
        };
        k.opt_out.extend(extra(extra_opt_out));
        k.opt_in.extend(extra(extra_opt_in));
        k.help.extend(extra(extra_help));
        for p in packs {
            if let Some([out, inn, help]) = language_pack(p) {
                k.opt_out.extend(phrase_set(out));
                k.opt_in.extend(phrase_set(inn));
                k.help.extend(phrase_set(help));
            }
        }
        // The revocation patterns all need a stop verb, "unsubscribe",
        // "remove", "take", "opt", "dont"/"do not" or "never".
        // "do" (not "do not"): spacing between words is not normalized here.
        let mut triggers: HashSet<String> = [
            "unsubscribe",
            "remove",
            "take",
            "opt",
            "dont",
            "don't",
            "do",
            "never",
            "more",
            "enough",
            "cancel",
            "reminders",
            "texts",
            "calls",
            "msgs",
            "wrong",
            "alone",
            "lose",
            "delete",
        ]
        .iter()
        .chain(STOP_VERBS)
        .map(|w| w.to_string())
        .collect();
        for set in [&k.opt_out, &k.opt_in, &k.help] {
            for phrase in set {
                // One word of each phrase suffices: its first.
                if let Some(w) = phrase.split(' ').next() {
                    triggers.insert(w.to_owned());
                }
            }
        }
        k.triggers = triggers.into_iter().collect();
        k
    }

    /// True when `text` is plain ASCII and contains no trigger word.
    fn cannot_match(&self, text: &str) -> bool {
        if !text.is_ascii() {
            return false;
        }
        let bytes = text.as_bytes();
        !self.triggers.iter().any(|t| {
            let t = t.as_bytes();
            t.is_empty()
                || t.len() <= bytes.len()
                    && bytes.windows(t.len()).any(|w| w.eq_ignore_ascii_case(t))
        })
    }

    /// What `text` asks for, if anything. A provider's own classification
    /// (Twilio's `OptOutType`) is honoured when present.
    /// `classify` for what a caller says on a call: the texting keywords
    /// CANCEL, END and QUIT said alone are not a revocation there (on a
    /// call they mean the appointment or the call: "tell me if you need to
    /// cancel" / "cancel"); "stop", "unsubscribe" and every ordinary-language
    /// revocation ("stop calling me") still are.
    pub fn classify_spoken(&self, text: &str) -> Option<Keyword> {
        const CALL_WORDS: [&str; 3] = ["cancel", "end", "quit"];
        let k = self.classify(text, None)?;
        if k == Keyword::OptOut {
            let words = normalize(text);
            let core: Vec<&str> = words
                .iter()
                .map(String::as_str)
                .filter(|w| !FILLER.contains(w))
                .collect();
            if core.len() == 1 && CALL_WORDS.contains(&core[0]) {
                return None;
            }
        }
        Some(k)
    }

    pub fn classify(&self, text: &str, provider_hint: Option<Keyword>) -> Option<Keyword> {
        if provider_hint.is_some() {
            return provider_hint;
        }
        if self.cannot_match(text) {
            return None;
        }
        let words = normalize(text);
        if words.is_empty() || words.len() > 40 {
            return None;
        }
        // 1. The whole message is a keyword, give or take politeness.
        let mut core: &[String] = &words;
        while let Some((first, rest)) = core.split_first() {
            if FILLER.contains(&first.as_str()) && !rest.is_empty() {
                core = rest;
            } else {
                break;
            }
        }
        while let Some((last, rest)) = core.split_last() {
            if FILLER.contains(&last.as_str()) && !rest.is_empty() {
                core = rest;
            } else {
                break;
            }
        }
        let joined = core.join(" ");
        if self.opt_out.contains(&joined) {
            return Some(Keyword::OptOut);
        }
        if self.help.contains(&joined) {
            return Some(Keyword::Help);
        }
        if self.opt_in.contains(&joined) {
            return Some(Keyword::OptIn);
        }
        // 2. Ordinary-language revocations.
        (revocation(&words) || revocation_marks(text)).then_some(Keyword::OptOut)
    }
}

/// Revocations that only punctuation tells: a sentence that ends in a
/// separate "stop" ("i never signed up for this, stop"), and "wrong #".
fn revocation_marks(text: &str) -> bool {
    let t = text.trim().trim_end_matches(['.', '!', ' ']).to_lowercase();
    let ends_in_stop = t
        .strip_suffix("stop")
        .map(str::trim_end)
        .is_some_and(|before| before.ends_with([',', '.', ';', '!', '-', ':']));
    ends_in_stop || t.contains("wrong #")
}

fn revocation(w: &[String]) -> bool {
    let is = |i: usize, set: &[&str]| w.get(i).is_some_and(|x| set.contains(&x.as_str()));
    let word = |i: usize, s: &str| w.get(i).is_some_and(|x| x == s);
    for i in 0..w.len() {
        // "can't stop", "don't stop", "please do not stop", "never quit".
        let negated_before = i > 0
            && (is(i - 1, CANT)
                || is(i - 1, NEGATIONS)
                || (word(i - 1, "not") && i > 1 && (is(i - 2, CANT) || word(i - 2, "do"))));
        // "stop texting me", "please stop sending me messages", "quit calling"
        if is(i, STOP_VERBS) && !negated_before && (1..=3).any(|d| is(i + d, CONTACT_WORDS)) {
            return true;
        }
        // "don't text me", "do not contact me", "never call me again"
        let negation = is(i, NEGATIONS) || (word(i, "do") && word(i + 1, "not"));
        if negation {
            let from = if word(i, "do") { i + 2 } else { i + 1 };
            if is(from, STOP_VERBS) {
                // "don't stop texting me": the opposite of a revocation.
                continue;
            }
            for j in from..from + 2 {
                if is(j, CONTACT_WORDS) && (1..=2).any(|d| word(j + d, "me") || word(j + d, "us")) {
                    return true;
                }
            }
        }
        // "unsubscribe", "unsubscribe me", "how do I unsubscribe", "unsub"
        if (word(i, "unsubscribe") || word(i, "unsub")) && !negated_before {
            return true;
        }
        // "remove me from your list", "take me off your list", "remove
        // this number", "take my number off" (not "don't remove me from
        // the waitlist")
        let this_number = |j: usize| {
            (word(j, "this") || word(j, "my")) && (word(j + 1, "number") || word(j + 1, "phone"))
        };
        if !negated_before
            && ((word(i, "remove") && (word(i + 1, "me") || this_number(i + 1)))
                || (word(i, "take")
                    && (word(i + 1, "me") && word(i + 2, "off")
                        || this_number(i + 1) && word(i + 3, "off"))))
        {
            return true;
        }
        // "i don't want these texts anymore", "dont want any more calls"
        if word(i, "dont") && word(i + 1, "want") && (2..=4).any(|d| is(i + d, CONTACT_WORDS)) {
            return true;
        }
        // "cancel these texts", "cancel all the reminders" (not "cancel my
        // appointment", nor "cancel the call tomorrow": plural, ongoing)
        if word(i, "cancel")
            && !negated_before
            && (1..=3).any(|d| {
                is(
                    i + d,
                    &[
                        "texts",
                        "messages",
                        "msgs",
                        "calls",
                        "reminders",
                        "notifications",
                        "alerts",
                        "emails",
                    ],
                )
            })
        {
            return true;
        }
        // "enough with the texts already"
        if word(i, "enough") && (1..=3).any(|d| is(i + d, CONTACT_WORDS)) {
            return true;
        }
        // "no texts pls", "no calls" (plural: "no text came" is not one)
        if word(i, "no")
            && w.get(i + 1).is_some_and(|x| {
                matches!(
                    x.as_str(),
                    "texts" | "calls" | "messages" | "msgs" | "emails"
                )
            })
        {
            return true;
        }
        // "no more texts", "no more calls please"
        if word(i, "no") && word(i + 1, "more") && (2..=3).any(|d| is(i + d, CONTACT_WORDS)) {
            return true;
        }
        // "wrong number", "you have the wrong person" (not "not the wrong
        // number")
        // The sender's own mistake ("I texted the wrong number") or a
        // record to fix ("the wrong number on file for my husband") is not.
        let sender_erred = (1..=3).any(|d| {
            i >= d
                && is(
                    i - d,
                    &[
                        "texted", "called", "dialed", "dialled", "messaged", "sent", "typed",
                    ],
                )
        });
        let a_record = is(i + 2, &["on", "for", "in", "earlier", "listed", "saved"]);
        if word(i, "wrong")
            && (word(i + 1, "number") || word(i + 1, "person") || word(i + 1, "guy"))
            && !(i > 0 && word(i - 1, "not"))
            && !(i > 1 && word(i - 2, "not"))
            && !sender_erred
            && !a_record
        {
            return true;
        }
        // "leave me alone", "lose my number", "delete my number"
        if (word(i, "leave") && word(i + 1, "me") && word(i + 2, "alone") && !negated_before)
            || ((word(i, "lose") || word(i, "delete"))
                && word(i + 1, "my")
                && word(i + 2, "number"))
        {
            return true;
        }
        // "I want to opt out", "opt me out", "optout"
        if word(i, "opt") && (word(i + 1, "out") || (word(i + 1, "me") && word(i + 2, "out"))) {
            return true;
        }
        if word(i, "optout") {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k() -> Keywords {
        Keywords::default()
    }

    #[test]
    fn keyword_variants_are_recognised() {
        let out = Some(Keyword::OptOut);
        let table: &[(&str, Option<Keyword>)] = &[
            ("STOP", out),
            ("stop", out),
            ("  Stop.  ", out),
            ("STOP!!!", out),
            ("stop please", out),
            ("Please STOP", out),
            ("ＳＴＯＰ", out),                         // full-width
            ("S\u{200B}T\u{200C}OP", out),             // zero-width characters
            ("\u{0405}\u{0422}\u{041E}\u{0420}", out), // Cyrillic ЅТОР
            ("ЅТОР", out),
            ("stopall", out),
            ("Unsubscribe", out),
            ("cancel", out),
            ("END", out),
            ("quit", out),
            ("revoke", out),
            ("OPTOUT", out),
            ("opt out", out),
            ("Opt-Out", out),
            ("opt me out please", out),
            ("please stop texting me", out),
            ("Stop sending me messages", out),
            ("stop calling me", out),
            ("don't text me anymore", out),
            ("Do not contact me again", out),
            ("unsubscribe me", out),
            ("how do I unsubscribe?", out),
            ("remove me from your list", out),
            ("take me off your list", out),
            ("I want to opt out", out),
            ("wrong number", out),
            ("Sorry, you have the wrong number", out),
            ("wrong person, this isn't Dana", out),
            ("no more texts", out),
            ("No more messages please!", out),
            ("leave me alone", out),
            ("please lose my number", out),
            ("START", Some(Keyword::OptIn)),
            ("unstop", Some(Keyword::OptIn)),
            ("Yes", Some(Keyword::OptIn)),
            ("HELP", Some(Keyword::Help)),
            ("info?", Some(Keyword::Help)),
            // Not keywords: sentences that merely contain one.
            ("I can't stop laughing", None),
            ("please don't stop texting me the reminders", None),
            ("this is not the wrong number, it's me", None),
            ("I have no more questions", None),
            ("no more than an hour please", None),
            ("don't leave me alone on hold", None),
            ("can you leave me a voicemail", None),
            ("is the number I gave wrong?", None),
            ("see you at the end", None),
            ("I need to cancel my appointment", None),
            ("stop by tomorrow at 3", None),
            ("I can't stop texting my sister lol", None),
            ("I need help with my booking", None),
            ("yes I'd like the 3pm slot", None),
            ("start time?", None),
            ("the end of the week works", None),
            ("", None),
            ("!!!", None),
        ];
        for (text, want) in table {
            assert_eq!(k().classify(text, None), *want, "{text:?}");
        }
    }

    #[test]
    fn the_fast_path_never_changes_an_answer() {
        let k = Keywords::new(&["Leave me alone".into()], &[], &[], &["es".into()]);
        for text in [
            "Hello, this is message 3 of my conversation",
            "STOP",
            "s t o p",
            "St-op",
            "leave ME alone",
            "ayuda",
            "Parar",
            "i do not want texts, do not text me",
            "do  not   text me",
            "Never call me",
            "OPT-OUT",
            "yes",
            "information please",
            "helpful",
            "ЅТОР",
            "ＳＴＯＰ",
        ] {
            let full = {
                let mut slow = k.clone();
                slow.triggers = vec!["".into()]; // always take the full path
                slow.classify(text, None)
            };
            assert_eq!(k.classify(text, None), full, "{text:?}");
        }
        assert!(k.cannot_match("Hello, this is message 3 of my conversation"));
    }

    #[test]
    fn provider_hints_win() {
        assert_eq!(
            k().classify("whatever", Some(Keyword::OptOut)),
            Some(Keyword::OptOut)
        );
    }

    #[test]
    fn spanish_is_off_by_default_and_on_with_its_pack() {
        assert_eq!(k().classify("PARAR", None), None);
        assert_eq!(k().classify("ayuda", None), None);
        let es = Keywords::new(&[], &[], &[], &["es".into()]);
        assert_eq!(es.classify("PARAR", None), Some(Keyword::OptOut));
        assert_eq!(es.classify("Cancelar", None), Some(Keyword::OptOut));
        assert_eq!(es.classify("alto", None), Some(Keyword::OptOut));
        assert_eq!(es.classify("AYUDA", None), Some(Keyword::Help));
        assert_eq!(es.classify("STOP", None), Some(Keyword::OptOut));
    }

    #[test]
    fn tenant_extras_are_matched_normalized() {
        let k = Keywords::new(&["Leave me alone".into()], &[], &["Support".into()], &[]);
        assert_eq!(k.classify("leave me alone!", None), Some(Keyword::OptOut));
        assert_eq!(k.classify("SUPPORT", None), Some(Keyword::Help));
    }
}
