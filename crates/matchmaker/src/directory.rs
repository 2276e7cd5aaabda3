//! What the matchmaker needs from the outside: the user directory and call history
//! ([`Directory`], implemented by the server over the store) and presence
//! ([`ActivitySink`], implemented by the server over presence).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A boxed future, so the traits here stay object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A user's cooldown partners and when each cooldown ends (Unix ms).
pub type CooldownList = Arc<Vec<(String, i64)>>;

/// What a peer is shown of a user in `match.proposed`, `match.confirmed` and `invite.received`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicProfile {
    /// The user id.
    pub user_id: String,
    /// Name shown to other users.
    pub display_name: String,
    /// One of the store's genders.
    pub gender: String,
    /// Profile photo URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selfie_url: Option<String>,
    /// Intro video URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video_url: Option<String>,
    /// Free text.
    #[serde(default)]
    pub bio: String,
}

/// A user as the matchmaker sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// Shown to peers; `public.gender` is what preferences are checked against.
    pub public: PublicProfile,
    /// Banned users are never queued, matched or invited.
    pub banned: bool,
}

/// How a call came about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallOrigin {
    /// Two queued users were matched (cooldowns apply).
    Matched,
    /// One user invited the other (cooldowns do not apply; blocks do).
    Invited,
}

/// Why a call ended (stored as `end_reason`, sent in `call.ended`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// One side sent `call.hangup`.
    Hangup,
    /// One side stayed disconnected past the reconnect grace.
    Disconnect,
    /// The instance coordinating the call shut down.
    Shutdown,
    /// The instance coordinating the call died without a goodbye (killed); a survivor
    /// ended the call and wrote its row.
    InstanceLost,
}

impl EndReason {
    /// The stored and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Hangup => "hangup",
            EndReason::Disconnect => "disconnect",
            EndReason::Shutdown => "shutdown",
            EndReason::InstanceLost => "instance_lost",
        }
    }
}

/// A finished call, for the history row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallEnd {
    /// The id `start_call` returned.
    pub call_id: String,
    /// The offerer.
    pub user_a: String,
    /// The answerer.
    pub user_b: String,
    /// Unix ms, as `start_call` saw it.
    pub started_at_ms: i64,
    /// Unix ms.
    pub ended_at_ms: i64,
    /// Why it ended.
    pub reason: EndReason,
    /// Who ended it (the one who hung up or stayed away); `None` for a shutdown.
    pub ended_by: Option<String>,
}

impl CallEnd {
    /// `ended_at_ms - started_at_ms`.
    pub fn duration_ms(&self) -> i64 {
        self.ended_at_ms - self.started_at_ms
    }
}

/// A report filed after a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Who reports.
    pub reporter: String,
    /// Who is reported.
    pub reported: String,
    /// The fixed reason.
    pub reason: rendezvous_protocol::ReportReason,
    /// Optional explanation, at most 500 characters.
    pub text: Option<String>,
}

/// A started call as the directory recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartedCall {
    /// The call id (the store's UUID).
    pub call_id: String,
    /// Unix ms.
    pub started_at_ms: i64,
}

/// The directory failed; the matchmaker answers the user with `unavailable`.
#[derive(Debug, thiserror::Error)]
#[error("directory unavailable")]
pub struct DirectoryError(#[source] pub Box<dyn std::error::Error + Send + Sync>);

/// The user directory and call history (the store, in the server). Every call is made
/// from a spawned task, never from the matching loop, and results are cached there.
pub trait Directory: Send + Sync + 'static {
    /// The user's profile; `None` if the user does not exist.
    fn profile<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, Result<Option<Profile>, DirectoryError>>;
    /// Users that `user_id` blocked or was blocked by.
    fn blocks<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, Result<Arc<Vec<String>>, DirectoryError>>;
    /// Users in a cooldown with `user_id` right now, each with when it ends (Unix ms);
    /// loaded once per join, so a scan never asks about a pair.
    fn cooldowns<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, Result<CooldownList, DirectoryError>>;
    /// Writes the start of a call between `a` (offerer) and `b`; returns its id.
    fn start_call<'a>(
        &'a self,
        a: &'a str,
        b: &'a str,
        origin: CallOrigin,
    ) -> BoxFuture<'a, Result<StartedCall, DirectoryError>>;
    /// Writes the end of a call.
    fn end_call<'a>(&'a self, end: &'a CallEnd) -> BoxFuture<'a, Result<(), DirectoryError>>;
    /// Starts (or extends) a cooldown between two users until `until_ms` (Unix ms).
    fn put_cooldown<'a>(&'a self, a: &'a str, b: &'a str, until_ms: i64) -> BoxFuture<'a, Result<(), DirectoryError>>;
    /// `blocker` blocks `blocked`.
    fn block<'a>(&'a self, blocker: &'a str, blocked: &'a str) -> BoxFuture<'a, Result<(), DirectoryError>>;
    /// Files a report for the app backend.
    fn report<'a>(&'a self, report: &'a Report) -> BoxFuture<'a, Result<(), DirectoryError>>;
}

/// What presence shows a user doing, as far as matchmaking decides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activity {
    /// Not queued and not in a call.
    Idle,
    /// Waiting in the queue or answering a proposal.
    InQueue,
    /// In a call.
    InCall,
}

/// The matchmaker's link to presence (matchmaker drives presence, never the reverse).
/// Called from the matchmaker task: implementations must not block.
pub trait ActivitySink: Send + Sync + 'static {
    /// Shows `activity` for `user_id` on this instance's presence.
    fn set_activity(&self, user_id: &str, activity: Activity);
    /// Whether the user accepts invites now (presence `available`, not `away`).
    fn is_available(&self, user_id: &str) -> bool;
}
