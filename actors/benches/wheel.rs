//! `cargo bench -p threadline-actors --bench wheel`: the timing wheel against
//! tokio_util's DelayQueue, in one run: insert and expire 1M and 10M timers
//! with deadlines spread over ~17 minutes, and the heap bytes each holds per
//! pending timer (measured by a counting allocator, so both are measured
//! the same way).

use std::alloc::{GlobalAlloc, Layout, System};
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use threadline_actors::wheel::Wheel;

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

/// Deterministic deadlines (ms offsets) spread over 2^20 ms.
fn offsets(n: usize) -> Vec<u64> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            1 + (x % (1 << 20))
        })
        .collect()
}

struct Row {
    name: &'static str,
    n: usize,
    insert_per_s: f64,
    expire_per_s: f64,
    bytes_per_timer: f64,
}

fn wheel(n: usize, offs: &[u64]) -> Row {
    let t0 = 1_800_000_000_000u64;
    let before = LIVE.load(Ordering::Relaxed);
    let mut w = Wheel::new(t0);
    let start = Instant::now();
    for (i, o) in offs.iter().enumerate() {
        w.insert(t0 + o, NonZeroU64::new(i as u64 + 1).unwrap());
    }
    let insert = start.elapsed();
    let bytes = (LIVE.load(Ordering::Relaxed) - before) as f64 / n as f64;
    let mut out = Vec::with_capacity(n);
    let start = Instant::now();
    // Expire in 1-second steps, as a scheduler would.
    let mut now = t0;
    while !w.is_empty() {
        now += 1000;
        w.poll(now, &mut out);
    }
    let expire = start.elapsed();
    assert_eq!(out.len(), n);
    assert!(out.windows(2).all(|p| p[0].deadline <= p[1].deadline));
    Row {
        name: "timing wheel",
        n,
        insert_per_s: n as f64 / insert.as_secs_f64(),
        expire_per_s: n as f64 / expire.as_secs_f64(),
        bytes_per_timer: bytes,
    }
}

fn delay_queue(n: usize, offs: &[u64]) -> Row {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let before = LIVE.load(Ordering::Relaxed);
        let mut q = tokio_util::time::DelayQueue::new();
        let start = Instant::now();
        for (i, o) in offs.iter().enumerate() {
            q.insert(i as u64, Duration::from_millis(*o));
        }
        let insert = start.elapsed();
        let bytes = (LIVE.load(Ordering::Relaxed) - before) as f64 / n as f64;
        let start = Instant::now();
        tokio::time::advance(Duration::from_millis((1 << 20) + 1000)).await;
        let mut got = 0;
        while let Some(_e) = q.next().await {
            got += 1;
        }
        let expire = start.elapsed();
        assert_eq!(got, n);
        Row {
            name: "DelayQueue",
            n,
            insert_per_s: n as f64 / insert.as_secs_f64(),
            expire_per_s: n as f64 / expire.as_secs_f64(),
            bytes_per_timer: bytes,
        }
    })
}

fn main() {
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return; // `cargo test --benches` smoke mode: nothing to list.
    }
    println!(
        "{:<14} {:>10} {:>16} {:>16} {:>14}",
        "structure", "timers", "insert/s", "expire/s", "bytes/timer"
    );
    for n in [1_000_000, 10_000_000] {
        let offs = offsets(n);
        for row in [wheel(n, &offs), delay_queue(n, &offs)] {
            println!(
                "{:<14} {:>10} {:>16.0} {:>16.0} {:>14.1}",
                row.name, row.n, row.insert_per_s, row.expire_per_s, row.bytes_per_timer
            );
        }
    }
}
