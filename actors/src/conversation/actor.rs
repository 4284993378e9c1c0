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

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use threadline_protocol::codec::{self, InboundMessage, LogRecord, TimerOwner, TimerRow};
use threadline_protocol::{
    Channel, ConsentChange, ConvEvent, ConversationId, ConversationState, Identities, MessageId,
    Timestamp,
};
use tokio::sync::oneshot;

use super::core::{
    identities_for, CallEvent, Conversation, DeliveryReport, InboundOutcome, OutboundSpec,
    SendOutcome, TimerSpec, VoiceAction,
};
use super::{ConvKey, EntryMeta};
use crate::audit::AuditDraft;
use crate::persistence::{Done, Op};
use crate::runtime::Shared;
use crate::store::{OutboxWrite, StoreError, TimerIndex};

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
    /// Not acknowledged: the cluster could not replicate it (retry).
    #[error("{0}")]
    Unavailable(String),
}

type Reply<T> = oneshot::Sender<Result<T, ConvError>>;

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

/// What a provider said about an inbound message beyond the message.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InboundMeta {
    /// The provider's own keyword classification (Twilio `OptOutType`).
    pub hint: Option<crate::consent::keywords::Keyword>,
    /// The sender's state as the provider knows it (Twilio `FromState`).
    pub from_state: Option<String>,
    /// Addresses of the sender this message revealed (a WhatsApp id).
    pub identities: Option<Identities>,
    /// The sender's name as the provider knows it (WhatsApp profile name);
    /// kept unless a name is already known.
    pub profile_name: Option<String>,
}

#[derive(ractor_cluster::RactorMessage)]
pub enum ConvMsg {
    Inbound {
        msg: InboundMessage,
        meta: InboundMeta,
        reply: Reply<InboundAck>,
    },
    /// The conversation's current state, `None` if the contact has none.
    View {
        reply: Reply<Option<ConversationState>>,
    },
    /// Schedules a timer; `None` if the contact has no conversation.
    ScheduleTimer {
        spec: TimerSpec,
        reply: Reply<Option<u64>>,
    },
    /// Timer `id` came due (delivered at least once; handled at most once).
    FireTimer { id: u64, reply: Reply<()> },
    /// Cancels timer `id`; false if it is not pending here.
    CancelTimer { id: u64, reply: Reply<bool> },
    /// Puts a business-initiated message through the gate. With `create`,
    /// a contact without a conversation gets one; otherwise `None`.
    SendMessage {
        spec: OutboundSpec,
        create: bool,
        reply: Reply<Option<(ConversationId, SendOutcome)>>,
    },
    /// Records what is known of the contact (creates the conversation if
    /// needed); the event is `ConvEvent::ContactUpdated`.
    UpdateContact {
        update: ConvEvent,
        reply: Reply<ConversationState>,
    },
    /// The provider outcome of queued outbound message `seq`.
    Delivery {
        seq: u32,
        outcome: crate::sender::Outcome,
        reply: Reply<()>,
    },
    /// Records a consent change (creates the conversation if needed).
    RecordConsent {
        change: ConsentChange,
        reply: Reply<ConversationId>,
    },
    /// A step of a phone call (creates the conversation if needed).
    Call {
        event: CallEvent,
        reply: Reply<(ConversationId, VoiceAction)>,
    },
    /// A provider's delivery report on outbound message `seq` (or the one
    /// carrying the report's provider id). False if no conversation.
    ProviderStatus {
        seq: Option<u32>,
        report: DeliveryReport,
        reply: Reply<bool>,
    },
    /// Takes over another conversation's messages and addresses (creates
    /// the conversation if needed).
    Merge {
        from: ConversationId,
        messages: Vec<threadline_protocol::Message>,
        identities: Identities,
        /// What the other conversation knew, and where it stood.
        captured: Box<(threadline_protocol::Captured, threadline_protocol::Journey)>,
        reply: Reply<ConversationId>,
    },
    /// Asks for a person; false if an agent already holds it.
    Escalate {
        reason: String,
        skills: Vec<String>,
        priority: i32,
        reply: Reply<bool>,
    },
    /// Records who holds the conversation.
    Assign {
        agent: Option<String>,
        reply: Reply<()>,
    },
    /// A system note in the transcript.
    Note { text: String, reply: Reply<()> },
    /// How its booked appointment went.
    BookingOutcome {
        outcome: crate::conversation::core::BookingOutcome,
        reply: Reply<Result<(), crate::conversation::core::BookingOutcomeError>>,
    },
    /// An agent closes it with a disposition.
    CloseByAgent {
        agent: String,
        disposition: String,
        reply: Reply<()>,
    },
    /// This conversation continues in `into`: close it.
    CloseMerged {
        into: ConversationId,
        reply: Reply<()>,
    },
    /// Snapshot, leave the directory and stop. With `idle_before`, only if
    /// the actor has not been active since that instant.
    Passivate { idle_before: Option<Timestamp> },
    /// A queued write failed: drop in-memory state and stop.
    StorageFailed,
}

impl ConvMsg {
    /// Answers the request with `e` on whatever reply channel it carries.
    fn fail(self, e: ConvError) {
        match self {
            ConvMsg::Inbound { reply, .. } => drop(reply.send(Err(e))),
            ConvMsg::View { reply } => drop(reply.send(Err(e))),
            ConvMsg::ScheduleTimer { reply, .. } => drop(reply.send(Err(e))),
            ConvMsg::FireTimer { reply, .. } => drop(reply.send(Err(e))),
            ConvMsg::CancelTimer { reply, .. } => drop(reply.send(Err(e))),
            ConvMsg::SendMessage { reply, .. } => drop(reply.send(Err(e))),
            ConvMsg::Delivery { reply, .. } => drop(reply.send(Err(e))),
            ConvMsg::UpdateContact { reply, .. } => drop(reply.send(Err(e))),
            ConvMsg::RecordConsent { reply, .. } => drop(reply.send(Err(e))),
            ConvMsg::Call { reply, .. } => drop(reply.send(Err(e))),
            ConvMsg::ProviderStatus { reply, .. } => drop(reply.send(Err(e))),
            ConvMsg::Merge { reply, .. } => drop(reply.send(Err(e))),
            ConvMsg::CloseMerged { reply, .. } => drop(reply.send(Err(e))),
            ConvMsg::Escalate { reply, .. } => drop(reply.send(Err(e))),
            ConvMsg::Assign { reply, .. } | ConvMsg::Note { reply, .. } => drop(reply.send(Err(e))),
            ConvMsg::CloseByAgent { reply, .. } => drop(reply.send(Err(e))),
            ConvMsg::BookingOutcome { reply, .. } => drop(reply.send(Err(e))),
            ConvMsg::Passivate { .. } | ConvMsg::StorageFailed => {}
        }
    }
}

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
    pub shared: Arc<Shared>,
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
            let shared = st.args.shared.clone();
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
            let shared = st.args.shared.clone();
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
            let now = st.args.shared.clock.now();
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
            let now = st.args.shared.clock.now();
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
            let now = st.args.shared.clock.now();
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
            let shared = st.args.shared.clone();
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
            let now = st.args.shared.clock.now();
            let Some(conv) = st.conv.as_mut() else {
                let _ = reply.send(Ok(false));
                return;
            };
            let mut events = conv.set_delivery(seq, report, now);
            // A call the business placed that nobody answered: a text that
            // refers to it (the flow's `unanswered_call`).
            let shared = st.args.shared.clone();
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
            let now = st.args.shared.clock.now();
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
            let now = st.args.shared.clock.now();
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
            let now = st.args.shared.clock.now();
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
            let now = st.args.shared.clock.now();
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
            let shared = st.args.shared.clone();
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
            let now = st.args.shared.clock.now();
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
            let now = st.args.shared.clock.now();
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
                .shared
                .dir
                .remove_if_actor(&st.args.key, myself.get_id());
            myself.stop(Some("storage failure".into()));
        }
    }
}

impl ConvState {
    async fn ensure_loaded(&mut self) -> Result<(), ConvError> {
        if self.loaded {
            return Ok(());
        }
        let shared = &self.args.shared;
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

    /// Queues `events` (already applied to the state) as one durable write,
    /// with the timer index changes they imply; `then` runs once they are
    /// durable (or definitely failed). The scheduler learns of new and
    /// finished timers only after the commit.
    async fn commit(
        &mut self,
        myself: &ActorRef<ConvMsg>,
        events: Vec<(u32, ConvEvent)>,
        index: Option<ContactIndex>,
        then: impl FnOnce(Result<(), ConvError>) + Send + 'static,
    ) {
        let Some(conv) = &self.conv else {
            then(Ok(()));
            return;
        };
        let id = conv.id();
        // In a cluster, the calendar's home takes the holds and bookings
        // first; refused, nothing of this change is kept (the conversation
        // reloads its durable state) and the caller retries.
        if !self.pending_calendar.is_empty() {
            if let Some(cluster) = self.args.shared.cluster() {
                let tenant = self.args.key.tenant();
                let reserved = cluster
                    .calendar_reserve(tenant, id.0, &self.pending_calendar)
                    .await;
                if let Err(e) = reserved {
                    self.pending_calendar.clear();
                    self.commits.failed.store(true, Ordering::SeqCst);
                    then(Err(ConvError::Unavailable(e)));
                    let _ = myself.cast(ConvMsg::StorageFailed);
                    return;
                }
            }
        }
        let owner = TimerOwner::Conversation(id);
        let mut timers = Vec::new();
        let mut audit = Vec::new();
        let mut outbox = Vec::new();
        let mut records = Vec::with_capacity(events.len());
        // The purpose of the last WhatsApp decision to use a template: the
        // message it let through follows it in the same batch.
        let mut template: Option<String> = None;
        let mut published = Vec::new();
        let mut escalations = Vec::new();
        let mut work: Vec<crate::store::WorkWrite> = Vec::new();
        let closes = events.iter().any(|(_, e)| {
            matches!(
                e,
                ConvEvent::StatusChanged {
                    status: threadline_protocol::Status::Closed,
                    ..
                }
            )
        });
        for (_, e) in events.iter().filter(|_| !self.importing) {
            if let ConvEvent::MessageAppended(m) = e {
                if self.args.shared.feed.wants(id, m) {
                    published.push(crate::feed::Published {
                        tenant: self.args.key.tenant().to_owned(),
                        conversation: id,
                        contact: self.args.key.contact().to_owned(),
                        identities: conv.state.identities.clone(),
                        message: m.clone(),
                    });
                }
            }
        }
        let outcomes = if self.importing {
            Vec::new()
        } else {
            record_outcomes(
                &self.args.shared.metrics.outcomes,
                &conv.state,
                &events,
                &self.journey_seen,
            )
        };
        // (Most commits do not change the journey: no copy for them.)
        if events
            .iter()
            .any(|(_, e)| matches!(e, ConvEvent::JourneyChanged(_)))
        {
            self.journey_seen.clone_from(&conv.state.journey);
        }
        for (seq, event) in events {
            if let Some(draft) = audit_draft(&self.args.key, id, &event) {
                audit.push(draft);
            }
            let row = |agent: Option<String>, skills: Vec<String>, priority: i32, since| {
                crate::store::WorkWrite::Put(threadline_protocol::AgentWork {
                    conv: id,
                    tenant: self.args.key.tenant().to_owned(),
                    channel: conv.last_inbound_channel(),
                    skills,
                    priority,
                    since,
                    agent,
                })
            };
            match &event {
                ConvEvent::Escalated {
                    skills,
                    priority,
                    at,
                    ..
                } => work.push(row(None, skills.clone(), *priority, *at)),
                // Closed: nobody needs it any more.
                ConvEvent::AgentAssigned { agent: None, .. } if closes => {
                    work.push(crate::store::WorkWrite::Delete(id.0))
                }
                // Released without a close: it waits again (transfer,
                // requeue); taken: it is held.
                ConvEvent::AgentAssigned { agent, at } => {
                    work.push(row(agent.clone(), Vec::new(), 0, *at))
                }
                _ => {}
            }
            if let ConvEvent::Escalated {
                skills, priority, ..
            } = &event
            {
                escalations.push(crate::pool::Escalation {
                    conv: id,
                    tenant: self.args.key.tenant().to_owned(),
                    channel: conv.last_inbound_channel(),
                    skills: skills.clone(),
                    priority: *priority,
                });
            }
            match &event {
                ConvEvent::Decided(d) => {
                    template = d
                        .rule
                        .starts_with(crate::consent::policy::WHATSAPP_TEMPLATE_RULE)
                        .then(|| d.purpose.clone());
                }
                ConvEvent::MessageAppended(m)
                    if m.direction == threadline_protocol::Direction::Outbound
                        && m.delivery == threadline_protocol::Delivery::Queued =>
                {
                    outbox.push(OutboxWrite::Put(threadline_protocol::OutboxEntry {
                        conv: id,
                        seq: m.seq,
                        tenant: self.args.key.tenant().to_owned(),
                        to: conv
                            .state
                            .identities
                            .address_for(m.channel)
                            .unwrap_or(self.args.key.contact())
                            .to_owned(),
                        channel: m.channel,
                        body: m.text.clone(),
                        template: template.take().filter(|_| m.channel == Channel::Whatsapp),
                    }))
                }
                ConvEvent::DeliveryUpdated { seq, .. } => {
                    outbox.push(OutboxWrite::Delete(id.0, *seq))
                }
                _ => {}
            }
            match &event {
                ConvEvent::TimerScheduled(t) => timers.push(TimerIndex::Put(TimerRow {
                    id: t.id,
                    due: t.due,
                    owner,
                })),
                ConvEvent::TimerFired { id, .. } | ConvEvent::TimerCancelled { id } => {
                    timers.push(TimerIndex::Delete(*id))
                }
                _ => {}
            }
            records.push((
                seq,
                codec::encode_log_record(&LogRecord {
                    conv: id,
                    seq,
                    event,
                }),
            ));
        }
        let route = self
            .args
            .shared
            .persistence
            .replicating()
            .then(|| crate::persistence::Route {
                key: self.args.key.clone(),
                epoch: self.epoch,
                through: conv.state.last_seq,
            });
        if records.is_empty() {
            // Nothing new: answer once everything before is durable (and,
            // in a cluster, once the replica is known to have it all).
            let done: Done = Box::new(move |r| then(r.map_err(conv_error)));
            let op = match route {
                Some(route) => Op::replica_check(id, route, done),
                None => Op::Barrier { done },
            };
            let _ = self.args.shared.persistence.submit(op).await;
            return;
        }
        self.since_snapshot += records.len() as u32;
        let commits = self.commits.clone();
        commits.in_flight.fetch_add(1, Ordering::SeqCst);
        let me = myself.clone();
        let shared = self.args.shared.clone();
        let notify = timers.clone();
        let queued: Vec<threadline_protocol::OutboxEntry> = outbox
            .iter()
            .filter_map(|w| match w {
                OutboxWrite::Put(e) => Some(e.clone()),
                OutboxWrite::Delete(..) => None,
            })
            .collect();
        let done: Done = Box::new(move |r| match r {
            Ok(()) => {
                commits.in_flight.fetch_sub(1, Ordering::SeqCst);
                shared.outbox.enqueue(queued);
                for p in &published {
                    shared.feed.publish(p);
                }
                if !escalations.is_empty() {
                    let router = crate::router::Router {
                        shared: shared.clone(),
                    };
                    for e in escalations {
                        router.escalated(e);
                    }
                }
                for t in notify {
                    match t {
                        TimerIndex::Put(row) => shared.scheduler.add(row),
                        TimerIndex::Delete(id) => shared.scheduler.remove(id),
                    }
                }
                then(Ok(()));
            }
            Err(e) => {
                // Known before anyone hears of the failure: no read
                // answered after this shows the refused events.
                commits.failed.store(true, Ordering::SeqCst);
                commits.in_flight.fetch_sub(1, Ordering::SeqCst);
                then(Err(conv_error(e)));
                let _ = me.cast(ConvMsg::StorageFailed);
            }
        });
        let op = Op::Event {
            conv: id,
            records,
            index,
            timers,
            audit,
            outbox,
            work,
            calendar: std::mem::take(&mut self.pending_calendar),
            outcomes,
            summary: Some((
                conv.state.tenant.clone(),
                threadline_protocol::codec::encode_summary(
                    &threadline_protocol::codec::ConversationSummary::of(&conv.state),
                ),
            )),
            route,
            done: Some(done),
        };
        // If the writer is gone (shutdown) the op and its callback are
        // dropped; the caller sees its reply channel close.
        let _ = self.args.shared.persistence.submit(op).await;
        if self.since_snapshot >= self.args.shared.snapshot_every {
            self.snapshot(None).await;
        }
    }

    /// The conversation as it is durably: at once when nothing is on its
    /// way to the disk, else once what the state shows is committed.
    async fn view(&mut self, reply: Reply<Option<ConversationState>>) {
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
            .shared
            .persistence
            .submit(Op::Barrier { done })
            .await;
    }

    async fn on_inbound(
        &mut self,
        myself: &ActorRef<ConvMsg>,
        msg: InboundMessage,
        meta: InboundMeta,
        reply: Reply<InboundAck>,
    ) {
        let shared = self.args.shared.clone();
        // In a cluster, the flow books against the calendar's home's rows.
        if let Some(cluster) = shared.cluster() {
            let tenant = self.args.key.tenant();
            if shared
                .flow(tenant)
                .is_some_and(|f| f.spec.calendar.is_some())
            {
                if let Err(e) = cluster.calendar_refresh(tenant).await {
                    let _ = reply.send(Err(ConvError::Unavailable(e.to_string())));
                    return;
                }
            }
        }
        let now = shared.clock.now();
        self.args.meta.touch(now);
        let (mut events, index) = self.create_if_absent(msg.channel, now);
        let conv = self.conv.as_mut().expect("created above");
        let tenant = shared.tenant(self.args.key.tenant());
        let mut phrase = None;
        let outcome = match catch_unwind(AssertUnwindSafe(|| {
            let (outcome, more) = conv.on_inbound(&msg, now, &shared.core);
            events.extend(more);
            if matches!(outcome, InboundOutcome::Recorded(_)) {
                if let Some(state) = &meta.from_state {
                    events.extend(conv.note_provider_state(state));
                }
                if let Some(ids) = &meta.identities {
                    events.extend(conv.link_identity(ids));
                }
                if let Some(name) = &meta.profile_name {
                    events.extend(conv.note_profile_name(name));
                }
                // Consent keywords are handled before any conversation logic.
                let keyword = conv.on_keywords(&msg, meta.hint, now, &tenant);
                let plain = keyword.is_empty();
                let zone = conv.zone(&tenant);
                let exception = conv.booking_exception(&keyword, now, zone);
                events.extend(keyword);
                events.extend(exception);
                let person = plain
                    && conv.state.assigned_agent.is_none()
                    && crate::flows::nlu::wants_person(&msg.text);
                if person {
                    events.extend(conv.escalate(
                        "the customer asked for a person",
                        Vec::new(),
                        0,
                        now,
                    ));
                }
                // The tenant's flow answers, unless a person holds the
                // conversation (or was just asked for), or it was a
                // keyword; calls have the voice assistant.
                let flow = shared.flow(self.args.key.tenant());
                if let Some(flow) = flow.filter(|_| {
                    plain
                        && !person
                        && conv.state.assigned_agent.is_none()
                        && msg.channel != Channel::Voice
                        && !msg.text.trim().is_empty()
                }) {
                    let mut cal = crate::flows::SharedCalendar {
                        map: &shared.calendar,
                        tenant: self.args.key.tenant(),
                        conv: conv.id().0,
                        now,
                        writes: &mut self.pending_calendar,
                    };
                    let mut next_id = || shared.next_timer_id.fetch_add(1, Ordering::Relaxed);
                    let responder = shared.responder(self.args.key.tenant());
                    let (more, draft) = conv.converse(
                        &flow,
                        &msg,
                        now,
                        &tenant,
                        &mut cal,
                        &mut next_id,
                        responder.is_some(),
                    );
                    events.extend(more);
                    if let (Some(draft), Some(r)) = (draft, responder) {
                        phrase = Some((r, conv.responder_request(flow.persona(), draft)));
                    }
                }
                let mut next_id = || shared.next_timer_id.fetch_add(1, Ordering::Relaxed);
                events.extend(conv.ensure_lifecycle(now, &tenant.lifecycle, &mut next_id));
            }
            outcome
        })) {
            Ok(outcome) => outcome,
            Err(panic) => {
                let text = panic_text(&panic);
                let _ = reply.send(Err(ConvError::Panicked(text)));
                // Let ractor see the panic: the supervisor restarts this
                // conversation from its durable state.
                std::panic::resume_unwind(panic);
            }
        };
        let (message, duplicate) = match outcome {
            InboundOutcome::Recorded(m) => (m, false),
            InboundOutcome::Duplicate(m) => (m, true),
        };
        let ack = InboundAck {
            conversation: conv.id(),
            message,
            duplicate,
        };
        let metrics = shared.metrics.clone();
        // An external responder phrases the reply once the message is
        // durable; past its timeout (or on an error) the draft goes out.
        let (durable_tx, durable_rx) = oneshot::channel::<bool>();
        if let Some((responder, req)) = phrase {
            let me = myself.clone();
            let channel = msg.channel;
            tokio::spawn(async move {
                if durable_rx.await != Ok(true) {
                    return;
                }
                let draft = req.draft.clone();
                let text =
                    match tokio::time::timeout(responder.timeout(), responder.respond(req)).await {
                        Ok(Ok(t)) if !t.trim().is_empty() => t.chars().take(1600).collect(),
                        Ok(Ok(_)) | Ok(Err(_)) | Err(_) => draft,
                    };
                let (tx, _) = oneshot::channel();
                let _ = me.cast(ConvMsg::SendMessage {
                    spec: OutboundSpec {
                        text,
                        channel: Some(channel),
                        purpose: crate::consent::policy::Purpose::Conversational,
                        agent: None,
                        requested: false,
                        subject: None,
                    },
                    create: false,
                    reply: tx,
                });
            });
        }
        self.commit(myself, events, index, move |r| {
            let _ = durable_tx.send(r.is_ok());
            if r.is_ok() {
                if duplicate {
                    metrics.duplicates.inc();
                } else {
                    metrics.messages_ingested.inc();
                }
            }
            let _ = reply.send(r.map(|()| ack));
        })
        .await;
    }

    /// Starts the conversation if this contact has none: its `Created`
    /// event and the contact index entry to write with it.
    fn create_if_absent(
        &mut self,
        channel: Channel,
        now: Timestamp,
    ) -> (Vec<(u32, ConvEvent)>, Option<ContactIndex>) {
        if self.conv.is_some() {
            return (Vec::with_capacity(3), None);
        }
        let shared = &self.args.shared;
        let id = ConversationId(shared.next_conversation.fetch_add(1, Ordering::Relaxed));
        let key = &self.args.key;
        let (conv, created) = Conversation::create(
            id,
            key.tenant(),
            key.contact(),
            identities_for(channel, key.contact()),
            now,
        );
        self.args.meta.conv_id.store(id.0, Ordering::Relaxed);
        shared.dir.by_id.insert(id.0, self.args.key.clone());
        self.conv = Some(conv);
        let index = Some((key.tenant().to_owned(), key.contact().to_owned()));
        (vec![created], index)
    }

    async fn on_fire(&mut self, myself: &ActorRef<ConvMsg>, id: u64, reply: Reply<()>) {
        let shared = self.args.shared.clone();
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
    async fn snapshot(&mut self, done: Option<Done>) -> bool {
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

/// The audit record an event calls for: consent changes and gate decisions.
fn audit_draft(key: &ConvKey, conv: ConversationId, e: &ConvEvent) -> Option<AuditDraft> {
    let (kind, at, detail) = match e {
        ConvEvent::ConsentChanged(c) => {
            let mut detail = crate::audit::consent_change_json(c);
            detail["conversation_id"] = serde_json::json!(conv.to_string());
            ("consent", c.at, detail)
        }
        ConvEvent::Decided(d) => (
            "decision",
            d.at,
            serde_json::json!({
                "conversation_id": conv.to_string(),
                "channel": d.channel.as_str(),
                "purpose": d.purpose,
                "decision": d.decision,
                "rule": d.rule,
                "until": d.until.map(|t| t.0),
                "text": d.text,
            }),
        ),
        _ => return None,
    };
    Some(AuditDraft {
        tenant: key.tenant().to_owned(),
        contact: key.contact().to_owned(),
        kind,
        detail,
        at,
    })
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

/// Counts what the events achieved (per-tenant outcome metrics). `state`
/// already includes them.
fn record_outcomes(
    o: &crate::metrics::Outcomes,
    state: &ConversationState,
    events: &[(u32, ConvEvent)],
    seen: &threadline_protocol::Journey,
) -> Vec<(String, u64)> {
    use threadline_protocol::{Author, BookingStatus as S, Direction};
    let mut t = crate::metrics::Tally::new(o, &state.tenant);
    let mut prev = seen.clone();
    for (_, e) in events {
        match e {
            ConvEvent::MessageAppended(m) => {
                let earlier = || state.messages.iter().take_while(|x| x.seq < m.seq);
                if m.author == Author::System && m.text == "[missed call]" {
                    t.count("missed_calls");
                }
                if m.direction == Direction::Inbound
                    && m.author == Author::Customer
                    && m.channel != Channel::Voice
                    && earlier()
                        .filter(|x| x.direction == Direction::Inbound)
                        .last()
                        .is_some_and(|x| x.author == Author::System && x.text == "[missed call]")
                {
                    t.count("missed_calls_recovered");
                }
                let answers = matches!(m.author, Author::Bot | Author::Agent(_));
                if m.direction == Direction::Outbound && answers {
                    let first_in = earlier().find(|x| x.author == Author::Customer);
                    let answered_before = earlier().any(|x| {
                        x.direction == Direction::Outbound
                            && matches!(x.author, Author::Bot | Author::Agent(_))
                    });
                    if let (Some(first), false) = (first_in, answered_before) {
                        t.first_response(m.recorded_at.0 - first.recorded_at.0);
                    }
                }
            }
            ConvEvent::JourneyChanged(j) => {
                let (b0, b1) = (prev.booking.as_ref(), j.booking.as_ref());
                let offer = |b: Option<&threadline_protocol::Booking>| b.and_then(|b| b.offer);
                if offer(b1).is_some() && offer(b1) != offer(b0) {
                    t.count("bookings_offered");
                }
                let (s0, s1) = (b0.map(|b| b.status), b1.map(|b| b.status));
                let moved = b0.and_then(|b| b.start) != b1.and_then(|b| b.start);
                match s1 {
                    Some(S::Confirmed) if s0 != Some(S::Confirmed) || moved => {
                        if s0 == Some(S::Rescheduling) && !moved {
                            // Kept the old time: nothing new.
                        } else {
                            t.count("bookings_confirmed");
                            if s0 == Some(S::Rescheduling) && state.assigned_agent.is_none() {
                                t.count("bookings_rebooked");
                            }
                        }
                    }
                    Some(S::Rescheduling) if s0 != Some(S::Rescheduling) => {
                        t.count("bookings_rescheduled")
                    }
                    Some(S::Cancelled) if s0 != Some(S::Cancelled) => t.count("bookings_cancelled"),
                    Some(S::Attended) if s0 != Some(S::Attended) => t.count("bookings_attended"),
                    Some(S::NoShow) if s0 != Some(S::NoShow) => t.count("bookings_no_show"),
                    _ => {}
                }
                if j.lead_met && !prev.lead_met {
                    t.count("leads_met");
                }
                if j.handoff.as_deref() == Some("qualified") && prev.handoff.is_none() {
                    t.count("leads_qualified");
                }
                prev = j.clone();
            }
            ConvEvent::Escalated { .. } => t.count("escalations"),
            _ => {}
        }
    }
    t.durable
}
