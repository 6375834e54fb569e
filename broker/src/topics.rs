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
    pub partitions: u32,
    /// Overrides of the broker's log defaults, in Kafka's key names.
    pub configs: Vec<(String, String)>,
}

impl TopicMeta {
    pub fn log_config(&self, defaults: &LogConfig) -> Result<LogConfig, String> {
        sluice_shard::store::topic_log_config(defaults, &self.configs).map_err(|e| e.to_string())
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
        let meta = TopicMeta {
            name: "t".into(),
            partitions: 8,
            configs: vec![("retention.ms".into(), "1000".into())],
        };
        persist(dir.path(), &meta).expect("persist");
        let table = load_all(dir.path()).expect("load");
        assert_eq!(table.get("t"), Some(&meta));
        remove(dir.path(), "t").expect("remove");
        assert!(load_all(dir.path()).expect("load").get("t").is_none());
    }
}
