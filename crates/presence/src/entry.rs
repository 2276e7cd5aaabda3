//! What is known about one user: the states, the per-instance record, and the entry clients see.

use std::cmp::{Ordering, Reverse};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use rendezvous_protocol::SettableState;

use crate::directory::Profile;

/// A user id.
pub(crate) type UserId = Arc<str>;

/// What matchmaking says the user is doing; it outranks the chosen state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activity {
    /// Not queued and not in a call.
    #[default]
    Idle,
    /// Waiting for a match.
    InQueue,
    /// In a call.
    InCall,
}

impl Activity {
    fn rank(self) -> u8 {
        match self {
            Activity::Idle => 0,
            Activity::InQueue => 1,
            Activity::InCall => 2,
        }
    }
}

/// The state other users see. `offline` is never shown: an offline user leaves the topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceState {
    /// Connected, nothing chosen yet.
    Online,
    /// Chose `available`.
    Available,
    /// Chose `away`.
    Away,
    /// Matchmaking: waiting for a match.
    InQueue,
    /// Matchmaking: in a call.
    InCall,
}

impl PresenceState {
    /// Position in a window: available users first, away users last.
    pub(crate) fn window_rank(self) -> u8 {
        match self {
            PresenceState::Available => 0,
            PresenceState::Online => 1,
            PresenceState::InQueue => 2,
            PresenceState::InCall => 3,
            PresenceState::Away => 4,
        }
    }
}

/// What one instance says about one of its users; the same in every topic the user is in.
/// Shipped on the bus, so remote instances never query the store for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Entry {
    pub(crate) profile: Arc<Profile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) chosen: Option<SettableState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) status: Option<Arc<str>>,
    #[serde(default)]
    pub(crate) activity: Activity,
    /// Unix ms of the user's last own action (connect, `presence.set`, matchmaking); orders windows.
    pub(crate) active_at: i64,
    /// Unix ms of the last change to this record; the latest wins when instances disagree.
    pub(crate) updated_at: i64,
}

impl Entry {
    fn state(&self) -> PresenceState {
        match (self.activity, self.chosen) {
            (Activity::InCall, _) => PresenceState::InCall,
            (Activity::InQueue, _) => PresenceState::InQueue,
            (Activity::Idle, Some(SettableState::Available)) => PresenceState::Available,
            (Activity::Idle, Some(SettableState::Away)) => PresenceState::Away,
            (Activity::Idle, None) => PresenceState::Online,
        }
    }

    /// Which of two instances' records for one user wins: matchmaking activity first (it is
    /// set only where the user is being matched), then the latest change, then the instance name
    /// so that every instance picks the same one.
    pub(crate) fn precedence(&self, origin: &str, other: &Entry, other_origin: &str) -> Ordering {
        (self.activity.rank(), self.updated_at, origin).cmp(&(other.activity.rank(), other.updated_at, other_origin))
    }

    /// Window order of the entry `shown(id)` would return (see [`ShownEntry::window_key`]),
    /// without building it.
    pub(crate) fn window_key<'a>(&self, id: &'a str) -> (u8, Reverse<i64>, &'a str) {
        (self.state().window_rank(), Reverse(self.active_at), id)
    }

    /// Whether `shown` returns equal entries for `self` and `other` (same id), without
    /// building either: topics keep records, not shown entries, and compare them this way.
    pub(crate) fn shows_same(&self, other: &Entry) -> bool {
        let (a, b) = (&*self.profile, &*other.profile);
        self.state() == other.state()
            && self.active_at == other.active_at
            && self.status == other.status
            && a.display_name == b.display_name
            && a.gender == b.gender
            && a.selfie_url == b.selfie_url
    }

    /// The client-facing entry.
    pub(crate) fn shown(&self, id: &UserId) -> ShownEntry {
        ShownEntry {
            id: id.clone(),
            display_name: self.profile.display_name.clone(),
            gender: self.profile.gender.clone(),
            selfie_url: self.profile.selfie_url.clone(),
            state: self.state(),
            status: self.status.clone(),
            active_at: self.active_at,
        }
    }
}

/// One user as subscribers see it in `presence.snapshot` and `presence.diff`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShownEntry {
    /// User id.
    pub id: Arc<str>,
    /// Name to show.
    pub display_name: Arc<str>,
    /// Gender as stored.
    pub gender: Arc<str>,
    /// Profile photo URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selfie_url: Option<Arc<str>>,
    /// Current state.
    pub state: PresenceState,
    /// Short status text the user set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Arc<str>>,
    /// Unix ms of the user's last own action.
    pub active_at: i64,
}

impl ShownEntry {
    /// Window order: smaller comes first (available first, then most recently active, then id).
    pub fn window_key(&self) -> (u8, Reverse<i64>, &str) {
        (self.state.window_rank(), Reverse(self.active_at), &self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(activity: Activity, chosen: Option<SettableState>, updated_at: i64) -> Entry {
        Entry {
            profile: Arc::new(Profile::default()),
            chosen,
            status: None,
            activity,
            active_at: updated_at,
            updated_at,
        }
    }

    #[test]
    fn matchmaking_outranks_the_chosen_state() {
        assert_eq!(entry(Activity::InCall, Some(SettableState::Away), 1).state(), PresenceState::InCall);
        assert_eq!(entry(Activity::InQueue, None, 1).state(), PresenceState::InQueue);
        assert_eq!(entry(Activity::Idle, None, 1).state(), PresenceState::Online);
        assert_eq!(entry(Activity::Idle, Some(SettableState::Away), 1).state(), PresenceState::Away);
    }

    #[test]
    fn precedence_is_activity_then_latest_then_name() {
        let old_call = entry(Activity::InCall, None, 1);
        let new_idle = entry(Activity::Idle, None, 9);
        assert_eq!(old_call.precedence("a", &new_idle, "b"), Ordering::Greater);
        let newer = entry(Activity::Idle, None, 10);
        assert_eq!(new_idle.precedence("z", &newer, "a"), Ordering::Less);
        assert_eq!(newer.precedence("b", &newer, "a"), Ordering::Greater);
    }

    #[test]
    fn shows_same_and_window_key_agree_with_the_shown_entry() {
        let id: UserId = "u".into();
        let base = entry(Activity::Idle, None, 5);
        let named = |name: &str| Arc::new(Profile { display_name: name.into(), ..Profile::default() });
        let variants = [
            base.clone(),
            Entry { updated_at: 9, ..base.clone() },
            Entry { profile: Arc::new(Profile::default()), ..base.clone() },
            Entry { profile: named("x"), ..base.clone() },
            Entry { profile: Arc::new(Profile { gender: "g".into(), ..Profile::default() }), ..base.clone() },
            Entry { profile: Arc::new(Profile { selfie_url: Some("s".into()), ..Profile::default() }), ..base.clone() },
            Entry { chosen: Some(SettableState::Away), ..base.clone() },
            Entry { chosen: Some(SettableState::Away), updated_at: 7, ..base.clone() },
            Entry { activity: Activity::InCall, ..base.clone() },
            Entry { activity: Activity::InCall, chosen: Some(SettableState::Away), ..base.clone() },
            Entry { status: Some("hi".into()), ..base.clone() },
            Entry { active_at: 6, ..base.clone() },
        ];
        for a in &variants {
            assert_eq!(a.window_key(&id), a.shown(&id).window_key());
            for b in &variants {
                assert_eq!(a.shows_same(b), a.shown(&id) == b.shown(&id), "{a:?} vs {b:?}");
            }
        }
        // Not vacuous: both outcomes occur.
        assert!(variants[0].shows_same(&variants[1]) && !variants[0].shows_same(&variants[3]));
    }

    #[test]
    fn window_order_puts_available_then_recent_first() {
        let id: UserId = "u".into();
        let avail_old = entry(Activity::Idle, Some(SettableState::Available), 1).shown(&id);
        let online_new = entry(Activity::Idle, None, 5).shown(&id);
        let online_newer = entry(Activity::Idle, None, 6).shown(&id);
        assert!(avail_old.window_key() < online_new.window_key());
        assert!(online_newer.window_key() < online_new.window_key());
    }
}
