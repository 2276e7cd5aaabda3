// The Rendezvous demo app: guest sign-in, a live lobby, the queue, invites and a WebRTC
// call, all through the client library the server serves.
import { RendezvousClient, RendezvousError, describeError, guestSignIn } from "/client/rendezvous.js";

const $ = (id) => document.getElementById(id);
const SESSION_KEY = "rendezvous.demo.session";
const TOPIC_NAMES = { "": "anything", music: "music", travel: "travel", food: "food", tech: "tech" };
const STATE_WORDS = { available: "Available", online: "Online", in_queue: "In queue", in_call: "In a call", away: "Away" };
const AVATAR_COLORS = ["#7c4dff", "#ff4d8d", "#19a974", "#f5a524", "#2f80ed", "#e5484d", "#00a3a3", "#9b51e0"];

/** Everything the page knows; `window.rendezvousDemo` exposes it to tests and the console. */
const app = {
  config: { topic: "lobby", guest_sign_in: true },
  client: null,
  me: null,
  call: null,
  localStream: null,
  lastPeer: null,
  dialog: null,
  pendingInvites: new Map(),
  topic: "",
};
window.rendezvousDemo = app;

// --- small view helpers ------------------------------------------------------------------

function show(screen) {
  for (const s of document.querySelectorAll(".screen")) s.hidden = s.id !== `screen-${screen}`;
  document.body.dataset.screen = screen;
}

function toast(text, kind = "info", ms = 4500) {
  const el = document.createElement("div");
  el.className = "toast";
  el.dataset.kind = kind;
  el.textContent = text;
  $("toasts").append(el);
  setTimeout(() => el.remove(), ms);
}

function banner(text, kind = "warn") {
  const el = $("banner");
  el.hidden = !text;
  el.textContent = text ?? "";
  el.dataset.kind = kind;
}

function hashColor(s) {
  let h = 0;
  for (const c of s) h = (h * 31 + c.codePointAt(0)) >>> 0;
  return AVATAR_COLORS[h % AVATAR_COLORS.length];
}

function paintAvatar(el, name, id, selfie) {
  el.textContent = selfie ? "" : (name || "?").trim().charAt(0).toUpperCase();
  el.style.backgroundColor = hashColor(id || name || "?");
  el.style.backgroundImage = selfie ? `url("${encodeURI(selfie)}")` : "";
}

function explain(err) {
  if (err instanceof RendezvousError) return err.code === "closed" || err.code === "not_connected" ? "You are offline right now; this will work once you are back." : describeError(err.code);
  return err?.message ?? String(err);
}

// --- sign in -----------------------------------------------------------------------------

async function loadConfig() {
  try {
    const res = await fetch("/demo/config.json", { cache: "no-store" });
    if (res.ok) app.config = await res.json();
  } catch {
    // Defaults are fine; sign-in explains itself if the server refuses.
  }
}

function savedSession() {
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromHash) return { token: fromHash, name: "" };
  try {
    return JSON.parse(sessionStorage.getItem(SESSION_KEY) ?? "null");
  } catch {
    return null;
  }
}

async function signIn(event) {
  event.preventDefault();
  const name = $("signin-name").value.trim();
  const err = $("signin-error");
  err.hidden = true;
  if (!name) return;
  $("signin-submit").disabled = true;
  try {
    const guest = await guestSignIn(location.origin, name);
    const session = { token: guest.token, name: guest.user.display_name, userId: guest.user.id, sessionId: guest.session.id };
    sessionStorage.setItem(SESSION_KEY, JSON.stringify(session));
    await start(session);
  } catch (e) {
    err.textContent =
      e.code === "not_found"
        ? "Guest sign-in is turned off on this server. Ask the app for a sign-in link."
        : e.code === "too_many_requests"
          ? "Too many sign-ins from your network. Wait a minute and try again."
          : e.code === "invalid"
            ? "That name cannot be used: use 1 to 64 letters, without special control characters."
            : `Could not sign in: ${e.message}`;
    err.hidden = false;
  } finally {
    $("signin-submit").disabled = false;
  }
}

function signOut() {
  sessionStorage.removeItem(SESSION_KEY);
  app.client?.close();
  app.client = null;
  location.hash = "";
  $("me").hidden = true;
  banner(null);
  show("signin");
}

// --- connection --------------------------------------------------------------------------

async function start(session) {
  app.me = session;
  $("me").hidden = false;
  $("me-name").textContent = session.name || "You";
  paintAvatar($("me-avatar"), session.name || "You", session.userId ?? "me");
  const client = new RendezvousClient({ baseUrl: location.origin, token: session.token });
  app.client = client;
  wire(client);
  show("lobby");
  renderMatch();
  try {
    await client.connect();
  } catch {
    return; // "closed" already explained it
  }
}

function wire(client) {
  const conn = $("conn");
  client.on("state", ({ state }) => {
    conn.dataset.state = state;
    conn.textContent = { connecting: "Connecting", open: "Online", reconnecting: "Reconnecting", closed: "Offline" }[state] ?? state;
    if (state === "open") banner(null);
  });
  client.on("welcome", async (w) => {
    app.me.userId = w.user_id;
    paintAvatar($("me-avatar"), app.me.name || "You", w.user_id);
    // After a reconnect the library resubscribes and re-sends the state itself.
    if (client.view(app.config.topic)) return;
    try {
      await client.subscribe(app.config.topic);
      await client.setPresence({ state: "available" });
    } catch (e) {
      toast(explain(e), "bad");
    }
  });
  client.on("server.draining", () => banner("The server is restarting. You will be reconnected in a moment."));
  client.on("disconnected", (e) => banner(`${e.description} (next try in ${Math.max(1, Math.round(e.delayMs / 1000))} s)`));
  client.on("reconnected", () => toast("Reconnected."));
  client.on("closed", (e) => {
    if (client !== app.client || e.code === 1000) return;
    endCallUi();
    closeDialog();
    const titles = { 4001: "You were signed out", 4009: "Too many tabs", 4010: "Opened somewhere else" };
    $("stopped-title").textContent = titles[e.code] ?? "Disconnected";
    $("stopped-text").textContent = e.description;
    if (e.code === 4001) sessionStorage.removeItem(SESSION_KEY);
    banner(null);
    show("stopped");
  });
  client.on("error", (e) => toast(explain(e), "bad"));
  client.on("presence", renderPeople);
  for (const t of ["match.queued", "match.left"]) client.on(t, renderMatch);
  client.on("match.proposed", onProposed);
  client.on("match.cancelled", onCancelled);
  client.on("match.confirmed", onConfirmed);
  client.on("call.resumed", onConfirmed);
  client.on("invite.received", onInviteReceived);
  client.on("invite.sent", (m) => {
    app.pendingInvites.set(m.user_id, m.invite_id);
    renderPeople();
  });
  for (const t of ["invite.declined", "invite.expired", "invite.cancelled", "invite.accepted"]) {
    client.on(t, (m) => {
      for (const [user, id] of app.pendingInvites) if (id === m.invite_id) app.pendingInvites.delete(user);
      if (app.dialog?.invite_id === m.invite_id && t !== "invite.accepted") closeDialog();
      if (t === "invite.declined") toast(m.reason === "unavailable" ? "They are not available right now." : "They said not now.");
      if (t === "invite.expired") toast("The invite expired.");
      renderPeople();
    });
  }
}

// --- lobby -------------------------------------------------------------------------------

function renderPeople() {
  const view = app.client?.view(app.config.topic);
  const list = $("people");
  if (!view) return;
  const entries = view.list();
  $("lobby-count").textContent = String(view.count);
  $("people-empty").hidden = entries.some((e) => e.id !== app.me?.userId);
  const rows = entries.map((e) => {
    const li = document.createElement("li");
    li.className = "person";
    li.dataset.user = e.id;
    li.dataset.state = e.state;
    if (e.id === app.me?.userId) li.classList.add("me-row");
    const avatar = document.createElement("span");
    avatar.className = "avatar";
    paintAvatar(avatar, e.display_name, e.id, e.selfie_url);
    const who = document.createElement("div");
    who.className = "who";
    const name = document.createElement("div");
    name.className = "name";
    name.textContent = e.display_name;
    who.append(name);
    if (e.status) {
      const status = document.createElement("div");
      status.className = "status";
      status.textContent = e.status;
      who.append(status);
    }
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.dataset.state = e.state;
    badge.textContent = STATE_WORDS[e.state] ?? e.state;
    li.append(avatar, who, badge);
    if (e.id !== app.me?.userId) {
      const pending = app.pendingInvites.get(e.id);
      const btn = document.createElement("button");
      btn.type = "button";
      btn.className = pending ? "secondary invite" : "primary invite";
      btn.textContent = pending ? "Cancel" : "Invite";
      btn.disabled = !pending && (e.state === "in_call" || e.state === "away" || !!app.call);
      btn.addEventListener("click", () => (pending ? cancelInvite(pending) : invite(e)));
      li.append(btn);
    }
    return li;
  });
  list.replaceChildren(...rows);
}

async function invite(entry) {
  try {
    await app.client.invite(entry.id);
    toast(`Invited ${entry.display_name}. Waiting for an answer…`);
  } catch (e) {
    toast(explain(e), "bad");
  }
}

async function cancelInvite(inviteId) {
  try {
    await app.client.cancelInvite(inviteId);
  } catch (e) {
    toast(explain(e), "bad");
  }
}

function renderMatch() {
  const queued = !!app.client?.match.queued;
  $("match-idle").hidden = queued;
  $("match-waiting").hidden = !queued;
  $("queue-waiting-text").textContent = `Waiting for someone who wants to talk about ${TOPIC_NAMES[app.topic]}.`;
}

async function joinQueue() {
  $("queue-join").disabled = true;
  try {
    await app.client.joinQueue(app.topic ? { topic: app.topic } : {});
  } catch (e) {
    toast(explain(e), "bad");
  } finally {
    $("queue-join").disabled = false;
    renderMatch();
  }
}

async function leaveQueue() {
  try {
    await app.client.leaveQueue();
  } catch (e) {
    if (e.code !== "not_queued") toast(explain(e), "bad");
  }
  renderMatch();
}

// --- proposal and invite dialog ------------------------------------------------------------

function openDialog({ eyebrow, title, text, peer, deadlineMs, onAccept, onDecline, key }) {
  closeDialog();
  $("dialog-eyebrow").textContent = eyebrow;
  $("dialog-title").textContent = title;
  $("dialog-text").textContent = text;
  paintAvatar($("dialog-avatar"), peer.display_name, peer.user_id, peer.selfie_url);
  const ends = performance.now() + deadlineMs;
  const bar = $("dialog-bar");
  const tick = () => {
    const left = Math.max(0, ends - performance.now());
    bar.style.transform = `scaleX(${left / deadlineMs})`;
    $("dialog-seconds").textContent = `${Math.ceil(left / 1000)} s to answer`;
    if (left <= 0) closeDialog();
  };
  tick();
  const timer = setInterval(tick, 200);
  app.dialog = { ...key, timer, onAccept, onDecline };
  $("dialog").hidden = false;
  $("dialog-accept").disabled = false;
  $("dialog-accept").focus();
}

function closeDialog() {
  if (!app.dialog) return;
  clearInterval(app.dialog.timer);
  app.dialog = null;
  $("dialog").hidden = true;
}

function onProposed(p) {
  renderMatch();
  openDialog({
    eyebrow: "It's a match",
    title: p.peer.display_name,
    text: "Accept to start a video call. You both have to accept.",
    peer: p.peer,
    deadlineMs: p.deadline_ms,
    key: { proposal_id: p.proposal_id },
    onAccept: async () => {
      $("dialog-accept").disabled = true;
      $("dialog-text").textContent = `Waiting for ${p.peer.display_name}…`;
      prepareCamera();
      await app.client.acceptProposal(p.proposal_id);
    },
    onDecline: () => app.client.declineProposal(p.proposal_id),
  });
}

function onCancelled(m) {
  if (app.dialog?.proposal_id === m.proposal_id) closeDialog();
  const words = {
    declined: "You passed on that match.",
    timeout: "The match timed out, so you left the queue.",
    peer_declined: "They passed this time. You're back at the front of the queue.",
    peer_timeout: "They didn't answer in time. You're back at the front of the queue.",
    peer_disconnected: "They left. You're back at the front of the queue.",
    unavailable: "The call could not be started. Try again in a moment.",
    shutdown: "The server is restarting. Try again in a moment.",
  };
  toast(words[m.reason] ?? "The match was cancelled.");
  renderMatch();
}

function onInviteReceived(m) {
  openDialog({
    eyebrow: "Video call invite",
    title: m.from.display_name,
    text: "wants to talk with you now.",
    peer: m.from,
    deadlineMs: m.deadline_ms,
    key: { invite_id: m.invite_id },
    onAccept: async () => {
      $("dialog-accept").disabled = true;
      prepareCamera();
      await app.client.acceptInvite(m.invite_id);
    },
    onDecline: () => app.client.declineInvite(m.invite_id),
  });
}

// --- the call ------------------------------------------------------------------------------

/** Asks for the camera early (on accept), so the call starts as soon as it is confirmed. */
function prepareCamera() {
  if (!app.localStream) {
    app.localStream = navigator.mediaDevices
      .getUserMedia({ video: { width: 640, height: 480 }, audio: true })
      .catch((e) => {
        toast(`Your camera or microphone could not be opened (${e.name}). The call goes on without them.`, "bad");
        return null;
      });
  }
  return app.localStream;
}

async function onConfirmed(m) {
  closeDialog();
  if (app.call?.callId === m.call_id && !app.call.ended) return;
  app.lastPeer = m.peer;
  $("call-peer-name").textContent = m.peer.display_name;
  paintAvatar($("call-peer-avatar"), m.peer.display_name, m.peer.user_id, m.peer.selfie_url);
  $("call-state").textContent = "Connecting…";
  show("call");
  const stream = await prepareCamera();
  $("local-video").srcObject = stream;
  const call = await app.client.startCall(m, { localStream: stream ?? undefined });
  app.call = call;
  app.callStarted = null;
  call.on("remotestream", (s) => {
    $("remote-video").srcObject = s;
  });
  call.on("state", (state) => {
    if (state === "connected" && !app.callStarted) app.callStarted = Date.now();
    $("call-state").textContent =
      { new: "Connecting…", connecting: "Connecting…", connected: "Connected", disconnected: "Connection unstable…", failed: "Could not connect the video", closed: "Ended" }[state] ?? state;
  });
  call.on("peer", (p) => {
    $("call-state").textContent = p.reconnecting ? `${m.peer.display_name} lost their connection. Waiting…` : "Connected";
  });
  call.on("error", (e) => toast(`Call problem: ${e.message ?? e}`, "bad"));
  call.on("ended", (e) => afterCall(e));
  renderPeople();
}

function endCallUi() {
  for (const v of [$("remote-video"), $("local-video")]) v.srcObject = null;
}

async function afterCall(e) {
  const peer = app.lastPeer;
  endCallUi();
  const took = app.callStarted ? Math.round((Date.now() - app.callStarted) / 1000) : 0;
  app.call = null;
  const stream = await app.localStream;
  stream?.getTracks().forEach((t) => t.stop());
  app.localStream = null;
  const byMe = e.ended_by && e.ended_by === app.client?.userId;
  $("after-title").textContent = `Call with ${peer?.display_name ?? "your match"} ended`;
  $("after-text").textContent =
    (e.reason === "hangup" ? (byMe ? "You hung up." : `${peer?.display_name ?? "They"} hung up.`) : e.reason === "disconnect" ? "The connection was lost." : "The server ended the call while restarting.") +
    (took ? ` You talked for ${took < 60 ? `${took} s` : `${Math.floor(took / 60)} min ${took % 60} s`}.` : "");
  if (peer) paintAvatar($("after-avatar"), peer.display_name, peer.user_id, peer.selfie_url);
  $("report-form").hidden = true;
  $("after-block").disabled = $("after-report").disabled = false;
  show("after");
  renderPeople();
}

async function hangup() {
  $("call-hangup").disabled = true;
  try {
    await app.call?.hangup();
  } catch (e) {
    if (e.code !== "no_such_call") toast(explain(e), "bad");
  } finally {
    $("call-hangup").disabled = false;
  }
}

function toggleTrack(kind, button) {
  app.localStream?.then((s) => {
    if (!s) return;
    const tracks = kind === "audio" ? s.getAudioTracks() : s.getVideoTracks();
    const off = button.getAttribute("aria-pressed") !== "true";
    tracks.forEach((t) => (t.enabled = !off));
    button.setAttribute("aria-pressed", String(off));
  });
}

async function block() {
  const peer = app.lastPeer;
  if (!peer) return;
  try {
    await app.client.block(peer.user_id);
    $("after-block").disabled = true;
    toast(`${peer.display_name} is blocked: you will not see or meet each other again.`);
  } catch (e) {
    toast(explain(e), "bad");
  }
}

async function report(event) {
  event.preventDefault();
  const peer = app.lastPeer;
  if (!peer) return;
  try {
    await app.client.report(peer.user_id, $("report-reason").value, $("report-text").value.trim() || undefined);
    $("report-form").hidden = true;
    $("after-report").disabled = true;
    toast("Thank you. The report was sent to the moderators.");
  } catch (e) {
    toast(explain(e), "bad");
  }
}

// --- start -------------------------------------------------------------------------------

function bind() {
  $("signin-form").addEventListener("submit", signIn);
  $("signout").addEventListener("click", signOut);
  $("stopped-again").addEventListener("click", signOut);
  $("queue-join").addEventListener("click", joinQueue);
  $("queue-leave").addEventListener("click", leaveQueue);
  for (const chip of document.querySelectorAll("#queue-topic .chip")) {
    chip.addEventListener("click", () => {
      app.topic = chip.dataset.topic;
      for (const c of document.querySelectorAll("#queue-topic .chip")) c.setAttribute("aria-checked", String(c === chip));
    });
  }
  $("dialog-accept").addEventListener("click", () => app.dialog?.onAccept().catch((e) => toast(explain(e), "bad")));
  $("dialog-decline").addEventListener("click", () => {
    const d = app.dialog;
    closeDialog();
    d?.onDecline().catch((e) => toast(explain(e), "bad"));
  });
  $("call-hangup").addEventListener("click", hangup);
  $("call-mute").addEventListener("click", (e) => toggleTrack("audio", e.currentTarget));
  $("call-camera").addEventListener("click", (e) => toggleTrack("video", e.currentTarget));
  $("after-back").addEventListener("click", () => show("lobby"));
  $("after-block").addEventListener("click", block);
  $("after-report").addEventListener("click", () => ($("report-form").hidden = false));
  $("report-form").addEventListener("submit", report);
}

async function main() {
  bind();
  await loadConfig();
  const session = savedSession();
  if (session?.token) {
    await start(session);
  } else {
    if (!app.config.guest_sign_in) {
      $("signin-error").textContent = "Guest sign-in is turned off on this server. Open the link your app gave you.";
      $("signin-error").hidden = false;
    }
    show("signin");
  }
}

main();
