//! The conversation actor: the IO shell around `core::Conversation`.
//!
//! It loads its durable state lazily on the first message (after a
//! persistence barrier, so a predecessor's queued writes are committed),
//! hands each command to the core, queues the resulting events for the
//! writer as ONE operation (so a decision and its effects commit together)
//! and answers the caller only when the writer reports them durable.
//! Messages are handled one at a time in mailbox order; the actor does not
//! wait for the commit before taking the next one (FIFO commits keep the
//! order durable).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use threadline_protocol::Channel;
use tokio::sync::oneshot;

use super::core::Conversation;
use super::msg::Reply;
pub use super::msg::{ConvError, ConvMsg, InboundAck, InboundMeta};
use super::{ConvKey, EntryMeta};
use crate::store::StoreError;

mod commit;
mod inbound;
mod lifecycle;

/// A failed write as the conversation's callers see it: a change its
/// replica could not take is unavailable (retry), anything else storage.
fn conv_error(e: Arc<StoreError>) -> ConvError {
    match &*e {
        StoreError::Replication(m) | StoreError::Moved(m) => ConvError::Unavailable(m.clone()),
        other => ConvError::Storage(other.to_string()),
    }
}

/// (tenant, address) to index when a conversation is created.
type ContactIndex = (String, String);

pub struct ConversationActor;

/// The actor's commits in flight. The actor takes its next message before
/// its last commit is durable, so its in-memory state may be ahead of the
/// disk: a read waits for what it shows to be durable, and once a commit
/// has failed the state is known wrong and nothing more is served from it
/// (the actor stops and its successor reloads what is durable).
#[derive(Default)]
struct Commits {
    in_flight: std::sync::atomic::AtomicU32,
    failed: std::sync::atomic::AtomicBool,
}

impl Commits {
    fn failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }
}

/// What a caller sees of a conversation whose earlier write failed.
fn reloading() -> ConvError {
    ConvError::Unavailable("an earlier write of this conversation failed; retry".into())
}

pub struct ConvArgs {
    pub key: ConvKey,
    pub meta: Arc<EntryMeta>,
    /// How it reaches the agent pool, and (`router.shared`) the node's
    /// context.
    pub router: crate::router::Router,
}

pub struct ConvState {
    args: ConvArgs,
    loaded: bool,
    conv: Option<Conversation>,
    since_snapshot: u32,
    /// The epoch at which this node holds the conversation (cluster).
    epoch: u64,
    /// In-memory state holds events whose commit failed: never snapshot it.
    poisoned: bool,
    /// The journey as the outcome metrics last counted it.
    journey_seen: threadline_protocol::Journey,
    /// Commits submitted and not yet answered, and whether one failed:
    /// what a read shows must be durable.
    commits: Arc<Commits>,
    /// Calendar changes to commit with the next events.
    pending_calendar: Vec<crate::store::CalendarWrite>,
    /// The next commit copies another conversation's history (a merge):
    /// nobody is shown those messages again, and no outcome is counted
    /// twice.
    importing: bool,
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
            epoch: 0,
            poisoned: false,
            commits: Arc::default(),
            journey_seen: Default::default(),
            pending_calendar: Vec::new(),
            importing: false,
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
        if st.since_snapshot > 0 && !st.poisoned && !st.commits.failed() {
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
            .router
            .shared
            .dir
            .remove_if_actor(&st.args.key, myself.get_id());
        Ok(())
    }

    /// The work of each message runs in a boxed future: the actor's task
    /// is sized by the largest future it may hold, and every resident
    /// conversation pays for that size while idle.
    async fn handle(
        &self,
        myself: ActorRef<ConvMsg>,
        msg: ConvMsg,
        st: &mut ConvState,
    ) -> Result<(), ActorProcessingErr> {
        Box::pin(dispatch(myself, msg, st)).await;
        Ok(())
    }
}

async fn dispatch(myself: ActorRef<ConvMsg>, msg: ConvMsg, st: &mut ConvState) {
    let needs_state = !matches!(msg, ConvMsg::Passivate { .. } | ConvMsg::StorageFailed);
    if needs_state && st.commits.failed() {
        msg.fail(reloading());
        return;
    }
    if needs_state {
        if let Err(e) = st.ensure_loaded().await {
            msg.fail(e);
            return;
        }
    }
    match msg {
        ConvMsg::Inbound { msg, meta, reply } => {
            st.on_inbound(&myself, msg, meta, reply).await;
        }
        ConvMsg::View { reply } => st.view(reply).await,
        ConvMsg::ScheduleTimer { spec, reply } => {
            let shared = st.args.router.shared.clone();
            let Some(conv) = st.conv.as_mut() else {
                let _ = reply.send(Ok(None));
                return;
            };
            let id = shared.next_timer_id.fetch_add(1, Ordering::Relaxed);
            let events = conv.schedule_timer(id, spec);
            st.commit(&myself, events, None, move |r| {
                let _ = reply.send(r.map(|()| Some(id)));
            })
            .await;
        }
        ConvMsg::FireTimer { id, reply } => {
            st.on_fire(&myself, id, reply).await;
        }
        ConvMsg::CancelTimer { id, reply } => {
            match st.conv.as_mut().and_then(|c| c.cancel_timer(id)) {
                Some(events) => {
                    st.commit(&myself, events, None, move |r| {
                        let _ = reply.send(r.map(|()| true));
                    })
                    .await
                }
                None => {
                    let _ = reply.send(Ok(false));
                }
            }
        }
        ConvMsg::SendMessage {
            spec,
            create,
            reply,
        } => {
            if st.conv.is_none() && !create {
                let _ = reply.send(Ok(None));
                return;
            }
            let shared = st.args.router.shared.clone();
            let now = shared.clock.now();
            let channel = spec.channel.unwrap_or(Channel::Sms);
            let (mut events, index) = st.create_if_absent(channel, now);
            let tenant = shared.tenant(st.args.key.tenant());
            let conv = st.conv.as_mut().expect("created above");
            let id = conv.id();
            let mut next_id = || shared.next_timer_id.fetch_add(1, Ordering::Relaxed);
            let (outcome, more) = conv.send_message(spec, now, &tenant, &mut next_id);
            events.extend(more);
            st.commit(&myself, events, index, move |r| {
                let _ = reply.send(r.map(|()| Some((id, outcome))));
            })
            .await;
        }
        ConvMsg::Delivery {
            seq,
            outcome,
            reply,
        } => {
            let now = st.args.router.shared.clock.now();
            let events = match st.conv.as_mut() {
                Some(c) => c.delivery_update(seq, outcome, now),
                None => Vec::new(),
            };
            st.commit(&myself, events, None, move |r| {
                let _ = reply.send(r);
            })
            .await;
        }
        ConvMsg::UpdateContact { update, reply } => {
            let now = st.args.router.shared.clock.now();
            let (mut events, index) = st.create_if_absent(Channel::Sms, now);
            let conv = st.conv.as_mut().expect("created above");
            events.extend(conv.update_contact(update));
            let view = conv.state.clone();
            st.commit(&myself, events, index, move |r| {
                let _ = reply.send(r.map(|()| view));
            })
            .await;
        }
        ConvMsg::RecordConsent { change, reply } => {
            let now = st.args.router.shared.clock.now();
            let channel = change.channel.unwrap_or(Channel::Sms);
            let (mut events, index) = st.create_if_absent(channel, now);
            let conv = st.conv.as_mut().expect("created above");
            let id = conv.id();
            events.extend(conv.record_consent(change));
            st.commit(&myself, events, index, move |r| {
                let _ = reply.send(r.map(|()| id));
            })
            .await;
        }
        ConvMsg::Call { event, reply } => {
            let shared = st.args.router.shared.clone();
            let now = shared.clock.now();
            st.args.meta.touch(now);
            let (mut events, index) = st.create_if_absent(Channel::Voice, now);
            let tenant = shared.tenant(st.args.key.tenant());
            let conv = st.conv.as_mut().expect("created above");
            let id = conv.id();
            let mut next_id = || shared.next_timer_id.fetch_add(1, Ordering::Relaxed);
            // The tenant's flow runs the call (the voice assistant on
            // calls in, the business's own calls out), unless a person
            // holds the conversation.
            let flow = shared
                .flow(st.args.key.tenant())
                .filter(|_| conv.state.assigned_agent.is_none());
            let mut cal = crate::flows::SharedCalendar {
                map: &shared.calendar,
                tenant: st.args.key.tenant(),
                conv: id.0,
                now,
                writes: &mut st.pending_calendar,
            };
            let with_flow = flow
                .as_deref()
                .map(|f| (f, &mut cal as &mut dyn crate::flows::engine::Calendar));
            let (action, more) = conv.on_call(&event, now, &tenant, with_flow, &mut next_id);
            events.extend(more);
            if !events.is_empty() {
                events.extend(conv.ensure_lifecycle(now, &tenant.lifecycle, &mut next_id));
            }
            st.commit(&myself, events, index, move |r| {
                let _ = reply.send(r.map(|()| (id, action)));
            })
            .await;
        }
        ConvMsg::ProviderStatus { seq, report, reply } => {
            let now = st.args.router.shared.clock.now();
            let Some(conv) = st.conv.as_mut() else {
                let _ = reply.send(Ok(false));
                return;
            };
            let mut events = conv.set_delivery(seq, report, now);
            // A call the business placed that nobody answered: a text that
            // refers to it (the flow's `unanswered_call`).
            let shared = st.args.router.shared.clone();
            if let Some(flow) = shared.flow(st.args.key.tenant()) {
                let tenant = shared.tenant(st.args.key.tenant());
                let mut next_id = || shared.next_timer_id.fetch_add(1, Ordering::Relaxed);
                events.extend(conv.after_unanswered_call(
                    &flow,
                    &events,
                    now,
                    &tenant,
                    &mut next_id,
                ));
            }
            st.commit(&myself, events, None, move |r| {
                let _ = reply.send(r.map(|()| true));
            })
            .await;
        }
        ConvMsg::Merge {
            from,
            messages,
            identities,
            captured,
            reply,
        } => {
            let now = st.args.router.shared.clock.now();
            let (mut events, index) = st.create_if_absent(Channel::Sms, now);
            let conv = st.conv.as_mut().expect("created above");
            let id = conv.id();
            events.extend(conv.link_identity(&identities));
            events.extend(conv.import(from, &messages, now));
            events.extend(conv.adopt_captured(&captured.0, &captured.1));
            st.importing = true;
            st.commit(&myself, events, index, move |r| {
                let _ = reply.send(r.map(|()| id));
            })
            .await;
            st.importing = false;
        }
        ConvMsg::Escalate {
            reason,
            skills,
            priority,
            reply,
        } => {
            let now = st.args.router.shared.clock.now();
            let events = match st.conv.as_mut() {
                Some(c) => c.escalate(&reason, skills, priority, now),
                None => Vec::new(),
            };
            let queued = !events.is_empty();
            st.commit(&myself, events, None, move |r| {
                let _ = reply.send(r.map(|()| queued));
            })
            .await;
        }
        ConvMsg::Assign { agent, reply } => {
            let now = st.args.router.shared.clock.now();
            let events = match st.conv.as_mut() {
                Some(c) => c.assign(agent, now),
                None => Vec::new(),
            };
            st.commit(&myself, events, None, move |r| {
                let _ = reply.send(r);
            })
            .await;
        }
        ConvMsg::Note { text, reply } => {
            let now = st.args.router.shared.clock.now();
            let events = match st.conv.as_mut() {
                Some(c) => c.system_note(text, now),
                None => Vec::new(),
            };
            st.commit(&myself, events, None, move |r| {
                let _ = reply.send(r);
            })
            .await;
        }
        ConvMsg::BookingOutcome { outcome, reply } => {
            let shared = st.args.router.shared.clone();
            let now = shared.clock.now();
            let tenant = shared.tenant(st.args.key.tenant());
            let Some(c) = st.conv.as_mut() else {
                let _ = reply.send(Ok(Err(
                    crate::conversation::core::BookingOutcomeError::NoBooking,
                )));
                return;
            };
            let zone = c.zone(&tenant);
            let mut cal = crate::flows::SharedCalendar {
                map: &shared.calendar,
                tenant: st.args.key.tenant(),
                conv: c.id().0,
                now,
                writes: &mut st.pending_calendar,
            };
            match c.booking_outcome(outcome, now, zone, &mut cal) {
                Ok(events) => {
                    st.commit(&myself, events, None, move |r| {
                        let _ = reply.send(r.map(Ok));
                    })
                    .await
                }
                Err(e) => {
                    let _ = reply.send(Ok(Err(e)));
                }
            }
        }
        ConvMsg::CloseByAgent {
            agent,
            disposition,
            reply,
        } => {
            let now = st.args.router.shared.clock.now();
            let events = match st.conv.as_mut() {
                Some(c) => c.close_by_agent(&agent, &disposition, now),
                None => Vec::new(),
            };
            st.commit(&myself, events, None, move |r| {
                let _ = reply.send(r);
            })
            .await;
        }
        ConvMsg::CloseMerged { into, reply } => {
            let now = st.args.router.shared.clock.now();
            let events = match st.conv.as_mut() {
                Some(c) => c.close_merged(into, now),
                None => Vec::new(),
            };
            st.commit(&myself, events, None, move |r| {
                let _ = reply.send(r);
            })
            .await;
        }
        ConvMsg::Passivate { idle_before } => st.passivate(&myself, idle_before).await,
        ConvMsg::StorageFailed => {
            st.poisoned = true;
            st.args
                .router
                .shared
                .dir
                .remove_if_actor(&st.args.key, myself.get_id());
            myself.stop(Some("storage failure".into()));
        }
    }
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}
