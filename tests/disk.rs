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
async fn a_full_disk_answers_503_with_retry_after_and_unhealthy_and_loses_nothing_acknowledged() {
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

    // Space comes back; the node restarts on its data; everything it
    // acknowledged is there, once, in order, and it takes writes again.
    disk.grow(64);
    node.restart();
    assert_eq!(node.get_admin("/healthz").await.0, 200);
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
    let (s, v) = node
        .inbound("gw-acme", &sms("acme", &phone(0), "after", Some("after")))
        .await;
    assert_eq!(s, 202, "{v}");
    drop(node);
}
