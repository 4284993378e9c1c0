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
    /// Inbound messages and reads sent to the node that owns them.
    pub cluster_forwarded: Counter,
    /// Forwards that failed (the owner could not be reached in time).
    pub cluster_forward_failures: Counter,
    /// Conversation changes stored on their replica before the ack.
    pub cluster_replicated: Counter,
    /// Changes that could not be replicated (not acknowledged).
    pub cluster_replication_failures: Counter,
    /// Whole conversations sent to a replica that lacked their base.
    pub cluster_replica_bases: Counter,
    /// Replication rounds (one RPC per replica node and round).
    pub cluster_replication_seconds: Histogram,
    /// Conversations this node took over from a lost node's replica.
    pub cluster_promoted: Counter,
    /// Conversations moved to (or back to) the node that owns them now.
    pub cluster_handed_over: Counter,
    /// Conversations handed to this node by the node that held them.
    pub cluster_received: Counter,
    /// Offers made to agents.
    pub offers: Counter,
    /// Open agent desktop sessions.
    pub agent_sessions: Gauge,
    /// What the conversations achieve, per tenant.
    pub outcomes: Outcomes,
    /// Work in flight per channel gateway.
    pub gateway_in_flight: prometheus_client::metrics::family::Family<GatewayLabel, Gauge>,
    pub commit_batch_size: Histogram,
    pub commit_seconds: Histogram,
    pub persistence_queue: Gauge,
    pub resident_memory_bytes: Gauge,
    /// HTTP requests answered, by method, route template and status.
    pub http_requests: prometheus_client::metrics::family::Family<HttpLabels, Counter>,
    /// How long HTTP requests took to answer, by method and route template.
    pub http_request_duration_seconds:
        prometheus_client::metrics::family::Family<RouteLabels, Histogram, fn() -> Histogram>,
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
        let mut root = Registry::default();
        root.register_collector(Box::new(ProcessCollector::new()));
        let registry = root.sub_registry_with_prefix("threadline");
        registry.register(
            "build",
            "The running build of threadline",
            prometheus_client::metrics::info::Info::new(vec![
                ("version", env!("CARGO_PKG_VERSION")),
                ("rust_version", env!("CARGO_PKG_RUST_VERSION")),
            ]),
        );
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
            cluster_forwarded: Counter::default(),
            cluster_forward_failures: Counter::default(),
            cluster_replicated: Counter::default(),
            cluster_replication_failures: Counter::default(),
            cluster_replica_bases: Counter::default(),
            cluster_replication_seconds: Histogram::new(exponential_buckets(0.000_125, 2.0, 14)),
            cluster_promoted: Counter::default(),
            cluster_handed_over: Counter::default(),
            cluster_received: Counter::default(),
            offers: Counter::default(),
            agent_sessions: Gauge::default(),
            outcomes: Outcomes::default(),
            gateway_in_flight: Default::default(),
            commit_batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            commit_seconds: Histogram::new(exponential_buckets(0.000_125, 2.0, 14)),
            persistence_queue: Gauge::default(),
            resident_memory_bytes: Gauge::default(),
            http_requests: Default::default(),
            http_request_duration_seconds:
                prometheus_client::metrics::family::Family::new_with_constructor(|| {
                    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
                }),
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
        m.outcomes.register(registry);
        registry.register(
            "agent_sessions",
            "Open agent desktop sessions",
            m.agent_sessions.clone(),
        );
        registry.register(
            "cluster_forwarded",
            "Inbound messages and reads sent to the cluster node that owns their conversation",
            m.cluster_forwarded.clone(),
        );
        registry.register(
            "cluster_forward_failures",
            "Forwards to an owner node that could not be reached in time",
            m.cluster_forward_failures.clone(),
        );
        registry.register(
            "cluster_replicated",
            "Conversation changes stored on their replica node before they were acknowledged",
            m.cluster_replicated.clone(),
        );
        registry.register(
            "cluster_replication_failures",
            "Conversation changes that could not be replicated (answered 503, not acknowledged)",
            m.cluster_replication_failures.clone(),
        );
        registry.register(
            "cluster_replica_bases",
            "Whole conversations sent to a replica node that lacked their earlier changes",
            m.cluster_replica_bases.clone(),
        );
        registry.register(
            "cluster_replication_seconds",
            "Time of one replication round trip to a replica node, storage included",
            m.cluster_replication_seconds.clone(),
        );
        registry.register(
            "cluster_promoted",
            "Conversations this node took over from its replica when their owner was lost",
            m.cluster_promoted.clone(),
        );
        registry.register(
            "cluster_handed_over",
            "Conversations this node handed to the node that owns them under the current membership",
            m.cluster_handed_over.clone(),
        );
        registry.register(
            "cluster_received",
            "Conversations handed to this node by the node that held them (a leave, or a move back)",
            m.cluster_received.clone(),
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
            "HTTP requests answered, by method, route template and status",
            m.http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from a request's head to its response, by method and route template",
            m.http_request_duration_seconds.clone(),
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
        Metrics {
            registry: root,
            ..m
        }
    }

    /// Counts one answered HTTP request and its latency.
    pub fn observe_http(
        &self,
        method: &'static str,
        route: &'static str,
        status: u16,
        took: Duration,
    ) {
        self.http_requests
            .get_or_create(&HttpLabels {
                method,
                route,
                status,
            })
            .inc();
        self.http_request_duration_seconds
            .get_or_create(&RouteLabels { method, route })
            .observe(took.as_secs_f64());
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

/// The labels of HTTP request counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct HttpLabels {
    pub method: &'static str,
    /// The route template (`/api/v1/conversations/{id}`), never the path:
    /// the series stay bounded whatever clients ask for.
    pub route: &'static str,
    pub status: u16,
}

/// The labels of HTTP latency histograms.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct RouteLabels {
    pub method: &'static str,
    pub route: &'static str,
}

/// The conventional `process_*` metrics, read from /proc at each scrape
/// (Linux; elsewhere only the start time).
#[derive(Debug)]
struct ProcessCollector {
    start_time: f64,
}

impl ProcessCollector {
    fn new() -> Self {
        let start_time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        ProcessCollector { start_time }
    }
}

/// Linux's USER_HZ, the unit of /proc's CPU times (fixed by the ABI).
const USER_HZ: f64 = 100.0;

impl prometheus_client::collector::Collector for ProcessCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        let gauge = |encoder: &mut prometheus_client::encoding::DescriptorEncoder,
                     name: &str,
                     help: &str,
                     v: f64|
         -> Result<(), std::fmt::Error> {
            let g = ConstGauge::new(v);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
        };
        gauge(
            &mut encoder,
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch, in seconds",
            self.start_time,
        )?;
        let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
            return Ok(());
        };
        // Fields after the command name (which may hold spaces), from
        // field 3 (state) on: utime and stime are fields 14 and 15, the
        // thread count 20, the virtual size (bytes) 23, the RSS (pages) 24.
        let rest: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, r)| r.split_whitespace().collect())
            .unwrap_or_default();
        let field = |n: usize| rest.get(n - 3).and_then(|v| v.parse::<f64>().ok());
        if let (Some(u), Some(s)) = (field(14), field(15)) {
            let c = ConstCounter::new((u + s) / USER_HZ);
            c.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent, in seconds",
                None,
                c.metric_type(),
            )?)?;
        }
        if let Some(t) = field(20) {
            gauge(&mut encoder, "process_threads", "Number of OS threads", t)?;
        }
        if let Some(v) = field(23) {
            gauge(
                &mut encoder,
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                v,
            )?;
        }
        gauge(
            &mut encoder,
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            resident_memory_bytes() as f64,
        )?;
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            gauge(
                &mut encoder,
                "process_open_fds",
                "Number of open file descriptors",
                fds.count() as f64,
            )?;
        }
        let max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|l| {
                l.lines()
                    .find(|l| l.starts_with("Max open files"))?
                    .split_whitespace()
                    .nth(3)?
                    .parse::<f64>()
                    .ok()
            });
        if let Some(m) = max_fds {
            gauge(
                &mut encoder,
                "process_max_fds",
                "Maximum number of open file descriptors",
                m,
            )?;
        }
        Ok(())
    }
}

/// The label of per-gateway series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct GatewayLabel {
    pub gateway: String,
}

/// The label of per-tenant series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct TenantLabel {
    pub tenant: String,
}

type PerTenant = prometheus_client::metrics::family::Family<TenantLabel, Counter>;
type PerTenantSeconds = prometheus_client::metrics::family::Family<TenantLabel, Histogram>;

fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.05, 2.0, 16))
}

/// Counts that prove value, per tenant (Prometheus and
/// `GET /api/v1/tenants/{t}/metrics`).
pub struct Outcomes {
    pub missed_calls: PerTenant,
    pub missed_calls_recovered: PerTenant,
    pub bookings_offered: PerTenant,
    pub bookings_confirmed: PerTenant,
    pub bookings_rescheduled: PerTenant,
    pub bookings_rebooked: PerTenant,
    pub bookings_cancelled: PerTenant,
    pub bookings_attended: PerTenant,
    pub bookings_no_show: PerTenant,
    pub leads_qualified: PerTenant,
    pub leads_met: PerTenant,
    pub escalations: PerTenant,
    pub first_response_seconds: PerTenantSeconds,
    pub escalation_wait_seconds: PerTenantSeconds,
    /// For the REST view: (sum ms, count) of the two waits.
    pub waits: dashmap::DashMap<(String, &'static str), (u64, u64)>,
}

impl Default for Outcomes {
    fn default() -> Self {
        Outcomes {
            missed_calls: Default::default(),
            missed_calls_recovered: Default::default(),
            bookings_offered: Default::default(),
            bookings_confirmed: Default::default(),
            bookings_rescheduled: Default::default(),
            bookings_rebooked: Default::default(),
            bookings_cancelled: Default::default(),
            bookings_attended: Default::default(),
            bookings_no_show: Default::default(),
            leads_qualified: Default::default(),
            leads_met: Default::default(),
            escalations: Default::default(),
            first_response_seconds: PerTenantSeconds::new_with_constructor(seconds_histogram),
            escalation_wait_seconds: PerTenantSeconds::new_with_constructor(seconds_histogram),
            waits: Default::default(),
        }
    }
}

impl Outcomes {
    /// Every counter: its name (in Prometheus, in the store's `outcomes`
    /// table and in the REST counts), its help, and the counter.
    pub fn counters(&self) -> [(&'static str, &'static str, &PerTenant); 12] {
        [
            ("missed_calls", "Calls nobody answered", &self.missed_calls),
            (
                "missed_calls_recovered",
                "Missed calls the customer followed up by message",
                &self.missed_calls_recovered,
            ),
            (
                "bookings_offered",
                "Booking slots held and offered to a customer",
                &self.bookings_offered,
            ),
            (
                "bookings_confirmed",
                "Bookings the customer confirmed",
                &self.bookings_confirmed,
            ),
            (
                "bookings_rescheduled",
                "Bookings the customer moved themselves",
                &self.bookings_rescheduled,
            ),
            (
                "bookings_rebooked",
                "Moved bookings the customer confirmed again with no person involved",
                &self.bookings_rebooked,
            ),
            (
                "bookings_cancelled",
                "Bookings the customer cancelled",
                &self.bookings_cancelled,
            ),
            (
                "bookings_attended",
                "Appointments the business recorded as attended",
                &self.bookings_attended,
            ),
            (
                "bookings_no_show",
                "Appointments the business recorded as no-shows",
                &self.bookings_no_show,
            ),
            (
                "leads_qualified",
                "Leads at or above the flow's score threshold",
                &self.leads_qualified,
            ),
            (
                "leads_met",
                "Qualified leads that booked a meeting",
                &self.leads_met,
            ),
            (
                "escalations",
                "Conversations handed to a person",
                &self.escalations,
            ),
        ]
    }

    fn register(&self, r: &mut Registry) {
        for (name, help, c) in self.counters() {
            r.register(name, help, c.clone());
        }
        r.register(
            "first_response_seconds",
            "From a conversation's first customer message to its first answer",
            self.first_response_seconds.clone(),
        );
        r.register(
            "escalation_wait_seconds",
            "From an escalation to an agent taking the conversation",
            self.escalation_wait_seconds.clone(),
        );
    }

    fn by_name(&self, name: &str) -> Option<&PerTenant> {
        self.counters()
            .into_iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, _, c)| c)
    }

    /// Starts the counts where the store left them (`tenant`, `name`,
    /// value rows as `Tally` writes them): the outcomes survive restarts.
    pub fn restore(&self, rows: impl IntoIterator<Item = (String, String, u64)>) {
        for (tenant, name, v) in rows {
            if let Some(c) = self.by_name(&name) {
                c.get_or_create(&TenantLabel { tenant }).inc_by(v);
            } else if name == "first_response_ms" {
                self.waits.entry((tenant, "first_response")).or_default().0 += v;
            } else if name == "first_response_count" {
                self.waits.entry((tenant, "first_response")).or_default().1 += v;
            }
        }
    }

    pub fn count(&self, c: &PerTenant, tenant: &str) {
        c.get_or_create(&TenantLabel {
            tenant: tenant.to_owned(),
        })
        .inc();
    }

    pub fn get(&self, c: &PerTenant, tenant: &str) -> u64 {
        c.get_or_create(&TenantLabel {
            tenant: tenant.to_owned(),
        })
        .get()
    }

    /// Records a wait (`first_response` or `escalation_wait`).
    pub fn wait(&self, which: &'static str, tenant: &str, ms: i64) {
        let ms = ms.max(0) as u64;
        let h = if which == "first_response" {
            &self.first_response_seconds
        } else {
            &self.escalation_wait_seconds
        };
        h.get_or_create(&TenantLabel {
            tenant: tenant.to_owned(),
        })
        .observe(ms as f64 / 1000.0);
        let mut e = self.waits.entry((tenant.to_owned(), which)).or_default();
        e.0 += ms;
        e.1 += 1;
    }

    /// Total wait in ms and how many (nodes add these up).
    pub fn wait_sums(&self, which: &'static str, tenant: &str) -> (u64, u64) {
        self.waits
            .get(&(tenant.to_owned(), which))
            .map_or((0, 0), |e| *e)
    }

    /// Mean wait in ms and how many, for the REST view.
    pub fn mean_wait(&self, which: &'static str, tenant: &str) -> (Option<f64>, u64) {
        match self.waits.get(&(tenant.to_owned(), which)) {
            Some(e) if e.1 > 0 => (Some(e.0 as f64 / e.1 as f64), e.1),
            _ => (None, 0),
        }
    }
}

/// The outcomes of one commit: counted now, and the same increments kept
/// to be written with the commit's events (`store` table `outcomes`), so
/// the counts survive a restart.
pub struct Tally<'a> {
    outcomes: &'a Outcomes,
    tenant: &'a str,
    /// (tenant\0name, increment), for the store.
    pub durable: Vec<(String, u64)>,
}

impl<'a> Tally<'a> {
    pub fn new(outcomes: &'a Outcomes, tenant: &'a str) -> Self {
        Tally {
            outcomes,
            tenant,
            durable: Vec::new(),
        }
    }

    fn keep(&mut self, name: &str, v: u64) {
        self.durable.push((format!("{}\0{name}", self.tenant), v));
    }

    /// One more of counter `name` (see `Outcomes::by_name`).
    pub fn count(&mut self, name: &'static str) {
        if let Some(c) = self.outcomes.by_name(name) {
            self.outcomes.count(c, self.tenant);
            self.keep(name, 1);
        }
    }

    /// A first response after `ms`.
    pub fn first_response(&mut self, ms: i64) {
        self.outcomes.wait("first_response", self.tenant, ms);
        self.keep("first_response_ms", ms.max(0) as u64);
        self.keep("first_response_count", 1);
    }
}
