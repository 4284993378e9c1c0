//! Forwarding: messages, reads and requests go to the node that owns the
//! conversation; a node checks it may serve one before it does.

use super::*;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ractor::{ActorRef, RpcReplyPort};
use threadline_protocol::codec::{self, InboundMessage};
use threadline_protocol::{ConversationId, MessageId};

use crate::command::{DeliverError, Delivered};
use crate::conversation::{ConvKey, InboundAck, InboundMeta};

impl Cluster {
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
    pub(super) async fn lookup(
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
    pub(super) async fn call(
        &self,
        owner: &str,
        msg: impl FnOnce(RpcReplyPort<Vec<u8>>) -> RouterMsg,
    ) -> Result<Vec<u8>, DeliverError> {
        self.call_counted(owner, 1, msg).await
    }

    /// `call`, counting `n` forwarded requests.
    pub(super) async fn call_counted(
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
                    let me = self.node.cluster_slot().get().cloned().unwrap_or_default();
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
        if self.spec.replication_factor < 2 || self.node.dir().contains(key) {
            return Ok(());
        }
        let store = self.node.persistence().store.clone();
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
        let store = self.node.persistence().store.clone();
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

    /// One RPC to `node`'s router. Given up at `timeout`, or as soon as
    /// the heartbeats find `node` gone (a hung peer keeps its sockets open,
    /// so the call alone would wait for the whole timeout).
    pub(super) async fn rpc(
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

    /// Whether this node holds conversation `id` itself (not a replica).
    pub async fn holds(&self, id: ConversationId) -> bool {
        let store = self.node.persistence().store.clone();
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
        let store = self.node.persistence().store.clone();
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

/// `first` and whatever else is queued already, up to `max` in all.
pub(super) fn gather<T>(
    first: T,
    queue: &mut tokio::sync::mpsc::UnboundedReceiver<T>,
    max: usize,
) -> Vec<T> {
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
pub(super) async fn forwarder(
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
