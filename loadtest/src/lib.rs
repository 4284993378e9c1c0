//! The load generator for Threadline nodes, as a library: the
//! `threadline-loadtest` binary's measurements, and the crash run that the
//! workspace's crash test (`tests/crash.rs`) drives.
//!
//! # What it measures
//!
//! The load generator: a library (`lib.rs`, so the workspace's crash test can
//! drive it) and the binary (`main.rs`, the subcommands). `ingest` measures a
//! bare hyper endpoint and the node's durable ingest in one run; `webhooks`
//! drives signed Twilio SMS webhooks; `resident` fills a node with
//! conversations and reports RSS; `timers` measures durable scheduling and
//! firing lateness; `outbound` measures gate decisions with durable audit;
//! `agents` and `bot` the pool and the flows. `run` is the scenario-driven
//! tool: `scenario.rs` (the file format and its checks), `sim.rs` (the node
//! started with a generated config whose providers point at the load tester;
//! customers as tasks, closed or open model, one fresh identity per journey
//! unless `identities` reuses a pool; each step waits for its expected
//! answers in the customer's inbox or on its chat socket; agent desktops; the
//! per-second timeline; REST verification of transcripts), `fakeprov.rs` (the
//! Twilio Messages/Calls and WhatsApp messages endpoints: each message goes
//! to the inbox of the customer it is addressed to, and a repeated
//! idempotency key counts as a duplicate), `report.rs` (text, JSON, the SVG
//! chart with plotters). Lost or duplicated messages, or transcripts that
//! disagree, make it exit 1. `crash` (`crash.rs`) starts a node (`node.rs`
//! restarts it on the same data directory), runs customers that text through
//! signed Twilio webhooks or the gateway API and send each text again until
//! acknowledged, as a provider does, with business messages and follow-up
//! timers; it SIGKILLs and restarts the node at random moments, then advances
//! the simulated clock past the timers and checks, over REST, at
//! `fakeprov.rs` (which counts each text accepted once per idempotency key)
//! and with `threadline audit verify`, that every promise held; anything else
//! exits 1. `cluster` (`cluster.rs`) measures one node against a cluster of
//! nodes on this machine; `cpu.rs` reads `/proc` for the CPU the nodes and
//! the load tester used per message over a phase, and how much of the machine
//! was idle or stolen, since throughput alone moves 10-20% between runs here.
//! `loadtest/tests/run.rs` runs it against a real node (the `threadline`
//! binary `cargo test --workspace` builds next to it): a small run whose
//! counts must add up, a voice-assistant run, and one whose expected replies
//! never come, which must exit 1.

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
pub mod sockets;
pub mod timers;
pub mod webhooks;
