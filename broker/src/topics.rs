//! Topic metadata: what topics exist, their partition counts and configs.
//!
//! Shard 0 is the controller of this single node: it validates and persists
//! topic changes (`topics/<name>/topic.toml`, written atomically), then tells
//! every shard, each of which keeps its own copy of the table (`!Send`, no
//! locks) and opens or deletes the partitions it owns.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sluice_protocol::ErrorCode;
use sluice_shard::config::LogConfig;

/// Largest partition count of one topic.
pub const PARTITIONS_PER_TOPIC_MAX: u32 = 10_000;
/// Longest topic name (Kafka's limit).
pub const TOPIC_NAME_BYTES_MAX: usize = 249;

const META_FILE: &str = "topic.toml";

/// A topic as every shard knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMeta {
    pub name: String,
    /// The topic's id (Kafka's topic UUID), fixed at creation.
    #[serde(default)]
    pub id: String,
    pub partitions: u32,
    /// Overrides of the broker's log defaults, in Kafka's key names.
    pub configs: Vec<(String, String)>,
}

/// Topic settings the broker (not the storage engine) interprets or accepts.
/// Kafka clients set these; each is validated and stored, and the first two
/// are honoured: `min.insync.replicas` (an `acks=all` produce needs that many
/// in-sync replicas: this node is the only one) and `message.timestamp.type`
/// (`LogAppendTime` stamps batches with the broker's clock). The rest have no
/// effect on a single node with local storage and are kept for DescribeConfigs.
pub const BROKER_TOPIC_KEYS: &[&str] = &[
    "min.insync.replicas",
    "message.timestamp.type",
    "compression.type",
    "unclean.leader.election.enable",
    "preallocate",
    "message.downconversion.enable",
    "follower.replication.throttled.replicas",
    "leader.replication.throttled.replicas",
    "file.delete.delay.ms",
    "max.compaction.lag.ms",
    "message.timestamp.difference.max.ms",
    "message.timestamp.before.max.ms",
    "message.timestamp.after.max.ms",
    "segment.jitter.ms",
    "segment.index.bytes",
    "flush.messages",
    "local.retention.ms",
    "local.retention.bytes",
    "remote.storage.enable",
];

/// Checks the value of a broker-level topic setting.
fn validate_broker_key(key: &str, value: &str) -> Result<(), String> {
    let ok = match key {
        "min.insync.replicas" => value.parse::<i32>().is_ok_and(|v| v >= 1),
        "message.timestamp.type" => matches!(value, "CreateTime" | "LogAppendTime"),
        "compression.type" => value == "producer",
        "unclean.leader.election.enable"
        | "preallocate"
        | "message.downconversion.enable"
        | "remote.storage.enable" => matches!(value, "true" | "false"),
        "follower.replication.throttled.replicas" | "leader.replication.throttled.replicas" => true,
        _ => value.parse::<i64>().is_ok(),
    };
    match ok {
        true => Ok(()),
        false if key == "compression.type" => Err(format!(
            "{key}={value}: only \"producer\" is supported (batches are stored as sent)"
        )),
        false => Err(format!("{key}={value}: invalid value")),
    }
}

impl TopicMeta {
    /// A topic setting as stored (overrides only).
    pub fn setting(&self, key: &str) -> Option<&str> {
        self.configs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every topic setting as it applies: `(key, value, is_override)`, the
    /// topic's overrides on top of the broker's defaults.
    pub fn effective_configs(&self, defaults: &LogConfig) -> Vec<(String, String, bool)> {
        let c = self
            .log_config(defaults)
            .unwrap_or_else(|_| defaults.clone());
        let flush = c.flush_ms.map_or(i64::MAX.to_string(), |v| v.to_string());
        let base = [
            ("cleanup.policy", c.cleanup_policy.name().to_string()),
            ("delete.retention.ms", c.delete_retention_ms.to_string()),
            ("min.compaction.lag.ms", c.min_compaction_lag_ms.to_string()),
            (
                "min.cleanable.dirty.ratio",
                format!(
                    "{}",
                    f64::from(c.min_cleanable_dirty_ratio_ppm) / 1_000_000.0
                ),
            ),
            (
                "producer.id.expiration.ms",
                c.producer_id_expiration_ms.to_string(),
            ),
            ("segment.bytes", c.segment_bytes.to_string()),
            ("segment.ms", c.segment_ms.to_string()),
            ("retention.ms", c.retention_ms.to_string()),
            ("retention.bytes", c.retention_bytes.to_string()),
            ("max.message.bytes", c.max_message_bytes.to_string()),
            ("index.interval.bytes", c.index_interval_bytes.to_string()),
            ("flush.ms", flush),
            ("min.insync.replicas", "1".to_string()),
            ("message.timestamp.type", "CreateTime".to_string()),
            ("compression.type", "producer".to_string()),
        ];
        let mut out: Vec<(String, String, bool)> = base
            .into_iter()
            .map(|(k, v)| match self.setting(k) {
                Some(o) => (k.to_string(), o.to_string(), true),
                None => (k.to_string(), v, false),
            })
            .collect();
        for (k, v) in &self.configs {
            if !out.iter().any(|(key, _, _)| key == k) {
                out.push((k.clone(), v.clone(), true));
            }
        }
        out
    }

    /// `min.insync.replicas` (default 1).
    pub fn min_insync_replicas(&self) -> i32 {
        self.setting("min.insync.replicas")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1)
    }

    /// Whether batches get the broker's append time (`LogAppendTime`).
    pub fn log_append_time(&self) -> bool {
        self.setting("message.timestamp.type") == Some("LogAppendTime")
    }

    /// A new topic with a fresh random id.
    pub fn new(name: String, partitions: u32, configs: Vec<(String, String)>) -> TopicMeta {
        let id = uuid::Uuid::new_v4().to_string();
        TopicMeta {
            name,
            id,
            partitions,
            configs,
        }
    }

    /// The topic id; topics written before ids existed get one derived from
    /// their name, so it stays the same across restarts.
    pub fn uuid(&self) -> uuid::Uuid {
        uuid::Uuid::parse_str(&self.id).unwrap_or_else(|_| {
            let a = crc32c::crc32c(self.name.as_bytes());
            let b = crc32c::crc32c_append(a, b"sluice-topic-id");
            uuid::Uuid::from_u64_pair(
                u64::from(a) << 32 | u64::from(b),
                u64::from(b) << 32 | u64::from(a),
            )
        })
    }

    /// Whether the topic is one of Sluice's internal topics.
    pub fn is_internal(&self) -> bool {
        self.name.starts_with("__")
    }

    pub fn log_config(&self, defaults: &LogConfig) -> Result<LogConfig, String> {
        let mut storage = Vec::with_capacity(self.configs.len());
        for (k, v) in &self.configs {
            match BROKER_TOPIC_KEYS.contains(&k.as_str()) {
                true => validate_broker_key(k, v)?,
                false => storage.push((k.clone(), v.clone())),
            }
        }
        sluice_shard::store::topic_log_config(defaults, &storage).map_err(|e| e.to_string())
    }
}

/// A shard's copy of the topic table.
#[derive(Default)]
pub struct TopicTable {
    topics: BTreeMap<String, TopicMeta>,
}

impl TopicTable {
    pub fn get(&self, name: &str) -> Option<&TopicMeta> {
        self.topics.get(name)
    }

    pub fn insert(&mut self, meta: TopicMeta) {
        self.topics.insert(meta.name.clone(), meta);
    }

    pub fn remove(&mut self, name: &str) -> Option<TopicMeta> {
        self.topics.remove(name)
    }

    pub fn all(&self) -> impl Iterator<Item = &TopicMeta> {
        self.topics.values()
    }
}

/// Kafka's rule: 1 to 249 of `[a-zA-Z0-9._-]`, and not `.` or `..`.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > TOPIC_NAME_BYTES_MAX {
        return Err(format!(
            "topic name must be 1 to {TOPIC_NAME_BYTES_MAX} characters"
        ));
    }
    if name == "." || name == ".." {
        return Err("topic name cannot be \".\" or \"..\"".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "topic name contains {c:?}: only ASCII letters, digits, '.', '_' and '-' are legal"
        ));
    }
    Ok(())
}

/// Checks a new topic against the broker defaults; the error code and message.
pub fn validate_new(meta: &TopicMeta, defaults: &LogConfig) -> Result<(), (ErrorCode, String)> {
    validate_name(&meta.name).map_err(|m| (ErrorCode::INVALID_TOPIC_EXCEPTION, m))?;
    if meta.partitions == 0 || meta.partitions > PARTITIONS_PER_TOPIC_MAX {
        return Err((
            ErrorCode::INVALID_PARTITIONS,
            format!("partitions must be between 1 and {PARTITIONS_PER_TOPIC_MAX}"),
        ));
    }
    meta.log_config(defaults)
        .map_err(|m| (ErrorCode::INVALID_CONFIG, m))?;
    Ok(())
}

pub fn topic_dir(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join("topics").join(name)
}

/// Writes a topic's metadata atomically (temporary file, fsync, rename).
pub fn persist(data_dir: &Path, meta: &TopicMeta) -> std::io::Result<()> {
    let dir = topic_dir(data_dir, &meta.name);
    std::fs::create_dir_all(&dir)?;
    let text = toml::to_string(meta).map_err(std::io::Error::other)?;
    let tmp = dir.join(format!("{META_FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(META_FILE))?;
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Removes a topic's metadata and whatever is left of its directory.
pub fn remove(data_dir: &Path, name: &str) -> std::io::Result<()> {
    let dir = topic_dir(data_dir, name);
    let _ = std::fs::remove_file(dir.join(META_FILE));
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Loads every topic under `data_dir/topics`. A directory without metadata
/// (a deletion interrupted by a crash) is reported and skipped.
pub fn load_all(data_dir: &Path) -> Result<TopicTable, String> {
    let root = data_dir.join("topics");
    let mut table = TopicTable::default();
    let entries = match std::fs::read_dir(&root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(table),
        Err(e) => return Err(format!("cannot list {}: {e}", root.display())),
    };
    for entry in entries.flatten() {
        let path = entry.path().join(META_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(_) => {
                tracing::warn!(dir = %entry.path().display(), "topic directory without topic.toml: ignored");
                continue;
            }
        };
        let meta: TopicMeta =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if validate_name(&meta.name).is_err()
            || entry.file_name().to_str() != Some(meta.name.as_str())
        {
            return Err(format!(
                "{}: names a different topic ({:?})",
                path.display(),
                meta.name
            ));
        }
        table.insert(meta);
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_kafka_rules() {
        assert!(validate_name("orders.v1_x-2").is_ok());
        for bad in ["", ".", "..", "a b", "a/b", "ü", &"x".repeat(250)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn metadata_round_trips_through_the_data_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = TopicMeta::new("t".into(), 8, vec![("retention.ms".into(), "1000".into())]);
        persist(dir.path(), &meta).expect("persist");
        let table = load_all(dir.path()).expect("load");
        assert_eq!(table.get("t"), Some(&meta));
        remove(dir.path(), "t").expect("remove");
        assert!(load_all(dir.path()).expect("load").get("t").is_none());
    }
}
