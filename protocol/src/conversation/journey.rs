//! What is known about the customer and where their journey stands: the
//! captured facts, the booking and its offer, the follow-up cadence.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::*;

/// What is known about the customer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Captured {
    pub name: Option<String>,
    pub intent: Option<String>,
    pub slots: BTreeMap<String, String>,
    pub score: Option<f32>,
    pub facts: BTreeMap<String, String>,
}

/// Where the conversation stands in its flow: the bot's own progress,
/// never what the customer told us (that is `Captured`). Changed only by
/// `ConvEvent::JourneyChanged`, which carries the whole new value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journey {
    /// The flow journey under way (its name).
    pub active: Option<String>,
    /// The slot the bot asked for last.
    pub asking: Option<String>,
    /// Customer messages in a row the bot did not understand.
    pub misunderstood: u32,
    /// The customer's appointment, and any time offered to them.
    pub booking: Option<Booking>,
    /// The follow-up waiting for the customer's answer.
    pub cadence: Option<Cadence>,
    /// The lead was handed to the business (`qualified`).
    pub handoff: Option<String>,
    /// A qualified lead booked a meeting.
    pub lead_met: bool,
}

/// An appointment as the conversation holds it. The calendar holds the
/// same: `start` is booked by this conversation while `status` is
/// `Confirmed` or `Rescheduling`, and `offer` is held by it until
/// `offer.until`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Booking {
    /// The flow journey that books it.
    pub journey: String,
    /// What is booked, as the customer chose it (the journey's `service`
    /// slot; else the journey's name).
    pub service: String,
    pub status: BookingStatus,
    /// The appointment's time (none while a first time is only offered).
    pub start: Option<Timestamp>,
    /// A time held for the customer until they confirm it.
    pub offer: Option<Offer>,
    /// The pending reminder timers of the appointment.
    pub reminders: Vec<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    pub start: Timestamp,
    pub until: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BookingStatus {
    /// A first time is offered; nothing is booked yet.
    Offered,
    Confirmed,
    /// Booked, and the customer is choosing another time (the booked
    /// time stays theirs until the new one is confirmed).
    Rescheduling,
    Cancelled,
    Attended,
    NoShow,
}

impl BookingStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BookingStatus::Offered => "offered",
            BookingStatus::Confirmed => "confirmed",
            BookingStatus::Rescheduling => "rescheduling",
            BookingStatus::Cancelled => "cancelled",
            BookingStatus::Attended => "attended",
            BookingStatus::NoShow => "no_show",
        }
    }

    /// The appointment's time is the customer's (booked on the calendar).
    pub fn holds_start(self) -> bool {
        matches!(self, BookingStatus::Confirmed | BookingStatus::Rescheduling)
    }
}

impl Booking {
    /// The booked time, while it is booked.
    pub fn booked(&self) -> Option<Timestamp> {
        self.start.filter(|_| self.status.holds_start())
    }
}

/// The pending follow-up of a cadence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cadence {
    pub timer: u64,
    pub step: u32,
    /// The bot's question the follow-up repeats.
    pub question: String,
}

/// The slots where records written before `Journey` kept the flow's
/// machine state.
const LEGACY_KEYS: [&str; 14] = [
    "journey",
    "asking",
    "misunderstood",
    "held",
    "booked",
    "booking_status",
    "booking_reminders",
    "rebooked",
    "lead_met",
    "last_booking",
    "cadence_timer",
    "cadence_step",
    "cadence_question",
    "handoff",
];

impl Journey {
    /// Whether the bot's last words wait for an answer: a slot it asked
    /// for, or a time it offered.
    pub fn waits_for_answer(&self) -> bool {
        self.asking.is_some() || self.booking.as_ref().is_some_and(|b| b.offer.is_some())
    }

    /// The booked visit, if one is booked and still to come at `now`.
    pub fn upcoming(&self, now: Timestamp) -> Option<Timestamp> {
        self.booking
            .as_ref()
            .and_then(Booking::booked)
            .filter(|s| s.0 > now.0)
    }

    /// Whether `key` is a slot of the old machine state.
    pub fn is_legacy_key(key: &str) -> bool {
        LEGACY_KEYS.contains(&key)
    }

    /// Takes the flow's machine state out of `slots`, where records
    /// written before `Journey` existed kept it (an empty value clears).
    pub fn absorb_legacy(&mut self, slots: &mut BTreeMap<String, String>) {
        let some = |v: &str| (!v.is_empty()).then(|| v.to_owned());
        let at = |v: &str| v.parse::<i64>().ok().map(Timestamp);
        for k in LEGACY_KEYS {
            let Some(v) = slots.remove(k) else { continue };
            match k {
                "journey" => self.active = some(&v),
                "asking" => self.asking = some(&v),
                "misunderstood" => self.misunderstood = v.parse().unwrap_or(0),
                "held" => {
                    let b = self.booking_mut();
                    b.offer = at(&v).map(|start| Offer {
                        start,
                        until: start,
                    });
                    if b.offer.is_some() && b.start.is_none() {
                        b.status = BookingStatus::Offered;
                    }
                }
                "booked" => {
                    let b = self.booking_mut();
                    if let Some(t) = at(&v) {
                        b.start = Some(t);
                    }
                }
                "booking_status" => {
                    let status = match v.as_str() {
                        "confirmed" => Some(BookingStatus::Confirmed),
                        "rescheduling" => Some(BookingStatus::Rescheduling),
                        "cancelled" => Some(BookingStatus::Cancelled),
                        "attended" => Some(BookingStatus::Attended),
                        "no_show" => Some(BookingStatus::NoShow),
                        _ => None,
                    };
                    if let Some(st) = status {
                        self.booking_mut().status = st;
                    }
                }
                "booking_reminders" => {
                    self.booking_mut().reminders =
                        v.split(',').filter_map(|i| i.parse().ok()).collect();
                }
                "lead_met" => self.lead_met = v == "1",
                "handoff" => self.handoff = some(&v),
                "cadence_timer" => match v.parse::<u64>() {
                    Ok(timer) => {
                        let c = self.cadence.get_or_insert(Cadence {
                            timer,
                            step: 0,
                            question: String::new(),
                        });
                        c.timer = timer;
                    }
                    Err(_) => self.cadence = None,
                },
                "cadence_step" => {
                    if let Some(c) = &mut self.cadence {
                        c.step = v.parse().unwrap_or(0);
                    }
                }
                "cadence_question" => {
                    if let Some(c) = &mut self.cadence {
                        c.question = v;
                    }
                }
                _ => {}
            }
        }
        // A rescheduled booking of the old rules had released its time.
        if let Some(b) = &mut self.booking {
            if b.status == BookingStatus::Rescheduling && b.start.is_none() {
                b.status = BookingStatus::Offered;
            }
        }
    }

    fn booking_mut(&mut self) -> &mut Booking {
        let journey = self.active.clone().unwrap_or_default();
        self.booking.get_or_insert(Booking {
            service: journey.clone(),
            journey,
            status: BookingStatus::Offered,
            start: None,
            offer: None,
            reminders: Vec::new(),
        })
    }
}
