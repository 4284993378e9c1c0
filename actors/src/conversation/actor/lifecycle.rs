//! Loading from storage, views, fired timers, snapshots and passivation.

use super::*;
use std::sync::atomic::Ordering;

use ractor::ActorRef;
use threadline_protocol::codec::{self};
use threadline_protocol::{ConversationState, Timestamp};
use tokio::sync::oneshot;

use crate::conversation::core::Conversation;
use crate::persistence::{Done, Op};
use crate::store::StoreError;

impl ConvState {
    pub(super) async fn ensure_loaded(&mut self) -> Result<(), ConvError> {
        if self.loaded {
            return Ok(());
        }
        let shared = &self.args.router.shared;
        let storage = |e: StoreError| ConvError::Storage(e.to_string());
        shared.persistence.barrier().await.map_err(storage)?;
        let store = shared.persistence.store.clone();
        let key = self.args.key.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            match store.conversation_of(key.tenant(), key.contact())? {
                Some(id) => store.load_held(id),
                None => Ok((None, 0)),
            }
        })
        .await
        .map_err(|e| ConvError::Storage(e.to_string()))?
        .map_err(storage)?;
        let (state, epoch) = loaded;
        self.epoch = epoch;
        if let Some(state) = state {
            self.args.meta.conv_id.store(state.id.0, Ordering::Relaxed);
            shared.dir.by_id.insert(state.id.0, self.args.key.clone());
            self.journey_seen.clone_from(&state.journey);
            self.conv = Some(Conversation::from_state(state));
        }
        self.loaded = true;
        Ok(())
    }

    /// The conversation as it is durably: at once when nothing is on its
    /// way to the disk, else once what the state shows is committed.
    pub(super) async fn view(&mut self, reply: Reply<Option<ConversationState>>) {
        let state = self.conv.as_ref().map(|c| c.state.clone());
        // (A failing commit marks the failure before it leaves the count.)
        if self.commits.in_flight.load(Ordering::SeqCst) == 0 {
            let _ = reply.send(match self.commits.failed() {
                true => Err(reloading()),
                false => Ok(state),
            });
            return;
        }
        let commits = self.commits.clone();
        let done: Done = Box::new(move |r| {
            let _ = reply.send(match r {
                Err(e) => Err(conv_error(e)),
                Ok(()) if commits.failed() => Err(reloading()),
                Ok(()) => Ok(state),
            });
        });
        let _ = self
            .args
            .router
            .shared
            .persistence
            .submit(Op::Barrier { done })
            .await;
    }

    pub(super) async fn on_fire(&mut self, myself: &ActorRef<ConvMsg>, id: u64, reply: Reply<()>) {
        let shared = self.args.router.shared.clone();
        let now = shared.clock.now();
        let tenant = shared.tenant(self.args.key.tenant());
        let mut next_id = || shared.next_timer_id.fetch_add(1, Ordering::Relaxed);
        let flow = shared.flow(self.args.key.tenant());
        let fired = self.conv.as_mut().and_then(|c| {
            let mut events = c.fire_timer(id, now, &tenant, &mut next_id)?;
            if let Some(flow) = &flow {
                // A cadence step went out (or not): the next one, or the end.
                events.extend(c.cadence_next(flow, id, now, &mut next_id));
            }
            Some(events)
        });
        match fired {
            Some(events) => {
                self.commit(myself, events, None, move |r| {
                    let _ = reply.send(r);
                })
                .await
            }
            None => {
                // Not ours (handled before, cancelled, or never acknowledged):
                // drop the index row if one is left.
                let done: Done = Box::new(move |r| {
                    let _ = reply.send(r.map_err(|e| ConvError::Storage(e.to_string())));
                });
                let _ = shared
                    .persistence
                    .submit(Op::TimerDelete {
                        id,
                        done: Some(done),
                    })
                    .await;
            }
        }
    }

    /// Queues a snapshot of the current state.
    pub(super) async fn snapshot(&mut self, done: Option<Done>) -> bool {
        let Some(conv) = &self.conv else {
            return false;
        };
        let op = Op::Snapshot {
            conv: conv.id(),
            seq: conv.state.last_seq,
            bytes: codec::encode_snapshot(&conv.state),
            epoch: self.epoch,
            done,
        };
        self.since_snapshot = 0;
        self.args.router.shared.persistence.submit(op).await.is_ok()
    }

    pub(super) async fn passivate(
        &mut self,
        myself: &ActorRef<ConvMsg>,
        idle_before: Option<Timestamp>,
    ) {
        let meta = self.args.meta.clone();
        if let Some(cut) = idle_before {
            if meta.last_active.load(Ordering::Relaxed) >= cut.0 {
                meta.passivating.store(false, Ordering::Relaxed);
                return;
            }
        }
        if self.since_snapshot > 0 {
            let (tx, rx) = oneshot::channel();
            let queued = self
                .snapshot(Some(Box::new(move |r| {
                    let _ = tx.send(r);
                })))
                .await;
            let durable = queued && matches!(rx.await, Ok(Ok(())));
            if !durable {
                // The log still holds everything; stay resident and retry later.
                meta.passivating.store(false, Ordering::Relaxed);
                tracing::warn!(key = %self.args.key, "snapshot before passivation failed");
                return;
            }
        }
        let shared = &self.args.router.shared;
        if shared.dir.remove_if_actor(&self.args.key, myself.get_id()) {
            shared.metrics.conversations_passivated.inc();
        }
        myself.stop(Some("passivated".into()));
    }
}
