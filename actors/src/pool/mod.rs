//! The human-agent pool: the pure routing policy (`routing`), the pool
//! actor that carries out its effects, and agent desktop sessions.

pub mod actor;
pub mod routing;

pub use actor::{AgentCommand, AgentEvent, Escalation, PoolMsg, SessionMsg};
