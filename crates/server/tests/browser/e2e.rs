//! The demo app in headless Chromium against the real server over `wss` (self-signed
//! certificate, fake camera): sign-in, lobby, match, a WebRTC call with frames flowing,
//! hang-up, invites, a restart survived by reconnect, a revoked session.
//! Screenshots of each step go to `target/e2e-artifacts/`.

use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::Duration;

use serde_json::{Value, json};

use crate::cdp::Page;
use crate::chromium::Chromium;
use crate::server::{API_KEY, RunningServer, Scheme, ServerSpec};

/// One browser at a time: two cores cannot run several video calls and servers at once
/// without the timing becoming the test.
static ONE_AT_A_TIME: LazyLock<tokio::sync::Mutex<()>> = LazyLock::new(|| tokio::sync::Mutex::new(()));

/// Test harness only (not the app): both pages run on this machine, so connectivity checks
/// are kept to loopback candidates instead of the machine's other addresses.
const LOOPBACK_ONLY_ICE: &str = r#"(() => {
  if (!window.RTCPeerConnection) return;
  const add = RTCPeerConnection.prototype.addIceCandidate;
  RTCPeerConnection.prototype.addIceCandidate = function (c, ...rest) {
    const text = (c && c.candidate) || "";
    if (text && !/ 127\.0\.0\.1 /.test(text)) return Promise.resolve();
    return add.call(this, c, ...rest);
  };
})();"#;

pub fn artifacts() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/e2e-artifacts")
}

pub struct Demo {
    pub chromium: Chromium,
    pub spec: ServerSpec,
    pub server: Option<RunningServer>,
}

impl Demo {
    /// Chromium plus a `wss` server with the demo on; `None` when Chromium is missing outside CI.
    pub async fn start() -> Option<Demo> {
        Self::start_with(&[]).await
    }

    /// [`Demo::start`] with extra server environment.
    pub async fn start_with(extra: &[(&str, &str)]) -> Option<Demo> {
        let chromium = Chromium::launch().await?;
        let mut spec = ServerSpec::new(Scheme::Https);
        spec.extra = extra.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let server = Some(spec.start().await);
        Some(Demo { chromium, spec, server })
    }

    /// A page signed in as a guest called `name`, in the lobby, connected.
    pub async fn guest(&self, name: &str) -> Page {
        let page = Page::open(&self.chromium.cdp, name, LOOPBACK_ONLY_ICE).await;
        page.goto(&format!("{}/", self.spec.origin())).await;
        page.wait_for("the sign-in form", "document.body.dataset.screen === 'signin'").await;
        page.fill("#signin-name", name).await;
        page.click("#signin-submit").await;
        self.in_lobby(&page).await;
        page
    }

    pub async fn in_lobby(&self, page: &Page) {
        page.wait_for(
            "the lobby, connected",
            "document.body.dataset.screen === 'lobby' && window.rendezvousDemo.client?.state === 'open' \
             && !!window.rendezvousDemo.client.view(window.rendezvousDemo.config.topic)?.ready",
        )
        .await;
    }
}

pub async fn user_id(page: &Page) -> String {
    page.wait_for("a user id", "window.rendezvousDemo.client?.userId").await.as_str().unwrap().to_owned()
}

/// Waits until `page`'s lobby list shows `user` in `state`.
pub async fn sees(page: &Page, user: &str, state: &str) {
    page.wait_for(
        &format!("{user} shown as {state}"),
        &format!("document.querySelector('#people [data-user=\"{user}\"]')?.dataset.state === '{state}'"),
    )
    .await;
}

pub async fn shot(page: &Page, name: &str) {
    page.screenshot(&artifacts().join(format!("{name}.png"))).await;
}

/// Waits for the page's call to be connected with video frames decoded; returns the count.
pub async fn frames_flowing(page: &Page) -> u64 {
    page.wait_for("a connected RTCPeerConnection", "window.rendezvousDemo.call?.pc.connectionState === 'connected'")
        .await;
    let frames = page
        .wait_for(
            "decoded video frames",
            "(async () => { const s = await window.rendezvousDemo.call.pc.getStats(); let n = 0; \
             s.forEach(r => { if (r.type === 'inbound-rtp' && r.kind === 'video') n += r.framesDecoded || 0; }); return n; })()",
        )
        .await;
    frames.as_u64().unwrap()
}

fn extensions_header(headers: &Value) -> Option<String> {
    headers
        .as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-extensions"))
        .map(|(_, v)| v.as_str().unwrap_or_default().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browsers_meet_in_a_video_call_that_a_third_sees() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(demo) = Demo::start().await else { return };
    let mut handshakes = demo.chromium.cdp.events();

    let ada = demo.guest("Ada").await;
    let ben = demo.guest("Ben").await;
    let cy = demo.guest("Cy").await;
    let (ada_id, ben_id) = (user_id(&ada).await, user_id(&ben).await);
    sees(&cy, &ada_id, "available").await;
    sees(&cy, &ben_id, "available").await;
    shot(&cy, "01-lobby").await;
    cy.viewport(390, 844, true).await;
    shot(&cy, "01-lobby-phone").await;

    // permessage-deflate was negotiated on Ada's connection.
    let mut deflate = None;
    while let Ok(e) = handshakes.try_recv() {
        if e.method == "Network.webSocketHandshakeResponseReceived" && e.session.as_deref() == Some(ada.session()) {
            deflate = extensions_header(&e.params["response"]["headers"]);
        }
    }
    let deflate = deflate.expect("no WebSocket handshake seen on Ada's page");
    assert!(deflate.contains("permessage-deflate"), "Sec-WebSocket-Extensions: {deflate}");

    ada.click("#queue-topic [data-topic='music']").await;
    ben.click("#queue-topic [data-topic='music']").await;
    ada.click("#queue-join").await;
    ada.wait_for("the waiting card", "!document.getElementById('match-waiting').hidden").await;
    sees(&cy, &ada_id, "in_queue").await;
    shot(&ada, "02-queued").await;
    ben.click("#queue-join").await;
    for p in [&ada, &ben] {
        p.wait_for("the proposal", "!document.getElementById('dialog').hidden").await;
    }
    shot(&ben, "03-proposal").await;
    ada.click("#dialog-accept").await;
    ben.click("#dialog-accept").await;

    let (fa, fb) = (frames_flowing(&ada).await, frames_flowing(&ben).await);
    assert!(fa > 0 && fb > 0);
    // The offer, answer and candidates went through the server's relay.
    let relayed = cy
        .eval("fetch('/metrics').then(r => r.text()).then(t => Number(/^rendezvous_signals_relayed_total (\\d+)/m.exec(t)[1]))")
        .await;
    assert!(relayed.as_u64().unwrap() >= 2, "signals relayed: {relayed}");
    sees(&cy, &ada_id, "in_call").await;
    sees(&cy, &ben_id, "in_call").await;
    shot(&ada, "04-call").await;
    ben.viewport(390, 844, true).await;
    shot(&ben, "04-call-phone").await;
    cy.viewport(1280, 800, false).await;
    shot(&cy, "05-lobby-sees-call").await;

    ada.click("#call-hangup").await;
    for p in [&ada, &ben] {
        p.wait_for("the after-call screen", "document.body.dataset.screen === 'after'").await;
    }
    sees(&cy, &ada_id, "available").await;
    sees(&cy, &ben_id, "available").await;
    ben.click("#after-report").await;
    ben.eval("document.getElementById('report-reason').value = 'spam'").await;
    ben.click("#report-send").await;
    ben.wait_for("the report confirmation", "document.getElementById('after-report').disabled").await;
    ben.click("#after-block").await;
    ben.wait_for("the block confirmation", "document.getElementById('after-block').disabled").await;
    shot(&ben, "06-after-call").await;
    // Blocked: they no longer see each other in the lobby.
    ben.click("#after-back").await;
    ben.wait_for("Ada gone from Ben's lobby", &format!("!document.querySelector('#people [data-user=\"{ada_id}\"]')"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invite_from_the_lobby_becomes_a_call_and_a_revoked_session_stays_signed_out() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(demo) = Demo::start().await else { return };
    let dee = demo.guest("Dee").await;
    let eli = demo.guest("Eli").await;
    let eli_id = user_id(&eli).await;
    sees(&dee, &eli_id, "available").await;
    dee.click(&format!("#people [data-user=\"{eli_id}\"] .invite")).await;
    eli.wait_for("the invite", "document.getElementById('dialog-eyebrow').textContent === 'Video call invite' && !document.getElementById('dialog').hidden").await;
    shot(&eli, "07-invite").await;
    eli.click("#dialog-accept").await;
    assert!(frames_flowing(&dee).await > 0);

    // Eli reloads mid-call: the page signs in again from its session, the server resumes
    // the call, both sides build a fresh connection through the relay and video flows again.
    dee.eval("window.firstPc = window.rendezvousDemo.call.pc; true").await;
    eli.reload().await;
    eli.wait_for("the call screen after the reload", "document.body.dataset.screen === 'call'").await;
    assert!(frames_flowing(&eli).await > 0);
    dee.wait_for("Dee's side rebuilt", "window.rendezvousDemo.call.pc !== window.firstPc").await;
    assert!(frames_flowing(&dee).await > 0);
    shot(&eli, "07b-call-after-reload").await;
    eli.click("#call-hangup").await;
    dee.wait_for("the after-call screen", "document.body.dataset.screen === 'after'").await;

    // The app backend revokes Eli's session: Eli's page says so and stays signed out.
    let session = eli.eval("window.rendezvousDemo.me.sessionId").await;
    let mut events = demo.chromium.cdp.events();
    let status = dee
        .eval(&format!(
            "fetch('/api/sessions/{}', {{ method: 'DELETE', headers: {{ authorization: 'Bearer {API_KEY}' }} }}).then(r => r.status)",
            session.as_str().unwrap()
        ))
        .await;
    assert_eq!(status, json!(204));
    eli.wait_for("the signed-out screen", "document.body.dataset.screen === 'stopped'").await;
    let text = eli.eval("document.getElementById('stopped-text').textContent").await;
    assert!(text.as_str().unwrap().contains("revoked"), "{text}");
    assert_eq!(eli.eval("window.rendezvousDemo.client.closeCode").await, json!(4001));
    shot(&eli, "08-revoked").await;
    // No new socket: the library stopped (state "closed", no timer). Three times its first
    // backoff step is long enough for an attempt to have shown up had one been scheduled.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut reopened = 0;
    while let Ok(e) = events.try_recv() {
        if e.method == "Network.webSocketCreated" && e.session.as_deref() == Some(eli.session()) {
            reopened += 1;
        }
    }
    assert_eq!(reopened, 0, "the page reconnected after 4001");
    assert_eq!(eli.eval("window.rendezvousDemo.client.state").await, json!("closed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lobby_comes_back_after_a_server_restart() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(mut demo) = Demo::start().await else { return };
    let fay = demo.guest("Fay").await;
    let gus = demo.guest("Gus").await;
    let (fay_id, gus_id) = (user_id(&fay).await, user_id(&gus).await);
    sees(&gus, &fay_id, "available").await;
    // Connection ids restart with the process, so the old welcome itself is kept to tell
    // a new session from the old one.
    fay.eval("window.welcomeBefore = window.rendezvousDemo.client.welcome; true").await;

    demo.server.take().unwrap().terminate().await;
    for p in [&fay, &gus] {
        p.wait_for("reconnecting", "window.rendezvousDemo.client.state === 'reconnecting'").await;
    }
    fay.wait_for("the restart banner", "!document.getElementById('banner').hidden").await;
    shot(&fay, "09-restarting").await;

    demo.server = Some(demo.spec.start().await);
    for p in [&fay, &gus] {
        demo.in_lobby(p).await;
    }
    let fresh = fay.eval("window.rendezvousDemo.client.welcome !== window.welcomeBefore").await;
    assert_eq!(fresh, json!(true), "no new welcome after the restart");
    // Fresh snapshots after the reconnect: each sees the other, available again.
    sees(&gus, &fay_id, "available").await;
    sees(&fay, &gus_id, "available").await;
    shot(&fay, "10-back").await;
}
