// Types for /client/rendezvous.js. Protocol reference: docs/protocol.md.

export type PresenceState = "online" | "available" | "away" | "in_queue" | "in_call";
export type Gender = "female" | "male" | "nonbinary" | "other" | "unspecified";

/** A public profile as matchmaking sends it (`peer`, `from`). */
export interface Profile {
  user_id: string;
  display_name: string;
  gender: Gender;
  selfie_url?: string;
  video_url?: string;
  bio?: string;
}

/** One user in a presence window. */
export interface PresenceEntry {
  id: string;
  display_name: string;
  gender: Gender;
  selfie_url?: string;
  state: PresenceState;
  status?: string;
  /** Unix ms of the user's last own action. */
  active_at: number;
}

export interface Welcome {
  type: "welcome";
  v: number;
  conn_id: string;
  user_id: string;
  instance: string;
  heartbeat_interval_ms: number;
}

export interface PresenceSnapshot {
  type: "presence.snapshot";
  topic: string;
  seq: number;
  count: number;
  entries: PresenceEntry[];
}

export interface PresenceDiff {
  type: "presence.diff";
  topic: string;
  seq: number;
  count: number;
  joins: PresenceEntry[];
  updates: PresenceEntry[];
  leaves: string[];
}

export interface MatchPrefs {
  genders?: Gender[];
  region?: string;
  topic?: string;
}

export interface MatchProposed {
  type: "match.proposed";
  proposal_id: string;
  peer: Profile;
  /** Milliseconds left to answer when it was sent. */
  deadline_ms: number;
}

export interface MatchConfirmed {
  type: "match.confirmed" | "call.resumed";
  call_id: string;
  peer: Profile;
  role: "offerer" | "answerer";
}

export interface MatchCancelled {
  type: "match.cancelled";
  proposal_id: string;
  reason: "declined" | "timeout" | "peer_declined" | "peer_timeout" | "peer_disconnected" | "unavailable" | "shutdown";
  requeued: boolean;
}

export interface InviteSent {
  type: "invite.sent";
  id?: string;
  invite_id: string;
  user_id: string;
  deadline_ms: number;
}

export interface InviteReceived {
  type: "invite.received";
  invite_id: string;
  from: Profile;
  deadline_ms: number;
}

export type SignalKind = "offer" | "answer" | "ice";

export interface CallSignal {
  type: "call.signal";
  call_id: string;
  kind: SignalKind;
  payload: unknown;
}

export interface CallEnded {
  type: "call.ended";
  call_id: string;
  reason: "hangup" | "disconnect" | "shutdown";
  ended_by?: string;
}

export interface IceServer {
  urls: string | string[];
  username?: string;
  credential?: string;
}

/** Any message from the server; `type` tells which (docs/protocol.md lists them all). */
export interface ServerMessage {
  type: string;
  id?: string | number;
  [field: string]: unknown;
}

export type ReportReason = "harassment" | "nudity" | "spam" | "underage" | "violence" | "other";

export interface ReconnectOptions {
  /** First delay (default 500 ms); doubles each attempt (`factor`), up to `maxMs` (15 s). */
  initialMs?: number;
  maxMs?: number;
  factor?: number;
  /** Floor for attempts after a refused handshake or 1013 (default 5 s, jittered). */
  busyMinMs?: number;
}

export interface ClientOptions {
  /** `wss://host/ws` (or `ws://`). Either this or `baseUrl`. */
  url?: string;
  /** The server's http(s) origin; the WebSocket URL is derived (`/ws`). */
  baseUrl?: string;
  /** A session token, or a function returning one (called before every attempt). */
  token: string | (() => string | Promise<string>);
  /** A WebSocket constructor (browsers: the global one; Node 20: `ws`). */
  WebSocket?: new (url: string) => WebSocket;
  reconnect?: ReconnectOptions;
  /** Ping every heartbeat interval and drop a silent socket (default true). */
  liveness?: boolean;
  /** Random source for jitter (tests make it deterministic). */
  random?: () => number;
}

export type ClientState = "idle" | "connecting" | "open" | "reconnecting" | "closed";

export interface DisconnectedEvent {
  code: number;
  reason?: string;
  delayMs: number;
  attempt: number;
  description: string;
}

export interface ClosedEvent {
  code: number;
  reason?: string;
  description: string;
}

export interface PresenceEvent {
  topic: string;
  view: PresenceView;
  snapshot: boolean;
  diff?: PresenceDiff;
}

export interface ClientEvents {
  state: { state: ClientState };
  welcome: Welcome;
  reconnected: Welcome;
  disconnected: DisconnectedEvent;
  closed: ClosedEvent;
  error: RendezvousError;
  presence: PresenceEvent;
  "presence.gap": { topic: string; expected: number; got: number };
  "presence.snapshot": PresenceSnapshot;
  "presence.diff": PresenceDiff;
  "server.draining": { type: "server.draining"; reconnect_after_ms: number };
  "match.queued": ServerMessage;
  "match.left": ServerMessage & { reason?: "shutdown" };
  "match.proposed": MatchProposed;
  "match.confirmed": MatchConfirmed;
  "match.cancelled": MatchCancelled;
  "invite.sent": InviteSent;
  "invite.received": InviteReceived;
  "invite.accepted": { type: "invite.accepted"; invite_id: string };
  "invite.declined": { type: "invite.declined"; invite_id: string; reason: "declined" | "unavailable" };
  "invite.expired": { type: "invite.expired"; invite_id: string };
  "invite.cancelled": { type: "invite.cancelled"; invite_id: string };
  "call.signal": CallSignal;
  "call.peer_reconnecting": { type: "call.peer_reconnecting"; call_id: string; grace_ms: number };
  "call.peer_reconnected": { type: "call.peer_reconnected"; call_id: string };
  "call.resumed": MatchConfirmed;
  "call.ended": CallEnded;
  "call.blocked": { type: "call.blocked"; user_id: string };
  "call.reported": { type: "call.reported"; user_id: string };
  "ice.servers": { type: "ice.servers"; ice_servers: IceServer[]; ttl_secs: number };
  message: ServerMessage;
  [type: string]: unknown;
}

declare class Emitter<Events> {
  on<K extends keyof Events & string>(type: K, fn: (event: Events[K]) => void): () => void;
  once<K extends keyof Events & string>(type: K, fn: (event: Events[K]) => void): () => void;
  off<K extends keyof Events & string>(type: K, fn: (event: Events[K]) => void): void;
  next<K extends keyof Events & string>(type: K, filter?: (event: Events[K]) => boolean, timeoutMs?: number): Promise<Events[K]>;
}

/** An error frame (or a local failure) with the server's code. */
export class RendezvousError extends Error {
  /** The server's `error.code` (e.g. `user_unavailable`), or `closed`, `timeout`, `not_connected`. */
  code: string;
  /** The request id the server named. */
  ref?: string | number;
  /** The type of the request that failed. */
  request?: string;
  /** Close code when `code` is `closed`. */
  closeCode?: number;
  /** Plain words for a person. */
  readonly description: string;
}

/** One topic's current window. */
export class PresenceView {
  readonly topic: string;
  seq: number;
  count: number;
  entries: Map<string, PresenceEntry>;
  ready: boolean;
  list(): PresenceEntry[];
  get(userId: string): PresenceEntry | undefined;
}

export interface MatchState {
  queued: boolean;
  proposal: MatchProposed | null;
  call: MatchConfirmed | null;
  invites: Map<string, InviteSent | InviteReceived>;
}

export class RendezvousClient extends Emitter<ClientEvents> {
  constructor(options: ClientOptions);
  readonly state: ClientState;
  readonly welcome: Welcome | null;
  readonly userId: string | null;
  /** The close code that stopped the client for good (4001, 4009, 4010). */
  readonly closeCode: number | null;
  readonly match: MatchState;
  connect(): Promise<Welcome>;
  close(): void;
  /** Sends any protocol message; resolves with the answer when the message has one. */
  send(type: string, fields?: Record<string, unknown>, options?: { timeoutMs?: number }): Promise<ServerMessage>;
  nextDelay(code: number): number;
  subscribe(topic: string): Promise<PresenceView>;
  unsubscribe(topic: string): Promise<void>;
  view(topic: string): PresenceView | undefined;
  setPresence(p: { state?: "available" | "away"; status?: string }): Promise<void>;
  joinQueue(prefs?: MatchPrefs): Promise<ServerMessage>;
  leaveQueue(): Promise<ServerMessage>;
  acceptProposal(proposalId: string): Promise<ServerMessage>;
  declineProposal(proposalId: string): Promise<ServerMessage>;
  invite(userId: string): Promise<InviteSent>;
  acceptInvite(inviteId: string): Promise<ServerMessage>;
  declineInvite(inviteId: string): Promise<ServerMessage>;
  cancelInvite(inviteId: string): Promise<ServerMessage>;
  signal(callId: string, kind: SignalKind, payload: unknown): Promise<ServerMessage>;
  hangup(callId: string): Promise<ServerMessage>;
  block(userId: string): Promise<ServerMessage>;
  report(userId: string, reason: ReportReason, text?: string): Promise<ServerMessage>;
  iceServers(): Promise<IceServer[]>;
  startCall(confirmed: MatchConfirmed, options?: CallOptions): Promise<CallSession>;
}

export interface CallOptions {
  localStream?: MediaStream;
  rtcConfiguration?: RTCConfiguration;
  RTCPeerConnection?: typeof RTCPeerConnection;
}

export interface CallEvents {
  state: RTCPeerConnectionState;
  remotestream: MediaStream;
  peer: { reconnecting: boolean; graceMs?: number };
  ended: CallEnded;
  error: Error;
  [type: string]: unknown;
}

export class CallSession extends Emitter<CallEvents> {
  readonly callId: string;
  readonly peer: Profile;
  readonly role: "offerer" | "answerer";
  readonly pc: RTCPeerConnection;
  readonly ended: boolean;
  remoteStream: MediaStream | null;
  hangup(): Promise<void>;
}

export function describeClose(code: number): string;
export function describeError(code: string): string;
export function sortEntries(entries: Iterable<PresenceEntry>): PresenceEntry[];
export function guestSignIn(
  baseUrl: string,
  displayName?: string,
  options?: { fetch?: typeof fetch },
): Promise<{ user: { id: string; display_name: string } & Record<string, unknown>; token: string; session: { id: string; user_id: string } }>;
