//! The statements, one set for both backends. Reads run on the read pool; writes on the
//! write pool, which on SQLite is one connection (see `Db::connect`).

use super::rows::{AuthRow, CallRow, ReportRow, SessionRow, UserRow};
use super::{Db, with_conn};
use crate::error::StoreError;
use crate::model::{AuthSession, Call, Session, User};

impl Db {
    pub(crate) async fn insert_user(&self, u: &User) -> Result<(), StoreError> {
        with_conn!(self, write "insert_user", |c| {
            sqlx::query(
                "INSERT INTO users (id, display_name, gender, selfie_url, video_url, bio, socials, created_at, last_active, banned)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(&u.id)
            .bind(&u.display_name)
            .bind(&u.gender)
            .bind(&u.selfie_url)
            .bind(&u.video_url)
            .bind(&u.bio)
            .bind(serde_json::Value::Object(u.socials.clone()).to_string())
            .bind(u.created_at)
            .bind(u.last_active)
            .bind(u.banned)
            .execute(&mut *c)
            .await?;
        });
        Ok(())
    }

    pub(crate) async fn user(&self, id: &str) -> Result<Option<User>, StoreError> {
        let row: Option<UserRow> = with_conn!(self, read "user_by_id", |c| {
            sqlx::query_as(
                "SELECT id, display_name, gender, selfie_url, video_url, bio, socials, created_at, last_active, banned FROM users WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(&mut *c)
            .await?
        });
        Ok(row.map(User::from))
    }

    pub(crate) async fn update_user(&self, u: &User) -> Result<bool, StoreError> {
        let done = with_conn!(self, write "update_user", |c| {
            sqlx::query(
                "UPDATE users SET display_name = $1, gender = $2, selfie_url = $3, video_url = $4, bio = $5, socials = $6, banned = $7
                 WHERE id = $8",
            )
            .bind(&u.display_name)
            .bind(&u.gender)
            .bind(&u.selfie_url)
            .bind(&u.video_url)
            .bind(&u.bio)
            .bind(serde_json::Value::Object(u.socials.clone()).to_string())
            .bind(u.banned)
            .bind(&u.id)
            .execute(&mut *c)
            .await?
            .rows_affected()
        });
        Ok(done == 1)
    }

    pub(crate) async fn delete_user(&self, id: &str) -> Result<bool, StoreError> {
        let done = with_conn!(self, write "delete_user", |c| {
            sqlx::query("DELETE FROM users WHERE id = $1").bind(id).execute(&mut *c).await?.rows_affected()
        });
        Ok(done == 1)
    }

    pub(crate) async fn insert_session(&self, s: &Session, token_hash: &[u8]) -> Result<(), StoreError> {
        with_conn!(self, write "insert_session", |c| {
            sqlx::query(
                "INSERT INTO sessions (id, token_hash, user_id, created_at, expires_at, revoked_at, user_agent, ip)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(&s.id)
            .bind(token_hash)
            .bind(&s.user_id)
            .bind(s.created_at)
            .bind(s.expires_at)
            .bind(s.revoked_at)
            .bind(&s.user_agent)
            .bind(&s.ip)
            .execute(&mut *c)
            .await?;
        });
        Ok(())
    }

    /// The live session behind a token hash: not revoked, not expired, user not banned.
    pub(crate) async fn session_by_hash(&self, token_hash: &[u8], now: i64) -> Result<Option<AuthSession>, StoreError> {
        let row: Option<AuthRow> = with_conn!(self, read "session_by_hash", |c| {
            sqlx::query_as(
                "SELECT s.id, s.user_id, s.expires_at FROM sessions s JOIN users u ON u.id = s.user_id
                 WHERE s.token_hash = $1 AND s.revoked_at IS NULL AND s.expires_at > $2 AND u.banned = $3",
            )
            .bind(token_hash)
            .bind(now)
            .bind(false)
            .fetch_optional(&mut *c)
            .await?
        });
        Ok(row.map(AuthSession::from))
    }

    /// Revokes one session; returns its owner if it was live.
    pub(crate) async fn revoke_session(&self, id: &str, now: i64) -> Result<Option<String>, StoreError> {
        let owner: Option<(String,)> = with_conn!(self, write "revoke_session", |c| {
            sqlx::query_as("UPDATE sessions SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL RETURNING user_id")
                .bind(now)
                .bind(id)
                .fetch_optional(&mut *c)
                .await?
        });
        Ok(owner.map(|(u,)| u))
    }

    /// Revokes every live session of a user; returns their ids.
    pub(crate) async fn revoke_user_sessions(&self, user_id: &str, now: i64) -> Result<Vec<String>, StoreError> {
        let ids: Vec<(String,)> = with_conn!(self, write "revoke_user_sessions", |c| {
            sqlx::query_as("UPDATE sessions SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL RETURNING id")
                .bind(now)
                .bind(user_id)
                .fetch_all(&mut *c)
                .await?
        });
        Ok(ids.into_iter().map(|(id,)| id).collect())
    }

    pub(crate) async fn sessions_of(&self, user_id: &str) -> Result<Vec<Session>, StoreError> {
        let rows: Vec<SessionRow> = with_conn!(self, read "sessions_of", |c| {
            sqlx::query_as(
                "SELECT id, user_id, created_at, expires_at, revoked_at, user_agent, ip FROM sessions WHERE user_id = $1 ORDER BY created_at DESC",
            )
            .bind(user_id)
            .fetch_all(&mut *c)
            .await?
        });
        Ok(rows.into_iter().map(Session::from).collect())
    }

    pub(crate) async fn insert_call(&self, call: &Call) -> Result<(), StoreError> {
        with_conn!(self, write "insert_call", |c| {
            sqlx::query("INSERT INTO calls (id, user_a, user_b, started_at, ended_at, end_reason) VALUES ($1, $2, $3, $4, $5, $6)")
                .bind(&call.id)
                .bind(&call.user_a)
                .bind(&call.user_b)
                .bind(call.started_at)
                .bind(call.ended_at)
                .bind(&call.end_reason)
                .execute(&mut *c)
                .await?;
        });
        Ok(())
    }

    pub(crate) async fn end_call(
        &self,
        id: &str,
        ended_at: i64,
        reason: &str,
        ended_by: Option<&str>,
    ) -> Result<bool, StoreError> {
        let done = with_conn!(self, write "end_call", |c| {
            sqlx::query(
                "UPDATE calls SET ended_at = $1, end_reason = $2, ended_by = $3 WHERE id = $4 AND ended_at IS NULL",
            )
                .bind(ended_at)
                .bind(reason)
                .bind(ended_by)
                .bind(id)
                .execute(&mut *c)
                .await?
                .rows_affected()
        });
        Ok(done == 1)
    }

    /// A user's calls, newest first, started before `before` (Unix ms).
    pub(crate) async fn calls_of(&self, user_id: &str, before: i64, limit: u32) -> Result<Vec<Call>, StoreError> {
        let rows: Vec<CallRow> = with_conn!(self, read "calls_of", |c| {
            sqlx::query_as(
                "SELECT id, user_a, user_b, started_at, ended_at, end_reason, ended_by FROM calls
                 WHERE (user_a = $1 OR user_b = $1) AND started_at < $2 ORDER BY started_at DESC LIMIT $3",
            )
            .bind(user_id)
            .bind(before)
            .bind(i64::from(limit))
            .fetch_all(&mut *c)
            .await?
        });
        Ok(rows.into_iter().map(Call::from).collect())
    }

    pub(crate) async fn put_cooldown(&self, a: &str, b: &str, until: i64) -> Result<(), StoreError> {
        let (a, b) = if a <= b { (a, b) } else { (b, a) };
        with_conn!(self, write "put_cooldown", |c| {
            sqlx::query("INSERT INTO cooldowns (user_a, user_b, until) VALUES ($1, $2, $3) ON CONFLICT (user_a, user_b) DO UPDATE SET until = $3")
                .bind(a)
                .bind(b)
                .bind(until)
                .execute(&mut *c)
                .await?;
        });
        Ok(())
    }

    pub(crate) async fn cooldown_until(&self, a: &str, b: &str) -> Result<Option<i64>, StoreError> {
        let (a, b) = if a <= b { (a, b) } else { (b, a) };
        let row: Option<(i64,)> = with_conn!(self, read "cooldown_until", |c| {
            sqlx::query_as("SELECT until FROM cooldowns WHERE user_a = $1 AND user_b = $2")
                .bind(a)
                .bind(b)
                .fetch_optional(&mut *c)
                .await?
        });
        Ok(row.map(|(u,)| u))
    }

    /// Users in a cooldown with `user_id` that ends after `now`, with its end (Unix ms).
    pub(crate) async fn cooldowns_of(&self, user_id: &str, now: i64) -> Result<Vec<(String, i64)>, StoreError> {
        let rows: Vec<(String, i64)> = with_conn!(self, read "cooldowns_of", |c| {
            sqlx::query_as(
                "SELECT user_b, until FROM cooldowns WHERE user_a = $1 AND until > $2
                 UNION ALL SELECT user_a, until FROM cooldowns WHERE user_b = $1 AND until > $2",
            )
            .bind(user_id)
            .bind(now)
            .fetch_all(&mut *c)
            .await?
        });
        Ok(rows)
    }

    pub(crate) async fn put_block(&self, blocker: &str, blocked: &str, now: i64) -> Result<(), StoreError> {
        with_conn!(self, write "put_block", |c| {
            sqlx::query("INSERT INTO blocks (blocker, blocked, created_at) VALUES ($1, $2, $3) ON CONFLICT (blocker, blocked) DO NOTHING")
                .bind(blocker)
                .bind(blocked)
                .bind(now)
                .execute(&mut *c)
                .await?;
        });
        Ok(())
    }

    /// Users `user_id` blocked or was blocked by.
    pub(crate) async fn blocks_of(&self, user_id: &str) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> = with_conn!(self, read "blocks_of", |c| {
            sqlx::query_as(
                "SELECT blocked FROM blocks WHERE blocker = $1 UNION SELECT blocker FROM blocks WHERE blocked = $1",
            )
            .bind(user_id)
            .fetch_all(&mut *c)
            .await?
        });
        Ok(rows.into_iter().map(|(u,)| u).collect())
    }

    pub(crate) async fn insert_report(
        &self,
        id: &str,
        reporter: &str,
        reported: &str,
        reason: &str,
        details: Option<&str>,
        now: i64,
    ) -> Result<(), StoreError> {
        with_conn!(self, write "insert_report", |c| {
            sqlx::query(
                "INSERT INTO reports (id, reporter, reported, reason, details, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
            )
                .bind(id)
                .bind(reporter)
                .bind(reported)
                .bind(reason)
                .bind(details)
                .bind(now)
                .execute(&mut *c)
                .await?;
        });
        Ok(())
    }

    /// Reports, newest first, filed before `before` (Unix ms).
    pub(crate) async fn reports(&self, before: i64, limit: u32) -> Result<Vec<crate::model::Report>, StoreError> {
        let rows: Vec<ReportRow> = with_conn!(self, read "reports", |c| {
            sqlx::query_as(
                "SELECT id, reporter, reported, reason, details, created_at FROM reports
                 WHERE created_at < $1 ORDER BY created_at DESC LIMIT $2",
            )
            .bind(before)
            .bind(i64::from(limit))
            .fetch_all(&mut *c)
            .await?
        });
        Ok(rows.into_iter().map(Into::into).collect())
    }

    /// Writes buffered `last_active` times in one transaction.
    pub(crate) async fn touch_many(&self, batch: &[(String, i64)]) -> Result<(), StoreError> {
        with_conn!(self, write "touch_many", |c| {
            let mut tx = sqlx::Connection::begin(&mut *c).await?;
            for (user, at) in batch {
                sqlx::query("UPDATE users SET last_active = $1 WHERE id = $2 AND last_active < $1")
                    .bind(at)
                    .bind(user)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Deletes expired sessions and cooldowns; returns how many of each.
    pub(crate) async fn cleanup(&self, now: i64) -> Result<(u64, u64), StoreError> {
        with_conn!(self, write "cleanup", |c| {
            let s = sqlx::query("DELETE FROM sessions WHERE expires_at < $1")
                .bind(now)
                .execute(&mut *c)
                .await?
                .rows_affected();
            let k =
                sqlx::query("DELETE FROM cooldowns WHERE until < $1").bind(now).execute(&mut *c).await?.rows_affected();
            Ok((s, k))
        })
    }
}
