//! Replicas in storage: what a replica accepts, asks for, or fences, and
//! the ownership moves (install, demote), on a real redb file.

use std::sync::Arc;

use threadline_actors::persistence::{Op, Persistence, WriterThread};
use threadline_actors::replica::{
    Demote, Install, ReplicaBody, ReplicaEntry, ReplicaMeta, Verdict,
};
use threadline_actors::store::Store;
use threadline_actors::Metrics;
use threadline_protocol::codec::{self, TimerRow};
use threadline_protocol::*;

mod common;
use common::{appended, created, record};

/// The events of a conversation `conv` with `n` messages after `Created`:
/// (seq, event).
fn events(conv: u64, n: u32) -> Vec<(u32, ConvEvent)> {
    let mut v = vec![(1, created(conv, "+15550001111"))];
    for i in 0..n {
        v.push((i + 2, appended(i + 2, &format!("m{i}"))));
    }
    v
}

fn entry(conv: u64, epoch: u64, evs: &[(u32, ConvEvent)], through: u32) -> ReplicaEntry {
    ReplicaEntry {
        conv,
        tenant: "acme".into(),
        contact: "+15550001111".into(),
        epoch,
        owner: "n1".into(),
        body: ReplicaBody::Events {
            records: evs
                .iter()
                .map(|(s, e)| (*s, record(conv, *s, e.clone())))
                .collect(),
            through,
        },
    }
}

fn state_of(conv: u64, evs: &[(u32, ConvEvent)]) -> ConversationState {
    let mut s = ConversationState::from_created(&evs[0].1).unwrap();
    for (seq, e) in &evs[1..] {
        s.apply(*seq, e).unwrap();
    }
    assert_eq!(s.id, ConversationId(conv));
    s
}

async fn replicate(p: &Persistence, entries: Vec<ReplicaEntry>) -> Vec<Verdict> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    p.submit(Op::Replica { entries, reply: tx }).await.unwrap();
    rx.await.unwrap().unwrap()
}

fn open(dir: &std::path::Path) -> (Arc<Store>, Persistence, WriterThread) {
    let (store, report) = threadline_actors::replica::open(dir, 8 << 20).unwrap();
    let (p, w) = Persistence::start(store.clone(), &report, 64, Arc::new(Metrics::new()));
    (store, p, w)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_keeps_contiguous_changes_asks_for_a_base_after_a_gap_and_fences_old_epochs() {
    let dir = tempfile::tempdir().unwrap();
    let (store, p, w) = open(dir.path());
    let evs = events(7, 100);
    // From the start: stored.
    assert_eq!(
        replicate(&p, vec![entry(7, 0, &evs[..3], 3)]).await,
        [Verdict::Stored]
    );
    // Sent again after a failure (overlapping): still in step.
    assert_eq!(
        replicate(&p, vec![entry(7, 0, &evs[..5], 5)]).await,
        [Verdict::Stored]
    );
    // A gap (seq 7 without 6): the replica asks for the whole conversation.
    assert_eq!(
        replicate(&p, vec![entry(7, 0, &evs[6..8], 8)]).await,
        [Verdict::NeedBase]
    );
    // The owner is further on than what it sent: also a base.
    assert_eq!(
        replicate(&p, vec![entry(7, 0, &evs[5..6], 9)]).await,
        [Verdict::NeedBase]
    );
    let base = ReplicaEntry {
        body: ReplicaBody::Base {
            snapshot: codec::encode_snapshot(&state_of(7, &evs[..40])),
        },
        ..entry(7, 0, &[], 40)
    };
    assert_eq!(replicate(&p, vec![base]).await, [Verdict::Stored]);
    // Then the rest, past a fold of the replica log (every 64 records).
    assert_eq!(
        replicate(&p, vec![entry(7, 0, &evs[40..], 101)]).await,
        [Verdict::Stored]
    );
    let (meta, state) = store.replica_state(7).unwrap().unwrap();
    assert_eq!(state, state_of(7, &evs));
    assert_eq!(
        (meta.epoch, meta.last_seq, meta.owner.as_str()),
        (0, 101, "n1")
    );
    assert_eq!(store.replica_of("acme", "+15550001111").unwrap(), Some(7));
    // An owner of an older epoch is fenced; a newer one starts from a base.
    let more = vec![(102, appended(102, "late"))];
    let at = |epoch| {
        let mut e = entry(7, epoch, &more, 102);
        e.owner = "n3".into();
        e
    };
    let newer = ReplicaEntry {
        body: ReplicaBody::Base {
            snapshot: codec::encode_snapshot(&state_of(7, &evs)),
        },
        ..at(2)
    };
    assert_eq!(replicate(&p, vec![newer]).await, [Verdict::Stored]);
    assert_eq!(replicate(&p, vec![at(1)]).await, [Verdict::Fenced]);
    assert_eq!(replicate(&p, vec![at(3)]).await, [Verdict::NeedBase]);
    assert_eq!(replicate(&p, vec![at(2)]).await, [Verdict::Stored]);
    assert_eq!(store.replica_state(7).unwrap().unwrap().0.epoch, 2);
    // A replica without a beginning asks for a base.
    assert_eq!(
        replicate(&p, vec![entry(8, 0, &[(5, appended(5, "x"))], 5)]).await,
        [Verdict::NeedBase]
    );
    p.shutdown().await.unwrap();
    w.join();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_replaces_what_a_node_held_and_demote_leaves_only_a_replica() {
    let dir = tempfile::tempdir().unwrap();
    let (store, p, w) = open(dir.path());
    let conv = 9;
    // This node holds a stale copy: three events, a timer, a queued message.
    let timer = PendingTimer {
        id: 500,
        due: Timestamp(10_000),
        kind: TimerKind::FollowUp,
        text: Some("stale".into()),
        channel: Some(Channel::Sms),
    };
    let stale = [
        (1, created(conv, "+15550001111")),
        (2, appended(2, "old")),
        (3, ConvEvent::TimerScheduled(timer.clone())),
    ];
    p.wait_for(|done| Op::Event {
        conv: ConversationId(conv),
        records: stale
            .iter()
            .map(|(s, e)| (*s, record(conv, *s, e.clone())))
            .collect(),
        index: Some(("acme".into(), "+15550001111".into())),
        timers: vec![threadline_actors::store::TimerIndex::Put(TimerRow {
            id: 500,
            due: Timestamp(10_000),
            owner: codec::TimerOwner::Conversation(ConversationId(conv)),
        })],
        audit: vec![],
        outbox: vec![],
        work: vec![],
        calendar: vec![],
        outcomes: vec![],
        summary: None,
        route: None,
        done: Some(done),
    })
    .await
    .unwrap();
    // A held conversation fences any replica traffic for it.
    assert_eq!(
        replicate(&p, vec![entry(conv, 5, &stale[..1], 1)]).await,
        [Verdict::Fenced]
    );

    // The current copy (from another lineage) arrives at epoch 2.
    let mut current = events(conv, 4);
    let fresh = PendingTimer {
        id: 600,
        text: Some("fresh".into()),
        ..timer.clone()
    };
    current.push((6, ConvEvent::TimerScheduled(fresh)));
    let state = state_of(conv, &current);
    let (timers, outbox) = threadline_actors::replica::derived_rows(&state);
    let work = threadline_protocol::AgentWork {
        conv: ConversationId(conv),
        tenant: "acme".into(),
        channel: Channel::Sms,
        skills: vec![],
        priority: 0,
        since: Timestamp(5_000),
        agent: Some("sarah".into()),
    };
    p.wait_for(|done| Op::Install {
        install: Install {
            conv,
            tenant: "acme".into(),
            contact: "+15550001111".into(),
            epoch: 2,
            snapshot: codec::encode_snapshot(&state),
            old_timers: vec![500],
            timers,
            outbox,
            work: Some(work.clone()),
        },
        done,
    })
    .await
    .unwrap();
    assert_eq!(store.load(ConversationId(conv)).unwrap().unwrap(), state);
    // The agent who held it still does here.
    assert_eq!(store.agent_work_of(conv).unwrap(), Some(work));
    assert_eq!(store.epoch(conv).unwrap(), 2);
    let ids: Vec<u64> = store.timer_rows().unwrap().iter().map(|t| t.id).collect();
    assert_eq!(
        ids,
        [600],
        "the stale timer is gone, the current one is there"
    );
    assert_eq!(store.held().unwrap().len(), 1);

    // Handed on: only a replica stays.
    p.wait_for(|done| Op::Demote {
        demote: Demote {
            conv,
            meta: ReplicaMeta {
                tenant: "acme".into(),
                contact: "+15550001111".into(),
                epoch: 3,
                owner: "n1".into(),
                last_seq: state.last_seq,
                unfolded: 0,
            },
            snapshot: codec::encode_snapshot(&state),
            old_timers: vec![600],
        },
        done,
    })
    .await
    .unwrap();
    assert!(store.held().unwrap().is_empty());
    assert_eq!(
        store.agent_work_of(conv).unwrap(),
        None,
        "its pool row went with it"
    );
    assert!(store
        .conversation_of("acme", "+15550001111")
        .unwrap()
        .is_none());
    assert!(store.timer_rows().unwrap().is_empty());
    let (meta, kept) = store.replica_state(conv).unwrap().unwrap();
    assert_eq!((meta.epoch, kept), (3, state.clone()));
    p.shutdown().await.unwrap();
    w.join();
    drop((p, store));
    // And all of it holds after a restart (recovery does not bring the
    // stale log records back).
    let (store, _) = threadline_actors::replica::open(dir.path(), 8 << 20).unwrap();
    assert!(store.held().unwrap().is_empty());
    assert_eq!(store.replica_state(conv).unwrap().unwrap().1, state);
}

#[test]
fn a_conversation_taken_over_keeps_its_place_in_the_queue_or_its_agent() {
    use threadline_actors::replica::derived_work;
    let mut evs = events(9, 2);
    let mut state = state_of(9, &evs);
    assert_eq!(derived_work(&state), None, "nobody asked for a person");
    evs.push((
        4,
        ConvEvent::Escalated {
            reason: "asked for a person".into(),
            skills: vec!["es".into()],
            priority: 3,
            at: Timestamp(7_000),
        },
    ));
    state = state_of(9, &evs);
    let waiting = derived_work(&state).expect("a waiting customer keeps their place");
    assert_eq!(
        (
            waiting.agent,
            waiting.skills,
            waiting.priority,
            waiting.since
        ),
        (None, vec!["es".to_owned()], 3, Timestamp(7_000))
    );
    evs.push((
        5,
        ConvEvent::AgentAssigned {
            agent: Some("sarah".into()),
            at: Timestamp(8_000),
        },
    ));
    state = state_of(9, &evs);
    assert_eq!(
        derived_work(&state).and_then(|w| w.agent),
        Some("sarah".into())
    );
    evs.push((
        6,
        ConvEvent::AgentAssigned {
            agent: None,
            at: Timestamp(9_000),
        },
    ));
    evs.push((
        7,
        ConvEvent::StatusChanged {
            status: Status::Closed,
            at: Timestamp(9_000),
        },
    ));
    state = state_of(9, &evs);
    assert_eq!(derived_work(&state), None, "closed: nobody needs it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_read_after_a_restart_has_every_stored_change_and_none_of_a_replaced_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let (store, p, w) = open(dir.path());
    // Conversation 7: 20 changes, not folded yet (a fold comes every 64).
    let seven = events(7, 19);
    assert_eq!(
        replicate(&p, vec![entry(7, 0, &seven, 20)]).await,
        [Verdict::Stored]
    );
    // Conversation 9: 30 changes at epoch 1, then a new owner (epoch 2)
    // whose history parts at event 21: its base is at 20, its 21 differs.
    let nine = events(9, 29);
    assert_eq!(
        replicate(&p, vec![entry(9, 1, &nine, 30)]).await,
        [Verdict::Stored]
    );
    let base = ReplicaEntry {
        body: ReplicaBody::Base {
            snapshot: codec::encode_snapshot(&state_of(9, &nine[..20])),
        },
        ..entry(9, 2, &[], 20)
    };
    assert_eq!(replicate(&p, vec![base]).await, [Verdict::Stored]);
    let mut new_owner = nine[..20].to_vec();
    new_owner.push((21, appended(21, "the new owner's 21")));
    assert_eq!(
        replicate(&p, vec![entry(9, 2, &new_owner[20..], 21)]).await,
        [Verdict::Stored]
    );
    let check = |store: &Store| {
        let (meta, state) = store.replica_state(7).unwrap().unwrap();
        assert_eq!((meta.last_seq, state), (20, state_of(7, &seven)));
        let (meta, state) = store.replica_state(9).unwrap().unwrap();
        assert_eq!((meta.epoch, meta.last_seq), (2, 21));
        assert_eq!(state, state_of(9, &new_owner));
    };
    check(&store);
    p.shutdown().await.unwrap();
    w.join();
    drop((p, store));
    let (store, report) = threadline_actors::replica::open(dir.path(), 8 << 20).unwrap();
    // The records of the replicas' current epochs: 7's 20, and 9's one
    // after its base; 9's 30 of epoch 1 are dropped.
    assert_eq!(report.replica_records_folded, 21);
    assert_eq!(store.replica_tail_len().unwrap(), 0);
    check(&store);
    // Replication goes on from there.
    let (p, w) = Persistence::start(store.clone(), &report, 64, Arc::new(Metrics::new()));
    let more = events(7, 20);
    assert_eq!(
        replicate(&p, vec![entry(7, 0, &more[20..], 21)]).await,
        [Verdict::Stored]
    );
    assert_eq!(
        store.replica_state(7).unwrap().unwrap().1,
        state_of(7, &more)
    );
    // The replica's row is not rewritten for each change; every read
    // counts the changes since in.
    assert_eq!(store.replica_meta(7).unwrap().unwrap().last_seq, 21);
    let listed = store.replicas().unwrap();
    let seven = listed.iter().find(|(c, _)| *c == 7).unwrap();
    assert_eq!((seven.1.last_seq, seven.1.unfolded), (21, 1));
    p.shutdown().await.unwrap();
    w.join();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_replica_is_folded_so_the_tail_stays_bounded_under_a_busy_one() {
    let dir = tempfile::tempdir().unwrap();
    let (store, p, w) = open(dir.path());
    let quiet = events(1, 2);
    assert_eq!(
        replicate(&p, vec![entry(1, 0, &quiet, 3)]).await,
        [Verdict::Stored]
    );
    // A busy conversation: 150,000 changes, 3,000 at a time.
    let busy = events(2, 150_000);
    let mut at = 0;
    while at < busy.len() {
        let end = (at + 3000).min(busy.len());
        let through = busy[end - 1].0;
        assert_eq!(
            replicate(&p, vec![entry(2, 0, &busy[at..end], through)]).await,
            [Verdict::Stored]
        );
        at = end;
    }
    // The quiet one was folded, and the tail truncated behind it: what
    // stays is at most the span a record may wait (65,536), one
    // truncation step (8,192) and one batch.
    let len = store.replica_tail_len().unwrap();
    assert!(len < 80_000, "the replica tail holds {len} records");
    assert_eq!(
        store.replica_state(1).unwrap().unwrap().1,
        state_of(1, &quiet)
    );
    assert_eq!(
        store.replica_state(2).unwrap().unwrap().1,
        state_of(2, &busy)
    );
    p.shutdown().await.unwrap();
    w.join();
}

#[test]
fn replicas_in_the_old_replica_log_table_are_kept_at_open_and_the_table_goes() {
    use redb::{ReadableDatabase, TableDefinition};
    const OLD: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("replica_log");
    const REPLICAS: TableDefinition<u64, &[u8]> = TableDefinition::new("replicas");
    let dir = tempfile::tempdir().unwrap();
    drop(threadline_actors::replica::open(dir.path(), 8 << 20).unwrap());
    // What a node of the earlier format left: a replica's meta and its
    // records keyed by (conversation, event seq).
    let evs = events(5, 9);
    {
        let db = redb::Database::open(dir.path().join("threadline.redb")).unwrap();
        let w = db.begin_write().unwrap();
        {
            let meta = ReplicaMeta {
                tenant: "acme".into(),
                contact: "+15550001111".into(),
                epoch: 3,
                owner: "n2".into(),
                last_seq: 10,
                unfolded: 10,
            };
            // Written as rows were before the header: bare bincode.
            let bytes = bincode::serde::encode_to_vec(&meta, bincode::config::standard()).unwrap();
            w.open_table(REPLICAS)
                .unwrap()
                .insert(5, bytes.as_slice())
                .unwrap();
            let mut old = w.open_table(OLD).unwrap();
            for (seq, e) in &evs {
                old.insert((5, *seq), record(5, *seq, e.clone()).as_slice())
                    .unwrap();
            }
        }
        w.commit().unwrap();
    }
    let (store, report) = threadline_actors::replica::open(dir.path(), 8 << 20).unwrap();
    assert_eq!(report.replica_records_folded, 10);
    let (meta, state) = store.replica_state(5).unwrap().unwrap();
    assert_eq!((meta.epoch, meta.last_seq), (3, 10));
    assert_eq!(state, state_of(5, &evs));
    drop(store);
    let db = redb::Database::open(dir.path().join("threadline.redb")).unwrap();
    let r = db.begin_read().unwrap();
    assert!(r.open_table(OLD).is_err(), "the old table is gone");
}

/// A held conversation's events, written as its actor writes them
/// (`epoch`: the epoch the actor loaded it at; 0 until it first moves).
fn held_event(conv: u64, seq: u32, e: ConvEvent, epoch: u64, done: Done) -> Op {
    let route = (epoch > 0).then(|| threadline_actors::persistence::Route {
        key: threadline_actors::conversation::ConvKey::new("acme", "+15550001111"),
        epoch,
        through: seq,
    });
    Op::Event {
        conv: ConversationId(conv),
        records: vec![(seq, record(conv, seq, e))],
        index: (seq == 1).then(|| ("acme".into(), "+15550001111".into())),
        timers: vec![],
        audit: vec![],
        outbox: vec![],
        work: vec![],
        calendar: vec![],
        outcomes: vec![],
        summary: None,
        route,
        done: Some(done),
    }
}

fn snapshot_op(state: &ConversationState, epoch: u64, done: Done) -> Op {
    Op::Snapshot {
        conv: state.id,
        seq: state.last_seq,
        bytes: codec::encode_snapshot(state),
        epoch,
        done: Some(done),
    }
}

use threadline_actors::persistence::Done;

/// Seals `conv` in the writer, as a mover does first.
async fn seal(p: &Persistence, conv: u64) {
    p.wait_for(|done| Op::Seal {
        conv,
        sealed: true,
        done,
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_that_moved_writes_nothing_more_and_the_node_opens_its_data_again() {
    let dir = tempfile::tempdir().unwrap();
    let (store, p, w) = open(dir.path());
    let conv = 9;
    let evs = events(conv, 2);
    for (seq, e) in &evs {
        p.wait_for(|done| held_event(conv, *seq, e.clone(), 0, done))
            .await
            .unwrap();
    }
    let state = state_of(conv, &evs);
    // Its actor's snapshot covers the log records (which the log keeps
    // until it is truncated).
    p.wait_for(|done| snapshot_op(&state, 0, done))
        .await
        .unwrap();
    // A hand-over seals it: the actor that loaded it (a delivery that
    // raced the move) writes nothing more, nor does its snapshot.
    seal(&p, conv).await;
    let raced = p
        .wait_for(|done| held_event(conv, 4, appended(4, "raced"), 0, done))
        .await;
    assert!(raced.is_err(), "refused while sealed");
    p.wait_for(|done| Op::Demote {
        demote: Demote {
            conv,
            meta: ReplicaMeta {
                tenant: "acme".into(),
                contact: "+15550001111".into(),
                epoch: 1,
                owner: "n2".into(),
                last_seq: state.last_seq,
                unfolded: 0,
            },
            snapshot: codec::encode_snapshot(&state),
            old_timers: vec![],
        },
        done,
    })
    .await
    .unwrap();
    // After the hand-over: the stale actor's event and its snapshot on stop.
    let late = p
        .wait_for(|done| held_event(conv, 4, appended(4, "late"), 0, done))
        .await;
    assert!(late.is_err(), "refused once handed over");
    assert!(p
        .wait_for(|done| snapshot_op(&state, 0, done))
        .await
        .is_err());
    assert!(store.held().unwrap().is_empty());
    p.shutdown().await.unwrap();
    w.join();
    drop((p, store));

    // The node opens its data again, with nothing set aside.
    let (store, report) = threadline_actors::replica::open(dir.path(), 8 << 20).unwrap();
    assert!(report.quarantined.is_empty(), "{:?}", report.quarantined);
    assert!(store.held().unwrap().is_empty());
    assert_eq!(store.replica_state(conv).unwrap().unwrap().1, state);
    let (p, w) = Persistence::start(store.clone(), &report, 64, Arc::new(Metrics::new()));

    // Handed back at epoch 2 with two more messages: the copy installed is
    // what a stale actor's snapshot cannot overwrite; an actor that loads
    // it at epoch 2 writes on.
    let mut newer = evs.clone();
    newer.push((4, appended(4, "on n2")));
    newer.push((5, appended(5, "on n2 again")));
    let newer_state = state_of(conv, &newer);
    seal(&p, conv).await;
    p.wait_for(|done| Op::Install {
        install: Install {
            conv,
            tenant: "acme".into(),
            contact: "+15550001111".into(),
            epoch: 2,
            snapshot: codec::encode_snapshot(&newer_state),
            old_timers: vec![],
            timers: vec![],
            outbox: vec![],
            work: None,
        },
        done,
    })
    .await
    .unwrap();
    assert!(p
        .wait_for(|done| snapshot_op(&state, 0, done))
        .await
        .is_err());
    p.wait_for(|done| held_event(conv, 6, appended(6, "back"), 2, done))
        .await
        .unwrap();
    let (loaded, epoch) = store.load_held(ConversationId(conv)).unwrap();
    newer.push((6, appended(6, "back")));
    assert_eq!((loaded.unwrap(), epoch), (state_of(conv, &newer), 2));
    p.shutdown().await.unwrap();
    w.join();
}

#[test]
fn log_records_that_do_not_replay_are_set_aside_and_the_rest_of_the_node_opens() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (store, p, w) = open(dir.path());
    let good = events(3, 2);
    rt.block_on(async {
        for (seq, e) in &good {
            p.wait_for(|done| held_event(3, *seq, e.clone(), 0, done))
                .await
                .unwrap();
        }
        p.shutdown().await.unwrap();
    });
    w.join();
    drop((p, store));
    // A data directory of an earlier node: a log record of a conversation
    // it had handed over (no snapshot, nothing before it).
    {
        let db = redb::Database::open(dir.path().join("threadline.redb")).unwrap();
        let t = db.begin_write().unwrap();
        t.open_table(redb::TableDefinition::<u64, &[u8]>::new("log"))
            .unwrap()
            .insert(1 << 40, record(77, 24, appended(24, "orphan")).as_slice())
            .unwrap();
        t.commit().unwrap();
    }
    let (store, report) = threadline_actors::replica::open(dir.path(), 8 << 20).unwrap();
    assert_eq!(report.quarantined.len(), 1);
    let (conv, why, n) = &report.quarantined[0];
    assert_eq!((*conv, *n), (ConversationId(77), 1));
    assert!(why.contains("log starts at event 24"), "{why}");
    assert_eq!(
        store.load(ConversationId(3)).unwrap().unwrap(),
        state_of(3, &good)
    );
    assert!(store.load(ConversationId(77)).unwrap().is_none());
    drop(store);
    // Set aside once: the next open finds nothing to set aside.
    let (_, report) = threadline_actors::replica::open(dir.path(), 8 << 20).unwrap();
    assert!(report.quarantined.is_empty());
}
