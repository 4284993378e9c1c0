//! The HTTP API as its description says: the served OpenAPI document is the
//! one in docs/, every documented operation is called once and answers a
//! status it declares, and the conventions a client relies on hold (405
//! with Allow, 401 with WWW-Authenticate, one content-type rule, a request
//! id on every response, metrics labelled by route template).

mod common;

use common::{Node, ADMIN};
use serde_json::{json, Value};

const CONFIG: &str = r#"
[server]
admin_token = "test-admin-token"

[[tenants]]
id = "acme"
name = "Acme Dental"
timezone = "America/New_York"
sms_numbers = ["+15557654321"]
gateway_token = "gw-acme"
flow = "dental.toml"
"#;

fn node() -> Node {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("dental.toml"),
        include_str!("../examples/flows/dental.toml"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("log-filter"),
        "warn,threadline::access=info",
    )
    .unwrap();
    Node::start_in(dir, CONFIG, &["--simulated-clock", "2026-03-02T15:00:00Z"])
}

#[tokio::test]
async fn the_served_description_is_the_one_in_docs() {
    let node = node();
    let r = node
        .http
        .get(node.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let served = r.text().await.unwrap();
    assert_eq!(
        served,
        include_str!("../docs/openapi.json"),
        "docs/openapi.json is stale: run `cargo run -- openapi > docs/openapi.json`"
    );
}

/// A value for each path parameter, of a resource that exists.
fn fill(path: &str, conv: &str, timer: &str) -> String {
    path.replace("{tenant}", "acme")
        .replace("{address}", "%2B15550001111")
        .replace("{start}", "2026-03-04T15%3A00%3A00Z")
        .replace("{name}", "nobody")
        .replace(
            "{id}",
            if path.starts_with("/api/v1/timers") {
                timer
            } else if path.starts_with("/api/v1/agents") {
                "api-agent"
            } else {
                conv
            },
        )
}

/// A valid body for each operation that takes JSON.
fn body_of(operation_id: &str) -> Option<Value> {
    Some(match operation_id {
        "inbound" => json!({"tenant": "acme", "channel": "sms", "from": "+15550002222",
                            "to": "+15557654321", "text": "what are your hours?"}),
        "agentsCreate" => json!({"id": "api-agent", "token": "agent-token-0123456789",
                                 "tenants": ["acme"], "capacity": {"chat": 1}}),
        "escalate" => json!({"reason": "asked for a person"}),
        "contactConsentPost" => json!({"status": "opted_in", "channel": "sms",
                                       "purpose": "marketing", "source": "web_form",
                                       "proof": "form 42"}),
        "contactPut" => json!({"name": "Dana", "timezone": "America/New_York"}),
        "contactMessages" | "conversationMessages" => {
            json!({"text": "Your results are ready", "purpose": "conversational"})
        }
        "bookingOutcome" => json!({"outcome": "attended"}),
        "conversationTimers" => {
            json!({"in_seconds": 3600, "kind": "follow_up", "text": "Still there?"})
        }
        "clockAdvance" => json!({"seconds": 1}),
        "whatsappNotify" => json!({"object": "whatsapp_business_account", "entry": []}),
        _ => return None,
    })
}

#[tokio::test]
async fn every_documented_operation_answers_a_status_it_declares() {
    let node = node();
    let doc: Value = serde_json::from_str(include_str!("../docs/openapi.json")).unwrap();
    // A conversation and a timer the operations can name.
    let (s, v) = node
        .inbound(
            "gw-acme",
            &common::sms("acme", "+15550001111", "Hi, I need a cleaning", None),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let conv = v["conversation_id"].as_str().unwrap().to_owned();
    let (s, t) = node
        .send_admin(
            reqwest::Method::POST,
            &format!("/api/v1/conversations/{conv}/timers"),
            Some(&json!({"in_seconds": 7200, "kind": "follow_up", "text": "Hello?"})),
        )
        .await;
    assert_eq!(s, 201, "{t}");
    let timer = t["id"].as_str().unwrap().to_owned();

    // Creating before deleting: the agent exists when DELETE comes.
    let mut calls: Vec<(String, String, Value)> = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            calls.push((path.clone(), method.clone(), op.clone()));
        }
    }
    calls.sort_by_key(|(_, m, _)| m == "delete");
    let mut called = 0;
    for (path, method, op) in calls {
        let id = op["operationId"].as_str().unwrap();
        let url = node.url(&fill(&path, &conv, &timer));
        let m: reqwest::Method = method.to_uppercase().parse().unwrap();
        let mut req = node.http.request(m.clone(), &url);
        let security = op["security"].as_array().unwrap();
        let scheme = security
            .first()
            .and_then(|s| s.as_object()?.keys().next().cloned());
        match scheme.as_deref() {
            Some("admin") => req = req.bearer_auth(ADMIN),
            Some("gateway") => req = req.bearer_auth("gw-acme"),
            _ => {}
        }
        if let Some(b) = body_of(id) {
            req = req.json(&b);
        } else if op["requestBody"]["content"]
            .get("application/x-www-form-urlencoded")
            .is_some()
        {
            // Unsigned: the declared 403.
            req = req.form(&[("From", "+15550001111"), ("To", "+15557654321")]);
        }
        if path.ends_with("/ws") {
            req = req
                .header("Connection", "Upgrade")
                .header("Upgrade", "websocket")
                .header("Sec-WebSocket-Version", "13")
                .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==");
        }
        if path == "/chat" || path == "/chat/ws" || path == "/inbox/ws" {
            req = req.query(&[("tenant", "acme")]);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16().to_string();
        let declared: Vec<&String> = op["responses"].as_object().unwrap().keys().collect();
        assert!(
            declared.contains(&&status),
            "{method} {path} ({id}) answered {status}, declared {declared:?}: {}",
            r.text().await.unwrap_or_default()
        );
        assert!(
            !status.starts_with('5') || path.ends_with("z"),
            "{method} {path} answered {status}"
        );
        called += 1;
    }
    assert!(called >= 45, "{called} operations called");
}

#[tokio::test]
async fn conventions_a_client_relies_on() {
    let node = node();
    let http = &node.http;

    // 405 with Allow for a path that exists; 404 for one that does not.
    let r = http
        .delete(node.url("/api/v1/tenants/acme/calendar"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET");
    let r = http
        .patch(node.url("/api/v1/tenants/acme/contacts/%2B15550001111"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "PUT");
    let r = http.get(node.url("/api/v1/nothing")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "not_found");

    // 401 says how to authenticate.
    let r = http.get(node.url("/api/v1/cluster")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer"));

    // One content-type rule: every JSON operation refuses another type.
    for (path, body) in [
        (
            "/api/v1/agents",
            r#"{"id":"x","token":"agent-token-0123456789"}"#,
        ),
        (
            "/api/v1/conversations/cnv_0000000000000001/booking",
            r#"{"outcome":"attended"}"#,
        ),
        ("/api/v1/inbound", r#"{}"#),
    ] {
        let r = http
            .post(node.url(path))
            .bearer_auth(ADMIN)
            .header("content-type", "text/plain")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 415, "{path}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "unsupported_media_type");
    }
    // A Twilio webhook takes a form, nothing else.
    let r = http
        .post(node.url("/webhooks/twilio/sms"))
        .json(&json!({"From": "+15550001111"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);

    // A request id on every response: the client's when it is plain, else
    // a fresh one.
    let r = http
        .get(node.url("/healthz"))
        .header("x-request-id", "trace-abc.123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "trace-abc.123");
    let mut seen = std::collections::HashSet::new();
    for _ in 0..3 {
        let r = http
            .get(node.url("/nope"))
            .header("x-request-id", "bad id with spaces")
            .send()
            .await
            .unwrap();
        let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert!(!id.contains(' '));
        assert!(seen.insert(id), "request ids are unique");
    }

    // The pages say what a browser may run and who may frame them.
    for (path, ancestors) in [
        ("/agent", "frame-ancestors 'none'"),
        ("/chat?tenant=acme", "frame-ancestors 'self'"),
    ] {
        let r = http.get(node.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let csp = r.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(csp.contains(ancestors), "{path}: {csp}");
        assert!(csp.contains("script-src 'sha256-"), "{path}: {csp}");
        assert!(!csp.contains("script-src 'unsafe-inline'"), "{path}: {csp}");
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
        assert_eq!(r.headers()["referrer-policy"], "no-referrer");
    }

    // Metrics: OpenMetrics, with the build and per-route series.
    let r = http.get(node.url("/metrics")).send().await.unwrap();
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let text = r.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"));
    assert!(text.contains("threadline_build_info{version=\""), "{text}");
    assert!(
        text.contains(
            "threadline_http_requests_total{method=\"GET\",route=\"/api/v1/tenants/{tenant}/calendar\",status=\"200\"}"
        ) || text.contains("route=\"/healthz\",status=\"200\""),
        "{text}"
    );
    assert!(
        text.contains("route=\"unmatched\",status=\"404\""),
        "{text}"
    );
    assert!(text.contains("threadline_http_request_duration_seconds_bucket{"));
    assert!(text.contains("process_cpu_seconds_total "));
    assert!(text.contains("process_open_fds "));

    // The access log: one line per request with the route template and the
    // request id, never the token.
    let log = node.all_stderr();
    let line = log
        .lines()
        .find(|l| l.contains("trace-abc.123") && l.contains("threadline::access"))
        .unwrap_or_else(|| panic!("no access line for the request:\n{log}"));
    assert!(
        line.contains("route=\"/healthz\"") || line.contains("route=/healthz"),
        "{line}"
    );
    assert!(line.contains("status=200"), "{line}");
    assert!(!log.contains(ADMIN), "the access log never shows a token");
    assert!(!log.contains('\u{1b}'), "no colour codes in a log file");
}

/// A supervisor's token reads what the admin token reads (the list, a
/// conversation, the inbox socket) and changes nothing: a write with it
/// is 403 with a JSON error, and nothing is written.
#[tokio::test]
async fn the_supervisor_token_reads_everything_and_changes_nothing() {
    let node = Node::start_with_config(
        &common::config_with_server("supervisor_token = \"test-supervisor-token\""),
        &[],
    );
    let (s, v) = node
        .inbound(
            "gw-acme",
            &common::sms("acme", "+15550001111", "hello", Some("s1")),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let read = |path: &str| {
        node.http
            .get(node.url(path))
            .bearer_auth("test-supervisor-token")
            .send()
    };
    let r = read("/api/v1/tenants/acme/conversations").await.unwrap();
    assert_eq!(r.status(), 200);
    let list: Value = r.json().await.unwrap();
    assert_eq!(list["conversations"].as_array().unwrap().len(), 1, "{list}");
    let r = read("/api/v1/tenants/acme/contacts/%2B15550001111/conversation")
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A write: refused, said why, not written.
    let r = node
        .http
        .post(node.url("/api/v1/tenants/acme/contacts/%2B15550001111/messages"))
        .bearer_auth("test-supervisor-token")
        .json(&json!({"text": "hi from a supervisor", "purpose": "conversational"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "forbidden", "{e}");
    let c = node.conversation_of("acme", "+15550001111").await.unwrap();
    assert_eq!(c["messages"].as_array().unwrap().len(), 1, "{c}");
    // Another token reads nothing.
    let r = node
        .http
        .get(node.url("/api/v1/tenants/acme/conversations"))
        .bearer_auth("not-the-supervisor")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // The inbox socket takes it.
    let url = format!(
        "{}/inbox/ws?tenant=acme&token=test-supervisor-token",
        node.base.replace("http://", "ws://")
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let first = common::ws::next_json(&mut ws).await;
    assert!(first.is_object(), "{first}");
    let bad = format!(
        "{}/inbox/ws?tenant=acme&token=nope",
        node.base.replace("http://", "ws://")
    );
    assert!(tokio_tungstenite::connect_async(&bad).await.is_err());
}
