//! The Threadline node: configuration, the HTTP surface and the provider wire formats. The binary in `main.rs` wires these
//! to the actor runtime in `threadline-actors`.
//!
//! Architecture invariant: only this crate knows HTTP, WebSocket and
//! provider formats; the actors see normalized events.

pub mod bodies;
pub mod config;
pub mod http;
pub mod inbox;
pub mod listing;
pub mod openapi;
pub use threadline_actors::phone;
pub mod providers;
pub mod routes;
pub mod telemetry;
pub mod tls;
pub mod twilio;
pub mod whatsapp;
