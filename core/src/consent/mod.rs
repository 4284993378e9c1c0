//! Consent: what the runtime may send to whom, and when. The policies here
//! are pure; each conversation's actor owns its ledger, and the writer
//! seals the audit trail.
//!
//! # Where consent lives
//!
//! Consent lives with the contact's conversation: the conversation is 1:1
//! with (tenant, contact), its actor is the single writer of its ledger
//! (`ConsentChanged` events), and the cluster rule "consent is decided where
//! the conversation lives" follows. Inbound messages are classified before
//! anything else looks at them. Every business-initiated message (API
//! messages, fired follow-ups and reminders, confirmations) is decided by
//! `Conversation::gate` → `consent::policy::decide`, and the decision is a
//! `Decided` event. A deferred message becomes a timer at the allowed instant
//! and is decided again then. On a channel with a provider, a sent decision
//! writes the message `queued` plus an outbox row in the same transaction;
//! the sender delivers it and the outcome (`DeliveryUpdated`) deletes the row
//! in the same write, so a crash resends once, with the same idempotency key.
//! The writer seals the audit records of `ConsentChanged` and `Decided`
//! events into the tenant's hash chain inside the same transaction as the
//! events.

pub mod keywords;
pub mod nanp;
pub mod policy;
