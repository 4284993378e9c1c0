//! The keypad on a call: what a key means depends on where the call
//! stands, so a caller who cannot or will not speak can still book.
//!
//! - An offered time waiting for an answer, or a booked visit (a reminder
//!   says "press 1 to confirm"): 1 is yes, 2 is no.
//! - A choice the bot asked for (a service): key N is the N-th option, as
//!   the prompt numbers them (options that differ only by spaces are one).
//! - A day and time the bot asked for: 1 is the first opening.
//! - Nothing under way: the flow's menu, its intents in order (key N says
//!   the N-th intent's first keyword), each read as "For {label}, press N"
//!   (`label`, else the intent's name).
//! - 0 is always a person (the conversation core handles it).

use threadline_protocol::Journey;

use super::{Flow, SlotKind, SlotSpec};

/// What the first-opening key says to the flow.
pub const SOONEST: &str = "as soon as possible";

impl Flow {
    /// What pressing `key` (1 to 9) says while the conversation stands at
    /// `journey`; `None` where a key is a yes (1) or a no (2).
    pub fn key_answer(&self, key: u8, journey: &Journey) -> Option<String> {
        let n = usize::from(key).checked_sub(1)?;
        if let Some(slot) = self.asked_slot(journey) {
            return match slot.kind {
                SlotKind::Choice => choices(slot).get(n).map(|o| (*o).to_owned()),
                SlotKind::Datetime if key == 1 => Some(SOONEST.to_owned()),
                _ => None,
            };
        }
        if self.waits_for_yes(journey) {
            return None;
        }
        self.spec
            .intents
            .get(n)
            .and_then(|i| i.keywords.first().or_else(|| i.examples.first()).cloned())
    }

    /// The keys a caller may press now, read after the prompt; `None` if
    /// only yes and no (said in the prompt) or speech fit. The menu only
    /// with `menu` (nothing was understood, or nothing was heard).
    pub fn key_hint(&self, journey: &Journey, menu: bool) -> Option<String> {
        if let Some(slot) = self.asked_slot(journey) {
            return match slot.kind {
                SlotKind::Choice => {
                    let keys: Vec<String> = choices(slot)
                        .iter()
                        .take(9)
                        .enumerate()
                        .map(|(i, o)| format!("{} for {o}", i + 1))
                        .collect();
                    (!keys.is_empty()).then(|| format!("Or press {}.", list(&keys)))
                }
                SlotKind::Datetime => Some("Or press 1 for our first opening.".to_owned()),
                _ => None,
            };
        }
        if !menu || self.waits_for_yes(journey) {
            return None;
        }
        self.key_menu()
    }

    /// The flow's menu: "For a visit, press 1. For our hours, press 2."
    pub fn key_menu(&self) -> Option<String> {
        let items: Vec<String> = self
            .spec
            .intents
            .iter()
            .take(9)
            .enumerate()
            .map(|(i, intent)| {
                let label = intent.label.as_deref().unwrap_or(&intent.name);
                format!("For {label}, press {}.", i + 1)
            })
            .collect();
        (!items.is_empty()).then(|| items.join(" "))
    }

    /// The slot the bot asked for last, in the journey under way.
    fn asked_slot(&self, journey: &Journey) -> Option<&SlotSpec> {
        let asking = journey.asking.as_deref()?;
        let active = journey.active.as_deref()?;
        self.spec
            .journeys
            .get(active)?
            .slots
            .iter()
            .find(|s| s.name == asking)
    }

    /// An offered time waits for yes or no; so does a booked visit (a
    /// reminder or an answer about it says "press 1 to confirm"), and a
    /// reply's offer (`on_yes`).
    fn waits_for_yes(&self, journey: &Journey) -> bool {
        journey
            .booking
            .as_ref()
            .is_some_and(|b| b.offer.is_some() || b.booked().is_some())
            || journey
                .asking
                .as_deref()
                .is_some_and(|a| a.starts_with(super::turn::OFFERED))
    }
}

/// A choice slot's options as the keypad numbers them: ones that differ
/// only by spaces or case once ("checkup", "check up").
fn choices(slot: &SlotSpec) -> Vec<&str> {
    let mut seen: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for o in &slot.options {
        let k: String = o
            .chars()
            .filter(|c| !c.is_whitespace())
            .flat_map(char::to_lowercase)
            .collect();
        if !seen.contains(&k) {
            seen.push(k);
            out.push(o.as_str());
        }
    }
    out
}

/// "a, b and c" for the ear.
fn list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{}, or {last}", rest.join(", ")),
    }
}
