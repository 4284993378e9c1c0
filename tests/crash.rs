//! Crash test: the load tester (`threadline-loadtest crash`, here as a
//! library) runs customers and the business against the node binary and
//! SIGKILLs the node at random moments, many times, restarting it on the
//! same data each time. It passes only if every acknowledged inbound
//! message is stored once and in order, every message the gate decided to
//! send reached the provider exactly once, every acknowledged timer fired
//! once, and the audit chain verifies.
//!
//! `THREADLINE_CRASH_KILLS=500 cargo test --release --test crash` runs it
//! long (or `threadline-loadtest crash --kills 500`); CI runs 50 kills.

use threadline_loadtest::crash::{run, CrashArgs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_sigkills_under_load_lose_nothing_acknowledged_and_send_nothing_twice() {
    let kills: usize = std::env::var("THREADLINE_CRASH_KILLS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(50);
    let report = run(CrashArgs {
        node: env!("CARGO_BIN_EXE_threadline").into(),
        kills,
        customers: 6,
        min_gap_ms: 50,
        max_gap_ms: 300,
        seed: None,
        json: None,
    })
    .await
    .expect("the crash run ran");
    print!("{}", report.text());
    assert!(report.passed(), "{:#?}", report.failures);
    // The kills cut requests off: the customers had to send again.
    assert!(report.retries > 0, "{report:?}");
    // The load made every kind of promise that the checks hold it to.
    assert!(report.texts >= 3 * 6, "{report:?}");
    assert!(report.decided > 0, "{report:?}");
    assert!(report.timers > 0, "{report:?}");
    assert!(report.audit_records > 0, "{report:?}");
}
