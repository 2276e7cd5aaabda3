//! Setup shared by the store scenarios: users (and a session each) created through the
//! app API, a bounded number of requests in flight.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use serde::Serialize;
use tokio::time::Instant;

use crate::cli::Args;
use crate::http::Api;
use crate::pool;

/// What setup made.
pub struct Made {
    pub user_ids: Vec<String>,
    /// One per user when sessions were asked for, in the same order (a user whose
    /// session could not be issued is left out of both).
    pub tokens: Vec<String>,
    pub report: SetupReport,
}

/// Setup figures for the report.
#[derive(Debug, Clone, Serialize)]
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

pub fn api_addr(args: &Args) -> SocketAddrV4 {
    SocketAddrV4::new(args.host.parse().unwrap_or(Ipv4Addr::LOCALHOST), args.port)
}

/// Creates `args.users` users (`display_name` `<prefix>-<i>`), each with one session if
/// `sessions`; stops starting new ones at `deadline`.
pub async fn make_users(args: &Args, sessions: bool, deadline: Instant) -> Made {
    let addr = api_addr(args);
    let key = args.api_key.clone().unwrap_or_default();
    let states = (0..args.setup_concurrency.min(args.users)).map(|_| Api::new(addr, &key)).collect();
    let prefix = args.user_prefix.clone();
    let done = pool::run(args.users, states, deadline, move |mut api, i| {
        let name = format!("{prefix}-{i}");
        async move {
            let r = async {
                let id = api.create_user(&name).await?;
                let token = if sessions { Some(api.issue_session(&id).await?) } else { None };
                Ok::<_, String>((id, token))
            }
            .await;
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
        users_requested: args.users,
        users_created: user_ids.len(),
        sessions_issued: tokens.len(),
        failed,
        secs: done.secs,
        requests_per_sec: requests as f64 / done.secs.max(1e-9),
    };
    eprintln!(
        "setup: {} users, {} sessions in {:.1} s ({:.0} requests/s), {} failed",
        report.users_created,
        report.sessions_issued,
        report.secs,
        report.requests_per_sec,
        report.failed.values().sum::<usize>()
    );
    Made { user_ids, tokens, report }
}
