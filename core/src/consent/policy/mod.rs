//! The outbound gate as a pure function: given a message's channel,
//! purpose and subject, the contact's consent, location and recent sends,
//! and the current instant, decide `Send`, `Defer { until }` or `Block`.
//!
//! Quiet hours and frequency caps apply to business-initiated automated
//! messages (marketing, reminders, follow-ups); a direct reply to the
//! customer's own message is conversational and goes out at once. Windows
//! are judged in the recipient's local time from the IANA database
//! (chrono-tz), keyed by the recipient's state; when a place spans several
//! zones, or nothing is known, every candidate zone must allow it. Local
//! time is only ever computed *from* UTC instants, and deferral steps
//! through UTC minutes, so nonexistent or repeated local times (DST) can
//! neither crash nor send twice. Windows are half-open: 21:00:00 is out.

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Timelike, Utc, Weekday};
use chrono_tz::Tz;
use threadline_protocol::{Channel, Timestamp};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Purpose {
    Conversational,
    Reminder,
    Marketing,
}

impl Purpose {
    pub fn parse(s: &str) -> Option<Purpose> {
        match s {
            "conversational" => Some(Purpose::Conversational),
            "reminder" => Some(Purpose::Reminder),
            "marketing" => Some(Purpose::Marketing),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Conversational => "conversational",
            Purpose::Reminder => "reminder",
            Purpose::Marketing => "marketing",
        }
    }
}

/// What a business-initiated conversational or reminder message needs on
/// record (marketing always needs a written opt-in).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutreachBasis {
    /// Consent on record, or an existing relationship: the customer has
    /// contacted the business (texted, called, wrote on WhatsApp or in web
    /// chat) and the address is one of theirs in that conversation.
    #[default]
    RelationshipOrConsent,
    /// Consent on record only.
    Consent,
}

impl OutreachBasis {
    pub fn parse(s: &str) -> Option<OutreachBasis> {
        match s {
            "relationship_or_consent" => Some(OutreachBasis::RelationshipOrConsent),
            "consent" => Some(OutreachBasis::Consent),
            _ => None,
        }
    }
}

/// The basis a decision rests on, named in the decision's rule.
pub const BASIS_CONSENT: &str = "consent on record";
pub const BASIS_RELATIONSHIP: &str =
    "the customer contacted the business, and this address is theirs";
pub const BASIS_REPLY: &str = "a reply to the customer's message";
/// The refusal when nothing on record allows a business-initiated message.
pub const NO_BASIS: &str =
    "no basis: no consent on record and the customer never contacted the business";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consent {
    OptedIn,
    OptedOut,
    Unknown,
}

/// Jurisdictions with their own calling/texting hours (docs/compliance.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    Federal,
    Florida,
    Oklahoma,
    Maryland,
    Washington,
    Connecticut,
    Texas,
    Alabama,
    /// The tenant's sending hours for a number outside the US (minutes
    /// after local midnight, start and end): US state rules never apply
    /// there.
    Abroad(u16, u16),
}

pub const STATE_RULES: [Rule; 7] = [
    Rule::Florida,
    Rule::Oklahoma,
    Rule::Maryland,
    Rule::Washington,
    Rule::Connecticut,
    Rule::Texas,
    Rule::Alabama,
];

impl Rule {
    pub fn for_state(code: &str) -> Option<Rule> {
        Some(match code.to_ascii_uppercase().trim_start_matches("US-") {
            "FL" => Rule::Florida,
            "OK" => Rule::Oklahoma,
            "MD" => Rule::Maryland,
            "WA" => Rule::Washington,
            "CT" => Rule::Connecticut,
            "TX" => Rule::Texas,
            "AL" => Rule::Alabama,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Rule::Federal => "US federal (TCPA)",
            Rule::Florida => "Florida",
            Rule::Oklahoma => "Oklahoma",
            Rule::Maryland => "Maryland",
            Rule::Washington => "Washington",
            Rule::Connecticut => "Connecticut",
            Rule::Texas => "Texas",
            Rule::Alabama => "Alabama",
            Rule::Abroad(..) => "the tenant's hours for numbers outside the US",
        }
    }

    /// The allowed local window (start, end) in minutes after midnight, or
    /// `None` when nothing may be sent that day.
    fn window(self, date: NaiveDate) -> Option<(u32, u32)> {
        const H: u32 = 60;
        match self {
            Rule::Federal => Some((8 * H, 21 * H)),
            Rule::Florida | Rule::Oklahoma | Rule::Maryland | Rule::Washington => {
                Some((8 * H, 20 * H))
            }
            Rule::Connecticut => Some((9 * H, 20 * H)),
            Rule::Texas if date.weekday() == Weekday::Sun => Some((12 * H, 21 * H)),
            Rule::Texas => Some((9 * H, 21 * H)),
            Rule::Alabama if date.weekday() == Weekday::Sun || us_holiday(date) => None,
            Rule::Alabama => Some((8 * H, 20 * H)),
            Rule::Abroad(start, end) => Some((u32::from(start), u32::from(end))),
        }
    }

    /// At most this many messages on one subject per rolling 24 hours.
    fn cap(self) -> Option<usize> {
        match self {
            Rule::Florida | Rule::Oklahoma | Rule::Maryland => Some(3),
            _ => None,
        }
    }
}

/// US federal holidays (with their observed weekday when they fall on a
/// weekend), used for Alabama's "no calls on holidays".
pub fn us_holiday(d: NaiveDate) -> bool {
    let y = d.year();
    let nth = |month, weekday, n: u8| NaiveDate::from_weekday_of_month_opt(y, month, weekday, n);
    let last_monday_may = (1..=5)
        .rev()
        .find_map(|n| NaiveDate::from_weekday_of_month_opt(y, 5, Weekday::Mon, n));
    let fixed = [(1, 1), (6, 19), (7, 4), (11, 11), (12, 25)];
    let observed = |m, day| {
        let date = NaiveDate::from_ymd_opt(y, m, day)?;
        Some(match date.weekday() {
            Weekday::Sat => date.pred_opt()?,
            Weekday::Sun => date.succ_opt()?,
            _ => date,
        })
    };
    let mut days = vec![
        nth(1, Weekday::Mon, 3),
        nth(2, Weekday::Mon, 3),
        last_monday_may,
        nth(9, Weekday::Mon, 1),
        nth(10, Weekday::Mon, 2),
        nth(11, Weekday::Thu, 4),
    ];
    for (m, day) in fixed {
        days.push(NaiveDate::from_ymd_opt(y, m, day));
        days.push(observed(m, day));
    }
    days.into_iter().flatten().any(|h| h == d)
}

/// Where the recipient is, as far as is known: the rules that apply and
/// the zones their local time may be in.
#[derive(Debug, Clone, PartialEq)]
pub struct Location {
    pub rules: Vec<Rule>,
    pub zones: Vec<Tz>,
    /// How the location was found, for the audit record.
    pub source: &'static str,
}

/// The zones a US state, DC or territory spans (every one must allow a
/// message when only the state is known).
fn zones_of_state(code: &str) -> &'static [Tz] {
    use chrono_tz::America::*;
    use chrono_tz::Pacific::{Guam, Honolulu, Pago_Pago, Saipan};
    match code.to_ascii_uppercase().trim_start_matches("US-") {
        "CT" | "DE" | "DC" | "GA" | "ME" | "MD" | "MA" | "NH" | "NJ" | "NY" | "NC" | "OH"
        | "PA" | "RI" | "SC" | "VT" | "VA" | "WV" => &[New_York],
        "MI" => &[Detroit, Chicago],
        "IN" => &[Indiana::Indianapolis, Chicago],
        "KY" | "TN" | "FL" => &[New_York, Chicago],
        "AL" | "AR" | "IL" | "IA" | "LA" | "MN" | "MS" | "MO" | "OK" | "WI" => &[Chicago],
        "KS" | "NE" | "ND" | "SD" | "TX" => &[Chicago, Denver],
        "CO" | "MT" | "NM" | "UT" | "WY" => &[Denver],
        "AZ" => &[Phoenix],
        "ID" | "OR" => &[Boise, Los_Angeles],
        "CA" | "NV" | "WA" => &[Los_Angeles],
        "AK" => &[Anchorage, Adak],
        "HI" => &[Honolulu],
        "PR" => &[Puerto_Rico],
        "VI" => &[St_Thomas],
        "GU" => &[Guam],
        "MP" => &[Saipan],
        "AS" => &[Pago_Pago],
        _ => &[],
    }
}

/// (state, zones) of an area code of a state with its own rules, zone by
/// zone where the state spans several (the panhandle, west Texas).
fn special_area_code(e164: &str) -> Option<(&'static str, &'static [Tz])> {
    use chrono_tz::America::*;
    let digits = e164.strip_prefix("+1")?;
    let code = digits.get(..3)?;
    const FL: &[&str] = &[
        "239", "305", "321", "324", "352", "386", "407", "561", "645", "656", "689", "727", "728",
        "754", "772", "786", "813", "863", "904", "941", "954",
    ];
    const OK: &[&str] = &["405", "539", "572", "580", "918"];
    const MD: &[&str] = &["227", "240", "301", "410", "443", "667"];
    const WA: &[&str] = &["206", "253", "360", "425", "509", "564"];
    const CT: &[&str] = &["203", "475", "860", "959"];
    const TX_CENTRAL: &[&str] = &[
        "210", "214", "254", "281", "325", "346", "361", "409", "430", "469", "512", "682", "713",
        "726", "737", "806", "817", "830", "832", "903", "936", "940", "945", "956", "972", "979",
    ];
    const AL: &[&str] = &["205", "251", "256", "334", "483", "659", "938"];
    Some(match code {
        // The panhandle's codes span Central and Eastern time.
        "850" | "448" => ("FL", &[New_York, Chicago]),
        c if FL.contains(&c) => ("FL", &[New_York]),
        c if OK.contains(&c) => ("OK", &[Chicago]),
        c if MD.contains(&c) => ("MD", &[New_York]),
        c if WA.contains(&c) => ("WA", &[Los_Angeles]),
        c if CT.contains(&c) => ("CT", &[New_York]),
        "915" => ("TX", &[Denver]),
        "432" => ("TX", &[Chicago, Denver]),
        c if TX_CENTRAL.contains(&c) => ("TX", &[Chicago]),
        c if AL.contains(&c) => ("AL", &[Chicago]),
        _ => return None,
    })
}

/// The tenant's sending hours for numbers outside the US: a default
/// window and windows by country (ISO 3166 code, or `+NN` for a calling
/// code the metadata does not place).
#[derive(Debug, Clone, PartialEq)]
pub struct AbroadHours {
    pub default: (u16, u16),
    pub by_country: Vec<(String, (u16, u16))>,
}

impl Default for AbroadHours {
    /// 08:00 to 21:00 local, as the US federal window.
    fn default() -> Self {
        AbroadHours {
            default: (8 * 60, 21 * 60),
            by_country: Vec::new(),
        }
    }
}

impl AbroadHours {
    fn rule(&self, country: &str) -> Rule {
        let (s, e) = self
            .by_country
            .iter()
            .find(|(c, _)| c.eq_ignore_ascii_case(country))
            .map_or(self.default, |(_, w)| *w);
        Rule::Abroad(s, e)
    }
}

/// Resolves the recipient's location: explicit contact data (region and
/// zone), then the provider's `FromState`, then the phone number (its
/// area code's state, a US territory, or another country, which gets the
/// tenant's hours abroad and never US state rules), then the tenant's zone
/// with every rule the tenant enables (the strictest).
pub fn locate(
    region: Option<&str>,
    contact_zone: Option<Tz>,
    provider_state: Option<&str>,
    phone: Option<&str>,
    tenant_zone: Tz,
    tenant_rules: &[Rule],
    abroad: &AbroadHours,
) -> Location {
    let with_state = |state: &str, zones: &[Tz], source| {
        let mut rules = vec![Rule::Federal];
        rules.extend(Rule::for_state(state));
        let zones = match contact_zone {
            Some(z) => vec![z],
            None if !zones.is_empty() => zones.to_vec(),
            None => vec![tenant_zone],
        };
        Location {
            rules,
            zones,
            source,
        }
    };
    if let Some(r) = region.filter(|r| r.len() >= 2) {
        return with_state(r, zones_of_state(r), "contact region");
    }
    let place = phone.and_then(super::nanp::place);
    if let Some(super::nanp::Place::Abroad(country)) = &place {
        // Outside the US, whatever else is known: the tenant's hours for
        // that country, in the contact's zone or the tenant's.
        return Location {
            rules: vec![abroad.rule(country)],
            zones: vec![contact_zone.unwrap_or(tenant_zone)],
            source: "phone number outside the US",
        };
    }
    if let Some(z) = contact_zone {
        // A known zone but no state: that zone, and the strictest rules.
        let mut rules = vec![Rule::Federal];
        rules.extend_from_slice(tenant_rules);
        return Location {
            rules,
            zones: vec![z],
            source: "contact time zone",
        };
    }
    if let Some(s) = provider_state.filter(|s| s.len() == 2) {
        return with_state(s, zones_of_state(s), "provider FromState");
    }
    if let Some((state, zones)) = phone.and_then(special_area_code) {
        return with_state(state, zones, "area code");
    }
    match place {
        Some(super::nanp::Place::UsState(state)) => {
            return with_state(state, zones_of_state(state), "area code");
        }
        Some(super::nanp::Place::UsTerritory(t)) => {
            return with_state(t, zones_of_state(t), "US territory");
        }
        _ => {}
    }
    let mut rules = vec![Rule::Federal];
    rules.extend_from_slice(tenant_rules);
    Location {
        rules,
        zones: vec![tenant_zone],
        source: "tenant zone, strictest rules",
    }
}

/// Everything the gate needs to decide.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub now: Timestamp,
    pub channel: Channel,
    pub purpose: Purpose,
    pub subject: &'a str,
    /// Consent for this channel and purpose (revoke-all already applied).
    pub consent: Consent,
    /// The single confirmation of an opt-out or opt-in.
    pub confirmation: bool,
    /// A direct reply to a message the customer just sent.
    pub direct_reply: bool,
    /// What on record allows a business-initiated message (`None`:
    /// nothing; conversational and reminder messages are then refused).
    pub basis: Option<&'static str>,
    pub location: &'a Location,
    /// Business-initiated messages already sent to this contact with this
    /// subject, newest last (only the last 24 hours matter).
    pub sent_on_subject: &'a [Timestamp],
    /// The customer's last inbound message or call on WhatsApp.
    pub whatsapp_last_inbound: Option<Timestamp>,
    /// The message is an approved WhatsApp template.
    pub whatsapp_template: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Send {
        rule: std::borrow::Cow<'static, str>,
    },
    Defer {
        until: Timestamp,
        rule: String,
    },
    Block {
        reason: &'static str,
    },
}

const DAY_MS: i64 = 86_400_000;
const MINUTE_MS: i64 = 60_000;
/// How far ahead a deferral looks for an allowed instant.
const HORIZON_MS: i64 = 9 * DAY_MS;

fn utc(t: Timestamp) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(t.0)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// The rule that forbids sending at `t`, if any, and how many minutes of
/// local time until that rule's window could open (its start today or
/// tomorrow, or the next local midnight on a day it forbids entirely).
fn quiet(t: Timestamp, loc: &Location) -> Option<(Rule, u32)> {
    let at = utc(t);
    for zone in &loc.zones {
        let local = at.with_timezone(zone);
        let minute = local.hour() * 60 + local.minute();
        for rule in &loc.rules {
            match rule.window(local.date_naive()) {
                Some((start, end)) if (start..end).contains(&minute) => {}
                Some((start, _)) if minute < start => return Some((*rule, start - minute)),
                Some((start, _)) => return Some((*rule, 1440 - minute + start)),
                None => return Some((*rule, 1440 - minute)),
            }
        }
    }
    None
}

/// When the frequency cap next allows a send, if it forbids one at `t`.
fn capped(t: Timestamp, loc: &Location, sent: &[Timestamp]) -> Option<(Timestamp, Rule)> {
    let (rule, cap) = loc
        .rules
        .iter()
        .filter_map(|r| Some((*r, r.cap()?)))
        .min_by_key(|(_, c)| *c)?;
    let window: Vec<Timestamp> = sent
        .iter()
        .copied()
        .filter(|s| s.0 > t.0 - DAY_MS && s.0 <= t.0)
        .collect();
    if window.len() < cap {
        return None;
    }
    // The oldest of the last `cap` sends leaves the rolling window.
    let mut w = window;
    w.sort();
    let release = w[w.len() - cap].saturating_add_millis(DAY_MS + 1);
    Some((release, rule))
}

/// The first instant at or after `t` allowed by both quiet hours and caps.
///
/// A forbidding rule says how far its window is; the search jumps there and
/// checks every rule again. A jump computed in local minutes can overshoot
/// by the size of a DST shift, so after a jump the search walks back while
/// the previous minute is allowed too, and the answer is exact.
fn next_allowed(t: Timestamp, loc: &Location, sent: &[Timestamp]) -> Option<(Timestamp, String)> {
    let mut at = t;
    let mut why = String::new();
    // Windows open on whole minutes.
    let align = |x: Timestamp| Timestamp((x.0 + MINUTE_MS - 1).div_euclid(MINUTE_MS) * MINUTE_MS);
    let allowed = |x: Timestamp| capped(x, loc, sent).is_none() && quiet(x, loc).is_none();
    let mut jumped = false;
    while at.0 - t.0 <= HORIZON_MS {
        if let Some((release, rule)) = capped(at, loc, sent) {
            why = format!("{} frequency cap", rule.name());
            at = release.max(at.saturating_add_millis(1));
            continue;
        }
        match quiet(at, loc) {
            None => {
                if jumped {
                    while at.0 - MINUTE_MS >= t.0 && allowed(Timestamp(at.0 - MINUTE_MS)) {
                        at = Timestamp(at.0 - MINUTE_MS);
                    }
                }
                return Some((at, why));
            }
            Some((rule, minutes)) => {
                if why.is_empty() {
                    why = format!("{} quiet hours", rule.name());
                }
                let aligned = align(at);
                at = if aligned != at {
                    aligned
                } else {
                    jumped = true;
                    at.saturating_add_millis(i64::from(minutes.max(1)) * MINUTE_MS)
                };
            }
        }
    }
    None
}

/// The rule of a WhatsApp message sent as an approved template because the
/// 24-hour window is closed; the sender renders it as `"type": "template"`.
pub const WHATSAPP_TEMPLATE_RULE: &str = "approved WhatsApp template outside the 24-hour window";

/// Decides what may happen to one outbound message.
pub fn decide(r: &Request) -> Decision {
    if r.confirmation {
        return Decision::Send {
            rule: "opt-out/opt-in confirmation".into(),
        };
    }
    if r.consent == Consent::OptedOut {
        return Decision::Block {
            reason: "recipient opted out",
        };
    }
    if r.purpose == Purpose::Marketing && r.consent != Consent::OptedIn {
        return Decision::Block {
            reason: "marketing requires an opt-in",
        };
    }
    if !r.direct_reply && r.basis.is_none() {
        return Decision::Block { reason: NO_BASIS };
    }
    if r.channel == Channel::Whatsapp {
        let in_window = r
            .whatsapp_last_inbound
            .is_some_and(|last| r.now.0 >= last.0 && r.now.0 - last.0 < DAY_MS);
        let template_ok = r.whatsapp_template && r.consent == Consent::OptedIn;
        if !(in_window || template_ok) {
            return Decision::Block {
                reason: "outside the WhatsApp 24-hour window: only templates to opted-in users",
            };
        }
        if !in_window {
            return match next_allowed(r.now, r.location, r.sent_on_subject) {
                Some((at, _)) if at == r.now => Decision::Send {
                    rule: WHATSAPP_TEMPLATE_RULE.into(),
                },
                Some((until, rule)) => Decision::Defer { until, rule },
                None => Decision::Block {
                    reason: "no allowed sending time within nine days",
                },
            };
        }
    }
    if r.direct_reply && r.purpose == Purpose::Conversational {
        return Decision::Send {
            rule: "direct reply".into(),
        };
    }
    match next_allowed(r.now, r.location, r.sent_on_subject) {
        Some((at, _)) if at == r.now => Decision::Send {
            rule: "within allowed hours".into(),
        },
        Some((until, rule)) => Decision::Defer { until, rule },
        None => Decision::Block {
            reason: "no allowed sending time within nine days",
        },
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod search_tests;
