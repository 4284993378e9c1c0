//! End-to-end tests of the runtime foundation against the real binary.
//!
//! Over 800 lines on purpose: every file under `tests/` is its own test
//! binary, linked against the whole node, and the tests here share one
//! harness (node configs, waits, fake providers); one file per area keeps
//! CI's link time and that harness in one place. Each test reads alone.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_message_is_stored_and_read_back_by_id_and_by_contact() {
    let node = Node::start(&[]);
    let (s, ack) = node
        .inbound(
            "gw-acme",
            &json!({"tenant": "acme", "channel": "sms", "from": "+15551234567",
                    "to": "+15557654321", "text": "I need a cleaning next week",
                    "provider_message_id": "SM1", "at": "2026-11-22T10:00:00Z"}),
        )
        .await;
    assert_eq!(s, 202, "{ack}");
    let id = ack["conversation_id"].as_str().unwrap();
    assert!(id.starts_with("cnv_"));
    assert!(ack["message_id"].as_str().unwrap().starts_with("msg_"));

    let (s, by_id) = node.get_admin(&format!("/api/v1/conversations/{id}")).await;
    assert_eq!(s, 200);
    let by_contact = node.conversation_of("acme", "+15551234567").await.unwrap();
    assert_eq!(by_id, by_contact);
    assert_eq!(by_id["tenant"], "acme");
    assert_eq!(by_id["contact"], "+15551234567");
    assert_eq!(by_id["status"], "active");
    assert_eq!(by_id["channels"], json!(["sms"]));
    let m = &by_id["messages"][0];
    assert_eq!(m["id"], ack["message_id"]);
    assert_eq!(m["direction"], "inbound");
    assert_eq!(m["author"], "customer");
    assert_eq!(m["text"], "I need a cleaning next week");
    assert_eq!(m["at"], "2026-11-22T10:00:00.000Z");
    assert_eq!(m["delivery"], "received");

    // The same number at another tenant is another conversation.
    assert!(node.conversation_of("beta", "+15551234567").await.is_none());
    let (s, other) = node
        .inbound("gw-beta", &sms("beta", "+15551234567", "hello beta", None))
        .await;
    assert_eq!(s, 202);
    assert_ne!(other["conversation_id"], ack["conversation_id"]);

    let (s, e) = node
        .get_admin("/api/v1/conversations/cnv_00000000000000ff")
        .await;
    assert_eq!((s, e["error"]["code"].as_str()), (404, Some("not_found")));
    let (s, e) = node.get_admin("/api/v1/conversations/nope").await;
    assert_eq!((s, e["error"]["code"].as_str()), (400, Some("invalid_id")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_provider_id_is_acknowledged_and_stored_once_across_restarts() {
    let mut node = Node::start(&[]);
    let msg = sms("acme", "+15551230001", "hello", Some("SMdup"));
    let (s1, a1) = node.inbound("gw-acme", &msg).await;
    let (s2, a2) = node.inbound("gw-acme", &msg).await;
    assert_eq!((s1, s2), (202, 202));
    assert_eq!(a1["message_id"], a2["message_id"]);
    assert_eq!(
        (a1["duplicate"].as_bool(), a2["duplicate"].as_bool()),
        (Some(false), Some(true))
    );

    // After a crash the id is still known.
    node.sigkill();
    node.restart();
    let (s3, a3) = node.inbound("gw-acme", &msg).await;
    assert_eq!(s3, 202);
    assert_eq!(a3["message_id"], a1["message_id"]);
    assert_eq!(a3["duplicate"], true);
    let conv = node.conversation_of("acme", "+15551230001").await.unwrap();
    assert_eq!(texts(&conv), ["hello"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_of_one_conversation_keep_their_order_while_many_run_in_parallel() {
    let node = Arc::new(Node::start(&[]));
    let conversations = 24;
    let per = 25;
    let mut tasks = Vec::new();
    for c in 0..conversations {
        let node = node.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                let (s, v) = node
                    .inbound("gw-acme", &sms("acme", &phone(c), &format!("m{i}"), None))
                    .await;
                assert_eq!(s, 202, "{v}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for c in 0..conversations {
        let conv = node.conversation_of("acme", &phone(c)).await.unwrap();
        let want: Vec<String> = (0..per).map(|i| format!("m{i}")).collect();
        assert_eq!(texts(&conv), want, "conversation {c}");
    }
    assert_eq!(
        node.metric("threadline_messages_ingested_total").await,
        (conversations * per) as f64
    );
}

/// Posts a burst from many concurrent clients, SIGKILLs the node in the
/// middle of it, restarts, and checks every acknowledged message is stored
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_burst_loses_no_acknowledged_message() {
    let mut node = Node::start(&[]);
    let base = node.base.clone();
    let http = node.http.clone();
    let acked = Arc::new(parking_lot_free::Acked::default());
    let sent = Arc::new(AtomicUsize::new(0));
    let clients = 64;
    let contacts = 150;
    let kill_after = 600;
    let (killed_tx, killed_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (http, base, acked, sent) = (http.clone(), base.clone(), acked.clone(), sent.clone());
        let killed = killed_rx.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                if *killed.borrow() {
                    break;
                }
                let contact = phone((c * 7 + i) % contacts);
                let pid = format!("k-{c}-{i}");
                sent.fetch_add(1, Ordering::Relaxed);
                let r = http
                    .post(format!("{base}/api/v1/inbound"))
                    .bearer_auth("gw-acme")
                    .json(&sms("acme", &contact, &pid, Some(&pid)))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().as_u16() == 202 => acked.push(contact, pid),
                    _ => break, // the node is gone
                }
            }
        }));
    }
    // Kill once enough acknowledgements came back, while requests are in flight.
    while acked.len() < kill_after {
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    node.sigkill();
    killed_tx.send(true).unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.take();
    assert!(acked.len() >= kill_after);
    assert!(
        sent.load(Ordering::Relaxed) > acked.len(),
        "some requests were in flight when the node died"
    );

    node.restart();
    let mut want: HashMap<String, HashSet<String>> = HashMap::new();
    for (contact, pid) in &acked {
        want.entry(contact.clone()).or_default().insert(pid.clone());
    }
    for c in 0..contacts {
        let contact = phone(c);
        let stored = match node.conversation_of("acme", &contact).await {
            Some(conv) => texts(&conv),
            None => vec![],
        };
        let unique: HashSet<&String> = stored.iter().collect();
        assert_eq!(
            unique.len(),
            stored.len(),
            "duplicates in {contact}: {stored:?}"
        );
        for pid in want.get(&contact).into_iter().flatten() {
            assert!(
                stored.contains(pid),
                "acknowledged {pid} lost from {contact}"
            );
        }
    }
}

mod parking_lot_free {
    use std::sync::Mutex;

    #[derive(Default)]
    pub struct Acked(Mutex<Vec<(String, String)>>);

    impl Acked {
        pub fn push(&self, contact: String, pid: String) {
            self.0.lock().unwrap().push((contact, pid));
        }
        pub fn len(&self) -> usize {
            self.0.lock().unwrap().len()
        }
        pub fn take(&self) -> Vec<(String, String)> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }
}

const PANIC: &str = "__threadline_test_panic__";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_conversation_is_restarted_and_its_poison_message_dead_lettered() {
    let node = Arc::new(Node::start(&["--test-hooks"]));
    let victim = "+15559990000";
    let (s, before) = node
        .inbound("gw-acme", &sms("acme", victim, "before", Some("v1")))
        .await;
    assert_eq!(s, 202);

    // Other conversations keep going while the victim fails.
    let mut others = Vec::new();
    for c in 0..8 {
        let node = node.clone();
        others.push(tokio::spawn(async move {
            for i in 0..20 {
                let (s, v) = node
                    .inbound("gw-acme", &sms("acme", &phone(c), &format!("o{i}"), None))
                    .await;
                assert_eq!(s, 202, "{v}");
            }
        }));
    }
    let (s, poisoned) = node
        .inbound("gw-acme", &sms("acme", victim, PANIC, Some("v2")))
        .await;
    assert_eq!(s, 202, "{poisoned}");
    assert_eq!(poisoned["dead_lettered"], true);
    assert_eq!(poisoned["conversation_id"], before["conversation_id"]);
    for t in others {
        t.await.unwrap();
    }
    for c in 0..8 {
        let conv = node.conversation_of("acme", &phone(c)).await.unwrap();
        assert_eq!(texts(&conv).len(), 20, "bystander {c} unaffected");
    }

    // The conversation moves on, with its durable state intact.
    let (s, _) = node
        .inbound("gw-acme", &sms("acme", victim, "after", Some("v3")))
        .await;
    assert_eq!(s, 202);
    let conv = node.conversation_of("acme", victim).await.unwrap();
    assert_eq!(texts(&conv), ["before", "after"]);
    assert_eq!(
        node.metric("threadline_conversation_restarts_total").await,
        3.0
    );

    let (s, dl) = node.get_admin("/api/v1/dead-letters").await;
    assert_eq!(s, 200);
    let list = dl["dead_letters"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{dl}");
    assert_eq!(list[0]["contact"], victim);
    assert_eq!(list[0]["attempts"], 3);
    assert_eq!(list[0]["message"]["text"], PANIC);
    assert_eq!(list[0]["message"]["provider_message_id"], "v2");
    assert_eq!(list[0]["conversation_id"], before["conversation_id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passivated_conversations_come_back_with_their_state() {
    let cap = 5;
    let mut node = Node::start(&["--max-resident", &cap.to_string()]);
    let contacts = 40;
    for round in 0..3 {
        for c in 0..contacts {
            let (s, v) = node
                .inbound(
                    "gw-acme",
                    &sms("acme", &phone(c), &format!("r{round}"), None),
                )
                .await;
            assert_eq!(s, 202, "{v}");
        }
    }
    let passivated = node
        .metric("threadline_conversations_passivated_total")
        .await;
    assert!(
        passivated >= (contacts - cap) as f64,
        "passivated {passivated}"
    );
    let activated = node
        .metric("threadline_conversations_activated_total")
        .await;
    assert!(
        activated > contacts as f64,
        "re-activations happened: {activated}"
    );
    for c in 0..contacts {
        let conv = node.conversation_of("acme", &phone(c)).await.unwrap();
        assert_eq!(texts(&conv), ["r0", "r1", "r2"], "contact {c}");
    }
    // And after a clean restart.
    assert!(node.sigterm().success());
    node.restart();
    let conv = node.conversation_of("acme", &phone(3)).await.unwrap();
    assert_eq!(texts(&conv), ["r0", "r1", "r2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_flushes_and_exits_zero() {
    let mut node = Node::start(&[]);
    for i in 0..30 {
        let (s, _) = node
            .inbound(
                "gw-acme",
                &sms("acme", &phone(i % 3), &format!("t{i}"), None),
            )
            .await;
        assert_eq!(s, 202);
    }
    let status = node.sigterm();
    assert!(
        status.success(),
        "exit status {status:?}: {}",
        node.stderr()
    );
    node.restart();
    let mut total = 0;
    for c in 0..3 {
        total += texts(&node.conversation_of("acme", &phone(c)).await.unwrap()).len();
    }
    assert_eq!(total, 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_4xx_and_stores_nothing() {
    let node = Node::start(&[]);
    let url = node.url("/api/v1/inbound");
    let good = sms("acme", "+15551112222", "hi", Some("b1"));
    let post = |body: Vec<u8>, ct: Option<&str>, token: Option<&str>| {
        let mut r = node.http.post(&url).body(body);
        if let Some(ct) = ct {
            r = r.header("content-type", ct);
        }
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    let json_ct = Some("application/json");
    let with = |k: &str, v: Value| {
        let mut b = good.clone();
        b[k] = v;
        serde_json::to_vec(&b).unwrap()
    };
    // (case, body, content type, token, status, error code)
    type Case<'a> = (
        &'a str,
        Vec<u8>,
        Option<&'a str>,
        Option<&'a str>,
        u16,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        ("malformed json", b"{\"tenant\": ".to_vec(), json_ct, Some("gw-acme"), 400, "invalid_json"),
        ("not an object", b"[1,2]".to_vec(), json_ct, Some("gw-acme"), 400, "invalid_field"),
        ("wrong content type", serde_json::to_vec(&good).unwrap(), Some("text/plain"), Some("gw-acme"), 415, "unsupported_media_type"),
        ("no content type", serde_json::to_vec(&good).unwrap(), None, Some("gw-acme"), 415, "unsupported_media_type"),
        ("missing field", br#"{"tenant":"acme","channel":"sms","text":"x"}"#.to_vec(), json_ct, Some("gw-acme"), 400, "invalid_field"),
        ("unknown tenant", with("tenant", json!("nobody")), json_ct, Some("gw-acme"), 404, "not_found"),
        ("other tenant's token", serde_json::to_vec(&good).unwrap(), json_ct, Some("gw-beta"), 403, "forbidden"),
        ("wrong token", serde_json::to_vec(&good).unwrap(), json_ct, Some("gw-nope"), 401, "unauthorized"),
        ("admin token is not a gateway token", serde_json::to_vec(&good).unwrap(), json_ct, Some(ADMIN), 401, "unauthorized"),
        ("missing token", serde_json::to_vec(&good).unwrap(), json_ct, None, 401, "unauthorized"),
        ("body over the limit", with("text", json!("x".repeat(70 * 1024))), json_ct, Some("gw-acme"), 413, "body_too_large"),
        ("invalid utf-8", b"{\"tenant\":\"acme\",\"channel\":\"sms\",\"from\":\"+15551112222\",\"text\":\"\xff\xfe\"}".to_vec(), json_ct, Some("gw-acme"), 400, "invalid_utf8"),
        ("text too long", with("text", json!("y".repeat(9000))), json_ct, Some("gw-acme"), 400, "field_too_long"),
        ("absurd from", with("from", json!("9".repeat(5000))), json_ct, Some("gw-acme"), 400, "field_too_long"),
        ("absurd provider id", with("provider_message_id", json!("p".repeat(500))), json_ct, Some("gw-acme"), 400, "field_too_long"),
        ("unknown channel", with("channel", json!("pigeon")), json_ct, Some("gw-acme"), 400, "invalid_field"),
        ("not a phone number", with("from", json!("555-1234")), json_ct, Some("gw-acme"), 400, "invalid_field"),
        ("empty text", with("text", json!("  ")), json_ct, Some("gw-acme"), 400, "invalid_field"),
        ("bad timestamp", with("at", json!("yesterday")), json_ct, Some("gw-acme"), 400, "invalid_field"),
        ("wrong field type", with("text", json!(42)), json_ct, Some("gw-acme"), 400, "invalid_field"),
        ("too many media", with("media", json!(vec!["https://x/y"; 11])), json_ct, Some("gw-acme"), 400, "field_too_long"),
    ];
    for (name, body, ct, token, status, code) in cases {
        let r = post(body, ct, token).await.unwrap();
        let got = r.status().as_u16();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(got, status, "{name}: {v}");
        assert_eq!(v["error"]["code"], code, "{name}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{name}"
        );
    }
    // Admin endpoints refuse gateway tokens and no token.
    let r = node
        .http
        .get(node.url("/api/v1/dead-letters"))
        .bearer_auth("gw-acme")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = node
        .http
        .get(node.url("/api/v1/nothing-here"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let r = node
        .http
        .delete(node.url("/api/v1/inbound"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);

    // Nothing was stored, and the node still serves.
    assert!(node.conversation_of("acme", "+15551112222").await.is_none());
    assert_eq!(node.metric("threadline_messages_ingested_total").await, 0.0);
    let (s, _) = node.inbound("gw-acme", &good).await;
    assert_eq!(s, 202);
    let r = node.http.get(node.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[test]
fn check_config_accepts_a_good_file_and_names_key_and_line_of_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, CONFIG).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_threadline"))
        .args(["check-config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, CONFIG.replace("America/Chicago", "America/Atlantis")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_threadline"))
        .args(["check-config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tenants[1].timezone"), "{err}");
    assert!(err.contains("line 15"), "{err}");
    assert!(err.contains("America/Atlantis"), "{err}");

    // serve refuses it too, before listening.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_threadline"))
        .args(["serve", "--http", "127.0.0.1:0", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tenants[1].timezone"));
}

/// `serve` with no config file at all: a working dev node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_config_serve_starts_a_dev_node_and_prints_its_tokens() {
    use std::io::{BufRead, BufReader};
    let cwd = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_threadline"))
        .args(["serve", "--http", "127.0.0.1:0"])
        .current_dir(cwd.path())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut printed = Vec::new();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let base = loop {
        let l = lines.next().expect("node exited").unwrap();
        printed.push(l.clone());
        if let Some(b) = l.strip_prefix("threadline listening on ") {
            break b.to_owned();
        }
    };
    let text = printed.join("\n");
    for token in [
        "dev-admin-token",
        "gw-demo (tenant demo)",
        "agent-demo (agent demo-agent)",
        "sandbox",
    ] {
        assert!(text.contains(token), "{token} not printed: {text}");
    }
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{base}/api/v1/inbound"))
        .bearer_auth("gw-demo")
        .json(&sms("demo", "+15551234567", "hi", None))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    assert!(
        cwd.path().join("data").join("threadline.redb").exists(),
        "data in ./data"
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_while_the_node_runs_restores_every_commit_before_it_and_none_in_part() {
    let mut node = Node::start(&[]);
    let (a, c) = (phone(1), phone(2));
    for k in 0..20 {
        let (s, v) = node
            .inbound(
                "gw-acme",
                &sms("acme", &a, &format!("a{k}"), Some(&format!("a{k}"))),
            )
            .await;
        assert_eq!(s, 202, "{v}");
    }
    // Another customer keeps writing while the backup is taken.
    let writer = {
        let (base, http) = (node.base.clone(), node.http.clone());
        let c = c.clone();
        tokio::spawn(async move {
            for k in 0..60 {
                let r = http
                    .post(format!("{base}/api/v1/inbound"))
                    .bearer_auth("gw-acme")
                    .json(&sms("acme", &c, &format!("c{k}"), Some(&format!("c{k}"))))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status().as_u16(), 202);
            }
        })
    };
    let (s, backup) = node
        .send_admin(reqwest::Method::POST, "/api/v1/backup", None)
        .await;
    assert_eq!(s, 201, "{backup}");
    writer.await.unwrap();
    let path = backup["path"].as_str().unwrap().to_owned();
    assert!(std::path::Path::new(&path).exists());
    assert!(backup["bytes"].as_u64().unwrap() > 0);
    let (s, _) = node
        .inbound("gw-acme", &sms("acme", &a, "after", Some("after")))
        .await;
    assert_eq!(s, 202);

    let restore = |dir: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_threadline"))
            .args(["restore", &path, "--data-dir"])
            .arg(dir)
            .output()
            .unwrap()
    };
    let data = node.dir.path().join("data");
    // Not onto a running node.
    let out = restore(&data);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("in use"),
        "{out:?}"
    );

    node.sigkill();
    let out = restore(&data);
    assert!(out.status.success(), "{out:?}");
    node.restart();
    let conv = node.conversation_of("acme", &a).await.unwrap();
    let want: Vec<String> = (0..20).map(|k| format!("a{k}")).collect();
    assert_eq!(
        texts_where(&conv, "direction", "inbound"),
        want,
        "nothing after the backup"
    );
    // The other customer's messages are a prefix of what they sent: every
    // commit before the copy, none after it, none in part.
    let got = match node.conversation_of("acme", &c).await {
        Some(conv) => texts_where(&conv, "direction", "inbound"),
        None => Vec::new(),
    };
    let prefix: Vec<String> = (0..got.len()).map(|k| format!("c{k}")).collect();
    assert_eq!(got, prefix);
}

/// `CONFIG` with extra `[server]` keys.
/// An HTTP client whose requests come from loopback address 127.0.0.`n`:
/// another source as the node sees it.
fn client_from(n: u8) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, n]))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_source_is_refused_with_429_while_other_sources_go_on() {
    let node = Node::start_with_config(
        &config_with_server("rate_limit_per_second = 2\nrate_limit_burst = 5"),
        &[],
    );
    let bodies: Vec<Value> = (0..30)
        .map(|k| {
            sms(
                "acme",
                &phone(7),
                &format!("flood {k}"),
                Some(&format!("f{k}")),
            )
        })
        .collect();
    let flood = bodies.iter().map(|b| node.inbound("gw-acme", b));
    let answers = futures_util::future::join_all(flood).await;
    let accepted = answers.iter().filter(|(s, _)| *s == 202).count();
    let refused: Vec<&Value> = answers
        .iter()
        .filter(|(s, _)| *s == 429)
        .map(|(_, v)| v)
        .collect();
    assert!(
        (5..=8).contains(&accepted),
        "the burst, and what the rate let through: {accepted}"
    );
    assert_eq!(accepted + refused.len(), 30);
    assert_eq!(
        refused[0]["error"]["code"], "rate_limited",
        "{}",
        refused[0]
    );
    // A refused message was not stored (read from another source: this
    // one is out of requests).
    let reader = client_from(3);
    let conv: Value = reader
        .get(node.url(&format!(
            "/api/v1/tenants/acme/contacts/{}/conversation",
            phone(7).replace('+', "%2B")
        )))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(texts_where(&conv, "direction", "inbound").len(), accepted);
    // Health is never limited.
    let r = node.http.get(node.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // The answer says when to come back.
    let r = node
        .http
        .post(node.url("/api/v1/inbound"))
        .bearer_auth("gw-acme")
        .json(&sms("acme", &phone(7), "again", Some("again")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    assert!(r.headers().get("retry-after").is_some());
    // Another source (another loopback address) is not held up.
    let other = client_from(2);
    let r = other
        .post(node.url("/api/v1/inbound"))
        .bearer_auth("gw-acme")
        .json(&sms("acme", &phone(8), "hello", Some("o1")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_beyond_a_gateways_limit_gets_503_with_retry_after_and_nothing_refused_is_stored() {
    // One request in flight per gateway: concurrent requests overlap while
    // the first waits for its commit.
    let node = Node::start_with_config(&config_with_server("max_in_flight_per_gateway = 1"), &[]);
    let mut accepted: Vec<String> = Vec::new();
    let mut refused: Vec<String> = Vec::new();
    for round in 0..50 {
        let burst = (0..32).map(|k| {
            let from = phone(1000 + round * 32 + k);
            let body = sms("acme", &from, "burst", Some(&format!("b{round}-{k}")));
            let node = &node;
            async move {
                let r = node
                    .http
                    .post(node.url("/api/v1/inbound"))
                    .bearer_auth("gw-acme")
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                let retry_after = r.headers().get("retry-after").cloned();
                let v: Value = r.json().await.unwrap();
                (from, status, retry_after, v)
            }
        });
        for (from, status, retry_after, v) in futures_util::future::join_all(burst).await {
            match status {
                202 => accepted.push(from),
                503 => {
                    assert_eq!(v["error"]["code"], "busy", "{v}");
                    let after = retry_after.expect("a 503 says when to retry");
                    assert!(after.to_str().unwrap().parse::<u64>().unwrap() >= 1);
                    refused.push(from);
                }
                other => panic!("{other}: {v}"),
            }
        }
        if !refused.is_empty() && round >= 2 {
            break;
        }
    }
    assert!(!refused.is_empty(), "no burst ever found the gateway full");
    assert!(!accepted.is_empty());
    // What was refused was not stored; what was acknowledged was, once.
    for from in &refused {
        assert_eq!(node.conversation_of("acme", from).await, None, "{from}");
    }
    for from in &accepted {
        let conv = node.conversation_of("acme", from).await.unwrap();
        assert_eq!(texts_where(&conv, "direction", "inbound"), ["burst"]);
    }
    // The caller that retries gets in.
    for (k, from) in refused.iter().enumerate() {
        let (s, v) = node
            .inbound(
                "gw-acme",
                &sms("acme", from, "burst", Some(&format!("retry{k}"))),
            )
            .await;
        assert_eq!(s, 202, "{v}");
        let conv = node.conversation_of("acme", from).await.unwrap();
        assert_eq!(texts_where(&conv, "direction", "inbound"), ["burst"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_chat_client_that_stops_reading_is_disconnected_and_stalls_nobody() {
    use common::ws::*;
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message as Frame;

    let node =
        Node::start_with_config(&config_with_server("websocket_write_timeout_ms = 500"), &[]);
    let url = |visitor: &str| {
        node.url(&format!("/chat/ws?tenant=acme&visitor={visitor}"))
            .replace("http://", "ws://")
    };
    let (mut fast, _) = tokio_tungstenite::connect_async(url("fast")).await.unwrap();
    assert_eq!(next_json(&mut fast).await["type"], "hello");

    // The slow visitor's socket takes little and it never reads: it only
    // sends pings, each of which the node answers with a pong.
    let addr: std::net::SocketAddr = node.base.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let (mut slow, _) = tokio_tungstenite::client_async(url("slow"), stream)
        .await
        .unwrap();
    // Pings go out in pipelined bursts (one write per burst, not per
    // frame), so the socket fills in a few seconds even on a busy machine.
    let flood = tokio::spawn(async move {
        let mut sent = 0u64;
        while sent < 4_000_000 {
            for _ in 0..512 {
                if slow.feed(Frame::text(r#"{"type":"ping"}"#)).await.is_err() {
                    return Some(sent);
                }
                sent += 1;
            }
            if slow.flush().await.is_err() {
                return Some(sent);
            }
        }
        None
    });
    // Meanwhile the other visitor chats on.
    for k in 0..20 {
        send_json(
            &mut fast,
            json!({"type": "message", "text": format!("still here {k}"), "id": format!("f{k}")}),
        )
        .await;
        let ack = next_of(&mut fast, "ack").await;
        assert_eq!(ack["id"], format!("f{k}"));
    }
    // Once its unread pongs fill the socket, the node gives up on it.
    let sent = tokio::time::timeout(std::time::Duration::from_secs(120), flood)
        .await
        .expect("the node disconnected the client that stopped reading")
        .unwrap()
        .expect("the node disconnected the client that stopped reading");
    assert!(
        sent > 1000,
        "it was dropped only once it fell behind: {sent}"
    );
    assert_eq!(node.metric("threadline_websockets_open").await, 1.0);
    // The visitor who reads is still served, and the dropped one may come back.
    send_json(
        &mut fast,
        json!({"type": "message", "text": "after", "id": "f-after"}),
    )
    .await;
    assert_eq!(next_of(&mut fast, "ack").await["id"], "f-after");
    let (mut back, _) = tokio_tungstenite::connect_async(url("slow")).await.unwrap();
    assert_eq!(next_json(&mut back).await["visitor"], "slow");
    send_json(&mut back, json!({"type": "ping"})).await;
    assert_eq!(next_of(&mut back, "pong").await["type"], "pong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_certificate_the_node_serves_https_only() {
    let certs = tempfile::tempdir().unwrap();
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_pem, key_pem) = (key.cert.pem(), key.signing_key.serialize_pem());
    let (cert_file, key_file) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    std::fs::write(&cert_file, &cert_pem).unwrap();
    std::fs::write(&key_file, &key_pem).unwrap();
    let config = format!(
        "{CONFIG}\n[server.tls]\ncert_file = {:?}\nkey_file = {:?}\n",
        cert_file.display().to_string(),
        key_file.display().to_string()
    );
    let node = Node::start_with_config(&config, &[]);
    assert!(node.base.starts_with("https://"), "{}", node.base);
    let addr: std::net::SocketAddr = node.base.trim_start_matches("https://").parse().unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap())
        .resolve("localhost", addr)
        .build()
        .unwrap();
    let url = format!("https://localhost:{}", addr.port());
    let r = client.get(format!("{url}/healthz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = client
        .post(format!("{url}/api/v1/inbound"))
        .bearer_auth("gw-acme")
        .json(&sms("acme", &phone(1), "over TLS", Some("tls1")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    // The web chat's WebSocket over the same TLS (WSS).
    let roots = {
        let mut r = tokio_rustls::rustls::RootCertStore::empty();
        r.add(key.cert.der().clone()).unwrap();
        r
    };
    let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let tls = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async_tls_with_config(
        format!(
            "wss://localhost:{}/chat/ws?tenant=acme&visitor=v-tls",
            addr.port()
        ),
        tcp,
        None,
        Some(tokio_tungstenite::Connector::Rustls(std::sync::Arc::new(
            tls,
        ))),
    )
    .await
    .unwrap();
    assert_eq!(common::ws::next_json(&mut ws).await["type"], "hello");
    // Plain HTTP on the same port gets no answer.
    let plain = reqwest::Client::new()
        .get(format!("http://{addr}/healthz"))
        .timeout(std::time::Duration::from_secs(5))
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
    // A config naming a missing file is refused with the key.
    let bad = certs.path().join("bad.toml");
    std::fs::write(&bad, config.replace("cert.pem", "missing.pem")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_threadline"))
        .arg("check-config")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("server.tls.cert_file"),
        "{out:?}"
    );
}
