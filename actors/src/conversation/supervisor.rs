//! The conversation supervisor: the only place conversation actors are
//! started. Activation is serialized here, so one (tenant, contact) never
//! has two live actors. It restarts an actor that failed (its durable state
//! is reloaded lazily by the new one), passivates idle conversations, and
//! keeps the number of resident conversations under the cap by passivating
//! the least recently active first.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};

use super::actor::{ConvArgs, ConvMsg, ConversationActor};
pub use super::SupMsg;
use super::{ConvKey, Entry, EntryMeta};
use crate::shared::Shared;

pub struct ConversationSupervisor;

pub struct SupState {
    shared: Arc<Shared>,
    /// Handed to each conversation actor.
    router: crate::router::Router,
    /// Live children: actor id → key.
    children: HashMap<ActorId, ConvKey>,
    /// Cap evictions requested and not yet seen terminating.
    outstanding_evictions: usize,
}

impl Actor for ConversationSupervisor {
    type Msg = SupMsg;
    type State = SupState;
    type Arguments = crate::router::Router;

    async fn pre_start(
        &self,
        myself: ActorRef<SupMsg>,
        router: crate::router::Router,
    ) -> Result<SupState, ActorProcessingErr> {
        let shared = router.shared.clone();
        // A restarted supervisor adopts nothing: the directory is rebuilt.
        shared.dir.by_key.clear();
        shared.dir.by_id.clear();
        let every = shared.sweep_interval;
        let me = myself.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            tick.tick().await;
            loop {
                tick.tick().await;
                if me.cast(SupMsg::Sweep).is_err() {
                    break;
                }
            }
        });
        Ok(SupState {
            shared,
            router,
            children: HashMap::new(),
            outstanding_evictions: 0,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<SupMsg>,
        msg: SupMsg,
        st: &mut SupState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupMsg::Activate { key, reply } => {
                let r = match st.shared.dir.by_key.get(&key).map(|e| e.clone()) {
                    Some(e) => Ok(e),
                    None => st.spawn(&myself, key).await,
                };
                let _ = reply.send(r);
                st.enforce_cap();
            }
            SupMsg::Sweep => {
                st.passivate_idle();
                st.enforce_cap();
            }
            SupMsg::Stop { key, why, done } => match done {
                // Waited for on its own task: the supervisor stays free for
                // the child's exit and everything else.
                Some(done) => {
                    let shared = st.shared.clone();
                    tokio::spawn(async move {
                        shared.dir.stop_and_wait(&key, &why).await;
                        let _ = done.send(());
                    });
                }
                None => st.shared.dir.stop(&key, &why),
            },
            SupMsg::Passivate { key } => st.shared.dir.passivate(&key),
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupMsg>,
        evt: SupervisionEvent,
        st: &mut SupState,
    ) -> Result<(), ActorProcessingErr> {
        match evt {
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                if let Some(key) = st.children.remove(&cell.get_id()) {
                    st.shared.dir.remove_if_actor(&key, cell.get_id());
                    st.outstanding_evictions = st.outstanding_evictions.saturating_sub(1);
                }
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                if let Some(key) = st.children.remove(&cell.get_id()) {
                    tracing::warn!(%key, error = %err, "conversation failed; restarting from durable state");
                    st.shared.metrics.conversation_restarts.inc();
                    st.shared.dir.remove_if_actor(&key, cell.get_id());
                    if let Err(e) = st.spawn(&myself, key).await {
                        tracing::error!(error = %e, "restarting a conversation failed");
                    }
                }
            }
            _ => {}
        }
        st.shared
            .metrics
            .conversations_resident
            .set(st.shared.dir.by_key.len() as i64);
        Ok(())
    }
}

impl SupState {
    async fn spawn(&mut self, myself: &ActorRef<SupMsg>, key: ConvKey) -> Result<Entry, String> {
        let meta = Arc::new(EntryMeta::default());
        meta.touch(self.shared.clock.now());
        let args = ConvArgs {
            key: key.clone(),
            meta: meta.clone(),
            router: self.router.clone(),
        };
        let (actor, _) = Actor::spawn_linked(None, ConversationActor, args, myself.get_cell())
            .await
            .map_err(|e| e.to_string())?;
        self.children.insert(actor.get_id(), key.clone());
        let entry = Entry { actor, meta };
        self.shared.dir.by_key.insert(key, entry.clone());
        self.shared.metrics.conversations_activated.inc();
        self.shared
            .metrics
            .conversations_resident
            .set(self.shared.dir.by_key.len() as i64);
        Ok(entry)
    }

    fn passivate_idle(&self) {
        let now = self.shared.clock.now();
        let cut = now.saturating_add_millis(-(self.shared.passivate_after.as_millis() as i64));
        for e in self.shared.dir.by_key.iter() {
            let meta = &e.value().meta;
            if meta.last_active.load(Ordering::Relaxed) < cut.0
                && !meta.passivating.swap(true, Ordering::Relaxed)
            {
                let _ = e.value().actor.cast(ConvMsg::Passivate {
                    idle_before: Some(cut),
                });
            }
        }
    }

    /// Over the cap: passivate the least recently active down to 90% of it,
    /// so a node at its cap scans the directory once per 10% of new
    /// activations rather than on each one.
    fn enforce_cap(&mut self) {
        let cap = self.shared.max_resident;
        let dir = &self.shared.dir.by_key;
        if dir.len().saturating_sub(self.outstanding_evictions) <= cap {
            return;
        }
        let target = cap - cap / 10;
        let mut candidates: Vec<(i64, Entry)> = dir
            .iter()
            .filter(|e| !e.value().meta.passivating.load(Ordering::Relaxed))
            .map(|e| {
                (
                    e.value().meta.last_active.load(Ordering::Relaxed),
                    e.value().clone(),
                )
            })
            .collect();
        let excess = candidates.len().saturating_sub(target);
        if excess == 0 {
            return;
        }
        candidates.select_nth_unstable_by_key(excess - 1, |(t, _)| *t);
        self.outstanding_evictions += excess;
        for (_, e) in candidates.into_iter().take(excess) {
            e.meta.passivating.store(true, Ordering::Relaxed);
            let _ = e.actor.cast(ConvMsg::Passivate { idle_before: None });
        }
    }
}

/// How often idle conversations are looked for, given the idle time.
pub fn sweep_interval_for(passivate_after: Duration) -> Duration {
    (passivate_after / 4).clamp(Duration::from_millis(50), Duration::from_secs(30))
}
