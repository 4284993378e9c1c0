use super::*;

const T0: Timestamp = Timestamp(1_000_000);

fn agent(id: &str, skills: &[&str], chat: u32) -> AgentSpec {
    AgentSpec {
        id: id.into(),
        name: id.into(),
        tenants: vec!["acme".into()],
        skills: skills.iter().map(|s| s.to_string()).collect(),
        capacity: [chat, chat, chat, 1],
        phone: None,
    }
}

fn task(conv: u64, skills: &[&str], priority: i32, since: i64) -> Task {
    Task {
        conv,
        tenant: "acme".into(),
        lane: Lane::Chat,
        skills: skills.iter().map(|s| s.to_string()).collect(),
        priority,
        target: None,
        since: Timestamp(since),
    }
}

fn online(p: &mut Pool, spec: AgentSpec, now: Timestamp) {
    let id = spec.id.clone();
    p.upsert_agent(spec, now);
    p.set_connected(&id, true, now);
    p.set_presence(&id, Presence::Available, now).unwrap();
}

fn offers(e: &[Effect]) -> Vec<(String, u64)> {
    e.iter()
        .filter_map(|e| match e {
            Effect::Offer { agent, conv, .. } => Some((agent.clone(), *conv)),
            _ => None,
        })
        .collect()
}

fn offer_id(p: &Pool, agent: &str) -> u64 {
    p.open_offer(agent).expect("an open offer").0
}

#[test]
fn a_task_goes_to_an_available_agent_with_the_skills_and_room() {
    let mut p = Pool::new(30_000);
    online(&mut p, agent("en", &["en"], 2), T0);
    online(&mut p, agent("es", &["es"], 2), T0);
    let e = p.enqueue(task(1, &["es"], 0, 1), T0);
    assert_eq!(offers(&e), vec![("es".into(), 1)]);
    // Away agents get nothing; a task nobody can take waits, once told.
    p.set_presence("en", Presence::Away, T0).unwrap();
    let e = p.enqueue(task(2, &["en"], 0, 2), T0);
    assert_eq!(
        e,
        vec![Effect::Waiting {
            conv: 2,
            position: 1
        }]
    );
    let e = p.set_presence("en", Presence::Available, T0).unwrap();
    assert_eq!(offers(&e), vec![("en".into(), 2)]);
    // Another tenant's agent never sees acme's work.
    let mut other = agent("beta-only", &["en"], 5);
    other.tenants = vec!["beta".into()];
    online(&mut p, other, T0);
    let e = p.enqueue(task(3, &[], 0, 3), T0);
    assert!(offers(&e).iter().all(|(a, _)| a != "beta-only"), "{e:?}");
}

#[test]
fn capacity_per_lane_is_respected() {
    let mut p = Pool::new(30_000);
    let mut a = agent("a", &[], 1);
    a.phone = Some("+15550001234".into());
    online(&mut p, a, T0);
    p.enqueue(task(1, &[], 0, 1), T0);
    p.accept("a", offer_id(&p, "a"), T0).unwrap();
    let e = p.enqueue(task(2, &[], 0, 2), T0);
    assert!(offers(&e).is_empty(), "chat capacity 1 is used: {e:?}");
    // The voice lane has its own room.
    let mut v = task(3, &[], 0, 3);
    v.lane = Lane::Voice;
    let e = p.enqueue(v, T0);
    assert_eq!(offers(&e), vec![("a".into(), 3)]);
    p.reject("a", offer_id(&p, "a"), T0).unwrap();
    // Closing the chat frees the room for the waiting chat task.
    let e = p.release("a", 1, T0).unwrap();
    assert!(offers(&e).contains(&("a".into(), 2)), "{e:?}");
}

#[test]
fn higher_priority_then_older_tasks_go_first() {
    let mut p = Pool::new(30_000);
    p.enqueue(task(1, &[], 0, 10), T0);
    p.enqueue(task(2, &[], 5, 20), T0);
    p.enqueue(task(3, &[], 0, 5), T0);
    assert_eq!(p.position(2), 1);
    assert_eq!(p.position(3), 2);
    assert_eq!(p.position(1), 3);
    let mut order = Vec::new();
    online(&mut p, agent("a", &[], 1), T0);
    for _ in 0..3 {
        let (offer, conv) = p.open_offer("a").unwrap();
        order.push(conv);
        p.accept("a", offer, T0).unwrap();
        p.release("a", conv, T0).unwrap();
    }
    assert_eq!(order, vec![2, 3, 1]);
}

#[test]
fn an_expired_or_rejected_offer_moves_to_the_next_agent() {
    let mut p = Pool::new(30_000);
    online(&mut p, agent("a", &[], 2), T0);
    online(&mut p, agent("b", &[], 2), Timestamp(T0.0 + 1));
    online(&mut p, agent("c", &[], 2), Timestamp(T0.0 + 2));
    let e = p.enqueue(task(1, &[], 0, 1), T0);
    assert_eq!(offers(&e), vec![("a".into(), 1)], "longest idle first");
    assert_eq!(p.offer_expires(1), Some(Timestamp(T0.0 + 30_000)));
    // Its timer fires: it moves on. A second firing changes nothing.
    let e = p.expire_offer(1, Timestamp(T0.0 + 30_000));
    assert!(e.contains(&Effect::Rescind {
        offer: 1,
        agent: "a".into(),
        conv: 1
    }));
    assert_eq!(offers(&e), vec![("b".into(), 1)]);
    assert!(p.expire_offer(1, Timestamp(T0.0 + 30_001)).is_empty());
    assert_eq!(p.holder(1), None);
    // A rejection moves on at once, without a rescind to the rejecter.
    let now = Timestamp(T0.0 + 31_000);
    let e = p.reject("b", offer_id(&p, "b"), now).unwrap();
    assert_eq!(offers(&e), vec![("c".into(), 1)]);
    assert!(!e.iter().any(|x| matches!(x, Effect::Rescind { .. })));
    // When everyone declined, it goes round again, never straight back
    // to whoever declined last.
    let e = p.reject("c", offer_id(&p, "c"), now).unwrap();
    assert_eq!(offers(&e), vec![("a".into(), 1)]);
    assert_eq!(p.accept("b", 99, now), Err(PoolError::NoSuchOffer(99)));
    let e = p.accept("a", offer_id(&p, "a"), now).unwrap();
    assert_eq!(
        e[0],
        Effect::Assigned {
            agent: "a".into(),
            conv: 1
        }
    );
    assert_eq!(p.holder(1), Some("a"));
}

/// The line index agrees with the tasks, and places in line with a
/// count over every task, whatever happened.
fn check_line(p: &Pool) {
    let waiting: BTreeSet<QueueKey> = p
        .tasks
        .values()
        .filter(|t| t.offered.is_none())
        .map(|t| queue_key(&t.task))
        .collect();
    assert_eq!(p.line.all, waiting);
    for t in p.tasks.values() {
        let me = queue_key(&t.task);
        let brute = p
            .tasks
            .values()
            .filter(|o| o.task.tenant == t.task.tenant && queue_key(&o.task) <= me)
            .filter(|o| o.offered.is_none() || o.task.conv == t.task.conv)
            .count();
        assert_eq!(p.position(t.task.conv), brute, "task {}", t.task.conv);
    }
}

#[test]
fn the_line_stays_consistent_through_any_mix_of_events() {
    let mut p = Pool::new(30_000);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rand = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for i in 0..4 {
        p.upsert_agent(agent(&format!("a{i}"), &[], 2), T0);
    }
    for step in 0..1000u64 {
        let now = Timestamp(T0.0 + step as i64 * 1000);
        let a = format!("a{}", rand(4));
        match rand(8) {
            0..=2 => {
                let mut t = task(rand(200), &[], rand(3) as i32, now.0);
                t.tenant = ["acme", "beta"][rand(2) as usize].into();
                p.enqueue(t, now);
            }
            3 => {
                let on = rand(2) == 0;
                p.set_connected(&a, on, now);
                let _ = p.set_presence(&a, Presence::Available, now);
            }
            4 => {
                if let Some((o, _)) = p.open_offer(&a) {
                    let _ = p.reject(&a, o, now);
                }
            }
            5 => {
                if let Some((o, _)) = p.open_offer(&a) {
                    p.expire_offer(o, now);
                }
            }
            6 => {
                if let Some((o, conv)) = p.open_offer(&a) {
                    p.accept(&a, o, now).unwrap();
                    if rand(2) == 0 {
                        p.release(&a, conv, now).unwrap();
                    }
                }
            }
            _ => {
                p.requeue_all(&a, now);
            }
        }
        check_line(&p);
    }
}

#[test]
fn an_offer_restored_after_a_restart_keeps_its_agent_and_deadline() {
    let mut p = Pool::new(30_000);
    p.upsert_agent(agent("a", &[], 2), T0);
    online(&mut p, agent("b", &[], 2), T0);
    let due = Timestamp(T0.0 + 20_000);
    assert!(p.restore_offer("a", task(1, &[], 0, 1), 7, due));
    // Reserved for `a` (not connected yet): `b` is not offered it.
    assert_eq!(p.open_offer("a"), Some((7, 1)));
    assert_eq!(p.offer_expires(1), Some(due));
    assert!(offers(&p.enqueue(task(1, &[], 0, 1), T0)).is_empty());
    // A second restore of the same conversation or agent is refused.
    assert!(!p.restore_offer("a", task(2, &[], 0, 1), 8, due));
    assert!(!p.restore_offer("b", task(1, &[], 0, 1), 9, due));
    // New offers never reuse a restored id.
    let e = p.enqueue(task(3, &[], 0, 1), T0);
    assert_eq!(offers(&e), vec![("b".into(), 3)]);
    assert!(offer_id(&p, "b") > 7);
    // At the deadline it moves on to `b` once `b` is free.
    p.accept("b", offer_id(&p, "b"), T0).unwrap();
    let e = p.expire_offer(7, due);
    assert_eq!(offers(&e), vec![("b".into(), 1)]);
}

#[test]
fn work_is_spread_fairly_to_the_longest_idle() {
    let mut p = Pool::new(30_000);
    let names = ["a", "b", "c", "d"];
    for (i, n) in names.iter().enumerate() {
        online(&mut p, agent(n, &[], 100), Timestamp(T0.0 + i as i64));
    }
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for conv in 0..400u64 {
        let now = Timestamp(T0.0 + 10 + conv as i64);
        p.enqueue(task(conv, &[], 0, now.0), now);
        let holder = names
            .iter()
            .find(|n| p.open_offer(n).is_some_and(|(_, c)| c == conv))
            .unwrap();
        let offer = offer_id(&p, holder);
        p.accept(holder, offer, now).unwrap();
        // Each finishes at once: idle since now.
        p.release(holder, conv, now).unwrap();
        *count.entry(holder.to_string()).or_default() += 1;
    }
    assert!(count.values().all(|c| *c == 100), "{count:?}");
}

#[test]
fn a_disconnect_withdraws_offers_and_requeue_returns_held_work_first() {
    let mut p = Pool::new(30_000);
    online(&mut p, agent("a", &[], 2), T0);
    p.enqueue(task(1, &[], 0, 1), T0);
    p.accept("a", offer_id(&p, "a"), T0).unwrap();
    p.enqueue(task(2, &[], 0, 2), T0);
    assert!(p.open_offer("a").is_some());
    let e = p.set_connected("a", false, T0);
    assert!(matches!(e[0], Effect::Rescind { conv: 2, .. }), "{e:?}");
    assert_eq!(p.holding("a"), vec![1], "held through the grace period");
    p.enqueue(task(3, &[], 0, 3), T0);
    let e = p.requeue_all("a", T0);
    assert!(e.contains(&Effect::Released {
        agent: "a".into(),
        conv: 1
    }));
    assert_eq!(
        p.position(1),
        1,
        "the requeued conversation is first in line"
    );
    online(&mut p, agent("b", &[], 3), T0);
    assert_eq!(p.open_offer("b").map(|o| o.1), Some(1));
}

#[test]
fn calls_are_offered_only_to_agents_with_a_phone() {
    let mut p = Pool::new(30_000);
    online(&mut p, agent("no-phone", &[], 2), T0);
    assert!(!p.can_take_call("acme"));
    let mut with = agent("with-phone", &[], 2);
    with.phone = Some("+15550002222".into());
    online(&mut p, with, Timestamp(T0.0 + 1));
    assert!(p.can_take_call("acme"));
    assert!(!p.can_take_call("beta"));
    let call = Task {
        lane: Lane::Voice,
        ..task(9, &[], 0, 1)
    };
    let e = p.enqueue(call.clone(), T0);
    assert_eq!(
        offers(&e),
        vec![("with-phone".into(), 9)],
        "longest idle, but with a phone"
    );
    p.accept("with-phone", offer_id(&p, "with-phone"), T0)
        .unwrap();
    assert_eq!(
        p.agent("with-phone")
            .and_then(|a| a.phone.clone())
            .as_deref(),
        Some("+15550002222")
    );
    // Voice capacity 1 is used now.
    assert!(!p.can_take_call("acme"));
    let e = p.enqueue(Task { conv: 10, ..call }, T0);
    assert!(offers(&e).is_empty());
}

#[test]
fn transfers_go_to_the_named_agent_or_skill() {
    let mut p = Pool::new(30_000);
    online(&mut p, agent("a", &[], 2), T0);
    online(&mut p, agent("b", &["billing"], 2), Timestamp(T0.0 + 5));
    p.enqueue(task(1, &[], 0, 1), T0);
    p.accept("a", offer_id(&p, "a"), T0).unwrap();
    let e = p
        .transfer("a", 1, None, vec!["billing".into()], 0, T0)
        .unwrap();
    assert_eq!(offers(&e), vec![("b".into(), 1)]);
    p.accept("b", offer_id(&p, "b"), T0).unwrap();
    let e = p.transfer("b", 1, Some("a".into()), vec![], 0, T0).unwrap();
    assert_eq!(offers(&e), vec![("a".into(), 1)]);
    assert_eq!(
        p.transfer("a", 1, None, vec![], 0, T0),
        Err(PoolError::NotHolding)
    );
    assert_eq!(
        p.transfer("b", 7, None, vec![], 0, T0),
        Err(PoolError::NotHolding)
    );
}
