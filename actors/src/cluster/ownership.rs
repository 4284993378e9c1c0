//! Ownership moves: take-over of a gone owner's conversations (promote),
//! hand-over to the node that owns them now, and receiving one.

use super::*;
use std::sync::Arc;

use futures_util::StreamExt;
use threadline_protocol::codec::{self};
use threadline_protocol::ConversationId;

use crate::conversation::ConvKey;
use crate::replica::{ReplicaMeta, Verdict};

impl Cluster {
    /// Stops the resident actor of `key`, if any, and waits for it.
    pub(super) async fn stop_local(&self, key: &ConvKey) {
        self.node.stop_actor(key, "ownership moved", true).await;
    }

    /// Moves conversations to where the current membership places them:
    /// replicas of a lost owner are taken over here, conversations another
    /// live node owns now are handed to it. Runs on its own task, one at
    /// a time; what fails is tried again at the next heartbeat.
    pub(super) fn rebalance(self: Arc<Self>) {
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
    pub(super) async fn rebalance_once(&self) -> Result<bool, String> {
        let live = self.live_names();
        let store = self.node.persistence().store.clone();
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
    pub(super) async fn promote(&self, conv: u64, key: &ConvKey) -> Result<(), String> {
        let Some(_guard) = self.lock(key) else {
            return Err("the conversation is moving".into());
        };
        // Read again under the lock: another path may have taken it over
        // (and changed it) meanwhile.
        let store = self.node.persistence().store.clone();
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
    pub(super) fn retime(&self, remove: Vec<u64>, add: Vec<threadline_protocol::codec::TimerRow>) {
        for id in remove {
            self.node.scheduler().remove(id);
        }
        for row in add {
            self.node.scheduler().add(row);
        }
    }

    /// Asks `node` what it has of conversation `conv`.
    pub(super) async fn peek(
        &self,
        node: &str,
        conv: u64,
        with_state: bool,
    ) -> Result<Peek, String> {
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
    pub(super) fn lock(&self, key: &ConvKey) -> Option<MoveGuard<'_>> {
        self.moving.insert(key.clone()).then(|| MoveGuard {
            moving: &self.moving,
            key: key.clone(),
        })
    }

    /// Installs `state` as this node's copy of `conv` at `epoch` (the
    /// caller holds the key's lock): what was here before (a stale copy, a
    /// replica) is replaced in one commit, the scheduler and the sender
    /// learn of its timers and queued messages.
    pub(super) async fn install_moving(
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
            let p = &self.node.persistence();
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
            self.node
                .pool_watched()
                .set(ConversationId(conv), held_by_agent);
            if let Some(e) = waiting {
                match self.pool_home() {
                    Some(home) => self.tell_escalated(&home, e),
                    None => {
                        if let Some(p) = self.node.pool().as_ref() {
                            let _ = p.cast(crate::pool::PoolMsg::Escalate(e));
                        }
                    }
                }
            }
            self.retime(old_timers, timers);
            self.node.outbox().enqueue(outbox);
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
    pub(super) async fn sync(&self, conv: u64, key: ConvKey, epoch: u64, through: u32) {
        let route = crate::persistence::Route {
            key,
            epoch,
            through,
        };
        let r = self
            .node
            .persistence()
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
    pub(super) async fn hand_over(
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

    pub(super) async fn hand_over_moving(
        &self,
        conv: u64,
        key: &ConvKey,
        owner: &str,
    ) -> Result<(), String> {
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
    pub(super) async fn seal(&self, conv: u64, sealed: bool) -> Result<(), String> {
        self.node
            .persistence()
            .wait_for(|done| crate::persistence::Op::Seal { conv, sealed, done })
            .await
            .map_err(|e| e.to_string())
    }

    pub(super) async fn hand_over_sealed(
        &self,
        conv: u64,
        key: &ConvKey,
        owner: &str,
    ) -> Result<(), HandoverError> {
        let refused = HandoverError::Refused;
        let p = &self.node.persistence();
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
        self.node.pool_watched().set(ConversationId(conv), false);
        self.retime(old_timers, Vec::new());
        self.metrics.cluster_handed_over.inc();
        tracing::info!(conv, to = owner, epoch, "handed a conversation over");
        Ok(())
    }

    /// A conversation whose hand-over got no answer, that this node owns
    /// again: unsealed once no live peer holds a newer copy (one that does
    /// hands it back here at a newer epoch).
    pub(super) async fn settle_in_doubt(&self, conv: u64) -> Result<(), String> {
        let store = self.node.persistence().store.clone();
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
    pub(super) async fn receive(&self, h: Handover) -> Result<Verdict, String> {
        if self.leaving.load(std::sync::atomic::Ordering::Relaxed) {
            return Err("this node is leaving the cluster".into());
        }
        let key = ConvKey::new(&h.tenant, &h.contact);
        let Some(_guard) = self.lock(&key) else {
            return Err("the conversation is moving here; try again".into());
        };
        let store = self.node.persistence().store.clone();
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
}

/// What `store` has of conversation `conv`.
pub(super) fn peek(
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
pub(super) struct MoveGuard<'a> {
    moving: &'a dashmap::DashSet<ConvKey>,
    key: ConvKey,
}

impl Drop for MoveGuard<'_> {
    fn drop(&mut self) {
        self.moving.remove(&self.key);
    }
}
