//! Conversation flows: built-in understanding (`nlu`) and the flow engine
//! that turns a tenant's flow file into replies, captured facts and
//! escalations.

pub mod engine;
pub mod nlu;
