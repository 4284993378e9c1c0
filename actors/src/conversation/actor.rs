//! The conversation actor: the IO shell around `core::Conversation`.
//!
//! It loads its durable state lazily on the first message (after a
//! persistence barrier, so a predecessor's queued writes are committed),
//! hands each command to the core, queues the resulting events for the
//! writer and answers the caller only when the writer reports them durable.
//! Messages are handled one at a time in mailbox order; the actor does not
//! wait for the commit before taking the next one (FIFO commits keep the
//! order durable).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use threadline_protocol::codec::{self, InboundMessage, LogRecord};
use threadline_protocol::{ConversationId, ConversationState, MessageId, Timestamp};
use tokio::sync::oneshot;

use super::core::{identities_for, Conversation, InboundOutcome};
use super::{ConvKey, EntryMeta};
use crate::persistence::Op;
use crate::runtime::Shared;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboundAck {
    pub conversation: ConversationId,
    pub message: MessageId,
    pub duplicate: bool,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ConvError {
    #[error("the conversation handler failed: {0}")]
    Panicked(String),
    #[error("{0}")]
    Storage(String),
}

pub enum ConvMsg {
    Inbound {
        msg: InboundMessage,
        reply: oneshot::Sender<Result<InboundAck, ConvError>>,
    },
    /// The conversation's current state, `None` if the contact has none.
    View {
        reply: oneshot::Sender<Result<Option<ConversationState>, ConvError>>,
    },
    /// Snapshot, leave the directory and stop. With `idle_before`, only if
    /// the actor has not been active since that instant.
    Passivate { idle_before: Option<Timestamp> },
    /// A queued write failed: drop in-memory state and stop.
    StorageFailed,
}

pub struct ConversationActor;

pub struct ConvArgs {
    pub key: ConvKey,
    pub meta: Arc<EntryMeta>,
    pub shared: Arc<Shared>,
}

pub struct ConvState {
    args: ConvArgs,
    loaded: bool,
    conv: Option<Conversation>,
    since_snapshot: u32,
    /// In-memory state holds events whose commit failed: never snapshot it.
    poisoned: bool,
}

impl Actor for ConversationActor {
    type Msg = ConvMsg;
    type State = ConvState;
    type Arguments = ConvArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<ConvMsg>,
        args: ConvArgs,
    ) -> Result<ConvState, ActorProcessingErr> {
        Ok(ConvState {
            args,
            loaded: false,
            conv: None,
            since_snapshot: 0,
            poisoned: false,
        })
    }

    /// Runs after a drain (shutdown) or a passivation: whatever the log holds
    /// beyond the last snapshot is folded into a new one, so the next start
    /// has nothing to replay.
    async fn post_stop(
        &self,
        myself: ActorRef<ConvMsg>,
        st: &mut ConvState,
    ) -> Result<(), ActorProcessingErr> {
        if st.since_snapshot > 0 && !st.poisoned {
            let (tx, rx) = oneshot::channel();
            if st
                .snapshot(Some(Box::new(move |r| {
                    let _ = tx.send(r);
                })))
                .await
            {
                let _ = rx.await;
            }
        }
        st.args
            .shared
            .dir
            .remove_if_actor(&st.args.key, myself.get_id());
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<ConvMsg>,
        msg: ConvMsg,
        st: &mut ConvState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ConvMsg::Inbound { msg, reply } => {
                if let Err(e) = st.ensure_loaded().await {
                    let _ = reply.send(Err(e));
                    return Ok(());
                }
                st.on_inbound(&myself, msg, reply).await;
            }
            ConvMsg::View { reply } => {
                let r = st.ensure_loaded().await;
                let _ = reply.send(r.map(|()| st.conv.as_ref().map(|c| c.state.clone())));
            }
            ConvMsg::Passivate { idle_before } => st.passivate(&myself, idle_before).await,
            ConvMsg::StorageFailed => {
                st.args
                    .shared
                    .dir
                    .remove_if_actor(&st.args.key, myself.get_id());
                myself.stop(Some("storage failure".into()));
            }
        }
        Ok(())
    }
}

impl ConvState {
    async fn ensure_loaded(&mut self) -> Result<(), ConvError> {
        if self.loaded {
            return Ok(());
        }
        let shared = &self.args.shared;
        let storage = |e: crate::store::StoreError| ConvError::Storage(e.to_string());
        shared.persistence.barrier().await.map_err(storage)?;
        let store = shared.persistence.store.clone();
        let key = self.args.key.clone();
        let state = tokio::task::spawn_blocking(move || {
            match store.conversation_of(key.tenant(), key.contact())? {
                Some(id) => store.load(id),
                None => Ok(None),
            }
        })
        .await
        .map_err(|e| ConvError::Storage(e.to_string()))?
        .map_err(storage)?;
        if let Some(state) = state {
            self.args.meta.conv_id.store(state.id.0, Ordering::Relaxed);
            shared.dir.by_id.insert(state.id.0, self.args.key.clone());
            self.conv = Some(Conversation::from_state(state));
        }
        self.loaded = true;
        Ok(())
    }

    async fn on_inbound(
        &mut self,
        myself: &ActorRef<ConvMsg>,
        msg: InboundMessage,
        reply: oneshot::Sender<Result<InboundAck, ConvError>>,
    ) {
        let shared = self.args.shared.clone();
        let now = shared.clock.now();
        self.args.meta.touch(now);
        let mut events = Vec::with_capacity(2);
        let mut index = None;
        if self.conv.is_none() {
            let id = ConversationId(shared.next_conversation.fetch_add(1, Ordering::Relaxed));
            let key = &self.args.key;
            let (conv, created) = Conversation::create(
                id,
                key.tenant(),
                key.contact(),
                identities_for(msg.channel, key.contact()),
                now,
            );
            events.push(created);
            index = Some((key.tenant().to_owned(), key.contact().to_owned()));
            self.args.meta.conv_id.store(id.0, Ordering::Relaxed);
            shared.dir.by_id.insert(id.0, self.args.key.clone());
            self.conv = Some(conv);
        }
        let conv = self.conv.as_mut().expect("created above");
        let outcome = match catch_unwind(AssertUnwindSafe(|| {
            conv.on_inbound(&msg, now, &shared.core)
        })) {
            Ok((outcome, more)) => {
                events.extend(more);
                outcome
            }
            Err(panic) => {
                let text = panic_text(&panic);
                let _ = reply.send(Err(ConvError::Panicked(text)));
                // Let ractor see the panic: the supervisor restarts this
                // conversation from its durable state.
                std::panic::resume_unwind(panic);
            }
        };
        let conversation = conv.id();
        let (message, duplicate) = match outcome {
            InboundOutcome::Recorded(m) => (m, false),
            InboundOutcome::Duplicate(m) => (m, true),
        };
        let ack = InboundAck {
            conversation,
            message,
            duplicate,
        };
        let me = myself.clone();
        let metrics = shared.metrics.clone();
        let done: crate::persistence::Done = Box::new(move |r| match r {
            Ok(()) => {
                if duplicate {
                    metrics.duplicates.inc();
                } else {
                    metrics.messages_ingested.inc();
                }
                let _ = reply.send(Ok(ack));
            }
            Err(e) => {
                let _ = reply.send(Err(ConvError::Storage(e.to_string())));
                let _ = me.cast(ConvMsg::StorageFailed);
            }
        });
        if events.is_empty() {
            // A duplicate: answer once the original is surely durable.
            let _ = shared.persistence.submit(Op::Barrier { done }).await;
            return;
        }
        let mut done = Some(done);
        let last = events.len() - 1;
        for (i, (seq, event)) in events.into_iter().enumerate() {
            let record = codec::encode_log_record(&LogRecord {
                conv: conversation,
                seq,
                event,
            });
            let op = Op::Event {
                conv: conversation,
                seq,
                record,
                index: if seq == 1 { index.take() } else { None },
                done: if i == last { done.take() } else { None },
            };
            if shared.persistence.submit(op).await.is_err() {
                // The writer is gone (shutdown): the caller's reply port was
                // moved into the dropped op, so it sees the actor as gone.
                return;
            }
            self.since_snapshot += 1;
        }
        if self.since_snapshot >= shared.snapshot_every {
            self.snapshot(None).await;
        }
    }

    /// Queues a snapshot of the current state.
    async fn snapshot(&mut self, done: Option<crate::persistence::Done>) -> bool {
        let Some(conv) = &self.conv else {
            return false;
        };
        let op = Op::Snapshot {
            conv: conv.id(),
            seq: conv.state.last_seq,
            bytes: codec::encode_snapshot(&conv.state),
            done,
        };
        self.since_snapshot = 0;
        self.args.shared.persistence.submit(op).await.is_ok()
    }

    async fn passivate(&mut self, myself: &ActorRef<ConvMsg>, idle_before: Option<Timestamp>) {
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
        let shared = &self.args.shared;
        if shared.dir.remove_if_actor(&self.args.key, myself.get_id()) {
            shared.metrics.conversations_passivated.inc();
        }
        myself.stop(Some("passivated".into()));
    }
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}
