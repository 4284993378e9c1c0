//! A full disk, for real: the node's data directory is a small tmpfs
//! (the test mounts one; where the machine does not allow it, it says so
//! and checks nothing).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// A tmpfs of `mb` MiB at `at`, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, mb: u32) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(at.to_owned()))
    }

    fn grow(&self, mb: u32) {
        let s = Command::new("mount")
            .args(["-o", &format!("remount,size={mb}m")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(s.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_503_with_retry_after_heals_when_space_returns_and_loses_nothing_acknowledged(
) {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = Tmpfs::mount(&dir.path().join("data"), 4) else {
        eprintln!("skipped: this machine does not let the test mount a tmpfs");
        return;
    };
    let mut node = Node::start_in(dir, CONFIG, &[]);
    let text = "x".repeat(4000);
    let mut acked: Vec<(usize, String)> = Vec::new();
    let mut refused = None;
    for i in 0..20_000 {
        let pid = format!("d{i}");
        let r = node
            .http
            .post(node.url("/api/v1/inbound"))
            .bearer_auth("gw-acme")
            .json(&sms("acme", &phone(i % 10), &text, Some(&pid)))
            .send()
            .await
            .unwrap();
        if r.status() == 202 {
            acked.push((i % 10, pid));
            continue;
        }
        refused = Some(r);
        break;
    }
    let r = refused.expect("the disk filled up");
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "storage_failed", "{body}");
    assert!(acked.len() > 100, "it took writes until the disk was full");
    // Liveness and readiness say so: a supervisor restarts the node.
    assert_eq!(node.get_admin("/healthz").await.0, 503);
    assert_eq!(node.get_admin("/readyz").await.0, 503);

    // Space comes back: without a restart, the node opens its data again
    // and takes writes (503 with Retry-After until then).
    disk.grow(64);
    let mut healed = None;
    let mut last = serde_json::Value::Null;
    for attempt in 0..200 {
        let pid = format!("healed{attempt}");
        let (s, v) = node
            .inbound(
                "gw-acme",
                &sms("acme", &phone(1), "space is back", Some(&pid)),
            )
            .await;
        if s == 202 {
            healed = Some(pid);
            break;
        }
        assert_eq!(s, 503, "{v}");
        last = v;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let healed = healed.unwrap_or_else(|| {
        panic!(
            "writes are taken again once space returns: {last} {}",
            node.stderr()
                .lines()
                .rev()
                .take(30)
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    acked.push((1, healed));
    assert_eq!(node.get_admin("/healthz").await.0, 200);
    assert_eq!(node.get_admin("/readyz").await.0, 200);
    // Everything it acknowledged is there, once, in order; and again
    // after a restart on its data.
    all_there(&node, &acked).await;
    node.restart();
    assert_eq!(node.get_admin("/healthz").await.0, 200);
    all_there(&node, &acked).await;
    let (s, v) = node
        .inbound("gw-acme", &sms("acme", &phone(0), "after", Some("after")))
        .await;
    assert_eq!(s, 202, "{v}");
    drop(node);
}

/// Every message `acked` says the node acknowledged is in its customer's
/// conversation, once, in order.
async fn all_there(node: &Node, acked: &[(usize, String)]) {
    for c in 0..10 {
        let conv = node.conversation_of("acme", &phone(c)).await.unwrap();
        let got: Vec<String> = conv["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["provider_message_id"].as_str().map(str::to_owned))
            .collect();
        let want: Vec<String> = acked
            .iter()
            .filter(|(k, _)| *k == c)
            .map(|(_, p)| p.clone())
            .collect();
        assert_eq!(got, want, "customer {c}");
    }
}

/// Replaces every occurrence of `from` in `file` with `to` (same length).
fn damage(file: &Path, from: &[u8], to: &[u8]) -> usize {
    let mut bytes = std::fs::read(file).unwrap();
    let mut n = 0;
    let mut i = 0;
    while let Some(at) = bytes[i..].windows(from.len()).position(|w| w == from) {
        bytes[i + at..i + at + to.len()].copy_from_slice(to);
        i += at + from.len();
        n += 1;
    }
    std::fs::write(file, bytes).unwrap();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_records_are_found_logged_and_stop_the_node_acknowledging_writes() {
    let mut node = Node::start(&[]);
    let (s, v) = node
        .inbound(
            "gw-acme",
            &sms("acme", &phone(1), "my code is ZEBRA-7731", Some("a-1")),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let damaged_conv = v["conversation_id"].as_str().unwrap().to_owned();
    let (s, _) = node
        .inbound("gw-acme", &sms("acme", &phone(2), "hello", Some("b-1")))
        .await;
    assert_eq!(s, 202);
    assert!(node.sigterm().success());
    // A byte of the stored text changes on disk.
    let file = node.dir.path().join("data").join("threadline.redb");
    assert!(damage(&file, b"ZEBRA-7731", b"ZEBRA-7732") > 0);

    node.restart();
    // Found at open, logged with the conversation, and the node is not
    // ready: it acknowledges nothing more into this database.
    assert!(
        node.stderr().contains("damaged record found at open"),
        "{}",
        node.stderr()
    );
    assert!(node.stderr().contains(&damaged_conv), "{}", node.stderr());
    let (s, ready) = node.get_admin("/readyz").await;
    assert_eq!(
        (s, &ready["intact"]),
        (503, &serde_json::json!(false)),
        "{ready}"
    );
    let (s, v) = node
        .inbound("gw-acme", &sms("acme", &phone(2), "again", Some("b-2")))
        .await;
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["error"]["code"], "storage_failed");
    // The other contact's history still reads.
    let other = node.conversation_of("acme", &phone(2)).await.unwrap();
    assert_eq!(texts(&other), ["hello"]);

    // On demand, with the node stopped: the damaged records by conversation.
    assert!(node.sigterm().success());
    let out = Command::new(env!("CARGO_BIN_EXE_threadline"))
        .args(["check-data", "--data-dir"])
        .arg(node.dir.path().join("data"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains(&damaged_conv), "{listed}");
}
