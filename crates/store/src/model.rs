//! Users, sessions and calls, with the validation the API applies to input.

use serde::{Deserialize, Deserializer, Serialize};

/// A user profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    /// Server-assigned id (UUID).
    pub id: String,
    /// Name shown to other users.
    pub display_name: String,
    /// One of [`GENDERS`].
    pub gender: String,
    /// Profile photo URL.
    pub selfie_url: Option<String>,
    /// Intro video URL.
    pub video_url: Option<String>,
    /// Free text.
    pub bio: String,
    /// Social handles: short lowercase keys to URLs or handles.
    pub socials: serde_json::Map<String, serde_json::Value>,
    /// Creation time, Unix ms.
    pub created_at: i64,
    /// Last activity, Unix ms (written behind, may lag a few seconds).
    pub last_active: i64,
    /// Banned users cannot authenticate.
    pub banned: bool,
}

/// Accepted values of `gender`.
pub const GENDERS: &[&str] = &["female", "male", "nonbinary", "other", "unspecified"];

/// Input for creating a user.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// Required, 1–64 characters.
    pub display_name: String,
    /// Defaults to `unspecified`.
    #[serde(default)]
    pub gender: Option<String>,
    /// `https://` URL.
    #[serde(default)]
    pub selfie_url: Option<String>,
    /// `https://` URL.
    #[serde(default)]
    pub video_url: Option<String>,
    /// At most 500 characters.
    #[serde(default)]
    pub bio: Option<String>,
    /// At most 10 entries.
    #[serde(default)]
    pub socials: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Input for updating a user; absent fields are kept, `null` clears a URL.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserPatch {
    /// New display name.
    #[serde(default)]
    pub display_name: Option<String>,
    /// New gender.
    #[serde(default)]
    pub gender: Option<String>,
    /// New selfie URL, or `null` to clear.
    #[serde(default, deserialize_with = "double_option")]
    pub selfie_url: Option<Option<String>>,
    /// New video URL, or `null` to clear.
    #[serde(default, deserialize_with = "double_option")]
    pub video_url: Option<Option<String>>,
    /// New bio.
    #[serde(default)]
    pub bio: Option<String>,
    /// New socials (replaces the whole map).
    #[serde(default)]
    pub socials: Option<serde_json::Map<String, serde_json::Value>>,
    /// Ban or unban.
    #[serde(default)]
    pub banned: Option<bool>,
}

fn double_option<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// A stored session (the token itself is never stored, only its hash).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Session {
    /// Session id (UUID), used to revoke it.
    pub id: String,
    /// Owner.
    pub user_id: String,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms.
    pub expires_at: i64,
    /// Unix ms, when revoked.
    pub revoked_at: Option<i64>,
    /// Client user agent, if the app backend passed it.
    pub user_agent: Option<String>,
    /// Client IP, if the app backend passed it.
    pub ip: Option<String>,
}

/// A freshly issued session: the only time the token is visible.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IssuedSession {
    /// The bearer token to hand to the client.
    pub token: String,
    /// The stored session.
    pub session: Session,
}

/// What a valid token resolves to; cached in the session LRU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSession {
    /// Session id.
    pub session_id: String,
    /// Owner.
    pub user_id: String,
    /// Unix ms.
    pub expires_at: i64,
}

/// One call between two users.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Call {
    /// Call id (UUID).
    pub id: String,
    /// One participant.
    pub user_a: String,
    /// The other participant.
    pub user_b: String,
    /// Unix ms.
    pub started_at: i64,
    /// Unix ms, when ended.
    pub ended_at: Option<i64>,
    /// Why it ended (`hangup`, `disconnect`, `shutdown`, …).
    pub end_reason: Option<String>,
    /// The user who ended it (hung up); absent for disconnects and shutdowns.
    pub ended_by: Option<String>,
    /// `ended_at - started_at`, once ended.
    pub duration_ms: Option<i64>,
}

/// A report one user filed about another after a call, for the app backend.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Report id (UUID).
    pub id: String,
    /// Who reported.
    pub reporter: String,
    /// Who was reported.
    pub reported: String,
    /// One of the protocol's report reasons.
    pub reason: String,
    /// Optional free text.
    pub details: Option<String>,
    /// Unix ms.
    pub created_at: i64,
}

/// Input that fails validation; `field` names the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid `{field}`: {problem}")]
pub struct Invalid {
    /// The field.
    pub field: &'static str,
    /// What is wrong.
    pub problem: String,
}

fn invalid(field: &'static str, problem: impl Into<String>) -> Result<(), Invalid> {
    Err(Invalid { field, problem: problem.into() })
}

pub(crate) fn check_display_name(v: &str) -> Result<(), Invalid> {
    let n = v.trim().chars().count();
    if n == 0 || n > 64 || v.chars().any(char::is_control) {
        return invalid("display_name", "must be 1 to 64 characters without control characters");
    }
    Ok(())
}

pub(crate) fn check_gender(v: &str) -> Result<(), Invalid> {
    if !GENDERS.contains(&v) {
        return invalid("gender", format!("must be one of {}", GENDERS.join(", ")));
    }
    Ok(())
}

pub(crate) fn check_url(field: &'static str, v: &str) -> Result<(), Invalid> {
    let rest = v.strip_prefix("https://").or_else(|| v.strip_prefix("http://"));
    match rest {
        Some(r) if !r.is_empty() && v.len() <= 2048 && !v.chars().any(|c| c.is_whitespace() || c.is_control()) => {
            Ok(())
        }
        _ => invalid(field, "must be an http(s) URL of at most 2048 characters"),
    }
}

pub(crate) fn check_bio(v: &str) -> Result<(), Invalid> {
    if v.chars().count() > 500 {
        return invalid("bio", "must be at most 500 characters");
    }
    Ok(())
}

pub(crate) fn check_socials(v: &serde_json::Map<String, serde_json::Value>) -> Result<(), Invalid> {
    if v.len() > 10 {
        return invalid("socials", "at most 10 entries");
    }
    for (k, val) in v {
        let key_ok =
            (1..=32).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !key_ok {
            return invalid("socials", format!("key `{k}` must be 1-32 of [a-z0-9_]"));
        }
        match val.as_str() {
            Some(s) if s.len() <= 256 => {}
            _ => {
                return invalid("socials", format!("value of `{k}` must be a string of at most 256 bytes"));
            }
        }
    }
    Ok(())
}

impl NewUser {
    /// Checks every field.
    pub fn validate(&self) -> Result<(), Invalid> {
        check_display_name(&self.display_name)?;
        if let Some(g) = &self.gender {
            check_gender(g)?;
        }
        if let Some(u) = &self.selfie_url {
            check_url("selfie_url", u)?;
        }
        if let Some(u) = &self.video_url {
            check_url("video_url", u)?;
        }
        if let Some(b) = &self.bio {
            check_bio(b)?;
        }
        if let Some(s) = &self.socials {
            check_socials(s)?;
        }
        Ok(())
    }
}

impl UserPatch {
    /// Checks every present field.
    pub fn validate(&self) -> Result<(), Invalid> {
        if let Some(n) = &self.display_name {
            check_display_name(n)?;
        }
        if let Some(g) = &self.gender {
            check_gender(g)?;
        }
        if let Some(Some(u)) = &self.selfie_url {
            check_url("selfie_url", u)?;
        }
        if let Some(Some(u)) = &self.video_url {
            check_url("video_url", u)?;
        }
        if let Some(b) = &self.bio {
            check_bio(b)?;
        }
        if let Some(s) = &self.socials {
            check_socials(s)?;
        }
        Ok(())
    }

    /// Applies the patch to `user`.
    pub fn apply(&self, user: &mut User) {
        if let Some(n) = &self.display_name {
            user.display_name = n.trim().to_owned();
        }
        if let Some(g) = &self.gender {
            user.gender = g.clone();
        }
        if let Some(u) = &self.selfie_url {
            user.selfie_url = u.clone();
        }
        if let Some(u) = &self.video_url {
            user.video_url = u.clone();
        }
        if let Some(b) = &self.bio {
            user.bio = b.clone();
        }
        if let Some(s) = &self.socials {
            user.socials = s.clone();
        }
        if let Some(b) = self.banned {
            user.banned = b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_field() {
        let ok = NewUser { display_name: "Ada".into(), ..Default::default() };
        ok.validate().unwrap();
        let cases = [
            (NewUser { display_name: " ".into(), ..Default::default() }, "display_name"),
            (NewUser { display_name: "x".repeat(65), ..Default::default() }, "display_name"),
            (NewUser { gender: Some("robot".into()), ..ok.clone() }, "gender"),
            (NewUser { selfie_url: Some("javascript:alert(1)".into()), ..ok.clone() }, "selfie_url"),
            (NewUser { video_url: Some("https://a b".into()), ..ok.clone() }, "video_url"),
            (NewUser { bio: Some("x".repeat(501)), ..ok.clone() }, "bio"),
        ];
        for (input, field) in cases {
            assert_eq!(input.validate().unwrap_err().field, field);
        }
        let socials: serde_json::Map<_, _> = serde_json::from_str(r#"{"Insta!":"x"}"#).unwrap();
        assert_eq!(NewUser { socials: Some(socials), ..ok }.validate().unwrap_err().field, "socials");
    }

    #[test]
    fn patch_distinguishes_absent_from_null() {
        let p: UserPatch = serde_json::from_str(r#"{"selfie_url":null}"#).unwrap();
        assert_eq!(p.selfie_url, Some(None));
        assert_eq!(p.video_url, None);
        assert!(serde_json::from_str::<UserPatch>(r#"{"nickname":"x"}"#).is_err());
    }
}
