//! Cluster membership over ractor_cluster (first step of the cluster: who
//! is in it; placement by rendezvous hashing is computed here too, but
//! conversations are not yet forwarded or replicated).
//!
//! Each node runs a ractor_cluster `NodeServer` on its cluster address and
//! connects to its seeds (transitively: a seed's peers are connected too).
//! A peer is a member only once its session has *authenticated*:
//! ractor_cluster's `client_connect` returns `Ok` even when the cookies
//! differ, so a connection alone proves nothing. Seeds that never
//! authenticate are logged and retried.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::node::{NodeConnectionMode, NodeServerSessionInformation};
use ractor_cluster::{NodeEventSubscription, NodeServer, NodeServerMessage};

/// The process group every node's router joins.
const ROUTERS: &str = "threadline.routers";

/// What nodes ask each other's router: the remotable actor of a node
/// (conversations stay local-only).
#[derive(ractor_cluster::RactorClusterMessage)]
pub enum RouterMsg {
    /// Application heartbeat: the caller's name; answers with this node's.
    #[rpc]
    Ping(String, RpcReplyPort<String>),
}

struct RouterActor;

impl Actor for RouterActor {
    type Msg = RouterMsg;
    type State = String;
    type Arguments = String;

    async fn pre_start(
        &self,
        _myself: ActorRef<RouterMsg>,
        name: String,
    ) -> Result<String, ActorProcessingErr> {
        Ok(name)
    }

    async fn handle(
        &self,
        _myself: ActorRef<RouterMsg>,
        msg: RouterMsg,
        name: &mut String,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RouterMsg::Ping(_from, reply) => {
                let _ = reply.send(name.clone());
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// This node's name, unique in the cluster.
    pub name: String,
    /// Where this node listens for its peers.
    pub listen: SocketAddr,
    /// Peers to join through.
    pub seeds: Vec<SocketAddr>,
    /// Shared secret; a peer with another cookie never joins.
    pub cookie: String,
    /// How often each peer is pinged.
    pub heartbeat: Duration,
    /// A peer that has not answered for this long is down.
    pub failure_after: Duration,
}

/// A peer as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    /// The peer's address as the session sees it.
    pub addr: String,
    pub since: Instant,
    /// Answered a heartbeat within the failure time.
    pub healthy: bool,
    /// When it last answered (or joined).
    pub last_seen: Instant,
}

#[derive(Default)]
struct View {
    /// Authenticated peers by session actor id.
    peers: BTreeMap<String, Member>,
    /// When each peer (by name) last answered a heartbeat.
    answered: BTreeMap<String, Instant>,
}

/// This node's membership.
pub struct Cluster {
    pub spec: ClusterSpec,
    server: ActorRef<NodeServerMessage>,
    view: Arc<RwLock<View>>,
    router: ActorRef<RouterMsg>,
}

struct Events(Arc<RwLock<View>>);

impl NodeEventSubscription for Events {
    fn node_session_opened(&self, _ses: NodeServerSessionInformation) {}

    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        let gone = self.0.write().peers.remove(&ses.actor.get_id().to_string());
        if let Some(m) = gone {
            tracing::warn!(peer = m.name, addr = m.addr, "cluster peer left");
        }
    }

    fn node_session_authenticated(&self, ses: NodeServerSessionInformation) {
        // ractor_cluster names a peer `name@host`.
        let name = ses
            .peer_name
            .as_ref()
            .map(|n| n.name.split('@').next().unwrap_or_default().to_owned())
            .unwrap_or_default();
        tracing::info!(peer = name, addr = ses.peer_addr, "cluster peer joined");
        self.0.write().peers.insert(
            ses.actor.get_id().to_string(),
            Member {
                name,
                addr: ses.peer_addr.clone(),
                since: Instant::now(),
                healthy: true,
                last_seen: Instant::now(),
            },
        );
    }
}

impl Cluster {
    /// Starts the node server and joins through the seeds (in the
    /// background, retrying every `retry`).
    pub async fn start(spec: ClusterSpec, retry: Duration) -> Result<Arc<Cluster>, String> {
        let server = NodeServer::new(
            spec.listen.port(),
            spec.cookie.clone(),
            spec.name.clone(),
            spec.listen.ip().to_string(),
            None,
            Some(NodeConnectionMode::Transitive),
        )
        .with_listen_addr(spec.listen.ip());
        let (server, _) = Actor::spawn(None, server, ())
            .await
            .map_err(|e| format!("cluster.listen {}: {e}", spec.listen))?;
        let view = Arc::new(RwLock::new(View::default()));
        server
            .cast(NodeServerMessage::SubscribeToEvents {
                id: "threadline-membership".into(),
                subscription: Box::new(Events(view.clone())),
            })
            .map_err(|e| format!("cluster: {e}"))?;
        let (router, _) = Actor::spawn(None, RouterActor, spec.name.clone())
            .await
            .map_err(|e| format!("cluster router: {e}"))?;
        ractor::pg::join(ROUTERS.into(), vec![router.get_cell()]);
        let cluster = Arc::new(Cluster {
            spec,
            server,
            view,
            router,
        });
        let c = cluster.clone();
        tokio::spawn(async move { c.join_seeds(retry).await });
        let c = cluster.clone();
        tokio::spawn(async move { c.heartbeats().await });
        Ok(cluster)
    }

    /// Pings every peer's router each `heartbeat`; a peer silent for
    /// `failure_after` is marked down (ractor_cluster alone noticed a
    /// stopped peer only after about 12 s).
    async fn heartbeats(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.spec.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.server.get_status() != ractor::ActorStatus::Running {
                return;
            }
            let peers: Vec<ActorRef<RouterMsg>> = ractor::pg::get_members(&ROUTERS.to_owned())
                .into_iter()
                .filter(|c| !c.get_id().is_local())
                .map(ActorRef::from)
                .collect();
            let me = self.spec.name.clone();
            let timeout = self.spec.failure_after;
            let calls = peers.into_iter().map(|p| {
                let me = me.clone();
                async move {
                    p.call(|reply| RouterMsg::Ping(me, reply), Some(timeout))
                        .await
                }
            });
            let answers = futures_util::future::join_all(calls).await;
            let now = Instant::now();
            let mut v = self.view.write();
            for a in answers {
                if let Ok(ractor::rpc::CallResult::Success(name)) = a {
                    v.answered.insert(name, now);
                }
            }
            let View { peers, answered } = &mut *v;
            for m in peers.values_mut() {
                let seen = answered
                    .get(&m.name)
                    .copied()
                    .unwrap_or(m.since)
                    .max(m.since);
                m.last_seen = seen;
                let healthy = now.duration_since(seen) < self.spec.failure_after;
                if m.healthy && !healthy {
                    tracing::warn!(peer = m.name, "cluster peer stopped answering heartbeats");
                } else if !m.healthy && healthy {
                    tracing::info!(peer = m.name, "cluster peer answers heartbeats again");
                }
                m.healthy = healthy;
            }
        }
    }

    /// Connects to every seed not yet a member, again and again; a seed
    /// that accepts the connection but never authenticates has another
    /// cookie (or is not a Threadline node) and is logged.
    async fn join_seeds(self: Arc<Self>, retry: Duration) {
        let mut warned = std::collections::HashSet::new();
        loop {
            for seed in &self.spec.seeds {
                if self.is_member_addr(*seed) {
                    continue;
                }
                match ractor_cluster::client_connect(&self.server, *seed).await {
                    Ok(()) => {
                        tokio::time::sleep(retry).await;
                        if !self.is_member_addr(*seed) && warned.insert(*seed) {
                            tracing::error!(
                                %seed,
                                "cluster seed accepted the connection but did not authenticate: wrong cookie?"
                            );
                        }
                    }
                    Err(e) => tracing::debug!(%seed, error = %e, "cluster seed unreachable"),
                }
            }
            if self.server.get_status() != ractor::ActorStatus::Running {
                return;
            }
            tokio::time::sleep(retry).await;
        }
    }

    fn is_member_addr(&self, seed: SocketAddr) -> bool {
        // A session's peer address is the seed's for outgoing sessions;
        // incoming ones carry the peer's ephemeral port, so names count too.
        let v = self.view.read();
        v.peers
            .values()
            .any(|m| m.addr == seed.to_string() || m.addr.ends_with(&format!(":{}", seed.port())))
    }

    /// The authenticated peers, one per name, by name.
    pub fn members(&self) -> Vec<Member> {
        let mut by_name: BTreeMap<String, Member> = BTreeMap::new();
        for m in self.view.read().peers.values() {
            by_name.entry(m.name.clone()).or_insert_with(|| m.clone());
        }
        by_name.into_values().collect()
    }

    /// Every live node's name (answering heartbeats), this one included,
    /// sorted.
    pub fn live_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .members()
            .into_iter()
            .filter(|m| m.healthy)
            .map(|m| m.name)
            .collect();
        names.push(self.spec.name.clone());
        names.sort();
        names.dedup();
        names
    }

    pub fn stop(&self) {
        self.router.stop(Some("shutdown".into()));
        self.server.stop(Some("shutdown".into()));
    }
}

/// Rendezvous (highest random weight) hashing: the node that owns `key`
/// among `nodes`, then the next ones in order (for replicas). Stable: a
/// key moves only when its owner leaves or a node that outranks the owner
/// joins.
pub fn ranked<'a>(key: &str, nodes: &'a [String]) -> Vec<&'a str> {
    let mut scored: Vec<(u64, &str)> = nodes.iter().map(|n| (weight(key, n), n.as_str())).collect();
    scored.sort_by(|a, b| b.cmp(a));
    scored.into_iter().map(|(_, n)| n).collect()
}

/// A stable 64-bit weight of (key, node): the first 8 bytes of SHA-256.
fn weight(key: &str, node: &str) -> u64 {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(node.as_bytes());
    h.update([0u8]);
    h.update(key.as_bytes());
    let d = h.finalize();
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("node{i}")).collect()
    }

    #[test]
    fn placement_is_stable_and_spread() {
        let three = nodes(3);
        let mut counts = BTreeMap::new();
        for k in 0..3000 {
            let key = format!("acme\0+1555{k:07}");
            let r = ranked(&key, &three);
            assert_eq!(r.len(), 3);
            assert_eq!(r, ranked(&key, &three), "same answer every time");
            *counts.entry(r[0]).or_insert(0) += 1;
        }
        for (n, c) in &counts {
            assert!((800..1200).contains(c), "{n} owns {c} of 3000");
        }
    }

    #[test]
    fn a_leaving_node_moves_only_its_own_keys_to_their_next_node() {
        let three = nodes(3);
        let two: Vec<String> = three.iter().filter(|n| *n != "node1").cloned().collect();
        for k in 0..2000 {
            let key = format!("t\0c{k}");
            let before = ranked(&key, &three);
            let after = ranked(&key, &two);
            if before[0] != "node1" {
                assert_eq!(after[0], before[0], "a key of a surviving node stays");
            } else {
                assert_eq!(after[0], before[1], "the replica takes over");
            }
        }
    }

    #[test]
    fn a_joining_node_takes_about_its_share() {
        let three = nodes(3);
        let four = nodes(4);
        let moved = (0..4000)
            .filter(|k| {
                let key = format!("t\0c{k}");
                ranked(&key, &three)[0] != ranked(&key, &four)[0]
            })
            .count();
        assert!((800..1200).contains(&moved), "{moved} of 4000 moved");
    }
}
