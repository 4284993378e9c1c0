//! Wall-clock instants as milliseconds since the Unix epoch (UTC).

use serde::{Deserialize, Serialize};

/// An instant in milliseconds since 1970-01-01T00:00:00Z.
///
/// Stored as a plain integer so snapshots do not depend on any date library;
/// the binary edge converts to and from RFC 3339.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn saturating_add_millis(self, ms: i64) -> Self {
        Timestamp(self.0.saturating_add(ms))
    }
}
