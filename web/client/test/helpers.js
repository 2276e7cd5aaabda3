// Shared by the Node tests: the server under test comes from the environment (the Rust
// harness in crates/server/tests/browser starts it), and `ws` stands in for WebSocket.
import WebSocket from "ws";
import { RendezvousClient } from "../rendezvous.js";

/** The server's http origin, e.g. http://127.0.0.1:40123. */
export const BASE = process.env.RENDEZVOUS_URL;
/** The server's API key (for revoking sessions). */
export const API_KEY = process.env.RENDEZVOUS_API_KEY;
if (!BASE) throw new Error("RENDEZVOUS_URL is not set: run these through `cargo test -p rendezvous --test browser node`");

let n = 0;
/** A user id no other test uses. */
export function uniqueUser(prefix = "u") {
  return `${prefix}-${process.pid}-${Date.now().toString(36)}-${n++}`;
}

/** A WebSocket constructor that counts the sockets it opens. */
export function countingWebSocket() {
  const opened = [];
  class Counting extends WebSocket {
    constructor(url) {
      super(url);
      opened.push(url);
    }
  }
  return { WebSocket: Counting, opened };
}

/** A connected client for `dev-<user>` (or the given token). */
export async function connected(userOrToken, options = {}) {
  const token = userOrToken.startsWith("rv_") ? userOrToken : `dev-${userOrToken}`;
  const client = new RendezvousClient({ baseUrl: BASE, token, WebSocket, reconnect: { initialMs: 50, maxMs: 400 }, ...options });
  await client.connect();
  return client;
}

/** Polls `check` until it returns truthy; fails after `ms`. */
export async function until(what, check, ms = 10000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Calls the app API with the server's key. */
export async function api(method, path, body) {
  const res = await fetch(new URL(path, BASE), {
    method,
    headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null };
}

/** A connected client for a new user with a profile (matchmaking needs one), via the API. */
export async function member(name, options = {}) {
  const { status, body: user } = await api("POST", "/api/users", { display_name: name });
  if (status !== 201) throw new Error(`creating a user answered ${status}`);
  const { body: issued } = await api("POST", `/api/users/${user.id}/sessions`, {});
  return connected(issued.token, options);
}
