//! The agent pool's routing policy (the pool actor that carries it out
//! is `threadline_actors::pool`).

pub mod routing;
