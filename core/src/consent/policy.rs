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
mod tests {
    use chrono_tz::America::{Chicago, Denver, Los_Angeles, New_York, Phoenix};

    use super::*;

    fn t(s: &str) -> Timestamp {
        Timestamp(DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis())
    }

    fn loc(rules: &[Rule], zones: &[Tz]) -> Location {
        Location {
            rules: rules.to_vec(),
            zones: zones.to_vec(),
            source: "test",
        }
    }

    fn req<'a>(now: Timestamp, purpose: Purpose, l: &'a Location) -> Request<'a> {
        Request {
            now,
            channel: Channel::Sms,
            purpose,
            subject: "appointment",
            consent: Consent::OptedIn,
            confirmation: false,
            direct_reply: false,
            basis: Some(BASIS_CONSENT),
            location: l,
            sent_on_subject: &[],
            whatsapp_last_inbound: None,
            whatsapp_template: false,
        }
    }

    fn decide_at(now: &str, rules: &[Rule], zones: &[Tz]) -> Decision {
        let l = loc(rules, zones);
        decide(&req(t(now), Purpose::Reminder, &l))
    }

    fn until(d: Decision) -> Timestamp {
        match d {
            Decision::Defer { until, .. } => until,
            other => panic!("expected a deferral, got {other:?}"),
        }
    }

    #[test]
    fn federal_window_is_half_open_in_local_time() {
        let f = [Rule::Federal];
        // 2026-11-22 is a Sunday, after DST ended (EST = UTC-5).
        assert!(matches!(
            decide_at("2026-11-23T13:00:00Z", &f, &[New_York]),
            Decision::Send { .. }
        ));
        assert!(
            matches!(
                decide_at("2026-11-24T01:59:59Z", &f, &[New_York]),
                Decision::Send { .. }
            ),
            "20:59:59"
        );
        // 21:00:00 local is outside; next allowed is 08:00 local.
        let d = decide_at("2026-11-24T02:00:00Z", &f, &[New_York]);
        assert_eq!(until(d), t("2026-11-24T13:00:00Z"));
        // 07:59 local: deferred to 08:00 exactly.
        assert_eq!(
            until(decide_at("2026-11-24T12:59:00Z", &f, &[New_York])),
            t("2026-11-24T13:00:00Z")
        );
    }

    #[test]
    fn a_reminder_at_2230_is_deferred_to_the_states_start() {
        // Tuesday 2026-11-24 22:30 Eastern.
        let at = "2026-11-25T03:30:00Z";
        let fed = until(decide_at(at, &[Rule::Federal], &[New_York]));
        assert_eq!(fed, t("2026-11-25T13:00:00Z"), "08:00 EST");
        let ct = until(decide_at(
            at,
            &[Rule::Federal, Rule::Connecticut],
            &[New_York],
        ));
        assert_eq!(ct, t("2026-11-25T14:00:00Z"), "09:00 EST in Connecticut");
        let fl = until(decide_at(
            "2026-11-25T01:30:00Z",
            &[Rule::Federal, Rule::Florida],
            &[New_York],
        ));
        assert_eq!(
            fl,
            t("2026-11-25T13:00:00Z"),
            "20:30 is already quiet in Florida"
        );
    }

    #[test]
    fn dst_transitions_of_2026_in_several_zones() {
        let f = [Rule::Federal];
        // Spring forward 2026-03-08: 08:00 EDT is 12:00 UTC (not 13:00).
        assert_eq!(
            until(decide_at("2026-03-08T07:30:00Z", &f, &[New_York])),
            t("2026-03-08T12:00:00Z")
        );
        // The night of the change (02:30 local does not exist): no crash,
        // deferral lands on 08:00 local the same morning.
        assert_eq!(
            until(decide_at("2026-03-08T07:30:00Z", &f, &[Chicago])),
            t("2026-03-08T13:00:00Z")
        );
        assert_eq!(
            until(decide_at("2026-03-08T09:30:00Z", &f, &[Denver])),
            t("2026-03-08T14:00:00Z")
        );
        assert_eq!(
            until(decide_at("2026-03-08T09:30:00Z", &f, &[Los_Angeles])),
            t("2026-03-08T15:00:00Z")
        );
        // Arizona has no DST.
        assert_eq!(
            until(decide_at("2026-03-08T09:30:00Z", &f, &[Phoenix])),
            t("2026-03-08T15:00:00Z")
        );
        // Fall back 2026-11-01: 01:30 happens twice; 08:00 EST is 13:00 UTC.
        assert_eq!(
            until(decide_at("2026-11-01T05:30:00Z", &f, &[New_York])),
            t("2026-11-01T13:00:00Z")
        );
        assert_eq!(
            until(decide_at("2026-11-01T06:30:00Z", &f, &[New_York])),
            t("2026-11-01T13:00:00Z")
        );
        // A fixed UTC offset would be wrong half the year: summer 08:00 EDT.
        assert_eq!(
            until(decide_at("2026-07-01T03:00:00Z", &f, &[New_York])),
            t("2026-07-01T12:00:00Z")
        );
    }

    #[test]
    fn texas_sundays_start_at_noon_and_alabama_has_no_sundays_or_holidays() {
        let tx = [Rule::Federal, Rule::Texas];
        // Sunday 2026-11-22 10:00 CST → noon.
        assert_eq!(
            until(decide_at("2026-11-22T16:00:00Z", &tx, &[Chicago])),
            t("2026-11-22T18:00:00Z")
        );
        // Monday 08:30 CST → 09:00.
        assert_eq!(
            until(decide_at("2026-11-23T14:30:00Z", &tx, &[Chicago])),
            t("2026-11-23T15:00:00Z")
        );
        let al = [Rule::Federal, Rule::Alabama];
        // Sunday noon in Alabama → Monday 08:00.
        assert_eq!(
            until(decide_at("2026-11-22T18:00:00Z", &al, &[Chicago])),
            t("2026-11-23T14:00:00Z")
        );
        // Thanksgiving 2026-11-26 (Thursday) → Friday 08:00.
        assert_eq!(
            until(decide_at("2026-11-26T18:00:00Z", &al, &[Chicago])),
            t("2026-11-27T14:00:00Z")
        );
        // Christmas 2027 falls on a Saturday: observed Friday the 24th.
        assert!(us_holiday(NaiveDate::from_ymd_opt(2027, 12, 24).unwrap()));
        assert!(!us_holiday(NaiveDate::from_ymd_opt(2026, 11, 24).unwrap()));
    }

    #[test]
    fn the_panhandle_must_be_allowed_in_both_of_its_zones() {
        let l = locate(
            None,
            None,
            None,
            Some("+18505551234"),
            New_York,
            &[],
            &AbroadHours::default(),
        );
        assert_eq!(l.zones, vec![New_York, Chicago]);
        assert!(l.rules.contains(&Rule::Florida));
        // 08:30 Eastern is 07:30 Central: wait for 08:00 Central (09:00 ET).
        let d = decide(&req(t("2026-11-24T13:30:00Z"), Purpose::Reminder, &l));
        assert_eq!(until(d), t("2026-11-24T14:00:00Z"));
        // 19:30 Central is 20:30 Eastern: quiet in Florida already.
        let d = decide(&req(t("2026-11-25T01:30:00Z"), Purpose::Reminder, &l));
        assert_eq!(until(d), t("2026-11-25T14:00:00Z"));
    }

    #[test]
    fn location_precedence() {
        let tenant = &[Rule::Florida, Rule::Connecticut];
        let l = locate(
            Some("US-TX"),
            None,
            Some("FL"),
            Some("+13055551234"),
            New_York,
            tenant,
            &AbroadHours::default(),
        );
        assert_eq!(
            (l.source, l.zones.clone()),
            ("contact region", vec![Chicago, Denver])
        );
        let l = locate(
            None,
            Some(Los_Angeles),
            Some("FL"),
            None,
            New_York,
            tenant,
            &AbroadHours::default(),
        );
        assert_eq!(l.zones, vec![Los_Angeles]);
        let l = locate(
            None,
            None,
            Some("WA"),
            Some("+13055551234"),
            New_York,
            tenant,
            &AbroadHours::default(),
        );
        assert_eq!(
            (l.source, l.rules.clone()),
            ("provider FromState", vec![Rule::Federal, Rule::Washington])
        );
        let l = locate(
            None,
            None,
            None,
            Some("+13055551234"),
            Chicago,
            tenant,
            &AbroadHours::default(),
        );
        assert_eq!((l.source, l.zones.clone()), ("area code", vec![New_York]));
        // A New York number is in New York: federal rules, Eastern time
        // (it used to get the tenant's strictest set, Florida's hours).
        let l = locate(
            None,
            None,
            None,
            Some("+12125551234"),
            Chicago,
            tenant,
            &AbroadHours::default(),
        );
        assert_eq!(
            (l.source, l.rules.clone(), l.zones.clone()),
            ("area code", vec![Rule::Federal], vec![New_York])
        );
        // A toll-free number is nowhere in particular: the strictest set.
        let l = locate(
            None,
            None,
            None,
            Some("+18005551234"),
            Chicago,
            tenant,
            &AbroadHours::default(),
        );
        assert_eq!(l.source, "tenant zone, strictest rules");
        assert_eq!(
            l.rules,
            vec![Rule::Federal, Rule::Florida, Rule::Connecticut]
        );
        assert_eq!(l.zones, vec![Chicago]);
        // A US territory: federal rules in its own zone.
        let l = locate(
            None,
            None,
            None,
            Some("+17875551234"),
            Chicago,
            tenant,
            &AbroadHours::default(),
        );
        assert_eq!(
            (l.rules.clone(), l.zones.clone()),
            (vec![Rule::Federal], vec![chrono_tz::America::Puerto_Rico])
        );
    }

    /// Numbers outside the US never get US rules: a clinic in Kolkata
    /// texting an Indian number uses its own hours there, in its zone; a
    /// country the tenant set hours for uses those.
    #[test]
    fn numbers_abroad_get_the_tenants_hours_never_us_state_rules() {
        let kolkata = chrono_tz::Asia::Kolkata;
        let strict = &STATE_RULES;
        let abroad = AbroadHours {
            default: (9 * 60, 20 * 60),
            by_country: vec![("GB".into(), (10 * 60, 18 * 60))],
        };
        let l = locate(
            None,
            None,
            Some("FL"),
            Some("+919876543210"),
            kolkata,
            strict,
            &abroad,
        );
        assert_eq!(
            (l.rules.clone(), l.zones.clone()),
            (vec![Rule::Abroad(9 * 60, 20 * 60)], vec![kolkata])
        );
        // 21:00 in Kolkata is 15:30 UTC: outside the tenant's 09-20 window,
        // deferred to 09:00 Kolkata (03:30 UTC).
        let d = decide(&req(t("2026-03-10T15:30:00Z"), Purpose::Reminder, &l));
        assert_eq!(until(d), t("2026-03-11T03:30:00Z"));
        let l = locate(
            None,
            None,
            None,
            Some("+442079460000"),
            kolkata,
            strict,
            &abroad,
        );
        assert_eq!(l.rules, vec![Rule::Abroad(10 * 60, 18 * 60)]);
        // Canada is North American, not US.
        let l = locate(
            None,
            None,
            None,
            Some("+14165551234"),
            New_York,
            strict,
            &AbroadHours::default(),
        );
        assert_eq!(l.rules, vec![Rule::Abroad(8 * 60, 21 * 60)]);
        assert!(!l.rules.iter().any(|r| STATE_RULES.contains(r)));
    }

    /// Every state, DC and territory has the zones its local time may be in.
    #[test]
    fn every_state_has_its_zones() {
        for st in [
            "AL", "AK", "AZ", "AR", "CA", "CO", "CT", "DE", "DC", "FL", "GA", "HI", "ID", "IL",
            "IN", "IA", "KS", "KY", "LA", "ME", "MD", "MA", "MI", "MN", "MS", "MO", "MT", "NE",
            "NV", "NH", "NJ", "NM", "NY", "NC", "ND", "OH", "OK", "OR", "PA", "RI", "SC", "SD",
            "TN", "TX", "UT", "VT", "VA", "WA", "WV", "WI", "WY", "PR", "VI", "GU", "AS", "MP",
        ] {
            assert!(!zones_of_state(st).is_empty(), "{st}");
        }
    }

    #[test]
    fn florida_caps_three_per_rolling_day_on_one_subject() {
        let l = loc(&[Rule::Federal, Rule::Florida], &[New_York]);
        let now = t("2026-11-24T17:00:00Z"); // noon Eastern
        let sent = [
            t("2026-11-23T18:00:00Z"),
            t("2026-11-24T14:00:00Z"),
            t("2026-11-24T15:00:00Z"),
        ];
        let mut r = req(now, Purpose::Reminder, &l);
        r.sent_on_subject = &sent;
        let d = decide(&r);
        // Released 24 h after the oldest of the three.
        assert_eq!(until(d.clone()), t("2026-11-24T18:00:00.001Z"));
        assert!(matches!(d, Decision::Defer { rule, .. } if rule.contains("frequency cap")));
        // Two in the window: fine.
        r.sent_on_subject = &sent[1..];
        assert!(matches!(decide(&r), Decision::Send { .. }));
        // No cap for Washington.
        let wa = loc(&[Rule::Federal, Rule::Washington], &[Los_Angeles]);
        let mut r = req(t("2026-11-24T20:00:00Z"), Purpose::Reminder, &wa);
        r.sent_on_subject = &sent;
        assert!(matches!(decide(&r), Decision::Send { .. }));
    }

    /// The rolling day is 24 real hours, also across the spring-forward
    /// night: three sends on Saturday 10:00-12:00 EST hold a fourth on the
    /// same subject until 11:00 EDT Sunday (not 10:00, the same wall time).
    #[test]
    fn a_cap_across_the_dst_change_counts_real_hours() {
        let l = loc(&[Rule::Federal, Rule::Florida], &[New_York]);
        let sent = [
            t("2026-03-07T15:00:00Z"),
            t("2026-03-07T16:00:00Z"),
            t("2026-03-07T17:00:00Z"),
        ];
        let mut r = req(t("2026-03-08T14:30:00Z"), Purpose::Marketing, &l);
        r.sent_on_subject = &sent;
        assert_eq!(until(decide(&r)), t("2026-03-08T15:00:00.001Z"));
        // Another subject (the core passes none of these sends): goes now.
        r.sent_on_subject = &[];
        assert!(matches!(decide(&r), Decision::Send { .. }));
    }

    #[test]
    fn a_cap_release_inside_quiet_hours_waits_for_the_morning() {
        let l = loc(&[Rule::Federal, Rule::Florida], &[New_York]);
        // Three sends at 19:58-19:59:30 Eastern yesterday; now 19:10.
        let sent = [
            t("2026-11-24T00:58:00Z"),
            t("2026-11-24T00:59:00Z"),
            t("2026-11-24T00:59:30Z"),
        ];
        let mut r = req(t("2026-11-25T00:10:00Z"), Purpose::Reminder, &l);
        r.sent_on_subject = &sent;
        // Released 24 h after the oldest: 19:58 today, still allowed.
        assert_eq!(until(decide(&r)), t("2026-11-25T00:58:00.001Z"));
        // Across spring-forward the same 24 h end at 20:30 EDT, which is
        // quiet: the message waits for 08:00 EDT the next morning.
        let sent = [
            t("2026-03-08T00:30:00Z"),
            t("2026-03-08T00:35:00Z"),
            t("2026-03-08T00:40:00Z"),
        ];
        let mut r = req(t("2026-03-08T23:00:00Z"), Purpose::Reminder, &l);
        r.sent_on_subject = &sent;
        assert_eq!(until(decide(&r)), t("2026-03-09T12:00:00Z"));
    }

    #[test]
    fn consent_rules() {
        let l = loc(&[Rule::Federal], &[New_York]);
        let now = t("2026-11-24T17:00:00Z");
        let mut r = req(now, Purpose::Marketing, &l);
        r.consent = Consent::Unknown;
        assert_eq!(
            decide(&r),
            Decision::Block {
                reason: "marketing requires an opt-in"
            }
        );
        r.consent = Consent::OptedOut;
        r.purpose = Purpose::Conversational;
        r.direct_reply = true;
        assert_eq!(
            decide(&r),
            Decision::Block {
                reason: "recipient opted out"
            }
        );
        r.confirmation = true;
        assert!(
            matches!(decide(&r), Decision::Send { .. }),
            "the one confirmation goes out"
        );
        // A direct reply is not held by quiet hours.
        let mut r = req(t("2026-11-25T04:00:00Z"), Purpose::Conversational, &l);
        r.direct_reply = true;
        assert!(matches!(
            decide(&r),
            Decision::Send { rule } if rule == "direct reply"
        ));
        r.direct_reply = false;
        assert!(matches!(decide(&r), Decision::Defer { .. }));
    }

    #[test]
    fn whatsapp_window_at_its_boundary() {
        let l = loc(&[Rule::Federal], &[New_York]);
        let last = t("2026-11-23T17:00:00Z");
        let mut r = req(t("2026-11-24T16:59:59.999Z"), Purpose::Conversational, &l);
        r.channel = Channel::Whatsapp;
        r.direct_reply = true;
        r.whatsapp_last_inbound = Some(last);
        assert!(matches!(decide(&r), Decision::Send { .. }), "inside 24 h");
        r.now = t("2026-11-24T17:00:00Z");
        assert!(
            matches!(decide(&r), Decision::Block { .. }),
            "exactly 24 h later is outside"
        );
        r.whatsapp_template = true;
        assert_eq!(
            decide(&r),
            Decision::Send {
                rule: WHATSAPP_TEMPLATE_RULE.into(),
            },
            "a template to an opted-in user"
        );
        // A template is business-initiated: quiet hours hold it.
        let late = t("2026-11-25T03:30:00Z"); // 22:30 in New York
        r.now = late;
        assert!(
            matches!(decide(&r), Decision::Defer { until, .. } if until == t("2026-11-25T13:00:00Z")),
            "a template at 22:30 waits for 08:00"
        );
        r.now = t("2026-11-24T17:00:00Z");
        r.consent = Consent::Unknown;
        assert!(
            matches!(decide(&r), Decision::Block { .. }),
            "but not to an unknown one"
        );
        r.whatsapp_last_inbound = None;
        r.consent = Consent::OptedIn;
        r.whatsapp_template = false;
        assert!(
            matches!(decide(&r), Decision::Block { .. }),
            "no customer message at all"
        );
    }
}

#[cfg(test)]
mod search_tests {
    use chrono_tz::America::{Chicago, Denver, Los_Angeles, New_York, Phoenix};
    use proptest::prelude::*;

    use super::*;

    /// The obvious search: every minute until one is allowed.
    fn brute(t: Timestamp, loc: &Location, sent: &[Timestamp]) -> Option<Timestamp> {
        let align = |x: i64| (x + MINUTE_MS - 1).div_euclid(MINUTE_MS) * MINUTE_MS;
        if capped(t, loc, sent).is_none() && quiet(t, loc).is_none() {
            return Some(t);
        }
        let mut at = Timestamp(align(t.0 + 1));
        while at.0 - t.0 <= HORIZON_MS {
            if let Some((release, _)) = capped(at, loc, sent) {
                at = Timestamp(align(release.0).max(at.0 + MINUTE_MS));
                if capped(release, loc, sent).is_none() && quiet(release, loc).is_none() {
                    return Some(release);
                }
                continue;
            }
            if quiet(at, loc).is_none() {
                return Some(at);
            }
            at = Timestamp(at.0 + MINUTE_MS);
        }
        None
    }

    const ZONES: [Tz; 5] = [New_York, Chicago, Denver, Los_Angeles, Phoenix];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn jumping_search_equals_minute_by_minute(
            // Any second of 2026, DST days included.
            secs in 1_767_225_600i64..1_798_761_600i64,
            rule_mask in 0u8..128,
            zone_mask in 1u8..32,
        ) {
            let mut rules = vec![Rule::Federal];
            rules.extend(STATE_RULES.iter().enumerate().filter(|(i, _)| rule_mask & (1 << i) != 0).map(|(_, r)| *r));
            let zones: Vec<Tz> = ZONES.iter().enumerate().filter(|(i, _)| zone_mask & (1 << i) != 0).map(|(_, z)| *z).collect();
            let loc = Location { rules, zones, source: "prop" };
            let t = Timestamp(secs * 1000 + 123);
            let fast = next_allowed(t, &loc, &[]).map(|(x, _)| x);
            prop_assert_eq!(fast, brute(t, &loc, &[]));
        }
    }
}
