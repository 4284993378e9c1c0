//! The sender actor: delivers decided outbound messages to their provider.
//!
//! A message the gate decided to send on a channel with a real provider is
//! recorded `queued` and put in the outbox in the same transaction. The
//! sender works the outbox: it calls the provider (retrying 5xx, 429 and
//! connection errors with exponential backoff), then hands the outcome to
//! the conversation, whose `DeliveryUpdated` event removes the outbox entry
//! in the same write. After a crash the outbox is reloaded and sent again
//! with the same idempotency key (the message id), so one decision reaches
//! the customer once.
//!
//! Providers are injected (`Provider`): wire formats live in the binary.
//! The sender knows nothing of the node: it is given the metrics and a
//! `DeliverySink` that says whether a message is still wanted and takes
//! each outcome to its conversation (the runtime passes its router and
//! store). The rest of the node reaches it through its `OutboxHandle`.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use threadline_protocol::{Channel, ConversationId, OutboxEntry};

use crate::metrics::Metrics;

/// Where a message's fate goes. `wanted`: whether it is still in the
/// outbox (an opt-out withdraws queued messages); `record`: its outcome,
/// to its conversation, whose event deletes the outbox row (an error: try
/// again).
pub trait DeliverySink: Send + Sync + 'static {
    fn wanted(&self, conv: ConversationId, seq: u32) -> BoxFuture<bool>;
    fn record(
        &self,
        conv: ConversationId,
        seq: u32,
        outcome: Outcome,
    ) -> BoxFuture<Result<(), String>>;
}

/// The running sender, as the rest of the node reaches it; empty while it
/// (re)starts (the outbox keeps every message meanwhile, and a new sender
/// starts from it).
#[derive(Default)]
pub struct OutboxHandle(RwLock<Option<ActorRef<SenderMsg>>>);

impl OutboxHandle {
    /// Messages durably put in the outbox, to deliver.
    pub fn enqueue(&self, entries: impl IntoIterator<Item = OutboxEntry>) {
        if let Some(s) = self.0.read().as_ref() {
            for e in entries {
                let _ = s.cast(SenderMsg::Enqueue(e));
            }
        }
    }

    /// The sender now running (`None`: none).
    pub fn set(&self, actor: Option<ActorRef<SenderMsg>>) -> Option<ActorRef<SenderMsg>> {
        std::mem::replace(&mut *self.0.write(), actor)
    }

    /// Whether actor `id` is the running sender.
    pub fn is(&self, id: ractor::ActorId) -> bool {
        self.0.read().as_ref().is_some_and(|a| a.get_id() == id)
    }
}

/// What a provider said to one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// Accepted; the provider's id for the message.
    Accepted { provider_id: Option<String> },
    /// Worth trying again later (5xx, 429, connection error).
    Retry(String),
    /// Refused for good. `opted_out`: the provider says the recipient
    /// opted out (Twilio 21610), which the ledger must learn.
    Rejected { error: String, opted_out: bool },
}

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// An outbound provider (Twilio, WhatsApp Cloud API, ...).
pub trait Provider: Send + Sync + 'static {
    /// Channels this provider delivers for `tenant`.
    fn channels(&self, tenant: &str) -> Vec<Channel>;
    /// One attempt to hand `entry` over; `key` is its idempotency key.
    fn send(&self, entry: &OutboxEntry, key: &str) -> BoxFuture<Attempt>;
}

pub use threadline_core::delivery::Outcome;

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub base: Duration,
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 8,
            base: Duration::from_millis(200),
            max: Duration::from_secs(30),
        }
    }
}

#[derive(ractor_cluster::RactorMessage)]
pub enum SenderMsg {
    Enqueue(OutboxEntry),
    Done {
        conv: u64,
        seq: u32,
    },
    /// A delivery task panicked: the sender fails, and its supervisor
    /// starts a new one from the outbox (nothing it held is lost: every
    /// queued message is an outbox row until its outcome is recorded).
    Failed(String),
}

pub struct Sender;

pub struct SenderArgs {
    pub metrics: Arc<Metrics>,
    pub sink: Arc<dyn DeliverySink>,
    pub provider: Arc<dyn Provider>,
    pub retry: RetryPolicy,
    pub backlog: Vec<OutboxEntry>,
}

pub struct SenderState {
    metrics: Arc<Metrics>,
    sink: Arc<dyn DeliverySink>,
    provider: Arc<dyn Provider>,
    retry: RetryPolicy,
    in_flight: HashSet<(u64, u32)>,
}

impl Actor for Sender {
    type Msg = SenderMsg;
    type State = SenderState;
    type Arguments = SenderArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SenderMsg>,
        args: SenderArgs,
    ) -> Result<SenderState, ActorProcessingErr> {
        for e in args.backlog {
            let _ = myself.cast(SenderMsg::Enqueue(e));
        }
        Ok(SenderState {
            metrics: args.metrics,
            sink: args.sink,
            provider: args.provider,
            retry: args.retry,
            in_flight: HashSet::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<SenderMsg>,
        msg: SenderMsg,
        st: &mut SenderState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SenderMsg::Enqueue(entry) => {
                if !st.in_flight.insert((entry.conv.0, entry.seq)) {
                    return Ok(());
                }
                let (provider, retry, me) = (st.provider.clone(), st.retry, myself.clone());
                let sink = st.sink.clone();
                let metrics = st.metrics.clone();
                st.metrics.outbound_in_flight.set(st.in_flight.len() as i64);
                let crashed = myself.clone();
                let delivery = async move {
                    // Still wanted? (An opt-out blocks queued messages.)
                    let (c, s) = (entry.conv.0, entry.seq);
                    let outcome =
                        deliver(&*provider, &entry, retry, || sink.wanted(entry.conv, s)).await;
                    let Some(outcome) = outcome else {
                        metrics.outbound_withdrawn.inc();
                        let _ = me.cast(SenderMsg::Done { conv: c, seq: s });
                        return;
                    };
                    match &outcome {
                        Outcome::Sent { .. } => metrics.outbound_sent.inc(),
                        Outcome::Failed { .. } => metrics.outbound_failed.inc(),
                    };
                    // The outcome must reach the conversation; it is retried
                    // until it does (the outbox keeps the message meanwhile).
                    let mut wait = Duration::from_millis(50);
                    for _ in 0..20 {
                        if sink
                            .record(entry.conv, entry.seq, outcome.clone())
                            .await
                            .is_ok()
                        {
                            break;
                        }
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_secs(5));
                    }
                    let _ = me.cast(SenderMsg::Done {
                        conv: entry.conv.0,
                        seq: entry.seq,
                    });
                };
                tokio::spawn(async move {
                    use futures_util::FutureExt;
                    if let Err(panic) = std::panic::AssertUnwindSafe(delivery).catch_unwind().await
                    {
                        let why = panic
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "a delivery panicked".into());
                        let _ = crashed.cast(SenderMsg::Failed(why));
                    }
                });
            }
            SenderMsg::Failed(why) => return Err(why.into()),
            SenderMsg::Done { conv, seq } => {
                st.in_flight.remove(&(conv, seq));
                st.metrics.outbound_in_flight.set(st.in_flight.len() as i64);
            }
        }
        Ok(())
    }
}

/// Tries a message until the provider accepts or refuses it, or the
/// attempts run out. `wanted` is asked before every attempt; `None` means
/// the message was withdrawn (blocked by an opt-out) and never sent.
pub async fn deliver<W, F>(
    provider: &dyn Provider,
    entry: &OutboxEntry,
    retry: RetryPolicy,
    wanted: W,
) -> Option<Outcome>
where
    W: Fn() -> F,
    F: Future<Output = bool>,
{
    let key = threadline_protocol::MessageId {
        conversation: entry.conv,
        seq: entry.seq,
    }
    .to_string();
    let mut wait = retry.base;
    let mut last = String::new();
    for attempt in 1..=retry.attempts.max(1) {
        if !wanted().await {
            return None;
        }
        match provider.send(entry, &key).await {
            Attempt::Accepted { provider_id } => return Some(Outcome::Sent { provider_id }),
            Attempt::Rejected { error, opted_out } => {
                return Some(Outcome::Failed { error, opted_out })
            }
            Attempt::Retry(why) => {
                tracing::warn!(%key, attempt, %why, "provider attempt failed; retrying");
                last = why;
            }
        }
        if attempt < retry.attempts {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(retry.max);
        }
    }
    Some(Outcome::Failed {
        error: format!("gave up after {} attempts: {last}", retry.attempts),
        opted_out: false,
    })
}
