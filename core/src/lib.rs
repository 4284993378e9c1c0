//! Threadline's domain: every decision the runtime makes, as pure
//! functions of state, input and the time they are given. No tokio, no
//! ractor, no IO: the actors in `threadline-actors` carry the effects out.
//!
//! - `conversation::core`: a conversation's command + now → events and
//!   effects (inbound, consent gate, voice, flows, agents, timers).
//! - `consent`: the gate's policy, the keyword classifier and where a
//!   number is (`nanp`).
//! - `flows`: the flow engine and the built-in understanding.
//! - `pool::routing`: which agent gets which conversation.
//! - `membership` and `placement`: who is live in a cluster, the
//!   majority rules, and which node owns a key (rendezvous hashing).
//! - `wheel`: the timing wheel; `fence`: which writes of a moving
//!   conversation the writer takes; `audit`: the hash chain;
//!   `phone`: numbers as identity; `clock`: the injected time;
//!   `delivery`: what became of a sent message.

pub mod audit;
pub mod clock;
pub mod consent;
pub mod conversation;
pub mod delivery;
pub mod fence;
pub mod flows;
pub mod membership;
pub mod phone;
pub mod placement;
pub mod pool;
pub mod wheel;

pub use clock::{Clock, ManualClock, SystemClock};
