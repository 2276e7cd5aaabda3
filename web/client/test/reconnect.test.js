// Decisions with a scripted socket: what the client does after each close code, and with
// messages that two instances sent in no common order.
// (The real server's drain and restart are exercised in Chromium, crates/server/tests/browser.)
import { test } from "node:test";
import assert from "node:assert/strict";
import { RendezvousClient } from "../rendezvous.js";

/** A WebSocket stand-in the test drives: it records what the client sends. */
function scriptedSockets() {
  const sockets = [];
  class Scripted {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      sockets.push(this);
    }
    send(text) {
      this.sent.push(JSON.parse(text));
    }
    close(code = 1000) {
      this.serverClose(code);
    }
    open(userId = "u1") {
      this.readyState = 1;
      this.onopen?.({});
      this.push({ type: "welcome", v: 1, conn_id: "c", user_id: userId, instance: "i", heartbeat_interval_ms: 0 });
    }
    push(msg) {
      this.onmessage?.({ data: JSON.stringify(msg) });
    }
    serverClose(code, reason = "") {
      if (this.readyState === 3) return;
      this.readyState = 3;
      this.onclose?.({ code, reason });
    }
  }
  return { Scripted, sockets };
}

async function until(check) {
  for (let i = 0; i < 500; i++) {
    if (check()) return;
    await new Promise((r) => setTimeout(r, 5));
  }
  throw new Error("condition never held");
}

function client(Scripted, reconnect = {}) {
  return new RendezvousClient({ url: "ws://test/ws", token: "t", WebSocket: Scripted, random: () => 0.5, reconnect: { initialMs: 100, maxMs: 1000, busyMinMs: 2000, ...reconnect } });
}

/** A client whose first socket is open and welcomed, and its sockets. */
async function connected(reconnect = {}) {
  const { Scripted, sockets } = scriptedSockets();
  const c = client(Scripted, reconnect);
  const connecting = c.connect();
  await until(() => sockets.length === 1);
  sockets[0].open();
  await connecting;
  return { c, sockets };
}

test("backoff doubles with equal jitter up to the cap, and a busy server gets the busy floor", () => {
  const { Scripted } = scriptedSockets();
  const c = client(Scripted);
  assert.equal(c.nextDelay(1006), 75); // 100/2 + 0.5*50
  assert.equal(c.nextDelay(1013), 1500); // max(75, 2000 * 0.75)
});

test("after a drain the client waits reconnect_after_ms, resubscribes, re-sends its state and rejoins the queue", async () => {
  const { c, sockets } = await connected();
  const sub = c.subscribe("lobby");
  sockets[0].push({ type: "presence.ack", id: sockets[0].sent[0].id });
  sockets[0].push({ type: "presence.snapshot", topic: "lobby", seq: 3, count: 1, entries: [{ id: "x", state: "online", display_name: "X", gender: "other", active_at: 1 }] });
  const view = await sub;
  const set = c.setPresence({ state: "available" });
  sockets[0].push({ type: "presence.ack", id: sockets[0].sent[1].id });
  await set;
  const join = c.joinQueue({ topic: "music" });
  sockets[0].push({ type: "match.queued", id: sockets[0].sent[2].id });
  await join;

  const disconnected = c.next("disconnected");
  sockets[0].push({ type: "server.draining", reconnect_after_ms: 30 });
  sockets[0].push({ type: "match.left", reason: "shutdown" });
  sockets[0].serverClose(1001, "server draining");
  const d = await disconnected;
  assert.equal(d.code, 1001);
  assert.equal(d.delayMs, 30);
  assert.equal(c.state, "reconnecting");

  await until(() => sockets.length === 2);
  const reconnected = c.next("reconnected");
  sockets[1].open();
  await reconnected;
  assert.equal(view.ready, false, "the old view waits for its fresh snapshot");
  const types = sockets[1].sent.map((m) => m.type);
  assert.deepEqual(types, ["presence.subscribe", "presence.set", "match.join"]);
  assert.equal(sockets[1].sent[0].topic, "lobby");
  assert.deepEqual(sockets[1].sent[1], { type: "presence.set", id: sockets[1].sent[1].id, state: "available" });
  assert.deepEqual(sockets[1].sent[2].prefs, { topic: "music" });
  sockets[1].push({ type: "presence.snapshot", topic: "lobby", seq: 0, count: 0, entries: [] });
  assert.equal(view.ready, true);
  assert.equal(view.entries.size, 0, "the snapshot replaced what was held");
  c.close();
});

test("close codes: 4001 and 4010 stop for good, 4002 and 1011 reconnect", async () => {
  for (const [code, stops] of [[4001, true], [4010, true], [4009, true], [4002, false], [1011, false], [1008, false]]) {
    const { c, sockets } = await connected({ initialMs: 5, maxMs: 5 });
    sockets[0].serverClose(code);
    if (stops) {
      assert.equal(c.state, "closed", `code ${code}`);
      assert.equal(c.closeCode, code);
      await new Promise((r) => setTimeout(r, 30));
      assert.equal(sockets.length, 1, `code ${code} must not reconnect`);
    } else {
      await until(() => sockets.length === 2);
      c.close();
    }
  }
});

test("a handshake refused before the upgrade (503, 401 …) backs off like a busy server", async () => {
  const { Scripted, sockets } = scriptedSockets();
  const c = client(Scripted, { initialMs: 10, busyMinMs: 40 });
  const delays = [];
  c.on("disconnected", (e) => delays.push(e));
  c.connect().catch(() => {});
  await until(() => sockets.length === 1);
  sockets[0].serverClose(1006);
  await until(() => delays.length === 1);
  assert.equal(delays[0].code, 1013);
  assert.equal(delays[0].delayMs, 30); // max(7.5, 40 * 0.75): the busy floor wins
  c.close();
});

test("a cancellation of an older proposal arriving after the next proposal leaves the next one pending", async () => {
  const { c, sockets } = await connected();
  const peer = { user_id: "p", display_name: "P", gender: "other" };
  sockets[0].push({ type: "match.proposed", proposal_id: "old", peer, deadline_ms: 15000 });
  // The peer declined "old" and another instance matched this user again before the
  // cancellation from "old"'s instance arrived.
  sockets[0].push({ type: "match.proposed", proposal_id: "new", peer, deadline_ms: 15000 });
  sockets[0].push({ type: "match.cancelled", proposal_id: "old", reason: "peer_declined", requeued: true });
  assert.equal(c.match.proposal?.proposal_id, "new");
  assert.equal(c.match.queued, false);
  sockets[0].push({ type: "match.cancelled", proposal_id: "new", reason: "timeout", requeued: false });
  assert.equal(c.match.proposal, null);
  c.close();
});
