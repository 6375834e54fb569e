//! Broker configuration: `sluice.toml` (embedded defaults, an optional file)
//! and command-line overrides.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use serde::Deserialize;
use sluice_shard::config::LogConfig;

use crate::memory::MemoryPlan;

/// The documented defaults, embedded so `sluice serve` needs no file.
pub const DEFAULT_TOML: &str = include_str!("../sluice.toml");

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub broker: BrokerSection,
    pub log: LogSection,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSection {
    pub node_id: i32,
    pub data_dir: PathBuf,
    pub shards: u32,
    pub native_addr: String,
    pub native_shard_port_base: u16,
    pub advertised_host: String,
    pub kafka_addr: String,
    pub kafka_shard_brokers: bool,
    pub kafka_shard_port_base: u16,
    pub metrics_addr: String,
    pub auto_create_topics: bool,
    pub default_partitions: u32,
    pub offsets_topic_partitions: u32,
    pub group_initial_rebalance_delay_ms: u64,
    pub group_min_session_timeout_ms: i32,
    pub group_max_session_timeout_ms: i32,
    pub offsets_retention_minutes: u64,
    pub offsets_retention_check_interval_ms: u64,
    pub max_frame_bytes: usize,
    pub max_connections_per_shard: usize,
    pub max_in_flight_per_connection: usize,
    pub memory_budget_bytes: u64,
    pub tail_cache_bytes: usize,
    pub request_memory_bytes: usize,
    pub io_memory_bytes: usize,
    pub spin_before_park_us: u64,
    pub pin_shards: bool,
    pub zero_fill_bytes_per_s: u64,
    pub shared_flush: bool,
    pub registered_landings: bool,
    pub read_ahead: bool,
    pub retention_check_interval_ms: u64,
    pub cleaner_interval_ms: u64,
    pub shutdown_timeout_ms: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    pub segment_bytes: i64,
    pub segment_ms: i64,
    pub retention_ms: i64,
    pub retention_bytes: i64,
    pub max_message_bytes: i64,
    pub index_interval_bytes: i64,
    pub flush_ms: i64,
}

/// Overrides from the command line.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub shards: Option<u32>,
    pub native_addr: Option<String>,
    pub kafka_addr: Option<String>,
}

/// Largest frame a broker may be configured to accept.
pub const MAX_FRAME_BYTES_LIMIT: usize = 1024 * 1024 * 1024;

impl Config {
    /// The embedded defaults, then `file` (if any) on top, then `overrides`.
    pub fn load(file: Option<&std::path::Path>, overrides: &Overrides) -> Result<Config, String> {
        let mut value: toml::Table =
            toml::from_str(DEFAULT_TOML).map_err(|e| format!("embedded sluice.toml: {e}"))?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
            let user: toml::Table =
                toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            merge(&mut value, user);
        }
        let mut config: Config = toml::Value::Table(value)
            .try_into()
            .map_err(|e| format!("configuration: {e}"))?;
        if let Some(d) = &overrides.data_dir {
            config.broker.data_dir = d.clone();
        }
        if let Some(s) = overrides.shards {
            config.broker.shards = s;
        }
        if let Some(a) = &overrides.native_addr {
            config.broker.native_addr = a.clone();
        }
        if let Some(a) = &overrides.kafka_addr {
            config.broker.kafka_addr = a.clone();
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        let b = &self.broker;
        if b.max_frame_bytes < 1024 || b.max_frame_bytes > MAX_FRAME_BYTES_LIMIT {
            return Err(format!(
                "broker.max_frame_bytes must be between 1024 and {MAX_FRAME_BYTES_LIMIT}"
            ));
        }
        if b.default_partitions == 0 || b.offsets_topic_partitions == 0 {
            return Err(
                "broker.default_partitions and offsets_topic_partitions must be > 0".into(),
            );
        }
        if b.max_in_flight_per_connection == 0 || b.max_connections_per_shard == 0 {
            return Err(
                "broker.max_in_flight_per_connection and max_connections_per_shard must be > 0"
                    .into(),
            );
        }
        self.native_socket_addr()?;
        self.kafka_socket_addr()?;
        self.metrics_socket_addr()?;
        self.log_defaults()?;
        self.memory_plan()?;
        Ok(())
    }

    /// How `memory_budget_bytes` is split among the shards.
    pub fn memory_plan(&self) -> Result<MemoryPlan, String> {
        let b = &self.broker;
        MemoryPlan::new(
            b.memory_budget_bytes,
            self.shard_count(),
            b.io_memory_bytes as u64,
            b.request_memory_bytes as u64,
            b.tail_cache_bytes as u64,
        )
    }

    /// The topic defaults as a storage configuration.
    pub fn log_defaults(&self) -> Result<LogConfig, String> {
        let l = &self.log;
        let pairs = [
            ("segment.bytes", l.segment_bytes.to_string()),
            ("segment.ms", l.segment_ms.to_string()),
            ("retention.ms", l.retention_ms.to_string()),
            ("retention.bytes", l.retention_bytes.to_string()),
            ("max.message.bytes", l.max_message_bytes.to_string()),
            ("index.interval.bytes", l.index_interval_bytes.to_string()),
            ("flush.ms", l.flush_ms.to_string()),
        ];
        LogConfig::default()
            .with_overrides(pairs.iter().map(|(k, v)| (*k, v.as_str())))
            .map_err(|e| format!("[log] {e}"))
    }

    /// The metrics listener, or `None` when disabled (empty address).
    pub fn metrics_socket_addr(&self) -> Result<Option<SocketAddr>, String> {
        match self.broker.metrics_addr.as_str() {
            "" => Ok(None),
            a => resolve(a, "broker.metrics_addr").map(Some),
        }
    }

    pub fn kafka_socket_addr(&self) -> Result<SocketAddr, String> {
        resolve(&self.broker.kafka_addr, "broker.kafka_addr")
    }

    pub fn native_socket_addr(&self) -> Result<SocketAddr, String> {
        resolve(&self.broker.native_addr, "broker.native_addr")
    }

    /// The shard count to run: the configured one, or one per available core.
    pub fn shard_count(&self) -> u32 {
        match self.broker.shards {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            n => n,
        }
    }

    /// The host clients are told to connect to.
    pub fn advertised_host(&self) -> String {
        if !self.broker.advertised_host.is_empty() {
            return self.broker.advertised_host.clone();
        }
        self.native_socket_addr()
            .map_or_else(|_| "127.0.0.1".into(), |a| a.ip().to_string())
    }
}

fn resolve(addr: &str, key: &str) -> Result<SocketAddr, String> {
    addr.to_socket_addrs()
        .map_err(|e| format!("{key} = {addr:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{key} = {addr:?} resolves to no address"))
}

/// Merges `over` into `base`, table by table.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_load_and_files_and_flags_override() {
        let c = Config::load(None, &Overrides::default()).expect("defaults");
        assert_eq!(c.broker.native_addr, "127.0.0.1:9192");
        assert_eq!(c.broker.data_dir, PathBuf::from("./sluice-data"));
        assert_eq!(c.log_defaults().expect("log").segment_bytes, 268_435_456);

        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.toml");
        std::fs::write(&path, "[log]\nretention_ms = 1000\n[broker]\nshards = 3\n").expect("write");
        let o = Overrides {
            shards: Some(5),
            ..Overrides::default()
        };
        let c = Config::load(Some(&path), &o).expect("file");
        assert_eq!(c.log.retention_ms, 1000);
        assert_eq!(c.broker.shards, 5, "flags beat the file");
        assert_eq!(c.log.segment_bytes, 268_435_456, "unset keys keep defaults");

        std::fs::write(&path, "[broker]\nno_such_key = 1\n").expect("write");
        assert!(Config::load(Some(&path), &Overrides::default()).is_err());
        std::fs::write(&path, "[log]\nsegment_bytes = 10\n").expect("write");
        assert!(Config::load(Some(&path), &Overrides::default()).is_err());
    }
}
