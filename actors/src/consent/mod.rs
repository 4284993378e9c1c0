//! Consent: what the runtime may send to whom, and when. The policies here
//! are pure; the consent actor (next) owns the ledger and the audit trail.

pub mod keywords;
pub mod policy;
