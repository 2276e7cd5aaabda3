use super::*;

fn entry(user: &str, gender: &str, joined: i64) -> QueueEntry {
    QueueEntry {
        profile: PublicProfile {
            user_id: user.into(),
            display_name: user.into(),
            gender: gender.into(),
            selfie_url: None,
            video_url: None,
            bio: String::new(),
        },
        prefs: MatchPrefs::default(),
        blocked: vec![],
        cooldowns: vec![],
        joined_at_ms: joined,
    }
}

fn eng(id: &str) -> Engagement {
    Engagement { id: id.into(), kind: EngagementKind::Proposal, coordinator: "i1".into() }
}

fn block_on<T>(f: BoxFuture<'_, Result<T, QueueError>>) -> T {
    // Every in-process future is ready on its first poll.
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut f = f;
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(r) => r.unwrap(),
        std::task::Poll::Pending => panic!("in-process queue futures are always ready"),
    }
}

#[test]
fn preferences_must_hold_both_ways() {
    let mut a = entry("a", "female", 0);
    let b = entry("b", "male", 0);
    assert!(a.compatible(&b));
    a.prefs.genders = Some(vec!["female".into()]);
    assert!(!a.compatible(&b), "a wants women only");
    assert!(!b.compatible(&a), "symmetric");
    a.prefs.genders = Some(vec!["male".into(), "female".into()]);
    assert!(a.compatible(&b));
    let mut b2 = b.clone();
    b2.prefs.region = Some("eu".into());
    assert!(!a.compatible(&b2), "regions must agree");
    a.prefs.region = Some("eu".into());
    assert!(a.compatible(&b2));
    a.prefs.topic = Some("music".into());
    assert!(!a.compatible(&b2), "topics must agree");
    let mut c = entry("c", "male", 0);
    c.blocked = vec!["a".into()];
    let a0 = entry("a", "female", 0);
    assert!(!a0.compatible(&c) && !c.compatible(&a0), "a block works from either side");
    assert!(!a0.compatible(&a0.clone()), "never oneself");
}

#[test]
fn a_loaded_cooldown_keeps_a_pair_apart_until_it_ends() {
    let mut a = entry("a", "female", 0);
    let b = entry("b", "male", 0);
    a.cooldowns = vec![("b".into(), 100)];
    assert!(a.cooling_with(&b, 99) && b.cooling_with(&a, 99), "from either side");
    assert!(!a.cooling_with(&b, 100), "over at its end");
    assert!(!a.cooling_with(&entry("c", "male", 0), 0), "only with that user");
    assert!(a.compatible(&b), "a cooldown is not a block");
}

#[test]
fn claims_are_exclusive_and_need_both_queued() {
    let q = InProcessQueue::new();
    for (u, t) in [("a", 1), ("b", 2), ("c", 3)] {
        assert_eq!(block_on(q.enqueue(entry(u, "male", t))), JoinOutcome::Queued);
    }
    assert_eq!(block_on(q.enqueue(entry("a", "male", 9))), JoinOutcome::AlreadyQueued);
    assert!(block_on(q.claim("a", "b", eng("p1"), 0)));
    assert!(!block_on(q.claim("a", "c", eng("p2"), 0)), "a is taken");
    assert!(!block_on(q.claim("c", "c", eng("p3"), 0)), "never with oneself");
    assert_eq!(block_on(q.status("a")), UserStatus::Engaged(eng("p1")));
    assert_eq!(block_on(q.enqueue(entry("a", "male", 9))), JoinOutcome::Engaged(eng("p1")));
    assert_eq!(block_on(q.len()), 1);
    assert!(!block_on(q.release("a", "p2")), "wrong id");
    assert!(block_on(q.release("a", "p1")));
    assert_eq!(block_on(q.status("a")), UserStatus::Idle);
}

#[test]
fn waiting_is_oldest_first_and_requeue_goes_to_the_front() {
    let q = InProcessQueue::new();
    for (u, t) in [("c", 30), ("a", 10), ("b", 20), ("d", 40)] {
        block_on(q.enqueue(entry(u, "male", t)));
    }
    let order = |q: &InProcessQueue| block_on(q.waiting(10)).iter().map(|e| e.user_id().to_owned()).collect::<Vec<_>>();
    assert_eq!(order(&q), ["a", "b", "c", "d"]);
    assert!(block_on(q.claim("c", "d", eng("p"), 0)));
    assert!(block_on(q.requeue_front(Arc::new(entry("d", "male", 40)), "p")));
    assert_eq!(order(&q), ["d", "a", "b"]);
    assert!(!block_on(q.requeue_front(Arc::new(entry("c", "male", 30)), "other")), "only from its engagement");
    assert_eq!(block_on(q.waiting(2)).len(), 2, "limit holds");
    assert!(block_on(q.leave("a")));
    assert!(!block_on(q.leave("a")));
}

#[test]
fn bans_stop_claims_until_they_expire_and_blocks_stop_invites() {
    let q = InProcessQueue::new();
    block_on(q.enqueue(entry("a", "male", 1)));
    block_on(q.enqueue(entry("b", "male", 2)));
    block_on(q.ban_pair("b", "a", PairBan { until_ms: 100, blocked: false }));
    assert!(!block_on(q.claim("a", "b", eng("p"), 99)), "in cooldown");
    assert!(block_on(q.engage_pair("a", "b", eng("i"), 99)), "invites ignore cooldowns");
    block_on(q.release("a", "i"));
    block_on(q.release("b", "i"));
    block_on(q.ban_pair("a", "b", PairBan { until_ms: 50, blocked: true }));
    assert_eq!(block_on(q.pair_ban("a", "b", 99)), Some(PairBan { until_ms: 100, blocked: true }), "merged");
    assert!(!block_on(q.engage_pair("a", "b", eng("i2"), 99)), "blocked");
    assert_eq!(block_on(q.pair_ban("a", "b", 100)), None, "expired");
    block_on(q.enqueue(entry("a", "male", 1)));
    block_on(q.enqueue(entry("b", "male", 2)));
    assert!(block_on(q.claim("a", "b", eng("p"), 100)));
}

#[test]
fn leaving_never_frees_an_engaged_user() {
    // Found by the randomized test: `leave` of a user in a call used to drop the call's
    // engagement, so the user could be matched into a second call.
    let q = InProcessQueue::new();
    block_on(q.enqueue(entry("a", "male", 1)));
    block_on(q.enqueue(entry("b", "male", 2)));
    assert!(block_on(q.claim("a", "b", eng("p"), 0)));
    assert!(!block_on(q.leave("a")));
    assert_eq!(block_on(q.status("a")), UserStatus::Engaged(eng("p")));
    assert_eq!(block_on(q.enqueue(entry("a", "male", 3))), JoinOutcome::Engaged(eng("p")));
}

#[test]
fn engage_pair_refuses_engaged_users_and_rebind_moves_them() {
    let q = InProcessQueue::new();
    block_on(q.enqueue(entry("a", "male", 1)));
    assert!(block_on(q.engage_pair("a", "b", eng("i"), 0)), "queued and idle users may be engaged");
    assert_eq!(block_on(q.len()), 0);
    assert!(!block_on(q.engage_pair("b", "c", eng("j"), 0)));
    let call = Engagement { id: "c1".into(), kind: EngagementKind::Call, coordinator: "i1".into() };
    assert!(block_on(q.rebind("a", "i", call.clone())));
    assert!(!block_on(q.rebind("a", "i", call.clone())), "already moved");
    assert_eq!(block_on(q.status("a")), UserStatus::Engaged(call));
}
