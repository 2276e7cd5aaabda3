//! Setup shared by the store scenarios: users (and a session each) created through the
//! app API, a bounded number of requests in flight.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::cli::{Store, Target};
use crate::http::Api;
use crate::pool;
use crate::progress::Progress;

/// What setup made.
pub struct Made {
    pub user_ids: Vec<String>,
    /// One per user when sessions were asked for, in the same order (a user whose
    /// session could not be issued is left out of both).
    pub tokens: Vec<String>,
    pub report: SetupReport,
}

/// Setup figures for the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetupReport {
    pub users_requested: usize,
    pub users_created: usize,
    pub sessions_issued: usize,
    /// Failures by reason (`http 503`, `timeout`, `not started before --max-secs`).
    pub failed: BTreeMap<String, usize>,
    pub secs: f64,
    /// API requests per second during setup.
    pub requests_per_sec: f64,
}

/// Creates `users` users (`display_name` `<prefix>-<i>`), each with one session if
/// `sessions`; stops starting new ones at `deadline`. Each user is an item on `progress`.
pub async fn make_users(
    target: &Target,
    store: &Store,
    users: usize,
    sessions: bool,
    progress: &Progress,
    deadline: Instant,
) -> Made {
    let addr = target.addr();
    let states = (0..store.setup_concurrency.min(users)).map(|_| Api::new(addr, &store.api_key)).collect();
    let prefix = store.user_prefix.clone();
    progress.phase("setup", users);
    let job_progress = progress.clone();
    let done = pool::run(users, states, deadline, move |mut api, i| {
        let name = format!("{prefix}-{i}");
        let progress = job_progress.clone();
        async move {
            let r = async {
                let id = api.create_user(&name).await?;
                let token = if sessions { Some(api.issue_session(&id).await?) } else { None };
                Ok::<_, String>((id, token))
            }
            .await;
            progress.item(r.is_ok());
            (api, r)
        }
    })
    .await;

    let mut failed = BTreeMap::new();
    let (mut user_ids, mut tokens) = (Vec::new(), Vec::new());
    for r in done.results {
        match r {
            Some(Ok((id, token))) => {
                user_ids.push(id);
                tokens.extend(token);
            }
            Some(Err(reason)) => *failed.entry(reason).or_default() += 1,
            None => *failed.entry("not started before --max-secs".into()).or_default() += 1,
        }
    }
    let requests = user_ids.len() + tokens.len();
    let report = SetupReport {
        users_requested: users,
        users_created: user_ids.len(),
        sessions_issued: tokens.len(),
        failed,
        secs: done.secs,
        requests_per_sec: requests as f64 / done.secs.max(1e-9),
    };
    progress.note(&format!(
        "setup: {} users, {} sessions in {:.1} s ({:.0} requests/s), {} failed",
        report.users_created,
        report.sessions_issued,
        report.secs,
        report.requests_per_sec,
        report.failed.values().sum::<usize>()
    ));
    Made { user_ids, tokens, report }
}
