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
    /// Forget an idempotent producer this long after its newest batch's
    /// timestamp (Kafka's `producer.id.expiration.ms`, default one day).
    pub producer_id_expiration_ms: i64,
    /// What happens to old data: deleted by retention, compacted, or both.
    pub cleanup_policy: CleanupPolicy,
    /// How long a tombstone (a record with a null value) survives once it is
    /// the newest record of its key, counted from its batch's max timestamp.
    pub delete_retention_ms: i64,
    /// A record is not compacted until its segment's newest record is at
    /// least this old.
    pub min_compaction_lag_ms: i64,
    /// Compact only when dirty (never cleaned) bytes are at least this share
    /// of the cleanable bytes, in parts per million (Kafka's ratio 0.5 is
    /// 500_000).
    pub min_cleanable_dirty_ratio_ppm: u32,
}

/// `cleanup.policy`: delete old segments, compact keyed records, or both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CleanupPolicy {
    #[default]
    Delete,
    Compact,
    CompactDelete,
}

impl CleanupPolicy {
    /// Whether the cleaner keeps only the newest record of each key.
    pub fn compacts(self) -> bool {
        self != CleanupPolicy::Delete
    }

    /// Whether retention by time and size deletes old segments.
    pub fn deletes(self) -> bool {
        self != CleanupPolicy::Compact
    }

    /// Kafka's spelling of the policy.
    pub fn name(self) -> &'static str {
        match self {
            CleanupPolicy::Delete => "delete",
            CleanupPolicy::Compact => "compact",
            CleanupPolicy::CompactDelete => "compact,delete",
        }
    }

    /// Parses Kafka's list form: `delete`, `compact`, or both in any order.
    pub fn parse(value: &str) -> Option<CleanupPolicy> {
        let (mut compact, mut delete) = (false, false);
        for item in value.split(',').map(str::trim) {
            match item {
                "compact" => compact = true,
                "delete" => delete = true,
                _ => return None,
            }
        }
        match (compact, delete) {
            (true, true) => Some(CleanupPolicy::CompactDelete),
            (true, false) => Some(CleanupPolicy::Compact),
            (false, true) => Some(CleanupPolicy::Delete),
            (false, false) => None,
        }
    }
}

/// Kafka's default `producer.id.expiration.ms`: one day.
pub const PRODUCER_ID_EXPIRATION_MS_DEFAULT: i64 = 86_400_000;

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
            producer_id_expiration_ms: PRODUCER_ID_EXPIRATION_MS_DEFAULT,
            cleanup_policy: CleanupPolicy::Delete,
            delete_retention_ms: 86_400_000,
            min_compaction_lag_ms: 0,
            min_cleanable_dirty_ratio_ppm: 500_000,
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
    "producer.id.expiration.ms",
    "delete.retention.ms",
    "min.compaction.lag.ms",
    "min.cleanable.dirty.ratio",
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
            "producer.id.expiration.ms" => {
                let v = int()?;
                if v < 1 {
                    return Err(bad("must be >= 1"));
                }
                self.producer_id_expiration_ms = v;
            }
            "cleanup.policy" => {
                self.cleanup_policy = CleanupPolicy::parse(value)
                    .ok_or_else(|| bad("must be delete, compact or compact,delete"))?
            }
            "delete.retention.ms" => {
                self.delete_retention_ms =
                    non_negative(int()?).ok_or_else(|| bad("must be >= 0"))?
            }
            "min.compaction.lag.ms" => {
                self.min_compaction_lag_ms =
                    non_negative(int()?).ok_or_else(|| bad("must be >= 0"))?
            }
            "min.cleanable.dirty.ratio" => {
                let ratio = value.trim().parse::<f64>().ok();
                let ratio = ratio.filter(|r| (0.0..=1.0).contains(r));
                let ratio = ratio.ok_or_else(|| bad("must be between 0 and 1"))?;
                self.min_cleanable_dirty_ratio_ppm = (ratio * 1_000_000.0).round() as u32;
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

fn non_negative(v: i64) -> Option<i64> {
    (v >= 0).then_some(v)
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
        let c = base
            .with_overrides([
                ("cleanup.policy", "delete, compact"),
                ("min.cleanable.dirty.ratio", "0.25"),
                ("delete.retention.ms", "100"),
            ])
            .expect("valid overrides");
        assert_eq!(c.cleanup_policy, CleanupPolicy::CompactDelete);
        assert_eq!(c.min_cleanable_dirty_ratio_ppm, 250_000);
        assert_eq!(c.delete_retention_ms, 100);
        assert!(base.with_overrides([("cleanup.policy", "shred")]).is_err());
        assert!(base.with_overrides([("cleanup.policy", "")]).is_err());
        assert!(base
            .with_overrides([("min.cleanable.dirty.ratio", "1.5")])
            .is_err());
    }
}
