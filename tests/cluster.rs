//! Cluster membership with ractor_cluster, each node its own process on
//! loopback: nodes that share the cookie find each other through a seed
//! (transitively); a node with another cookie never joins.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const COOKIE: &str = "test-cluster-cookie-0001";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
    let n = Node::start(&[]);
    let v = cluster(&n).await;
    assert_eq!(v["mode"], "single");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    for (bad, key) in [
        ("name = \"n 1\"\nlisten = \"127.0.0.1:7100\"\ncookie = \"0123456789abcdef\"", "cluster.name"),
        ("name = \"n1\"\nlisten = \"nowhere\"\ncookie = \"0123456789abcdef\"", "cluster.listen"),
        ("name = \"n1\"\nlisten = \"127.0.0.1:7100\"\nseeds = [\"x\"]\ncookie = \"0123456789abcdef\"", "cluster.seeds[0]"),
        ("name = \"n1\"\nlisten = \"127.0.0.1:7100\"\ncookie = \"short\"", "cluster.cookie"),
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
}
