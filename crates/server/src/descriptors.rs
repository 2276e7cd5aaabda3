//! The open-file budget. Every socket the caps allow, the database pool and some headroom
//! must fit under `RLIMIT_NOFILE`; past it `accept` fails with EMFILE and the process stops
//! answering anyone, `/health` included, until descriptors free up.

use crate::config::{Config, ConfigError};

/// Descriptors `config` may need at once: both connection caps, the pool and the headroom.
pub fn descriptors_needed(config: &Config) -> u64 {
    let g = &config.gateway;
    (g.max_connections as u64)
        .saturating_add(g.pending.max_sockets as u64)
        .saturating_add(u64::from(config.database.max_connections))
        .saturating_add(config.server.descriptor_headroom)
}

/// Checks [`descriptors_needed`] against an open-file limit; the error names the keys.
pub fn check_descriptor_budget(config: &Config, limit: u64) -> Result<(), ConfigError> {
    let needed = descriptors_needed(config);
    if needed <= limit {
        return Ok(());
    }
    let g = &config.gateway;
    Err(ConfigError::Invalid {
        key: "gateway.max_connections",
        problem: format!(
            "gateway.max_connections ({}) + gateway.pending.max_sockets ({}) + database.max_connections ({}) \
             + server.descriptor_headroom ({}) = {needed} file descriptors, over the open-file limit of {limit} \
             (RLIMIT_NOFILE, `ulimit -n`): lower these keys or raise the limit",
            g.max_connections,
            g.pending.max_sockets,
            config.database.max_connections,
            config.server.descriptor_headroom,
        ),
    })
}

/// Raises the soft open-file limit to the hard one (as Go's runtime does at start), then
/// checks the budget against it. Returns the limit in force.
#[cfg(unix)]
pub fn ensure_descriptor_budget(config: &Config) -> Result<u64, ConfigError> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let rlimit = getrlimit(Resource::Nofile);
    let mut limit = rlimit.current.unwrap_or(u64::MAX);
    // An unlimited hard limit is not a value the kernel accepts for the soft one; keep the soft one then.
    if let Some(hard) = rlimit.maximum.filter(|&hard| hard > limit) {
        // If the kernel refuses, the soft limit stays and the check below says whether it is enough.
        if setrlimit(Resource::Nofile, Rlimit { current: Some(hard), maximum: Some(hard) }).is_ok() {
            limit = hard;
        }
    }
    check_descriptor_budget(config, limit)?;
    Ok(limit)
}

/// Without `getrlimit` there is nothing to check against.
#[cfg(not(unix))]
pub fn ensure_descriptor_budget(_config: &Config) -> Result<u64, ConfigError> {
    Ok(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_adds_both_caps_the_pool_and_the_headroom() {
        let mut c = Config::default();
        c.gateway.max_connections = 100;
        c.gateway.pending.max_sockets = 50;
        c.database.max_connections = 10;
        c.server.descriptor_headroom = 40;
        assert_eq!(descriptors_needed(&c), 200);
        check_descriptor_budget(&c, 200).unwrap();
        let err = check_descriptor_budget(&c, 199).unwrap_err().to_string();
        for key in [
            "gateway.max_connections (100)",
            "gateway.pending.max_sockets (50)",
            "database.max_connections (10)",
            "server.descriptor_headroom (40)",
            "limit of 199",
        ] {
            assert!(err.contains(key), "{err}");
        }
    }

    #[test]
    fn the_defaults_fit_a_common_hard_limit() {
        // systemd's default hard limit; the soft limit is raised to it at start.
        check_descriptor_budget(&Config::default(), 524_288).unwrap();
    }
}
