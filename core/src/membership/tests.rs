//! Pauses, partitions, joins and departures, simulated by choosing what
//! each node hears and when.

use super::*;

const FAIL: Millis = 2_000;

fn node(name: &str, first: bool) -> Membership {
    Membership::new(MembershipConfig {
        name: name.into(),
        failure_after: FAIL,
        first_node: first,
    })
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// `m` hears `from`, which counts `live` live.
fn hears(m: &mut Membership, from: &str, live: &[&str], now: Millis) -> bool {
    m.on_answer(
        Answer {
            name: from.into(),
            leaving: false,
            live: names(live),
        },
        now,
    )
}

/// Heartbeat ticks every 300 ms from `from` to `to` (a node that ticks
/// less often than its failure time takes itself for paused); the last
/// tick's findings, with every peer stopped or resumed on the way.
fn ticks(m: &mut Membership, from: Millis, to: Millis) -> Tick {
    let (mut stopped, mut resumed) = (Vec::new(), Vec::new());
    let mut t = from;
    loop {
        let mut tick = m.on_tick(t);
        stopped.append(&mut tick.stopped);
        resumed.append(&mut tick.resumed);
        if t >= to {
            tick.stopped = stopped;
            tick.resumed = resumed;
            return tick;
        }
        t = (t + 300).min(to);
    }
}

/// n1 of a settled three-node cluster at time `t`.
fn three_at(t: Millis) -> Membership {
    let mut m = node("n1", true);
    m.session_opened("s2", "n2", "10.0.0.2:7400", 0);
    m.session_opened("s3", "n3", "10.0.0.3:7400", 0);
    hears(&mut m, "n2", &["n1", "n2", "n3"], 100);
    hears(&mut m, "n3", &["n1", "n2", "n3"], 100);
    let tick = m.on_tick(t);
    assert_eq!(tick.live, names(&["n1", "n2", "n3"]));
    assert!(tick.changed);
    m.settle(tick.live);
    m
}

#[test]
fn a_settled_cluster_serves_and_takes_writes() {
    let mut m = three_at(300);
    assert!(m.serving(300));
    assert!(m.ready(300, 2));
    hears(&mut m, "n2", &["n1", "n2", "n3"], 400);
    hears(&mut m, "n3", &["n1", "n2", "n3"], 400);
    let tick = m.on_tick(600);
    assert!(!tick.changed, "nothing changed: {tick:?}");
    assert_eq!(m.known(), names(&["n1", "n2", "n3"]));
}

#[test]
fn a_paused_node_judges_its_peers_afresh_instead_of_declaring_them_gone() {
    let mut m = three_at(300);
    // SIGSTOP for 6 s: the next tick comes 6 s after the last.
    let tick = m.on_tick(6_300);
    assert_eq!(tick.paused, Some(6_000));
    assert!(tick.stopped.is_empty(), "{tick:?}");
    assert_eq!(tick.live, names(&["n1", "n2", "n3"]));
    assert!(!tick.changed);
    // Peers that stay silent after the pause do go, a failure time later.
    let tick = ticks(&mut m, 6_600, 6_300 + FAIL + 100);
    assert_eq!(tick.stopped, names(&["n2", "n3"]));
    assert_eq!(tick.live, names(&["n1"]));
    assert!(tick.changed);
}

#[test]
fn a_cut_between_two_nodes_takes_nothing_over_while_the_third_still_sees_both() {
    let mut m = three_at(300);
    // n1 no longer hears n3; n2 does, and says so.
    for t in (500..=3_000).step_by(300) {
        hears(&mut m, "n2", &["n1", "n2", "n3"], t);
        m.on_tick(t);
    }
    let live = m.live();
    assert_eq!(live, names(&["n1", "n2"]));
    assert!(m.known_gone("n3", &live, 3_000), "n1 alone thinks n3 gone");
    assert!(
        !m.gone_for_a_majority("n3", &live, 3_000),
        "n2 still counts n3 live: no take-over"
    );
    // Once n2 loses n3 too, n3 is gone for a majority.
    hears(&mut m, "n2", &["n1", "n2"], 3_300);
    assert!(m.gone_for_a_majority("n3", &live, 3_300));
    // Still a majority of three: writes go on.
    assert!(m.has_majority(&live));
    assert!(m.ready(3_300, 2));
}

#[test]
fn an_isolated_node_takes_no_writes_and_takes_nothing_over() {
    let mut m = three_at(300);
    let tick = ticks(&mut m, 600, 300 + FAIL + 100);
    assert_eq!(tick.live, names(&["n1"]));
    assert!(!m.has_majority(&tick.live));
    assert!(!m.ready(3_000, 2), "cut off from both: not ready");
    assert!(!m.gone_for_a_majority("n2", &tick.live, 3_000));
    // Healed: both answer again and it serves again.
    hears(&mut m, "n2", &["n1", "n2", "n3"], 3_100);
    hears(&mut m, "n3", &["n1", "n2", "n3"], 3_100);
    let tick = m.on_tick(3_200);
    assert_eq!(tick.resumed, names(&["n2", "n3"]));
    assert_eq!(tick.live, names(&["n1", "n2", "n3"]));
    assert!(m.ready(3_200, 2));
}

#[test]
fn a_joining_node_settles_only_once_it_hears_everyone_its_peers_vouch_for() {
    let mut m = node("n4", false);
    assert!(!m.serving(0));
    m.session_opened("s1", "n1", "10.0.0.1:7400", 0);
    assert!(hears(&mut m, "n1", &["n1", "n2", "n3"], 100), "settle now");
    let tick = m.on_tick(300);
    assert!(tick.joining, "n2 and n3 have not answered yet");
    assert!(!m.serving(300));
    m.session_opened("s2", "n2", "10.0.0.2:7400", 350);
    m.session_opened("s3", "n3", "10.0.0.3:7400", 350);
    hears(&mut m, "n2", &["n1", "n2", "n3"], 400);
    hears(&mut m, "n3", &["n1", "n2", "n3", "n4"], 400);
    let tick = m.on_tick(600);
    assert!(!tick.joining);
    assert_eq!(tick.live, names(&["n1", "n2", "n3", "n4"]));
    m.settle(tick.live);
    assert!(m.serving(600));
}

#[test]
fn a_joining_node_stops_waiting_a_failure_time_after_the_first_answer() {
    let mut m = node("n4", false);
    m.session_opened("s1", "n1", "10.0.0.1:7400", 0);
    hears(&mut m, "n1", &["n1", "n2"], 100);
    assert!(m.on_tick(300).joining, "n2 never answers");
    for t in (600..=FAIL).step_by(300) {
        hears(&mut m, "n1", &["n1", "n2"], t);
        m.on_tick(t);
    }
    hears(&mut m, "n1", &["n1", "n2"], FAIL + 150);
    let tick = m.on_tick(FAIL + 200);
    assert!(!tick.joining);
    assert_eq!(tick.live, names(&["n1", "n4"]));
}

#[test]
fn a_node_with_seeds_nobody_answers_goes_on_alone() {
    let mut m = node("n1", false);
    assert!(m.on_tick(1_000).joining);
    assert!(!m.serving(1_000));
    let tick = m.on_tick(2 * FAIL + 1);
    assert!(!tick.joining);
    assert!(m.serving(2 * FAIL + 1));
    assert_eq!(tick.live, names(&["n1"]));
}

#[test]
fn a_leaving_peer_hands_over_itself_and_is_taken_over_only_once_gone() {
    let mut m = three_at(300);
    m.on_answer(
        Answer {
            name: "n3".into(),
            leaving: true,
            live: names(&["n1", "n2", "n3"]),
        },
        400,
    );
    hears(&mut m, "n2", &["n1", "n2"], 400);
    let tick = m.on_tick(600);
    assert_eq!(tick.live, names(&["n1", "n2"]));
    assert!(
        !m.gone_for_a_majority("n3", &tick.live, 600),
        "a leaving node is not taken over while it hands over"
    );
    // Its session closes: gone for good.
    assert_eq!(m.session_closed("s3").map(|s| s.name), Some("n3".into()));
    assert!(m.gone_for_a_majority("n3", &tick.live, 700));
    assert!(m.on_tick(900).changed, "a closed session is a change");
}

#[test]
fn a_forgotten_node_no_longer_counts_towards_the_majority() {
    let mut m = three_at(300);
    let live = ticks(&mut m, 600, 300 + FAIL + 100).live;
    assert_eq!(live, names(&["n1"]));
    assert!(!m.has_majority(&live));
    assert_eq!(m.forget("n1"), Err(ForgetError::Live("n1".into())));
    assert_eq!(m.forget("n9"), Err(ForgetError::Unknown("n9".into())));
    m.forget("n3").unwrap();
    m.forget("n2").unwrap();
    assert!(m.has_majority(&live));
    assert_eq!(m.known(), names(&["n1"]));
}

#[test]
fn a_node_that_left_does_not_count_itself() {
    let mut m = three_at(300);
    m.leave();
    assert_eq!(m.live(), names(&["n2", "n3"]));
}
