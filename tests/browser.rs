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
    let Some((dir, chromium)) = browser() else {
        return;
    };
    let fake = FakeTwilio::start().await;
    let node = Node::start_with_config(&config(&fake.base), &[]);
    let shot = node.dir.path().join("agent-desktop.png");
    let (mut browser, _stdin, mut rx) = run_script(
        &dir,
        &chromium,
        "agent_desktop.mjs",
        &[
            node.base.as_ref(),
            "agent-sarah".as_ref(),
            REPLY.as_ref(),
            shot.as_ref(),
        ],
    );
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
    // The private note written in the page is an internal entry, never
    // sent.
    assert!(
        texts_where(&c, "delivery", "internal").contains(
            &"[private note from agent:sarah: Prefers mornings, allergic to latex]".to_owned()
        ),
        "{c}"
    );
    assert!(!fake
        .accepted_bodies()
        .iter()
        .any(|b| b.contains("allergic")));
    // Kept for people to look at: target/agent-desktop.png.
    let keep = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/agent-desktop.png");
    let _ = std::fs::copy(&shot, keep);
}

/// The scripts' folder and chromium, when both are there; otherwise the
/// test is skipped (or fails, in CI: `THREADLINE_BROWSER_TESTS=require`).
fn browser() -> Option<(std::path::PathBuf, String)> {
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
        return None;
    }
    Some((dir, chromium))
}

/// A node on a fixed port, so a restarted one is found where the page
/// left it.
fn node_on(port: u16, dir: &Path) -> std::process::Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_threadline"))
        .arg("serve")
        .arg("--config")
        .arg(dir.join("threadline.toml"))
        .args(["--http", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(dir.join("data"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let mut lines = BufReader::new(out).lines();
    loop {
        let l = lines
            .next()
            .expect("the node says where it listens")
            .unwrap();
        if l.starts_with("threadline listening on") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    child
}

/// A chat message typed while the node restarts is kept by the page (also
/// when the customer closes the tab and comes back) and arrives once the
/// node is back, exactly once; the socket is told to go away (1001) when
/// the node drains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_message_typed_during_a_restart_arrives_once() {
    let Some((scripts, chromium)) = browser() else {
        return;
    };
    let (dir, port, base, mut node) = restartable_node();
    let shot = dir.path().join("chat.png");
    let (mut page, mut to_page, mut rx) = run_script(
        &scripts,
        &chromium,
        "chat_resend.mjs",
        &[base.as_ref(), shot.as_ref()],
    );
    let visitor = expect(&mut rx, "VISITOR").await;
    let visitor = visitor.trim_start_matches("VISITOR ").to_owned();
    expect(&mut rx, "READY").await;
    // A graceful stop: the page's socket is closed with 1001.
    unsafe { libc::kill(node.id() as i32, libc::SIGTERM) };
    assert!(node.wait().unwrap().success());
    use std::io::Write;
    writeln!(to_page, "DOWN").unwrap();
    expect(&mut rx, "SENT").await;
    assert_eq!(
        expect(&mut rx, "CLOSED").await,
        "CLOSED 1001",
        "a draining node tells the page to go away and come back"
    );
    let mut node = node_on(port, dir.path());
    writeln!(to_page, "UP").unwrap();
    let log = expect(&mut rx, "LOG").await;
    expect(&mut rx, "DONE").await;
    drop(to_page);
    assert!(page.wait().unwrap().success());
    assert!(log.contains("during the restart"), "{log}");
    let c: serde_json::Value = reqwest::Client::new()
        .get(format!(
            "{base}/api/v1/tenants/acme/contacts/{visitor}/conversation"
        ))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let said = texts_where(&c, "author", "customer");
    assert_eq!(said, ["before the restart", "during the restart"], "{c}");
    let _ = std::fs::copy(
        &shot,
        Path::new(env!("CARGO_MANIFEST_DIR")).join("target/chat-restart.png"),
    );
    let _ = node.kill();
    let _ = node.wait();
}

/// The desktop refuses a wrong token on its sign-in screen, and keeps the
/// agent's chosen status across a node restart: the next customer who
/// asks for a person is offered to them (the node forgets presence when
/// it restarts; the desktop tells it again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_desktop_keeps_the_agents_status_across_a_restart() {
    let Some((scripts, chromium)) = browser() else {
        return;
    };
    let (dir, port, base, mut node) = restartable_node();
    let shot = dir.path().join("desktop.png");
    let (mut page, mut to_page, mut rx) = run_script(
        &scripts,
        &chromium,
        "agent_restart.mjs",
        &[base.as_ref(), "agent-sarah".as_ref(), shot.as_ref()],
    );
    let refused = expect(&mut rx, "REFUSED").await;
    assert!(refused.contains("Sign-in failed"), "{refused}");
    expect(&mut rx, "READY").await;
    unsafe { libc::kill(node.id() as i32, libc::SIGTERM) };
    assert!(node.wait().unwrap().success());
    let mut node = node_on(port, dir.path());
    use std::io::Write;
    writeln!(to_page, "UP").unwrap();
    expect(&mut rx, "BACK").await;
    let r = reqwest::Client::new()
        .post(format!("{base}/api/v1/inbound"))
        .bearer_auth("gw-acme")
        .json(&sms(
            "acme",
            "+15551230002",
            "Can I talk to a person?",
            Some("r1"),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let offer = expect(&mut rx, "OFFER").await;
    assert!(offer.contains("Can I talk to a person?"), "{offer}");
    expect(&mut rx, "DONE").await;
    drop(to_page);
    assert!(page.wait().unwrap().success());
    let _ = std::fs::copy(
        &shot,
        Path::new(env!("CARGO_MANIFEST_DIR")).join("target/desktop-restart.png"),
    );
    let _ = node.kill();
    let _ = node.wait();
}

/// Runs the browser script `name` with `args`: its stdin, and its stdout
/// lines as they come.
fn run_script(
    scripts: &Path,
    chromium: &str,
    name: &str,
    args: &[&std::ffi::OsStr],
) -> (
    std::process::Child,
    std::process::ChildStdin,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let mut child = Command::new("node")
        .arg(scripts.join(name))
        .args(args)
        .env("CHROMIUM", chromium)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node runs");
    let stdin = child.stdin.take().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (child, stdin, rx)
}

/// A node on a free port it keeps across restarts (`node_on`), with this
/// file's config: its folder, port and base URL.
fn restartable_node() -> (tempfile::TempDir, u16, String, std::process::Child) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("threadline.toml"),
        config("http://127.0.0.1:9"),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let node = node_on(port, dir.path());
    (dir, port, format!("http://127.0.0.1:{port}"), node)
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

/// The business's inbox: every conversation of three channels listed,
/// one opened from the keyboard with its thread, a new customer appearing
/// live, the waiting filter, and the page usable at 390 px (no sideways
/// scrolling). Screenshots kept in target/inbox-1366.png and
/// target/inbox-390.png.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbox_lists_every_conversation_and_updates_live() {
    let Some((dir, chromium)) = browser() else {
        return;
    };
    let fake = FakeTwilio::start().await;
    let node = Node::start_with_config(&config(&fake.base), &[]);
    for (channel, from, text) in [
        ("sms", "+15551230071", "Hi, do you do renters insurance?"),
        ("whatsapp", "+15551230072", "Hello from WhatsApp"),
        ("webchat", "visitor-73", "Can I talk to a person?"),
    ] {
        let mut m = sms("acme", from, text, None);
        m["channel"] = serde_json::json!(channel);
        let (s, v) = node.inbound("gw-acme", &m).await;
        assert_eq!(s, 202, "{v}");
    }
    let wide = node.dir.path().join("inbox-1366.png");
    let narrow = node.dir.path().join("inbox-390.png");
    let (mut browser, _stdin, mut rx) = run_script(
        &dir,
        &chromium,
        "inbox.mjs",
        &[
            node.base.as_ref(),
            "test-admin-token".as_ref(),
            "acme".as_ref(),
            wide.as_ref(),
            narrow.as_ref(),
        ],
    );
    let list = expect(&mut rx, "LIST").await;
    for who in ["+15551230071", "+15551230072", "visitor-73"] {
        assert!(list.contains(who), "{list}");
    }
    let thread = expect(&mut rx, "THREAD").await;
    assert!(
        thread.contains("Can I talk to a person?"),
        "the newest first: {thread}"
    );
    assert!(
        thread.contains("[handed to a person: the customer asked for a person]"),
        "the business sees why: {thread}"
    );
    expect(&mut rx, "READY").await;
    let (s, _) = node
        .inbound(
            "gw-acme",
            &sms("acme", "+15551230074", "Is anyone there?", None),
        )
        .await;
    assert_eq!(s, 202);
    let live = expect(&mut rx, "LIVE").await;
    assert!(
        live.starts_with("LIVE +15551230074"),
        "the newest on top: {live}"
    );
    let waiting = expect(&mut rx, "WAITING").await;
    assert_eq!(waiting, "WAITING visitor-73");
    let width = expect(&mut rx, "NARROW").await;
    assert!(
        width["NARROW ".len()..].parse::<u32>().unwrap() <= 390,
        "no sideways scrolling at 390 px: {width}"
    );
    expect(&mut rx, "DONE").await;
    assert!(browser.wait().unwrap().success());
    for (shot, keep) in [
        (&wide, "target/inbox-1366.png"),
        (&narrow, "target/inbox-390.png"),
    ] {
        let _ = std::fs::copy(shot, Path::new(env!("CARGO_MANIFEST_DIR")).join(keep));
    }
}
