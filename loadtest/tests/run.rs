//! The load tester against a real node: a short, small run whose report
//! counts every message, and a run that must fail because replies it
//! expects never come.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn loadtest() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_threadline-loadtest"))
}

/// The node binary, built next to the load tester by `cargo test
/// --workspace` (the node's own tests need it).
fn node() -> PathBuf {
    let p = loadtest().with_file_name("threadline");
    assert!(
        p.exists(),
        "{} is missing: run the tests with `cargo test --workspace`",
        p.display()
    );
    p
}

/// The repository's example flows.
const FLOWS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/flows");

fn scenario(dir: &std::path::Path, replies: u32) -> PathBuf {
    let flow = format!("{FLOWS}/dental.toml");
    let path = dir.join("scenario.toml");
    std::fs::write(
        &path,
        format!(
            r#"
name = "smoke"
flow = "{flow}"

[load]
model = "closed"
customers = 8
messages = 40
think_ms = [0, 20]
reply_timeout_ms = 3000

[[journeys]]
name = "book over SMS"
weight = 2
channel = "sms"
steps = [
  {{ say = "Hi, this is {{name}}. I need a cleaning", replies = {replies} }},
  {{ say = "Thursday at 3", replies = {replies} }},
]

[[journeys]]
name = "web chat"
channel = "webchat"
steps = [ {{ say = "can I book a checkup?", replies = {replies} }} ]

[[journeys]]
name = "whatsapp"
channel = "whatsapp"
steps = [ {{ say = "Hi! I need a cleaning", replies = {replies} }} ]

[[journeys]]
name = "missed call"
channel = "voice"
steps = [ {{ missed_call = true, replies = {replies} }} ]
"#
        ),
    )
    .unwrap();
    path
}

fn run(scenario: &std::path::Path, extra: &[&str]) -> (i32, Value) {
    let out = Command::new(loadtest())
        .arg("run")
        .arg("--scenario")
        .arg(scenario)
        .arg("--node")
        .arg(node())
        .args(["--quiet", "--json", "-"])
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = stdout
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| {
            panic!(
                "no JSON report: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let v: Value = serde_json::from_str(json).unwrap();
    (out.status.code().unwrap_or(-1), v["reports"][0].clone())
}

#[test]
fn a_small_run_counts_every_message_and_reply_once() {
    let dir = tempfile::tempdir().unwrap();
    let chart = dir.path().join("chart.svg");
    let (code, r) = run(
        &scenario(dir.path(), 1),
        &["--verify-all", "--chart", chart.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{r:#}");
    let sent = r["sent"].as_u64().unwrap();
    assert!(sent >= 40, "{r:#}");
    assert_eq!(r["acknowledged"], sent, "{r:#}");
    assert_eq!(r["replies"], sent, "one answer per message: {r:#}");
    assert_eq!(
        (r["lost"].as_u64(), r["duplicated"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(r["errors"], serde_json::json!({}));
    assert_eq!(r["verified"], r["journeys"], "--verify-all");
    assert_eq!(r["verify_failures"], serde_json::json!([]));
    assert!(
        r["latency"]["sms.reply"]["count"].as_u64().unwrap() > 0,
        "{r:#}"
    );
    assert!(r["latency"]["sms.reply"]["p99_ms"].as_f64().unwrap() > 0.0);
    // The node's own count moved by what was sent (voice steps are calls).
    let ingested = &r["node"]["threadline_messages_ingested_total"];
    let calls = r["latency"]["voice.ack"]["count"].as_u64().unwrap_or(0);
    assert_eq!(
        ingested["after"].as_f64().unwrap() - ingested["before"].as_f64().unwrap(),
        (sent - calls) as f64
    );
    assert!(std::fs::read_to_string(&chart).unwrap().starts_with("<svg"));
}

#[test]
fn replies_that_never_come_fail_the_run() {
    let dir = tempfile::tempdir().unwrap();
    // Each step waits for two answers; the flow gives one.
    let (code, r) = run(&scenario(dir.path(), 2), &["--messages", "6"]);
    assert_eq!(code, 1, "{r:#}");
    assert!(r["lost"].as_u64().unwrap() >= 6, "{r:#}");
    assert_eq!(r["passed"], false);
}

#[test]
fn callers_talking_to_the_voice_assistant_get_an_answer_each_turn() {
    let dir = tempfile::tempdir().unwrap();
    let flow = format!("{FLOWS}/dental.toml");
    let path = dir.path().join("voice.toml");
    std::fs::write(
        &path,
        format!(
            r#"
name = "voice"
flow = "{flow}"
voice_assistant = true
[load]
model = "closed"
customers = 4
messages = 12
[[journeys]]
name = "call"
channel = "voice"
steps = [
  {{ say = "Hi, I'd like to book a cleaning", replies = 1 }},
  {{ say = "Thursday at 3", replies = 1 }},
]
"#
        ),
    )
    .unwrap();
    let (code, r) = run(&path, &["--verify-all"]);
    assert_eq!(code, 0, "{r:#}");
    let sent = r["sent"].as_u64().unwrap();
    assert!(sent >= 12);
    assert_eq!(r["replies"], sent, "{r:#}");
    assert_eq!(r["latency"]["voice.speech.reply"]["count"], sent);
    assert_eq!(r["verify_failures"], serde_json::json!([]));
}
