//! The scheduler actor: owns every pending timer of the node in a timing
//! wheel and delivers each to its owner when it comes due.
//!
//! Durability is the owner's: a timer is scheduled, fired and cancelled by
//! events in the owner's log, and the `timers` index table changes in the
//! same transaction. The scheduler is told after the commit (`Add`,
//! `Remove`) and reloads the index when it (or the node) starts, so a timer
//! that came due while the node was down fires once at start.
//!
//! Delivery is at least once (a crash after delivery and before the owner's
//! commit delivers again); the owner makes it exactly once as far as anyone
//! can see, by ignoring ids it is no longer waiting for.
//!
//! Time comes from the injected clock. In real time a driver task wakes the
//! actor at the next deadline; with a simulated clock nothing fires until
//! `Advance`, which returns once everything due has been handled.
//!
//! The scheduler knows nothing of the node: it is given a clock, the
//! metrics and a `TimerSink` that takes each due timer to its owner (the
//! runtime passes its router). The rest of the node reaches it through
//! its `SchedulerHandle`.
//!
//! # Timers
//!
//! A timer belongs to its owner (today: a conversation). Scheduling, firing
//! and cancelling are events in the owner's log (`TimerScheduled`,
//! `TimerFired`, `TimerCancelled`); the writer updates the `timers` index
//! table in the same transaction, and only then is the scheduler told (`Add`,
//! `Remove`). At start the scheduler loads the index; a timer already overdue
//! fires at once. Delivery is at least once; the owner's list of pending
//! timers makes it exactly once as seen from outside: a fire for an id it is
//! not waiting for is ignored (and its index row dropped). A fired timer's
//! effects and its `TimerFired` are one write, so a crash can never keep one
//! without the other. Effects are stamped with the due time, so a simulated
//! jump of the clock gives the same outcome as time passing.
//!
//! Each conversation keeps at most one lifecycle timer, re-evaluated when it
//! fires (active → inactive → closed, per-tenant silences); inbound messages
//! only move it earlier when a closed or inactive conversation reopens.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use parking_lot::RwLock;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use threadline_protocol::codec::{TimerOwner, TimerRow};
use threadline_protocol::Timestamp;
use tokio::sync::{oneshot, Notify};

use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::wheel::{Expired, TimerKey, Wheel};

/// Where due timers go: to their owner, which records the fire (or
/// ignores an id it no longer waits for). An error means the owner could
/// not be reached; the timer is tried again a second later.
pub trait TimerSink: Send + Sync + 'static {
    fn fire(&self, owner: TimerOwner, id: u64) -> BoxFuture<'static, Result<(), String>>;
}

/// The scheduler is not running (it is restarting, or the node stops).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the scheduler is not running")]
pub struct Stopped;

/// The running scheduler, as the rest of the node reaches it; empty
/// while it (re)starts. Durable changes to the timers index are told
/// here after their commit.
#[derive(Default)]
pub struct SchedulerHandle(RwLock<Option<ActorRef<SchedMsg>>>);

impl SchedulerHandle {
    /// A timer was durably scheduled.
    pub fn add(&self, row: TimerRow) {
        if let Some(s) = self.0.read().as_ref() {
            let _ = s.cast(SchedMsg::Add(row));
        }
    }

    /// A timer was durably fired or cancelled.
    pub fn remove(&self, id: u64) {
        if let Some(s) = self.0.read().as_ref() {
            let _ = s.cast(SchedMsg::Remove(id));
        }
    }

    /// Who owns pending timer `id`.
    pub async fn owner(&self, id: u64) -> Result<Option<TimerOwner>, Stopped> {
        self.ask(|reply| SchedMsg::Owner { id, reply }).await
    }

    /// Fires everything due at the clock's time and waits until handled;
    /// how many fired.
    pub async fn advance(&self) -> Result<usize, Stopped> {
        self.ask(|reply| SchedMsg::Advance { reply }).await
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> SchedMsg,
    ) -> Result<T, Stopped> {
        let sched = self.0.read().clone().ok_or(Stopped)?;
        let (tx, rx) = oneshot::channel();
        sched.cast(make(tx)).map_err(|_| Stopped)?;
        rx.await.map_err(|_| Stopped)
    }

    /// The scheduler now running (`None`: none).
    pub fn set(&self, actor: Option<ActorRef<SchedMsg>>) -> Option<ActorRef<SchedMsg>> {
        std::mem::replace(&mut *self.0.write(), actor)
    }

    /// Whether actor `id` is the running scheduler.
    pub fn is(&self, id: ractor::ActorId) -> bool {
        self.0.read().as_ref().is_some_and(|a| a.get_id() == id)
    }
}

/// A timer whose owner could not be reached is tried again this much later.
const RETRY_MS: i64 = 1_000;

#[derive(ractor_cluster::RactorMessage)]
pub enum SchedMsg {
    /// A timer was durably scheduled.
    Add(TimerRow),
    /// A timer was durably fired or cancelled by its owner.
    Remove(u64),
    /// Fire what is due now (real-time driver).
    Tick,
    /// Fire everything due at the clock's current time, wait until handled,
    /// repeat until nothing is due; replies with how many fired.
    Advance { reply: oneshot::Sender<usize> },
    /// The owner finished with a fired timer.
    Handled { id: u64, ok: bool },
    /// Who owns timer `id`, if it is pending.
    Owner {
        id: u64,
        reply: oneshot::Sender<Option<TimerOwner>>,
    },
}

pub struct Scheduler;

pub struct SchedArgs {
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    pub sink: Arc<dyn TimerSink>,
    pub rows: Vec<TimerRow>,
    pub real_time: bool,
}

struct Entry {
    key: Option<TimerKey>,
    due: Timestamp,
    owner: TimerOwner,
}

pub struct SchedState {
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    sink: Arc<dyn TimerSink>,
    wheel: Wheel,
    timers: HashMap<u64, Entry>,
    in_flight: HashSet<u64>,
    waiters: Vec<oneshot::Sender<usize>>,
    fired_for_waiters: usize,
    real_time: bool,
    next_due: Arc<AtomicI64>,
    wake: Arc<Notify>,
    expired: Vec<Expired>,
}

fn ms(t: Timestamp) -> u64 {
    t.0.max(0) as u64
}

impl Actor for Scheduler {
    type Msg = SchedMsg;
    type State = SchedState;
    type Arguments = SchedArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SchedMsg>,
        args: SchedArgs,
    ) -> Result<SchedState, ActorProcessingErr> {
        let now = args.clock.now();
        let mut st = SchedState {
            wheel: Wheel::with_capacity(ms(now), args.rows.len()),
            timers: HashMap::with_capacity(args.rows.len()),
            in_flight: HashSet::new(),
            waiters: Vec::new(),
            fired_for_waiters: 0,
            real_time: args.real_time,
            next_due: Arc::new(AtomicI64::new(i64::MAX)),
            wake: Arc::new(Notify::new()),
            expired: Vec::new(),
            clock: args.clock,
            metrics: args.metrics,
            sink: args.sink,
        };
        for row in args.rows {
            st.add(row);
        }
        st.publish_next();
        if st.real_time {
            spawn_driver(
                myself.clone(),
                st.clock.clone(),
                st.next_due.clone(),
                st.wake.clone(),
            );
        }
        Ok(st)
    }

    async fn handle(
        &self,
        myself: ActorRef<SchedMsg>,
        msg: SchedMsg,
        st: &mut SchedState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SchedMsg::Add(row) => {
                st.add(row);
                st.publish_next();
            }
            SchedMsg::Remove(id) => {
                if let Some(e) = st.timers.remove(&id) {
                    if let Some(k) = e.key {
                        st.wheel.cancel(k);
                    }
                }
                st.publish_next();
            }
            SchedMsg::Tick => st.fire_due(&myself),
            SchedMsg::Advance { reply } => {
                st.waiters.push(reply);
                st.fire_due(&myself);
                st.answer_waiters(&myself);
            }
            SchedMsg::Handled { id, ok } => {
                st.in_flight.remove(&id);
                if ok {
                    st.timers.remove(&id);
                    st.metrics.timers_fired.inc();
                } else if let Some(e) = st.timers.get_mut(&id) {
                    let retry = st.clock.now().saturating_add_millis(RETRY_MS);
                    e.key = Some(
                        st.wheel
                            .insert(ms(retry), NonZeroU64::new(id).expect("ids start at 1")),
                    );
                }
                st.publish_next();
                st.answer_waiters(&myself);
            }
            SchedMsg::Owner { id, reply } => {
                let _ = reply.send(st.timers.get(&id).map(|e| e.owner));
            }
        }
        st.metrics.timers_pending.set(st.timers.len() as i64);
        Ok(())
    }
}

impl SchedState {
    fn add(&mut self, row: TimerRow) {
        let Some(nz) = NonZeroU64::new(row.id) else {
            return;
        };
        if let Some(old) = self.timers.remove(&row.id) {
            if let Some(k) = old.key {
                self.wheel.cancel(k);
            }
        }
        let key = self.wheel.insert(ms(row.due), nz);
        self.timers.insert(
            row.id,
            Entry {
                key: Some(key),
                due: row.due,
                owner: row.owner,
            },
        );
    }

    /// Tells the driver when to wake next.
    fn publish_next(&self) {
        let next = self
            .wheel
            .next_deadline()
            .map_or(i64::MAX, |d| d.min(i64::MAX as u64) as i64);
        let old = self.next_due.swap(next, Ordering::SeqCst);
        if next < old {
            self.wake.notify_one();
        }
    }

    /// Expires what is due and delivers it: each owner's timers one after
    /// another in (deadline, id) order, different owners in parallel.
    fn fire_due(&mut self, myself: &ActorRef<SchedMsg>) {
        let now = self.clock.now();
        self.expired.clear();
        self.wheel.poll(ms(now), &mut self.expired);
        let mut by_owner: HashMap<TimerOwner, Vec<u64>> = HashMap::new();
        let mut order: Vec<TimerOwner> = Vec::new();
        for e in std::mem::take(&mut self.expired) {
            let id = e.id.get();
            let Some(entry) = self.timers.get_mut(&id) else {
                continue;
            };
            entry.key = None;
            if self.real_time {
                let late = (now.0 - entry.due.0).max(0) as f64 / 1000.0;
                self.metrics.timer_lateness_seconds.observe(late);
            }
            self.in_flight.insert(id);
            self.fired_for_waiters += 1;
            let list = by_owner.entry(entry.owner).or_default();
            if list.is_empty() {
                order.push(entry.owner);
            }
            list.push(id);
        }
        for owner in order {
            let ids = by_owner.remove(&owner).unwrap_or_default();
            let sink = self.sink.clone();
            let me = myself.clone();
            tokio::spawn(async move {
                for id in ids {
                    let ok = sink.fire(owner, id).await.is_ok();
                    let _ = me.cast(SchedMsg::Handled { id, ok });
                }
            });
        }
        self.publish_next();
    }

    /// An advance is complete when nothing fired is still being handled and
    /// nothing more is due (handlers may have scheduled timers already due).
    fn answer_waiters(&mut self, myself: &ActorRef<SchedMsg>) {
        if self.waiters.is_empty() || !self.in_flight.is_empty() {
            return;
        }
        self.fire_due(myself);
        if !self.in_flight.is_empty() {
            return;
        }
        let fired = std::mem::take(&mut self.fired_for_waiters);
        for w in self.waiters.drain(..) {
            let _ = w.send(fired);
        }
    }
}

fn spawn_driver(
    me: ActorRef<SchedMsg>,
    // The clock alone: the driver may outlive the scheduler by a tick and
    // must not hold the node's storage open.
    clock: Arc<dyn Clock>,
    next_due: Arc<AtomicI64>,
    wake: Arc<Notify>,
) {
    tokio::spawn(async move {
        loop {
            let next = next_due.load(Ordering::SeqCst);
            let now = clock.now().0;
            let wait = if next == i64::MAX {
                1_000
            } else {
                (next - now).clamp(0, 1_000)
            };
            if wait > 0 {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(wait as u64)) => {}
                    _ = wake.notified() => continue,
                }
            }
            if me.cast(SchedMsg::Tick).is_err() {
                break;
            }
            // Let the tick be handled before looking at the next deadline.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
}
