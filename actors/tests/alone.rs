//! The scheduler and the sender, each started alone with fake sinks: no
//! runtime, no storage, no router. What they promise their owners:
//! timers in deadline order per owner, again a second later when the
//! owner was unreachable; messages delivered once each with their
//! idempotency key, retried on transient errors, never sent once
//! withdrawn, and every outcome handed back.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use ractor::Actor;
use threadline_actors::clock::ManualClock;
use threadline_actors::scheduler::{SchedArgs, Scheduler, SchedulerHandle, TimerSink};
use threadline_actors::sender::{
    Attempt, DeliverySink, OutboxHandle, Outcome, Provider, RetryPolicy, Sender, SenderArgs,
};
use threadline_actors::Metrics;
use threadline_protocol::codec::{TimerOwner, TimerRow};
use threadline_protocol::{Channel, ConversationId, OutboxEntry, Timestamp};
use tokio::sync::mpsc;

const T0: i64 = 1_795_000_000_000;

/// Records every fire; fails the first fire of the ids in `fail_once`.
#[derive(Default)]
struct Owners {
    fired: Mutex<Vec<(TimerOwner, u64)>>,
    fail_once: Mutex<Vec<u64>>,
}

impl TimerSink for Owners {
    fn fire(&self, owner: TimerOwner, id: u64) -> BoxFuture<'static, Result<(), String>> {
        let failed = {
            let mut f = self.fail_once.lock();
            let hit = f.contains(&id);
            f.retain(|x| *x != id);
            hit
        };
        if !failed {
            self.fired.lock().push((owner, id));
        }
        Box::pin(async move {
            match failed {
                true => Err("owner unreachable".into()),
                false => Ok(()),
            }
        })
    }
}

fn row(id: u64, due_ms: i64, conv: u64) -> TimerRow {
    TimerRow {
        id,
        due: Timestamp(T0 + due_ms),
        owner: TimerOwner::Conversation(ConversationId(conv)),
    }
}

#[tokio::test]
async fn the_scheduler_alone_fires_in_deadline_order_and_retries_an_unreachable_owner() {
    let clock = Arc::new(ManualClock::new(Timestamp(T0)));
    let owners = Arc::new(Owners::default());
    let (actor, _) = Actor::spawn(
        None,
        Scheduler,
        SchedArgs {
            clock: clock.clone(),
            metrics: Arc::new(Metrics::new()),
            sink: owners.clone(),
            rows: vec![row(1, 10_000, 7), row(2, 5_000, 7), row(3, 5_000, 8)],
            real_time: false,
        },
    )
    .await
    .unwrap();
    let handle = SchedulerHandle::default();
    handle.set(Some(actor.clone()));
    handle.add(row(4, 60_000, 8));
    handle.add(row(5, 20_000, 9));
    assert_eq!(
        handle.owner(4).await.unwrap(),
        Some(TimerOwner::Conversation(ConversationId(8)))
    );

    // Nothing is due yet.
    assert_eq!(handle.advance().await.unwrap(), 0);

    clock.advance_millis(10_000);
    assert_eq!(handle.advance().await.unwrap(), 3);
    let fired = std::mem::take(&mut *owners.fired.lock());
    let of = |conv: u64| -> Vec<u64> {
        fired
            .iter()
            .filter(|(o, _)| *o == TimerOwner::Conversation(ConversationId(conv)))
            .map(|(_, id)| *id)
            .collect()
    };
    assert_eq!(of(7), vec![2, 1], "one owner's timers in deadline order");
    assert_eq!(of(8), vec![3]);
    assert_eq!(
        handle.owner(1).await.unwrap(),
        None,
        "a handled timer is gone"
    );

    // A cancelled timer never fires.
    handle.remove(4);

    // An owner that cannot be reached gets the timer again a second later.
    owners.fail_once.lock().push(5);
    clock.advance_millis(10_000);
    assert_eq!(handle.advance().await.unwrap(), 1);
    assert!(owners.fired.lock().is_empty(), "the first attempt failed");
    assert_eq!(
        handle.owner(5).await.unwrap(),
        Some(TimerOwner::Conversation(ConversationId(9))),
        "still pending"
    );
    clock.advance_millis(1_000);
    assert_eq!(handle.advance().await.unwrap(), 1);
    assert_eq!(
        *owners.fired.lock(),
        vec![(TimerOwner::Conversation(ConversationId(9)), 5)]
    );

    clock.advance_millis(3_600_000);
    assert_eq!(handle.advance().await.unwrap(), 0, "timer 4 was cancelled");

    actor.stop_and_wait(None, None).await.unwrap();
    assert!(
        handle.advance().await.is_err(),
        "a stopped scheduler says so"
    );
}

/// A provider that answers from a script per message body: each attempt
/// takes the next answer (the last one repeats).
struct Scripted {
    answers: Mutex<HashMap<String, Vec<Attempt>>>,
    /// (body, idempotency key) of every attempt.
    attempts: Mutex<Vec<(String, String)>>,
}

impl Provider for Scripted {
    fn channels(&self, _tenant: &str) -> Vec<Channel> {
        vec![Channel::Sms]
    }

    fn send(
        &self,
        entry: &OutboxEntry,
        key: &str,
    ) -> threadline_actors::sender::BoxFuture<Attempt> {
        self.attempts
            .lock()
            .push((entry.body.clone(), key.to_owned()));
        let mut answers = self.answers.lock();
        let script = answers.get_mut(&entry.body).expect("a scripted body");
        let a = if script.len() > 1 {
            script.remove(0)
        } else {
            script[0].clone()
        };
        Box::pin(async move { a })
    }
}

/// Conversations as the sender sees them: which messages are still
/// wanted (not withdrawn, no outcome recorded yet: the outcome deletes
/// the outbox row), and the outcomes it hands back.
struct Conversations {
    withdrawn: Vec<(u64, u32)>,
    recorded: Mutex<std::collections::HashSet<(u64, u32)>>,
    outcomes: mpsc::UnboundedSender<(u64, u32, Outcome)>,
    /// Told each time the sender finds a message withdrawn.
    found_withdrawn: mpsc::UnboundedSender<(u64, u32)>,
}

impl DeliverySink for Conversations {
    fn wanted(&self, conv: ConversationId, seq: u32) -> threadline_actors::sender::BoxFuture<bool> {
        let withdrawn = self.withdrawn.contains(&(conv.0, seq));
        if withdrawn {
            let _ = self.found_withdrawn.send((conv.0, seq));
        }
        let wanted = !withdrawn && !self.recorded.lock().contains(&(conv.0, seq));
        Box::pin(async move { wanted })
    }

    fn record(
        &self,
        conv: ConversationId,
        seq: u32,
        outcome: Outcome,
    ) -> threadline_actors::sender::BoxFuture<Result<(), String>> {
        self.recorded.lock().insert((conv.0, seq));
        let _ = self.outcomes.send((conv.0, seq, outcome));
        Box::pin(async { Ok(()) })
    }
}

fn entry(conv: u64, seq: u32, body: &str) -> OutboxEntry {
    OutboxEntry {
        conv: ConversationId(conv),
        seq,
        tenant: "dental".into(),
        to: "+15551234567".into(),
        channel: Channel::Sms,
        body: body.into(),
        template: None,
    }
}

#[tokio::test]
async fn the_sender_alone_delivers_each_message_once_retries_and_hands_back_every_outcome() {
    let accepted = |id: &str| Attempt::Accepted {
        provider_id: Some(id.into()),
    };
    let provider = Arc::new(Scripted {
        answers: Mutex::new(HashMap::from([
            ("see you at 4".to_owned(), vec![accepted("SM1")]),
            (
                "flaky".to_owned(),
                vec![
                    Attempt::Retry("503".into()),
                    Attempt::Retry("connection reset".into()),
                    accepted("SM2"),
                ],
            ),
            (
                "opted out".to_owned(),
                vec![Attempt::Rejected {
                    error: "21610".into(),
                    opted_out: true,
                }],
            ),
            ("withdrawn".to_owned(), vec![accepted("SM4")]),
            (
                "never answers".to_owned(),
                vec![Attempt::Retry("503".into())],
            ),
        ])),
        attempts: Mutex::new(Vec::new()),
    });
    let (tx, mut outcomes) = mpsc::unbounded_channel();
    let (wtx, mut withdrawals) = mpsc::unbounded_channel();
    let (actor, _) = Actor::spawn(
        None,
        Sender,
        SenderArgs {
            metrics: Arc::new(Metrics::new()),
            sink: Arc::new(Conversations {
                withdrawn: vec![(4, 1)],
                recorded: Default::default(),
                outcomes: tx,
                found_withdrawn: wtx,
            }),
            provider: provider.clone(),
            retry: RetryPolicy {
                attempts: 3,
                base: Duration::from_millis(1),
                max: Duration::from_millis(2),
            },
            // What the outbox held at start.
            backlog: vec![entry(1, 2, "see you at 4"), entry(2, 5, "flaky")],
        },
    )
    .await
    .unwrap();
    let handle = OutboxHandle::default();
    handle.set(Some(actor.clone()));
    handle.enqueue([
        entry(3, 1, "opted out"),
        entry(4, 1, "withdrawn"),
        entry(5, 9, "never answers"),
        // Enqueued twice (a restart's backlog and the commit's callback):
        // delivered once.
        entry(1, 2, "see you at 4"),
    ]);

    assert_eq!(
        tokio::time::timeout(Duration::from_secs(30), withdrawals.recv())
            .await
            .unwrap(),
        Some((4, 1)),
        "the withdrawn message is looked at, and not sent"
    );
    let mut got = HashMap::new();
    while got.len() < 4 {
        let (conv, seq, outcome) = tokio::time::timeout(Duration::from_secs(30), outcomes.recv())
            .await
            .expect("every outcome is handed back")
            .unwrap();
        assert!(
            got.insert((conv, seq), outcome).is_none(),
            "one outcome each"
        );
    }
    assert_eq!(
        got[&(1, 2)],
        Outcome::Sent {
            provider_id: Some("SM1".into())
        }
    );
    assert_eq!(
        got[&(2, 5)],
        Outcome::Sent {
            provider_id: Some("SM2".into())
        },
        "sent after two transient errors"
    );
    assert_eq!(
        got[&(3, 1)],
        Outcome::Failed {
            error: "21610".into(),
            opted_out: true
        }
    );
    match &got[&(5, 9)] {
        Outcome::Failed { error, opted_out } => {
            assert!(error.contains("gave up after 3 attempts"), "{error}");
            assert!(!opted_out);
        }
        other => panic!("expected a failure: {other:?}"),
    }
    assert!(
        !got.contains_key(&(4, 1)),
        "a withdrawn message has no outcome"
    );

    let attempts = provider.attempts.lock().clone();
    let tries = |body: &str| -> Vec<String> {
        attempts
            .iter()
            .filter(|(b, _)| b == body)
            .map(|(_, k)| k.clone())
            .collect()
    };
    assert_eq!(tries("see you at 4").len(), 1, "delivered once");
    assert_eq!(tries("withdrawn"), Vec::<String>::new(), "never sent");
    let flaky = tries("flaky");
    assert_eq!(flaky.len(), 3);
    assert!(
        flaky.iter().all(|k| *k == flaky[0]),
        "every attempt of one message carries the same idempotency key: {flaky:?}"
    );
    assert_eq!(tries("never answers").len(), 3);
    actor.stop_and_wait(None, None).await.unwrap();
}
