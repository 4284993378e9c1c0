//! A customer's message: dedup, creating the conversation on first contact,
//! the core's turn and its acknowledgement once durable.

use super::*;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;

use ractor::ActorRef;
use threadline_protocol::codec::InboundMessage;
use threadline_protocol::{Channel, ConvEvent, ConversationId, Timestamp};
use tokio::sync::oneshot;

use crate::conversation::core::{identities_for, Conversation, InboundOutcome, OutboundSpec};

impl ConvState {
    pub(super) async fn on_inbound(
        &mut self,
        myself: &ActorRef<ConvMsg>,
        msg: InboundMessage,
        meta: InboundMeta,
        reply: Reply<InboundAck>,
    ) {
        let shared = self.args.router.shared.clone();
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
    pub(super) fn create_if_absent(
        &mut self,
        channel: Channel,
        now: Timestamp,
    ) -> (Vec<(u32, ConvEvent)>, Option<ContactIndex>) {
        if self.conv.is_some() {
            return (Vec::with_capacity(3), None);
        }
        let shared = &self.args.router.shared;
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
}
