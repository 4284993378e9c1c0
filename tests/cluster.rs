//! Cluster membership with ractor_cluster, each node its own process on
//! loopback: nodes that share the cookie find each other through a seed
//! (transitively); a node with another cookie never joins.
//!
//! Over 800 lines on purpose: every file under `tests/` is its own test
//! binary, linked against the whole node, and the tests here share one
//! harness (node configs, waits, fake providers); one file per area keeps
//! CI's link time and that harness in one place. Each test reads alone.

mod common;

use std::time::Duration;

use common::fake_provider::{FakeTwilio, SID, TOKEN};
use common::webhooks::PUBLIC_URL;
use common::*;
use serde_json::{json, Value};

const COOKIE: &str = "test-cluster-cookie-0001";

/// The tests that put heavy load on the machine (the restart and nemesis
/// runs) take this exclusively, every other test shares it: on 2 cores a
/// heavy run beside another test starved that test's nodes of heartbeats
/// (it saw a join time out now and then), and the heavy runs measure
/// nothing for others' benefit.
static LOAD: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// A port for a node's cluster listener, below the kernel's ephemeral range
/// (32768 and up here): a port taken from that range and given back could
/// be handed to another process's `:0` socket (a node's HTTP listener in a
/// test running beside this one) before the node binds it, and the node
/// would then never join.
fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let seed = std::process::id()
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
    loop {
        let k = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = 20_000 + (seed.wrapping_add(k.wrapping_mul(7919)) % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn config(name: &str, port: u16, seeds: &[u16], cookie: &str) -> String {
    let seeds: Vec<String> = seeds.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    format!(
        "{CONFIG}\n[cluster]\nname = \"{name}\"\nlisten = \"127.0.0.1:{port}\"\nseeds = [{}]\ncookie = \"{cookie}\"\nheartbeat_ms = 300\nfailure_after_ms = 2000\n",
        seeds.join(", ")
    )
}

async fn cluster(node: &Node) -> Value {
    let (s, v) = node.get_admin("/api/v1/cluster").await;
    assert_eq!(s, 200, "{v}");
    v
}

fn names(v: &Value) -> Vec<String> {
    let mut n: Vec<String> = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_owned())
        .collect();
    n.sort();
    n
}

/// Polls `node`'s cluster view until `pred` holds; the view.
async fn until(node: &Node, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..300 {
        last = cluster(node).await;
        if pred(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("expected {what}, the node reports {last}");
}

/// Waits until `node` sees exactly `want` as its peers.
async fn sees(node: &Node, want: &[&str]) -> Value {
    until(node, &format!("peers {want:?}"), |v| names(v) == want).await
}

/// Waits until `node` counts exactly `want` as live (reachable) nodes.
async fn live(node: &Node, want: &[&str]) {
    let want = serde_json::json!(want);
    until(node, &format!("live {want}"), |v| v["live"] == want).await;
}

/// Waits until `node` reports peer `peer` as (un)healthy.
async fn healthy(node: &Node, peer: &str, want: bool) {
    until(node, &format!("{peer} healthy={want}"), |v| {
        v["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == peer && m["healthy"] == want)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_with_the_cookie_join_through_a_seed_and_a_wrong_cookie_never_does() {
    let _load = LOAD.read().await;
    let (p1, p2, p3, p4) = (free_port(), free_port(), free_port(), free_port());
    let n1 = Node::start_with_config(&config("n1", p1, &[], COOKIE), &[]);
    let n2 = Node::start_with_config(&config("n2", p2, &[p1], COOKIE), &[]);
    let n3 = Node::start_with_config(&config("n3", p3, &[p1], COOKIE), &[]);
    let intruder = Node::start_with_config(
        &config("intruder", p4, &[p1], "another-cookie-entirely"),
        &[],
    );
    let v = sees(&n1, &["n2", "n3"]).await;
    assert_eq!(v["mode"], "cluster");
    assert_eq!(v["node"], "n1");
    live(&n1, &["n1", "n2", "n3"]).await;
    // n2 and n3 only named n1, and found each other through it.
    sees(&n2, &["n1", "n3"]).await;
    sees(&n3, &["n1", "n2"]).await;
    // The intruder is refused: nobody lists it, it lists nobody, and it
    // says why.
    for _ in 0..100 {
        if intruder.stderr().contains("did not authenticate") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        intruder
            .stderr()
            .contains("did not authenticate: wrong cookie?"),
        "{}",
        intruder.stderr()
    );
    assert!(names(&cluster(&intruder).await).is_empty());
    assert_eq!(names(&cluster(&n1).await), ["n2", "n3"]);

    // A hung node (SIGSTOP: its sockets stay open) is found out by the
    // heartbeats within the failure time, and comes back on SIGCONT.
    let stopped = std::time::Instant::now();
    signal(&n3, libc::SIGSTOP);
    healthy(&n1, "n3", false).await;
    let noticed = stopped.elapsed();
    assert!(
        noticed < Duration::from_secs(5),
        "noticed after {noticed:?}"
    );
    let v = cluster(&n1).await;
    assert_eq!(v["live"], serde_json::json!(["n1", "n2"]), "{v}");
    signal(&n3, libc::SIGCONT);
    healthy(&n1, "n3", true).await;
    assert_eq!(
        cluster(&n1).await["live"],
        serde_json::json!(["n1", "n2", "n3"])
    );
    assert_eq!(
        names(&cluster(&n3).await),
        ["n1", "n2"],
        "one cluster, not two"
    );

    // A node that stops leaves the others' view.
    drop(n3);
    sees(&n1, &["n2"]).await;
    sees(&n2, &["n1"]).await;
}

fn signal(node: &Node, sig: i32) {
    unsafe {
        libc::kill(node.pid() as i32, sig);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_says_so_and_bad_cluster_config_names_the_key() {
    let _load = LOAD.read().await;
    let n = Node::start(&[]);
    let v = cluster(&n).await;
    assert_eq!(v["mode"], "single");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    for (bad, key) in [
        ("name = \"n 1\"\nlisten = \"127.0.0.1:7100\"\ncookie = \"0123456789abcdef\"", "cluster.name"),
        ("name = \"n1\"\nlisten = \"nowhere\"\ncookie = \"0123456789abcdef\"", "cluster.listen"),
        ("name = \"n1\"\nlisten = \"0.0.0.0:7100\"\ncookie = \"0123456789abcdef\"", "cluster.listen"),
        ("name = \"n1\"\nlisten = \"127.0.0.1:7100\"\nseeds = [\"x\"]\ncookie = \"0123456789abcdef\"", "cluster.seeds[0]"),
        ("name = \"n1\"\nlisten = \"127.0.0.1:7100\"\ncookie = \"short\"", "cluster.cookie"),
        ("name = \"n1\"\nlisten = \"127.0.0.1:7100\"\ncookie = \"0123456789abcdef\"\n[cluster.tls]\ncert_file = \"missing.pem\"\nkey_file = \"bad.toml\"\nca_file = \"bad.toml\"", "cluster.tls.cert_file"),
        ("name = \"n1\"\nlisten = \"127.0.0.1:7100\"\ncookie = \"0123456789abcdef\"\n[cluster.tls]\ncert_file = \"bad.toml\"\nkey_file = \"bad.toml\"\nca_file = \"bad.toml\"\nserver_name = \"not a name\"", "cluster.tls.server_name"),
    ] {
        std::fs::write(&path, format!("{CONFIG}\n[cluster]\n{bad}\n")).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_threadline"))
            .arg("check-config")
            .arg(&path)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "{key}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_to_any_node_lands_in_one_conversation_on_its_owner() {
    let _load = LOAD.read().await;
    let (p1, p2, p3) = (free_port(), free_port(), free_port());
    let nodes = [
        Node::start_with_config(&config("n1", p1, &[], COOKIE), &[]),
        Node::start_with_config(&config("n2", p2, &[p1], COOKIE), &[]),
        Node::start_with_config(&config("n3", p3, &[p1], COOKIE), &[]),
    ];
    for n in &nodes {
        live(n, &["n1", "n2", "n3"]).await;
    }
    let contacts = 24;
    let mut acks = std::collections::HashMap::new();
    for c in 0..contacts {
        for m in 0..3 {
            // Each message of a customer reaches a different node.
            let node = &nodes[(c + m) % 3];
            let pid = format!("c{c}m{m}");
            let (s, v) = node
                .inbound(
                    "gw-acme",
                    &sms("acme", &phone(c), &format!("message {m}"), Some(&pid)),
                )
                .await;
            assert_eq!(s, 202, "{v}");
            acks.entry(c)
                .or_insert_with(Vec::new)
                .push(v["conversation_id"].clone());
        }
    }
    for c in 0..contacts {
        let ids = &acks[&c];
        assert!(
            ids.iter().all(|i| *i == ids[0]),
            "one conversation: {ids:?}"
        );
        // Any node answers with the owner's conversation, every message once.
        for n in &nodes {
            let conv = n.conversation_of("acme", &phone(c)).await.unwrap();
            assert_eq!(conv["id"], ids[0]);
            let mut pids: Vec<String> = conv["messages"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|m| m["provider_message_id"].as_str().map(str::to_owned))
                .collect();
            pids.sort();
            assert_eq!(
                pids,
                [format!("c{c}m0"), format!("c{c}m1"), format!("c{c}m2")]
            );
        }
    }
    // Ids are unique across the cluster, and any node reads one by id.
    let ids: std::collections::HashSet<String> = acks
        .values()
        .map(|v| v[0].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), contacts, "{ids:?}");
    for id in ids.iter().take(6) {
        for n in &nodes {
            let (s, v) = n.get_admin(&format!("/api/v1/conversations/{id}")).await;
            assert_eq!((s, v["id"].as_str()), (200, Some(id.as_str())), "{v}");
        }
    }
    // Each conversation lives on one node only, and every node owns some.
    let mut held = Vec::new();
    for n in &nodes {
        held.push(
            cluster(n).await["conversations"]["this_node"]
                .as_u64()
                .unwrap(),
        );
    }
    assert_eq!(held.iter().sum::<u64>(), contacts as u64, "{held:?}");
    // Any node reports every node's count.
    let by_node = cluster(&nodes[1]).await["conversations"]["by_node"].clone();
    assert_eq!(
        by_node,
        serde_json::json!({"n1": held[0], "n2": held[1], "n3": held[2]})
    );
    assert!(
        held.iter().all(|h| *h > 0),
        "every node owns some: {held:?}"
    );
    assert!(nodes[0].metric("threadline_cluster_forwarded_total").await > 0.0);
    // A retried webhook is a duplicate wherever it lands.
    let (s, v) = nodes[2]
        .inbound(
            "gw-acme",
            &sms("acme", &phone(0), "message 0", Some("c0m0")),
        )
        .await;
    assert_eq!((s, v["duplicate"].as_bool()), (202, Some(true)), "{v}");

    // Writes by conversation id work through any node: a timer set through
    // one node, cancelled through another, each passed on to the holder.
    let conv = acks[&0][0].as_str().unwrap().to_owned();
    let holder = holder_of(&nodes, &conv).await;
    let (s, v) = nodes[(holder + 1) % 3]
        .send_admin(
            reqwest::Method::POST,
            &format!("/api/v1/conversations/{conv}/timers"),
            Some(&json!({"in_seconds": 3600, "kind": "follow_up", "text": "through a peer"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let timer = v["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/timers/{timer}");
    let (s, v) = nodes[(holder + 2) % 3]
        .send_admin(reqwest::Method::DELETE, &path, None)
        .await;
    assert_eq!((s, v["cancelled"].as_bool()), (200, Some(true)), "{v}");
    let (s, _) = nodes[(holder + 1) % 3]
        .send_admin(reqwest::Method::DELETE, &path, None)
        .await;
    assert_eq!(s, 404, "cancelled once");
    let c = nodes[holder]
        .conversation_of("acme", &phone(0))
        .await
        .unwrap();
    assert!(
        c["timers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["id"].as_str() != Some(timer.as_str())),
        "{c}"
    );
}

/// `config` on a simulated clock (a weekday morning: follow-ups are sent).
fn sim_config(name: &str, port: u16, seeds: &[u16]) -> String {
    config(name, port, seeds, COOKIE)
}

const WEEKDAY_MORNING: &str = "2026-03-10T14:00:00Z";

/// The nodes the load goes to (changed while it runs).
type Targets = std::sync::Arc<std::sync::RwLock<Vec<(String, reqwest::Client)>>>;

fn targets(nodes: &[&Node]) -> Targets {
    std::sync::Arc::new(std::sync::RwLock::new(
        nodes
            .iter()
            .map(|n| (n.base.clone(), n.http.clone()))
            .collect(),
    ))
}

/// Every customer's acknowledged messages are in their conversation, in
/// order, once, as each of `nodes` reads it, in the conversation it was.
async fn nothing_lost(
    nodes: &[&Node],
    acked: &[Vec<(String, std::time::Instant)>],
    conv_of: &[String],
) {
    for (c, acked) in acked.iter().enumerate() {
        let mut want = vec![format!("c{c}")];
        want.extend(acked.iter().map(|(p, _)| p.clone()));
        for n in nodes {
            let conv = n.conversation_of("acme", &phone(c)).await.unwrap();
            assert_eq!(conv["id"].as_str(), Some(conv_of[c].as_str()));
            let got = pids(&conv);
            if got != want {
                let missing: Vec<&String> = want.iter().filter(|p| !got.contains(p)).collect();
                let extra: Vec<&String> = got.iter().filter(|p| !want.contains(p)).collect();
                let mut seen = std::collections::HashSet::new();
                let twice: Vec<&String> = got.iter().filter(|p| !seen.insert(*p)).collect();
                if let Some(dir) = std::env::var_os("THREADLINE_TEST_TRACE") {
                    for (i, n) in nodes.iter().enumerate() {
                        let _ = std::fs::write(
                            std::path::Path::new(&dir).join(format!("node{i}.log")),
                            n.all_stderr(),
                        );
                    }
                }
                let logs: Vec<String> = nodes
                    .iter()
                    .map(|n| {
                        n.stderr()
                            .lines()
                            .filter(|l| l.contains("conversation") || l.contains("peer"))
                            .map(|l| l.chars().take(300).collect::<String>())
                            .collect::<Vec<_>>()
                            .join("\n")
                    })
                    .collect();
                panic!(
                    "customer {c} (conversation {}) as node {} sees it: missing {missing:?} ({} of them), not acknowledged {extra:?}, twice {twice:?}; it has {got:?}\nlogs:\n{}",
                    conv_of[c],
                    n.base,
                    missing.len(),
                    logs.join("\n----\n")
                );
            }
        }
    }
}

/// Each of `victims` had a message acknowledged within 5 s of `since`.
fn went_on(
    victims: &[usize],
    acked: &[Vec<(String, std::time::Instant)>],
    since: std::time::Instant,
) {
    for c in victims {
        let first_after = acked[*c]
            .iter()
            .find(|(_, at)| *at > since)
            .map(|(_, at)| at.duration_since(since))
            .unwrap_or_else(|| panic!("customer {c} was never answered after the failure"));
        assert!(
            first_after < Duration::from_secs(5),
            "customer {c} waited {first_after:?}"
        );
    }
}

/// Starts three nodes on a simulated clock and `customers` conversations,
/// each with a follow-up timer set on its owner; the nodes, each
/// customer's owner (index) and conversation id.
async fn three_with_customers(customers: usize) -> ([Node; 3], Vec<usize>, Vec<String>) {
    let (p1, p2, p3) = (free_port(), free_port(), free_port());
    let sim = ["--simulated-clock", WEEKDAY_MORNING];
    let nodes = [
        Node::start_with_config(&sim_config("n1", p1, &[]), &sim),
        Node::start_with_config(&sim_config("n2", p2, &[p1]), &sim),
        Node::start_with_config(&sim_config("n3", p3, &[p1]), &sim),
    ];
    for n in &nodes {
        live(n, &["n1", "n2", "n3"]).await;
    }
    let mut owner_of = Vec::new();
    let mut conv_of = Vec::new();
    for c in 0..customers {
        let (s, v) = nodes[0]
            .inbound(
                "gw-acme",
                &sms("acme", &phone(c), "hello", Some(&format!("c{c}"))),
            )
            .await;
        assert_eq!(s, 202, "{v}");
        let conv = v["conversation_id"].as_str().unwrap().to_owned();
        // Set through any node: it is passed on to the owner, once.
        let path = format!("/api/v1/conversations/{conv}/timers");
        let timer =
            json!({"in_seconds": 60, "kind": "follow_up", "text": format!("follow-up {c}")});
        let (s, v) = nodes[c % 3]
            .send_admin(reqwest::Method::POST, &path, Some(&timer))
            .await;
        assert_eq!(s, 201, "{v}");
        owner_of.push(holder_of(&nodes, &conv).await);
        conv_of.push(conv);
    }
    (nodes, owner_of, conv_of)
}

/// Sends customer `c`'s messages through `nodes` in turn until `stop`,
/// each one again until it is acknowledged (as a provider retries);
/// returns (provider id, when it was acknowledged), in order.
async fn customer(
    nodes: Targets,
    c: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<(String, std::time::Instant)> {
    customer_giving_up_after(nodes, c, stop, Duration::from_secs(15)).await
}

/// `customer`, giving up on a node that has not answered in `patience`
/// (and sending the same message through the next).
async fn customer_giving_up_after(
    nodes: Targets,
    c: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    patience: Duration,
) -> Vec<(String, std::time::Instant)> {
    let mut acked = Vec::new();
    let mut k = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let pid = format!("c{c}k{k}");
        let body = sms("acme", &phone(c), &format!("message {k}"), Some(&pid));
        let mut attempt = 0;
        let first_try = std::time::Instant::now();
        loop {
            // Once the faults are over, a message refused everywhere for a
            // minute is a conversation held hostage: fail, never hang.
            assert!(
                !stop.load(std::sync::atomic::Ordering::Relaxed)
                    || first_try.elapsed() < Duration::from_secs(60),
                "customer {c}: message {pid} was refused by every node for a minute"
            );
            let (base, http) = {
                let n = nodes.read().unwrap();
                n[(c + k + attempt) % n.len()].clone()
            };
            attempt += 1;
            let r = http
                .post(format!("{base}/api/v1/inbound"))
                .bearer_auth("gw-acme")
                .timeout(patience)
                .json(&body)
                .send()
                .await;
            if matches!(&r, Ok(r) if r.status().as_u16() == 202) {
                if std::env::var_os("THREADLINE_TEST_TRACE").is_some() {
                    let body = r.unwrap().text().await.unwrap_or_default();
                    eprintln!(
                        "ack {pid} by {base} at {:?}: {body}",
                        std::time::SystemTime::now()
                    );
                }
                acked.push((pid.clone(), std::time::Instant::now()));
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        k += 1;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    acked
}

/// The provider ids in a conversation, in order.
fn pids(conv: &Value) -> Vec<String> {
    conv["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["provider_message_id"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_conversations_and_timers_continue_on_the_others_and_move_back() {
    let _load = LOAD.read().await;
    let customers = 18;
    let ([n1, n2, mut n3], owner_of, conv_of) = three_with_customers(customers).await;
    let victims: Vec<usize> = (0..customers).filter(|c| owner_of[*c] == 2).collect();
    assert!(!victims.is_empty(), "n3 owns some: {owner_of:?}");

    // Load through n1 and n2; n3 is killed in the middle of it.
    let through = targets(&[&n1, &n2]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..customers)
        .map(|c| tokio::spawn(customer(through.clone(), c, stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    n3.sigkill();
    let killed = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(6)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked = Vec::new();
    for l in load {
        acked.push(l.await.unwrap());
    }
    // Every customer of n3 went on within 5 s of the kill; nothing
    // acknowledged was lost, nothing is there twice, and the conversation
    // is the one it was.
    went_on(&victims, &acked, killed);
    nothing_lost(&[&n1, &n2], &acked, &conv_of).await;
    assert!(n1.metric("threadline_cluster_replicated_total").await > 0.0);
    let promoted = n1.metric("threadline_cluster_promoted_total").await
        + n2.metric("threadline_cluster_promoted_total").await;
    assert_eq!(promoted as usize, victims.len(), "each taken over once");

    // The timers of n3's conversations fire on their new owners, once.
    n1.advance(120.0).await;
    n2.advance(120.0).await;
    for c in 0..customers {
        let conv = n1.conversation_of("acme", &phone(c)).await.unwrap();
        let sent = texts_where(&conv, "direction", "outbound");
        let follow = format!("follow-up {c}");
        assert_eq!(
            sent.iter().filter(|t| **t == follow).count(),
            1,
            "customer {c}: {sent:?}"
        );
    }

    // n3 comes back: it catches up, its conversations move back to it, and
    // every node still reads each conversation whole, once.
    n3.restart();
    // At once, before its conversations are handed back, n3 reads them as
    // they are now, not as its own copy from before the crash (while it
    // is still joining it answers 503: it cannot tell yet).
    for c in &victims {
        let want: usize = acked[*c].len() + 1;
        let mut got = None;
        for _ in 0..400 {
            let (s, v) = n3
                .get_admin(&format!(
                    "/api/v1/tenants/acme/contacts/{}/conversation",
                    phone(*c).replace('+', "%2B")
                ))
                .await;
            match s {
                200 => {
                    got = Some(pids(&v).len());
                    break;
                }
                503 => tokio::time::sleep(Duration::from_millis(25)).await,
                other => panic!("{other}: {v}"),
            }
        }
        assert_eq!(got, Some(want), "customer {c} read through n3 at once");
    }
    for n in [&n1, &n2, &n3] {
        live(n, &["n1", "n2", "n3"]).await;
    }
    for c in &victims {
        owned_by(&[&n1, &n2, &n3], 2, &conv_of[*c]).await;
    }
    for c in 0..customers {
        let (s, v) = n3
            .inbound(
                "gw-acme",
                &sms("acme", &phone(c), "after", Some(&format!("after{c}"))),
            )
            .await;
        assert_eq!(s, 202, "{v}");
        assert_eq!(v["conversation_id"].as_str(), Some(conv_of[c].as_str()));
        acked[c].push((format!("after{c}"), std::time::Instant::now()));
    }
    nothing_lost(&[&n1, &n2, &n3], &acked, &conv_of).await;
}

/// Waits until `nodes[i]` holds conversation `conv` and no other node
/// does. (A node back from a crash still has its stale copy until the
/// conversation is handed back to it; the node that had it gives it up
/// only once the hand-back is installed.)
async fn owned_by(nodes: &[&Node], i: usize, conv: &str) {
    for _ in 0..200 {
        let mut holding = Vec::new();
        for n in nodes {
            holding.push(holds(n, conv).await);
        }
        if holding.iter().enumerate().all(|(j, h)| *h == (j == i)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{conv} never came to {} alone", nodes[i].base);
}

/// Which of `nodes` holds conversation `conv`.
async fn holder_of(nodes: &[Node], conv: &str) -> usize {
    let mut holder = None;
    for (i, n) in nodes.iter().enumerate() {
        if holds(n, conv).await {
            holder = Some(i);
        }
    }
    holder.expect("one node holds it")
}

/// Whether `node` itself holds conversation `conv`.
async fn holds(node: &Node, conv: &str) -> bool {
    let (s, v) = node
        .get_admin(&format!("/api/v1/cluster/conversations/{conv}"))
        .await;
    assert_eq!(s, 200, "{v}");
    v["here"].as_bool().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_nodes_conversations_continue_and_it_rejoins_without_two_owners() {
    let _load = LOAD.read().await;
    let customers = 18;
    let ([n1, n2, n3], owner_of, conv_of) = three_with_customers(customers).await;
    let victims: Vec<usize> = (0..customers).filter(|c| owner_of[*c] == 2).collect();
    assert!(!victims.is_empty(), "n3 owns some: {owner_of:?}");
    let through = targets(&[&n1, &n2]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..customers)
        .map(|c| tokio::spawn(customer(through.clone(), c, stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Hung, not dead: its sockets stay open and forwards to it hang.
    signal(&n3, libc::SIGSTOP);
    let stopped = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(6)).await;
    // Back, with its old copies in memory; the load now reaches it too.
    signal(&n3, libc::SIGCONT);
    through
        .write()
        .unwrap()
        .push((n3.base.clone(), n3.http.clone()));
    for n in [&n1, &n2, &n3] {
        live(n, &["n1", "n2", "n3"]).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked = Vec::new();
    for l in load {
        acked.push(l.await.unwrap());
    }
    went_on(&victims, &acked, stopped);
    for c in &victims {
        owned_by(&[&n1, &n2, &n3], 2, &conv_of[*c]).await;
    }
    nothing_lost(&[&n1, &n2, &n3], &acked, &conv_of).await;
}

const AGENTS: &str = r#"
[[agents]]
id = "sarah"
name = "Sarah"
token = "agent-sarah"
tenants = ["acme"]
skills = ["en"]
"#;

/// A node's config with an agent, in a cluster.
fn agent_config(name: &str, port: u16, seeds: &[u16]) -> String {
    config(name, port, seeds, COOKIE).replacen("\n[cluster]", &format!("{AGENTS}\n[cluster]"), 1)
}

/// Three nodes with an agent, on a weekday morning (business hours on
/// every clock), all live and agreed on the pool's home; the home's index.
async fn three_with_agents() -> (Vec<Node>, usize) {
    let (p1, p2, p3) = (free_port(), free_port(), free_port());
    let sim = ["--simulated-clock", WEEKDAY_MORNING];
    let nodes = vec![
        Node::start_with_config(&agent_config("n1", p1, &[]), &sim),
        Node::start_with_config(&agent_config("n2", p2, &[p1]), &sim),
        Node::start_with_config(&agent_config("n3", p3, &[p1]), &sim),
    ];
    let names = ["n1", "n2", "n3"];
    for n in &nodes {
        live(n, &names).await;
    }
    let home = agreed_home(&[&nodes[0], &nodes[1], &nodes[2]]).await;
    (nodes, names.iter().position(|n| *n == home).unwrap())
}

/// The agent pool's home as `node` sees it.
async fn pool_home(node: &Node) -> String {
    cluster(node).await["agent_pool"]["home"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Sends `body` to `node`'s gateway API until it is accepted (as a
/// provider retries).
async fn until_accepted(node: &Node, body: &Value) {
    let mut last = Value::Null;
    for _ in 0..150 {
        let (s, v) = node.inbound("gw-acme", body).await;
        if s == 202 {
            return;
        }
        last = v;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("never accepted: {last}");
}

/// The next `message` frame carrying `text` (her own messages come too).
async fn message_with(ws: &mut common::ws::Ws, text: &str) -> Value {
    for _ in 0..20 {
        let m = common::ws::next_of(ws, "message").await;
        if m["message"]["text"] == text {
            return m;
        }
    }
    panic!("no message {text:?}");
}

/// The pool's home once every one of `nodes` names the same.
async fn agreed_home(nodes: &[&Node]) -> String {
    let mut homes = Vec::new();
    for _ in 0..300 {
        homes.clear();
        for n in nodes {
            homes.push(pool_home(n).await);
        }
        if homes.iter().all(|h| *h == homes[0]) {
            return homes[0].clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the nodes name different pool homes: {homes:?}");
}

/// A desktop of `token` on `node`, once the node says hello.
async fn try_desktop(node: &Node, token: &str) -> Option<common::ws::Ws> {
    let url = node
        .url(&format!("/agent/ws?token={token}"))
        .replace("http://", "ws://");
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.ok()?;
    (common::ws::next_json(&mut ws).await["type"] == "hello").then_some(ws)
}

/// Frames until the socket closes; panics if it stays open for `secs`.
async fn closes_within(ws: &mut common::ws::Ws, secs: u64) {
    use futures_util::StreamExt;
    let until = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        match tokio::time::timeout_at(until, ws.next()).await {
            Err(_) => panic!("the desktop stayed connected for {secs} s"),
            Ok(None | Some(Err(_))) => return,
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_)))) => return,
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// Reads until a frame `pred` accepts; `None` if the socket closes first
/// (or stays quiet for 10 s).
async fn frame_where(ws: &mut common::ws::Ws, pred: impl Fn(&Value) -> bool) -> Option<Value> {
    use futures_util::StreamExt;
    loop {
        let f = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .ok()??
            .ok()?;
        if let tokio_tungstenite::tungstenite::Message::Text(t) = f {
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            if pred(&v) {
                return Some(v);
            }
        }
    }
}

/// Reads until an `assigned` frame for `conv`; `None` if the socket closes
/// first.
async fn assigned_again(ws: &mut common::ws::Ws, conv: &str) -> Option<Value> {
    frame_where(ws, |v| {
        v["type"] == "assigned" && v["conversation_id"] == conv
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_on_any_node_answers_conversations_held_elsewhere_and_keeps_them_when_the_pools_node_dies(
) {
    let _load = LOAD.read().await;
    use common::ws::{next_of, send_json};
    // Business hours on every node's clock: the agent's second message is
    // not a direct reply, and must not wait for the morning.
    let (mut nodes, h) = three_with_agents().await;
    let names = ["n1", "n2", "n3"];
    let home = names[h];
    // The desktop on a second node, the customer's conversation on the
    // third: every step crosses nodes.
    let (d, o) = ((h + 1) % 3, (h + 2) % 3);
    let first = "Hi, I'm Jordan. Moving next month, want to bundle home and auto";
    let (mut contact, mut conv) = (String::new(), String::new());
    for c in 0..60 {
        let pid = format!("j{c}");
        let (s, v) = nodes[h]
            .inbound("gw-acme", &sms("acme", &phone(c), first, Some(&pid)))
            .await;
        assert_eq!(s, 202, "{v}");
        let id = v["conversation_id"].as_str().unwrap().to_owned();
        if holder_of(&nodes, &id).await == o {
            (contact, conv) = (phone(c), id);
            break;
        }
    }
    assert!(
        !conv.is_empty(),
        "some customer's conversation is on {}",
        names[o]
    );

    // An agent made over the API on one node logs in on another.
    let lena = json!({"id": "lena", "name": "Lena", "token": "agent-lena", "tenants": ["acme"]});
    let (s, v) = nodes[o]
        .send_admin(reqwest::Method::POST, "/api/v1/agents", Some(&lena))
        .await;
    assert_eq!((s, &v["peers_failed"]), (201, &json!([])), "{v}");
    assert!(try_desktop(&nodes[d], "agent-lena").await.is_some());
    let mut sarah = try_desktop(&nodes[d], "agent-sarah").await.expect("hello");
    send_json(&mut sarah, json!({"type": "status", "status": "available"})).await;
    assert_eq!(next_of(&mut sarah, "status").await["status"], "available");
    // Every node's agents API shows her connected (the pool's view).
    for n in &nodes {
        let (s, v) = n.get_admin("/api/v1/agents").await;
        assert_eq!(s, 200, "{v}");
        let me = v["agents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["id"] == "sarah");
        assert_eq!(me.unwrap()["connected"], true, "{v}");
    }

    let (s, v) = nodes[d]
        .inbound(
            "gw-acme",
            &sms("acme", &contact, "Can I talk to a person?", Some("person")),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let offer = next_of(&mut sarah, "offer").await;
    assert_eq!(offer["conversation_id"], conv.as_str());
    let transcript: Vec<&str> = offer["transcript"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        transcript,
        [
            first,
            "Can I talk to a person?",
            "[handed to a person: the customer asked for a person]"
        ]
    );
    send_json(
        &mut sarah,
        json!({"type": "accept", "offer_id": offer["offer_id"]}),
    )
    .await;
    let assigned = next_of(&mut sarah, "assigned").await;
    assert_eq!(assigned["conversation_id"], conv.as_str());

    // The customer's next message, through the pool's node, reaches her live.
    let (s, _) = nodes[h]
        .inbound(
            "gw-acme",
            &sms("acme", &contact, "Are you there?", Some("there")),
        )
        .await;
    assert_eq!(s, 202);
    let live_msg = next_of(&mut sarah, "message").await;
    assert_eq!(live_msg["conversation_id"], conv.as_str());
    assert_eq!(live_msg["message"]["text"], "Are you there?");

    // Her answer goes through the gate on the node holding the conversation.
    let reply = "Hi Jordan, yes - bundling before the move works.";
    send_json(
        &mut sarah,
        json!({"type": "send", "conversation_id": conv, "text": reply}),
    )
    .await;
    assert_eq!(next_of(&mut sarah, "sent").await["decision"], "sent");
    for n in &nodes {
        let c = n.conversation_of("acme", &contact).await.unwrap();
        assert_eq!(c["assigned_agent"], "sarah", "{c}");
        assert_eq!(texts_where(&c, "author", "agent:sarah"), [reply]);
    }

    // The node holding the conversation dies: its replica takes over and
    // she keeps it. The customer's messages still reach her (once the
    // take-over is done: 503 until then, and the provider retries), and
    // her answers still go out.
    nodes[o].sigkill();
    until_accepted(&nodes[d], &sms("acme", &contact, "Hello?", Some("hello"))).await;
    message_with(&mut sarah, "Hello?").await;
    let reply2 = "Sorry - I'm here. Let's get the quote started.";
    send_json(
        &mut sarah,
        json!({"type": "send", "conversation_id": conv, "text": reply2}),
    )
    .await;
    assert_eq!(next_of(&mut sarah, "sent").await["decision"], "sent");
    // It comes back, and the conversation moves back to it, still hers.
    nodes[o].restart();
    for n in &nodes {
        live(n, &names).await;
    }
    owned_by(&[&nodes[0], &nodes[1], &nodes[2]], o, &conv).await;
    // The node back serves only once it knows where the pool is: the
    // first message it records reaches her desktop live.
    until_accepted(
        &nodes[h],
        &sms("acme", &contact, "Back again", Some("back")),
    )
    .await;
    message_with(&mut sarah, "Back again").await;
    assert_eq!(agreed_home(&[&nodes[0], &nodes[1], &nodes[2]]).await, home);

    // The pool's node dies: her desktop is dropped, and once it is back
    // the new home gives her the conversation she held.
    nodes[h].sigkill();
    closes_within(&mut sarah, 20).await;
    let rest: Vec<usize> = (0..3).filter(|i| *i != h).collect();
    let mut back = None;
    for _ in 0..40 {
        if let Some(mut ws) = try_desktop(&nodes[d], "agent-sarah").await {
            if assigned_again(&mut ws, &conv).await.is_some() {
                back = Some(ws);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut sarah = back.expect("the conversation comes back to her desktop");
    let survivors: Vec<&Node> = rest.iter().map(|i| &nodes[*i]).collect();
    let new_home = agreed_home(&survivors).await;
    assert_ne!(new_home, home);
    let again = "Still here - sending the bundle quote now.";
    send_json(
        &mut sarah,
        json!({"type": "send", "conversation_id": conv, "text": again}),
    )
    .await;
    assert_eq!(next_of(&mut sarah, "sent").await["decision"], "sent");
    send_json(
        &mut sarah,
        json!({"type": "close", "conversation_id": conv, "disposition": "quoted"}),
    )
    .await;
    let closed = next_of(&mut sarah, "conversation_closed").await;
    assert_eq!(closed["conversation_id"], conv.as_str());
    let c = nodes[o].conversation_of("acme", &contact).await.unwrap();
    assert_eq!(
        texts_where(&c, "author", "agent:sarah"),
        [reply, reply2, again]
    );
    assert_eq!(c["status"], "closed", "{c}");

    // The audit trail read from any node holds every live node's chain,
    // each record naming its node, and it verifies.
    let trail = audit_export(&nodes[d], "").await;
    let records: Vec<Value> = trail
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let decided: Vec<&Value> = records
        .iter()
        .filter(|r| r["contact"] == contact.as_str() && r["kind"] == "decision")
        .collect();
    let on: std::collections::BTreeSet<&str> = decided
        .iter()
        .map(|r| r["node"].as_str().unwrap())
        .collect();
    assert!(
        decided.len() >= 2 && on.len() >= 2,
        "decisions sealed on two nodes: {decided:?}"
    );
    let out = audit_verify(nodes[d].dir.path(), "audit.ndjson", &trail);
    assert!(out.status.success(), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_with_sigterm_hands_its_conversations_over_before_it_exits() {
    let _load = LOAD.read().await;
    let customers = 12;
    let (mut nodes, owner_of, conv_of) = three_with_customers(customers).await;
    let leavers: Vec<usize> = (0..customers).filter(|c| owner_of[*c] == 2).collect();
    assert!(!leavers.is_empty(), "n3 owns some: {owner_of:?}");
    let status = nodes[2].sigterm();
    assert!(status.success(), "{status:?}: {}", nodes[2].stderr());
    assert!(
        nodes[2].stderr().contains("handed a conversation over"),
        "{}",
        nodes[2].stderr()
    );
    assert!(!nodes[2].stderr().contains("left the cluster still holding"));
    let [n1, n2, _] = &nodes;
    // Nobody had to take one over from a replica: each was handed over,
    // with its transcript and its follow-up, and is answered at once.
    for n in [n1, n2] {
        assert_eq!(n.metric("threadline_cluster_promoted_total").await, 0.0);
    }
    for c in &leavers {
        let conv = &conv_of[*c];
        let on_n1 = holds(n1, conv).await;
        assert_ne!(on_n1, holds(n2, conv).await, "{conv} is on one node");
        let (s, v) = n1
            .inbound(
                "gw-acme",
                &sms(
                    "acme",
                    &phone(*c),
                    "still there?",
                    Some(&format!("after{c}")),
                ),
            )
            .await;
        assert_eq!(s, 202, "{v}");
        assert_eq!(v["conversation_id"], conv.as_str());
        let state = n2.conversation_of("acme", &phone(*c)).await.unwrap();
        assert_eq!(
            texts_where(&state, "direction", "inbound"),
            ["hello", "still there?"]
        );
        let follow_up = format!("follow-up {c}");
        assert!(
            state["timers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["text"] == follow_up.as_str()),
            "{state}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_removed_for_good_is_forgotten_by_every_node_and_readiness_says_when_writes_can_be_taken(
) {
    let _load = LOAD.read().await;
    let (p1, p2, p3) = (free_port(), free_port(), free_port());
    let n1 = Node::start_with_config(&config("n1", p1, &[], COOKIE), &[]);
    let n2 = Node::start_with_config(&config("n2", p2, &[p1], COOKIE), &[]);
    let mut n3 = Node::start_with_config(&config("n3", p3, &[p1], COOKIE), &[]);
    for n in [&n1, &n2, &n3] {
        live(n, &["n1", "n2", "n3"]).await;
    }
    n3.sigkill();
    for n in [&n1, &n2] {
        live(n, &["n1", "n2"]).await;
        assert_eq!(cluster(n).await["known"], json!(["n1", "n2", "n3"]));
    }
    let forget = |node: &Node, name: &str| {
        let path = format!("/api/v1/cluster/members/{name}");
        let (base, http) = (node.base.clone(), node.http.clone());
        async move {
            let r = http
                .delete(format!("{base}{path}"))
                .bearer_auth(ADMIN)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    // Two of three live: still a majority, with a node for the replicas.
    let (s, v) = n1.get_admin("/readyz").await;
    assert_eq!((s, v["cluster"].clone()), (200, json!(true)), "{v}");
    let (s, v) = forget(&n1, "n2").await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("node_live")),
        "{v}"
    );
    let (s, v) = forget(&n1, "n9").await;
    assert_eq!(s, 404, "{v}");
    let (s, v) = forget(&n1, "n3").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["peers_failed"], json!([]));
    for n in [&n1, &n2] {
        assert_eq!(cluster(n).await["known"], json!(["n1", "n2"]));
    }
    // Alone, n1 cannot take writes (no replica, no majority): not ready.
    drop(n2);
    for _ in 0..200 {
        if n1.get_admin("/readyz").await.0 == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (s, v) = n1.get_admin("/readyz").await;
    assert_eq!((s, v["cluster"].clone()), (503, json!(false)), "{v}");
}

/// A cluster CA and node certificates signed by it, in a directory.
struct Pki {
    dir: tempfile::TempDir,
    ca: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "test cluster CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), cert.pem()).unwrap();
        Pki {
            dir,
            ca: rcgen::Issuer::new(params, key),
        }
    }

    fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ca.pem")).unwrap()
    }

    /// A node certificate for the cluster's name and 127.0.0.1 (so the
    /// same one serves the HTTPS listener); its (cert, key) paths.
    fn node(&self, name: &str) -> (String, String) {
        let mut params =
            rcgen::CertificateParams::new(vec!["threadline-cluster".into(), "127.0.0.1".into()])
                .unwrap();
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let (c, k) = (
            self.dir.path().join(format!("{name}.pem")),
            self.dir.path().join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c.display().to_string(), k.display().to_string())
    }
}

/// `config` with TLS on the cluster links and on the HTTP listener, with
/// `name`'s certificate from `pki`.
fn tls_config(name: &str, port: u16, seeds: &[u16], pki: &Pki) -> String {
    let (cert, key) = pki.node(name);
    let ca = pki.dir.path().join("ca.pem").display().to_string();
    format!(
        "{}\n[cluster.tls]\ncert_file = {cert:?}\nkey_file = {key:?}\nca_file = {ca:?}\n\n[server.tls]\ncert_file = {cert:?}\nkey_file = {key:?}\n",
        config(name, port, seeds, COOKIE)
    )
}

/// A node of `tls_config`, its test client trusting `pki`'s CA.
fn tls_node(name: &str, port: u16, seeds: &[u16], pki: &Pki) -> Node {
    let mut node = Node::start_with_config(&tls_config(name, port, seeds, pki), &[]);
    assert!(node.base.starts_with("https://"), "{}", node.base);
    node.http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_cluster_tls_only_nodes_of_the_clusters_ca_join_and_requests_pass_on_between_them() {
    let _load = LOAD.read().await;
    let pki = Pki::new();
    let (p1, p2, p3, p4, p5) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let nodes = [
        tls_node("n1", p1, &[], &pki),
        tls_node("n2", p2, &[p1], &pki),
        tls_node("n3", p3, &[p1], &pki),
    ];
    // n2 and n3 only named n1, and found each other through it (over TLS,
    // from the addresses n1's heartbeat answers name).
    for n in &nodes {
        live(n, &["n1", "n2", "n3"]).await;
    }
    // The right cookie with a certificate from another CA, or with no
    // TLS at all, never joins.
    let other_ca = Pki::new();
    let forged = tls_node("forged", p4, &[p1], &other_ca);
    let plain = Node::start_with_config(&config("plain", p5, &[p1], COOKIE), &[]);
    for _ in 0..200 {
        if forged.stderr().contains("failed the TLS handshake")
            && plain.stderr().contains("did not authenticate")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        forged.stderr().contains("failed the TLS handshake"),
        "{}",
        forged.stderr()
    );
    assert!(
        plain.stderr().contains("did not authenticate"),
        "{}",
        plain.stderr()
    );
    assert!(names(&cluster(&forged).await).is_empty());
    assert!(names(&cluster(&plain).await).is_empty());
    for n in &nodes {
        assert_eq!(names(&cluster(n).await).len(), 2, "only the CA's nodes");
    }

    // Traffic through every node lands in one conversation per customer,
    // on its owner (forwarded over the TLS links).
    let mut convs = Vec::new();
    for c in 0..6 {
        let mut ids = Vec::new();
        for (m, node) in nodes.iter().enumerate() {
            let pid = format!("tls-c{c}m{m}");
            let (s, v) = node
                .inbound("gw-acme", &sms("acme", &phone(c), "hello", Some(&pid)))
                .await;
            assert_eq!(s, 202, "{v}");
            ids.push(v["conversation_id"].as_str().unwrap().to_owned());
        }
        assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
        convs.push(ids[0].clone());
    }
    // A write through a node that does not hold the conversation is passed
    // on to the one that does (the HTTPS listeners are never asked): a
    // client's own "passed on" header changes nothing.
    for conv in &convs {
        let holder = holder_of(&nodes, conv).await;
        let other = &nodes[(holder + 1) % 3];
        let r = other
            .http
            .post(other.url(&format!("/api/v1/conversations/{conv}/timers")))
            .bearer_auth(ADMIN)
            .header("x-threadline-passed-on", "1")
            .json(&json!({"in_seconds": 3600, "kind": "follow_up", "text": "over TLS"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
        assert_eq!(holder_of(&nodes, conv).await, holder, "still one holder");
        let (s, v) = other
            .get_admin(&format!("/api/v1/cluster/conversations/{conv}"))
            .await;
        assert_eq!(
            (s, v["here"].as_bool(), v["node"].as_str()),
            (200, Some(false), Some(format!("n{}", holder + 1).as_str())),
            "{v}"
        );
        let (s, v) = other
            .get_admin(&format!("/api/v1/conversations/{conv}"))
            .await;
        assert_eq!(s, 200, "{v}");
        assert!(
            v["timers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["text"] == "over TLS"),
            "{v}"
        );
    }
}

/// The acme queue's waiting count as `node` reports it (`None` while the
/// pool is unavailable: 503 while its home moves).
async fn waiting(node: &Node) -> Option<u64> {
    let (s, q) = node.get_admin("/api/v1/tenants/acme/queue").await;
    match s {
        200 => q["waiting"].as_u64(),
        503 => None,
        _ => panic!("{s} {q}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_waiting_for_an_agent_keeps_their_place_when_their_node_and_the_pools_die() {
    let _load = LOAD.read().await;
    use common::ws::send_json;
    let (mut nodes, h) = three_with_agents().await;
    let names = ["n1", "n2", "n3"];
    let home = names[h];
    // A customer whose conversation is held by the pool's own node: its
    // loss takes both the conversation and the queue.
    let mut conv = String::new();
    for c in 0..60 {
        let (s, v) = nodes[(h + 1) % 3]
            .inbound(
                "gw-acme",
                &sms(
                    "acme",
                    &phone(c),
                    "I need help with my bill",
                    Some(&format!("w{c}")),
                ),
            )
            .await;
        assert_eq!(s, 202, "{v}");
        let id = v["conversation_id"].as_str().unwrap().to_owned();
        if holder_of(&nodes, &id).await == h {
            conv = id;
            break;
        }
    }
    assert!(
        !conv.is_empty(),
        "some customer's conversation is on {home}"
    );
    // Nobody is available: the customer waits.
    let (s, v) = nodes[(h + 2) % 3]
        .send_admin(
            reqwest::Method::POST,
            &format!("/api/v1/conversations/{conv}/escalate"),
            Some(&json!({"reason": "asked for a person", "skills": ["en"]})),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    for n in &nodes {
        assert_eq!(waiting(n).await, Some(1));
    }

    nodes[h].sigkill();
    let survivors: Vec<Node> = nodes
        .into_iter()
        .enumerate()
        .filter_map(|(i, n)| (i != h).then_some(n))
        .collect();
    let alive: Vec<&str> = names
        .iter()
        .enumerate()
        .filter_map(|(i, n)| (i != h).then_some(*n))
        .collect();
    for n in &survivors {
        live(n, &alive).await;
    }
    agreed_home(&[&survivors[0], &survivors[1]]).await;
    // The survivors took the conversation over, and the new pool still
    // has the customer in line.
    let mut queued = None;
    for _ in 0..200 {
        queued = waiting(&survivors[0]).await;
        if queued == Some(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(queued, Some(1), "the waiting customer kept their place");
    // The first agent to become available is offered them, with what they
    // said (her desktop reconnects if the pool moves under it).
    let mut offer = None;
    for _ in 0..40 {
        if let Some(mut sarah) = try_desktop(&survivors[1], "agent-sarah").await {
            send_json(&mut sarah, json!({"type": "status", "status": "available"})).await;
            offer = frame_where(&mut sarah, |v| v["type"] == "offer").await;
            if offer.is_some() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let offer = offer.expect("an offer for the waiting customer");
    assert_eq!(offer["conversation_id"], conv.as_str(), "{offer}");
    assert!(
        offer.to_string().contains("I need help with my bill"),
        "{offer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_was_down_while_the_agent_list_changed_catches_up_when_it_is_back() {
    let _load = LOAD.read().await;
    let (p1, p2, p3) = (free_port(), free_port(), free_port());
    let mut nodes = [
        Node::start_with_config(&agent_config("n1", p1, &[]), &[]),
        Node::start_with_config(&agent_config("n2", p2, &[p1]), &[]),
        Node::start_with_config(&agent_config("n3", p3, &[p1]), &[]),
    ];
    for n in &nodes {
        live(n, &["n1", "n2", "n3"]).await;
    }
    let max = json!({"id": "max", "name": "Max", "token": "agent-max", "tenants": ["acme"]});
    let (s, v) = nodes[0]
        .send_admin(reqwest::Method::POST, "/api/v1/agents", Some(&max))
        .await;
    assert_eq!((s, &v["peers_failed"]), (201, &json!([])), "{v}");
    assert!(try_desktop(&nodes[2], "agent-max").await.is_some());

    // While n3 is down, Lena is made and Max removed.
    nodes[2].sigkill();
    live(&nodes[0], &["n1", "n2"]).await;
    live(&nodes[1], &["n1", "n2"]).await;
    // (The pool's home has settled on a survivor: agent changes go
    // through it.)
    for _ in 0..100 {
        if agreed_home(&[&nodes[0], &nodes[1]]).await != "n3" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lena = json!({"id": "lena", "name": "Lena", "token": "agent-lena", "tenants": ["acme"]});
    let (s, v) = nodes[1]
        .send_admin(reqwest::Method::POST, "/api/v1/agents", Some(&lena))
        .await;
    assert_eq!((s, &v["peers_failed"]), (201, &json!([])), "{v}");
    let (s, v) = nodes[0]
        .send_admin(reqwest::Method::DELETE, "/api/v1/agents/max", None)
        .await;
    assert_eq!(s, 200, "{v}");

    // Back, n3 takes the newer list from its peers.
    nodes[2].restart();
    live(&nodes[2], &["n1", "n2", "n3"]).await;
    let mut lena_in = false;
    for _ in 0..100 {
        if try_desktop(&nodes[2], "agent-lena").await.is_some() {
            lena_in = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(lena_in, "Lena, made while n3 was down, logs in on n3");
    assert!(
        try_desktop(&nodes[2], "agent-max").await.is_none(),
        "Max, removed while n3 was down, no longer does"
    );
    // And the list stays caught up after a restart of its own.
    nodes[2].restart();
    live(&nodes[2], &["n1", "n2", "n3"]).await;
    assert!(try_desktop(&nodes[2], "agent-lena").await.is_some());
}

/// `config` with the example dental flow (a calendar) for tenant `smile`.
fn calendar_config(name: &str, port: u16, seeds: &[u16]) -> String {
    let flow = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/flows/dental.toml");
    format!(
        "{}\n[[tenants]]\nid = \"smile\"\nname = \"Bright Smile Dental\"\ntimezone = \"America/New_York\"\ngateway_token = \"gw-smile\"\nflow = \"{flow}\"\n",
        config(name, port, seeds, COOKIE)
    )
}

/// Sends `text` from `from` through `node` until it is acknowledged (a 503
/// is retried, as a provider does).
async fn say_smile(node: &Node, from: &str, text: &str, pid: &str) {
    let body = sms("smile", from, text, Some(pid));
    for _ in 0..100 {
        let (s, v) = node.inbound("gw-smile", &body).await;
        match s {
            202 => return,
            503 => tokio::time::sleep(Duration::from_millis(100)).await,
            other => panic!("{other}: {v}"),
        }
    }
    panic!("{text:?} from {from} was never acknowledged");
}

async fn smile_bot_said(node: &Node, who: &str) -> String {
    let c = node.conversation_of("smile", who).await.unwrap();
    texts_where(&c, "author", "bot")
        .last()
        .cloned()
        .unwrap_or_default()
}

/// The slot a bot's offer names ("... I can do Thu Mar 5 at 3:00 PM for ...").
fn offered(text: &str) -> String {
    text.split_once("I can do ")
        .and_then(|(_, rest)| rest.split_once(" for "))
        .map(|(slot, _)| slot.to_owned())
        .unwrap_or_else(|| panic!("not an offer: {text}"))
}

/// Thursday's and Friday's slots as `node` answers for the calendar:
/// (start, status, conversation), and the node that decided.
async fn thursday_friday(node: &Node) -> (Vec<(String, String, String)>, String) {
    let (s, cal) = node
        .get_admin("/api/v1/tenants/smile/calendar?from=2026-03-05T05:00:00Z&days=2")
        .await;
    assert_eq!(s, 200, "{cal}");
    let slots = cal["slots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["start"].as_str().unwrap().to_owned(),
                x["status"].as_str().unwrap().to_owned(),
                x["conversation_id"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    (slots, cal["home"].as_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customers_on_different_nodes_never_get_the_same_slot_and_bookings_survive_the_calendars_node(
) {
    let _load = LOAD.read().await;
    let (p1, p2, p3) = (free_port(), free_port(), free_port());
    // Tuesday 10:00 in New York.
    let sim = ["--simulated-clock", "2026-03-03T15:00:00Z"];
    let mut nodes = vec![
        Node::start_with_config(&calendar_config("n1", p1, &[]), &sim),
        Node::start_with_config(&calendar_config("n2", p2, &[p1]), &sim),
        Node::start_with_config(&calendar_config("n3", p3, &[p1]), &sim),
    ];
    for n in &nodes {
        live(n, &["n1", "n2", "n3"]).await;
    }
    // One customer held on each node.
    let mut on_node: Vec<Option<(String, String)>> = vec![None, None, None];
    for k in 0..40 {
        if on_node.iter().all(Option::is_some) {
            break;
        }
        let who = phone(500 + k);
        say_smile(&nodes[0], &who, "Hi, I need a cleaning", &format!("h{k}")).await;
        let conv = nodes[0].conversation_of("smile", &who).await.unwrap();
        let id = conv["id"].as_str().unwrap().to_owned();
        let i = holder_of(&nodes, &id).await;
        if on_node[i].is_none() {
            on_node[i] = Some((who, id));
        }
    }
    let customers: Vec<(String, String)> = on_node
        .into_iter()
        .map(|c| c.expect("a customer on every node"))
        .collect();
    // All three ask for the same time at once, each through its own node.
    let asks = customers.iter().enumerate().map(|(i, (who, _))| {
        let node = &nodes[i];
        async move { say_smile(node, who, "Thursday at 3", &format!("t{i}")).await }
    });
    futures_util::future::join_all(asks).await;
    let mut offers = Vec::new();
    for (who, _) in &customers {
        offers.push(offered(&smile_bot_said(&nodes[0], who).await));
    }
    let mut distinct = offers.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        3,
        "three customers, three slots: {offers:?}"
    );
    assert!(
        offers.iter().any(|o| o == "Thu Mar 5 at 3:00 PM"),
        "{offers:?}"
    );
    // They confirm; every node answers with the same calendar.
    for (i, (who, _)) in customers.iter().enumerate() {
        say_smile(&nodes[(i + 1) % 3], who, "C", &format!("c{i}")).await;
        assert!(
            smile_bot_said(&nodes[0], who)
                .await
                .starts_with("You're confirmed for "),
            "{who}"
        );
    }
    // The business blocks Friday 10 AM through a node that does not decide.
    let (_, home) = thursday_friday(&nodes[0]).await;
    let other = ["n1", "n2", "n3"].iter().position(|n| *n != home).unwrap();
    let fri10 = "2026-03-06T15:00:00.000Z";
    let (s, v) = nodes[other]
        .send_admin(
            reqwest::Method::PUT,
            &format!("/api/v1/tenants/smile/calendar/slots/{fri10}"),
            None,
        )
        .await;
    assert_eq!((s, v["status"].as_str()), (200, Some("blocked")), "{v}");
    let (view, home) = thursday_friday(&nodes[0]).await;
    assert!(view.contains(&(fri10.to_owned(), "blocked".to_owned(), String::new())));
    let booked: Vec<&(String, String, String)> =
        view.iter().filter(|(_, s, _)| s == "booked").collect();
    let mut by: Vec<&str> = booked.iter().map(|(_, _, c)| c.as_str()).collect();
    by.sort();
    let mut want: Vec<&str> = customers.iter().map(|(_, id)| id.as_str()).collect();
    want.sort();
    assert_eq!(by, want, "{view:?}");
    for n in &nodes[1..] {
        assert_eq!(thursday_friday(n).await, (view.clone(), home.clone()));
    }
    // Every node counts what its conversations did, and any node answers
    // for the tenant with the sum; every node lists the same bookings.
    for n in &nodes {
        let (s, m) = n.get_admin("/api/v1/tenants/smile/metrics").await;
        assert_eq!(s, 200, "{m}");
        assert_eq!(m["bookings"]["confirmed"], 3, "{m}");
        assert!(m.get("nodes_missing").is_none(), "{m}");
        let (s, list) = n
            .get_admin(
                "/api/v1/tenants/smile/bookings?from=2026-03-03T00:00:00Z&to=2026-03-10T00:00:00Z",
            )
            .await;
        assert_eq!(s, 200, "{list}");
        let mut ids: Vec<&str> = list["bookings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["conversation_id"].as_str().unwrap())
            .collect();
        ids.sort();
        assert_eq!(ids, want, "{list}");
        // The conversations list is the same through every node, one page
        // at a time.
        let mut seen = Vec::new();
        let mut cursor = String::new();
        loop {
            let (s, v) = n
                .get_admin(&format!(
                    "/api/v1/tenants/smile/conversations?booked=true&limit=2&cursor={cursor}"
                ))
                .await;
            assert_eq!(s, 200, "{v}");
            for c in v["conversations"].as_array().unwrap() {
                seen.push(c["id"].as_str().unwrap().to_owned());
            }
            match v["next_cursor"].as_str() {
                Some(c) => cursor = c.to_owned(),
                None => break,
            }
        }
        seen.sort();
        assert_eq!(seen, want, "through {}", n.base);
    }

    // The node whose rows decided dies: its replica decides now, with
    // every booking.
    let h = ["n1", "n2", "n3"].iter().position(|n| *n == home).unwrap();
    nodes[h].sigkill();
    let survivors: Vec<usize> = (0..3).filter(|i| *i != h).collect();
    let alive: Vec<&str> = survivors.iter().map(|i| ["n1", "n2", "n3"][*i]).collect();
    for i in &survivors {
        live(&nodes[*i], &alive).await;
    }
    let (after, new_home) = thursday_friday(&nodes[survivors[0]]).await;
    assert_ne!(new_home, home);
    assert_eq!(after, view, "the bookings outlived the node");
    // A new customer gets none of the booked or blocked slots.
    let late = phone(900);
    let door = &nodes[survivors[1]];
    say_smile(door, &late, "Hi, I need a cleaning", "l1").await;
    say_smile(door, &late, "Friday at 10", "l2").await;
    let offer = offered(&smile_bot_said(door, &late).await);
    assert_eq!(offer, "Fri Mar 6 at 11:00 AM", "10 AM blocked: the nearest");
    for o in &offers {
        assert_ne!(&offer, o, "a slot already booked was offered again");
    }
    let (now, _) = thursday_friday(&nodes[survivors[1]]).await;

    // The dead node comes back and decides again, from the newest copy (not
    // its own old rows).
    nodes[h].restart();
    for n in &nodes {
        live(n, &["n1", "n2", "n3"]).await;
    }
    for n in &nodes {
        assert_eq!(thursday_friday(n).await, (now.clone(), home.clone()));
    }
    assert!(now
        .iter()
        .any(|(at, s, _)| at == "2026-03-06T16:00:00.000Z" && s == "held"));
}

/// The consent view of `who` as `node` answers it.
async fn consent_on(node: &Node, who: &str) -> Value {
    let (s, v) = node
        .get_admin(&format!("/api/v1/tenants/acme/contacts/{who}/consent"))
        .await;
    assert_eq!(s, 200, "{v}");
    v
}

/// A business message to `who` sent through `node`; its decision.
async fn business_message(node: &Node, who: &str, text: &str) -> Value {
    let (s, v) = node
        .send_admin(
            reqwest::Method::POST,
            &format!("/api/v1/tenants/acme/contacts/{who}/messages"),
            Some(&json!({"text": text, "purpose": "conversational"})),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_through_any_node_is_what_every_node_decides_by_until_start() {
    let _load = LOAD.read().await;
    let (p1, p2, p3) = (free_port(), free_port(), free_port());
    let sim = ["--simulated-clock", WEEKDAY_MORNING];
    let nodes = [
        Node::start_with_config(&sim_config("n1", p1, &[]), &sim),
        Node::start_with_config(&sim_config("n2", p2, &[p1]), &sim),
        Node::start_with_config(&sim_config("n3", p3, &[p1]), &sim),
    ];
    for n in &nodes {
        live(n, &["n1", "n2", "n3"]).await;
    }
    let who = phone(7);
    let (s, v) = nodes[0]
        .inbound("gw-acme", &sms("acme", &who, "hello", Some("k0")))
        .await;
    assert_eq!(s, 202, "{v}");
    let conv = v["conversation_id"].as_str().unwrap().to_owned();
    let holder = holder_of(&nodes, &conv).await;
    let (a, b) = (&nodes[(holder + 1) % 3], &nodes[(holder + 2) % 3]);
    // Before: a business message through a node that does not hold the
    // conversation is sent.
    assert_eq!(
        business_message(a, &who, "Your visit is confirmed").await["decision"],
        "sent"
    );
    // STOP through one node that does not hold it, the business message
    // through the other: the holder decided both, so it is blocked.
    let (s, v) = a
        .inbound("gw-acme", &sms("acme", &who, "STOP", Some("k1")))
        .await;
    assert_eq!(s, 202, "{v}");
    for n in &nodes {
        assert_eq!(
            consent_on(n, &who).await["channels"]["sms"]["status"],
            "opted_out"
        );
    }
    let v = business_message(b, &who, "One more thing").await;
    assert_eq!(v["decision"], "blocked", "{v}");
    // START through the other one re-opens SMS everywhere.
    let (s, v) = b
        .inbound("gw-acme", &sms("acme", &who, "START", Some("k2")))
        .await;
    assert_eq!(s, 202, "{v}");
    for n in &nodes {
        assert_eq!(
            consent_on(n, &who).await["channels"]["sms"]["status"],
            "opted_in"
        );
    }
    assert_eq!(
        business_message(a, &who, "Welcome back").await["decision"],
        "sent"
    );
    // A consent recorded and a contact updated through a node that does
    // not hold the conversation are the holder's too.
    let (s, v) = b
        .send_admin(
            reqwest::Method::POST,
            &format!("/api/v1/tenants/acme/contacts/{who}/consent"),
            Some(&json!({"status": "opted_out", "channel": "sms", "source": "web_form", "proof": "form 12"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(
        business_message(a, &who, "Blocked again").await["decision"],
        "blocked"
    );
    let (s, v) = a
        .send_admin(
            reqwest::Method::PUT,
            &format!("/api/v1/tenants/acme/contacts/{who}"),
            Some(&json!({"name": "Dana"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    // All of it is one conversation, on its holder.
    let c = nodes[holder].conversation_of("acme", &who).await.unwrap();
    assert_eq!(c["id"].as_str(), Some(conv.as_str()));
    assert_eq!(c["captured"]["name"], "Dana", "{c}");
    for n in &nodes {
        let (s, v) = n.get_admin("/api/v1/cluster").await;
        assert_eq!(s, 200);
        let held: u64 = v["conversations"]["this_node"].as_u64().unwrap();
        assert_eq!(held, u64::from(n.base == nodes[holder].base), "{v}");
    }
}

/// Three nodes under load through all of them; one is killed and
/// restarted on its data halfway; after the load all three stop
/// gracefully (each hands its conversations over as it leaves). Each then
/// starts again on its own data, and every acknowledged message is there.
/// (A node killed once used to refuse its data after the graceful stop: a
/// conversation it had handed over kept a log record without a snapshot.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_starts_again_on_its_data_after_a_kill_and_a_graceful_stop() {
    let _load = LOAD.write().await;
    let customers = 30;
    let (mut nodes, _owner_of, conv_of) = three_with_customers(customers).await;
    let through = targets(&nodes.iter().collect::<Vec<_>>());
    let load = Load::start(&through, customers, Duration::from_secs(15));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    kill_and_restart(&mut nodes, 2, &through, Duration::from_secs(3)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let acked = load.finish().await;
    for n in nodes.iter_mut() {
        let status = n.sigterm();
        assert!(status.success(), "{status:?}: {}", n.stderr());
    }
    // Each starts again on its data (the harness fails if one exits
    // before it listens), the three settle, and nothing acknowledged is
    // missing.
    for n in nodes.iter_mut() {
        n.restart();
    }
    for n in &nodes {
        live(n, &["n1", "n2", "n3"]).await;
    }
    for (i, n) in nodes.iter().enumerate() {
        if n.stderr().contains("quarantined") {
            let all: Vec<String> = nodes.iter().map(|n| n.all_stderr()).collect();
            panic!("node {i} set records aside:\n{}", all.join("\n=========\n"));
        }
    }
    // Everything was left on the last node to stop. While the
    // conversations are handed to their owners, every node finds each
    // one (never "not found"; 503 while one is moving), and once each has
    // one holder every node reads each one whole.
    for n in &nodes {
        for (c, conv) in conv_of.iter().enumerate() {
            assert_eq!(
                found_while_moving(n, &phone(c)).await["id"].as_str(),
                Some(conv.as_str())
            );
        }
    }
    for conv in &conv_of {
        settled_on_one(&nodes, conv).await;
    }
    let [n1, n2, n3] = &nodes;
    nothing_lost(&[n1, n2, n3], &acked, &conv_of).await;
}

/// The contact's conversation read through `node`, waiting out 503s (a
/// conversation moving between nodes); a 404 fails.
async fn found_while_moving(node: &Node, contact: &str) -> Value {
    let path = format!(
        "/api/v1/tenants/acme/contacts/{}/conversation",
        contact.replace('+', "%2B")
    );
    for _ in 0..400 {
        match node.get_admin(&path).await {
            (200, v) => return v,
            (503, _) => tokio::time::sleep(Duration::from_millis(25)).await,
            (s, v) => panic!("{contact} through {}: {s} {v}", node.base),
        }
    }
    panic!("{contact} stayed unavailable through {}", node.base);
}

/// Waits until exactly one of `nodes` holds conversation `conv`, and no
/// node says it is moving.
async fn settled_on_one(nodes: &[Node], conv: &str) {
    for _ in 0..400 {
        let mut holding = 0;
        for n in nodes {
            holding += usize::from(holds(n, conv).await);
        }
        if holding == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{conv} is not held by exactly one node");
}

/// The nemesis: three nodes under load through all of them (clients give
/// up on a silent node after 2 s and send the same message through
/// another); each round kills one node and restarts it on its data, then
/// pauses another (SIGSTOP) for 6 s. Afterwards every acknowledged
/// message is in its conversation exactly once, in order, as every node
/// reads it. `THREADLINE_NEMESIS_ROUNDS` sets the rounds (1 by default;
/// the long mode runs many).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acknowledged_is_lost_through_kills_and_pauses_under_load() {
    let _load = LOAD.write().await;
    let rounds: usize = std::env::var("THREADLINE_NEMESIS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let customers = 24;
    let (mut nodes, _owner_of, conv_of) = three_with_customers(customers).await;
    let through = targets(&nodes.iter().collect::<Vec<_>>());
    let load = Load::start(&through, customers, Duration::from_secs(2));
    for round in 0..rounds {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        kill_and_restart(&mut nodes, round % 3, &through, Duration::from_millis(2500)).await;
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let hung = (round + 1) % 3;
        signal(&nodes[hung], libc::SIGSTOP);
        tokio::time::sleep(Duration::from_secs(6)).await;
        signal(&nodes[hung], libc::SIGCONT);
        for n in &nodes {
            live(n, &["n1", "n2", "n3"]).await;
        }
    }
    let total = after_the_faults(&nodes, load, &conv_of).await;
    eprintln!(
        "nemesis: {rounds} rounds (a kill and a pause each), {total} messages acknowledged, 0 lost"
    );
}

/// Stops the load a second after the last fault, waits until each
/// conversation is held by one node, and checks that every acknowledged
/// message is there once, in order, through every node; how many were
/// acknowledged.
async fn after_the_faults(nodes: &[Node; 3], load: Load, conv_of: &[String]) -> usize {
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let acked = load.finish().await;
    for conv in conv_of {
        settled_on_one(nodes, conv).await;
    }
    let [n1, n2, n3] = nodes;
    nothing_lost(&[n1, n2, n3], &acked, conv_of).await;
    acked.iter().map(Vec::len).sum()
}

/// Customers writing through `through` until `finish`.
struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    customers: Vec<tokio::task::JoinHandle<Vec<(String, std::time::Instant)>>>,
}

impl Load {
    /// `customers` customers, each giving up on a silent node after
    /// `patience`.
    fn start(through: &Targets, customers: usize, patience: Duration) -> Load {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let customers = (0..customers)
            .map(|c| {
                tokio::spawn(customer_giving_up_after(
                    through.clone(),
                    c,
                    stop.clone(),
                    patience,
                ))
            })
            .collect();
        Load { stop, customers }
    }

    /// Stops the customers; what each had acknowledged.
    async fn finish(self) -> Vec<Vec<(String, std::time::Instant)>> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut acked = Vec::new();
        for c in self.customers {
            acked.push(c.await.unwrap());
        }
        acked
    }
}

/// SIGKILLs `nodes[i]`, restarts it on its data after `down`, sends the
/// load to its new address, and waits until all three count each other live.
async fn kill_and_restart(nodes: &mut [Node; 3], i: usize, through: &Targets, down: Duration) {
    nodes[i].sigkill();
    tokio::time::sleep(down).await;
    nodes[i].restart();
    through.write().unwrap()[i] = (nodes[i].base.clone(), nodes[i].http.clone());
    for n in nodes.iter() {
        live(n, &["n1", "n2", "n3"]).await;
    }
}

/// Nodes on separate hosts usually share one cluster port. Three TLS
/// nodes on 127.0.0.1, .2 and .3, all on the same port, where the last two
/// name only the first: all three link to each other (a node once took any
/// peer on the seed's port for that seed, and never linked to the third).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_nodes_on_separate_hosts_sharing_one_port_form_a_full_mesh() {
    let _load = LOAD.read().await;
    let pki = Pki::new();
    let port = free_port();
    let node = |i: u8, seeds: &[u8]| {
        let name = format!("n{i}");
        let (cert, key) = pki.node(&name);
        let ca = pki.dir.path().join("ca.pem").display().to_string();
        let seeds: Vec<String> = seeds
            .iter()
            .map(|s| format!("\"127.0.0.{s}:{port}\""))
            .collect();
        let config = format!(
            "{CONFIG}\n[cluster]\nname = \"{name}\"\nlisten = \"127.0.0.{i}:{port}\"\nseeds = [{}]\ncookie = \"{COOKIE}\"\nheartbeat_ms = 300\nfailure_after_ms = 2000\n\n[cluster.tls]\ncert_file = {cert:?}\nkey_file = {key:?}\nca_file = {ca:?}\n",
            seeds.join(", ")
        );
        Node::start_with_config(&config, &[])
    };
    let nodes = [node(1, &[]), node(2, &[1]), node(3, &[1])];
    for n in &nodes {
        live(n, &["n1", "n2", "n3"]).await;
        assert_eq!(names(&cluster(n).await).len(), 2, "linked to both others");
    }
}

/// Three hosts for a cluster on one machine: a network namespace per node,
/// each joined to a bridge on the host by a veth pair (the test, on the
/// host, reaches every node), where the test can cut the link between two
/// nodes (a blackhole route each way: packets vanish, as in a partition,
/// and nobody is told) and heal it. Everything is removed when dropped.
struct Net {
    tag: String,
    subnet: String,
}

impl Net {
    /// `None` where the machine does not let the test make namespaces.
    fn new(nodes: usize) -> Option<Net> {
        let pid = std::process::id();
        let net = Net {
            tag: format!("tl{}", pid % 100_000),
            subnet: format!("10.{}.{}", 100 + (pid >> 8) % 100, pid & 255),
        };
        let bridge = format!("{}b", net.tag);
        net.remove(nodes); // what a killed run with this pid left behind
        let ok = ip(&["link", "add", &bridge, "type", "bridge"])
            && ip(&["link", "set", &bridge, "up"])
            && ip(&[
                "addr",
                "add",
                &format!("{}.1/24", net.subnet),
                "dev",
                &bridge,
            ]);
        if !ok {
            drop(net);
            return None;
        }
        for i in 1..=nodes {
            let (ns, host, inside) = (net.ns(i), net.veth(i), format!("{}p", net.veth(i)));
            let ns_ip = |args: &[&str]| {
                let mut all = vec!["netns", "exec", &ns, "ip"];
                all.extend_from_slice(args);
                ip(&all)
            };
            let ok = ip(&["netns", "add", &ns])
                && ip(&[
                    "link", "add", &host, "type", "veth", "peer", "name", &inside,
                ])
                && ip(&["link", "set", &inside, "netns", &ns])
                && ip(&["link", "set", &host, "master", &bridge])
                && ip(&["link", "set", &host, "up"])
                && ns_ip(&[
                    "addr",
                    "add",
                    &format!("{}/24", net.addr(i)),
                    "dev",
                    &inside,
                ])
                && ns_ip(&["link", "set", &inside, "up"])
                && ns_ip(&["link", "set", "lo", "up"]);
            if !ok {
                return None;
            }
        }
        Some(net)
    }

    fn ns(&self, i: usize) -> String {
        format!("{}n{i}", self.tag)
    }

    fn veth(&self, i: usize) -> String {
        format!("{}v{i}", self.tag)
    }

    /// Node `i`'s address (1-based).
    fn addr(&self, i: usize) -> String {
        format!("{}.{}", self.subnet, 10 + i)
    }

    /// Cuts (or heals) the link between nodes `a` and `b`, both ways.
    fn cut(&self, a: usize, b: usize, cut: bool) {
        let verb = if cut { "add" } else { "del" };
        for (from, to) in [(a, b), (b, a)] {
            let to = format!("{}/32", self.addr(to));
            let ns = self.ns(from);
            assert!(ip(&[
                "netns",
                "exec",
                &ns,
                "ip",
                "route",
                verb,
                "blackhole",
                &to
            ]));
        }
    }
}

impl Net {
    /// Three nodes, one in each namespace (n1 the seed), once all count
    /// all three live.
    async fn start_nodes(&self) -> [Node; 3] {
        let port = 7400;
        let seed = format!("\"{}:{port}\"", self.addr(1));
        let node = |i: usize| {
            let listen = format!("{}:{port}", self.addr(i));
            let seeds = if i == 1 { String::new() } else { seed.clone() };
            let config = format!(
                "{CONFIG}\n[cluster]\nname = \"n{i}\"\nlisten = \"{listen}\"\nseeds = [{seeds}]\ncookie = \"{COOKIE}\"\nheartbeat_ms = 300\nfailure_after_ms = 2000\n"
            );
            Node::start_in_netns(&self.ns(i), &self.addr(i), &config, &[])
        };
        let nodes = [node(1), node(2), node(3)];
        for n in &nodes {
            live(n, &["n1", "n2", "n3"]).await;
        }
        nodes
    }

    fn remove(&self, nodes: usize) {
        for i in 1..=nodes {
            let _ = ip(&["netns", "del", &self.ns(i)]);
            let _ = ip(&["link", "del", &self.veth(i)]);
        }
        let _ = ip(&["link", "del", &format!("{}b", self.tag)]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.remove(3);
    }
}

/// Runs `ip args…`; whether it succeeded.
fn ip(args: &[&str]) -> bool {
    std::process::Command::new("ip")
        .args(args)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Three nodes, each on its own host (`Net`), 24 customers writing through
/// random nodes with retries (a client gives up on a silent node after
/// 2 s); each round cuts one node off from the other two for 6 s, heals,
/// then cuts one pair only (both still reach the third: each side sees a
/// majority) for 6 s, heals, and kills a third node and restarts it on its
/// data. Afterwards every acknowledged message is in its conversation
/// exactly once, in order, as every node reads it.
/// `THREADLINE_NEMESIS_ROUNDS` sets the rounds (1 by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acknowledged_is_lost_through_partitions_kills_and_healing() {
    let _load = LOAD.write().await;
    let Some(net) = Net::new(3) else {
        eprintln!("skipped: this machine does not let the test make network namespaces");
        return;
    };
    let rounds: usize = std::env::var("THREADLINE_NEMESIS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let mut nodes = net.start_nodes().await;
    let customers = 24;
    let mut conv_of = Vec::new();
    for c in 0..customers {
        let (s, v) = nodes[c % 3]
            .inbound(
                "gw-acme",
                &sms("acme", &phone(c), "hello", Some(&format!("c{c}"))),
            )
            .await;
        assert_eq!(s, 202, "{v}");
        conv_of.push(v["conversation_id"].as_str().unwrap().to_owned());
    }
    let through = targets(&nodes.iter().collect::<Vec<_>>());
    let load = Load::start(&through, customers, Duration::from_secs(2));
    let all = ["n1", "n2", "n3"];
    let mut faults = 0;
    for round in 0..rounds {
        // One node cut off from both others: the two keep a majority and
        // take its conversations over; it has none and acknowledges nothing.
        let alone = round % 3;
        let (a, b) = ((alone + 1) % 3, (alone + 2) % 3);
        tokio::time::sleep(Duration::from_millis(1000)).await;
        net.cut(alone + 1, a + 1, true);
        net.cut(alone + 1, b + 1, true);
        tokio::time::sleep(Duration::from_secs(6)).await;
        net.cut(alone + 1, a + 1, false);
        net.cut(alone + 1, b + 1, false);
        for n in &nodes {
            live(n, &all).await;
        }
        // Two nodes that cannot reach each other, both reaching the third.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        net.cut(a + 1, b + 1, true);
        tokio::time::sleep(Duration::from_secs(6)).await;
        net.cut(a + 1, b + 1, false);
        for n in &nodes {
            live(n, &all).await;
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
        kill_and_restart(&mut nodes, a, &through, Duration::from_millis(2500)).await;
        faults += 3;
    }
    let total = after_the_faults(&nodes, load, &conv_of).await;
    eprintln!(
        "partitions: {rounds} rounds, {faults} faults (an isolated node, a cut pair, a kill each), {total} messages acknowledged, 0 lost"
    );
    drop(nodes);
    drop(net);
}

/// A node cut off from both others writes and sends nothing: a business
/// message, a consent record or a contact update through it is refused
/// (503) instead of being written into a conversation the others may have
/// taken over, or into a second conversation for the contact. Healed, the
/// same request goes through, once, into the contact's one conversation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_node_writes_and_sends_nothing_for_any_conversation() {
    let _load = LOAD.write().await;
    let Some(net) = Net::new(3) else {
        eprintln!("skipped: this machine does not let the test make network namespaces");
        return;
    };
    let nodes = net.start_nodes().await;
    let all = ["n1", "n2", "n3"];
    // Customers who texted first: each has one conversation somewhere.
    let who: Vec<String> = (0..6).map(|c| phone(40 + c)).collect();
    let mut conv_of = Vec::new();
    for (c, w) in who.iter().enumerate() {
        let (s, v) = nodes[c % 3]
            .inbound(
                "gw-acme",
                &sms("acme", w, "hello", Some(&format!("iso{c}"))),
            )
            .await;
        assert_eq!(s, 202, "{v}");
        conv_of.push(v["conversation_id"].as_str().unwrap().to_owned());
    }
    net.cut(3, 1, true);
    net.cut(3, 2, true);
    live(&nodes[2], &["n3"]).await;
    let isolated = &nodes[2];
    for w in &who {
        let (s, v) = isolated
            .send_admin(
                reqwest::Method::POST,
                &format!("/api/v1/tenants/acme/contacts/{w}/messages"),
                Some(&json!({"text": "Your visit is confirmed", "purpose": "conversational"})),
            )
            .await;
        assert_eq!(s, 503, "a business message through a node alone: {v}");
        assert!(v["error"]["message"].is_string(), "a JSON error: {v}");
        let (s, v) = isolated
            .send_admin(
                reqwest::Method::POST,
                &format!("/api/v1/tenants/acme/contacts/{w}/consent"),
                Some(&json!({"status": "opted_out", "channel": "sms", "source": "web_form"})),
            )
            .await;
        assert_eq!(s, 503, "a consent record through a node alone: {v}");
        let (s, v) = isolated
            .send_admin(
                reqwest::Method::PUT,
                &format!("/api/v1/tenants/acme/contacts/{w}"),
                Some(&json!({"name": "Sam"})),
            )
            .await;
        assert_eq!(s, 503, "a contact update through a node alone: {v}");
    }
    // A contact nobody knows: no conversation is started for it either.
    let stranger = phone(60);
    let (s, v) = isolated
        .send_admin(
            reqwest::Method::POST,
            &format!("/api/v1/tenants/acme/contacts/{stranger}/messages"),
            Some(&json!({"text": "Hello from the clinic", "purpose": "conversational"})),
        )
        .await;
    assert_eq!(s, 503, "{v}");
    net.cut(3, 1, false);
    net.cut(3, 2, false);
    for n in &nodes {
        live(n, &all).await;
    }
    // Healed: each goes through once, into the contact's one conversation,
    // and nothing the node refused was written anywhere.
    for (c, w) in who.iter().enumerate() {
        for n in &nodes {
            let conv = n
                .conversation_of("acme", w)
                .await
                .expect("the conversation");
            assert_eq!(conv["id"], conv_of[c], "one conversation for {w}");
            assert!(
                !texts(&conv).iter().any(|t| t == "Your visit is confirmed"),
                "nothing refused was written: {:?}",
                texts(&conv)
            );
            assert_ne!(conv["captured"]["name"], "Sam");
        }
        let v = business_message(isolated, w, "Your visit is confirmed").await;
        assert_eq!(v["decision"], "sent", "{v}");
        let conv = nodes[0].conversation_of("acme", w).await.unwrap();
        assert_eq!(conv["id"], conv_of[c]);
        assert_eq!(
            texts(&conv)
                .iter()
                .filter(|t| *t == "Your visit is confirmed")
                .count(),
            1
        );
    }
    drop(nodes);
    drop(net);
}

/// `sim_config` with Twilio configured (webhooks signed with
/// `common::TOKEN`, texts to `twilio`).
fn voice_config(name: &str, port: u16, seeds: &[u16], twilio: &str) -> String {
    sim_config(name, port, seeds).replacen(
        "admin_token = \"test-admin-token\"\n",
        &format!(
            "admin_token = \"test-admin-token\"\npublic_url = \"{PUBLIC_URL}\"\n\n\
             [providers.twilio]\naccount_sid = \"{SID}\"\nauth_token = \"{TOKEN}\"\napi_base = \"{twilio}\"\n"
        ),
        1,
    )
}

/// Only the router decides where a command runs: a call, an escalation, a
/// timer and a booking outcome through nodes that do not hold the
/// conversation all run on the node that does, and a caller is one
/// conversation with their texts, whichever nodes the webhooks reach. (A
/// call reaching a node other than its contact's owner used to start a
/// second conversation there.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_and_writes_through_any_node_run_on_the_conversations_owner() {
    let _load = LOAD.read().await;
    let fake = FakeTwilio::start().await;
    let (p1, p2, p3) = (free_port(), free_port(), free_port());
    let sim = ["--simulated-clock", WEEKDAY_MORNING];
    let nodes = [
        Node::start_with_config(&voice_config("n1", p1, &[], &fake.base), &sim),
        Node::start_with_config(&voice_config("n2", p2, &[p1], &fake.base), &sim),
        Node::start_with_config(&voice_config("n3", p3, &[p1], &fake.base), &sim),
    ];
    for n in &nodes {
        live(n, &["n1", "n2", "n3"]).await;
    }
    let callers: Vec<String> = (40..46).map(phone).collect();
    for (i, who) in callers.iter().enumerate() {
        let sid = format!("CA{i}");
        let call = [
            ("CallSid", sid.as_str()),
            ("AccountSid", SID),
            ("From", who.as_str()),
            ("To", "+15557654321"),
            ("CallStatus", "ringing"),
            ("Direction", "inbound"),
        ];
        let (s, twiml) = nodes[0]
            .twilio(TOKEN, "/webhooks/twilio/voice", &call)
            .await;
        assert_eq!(s, 200, "{twiml}");
        let (s, v) = nodes[1]
            .inbound(
                "gw-acme",
                &sms("acme", who, "sorry I missed you", Some(&format!("SM{i}"))),
            )
            .await;
        assert_eq!(s, 202, "{v}");
    }
    // One conversation per caller, held by one node, with the call and
    // the text.
    let mut held = 0;
    for n in &nodes {
        held += cluster(n).await["conversations"]["this_node"]
            .as_u64()
            .unwrap();
    }
    assert_eq!(held, callers.len() as u64, "one conversation per caller");
    let who = &callers[0];
    let c = nodes[2].conversation_of("acme", who).await.unwrap();
    let conv = c["id"].as_str().unwrap().to_owned();
    assert!(
        c["messages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["text"] == "sorry I missed you"),
        "{c}"
    );
    // An escalation and a timer through a node that does not hold it.
    let holder = holder_of(&nodes, &conv).await;
    let other = &nodes[(holder + 1) % 3];
    let (s, v) = other
        .send_admin(
            reqwest::Method::POST,
            &format!("/api/v1/conversations/{conv}/escalate"),
            Some(&json!({"reason": "asked for a person"})),
        )
        .await;
    assert!(s == 200 || s == 202, "{s} {v}");
    let (s, v) = nodes[(holder + 2) % 3]
        .send_admin(
            reqwest::Method::POST,
            &format!("/api/v1/conversations/{conv}/timers"),
            Some(&json!({"in_seconds": 3600, "kind": "follow_up", "text": "checking in"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    // A booking outcome through another node reaches the holder, which
    // answers that there is no booking.
    let (s, v) = other
        .send_admin(
            reqwest::Method::POST,
            &format!("/api/v1/conversations/{conv}/booking"),
            Some(&json!({"outcome": "attended"})),
        )
        .await;
    assert_eq!(s, 409, "{v}");
    let c = nodes[holder].conversation_of("acme", who).await.unwrap();
    assert_eq!(c["id"].as_str(), Some(conv.as_str()));
    assert!(
        c["timers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["kind"] == "follow_up" && t["text"] == "checking in"),
        "{c}"
    );
    assert!(
        c["messages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["text"] == "[handed to a person: asked for a person]"),
        "{c}"
    );
}

/// The node that owns `contact` of tenant acme among `live`.
fn owner_among(contact: &str, live: &[&str]) -> String {
    let live: Vec<String> = live.iter().map(|n| n.to_string()).collect();
    threadline_actors::cluster::ranked(&format!("acme\0{contact}"), &live)[0].to_owned()
}

/// A web-chat socket of `visitor` on `node`, and its history frame's
/// conversation (if it has one).
async fn chat_on(node: &Node, visitor: &str) -> (common::ws::Ws, Option<String>) {
    use common::ws::*;
    let url = node
        .url(&format!("/chat/ws?tenant=acme&visitor={visitor}"))
        .replace("http://", "ws://");
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "hello");
    send_json(&mut ws, json!({"type": "ping"})).await;
    let f = next_json(&mut ws).await;
    let conv = match f["type"].as_str() {
        Some("history") => {
            assert_eq!(next_json(&mut ws).await["type"], "pong");
            f["conversation_id"].as_str().map(str::to_owned)
        }
        _ => {
            assert_eq!(f["type"], "pong", "{f}");
            None
        }
    };
    (ws, conv)
}

/// `visitor` on `node` types their number and sends back the code; the
/// chat is joined to `conv`.
async fn prove(
    node: &Node,
    visitor: &str,
    typed: &str,
    customer: &str,
    conv: &str,
) -> common::ws::Ws {
    use common::ws::*;
    let (mut chat, none) = chat_on(node, visitor).await;
    assert_eq!(none, None);
    send_json(
        &mut chat,
        json!({"type": "message", "text": typed, "id": "m1"}),
    )
    .await;
    assert_eq!(next_of(&mut chat, "code_sent").await["phone"], customer);
    let code = chat_code(node, "acme", customer).await;
    send_json(&mut chat, json!({"type": "verify", "code": code})).await;
    let linked = next_of(&mut chat, "linked").await;
    assert_eq!(linked["conversation_id"], conv, "{linked}");
    chat
}

/// Web-chat visitors proving their number: through a node that owns
/// neither them nor the number, the link runs on their owners and every
/// node routes the visitor to the number's conversation from then on; a
/// node that was down while a visitor linked learns it when it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visitor_proving_a_number_on_any_node_joins_its_one_conversation_on_every_node() {
    use common::ws::*;
    let _load = LOAD.read().await;
    let (p1, p2, p3) = (free_port(), free_port(), free_port());
    let sim = ["--simulated-clock", WEEKDAY_MORNING];
    let mut nodes = [
        Node::start_with_config(&sim_config("n1", p1, &[]), &sim),
        Node::start_with_config(&sim_config("n2", p2, &[p1]), &sim),
        Node::start_with_config(&sim_config("n3", p3, &[p1]), &sim),
    ];
    for n in &nodes {
        live(n, &["n1", "n2", "n3"]).await;
    }
    let all = ["n1", "n2", "n3"];
    let idx = |name: &str| all.iter().position(|n| *n == name).unwrap();
    let customer = phone(70);
    let owner = idx(&owner_among(&customer, &all));
    // Visitors owned by another node than the number; the third node
    // holds neither.
    let mut visitors = (0..400)
        .map(|i| format!("visitor-{i}"))
        .filter(|v| idx(&owner_among(v, &all)) != owner);
    let first = visitors.next().unwrap();
    let visitor_owner = idx(&owner_among(&first, &all));
    let second = visitors
        .find(|v| idx(&owner_among(v, &all)) == visitor_owner)
        .unwrap();
    let third = 3 - owner - visitor_owner;
    let (s, v) = nodes[third]
        .inbound(
            "gw-acme",
            &sms("acme", &customer, "Hi, is my crown ready?", Some("w1")),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let conv = v["conversation_id"].as_str().unwrap().to_owned();

    let mut chat = prove(
        &nodes[third],
        &first,
        "it's me, my number is (555) 000-0070",
        &customer,
        &conv,
    )
    .await;
    // What the visitor types now lands in the number's conversation, on
    // its owner.
    send_json(
        &mut chat,
        json!({"type": "message", "text": "can I pick it up friday?", "id": "m2"}),
    )
    .await;
    let ack = next_of(&mut chat, "ack").await;
    assert_eq!(ack["conversation_id"], conv.as_str(), "{ack}");
    let c = nodes[visitor_owner]
        .conversation_of("acme", &customer)
        .await
        .unwrap();
    let texts: Vec<&str> = c["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["text"].as_str())
        .collect();
    for want in [
        "Hi, is my crown ready?",
        "it's me, my number is (555) 000-0070",
        "can I pick it up friday?",
    ] {
        assert_eq!(
            texts.iter().filter(|t| **t == want).count(),
            1,
            "{want}: {texts:?}"
        );
    }
    // The business answers on web chat: the message is committed on the
    // number's owner and reaches the visitor's socket on the third node.
    let path = format!(
        "/api/v1/tenants/acme/contacts/{}/messages",
        customer.replace('+', "%2B")
    );
    let (s, v) = nodes[owner]
        .send_admin(
            reqwest::Method::POST,
            &path,
            Some(&json!({"text": "Yes, Friday works", "purpose": "conversational", "channel": "webchat"})),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    assert_eq!(
        next_of(&mut chat, "message").await["text"],
        "Yes, Friday works"
    );
    // Every node routes the visitor there.
    for (n, node) in nodes.iter().enumerate() {
        let (_ws, seen) = chat_on(node, &first).await;
        assert_eq!(seen.as_deref(), Some(conv.as_str()), "node {}", all[n]);
    }

    // A second device of the customer proves the number while the third
    // node is down (the visitor's owner and the number's stay up).
    nodes[third].sigkill();
    let up: Vec<&str> = all.iter().copied().filter(|n| *n != all[third]).collect();
    live(&nodes[owner], &up).await;
    live(&nodes[visitor_owner], &up).await;
    drop(
        prove(
            &nodes[visitor_owner],
            &second,
            "this is (555) 000-0070 again",
            &customer,
            &conv,
        )
        .await,
    );
    // Back, the third node learns the alias from its peers: what the
    // visitor types through it reaches the number's conversation.
    nodes[third].restart();
    live(&nodes[third], &all).await;
    let mut answer = Value::Null;
    for attempt in 0..100 {
        let (mut chat, _) = chat_on(&nodes[third], &second).await;
        let id = format!("m-back-{attempt}");
        send_json(
            &mut chat,
            json!({"type": "message", "text": "or saturday", "id": id}),
        )
        .await;
        answer = next_json(&mut chat).await;
        if answer["type"] == "ack" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(answer["conversation_id"], conv.as_str(), "{answer}");
}
