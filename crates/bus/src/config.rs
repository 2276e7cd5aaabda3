//! The `[bus]` configuration section.

use serde::{Deserialize, Serialize};

/// How instances talk to each other.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusConfig {
    /// Messages a subscriber may fall behind per topic before it is told of a gap and
    /// resynchronizes (caches cleared, presence re-requested).
    pub capacity: usize,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self { capacity: 1024 }
    }
}

/// A `[bus]` value out of range; names the key.
#[derive(Debug, thiserror::Error)]
#[error("invalid config `{key}`: {problem}")]
pub struct ConfigError {
    /// The dotted key.
    pub key: &'static str,
    /// What is wrong.
    pub problem: String,
}

impl BusConfig {
    /// Checks every value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=1_000_000).contains(&self.capacity) {
            return Err(ConfigError { key: "bus.capacity", problem: "must be between 1 and 1000000".into() });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_is_bounded() {
        assert!(BusConfig::default().validate().is_ok());
        for bad in [0, 2_000_000] {
            let err = BusConfig { capacity: bad }.validate().unwrap_err();
            assert_eq!(err.key, "bus.capacity");
        }
    }
}
