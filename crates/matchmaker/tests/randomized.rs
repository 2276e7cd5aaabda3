//! Thousands of simulated users join, leave, accept, decline, invite, signal, hang up,
//! block, report and disconnect at random over three instances on one in-process bus,
//! in paused time; then the invariants are checked. The seed is printed; replay a
//! failure with `MATCHMAKER_SEED=<seed>` (`MATCHMAKER_SIM_USERS` / `_STEPS` resize it).

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rendezvous_matchmaker::{CallOrigin, MatchmakerConfig, UserStatus, now_ms};
use rendezvous_protocol::{
    CallBlock, CallHangup, CallReport, CallSignal, InviteAccept, InviteDecline, InviteSend, MatchAccept, MatchDecline,
    MatchJoin, MatchPrefs, ReportReason, SignalKind,
};
use serde_json::{Value, json};
use support::{Client, Cluster};

const INSTANCES: usize = 3;
const GENDERS: [&str; 3] = ["female", "male", "nonbinary"];
/// Error codes a random client may provoke; anything else (e.g. `internal`) fails the run.
const EXPECTED_ERRORS: &[&str] = &[
    "already_queued",
    "not_queued",
    "in_call",
    "no_such_proposal",
    "no_such_invite",
    "no_such_call",
    "user_unavailable",
    "banned",
    "not_a_peer",
    "rate_limited",
    "payload_too_large",
];

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// What one simulated user believes, from the frames it received since it connected.
#[derive(Default)]
struct View {
    proposal: Option<String>,
    call: Option<(String, String)>,
    invites: Vec<String>,
}

struct SimUser {
    id: String,
    gender: &'static str,
    prefs: MatchPrefs,
    banned: bool,
    client: Option<Client>,
    view: View,
    last_peer: Option<String>,
    back_at: Option<tokio::time::Instant>,
}

struct Proposed {
    at: i64,
    a: String,
    b: String,
}

struct Sim {
    rng: StdRng,
    cl: Cluster,
    users: Vec<SimUser>,
    index: HashMap<String, usize>,
    proposals: Vec<Proposed>,
    confirmed: HashSet<(String, String, String)>,
    violations: Vec<String>,
    signals_seen: u64,
    polite: bool,
}

fn prefs_hold(wanter: &MatchPrefs, other_gender: &str) -> bool {
    wanter.genders.as_ref().is_none_or(|g| g.iter().any(|g| g == other_gender))
}

impl Sim {
    fn connect(&mut self, i: usize) {
        let inst = self.rng.random_range(0..INSTANCES);
        let id = self.users[i].id.clone();
        let c = self.cl.client(inst, &id);
        let u = &mut self.users[i];
        u.client = Some(c);
        u.view = View::default();
        u.back_at = None;
    }

    fn disconnect(&mut self, i: usize, away_for: Duration) {
        let u = &mut self.users[i];
        if let Some(c) = u.client.take() {
            c.disconnect();
        }
        u.back_at = Some(tokio::time::Instant::now() + away_for);
    }

    /// Reads every user's frames, checks them, and answers some at random.
    fn react(&mut self) {
        for i in 0..self.users.len() {
            let Some(c) = self.users[i].client.as_mut() else { continue };
            let frames = c.drain();
            for f in frames {
                self.on_frame(i, f);
            }
        }
    }

    fn on_frame(&mut self, i: usize, f: Value) {
        let me = self.users[i].id.clone();
        let ty = f["type"].as_str().unwrap_or_default().to_owned();
        let str_of = |k: &str| f[k].as_str().unwrap_or_default().to_owned();
        match ty.as_str() {
            "match.proposed" => {
                let peer = f["peer"]["user_id"].as_str().unwrap_or_default().to_owned();
                let pid = str_of("proposal_id");
                let u = &self.users[i];
                if u.view.call.is_some() || u.view.proposal.as_ref().is_some_and(|p| *p != pid) {
                    self.violations
                        .push(format!("{me} proposed {pid} while in {:?}/{:?}", u.view.proposal, u.view.call));
                }
                self.proposals.push(Proposed { at: now_ms(), a: me.clone(), b: peer });
                self.users[i].view.proposal = Some(pid.clone());
                let roll = self.rng.random_range(0..100);
                let c = self.users[i].client.as_ref().unwrap();
                if self.polite || roll < 15 {
                    c.h.decline(&c.conn, None, MatchDecline { proposal_id: pid }).unwrap();
                } else if roll < 85 {
                    c.h.accept(&c.conn, None, MatchAccept { proposal_id: pid }).unwrap();
                }
            }
            "match.confirmed" | "call.resumed" => {
                let call = str_of("call_id");
                let peer = f["peer"]["user_id"].as_str().unwrap_or_default().to_owned();
                if ty == "match.confirmed" {
                    if let Some((other, _)) = &self.users[i].view.call {
                        self.violations.push(format!("{me} confirmed into {call} while in {other}"));
                    }
                    self.confirmed.insert((call.clone(), me.clone(), peer.clone()));
                }
                let u = &mut self.users[i];
                u.view.proposal = None;
                u.view.call = Some((call.clone(), peer.clone()));
                u.last_peer = Some(peer);
                if self.polite {
                    let c = u.client.as_ref().unwrap();
                    c.h.hangup(&c.conn, None, CallHangup { call_id: call }).unwrap();
                }
            }
            "match.cancelled" => {
                self.users[i].view.proposal = None;
                if self.polite && f["requeued"] == true {
                    let c = self.users[i].client.as_ref().unwrap();
                    c.h.leave(&c.conn, None).unwrap();
                }
            }
            "call.ended" => {
                let u = &mut self.users[i];
                if u.view.call.as_ref().is_some_and(|(c, _)| *c == str_of("call_id")) {
                    u.view.call = None;
                }
            }
            "invite.received" => {
                let id = str_of("invite_id");
                let roll = self.rng.random_range(0..100);
                let c = self.users[i].client.as_ref().unwrap();
                if self.polite || roll < 25 {
                    c.h.invite_decline(&c.conn, None, InviteDecline { invite_id: id }).unwrap();
                } else if roll < 75 {
                    c.h.invite_accept(&c.conn, None, InviteAccept { invite_id: id }).unwrap();
                } else {
                    self.users[i].view.invites.push(id);
                }
            }
            "call.signal" => self.signals_seen += 1,
            "error" => {
                let code = str_of("code");
                if !EXPECTED_ERRORS.contains(&code.as_str()) {
                    self.violations.push(format!("{me} got an unexpected error {f}"));
                }
            }
            _ => {}
        }
    }

    /// One random action by one random user.
    fn act(&mut self) {
        let i = self.rng.random_range(0..self.users.len());
        if self.users[i].client.is_none() {
            if self.users[i].back_at.is_none_or(|t| t <= tokio::time::Instant::now()) {
                self.connect(i);
            }
            return;
        }
        let roll = self.rng.random_range(0..100);
        let target = self.users[self.rng.random_range(0..self.users.len())].id.clone();
        let u = &self.users[i];
        let c = u.client.as_ref().unwrap();
        let call = u.view.call.as_ref().map(|(c, _)| c.clone()).unwrap_or_else(|| "call-x".into());
        let _ = match roll {
            0..30 => c.h.join(&c.conn, None, MatchJoin { prefs: u.prefs.clone() }),
            30..35 => c.h.leave(&c.conn, None),
            35..45 => c.h.invite(&c.conn, None, InviteSend { user_id: target }),
            45..60 => {
                let payload = json!({ "candidate": roll, "from": u.id });
                c.h.signal(&c.conn, None, CallSignal { call_id: call, kind: SignalKind::Ice, payload })
            }
            60..66 => c.h.hangup(&c.conn, None, CallHangup { call_id: call }),
            66..69 => c.h.block(&c.conn, None, CallBlock { user_id: u.last_peer.clone().unwrap_or(target) }),
            69..71 => {
                let report = CallReport {
                    user_id: u.last_peer.clone().unwrap_or(target),
                    reason: ReportReason::Spam,
                    text: None,
                };
                c.h.report(&c.conn, None, report)
            }
            71..74 => c.h.accept(&c.conn, None, MatchAccept { proposal_id: "bogus".into() }),
            74..76 => {
                let id = u.view.invites.first().cloned().unwrap_or_else(|| "bogus".into());
                c.h.invite_accept(&c.conn, None, InviteAccept { invite_id: id })
            }
            76..80 => {
                // Away for 0-6 s: sometimes within the 3 s grace, sometimes not.
                let away = Duration::from_millis(self.rng.random_range(0..6_000));
                self.disconnect(i, away);
                Ok(())
            }
            _ => Ok(()),
        };
    }
}

#[tokio::test(start_paused = true)]
async fn randomized_cluster_keeps_its_invariants() {
    let seed = env_or("MATCHMAKER_SEED", rand::random::<u32>() as u64);
    let n_users = env_or("MATCHMAKER_SIM_USERS", 2000) as usize;
    let steps = env_or("MATCHMAKER_SIM_STEPS", 600);
    println!("randomized matchmaker simulation: MATCHMAKER_SEED={seed} users={n_users} steps={steps}");
    let cooldown_ms = 20_000;
    let cfg = MatchmakerConfig {
        proposal_timeout_ms: 4_000,
        invite_timeout_ms: 4_000,
        cooldown_ms,
        reconnect_grace_ms: 3_000,
        match_interval_ms: 100,
        max_signal_bytes: 1024,
        invites_per_minute: 30,
        scan_limit: 400,
        ..MatchmakerConfig::default()
    };
    let cl = Cluster::new(INSTANCES, cfg).await;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut users = Vec::new();
    for n in 0..n_users {
        let gender = GENDERS[rng.random_range(0..GENDERS.len())];
        let genders = match rng.random_range(0..10) {
            0..5 => None,
            5..8 => Some(vec![GENDERS[rng.random_range(0..3)].to_owned()]),
            _ => Some(vec![GENDERS[rng.random_range(0..3)].to_owned(), GENDERS[rng.random_range(0..3)].to_owned()]),
        };
        let region = rng.random_bool(0.2).then(|| "eu".to_owned());
        let id = format!("u{n}");
        cl.dir.add_user(&id, gender);
        let banned = rng.random_bool(0.02);
        if banned {
            cl.dir.ban(&id);
        }
        let prefs = MatchPrefs { genders, region, topic: None };
        users.push(SimUser {
            id,
            gender,
            prefs,
            banned,
            client: None,
            view: View::default(),
            last_peer: None,
            back_at: None,
        });
    }
    let index = users.iter().enumerate().map(|(i, u)| (u.id.clone(), i)).collect();
    let mut sim = Sim {
        rng,
        cl,
        users,
        index,
        proposals: vec![],
        confirmed: HashSet::new(),
        violations: vec![],
        signals_seen: 0,
        polite: false,
    };
    let actions_per_step = (n_users / 20).max(5);
    for _ in 0..steps {
        for _ in 0..actions_per_step {
            sim.act();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        sim.react();
    }
    // Wind down: everyone still online declines, hangs up and leaves; the rest stay away.
    sim.polite = true;
    for i in 0..sim.users.len() {
        if let Some(c) = sim.users[i].client.as_ref() {
            let _ = c.h.leave(&c.conn, None);
            if let Some((call, _)) = &sim.users[i].view.call {
                let _ = c.h.hangup(&c.conn, None, CallHangup { call_id: call.clone() });
            }
        }
    }
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        sim.react();
    }
    check_nobody_stuck(&mut sim, "after the wind-down").await;
    for i in 0..sim.users.len() {
        sim.disconnect(i, Duration::ZERO);
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    sim.react();
    check_nobody_stuck(&mut sim, "after everyone left").await;
    check_history(&mut sim, cooldown_ms as i64);
    let stats: Vec<_> = sim.cl.handles.iter().map(|h| h.stats()).collect();
    let made: u64 = stats.iter().map(|s| s.proposals.made).sum();
    let calls: u64 = stats.iter().map(|s| s.calls_started).sum();
    let relayed: u64 = stats.iter().map(|s| s.signals_relayed).sum();
    println!("proposals {made}, calls {calls}, signals relayed {relayed}, seen {}", sim.signals_seen);
    assert!(made > 100 && calls > 50 && relayed > 50, "the simulation exercised too little: {stats:#?}");
    for s in &stats {
        assert_eq!((s.active_calls, s.proposals.pending, s.invites.pending), (0, 0, 0), "{s:#?}");
    }
    assert!(
        sim.violations.is_empty(),
        "seed {seed}: {} violations, first: {:#?}",
        sim.violations.len(),
        &sim.violations[..sim.violations.len().min(10)]
    );
}

async fn check_nobody_stuck(sim: &mut Sim, when: &str) {
    for (user, status) in sim.cl.queue.snapshot() {
        if status != UserStatus::Idle {
            sim.violations.push(format!("{when}: {user} is stuck in {status:?}"));
        }
    }
    let open = sim.cl.dir.calls().into_iter().filter(|c| c.end.is_none()).count();
    if open > 0 {
        sim.violations.push(format!("{when}: {open} calls never ended"));
    }
}

/// Call history against preferences, bans, overlaps, cooldowns and blocks.
fn check_history(sim: &mut Sim, cooldown_ms: i64) {
    let rows = sim.cl.dir.calls();
    let ids: HashSet<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    for (call, a, b) in &sim.confirmed {
        let row = rows.iter().find(|r| r.id == *call);
        match row {
            Some(r) if (r.a == *a && r.b == *b) || (r.a == *b && r.b == *a) => {}
            _ => sim.violations.push(format!("confirmed call {call} ({a}, {b}) has no matching history row")),
        }
    }
    let _ = ids;
    let user = |id: &str| &sim.users[sim.index[id]];
    let mut v = Vec::new();
    for p in &sim.proposals {
        let (a, b) = (user(&p.a), user(&p.b));
        if a.banned || b.banned {
            v.push(format!("banned user in a proposal: {} {}", p.a, p.b));
        }
        if !prefs_hold(&a.prefs, b.gender) || !prefs_hold(&b.prefs, a.gender) || a.prefs.region != b.prefs.region {
            v.push(format!("proposal {} - {} breaks preferences", p.a, p.b));
        }
        for r in &rows {
            let same = (r.a == p.a && r.b == p.b) || (r.a == p.b && r.b == p.a);
            if let (true, Some(end)) = (same, &r.end) {
                if end.ended_at_ms <= p.at && p.at - end.ended_at_ms < cooldown_ms {
                    v.push(format!("proposal {} - {} at {} inside the cooldown after {}", p.a, p.b, p.at, r.id));
                }
            }
        }
    }
    let blocks = sim.cl.dir.blocks();
    for r in &rows {
        let (a, b) = (user(&r.a), user(&r.b));
        if a.banned || b.banned {
            v.push(format!("banned user in call {}", r.id));
        }
        if r.origin == CallOrigin::Matched && (!prefs_hold(&a.prefs, b.gender) || !prefs_hold(&b.prefs, a.gender)) {
            v.push(format!("matched call {} breaks preferences", r.id));
        }
        for ((x, y), at) in &blocks {
            if ((*x == r.a && *y == r.b) || (*x == r.b && *y == r.a)) && r.started_at > *at {
                v.push(format!("call {} started after {x} blocked {y}", r.id));
            }
        }
        let end = r.end.as_ref().map_or(i64::MAX, |e| e.ended_at_ms);
        for o in &rows {
            if o.id == r.id {
                continue;
            }
            let shares = [&o.a, &o.b].iter().any(|u| **u == r.a || **u == r.b);
            if shares && o.started_at >= r.started_at && o.started_at < end && o.id > r.id {
                v.push(format!("calls {} and {} overlap for a user", r.id, o.id));
            }
            let same = (o.a == r.a && o.b == r.b) || (o.a == r.b && o.b == r.a);
            if same && r.origin == CallOrigin::Matched {
                if let Some(oe) = &o.end {
                    if oe.ended_at_ms <= r.started_at && r.started_at - oe.ended_at_ms < cooldown_ms {
                        v.push(format!("matched call {} inside the cooldown after {}", r.id, o.id));
                    }
                }
            }
        }
    }
    sim.violations.extend(v);
}
