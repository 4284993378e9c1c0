//! Prometheus metrics of the runtime, rendered in the text format by
//! `/metrics`.

use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

pub struct Metrics {
    registry: Registry,
    pub conversations_resident: Gauge,
    pub conversations_activated: Counter,
    pub conversations_passivated: Counter,
    pub conversation_restarts: Counter,
    pub messages_ingested: Counter,
    pub duplicates: Counter,
    pub dead_letters: Counter,
    /// Provider webhooks refused: wrong signature or a number no tenant owns.
    pub webhook_rejected: Counter,
    /// Inbound work refused because its gateway was at its limit.
    pub gateway_busy: Counter,
    /// Offers made to agents.
    pub offers: Counter,
    /// Open agent desktop sessions.
    pub agent_sessions: Gauge,
    /// Work in flight per channel gateway.
    pub gateway_in_flight: prometheus_client::metrics::family::Family<GatewayLabel, Gauge>,
    pub commit_batch_size: Histogram,
    pub commit_seconds: Histogram,
    pub persistence_queue: Gauge,
    pub resident_memory_bytes: Gauge,
    pub http_requests: Counter,
    pub http_client_errors: Counter,
    /// Open WebSocket connections (web-chat visitors, agent desktops).
    pub websockets: Gauge,
    pub timers_pending: Gauge,
    pub timers_fired: Counter,
    pub timer_lateness_seconds: Histogram,
    pub outbound_in_flight: Gauge,
    pub outbound_sent: Counter,
    pub outbound_failed: Counter,
    pub outbound_withdrawn: Counter,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("threadline");
        let m = Metrics {
            conversations_resident: Gauge::default(),
            conversations_activated: Counter::default(),
            conversations_passivated: Counter::default(),
            conversation_restarts: Counter::default(),
            messages_ingested: Counter::default(),
            duplicates: Counter::default(),
            dead_letters: Counter::default(),
            webhook_rejected: Counter::default(),
            gateway_busy: Counter::default(),
            offers: Counter::default(),
            agent_sessions: Gauge::default(),
            gateway_in_flight: Default::default(),
            commit_batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            commit_seconds: Histogram::new(exponential_buckets(0.000_125, 2.0, 14)),
            persistence_queue: Gauge::default(),
            resident_memory_bytes: Gauge::default(),
            http_requests: Counter::default(),
            http_client_errors: Counter::default(),
            websockets: Gauge::default(),
            timers_pending: Gauge::default(),
            timers_fired: Counter::default(),
            timer_lateness_seconds: Histogram::new([
                0.0005, 0.001, 0.002, 0.003, 0.005, 0.010, 0.020, 0.050, 0.1, 0.5, 1.0, 5.0,
            ]),
            outbound_in_flight: Gauge::default(),
            outbound_sent: Counter::default(),
            outbound_failed: Counter::default(),
            outbound_withdrawn: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "conversations_resident",
            "Conversation actors currently in memory",
            m.conversations_resident.clone(),
        );
        registry.register(
            "conversations_activated",
            "Conversation actors started (new or loaded from storage)",
            m.conversations_activated.clone(),
        );
        registry.register(
            "conversations_passivated",
            "Conversation actors snapshotted and stopped (idle or over the resident cap)",
            m.conversations_passivated.clone(),
        );
        registry.register(
            "conversation_restarts",
            "Conversation actors restarted from durable state after a failure",
            m.conversation_restarts.clone(),
        );
        registry.register(
            "messages_ingested",
            "Inbound messages durably recorded",
            m.messages_ingested.clone(),
        );
        registry.register(
            "inbound_duplicates",
            "Inbound deliveries recognised as a repeat of a provider message id",
            m.duplicates.clone(),
        );
        registry.register(
            "dead_letters",
            "Messages parked after failing their conversation repeatedly",
            m.dead_letters.clone(),
        );
        registry.register(
            "websockets_open",
            "Open WebSocket connections (web-chat visitors, agent desktops)",
            m.websockets.clone(),
        );
        registry.register(
            "gateway_in_flight",
            "Inbound work in flight per channel gateway",
            m.gateway_in_flight.clone(),
        );
        registry.register(
            "agent_offers",
            "Conversations offered to human agents",
            m.offers.clone(),
        );
        registry.register(
            "agent_sessions",
            "Open agent desktop sessions",
            m.agent_sessions.clone(),
        );
        registry.register(
            "gateway_busy",
            "Inbound requests refused with 503 because their gateway was at its in-flight limit",
            m.gateway_busy.clone(),
        );
        registry.register(
            "webhooks_rejected",
            "Provider webhooks refused: wrong signature or a number no tenant owns",
            m.webhook_rejected.clone(),
        );
        registry.register(
            "commit_batch_size",
            "Operations per durable redb commit",
            m.commit_batch_size.clone(),
        );
        registry.register(
            "commit_seconds",
            "Duration of one durable redb commit (write and fsync)",
            m.commit_seconds.clone(),
        );
        registry.register(
            "persistence_queue",
            "Operations waiting for the storage writer",
            m.persistence_queue.clone(),
        );
        registry.register(
            "process_resident_memory_bytes",
            "Resident set size of the node process",
            m.resident_memory_bytes.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests handled",
            m.http_requests.clone(),
        );
        registry.register(
            "http_client_errors",
            "HTTP requests refused with a 4xx status",
            m.http_client_errors.clone(),
        );
        registry.register(
            "timers_pending",
            "Timers scheduled and not yet handled",
            m.timers_pending.clone(),
        );
        registry.register(
            "timers_fired",
            "Timers delivered to and handled by their owner",
            m.timers_fired.clone(),
        );
        registry.register(
            "timer_lateness_seconds",
            "How late a timer was dispatched after its due time (real clock only)",
            m.timer_lateness_seconds.clone(),
        );
        registry.register(
            "outbound_in_flight",
            "Outbound messages the sender is working on",
            m.outbound_in_flight.clone(),
        );
        registry.register(
            "outbound_sent",
            "Outbound messages a provider accepted",
            m.outbound_sent.clone(),
        );
        registry.register(
            "outbound_failed",
            "Outbound messages a provider refused or that ran out of attempts",
            m.outbound_failed.clone(),
        );
        registry.register(
            "outbound_withdrawn",
            "Queued outbound messages withdrawn before sending (opt-out)",
            m.outbound_withdrawn.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn observe_commit(&self, ops: usize, took: Duration) {
        self.commit_batch_size.observe(ops as f64);
        self.commit_seconds.observe(took.as_secs_f64());
    }

    pub fn render(&self) -> String {
        self.resident_memory_bytes.set(resident_memory_bytes());
        let mut out = String::with_capacity(4096);
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// RSS from /proc/self/statm (Linux); 0 elsewhere.
pub fn resident_memory_bytes() -> i64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<i64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// The label of per-gateway series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct GatewayLabel {
    pub gateway: String,
}
