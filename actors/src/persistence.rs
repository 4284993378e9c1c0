//! The persistence writer: one dedicated OS thread that owns redb's write
//! side, fed by a bounded channel. It takes everything queued, writes it in
//! ONE transaction with immediate durability (group commit), and only then
//! completes each operation's callback. Because the channel is FIFO and
//! batches commit in order, a completed operation implies that every
//! operation submitted before it is durable too.
//!
//! The thread never runs on the async runtime, so a slow fsync stalls no
//! actor; callers that must not answer before durability await the
//! completion, callers that need nothing back submit and move on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use threadline_protocol::ConversationId;
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;
use crate::replica::ClusterWrite;
use crate::store::{Applied, BatchWriter, OpenReport, Store, StoreError, TimerIndex, Write};

/// Called once the operation is durable (or definitely failed).
pub type Done = Box<dyn FnOnce(Result<(), Arc<StoreError>>) + Send>;

pub enum Op {
    /// Append consecutive events of `conv` (each (seq, encoded log record))
    /// and the timer index changes they imply, all in one transaction.
    /// `index` is (tenant, address) when the first event creates the
    /// conversation.
    Event {
        conv: ConversationId,
        records: Vec<(u32, Vec<u8>)>,
        index: Option<(String, String)>,
        timers: Vec<TimerIndex>,
        /// Audit records to seal into the tenant's chain in the same commit.
        audit: Vec<crate::audit::AuditDraft>,
        outbox: Vec<crate::store::OutboxWrite>,
        /// Changes to the agent pool's index.
        work: Vec<crate::store::WorkWrite>,
        /// Calendar slots held, booked or released.
        calendar: Vec<crate::store::CalendarWrite>,
        /// Outcome counts to add (`metrics::Tally`).
        outcomes: Vec<(String, u64)>,
        /// The conversation's summary after these events: (tenant, bytes).
        summary: Option<(String, Vec<u8>)>,
        /// In a cluster: where the change is replicated before `done`.
        route: Option<Route>,
        done: Option<Done>,
    },
    /// Replicas of conversations another node owns; `reply` gets one
    /// verdict per entry once they are durable.
    Replica {
        entries: Vec<crate::replica::ReplicaEntry>,
        reply: oneshot::Sender<Result<Vec<crate::replica::Verdict>, String>>,
    },
    /// This node takes a conversation over.
    Install {
        install: crate::replica::Install,
        done: Done,
    },
    /// This node hands a conversation over (keeping a replica).
    Demote {
        demote: crate::replica::Demote,
        done: Done,
    },
    /// From the moment this op is taken, the writer takes no write of
    /// `conv` (`sealed`), until a move installs it or `sealed: false`
    /// restores what it took before (the move was abandoned). See `fence`.
    Seal {
        conv: u64,
        sealed: bool,
        done: Done,
    },
    /// Drops a timer index row whose owner no longer waits for it.
    TimerDelete {
        id: u64,
        done: Option<Done>,
    },
    Snapshot {
        conv: ConversationId,
        seq: u32,
        bytes: Vec<u8>,
        /// The epoch the writing actor loaded the conversation at.
        epoch: u64,
        done: Option<Done>,
    },
    /// Calendar changes made by the business (a slot blocked or opened
    /// again), outside any conversation.
    Calendar {
        writes: Vec<crate::store::CalendarWrite>,
        done: Done,
    },
    /// The agent pool opened (`hold`: an encoded `OfferHold`) or ended
    /// (`None`) the offer of `conv`, with its expiry timer's index change.
    Offer {
        conv: ConversationId,
        hold: Option<Vec<u8>>,
        timer: TimerIndex,
        done: Option<Done>,
    },
    DeadLetter {
        bytes: Vec<u8>,
        done: Done,
    },
    /// From now on `alias` (`tenant \0 address`) names the conversation of
    /// `target` (an address of the same tenant).
    Alias {
        alias: String,
        target: String,
        done: Done,
    },
    /// Completes once everything submitted before it is durable.
    Barrier {
        done: Done,
    },
    /// Storage failed: open the database again if it is time (sent by the
    /// healer while unhealthy, so a node heals with no write arriving).
    Heal,
    /// Commits everything before it, completes, and stops the writer.
    /// Operations queued after it are dropped uncompleted.
    Shutdown {
        done: Done,
    },
}

/// Where a conversation's committed change goes in a cluster: the
/// conversation's key (its owner and replica follow from it), the epoch
/// this node holds it at, and its last event seq after the change.
#[derive(Clone)]
pub struct Route {
    pub key: crate::conversation::ConvKey,
    pub epoch: u64,
    pub through: u32,
}

/// One conversation's change in a committed batch, for its replica.
pub struct Change {
    pub conv: u64,
    pub route: Route,
    pub records: Vec<(u32, Vec<u8>)>,
}

/// A batch committed locally, handed to the replicator: its changes, and
/// the callbacks to complete (in order) once the replicas have them.
pub struct Committed {
    pub result: Result<(), Arc<StoreError>>,
    pub changes: Vec<Change>,
    /// (the conversation whose change it completes, callback).
    pub dones: Vec<(Option<u64>, Done)>,
}

/// In a cluster, a batch smaller than this waits `COMMIT_WINDOW` for more.
const WINDOW_BELOW: usize = 64;
const COMMIT_WINDOW: std::time::Duration = std::time::Duration::from_micros(300);

/// Upper bound on operations committed in one transaction.
pub const MAX_BATCH: usize = 4096;
/// Truncate the log once this many records below the low-water mark exist.
const TRUNCATE_EVERY: u64 = 8192;
/// After a failed commit, how often the database is opened again before
/// a batch is tried, and how long that waits for reads using the old one.
const REOPEN_EVERY: std::time::Duration = std::time::Duration::from_millis(500);
const REOPEN_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Clone)]
pub struct Persistence {
    tx: mpsc::Sender<Op>,
    pub store: Arc<Store>,
    healthy: Arc<AtomicBool>,
    replication: ReplicationHook,
}

/// Set once a cluster replicates this node's changes: committed batches
/// go there instead of completing at once. Unbounded on purpose: the
/// writer thread must never block on the async replicator, and what can
/// wait in it is bounded upstream, since every change it holds is a
/// caller still waiting for its completion, admitted by a gateway
/// (`server.max_in_flight_per_gateway`) or by an actor's one message at a
/// time.
type ReplicationHook = Arc<std::sync::OnceLock<mpsc::UnboundedSender<Committed>>>;

pub struct WriterThread {
    handle: Option<JoinHandle<()>>,
}

impl WriterThread {
    /// Waits for the thread to end (after `Persistence::shutdown`).
    pub fn join(mut self) {
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }

    /// True once the thread has ended, for whatever reason.
    pub fn finished(&self) -> bool {
        self.handle.as_ref().is_none_or(|h| h.is_finished())
    }
}

impl Op {
    /// A change with no records: completes once the conversation's replica
    /// is known to have everything up to `route.through` (it asks for a
    /// base if not).
    pub fn replica_check(conv: ConversationId, route: Route, done: Done) -> Op {
        Op::Event {
            conv,
            records: Vec::new(),
            index: None,
            timers: Vec::new(),
            audit: Vec::new(),
            outbox: Vec::new(),
            work: Vec::new(),
            calendar: Vec::new(),
            outcomes: Vec::new(),
            summary: None,
            route: Some(route),
            done: Some(done),
        }
    }
}

impl Persistence {
    pub fn start(
        store: Arc<Store>,
        report: &OpenReport,
        queue: usize,
        metrics: Arc<Metrics>,
    ) -> (Persistence, WriterThread) {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let healthy = Arc::new(AtomicBool::new(true));
        let s = store.clone();
        let h = healthy.clone();
        let next_log = report.next_log_key;
        let next_dead = report.next_dead_letter;
        let replication: ReplicationHook = Default::default();
        let hook = replication.clone();
        let handle = std::thread::Builder::new()
            .name("threadline-writer".into())
            .spawn(move || writer_loop(s, rx, next_log, next_dead, metrics, h, hook))
            .expect("spawning the writer thread");
        // While storage is unhealthy, asks the writer to open it again
        // every `REOPEN_EVERY`; ends with the writer's queue.
        let (heal, up) = (tx.clone(), healthy.clone());
        std::thread::Builder::new()
            .name("threadline-healer".into())
            .spawn(move || loop {
                std::thread::sleep(REOPEN_EVERY);
                if heal.is_closed() {
                    return;
                }
                if up.load(Ordering::Relaxed) {
                    continue;
                }
                if let Err(mpsc::error::TrySendError::Closed(_)) = heal.try_send(Op::Heal) {
                    return;
                }
            })
            .expect("spawning the storage healer thread");
        (
            Persistence {
                tx,
                store,
                healthy,
                replication,
            },
            WriterThread {
                handle: Some(handle),
            },
        )
    }

    /// Queues an operation; waits only while the queue is full (backpressure).
    pub async fn submit(&self, op: Op) -> Result<(), StoreError> {
        self.tx.send(op).await.map_err(|_| StoreError::WriterGone)
    }

    /// Resolves once everything submitted before this call is durable.
    pub async fn barrier(&self) -> Result<(), StoreError> {
        self.wait_for(|done| Op::Barrier { done }).await
    }

    /// Commits calendar changes made outside any conversation; resolves
    /// once durable.
    pub async fn calendar(
        &self,
        writes: Vec<crate::store::CalendarWrite>,
    ) -> Result<(), StoreError> {
        self.wait_for(|done| Op::Calendar { writes, done }).await
    }

    /// Records that `alias` (`tenant \0 address`) names the conversation
    /// of `target`, durably, and then in `aliases` (the routing map).
    pub async fn alias(
        &self,
        aliases: &dashmap::DashMap<String, String>,
        alias: String,
        target: String,
    ) -> Result<(), StoreError> {
        if aliases.get(&alias).is_some_and(|t| *t == target) {
            return Ok(());
        }
        let (a, t) = (alias.clone(), target.clone());
        self.wait_for(|done| Op::Alias {
            alias: a,
            target: t,
            done,
        })
        .await?;
        aliases.insert(alias, target);
        Ok(())
    }

    /// Commits everything queued so far and stops the writer thread.
    pub async fn shutdown(&self) -> Result<(), StoreError> {
        self.wait_for(|done| Op::Shutdown { done }).await
    }

    /// Submits `op` built around a completion and waits for it.
    pub async fn wait_for(&self, op: impl FnOnce(Done) -> Op) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.submit(op(Box::new(move |r| {
            let _ = tx.send(r);
        })))
        .await?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Redb(e.to_string())),
            Err(_) => Err(StoreError::WriterGone),
        }
    }

    /// From now on committed batches complete only once `replicator` has
    /// replicated them (a cluster with replicas). Set once.
    pub fn replicate_through(&self, replicator: mpsc::UnboundedSender<Committed>) {
        let _ = self.replication.set(replicator);
    }

    /// Whether committed changes are replicated before they complete.
    pub fn replicating(&self) -> bool {
        self.replication.get().is_some()
    }

    /// False once a commit has failed (liveness and readiness report
    /// it: a restart opens the data afresh).
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// False once damaged data was found (readiness reports it; a restart
    /// does not help: restore from a backup).
    pub fn intact(&self) -> bool {
        !self.store.is_damaged()
    }

    pub fn queue_len(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

fn writer_loop(
    store: Arc<Store>,
    mut rx: mpsc::Receiver<Op>,
    mut next_log: u64,
    mut next_dead: u64,
    metrics: Arc<Metrics>,
    healthy: Arc<AtomicBool>,
    replication: ReplicationHook,
) {
    let mut batch: Vec<Op> = Vec::with_capacity(MAX_BATCH);
    let mut applied = Vec::with_capacity(MAX_BATCH);
    let mut truncated_below = 0u64;
    let mut audit_heads = crate::store::AuditHeads::new();
    let mut tail = crate::replica::Tail::default();
    let mut fences = crate::fence::Fences::default();
    let mut stopping = false;
    let mut last_batch = 0usize;
    let mut last_reopen: Option<Instant> = None;
    while !stopping {
        let Some(first) = rx.blocking_recv() else {
            break;
        };
        stopping = matches!(first, Op::Shutdown { .. });
        batch.push(first);
        let mut waited = false;
        while batch.len() < MAX_BATCH && !stopping {
            match rx.try_recv() {
                Ok(op) => {
                    stopping = matches!(op, Op::Shutdown { .. });
                    batch.push(op);
                }
                Err(_)
                    if !waited
                        && last_batch > 1
                        && replication.get().is_some()
                        && batch.len() < WINDOW_BELOW =>
                {
                    // In a cluster each node sees a fraction of the
                    // traffic and every change is written twice (here and
                    // on its replica): under load (the last batch was not
                    // a lone change), wait a moment for more, so commits
                    // are fewer and fuller.
                    waited = true;
                    std::thread::sleep(COMMIT_WINDOW);
                }
                Err(_) => break,
            }
        }
        last_batch = batch.len();
        let undo = fence_batch(&store, &mut fences, &mut batch);
        let mut verdicts: Vec<Vec<crate::replica::Verdict>> = Vec::new();
        let writes_data = batch.iter().any(|op| {
            !matches!(
                op,
                Op::Barrier { .. } | Op::Shutdown { .. } | Op::Seal { .. } | Op::Heal
            )
        });
        // A backup copying the file waits for this commit, or this commit
        // for the backup.
        let no_backup = writes_data.then(|| store.writing.lock());
        // After a failed commit the database is opened again (at most
        // every `REOPEN_EVERY`) before the next batch is tried; until that
        // works every write answers an error (503 with Retry-After).
        let heal = batch.iter().any(|op| matches!(op, Op::Heal));
        if (writes_data || heal)
            && !healthy.load(Ordering::Relaxed)
            && last_reopen.is_none_or(|t| t.elapsed() >= REOPEN_EVERY)
        {
            last_reopen = Some(Instant::now());
            match store.reopen(REOPEN_WAIT) {
                Ok(()) => {
                    tracing::warn!("storage opened again after a failed commit; taking writes");
                    healthy.store(true, Ordering::Relaxed);
                }
                Err(e) => tracing::debug!(error = %e, "storage still failing"),
            }
        }
        let result = if writes_data && !healthy.load(Ordering::Relaxed) {
            fences.undo(undo);
            Err(Arc::new(StoreError::Redb(
                "storage failed (a full disk?); retrying".into(),
            )))
        } else if writes_data && store.is_damaged() {
            // Nothing more is acknowledged into a database known damaged.
            fences.undo(undo);
            Err(Arc::new(StoreError::Damaged(
                "the database holds damaged data; restore from a backup".into(),
            )))
        } else if writes_data {
            let truncate = if next_log >= truncated_below + TRUNCATE_EVERY {
                let low_water = store.pending.lock().low_water().unwrap_or(next_log);
                (low_water >= truncated_below + TRUNCATE_EVERY).then_some(low_water)
            } else {
                None
            };
            let started = Instant::now();
            let writes = batch
                .iter()
                .filter_map(|op| match op {
                    Op::Event {
                        conv,
                        records,
                        index,
                        timers,
                        audit,
                        outbox,
                        work,
                        calendar,
                        outcomes,
                        summary,
                        ..
                    } => Some(Write::Events {
                        conv: *conv,
                        records,
                        index: index.as_ref().map(|(t, a)| (t.as_str(), a.as_str())),
                        timers,
                        audit,
                        outbox,
                        work,
                        calendar,
                        outcomes,
                        summary: summary.as_ref().map(|(t, b)| (t.as_str(), b.as_slice())),
                    }),
                    Op::TimerDelete { id, .. } => Some(Write::TimerDelete { id: *id }),
                    Op::Calendar { writes, .. } => Some(Write::Events {
                        conv: ConversationId(0),
                        records: &[],
                        index: None,
                        timers: &[],
                        audit: &[],
                        outbox: &[],
                        work: &[],
                        calendar: writes,
                        outcomes: &[],
                        summary: None,
                    }),
                    Op::Offer {
                        conv, hold, timer, ..
                    } => Some(Write::Offer {
                        conv: conv.0,
                        hold: hold.as_deref(),
                        timer: *timer,
                    }),
                    Op::Snapshot {
                        conv, seq, bytes, ..
                    } => Some(Write::Snapshot {
                        conv: *conv,
                        seq: *seq,
                        bytes,
                    }),
                    Op::DeadLetter { bytes, .. } => Some(Write::DeadLetter { bytes }),
                    Op::Alias { alias, target, .. } => Some(Write::Alias { alias, target }),
                    Op::Barrier { .. }
                    | Op::Heal
                    | Op::Shutdown { .. }
                    | Op::Replica { .. }
                    | Op::Install { .. }
                    | Op::Demote { .. }
                    | Op::Seal { .. } => None,
                })
                .chain(truncate.map(|below| Write::Truncate { below }));
            let mut moved = Vec::new();
            let cluster: Vec<ClusterWrite> = {
                let pending = store.pending.lock();
                let keys = |conv: u64| pending.keys(conv);
                batch
                    .iter()
                    .filter_map(|op| match op {
                        Op::Replica { entries, .. } => Some(ClusterWrite::Replica { entries }),
                        Op::Install { install, .. } => {
                            moved.push(install.conv);
                            Some(ClusterWrite::Install {
                                install,
                                log_keys: keys(install.conv),
                            })
                        }
                        Op::Demote { demote, .. } => {
                            moved.push(demote.conv);
                            Some(ClusterWrite::Demote {
                                demote,
                                log_keys: keys(demote.conv),
                            })
                        }
                        _ => None,
                    })
                    .collect()
            };
            applied.clear();
            // The cluster's writes (replicas, ownership moves) go into the
            // same transaction, after the batch's own.
            let start_tail = tail.next_key;
            tail.effects.clear();
            let mut cluster = Some(cluster);
            let mut cluster_writes = |txn: &redb::WriteTransaction, log_next: u64| {
                let writes = cluster.take().unwrap_or_default();
                match writes.is_empty() {
                    true => Ok(Vec::new()),
                    false => crate::replica::apply(
                        txn,
                        writes,
                        &mut tail,
                        &store.replica_pending,
                        log_next,
                    ),
                }
            };
            let r = store.db().and_then(|db| {
                BatchWriter {
                    next_log_key: &mut next_log,
                    next_dead_letter: &mut next_dead,
                    audit_heads: &mut audit_heads,
                }
                .commit(&db, writes, Some(&mut cluster_writes), &mut applied)
            });
            if r.is_err() {
                // Nothing of it is durable: its tail keys are handed out again.
                tail.undo(start_tail);
            }
            metrics.observe_commit(batch.len(), started.elapsed());
            match r {
                Ok(v) => {
                    verdicts = v;
                    if let Some(below) = truncate {
                        truncated_below = below;
                    }
                    let mut pending = store.pending.lock();
                    for a in &applied {
                        match *a {
                            Applied::Logged { conv, seq, key } => pending.push(conv, seq, key),
                            Applied::Snapshotted { conv, seq } => pending.covered(conv, seq),
                            Applied::Nothing => {}
                        }
                    }
                    for conv in moved {
                        pending.covered(conv, u32::MAX);
                    }
                    drop(pending);
                    tail.settle(&mut store.replica_pending.lock());
                    Ok(())
                }
                Err(e) => {
                    fences.undo(undo);
                    tracing::error!(error = %e, ops = batch.len(), "durable commit failed");
                    healthy.store(false, Ordering::Relaxed);
                    Err(Arc::new(e))
                }
            }
        } else {
            Ok(())
        };
        drop(no_backup);
        let replicator = replication.get();
        let mut verdicts = verdicts.into_iter();
        let mut committed = Committed {
            result: result.clone(),
            changes: Vec::new(),
            dones: Vec::new(),
        };
        for op in batch.drain(..) {
            let (conv, done) = match op {
                Op::Event {
                    conv,
                    records,
                    route,
                    done,
                    ..
                } => {
                    if let (Some(route), Some(_)) = (route, replicator) {
                        committed.changes.push(Change {
                            conv: conv.0,
                            route,
                            records,
                        });
                    }
                    (Some(conv.0), done)
                }
                Op::Replica { reply, .. } => {
                    // A replica answers once durable here, whatever this
                    // node's own replication is waiting for.
                    let v = match &result {
                        Ok(()) => Ok(verdicts.next().unwrap_or_default()),
                        Err(e) => Err(e.to_string()),
                    };
                    let _ = reply.send(v);
                    continue;
                }
                Op::Install { done, .. } | Op::Demote { done, .. } | Op::Seal { done, .. } => {
                    done(result.clone());
                    continue;
                }
                Op::Heal => continue,
                Op::Snapshot { done, .. }
                | Op::TimerDelete { done, .. }
                | Op::Offer { done, .. } => (None, done),
                Op::DeadLetter { done, .. }
                | Op::Calendar { done, .. }
                | Op::Alias { done, .. }
                | Op::Barrier { done }
                | Op::Shutdown { done } => (None, Some(done)),
            };
            if let Some(done) = done {
                match replicator {
                    Some(_) => committed.dones.push((conv, done)),
                    None => done(result.clone()),
                }
            }
        }
        if let Some(r) = replicator {
            if let Err(mpsc::error::SendError(c)) = r.send(committed) {
                // The replicator is gone (shutdown): nothing can be
                // acknowledged as replicated.
                for (_, done) in c.dones {
                    done(Err(Arc::new(StoreError::WriterGone)));
                }
            }
        }
    }
}

/// Applies the ownership fence (`crate::fence`) to a batch in the order
/// the writer took it: refused writes leave the batch, failed with
/// `StoreError::Moved` (nothing of them is written). A hand-over whose
/// snapshot misses an event committed here is refused too (the mover
/// seals first, so this does not happen). Returns what to undo if the
/// batch's commit fails.
fn fence_batch(
    store: &Store,
    fences: &mut crate::fence::Fences,
    batch: &mut Vec<Op>,
) -> crate::fence::Undo {
    use crate::fence::Step;
    let moves = batch
        .iter()
        .any(|op| matches!(op, Op::Seal { .. } | Op::Install { .. } | Op::Demote { .. }));
    if !moves && fences.is_empty() {
        // Nothing moved while this node runs (a single node, always).
        return crate::fence::Undo::default();
    }
    let steps: Vec<Step> = {
        let pending = store.pending.lock();
        batch
            .iter()
            .map(|op| match op {
                Op::Event { conv, route, .. } => Step::Write {
                    conv: conv.0,
                    epoch: route.as_ref().map_or(0, |r| r.epoch),
                },
                Op::Snapshot { conv, epoch, .. } => Step::Write {
                    conv: conv.0,
                    epoch: *epoch,
                },
                Op::Seal {
                    conv, sealed: true, ..
                } => Step::Seal { conv: *conv },
                Op::Seal {
                    conv,
                    sealed: false,
                    ..
                } => Step::Unseal { conv: *conv },
                Op::Install { install, .. } => Step::Install {
                    conv: install.conv,
                    epoch: install.epoch,
                },
                Op::Demote { demote, .. } => match pending.last(demote.conv) {
                    // It would drop committed events.
                    Some((seq, _)) if seq > demote.meta.last_seq => Step::Refused,
                    _ => Step::Demote { conv: demote.conv },
                },
                _ => Step::Other,
            })
            .collect()
    };
    let (refused, undo) = fences.admit(&steps);
    if refused.iter().any(|r| *r) {
        let ops = std::mem::take(batch);
        for (op, refuse) in ops.into_iter().zip(refused) {
            if !refuse {
                batch.push(op);
                continue;
            }
            let (conv, done) = match op {
                Op::Event { conv, done, .. } | Op::Snapshot { conv, done, .. } => (conv.0, done),
                Op::Demote { demote, done } => {
                    tracing::error!(
                        conv = demote.conv,
                        seq = demote.meta.last_seq,
                        "a hand-over's snapshot misses events committed here; not handed over"
                    );
                    (demote.conv, Some(done))
                }
                _ => continue,
            };
            if let Some(done) = done {
                done(Err(Arc::new(StoreError::Moved(format!(
                    "conversation {} moved while this change was under way",
                    ConversationId(conv)
                )))));
            }
        }
    }
    undo
}
