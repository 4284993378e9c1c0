//! The OpenAPI 3.1 description of the HTTP API, generated from the route
//! table (`routes.rs`) and the request types' JSON Schemas (schemars).
//! Served at `/api/v1/openapi.json`, printed by `threadline openapi`, and
//! kept in `docs/openapi.json` (a test checks the copy is current).

use std::collections::BTreeMap;

use schemars::generate::SchemaSettings;
use serde_json::{json, Map, Value};

use crate::routes::{Auth, BodyKind, Op, Operation, OPERATIONS};

/// The document, as pretty JSON with a final newline (made once: it
/// depends only on the binary).
pub fn document_text() -> &'static str {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEXT.get_or_init(|| {
        let mut s = serde_json::to_string_pretty(&document()).expect("a JSON value serializes");
        s.push('\n');
        s
    })
}

/// The document.
pub fn document() -> Value {
    let mut generator = SchemaSettings::draft2020_12()
        .with(|s| s.definitions_path = "/components/schemas".into())
        .into_generator();
    let mut paths: BTreeMap<&str, Map<String, Value>> = BTreeMap::new();
    for o in OPERATIONS.iter().filter(|o| o.documented) {
        let op = operation(o, &mut generator);
        paths
            .entry(o.path)
            .or_default()
            .insert(o.method.as_str().to_ascii_lowercase(), op);
    }
    let mut schemas: Map<String, Value> = generator.take_definitions(true).into_iter().collect();
    schemas.insert(
        "Error".into(),
        json!({
            "type": "object",
            "required": ["error"],
            "properties": {"error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string", "description": "A stable machine-readable code (`invalid_field`, `unauthorized`...)"},
                    "message": {"type": "string", "description": "What was wrong, for a person"}
                }
            }}
        }),
    );
    let mut error_responses = Map::new();
    for code in [400, 401, 403, 404, 408, 409, 413, 414, 415, 429, 503] {
        error_responses.insert(
            error_name(code).into(),
            json!({"description": error_doc(code),
                   "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}),
        );
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Threadline",
            "version": env!("CARGO_PKG_VERSION"),
            "summary": "One conversation per customer across SMS, voice, WhatsApp and web chat",
            "description": "The HTTP API of a Threadline node. Every error is JSON: `{\"error\": {\"code\", \"message\"}}`. A 2xx on a write means it is durably committed. Every response carries an `X-Request-Id` (the client's, when it sends a valid one). A path that exists answers 405 with `Allow` for other methods. The WebSocket protocols are described in docs/websockets.md.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"}
        },
        "servers": [{"url": "/"}],
        "tags": tags(),
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": error_responses,
            "securitySchemes": {
                "admin": {"type": "http", "scheme": "bearer", "description": "`server.admin_token`"},
                "gateway": {"type": "http", "scheme": "bearer", "description": "A tenant's `gateway_token`"},
                "agent": {"type": "http", "scheme": "bearer", "description": "An agent's token"},
                "agent_query": {"type": "apiKey", "in": "query", "name": "token", "description": "An agent's token, for browsers that cannot set headers on a WebSocket"},
                "admin_query": {"type": "apiKey", "in": "query", "name": "token", "description": "`server.admin_token`, for browsers that cannot set headers on a WebSocket"},
                "twilio": {"type": "apiKey", "in": "header", "name": "X-Twilio-Signature", "description": "Twilio's HMAC-SHA1 request signature over the public URL and the form"},
                "meta": {"type": "apiKey", "in": "header", "name": "X-Hub-Signature-256", "description": "Meta's HMAC-SHA256 of the body with the app secret"},
                "verify_token": {"type": "apiKey", "in": "query", "name": "hub.verify_token", "description": "`providers.whatsapp.verify_token`"}
            }
        }
    })
}

fn tags() -> Value {
    json!([
        {"name": "gateway", "description": "Messages from channel gateways"},
        {"name": "webhooks", "description": "Provider webhooks (Twilio, WhatsApp Cloud API)"},
        {"name": "conversations", "description": "Conversations and contacts"},
        {"name": "messages", "description": "Business-initiated messages"},
        {"name": "consent", "description": "Consent records and the audit trail"},
        {"name": "bookings", "description": "Calendar and appointments"},
        {"name": "timers", "description": "Follow-ups and reminders"},
        {"name": "agents", "description": "The human agent pool"},
        {"name": "flows", "description": "Conversation flows"},
        {"name": "tenants", "description": "Per-business outcomes"},
        {"name": "cluster", "description": "Cluster membership and placement"},
        {"name": "operations", "description": "Health, metrics, backups"},
        {"name": "pages", "description": "Web chat and agent desktop pages and sockets"}
    ])
}

fn operation(o: &Operation, generator: &mut schemars::SchemaGenerator) -> Value {
    let mut v = Map::new();
    v.insert("operationId".into(), json!(operation_id(o.op)));
    v.insert("summary".into(), json!(o.summary));
    v.insert("tags".into(), json!([o.tag]));
    let security = match o.auth {
        Auth::Public => json!([]),
        Auth::AgentToken => json!([{"agent": []}, {"agent_query": []}]),
        Auth::AdminQuery => json!([{"admin": []}, {"admin_query": []}]),
        Auth::Admin => json!([{"admin": []}]),
        Auth::Gateway => json!([{"gateway": []}]),
        Auth::Twilio => json!([{"twilio": []}]),
        Auth::Meta => json!([{"meta": []}]),
        Auth::MetaVerifyToken => json!([{"verify_token": []}]),
    };
    v.insert("security".into(), security);
    let mut params: Vec<Value> = path_params(o.path)
        .map(|name| {
            json!({"name": name, "in": "path", "required": true,
                   "schema": {"type": "string"}, "description": param_doc(name)})
        })
        .collect();
    params.extend(query_params(o.op));
    if !params.is_empty() {
        v.insert("parameters".into(), Value::Array(params));
    }
    match o.body {
        BodyKind::None => {}
        BodyKind::Json(f) | BodyKind::OptionalJson(f) => {
            let schema = f(generator);
            v.insert(
                "requestBody".into(),
                json!({"required": matches!(o.body, BodyKind::Json(_)),
                       "content": {"application/json": {"schema": schema}}}),
            );
        }
        BodyKind::Form => {
            v.insert(
                "requestBody".into(),
                json!({"required": true, "content": {"application/x-www-form-urlencoded": {
                    "schema": {"type": "object", "additionalProperties": {"type": "string"}}}}}),
            );
        }
    }
    let mut responses = Map::new();
    for &code in o.ok {
        responses.insert(code.to_string(), success(o, code));
    }
    for code in errors(o) {
        responses.insert(
            code.to_string(),
            json!({"$ref": format!("#/components/responses/{}", error_name(code))}),
        );
    }
    v.insert("responses".into(), Value::Object(responses));
    Value::Object(v)
}

/// The statuses an operation can answer besides its successes.
pub fn errors(o: &Operation) -> Vec<u16> {
    let mut out: Vec<u16> = o.extra.to_vec();
    let has_params = o.path.contains('{') || !query_params(o.op).is_empty();
    match o.auth {
        Auth::Admin | Auth::Gateway | Auth::AgentToken | Auth::AdminQuery => out.push(401),
        Auth::Twilio | Auth::Meta | Auth::MetaVerifyToken => out.push(403),
        Auth::Public => {}
    }
    if has_params
        || !matches!(o.body, BodyKind::None)
        || matches!(o.auth, Auth::AgentToken | Auth::AdminQuery)
    {
        out.push(400);
    }
    if o.path.contains('{')
        || matches!(
            o.op,
            Op::ChatPage | Op::ClockAdvance | Op::Cluster | Op::Inbound
        )
        || o.auth == Auth::Twilio
    {
        out.push(404);
    }
    if !matches!(o.body, BodyKind::None) {
        out.extend([408, 413, 415]);
    }
    if o.path.len() > 40 {
        out.push(414);
    }
    if !matches!(o.op, Op::Healthz | Op::Readyz | Op::Metrics) {
        out.push(429);
    }
    if o.method != hyper::Method::GET || matches!(o.auth, Auth::Admin) {
        out.push(503);
    }
    out.retain(|c| !o.ok.contains(c));
    out.sort_unstable();
    out.dedup();
    out
}

fn success(o: &Operation, code: u16) -> Value {
    let description = match code {
        101 => "Switching protocols to a WebSocket",
        201 => "Created and durably committed",
        202 => "Accepted and durably committed",
        503 => "Not ready or not healthy (the body says why)",
        _ => "OK",
    };
    let content = match o.op {
        _ if code == 101 => None,
        Op::Metrics => {
            Some(json!({"application/openmetrics-text": {"schema": {"type": "string"}}}))
        }
        Op::Audit => Some(json!({"application/x-ndjson": {"schema": {"type": "string"}}})),
        Op::ChatPage | Op::AgentPage => Some(json!({"text/html": {"schema": {"type": "string"}}})),
        Op::WhatsappVerify => Some(json!({"text/plain": {"schema": {"type": "string"}}})),
        Op::TwilioSms
        | Op::TwilioStatus
        | Op::TwilioVoice
        | Op::TwilioDialStatus
        | Op::TwilioGather
        | Op::TwilioCallStatus
        | Op::TwilioHold
        | Op::TwilioWhisper
        | Op::TwilioOutboundCall
        | Op::TwilioAmd => {
            Some(json!({"text/xml": {"schema": {"type": "string", "description": "TwiML"}}}))
        }
        _ => Some(json!({"application/json": {"schema": {"type": "object"}}})),
    };
    match content {
        Some(c) => json!({"description": description, "content": c}),
        None => json!({"description": description}),
    }
}

fn path_params(path: &str) -> impl Iterator<Item = &str> {
    path.split('/')
        .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
}

fn param_doc(name: &str) -> &'static str {
    match name {
        "tenant" => "A tenant id from the config",
        "address" => "The contact's address, percent-encoded (E.164 phone `%2B15551234567`, or a web chat visitor id)",
        "id" => "The resource's id (`cnv_...`, `tmr_...`, or an agent id)",
        "start" => "The slot's start, RFC 3339",
        "name" => "A cluster node's name",
        _ => "",
    }
}

fn query_params(op: Op) -> Vec<Value> {
    let q = |name: &str, doc: &str| json!({"name": name, "in": "query", "required": false, "schema": {"type": "string"}, "description": doc});
    match op {
        Op::Audit => vec![
            q("contact", "Only this contact's records"),
            q("since", "Only records at or after this time (RFC 3339)"),
        ],
        Op::Calendar => vec![
            q("from", "The first day shown (RFC 3339; default now)"),
            q("days", "How many days (default 7)"),
        ],
        Op::TenantMetrics | Op::TenantLeakage => vec![q(
            "node",
            "`this`: only what this node holds, unsummed (how nodes ask each other)",
        )],
        Op::Conversations => vec![
            q("status", "active, inactive or closed"),
            q("channel", "Only conversations that used this channel"),
            q("waiting", "true: waiting for a person; false: not"),
            q("agent", "Only those this agent holds"),
            q("booked", "true: with a booked appointment; false: without"),
            q("opted_out", "true: opted out on some channel; false: not"),
            q("updated_since", "Only those updated at or after (RFC 3339)"),
            q(
                "q",
                "Words that must all be in the name, the address or the last message",
            ),
            q("limit", "Rows in the page (1 to 200, default 50)"),
            q("cursor", "The `next_cursor` of the page before"),
            q(
                "node",
                "`this`: only what this node holds (how nodes ask each other)",
            ),
        ],
        Op::ConversationTranscript => vec![
            q(
                "before",
                "The page ends before this message (a message id; default: the newest)",
            ),
            q("limit", "Messages in the page (1 to 500, default 50)"),
        ],
        Op::Bookings => vec![
            q(
                "from",
                "Appointments starting at or after (RFC 3339; default now)",
            ),
            q(
                "to",
                "and before (RFC 3339; default 31 days later, at most 92)",
            ),
        ],
        Op::InboxSocket => vec![json!({"name": "tenant", "in": "query", "required": true,
            "schema": {"type": "string"}, "description": "The tenant whose conversations to follow"})],
        Op::ChatPage => vec![json!({"name": "tenant", "in": "query", "required": true,
            "schema": {"type": "string"}, "description": "The tenant whose chat this is"})],
        Op::ChatSocket => vec![
            json!({"name": "tenant", "in": "query", "required": true,
                   "schema": {"type": "string"}, "description": "The tenant whose chat this is"}),
            q(
                "visitor",
                "The visitor id to resume (from an earlier `welcome` frame)",
            ),
        ],
        Op::WhatsappVerify => vec![
            q("hub.mode", "`subscribe`"),
            q("hub.challenge", "Echoed back on success"),
        ],
        _ => Vec::new(),
    }
}

fn error_name(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        408 => "RequestTimeout",
        409 => "Conflict",
        413 => "PayloadTooLarge",
        414 => "UriTooLong",
        415 => "UnsupportedMediaType",
        429 => "TooManyRequests",
        _ => "Unavailable",
    }
}

fn error_doc(code: u16) -> &'static str {
    match code {
        400 => "The request is invalid (the error says which field)",
        401 => "Missing or wrong bearer token (`WWW-Authenticate: Bearer`)",
        403 => "The signature or verify token is wrong",
        404 => "No such resource (or tenant, or number)",
        408 => "The body did not arrive in time",
        409 => "The request conflicts with the current state",
        413 => "The body is too large",
        414 => "The path is too long",
        415 => "Wrong Content-Type for this operation",
        429 => "Too many requests from this source or gateway (`Retry-After`)",
        503 => "Storage failed or the node is not ready (`Retry-After`); nothing was committed",
        _ => "Error",
    }
}

/// A stable operation id from the `Op` name, in camel case.
fn operation_id(op: Op) -> String {
    let name = format!("{op:?}");
    let mut c = name.chars();
    match c.next() {
        Some(f) => f.to_ascii_lowercase().to_string() + c.as_str(),
        None => name,
    }
}
