//! The injected clock. Everything that reads "now" takes it from a `Clock`,
//! so tests and `--simulated-clock` nodes control time.

use std::sync::atomic::{AtomicI64, Ordering};

use threadline_protocol::Timestamp;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(d.as_millis() as i64)
    }
}

/// A clock that moves only when told to.
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(start: Timestamp) -> Self {
        ManualClock(AtomicI64::new(start.0))
    }
    pub fn advance_millis(&self, ms: i64) -> Timestamp {
        Timestamp(self.0.fetch_add(ms, Ordering::SeqCst) + ms)
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::SeqCst))
    }
}

/// An instant as RFC 3339 UTC with milliseconds, as every API shows it.
pub fn rfc3339(t: Timestamp) -> String {
    chrono::DateTime::from_timestamp_millis(t.0)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}
