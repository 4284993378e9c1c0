//! The load generator for Threadline nodes, as a library: the
//! `threadline-loadtest` binary's measurements, and the crash run that the
//! workspace's crash test (`tests/crash.rs`) drives.

pub mod agents;
pub mod bot;
pub mod client;
pub mod cluster;
pub mod cpu;
pub mod crash;
pub mod fakeprov;
pub mod ingest;
pub mod node;
pub mod outbound;
pub mod report;
pub mod scenario;
pub mod sim;
pub mod timers;
pub mod webhooks;
