//! The cluster over ractor_cluster. This file holds the types, the
//! node's view of its peers and `Cluster::start`; each concern is a child
//! module: `membership` (heartbeats and sessions into
//! `threadline_core::membership`; placement is
//! `threadline_core::placement`), `router` (what a node
//! answers its peers), `forward` (to the owner, and whether this node may
//! serve), `replicate`, `ownership` (take-over and hand-over), `pool` (one
//! agent pool for the cluster), `calendar` (each tenant's calendar home),
//! `requests` (HTTP requests passed on). Every payload between nodes is a
//! versioned wire type with a golden fixture (`wire_golden`).
//!
//! Each node runs a ractor_cluster `NodeServer` on its cluster address and
//! connects to its seeds, and to every node its peers name in their
//! heartbeat answers (so a seed's peers are connected too). With
//! `tls`, every link is TLS with certificates from the cluster's CA, both
//! ways. A peer is a member only once its session has *authenticated*:
//! ractor_cluster's `client_connect` returns `Ok` even when the cookies
//! differ, so a connection alone proves nothing. Seeds that never
//! authenticate are logged and retried.
//!
//! # Membership, forwarding, replication and moves
//!
//! membership over ractor_cluster (a `NodeServer`; joins through seeds, and
//! to every cluster address a peer's heartbeat answer names, since
//! ractor_cluster's own transitive connects are plain TCP; members only once
//! authenticated; with `LinkTls`, every link is mutual TLS: the acceptor asks
//! for a client certificate of the cluster CA, the connector checks the
//! peer's against it and `server_name`), one remotable router actor per node
//! in the `threadline.routers` process group (`RouterMsg`: `Ping` heartbeats,
//! `Deliver` forwarded inbound in batches, `View` reads, `Resident` counts,
//! `Replicate` replica changes, `Handover` a conversation moving to its
//! owner; payloads are versioned postcard: `codec::encode_wire`), rendezvous placement (`ranked`) over the
//! live nodes (healthy and reachable). Every other message type is local-only
//! (`#[derive(RactorMessage)]`). Heartbeats: one ping task per peer, health
//! judged every tick from the answers; a node that finds itself paused (a
//! tick later than `failure_after`) judges its peers afresh instead of
//! declaring them gone. Forwarding: `Router::deliver_with` asks the cluster
//! for a remote owner; messages for one owner queue and go in batches (two
//! RPCs in flight per peer). An RPC is abandoned as soon as its peer leaves
//! the live set. Replication (`replication_factor = 2`): the writer hands
//! each committed batch to the replicator task instead of completing it; the
//! replicator sends each conversation's new records to the next live node in
//! hash order (rounds overlap, four at most, and complete in commit order)
//! and completes the callbacks once the replica answered `Stored`; a replica
//! that lacks earlier changes answers `NeedBase` and gets the whole
//! conversation; `Fenced` (the replica holds a newer epoch) fails the change
//! and stops the stale actor. Rebalance, on every change of the live set:
//! replicas whose owner is gone are taken over (`promote`: epoch + 1, timers
//! to the scheduler, queued messages to the sender, a base to the new
//! replica), only once a majority of the nodes it has known count the owner
//! gone (`gone_for_a_majority`: this node and the live peers whose
//! heartbeat answers leave it out);
//! conversations another live node now owns are handed to it (`hand_over`:
//! epoch + 1; this node keeps a replica). A conversation being moved is
//! locked (`moving`): not served, not moved twice. A node with seeds serves
//! nothing until it has joined: it settles its live set (`balanced`, which
//! placement and the pool's home follow) only once every node its peers count
//! live (the last field of their heartbeat answers, `vouched`) answers it
//! too, or the failure time has passed since the first answer (`joined`); a
//! peer answering for the first time settles the live set at once
//! (`settle_now`) rather than at the next tick. The conversations it held
//! when it started are `unconfirmed`: a read of one first asks the next node
//! in hash order (the one that stood in for it) whether it holds a newer
//! epoch, and is answered there if so (`newer_copy`), until the conversation
//! is handed back or found current. Writes addressed by conversation id
//! (`command::ConvOp`) or by contact (`command::ContactOp`: business
//! messages, consent, contact details, call steps, delivery reports) are
//! sent by the router, as typed `PoolAsk`s, to the node that holds the
//! conversation (`locate`) or owns the contact (`remote_owner`), which runs
//! them itself; a timer this node does not hold is cancelled by asking each
//! live peer (`PoolAsk::CancelTimer`). Conversation and timer ids carry the creating
//! node's 16-bit tag. A peer whose session closed and opened again between
//! two ticks is rebalanced like a change of the live set. Graceful leave
//! (`Cluster::leave`, on SIGTERM): the heartbeat answer says `leaving`, peers
//! stop counting the node live and do not take its conversations over
//! (`known_gone` is false for a leaving peer while it answers); three ticks
//! later the node stops counting itself, and its own rebalance hands every
//! conversation over; it refuses hand-overs to itself meanwhile. It looks at
//! what it still holds every 100 ms (or every tick, if shorter) and leaves
//! once it holds nothing, or after 20 s; `src/main.rs` then drops the
//! membership before the runtime's shutdown, which waits for the last
//! reference to the shared state. `forget` drops a node removed for good from
//! the known set (`DELETE /api/v1/cluster/members/{name}`).
//!
//! # Invariants
//!
//! Each conversation lives on one node, the first of `ranked(key, live)`; its
//! replica is on the second. Invariants:
//!
//! - In a cluster with `replication_factor = 2`, a 2xx means the change is
//!   durable on the owner *and* on its replica: the writer commits, the
//!   replicator gets the replica's `Stored`, and only then completes the
//!   change's callback. No live replica, no ack (503): two live nodes are
//!   needed to write, three to survive the loss of one.
//! - An ownership move (take-over or hand-over) raises the conversation's
//!   epoch. A replica refuses changes from an older epoch and from anyone
//!   while it holds the conversation itself, so a stale owner (paused, cut
//!   off) can commit locally but never acknowledge.
//! - A lost owner's conversations are taken over only by the next node in
//!   hash order (the one with the replica), and only once a majority of the
//!   nodes it has known count the owner gone; a node that does not reach a
//!   majority serves no conversation (`check_local`).
//! - A moving conversation is served by nobody on the moving node (503, the
//!   caller retries), and moved by one path at a time.
//! - The writer decides which writes of a moving conversation it takes
//!   (`fence.rs`, in the order it takes operations): a mover seals the
//!   conversation before it reads the state it moves, so that state holds
//!   everything this node will ever commit of it at that epoch; once
//!   installed at epoch `e` only actors that loaded it at `e` write; once
//!   handed over nobody does. A stale actor (a delivery that raced the move,
//!   or its snapshot as it stops) is refused (503), never written over the
//!   copy that replaced it. A hand-over that got no answer stays sealed until
//!   it is answered, installed here again, or no live peer has a newer copy.
//! - What a node keeps of a conversation it gave away is a replica, never a
//!   log tail without its snapshot: every move records, in the same commit,
//!   the first log key that counts for the conversation (`moved`); records
//!   below it (covered by a snapshot, not truncated yet) are never replayed.
//!   A conversation whose records still do not replay at open is set aside
//!   (`quarantine` table, ERROR in the log) and the node serves the rest.
//! - What moves with a conversation: its state (transcript, captured facts,
//!   consent ledger), its pending timers, its queued outbound messages
//!   (re-sent with the same idempotency key), the agent pool's row (on a
//!   take-over, derived from the state: who holds it, or its place in the
//!   queue). What does not: its audit records (each node's chain keeps the
//!   decisions it sealed; an export from any node gathers every live node's,
//!   each record naming its node outside the hash, and `verify` checks one
//!   chain per node and tenant) and its calendar holds, which belong to the
//!   tenant's calendar home (`cluster/calendar.rs`), not to the
//!   conversation's node.
//! - A calendar slot is given to a customer only by the tenant's calendar
//!   home (in a cluster), before the conversation acknowledges anything that
//!   depends on it.
//! - One pool routes for the cluster, on its home; every other node only
//!   relays. A conversation is written only by the node that holds it, the
//!   pool included (`ConvOp`).
//! - A leaving node's conversations are handed over by the node itself;
//!   nobody promotes a replica of a peer that says it is leaving while it
//!   still answers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use ractor::{Actor, ActorRef, RpcReplyPort};
use ractor_cluster::node::NodeConnectionMode;
use ractor_cluster::{NodeServer, NodeServerMessage};
use threadline_protocol::codec::InboundMessage;

use crate::consent::keywords::Keyword;
use crate::conversation::ConvKey;

mod aliases;
mod calendar;
mod chat;
mod forward;
mod local;
mod membership;
mod ownership;
mod pool;
mod replicate;
mod requests;
mod router;
pub use local::LocalNode;
#[cfg(test)]
mod wire_golden;
pub use threadline_core::placement::{first_id, id_tag, ranked};
// Free functions of one part that the others call.
use forward::gather;
use ownership::peek;
pub(crate) use pool::PoolAsk;
pub use pool::SessionHandle;
use replicate::replicator;
pub use requests::{PeerAnswer, PeerRequest, RequestHandler};

/// How long a forwarded message may take on its owner.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// Conversations taken over or handed over at once by one rebalance.
const MOVES_AT_ONCE: usize = 32;

/// The process group every node's router joins.
const ROUTERS: &str = "threadline.routers";

/// What nodes ask each other's router: the remotable actor of a node
/// (conversations stay local-only).
#[derive(ractor_cluster::RactorClusterMessage)]
pub enum RouterMsg {
    /// Application heartbeat: the caller's name (a wire `String`);
    /// answers a wire `Heartbeat`.
    #[rpc]
    Ping(Vec<u8>, RpcReplyPort<Vec<u8>>),
    /// Inbound messages for conversations this node owns (a wire
    /// `Vec<Forwarded>`); answers with a wire `Vec<ForwardResult>`
    /// (one each, in order) once durable.
    #[rpc]
    Deliver(Vec<u8>, RpcReplyPort<Vec<u8>>),
    /// A conversation (a wire `Lookup`); answers with a wire
    /// `Result<Option<snapshot bytes>, String>`.
    #[rpc]
    View(Vec<u8>, RpcReplyPort<Vec<u8>>),
    /// How many conversations this node holds in memory now.
    #[rpc]
    Resident(String, RpcReplyPort<u64>),
    /// Changes to keep as replicas (a wire `Vec<ReplicaEntry>`);
    /// answers a wire `Result<Vec<Verdict>, String>` once durable.
    #[rpc]
    Replicate(Vec<u8>, RpcReplyPort<Vec<u8>>),
    /// A conversation this node owns now (a wire `Handover`); answers a
    /// wire `Result<Verdict, String>` once installed.
    #[rpc]
    Handover(Vec<u8>, RpcReplyPort<Vec<u8>>),
    /// What this node has of a conversation (a wire `(u64, bool)`: id,
    /// whether to include the replica's state); answers a wire `Peek`.
    #[rpc]
    Peek(Vec<u8>, RpcReplyPort<Vec<u8>>),
    /// A request to the agent pool's home, or to the node holding a
    /// conversation the pool writes to (a wire `PoolAsk`); answers a
    /// wire `Result<T, String>`.
    #[rpc]
    PoolAsk(Vec<u8>, RpcReplyPort<Vec<u8>>),
    /// One-way agent pool traffic (a wire `PoolTell`): escalations,
    /// desktop commands and held conversations' messages to the home,
    /// desktop events from the home. In order per sender.
    PoolTell(Vec<u8>),
    /// An HTTP request another node passes on (a wire `PeerRequest`);
    /// answers a wire `Result<PeerAnswer, String>`.
    #[rpc]
    Request(Vec<u8>, RpcReplyPort<Vec<u8>>),
    /// A request about a tenant's calendar (a wire
    /// `calendar::CalendarAsk`); answers a wire `Result<T, String>`.
    #[rpc]
    Calendar(Vec<u8>, RpcReplyPort<Vec<u8>>),
}

/// A node's answer to a heartbeat.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Heartbeat {
    name: String,
    /// Its HTTP address, if it has one.
    http: Option<String>,
    /// It is leaving the cluster (SIGTERM).
    leaving: bool,
    /// Its cluster address, then those of its live peers.
    links: Vec<SocketAddr>,
    /// The names of the nodes it counts live (`vouched`).
    live: Vec<String>,
}

/// What a node has of a conversation, asked before taking it over.
#[derive(serde::Serialize, serde::Deserialize)]
enum Peek {
    Nothing,
    Held {
        epoch: u64,
    },
    Replica {
        epoch: u64,
        last_seq: u32,
        /// The replica's state (a snapshot), when asked for.
        snapshot: Option<Vec<u8>>,
    },
}

/// Why a hand-over did not complete.
enum HandoverError {
    /// The receiver did not take the conversation: it stays here.
    Refused(String),
    /// Unknown whether the receiver took it.
    InDoubt(String),
}

/// A whole conversation moving to the node that owns it now.
#[derive(serde::Serialize, serde::Deserialize)]
struct Handover {
    conv: u64,
    tenant: String,
    contact: String,
    epoch: u64,
    snapshot: Vec<u8>,
    /// The agent pool's row of it (waiting for or held by an agent).
    work: Option<threadline_protocol::AgentWork>,
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
    /// A contact's conversation, read on its owner: if the owner has none
    /// yet, it asks the other live nodes (`ContactHere`), since one of them
    /// may still hold it until it is handed over.
    Contact(String, String),
    Id(u64),
    /// A contact's conversation as this node holds it, and no further.
    ContactHere(String, String),
}

#[derive(Clone, serde::Serialize, serde::Deserialize)]
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

/// A payload for a peer: the wire version, then postcard.
fn wire<T: serde::Serialize>(v: &T) -> Vec<u8> {
    threadline_protocol::codec::encode_wire(v)
}

/// A peer's payload, if it is of this node's wire version and reads as a
/// `T` (why not is logged: a peer of another version, or a bug).
fn unwire<T: serde::de::DeserializeOwned>(b: &[u8]) -> Option<T> {
    match threadline_protocol::codec::decode_wire(b) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(
                error = %e,
                expected = std::any::type_name::<T>(),
                "unreadable payload from a peer"
            );
            None
        }
    }
}

struct RouterActor;

struct RouterState {
    /// This node's name and HTTP address, for the heartbeat's answer.
    name: String,
    http: Option<String>,
    /// Set when the node leaves the cluster (SIGTERM).
    leaving: Arc<std::sync::atomic::AtomicBool>,
    node: Arc<dyn LocalNode>,
    /// The node's membership (set right after the router starts).
    cluster: Arc<std::sync::OnceLock<std::sync::Weak<Cluster>>>,
}

impl RouterState {
    /// This node's membership, while it runs.
    fn cluster(&self) -> Option<Arc<Cluster>> {
        self.cluster.get().and_then(|c| c.upgrade())
    }
}

pub use threadline_core::membership::ForgetError;
use threadline_core::membership::{Answer, Membership, MembershipConfig};

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
    /// Copies of each conversation (1: no replica; 2: the owner's and
    /// one on the next node in hash order).
    pub replication_factor: u8,
    /// This node's HTTP address (shown in the cluster view).
    pub http: Option<SocketAddr>,
    /// TLS for every link between nodes (absent: plain TCP).
    pub tls: Option<LinkTls>,
}

/// TLS for the links between nodes: each node accepts only peers whose
/// certificate the cluster's CA signed, and checks the same of the
/// nodes it connects to (which must carry `server_name`).
#[derive(Clone)]
pub struct LinkTls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub connector: tokio_rustls::TlsConnector,
    pub server_name: rustls_pki_types::ServerName<'static>,
}

impl std::fmt::Debug for LinkTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
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

/// What this node knows of its peers: membership (the pure rules, in
/// `threadline_core::membership`) and how to reach each peer.
struct View {
    /// Sessions, answers, the live set and the majority rules.
    m: Membership,
    /// Each peer's router, by name (learned from heartbeat answers).
    routers: BTreeMap<String, ActorRef<RouterMsg>>,
    /// Each peer's HTTP address, by name (from heartbeat answers).
    http: BTreeMap<String, String>,
    /// Each peer's cluster address, by name (from heartbeat answers).
    links: BTreeMap<String, SocketAddr>,
    /// Cluster addresses peers named in their heartbeat answers: this
    /// node connects to each (with TLS, ractor_cluster's own transitive
    /// connections cannot be used, since they are plain TCP).
    learned: std::collections::BTreeSet<SocketAddr>,
}

/// This node's membership.
pub struct Cluster {
    pub spec: ClusterSpec,
    /// The node it runs on.
    node: Arc<dyn LocalNode>,
    started: Instant,
    /// Conversations moving between nodes right now: not served here.
    moving: dashmap::DashSet<ConvKey>,
    /// Per owner node: the queue of messages forwarded to it, sent in
    /// batches (one RPC carries every message queued meanwhile).
    forwarders: parking_lot::Mutex<
        std::collections::HashMap<String, tokio::sync::mpsc::UnboundedSender<ForwardJob>>,
    >,
    /// Peers whose aliases were read since they were last seen live.
    aliases_read: parking_lot::Mutex<std::collections::HashSet<String>>,
    /// Peers (router actor ids) with a heartbeat ping out.
    pinging: parking_lot::Mutex<std::collections::HashSet<ractor::ActorId>>,
    /// Peers already logged for answering in another wire version (they
    /// are never counted live).
    other_wire: parking_lot::Mutex<std::collections::HashSet<ractor::ActorId>>,
    /// Notified whenever the live set changes.
    membership: tokio::sync::Notify,
    /// Wakes the heartbeat loop to settle the live set now.
    settle_now: tokio::sync::Notify,
    /// A rebalance is running / another one is wanted after it.
    rebalancing: std::sync::atomic::AtomicBool,
    rebalance_again: std::sync::atomic::AtomicBool,
    metrics: Arc<crate::metrics::Metrics>,
    server: ActorRef<NodeServerMessage>,
    view: Arc<RwLock<View>>,
    router: ActorRef<RouterMsg>,
    /// The agent pool across nodes: its home, relayed desktops.
    pool: pool::PoolLinks,
    /// The tenants' calendars this node decides or replicates.
    calendar: calendar::CalendarLinks,
    /// Conversations this node held when it started: while it was down
    /// another node may have taken them over, so its copy may be old until
    /// it is handed back here or the other node says it has nothing newer.
    unconfirmed: dashmap::DashMap<ConvKey, u64>,
    /// Conversations whose hand-over got no answer: the receiver may have
    /// installed them, so they stay sealed here (the writer takes none of
    /// their writes) until a hand-over is answered, they are installed
    /// here again, or every live peer says it has no newer copy.
    in_doubt: dashmap::DashSet<u64>,
    /// This node is leaving (its heartbeat answers say so: peers stop
    /// counting it live) ...
    /// (Once they have heard, it no longer counts itself live: `View::m`,
    /// `Membership::leave`.)
    leaving: Arc<std::sync::atomic::AtomicBool>,
    /// Serves the HTTP requests peers pass on (set by the binary).
    requests: std::sync::OnceLock<RequestHandler>,
}

/// Session events into the view; times count from `started`.
struct Events(Arc<RwLock<View>>, Instant);

impl Cluster {
    /// Starts the node server and joins through the seeds (in the
    /// background, retrying every `retry`).
    pub async fn start(
        spec: ClusterSpec,
        retry: Duration,
        node: Arc<dyn LocalNode>,
    ) -> Result<Arc<Cluster>, String> {
        let (encryption, mode) = match &spec.tls {
            None => (None, NodeConnectionMode::Transitive),
            Some(t) => (
                Some(ractor_cluster::IncomingEncryptionMode::Tls(
                    t.acceptor.clone(),
                )),
                NodeConnectionMode::Isolated,
            ),
        };
        let server = NodeServer::new(
            spec.listen.port(),
            spec.cookie.clone(),
            spec.name.clone(),
            spec.listen.ip().to_string(),
            encryption,
            Some(mode),
        )
        .with_listen_addr(spec.listen.ip());
        let (server, _) = Actor::spawn(None, server, ())
            .await
            .map_err(|e| format!("cluster.listen {}: {e}", spec.listen))?;
        let started = Instant::now();
        let view = Arc::new(RwLock::new(View {
            m: Membership::new(MembershipConfig {
                name: spec.name.clone(),
                failure_after: spec.failure_after.as_millis() as u64,
                first_node: spec.seeds.is_empty(),
            }),
            routers: BTreeMap::new(),
            http: BTreeMap::new(),
            links: BTreeMap::new(),
            learned: Default::default(),
        }));
        server
            .cast(NodeServerMessage::SubscribeToEvents {
                id: "threadline-membership".into(),
                subscription: Box::new(Events(view.clone(), started)),
            })
            .map_err(|e| format!("cluster: {e}"))?;
        let unconfirmed = dashmap::DashMap::new();
        let mut rejoining = false;
        if spec.replication_factor >= 2 {
            let store = node.persistence().store.clone();
            let (held, replicas) = tokio::task::spawn_blocking(move || {
                Ok::<_, crate::store::StoreError>((store.held()?, store.keeps_replicas()?))
            })
            .await
            .map_err(|e| format!("cluster: {e}"))?
            .map_err(|e| format!("cluster: {e}"))?;
            // A node that keeps replicas has had peers: even with no seeds
            // of its own, it waits for them (they name it as their seed)
            // before it serves, or it would take every conversation for
            // its own and start new ones for contacts its peers hold.
            rejoining = replicas;
            for (conv, tenant, contact) in held {
                unconfirmed.insert(ConvKey::new(&tenant, &contact), conv);
            }
        }
        view.write()
            .m
            .set_first_node(spec.seeds.is_empty() && !rejoining);
        let slot: Arc<std::sync::OnceLock<std::sync::Weak<Cluster>>> = Default::default();
        let leaving: Arc<std::sync::atomic::AtomicBool> = Default::default();
        let (router, _) = Actor::spawn(
            None,
            RouterActor,
            RouterState {
                name: spec.name.clone(),
                http: spec.http.map(|a| a.to_string()),
                node: node.clone(),
                cluster: slot.clone(),
                leaving: leaving.clone(),
            },
        )
        .await
        .map_err(|e| format!("cluster router: {e}"))?;
        ractor::pg::join(ROUTERS.into(), vec![router.get_cell()]);
        let replicate = spec.replication_factor >= 2;
        let cluster = Arc::new(Cluster {
            metrics: node.metrics().clone(),
            node: node.clone(),
            started,
            moving: Default::default(),
            membership: tokio::sync::Notify::new(),
            settle_now: tokio::sync::Notify::new(),
            aliases_read: Default::default(),
            pinging: Default::default(),
            other_wire: Default::default(),
            forwarders: Default::default(),
            rebalancing: Default::default(),
            rebalance_again: Default::default(),
            spec,
            server,
            view,
            router,
            pool: Default::default(),
            calendar: Default::default(),
            unconfirmed,
            in_doubt: Default::default(),
            leaving,
            requests: Default::default(),
        });
        let _ = slot.set(Arc::downgrade(&cluster));
        let _ = node.cluster_slot().set(Arc::downgrade(&cluster));
        if replicate {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            node.persistence().replicate_through(tx);
            tokio::spawn(replicator(Arc::downgrade(&cluster), rx));
        }
        cluster.relay_chat();
        let c = cluster.clone();
        tokio::spawn(async move { c.join_seeds(retry).await });
        let c = cluster.clone();
        tokio::spawn(async move { c.heartbeats().await });
        Ok(cluster)
    }

    /// Leaves the cluster before the node stops (SIGTERM): peers are told
    /// through the heartbeats and stop counting this node; then every
    /// conversation it holds is handed to the node that owns it without
    /// this one (with its timers, queued messages and agent row), so
    /// nobody has to wait for the failure time and take it over from a
    /// replica. Gives up at `deadline`; what is left is then taken over
    /// as after a crash. Returns how many conversations it still holds.
    pub async fn leave(&self, deadline: Duration) -> usize {
        use std::sync::atomic::Ordering;
        let until = Instant::now() + deadline;
        // Without replication nothing is moved (each node keeps its own).
        let peers = self.live_names().len() > 1 && self.spec.replication_factor >= 2;
        self.leaving.store(true, Ordering::Relaxed);
        if peers {
            // Every peer pings each tick: three ticks and they have heard.
            tokio::time::sleep(3 * self.spec.heartbeat).await;
        }
        self.view.write().m.leave();
        tracing::info!("leaving the cluster: handing conversations over");
        loop {
            let store = self.node.persistence().store.clone();
            let held = tokio::task::spawn_blocking(move || store.held())
                .await
                .ok()
                .and_then(|r| r.ok())
                .map_or(usize::MAX, |h| h.len());
            // Nobody left to take them (the whole cluster is stopping).
            let alone = self.live_names().is_empty();
            if held == 0 || Instant::now() >= until || !peers || alone {
                if held > 0 {
                    tracing::warn!(held, "left the cluster still holding conversations");
                }
                return held;
            }
            // The heartbeats rebalance on the change of the live set; this
            // asks for another pass in case one failed. Looked at more
            // often than a heartbeat: the node exits as soon as it is done.
            self.rebalance_again.store(true, Ordering::Relaxed);
            tokio::time::sleep(self.spec.heartbeat.min(Duration::from_millis(100))).await;
        }
    }

    pub fn stop(&self) {
        self.router.stop(Some("shutdown".into()));
        self.server.stop(Some("shutdown".into()));
    }
}

/// A message on its way to its owner, and who waits for the answer.
type ForwardJob = (Forwarded, tokio::sync::oneshot::Sender<ForwardResult>);

/// Forward batches to one node under way at once (messages queue meanwhile
/// and go in the next batch).
const FORWARD_BATCHES_IN_FLIGHT: usize = 2;
/// Messages one forward batch carries at most.
const FORWARD_BATCH: usize = 512;

/// Batches of committed changes one replication round takes at most.
const ROUND_BATCHES: usize = 256;
/// Replication rounds under way at once.
const ROUNDS_IN_FLIGHT: usize = 4;
