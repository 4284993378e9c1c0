//! Test harness: runs the real `threadline` binary on a free loopback port
//! with a temporary data directory, and talks to it over HTTP.
//!
//! # What the end-to-end tests cover
//!
//! End-to-end tests that start the real binary on a free port with a temp
//! data directory (`tests/common/mod.rs`): durability under SIGKILL, dedup
//! across restarts, ordering, panic isolation and dead letters, passivation,
//! drain, bad input, config errors, a backup taken under writes and restored,
//! per-source rate limits, HTTPS and WSS (`foundation.rs`); tenant isolation
//! and token separation as attacks: every admin path with every other kind of
//! token, a gateway for another tenant, one number or visitor id with two
//! tenants (`isolation.rs`); the load tester's crash run against the binary,
//! 50 random SIGKILLs under load with every acknowledged text stored once,
//! every decision sent once, every timer fired once and the audit chain
//! intact (`crash.rs`, `THREADLINE_CRASH_KILLS` for long runs); timers and
//! lifecycle on a simulated clock, across SIGKILL (`timers.rs`); keywords,
//! the gate, the consent API and the audit chain (`consent.rs`); delivery
//! through a fake Twilio server: retries, idempotency across SIGKILL, 21610,
//! withdrawal, WhatsApp templates (`senders.rs`); the gateways with webhooks
//! signed by an independent helper (`tests/common/webhooks.rs`, checked
//! against the published vectors): signatures, one conversation across SMS,
//! voice, WhatsApp and web chat, the voice assistant, status callbacks out of
//! order, bad input, outbound calls (`gateways.rs`); the agent pool over real
//! WebSockets: escalation to reply over SMS, offer timeout and rejection, the
//! reconnect grace, tenant isolation, the agents API (`agents.rs`); booking
//! and lead journeys with the example flows on simulated time (`flows.rs`);
//! the desktop page in headless chromium driven by Playwright (`browser.rs` +
//! `tests/browser/`, installed by `.ci/run`); clusters of separate node
//! processes on loopback: joins through a seed, a wrong cookie refused,
//! SIGSTOP detected and SIGCONT recovered, traffic to every node stored once
//! on its owner, a node SIGKILLed under load (its customers answered by the
//! others within 5 s, every acknowledged message there once, its timers
//! firing on the new owners, ownership moving back when it returns) and a
//! node hung under load and resumed (its stale copies fenced), an agent on
//! one node answering a conversation held on another through the pool's home,
//! and keeping it when the conversation's node dies and returns and when the
//! pool's node dies, a waiting customer keeping their place when the
//! conversation's node and the pool's die at once, a node back from down
//! catching up with the agent list, a SIGTERMed node handing its
//! conversations over, forgetting a removed node, a cluster with TLS links
//! and HTTPS listeners that refuses nodes of another CA or without TLS and
//! passes writes on between its nodes (`cluster.rs`); replica storage
//! verdicts, install and demote on a real redb file
//! (`actors/tests/replica.rs`).
#![allow(dead_code)]

pub mod fake_provider;
pub mod webhooks;
pub mod ws;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const ADMIN: &str = "test-admin-token";

pub const CONFIG: &str = r#"
[server]
admin_token = "test-admin-token"

[[tenants]]
id = "acme"
name = "Acme Dental"
timezone = "America/New_York"
sms_numbers = ["+15557654321"]
gateway_token = "gw-acme"

[[tenants]]
id = "beta"
name = "Beta Insurance"
timezone = "America/Chicago"
gateway_token = "gw-beta"
"#;

pub struct Node {
    pub dir: tempfile::TempDir,
    pub base: String,
    pub child: Child,
    pub extra: Vec<String>,
    pub http: reqwest::Client,
    stderr_log: PathBuf,
    /// The network namespace the node runs in and its address there
    /// (`None`: the host's, on 127.0.0.1).
    netns: Option<(String, String)>,
}

impl Node {
    pub fn start(extra: &[&str]) -> Node {
        Self::start_with_config(CONFIG, extra)
    }

    pub fn start_with_config(config: &str, extra: &[&str]) -> Node {
        Self::start_in(tempfile::tempdir().unwrap(), config, extra)
    }

    /// Starts a node in `dir` (its data in `dir/data`, which the caller
    /// may have prepared: a mount point, say).
    pub fn start_in(dir: tempfile::TempDir, config: &str, extra: &[&str]) -> Node {
        Self::start_at(dir, None, config, extra)
    }

    /// Starts a node inside network namespace `ns`, its HTTP server on
    /// `ip` (an address of that namespace the test reaches).
    pub fn start_in_netns(ns: &str, ip: &str, config: &str, extra: &[&str]) -> Node {
        let at = Some((ns.to_owned(), ip.to_owned()));
        Self::start_at(tempfile::tempdir().unwrap(), at, config, extra)
    }

    fn start_at(
        dir: tempfile::TempDir,
        netns: Option<(String, String)>,
        config: &str,
        extra: &[&str],
    ) -> Node {
        std::fs::write(dir.path().join("threadline.toml"), config).unwrap();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let (child, base, stderr_log) = spawn(dir.path(), netns.as_ref(), &extra);
        Node {
            netns,
            dir,
            base,
            child,
            extra,
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(128)
                .build()
                .unwrap(),
            stderr_log,
        }
    }

    /// Starts the node again on the same data directory.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let (child, base, log) = spawn(self.dir.path(), self.netns.as_ref(), &self.extra);
        self.child = child;
        self.base = base;
        self.stderr_log = log;
    }

    /// The node process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn sigkill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn sigterm(&mut self) -> ExitStatus {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "node did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything every run of the node on this data directory logged.
    pub fn all_stderr(&self) -> String {
        let mut logs: Vec<_> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().contains("stderr-"))
            .collect();
        logs.sort();
        logs.iter()
            .map(|p| {
                format!(
                    "--- {}\n{}",
                    p.display(),
                    std::fs::read_to_string(p).unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn inbound(&self, token: &str, body: &Value) -> (u16, Value) {
        let r = self
            .http
            .post(self.url("/api/v1/inbound"))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn send_admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut r = self.http.request(method, self.url(path)).bearer_auth(ADMIN);
        if let Some(b) = body {
            r = r.json(b);
        }
        let r = r.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Moves the simulated clock; returns once everything due was handled.
    pub async fn advance(&self, seconds: f64) -> Value {
        let (s, v) = self
            .send_admin(
                reqwest::Method::POST,
                "/api/v1/clock/advance",
                Some(&json!({ "seconds": seconds })),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        v
    }

    pub async fn get_admin(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(self.url(path))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn conversation_of(&self, tenant: &str, address: &str) -> Option<Value> {
        let enc = address.replace('+', "%2B");
        let (s, v) = self
            .get_admin(&format!(
                "/api/v1/tenants/{tenant}/contacts/{enc}/conversation"
            ))
            .await;
        match s {
            200 => Some(v),
            404 => None,
            other => panic!("unexpected {other}: {v}"),
        }
    }

    pub async fn metric(&self, name: &str) -> f64 {
        let text = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                (k == name).then(|| v.parse().unwrap())
            })
            .unwrap_or_else(|| panic!("metric {name} missing"))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `threadline serve` on `dir`, in `netns` (namespace, address)
/// when given: `ip netns exec` enters it and execs the node, so the child's
/// pid is the node's.
fn spawn(
    dir: &Path,
    netns: Option<&(String, String)>,
    extra: &[String],
) -> (Child, String, PathBuf) {
    let log = dir.join(format!(
        "stderr-{}.log",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let node = env!("CARGO_BIN_EXE_threadline");
    let (mut command, http) = match netns {
        None => (Command::new(node), "127.0.0.1:0".to_owned()),
        Some((ns, ip)) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, node]);
            (c, format!("{ip}:0"))
        }
    };
    let mut child = command
        .arg("serve")
        .arg("--config")
        .arg(dir.join("threadline.toml"))
        .args(["--http", &http, "--data-dir"])
        .arg(dir.join("data"))
        .args(extra)
        .env(
            "RUST_LOG",
            // A test may set its node's filter in `dir/log-filter`.
            std::fs::read_to_string(dir.join("log-filter"))
                .or_else(|_| std::env::var("THREADLINE_TEST_LOG"))
                .unwrap_or_else(|_| "warn,threadline_actors::cluster=info".into()),
        )
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("starting threadline");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let base = loop {
        match lines.next() {
            Some(Ok(l)) => {
                if let Some(addr) = l.strip_prefix("threadline listening on ") {
                    break addr.trim().to_owned();
                }
            }
            _ => panic!(
                "node exited before listening: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            ),
        }
    };
    // Keep draining stdout so the node never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, base, log)
}

/// `CONFIG` with `extra` keys in its `[server]` section.
pub fn config_with_server(extra: &str) -> String {
    CONFIG.replacen(
        "admin_token = \"test-admin-token\"",
        &format!("admin_token = \"test-admin-token\"\n{extra}"),
        1,
    )
}

pub fn sms(tenant: &str, from: &str, text: &str, pid: Option<&str>) -> Value {
    let mut v = json!({
        "tenant": tenant, "channel": "sms", "from": from,
        "to": "+15557654321", "text": text,
    });
    if let Some(p) = pid {
        v["provider_message_id"] = json!(p);
    }
    v
}

/// `+1555` followed by 7 digits from `n`.
pub fn phone(n: usize) -> String {
    format!("+1555{:07}", n)
}

/// Texts of the conversation's messages whose `field` equals `value`.
pub fn texts_where(conv: &Value, field: &str, value: &str) -> Vec<String> {
    conv["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m[field] == value)
        .map(|m| m["text"].as_str().unwrap().to_owned())
        .collect()
}

pub fn texts(conv: &Value) -> Vec<String> {
    conv["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_owned())
        .collect()
}

/// The tenant acme's audit export (`query`: `?contact=…`, `?since=…`).
pub async fn audit_export(node: &Node, query: &str) -> String {
    tenant_audit(node, "acme", query).await
}

/// A tenant's audit export.
pub async fn tenant_audit(node: &Node, tenant: &str, query: &str) -> String {
    let r = node
        .http
        .get(node.url(&format!("/api/v1/tenants/{tenant}/audit{query}")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    r.text().await.unwrap()
}

/// `threadline audit verify` of `text`, written to `dir/name`.
pub fn audit_verify(dir: &std::path::Path, name: &str, text: &str) -> std::process::Output {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_threadline"))
        .args(["audit", "verify"])
        .arg(&path)
        .output()
        .unwrap()
}

/// The web-chat verification code last texted to `phone` (read from its
/// conversation, as the customer would read their SMS).
pub async fn chat_code(node: &Node, tenant: &str, phone: &str) -> String {
    let c = node
        .conversation_of(tenant, phone)
        .await
        .unwrap_or_else(|| panic!("{phone} has no conversation"));
    let text = c["messages"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .filter_map(|m| m["text"].as_str())
        .find(|t| t.contains("web chat code is "))
        .unwrap_or_else(|| panic!("no code was texted to {phone}: {c}"))
        .to_owned();
    let after = text.split("web chat code is ").nth(1).unwrap();
    after[..6].to_owned()
}
