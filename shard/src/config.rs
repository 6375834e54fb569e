//! Per-topic log configuration, with Kafka's key names.
//!
//! Broker defaults come from `sluice.toml`; a topic overrides any of them with
//! the keys below. Unknown keys are refused so a typo never silently does
//! nothing.

use crate::limits::{
    BATCH_BYTES_MAX, INDEX_INTERVAL_BYTES_DEFAULT, MESSAGE_BYTES_MAX_DEFAULT,
    SEGMENT_BYTES_DEFAULT, SEGMENT_BYTES_MAX, SEGMENT_BYTES_MIN,
};

/// How a partition's log is rolled, retained and flushed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogConfig {
    /// Roll to a new segment when the active one would exceed this size.
    pub segment_bytes: u64,
    /// Roll when the active segment is older than this (ms since its first batch).
    pub segment_ms: u64,
    /// Delete segments whose newest record is older than this; -1 keeps forever.
    pub retention_ms: i64,
    /// Delete the oldest segments while the partition is larger; -1: no limit.
    pub retention_bytes: i64,
    /// Largest batch a producer may append.
    pub max_message_bytes: usize,
    /// Bytes of batches between two sparse index entries.
    pub index_interval_bytes: u32,
    /// For `acks=0`/`acks=1` appends: fdatasync at least this often (ms).
    /// `None`: only `acks=all` appends are flushed (the device still has them
    /// once a direct-I/O write completes, so a process crash loses nothing).
    pub flush_ms: Option<u64>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: SEGMENT_BYTES_DEFAULT,
            segment_ms: 7 * 24 * 3600 * 1000,
            retention_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: -1,
            max_message_bytes: MESSAGE_BYTES_MAX_DEFAULT,
            index_interval_bytes: INDEX_INTERVAL_BYTES_DEFAULT,
            flush_ms: None,
        }
    }
}

/// A topic configuration key that could not be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// The topic-level keys Sluice understands.
pub const TOPIC_CONFIG_KEYS: &[&str] = &[
    "segment.bytes",
    "segment.ms",
    "retention.ms",
    "retention.bytes",
    "max.message.bytes",
    "index.interval.bytes",
    "flush.ms",
    "cleanup.policy",
];

impl LogConfig {
    /// Applies one `key=value` override on top of `self`.
    pub fn apply(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let bad = |what: &str| ConfigError(format!("{key}={value}: {what}"));
        let int = || {
            value
                .trim()
                .parse::<i64>()
                .map_err(|_| bad("not an integer"))
        };
        match key {
            "segment.bytes" => {
                let v = int()?;
                if v < SEGMENT_BYTES_MIN as i64 || v > SEGMENT_BYTES_MAX as i64 {
                    return Err(bad(&format!(
                        "must be between {SEGMENT_BYTES_MIN} and {SEGMENT_BYTES_MAX}"
                    )));
                }
                self.segment_bytes = v as u64;
            }
            "segment.ms" => self.segment_ms = positive(int()?).ok_or_else(|| bad("must be > 0"))?,
            "retention.ms" => {
                self.retention_ms =
                    at_least_minus_one(int()?).ok_or_else(|| bad("must be >= -1"))?
            }
            "retention.bytes" => {
                self.retention_bytes =
                    at_least_minus_one(int()?).ok_or_else(|| bad("must be >= -1"))?
            }
            "max.message.bytes" => {
                let v = int()?;
                if v < 64 || v > BATCH_BYTES_MAX as i64 {
                    return Err(bad(&format!("must be between 64 and {BATCH_BYTES_MAX}")));
                }
                self.max_message_bytes = v as usize;
            }
            "index.interval.bytes" => {
                let v = int()?;
                if !(1..=16 * 1024 * 1024).contains(&v) {
                    return Err(bad("must be between 1 and 16777216"));
                }
                self.index_interval_bytes = v as u32;
            }
            "flush.ms" => {
                let v = int()?;
                // Kafka's default for flush.ms is Long.MAX_VALUE: never by time.
                self.flush_ms = if v <= 0 || v == i64::MAX {
                    None
                } else {
                    Some(v as u64)
                };
            }
            "cleanup.policy" => {
                if value != "delete" {
                    return Err(bad(
                        "only cleanup.policy=delete is supported by this broker",
                    ));
                }
            }
            _ => {
                return Err(ConfigError(format!(
                    "unknown topic configuration key {key:?}"
                )))
            }
        }
        Ok(())
    }

    /// The broker defaults with a topic's overrides applied, in order.
    pub fn with_overrides<'a>(
        &self,
        overrides: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<LogConfig, ConfigError> {
        let mut config = self.clone();
        for (key, value) in overrides {
            config.apply(key, value)?;
        }
        Ok(config)
    }
}

fn positive(v: i64) -> Option<u64> {
    (v > 0).then_some(v as u64)
}

fn at_least_minus_one(v: i64) -> Option<i64> {
    (v >= -1).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_apply_and_bad_values_are_refused() {
        let base = LogConfig::default();
        let c = base
            .with_overrides([("segment.bytes", "1048576"), ("retention.ms", "-1")])
            .expect("valid overrides");
        assert_eq!(c.segment_bytes, 1_048_576);
        assert_eq!(c.retention_ms, -1);
        assert!(base.with_overrides([("segment.bytes", "12")]).is_err());
        assert!(base.with_overrides([("retention.ms", "abc")]).is_err());
        assert!(base.with_overrides([("no.such.key", "1")]).is_err());
        assert!(base
            .with_overrides([("cleanup.policy", "compact")])
            .is_err());
    }
}
