// The client library against a real server (started by the Rust harness).
import { test } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { RendezvousClient, RendezvousError, guestSignIn } from "../rendezvous.js";
import { BASE, api, connected, countingWebSocket, member, uniqueUser, until } from "./helpers.js";

test("connects, gets a welcome and answers requests by id", async () => {
  const user = uniqueUser("hello");
  const c = await connected(user);
  try {
    assert.equal(c.state, "open");
    assert.equal(c.userId, user);
    const pong = await c.send("ping");
    assert.equal(pong.type, "pong");
    assert.match(String(pong.id), /^c\d+$/);
  } finally {
    c.close();
  }
  assert.equal(c.state, "closed");
});

test("a refused request rejects with the server's code and the request it names", async () => {
  const c = await connected(uniqueUser("err"));
  try {
    await assert.rejects(c.subscribe("Not A Topic"), (err) => {
      assert.ok(err instanceof RendezvousError);
      assert.equal(err.code, "bad_topic");
      assert.equal(err.request, "presence.subscribe");
      assert.match(String(err.ref), /^c\d+$/);
      assert.ok(err.description.length > 0);
      return true;
    });
    await assert.rejects(c.leaveQueue(), { code: "not_queued" });
    // A message without an answer resolves when sent; its refusal is an "error" event.
    const refused = c.next("error", (e) => e.request === "match.accept");
    await c.acceptProposal("no-such-proposal");
    assert.equal((await refused).code, "no_such_proposal");
  } finally {
    c.close();
  }
});

test("presence: the view follows snapshot and diffs, and a gap resubscribes", async () => {
  const topic = `lobby.${uniqueUser("t").toLowerCase()}`;
  const [a, b] = [await connected(uniqueUser("pa")), await connected(uniqueUser("pb"))];
  try {
    const view = await a.subscribe(topic);
    assert.equal(view.ready, true);
    await until("a sees itself", () => view.get(a.userId));
    await b.subscribe(topic);
    await b.setPresence({ state: "available", status: "hi" });
    await until("a sees b available", () => view.get(b.userId)?.state === "available");
    assert.equal(view.get(b.userId).status, "hi");
    assert.equal(view.count, 2);
    assert.equal(view.list()[0].id, b.userId, "available sorts first");

    // A diff that skips a number is a gap: the client asks for a fresh snapshot.
    const gap = a.next("presence.gap");
    const fresh = a.next("presence.snapshot", (s) => s.topic === topic);
    // Feed a diff with a wrong seq through the real socket path: pretend one was lost.
    view.seq -= 1;
    await b.setPresence({ status: "again" });
    await gap;
    await fresh;
    await until("a's view has b's new status", () => view.get(b.userId)?.status === "again");

    await b.unsubscribe(topic);
    await until("b left a's view", () => !view.get(b.userId));
    assert.equal(view.count, 1);
  } finally {
    a.close();
    b.close();
  }
});

test("matchmaking: queue, proposal, accept, roles, relayed signals, hang-up", async () => {
  const topic = uniqueUser("m").toLowerCase();
  const [a, b] = [await member("MA"), await member("MB")];
  try {
    const proposedA = a.next("match.proposed");
    const proposedB = b.next("match.proposed");
    assert.equal((await a.joinQueue({ topic })).type, "match.queued");
    assert.equal(a.match.queued, true);
    await b.joinQueue({ topic });
    const [pa, pb] = [await proposedA, await proposedB];
    assert.equal(pa.peer.user_id, b.userId);
    assert.equal(pa.proposal_id, pb.proposal_id);
    assert.ok(pa.deadline_ms > 0);
    assert.equal(a.match.proposal.proposal_id, pa.proposal_id);

    const confirmedA = a.next("match.confirmed");
    const confirmedB = b.next("match.confirmed");
    await a.acceptProposal(pa.proposal_id);
    await b.acceptProposal(pb.proposal_id);
    const [ca, cb] = [await confirmedA, await confirmedB];
    assert.equal(ca.call_id, cb.call_id);
    assert.deepEqual([ca.role, cb.role].sort(), ["answerer", "offerer"]);
    assert.equal(a.match.call.call_id, ca.call_id);

    const relayed = b.next("call.signal");
    await a.signal(ca.call_id, "offer", { type: "offer", sdp: "v=0" });
    const s = await relayed;
    assert.equal(s.kind, "offer");
    assert.deepEqual(s.payload, { type: "offer", sdp: "v=0" });

    const servers = await a.iceServers();
    assert.ok(Array.isArray(servers));

    const endedB = b.next("call.ended");
    await a.hangup(ca.call_id);
    const ended = await endedB;
    assert.equal(ended.reason, "hangup");
    assert.equal(ended.ended_by, a.userId);
    await until("a's call is cleared", () => a.match.call === null);

    // After the call they may block or report each other, and nobody else.
    assert.equal((await b.report(a.userId, "spam", "test")).type, "call.reported");
    assert.equal((await b.block(a.userId)).type, "call.blocked");
    await assert.rejects(b.block("stranger"), { code: "not_a_peer" });
  } finally {
    a.close();
    b.close();
  }
});

test("declining a proposal cancels it for both; the decliner is out of the queue", async () => {
  const topic = uniqueUser("d").toLowerCase();
  const [a, b] = [await member("DA"), await member("DB")];
  try {
    const proposed = a.next("match.proposed");
    await a.joinQueue({ topic });
    await b.joinQueue({ topic });
    const p = await proposed;
    const cancelledB = b.next("match.cancelled");
    const cancelledA = a.next("match.cancelled");
    await a.declineProposal(p.proposal_id);
    assert.equal((await cancelledA).reason, "declined");
    const cb = await cancelledB;
    assert.equal(cb.reason, "peer_declined");
    assert.equal(cb.requeued, true);
    assert.equal(a.match.queued, false);
    assert.equal(b.match.queued, true);
  } finally {
    a.close();
    b.close();
  }
});

test("invites: send, receive, accept into a call; an offline user is unavailable", async () => {
  const [a, b] = [await member("IA"), await member("IB")];
  try {
    const received = b.next("invite.received");
    const sent = await a.invite(b.userId);
    assert.equal(sent.type, "invite.sent");
    const r = await received;
    assert.equal(r.invite_id, sent.invite_id);
    assert.equal(r.from.user_id, a.userId);
    assert.ok(b.match.invites.has(r.invite_id));
    const accepted = a.next("invite.accepted");
    const confirmedA = a.next("match.confirmed");
    const confirmedB = b.next("match.confirmed");
    await b.acceptInvite(r.invite_id);
    await accepted;
    assert.equal((await confirmedA).role, "offerer", "the inviter offers");
    assert.equal((await confirmedB).role, "answerer");
    await a.hangup(a.match.call.call_id);

    await assert.rejects(a.invite(uniqueUser("nobody")), { code: "user_unavailable" });
  } finally {
    a.close();
    b.close();
  }
});

test("a revoked session closes with 4001 and the client does not reconnect", async () => {
  const { body: user } = await api("POST", "/api/users", { display_name: "Revoked" });
  const { body: issued } = await api("POST", `/api/users/${user.id}/sessions`, {});
  const { WebSocket: Counting, opened } = countingWebSocket();
  const c = new RendezvousClient({ baseUrl: BASE, token: issued.token, WebSocket: Counting, reconnect: { initialMs: 20, maxMs: 50 } });
  await c.connect();
  const closed = c.next("closed");
  assert.equal((await api("DELETE", `/api/sessions/${issued.session.id}`)).status, 204);
  const e = await closed;
  assert.equal(e.code, 4001);
  assert.match(e.description, /revoked/);
  assert.equal(c.state, "closed");
  assert.equal(c.closeCode, 4001);
  // Long enough for several backoff steps had it tried again.
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(opened.length, 1);
});

test("a replaced connection (4010) stops; the newer ones stay", async () => {
  const user = uniqueUser("rep");
  const { WebSocket: Counting, opened } = countingWebSocket();
  const first = await connected(user, { WebSocket: Counting });
  const closed = first.next("closed");
  const second = await connected(user);
  const third = await connected(user);
  try {
    assert.equal((await closed).code, 4010);
    assert.equal(first.state, "closed");
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(opened.length, 1, "no reconnect after 4010");
    assert.equal(second.state, "open");
    assert.equal(third.state, "open");
  } finally {
    second.close();
    third.close();
  }
});

test("guest sign-in gives a token the client connects with", async () => {
  const guest = await guestSignIn(BASE, "Ada Guest");
  assert.match(guest.token, /^rv_/);
  assert.equal(guest.user.display_name, "Ada Guest");
  const c = new RendezvousClient({ baseUrl: BASE, token: () => guest.token, WebSocket });
  const welcome = await c.connect();
  assert.equal(welcome.user_id, guest.user.id);
  c.close();
  await assert.rejects(guestSignIn(BASE, "x".repeat(200)), (err) => err instanceof RendezvousError && err.code === "invalid");
});

test("an unreachable server is retried with growing, jittered delays", async () => {
  const c = new RendezvousClient({
    url: "ws://127.0.0.1:9/ws",
    token: "dev-nobody",
    WebSocket,
    reconnect: { initialMs: 10, maxMs: 80, busyMinMs: 0 },
  });
  const delays = [];
  c.on("disconnected", (e) => delays.push(e.delayMs));
  c.connect().catch(() => {});
  await until("four attempts", () => delays.length >= 4);
  c.close();
  assert.equal(c.state, "closed");
  assert.ok(delays[3] >= 40 && delays[3] <= 80, `delays ${delays}`);
  assert.ok(delays[0] <= 10, `delays ${delays}`);
});
