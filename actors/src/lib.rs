//! Threadline's actor runtime: the conversation actors and their
//! supervisor, the router that is the only way to reach them, and the
//! persistence writer that makes their events durable.
//!
//! Architecture invariants:
//! - Nothing here knows HTTP, WebSocket or provider wire formats; actors see
//!   normalized events (`threadline_protocol::codec::InboundMessage`).
//! - A conversation's state is written only by its own actor.
//! - An acknowledgement (a completed `Router::deliver`) means the redb
//!   commit holding the message returned with immediate durability.
//! - Time comes from the injected `Clock`, never from the system directly.

pub mod cluster;
pub mod command;
pub mod conversation;
pub mod feed;
pub mod flows;
pub mod gateway;
pub mod metrics;
pub mod persistence;
pub mod pool;
pub mod replica;
pub mod router;
pub mod runtime;
pub mod scheduler;
pub mod sender;
pub mod shared;
pub mod store;

// The pure parts live in the domain crate; re-exported at their old paths.
pub use threadline_core::{audit, clock, consent, fence, phone, wheel};

pub use clock::{Clock, ManualClock, SystemClock};
pub use metrics::Metrics;
pub use router::{DeliverError, Delivered, Router};
pub use runtime::{Runtime, RuntimeConfig};
