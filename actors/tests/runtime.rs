//! The actor runtime without HTTP: idle passivation on an injected clock,
//! recovery of the log tail, log truncation.

use std::sync::Arc;
use std::time::Duration;

use threadline_actors::persistence::{Op, Persistence};
use threadline_actors::store::{log_tail, Store};
use threadline_actors::{Delivered, ManualClock, Metrics, Runtime, RuntimeConfig};
use threadline_protocol::codec::{self, InboundMessage};
use threadline_protocol::*;

mod common;
use common::{appended, created, record};

fn sms(from: &str, text: &str) -> InboundMessage {
    InboundMessage {
        channel: Channel::Sms,
        from: from.into(),
        to: None,
        text: text.into(),
        provider_message_id: None,
        at: None,
        media: vec![],
    }
}

/// Waits for an effect of an asynchronous stop (not for time to pass: the
/// clock that decides is the injected one).
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_conversations_are_passivated_by_the_injected_clock_and_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(Timestamp(1_800_000_000_000)));
    let mut cfg = RuntimeConfig::new(dir.path());
    cfg.passivate_after = Duration::from_secs(600);
    let rt = Runtime::start(cfg, clock.clone(), Arc::new(Metrics::new()))
        .await
        .unwrap();
    for c in ["+15550000001", "+15550000002"] {
        rt.router.deliver("acme", c, sms(c, "first")).await.unwrap();
    }
    assert_eq!(rt.router.resident(), 2);

    // Not idle long enough: nothing happens.
    clock.advance_millis(599_000);
    rt.sweep_now();
    rt.router
        .deliver("acme", "+15550000002", sms("+15550000002", "still here"))
        .await
        .unwrap();
    assert_eq!(rt.router.resident(), 2);

    // The first has now been idle 10 minutes, the second only 2 seconds.
    clock.advance_millis(2_000);
    rt.sweep_now();
    eventually("the idle conversation to passivate", || {
        rt.router.resident() == 1
    })
    .await;
    assert_eq!(rt.shared.metrics.conversations_passivated.get(), 1);

    // It comes back with its state on the next message.
    let d = rt
        .router
        .deliver("acme", "+15550000001", sms("+15550000001", "second"))
        .await
        .unwrap();
    assert!(matches!(d, Delivered::Recorded(_)));
    let s = rt
        .router
        .view("acme", "+15550000001")
        .await
        .unwrap()
        .unwrap();
    let texts: Vec<_> = s.messages.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, ["first", "second"]);
    rt.shutdown().await;
}

async fn event(p: &Persistence, conv: u64, seq: u32, e: ConvEvent, contact: Option<&str>) {
    p.submit(Op::Event {
        work: vec![],
        calendar: vec![],
        outcomes: vec![],
        summary: None,
        conv: ConversationId(conv),
        records: vec![(seq, record(conv, seq, e))],
        index: contact.map(|c| ("acme".to_owned(), c.to_owned())),
        timers: vec![],
        audit: vec![],
        outbox: vec![],
        route: None,
        done: None,
    })
    .await
    .unwrap();
}

async fn snapshot(p: &Persistence, s: &ConversationState) {
    p.submit(Op::Snapshot {
        conv: s.id,
        seq: s.last_seq,
        bytes: codec::encode_snapshot(s),
        epoch: 0,
        done: None,
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_tail_left_by_a_crash_is_folded_into_snapshots_at_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, report) = Store::open(dir.path(), 8 << 20).unwrap();
        let (p, writer) = Persistence::start(store.clone(), &report, 64, Arc::new(Metrics::new()));
        event(&p, 1, 1, created(1, "+1"), Some("+1")).await;
        event(&p, 1, 2, appended(2, "a"), None).await;
        // A snapshot at seq 2, then one more event only in the log.
        let mut s = ConversationState::from_created(&created(1, "+1")).unwrap();
        s.apply(2, &appended(2, "a")).unwrap();
        snapshot(&p, &s).await;
        event(&p, 1, 3, appended(3, "b"), None).await;
        event(&p, 2, 1, created(2, "+2"), Some("+2")).await;
        p.barrier().await.unwrap();
        assert_eq!(store.pending_len(), 2, "conv 1 seq 3 and conv 2 seq 1");
        // While running, load() sees snapshot + pending records.
        let live = store.load(ConversationId(1)).unwrap().unwrap();
        assert_eq!(live.messages.len(), 2);
        // "Crash": the writer stops; nobody writes a final snapshot.
        p.shutdown().await.unwrap();
        writer.join();
    }
    let (store, report) = Store::open(dir.path(), 8 << 20).unwrap();
    assert_eq!(report.log_records_replayed, 4);
    assert_eq!(report.conversations_recovered, 2);
    assert!(log_tail(&store).unwrap().is_empty(), "the tail was folded");
    assert_eq!(report.next_log_key, 4, "log keys keep increasing");
    assert_eq!(report.next_conversation, 3);
    let one = store.load(ConversationId(1)).unwrap().unwrap();
    let texts: Vec<_> = one.messages.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, ["a", "b"]);
    assert_eq!(
        store.conversation_of("acme", "+2").unwrap(),
        Some(ConversationId(2))
    );
    assert_eq!(
        store.contact_of(ConversationId(1)).unwrap(),
        Some(("acme".into(), "+1".into()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_is_truncated_below_what_snapshots_cover() {
    let dir = tempfile::tempdir().unwrap();
    let (store, report) = Store::open(dir.path(), 8 << 20).unwrap();
    let (p, writer) = Persistence::start(store.clone(), &report, 1024, Arc::new(Metrics::new()));
    let mut s = ConversationState::from_created(&created(1, "+1")).unwrap();
    event(&p, 1, 1, created(1, "+1"), Some("+1")).await;
    let total = 20_000u32;
    for seq in 2..=total {
        let e = appended(seq, "x");
        s.apply(seq, &e).unwrap();
        event(&p, 1, seq, e, None).await;
        if seq % 64 == 0 {
            snapshot(&p, &s).await;
        }
    }
    snapshot(&p, &s).await;
    p.barrier().await.unwrap();
    // One more batch lets the writer act on the low-water mark.
    event(&p, 2, 1, created(2, "+2"), Some("+2")).await;
    p.barrier().await.unwrap();
    let tail = log_tail(&store).unwrap().len();
    assert!(
        tail < 8_192 + 64,
        "log tail of {tail} records was not truncated"
    );
    assert_eq!(
        store
            .load(ConversationId(1))
            .unwrap()
            .unwrap()
            .messages
            .len(),
        (total - 1) as usize
    );
    p.shutdown().await.unwrap();
    writer.join();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_admits_up_to_its_limit_and_survives_failing_work() {
    use threadline_actors::gateway::GatewayError;
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(Timestamp(1_800_000_000_000)));
    let mut cfg = RuntimeConfig::new(dir.path());
    cfg.gateway_limit = 2;
    let rt = Runtime::start(cfg, clock.clone(), Arc::new(Metrics::new()))
        .await
        .unwrap();
    let shared = rt.shared.clone();
    // Two slow pieces of work fill the gateway; a third is refused.
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let mut held = Vec::new();
    for _ in 0..2 {
        let (s, mut r) = (shared.clone(), release_rx.clone());
        held.push(tokio::spawn(async move {
            s.gateways
                .run("twilio", async move {
                    let _ = r.wait_for(|v| *v).await;
                    7
                })
                .await
        }));
    }
    // The third is refused once the first two hold their slots.
    let mut refused = None;
    for _ in 0..1000 {
        match shared.gateways.run("twilio", async { 1 }).await {
            Err(e) => {
                refused = Some(e);
                break;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
    assert_eq!(refused, Some(GatewayError::Busy("twilio")));
    // Other channels have their own limit.
    assert_eq!(shared.gateways.run("whatsapp", async { 2 }).await, Ok(2));
    release_tx.send(true).unwrap();
    for h in held {
        assert_eq!(h.await.unwrap(), Ok(7));
    }
    // Work that panics fails alone: its permit comes back and the
    // gateway goes on admitting up to its limit.
    for _ in 0..3 {
        let s = shared.clone();
        let failed = tokio::spawn(async move {
            s.gateways
                .run("twilio", async {
                    if std::hint::black_box(true) {
                        panic!("a broken piece of work");
                    }
                    0
                })
                .await
        })
        .await;
        assert!(failed.is_err());
    }
    assert_eq!(shared.gateways.run("twilio", async { 3 }).await, Ok(3));
    drop(shared);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_gateway_is_restarted_and_work_it_had_accepted_is_kept() {
    use threadline_actors::gateway::GatewayError;
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(Timestamp(1_800_000_000_000)));
    let rt = Runtime::start(
        RuntimeConfig::new(dir.path()),
        clock.clone(),
        Arc::new(Metrics::new()),
    )
    .await
    .unwrap();
    let shared = rt.shared.clone();
    let first = shared
        .gateways
        .get("twilio")
        .expect("the twilio gateway runs");

    // A webhook is admitted and is half way through when the gateway dies.
    let (admitted_tx, admitted_rx) = tokio::sync::oneshot::channel();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let accepted = {
        let (s, router) = (shared.clone(), rt.router.clone());
        tokio::spawn(async move {
            s.gateways
                .run("twilio", async move {
                    admitted_tx.send(()).unwrap();
                    release_rx.await.unwrap();
                    router
                        .deliver("acme", "+15550000001", sms("+15550000001", "accepted"))
                        .await
                })
                .await
        })
    };
    admitted_rx.await.unwrap();
    first.actor.kill();

    // The root restarts it: a new actor with fresh admission.
    eventually("the gateway to be restarted", || {
        shared
            .gateways
            .get("twilio")
            .is_some_and(|g| g.actor.get_id() != first.actor.get_id() && g.running())
    })
    .await;
    assert!(!first.running());
    let again = shared
        .gateways
        .run("twilio", async {
            rt.router
                .deliver("acme", "+15550000001", sms("+15550000001", "after"))
                .await
        })
        .await;
    assert!(matches!(again, Ok(Ok(Delivered::Recorded(_)))), "{again:?}");
    // Other gateways were not touched.
    assert_eq!(shared.gateways.run("whatsapp", async { 2 }).await, Ok(2));
    assert_ne!(
        shared.gateways.run("twilio", async { 1 }).await,
        Err(GatewayError::Unavailable("twilio"))
    );

    // The work accepted before the failure finishes; it was acknowledged
    // (`Recorded`) only once durable, and the conversation has both.
    release_tx.send(()).unwrap();
    let done = accepted.await.unwrap();
    assert!(matches!(done, Ok(Ok(Delivered::Recorded(_)))), "{done:?}");
    let s = rt
        .router
        .view("acme", "+15550000001")
        .await
        .unwrap()
        .unwrap();
    let mut texts: Vec<String> = s.messages.iter().map(|m| m.text.clone()).collect();
    texts.sort();
    assert_eq!(texts, ["accepted", "after"]);
    drop((shared, first));
    rt.shutdown().await;
}

/// Replaces every occurrence of `from` in `file` by `to` (same length).
fn damage(file: &std::path::Path, from: &[u8], to: &[u8]) -> usize {
    let mut bytes = std::fs::read(file).unwrap();
    let mut n = 0;
    let mut i = 0;
    while let Some(at) = bytes[i..].windows(from.len()).position(|w| w == from) {
        bytes[i + at..i + at + to.len()].copy_from_slice(to);
        i += at + from.len();
        n += 1;
    }
    std::fs::write(file, bytes).unwrap();
    n
}

/// A write the store refused is never shown by a read, not even by one
/// the conversation answers while that write is still on its way to the
/// disk (the actor takes its next message before its commit is done).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_write_is_never_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let start = || async {
        Runtime::start(
            RuntimeConfig::new(dir.path()),
            Arc::new(ManualClock::new(Timestamp(1_800_000_000_000))),
            Arc::new(Metrics::new()),
        )
        .await
        .unwrap()
    };
    let rt = start().await;
    for (c, text) in [
        ("+15550000001", "code ZEBRA-7731"),
        ("+15550000002", "hello"),
    ] {
        rt.router.deliver("acme", c, sms(c, text)).await.unwrap();
    }
    // Enough other records that the damaged one sits in a leaf, never in
    // a root page (a damaged root page refuses the whole open instead:
    // "All roots are corrupted", a path of its own).
    for k in 0..300 {
        let c = format!("+1555100{k:04}");
        let filler = format!("filler message {k} {}", "x".repeat(200));
        rt.router
            .deliver("acme", &c, sms(&c, &filler))
            .await
            .unwrap();
    }
    rt.shutdown().await;
    // Damage found at open: the node commits nothing more.
    let file = dir.path().join(threadline_actors::store::DB_FILE);
    assert!(damage(&file, b"ZEBRA-7731", b"ZEBRA-7732") > 0);
    let rt = Arc::new(start().await);
    let contact = "+15550000002";
    for i in 0..40 {
        let text = format!("again {i}");
        let write = {
            let rt = rt.clone();
            let text = text.clone();
            tokio::spawn(async move {
                rt.router
                    .deliver("acme", contact, sms(contact, &text))
                    .await
            })
        };
        while !write.is_finished() {
            if let Ok(Some(s)) = rt.router.view("acme", contact).await {
                let texts: Vec<_> = s.messages.iter().map(|m| m.text.as_str()).collect();
                assert_eq!(texts, ["hello"], "round {i}");
            }
        }
        assert!(write.await.unwrap().is_err(), "round {i}: refused");
    }
    // The last refused write's actor may still be making way for its
    // successor: a read then answers "retry".
    let s = loop {
        match rt.router.view("acme", contact).await {
            Ok(s) => break s.unwrap(),
            Err(_) => tokio::task::yield_now().await,
        }
    };
    assert_eq!(s.messages.len(), 1);
}
