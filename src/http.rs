//! The HTTP surface (hyper 1.x): the gateway API, the operator REST API and
//! the health endpoints. Every handler checks auth and input limits before
//! anything reaches the actors, and every error is JSON:
//! `{"error": {"code": ..., "message": ...}}`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;
use threadline_actors::cluster::{PeerAnswer, PeerRequest, RequestHandler};
use threadline_actors::consent::policy::Purpose;
use threadline_actors::conversation::core::{OutboundSpec, SendOutcome, TimerSpec};
use threadline_actors::{DeliverError, Delivered, ManualClock, Router, Runtime};
use threadline_protocol::codec::InboundMessage;
use threadline_protocol::{Channel, ConversationId, ConversationState, TimerKind, Timestamp};
use tokio::net::TcpListener;

use crate::bodies::{AdvanceBody, ConsentBody, ContactBody, InboundBody, MessageBody, TimerBody};
use crate::config::{is_e164, Config};
use crate::routes::{BodyKind, Matched, Op, Operation};
use crate::webhooks;
use tracing::Instrument;

pub const MAX_TEXT_BYTES: usize = 8 * 1024;
pub const MAX_ID_BYTES: usize = 128;
pub const MAX_MEDIA: usize = 10;
pub const MAX_URL_BYTES: usize = 2048;

pub struct App {
    pub cfg: Config,
    pub router: Router,
    /// The runtime's shared context: metrics, storage, clock, readiness.
    pub(crate) shared: Arc<threadline_actors::runtime::Shared>,
    /// Gateway token → tenant id.
    gateway_tokens: HashMap<String, String>,
    pub draining: AtomicBool,
    /// Flips to true when the node starts draining: open WebSockets close
    /// with 1001 (going away) so their clients reconnect elsewhere or later.
    pub stopping: tokio::sync::watch::Sender<bool>,
    /// The clock, when it is simulated (`--simulated-clock`).
    simulated: Option<Arc<ManualClock>>,
    /// Open web-chat sockets.
    pub chat: Arc<crate::webchat::Hub>,
    /// Open inbox sockets.
    pub inbox: Arc<crate::inbox::Watchers>,
    /// Agent tokens and API-created agents.
    pub agents: crate::agents::AgentDirectory,
    /// Cluster membership, when `[cluster]` is configured.
    pub cluster: Option<Arc<threadline_actors::cluster::Cluster>>,
    /// Requests per source address (`server.rate_limit_per_second`).
    limiter: Option<Arc<SourceLimiter>>,
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
        let chat = Arc::new(crate::webchat::Hub::default());
        runtime.shared.feed.subscribe(chat.clone());
        let inbox = Arc::new(crate::inbox::Watchers::default());
        runtime.shared.feed.subscribe(inbox.clone());
        let cfg_server = cfg.server.clone();
        App {
            chat,
            inbox,
            agents: crate::agents::AgentDirectory::new(&cfg),
            cfg,
            router: runtime.router.clone(),
            shared: runtime.shared.clone(),
            gateway_tokens,
            draining: AtomicBool::new(false),
            stopping: tokio::sync::watch::Sender::new(false),
            simulated,
            cluster: None,
            limiter: source_limiter(&cfg_server),
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
    match threadline_actors::gateway::run(&app.shared, gateway, work).await {
        Ok(r) => r.map_err(ApiError::from),
        Err(e) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            e.to_string(),
        )),
    }
}

/// An HTTP error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// For 405: the methods the path takes (`Allow`).
    allow: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            allow: None,
        }
    }
    /// 405 for a path that exists with other methods, naming them.
    pub(crate) fn method_not_allowed(req: &Request<Body>, allowed: Vec<&Method>) -> Self {
        let allow = allowed
            .iter()
            .map(|m| m.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        ApiError {
            allow: Some(allow.clone()),
            ..Self::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!(
                    "{} is not supported on {} (allowed: {allow})",
                    req.method(),
                    req.uri().path()
                ),
            )
        }
    }
    pub(crate) fn bad(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub(crate) fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", what)
    }
    /// Storage refused a write or read: 503 `storage_failed` with
    /// `Retry-After` (nothing was acknowledged; the caller tries again, on
    /// this node once it is restarted or on another).
    pub(crate) fn storage(e: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage_failed",
            e.to_string(),
        )
    }
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl From<DeliverError> for ApiError {
    fn from(e: DeliverError) -> Self {
        match e {
            DeliverError::Unavailable(m) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", m)
            }
            DeliverError::Storage(m) => ApiError::storage(m),
        }
    }
}

pub(crate) type Resp = Response<Full<Bytes>>;

/// A request's body: what a client sent, or what a peer passed on.
pub type Body = BoxBody<Bytes, hyper::Error>;

pub(crate) fn json_response(status: StatusCode, v: &Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(
        hyper::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

fn error_response(e: ApiError) -> Resp {
    let mut r = json_response(
        e.status,
        &json!({"error": {"code": e.code, "message": e.message}}),
    );
    if e.status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    if e.status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"threadline\""),
        );
    }
    if let Some(allow) = e.allow.and_then(|a| HeaderValue::from_str(&a).ok()) {
        r.headers_mut().insert(hyper::header::ALLOW, allow);
    }
    if e.status == StatusCode::REQUEST_TIMEOUT {
        // The rest of its body may still come: the connection ends here.
        r.headers_mut()
            .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

pub(crate) fn text_response(status: StatusCode, content_type: &'static str, body: String) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// A page of ours (the web chat, the agent desktop) with the headers a
/// browser needs to keep it safe: a Content-Security-Policy allowing only
/// the page's own inline scripts (by hash) and same-origin connections,
/// who may frame it (`frame_ancestors`, CSP syntax: `'none'`, `'self'` or
/// origins), no MIME sniffing, no referrer.
pub(crate) fn html_page(html: String, frame_ancestors: &str) -> Resp {
    use base64::Engine as _;
    use sha2::Digest as _;
    let mut scripts = String::new();
    let mut rest = html.as_str();
    while let Some(start) = rest.find("<script>") {
        let body = &rest[start + "<script>".len()..];
        let Some(end) = body.find("</script>") else {
            break;
        };
        let digest = sha2::Sha256::digest(&body.as_bytes()[..end]);
        scripts.push_str(&format!(
            " 'sha256-{}'",
            base64::engine::general_purpose::STANDARD.encode(digest)
        ));
        rest = &body[end..];
    }
    let csp = format!(
        "default-src 'none'; script-src{scripts}; style-src 'self' 'unsafe-inline'; \
         img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; \
         frame-ancestors {frame_ancestors}"
    );
    let mut r = text_response(StatusCode::OK, "text/html; charset=utf-8", html);
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert(hyper::header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(
        hyper::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        hyper::header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

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
    if let Some(owner) = held_elsewhere(app, &req, op.op, &params).await? {
        return pass_on(app, req, &owner).await;
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
        Op::ChatSocket => crate::webchat::upgrade(app.clone(), req),
        Op::AgentSocket => crate::agents::upgrade(app.clone(), req),
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
        Op::WhatsappVerify => webhooks::whatsapp_verify(app, &req),
        Op::WhatsappNotify => webhooks::whatsapp_notify(app, req).await,
        Op::ChatPage => crate::webchat::page(app, &req),
        Op::AgentPage => Ok(crate::agents::page()),
        Op::InboxPage => Ok(html_page(include_str!("inbox.html").to_owned(), "'none'")),
        Op::InboxSocket => crate::webchat::inbox_upgrade(app.clone(), req),
        Op::FlowsReload => {
            admin(app, &req)?;
            match crate::flows::load(&app.cfg) {
                Ok((flows, responders)) => {
                    let mut tenants: Vec<String> = flows.keys().cloned().collect();
                    tenants.sort();
                    app.shared.set_flows(flows, responders);
                    Ok(json_response(StatusCode::OK, &json!({"reloaded": tenants})))
                }
                Err(e) => Err(ApiError::bad("invalid_flow", e)),
            }
        }
        Op::AgentsList | Op::AgentsCreate => crate::agents::rest(app, req, None).await,
        Op::AgentsDelete => {
            let id = decode_segment(param(&params, "id"))?;
            crate::agents::rest(app, req, Some(&id)).await
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
            crate::agents::queue(app, &decode_segment(param(&params, "tenant"))?).await
        }
        Op::Escalate => {
            admin(app, &req)?;
            let id = param(&params, "id");
            let id: ConversationId = id
                .parse()
                .map_err(|_| ApiError::not_found(format!("no conversation {id}")))?;
            crate::agents::escalate(app, id, req).await
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
            if let Some(home) = crate::flows::calendar_home(app, &req, &tenant).await? {
                return pass_on(app, req, &home).await;
            }
            crate::flows::calendar(app, &tenant, req.uri().query().unwrap_or(""))
        }
        Op::Bookings => {
            admin(app, &req)?;
            let tenant = known_tenant(app, param(&params, "tenant"))?;
            if let Some(home) = crate::flows::calendar_home(app, &req, &tenant).await? {
                return pass_on(app, req, &home).await;
            }
            crate::flows::bookings(app, &tenant, req.uri().query().unwrap_or("")).await
        }
        Op::SlotBlock | Op::SlotUnblock => {
            admin(app, &req)?;
            let tenant = known_tenant(app, param(&params, "tenant"))?;
            let start = parse_rfc3339("start", &decode_segment(param(&params, "start"))?)?;
            if let Some(home) = crate::flows::calendar_home(app, &req, &tenant).await? {
                return pass_on(app, req, &home).await;
            }
            crate::flows::set_slot(app, &tenant, start, op.op == Op::SlotBlock).await
        }
        Op::BookingOutcome => {
            admin(app, &req)?;
            let id = param(&params, "id");
            let id: ConversationId = id
                .parse()
                .map_err(|_| ApiError::not_found(format!("no conversation {id}")))?;
            crate::flows::booking_outcome(app, id, req).await
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
            Ok(crate::agents::peer_view(
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
            // In a cluster the timer may belong to a conversation another
            // node holds: only that node can cancel it, so ask each.
            if let (Some(cluster), false) = (&app.cluster, passed_on(&req)) {
                for peer in cluster.peer_names() {
                    let ask = peer_request(&req, Bytes::new());
                    if matches!(cluster.request(&peer, &ask, PEER_TIMEOUT).await, Ok(a) if a.status == 200)
                    {
                        return Ok(json_response(
                            StatusCode::OK,
                            &json!({"id": id, "cancelled": true}),
                        ));
                    }
                }
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

/// A path parameter the matched template has.
fn param<'v>(params: &matchit::Params<'_, 'v>, name: &str) -> &'v str {
    params.get(name).unwrap_or_default()
}

fn conversation_id(id: &str) -> Result<ConversationId, ApiError> {
    id.parse()
        .map_err(|_| ApiError::bad("invalid_id", format!("{id:?} is not a conversation id")))
}

/// The content-type rule, from the route table: an operation that takes
/// JSON gets `application/json`, a Twilio webhook gets a form; an
/// optional body may be absent. Anything else is 415 before the handler.
fn check_content_type(op: &Operation, req: &Request<Body>) -> Result<(), ApiError> {
    let want = match op.body {
        BodyKind::None => return Ok(()),
        BodyKind::OptionalJson(_) if !has_body(req) => return Ok(()),
        BodyKind::Json(_) | BodyKind::OptionalJson(_) => "application/json",
        BodyKind::Form => "application/x-www-form-urlencoded",
    };
    let ct = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if mime.eq_ignore_ascii_case(want) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("Content-Type must be {want} (got {ct:?})"),
        ))
    }
}

/// Whether the request says it has a body.
fn has_body(req: &Request<Body>) -> bool {
    let h = req.headers();
    h.contains_key(hyper::header::TRANSFER_ENCODING)
        || h.get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
}

/// Marks a request another node passed on (over the cluster link): it is
/// never passed on again. An extension, so no client can set it.
#[derive(Clone, Copy)]
struct PassedOn;

/// How long a node waits for a peer's answer to a request passed on.
const PEER_TIMEOUT: Duration = Duration::from_secs(15);

/// In a cluster: the node a write is for, when that is another node: the
/// one holding the conversation, for a write addressed by conversation
/// id; the one owning the contact, for a write addressed by contact.
async fn held_elsewhere(
    app: &App,
    req: &Request<Body>,
    op: Op,
    params: &matchit::Params<'_, '_>,
) -> Result<Option<String>, ApiError> {
    let Some(cluster) = &app.cluster else {
        return Ok(None);
    };
    if passed_on(req) {
        return Ok(None);
    }
    match op {
        Op::Escalate
        | Op::BookingOutcome
        | Op::ConversationNotes
        | Op::ConversationMessages
        | Op::ConversationTimers => {
            // Only an authorized request is passed on.
            admin(app, req)?;
            let Ok(id) = param(params, "id").parse::<ConversationId>() else {
                return Ok(None);
            };
            Ok(cluster.locate(id).await)
        }
        Op::ContactMessages | Op::ContactConsentPost | Op::ContactPut => {
            admin(app, req)?;
            let tenant = known_tenant(app, param(params, "tenant"))?;
            let address = decode_segment(param(params, "address"))?;
            Ok(cluster.remote_owner(&app.router.key(&tenant, &address)))
        }
        _ => Ok(None),
    }
}

/// Whether `req` was passed on by another node of the cluster.
pub(crate) fn passed_on(req: &Request<Body>) -> bool {
    req.extensions().get::<PassedOn>().is_some()
}

/// `req` (its method, path and query, authorization and content type)
/// with `body`, to pass on to a peer.
fn peer_request(req: &Request<Body>, body: Bytes) -> PeerRequest {
    let path = req
        .uri()
        .path_and_query()
        .map_or(req.uri().path(), |p| p.as_str());
    PeerRequest {
        method: req.method().to_string(),
        path: path.to_owned(),
        headers: [AUTHORIZATION, CONTENT_TYPE]
            .iter()
            .filter_map(|h| Some((h.to_string(), req.headers().get(h)?.as_bytes().to_vec())))
            .collect(),
        body: body.to_vec(),
    }
}

/// An admin request of this node's own (the admin token, a JSON body) to
/// pass on to a peer.
pub(crate) fn admin_request(app: &App, method: Method, path: &str, body: Bytes) -> PeerRequest {
    PeerRequest {
        method: method.to_string(),
        path: path.to_owned(),
        headers: vec![
            (CONTENT_TYPE.to_string(), b"application/json".to_vec()),
            (
                AUTHORIZATION.to_string(),
                format!("Bearer {}", app.cfg.server.admin_token).into_bytes(),
            ),
        ],
        body: body.to_vec(),
    }
}

/// Serves the requests peers pass on to this node, through the same
/// routes (and authorization) as a client's.
pub fn peer_handler(app: std::sync::Weak<App>) -> RequestHandler {
    Arc::new(move |r: PeerRequest| {
        let app = app.upgrade();
        Box::pin(async move {
            let Some(app) = app else {
                return answer_of(error_response(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the node is stopping",
                )))
                .await;
            };
            let mut req = Request::new(body_of(Bytes::from(r.body)));
            match (r.method.parse::<Method>(), r.path.parse::<hyper::Uri>()) {
                (Ok(m), Ok(u)) => {
                    *req.method_mut() = m;
                    *req.uri_mut() = u;
                }
                _ => {
                    return answer_of(error_response(ApiError::bad(
                        "invalid_request",
                        "a peer passed on an unreadable request",
                    )))
                    .await
                }
            }
            for (k, v) in r.headers {
                if let (Ok(k), Ok(v)) = (
                    hyper::header::HeaderName::from_bytes(k.as_bytes()),
                    HeaderValue::from_bytes(&v),
                ) {
                    req.headers_mut().insert(k, v);
                }
            }
            req.extensions_mut().insert(PassedOn);
            let path = req.uri().path().to_owned();
            let found = crate::routes::find(req.method(), &path);
            let resp = route(&app, req, found).await.unwrap_or_else(error_response);
            answer_of(resp).await
        })
    })
}

async fn answer_of(resp: Resp) -> PeerAnswer {
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = match resp.into_body().collect().await {
        Ok(b) => b.to_bytes().to_vec(),
        Err(never) => match never {},
    };
    PeerAnswer {
        status,
        content_type,
        body,
    }
}

/// A peer's answer as this node's response.
fn response_of(a: PeerAnswer) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(a.body)));
    *r.status_mut() = StatusCode::from_u16(a.status).unwrap_or(StatusCode::BAD_GATEWAY);
    if let Some(v) = a.content_type.and_then(|c| HeaderValue::from_str(&c).ok()) {
        r.headers_mut().insert(CONTENT_TYPE, v);
    }
    r
}

/// Sends one admin request to every other live node (marked as passed on,
/// so it goes no further): each peer's name and answer. Nothing in a
/// single node.
async fn ask_every_peer(
    app: &App,
    method: Method,
    path: &str,
    body: bytes::Bytes,
) -> Vec<(String, Result<PeerAnswer, String>)> {
    let Some(cluster) = &app.cluster else {
        return Vec::new();
    };
    let ask = admin_request(app, method, path, body);
    let asks = cluster.peer_names().into_iter().map(|peer| {
        let ask = &ask;
        async move {
            let answer = cluster
                .request(&peer, ask, PEER_TIMEOUT)
                .await
                .map_err(|e| e.to_string());
            (peer, answer)
        }
    });
    futures_util::future::join_all(asks).await
}

/// Sends the same admin change to every other live node; the nodes that
/// did not take it (not 2xx), by name.
pub(crate) async fn to_every_peer(
    app: &App,
    method: Method,
    path: &str,
    body: bytes::Bytes,
) -> Vec<String> {
    let mut refused = Vec::new();
    for (peer, answer) in ask_every_peer(app, method, path, body).await {
        match answer {
            Ok(a) if a.succeeded() => {}
            Ok(a) => {
                tracing::warn!(peer, status = a.status, "a peer refused an admin change");
                refused.push(peer);
            }
            Err(e) => {
                tracing::warn!(peer, error = %e, "a peer did not take an admin change");
                refused.push(peer);
            }
        }
    }
    refused
}

/// Asks every other live node for `path` (an admin GET): the JSON bodies
/// of the nodes that answered 2xx, and the names of those that did not.
pub(crate) async fn from_every_peer(app: &App, path: &str) -> (Vec<Value>, Vec<String>) {
    let mut out = (Vec::new(), Vec::new());
    for (peer, answer) in ask_every_peer(app, Method::GET, path, Bytes::new()).await {
        match answer
            .ok()
            .filter(PeerAnswer::succeeded)
            .and_then(|a| serde_json::from_slice::<Value>(&a.body).ok())
        {
            Some(v) => out.0.push(v),
            None => out.1.push(peer),
        }
    }
    out
}

/// Whether the query asks for this node's own part only (`?node=this`,
/// how nodes ask each other for what they hold).
fn this_node_only(req: &Request<Body>) -> bool {
    req.uri()
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "node=this"))
}

/// Sends `req` on to `owner` (a node's name), over the cluster link, and
/// relays the answer.
async fn pass_on(app: &App, req: Request<Body>, owner: &str) -> Result<Resp, ApiError> {
    let Some(cluster) = &app.cluster else {
        return Err(ApiError::not_found("this node is not in a cluster"));
    };
    let (parts, body) = req.into_parts();
    let body = read_body(
        Request::from_parts(parts.clone(), body),
        app.cfg.server.max_body_bytes,
    )
    .await?;
    let ask = peer_request(&Request::from_parts(parts, body_of(Bytes::new())), body);
    let answer = cluster
        .request(owner, &ask, PEER_TIMEOUT)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("node {owner}, which this request is for, did not answer: {e}"),
            )
        })?;
    Ok(response_of(answer))
}

/// A request body of `bytes`.
fn body_of(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

/// Liveness: 503 once storage has failed (a commit did not go through),
/// so a supervisor restarts the node, which opens its data afresh.
fn healthz(app: &App) -> Resp {
    let storage = app.shared.persistence.healthy();
    json_response(
        if storage {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        &json!({"status": if storage { "ok" } else { "unhealthy" }, "storage": storage}),
    )
}

fn readyz(app: &App) -> Resp {
    let draining = app.draining.load(Ordering::SeqCst);
    let storage = app.shared.persistence.healthy();
    // In a cluster: only while this node can take writes.
    let cluster = app.cluster.as_ref().map(|c| c.ready());
    let ok = app.shared.ready() && !draining && cluster.unwrap_or(true);
    json_response(
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        &json!({"ready": ok, "storage": storage, "intact": app.shared.persistence.intact(), "draining": draining, "cluster": cluster}),
    )
}

pub(crate) fn bearer(req: &Request<Body>) -> Option<&str> {
    let v = req.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

pub(crate) fn ct_eq(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// Whether `token` is the supervisor token (which reads only).
pub(crate) fn is_supervisor(app: &App, token: &str) -> bool {
    app.cfg
        .server
        .supervisor_token
        .as_deref()
        .is_some_and(|s| ct_eq(token, s))
}

pub(crate) fn admin(app: &App, req: &Request<Body>) -> Result<(), ApiError> {
    let reads = matches!(*req.method(), hyper::Method::GET | hyper::Method::HEAD);
    match bearer(req) {
        Some(t) if ct_eq(t, &app.cfg.server.admin_token) => Ok(()),
        Some(t) if is_supervisor(app, t) && reads => Ok(()),
        Some(t) if is_supervisor(app, t) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the supervisor token only reads; changes need the admin token",
        )),
        Some(_) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the bearer token is not the admin token",
        )),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "an `Authorization: Bearer <admin_token>` header is required",
        )),
    }
}

pub(crate) fn known_tenant(app: &App, t: &str) -> Result<String, ApiError> {
    app.cfg
        .tenant(t)
        .map(|t| t.id.clone())
        .ok_or_else(|| ApiError::not_found(format!("unknown tenant {t:?}")))
}

pub(crate) fn decode_segment(s: &str) -> Result<String, ApiError> {
    let d = percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map_err(|_| ApiError::bad("invalid_path", "the address is not valid UTF-8"))?;
    if d.is_empty() || d.len() > MAX_ID_BYTES {
        return Err(ApiError::bad(
            "invalid_path",
            "the address is empty or too long",
        ));
    }
    Ok(d.into_owned())
}

/// Bodies up to this size are read and discarded when refused, so the
/// client gets to read the 413 instead of a reset connection; larger ones
/// just close the connection.
const DRAIN_REFUSED_BODY: usize = 4 << 20;

/// Reads the body, refusing more than `limit` bytes.
pub(crate) async fn read_body(req: Request<Body>, limit: usize) -> Result<Bytes, ApiError> {
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let deadline = req.extensions().get::<BodyDeadline>().map(|d| d.0);
    let body = req.into_body();
    if let Some(deadline) = deadline {
        return match tokio::time::timeout_at(deadline, read_limited(body, declared, limit)).await {
            Ok(r) => r,
            Err(_) => Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                "the request body did not arrive in time".to_owned(),
            )),
        };
    }
    read_limited(body, declared, limit).await
}

/// `read_body` without the deadline.
async fn read_limited(
    mut body: Body,
    declared: Option<u64>,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body exceeds {limit} bytes"),
        )
    };
    if declared.is_some_and(|len| len > limit as u64) {
        if declared.is_some_and(|len| len <= DRAIN_REFUSED_BODY as u64) {
            let _ = Limited::new(body, DRAIN_REFUSED_BODY).collect().await;
        }
        return Err(too_large());
    }
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::bad("body_unreadable", e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                let rest = DRAIN_REFUSED_BODY.saturating_sub(buf.len() + data.len());
                let _ = Limited::new(body, rest).collect().await;
                return Err(too_large());
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

pub(crate) fn parse_json<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| ApiError::bad("invalid_utf8", format!("the body is not valid UTF-8: {e}")))?;
    serde_json::from_str(text).map_err(|e| {
        let code = if e.is_data() {
            "invalid_field"
        } else {
            "invalid_json"
        };
        ApiError::bad(code, e.to_string())
    })
}

/// A contact address for the consent API: an E.164 number, a WhatsApp or
/// web-chat id, or an email address.
fn valid_contact(address: &str) -> Result<(), ApiError> {
    let ok = is_e164(address)
        || (address.len() <= 64
            && address
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-@+".contains(&b)));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad(
            "invalid_path",
            format!("{address:?} is not a contact address"),
        ))
    }
}

async fn update_contact(
    app: &App,
    tenant: &str,
    address: &str,
    req: Request<Body>,
) -> Result<Resp, ApiError> {
    let body = read_body(req, app.cfg.server.max_body_bytes).await?;
    let b: ContactBody = parse_json(&body)?;
    field_len("name", b.name.as_deref().unwrap_or(""), 256)?;
    if let Some(z) = &b.timezone {
        if z.parse::<chrono_tz::Tz>().is_err() {
            return Err(ApiError::bad(
                "invalid_field",
                format!("`timezone` {z:?} is not an IANA time zone"),
            ));
        }
    }
    if let Some(r) = &b.region {
        let ok = r.len() >= 4
            && r.len() <= 6
            && r.as_bytes()[2] == b'-'
            && r.bytes()
                .enumerate()
                .all(|(i, c)| i == 2 || c.is_ascii_uppercase() || c.is_ascii_digit());
        if !ok {
            return Err(ApiError::bad(
                "invalid_field",
                format!("`region` {r:?} is not an ISO 3166-2 code like US-FL"),
            ));
        }
    }
    if let Some(e) = &b.email {
        normalize_address(Channel::Email, e)?;
    }
    if b.facts.len() > 50
        || b.facts
            .iter()
            .any(|(k, v)| k.is_empty() || k.len() > 64 || v.len() > 1024)
    {
        return Err(ApiError::bad(
            "field_too_long",
            "at most 50 `facts`, keys of 1-64 bytes, values of at most 1024",
        ));
    }
    let reserved = ["timezone", "region"];
    if let Some(k) = b.facts.keys().find(|k| reserved.contains(&k.as_str())) {
        return Err(ApiError::bad(
            "invalid_field",
            format!("set `{k}` as its own field, not as a fact"),
        ));
    }
    let update = threadline_protocol::ConvEvent::ContactUpdated {
        name: b.name,
        timezone: b.timezone,
        region: b.region,
        email: b.email.map(|e| e.to_ascii_lowercase()),
        facts: b.facts,
    };
    let state = app.router.update_contact(tenant, address, update).await?;
    Ok(json_response(StatusCode::OK, &conversation_json(&state)))
}

async fn outbound_spec(app: &App, req: Request<Body>) -> Result<OutboundSpec, ApiError> {
    let body = read_body(req, app.cfg.server.max_body_bytes).await?;
    let b: MessageBody = parse_json(&body)?;
    if b.text.trim().is_empty() {
        return Err(ApiError::bad("invalid_field", "`text` must not be empty"));
    }
    field_len("text", &b.text, MAX_TEXT_BYTES)?;
    field_len("subject", b.subject.as_deref().unwrap_or(""), MAX_ID_BYTES)?;
    let purpose = Purpose::parse(&b.purpose).ok_or_else(|| {
        ApiError::bad(
            "invalid_field",
            "`purpose` must be conversational, reminder or marketing",
        )
    })?;
    let channel = optional_channel(b.channel.as_deref())?;
    Ok(OutboundSpec {
        text: b.text,
        channel,
        purpose,
        agent: None,
        requested: false,
        subject: b.subject.filter(|s| !s.trim().is_empty()),
    })
}

pub(crate) fn outcome_json(o: &SendOutcome) -> Value {
    match o {
        SendOutcome::Sent { message, rule } => {
            json!({"decision": "sent", "message_id": message.to_string(), "rule": rule})
        }
        SendOutcome::Deferred { until, timer, rule } => json!({
            "decision": "deferred", "until": rfc3339(*until),
            "timer_id": timer_id_text(*timer), "rule": rule,
        }),
        SendOutcome::Blocked { reason } => json!({"decision": "blocked", "reason": reason}),
    }
}

async fn record_consent(
    app: &App,
    tenant: &str,
    address: &str,
    req: Request<Body>,
) -> Result<Resp, ApiError> {
    valid_contact(address)?;
    let body = read_body(req, app.cfg.server.max_body_bytes).await?;
    let b: ConsentBody = parse_json(&body)?;
    let status = threadline_protocol::ConsentStatus::parse(&b.status)
        .ok_or_else(|| ApiError::bad("invalid_field", "`status` must be opted_in or opted_out"))?;
    let channel = optional_channel(b.channel.as_deref())?;
    if let Some(p) = &b.purpose {
        if threadline_actors::consent::policy::Purpose::parse(p).is_none() {
            return Err(ApiError::bad(
                "invalid_field",
                "`purpose` must be conversational, reminder or marketing",
            ));
        }
    }
    let sources = ["web_form", "verbal", "import", "api", "keyword", "paper"];
    if !sources.contains(&b.source.as_str()) {
        return Err(ApiError::bad(
            "invalid_field",
            format!("`source` must be one of {}", sources.join(", ")),
        ));
    }
    field_len("proof", b.proof.as_deref().unwrap_or(""), MAX_URL_BYTES)?;
    let change = threadline_protocol::ConsentChange {
        status,
        channel,
        purpose: b.purpose,
        source: b.source,
        keyword: None,
        raw_text: None,
        provider_message_id: None,
        proof: b.proof,
        at: app.shared.clock.now(),
    };
    let conv = app.router.record_consent(tenant, address, change).await?;
    let state = app.router.view(tenant, address).await?;
    let mut v = consent_json(state.as_ref());
    v["conversation_id"] = json!(conv.to_string());
    Ok(json_response(StatusCode::CREATED, &v))
}

/// The consent view of a contact: overall status, per channel and purpose,
/// and the full history.
pub fn consent_json(state: Option<&ConversationState>) -> Value {
    use threadline_protocol::ConsentStatus as S;
    const PURPOSES: [&str; 3] = ["conversational", "reminder", "marketing"];
    let Some(s) = state else {
        return json!({"status": "unknown", "channels": {}, "history": []});
    };
    let mut channels = serde_json::Map::new();
    let mut any_out = false;
    let mut any_in = false;
    for ch in Channel::ALL {
        let per: Vec<S> = PURPOSES.iter().map(|p| s.consent_for(ch, p)).collect();
        let status = if per.contains(&S::OptedOut) {
            any_out = true;
            S::OptedOut
        } else if per.contains(&S::OptedIn) {
            any_in = true;
            S::OptedIn
        } else {
            S::Unknown
        };
        let purposes: serde_json::Map<String, Value> = PURPOSES
            .iter()
            .zip(&per)
            .map(|(p, st)| (p.to_string(), json!(st.as_str())))
            .collect();
        channels.insert(
            ch.as_str().into(),
            json!({"status": status.as_str(), "purposes": purposes}),
        );
    }
    let status = if any_out {
        "opted_out"
    } else if any_in {
        "opted_in"
    } else {
        "unknown"
    };
    let history: Vec<Value> = s
        .consent
        .iter()
        .map(|c| {
            let mut v = threadline_actors::audit::consent_change_json(c);
            v["at"] = json!(rfc3339(c.at));
            v
        })
        .collect();
    json!({"status": status, "channels": channels, "history": history})
}

pub fn timer_id_text(id: u64) -> String {
    format!("tmr_{id:016x}")
}

fn parse_timer_id(s: &str) -> Option<u64> {
    let hex = s.strip_prefix("tmr_")?;
    (hex.len() == 16
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then(|| u64::from_str_radix(hex, 16).ok())
    .flatten()
}

/// The longest a timer may be scheduled ahead: ten years.
const MAX_TIMER_AHEAD_MS: i64 = 10 * 366 * 24 * 3_600_000;

async fn schedule_timer(
    app: &App,
    id: ConversationId,
    req: Request<Body>,
) -> Result<Resp, ApiError> {
    let body = read_body(req, app.cfg.server.max_body_bytes).await?;
    let b: TimerBody = parse_json(&body)?;
    let now = app.shared.clock.now();
    let due = match (&b.at, b.in_seconds) {
        (Some(at), None) => {
            field_len("at", at, 64)?;
            parse_rfc3339("at", at)?
        }
        (None, Some(s)) if (0..=MAX_TIMER_AHEAD_MS / 1000).contains(&s) => {
            now.saturating_add_millis(s * 1000)
        }
        (None, Some(_)) => {
            return Err(ApiError::bad(
                "invalid_field",
                "`in_seconds` must be between 0 and 316224000",
            ))
        }
        _ => {
            return Err(ApiError::bad(
                "invalid_field",
                "give exactly one of `at` (RFC 3339) or `in_seconds`",
            ))
        }
    };
    if due.0 > now.0 + MAX_TIMER_AHEAD_MS {
        return Err(ApiError::bad(
            "invalid_field",
            "`at` is more than ten years ahead",
        ));
    }
    let kind = match TimerKind::parse(&b.kind) {
        Some(k @ (TimerKind::FollowUp | TimerKind::Reminder)) => k,
        _ => {
            return Err(ApiError::bad(
                "invalid_field",
                format!("`kind` must be follow_up or reminder (got {:?})", b.kind),
            ))
        }
    };
    let text = b.text.unwrap_or_default();
    if text.trim().is_empty() {
        return Err(ApiError::bad("invalid_field", "`text` is required"));
    }
    field_len("text", &text, MAX_TEXT_BYTES)?;
    let channel = optional_channel(b.channel.as_deref())?;
    let spec = TimerSpec {
        due,
        kind,
        text: Some(text),
        channel,
    };
    match app.router.schedule_timer(id, spec).await? {
        Some(tid) => Ok(json_response(
            StatusCode::CREATED,
            &json!({"id": timer_id_text(tid), "at": rfc3339(due), "kind": kind.as_str()}),
        )),
        None => Err(ApiError::not_found(format!("no conversation {id}"))),
    }
}

async fn advance_clock(app: &App, req: Request<Body>) -> Result<Resp, ApiError> {
    let clock = app.simulated.as_ref().expect("routed only when simulated");
    let body = read_body(req, 4096).await?;
    let b: AdvanceBody = parse_json(&body)?;
    if !(b.seconds.is_finite() && b.seconds >= 0.0 && b.seconds <= 10.0 * 366.0 * 86_400.0) {
        return Err(ApiError::bad(
            "invalid_field",
            "`seconds` must be between 0 and 316224000",
        ));
    }
    let now = clock.advance_millis((b.seconds * 1000.0).round() as i64);
    let fired = app.router.advance_timers().await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"now": rfc3339(now), "fired": fired}),
    ))
}

/// An optional `channel` field of a request body.
fn optional_channel(c: Option<&str>) -> Result<Option<Channel>, ApiError> {
    c.map(|c| {
        Channel::parse(c).ok_or_else(|| {
            ApiError::bad("invalid_field", format!("`channel` {c:?} is not a channel"))
        })
    })
    .transpose()
}

pub(crate) fn field_len(name: &str, v: &str, max: usize) -> Result<(), ApiError> {
    if v.len() > max {
        return Err(ApiError::bad(
            "field_too_long",
            format!("`{name}` is {} bytes; at most {max} are accepted", v.len()),
        ));
    }
    Ok(())
}

pub fn parse_rfc3339(name: &str, s: &str) -> Result<Timestamp, ApiError> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|d| Timestamp(d.timestamp_millis()))
        .map_err(|e| ApiError::bad("invalid_field", format!("`{name}` is not RFC 3339: {e}")))
}

pub use threadline_actors::clock::rfc3339;

/// Checks a sender address for its channel and returns its normalized form:
/// the one identity every door (the gateway API, the webhooks) gives a
/// customer. A WhatsApp sender written as a `wa_id` (`15551234567`) or in
/// E.164 is the phone number `+15551234567`; only a business-scoped user id
/// without a number stays as it is.
pub fn normalize_address(channel: Channel, from: &str) -> Result<String, ApiError> {
    let from = from.trim();
    if channel == Channel::Whatsapp {
        let phone = match from.strip_prefix('+') {
            Some(_) if is_e164(from) => crate::phone::normalize(from),
            Some(_) => None,
            None => crate::phone::from_wa_id(from),
        };
        if let Some(p) = phone {
            return Ok(p);
        }
    }
    let ok = match channel {
        Channel::Sms | Channel::Voice => is_e164(from),
        // E.164, or a business-scoped user id when no number is shared.
        Channel::Whatsapp => {
            is_e164(from)
                || (from.len() <= 64
                    && !from.is_empty()
                    && from
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)))
        }
        Channel::Webchat => {
            !from.is_empty()
                && from.len() <= 64
                && from
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        }
        Channel::Email => {
            from.len() <= 254
                && from.split_once('@').is_some_and(|(l, d)| {
                    !l.is_empty() && d.contains('.') && !from.chars().any(char::is_whitespace)
                })
        }
    };
    if !ok {
        let want = match channel {
            Channel::Sms | Channel::Voice => "an E.164 phone number like +15551234567",
            Channel::Whatsapp => "an E.164 phone number or a WhatsApp user id",
            Channel::Webchat => "a visitor id of 1-64 letters, digits, '-' or '_'",
            Channel::Email => "an email address",
        };
        return Err(ApiError::bad(
            "invalid_field",
            format!("`from` must be {want} for channel {}", channel.as_str()),
        ));
    }
    Ok(if channel == Channel::Email {
        from.to_ascii_lowercase()
    } else {
        from.to_owned()
    })
}

async fn inbound(app: &App, req: Request<Body>) -> Result<Resp, ApiError> {
    let token_tenant = match bearer(&req) {
        Some(t) => app
            .gateway_tokens
            .iter()
            .find(|(k, _)| ct_eq(k, t))
            .map(|(_, v)| v.clone())
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "the bearer token is not a gateway token",
                )
            })?,
        None => {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "an `Authorization: Bearer <gateway_token>` header is required",
            ))
        }
    };
    if app.draining.load(Ordering::Relaxed) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "the node is shutting down",
        ));
    }
    let body = read_body(req, app.cfg.server.max_body_bytes).await?;
    let GatewayInbound { tenant, msg, meta } = parse_inbound(&body)?;
    let tenant = known_tenant(app, &tenant)?;
    if tenant != token_tenant {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this gateway token is not valid for tenant {tenant:?}"),
        ));
    }
    let from = msg.from.clone();
    let delivered = via(app, "api", async {
        app.router.deliver_with(&tenant, &from, msg, meta).await
    })
    .await?;
    match delivered {
        Delivered::Recorded(ack) => Ok(json_response(
            StatusCode::ACCEPTED,
            &json!({
                "conversation_id": ack.conversation.to_string(),
                "message_id": ack.message.to_string(),
                "duplicate": ack.duplicate,
            }),
        )),
        Delivered::DeadLettered { conversation } => Ok(json_response(
            StatusCode::ACCEPTED,
            &json!({
                "conversation_id": conversation.map(|c| c.to_string()),
                "message_id": null,
                "dead_lettered": true,
            }),
        )),
    }
}

/// A gateway API message (`POST /api/v1/inbound`), checked field by field.
pub struct GatewayInbound {
    pub tenant: String,
    pub msg: InboundMessage,
    pub meta: threadline_actors::conversation::InboundMeta,
}

/// Parses and checks a gateway API body (every field's size and form);
/// the tenant is checked against the token by the caller.
pub fn parse_inbound(body: &[u8]) -> Result<GatewayInbound, ApiError> {
    let b: InboundBody = parse_json(body)?;
    field_len("tenant", &b.tenant, 64)?;
    field_len("channel", &b.channel, 16)?;
    field_len("from", &b.from, MAX_ID_BYTES)?;
    field_len("to", b.to.as_deref().unwrap_or(""), MAX_ID_BYTES)?;
    field_len("text", &b.text, MAX_TEXT_BYTES)?;
    field_len(
        "provider_message_id",
        b.provider_message_id.as_deref().unwrap_or(""),
        MAX_ID_BYTES,
    )?;
    field_len("at", b.at.as_deref().unwrap_or(""), 64)?;
    if b.media.len() > MAX_MEDIA {
        return Err(ApiError::bad(
            "field_too_long",
            format!("at most {MAX_MEDIA} `media` entries are accepted"),
        ));
    }
    for m in &b.media {
        field_len("media", m, MAX_URL_BYTES)?;
    }
    let channel = Channel::parse(&b.channel).ok_or_else(|| {
        ApiError::bad(
            "invalid_field",
            format!(
                "`channel` must be one of sms, whatsapp, voice, webchat, email (got {:?})",
                b.channel
            ),
        )
    })?;
    let from = normalize_address(channel, &b.from)?;
    if b.text.trim().is_empty() && b.media.is_empty() {
        return Err(ApiError::bad(
            "invalid_field",
            "`text` must not be empty (unless `media` is given)",
        ));
    }
    if b.provider_message_id.as_deref() == Some("") {
        return Err(ApiError::bad(
            "invalid_field",
            "`provider_message_id` is empty",
        ));
    }
    let at =
        b.at.as_deref()
            .map(|s| parse_rfc3339("at", s))
            .transpose()?;
    use threadline_actors::consent::keywords::Keyword;
    let hint = match b
        .opt_out_type
        .as_deref()
        .map(str::to_ascii_uppercase)
        .as_deref()
    {
        None | Some("") => None,
        Some("STOP") => Some(Keyword::OptOut),
        Some("START") => Some(Keyword::OptIn),
        Some("HELP") => Some(Keyword::Help),
        Some(other) => {
            return Err(ApiError::bad(
                "invalid_field",
                format!("`opt_out_type` must be STOP, START or HELP (got {other:?})"),
            ))
        }
    };
    if let Some(st) = &b.from_state {
        if st.len() != 2 || !st.bytes().all(|c| c.is_ascii_alphabetic()) {
            return Err(ApiError::bad(
                "invalid_field",
                "`from_state` must be a two-letter state code",
            ));
        }
    }
    let meta = threadline_actors::conversation::InboundMeta {
        hint,
        from_state: b.from_state.clone(),
        ..Default::default()
    };
    let msg = InboundMessage {
        channel,
        from: from.clone(),
        to: b.to,
        text: b.text,
        provider_message_id: b.provider_message_id,
        at,
        media: b.media,
    };
    Ok(GatewayInbound {
        tenant: b.tenant,
        msg,
        meta,
    })
}

/// At most this many audit records per export request.
const MAX_AUDIT_EXPORT: usize = 1_000_000;

/// `GET /api/v1/tenants/{t}/audit?contact=&since=`: the tenant's audit
/// records as NDJSON, in chain order. Without filters the export is the
/// whole chain and `threadline audit verify` can check it.
/// The `key=value` pairs of a query string, values percent-decoded.
pub(crate) fn query_pairs(query: &str) -> Result<Vec<(&str, String)>, ApiError> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8()
                .map(|v| (k, v.into_owned()))
                .map_err(|_| ApiError::bad("invalid_query", "query values must be UTF-8"))
        })
        .collect()
}

async fn audit_export(
    app: &App,
    req: &Request<Body>,
    tenant: &str,
    query: &str,
) -> Result<Resp, ApiError> {
    let mut contact = None;
    let mut since = None;
    for (k, v) in query_pairs(query)? {
        match k {
            "contact" if !v.is_empty() => {
                field_len("contact", &v, MAX_ID_BYTES)?;
                contact = Some(v);
            }
            "since" if !v.is_empty() => since = Some(parse_rfc3339("since", &v)?),
            _ => {}
        }
    }
    let store = app.shared.persistence.store.clone();
    let tenant = tenant.to_owned();
    let lines = tokio::task::spawn_blocking(move || {
        store.audit_records(&tenant, contact.as_deref(), since, MAX_AUDIT_EXPORT)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
    .map_err(ApiError::storage)?;
    let Some(cluster) = &app.cluster else {
        let mut body = lines.join("\n");
        if !body.is_empty() {
            body.push('\n');
        }
        return Ok(text_response(StatusCode::OK, "application/x-ndjson", body));
    };
    // In a cluster each node seals its own chain: its records name it
    // (`node`, outside the hash), and an export not passed on by a peer
    // gathers every live node's.
    let me = serde_json::to_string(&cluster.spec.name).unwrap_or_default();
    let mut body = String::new();
    for l in &lines {
        if let Some(rest) = l.strip_prefix('{') {
            body.push_str(&format!("{{\"node\":{me},{rest}\n"));
        }
    }
    if !passed_on(req) {
        let path = req
            .uri()
            .path_and_query()
            .map_or(req.uri().path(), |p| p.as_str());
        let ask = admin_request(app, Method::GET, path, Bytes::new());
        for peer in cluster.peer_names() {
            match cluster.request(&peer, &ask, PEER_TIMEOUT).await {
                Ok(a) if a.succeeded() => {
                    body.push_str(&String::from_utf8_lossy(&a.body));
                }
                Ok(a) => {
                    return Err(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "unavailable",
                        format!(
                            "node {peer} did not give its audit records ({}); try again",
                            String::from_utf8_lossy(&a.body)
                        ),
                    ))
                }
                Err(e) => {
                    return Err(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "unavailable",
                        format!("node {peer} did not give its audit records ({e}); try again"),
                    ))
                }
            }
        }
    }
    Ok(text_response(StatusCode::OK, "application/x-ndjson", body))
}

async fn dead_letters(app: &App) -> Result<Resp, ApiError> {
    let store = app.shared.persistence.store.clone();
    let list = tokio::task::spawn_blocking(move || store.dead_letters(1000))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(ApiError::storage)?;
    let items: Vec<Value> = list
        .into_iter()
        .map(|(id, d)| {
            json!({
                "id": id,
                "tenant": d.tenant,
                "contact": d.contact,
                "conversation_id": d.conversation.map(|c| c.to_string()),
                "attempts": d.attempts,
                "error": d.error,
                "at": rfc3339(d.at),
                "message": {
                    "channel": d.message.channel.as_str(),
                    "from": d.message.from,
                    "to": d.message.to,
                    "text": d.message.text,
                    "provider_message_id": d.message.provider_message_id,
                    "at": d.message.at.map(rfc3339),
                },
            })
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({ "dead_letters": items }),
    ))
}

/// `DELETE /api/v1/cluster/members/{name}`: a node removed for good is
/// forgotten here and on every live peer, so the majority a take-over
/// needs is counted without it.
async fn forget_node(app: &App, req: &Request<Body>, name: &str) -> Result<Resp, ApiError> {
    use threadline_actors::cluster::ForgetError;
    let Some(cluster) = &app.cluster else {
        return Err(ApiError::not_found("this node is not in a cluster"));
    };
    match cluster.forget(name) {
        Err(e @ ForgetError::Live(_)) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "node_live",
                e.to_string(),
            ))
        }
        // Another node asked: it may know a node this one never heard of.
        Err(ForgetError::Unknown(_)) if passed_on(req) => {}
        Err(e @ ForgetError::Unknown(_)) => return Err(ApiError::not_found(e.to_string())),
        Ok(()) => {}
    }
    let failed = match passed_on(req) {
        true => Vec::new(),
        false => {
            let path = req.uri().path().to_owned();
            to_every_peer(app, Method::DELETE, &path, Default::default()).await
        }
    };
    Ok(json_response(
        StatusCode::OK,
        &json!({"forgotten": name, "known": cluster.known_names(), "peers_failed": failed}),
    ))
}

/// `POST /api/v1/backup`: a consistent copy of this node's database, made
/// while it runs, in `data_dir/backups/` (the node names the file; a
/// client never chooses a path on the server).
async fn backup(app: &App) -> Result<Resp, ApiError> {
    let name = format!(
        "threadline-{}.redb",
        chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ")
    );
    let path = app.cfg.server.data_dir.join("backups").join(name);
    let store = app.shared.persistence.store.clone();
    let to = path.clone();
    let bytes = tokio::task::spawn_blocking(move || store.backup(&to))
        .await
        .map_err(|e| ApiError::storage(e.to_string()))?
        .map_err(|e| ApiError::storage(e.to_string()))?;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"path": path.display().to_string(), "bytes": bytes}),
    ))
}

/// `GET /api/v1/cluster`: this node, its live peers, and what each holds.
async fn cluster_json(app: &App) -> Value {
    let resident = app.router.resident();
    match &app.cluster {
        None => json!({
            "mode": "single",
            "node": null,
            "members": [],
            "conversations": {"this_node": resident},
        }),
        Some(c) => {
            let members: Vec<Value> = c
                .members()
                .into_iter()
                .map(|m| {
                    json!({"name": m.name, "addr": m.addr, "healthy": m.healthy,
                           "member_for_ms": m.since.elapsed().as_millis() as u64,
                           "last_seen_ms_ago": m.last_seen.elapsed().as_millis() as u64})
                })
                .collect();
            let by_node = c.resident_by_node(resident as u64).await;
            json!({
                "mode": "cluster",
                "node": c.spec.name,
                "listen": c.spec.listen.to_string(),
                "members": members,
                "live": c.settled_live(),
                "known": c.known_names(),
                "agent_pool": {"home": c.pool_home().unwrap_or_else(|| c.spec.name.clone())},
                "conversations": {"this_node": resident, "by_node": by_node},
            })
        }
    }
}

/// `GET /tenants/{t}/leakage`: the customers the business is losing, from
/// the summaries of the conversations this node holds. A missed call is
/// lost until the customer writes back; a conversation is stalled when the
/// customer's last message has waited `stalled_after_minutes` for an
/// answer, or the flow's last question (or a time it offered) has waited
/// that long with no follow-up planned. Closed conversations are not
/// counted.
async fn leakage(app: &App, tenant: &str) -> Result<Value, ApiError> {
    let store = app.shared.persistence.store.clone();
    let t = tenant.to_owned();
    let summaries = tokio::task::spawn_blocking(move || store.summaries(&t))
        .await
        .map_err(ApiError::storage)?
        .map_err(ApiError::storage)?;
    let now = app.shared.clock.now();
    let after_ms = i64::from(
        app.cfg
            .tenant(tenant)
            .map_or(60, |t| t.stalled_after_minutes),
    ) * 60_000;
    let mut missed = Vec::new();
    let mut stalled = Vec::new();
    let mut missed_by: std::collections::BTreeMap<&'static str, u64> = Default::default();
    let mut stalled_by: std::collections::BTreeMap<&'static str, u64> = Default::default();
    let row = |s: &threadline_protocol::ConversationSummary, since, channel: Channel, why| {
        json!({
            "conversation_id": s.conv.to_string(),
            "contact": s.contact,
            "name": s.name,
            "channel": channel.as_str(),
            "since": rfc3339(since),
            "waiting_ms": now.0 - since.0,
            "reason": why,
            "assigned_agent": s.assigned_agent,
        })
    };
    for s in summaries
        .iter()
        .filter(|s| s.status != threadline_protocol::Status::Closed)
    {
        if let Some(at) = s.missed_call {
            *missed_by.entry(Channel::Voice.as_str()).or_default() += 1;
            missed.push(row(
                s,
                at,
                Channel::Voice,
                "missed call, no word from the customer since",
            ));
        }
        let waiting = s
            .unanswered
            .map(|(at, ch)| (at, ch, "the customer's last message has no answer"))
            .or(s
                .journey_idle
                .map(|(at, ch)| (at, ch, "the bot's question waits with no follow-up planned")));
        if let Some((at, ch, why)) = waiting.filter(|(at, _, _)| now.0 - at.0 >= after_ms) {
            if ch != Channel::Voice || s.missed_call.is_none() {
                *stalled_by.entry(ch.as_str()).or_default() += 1;
                stalled.push(row(s, at, ch, why));
            }
        }
    }
    let oldest_first = |v: &mut Vec<Value>| {
        v.sort_by(|a, b| a["since"].as_str().cmp(&b["since"].as_str()));
    };
    oldest_first(&mut missed);
    oldest_first(&mut stalled);
    Ok(json!({
        "tenant": tenant,
        "stalled_after_minutes": after_ms / 60_000,
        "missed_calls_not_recovered": {"count": missed.len(), "by_channel": missed_by, "conversations": missed},
        "stalled": {"count": stalled.len(), "by_channel": stalled_by, "conversations": stalled},
    }))
}

/// What a tenant's conversations achieved (`GET /tenants/{t}/metrics`).
/// This node's outcome counts for `tenant`, by name (and the waits as sums
/// and counts), as nodes add them up.
fn outcome_counts(app: &App, tenant: &str) -> Value {
    let o = &app.shared.metrics.outcomes;
    let mut counts: serde_json::Map<String, Value> = o
        .counters()
        .into_iter()
        .map(|(name, _, c)| (name.to_owned(), json!(o.get(c, tenant))))
        .collect();
    for which in ["first_response", "escalation_wait"] {
        let (ms, n) = o.wait_sums(which, tenant);
        counts.insert(format!("{which}_ms"), json!(ms));
        counts.insert(format!("{which}_count"), json!(n));
    }
    Value::Object(counts)
}

/// Adds the numbers of `more` into `mine`, key by key (nodes' counts).
fn add_counts(mine: &mut Value, more: &Value) {
    if let (Some(mine), Some(more)) = (mine.as_object_mut(), more.as_object()) {
        for (k, n) in more {
            let e = mine.entry(k.clone()).or_insert(json!(0));
            *e = json!(e.as_u64().unwrap_or(0) + n.as_u64().unwrap_or(0));
        }
    }
}

/// What a tenant's conversations achieved (`GET /tenants/{t}/metrics`),
/// from the counts of `outcome_counts` (added up over the nodes).
fn outcomes_json(tenant: &str, c: &Value) -> Value {
    let n = |k: &str| c[k].as_u64().unwrap_or(0);
    let ratio = |a: u64, b: u64| (b > 0).then(|| a as f64 / b as f64);
    let mean = |sum: &str, count: &str| ratio(n(sum), n(count));
    json!({
        "tenant": tenant,
        "first_response": {
            "mean_ms": mean("first_response_ms", "first_response_count"),
            "conversations": n("first_response_count"),
        },
        "missed_calls": n("missed_calls"),
        "missed_calls_recovered": n("missed_calls_recovered"),
        "bookings": {
            "offered": n("bookings_offered"),
            "confirmed": n("bookings_confirmed"),
            "rescheduled": n("bookings_rescheduled"),
            "rebooked_self_service": n("bookings_rebooked"),
            "cancelled": n("bookings_cancelled"),
            "attended": n("bookings_attended"),
            "no_shows": n("bookings_no_show"),
            "completion_rate": ratio(n("bookings_confirmed"), n("bookings_offered")),
            // Of the bookings customers asked to move, the share they moved
            // themselves to a new confirmed time.
            "reschedule_self_service_rate":
                ratio(n("bookings_rebooked"), n("bookings_rescheduled")),
            // Of the appointments whose outcome was recorded.
            "no_show_rate": ratio(
                n("bookings_no_show"),
                n("bookings_no_show") + n("bookings_attended")
            ),
        },
        "leads_qualified": n("leads_qualified"),
        "leads": {
            "qualified": n("leads_qualified"),
            "met": n("leads_met"),
            "lead_to_meeting_rate": ratio(n("leads_met"), n("leads_qualified")),
        },
        "escalations": {
            "total": n("escalations"),
            "taken": n("escalation_wait_count"),
            "mean_wait_ms": mean("escalation_wait_ms", "escalation_wait_count"),
        },
        // Counts are kept with the data; the escalation wait and the
        // Prometheus histograms since the node started.
        "since": "data created",
    })
}

/// One message as the REST API and the agent desktop show it.
pub fn message_json(conv: ConversationId, m: &threadline_protocol::Message) -> Value {
    json!({
        "id": threadline_protocol::MessageId { conversation: conv, seq: m.seq }.to_string(),
        "direction": m.direction.as_str(),
        "channel": m.channel.as_str(),
        "author": m.author.label(),
        "text": m.text,
        "at": rfc3339(m.at),
        "recorded_at": rfc3339(m.recorded_at),
        // Internal entries (notes, dispositions, merge notices) read
        // `internal`, records written before that state existed included.
        "delivery": if m.is_internal() { "internal" } else { m.delivery.as_str() },
        "internal": m.is_internal(),
        "provider_message_id": m.provider_message_id,
        "media": m.media,
    })
}

/// The conversation's appointment (`null` if it never had one): its
/// time, service and status, a time offered while the customer decides,
/// and its pending reminders.
pub fn booking_json(s: &ConversationState) -> Value {
    let Some(b) = &s.journey.booking else {
        return Value::Null;
    };
    json!({
        "service": b.service,
        "journey": b.journey,
        "status": b.status.as_str(),
        "start": b.start.map(rfc3339),
        "offer": b.offer.map(|o| json!({"start": rfc3339(o.start), "held_until": rfc3339(o.until)})),
        "reminders": b.reminders.iter().filter_map(|id| s.timers.iter().find(|t| t.id == *id)).map(|t| json!({
            "id": timer_id_text(t.id),
            "at": rfc3339(t.due),
        })).collect::<Vec<_>>(),
    })
}

pub fn conversation_json(s: &ConversationState) -> Value {
    let messages: Vec<Value> = s.messages.iter().map(|m| message_json(s.id, m)).collect();
    json!({
        "id": s.id.to_string(),
        "tenant": s.tenant,
        "contact": s.contact,
        "identities": {
            "phone": s.identities.phone,
            "whatsapp": s.identities.whatsapp,
            "visitor": s.identities.visitor,
            "email": s.identities.email,
        },
        "status": s.status.as_str(),
        "channels": s.channels.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
        "messages": messages,
        "captured": {
            "name": s.captured.name,
            "intent": s.captured.intent,
            "slots": s.captured.slots,
            "score": s.captured.score,
            "facts": s.captured.facts,
        },
        "journey": {
            "active": s.journey.active,
            "asking": s.journey.asking,
            "handoff": s.journey.handoff,
        },
        "booking": booking_json(s),
        "assigned_agent": s.assigned_agent,
        "timers": s.timers.iter().map(|t| json!({
            "id": timer_id_text(t.id),
            "at": rfc3339(t.due),
            "kind": t.kind.as_str(),
            "text": t.text,
            "channel": t.channel.map(|c| c.as_str()),
        })).collect::<Vec<_>>(),
        "created_at": rfc3339(s.created_at),
        "updated_at": rfc3339(s.updated_at),
    })
}
