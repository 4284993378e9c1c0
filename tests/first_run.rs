//! A newcomer's first run: the README's two commands start a development
//! node that converses. This runs the messages of the README's "Try it"
//! against `serve` with no --config and checks the bot's replies, from the
//! first message to a confirmed booking.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

struct DevNode {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Drop for DevNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `threadline serve` with no --config, started in an empty directory (its
/// data goes to ./data there, as on a fresh checkout).
fn dev_node() -> DevNode {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_threadline"))
        .args(["serve", "--http", "127.0.0.1:0"])
        .current_dir(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting threadline");
    let mut banner = String::new();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let base = loop {
        let line = lines.next().expect("the node printed its address").unwrap();
        banner.push_str(&line);
        banner.push('\n');
        if let Some(url) = line.strip_prefix("threadline listening on ") {
            break url.trim().to_owned();
        }
    };
    assert!(
        banner.contains("running the dental example flow"),
        "the banner says which flow the dev node runs:\n{banner}"
    );
    DevNode {
        child,
        base,
        _dir: dir,
    }
}

/// The JSON bodies of the README's "Try it" posts to /api/v1/inbound, in
/// order.
fn readme_messages() -> Vec<Value> {
    let readme = include_str!("../README.md");
    let start = readme
        .find("## Try it")
        .expect("README has a Try it section");
    let section = &readme[start..];
    let section = &section[..section[3..].find("\n##").map_or(section.len(), |e| e + 3)];
    let mut out = Vec::new();
    for block in section.split("curl ").skip(1) {
        if !block.contains("/api/v1/inbound") {
            continue;
        }
        let body = block.split("-d '").nth(1).expect("a -d body");
        let body = &body[..body.find('\'').expect("the body's closing quote")];
        out.push(serde_json::from_str(body).expect("the README's body is JSON"));
    }
    out
}

async fn bot_replies(http: &reqwest::Client, base: &str, id: &str) -> Vec<String> {
    let v: Value = http
        .get(format!("{base}/api/v1/conversations/{id}"))
        .bearer_auth("dev-admin-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["author"] == "bot")
        .map(|m| m["text"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_readme_first_message_gets_the_bots_reply_and_books_to_confirmation() {
    let node = dev_node();
    let http = reqwest::Client::new();
    let messages = readme_messages();
    assert_eq!(messages.len(), 3, "the README's three messages");
    assert_eq!(messages[0]["text"], "Hi, I need a cleaning next week");

    let expected = [
        "What day and time work best for you?",
        "Reply C to confirm or R for another time.",
        "You're confirmed for",
    ];
    let mut id = String::new();
    for (i, (msg, want)) in messages.iter().zip(expected).enumerate() {
        let r = http
            .post(format!("{}/api/v1/inbound", node.base))
            .bearer_auth("gw-demo")
            .json(msg)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "message {i} accepted");
        let v: Value = r.json().await.unwrap();
        id = v["conversation_id"].as_str().unwrap().to_owned();
        // The reply follows the acknowledgement; wait for it (bounded).
        let deadline = Instant::now() + Duration::from_secs(10);
        let replies = loop {
            let replies = bot_replies(&http, &node.base, &id).await;
            if replies.len() > i || Instant::now() > deadline {
                break replies;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(replies.len(), i + 1, "one reply per message: {replies:?}");
        assert!(
            replies[i].contains(want),
            "reply {i} is {:?}, expected it to contain {want:?}",
            replies[i]
        );
    }
    let v: Value = http
        .get(format!("{}/api/v1/conversations/{id}", node.base))
        .bearer_auth("dev-admin-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let reminders = v["timers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["kind"] == "reminder")
        .count();
    assert_eq!(reminders, 2, "the booking's two reminders: {v}");
}

#[test]
fn check_config_accepts_the_example_and_reports_every_error_of_a_broken_file() {
    let bin = env!("CARGO_BIN_EXE_threadline");
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/threadline.example.toml");
    let out = Command::new(bin)
        .args(["check-config", example])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        r#"[server]
admin_token = "short"
max_body_bytes = "64k"
bogus = 1

[[tenants]]
id = "acme"
timezone = "America/NewYork"
gateway_token = "gw-acme"
sms_numbers = ["555"]
"#,
    )
    .unwrap();
    let out = Command::new(bin)
        .arg("check-config")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for (line, key) in [
        (2, "server.admin_token"),
        (3, "server.max_body_bytes"),
        (4, "server.bogus"),
        (8, "tenants[0].timezone"),
        (10, "tenants[0].sms_numbers[0]"),
    ] {
        assert!(
            err.contains(&format!("line {line}: `{key}`")),
            "line {line} `{key}` reported:\n{err}"
        );
    }
    assert!(err.contains("5 problem(s) found"), "{err}");
}
