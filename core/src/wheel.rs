//! A hierarchical timing wheel (Varghese & Lauck), pure and synchronous:
//! no clock of its own, time is whatever the caller passes to `poll`.
//!
//! Six levels of 64 slots; level `L` slots are `64^L` ms wide, so level 0
//! has millisecond resolution and level 5 slots span about 12 days (the
//! whole wheel about 2.2 years; later deadlines wait in the top level and
//! are re-filed each time it comes round). A timer is filed at the lowest
//! level whose slot holds its deadline relative to the current time (the
//! highest bit in which `now` and the deadline differ); when a higher-level
//! slot comes due its timers cascade down. Insert, cancel and reschedule are
//! O(1); expiry costs O(1) per timer plus at most one cascade per level.
//!
//! Timers are nodes in one slab (`Vec`), linked into circular doubly linked
//! lists with one sentinel node per slot, so a timer can be unlinked
//! without knowing its slot. A node is 24 bytes: deadline, id, two links.
//! The wheel stores only a timer's id; what the timer means lives with the
//! caller. Timers with equal deadlines expire in id order, so expiry order
//! is exactly (deadline, id).

use std::num::NonZeroU64;

const LEVELS: usize = 6;
const SLOT_BITS: u32 = 6;
const SLOTS: usize = 1 << SLOT_BITS;
/// Sentinels: one per (level, slot), then the "already due" list.
const SENTINELS: usize = LEVELS * SLOTS + 1;
const DUE_LIST: u32 = (LEVELS * SLOTS) as u32;
/// The span the levels cover; farther deadlines are clamped into the top level.
const MAX_SPAN: u64 = 1 << (SLOT_BITS as usize * LEVELS);
const FREE: u64 = 0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimerKey {
    idx: u32,
    id: NonZeroU64,
}

impl TimerKey {
    pub fn id(&self) -> NonZeroU64 {
        self.id
    }
}

#[derive(Clone, Copy)]
struct Node {
    deadline: u64,
    /// 0 for a free node or a sentinel.
    id: u64,
    next: u32,
    prev: u32,
}

pub struct Wheel {
    nodes: Vec<Node>,
    /// Head of the free list (linked through `next`), or `u32::MAX`.
    free: u32,
    /// Occupied-slot bitmap per level.
    occupied: [u64; LEVELS],
    /// The time (ms) the wheel has been advanced to.
    elapsed: u64,
    len: usize,
}

/// An expired timer: its id and deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired {
    pub id: NonZeroU64,
    pub deadline: u64,
}

fn level_for(elapsed: u64, when: u64) -> usize {
    const SLOT_MASK: u64 = (1 << SLOT_BITS) - 1;
    let mut masked = (elapsed ^ when) | SLOT_MASK;
    if masked >= MAX_SPAN {
        masked = MAX_SPAN - 1;
    }
    let significant = 63 - masked.leading_zeros() as usize;
    significant / SLOT_BITS as usize
}

fn slot_range(level: usize) -> u64 {
    1 << (SLOT_BITS as usize * level)
}

fn slot_for(level: usize, when: u64) -> usize {
    ((when >> (SLOT_BITS as usize * level)) as usize) & (SLOTS - 1)
}

impl Wheel {
    /// A wheel whose current time is `now` (ms).
    pub fn new(now: u64) -> Wheel {
        Self::with_capacity(now, 0)
    }

    pub fn with_capacity(now: u64, timers: usize) -> Wheel {
        let mut nodes = Vec::with_capacity(SENTINELS + timers);
        for i in 0..SENTINELS as u32 {
            nodes.push(Node {
                deadline: 0,
                id: FREE,
                next: i,
                prev: i,
            });
        }
        Wheel {
            nodes,
            free: u32::MAX,
            occupied: [0; LEVELS],
            elapsed: now,
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The time the wheel was last advanced to.
    pub fn now(&self) -> u64 {
        self.elapsed
    }

    /// Bytes held per pending timer (the slab, including unused capacity).
    pub fn bytes_per_timer(&self) -> f64 {
        (self.nodes.capacity() * std::mem::size_of::<Node>()) as f64 / self.len.max(1) as f64
    }

    /// Files timer `id` to expire at `deadline` (ms). A deadline not after
    /// the wheel's current time expires at the next `poll`.
    pub fn insert(&mut self, deadline: u64, id: NonZeroU64) -> TimerKey {
        let node = Node {
            deadline,
            id: id.get(),
            next: 0,
            prev: 0,
        };
        let idx = if self.free != u32::MAX {
            let idx = self.free;
            self.free = self.nodes[idx as usize].next;
            self.nodes[idx as usize] = node;
            idx
        } else {
            let idx = u32::try_from(self.nodes.len()).expect("at most 4 billion timers");
            self.nodes.push(node);
            idx
        };
        self.file(idx);
        self.len += 1;
        TimerKey { idx, id }
    }

    /// Removes a timer; false if it already expired or was cancelled.
    pub fn cancel(&mut self, key: TimerKey) -> bool {
        match self.nodes.get(key.idx as usize) {
            Some(n) if n.id == key.id.get() && key.idx as usize >= SENTINELS => {}
            _ => return false,
        }
        self.unlink(key.idx);
        self.nodes[key.idx as usize].id = FREE;
        self.nodes[key.idx as usize].next = self.free;
        self.free = key.idx;
        self.len -= 1;
        true
    }

    /// Moves a pending timer to a new deadline, keeping its id.
    pub fn reschedule(&mut self, key: TimerKey, deadline: u64) -> bool {
        match self.nodes.get(key.idx as usize) {
            Some(n) if n.id == key.id.get() && key.idx as usize >= SENTINELS => {}
            _ => return false,
        }
        self.unlink(key.idx);
        self.nodes[key.idx as usize].deadline = deadline;
        self.file(key.idx);
        true
    }

    /// The earliest instant at which `poll` would expire something.
    pub fn next_deadline(&self) -> Option<u64> {
        if self.nodes[DUE_LIST as usize].next != DUE_LIST {
            return Some(self.elapsed);
        }
        self.next_expiration().map(|(_, _, d)| d)
    }

    /// Advances to `now`, appending every timer with a deadline `<= now`
    /// to `out` in (deadline, id) order.
    pub fn poll(&mut self, now: u64, out: &mut Vec<Expired>) {
        let start = out.len();
        self.drain_list(DUE_LIST, out);
        while let Some((level, slot, deadline)) = self.next_expiration() {
            if deadline > now {
                break;
            }
            self.elapsed = self.elapsed.max(deadline);
            let sentinel = (level * SLOTS + slot) as u32;
            // Detach the whole slot before re-filing: entries may go back
            // into the same slot.
            let mut cur = self.nodes[sentinel as usize].next;
            self.nodes[sentinel as usize].next = sentinel;
            self.nodes[sentinel as usize].prev = sentinel;
            self.occupied[level] &= !(1 << slot);
            while cur != sentinel {
                let next = self.nodes[cur as usize].next;
                if self.nodes[cur as usize].deadline <= deadline {
                    self.expire(cur, out);
                } else {
                    self.file(cur);
                }
                cur = next;
            }
        }
        self.elapsed = self.elapsed.max(now);
        sort_ties(&mut out[start..]);
    }

    fn drain_list(&mut self, sentinel: u32, out: &mut Vec<Expired>) {
        let mut cur = self.nodes[sentinel as usize].next;
        self.nodes[sentinel as usize].next = sentinel;
        self.nodes[sentinel as usize].prev = sentinel;
        let first = out.len();
        while cur != sentinel {
            let next = self.nodes[cur as usize].next;
            self.expire(cur, out);
            cur = next;
        }
        // Due timers may have been filed in any order.
        out[first..].sort_unstable_by_key(|e| (e.deadline, e.id));
    }

    fn expire(&mut self, idx: u32, out: &mut Vec<Expired>) {
        let n = &mut self.nodes[idx as usize];
        out.push(Expired {
            id: NonZeroU64::new(n.id).expect("live node"),
            deadline: n.deadline,
        });
        n.id = FREE;
        n.next = self.free;
        self.free = idx;
        self.len -= 1;
    }

    /// Links node `idx` into the list its deadline belongs to.
    fn file(&mut self, idx: u32) {
        let deadline = self.nodes[idx as usize].deadline;
        let sentinel = if deadline <= self.elapsed {
            DUE_LIST
        } else {
            let level = level_for(self.elapsed, deadline);
            let slot = slot_for(level, deadline);
            self.occupied[level] |= 1 << slot;
            (level * SLOTS + slot) as u32
        };
        // Append at the tail: sentinel.prev is the last node.
        let last = self.nodes[sentinel as usize].prev;
        self.nodes[idx as usize].prev = last;
        self.nodes[idx as usize].next = sentinel;
        self.nodes[last as usize].next = idx;
        self.nodes[sentinel as usize].prev = idx;
    }

    fn unlink(&mut self, idx: u32) {
        let Node { next, prev, .. } = self.nodes[idx as usize];
        self.nodes[prev as usize].next = next;
        self.nodes[next as usize].prev = prev;
        // The list became empty: `prev` and `next` are its sentinel.
        if prev == next && (prev as usize) < LEVELS * SLOTS {
            let (level, slot) = (prev as usize / SLOTS, prev as usize % SLOTS);
            self.occupied[level] &= !(1 << slot);
        }
    }

    /// (level, slot, instant) of the next slot to process: the lowest level
    /// with an occupied slot holds the earliest one (deadlines in higher
    /// levels are at least one of their slots away).
    ///
    /// The slot holding the current time is searched last: anything filed
    /// there is a whole rotation ahead (nearer deadlines are filed at a lower
    /// level or are already due). Only the top level can have such entries,
    /// from deadlines beyond the wheel's span.
    fn next_expiration(&self) -> Option<(usize, usize, u64)> {
        for level in 0..LEVELS {
            let occupied = self.occupied[level];
            if occupied == 0 {
                continue;
            }
            let range = slot_range(level);
            let level_range = range * SLOTS as u64;
            let now_slot = ((self.elapsed / range) % SLOTS as u64) as usize;
            let after = (now_slot + 1) % SLOTS;
            let zeros = occupied.rotate_right(after as u32).trailing_zeros() as usize;
            let slot = (after + zeros) % SLOTS;
            let level_start = self.elapsed & !(level_range - 1);
            let mut deadline = level_start + slot as u64 * range;
            if slot <= now_slot {
                deadline += level_range;
            }
            return Some((level, slot, deadline));
        }
        None
    }
}

/// Orders runs of equal deadlines by id (cascades can interleave them).
fn sort_ties(out: &mut [Expired]) {
    let mut i = 0;
    while i < out.len() {
        let mut j = i + 1;
        while j < out.len() && out[j].deadline == out[i].deadline {
            j += 1;
        }
        if j - i > 1 {
            out[i..j].sort_unstable_by_key(|e| e.id);
        }
        i = j;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn id(n: u64) -> NonZeroU64 {
        NonZeroU64::new(n).unwrap()
    }

    #[test]
    fn node_is_24_bytes() {
        assert_eq!(std::mem::size_of::<Node>(), 24);
    }

    #[test]
    fn expires_in_deadline_order_across_levels() {
        let t0 = 1_800_000_000_000;
        let mut w = Wheel::new(t0);
        let deadlines = [
            t0 + 5,
            t0 + 70,
            t0 + 4_000,
            t0 + 3,
            t0 + 86_400_000,
            t0 + 35 * 86_400_000,
        ];
        for (i, d) in deadlines.iter().enumerate() {
            w.insert(*d, id(i as u64 + 1));
        }
        let mut out = Vec::new();
        w.poll(t0 + 4, &mut out);
        assert_eq!(out.iter().map(|e| e.id.get()).collect::<Vec<_>>(), [4]);
        out.clear();
        w.poll(t0 + 40 * 86_400_000, &mut out);
        assert_eq!(
            out.iter().map(|e| e.id.get()).collect::<Vec<_>>(),
            [1, 2, 3, 5, 6]
        );
        assert!(w.is_empty());
    }

    #[test]
    fn cancel_and_reschedule_are_exact() {
        let mut w = Wheel::new(0);
        let a = w.insert(100, id(1));
        let b = w.insert(200, id(2));
        assert!(w.cancel(a));
        assert!(!w.cancel(a), "twice");
        assert!(w.reschedule(b, 50));
        let mut out = Vec::new();
        w.poll(60, &mut out);
        assert_eq!(
            out,
            [Expired {
                id: id(2),
                deadline: 50
            }]
        );
        assert!(!w.cancel(b), "already expired");
        assert_eq!(w.next_deadline(), None);
    }

    #[test]
    fn overdue_timers_fire_at_the_next_poll() {
        let mut w = Wheel::new(1000);
        w.insert(10, id(2));
        w.insert(5, id(3));
        w.insert(1000, id(1));
        assert_eq!(w.next_deadline(), Some(1000));
        let mut out = Vec::new();
        w.poll(1000, &mut out);
        let order: Vec<_> = out.iter().map(|e| (e.deadline, e.id.get())).collect();
        assert_eq!(order, [(5, 3), (10, 2), (1000, 1)]);
    }

    #[test]
    fn very_distant_timers_wait_in_the_top_level() {
        let mut w = Wheel::new(0);
        let far = 3 * MAX_SPAN + 12_345;
        w.insert(far, id(1));
        w.insert(7, id(2));
        let mut out = Vec::new();
        w.poll(far - 1, &mut out);
        assert_eq!(out.len(), 1);
        w.poll(far, &mut out);
        assert_eq!(
            out[1],
            Expired {
                id: id(1),
                deadline: far
            }
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64),
        Cancel(usize),
        Reschedule(usize, u64),
        Advance(u64),
    }

    fn delta() -> impl Strategy<Value = u64> {
        prop_oneof![
            0..70u64,
            0..5_000u64,
            0..400_000u64,
            0..(40 * 86_400_000u64),
            0..(3 * MAX_SPAN),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => delta().prop_map(Op::Insert),
            1 => any::<usize>().prop_map(Op::Cancel),
            1 => (any::<usize>(), delta()).prop_map(|(i, d)| Op::Reschedule(i, d)),
            3 => delta().prop_map(Op::Advance),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The wheel fires the same timers in the same order as an ordered
        /// map keyed by (deadline, id).
        #[test]
        fn wheel_matches_an_ordered_map(start in 0..u64::from(u32::MAX), ops in prop::collection::vec(op(), 1..300)) {
            let mut wheel = Wheel::new(start);
            let mut model: BTreeMap<(u64, u64), ()> = BTreeMap::new();
            let mut keys: Vec<(TimerKey, u64)> = Vec::new();
            let mut now = start;
            let mut next_id = 1u64;
            for op in ops {
                match op {
                    Op::Insert(d) => {
                        // Deadlines may lie in the past too.
                        let deadline = (now + d).saturating_sub(30);
                        let k = wheel.insert(deadline, id(next_id));
                        model.insert((deadline, next_id), ());
                        keys.push((k, deadline));
                        next_id += 1;
                    }
                    Op::Cancel(i) if !keys.is_empty() => {
                        let (k, d) = keys[i % keys.len()];
                        let in_model = model.remove(&(d, k.id().get())).is_some();
                        prop_assert_eq!(wheel.cancel(k), in_model);
                    }
                    Op::Reschedule(i, d) if !keys.is_empty() => {
                        let j = i % keys.len();
                        let (k, old) = keys[j];
                        let deadline = now + d;
                        let pending = model.remove(&(old, k.id().get())).is_some();
                        prop_assert_eq!(wheel.reschedule(k, deadline), pending);
                        if pending {
                            model.insert((deadline, k.id().get()), ());
                            keys[j].1 = deadline;
                        }
                    }
                    Op::Advance(d) => {
                        now += d;
                        let mut got = Vec::new();
                        wheel.poll(now, &mut got);
                        let got: Vec<(u64, u64)> = got.iter().map(|e| (e.deadline, e.id.get())).collect();
                        let want: Vec<(u64, u64)> = model.range(..(now + 1, 0)).map(|(k, _)| *k).collect();
                        for k in &want {
                            model.remove(k);
                        }
                        prop_assert_eq!(got, want);
                    }
                    _ => {}
                }
                prop_assert_eq!(wheel.len(), model.len());
            }
        }
    }
}
