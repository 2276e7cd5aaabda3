//! Row shapes shared by both backends (`FromRow` is generic over the row type).

use crate::model::{AuthSession, Call, Session, User};

#[derive(sqlx::FromRow)]
pub(super) struct UserRow {
    id: String,
    display_name: String,
    gender: String,
    selfie_url: Option<String>,
    video_url: Option<String>,
    bio: String,
    socials: String,
    created_at: i64,
    last_active: i64,
    banned: bool,
}

impl From<UserRow> for User {
    fn from(r: UserRow) -> Self {
        let socials = match serde_json::from_str(&r.socials) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => {
                tracing::warn!(user_id = %r.id, "stored socials are not a JSON object; serving none");
                serde_json::Map::new()
            }
        };
        User {
            id: r.id,
            display_name: r.display_name,
            gender: r.gender,
            selfie_url: r.selfie_url,
            video_url: r.video_url,
            bio: r.bio,
            socials,
            created_at: r.created_at,
            last_active: r.last_active,
            banned: r.banned,
        }
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct AuthRow {
    id: String,
    user_id: String,
    expires_at: i64,
}

impl From<AuthRow> for AuthSession {
    fn from(r: AuthRow) -> Self {
        AuthSession { session_id: r.id, user_id: r.user_id, expires_at: r.expires_at }
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct SessionRow {
    id: String,
    user_id: String,
    created_at: i64,
    expires_at: i64,
    revoked_at: Option<i64>,
    user_agent: Option<String>,
    ip: Option<String>,
}

impl From<SessionRow> for Session {
    fn from(r: SessionRow) -> Self {
        Session {
            id: r.id,
            user_id: r.user_id,
            created_at: r.created_at,
            expires_at: r.expires_at,
            revoked_at: r.revoked_at,
            user_agent: r.user_agent,
            ip: r.ip,
        }
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct CallRow {
    id: String,
    user_a: String,
    user_b: String,
    started_at: i64,
    ended_at: Option<i64>,
    end_reason: Option<String>,
    ended_by: Option<String>,
}

impl From<CallRow> for Call {
    fn from(r: CallRow) -> Self {
        Call {
            id: r.id,
            user_a: r.user_a,
            user_b: r.user_b,
            started_at: r.started_at,
            ended_at: r.ended_at,
            end_reason: r.end_reason,
            ended_by: r.ended_by,
            duration_ms: r.ended_at.map(|end| end - r.started_at),
        }
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct ReportRow {
    id: String,
    reporter: String,
    reported: String,
    reason: String,
    details: Option<String>,
    created_at: i64,
}

impl From<ReportRow> for crate::model::Report {
    fn from(r: ReportRow) -> Self {
        crate::model::Report {
            id: r.id,
            reporter: r.reporter,
            reported: r.reported,
            reason: r.reason,
            details: r.details,
            created_at: r.created_at,
        }
    }
}
