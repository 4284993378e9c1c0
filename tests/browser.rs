//! The agent desktop in a real browser: headless Debian chromium, driven by
//! Playwright (`tests/browser/agent_desktop.mjs`), signs in, accepts an
//! offer for a customer who asked for a person, and replies; the reply
//! reaches the fake Twilio server. `.ci/run` installs chromium and
//! playwright-core and sets `THREADLINE_BROWSER_TESTS=require`, so in CI a
//! missing browser fails the test; on a machine with only the Rust
//! toolchain it says it was skipped.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::fake_provider::{FakeTwilio, SID, TOKEN};
use common::*;

const REPLY: &str = "Hi Jordan, I can help you bundle home and auto today.";

fn config(twilio: &str) -> String {
    format!(
        r#"
[server]
admin_token = "test-admin-token"

[providers]
retry_base_ms = 10

[providers.twilio]
account_sid = "{SID}"
auth_token = "{TOKEN}"
api_base = "{twilio}"

[[tenants]]
id = "acme"
name = "Acme Insurance"
timezone = "America/New_York"
sms_numbers = ["+15557654321"]
gateway_token = "gw-acme"

[[agents]]
id = "sarah"
name = "Sarah"
token = "agent-sarah"
tenants = ["acme"]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_accepts_an_offer_and_replies_in_the_desktop_page() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let ready = Path::new(&chromium).exists() && dir.join("node_modules/playwright-core").exists();
    if !ready {
        assert_ne!(
            std::env::var("THREADLINE_BROWSER_TESTS").as_deref(),
            Ok("require"),
            "the browser test needs {chromium} and `npm ci --prefix tests/browser` (.ci/run installs both)"
        );
        eprintln!(
            "SKIPPED: no {chromium} or tests/browser/node_modules (run .ci/run to install them)"
        );
        return;
    }
    let fake = FakeTwilio::start().await;
    let node = Node::start_with_config(&config(&fake.base), &[]);
    let shot = node.dir.path().join("agent-desktop.png");
    let mut browser = Command::new("node")
        .arg(dir.join("agent_desktop.mjs"))
        .args([&node.base, "agent-sarah", REPLY])
        .arg(&shot)
        .env("CHROMIUM", &chromium)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node runs");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let out = browser.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    expect(&mut rx, "READY").await;
    let (s, v) = node
        .inbound(
            "gw-acme",
            &sms(
                "acme",
                "+15551230001",
                "Moving soon, I want to bundle home and auto",
                Some("b1"),
            ),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    node.inbound(
        "gw-acme",
        &sms(
            "acme",
            "+15551230001",
            "Can I talk to a person?",
            Some("b2"),
        ),
    )
    .await;
    let offer = expect(&mut rx, "OFFER").await;
    assert!(offer.contains("Can I talk to a person?"), "{offer}");
    let transcript = expect(&mut rx, "TRANSCRIPT").await;
    assert!(transcript.contains("bundle home and auto"), "{transcript}");
    expect(&mut rx, "DONE").await;
    assert!(browser.wait().unwrap().success());
    let mut delivered = false;
    for _ in 0..500 {
        if fake.accepted_bodies().iter().any(|b| b == REPLY) {
            delivered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(delivered, "the reply reached the fake Twilio server");
    let c = node.conversation_of("acme", "+15551230001").await.unwrap();
    assert_eq!(texts_where(&c, "author", "agent:sarah"), vec![REPLY]);
    // Kept for people to look at: target/agent-desktop.png.
    let keep = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/agent-desktop.png");
    let _ = std::fs::copy(&shot, keep);
}

/// The browser script's next line starting with `what`.
async fn expect(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>, what: &str) -> String {
    loop {
        let line = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("the browser never said {what}"))
            .unwrap_or_else(|| panic!("the browser script ended before {what}"));
        if line.starts_with(what) {
            return line;
        }
    }
}
