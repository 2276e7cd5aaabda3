//! Time from "join queue" to a connected call between two Chromium pages (BENCHMARKS.md).
//! `#[ignore]`d: run it on purpose with
//! `cargo test -p rendezvous --test browser bench -- --ignored --nocapture`.

use std::time::Instant;

use crate::e2e::{Demo, user_id};

const CALLS: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check: run on purpose"]
async fn join_queue_to_connected_call() {
    // The same two users meet again and again, so the 24 h pair cooldown is shortened.
    let Some(demo) = Demo::start_with(&[("RENDEZVOUS__MATCHMAKING__COOLDOWN_MS", "0")]).await else { return };
    let a = demo.guest("Ann").await;
    let b = demo.guest("Bob").await;
    let _ = (user_id(&a).await, user_id(&b).await);
    let mut times = Vec::with_capacity(CALLS);
    for i in 0..CALLS {
        for p in [&a, &b] {
            p.eval("document.body.dataset.screen === 'after' && document.getElementById('after-back').click()").await;
            p.wait_for("the lobby", "document.body.dataset.screen === 'lobby'").await;
        }
        let start = Instant::now();
        a.click("#queue-join").await;
        b.click("#queue-join").await;
        for p in [&a, &b] {
            p.wait_for("the proposal", "!document.getElementById('dialog').hidden").await;
            p.click("#dialog-accept").await;
        }
        for p in [&a, &b] {
            p.wait_for("connected", "window.rendezvousDemo.call?.pc.connectionState === 'connected'").await;
        }
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        println!("call {:2}: {ms:.0} ms", i + 1);
        times.push(ms);
        a.click("#call-hangup").await;
        for p in [&a, &b] {
            p.wait_for("the after-call screen", "document.body.dataset.screen === 'after'").await;
        }
    }
    times.sort_by(f64::total_cmp);
    let pct = |p: f64| times[((times.len() as f64 * p).ceil() as usize).clamp(1, times.len()) - 1];
    println!(
        "join queue -> connected call over {CALLS} calls: p50 {:.0} ms, p90 {:.0} ms, min {:.0} ms, max {:.0} ms",
        pct(0.5),
        pct(0.9),
        times[0],
        times[times.len() - 1]
    );
}
