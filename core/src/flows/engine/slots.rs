//! The calendar's slots: which starts a service has, which are bookable, the
//! nearest opening either side, and how a time is said.

use super::*;

use chrono::{Datelike, Duration, Offset, TimeZone, Timelike};
use chrono_tz::Tz;
use threadline_protocol::Timestamp;

impl Flow {
    /// Every bookable slot that starts in [`from`, `to`), local time `tz`
    /// (open days and hours from the flow's `[calendar]`).
    pub fn slot_starts(&self, from: Timestamp, to: Timestamp, tz: Tz) -> Vec<Timestamp> {
        let (Some(c), Some(first), Some(last)) = (
            &self.spec.calendar,
            tz.timestamp_millis_opt(from.0).single(),
            tz.timestamp_millis_opt(to.0).single(),
        ) else {
            return Vec::new();
        };
        let step = Duration::minutes(c.slot_minutes.into());
        let mut out = Vec::new();
        let mut day = first.date_naive();
        while day <= last.date_naive() {
            if self.open_days.contains(&day.weekday()) {
                let mut t = self.open;
                loop {
                    // `NaiveTime` wraps at midnight: `end <= t` is a wrap.
                    let end = t + step;
                    if end <= t || end > self.close {
                        break;
                    }
                    if let Some(at) = tz.from_local_datetime(&day.and_time(t)).earliest() {
                        let at = Timestamp(at.timestamp_millis());
                        if at.0 >= from.0 && at.0 < to.0 {
                            out.push(at);
                        }
                    }
                    t = end;
                }
            }
            let Some(next) = day.succ_opt() else { break };
            day = next;
        }
        out
    }

    /// Is `at` the start of a bookable slot?
    pub fn bookable(&self, at: Timestamp, tz: Tz) -> bool {
        let Some(c) = &self.spec.calendar else {
            return false;
        };
        let Some(local) = tz.timestamp_millis_opt(at.0).single() else {
            return false;
        };
        let t = local.time();
        let minutes = (i64::from(t.num_seconds_from_midnight())
            - i64::from(self.open.num_seconds_from_midnight()))
            / 60;
        // In minutes of the day: a slot must end by closing time (a time
        // of day plus the slot's length would wrap past midnight).
        let ends = i64::from(t.num_seconds_from_midnight()) / 60 + i64::from(c.slot_minutes);
        self.open_days.contains(&local.weekday())
            && t >= self.open
            && ends <= i64::from(self.close.num_seconds_from_midnight()) / 60
            && t.num_seconds_from_midnight() % 60 == 0
            && minutes % i64::from(c.slot_minutes) == 0
    }

    /// Why `wanted` cannot be booked whoever holds it: "We're closed on
    /// Saturdays", "We're open 9:00 AM to 5:00 PM"; `None` if it could be.
    pub(super) fn closed_because(&self, wanted: Timestamp, tz: Tz) -> Option<String> {
        let c = self.spec.calendar.as_ref()?;
        let local = tz.timestamp_millis_opt(wanted.0).single()?;
        if !self.open_days.contains(&local.weekday()) {
            return Some(format!("We're closed on {}s", local.format("%A")));
        }
        let t = local.time();
        let ends = i64::from(t.num_seconds_from_midnight()) / 60 + i64::from(c.slot_minutes);
        let closes = i64::from(self.close.num_seconds_from_midnight()) / 60;
        if t < self.open || ends > closes {
            let at = |n: chrono::NaiveTime| n.format("%-I:%M %p").to_string();
            return Some(format!(
                "We're open {} to {}",
                at(self.open),
                at(self.close)
            ));
        }
        None
    }

    /// The opening nearest `wanted` on its day, later or earlier (later
    /// first at equal distance), held; and the nearest free one on the
    /// other side of `wanted`, if any, as an alternative (not held).
    /// `None` when that day has no opening: the caller searches forward.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn nearest_free(
        &self,
        wanted: Timestamp,
        tz: Tz,
        now: Timestamp,
        cal: &mut dyn Calendar,
        until: Timestamp,
        exclude: Option<Timestamp>,
    ) -> Option<(Timestamp, Option<Timestamp>)> {
        let c = self.spec.calendar.as_ref()?;
        let step = i64::from(c.slot_minutes) * 60_000;
        let day = tz.timestamp_millis_opt(wanted.0).single()?.date_naive();
        let earliest = now.0 + 60 * 60_000;
        let usable = |at: i64| {
            let ts = Timestamp(at);
            at >= earliest
                && Some(ts) != exclude
                && self.bookable(ts, tz)
                && tz
                    .timestamp_millis_opt(at)
                    .single()
                    .is_some_and(|d| d.date_naive() == day)
        };
        let per_day = 24 * 60 / i64::from(c.slot_minutes).max(1);
        let mut found: Option<(Timestamp, bool)> = None;
        for k in 1..=per_day {
            for (at, later) in [(wanted.0 + k * step, true), (wanted.0 - k * step, false)] {
                if usable(at) && cal.free(Timestamp(at)) && cal.hold(Timestamp(at), until) {
                    found = Some((Timestamp(at), later));
                    break;
                }
            }
            if found.is_some() {
                break;
            }
        }
        let (held, later) = found?;
        // The closest free time on the other side, to offer as well.
        let other = (1..=per_day)
            .map(|k| {
                if later {
                    wanted.0 - k * step
                } else {
                    wanted.0 + k * step
                }
            })
            .find(|at| usable(*at) && cal.free(Timestamp(*at)))
            .map(Timestamp);
        Some((held, other))
    }

    /// The first bookable, free slot at or after `from` (two weeks ahead).
    pub(super) fn next_free(
        &self,
        from: Timestamp,
        tz: Tz,
        now: Timestamp,
        cal: &mut dyn Calendar,
        until: Timestamp,
        exclude: Option<Timestamp>,
    ) -> Option<Timestamp> {
        let c = self.spec.calendar.as_ref()?;
        let step = i64::from(c.slot_minutes) * 60_000;
        let start = from.0.max(now.0 + 60 * 60_000);
        // Slots start at `open` plus whole slots, in local time: every
        // slot start is a multiple of `unit` minutes of the local day, so
        // the search moves from one such minute to the next (re-aligned
        // each step: a change of UTC offset moves the local grid).
        let open = i64::from(self.open.num_seconds_from_midnight() / 60);
        let unit = gcd(gcd(i64::from(c.slot_minutes), open), 24 * 60).max(1) * 60_000;
        let align = |t: i64| {
            let off = tz
                .timestamp_millis_opt(t)
                .single()
                .map_or(0, |d| i64::from(d.offset().fix().local_minus_utc()) * 1000);
            (t + off + unit - 1).div_euclid(unit) * unit - off
        };
        let mut at = align(start);
        let end = start + 14 * 86_400_000;
        while at < end {
            let ts = Timestamp(at);
            let bookable = self.bookable(ts, tz);
            if bookable && Some(ts) != exclude && cal.hold(ts, until) {
                return Some(ts);
            }
            at = align(at + if bookable { step } else { unit });
        }
        None
    }
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// How a slot start reads to the customer: "Tue Mar 10 at 3:00 PM".
pub fn spoken(at: Timestamp, tz: Tz) -> String {
    tz.timestamp_millis_opt(at.0)
        .single()
        .map(|d| d.format("%a %b %-d at %-I:%M %p").to_string())
        .unwrap_or_default()
}

/// The time of day alone: "3:00 PM".
pub fn spoken_time(at: Timestamp, tz: Tz) -> String {
    tz.timestamp_millis_opt(at.0)
        .single()
        .map(|d| d.format("%-I:%M %p").to_string())
        .unwrap_or_default()
}

/// What the customer said, with what they did not say taken from
/// `reference` (the time on the table): a time alone keeps its day, a day
/// alone keeps its time; both, or neither, is what they said.
pub(super) fn keeping(w: &crate::flows::nlu::When, reference: Timestamp, tz: Tz) -> Timestamp {
    match (w.has_day, w.has_time) {
        (false, true) => on_day_of(w.at, reference, tz),
        (true, false) => on_day_of(reference, w.at, tz),
        _ => w.at,
    }
}

/// The time of day of `at`, on the day of `day` (both in `tz`).
pub(super) fn on_day_of(at: Timestamp, day: Timestamp, tz: Tz) -> Timestamp {
    let (Some(a), Some(d)) = (
        tz.timestamp_millis_opt(at.0).single(),
        tz.timestamp_millis_opt(day.0).single(),
    ) else {
        return at;
    };
    tz.from_local_datetime(&d.date_naive().and_time(a.time()))
        .earliest()
        .map_or(at, |x| Timestamp(x.timestamp_millis()))
}

/// A datetime slot's value as stored: RFC 3339 in the customer's zone.
pub(super) fn slot_time_text(at: Timestamp, tz: Tz) -> Option<String> {
    tz.timestamp_millis_opt(at.0)
        .single()
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, false))
}

/// A datetime slot's value read back (RFC 3339, or the epoch milliseconds
/// older records kept).
pub fn slot_time(v: &str) -> Option<Timestamp> {
    chrono::DateTime::parse_from_rfc3339(v)
        .ok()
        .map(|d| Timestamp(d.timestamp_millis()))
        .or_else(|| v.parse::<i64>().ok().map(Timestamp))
}
