// Rendezvous browser client: one ES module, no build step, no dependencies.
// Served by the server at /client/rendezvous.js (types: /client/rendezvous.d.ts).
// Protocol reference: docs/protocol.md; library guide: docs/client.md.

/** Close codes after which reconnecting would only repeat the failure. */
const TERMINAL_CLOSE_CODES = new Set([4001, 4009, 4010]);

/** The presence window order: available first, then online, in_queue, in_call, away. */
const STATE_ORDER = { available: 0, online: 1, in_queue: 2, in_call: 3, away: 4 };

/** Messages whose answer carries the request's `id`, mapped to the answer's type. */
const REPLIES = {
  ping: "pong",
  "presence.subscribe": "presence.ack",
  "presence.unsubscribe": "presence.ack",
  "presence.set": "presence.ack",
  "match.join": "match.queued",
  "match.leave": "match.left",
  "invite.send": "invite.sent",
  "invite.cancel": "invite.cancelled",
  "call.block": "call.blocked",
  "call.report": "call.reported",
  "ice.servers": "ice.servers",
};

const CLOSE_WORDS = {
  1000: "The connection was closed.",
  1001: "The server is restarting. Reconnecting…",
  1002: "The connection broke (protocol error). Reconnecting…",
  1006: "The connection was lost. Reconnecting…",
  1007: "The server could not read a message. Reconnecting…",
  1008: "The connection was too slow to keep up. Reconnecting…",
  1009: "A message was too large. Reconnecting…",
  1011: "The server hit an unexpected error. Reconnecting…",
  1013: "The server is busy. Trying again shortly…",
  4001: "This session was revoked, so you were signed out. Sign in again to continue.",
  4002: "The connection went quiet for too long. Reconnecting…",
  4008: "Too many messages were sent too quickly. Reconnecting…",
  4009: "You are already connected in too many tabs. Close one and reload.",
  4010: "You opened Rendezvous in another tab or device, so this one was disconnected.",
};

const ERROR_WORDS = {
  bad_json: "The app sent something the server could not read.",
  missing_type: "The app sent something the server could not read.",
  unknown_type: "This server does not understand that request.",
  bad_field: "The request had a field the server does not accept.",
  unsupported_version: "This app is too new or too old for the server.",
  binary_not_supported: "The app sent binary data the server does not accept.",
  rate_limited: "Slow down a little: too many requests at once.",
  busy: "The server is busy. Try again in a moment.",
  unavailable: "That is not available right now. Try again in a moment.",
  bad_topic: "That lobby name is not valid.",
  bad_status: "That status is too long or has characters that are not allowed.",
  too_many_subscriptions: "Too many lobbies open on this connection.",
  topic_limit: "The server cannot open more lobbies right now.",
  not_subscribed: "You are not in that lobby.",
  already_queued: "You are already in the queue.",
  not_queued: "You are not in the queue.",
  in_call: "You are in a call.",
  no_such_proposal: "That match is no longer open.",
  no_such_invite: "That invite is no longer open.",
  no_such_call: "That call is already over.",
  user_unavailable: "That person is not available right now.",
  banned: "Your account cannot start calls.",
  not_a_peer: "You can only block or report someone you recently talked to.",
  payload_too_large: "The call setup message was too large.",
};

/** Plain words for a WebSocket close code, for showing to a person. */
export function describeClose(code) {
  return CLOSE_WORDS[code] ?? `The connection closed (code ${code}). Reconnecting…`;
}

/** Plain words for a server error code (`error.code`), for showing to a person. */
export function describeError(code) {
  return ERROR_WORDS[code] ?? "Something went wrong. Try again.";
}

/** An error frame from the server (or a local failure), carrying the server's code. */
export class RendezvousError extends Error {
  constructor(code, message, { ref, request, closeCode } = {}) {
    super(message || describeError(code));
    this.name = "RendezvousError";
    /** The server's `error.code`, or `closed` / `timeout` / `not_connected` for local failures. */
    this.code = code;
    /** The request `id` the server named in `ref`, if any. */
    this.ref = ref;
    /** The type of the request that failed, if known. */
    this.request = request;
    /** The close code when `code` is `closed`. */
    this.closeCode = closeCode;
  }

  /** Plain words for this error. */
  get description() {
    return describeError(this.code);
  }
}

/** Lets Node exit while a timer is pending (browsers' timers are plain numbers). */
function unref(timer) {
  if (typeof timer === "object" && typeof timer?.unref === "function") timer.unref();
}

/** A tiny typed event emitter; `on` returns a function that removes the listener. */
class Emitter {
  #listeners = new Map();

  on(type, fn) {
    let set = this.#listeners.get(type);
    if (!set) this.#listeners.set(type, (set = new Set()));
    set.add(fn);
    return () => set.delete(fn);
  }

  once(type, fn) {
    const off = this.on(type, (e) => {
      off();
      fn(e);
    });
    return off;
  }

  off(type, fn) {
    this.#listeners.get(type)?.delete(fn);
  }

  /** Resolves with the next event of `type` that passes `filter`, or rejects after `timeoutMs`. */
  next(type, filter = () => true, timeoutMs = 30000) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        off();
        reject(new RendezvousError("timeout", `no ${type} within ${timeoutMs} ms`));
      }, timeoutMs);
      unref(timer);
      const off = this.on(type, (e) => {
        if (!filter(e)) return;
        clearTimeout(timer);
        off();
        resolve(e);
      });
    });
  }

  emit(type, event) {
    for (const fn of [...(this.#listeners.get(type) ?? [])]) {
      try {
        fn(event);
      } catch (err) {
        // One broken listener must not stop the others or the connection.
        setTimeout(() => {
          throw err;
        });
      }
    }
    if (type !== "*") for (const fn of [...(this.#listeners.get("*") ?? [])]) fn({ type, event });
  }
}

/** Sorts presence entries in the server's window order. */
export function sortEntries(entries) {
  return [...entries].sort(
    (a, b) =>
      (STATE_ORDER[a.state] ?? 9) - (STATE_ORDER[b.state] ?? 9) ||
      (b.active_at ?? 0) - (a.active_at ?? 0) ||
      (a.id < b.id ? -1 : a.id > b.id ? 1 : 0),
  );
}

/** One topic's current window, kept up to date from snapshots and diffs. */
export class PresenceView {
  constructor(topic) {
    this.topic = topic;
    /** Sequence number of the last applied message; -1 before the first snapshot. */
    this.seq = -1;
    /** Users in the whole topic (the window may hold fewer). */
    this.count = 0;
    /** Entries by user id. */
    this.entries = new Map();
    /** True once a snapshot arrived (and after every resynchronisation). */
    this.ready = false;
  }

  /** The entries in window order. */
  list() {
    return sortEntries(this.entries.values());
  }

  get(userId) {
    return this.entries.get(userId);
  }

  applySnapshot(s) {
    this.entries = new Map(s.entries.map((e) => [e.id, e]));
    this.seq = s.seq;
    this.count = s.count;
    this.ready = true;
  }

  /** Applies a diff; returns false (and changes nothing) when it does not follow the last message. */
  applyDiff(d) {
    if (!this.ready || d.seq !== this.seq + 1) return false;
    for (const id of d.leaves) this.entries.delete(id);
    for (const e of d.joins) this.entries.set(e.id, e);
    for (const e of d.updates) this.entries.set(e.id, e);
    this.seq = d.seq;
    this.count = d.count;
    return true;
  }
}

const DEFAULT_RECONNECT = { initialMs: 500, maxMs: 15000, factor: 2, busyMinMs: 5000 };

/**
 * A connection to a Rendezvous server that reconnects by itself, keeps presence views
 * current and correlates requests with answers.
 */
export class RendezvousClient extends Emitter {
  #ws = null;
  #nextId = 1;
  #pending = new Map();
  #views = new Map();
  #attempt = 0;
  #timer = null;
  #liveness = null;
  #drainDelay = null;
  #stopped = true;
  #chosen = null;
  #queuePrefs = null;
  #ice = null;
  #lastSeen = 0;
  #early = new Map();
  #sessions = new Set();

  /**
   * @param {object} options see rendezvous.d.ts (`ClientOptions`)
   */
  constructor(options) {
    super();
    if (!options || (!options.url && !options.baseUrl)) throw new TypeError("options.url is required");
    if (options.token == null) throw new TypeError("options.token is required");
    this.options = options;
    this.reconnectOptions = { ...DEFAULT_RECONNECT, ...(options.reconnect ?? {}) };
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (!this.WebSocket) throw new TypeError("no WebSocket constructor: pass options.WebSocket");
    this.random = options.random ?? Math.random;
    /** `idle`, `connecting`, `open`, `reconnecting` or `closed`. */
    this.state = "idle";
    /** The last `welcome` (user id, instance, heartbeat interval). */
    this.welcome = null;
    /** Why the client stopped for good, when `state` is `closed` because of the server. */
    this.closeCode = null;
    /** The current proposal, invite and call, as far as this client knows. */
    this.match = { queued: false, proposal: null, call: null, invites: new Map() };
  }

  /** The user this connection is signed in as (after `welcome`). */
  get userId() {
    return this.welcome?.user_id ?? null;
  }

  /** Opens the connection; resolves with the first `welcome`, rejects if the first attempt fails for good. */
  connect() {
    this.#stopped = false;
    const first = new Promise((resolve, reject) => {
      const offs = [
        this.once("welcome", (w) => {
          offs.forEach((f) => f());
          resolve(w);
        }),
        this.once("closed", (e) => {
          offs.forEach((f) => f());
          reject(new RendezvousError("closed", describeClose(e.code), { closeCode: e.code }));
        }),
      ];
    });
    this.#open();
    return first;
  }

  /** Closes the connection and stops reconnecting. */
  close() {
    this.#stop(1000, "client closed");
  }

  #stop(code, reason, fromServer = false) {
    this.#stopped = true;
    clearTimeout(this.#timer);
    clearInterval(this.#liveness);
    if (this.#ws && this.#ws.readyState <= 1) this.#ws.close(1000, "bye");
    this.#ws = null;
    this.#failPending(new RendezvousError("closed", describeClose(code), { closeCode: code }));
    if (fromServer) this.closeCode = code;
    this.#setState("closed");
    this.emit("closed", { code, reason, description: describeClose(code) });
  }

  #setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.emit("state", { state });
  }

  async #url() {
    const token = typeof this.options.token === "function" ? await this.options.token() : this.options.token;
    let url = this.options.url;
    if (!url) {
      const base = new URL(this.options.baseUrl);
      base.protocol = base.protocol === "https:" ? "wss:" : "ws:";
      base.pathname = "/ws";
      url = base.toString();
    }
    const u = new URL(url);
    u.searchParams.set("token", token);
    return u.toString();
  }

  async #open() {
    if (this.#stopped) return;
    this.#setState(this.#attempt === 0 && !this.welcome ? "connecting" : "reconnecting");
    let url;
    try {
      url = await this.#url();
    } catch (err) {
      this.emit("error", new RendezvousError("token", `could not get a token: ${err?.message ?? err}`));
      this.#scheduleReconnect(1006);
      return;
    }
    if (this.#stopped) return;
    const ws = new this.WebSocket(url);
    this.#ws = ws;
    let opened = false;
    ws.onopen = () => {
      opened = true;
    };
    ws.onmessage = (ev) => {
      if (ws !== this.#ws) return;
      this.#lastSeen = Date.now();
      let msg;
      try {
        msg = JSON.parse(typeof ev.data === "string" ? ev.data : String(ev.data));
      } catch {
        return;
      }
      this.#dispatch(msg);
    };
    ws.onerror = () => {};
    ws.onclose = (ev) => {
      if (ws !== this.#ws) return;
      this.#ws = null;
      clearInterval(this.#liveness);
      this.#failPending(new RendezvousError("closed", describeClose(ev.code), { closeCode: ev.code }));
      // A socket that never opened was refused before the upgrade (401, 429, 503 …): the
      // browser hides the status, so it is treated like "busy" and backed off.
      const code = opened ? ev.code : 1013;
      if (TERMINAL_CLOSE_CODES.has(code)) {
        this.#stop(code, ev.reason, true);
        return;
      }
      this.#scheduleReconnect(code, ev.reason);
    };
  }

  /** The delay before the next attempt: jittered exponential backoff, longer when the server is busy. */
  nextDelay(code) {
    const r = this.reconnectOptions;
    if (this.#drainDelay != null) {
      const d = this.#drainDelay;
      this.#drainDelay = null;
      return d;
    }
    const base = Math.min(r.maxMs, r.initialMs * r.factor ** this.#attempt);
    // "Equal jitter": at least half the step, so a crowd of clients spreads out but still backs off.
    let delay = base / 2 + this.random() * (base / 2);
    if (code === 1013) delay = Math.max(delay, r.busyMinMs * (0.5 + this.random() / 2));
    return Math.round(delay);
  }

  #scheduleReconnect(code, reason) {
    if (this.#stopped) return;
    const delay = this.nextDelay(code);
    this.#attempt += 1;
    this.#setState("reconnecting");
    this.emit("disconnected", { code, reason, delayMs: delay, attempt: this.#attempt, description: describeClose(code) });
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => this.#open(), delay);
  }

  #failPending(err) {
    for (const { reject, timer } of this.#pending.values()) {
      clearTimeout(timer);
      reject(err);
    }
    this.#pending.clear();
  }

  #startLiveness(intervalMs) {
    clearInterval(this.#liveness);
    if (!intervalMs || this.options.liveness === false) return;
    // Browsers answer the server's pings without telling the page, so a dead network is only
    // noticed by asking: ping every interval, give up on the socket after three silent ones.
    this.#liveness = setInterval(() => {
      if (Date.now() - this.#lastSeen > intervalMs * 3) {
        this.#ws?.close(4000, "liveness timeout");
        return;
      }
      this.send("ping").catch(() => {});
    }, intervalMs);
  }

  #dispatch(msg) {
    const type = msg.type;
    if (type === "welcome") return this.#onWelcome(msg);
    if (type === "error") {
      const err = new RendezvousError(msg.code, msg.message, { ref: msg.ref });
      const p = msg.ref != null ? this.#pending.get(String(msg.ref)) : undefined;
      if (p) {
        this.#pending.delete(String(msg.ref));
        clearTimeout(p.timer);
        err.request = p.type;
        p.reject(err);
        // Requests without an answer resolved when sent; their refusal is an event.
        if (!p.expectsReply) this.emit("error", err);
      } else {
        this.emit("error", err);
      }
      return;
    }
    if (msg.id != null) {
      const p = this.#pending.get(String(msg.id));
      if (p && p.reply === type) {
        this.#pending.delete(String(msg.id));
        clearTimeout(p.timer);
        p.resolve(msg);
      }
    }
    switch (type) {
      case "server.draining":
        // The server already jittered this per connection; reconnect once it has closed us.
        this.#drainDelay = msg.reconnect_after_ms ?? 0;
        break;
      case "presence.snapshot": {
        const view = this.#view(msg.topic);
        view.applySnapshot(msg);
        this.emit("presence", { topic: msg.topic, view, snapshot: true });
        break;
      }
      case "presence.diff": {
        const view = this.#views.get(msg.topic);
        if (!view) break;
        if (!view.applyDiff(msg)) {
          // A gap: ask for a fresh snapshot, which replaces the view.
          view.ready = false;
          this.emit("presence.gap", { topic: msg.topic, expected: view.seq + 1, got: msg.seq });
          this.send("presence.subscribe", { topic: msg.topic }).catch(() => {});
          break;
        }
        this.emit("presence", { topic: msg.topic, view, snapshot: false, diff: msg });
        break;
      }
      case "match.queued":
        this.match.queued = true;
        break;
      case "match.left":
        this.match.queued = false;
        if (msg.reason !== "shutdown") this.#queuePrefs = null;
        break;
      case "match.proposed":
        this.match.queued = false;
        this.match.proposal = msg;
        break;
      case "match.cancelled":
        // Two instances do not share an order: an older proposal's end can arrive after
        // the next proposal (the user was requeued and another instance matched them
        // first). It ends only the proposal it names.
        if (this.match.proposal && this.match.proposal.proposal_id !== msg.proposal_id) break;
        this.match.proposal = null;
        this.match.queued = !!msg.requeued;
        if (!msg.requeued && msg.reason !== "shutdown") this.#queuePrefs = null;
        break;
      case "match.confirmed":
      case "call.resumed":
        this.match.proposal = null;
        this.match.queued = false;
        this.#queuePrefs = null;
        this.match.call = msg;
        break;
      case "call.signal":
        // The peer may offer before this side has its camera and CallSession ready: hold
        // the call's signals (bounded) until startCall takes them.
        if (!this.#sessions.has(msg.call_id) && this.match.call?.call_id === msg.call_id) {
          const held = this.#early.get(msg.call_id) ?? [];
          if (held.length < 256) held.push(msg);
          this.#early.set(msg.call_id, held);
        }
        break;
      case "call.ended":
        if (this.match.call?.call_id === msg.call_id) this.match.call = null;
        this.#early.delete(msg.call_id);
        this.#sessions.delete(msg.call_id);
        break;
      case "invite.received":
      case "invite.sent":
        this.match.invites.set(msg.invite_id, msg);
        break;
      case "invite.accepted":
      case "invite.declined":
      case "invite.expired":
      case "invite.cancelled":
        this.match.invites.delete(msg.invite_id);
        break;
      case "ice.servers":
        this.#ice = { servers: msg.ice_servers, until: Date.now() + (msg.ttl_secs ?? 60) * 500 };
        break;
    }
    this.emit(type, msg);
    this.emit("message", msg);
  }

  #onWelcome(msg) {
    const reconnected = this.welcome != null;
    this.welcome = msg;
    this.#attempt = 0;
    this.#lastSeen = Date.now();
    this.#setState("open");
    this.#startLiveness(msg.heartbeat_interval_ms);
    this.emit("welcome", msg);
    if (!reconnected) return;
    // A new connection knows nothing of this one's past: subscribe again (each answer is
    // a fresh snapshot), re-send the chosen state, and rejoin the queue if we were waiting.
    for (const [topic, view] of this.#views) {
      view.ready = false;
      this.send("presence.subscribe", { topic }).catch((err) => this.emit("error", err));
    }
    if (this.#chosen) this.send("presence.set", this.#chosen).catch((err) => this.emit("error", err));
    if (this.#queuePrefs && !this.match.call && !this.match.proposal) {
      this.send("match.join", { prefs: this.#queuePrefs }).catch((err) => {
        if (err.code !== "already_queued") this.emit("error", err);
      });
    }
    this.emit("reconnected", msg);
  }

  #view(topic) {
    let v = this.#views.get(topic);
    if (!v) this.#views.set(topic, (v = new PresenceView(topic)));
    return v;
  }

  /**
   * Sends a message. Resolves with the answer for requests that have one (see REPLIES),
   * or once sent for the others; rejects with a RendezvousError when the server refuses it.
   */
  send(type, fields = {}, { timeoutMs = 15000 } = {}) {
    const ws = this.#ws;
    if (!ws || ws.readyState !== 1 || !this.welcome || this.state !== "open") {
      return Promise.reject(new RendezvousError("not_connected", "not connected", { request: type }));
    }
    const id = `c${this.#nextId++}`;
    const reply = REPLIES[type];
    const promise = new Promise((resolve, reject) => {
      // Requests without an answer are kept briefly so an error naming them still finds them.
      const wait = reply ? timeoutMs : 5000;
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        if (reply) reject(new RendezvousError("timeout", `no answer to ${type} within ${timeoutMs} ms`, { request: type }));
      }, wait);
      unref(timer);
      this.#pending.set(id, { resolve, reject, timer, type, reply, expectsReply: !!reply });
    });
    ws.send(JSON.stringify({ type, id, ...fields }));
    if (!reply) {
      // Resolved at once; a later refusal arrives as an "error" event with `ref` = id.
      this.#pending.get(id).reject = () => {};
      return Promise.resolve({ id });
    }
    return promise;
  }

  // --- presence ----------------------------------------------------------------------------

  /** Subscribes to a topic (also puts this user in it); resolves with its view after the snapshot. */
  async subscribe(topic) {
    const view = this.#view(topic);
    view.ready = false;
    const snapshot = this.next("presence.snapshot", (s) => s.topic === topic);
    snapshot.catch(() => {}); // awaited below, unless the request fails first
    try {
      await this.send("presence.subscribe", { topic });
    } catch (err) {
      this.#views.delete(topic);
      throw err;
    }
    await snapshot;
    return view;
  }

  /** Leaves a topic and forgets its view. */
  async unsubscribe(topic) {
    this.#views.delete(topic);
    await this.send("presence.unsubscribe", { topic });
  }

  /** The current view of a subscribed topic (or undefined). */
  view(topic) {
    return this.#views.get(topic);
  }

  /** Sets this user's chosen state and/or status; re-sent after every reconnect. */
  async setPresence({ state, status } = {}) {
    const fields = {};
    if (state !== undefined) fields.state = state;
    if (status !== undefined) fields.status = status;
    this.#chosen = { ...(this.#chosen ?? {}), ...fields };
    await this.send("presence.set", fields);
  }

  // --- matchmaking -------------------------------------------------------------------------

  /** Joins the matchmaking queue; `prefs` is `{genders?, region?, topic?}`. */
  async joinQueue(prefs = {}) {
    this.#queuePrefs = prefs;
    try {
      return await this.send("match.join", { prefs });
    } catch (err) {
      this.#queuePrefs = null;
      throw err;
    }
  }

  /** Leaves the queue (declining a pending proposal). */
  leaveQueue() {
    this.#queuePrefs = null;
    return this.send("match.leave");
  }

  acceptProposal(proposalId) {
    return this.send("match.accept", { proposal_id: proposalId });
  }

  declineProposal(proposalId) {
    return this.send("match.decline", { proposal_id: proposalId });
  }

  invite(userId) {
    return this.send("invite.send", { user_id: userId });
  }

  acceptInvite(inviteId) {
    return this.send("invite.accept", { invite_id: inviteId });
  }

  declineInvite(inviteId) {
    this.match.invites.delete(inviteId);
    return this.send("invite.decline", { invite_id: inviteId });
  }

  cancelInvite(inviteId) {
    return this.send("invite.cancel", { invite_id: inviteId });
  }

  signal(callId, kind, payload) {
    return this.send("call.signal", { call_id: callId, kind, payload });
  }

  hangup(callId) {
    return this.send("call.hangup", { call_id: callId });
  }

  block(userId) {
    return this.send("call.block", { user_id: userId });
  }

  report(userId, reason, text) {
    return this.send("call.report", text ? { user_id: userId, reason, text } : { user_id: userId, reason });
  }

  /** ICE servers for RTCPeerConnection (cached for half their lifetime). */
  async iceServers() {
    if (this.#ice && this.#ice.until > Date.now()) return this.#ice.servers;
    const answer = await this.send("ice.servers");
    return answer.ice_servers;
  }

  /**
   * Wires an RTCPeerConnection to the signaling relay for a confirmed (or resumed) call.
   * `confirmed` is the `match.confirmed` / `call.resumed` message.
   */
  async startCall(confirmed, options = {}) {
    const iceServers = await this.iceServers().catch(() => []);
    this.#sessions.add(confirmed.call_id);
    const early = this.#early.get(confirmed.call_id) ?? [];
    this.#early.delete(confirmed.call_id);
    return new CallSession(this, confirmed, iceServers, options, early);
  }
}

/** One WebRTC call: an RTCPeerConnection whose offer, answer and ICE go through the server. */
export class CallSession extends Emitter {
  constructor(client, confirmed, iceServers, options = {}, early = []) {
    super();
    this.client = client;
    this.callId = confirmed.call_id;
    this.peer = confirmed.peer;
    this.role = confirmed.role;
    this.ended = false;
    this.remoteStream = null;
    this.#options = options;
    this.#iceServers = iceServers;
    this.#offs = [
      client.on("call.signal", (m) => m.call_id === this.callId && this.#queue(m)),
      client.on("call.ended", (m) => m.call_id === this.callId && this.#end(m)),
      client.on("call.peer_reconnecting", (m) => m.call_id === this.callId && this.emit("peer", { reconnecting: true, graceMs: m.grace_ms })),
      client.on("call.peer_reconnected", (m) => {
        if (m.call_id !== this.callId) return;
        this.emit("peer", { reconnecting: false });
        this.#renegotiate();
      }),
      // Our own connection came back while this session lived (no reload): the peer
      // rebuilds its side on `call.peer_reconnected`, so this side does too.
      client.on("call.resumed", (m) => m.call_id === this.callId && this.#renegotiate()),
    ];
    this.#connect();
    for (const m of early) this.#queue(m);
  }

  #options;
  #iceServers;
  #pendingIce = [];
  #offs;
  #chain = Promise.resolve();

  /** A fresh RTCPeerConnection with the local tracks; the offerer offers at once. */
  #connect() {
    const options = this.#options;
    const PC = options.RTCPeerConnection ?? globalThis.RTCPeerConnection;
    const pc = new PC({ ...(options.rtcConfiguration ?? {}), iceServers: [...this.#iceServers, ...(options.rtcConfiguration?.iceServers ?? [])] });
    this.pc = pc;
    this.#pendingIce = [];
    if (options.localStream) for (const t of options.localStream.getTracks()) pc.addTrack(t, options.localStream);
    else for (const kind of ["audio", "video"]) pc.addTransceiver(kind, { direction: "recvonly" });
    pc.onicecandidate = (e) => {
      if (e.candidate && pc === this.pc) this.client.signal(this.callId, "ice", e.candidate.toJSON()).catch(() => {});
    };
    pc.ontrack = (e) => {
      this.remoteStream = e.streams[0] ?? new MediaStream([e.track]);
      this.emit("remotestream", this.remoteStream);
    };
    pc.onconnectionstatechange = () => pc === this.pc && this.emit("state", pc.connectionState);
    if (this.role === "offerer") this.#offer();
  }

  /**
   * After either side reconnected, the other side may be a new page with a new
   * RTCPeerConnection: both sides start over with fresh connections (same roles), which
   * works whether the peer reloaded or only its signaling blinked.
   */
  #renegotiate() {
    if (this.ended) return;
    this.#chain = this.#chain.then(() => {
      this.pc.close();
      this.#connect();
    });
  }

  /** Signals are applied one at a time, in the order the relay delivered them. */
  #queue(m) {
    this.#chain = this.#chain.then(() => this.#onSignal(m)).catch((e) => this.emit("error", e));
  }

  async #offer() {
    const pc = this.pc;
    try {
      const offer = await pc.createOffer();
      await pc.setLocalDescription(offer);
      if (pc === this.pc) await this.client.signal(this.callId, "offer", { type: offer.type, sdp: offer.sdp });
    } catch (err) {
      if (pc === this.pc) this.emit("error", err);
    }
  }

  async #onSignal(m) {
    const p = m.payload;
    if (m.kind === "offer") {
      await this.pc.setRemoteDescription(p);
      await this.#flushIce();
      const answer = await this.pc.createAnswer();
      await this.pc.setLocalDescription(answer);
      await this.client.signal(this.callId, "answer", { type: answer.type, sdp: answer.sdp });
    } else if (m.kind === "answer") {
      await this.pc.setRemoteDescription(p);
      await this.#flushIce();
    } else if (m.kind === "ice") {
      // Candidates can overtake the description they belong to; hold them until it is set.
      if (this.pc.remoteDescription) await this.pc.addIceCandidate(p).catch(() => {});
      else this.#pendingIce.push(p);
    }
  }

  async #flushIce() {
    const held = this.#pendingIce.splice(0);
    // A candidate left over from a connection since replaced is refused; that is harmless.
    for (const c of held) await this.pc.addIceCandidate(c).catch(() => {});
  }

  #end(m) {
    if (this.ended) return;
    this.ended = true;
    this.#offs.forEach((f) => f());
    this.pc.close();
    this.emit("ended", m);
  }

  /** Hangs up (the server answers both sides with `call.ended`). */
  async hangup() {
    if (this.ended) return;
    try {
      await this.client.hangup(this.callId);
    } finally {
      this.#end({ call_id: this.callId, reason: "hangup", ended_by: this.client.userId });
    }
  }
}

/**
 * Guest sign-in (development servers, `POST /api/guest`): resolves with `{user, token, session}`.
 * `baseUrl` is the server's http(s) origin; in a page served by the server, pass `location.origin`.
 */
export async function guestSignIn(baseUrl, displayName, { fetch: f = globalThis.fetch } = {}) {
  const res = await f(new URL("/api/guest", baseUrl), {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(displayName ? { display_name: displayName } : {}),
  });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) {
    const e = body.error ?? {};
    throw new RendezvousError(e.code ?? "http_" + res.status, e.message ?? `guest sign-in failed (${res.status})`);
  }
  return body;
}
