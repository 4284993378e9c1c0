//! The cluster over ractor_cluster: membership and heartbeats, placement
//! by rendezvous hashing, forwarding, replication, take-over and
//! hand-over (the agent pool's part is in `pool`, requests passed on
//! between nodes in `requests`).
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
//! is handed back or found current. Writes addressed by conversation id, or
//! by contact (business messages, consent, contact details), are passed on by
//! `src/http.rs` (`held_elsewhere`, `pass_on`) to the node that holds the
//! conversation (or owns the contact), over the cluster link
//! (`cluster/requests.rs`); a timer this node does not hold is cancelled by
//! asking each live peer. Conversation and timer ids carry the creating
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

use futures_util::StreamExt;
use parking_lot::RwLock;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::node::{NodeConnectionMode, NodeServerSessionInformation};
use ractor_cluster::{NodeEventSubscription, NodeServer, NodeServerMessage};
use threadline_protocol::codec::{self, InboundMessage};
use threadline_protocol::{ConversationId, MessageId};

use crate::consent::keywords::Keyword;
use crate::conversation::{ConvKey, InboundAck, InboundMeta};
use crate::replica::{ReplicaBody, ReplicaEntry, ReplicaMeta, Verdict};
use crate::router::{DeliverError, Delivered, Router};

mod calendar;
mod pool;
mod requests;
#[cfg(test)]
mod wire_golden;
pub(crate) use pool::PoolAsk;
pub use pool::{ConvAnswer, ConvOp, SessionHandle};
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

/// Answers an RPC on its own task (the router stays free for heartbeats)
/// with what `answer` makes with this node's cluster; an error
/// once the cluster is stopping.
fn answer_on_task<F, Fut>(st: &RouterState, reply: RpcReplyPort<Vec<u8>>, answer: F)
where
    F: FnOnce(Arc<Cluster>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Vec<u8>> + Send + 'static,
{
    let cluster = st.cluster();
    tokio::spawn(async move {
        let bytes = match cluster {
            Some(c) => answer(c).await,
            None => wire(&Err::<(), _>("cluster stopping")),
        };
        let _ = reply.send(bytes);
    });
}

struct RouterState {
    /// This node's name and HTTP address, for the heartbeat's answer.
    name: String,
    http: Option<String>,
    /// Set when the node leaves the cluster (SIGTERM).
    leaving: Arc<std::sync::atomic::AtomicBool>,
    router: Router,
    /// The node's membership (set right after the router starts).
    cluster: Arc<std::sync::OnceLock<std::sync::Weak<Cluster>>>,
}

impl RouterState {
    /// This node's membership, while it runs.
    fn cluster(&self) -> Option<Arc<Cluster>> {
        self.cluster.get().and_then(|c| c.upgrade())
    }
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
                let (links, live) = match st.cluster() {
                    Some(c) => (c.links(), c.live_names()),
                    None => (Vec::new(), Vec::new()),
                };
                let _ = reply.send(wire(&Heartbeat {
                    name: st.name.clone(),
                    http: st.http.clone(),
                    leaving: st.leaving.load(std::sync::atomic::Ordering::Relaxed),
                    links,
                    live,
                }));
            }
            RouterMsg::Resident(_from, reply) => {
                let _ = reply.send(st.router.resident() as u64);
            }
            RouterMsg::Replicate(bytes, reply) => {
                // Submitted here, in the order the owner sent them (its
                // rounds overlap); only the wait for durability is spawned.
                let persistence = &st.router.shared.persistence;
                let cluster = st.cluster();
                // Per entry: whether this node is where its replica goes.
                let mut placed: Vec<bool> = Vec::new();
                let queued = match unwire::<Vec<ReplicaEntry>>(&bytes) {
                    None => Err("unreadable replica entries".to_owned()),
                    Some(entries) => {
                        // Only the node after the owner, in this node's own
                        // view, keeps a replica: a sender that sees another
                        // membership (a node just back, with stale copies,
                        // that has not heard of everyone yet) is fenced
                        // rather than given a replica somewhere else.
                        let live = cluster.as_ref().map(|c| c.live_names()).unwrap_or_default();
                        let me = cluster.as_ref().map(|c| c.spec.name.as_str()).unwrap_or("");
                        placed = entries
                            .iter()
                            .map(|e| {
                                let r = ranked(&format!("{}\0{}", e.tenant, e.contact), &live);
                                r.first() == Some(&e.owner.as_str()) && r.get(1) == Some(&me)
                            })
                            .collect();
                        let keep: Vec<ReplicaEntry> = entries
                            .into_iter()
                            .zip(&placed)
                            .filter_map(|(e, p)| p.then_some(e))
                            .collect();
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        let op = crate::persistence::Op::Replica {
                            entries: keep,
                            reply: tx,
                        };
                        persistence
                            .submit(op)
                            .await
                            .map(|()| rx)
                            .map_err(|e| e.to_string())
                    }
                };
                tokio::spawn(async move {
                    let answer: Result<Vec<Verdict>, String> = match queued {
                        Err(e) => Err(e),
                        Ok(rx) => rx.await.unwrap_or_else(|_| Err("writer gone".into())),
                    };
                    let answer = answer.map(|kept| {
                        let mut kept = kept.into_iter();
                        placed
                            .iter()
                            .map(|p| match p {
                                true => kept.next().unwrap_or(Verdict::Fenced),
                                false => Verdict::Fenced,
                            })
                            .collect::<Vec<_>>()
                    });
                    let _ = reply.send(wire(&answer));
                });
            }
            RouterMsg::Peek(bytes, reply) => {
                let store = st.router.shared.persistence.store.clone();
                tokio::spawn(async move {
                    let answer = match unwire::<(u64, bool)>(&bytes) {
                        None => Err("unreadable peek".to_owned()),
                        Some((conv, with_state)) => {
                            tokio::task::spawn_blocking(move || peek(&store, conv, with_state))
                                .await
                                .map_err(|e| e.to_string())
                                .and_then(|r| r.map_err(|e| e.to_string()))
                        }
                    };
                    let _ = reply.send(wire(&answer));
                });
            }
            RouterMsg::Handover(bytes, reply) => {
                answer_on_task(st, reply, |c| async move {
                    let answer: Result<Verdict, String> = match unwire::<Handover>(&bytes) {
                        None => Err("unreadable handover".into()),
                        Some(h) => c.receive(h).await,
                    };
                    wire(&answer)
                });
            }
            RouterMsg::View(bytes, reply) => {
                let router = st.router.clone();
                let cluster = st.cluster();
                tokio::spawn(async move {
                    let found = match unwire::<Lookup>(&bytes) {
                        None => Err(DeliverError::Unavailable("unreadable view request".into())),
                        Some(Lookup::Contact(t, c)) => match router.view_local(&t, &c).await {
                            Ok(None) => match cluster.as_ref() {
                                Some(c2) => c2.held_by_a_peer(&ConvKey::new(&t, &c)).await,
                                None => Ok(None),
                            },
                            other => other,
                        },
                        Some(Lookup::ContactHere(t, c)) => router.view_local(&t, &c).await,
                        Some(Lookup::Id(id)) => {
                            let id = ConversationId(id);
                            match router.view_by_id_local(id).await {
                                Ok(None) => match cluster.as_ref() {
                                    // It moved on: one more hop, to its owner.
                                    Some(c) => match c.replica_owner(id).await {
                                        Some(n) => c.forward_view_by_id(&n, id).await,
                                        None => Ok(None),
                                    },
                                    None => Ok(None),
                                },
                                other => other,
                            }
                        }
                    };
                    let answer: Result<Option<Vec<u8>>, String> = found
                        .map(|s| s.map(|s| codec::encode_snapshot(&s)))
                        .map_err(|e| e.to_string());
                    let _ = reply.send(wire(&answer));
                });
            }
            RouterMsg::PoolAsk(bytes, reply) => {
                let router = st.router.clone();
                answer_on_task(st, reply, |c| async move {
                    match unwire::<PoolAsk>(&bytes) {
                        Some(ask) => c.on_pool_ask(router, ask).await,
                        None => wire(&Err::<(), _>("unreadable pool request")),
                    }
                });
            }
            RouterMsg::Request(bytes, reply) => {
                answer_on_task(st, reply, |c| async move { c.on_request(bytes).await });
            }
            RouterMsg::Calendar(bytes, reply) => {
                answer_on_task(st, reply, |c| async move { c.on_calendar(bytes).await });
            }
            RouterMsg::PoolTell(bytes) => {
                let cluster = st.cluster();
                match (unwire::<pool::PoolTell>(&bytes), cluster) {
                    (Some(tell), Some(c)) => c.on_pool_tell(&st.router, tell),
                    (None, _) => tracing::warn!("unreadable agent pool message from a peer"),
                    (_, None) => {}
                }
            }
            RouterMsg::Deliver(bytes, reply) => {
                // Delivered on their own tasks: the router stays free for
                // heartbeats and other deliveries.
                let router = st.router.clone();
                tokio::spawn(async move {
                    let Some(batch) = unwire::<Vec<Forwarded>>(&bytes) else {
                        let _ = reply.send(wire(&Vec::<ForwardResult>::new()));
                        return;
                    };
                    let each = batch.into_iter().map(|f| {
                        let router = router.clone();
                        async move {
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
                    });
                    let results = futures_util::future::join_all(each).await;
                    let _ = reply.send(wire(&results));
                });
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ForgetError {
    #[error("node {0} is live (or is this node): stop it before forgetting it")]
    Live(String),
    #[error("no node {0} is known")]
    Unknown(String),
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

#[derive(Default)]
struct View {
    /// Authenticated peers by session actor id.
    peers: BTreeMap<String, Member>,
    /// When each peer (by name) last answered a heartbeat.
    answered: BTreeMap<String, Instant>,
    /// Each peer's router, by name (learned from heartbeat answers).
    routers: BTreeMap<String, ActorRef<RouterMsg>>,
    /// The live set as the last rebalance saw it.
    balanced: Vec<String>,
    /// Each peer's HTTP address, by name (from heartbeat answers).
    http: BTreeMap<String, String>,
    /// Peers whose heartbeat answers say they are leaving.
    leaving: std::collections::BTreeSet<String>,
    /// Each peer's cluster address, by name (from heartbeat answers).
    links: BTreeMap<String, SocketAddr>,
    /// Cluster addresses peers named in their heartbeat answers: this
    /// node connects to each (with TLS, ractor_cluster's own transitive
    /// connections cannot be used, since they are plain TCP).
    learned: std::collections::BTreeSet<SocketAddr>,
    /// A peer's session opened or closed since the last heartbeat tick: a
    /// node that died and came back between two ticks leaves the live set
    /// as it was, but what it holds is stale and must be rebalanced.
    sessions_changed: bool,
    /// The nodes each peer counts live (from its heartbeat answers): a
    /// joining node waits to hear from all of them before it settles.
    vouched: BTreeMap<String, Vec<String>>,
    /// When a peer first answered this node.
    first_answer: Option<Instant>,
    /// This node has settled its live set with the cluster it joined (or
    /// it has no seeds: it starts one).
    joined: bool,
}

/// This node's membership.
pub struct Cluster {
    pub spec: ClusterSpec,
    shared: Arc<crate::runtime::Shared>,
    started: Instant,
    /// Conversations moving between nodes right now: not served here.
    moving: dashmap::DashSet<ConvKey>,
    /// Per owner node: the queue of messages forwarded to it, sent in
    /// batches (one RPC carries every message queued meanwhile).
    forwarders: parking_lot::Mutex<
        std::collections::HashMap<String, tokio::sync::mpsc::UnboundedSender<ForwardJob>>,
    >,
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
    /// This node has no seeds but was in a cluster before (it keeps
    /// replicas): it joins like a node with seeds (`first_node`).
    rejoining: bool,
    /// This node is leaving (its heartbeat answers say so: peers stop
    /// counting it live) ...
    leaving: Arc<std::sync::atomic::AtomicBool>,
    /// ... and, once they have heard, no longer counts itself: what it
    /// holds is handed to the nodes that own it without it.
    left: std::sync::atomic::AtomicBool,
    /// Serves the HTTP requests peers pass on (set by the binary).
    requests: std::sync::OnceLock<RequestHandler>,
}

struct Events(Arc<RwLock<View>>);

impl NodeEventSubscription for Events {
    fn node_session_opened(&self, _ses: NodeServerSessionInformation) {}

    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        let gone = {
            let mut v = self.0.write();
            v.sessions_changed = true;
            let gone = v.peers.remove(&ses.actor.get_id().to_string());
            if let Some(m) = &gone {
                // Gone for good: what it had not handed over is taken over.
                v.leaving.remove(&m.name);
            }
            gone
        };
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
        let mut v = self.0.write();
        v.sessions_changed = true;
        v.peers.insert(
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
        let view = Arc::new(RwLock::new(View::default()));
        server
            .cast(NodeServerMessage::SubscribeToEvents {
                id: "threadline-membership".into(),
                subscription: Box::new(Events(view.clone())),
            })
            .map_err(|e| format!("cluster: {e}"))?;
        let shared = router.shared.clone();
        let unconfirmed = dashmap::DashMap::new();
        let mut rejoining = false;
        if spec.replication_factor >= 2 {
            let store = shared.persistence.store.clone();
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
        let slot: Arc<std::sync::OnceLock<std::sync::Weak<Cluster>>> = Default::default();
        let leaving: Arc<std::sync::atomic::AtomicBool> = Default::default();
        let (router, _) = Actor::spawn(
            None,
            RouterActor,
            RouterState {
                name: spec.name.clone(),
                http: spec.http.map(|a| a.to_string()),
                router,
                cluster: slot.clone(),
                leaving: leaving.clone(),
            },
        )
        .await
        .map_err(|e| format!("cluster router: {e}"))?;
        ractor::pg::join(ROUTERS.into(), vec![router.get_cell()]);
        let replicate = spec.replication_factor >= 2;
        let cluster = Arc::new(Cluster {
            metrics: shared.metrics.clone(),
            shared: shared.clone(),
            started: Instant::now(),
            moving: Default::default(),
            membership: tokio::sync::Notify::new(),
            settle_now: tokio::sync::Notify::new(),
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
            rejoining,
            in_doubt: Default::default(),
            leaving,
            left: Default::default(),
            requests: Default::default(),
        });
        let _ = slot.set(Arc::downgrade(&cluster));
        let _ = shared.cluster.set(Arc::downgrade(&cluster));
        if replicate {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            shared.persistence.replicate_through(tx);
            tokio::spawn(replicator(Arc::downgrade(&cluster), rx));
        }
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
        let mut last_tick = Instant::now();
        loop {
            // A tick, or at once when a peer answered for the first time
            // since the live set was last settled (a node joining serves
            // only once it is settled).
            tokio::select! {
                _ = tick.tick() => {}
                () = self.settle_now.notified() => {}
            }
            if self.server.get_status() != ractor::ActorStatus::Running {
                tracing::info!("cluster node server stopped; heartbeats end");
                return;
            }
            if last_tick.elapsed() > self.spec.failure_after {
                // This node itself was paused (SIGSTOP, a stalled VM): the
                // peers' silence says nothing about them. Start their
                // clocks again rather than declare everyone else gone.
                tracing::warn!(
                    paused_ms = last_tick.elapsed().as_millis() as u64,
                    "this node was paused; judging its peers afresh"
                );
                let now = Instant::now();
                for t in self.view.write().answered.values_mut() {
                    *t = now;
                }
            }
            last_tick = Instant::now();
            let peers: Vec<ActorRef<RouterMsg>> = ractor::pg::get_members(&ROUTERS.to_owned())
                .into_iter()
                .filter(|c| !c.get_id().is_local())
                .map(ActorRef::from)
                .collect();
            // Each ping runs on its own task and records its answer when
            // it comes: a peer that does not answer delays nobody's health
            // (at most one ping per peer is out at a time).
            let timeout = self.spec.failure_after;
            for p in peers {
                if !self.pinging.lock().insert(p.get_id()) {
                    continue;
                }
                let (c, me) = (self.clone(), wire(&self.spec.name));
                tokio::spawn(async move {
                    let a = tokio::time::timeout(
                        timeout,
                        p.call(|reply| RouterMsg::Ping(me, reply), Some(timeout)),
                    )
                    .await;
                    let answer = match a {
                        Ok(Ok(ractor::rpc::CallResult::Success(bytes))) => {
                            match threadline_protocol::codec::decode_wire::<Heartbeat>(&bytes) {
                                Ok(h) => Some(h),
                                Err(e) => {
                                    if c.other_wire.lock().insert(p.get_id()) {
                                        tracing::error!(
                                            peer = %p.get_id().node(),
                                            error = %e,
                                            "a cluster peer answers heartbeats in another \
                                             format; it is not counted live (run one \
                                             Threadline version in a cluster)"
                                        );
                                    }
                                    None
                                }
                            }
                        }
                        _ => None,
                    };
                    if let Some(Heartbeat {
                        name,
                        http,
                        leaving,
                        links,
                        live: vouched,
                    }) = answer
                    {
                        let mut addrs = links.into_iter();
                        let mut v = c.view.write();
                        v.vouched.insert(name.clone(), vouched);
                        v.first_answer.get_or_insert_with(Instant::now);
                        if let Some(own) = addrs.next() {
                            v.links.insert(name.clone(), own);
                        }
                        let listen = c.spec.listen;
                        v.learned.extend(addrs.filter(|a| *a != listen));
                        if let Some(http) = http {
                            v.http.insert(name.clone(), http);
                        }
                        if leaving {
                            v.leaving.insert(name.clone());
                        } else {
                            v.leaving.remove(&name);
                        }
                        v.answered.insert(name.clone(), Instant::now());
                        let new = !v.balanced.contains(&name);
                        v.routers.insert(name, p.clone());
                        drop(v);
                        if new {
                            c.settle_now.notify_one();
                        }
                    }
                    c.pinging.lock().remove(&p.get_id());
                });
            }
            let now = Instant::now();
            let mut v = self.view.write();
            let View {
                peers,
                answered,
                leaving,
                ..
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
                    leaving.remove(&m.name);
                } else if !m.healthy && healthy {
                    tracing::info!(peer = m.name, "cluster peer answers heartbeats again");
                }
                m.healthy = healthy;
            }
            drop(v);
            let live = self.live_names();
            if !self.joined(&live) {
                // Joining: settling on part of the cluster would place
                // conversations and the agent pool where they do not stay.
                continue;
            }
            let changed = {
                let mut v = self.view.write();
                let rejoined = std::mem::take(&mut v.sessions_changed);
                v.balanced != live || rejoined
            };
            if changed {
                self.membership.notify_waiters();
                self.pool_membership_changed();
            }
            if changed
                || self
                    .rebalance_again
                    .load(std::sync::atomic::Ordering::Relaxed)
            {
                self.view.write().balanced = live;
                self.clone().rebalance();
            }
        }
    }

    /// Connects to every seed not yet a member, again and again; a seed
    /// that accepts the connection but never authenticates has another
    /// cookie (or is not a Threadline node) and is logged.
    async fn join_seeds(self: Arc<Self>, retry: Duration) {
        let mut warned = std::collections::HashSet::new();
        loop {
            // With TLS, the nodes the peers link to (without, ractor_cluster
            // connects to those itself).
            let learned: Vec<SocketAddr> = match self.spec.tls {
                Some(_) => self.view.read().learned.iter().copied().collect(),
                None => Vec::new(),
            };
            let mut targets = self.spec.seeds.clone();
            for a in learned {
                if !targets.contains(&a) {
                    targets.push(a);
                }
            }
            for seed in &targets {
                if self.is_member_addr(*seed) {
                    continue;
                }
                let connected = match &self.spec.tls {
                    None => ractor_cluster::client_connect(&self.server, *seed).await,
                    Some(t) => {
                        ractor_cluster::client_connect_enc(
                            &self.server,
                            *seed,
                            t.connector.clone(),
                            t.server_name.clone(),
                        )
                        .await
                    }
                };
                match connected {
                    Ok(()) => {
                        tokio::time::sleep(retry).await;
                        if !self.is_member_addr(*seed) && warned.insert(*seed) {
                            tracing::error!(
                                %seed,
                                "cluster seed accepted the connection but did not authenticate: wrong cookie?"
                            );
                        }
                    }
                    Err(ractor_cluster::ClientConnectErr::Encryption(e)) => {
                        if warned.insert(*seed) {
                            tracing::error!(
                                %seed,
                                error = %e,
                                "cluster seed failed the TLS handshake: not a certificate of the cluster's CA, or not TLS?"
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
        // A session's peer address is the seed's for outgoing sessions; a
        // peer that connected to us first is known by the listen address
        // its heartbeat answers announce. (Never by the port alone: nodes
        // on separate hosts usually share one.) Until that first answer,
        // a connection to it may be made twice; the names dedupe it.
        let v = self.view.read();
        let linked = |m: &Member| v.links.get(&m.name) == Some(&seed);
        v.peers
            .values()
            .any(|m| linked(m) || m.addr == seed.to_string())
    }

    /// This node's cluster address, then its live peers' (for the
    /// heartbeat's answer).
    fn links(&self) -> Vec<SocketAddr> {
        let live = self.live_names();
        let v = self.view.read();
        let mut out = vec![self.spec.listen];
        for (name, addr) in &v.links {
            if *name != self.spec.name && live.contains(name) {
                out.push(*addr);
            }
        }
        out
    }

    /// The authenticated peers, one per name, by name.
    pub fn members(&self) -> Vec<Member> {
        let mut by_name: BTreeMap<String, Member> = BTreeMap::new();
        for m in self.view.read().peers.values() {
            by_name.entry(m.name.clone()).or_insert_with(|| m.clone());
        }
        by_name.into_values().collect()
    }

    /// Whether this node can take writes: it has heard from its peers, it
    /// sees a majority of the nodes it knows, and (with replication) a
    /// live node to keep its replicas.
    pub fn ready(&self) -> bool {
        let live = self.live_names();
        self.serving()
            && self.has_majority(&live)
            && (self.spec.replication_factor < 2 || live.len() >= 2)
    }

    /// Every node this one has heard from (itself included), sorted: a
    /// take-over needs a majority of them live.
    pub fn known_names(&self) -> Vec<String> {
        let v = self.view.read();
        let mut names: Vec<String> = v.answered.keys().cloned().collect();
        names.push(self.spec.name.clone());
        names.sort();
        names.dedup();
        names
    }

    /// Forgets node `name` for good (it was removed and will not return):
    /// it no longer counts towards the majority a take-over needs. A live
    /// node, or this one, cannot be forgotten.
    pub fn forget(&self, name: &str) -> Result<(), ForgetError> {
        if name == self.spec.name || self.live_names().iter().any(|n| n == name) {
            return Err(ForgetError::Live(name.to_owned()));
        }
        let mut v = self.view.write();
        if v.answered.remove(name).is_none() {
            return Err(ForgetError::Unknown(name.to_owned()));
        }
        v.routers.remove(name);
        v.http.remove(name);
        if let Some(addr) = v.links.remove(name) {
            v.learned.remove(&addr);
        }
        v.leaving.remove(name);
        tracing::info!(node = name, "cluster node forgotten");
        Ok(())
    }

    /// The live set as this node last settled it (placement, the pool's
    /// home and serving follow it), sorted.
    pub fn settled_live(&self) -> Vec<String> {
        self.view.read().balanced.clone()
    }

    /// Every live node's name (answering heartbeats), this one included,
    /// sorted.
    pub fn live_names(&self) -> Vec<String> {
        // A member counts once its router answered: only then can work
        // be forwarded to it.
        let (reachable, leaving): (Vec<String>, Vec<String>) = {
            let v = self.view.read();
            (
                v.routers.keys().cloned().collect(),
                v.leaving.iter().cloned().collect(),
            )
        };
        let mut names: Vec<String> = self
            .members()
            .into_iter()
            .filter(|m| m.healthy && reachable.contains(&m.name) && !leaving.contains(&m.name))
            .map(|m| m.name)
            .collect();
        if !self.left.load(std::sync::atomic::Ordering::Relaxed) {
            names.push(self.spec.name.clone());
        }
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
        let live = self.live_names();
        let peers: Vec<(String, ActorRef<RouterMsg>)> = {
            let v = self.view.read();
            live.into_iter()
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

    /// The conversation of `key` as another live node holds it, if one
    /// does: this node owns `key` but has nothing of it (it is still to be
    /// handed over here, after a restart of the cluster, say).
    /// (The furthest copy, if more than one node still holds one.)
    pub async fn held_by_a_peer(
        &self,
        key: &ConvKey,
    ) -> Result<Option<threadline_protocol::ConversationState>, DeliverError> {
        if self.spec.replication_factor < 2 {
            return Ok(None);
        }
        let mut best: Option<threadline_protocol::ConversationState> = None;
        for peer in self
            .live_names()
            .into_iter()
            .filter(|n| *n != self.spec.name)
        {
            let here = Lookup::ContactHere(key.tenant().to_owned(), key.contact().to_owned());
            if let Some(s) = self.lookup(&peer, here).await? {
                if best.as_ref().is_none_or(|b| s.last_seq > b.last_seq) {
                    best = Some(s);
                }
            }
        }
        Ok(best)
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
        self.call_counted(owner, 1, msg).await
    }

    /// `call`, counting `n` forwarded requests.
    async fn call_counted(
        &self,
        owner: &str,
        n: u64,
        msg: impl FnOnce(RpcReplyPort<Vec<u8>>) -> RouterMsg,
    ) -> Result<Vec<u8>, DeliverError> {
        let unavailable =
            |why: String| DeliverError::Unavailable(format!("owner node {owner}: {why}"));
        let metrics = &self.metrics;
        metrics.cluster_forwarded.inc_by(n);
        let result = self
            .rpc(owner, FORWARD_TIMEOUT, msg)
            .await
            .map_err(unavailable);
        if result.is_err() {
            metrics.cluster_forward_failures.inc_by(n);
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
        let req = Forwarded {
            tenant: key.tenant().to_owned(),
            contact: key.contact().to_owned(),
            msg,
            hint: meta.hint.map(|k| keyword_name(k).to_owned()),
            from_state: meta.from_state,
            identities: meta.identities,
            profile_name: meta.profile_name,
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let queue = {
            let mut f = self.forwarders.lock();
            match f.get(owner) {
                Some(q) if !q.is_closed() => q.clone(),
                _ => {
                    // Unbounded: each job is a caller waiting for its
                    // answer, admitted by a gateway (bounded there).
                    let (q, queued) = tokio::sync::mpsc::unbounded_channel();
                    let me = self.shared.cluster.get().cloned().unwrap_or_default();
                    tokio::spawn(forwarder(me, owner.to_owned(), queued));
                    f.insert(owner.to_owned(), q.clone());
                    q
                }
            }
        };
        if queue.send((req, tx)).is_err() {
            return Err(unavailable("stopping".into()));
        }
        let answer = rx
            .await
            .unwrap_or_else(|_| ForwardResult::Unavailable("stopping".into()));
        match answer {
            ForwardResult::Recorded {
                conversation,
                seq,
                duplicate,
            } => Ok(Delivered::Recorded(InboundAck {
                conversation: ConversationId(conversation),
                message: MessageId {
                    conversation: ConversationId(conversation),
                    seq,
                },
                duplicate,
            })),
            ForwardResult::DeadLettered(c) => Ok(Delivered::DeadLettered {
                conversation: c.map(ConversationId),
            }),
            ForwardResult::Unavailable(m) => Err(DeliverError::Unavailable(m)),
            ForwardResult::Storage(m) => Err(DeliverError::Storage(m)),
        }
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
        self.left.store(true, Ordering::Relaxed);
        tracing::info!("leaving the cluster: handing conversations over");
        loop {
            let store = self.shared.persistence.store.clone();
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

/// `first` and whatever else is queued already, up to `max` in all.
fn gather<T>(first: T, queue: &mut tokio::sync::mpsc::UnboundedReceiver<T>, max: usize) -> Vec<T> {
    let mut all = vec![first];
    while all.len() < max {
        match queue.try_recv() {
            Ok(x) => all.push(x),
            Err(_) => break,
        }
    }
    all
}

/// Sends the messages forwarded to `owner` in batches.
async fn forwarder(
    cluster: std::sync::Weak<Cluster>,
    owner: String,
    mut queue: tokio::sync::mpsc::UnboundedReceiver<ForwardJob>,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(FORWARD_BATCHES_IN_FLIGHT));
    while let Some(first) = queue.recv().await {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let batch = gather(first, &mut queue, FORWARD_BATCH);
        let Some(c) = cluster.upgrade() else {
            return;
        };
        let owner = owner.clone();
        tokio::spawn(async move {
            let (reqs, waiters): (Vec<Forwarded>, Vec<_>) = batch.into_iter().unzip();
            let req = wire(&reqs);
            let n = waiters.len();
            let answer = c
                .call_counted(&owner, n as u64, |reply| RouterMsg::Deliver(req, reply))
                .await;
            drop(permit);
            let results = match answer {
                Ok(bytes) => match unwire::<Vec<ForwardResult>>(&bytes) {
                    Some(r) if r.len() == n => r,
                    _ => vec![ForwardResult::Unavailable("unreadable answer".into()); n],
                },
                Err(e) => vec![ForwardResult::Unavailable(e.to_string()); n],
            };
            for (w, r) in waiters.into_iter().zip(results) {
                let _ = w.send(r);
            }
        });
    }
}

/// What `store` has of conversation `conv`.
fn peek(
    store: &crate::store::Store,
    conv: u64,
    with_state: bool,
) -> Result<Peek, crate::store::StoreError> {
    if store.contact_of(ConversationId(conv))?.is_some() {
        return Ok(Peek::Held {
            epoch: store.epoch(conv)?,
        });
    }
    Ok(match store.replica_state(conv)? {
        None => Peek::Nothing,
        Some((meta, state)) => Peek::Replica {
            epoch: meta.epoch,
            last_seq: meta.last_seq,
            snapshot: with_state.then(|| codec::encode_snapshot(&state)),
        },
    })
}

/// A key marked as moving; unmarked when dropped.
struct MoveGuard<'a> {
    moving: &'a dashmap::DashSet<ConvKey>,
    key: ConvKey,
}

impl Drop for MoveGuard<'_> {
    fn drop(&mut self) {
        self.moving.remove(&self.key);
    }
}

/// Batches of committed changes one replication round takes at most.
const ROUND_BATCHES: usize = 256;
/// Replication rounds under way at once.
const ROUNDS_IN_FLIGHT: usize = 4;

/// The owner's half of replication: takes committed batches in order,
/// replicates their changes (each to the next node in hash order), and
/// completes each batch's callbacks in order once its replicas have them.
/// A change that could not be replicated completes as unavailable: it is
/// durable here, but not acknowledged.
async fn replicator(
    cluster: std::sync::Weak<Cluster>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<crate::persistence::Committed>,
) {
    // Rounds overlap (a change does not wait for the round before it to
    // come back), but complete in commit order.
    let mut inflight = futures_util::stream::FuturesOrdered::new();
    let mut open = true;
    loop {
        tokio::select! {
            biased;
            Some((batches, failed)) = inflight.next(), if !inflight.is_empty() => {
                complete(batches, failed);
            }
            first = rx.recv(), if open && inflight.len() < ROUNDS_IN_FLIGHT => {
                let Some(first) = first else {
                    open = false;
                    continue;
                };
                let mut batches = gather(first, &mut rx, ROUND_BATCHES);
                let cluster = cluster.clone();
                inflight.push_back(async move {
                    let failed = match cluster.upgrade() {
                        Some(c) => c.replicate_changes(&mut batches).await,
                        None => batches
                            .iter()
                            .flat_map(|b| {
                                b.changes
                                    .iter()
                                    .map(|c| (c.conv, "cluster stopped".to_owned()))
                            })
                            .collect(),
                    };
                    (batches, failed)
                });
            }
            else => break,
        }
    }
}

/// Completes a round's callbacks, in commit order.
fn complete(
    batches: Vec<crate::persistence::Committed>,
    failed: std::collections::HashMap<u64, String>,
) {
    for b in batches {
        for (conv, done) in b.dones {
            let r = match conv.and_then(|c| failed.get(&c)) {
                Some(why) => Err(Arc::new(crate::store::StoreError::Replication(why.clone()))),
                None => b.result.clone(),
            };
            done(r);
        }
    }
}

impl Cluster {
    /// Whether this node has joined its cluster: it has no seeds, or it has
    /// heard from every node its peers count live (`live` has them all),
    /// or the failure time has passed since the first peer answered (a
    /// node they still count may be gone), or nobody answered within twice
    /// the failure time.
    fn joined(&self, live: &[String]) -> bool {
        let mut v = self.view.write();
        if v.joined || self.first_node() {
            v.joined = true;
            return true;
        }
        // Nobody answered within the grace period: it goes on alone.
        let alone = self.alone_too_long();
        let Some(first) = v.first_answer else {
            v.joined = alone;
            return alone;
        };
        let me = &self.spec.name;
        let all = v
            .vouched
            .values()
            .flatten()
            .filter(|n| *n != me && !v.leaving.contains(*n))
            .all(|n| live.contains(n));
        if (all && live.len() > 1) || first.elapsed() > self.spec.failure_after {
            v.joined = true;
        }
        v.joined
    }

    /// Whether this node serves conversations yet: once it has heard from
    /// a peer (or has no seeds), or after a grace period alone. Before, it
    /// would take conversations its peers own for its own.
    pub fn serving(&self) -> bool {
        // Heard from a peer, and a heartbeat tick has settled the live set
        // with it (so where the agent pool runs is settled too: what this
        // node records reaches the right pool from the first message).
        let settled = || {
            let v = self.view.read();
            !v.answered.is_empty() && v.balanced.len() > 1
        };
        self.first_node() || settled() || self.alone_too_long()
    }

    /// A node with no seeds that was never in a cluster: it starts one,
    /// and serves at once.
    fn first_node(&self) -> bool {
        self.spec.seeds.is_empty() && !self.rejoining
    }

    /// Twice the failure time since this node started: a node that heard
    /// from no peer by then goes on alone.
    fn alone_too_long(&self) -> bool {
        self.started.elapsed() > 2 * self.spec.failure_after
    }

    /// Whether `node` is known to be gone: not live, and either seen
    /// before or never seen in a long while.
    fn known_gone(&self, node: &str, live: &[String]) -> bool {
        let v = self.view.read();
        // A node that is leaving hands its conversations over itself.
        !live.iter().any(|n| n == node)
            && !v.leaving.contains(node)
            && (v.answered.contains_key(node)
                || self.started.elapsed() > 3 * self.spec.failure_after)
    }

    /// Whether a majority of the nodes this one knows count `node` gone:
    /// this node (it does: `known_gone`) and each live peer whose latest
    /// heartbeat answer leaves `node` out of the nodes it counts live.
    /// Only then are `node`'s conversations taken over. A node's own view
    /// is not enough: where the network is cut between two nodes only,
    /// both still reach the third and each sees a majority; each would
    /// take the other's conversations over while the other, still
    /// reached by the third, goes on serving and acknowledging them (two
    /// owners at once). A node that a majority has not heard from for the
    /// failure time cannot reach a majority itself, so it serves nothing
    /// (`check_local`).
    fn gone_for_a_majority(&self, node: &str, live: &[String]) -> bool {
        if !self.known_gone(node, live) {
            return false;
        }
        let v = self.view.read();
        let known = v.answered.keys().filter(|n| **n != self.spec.name).count() + 1;
        let agree = 1 + live
            .iter()
            .filter(|p| **p != self.spec.name)
            .filter(|p| {
                v.vouched
                    .get(*p)
                    .is_some_and(|theirs| !theirs.iter().any(|n| n == node))
            })
            .count();
        agree * 2 > known
    }

    /// Whether a conversation on this node can be served here now: not
    /// moving, and not only a replica whose owner may still be alive (a
    /// replica whose owner is gone is taken over first).
    pub(crate) async fn check_local(&self, key: &ConvKey) -> Result<(), DeliverError> {
        if !self.serving() {
            return Err(DeliverError::Unavailable(
                "this node is joining its cluster".into(),
            ));
        }
        if !self.has_majority(&self.live_names()) {
            // Cut off from most of its cluster, this node may be holding
            // a conversation the others have taken over, or (for a contact
            // it does not know) start a second one beside the one they
            // hold: it serves nothing until it sees a majority again.
            return Err(DeliverError::Unavailable(
                "this node does not reach a majority of its cluster".into(),
            ));
        }
        if self.moving.contains(key) {
            return Err(DeliverError::Unavailable(
                "the conversation is moving between nodes".into(),
            ));
        }
        if self.spec.replication_factor < 2 || self.shared.dir.by_key.contains_key(key) {
            return Ok(());
        }
        let store = self.shared.persistence.store.clone();
        let (t, c) = (key.tenant().to_owned(), key.contact().to_owned());
        let found = tokio::task::spawn_blocking(move || {
            if store.conversation_of(&t, &c)?.is_some() {
                return Ok(None);
            }
            match store.replica_of(&t, &c)? {
                Some(conv) => Ok(store.replica_meta(conv)?.map(|m| (conv, m))),
                None => Ok::<_, crate::store::StoreError>(None),
            }
        })
        .await
        .map_err(|e| DeliverError::Storage(e.to_string()))?
        .map_err(|e| DeliverError::Storage(e.to_string()))?;
        let Some((conv, meta)) = found else {
            return Ok(());
        };
        let live = self.live_names();
        if !self.gone_for_a_majority(&meta.owner, &live) {
            return Err(DeliverError::Unavailable(format!(
                "the conversation is moving here from node {}",
                meta.owner
            )));
        }
        self.promote(conv, key)
            .await
            .map_err(DeliverError::Unavailable)
    }

    /// Whether some conversation this node held when it started may still
    /// be older here than elsewhere (see `newer_copy`).
    pub fn any_unconfirmed(&self) -> bool {
        !self.unconfirmed.is_empty()
    }

    /// Before this node answers a read of `key` from its own copy: the
    /// node that has a newer one, if this node's copy may be old (it held
    /// the conversation when it started, and the next node in hash order,
    /// which took it over meanwhile, still holds it at a newer epoch).
    /// Unavailable while this node is still joining (it cannot ask yet).
    pub async fn newer_copy(&self, key: &ConvKey) -> Result<Option<String>, DeliverError> {
        let Some(conv) = self.unconfirmed.get(key).map(|c| *c) else {
            return Ok(None);
        };
        if !self.serving() {
            return Err(DeliverError::Unavailable(
                "this node is joining its cluster".into(),
            ));
        }
        let live = self.live_names();
        let Ok(other) = self.replica_node(key, &live) else {
            return Ok(None);
        };
        let store = self.shared.persistence.store.clone();
        let mine = tokio::task::spawn_blocking(move || store.epoch(conv))
            .await
            .map_err(|e| DeliverError::Storage(e.to_string()))?
            .map_err(|e| DeliverError::Storage(e.to_string()))?;
        Ok(match self.peek(&other, conv, false).await {
            Ok(Peek::Held { epoch }) if epoch > mine => Some(other),
            Ok(_) => {
                // Nobody holds a newer copy: this one is current.
                self.unconfirmed.remove(key);
                None
            }
            // Unknown for now: this copy is read, and asked about again.
            Err(_) => None,
        })
    }

    /// The node that keeps the replica of `key` (the next live node in
    /// hash order), if this node owns it.
    fn replica_node(&self, key: &ConvKey, live: &[String]) -> Result<String, String> {
        let k = format!("{}\0{}", key.tenant(), key.contact());
        let r = ranked(&k, live);
        match (r.first(), r.get(1)) {
            (Some(o), _) if *o != self.spec.name => Err(format!("node {o} owns it now")),
            (_, Some(n)) => Ok((*n).to_owned()),
            _ => Err("no live node to keep its replica".into()),
        }
    }

    /// One RPC to `node`'s router. Given up at `timeout`, or as soon as
    /// the heartbeats find `node` gone (a hung peer keeps its sockets open,
    /// so the call alone would wait for the whole timeout).
    async fn rpc(
        &self,
        node: &str,
        timeout: Duration,
        msg: impl FnOnce(RpcReplyPort<Vec<u8>>) -> RouterMsg,
    ) -> Result<Vec<u8>, String> {
        let target = self.view.read().routers.get(node).cloned();
        let Some(t) = target else {
            return Err(format!("node {node} is not reachable"));
        };
        tokio::select! {
            r = t.call(msg, Some(timeout)) => match r {
                Ok(ractor::rpc::CallResult::Success(b)) => Ok(b),
                Ok(_) => Err(format!("node {node} did not answer in time")),
                Err(e) => Err(format!("node {node}: {e}")),
            },
            () = self.gone(node) => Err(format!("node {node} is gone")),
        }
    }

    /// Resolves once `node` is no longer live.
    async fn gone(&self, node: &str) {
        loop {
            let changed = self.membership.notified();
            if !self.live_names().iter().any(|n| n == node) {
                return;
            }
            changed.await;
        }
    }

    /// Whether this node sees a majority of the nodes it has known live
    /// (itself included). Only then does it take over a lost node's
    /// conversations: a node cut off from the others (or just resumed
    /// from a pause) must not take over what they still serve.
    fn has_majority(&self, live: &[String]) -> bool {
        let v = self.view.read();
        let known = v.answered.keys().filter(|n| **n != self.spec.name).count() + 1;
        live.len() * 2 > known
    }

    async fn send_replicas(
        &self,
        node: &str,
        entries: &[ReplicaEntry],
    ) -> Result<Vec<Verdict>, String> {
        let started = Instant::now();
        let req = wire(&entries);
        let bytes = self
            .rpc(node, self.spec.failure_after, |reply| {
                RouterMsg::Replicate(req, reply)
            })
            .await?;
        self.metrics
            .cluster_replication_seconds
            .observe(started.elapsed().as_secs_f64());
        match unwire::<Result<Vec<Verdict>, String>>(&bytes) {
            Some(Ok(v)) if v.len() == entries.len() => Ok(v),
            Some(Ok(_)) => Err(format!("node {node} answered for other entries")),
            Some(Err(e)) => Err(format!("node {node}: {e}")),
            None => Err(format!("node {node}: unreadable answer")),
        }
    }

    /// Replicates the changes of committed batches; returns the
    /// conversations whose changes did not reach their replica, and why.
    async fn replicate_changes(
        &self,
        batches: &mut [crate::persistence::Committed],
    ) -> std::collections::HashMap<u64, String> {
        use std::collections::HashMap;
        let mut failed: HashMap<u64, String> = HashMap::new();
        // One entry per conversation: its records in commit order, the
        // last route (epoch, last seq).
        let mut order = Vec::new();
        let mut merged: HashMap<u64, crate::persistence::Change> = HashMap::new();
        for b in batches.iter_mut().filter(|b| b.result.is_ok()) {
            for ch in b.changes.drain(..) {
                match merged.get_mut(&ch.conv) {
                    Some(m) => {
                        m.route = ch.route;
                        m.records.extend(ch.records);
                    }
                    None => {
                        order.push(ch.conv);
                        merged.insert(ch.conv, ch);
                    }
                }
            }
        }
        if order.is_empty() {
            return failed;
        }
        let live = self.live_names();
        let mut by_node: BTreeMap<String, Vec<ReplicaEntry>> = BTreeMap::new();
        let mut routes = HashMap::new();
        for conv in order {
            let crate::persistence::Change { route, records, .. } =
                merged.remove(&conv).expect("merged above");
            match self.replica_node(&route.key, &live) {
                Err(why) => {
                    failed.insert(conv, why);
                }
                Ok(node) => {
                    by_node.entry(node).or_default().push(ReplicaEntry {
                        conv,
                        tenant: route.key.tenant().to_owned(),
                        contact: route.key.contact().to_owned(),
                        epoch: route.epoch,
                        owner: self.spec.name.clone(),
                        body: ReplicaBody::Events {
                            records,
                            through: route.through,
                        },
                    });
                    routes.insert(conv, route);
                }
            }
        }
        let rounds = by_node.into_iter().map(|(node, entries)| async move {
            let first = self.send_replicas(&node, &entries).await;
            let mut out: Vec<(u64, Result<(), String>)> = Vec::new();
            let verdicts = match first {
                Err(e) => {
                    return entries.iter().map(|e2| (e2.conv, Err(e.clone()))).collect();
                }
                Ok(v) => v,
            };
            let mut bases = Vec::new();
            for (e, v) in entries.into_iter().zip(verdicts) {
                match v {
                    Verdict::Stored => out.push((e.conv, Ok(()))),
                    Verdict::Fenced => out.push((
                        e.conv,
                        Err(format!("fenced: node {node} has a newer owner's copy")),
                    )),
                    Verdict::NeedBase => bases.push(e),
                }
            }
            if !bases.is_empty() {
                let store = self.shared.persistence.store.clone();
                let ids: Vec<u64> = bases.iter().map(|e| e.conv).collect();
                let loaded = tokio::task::spawn_blocking(move || {
                    ids.into_iter()
                        .map(|c| store.load(ConversationId(c)))
                        .collect::<Vec<_>>()
                })
                .await
                .unwrap_or_default();
                let mut sendable = Vec::new();
                for (mut e, state) in bases.into_iter().zip(loaded) {
                    match state {
                        Ok(Some(s)) => {
                            e.body = ReplicaBody::Base {
                                snapshot: codec::encode_snapshot(&s),
                            };
                            sendable.push(e);
                        }
                        _ => out.push((e.conv, Err("its state could not be read".into()))),
                    }
                }
                self.metrics
                    .cluster_replica_bases
                    .inc_by(sendable.len() as u64);
                match self.send_replicas(&node, &sendable).await {
                    Err(err) => out.extend(sendable.iter().map(|e| (e.conv, Err(err.clone())))),
                    Ok(v) => {
                        for (e, v) in sendable.iter().zip(v) {
                            out.push((
                                e.conv,
                                match v {
                                    Verdict::Stored => Ok(()),
                                    _ => Err(format!("node {node} refused its base")),
                                },
                            ));
                        }
                    }
                }
            }
            out
        });
        for (conv, r) in futures_util::future::join_all(rounds)
            .await
            .into_iter()
            .flatten()
        {
            tracing::debug!(
                conv,
                through = routes.get(&conv).map(|r| r.through),
                epoch = routes.get(&conv).map(|r| r.epoch),
                outcome = ?r,
                live = ?live,
                "replicated a change"
            );
            match r {
                Ok(()) => {
                    self.metrics.cluster_replicated.inc();
                }
                Err(why) => {
                    if why.starts_with("fenced") {
                        // A stale copy: its actor must not go on from it.
                        // (Not waited for: the actor may itself be waiting
                        // for this round.)
                        if let Some(route) = routes.get(&conv) {
                            let entry = self
                                .shared
                                .dir
                                .by_key
                                .get(&route.key)
                                .map(|e| e.value().clone());
                            if let Some(e) = entry {
                                self.shared
                                    .dir
                                    .remove_if_actor(&route.key, e.actor.get_id());
                                e.actor.stop(Some("fenced".into()));
                            }
                        }
                    }
                    failed.insert(conv, why);
                }
            };
        }
        self.metrics
            .cluster_replication_failures
            .inc_by(failed.len() as u64);
        failed
    }

    /// Stops the resident actor of `key`, if any, and waits for it.
    async fn stop_local(&self, key: &ConvKey) {
        let entry = self.shared.dir.by_key.get(key).map(|e| e.value().clone());
        if let Some(e) = entry {
            self.shared.dir.remove_if_actor(key, e.actor.get_id());
            let _ = e
                .actor
                .stop_and_wait(Some("ownership moved".into()), Some(Duration::from_secs(5)))
                .await;
        }
    }

    /// Moves conversations to where the current membership places them:
    /// replicas of a lost owner are taken over here, conversations another
    /// live node owns now are handed to it. Runs on its own task, one at
    /// a time; what fails is tried again at the next heartbeat.
    fn rebalance(self: Arc<Self>) {
        use std::sync::atomic::Ordering;
        if self.spec.replication_factor < 2 || !self.serving() {
            return;
        }
        if self.rebalancing.swap(true, Ordering::AcqRel) {
            self.rebalance_again.store(true, Ordering::Relaxed);
            return;
        }
        self.rebalance_again.store(false, Ordering::Relaxed);
        tokio::spawn(async move {
            let again = match self.rebalance_once().await {
                Ok(done) => !done,
                Err(e) => {
                    tracing::warn!(error = %e, "cluster rebalance failed; retrying");
                    true
                }
            };
            if again {
                self.rebalance_again.store(true, Ordering::Relaxed);
            }
            self.rebalancing.store(false, Ordering::Release);
        });
    }

    /// One pass; `Ok(true)` when everything is where it belongs.
    async fn rebalance_once(&self) -> Result<bool, String> {
        let live = self.live_names();
        let store = self.shared.persistence.store.clone();
        let (replicas, held) = tokio::task::spawn_blocking(move || {
            Ok::<_, crate::store::StoreError>((store.replicas()?, store.held()?))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        let me = self.spec.name.as_str();
        // Each conversation moves on its own (under its own lock), several
        // at once: their writes share the writer's group commits, and a
        // node with thousands to move is not held up one round trip at a
        // time.
        let promotes = replicas
            .into_iter()
            .filter(|(_, meta)| {
                let k = format!("{}\0{}", meta.tenant, meta.contact);
                ranked(&k, &live).first() == Some(&me)
                    && self.gone_for_a_majority(&meta.owner, &live)
            })
            .map(|(conv, meta)| async move {
                let key = ConvKey::new(&meta.tenant, &meta.contact);
                let r = self.promote(conv, &key).await;
                if let Err(e) = &r {
                    tracing::warn!(conv, error = %e, "taking over a conversation failed");
                }
                r.is_ok()
            });
        let taken: Vec<bool> = futures_util::stream::iter(promotes)
            .buffer_unordered(MOVES_AT_ONCE)
            .collect()
            .await;
        let hand_overs = held.into_iter().filter_map(|(conv, tenant, contact)| {
            let k = format!("{tenant}\0{contact}");
            // Another live node's to hold (`Some`), or this node's, with a
            // hand-over in doubt to settle (`None`).
            let owner = match ranked(&k, &live).first() {
                Some(o) if *o != me => Some((*o).to_owned()),
                _ if self.in_doubt.contains(&conv) => None,
                _ => return None,
            };
            Some(async move {
                let r = match &owner {
                    Some(owner) => self.hand_over(conv, &tenant, &contact, owner).await,
                    None => self.settle_in_doubt(conv).await,
                };
                if let Err(e) = &r {
                    tracing::warn!(conv, owner, error = %e, "handing a conversation over failed");
                }
                r.is_ok()
            })
        });
        let handed: Vec<bool> = futures_util::stream::iter(hand_overs)
            .buffer_unordered(MOVES_AT_ONCE)
            .collect()
            .await;
        Ok(taken.into_iter().chain(handed).all(|ok| ok))
    }

    /// Takes over conversation `conv` from this node's replica (its owner
    /// is gone), at the next epoch, and gives it a replica of its own.
    async fn promote(&self, conv: u64, key: &ConvKey) -> Result<(), String> {
        let Some(_guard) = self.lock(key) else {
            return Err("the conversation is moving".into());
        };
        // Read again under the lock: another path may have taken it over
        // (and changed it) meanwhile.
        let store = self.shared.persistence.store.clone();
        let found = tokio::task::spawn_blocking(move || {
            Ok::<_, crate::store::StoreError>(match store.contact_of(ConversationId(conv))? {
                Some(_) => None,
                None => store.replica_state(conv)?,
            })
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        let Some((meta, state)) = found else {
            return Ok(());
        };
        // The other live nodes may know better: one of them may hold it
        // (its owner is not gone after all, or it took it over already),
        // or keep a fresher replica (this one may be left from a moment
        // when the owner saw another membership).
        let (mut best_epoch, mut best_seq, mut state) = (meta.epoch, meta.last_seq, state);
        for peer in self
            .live_names()
            .into_iter()
            .filter(|n| *n != self.spec.name)
        {
            match self.peek(&peer, conv, false).await? {
                Peek::Nothing => {}
                Peek::Held { .. } => return Err(format!("node {peer} holds it")),
                Peek::Replica {
                    epoch, last_seq, ..
                } if (epoch, last_seq) > (best_epoch, best_seq) => {
                    match self.peek(&peer, conv, true).await? {
                        Peek::Replica {
                            epoch,
                            last_seq,
                            snapshot: Some(snap),
                        } => {
                            state = codec::decode_snapshot(&snap).map_err(|e| e.to_string())?;
                            (best_epoch, best_seq) = (epoch, last_seq);
                        }
                        _ => return Err(format!("node {peer}'s replica changed; retrying")),
                    }
                }
                Peek::Replica { .. } => {}
            }
        }
        let epoch = best_epoch + 1;
        let through = state.last_seq;
        tracing::debug!(
            conv,
            epoch,
            through,
            replica_seq = meta.last_seq,
            "taking over from the replica"
        );
        let work = crate::replica::derived_work(&state);
        self.install_moving(conv, key, epoch, state, work).await?;
        self.metrics.cluster_promoted.inc();
        tracing::info!(conv, from = meta.owner, epoch, "took over a conversation");
        // Its new replica gets it now, not at its next change.
        self.sync(conv, key.clone(), epoch, through).await;
        Ok(())
    }

    /// Tells the scheduler which timers moved away (`remove`) and which
    /// came with a conversation (`add`), once their rows are durable.
    fn retime(&self, remove: Vec<u64>, add: Vec<threadline_protocol::codec::TimerRow>) {
        for id in remove {
            self.shared.scheduler.remove(id);
        }
        for row in add {
            self.shared.scheduler.add(row);
        }
    }

    /// Asks `node` what it has of conversation `conv`.
    async fn peek(&self, node: &str, conv: u64, with_state: bool) -> Result<Peek, String> {
        let req = wire(&(conv, with_state));
        let bytes = self
            .rpc(node, self.spec.failure_after, |reply| {
                RouterMsg::Peek(req, reply)
            })
            .await?;
        match unwire::<Result<Peek, String>>(&bytes) {
            Some(Ok(p)) => Ok(p),
            Some(Err(e)) => Err(format!("node {node}: {e}")),
            None => Err(format!("node {node}: unreadable answer")),
        }
    }

    /// Marks `key` as moving (not served here) until the guard drops;
    /// `None` if it already is.
    fn lock(&self, key: &ConvKey) -> Option<MoveGuard<'_>> {
        self.moving.insert(key.clone()).then(|| MoveGuard {
            moving: &self.moving,
            key: key.clone(),
        })
    }

    /// Installs `state` as this node's copy of `conv` at `epoch` (the
    /// caller holds the key's lock): what was here before (a stale copy, a
    /// replica) is replaced in one commit, the scheduler and the sender
    /// learn of its timers and queued messages.
    async fn install_moving(
        &self,
        conv: u64,
        key: &ConvKey,
        epoch: u64,
        state: threadline_protocol::ConversationState,
        work: Option<threadline_protocol::AgentWork>,
    ) -> Result<(), String> {
        self.stop_local(key).await;
        // Sealed: no write of the copy replaced here is taken from now on
        // (an actor that raced the move, or its snapshot as it stops).
        self.seal(conv, true).await?;
        let installed = async {
            let p = &self.shared.persistence;
            let store = p.store.clone();
            let old = tokio::task::spawn_blocking(move || store.load(ConversationId(conv)))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            let old_timers: Vec<u64> = old
                .iter()
                .flat_map(|s| s.timers.iter().map(|t| t.id))
                .collect();
            let (timers, outbox) = crate::replica::derived_rows(&state);
            let held_by_agent = work.as_ref().is_some_and(|w| w.agent.is_some());
            // A customer waiting for a person keeps their place: the pool
            // queues them (again, if it still has them: then nothing changes).
            let waiting =
                work.as_ref()
                    .filter(|w| w.agent.is_none())
                    .map(|w| crate::pool::Escalation {
                        conv: w.conv,
                        tenant: w.tenant.clone(),
                        channel: w.channel,
                        skills: w.skills.clone(),
                        priority: w.priority,
                    });
            let install = crate::replica::Install {
                conv,
                tenant: key.tenant().to_owned(),
                contact: key.contact().to_owned(),
                epoch,
                snapshot: codec::encode_snapshot(&state),
                old_timers: old_timers.clone(),
                timers: timers.clone(),
                outbox: outbox.clone(),
                work,
            };
            p.wait_for(|done| crate::persistence::Op::Install { install, done })
                .await
                .map_err(|e| e.to_string())?;
            self.in_doubt.remove(&conv);
            // A delivery that raced the move may have started an actor on the
            // old copy.
            self.stop_local(key).await;
            // Its messages go to the agent holding it, through the pool.
            self.shared
                .pool_watched
                .set(ConversationId(conv), held_by_agent);
            if let Some(e) = waiting {
                match self.pool_home() {
                    Some(home) => self.tell_escalated(&home, e),
                    None => {
                        if let Some(p) = self.shared.pool.read().as_ref() {
                            let _ = p.cast(crate::pool::PoolMsg::Escalate(e));
                        }
                    }
                }
            }
            self.retime(old_timers, timers);
            self.shared.outbox.enqueue(outbox);
            // What it has now is current.
            self.unconfirmed.remove(key);
            Ok(())
        }
        .await;
        if installed.is_err() && !self.in_doubt.contains(&conv) {
            self.seal(conv, false).await?;
        }
        installed
    }

    /// Makes sure the replica of `conv` has everything (an empty change:
    /// the replica asks for a base if it lacks anything).
    async fn sync(&self, conv: u64, key: ConvKey, epoch: u64, through: u32) {
        let route = crate::persistence::Route {
            key,
            epoch,
            through,
        };
        let r = self
            .shared
            .persistence
            .wait_for(|done| {
                crate::persistence::Op::replica_check(ConversationId(conv), route, done)
            })
            .await;
        if let Err(e) = r {
            tracing::warn!(conv, error = %e, "the new replica is not in step yet");
        }
    }

    /// Hands conversation `conv` to `owner` (the node that owns it under
    /// the current membership) at the next epoch; this node keeps it as a
    /// replica. Not served here meanwhile.
    async fn hand_over(
        &self,
        conv: u64,
        tenant: &str,
        contact: &str,
        owner: &str,
    ) -> Result<(), String> {
        let key = ConvKey::new(tenant, contact);
        let Some(_guard) = self.lock(&key) else {
            return Err("the conversation is moving".into());
        };
        self.hand_over_moving(conv, &key, owner).await
    }

    async fn hand_over_moving(&self, conv: u64, key: &ConvKey, owner: &str) -> Result<(), String> {
        self.stop_local(key).await;
        // Sealed first: from here the writer takes no change of it, so the
        // state read next is everything this node will ever have of it at
        // this epoch, and nothing acknowledged here is left out of what the
        // new owner gets.
        self.seal(conv, true).await?;
        match self.hand_over_sealed(conv, key, owner).await {
            Ok(()) => Ok(()),
            Err(HandoverError::Refused(e)) => {
                // The receiver did not take it: it is served here again.
                self.in_doubt.remove(&conv);
                self.seal(conv, false).await?;
                Err(e)
            }
            Err(HandoverError::InDoubt(e)) => {
                self.in_doubt.insert(conv);
                Err(e)
            }
        }
    }

    /// Seals (`true`) or unseals conversation `conv` in the writer.
    async fn seal(&self, conv: u64, sealed: bool) -> Result<(), String> {
        self.shared
            .persistence
            .wait_for(|done| crate::persistence::Op::Seal { conv, sealed, done })
            .await
            .map_err(|e| e.to_string())
    }

    async fn hand_over_sealed(
        &self,
        conv: u64,
        key: &ConvKey,
        owner: &str,
    ) -> Result<(), HandoverError> {
        let refused = HandoverError::Refused;
        let p = &self.shared.persistence;
        let store = p.store.clone();
        let (state, epoch, work) = tokio::task::spawn_blocking(move || {
            let (state, epoch) = store.load_held(ConversationId(conv))?;
            Ok::<_, crate::store::StoreError>((state, epoch, store.agent_work_of(conv)?))
        })
        .await
        .map_err(|e| refused(e.to_string()))?
        .map_err(|e| refused(e.to_string()))?;
        let Some(state) = state else {
            return Err(refused("not held here".into()));
        };
        let epoch = epoch + 1;
        let snapshot = codec::encode_snapshot(&state);
        let req = wire(&Handover {
            conv,
            tenant: key.tenant().to_owned(),
            contact: key.contact().to_owned(),
            epoch,
            snapshot: snapshot.clone(),
            work,
        });
        // No answer: the receiver may have installed it or not.
        let bytes = self
            .rpc(owner, FORWARD_TIMEOUT, |reply| {
                RouterMsg::Handover(req, reply)
            })
            .await
            .map_err(HandoverError::InDoubt)?;
        match unwire::<Result<Verdict, String>>(&bytes) {
            // Fenced: the owner already has a newer copy; this one is stale.
            Some(Ok(Verdict::Stored | Verdict::Fenced)) => {}
            Some(Ok(Verdict::NeedBase)) => return Err(refused("unexpected answer".into())),
            Some(Err(e)) => return Err(refused(format!("node {owner}: {e}"))),
            None => {
                return Err(HandoverError::InDoubt(format!(
                    "node {owner}: unreadable answer"
                )))
            }
        }
        let old_timers: Vec<u64> = state.timers.iter().map(|t| t.id).collect();
        let demote = crate::replica::Demote {
            conv,
            meta: ReplicaMeta {
                tenant: key.tenant().to_owned(),
                contact: key.contact().to_owned(),
                epoch,
                owner: owner.to_owned(),
                last_seq: state.last_seq,
                unfolded: 0,
            },
            snapshot,
            old_timers: old_timers.clone(),
        };
        // The owner has it: if this commit fails, the conversation stays
        // sealed here (its copy is stale) and the hand-over is tried again.
        p.wait_for(|done| crate::persistence::Op::Demote { demote, done })
            .await
            .map_err(|e| HandoverError::InDoubt(e.to_string()))?;
        self.in_doubt.remove(&conv);
        self.unconfirmed.remove(key);
        self.stop_local(key).await;
        self.shared.pool_watched.set(ConversationId(conv), false);
        self.retime(old_timers, Vec::new());
        self.metrics.cluster_handed_over.inc();
        tracing::info!(conv, to = owner, epoch, "handed a conversation over");
        Ok(())
    }

    /// A conversation whose hand-over got no answer, that this node owns
    /// again: unsealed once no live peer holds a newer copy (one that does
    /// hands it back here at a newer epoch).
    async fn settle_in_doubt(&self, conv: u64) -> Result<(), String> {
        let store = self.shared.persistence.store.clone();
        let mine = tokio::task::spawn_blocking(move || store.epoch(conv))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        for peer in self
            .live_names()
            .into_iter()
            .filter(|n| *n != self.spec.name)
        {
            if let Peek::Held { epoch } = self.peek(&peer, conv, false).await? {
                if epoch > mine {
                    return Err(format!("node {peer} holds a newer copy"));
                }
            }
        }
        self.in_doubt.remove(&conv);
        self.seal(conv, false).await
    }

    /// A conversation handed to this node: installed unless this node
    /// already holds it at the same or a newer epoch.
    async fn receive(&self, h: Handover) -> Result<Verdict, String> {
        if self.leaving.load(std::sync::atomic::Ordering::Relaxed) {
            return Err("this node is leaving the cluster".into());
        }
        let key = ConvKey::new(&h.tenant, &h.contact);
        let Some(_guard) = self.lock(&key) else {
            return Err("the conversation is moving here; try again".into());
        };
        let store = self.shared.persistence.store.clone();
        let conv = h.conv;
        let (t, c) = (h.tenant.clone(), h.contact.clone());
        let (held, other) = tokio::task::spawn_blocking(move || {
            let held = match store.contact_of(ConversationId(conv))? {
                Some(_) => Some(store.epoch(conv)?),
                None => None,
            };
            let other = store.conversation_of(&t, &c)?.filter(|o| o.0 != conv);
            Ok::<_, crate::store::StoreError>((held, other))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        if let Some(other) = other {
            // The contact is one conversation here already: a second one
            // for it (started by a node that served before it knew its
            // peers) must not take its place.
            return Err(format!(
                "the contact's conversation here is {other}, not {}",
                ConversationId(conv)
            ));
        }
        if held.is_some_and(|e| e >= h.epoch) {
            return Ok(Verdict::Fenced);
        }
        let state = codec::decode_snapshot(&h.snapshot).map_err(|e| e.to_string())?;
        let through = state.last_seq;
        self.install_moving(h.conv, &key, h.epoch, state, h.work)
            .await?;
        self.sync(h.conv, key, h.epoch, through).await;
        self.metrics.cluster_received.inc();
        Ok(Verdict::Stored)
    }

    /// Whether this node holds conversation `id` itself (not a replica).
    pub async fn holds(&self, id: ConversationId) -> bool {
        let store = self.shared.persistence.store.clone();
        matches!(
            tokio::task::spawn_blocking(move || store.contact_of(id)).await,
            Ok(Ok(Some(_)))
        )
    }

    /// Where conversation `id` lives, if on another live node: its name.
    /// `None` when this node holds it or nobody knows.
    pub async fn locate(&self, id: ConversationId) -> Option<String> {
        if self.holds(id).await {
            return None;
        }
        match self.replica_owner(id).await {
            Some(n) => Some(n),
            None => self.remote_creator(id),
        }
    }

    /// If this node keeps the replica of conversation `id`: the live node
    /// that owns its key (when that is another node).
    pub async fn replica_owner(&self, id: ConversationId) -> Option<String> {
        let store = self.shared.persistence.store.clone();
        let replica = tokio::task::spawn_blocking(move || store.replica_meta(id.0))
            .await
            .ok()
            .and_then(|r| r.ok())
            .flatten();
        match replica {
            Some(meta) => {
                let k = format!("{}\0{}", meta.tenant, meta.contact);
                let live = self.live_names();
                ranked(&k, &live)
                    .first()
                    .filter(|o| **o != self.spec.name)
                    .map(|o| (*o).to_owned())
            }
            None => None,
        }
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
