//! End-to-end tests of durable timers and conversation lifecycle, on a
//! simulated clock.

mod common;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

const START: &str = "2026-03-07T12:00:00Z";
/// Tuesday 10:00 EDT: follow-ups in the next ten hours are inside every
/// state's quiet-hours window, so the gate sends them.
const WEEKDAY_MORNING: &str = "2026-03-10T14:00:00Z";

fn outbound_texts(conv: &Value) -> Vec<String> {
    texts_where(conv, "direction", "outbound")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_survive_sigkill_fire_once_and_cancelled_ones_never_fire() {
    let mut node = Node::start(&["--simulated-clock", WEEKDAY_MORNING]);
    let (s, ack) = node
        .inbound(
            "gw-acme",
            &sms("acme", "+15551230001", "I missed your call", Some("t1")),
        )
        .await;
    assert_eq!(s, 202);
    let conv = ack["conversation_id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/conversations/{conv}/timers");
    let mut ids = Vec::new();
    for (i, secs) in [60, 3_600, 7_200, 86_400].iter().enumerate() {
        let (s, v) = node
            .send_admin(
                Method::POST,
                &path,
                Some(&json!({"in_seconds": secs, "kind": "follow_up", "text": format!("follow-up {i}")})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        assert!(v["id"].as_str().unwrap().starts_with("tmr_"));
        ids.push(v["id"].as_str().unwrap().to_owned());
    }
    let (s, v) = node
        .send_admin(
            Method::POST,
            &path,
            Some(&json!({"at": "2026-03-10T14:30:00Z", "kind": "reminder", "text": "reminder"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    // Cancel the 2-hour one.
    let (s, _) = node
        .send_admin(Method::DELETE, &format!("/api/v1/timers/{}", ids[2]), None)
        .await;
    assert_eq!(s, 200);
    let (s, _) = node
        .send_admin(Method::DELETE, &format!("/api/v1/timers/{}", ids[2]), None)
        .await;
    assert_eq!(s, 404, "a cancelled timer cannot be cancelled again");

    // The first minute passes: one fires.
    let v = node.advance(61.0).await;
    assert_eq!(v["fired"], 1, "{v}");
    let c = node.conversation_of("acme", "+15551230001").await.unwrap();
    assert_eq!(outbound_texts(&c), ["follow-up 0"]);
    assert_eq!(
        c["timers"].as_array().unwrap().len(),
        4,
        "three follow-ups/reminders and the lifecycle timer"
    );

    // Crash, restart: the clock starts again from the flag, so timers the
    // first minute already fired must not fire again.
    node.sigkill();
    node.restart();
    let v = node.advance(2.0 * 86_400.0).await;
    let c = node.conversation_of("acme", "+15551230001").await.unwrap();
    let sent = outbound_texts(&c);
    assert_eq!(
        sent,
        ["follow-up 0", "reminder", "follow-up 1", "follow-up 3"],
        "{v}"
    );
    // Nothing left but the lifecycle timer.
    let kinds: Vec<&str> = c["timers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.iter().all(|k| *k == "lifecycle"), "{kinds:?}");
    let (s, _) = node
        .send_admin(Method::DELETE, &format!("/api/v1/timers/{}", ids[0]), None)
        .await;
    assert_eq!(s, 404, "a fired timer cannot be cancelled");

    // Advancing further fires nothing more of them.
    node.advance(86_400.0).await;
    let c = node.conversation_of("acme", "+15551230001").await.unwrap();
    assert_eq!(outbound_texts(&c).len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_conversation_goes_inactive_then_closed_and_reopens_on_a_message() {
    // acme: inactive after 24 h, closed 7 days later (defaults).
    let node = Node::start(&["--simulated-clock", START]);
    let (s, _) = node
        .inbound("gw-acme", &sms("acme", "+15551230002", "hello", None))
        .await;
    assert_eq!(s, 202);
    let status = |c: &Value| c["status"].as_str().unwrap().to_owned();
    node.advance(23.0 * 3600.0).await;
    let c = node.conversation_of("acme", "+15551230002").await.unwrap();
    assert_eq!(status(&c), "active");
    node.advance(3600.0).await;
    let c = node.conversation_of("acme", "+15551230002").await.unwrap();
    assert_eq!(status(&c), "inactive");
    node.advance(7.0 * 86_400.0 - 1.0).await;
    let c = node.conversation_of("acme", "+15551230002").await.unwrap();
    assert_eq!(status(&c), "inactive");
    node.advance(1.0).await;
    let c = node.conversation_of("acme", "+15551230002").await.unwrap();
    assert_eq!(status(&c), "closed");
    assert!(c["timers"].as_array().unwrap().is_empty());

    // A new message reopens the same conversation, and the cycle restarts.
    let (s, ack) = node
        .inbound("gw-acme", &sms("acme", "+15551230002", "I'm back", None))
        .await;
    assert_eq!(s, 202);
    assert_eq!(ack["conversation_id"], c["id"]);
    let c = node.conversation_of("acme", "+15551230002").await.unwrap();
    assert_eq!(status(&c), "active");
    assert_eq!(texts(&c), ["hello", "I'm back"]);
    node.advance(24.0 * 3600.0).await;
    let c = node.conversation_of("acme", "+15551230002").await.unwrap();
    assert_eq!(status(&c), "inactive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_jump_of_the_clock_applies_every_step_at_its_own_time() {
    let node = Node::start(&["--simulated-clock", START]);
    node.inbound("gw-acme", &sms("acme", "+15551230003", "hi", None))
        .await;
    // 30 days at once: inactive at day 1, closed at day 8, all in one call.
    let v = node.advance(30.0 * 86_400.0).await;
    assert_eq!(v["fired"], 2, "{v}");
    assert_eq!(v["now"], "2026-04-06T12:00:00.000Z");
    let c = node.conversation_of("acme", "+15551230003").await.unwrap();
    assert_eq!(c["status"], "closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_timer_requests_get_clear_errors() {
    let node = Node::start(&["--simulated-clock", START]);
    let (_, ack) = node
        .inbound("gw-acme", &sms("acme", "+15551230004", "hi", None))
        .await;
    let conv = ack["conversation_id"].as_str().unwrap();
    let path = format!("/api/v1/conversations/{conv}/timers");
    let cases = [
        (json!({"kind": "follow_up", "text": "x"}), 400),
        (
            json!({"in_seconds": 5, "at": "2026-03-07T12:00:00Z", "kind": "follow_up", "text": "x"}),
            400,
        ),
        (
            json!({"in_seconds": -5, "kind": "follow_up", "text": "x"}),
            400,
        ),
        (
            json!({"in_seconds": 5, "kind": "lifecycle", "text": "x"}),
            400,
        ),
        (json!({"in_seconds": 5, "kind": "follow_up"}), 400),
        (
            json!({"in_seconds": 5, "kind": "follow_up", "text": "x", "channel": "fax"}),
            400,
        ),
        (json!({"at": "soon", "kind": "follow_up", "text": "x"}), 400),
        (
            json!({"in_seconds": 5, "kind": "follow_up", "text": "x", "extra": 1}),
            400,
        ),
    ];
    for (body, want) in cases {
        let (s, v) = node.send_admin(Method::POST, &path, Some(&body)).await;
        assert_eq!(s, want, "{body}: {v}");
        assert!(v["error"]["message"].is_string());
    }
    let (s, _) = node
        .send_admin(
            Method::POST,
            "/api/v1/conversations/cnv_00000000000000ff/timers",
            Some(&json!({"in_seconds": 5, "kind": "follow_up", "text": "x"})),
        )
        .await;
    assert_eq!(s, 404);
    let (s, _) = node
        .send_admin(Method::DELETE, "/api/v1/timers/tmr_00000000000000ff", None)
        .await;
    assert_eq!(s, 404);
    let (s, _) = node
        .send_admin(Method::DELETE, "/api/v1/timers/nope", None)
        .await;
    assert_eq!(s, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clock_endpoint_exists_only_with_a_simulated_clock() {
    let node = Node::start(&[]);
    let (s, _) = node
        .send_admin(
            Method::POST,
            "/api/v1/clock/advance",
            Some(&json!({"seconds": 1})),
        )
        .await;
    assert_eq!(s, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_that_came_due_while_the_node_was_down_fires_once_at_start() {
    let mut node = Node::start(&["--simulated-clock", WEEKDAY_MORNING]);
    let (_, ack) = node
        .inbound(
            "gw-acme",
            &sms("acme", "+15551230005", "call me back", None),
        )
        .await;
    let conv = ack["conversation_id"].as_str().unwrap();
    let (s, _) = node
        .send_admin(
            Method::POST,
            &format!("/api/v1/conversations/{conv}/timers"),
            Some(&json!({"in_seconds": 60, "kind": "follow_up", "text": "calling you back"})),
        )
        .await;
    assert_eq!(s, 201);
    node.sigkill();
    // The node comes back two hours later.
    node.extra = vec!["--simulated-clock".into(), "2026-03-10T16:00:00Z".into()];
    node.restart();
    let v = node.advance(0.0).await;
    assert_eq!(v["fired"], 1, "{v}");
    let c = node.conversation_of("acme", "+15551230005").await.unwrap();
    assert_eq!(outbound_texts(&c), ["calling you back"]);
    let out = c["messages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        out["at"], "2026-03-10T14:01:00.000Z",
        "stamped with its due time"
    );
    node.advance(0.0).await;
    let c = node.conversation_of("acme", "+15551230005").await.unwrap();
    assert_eq!(outbound_texts(&c).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_real_clock_a_due_timer_fires_without_being_asked() {
    let node = Node::start(&[]);
    let (_, ack) = node
        .inbound("gw-acme", &sms("acme", "+15551230006", "hello", None))
        .await;
    let conv = ack["conversation_id"].as_str().unwrap();
    let (s, _) = node
        .send_admin(
            Method::POST,
            &format!("/api/v1/conversations/{conv}/timers"),
            Some(&json!({"in_seconds": 0, "kind": "reminder", "text": "now"})),
        )
        .await;
    assert_eq!(s, 201);
    // Due immediately: the scheduler's own driver delivers it, unasked. What
    // the gate then does depends on the hour this test runs at: the
    // reminder is sent, or held for the morning as a new timer.
    for _ in 0..500 {
        let c = node.conversation_of("acme", "+15551230006").await.unwrap();
        let timers = c["timers"].as_array().unwrap();
        let sent = outbound_texts(&c) == ["now"];
        // Once fired, a pending reminder can only be the held copy: the
        // original leaves in the same write that schedules the copy.
        let held = timers
            .iter()
            .any(|t| t["kind"] == "reminder" && t["text"] == "now");
        if node.metric("threadline_timers_fired_total").await >= 1.0 && (sent ^ held) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the due timer never fired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_silences_are_per_tenant_settings() {
    let config = CONFIG.replace(
        "gateway_token = \"gw-beta\"",
        "gateway_token = \"gw-beta\"\ninactive_after_secs = 3600\nclose_after_secs = 7200",
    );
    let node = Node::start_with_config(&config, &["--simulated-clock", START]);
    node.inbound("gw-beta", &sms("beta", "+15551230007", "hi", None))
        .await;
    node.inbound("gw-acme", &sms("acme", "+15551230007", "hi", None))
        .await;
    node.advance(3600.0).await;
    let status = |c: Value| c["status"].as_str().unwrap().to_owned();
    assert_eq!(
        status(node.conversation_of("beta", "+15551230007").await.unwrap()),
        "inactive"
    );
    assert_eq!(
        status(node.conversation_of("acme", "+15551230007").await.unwrap()),
        "active",
        "acme keeps the 24 h default"
    );
    node.advance(7200.0).await;
    assert_eq!(
        status(node.conversation_of("beta", "+15551230007").await.unwrap()),
        "closed"
    );
}
