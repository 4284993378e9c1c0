//! The one route table: every operation the node serves (method, path
//! template, who may call it, where it runs in a cluster, what body it
//! takes, what it answers). The
//! dispatcher (`http::route`) matches requests against it, answers 405
//! with `Allow` from it, enforces its content types, labels metrics and
//! the access log with its templates, and the OpenAPI document
//! (`openapi.rs`) is generated from it.
//!
//! Matching is matchit's, the router inside axum. axum itself is not used:
//! the connection layer it would wrap (connection and per-source limits,
//! body deadlines, TLS, graceful drain, requests passed on by cluster
//! peers, which arrive without a socket) is hyper-level code the node
//! needs anyway, and every handler already takes the request and answers
//! a response; axum would add a tower stack and extractors around the
//! same calls without removing any of that code.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use hyper::Method;
use schemars::{JsonSchema, Schema, SchemaGenerator};

/// What an operation does; `http::route` dispatches on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Healthz,
    Readyz,
    Metrics,
    OpenApi,
    Inbound,
    TwilioSms,
    TwilioStatus,
    TwilioVoice,
    TwilioDialStatus,
    TwilioGather,
    TwilioCallStatus,
    TwilioHold,
    TwilioWhisper,
    TwilioOutboundCall,
    TwilioAmd,
    WhatsappVerify,
    WhatsappNotify,
    ChatPage,
    ChatSocket,
    AgentPage,
    AgentSocket,
    InboxPage,
    InboxSocket,
    FlowsReload,
    AgentsList,
    AgentsCreate,
    AgentsDelete,
    TenantMetrics,
    TenantLeakage,
    TenantQueue,
    Escalate,
    ConversationGet,
    Conversations,
    ConversationTranscript,
    ContactConversation,
    ContactConsentGet,
    ContactConsentPost,
    ContactPut,
    ContactMessages,
    Audit,
    Calendar,
    Bookings,
    SlotBlock,
    SlotUnblock,
    BookingOutcome,
    ConversationNotes,
    Cluster,
    ClusterAgents,
    ClusterConversation,
    ClusterForget,
    Backup,
    DeadLetters,
    ConversationMessages,
    ConversationTimers,
    TimerCancel,
    ClockAdvance,
}

/// Where an operation runs in a cluster. Commands to a conversation do
/// not say: the router alone sends them to the conversation's node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runs {
    /// On the node the request reached.
    Here,
    /// On the node whose rows of the tenant's calendar decide (its
    /// *home*); the dispatcher passes the request on to it.
    CalendarHome,
}

impl Op {
    pub fn runs(self) -> Runs {
        match self {
            Op::Calendar | Op::Bookings | Op::SlotBlock | Op::SlotUnblock => Runs::CalendarHome,
            _ => Runs::Here,
        }
    }
}

/// Who may call an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Auth {
    /// Anyone (health, metrics, pages, the API description).
    Public,
    /// `Authorization: Bearer <server.admin_token>`.
    Admin,
    /// `Authorization: Bearer <tenant gateway_token>`.
    Gateway,
    /// A valid `X-Twilio-Signature` over the public URL and the form.
    Twilio,
    /// A valid `X-Hub-Signature-256` (the Meta app secret).
    Meta,
    /// The WhatsApp verify token in the query.
    MetaVerifyToken,
    /// An agent's token (`Authorization: Bearer` or `?token=`).
    AgentToken,
    /// The admin token as `Authorization: Bearer` or `?token=` (a
    /// browser's WebSocket cannot set headers).
    AdminQuery,
}

/// A request schema: puts the type's schema in the generator's
/// definitions and returns a reference to it.
pub type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

/// The body an operation takes; the dispatcher refuses other content types
/// with 415 before the handler runs.
#[derive(Clone, Copy)]
pub enum BodyKind {
    None,
    /// `application/json`, required.
    Json(SchemaFn),
    /// `application/json` when there is a body; an empty body is allowed.
    OptionalJson(SchemaFn),
    /// `application/x-www-form-urlencoded` (Twilio's webhooks).
    Form,
}

/// One operation of the table.
pub struct Operation {
    pub op: Op,
    pub method: Method,
    /// The path template, OpenAPI style: `/api/v1/conversations/{id}`.
    pub path: &'static str,
    pub tag: &'static str,
    pub summary: &'static str,
    pub auth: Auth,
    pub body: BodyKind,
    /// The success statuses; errors are derived from the rest (auth, path
    /// parameters, body) and listed in `extra`.
    pub ok: &'static [u16],
    /// Statuses particular to this operation (409, 408...).
    pub extra: &'static [u16],
    /// Listed in the OpenAPI document (internal routes are not).
    pub documented: bool,
}

fn schema<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
}

macro_rules! op {
    ($op:ident, $m:ident, $path:literal, $tag:literal, $auth:ident, $body:expr, $ok:expr, $summary:literal) => {
        op!($op, $m, $path, $tag, $auth, $body, $ok, &[], $summary)
    };
    ($op:ident, $m:ident, $path:literal, $tag:literal, $auth:ident, $body:expr, $ok:expr, $extra:expr, $summary:literal) => {
        Operation {
            op: Op::$op,
            method: Method::$m,
            path: $path,
            tag: $tag,
            summary: $summary,
            auth: Auth::$auth,
            body: $body,
            ok: $ok,
            extra: $extra,
            documented: true,
        }
    };
}

use crate::bodies::{
    AdvanceBody, ConsentBody, ContactBody, EscalateBody, InboundBody, MessageBody, NoteBody,
    OutcomeBody, TimerBody,
};
use crate::config::Agent as AgentBody;
use BodyKind::{Form, Json, OptionalJson};

const NONE: BodyKind = BodyKind::None;

/// Every operation, in the order the API reference lists them.
#[rustfmt::skip]
pub static OPERATIONS: &[Operation] = &[
    op!(Healthz, GET, "/healthz", "operations", Public, NONE, &[200, 503],
        "Liveness: 200 while the node can commit to storage"),
    op!(Readyz, GET, "/readyz", "operations", Public, NONE, &[200, 503],
        "Readiness: storage open and intact, not draining, cluster joined"),
    op!(Metrics, GET, "/metrics", "operations", Public, NONE, &[200],
        "Prometheus metrics in the OpenMetrics text format"),
    op!(OpenApi, GET, "/api/v1/openapi.json", "operations", Public, NONE, &[200],
        "This API description (OpenAPI 3.1)"),
    op!(Inbound, POST, "/api/v1/inbound", "gateway", Gateway, Json(schema::<InboundBody>), &[202],
        "Ingest a customer's message; 202 once it is durably committed"),
    op!(TwilioSms, POST, "/webhooks/twilio/sms", "webhooks", Twilio, Form, &[200],
        "Twilio inbound SMS/MMS webhook (answers TwiML)"),
    op!(TwilioStatus, POST, "/webhooks/twilio/status", "webhooks", Twilio, Form, &[200],
        "Twilio message status callback"),
    op!(TwilioVoice, POST, "/webhooks/twilio/voice", "webhooks", Twilio, Form, &[200],
        "Twilio inbound call webhook (answers TwiML)"),
    op!(TwilioDialStatus, POST, "/webhooks/twilio/voice/dial-status", "webhooks", Twilio, Form, &[200],
        "Twilio <Dial> action: the forwarded call's outcome"),
    op!(TwilioGather, POST, "/webhooks/twilio/voice/gather", "webhooks", Twilio, Form, &[200],
        "Twilio <Gather> action: the caller's speech"),
    op!(TwilioCallStatus, POST, "/webhooks/twilio/voice/status", "webhooks", Twilio, Form, &[200],
        "Twilio call status callback"),
    op!(TwilioHold, POST, "/webhooks/twilio/voice/hold", "webhooks", Twilio, Form, &[200],
        "Twilio hold music while an agent is found"),
    op!(TwilioWhisper, POST, "/webhooks/twilio/voice/whisper", "webhooks", Twilio, Form, &[200],
        "Twilio whisper to the agent before a warm transfer connects"),
    op!(TwilioOutboundCall, POST, "/webhooks/twilio/voice/outbound", "webhooks", Twilio, Form, &[200],
        "Twilio webhook of a call the node placed"),
    op!(TwilioAmd, POST, "/webhooks/twilio/voice/amd", "webhooks", Twilio, Form, &[200], &[503],
        "Twilio asynchronous answering-machine detection: who answered a call the node placed"),
    op!(WhatsappVerify, GET, "/webhooks/whatsapp", "webhooks", MetaVerifyToken, NONE, &[200],
        "WhatsApp Cloud API webhook verification (hub.challenge)"),
    op!(WhatsappNotify, POST, "/webhooks/whatsapp", "webhooks", Meta, Json(schema::<serde_json::Value>), &[200],
        "WhatsApp Cloud API notifications (messages and statuses)"),
    op!(ChatPage, GET, "/chat", "pages", Public, NONE, &[200],
        "The web chat page of a tenant (`?tenant=`)"),
    op!(ChatSocket, GET, "/chat/ws", "pages", Public, NONE, &[101],
        "Web chat WebSocket (see docs/websockets.md)"),
    op!(AgentPage, GET, "/agent", "pages", Public, NONE, &[200],
        "The agent desktop page"),
    op!(AgentSocket, GET, "/agent/ws", "pages", AgentToken, NONE, &[101],
        "Agent desktop WebSocket (see docs/websockets.md)"),
    op!(InboxPage, GET, "/inbox", "pages", Public, NONE, &[200],
        "The business's inbox page: every conversation, live"),
    op!(InboxSocket, GET, "/inbox/ws", "pages", AdminQuery, NONE, &[101], &[404],
        "Inbox WebSocket: which of a tenant's conversations changed (`?tenant=`; see docs/websockets.md)"),
    op!(FlowsReload, POST, "/api/v1/flows/reload", "flows", Admin, NONE, &[200],
        "Reload every tenant's flow file; nothing changes if one is invalid"),
    op!(AgentsList, GET, "/api/v1/agents", "agents", Admin, NONE, &[200],
        "List agents with their presence"),
    op!(AgentsCreate, POST, "/api/v1/agents", "agents", Admin, Json(schema::<AgentBody>), &[201], &[409],
        "Create or replace an agent (not one defined in the config file)"),
    op!(AgentsDelete, DELETE, "/api/v1/agents/{id}", "agents", Admin, NONE, &[200], &[409],
        "Remove an agent created through the API"),
    op!(TenantLeakage, GET, "/api/v1/tenants/{tenant}/leakage", "tenants", Admin, NONE, &[200],
        "Customers the business is losing: missed calls nobody heard back from and stalled conversations, counted by channel and listed"),
    op!(TenantMetrics, GET, "/api/v1/tenants/{tenant}/metrics", "tenants", Admin, NONE, &[200],
        "A tenant's outcomes: bookings, leads, first response"),
    op!(TenantQueue, GET, "/api/v1/tenants/{tenant}/queue", "agents", Admin, NONE, &[200],
        "Conversations waiting for an agent"),
    op!(Escalate, POST, "/api/v1/conversations/{id}/escalate", "agents", Admin, OptionalJson(schema::<EscalateBody>), &[202],
        "Hand a conversation to the agent pool"),
    op!(Conversations, GET, "/api/v1/tenants/{tenant}/conversations", "conversations", Admin, NONE, &[200],
        "The tenant's conversations, most recently updated first: filtered (status, channel, waiting, agent, booked, opted_out, updated_since, q) and paged (limit, cursor)"),
    op!(ConversationTranscript, GET, "/api/v1/conversations/{id}/messages", "conversations", Admin, NONE, &[200],
        "A conversation's messages, paged back from the newest (before, limit)"),
    op!(ConversationGet, GET, "/api/v1/conversations/{id}", "conversations", Admin, NONE, &[200],
        "A conversation: transcript, what is known, timers"),
    op!(ContactConversation, GET, "/api/v1/tenants/{tenant}/contacts/{address}/conversation", "conversations", Admin, NONE, &[200],
        "A contact's conversation with a tenant"),
    op!(ContactConsentGet, GET, "/api/v1/tenants/{tenant}/contacts/{address}/consent", "consent", Admin, NONE, &[200],
        "A contact's consent records"),
    op!(ContactConsentPost, POST, "/api/v1/tenants/{tenant}/contacts/{address}/consent", "consent", Admin, Json(schema::<ConsentBody>), &[201],
        "Record an opt-in or opt-out with its source and proof"),
    op!(ContactPut, PUT, "/api/v1/tenants/{tenant}/contacts/{address}", "conversations", Admin, Json(schema::<ContactBody>), &[200],
        "Set what is known of a contact (name, time zone, region, facts)"),
    op!(ContactMessages, POST, "/api/v1/tenants/{tenant}/contacts/{address}/messages", "messages", Admin, Json(schema::<MessageBody>), &[202],
        "Send a business message to a contact, through the consent gate"),
    op!(Audit, GET, "/api/v1/tenants/{tenant}/audit", "consent", Admin, NONE, &[200],
        "The tenant's hash-chained consent audit trail (NDJSON)"),
    op!(Calendar, GET, "/api/v1/tenants/{tenant}/calendar", "bookings", Admin, NONE, &[200],
        "The tenant's calendar: open, held, booked and blocked slots"),
    op!(Bookings, GET, "/api/v1/tenants/{tenant}/bookings", "bookings", Admin, NONE, &[200],
        "The tenant's booked appointments in a range (from, to), each with its conversation"),
    op!(SlotBlock, PUT, "/api/v1/tenants/{tenant}/calendar/slots/{start}", "bookings", Admin, NONE, &[200], &[409],
        "Block a slot (RFC 3339 start)"),
    op!(SlotUnblock, DELETE, "/api/v1/tenants/{tenant}/calendar/slots/{start}", "bookings", Admin, NONE, &[200],
        "Unblock a slot"),
    op!(BookingOutcome, POST, "/api/v1/conversations/{id}/booking", "bookings", Admin, Json(schema::<OutcomeBody>), &[200], &[409],
        "Record how a booked appointment went (attended, no_show)"),
    op!(ConversationNotes, POST, "/api/v1/conversations/{id}/notes", "conversations", Admin, Json(schema::<NoteBody>), &[201], &[404],
        "Add a private note to a conversation: an internal entry of its transcript, never sent to the customer"),
    op!(Cluster, GET, "/api/v1/cluster", "cluster", Admin, NONE, &[200],
        "Cluster membership as this node sees it"),
    Operation {
        documented: false,
        ..op!(ClusterAgents, GET, "/api/v1/cluster/agents", "cluster", Admin, NONE, &[200],
        "Internal: a peer's agent view (only over the cluster link)")
    },
    op!(ClusterConversation, GET, "/api/v1/cluster/conversations/{id}", "cluster", Admin, NONE, &[200],
        "Which node holds a conversation"),
    op!(ClusterForget, DELETE, "/api/v1/cluster/members/{name}", "cluster", Admin, NONE, &[200], &[409],
        "Remove a node that is gone for good from the membership"),
    op!(Backup, POST, "/api/v1/backup", "operations", Admin, NONE, &[201],
        "Write a consistent copy of the data directory"),
    op!(DeadLetters, GET, "/api/v1/dead-letters", "operations", Admin, NONE, &[200],
        "Messages that could not be handled, with the reason"),
    op!(ConversationMessages, POST, "/api/v1/conversations/{id}/messages", "messages", Admin, Json(schema::<MessageBody>), &[202],
        "Send a business message in a conversation, through the consent gate"),
    op!(ConversationTimers, POST, "/api/v1/conversations/{id}/timers", "timers", Admin, Json(schema::<TimerBody>), &[201],
        "Schedule a follow-up or reminder; 201 once durable"),
    op!(TimerCancel, DELETE, "/api/v1/timers/{id}", "timers", Admin, NONE, &[200],
        "Cancel a pending timer"),
    op!(ClockAdvance, POST, "/api/v1/clock/advance", "operations", Admin, Json(schema::<AdvanceBody>), &[200],
        "Move the simulated clock (only with serve --simulated-clock; 404 otherwise)"),
];

/// A request matched against the table.
pub enum Matched<'p> {
    Found(&'static Operation, matchit::Params<'static, 'p>),
    /// The path exists (this template), not with this method: these are
    /// allowed.
    WrongMethod(&'static str, Vec<&'static Method>),
    NotFound,
}

impl Matched<'_> {
    /// The route template a request is counted and logged under: the
    /// matched path's, or `unmatched` (bounded labels whatever is asked).
    pub fn template(&self) -> &'static str {
        match self {
            Matched::Found(o, _) => o.path,
            Matched::WrongMethod(t, _) => t,
            Matched::NotFound => "unmatched",
        }
    }
}

fn matcher() -> &'static matchit::Router<Vec<&'static Operation>> {
    static M: OnceLock<matchit::Router<Vec<&'static Operation>>> = OnceLock::new();
    M.get_or_init(|| {
        let mut by_path: BTreeMap<&str, Vec<&'static Operation>> = BTreeMap::new();
        for o in OPERATIONS {
            by_path.entry(o.path).or_default().push(o);
        }
        let mut r = matchit::Router::new();
        for (path, ops) in by_path {
            r.insert(path, ops)
                .expect("the route table's templates do not conflict");
        }
        r
    })
}

/// The operation `method path` names.
pub fn find<'p>(method: &Method, path: &'p str) -> Matched<'p> {
    let Ok(m) = matcher().at(path) else {
        return Matched::NotFound;
    };
    match m.value.iter().find(|o| o.method == *method) {
        Some(o) => Matched::Found(o, m.params),
        None => Matched::WrongMethod(m.value[0].path, m.value.iter().map(|o| &o.method).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_is_found_by_its_own_template() {
        for o in OPERATIONS {
            let path = o.path.replace('{', "x").replace('}', "");
            match find(&o.method, &path) {
                Matched::Found(f, _) => assert_eq!(f.op, o.op, "{} {}", o.method, o.path),
                _ => panic!("{} {} not found", o.method, o.path),
            }
        }
    }

    #[test]
    fn a_known_path_with_another_method_lists_the_allowed_ones() {
        match find(&Method::PATCH, "/api/v1/tenants/demo/calendar/slots/x") {
            Matched::WrongMethod(_, m) => assert_eq!(m, [&Method::PUT, &Method::DELETE]),
            _ => panic!("expected 405"),
        }
        assert!(matches!(find(&Method::GET, "/nope"), Matched::NotFound));
    }
}
