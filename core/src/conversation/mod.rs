//! One customer conversation as a pure function of its state, a command
//! and the time (the actor that owns it is
//! `threadline_actors::conversation`).

pub mod core;
