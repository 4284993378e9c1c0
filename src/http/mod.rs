//! The HTTP surface (hyper 1.x): the gateway API, the operator REST API and
//! the health endpoints. Every handler checks auth and input limits before
//! anything reaches the actors, and every error is JSON:
//! `{"error": {"code": ..., "message": ...}}`.
//!
//! This file is the server and `route`, the one `match` from each
//! operation of the route table (`crate::routes`) to its handler; it is
//! over 800 lines because that match is one table and reads best whole.
//! Handlers live in `api`, `ops` and the channel modules; reading requests
//! in `body`, authorization in `auth`, errors in `error`, views in
//! `views`, passing on to the holding node in `peers`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderValue;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use threadline_actors::{DeliverError, ManualClock, Router, Runtime};
use threadline_protocol::ConversationId;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::routes::{Matched, Op};
use tracing::Instrument;

pub mod agents;
mod api;
mod auth;
mod body;
mod error;
pub mod flows;
mod ops;
mod peers;
mod views;
pub mod webchat;
pub mod webhooks;

pub use api::*;
pub(crate) use auth::*;
pub use body::*;
pub use error::*;
use ops::*;
pub use peers::*;
pub use views::*;

pub const MAX_TEXT_BYTES: usize = 8 * 1024;
pub const MAX_ID_BYTES: usize = 128;
pub const MAX_MEDIA: usize = 10;
pub const MAX_URL_BYTES: usize = 2048;

pub struct App {
    pub cfg: Config,
    pub router: Router,
    /// The runtime's shared context: metrics, storage, clock, readiness.
    pub(crate) shared: Arc<threadline_actors::shared::Shared>,
    /// Gateway token → tenant id.
    gateway_tokens: HashMap<String, String>,
    pub draining: AtomicBool,
    /// Flips to true when the node starts draining: open WebSockets close
    /// with 1001 (going away) so their clients reconnect elsewhere or later.
    pub stopping: tokio::sync::watch::Sender<bool>,
    /// The clock, when it is simulated (`--simulated-clock`).
    simulated: Option<Arc<ManualClock>>,
    /// Open web-chat sockets.
    pub chat: Arc<crate::http::webchat::Hub>,
    /// Open inbox sockets.
    pub inbox: Arc<crate::inbox::Watchers>,
    /// Agent tokens and API-created agents.
    pub agents: crate::http::agents::AgentDirectory,
    /// Cluster membership, when `[cluster]` is configured.
    pub cluster: Option<Arc<threadline_actors::cluster::Cluster>>,
    /// Requests per source address (`server.rate_limit_per_second`).
    limiter: Option<Arc<SourceLimiter>>,
    /// The providers, for what a webhook does to a call in progress
    /// (messages go through the sender).
    pub(crate) calls: Option<Arc<crate::providers::Providers>>,
}

impl App {
    /// Whether a frame from `ip` may be taken now under the per-source rate
    /// (`server.rate_limit_per_second`; always, with no limit set).
    pub(crate) fn source_allows(&self, ip: std::net::IpAddr) -> bool {
        self.limiter
            .as_ref()
            .is_none_or(|l| l.check_key(&ip).is_ok())
    }
}

type SourceLimiter = governor::DefaultKeyedRateLimiter<std::net::IpAddr>;

/// The per-source limiter of `server`, if one is configured; its memory of
/// quiet sources is dropped every minute.
fn source_limiter(server: &crate::config::Server) -> Option<Arc<SourceLimiter>> {
    let rate = std::num::NonZeroU32::new(server.rate_limit_per_second)?;
    let burst = server
        .rate_limit_burst
        .and_then(std::num::NonZeroU32::new)
        .unwrap_or(rate.saturating_mul(std::num::NonZeroU32::new(2).expect("2")));
    let quota = governor::Quota::per_second(rate).allow_burst(burst);
    let limiter = Arc::new(governor::RateLimiter::keyed(quota));
    let weak = Arc::downgrade(&limiter);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(60));
        loop {
            every.tick().await;
            let Some(l) = weak.upgrade() else { return };
            l.retain_recent();
            l.shrink_to_fit();
        }
    });
    Some(limiter)
}

impl App {
    pub fn new(cfg: Config, runtime: &Runtime, simulated: Option<Arc<ManualClock>>) -> App {
        let gateway_tokens = cfg
            .tenants
            .iter()
            .map(|t| (t.gateway_token.clone(), t.id.clone()))
            .collect();
        let chat = Arc::new(crate::http::webchat::Hub::default());
        runtime.shared.feed.subscribe(chat.clone());
        let inbox = Arc::new(crate::inbox::Watchers::default());
        runtime.shared.feed.subscribe(inbox.clone());
        let cfg_server = cfg.server.clone();
        let calls = crate::providers::Providers::from_config(&cfg)
            .ok()
            .flatten();
        App {
            chat,
            inbox,
            agents: crate::http::agents::AgentDirectory::new(&cfg),
            cfg,
            router: runtime.router.clone(),
            shared: runtime.shared.clone(),
            gateway_tokens,
            draining: AtomicBool::new(false),
            stopping: tokio::sync::watch::Sender::new(false),
            simulated,
            cluster: None,
            limiter: source_limiter(&cfg_server),
            calls,
        }
    }
}

/// Runs `work` (which records inbound traffic) on channel gateway
/// `gateway`: 503 with Retry-After when the gateway is saturated or
/// restarting.
pub(crate) async fn via<T>(
    app: &App,
    gateway: &'static str,
    work: impl std::future::Future<Output = Result<T, DeliverError>>,
) -> Result<T, ApiError> {
    if app.draining.load(Ordering::Relaxed) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "the node is shutting down",
        ));
    }
    match app.shared.gateways.run(gateway, work).await {
        Ok(r) => r.map_err(ApiError::from),
        Err(e) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            e.to_string(),
        )),
    }
}

pub(crate) type Resp = Response<Full<Bytes>>;

/// A request's body: what a client sent, or what a peer passed on.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// Serves until `shutdown` resolves, then stops accepting and waits (up to
/// `grace`) for in-flight requests. With `tls`, every connection is
/// HTTPS (a client that does not finish its handshake in 10 s is dropped).
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl std::future::Future<Output = ()>,
    grace: Duration,
) {
    // Connections stop taking new requests when `stop` flips; upgraded
    // ones (WebSockets) live on their own tasks and end with the process.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut conns = tokio::task::JoinSet::new();
    // One permit per open connection (an upgraded WebSocket keeps its
    // connection's): at the cap the listener stops accepting, and the
    // kernel's backlog holds newcomers until a connection closes.
    let slots = Arc::new(tokio::sync::Semaphore::new(app.cfg.server.max_connections));
    let mut accept_failures = AcceptFailures::default();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            permit = slots.clone().acquire_owned() => {
                let permit = ConnPermit(Arc::new(permit.expect("never closed")));
                let (stream, peer) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(x) => x,
                        Err(e) => {
                            accept_failures.note(&e);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    },
                    _ = &mut shutdown => break,
                };
                let _ = stream.set_nodelay(true);
                let app = app.clone();
                let stop = stop_rx.clone();
                let tls = tls.clone();
                conns.spawn(async move {
                    match tls {
                        None => connection(app, stream, peer, stop, permit).await,
                        Some(tls) => {
                            let handshake = tokio::time::timeout(Duration::from_secs(10), tls.accept(stream));
                            match handshake.await {
                                Ok(Ok(stream)) => connection(app, stream, peer, stop, permit).await,
                                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                            }
                        }
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = &mut shutdown => break,
        }
    }
    app.draining.store(true, Ordering::SeqCst);
    app.stopping.send_replace(true);
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::warn!("in-flight requests did not finish within the grace period");
    }
}

/// A slot of `server.max_connections`, held by a connection's task and by
/// each request of it (a WebSocket upgraded from it keeps it while open).
#[derive(Clone)]
pub(crate) struct ConnPermit(#[allow(dead_code)] Arc<tokio::sync::OwnedSemaphorePermit>);

/// The address a request came from (a peer's passed-on request has none).
#[derive(Clone, Copy)]
pub(crate) struct ClientAddr(pub SocketAddr);

/// When the request's body must have arrived (`server.body_timeout_ms`
/// after its headers).
#[derive(Clone, Copy)]
struct BodyDeadline(tokio::time::Instant);

/// Failed accepts (the file-descriptor limit, say) are logged once per
/// ten seconds with how many there were, not once each.
#[derive(Default)]
struct AcceptFailures {
    since_logged: u64,
    logged_at: Option<std::time::Instant>,
}

impl AcceptFailures {
    fn note(&mut self, e: &std::io::Error) {
        self.since_logged += 1;
        if self
            .logged_at
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
        {
            tracing::warn!(error = %e, failures = self.since_logged, "accepting connections failed");
            self.since_logged = 0;
            self.logged_at = Some(std::time::Instant::now());
        }
    }
}

/// One client connection (plain or TLS), until it closes or `stop` flips.
async fn connection<IO>(
    app: Arc<App>,
    io: IO,
    peer: SocketAddr,
    mut stop: tokio::sync::watch::Receiver<bool>,
    permit: ConnPermit,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .max_buf_size(64 * 1024)
        .serve_connection(
            TokioIo::new(io),
            service_fn(move |req| {
                let app = app.clone();
                let permit = permit.clone();
                async move {
                    let mut req = req.map(|b: hyper::body::Incoming| b.boxed());
                    let deadline = tokio::time::Instant::now()
                        + Duration::from_millis(app.cfg.server.body_timeout_ms);
                    req.extensions_mut().insert(BodyDeadline(deadline));
                    req.extensions_mut().insert(ClientAddr(peer));
                    req.extensions_mut().insert(permit);
                    Ok::<_, Infallible>(handle(app, req, peer).await)
                }
            }),
        )
        .with_upgrades();
    tokio::pin!(conn);
    let r = tokio::select! {
        r = conn.as_mut() => r,
        _ = async { let _ = stop.wait_for(|s| *s).await; } => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = r {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

async fn handle(app: Arc<App>, req: Request<Body>, peer: SocketAddr) -> Resp {
    let started = std::time::Instant::now();
    let method = method_label(req.method());
    // The route is looked up once: for the labels here and the dispatch.
    let path = req.uri().path().to_owned();
    let found = crate::routes::find(req.method(), &path);
    let template = found.template();
    let rid = request_id(&req);
    // At error level so that it is on whenever anything is logged: every
    // line written while the request is handled carries its id.
    // The `otel.*` and `http.*` fields name the span as an OpenTelemetry
    // server span when traces are exported (`[telemetry.otlp]`).
    let span = tracing::error_span!(
        "request",
        id = %rid.to_str().unwrap_or(""),
        otel.name = %format_args!("{method} {template}"),
        otel.kind = "server",
        http.request.method = method,
        http.route = template,
        http.response.status_code = tracing::field::Empty,
    );
    let mut resp = answer(&app, req, peer, found)
        .instrument(span.clone())
        .await;
    let status = resp.status().as_u16();
    span.record("http.response.status_code", status);
    let took = started.elapsed();
    resp.headers_mut().insert(X_REQUEST_ID, rid);
    app.shared
        .metrics
        .observe_http(method, template, status, took);
    span.in_scope(|| {
        tracing::info!(
            target: "threadline::access",
            method,
            route = template,
            status,
            latency_ms = took.as_secs_f64() * 1000.0,
            "request"
        )
    });
    resp
}

const X_REQUEST_ID: hyper::header::HeaderName =
    hyper::header::HeaderName::from_static("x-request-id");

/// The request's id: the client's `X-Request-Id` when it is short and
/// plain (letters, digits, `-_.:`), else a new one, unique in this process.
fn request_id(req: &Request<Body>) -> HeaderValue {
    if let Some(v) = req.headers().get(X_REQUEST_ID) {
        let b = v.as_bytes();
        if (1..=64).contains(&b.len())
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(c))
        {
            return v.clone();
        }
    }
    static PREFIX: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| uuid::Uuid::new_v4().as_u128() as u32);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    HeaderValue::from_str(&format!("{prefix:08x}{n:012x}")).expect("hex is a valid header value")
}

/// The method as a bounded metric label.
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The answer to one request: the per-source rate limit, then the route.
async fn answer(app: &Arc<App>, req: Request<Body>, peer: SocketAddr, found: Matched<'_>) -> Resp {
    if let Some(limiter) = &app.limiter {
        let exempt = matches!(req.uri().path(), "/healthz" | "/readyz" | "/metrics");
        if let (false, Err(not_until)) = (exempt, limiter.check_key(&peer.ip())) {
            app.shared.metrics.http_client_errors.inc();
            let wait = not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ));
            let mut r = error_response(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "more than {} requests a second from {}",
                    app.cfg.server.rate_limit_per_second,
                    peer.ip()
                ),
            ));
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            if let Ok(v) = hyper::header::HeaderValue::from_str(&secs.to_string()) {
                r.headers_mut().insert(hyper::header::RETRY_AFTER, v);
            }
            return r;
        }
    }
    let resp = match route(app, req, found).await {
        Ok(r) => r,
        Err(e) => error_response(e),
    };
    if resp.status().is_client_error() {
        app.shared.metrics.http_client_errors.inc();
    }
    resp
}

/// Dispatches a request on its entry of the route table.
async fn route(app: &Arc<App>, req: Request<Body>, found: Matched<'_>) -> Result<Resp, ApiError> {
    let path = req.uri().path().to_owned();
    if path.len() > MAX_URL_BYTES {
        return Err(ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            "the request path is too long",
        ));
    }
    let (op, params) = match found {
        Matched::Found(op, params) => (op, params),
        Matched::WrongMethod(_, allowed) => {
            return Err(ApiError::method_not_allowed(&req, allowed))
        }
        Matched::NotFound => return Err(ApiError::not_found(format!("no endpoint {path}"))),
    };
    check_content_type(op, &req)?;
    if op.op.runs() == crate::routes::Runs::CalendarHome {
        admin(app, &req)?;
        let tenant = known_tenant(app, param(&params, "tenant"))?;
        if let Some(home) = crate::http::flows::calendar_home(app, &req, &tenant).await? {
            return pass_on(app, req, &home).await;
        }
    }
    match op.op {
        Op::Healthz => Ok(healthz(app)),
        Op::Readyz => Ok(readyz(app)),
        Op::Metrics => Ok(text_response(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            app.shared.metrics.render(),
        )),
        Op::OpenApi => Ok(text_response(
            StatusCode::OK,
            "application/json",
            crate::openapi::document_text().to_owned(),
        )),
        Op::ChatSocket => crate::http::webchat::upgrade(app.clone(), req),
        Op::AgentSocket => crate::http::agents::upgrade(app.clone(), req),
        Op::Inbound => inbound(app, req).await,
        Op::TwilioSms => webhooks::twilio_sms(app, req).await,
        Op::TwilioStatus => webhooks::twilio_status(app, req).await,
        Op::TwilioVoice => webhooks::twilio_voice(app, req).await,
        Op::TwilioDialStatus => webhooks::twilio_dial_status(app, req).await,
        Op::TwilioGather => webhooks::twilio_gather(app, req).await,
        Op::TwilioCallStatus => webhooks::twilio_call_status(app, req).await,
        Op::TwilioHold => webhooks::twilio_hold(app, req).await,
        Op::TwilioWhisper => webhooks::twilio_whisper(app, req).await,
        Op::TwilioOutboundCall => webhooks::twilio_outbound_call(app, req).await,
        Op::TwilioAmd => webhooks::twilio_amd(app, req).await,
        Op::WhatsappVerify => webhooks::whatsapp_verify(app, &req),
        Op::WhatsappNotify => webhooks::whatsapp_notify(app, req).await,
        Op::ChatPage => crate::http::webchat::page(app, &req),
        Op::AgentPage => Ok(crate::http::agents::page()),
        Op::InboxPage => Ok(html_page(include_str!("inbox.html").to_owned(), "'none'")),
        Op::InboxSocket => crate::http::webchat::inbox_upgrade(app.clone(), req),
        Op::FlowsReload => {
            admin(app, &req)?;
            match crate::http::flows::load(&app.cfg) {
                Ok((flows, responders)) => {
                    let mut tenants: Vec<String> = flows.keys().cloned().collect();
                    tenants.sort();
                    app.shared.set_flows(flows, responders);
                    Ok(json_response(StatusCode::OK, &json!({"reloaded": tenants})))
                }
                Err(e) => Err(ApiError::bad("invalid_flow", e)),
            }
        }
        Op::AgentsList | Op::AgentsCreate => crate::http::agents::rest(app, req, None).await,
        Op::AgentsDelete => {
            let id = decode_segment(param(&params, "id"))?;
            crate::http::agents::rest(app, req, Some(&id)).await
        }
        Op::TenantMetrics => {
            admin(app, &req)?;
            let tenant = known_tenant(app, &decode_segment(param(&params, "tenant"))?)?;
            let mut raw = outcome_counts(app, &tenant);
            if this_node_only(&req) {
                return Ok(json_response(StatusCode::OK, &raw));
            }
            // In a cluster, every node counts what its conversations did.
            let path = format!("/api/v1/tenants/{tenant}/metrics?node=this");
            let (theirs, missing) = from_every_peer(app, &path).await;
            for v in theirs {
                add_counts(&mut raw, &v);
            }
            let mut out = outcomes_json(&tenant, &raw);
            if !missing.is_empty() {
                out["nodes_missing"] = json!(missing);
            }
            Ok(json_response(StatusCode::OK, &out))
        }
        Op::TenantLeakage => {
            admin(app, &req)?;
            let tenant = known_tenant(app, &decode_segment(param(&params, "tenant"))?)?;
            let mut out = leakage(app, &tenant).await?;
            if !this_node_only(&req) {
                // In a cluster, each node lists the conversations it holds.
                let path = format!("/api/v1/tenants/{tenant}/leakage?node=this");
                let (theirs, missing) = from_every_peer(app, &path).await;
                for v in theirs {
                    for part in ["missed_calls_not_recovered", "stalled"] {
                        let more = &v[part];
                        let mine = &mut out[part];
                        mine["count"] = json!(
                            mine["count"].as_u64().unwrap_or(0)
                                + more["count"].as_u64().unwrap_or(0)
                        );
                        add_counts(&mut mine["by_channel"], &more["by_channel"]);
                        if let (Some(list), Some(add)) = (
                            mine["conversations"].as_array_mut(),
                            more["conversations"].as_array(),
                        ) {
                            list.extend(add.iter().cloned());
                            list.sort_by(|a, b| a["since"].as_str().cmp(&b["since"].as_str()));
                        }
                    }
                }
                if !missing.is_empty() {
                    out["nodes_missing"] = json!(missing);
                }
            }
            Ok(json_response(StatusCode::OK, &out))
        }
        Op::TenantQueue => {
            admin(app, &req)?;
            crate::http::agents::queue(app, &decode_segment(param(&params, "tenant"))?).await
        }
        Op::Escalate => {
            admin(app, &req)?;
            let id = param(&params, "id");
            let id: ConversationId = id
                .parse()
                .map_err(|_| ApiError::not_found(format!("no conversation {id}")))?;
            crate::http::agents::escalate(app, id, req).await
        }
        Op::Conversations => {
            admin(app, &req)?;
            let tenant = known_tenant(app, param(&params, "tenant"))?;
            let query = req.uri().query().unwrap_or("");
            let pairs = query_pairs(query)?;
            let mut f = crate::listing::Filter::parse(&pairs)
                .map_err(|e| ApiError::bad("invalid_query", e))?;
            // One more than a page, to know whether another follows.
            let limit = f.limit;
            f.limit += 1;
            let mut rows = crate::listing::rows(app.shared.persistence.store.clone(), &tenant, &f)
                .await
                .map_err(ApiError::storage)?;
            if f.this_node {
                return Ok(json_response(
                    StatusCode::OK,
                    &json!({"conversations": rows}),
                ));
            }
            let mut path = format!("/api/v1/tenants/{tenant}/conversations?node=this");
            for (k, v) in query_pairs(query)? {
                if k != "node" && k != "limit" {
                    path.push_str(&format!(
                        "&{k}={}",
                        form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>()
                    ));
                }
            }
            path.push_str(&format!("&limit={}", f.limit.min(200)));
            let (theirs, missing) = from_every_peer(app, &path).await;
            for v in theirs {
                if let Some(more) = v["conversations"].as_array() {
                    rows.extend(more.iter().cloned());
                }
            }
            let mut out = crate::listing::page(&tenant, rows, limit);
            if !missing.is_empty() {
                out["nodes_missing"] = json!(missing);
            }
            Ok(json_response(StatusCode::OK, &out))
        }
        Op::ConversationTranscript => {
            admin(app, &req)?;
            let id = conversation_id(param(&params, "id"))?;
            match app.router.view_by_id(id).await? {
                Some(s) => {
                    let pairs = query_pairs(req.uri().query().unwrap_or(""))?;
                    let v = crate::listing::messages(&s, &pairs, |m| message_json(s.id, m))
                        .map_err(|e| ApiError::bad("invalid_query", e))?;
                    Ok(json_response(StatusCode::OK, &v))
                }
                None => Err(ApiError::not_found(format!("no conversation {id}"))),
            }
        }
        Op::ConversationGet => {
            admin(app, &req)?;
            let id = conversation_id(param(&params, "id"))?;
            match app.router.view_by_id(id).await? {
                Some(s) => Ok(json_response(StatusCode::OK, &conversation_json(&s))),
                None => Err(ApiError::not_found(format!("no conversation {id}"))),
            }
        }
        Op::ContactConversation => {
            admin(app, &req)?;
            let tenant = known_tenant(app, param(&params, "tenant"))?;
            let address = decode_segment(param(&params, "address"))?;
            match app.router.view(&tenant, &address).await? {
                Some(s) => Ok(json_response(StatusCode::OK, &conversation_json(&s))),
                None => Err(ApiError::not_found(format!(
                    "{address} has no conversation with {tenant}"
                ))),
            }
        }
        Op::ContactConsentGet => {
            admin(app, &req)?;
            let tenant = known_tenant(app, param(&params, "tenant"))?;
            let address = decode_segment(param(&params, "address"))?;
            let state = app.router.view(&tenant, &address).await?;
            Ok(json_response(StatusCode::OK, &consent_json(state.as_ref())))
        }
        Op::ContactConsentPost => {
            admin(app, &req)?;
            let tenant = known_tenant(app, param(&params, "tenant"))?;
            let address = decode_segment(param(&params, "address"))?;
            record_consent(app, &tenant, &address, req).await
        }
        Op::Audit => {
            admin(app, &req)?;
            let tenant = known_tenant(app, param(&params, "tenant"))?;
            audit_export(app, &req, &tenant, req.uri().query().unwrap_or("")).await
        }
        Op::Calendar => {
            admin(app, &req)?;
            let tenant = known_tenant(app, param(&params, "tenant"))?;
            crate::http::flows::calendar(app, &tenant, req.uri().query().unwrap_or(""))
        }
        Op::Bookings => {
            admin(app, &req)?;
            let tenant = known_tenant(app, param(&params, "tenant"))?;
            crate::http::flows::bookings(app, &tenant, req.uri().query().unwrap_or("")).await
        }
        Op::SlotBlock | Op::SlotUnblock => {
            admin(app, &req)?;
            let tenant = known_tenant(app, param(&params, "tenant"))?;
            let start = parse_rfc3339("start", &decode_segment(param(&params, "start"))?)?;
            crate::http::flows::set_slot(app, &tenant, start, op.op == Op::SlotBlock).await
        }
        Op::BookingOutcome => {
            admin(app, &req)?;
            let id = param(&params, "id");
            let id: ConversationId = id
                .parse()
                .map_err(|_| ApiError::not_found(format!("no conversation {id}")))?;
            crate::http::flows::booking_outcome(app, id, req).await
        }
        Op::ConversationNotes => {
            admin(app, &req)?;
            let id = param(&params, "id");
            let id: ConversationId = id
                .parse()
                .map_err(|_| ApiError::not_found(format!("no conversation {id}")))?;
            let body = read_body(req, app.cfg.server.max_body_bytes).await?;
            let b: crate::bodies::NoteBody = parse_json(&body)?;
            let text = b.text.trim();
            if text.is_empty() || text.chars().count() > 2000 {
                return Err(ApiError::bad(
                    "invalid_field",
                    "`text` is required, at most 2000 characters",
                ));
            }
            let by = b
                .author
                .map(|a| a.trim().chars().take(100).collect::<String>())
                .filter(|a| !a.is_empty())
                .map(|a| format!(" from {a}"))
                .unwrap_or_default();
            let note = format!("[private note{by}: {text}]");
            if !app.router.add_note(id, note.clone()).await? {
                return Err(ApiError::not_found(format!("no conversation {id}")));
            }
            Ok(json_response(
                StatusCode::CREATED,
                &json!({"conversation_id": id.to_string(), "note": note}),
            ))
        }
        Op::Cluster => {
            admin(app, &req)?;
            Ok(json_response(StatusCode::OK, &cluster_json(app).await))
        }
        Op::ClusterAgents => {
            if !passed_on(&req) {
                return Err(ApiError::not_found(format!("no endpoint {path}")));
            }
            admin(app, &req)?;
            Ok(crate::http::agents::peer_view(
                app,
                req.uri().query() == Some("full"),
            ))
        }
        Op::ClusterConversation => {
            admin(app, &req)?;
            let Some(cluster) = &app.cluster else {
                return Err(ApiError::not_found("this node is not in a cluster"));
            };
            let id = param(&params, "id");
            let conv: ConversationId = id
                .parse()
                .map_err(|_| ApiError::not_found(format!("no conversation {id}")))?;
            let here = cluster.holds(conv).await;
            let node = match here {
                true => Some(cluster.spec.name.clone()),
                false => cluster.locate(conv).await,
            };
            Ok(json_response(
                StatusCode::OK,
                &json!({"id": id, "here": here, "node": node}),
            ))
        }
        Op::ClusterForget => {
            admin(app, &req)?;
            forget_node(app, &req, param(&params, "name")).await
        }
        Op::Backup => {
            admin(app, &req)?;
            backup(app).await
        }
        Op::DeadLetters => {
            admin(app, &req)?;
            dead_letters(app).await
        }
        Op::ConversationMessages => {
            admin(app, &req)?;
            let id = conversation_id(param(&params, "id"))?;
            let spec = outbound_spec(app, req).await?;
            match app.router.send_to_conversation(id, spec).await? {
                Some(outcome) => Ok(json_response(StatusCode::ACCEPTED, &outcome_json(&outcome))),
                None => Err(ApiError::not_found(format!("no conversation {id}"))),
            }
        }
        Op::ContactPut => {
            admin(app, &req)?;
            let tenant = known_tenant(app, param(&params, "tenant"))?;
            let address = decode_segment(param(&params, "address"))?;
            valid_contact(&address)?;
            update_contact(app, &tenant, &address, req).await
        }
        Op::ContactMessages => {
            admin(app, &req)?;
            let tenant = known_tenant(app, param(&params, "tenant"))?;
            let address = decode_segment(param(&params, "address"))?;
            valid_contact(&address)?;
            let spec = outbound_spec(app, req).await?;
            let (conv, outcome) = app.router.send_to_contact(&tenant, &address, spec).await?;
            let mut v = outcome_json(&outcome);
            v["conversation_id"] = json!(conv.to_string());
            Ok(json_response(StatusCode::ACCEPTED, &v))
        }
        Op::ConversationTimers => {
            admin(app, &req)?;
            let id = conversation_id(param(&params, "id"))?;
            schedule_timer(app, id, req).await
        }
        Op::TimerCancel => {
            admin(app, &req)?;
            let id = param(&params, "id");
            let tid = parse_timer_id(id)
                .ok_or_else(|| ApiError::bad("invalid_id", format!("{id:?} is not a timer id")))?;
            if app.router.cancel_timer(tid).await? {
                return Ok(json_response(
                    StatusCode::OK,
                    &json!({"id": id, "cancelled": true}),
                ));
            }
            Err(ApiError::not_found(format!("no pending timer {id}")))
        }
        Op::ClockAdvance => {
            if app.simulated.is_none() {
                return Err(ApiError::not_found(
                    "the clock is not simulated (serve --simulated-clock)",
                ));
            }
            admin(app, &req)?;
            advance_clock(app, req).await
        }
    }
}

pub use threadline_actors::clock::rfc3339;
