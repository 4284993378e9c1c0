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
use threadline_protocol::codec::{self, InboundMessage};
use threadline_protocol::{ConversationId, MessageId};

use crate::consent::keywords::Keyword;
use crate::conversation::{ConvKey, InboundAck, InboundMeta};
use crate::router::{DeliverError, Delivered, Router};

/// How long a forwarded message may take on its owner.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// The process group every node's router joins.
const ROUTERS: &str = "threadline.routers";

/// What nodes ask each other's router: the remotable actor of a node
/// (conversations stay local-only).
#[derive(ractor_cluster::RactorClusterMessage)]
pub enum RouterMsg {
    /// Application heartbeat: the caller's name; answers with this node's.
    #[rpc]
    Ping(String, RpcReplyPort<String>),
    /// An inbound message for a conversation this node owns (a bincode
    /// `Forwarded`); answers with a bincode `ForwardResult` once durable.
    #[rpc]
    Deliver(Vec<u8>, RpcReplyPort<Vec<u8>>),
    /// A conversation (a bincode `Lookup`); answers with a bincode
    /// `Result<Option<snapshot bytes>, String>`.
    #[rpc]
    View(Vec<u8>, RpcReplyPort<Vec<u8>>),
    /// How many conversations this node holds in memory now.
    #[rpc]
    Resident(String, RpcReplyPort<u64>),
}

/// Low 48 bits of a conversation id: the creating node's counter.
const ID_LOW: u64 = (1 << 48) - 1;

/// A node's id tag: 16 bits of its name's hash, never 0 (single nodes).
pub fn id_tag(name: &str) -> u16 {
    (weight("", name) >> 48) as u16 | 1
}

/// The first conversation id a node hands out: `next` (from storage) in
/// the node's tag space.
pub fn first_id(next: u64, tag: Option<u16>) -> u64 {
    match tag {
        None => next,
        Some(t) if next >> 48 == u64::from(t) => next,
        Some(t) => (u64::from(t) << 48) | (next & ID_LOW).max(1),
    }
}

/// An inbound message on its way to the node that owns its conversation.
#[derive(serde::Serialize, serde::Deserialize)]
struct Forwarded {
    tenant: String,
    contact: String,
    msg: InboundMessage,
    hint: Option<String>,
    from_state: Option<String>,
    identities: Option<threadline_protocol::Identities>,
    profile_name: Option<String>,
}

/// Which conversation a `View` asks for.
#[derive(serde::Serialize, serde::Deserialize)]
enum Lookup {
    Contact(String, String),
    Id(u64),
}

#[derive(serde::Serialize, serde::Deserialize)]
enum ForwardResult {
    Recorded {
        conversation: u64,
        seq: u32,
        duplicate: bool,
    },
    DeadLettered(Option<u64>),
    Unavailable(String),
    Storage(String),
}

fn keyword_name(k: Keyword) -> &'static str {
    match k {
        Keyword::OptOut => "opt_out",
        Keyword::OptIn => "opt_in",
        Keyword::Help => "help",
    }
}

fn keyword_of(s: &str) -> Option<Keyword> {
    [Keyword::OptOut, Keyword::OptIn, Keyword::Help]
        .into_iter()
        .find(|k| keyword_name(*k) == s)
}

fn wire<T: serde::Serialize>(v: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(v, bincode::config::standard()).expect("plain data encodes")
}

fn unwire<T: serde::de::DeserializeOwned>(b: &[u8]) -> Option<T> {
    bincode::serde::decode_from_slice(b, bincode::config::standard())
        .ok()
        .map(|(v, _)| v)
}

struct RouterActor;

struct RouterState {
    name: String,
    router: Router,
}

impl Actor for RouterActor {
    type Msg = RouterMsg;
    type State = RouterState;
    type Arguments = RouterState;

    async fn pre_start(
        &self,
        _myself: ActorRef<RouterMsg>,
        st: RouterState,
    ) -> Result<RouterState, ActorProcessingErr> {
        Ok(st)
    }

    async fn handle(
        &self,
        _myself: ActorRef<RouterMsg>,
        msg: RouterMsg,
        st: &mut RouterState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RouterMsg::Ping(_from, reply) => {
                let _ = reply.send(st.name.clone());
            }
            RouterMsg::Resident(_from, reply) => {
                let _ = reply.send(st.router.resident() as u64);
            }
            RouterMsg::View(bytes, reply) => {
                let router = st.router.clone();
                tokio::spawn(async move {
                    let found = match unwire::<Lookup>(&bytes) {
                        None => Err(DeliverError::Unavailable("unreadable view request".into())),
                        Some(Lookup::Contact(t, c)) => router.view_local(&t, &c).await,
                        Some(Lookup::Id(id)) => router.view_by_id_local(ConversationId(id)).await,
                    };
                    let answer: Result<Option<Vec<u8>>, String> = found
                        .map(|s| s.map(|s| codec::encode_snapshot(&s)))
                        .map_err(|e| e.to_string());
                    let _ = reply.send(wire(&answer));
                });
            }
            RouterMsg::Deliver(bytes, reply) => {
                // Delivered on its own task: the router stays free for
                // heartbeats and other deliveries.
                let router = st.router.clone();
                tokio::spawn(async move {
                    let result = match unwire::<Forwarded>(&bytes) {
                        None => ForwardResult::Unavailable("unreadable forwarded message".into()),
                        Some(f) => {
                            let meta = InboundMeta {
                                hint: f.hint.as_deref().and_then(keyword_of),
                                from_state: f.from_state,
                                identities: f.identities,
                                profile_name: f.profile_name,
                            };
                            match router
                                .deliver_local(&f.tenant, &f.contact, f.msg, meta)
                                .await
                            {
                                Ok(Delivered::Recorded(a)) => ForwardResult::Recorded {
                                    conversation: a.conversation.0,
                                    seq: a.message.seq,
                                    duplicate: a.duplicate,
                                },
                                Ok(Delivered::DeadLettered { conversation }) => {
                                    ForwardResult::DeadLettered(conversation.map(|c| c.0))
                                }
                                Err(DeliverError::Unavailable(m)) => ForwardResult::Unavailable(m),
                                Err(DeliverError::Storage(m)) => ForwardResult::Storage(m),
                            }
                        }
                    };
                    let _ = reply.send(wire(&result));
                });
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
    /// Each peer's router, by name (learned from heartbeat answers).
    routers: BTreeMap<String, ActorRef<RouterMsg>>,
}

/// This node's membership.
pub struct Cluster {
    pub spec: ClusterSpec,
    metrics: Arc<crate::metrics::Metrics>,
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
    pub async fn start(
        spec: ClusterSpec,
        retry: Duration,
        router: Router,
    ) -> Result<Arc<Cluster>, String> {
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
        let shared = router.shared.clone();
        let (router, _) = Actor::spawn(
            None,
            RouterActor,
            RouterState {
                name: spec.name.clone(),
                router,
            },
        )
        .await
        .map_err(|e| format!("cluster router: {e}"))?;
        ractor::pg::join(ROUTERS.into(), vec![router.get_cell()]);
        let cluster = Arc::new(Cluster {
            metrics: shared.metrics.clone(),
            spec,
            server,
            view,
            router,
        });
        let _ = shared.cluster.set(Arc::downgrade(&cluster));
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
                    let a = p
                        .call(|reply| RouterMsg::Ping(me, reply), Some(timeout))
                        .await;
                    (p, a)
                }
            });
            let answers = futures_util::future::join_all(calls).await;
            let now = Instant::now();
            let mut v = self.view.write();
            for (p, a) in answers {
                if let Ok(ractor::rpc::CallResult::Success(name)) = a {
                    v.answered.insert(name.clone(), now);
                    v.routers.insert(name, p);
                }
            }
            let View {
                peers, answered, ..
            } = &mut *v;
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
        // a peer that connected to us first is matched by the seed's port.
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
        // A member counts once its router answered: only then can work
        // be forwarded to it.
        let reachable: Vec<String> = self.view.read().routers.keys().cloned().collect();
        let mut names: Vec<String> = self
            .members()
            .into_iter()
            .filter(|m| m.healthy && reachable.contains(&m.name))
            .map(|m| m.name)
            .collect();
        names.push(self.spec.name.clone());
        names.sort();
        names.dedup();
        names
    }

    /// The live node that owns `key`, if it is not this one.
    pub fn remote_owner(&self, key: &ConvKey) -> Option<String> {
        let live = self.live_names();
        let k = format!("{}\0{}", key.tenant(), key.contact());
        let owner = ranked(&k, &live).first().map(|s| s.to_string())?;
        (owner != self.spec.name).then_some(owner)
    }

    /// Conversations each live node holds in memory now, by name (this
    /// node's included; a peer that does not answer in time is left out).
    pub async fn resident_by_node(&self, mine: u64) -> BTreeMap<String, u64> {
        let peers: Vec<(String, ActorRef<RouterMsg>)> = {
            let v = self.view.read();
            self.live_names()
                .into_iter()
                .filter_map(|n| v.routers.get(&n).map(|r| (n, r.clone())))
                .collect()
        };
        let me = self.spec.name.clone();
        let asks = peers.into_iter().map(|(n, r)| {
            let me = me.clone();
            async move {
                let a = r
                    .call(
                        |reply| RouterMsg::Resident(me, reply),
                        Some(self.spec.heartbeat),
                    )
                    .await;
                match a {
                    Ok(ractor::rpc::CallResult::Success(c)) => Some((n, c)),
                    _ => None,
                }
            }
        });
        let mut out: BTreeMap<String, u64> = futures_util::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect();
        out.insert(me, mine);
        out
    }

    /// The live node that created conversation `id` (its tag), if that is
    /// another node.
    pub fn remote_creator(&self, id: ConversationId) -> Option<String> {
        let tag = (id.0 >> 48) as u16;
        if tag == 0 || tag == id_tag(&self.spec.name) {
            return None;
        }
        self.live_names().into_iter().find(|n| id_tag(n) == tag)
    }

    /// Asks `node` for conversation `id`.
    pub async fn forward_view_by_id(
        &self,
        node: &str,
        id: ConversationId,
    ) -> Result<Option<threadline_protocol::ConversationState>, DeliverError> {
        self.lookup(node, Lookup::Id(id.0)).await
    }

    /// Asks `owner` for the conversation of `key`.
    pub async fn forward_view(
        &self,
        owner: &str,
        key: &ConvKey,
    ) -> Result<Option<threadline_protocol::ConversationState>, DeliverError> {
        let lookup = Lookup::Contact(key.tenant().to_owned(), key.contact().to_owned());
        self.lookup(owner, lookup).await
    }

    /// A `View` RPC to `node`.
    async fn lookup(
        &self,
        node: &str,
        lookup: Lookup,
    ) -> Result<Option<threadline_protocol::ConversationState>, DeliverError> {
        let req = wire(&lookup);
        let bytes = self.call(node, |reply| RouterMsg::View(req, reply)).await?;
        let unavailable = |why: String| DeliverError::Unavailable(format!("node {node}: {why}"));
        match unwire::<Result<Option<Vec<u8>>, String>>(&bytes) {
            Some(Ok(None)) => Ok(None),
            Some(Ok(Some(snap))) => codec::decode_snapshot(&snap)
                .map(Some)
                .map_err(|e| unavailable(e.to_string())),
            Some(Err(m)) => Err(unavailable(m)),
            None => Err(unavailable("unreadable answer".into())),
        }
    }

    /// One RPC to `owner`'s router, counted; unavailable when it cannot be
    /// reached or does not answer in time.
    async fn call(
        &self,
        owner: &str,
        msg: impl FnOnce(RpcReplyPort<Vec<u8>>) -> RouterMsg,
    ) -> Result<Vec<u8>, DeliverError> {
        let unavailable =
            |why: String| DeliverError::Unavailable(format!("owner node {owner}: {why}"));
        let metrics = &self.metrics;
        metrics.cluster_forwarded.inc();
        let target = self.view.read().routers.get(owner).cloned();
        let result = match target {
            None => Err(unavailable("not reachable yet".into())),
            Some(t) => match t.call(msg, Some(FORWARD_TIMEOUT)).await {
                Ok(ractor::rpc::CallResult::Success(b)) => Ok(b),
                Ok(_) => Err(unavailable("no answer in time".into())),
                Err(e) => Err(unavailable(e.to_string())),
            },
        };
        if result.is_err() {
            metrics.cluster_forward_failures.inc();
        }
        result
    }

    /// Delivers an inbound message on `owner` and returns its durable ack;
    /// unavailable (the caller answers 503, the provider retries) when the
    /// owner cannot be reached.
    pub async fn forward(
        &self,
        owner: &str,
        key: &ConvKey,
        msg: InboundMessage,
        meta: InboundMeta,
    ) -> Result<Delivered, DeliverError> {
        let unavailable =
            |why: String| DeliverError::Unavailable(format!("owner node {owner}: {why}"));
        let req = wire(&Forwarded {
            tenant: key.tenant().to_owned(),
            contact: key.contact().to_owned(),
            msg,
            hint: meta.hint.map(|k| keyword_name(k).to_owned()),
            from_state: meta.from_state,
            identities: meta.identities,
            profile_name: meta.profile_name,
        });
        let bytes = self
            .call(owner, |reply| RouterMsg::Deliver(req, reply))
            .await?;
        match unwire::<ForwardResult>(&bytes) {
            Some(ForwardResult::Recorded {
                conversation,
                seq,
                duplicate,
            }) => Ok(Delivered::Recorded(InboundAck {
                conversation: ConversationId(conversation),
                message: MessageId {
                    conversation: ConversationId(conversation),
                    seq,
                },
                duplicate,
            })),
            Some(ForwardResult::DeadLettered(c)) => Ok(Delivered::DeadLettered {
                conversation: c.map(ConversationId),
            }),
            Some(ForwardResult::Unavailable(m)) => Err(unavailable(m)),
            Some(ForwardResult::Storage(m)) => Err(DeliverError::Storage(m)),
            None => Err(unavailable("unreadable answer".into())),
        }
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
    fn conversation_ids_carry_the_creating_nodes_tag() {
        let tag = id_tag("n1");
        assert_ne!(tag, 0, "0 is a single node's");
        assert_ne!(id_tag("n1"), id_tag("n2"));
        assert_eq!(first_id(7, None), 7);
        let first = first_id(7, Some(tag));
        assert_eq!((first >> 48, first & ID_LOW), (u64::from(tag), 7));
        // A node restarted in the cluster goes on from its own next id.
        assert_eq!(first_id(first + 5, Some(tag)), first + 5);
        assert_eq!(first_id(1, Some(tag)) & ID_LOW, 1);
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
