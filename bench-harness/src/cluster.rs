//! The broker as the generator sees it: which shard owns each partition,
//! and where that shard listens.

use std::thread;
use std::time::Duration;

use sluice_protocol::client::Client;
use sluice_protocol::native::{CreateTopic, MetadataResponse, TopicMetadata};
use sluice_protocol::ErrorCode;

use crate::error::BenchError;
use crate::kafka::KafkaClient;
use crate::Protocol;

/// How often, and how long apart, Metadata is asked again while a new
/// topic's partitions come up.
const METADATA_TRIES: u32 = 50;
const METADATA_RETRY_WAIT: Duration = Duration::from_millis(100);

/// Where each partition of one topic is served.
#[derive(Clone, Debug)]
pub struct Topic {
    pub name: String,
    /// Indexed by partition: the `host:port` of its owning shard.
    pub addr_of: Vec<String>,
}

impl Topic {
    #[must_use]
    pub fn partitions(&self) -> u32 {
        // A topic's partition count is a u32 on the wire.
        u32::try_from(self.addr_of.len()).unwrap_or(u32::MAX)
    }

    /// `partitions` grouped by the shard address that owns them, in order
    /// of first appearance: one connection per group.
    #[must_use]
    pub fn group_by_shard(&self, partitions: &[u32]) -> Vec<(String, Vec<u32>)> {
        let mut groups: Vec<(String, Vec<u32>)> = Vec::new();
        for &p in partitions {
            let Some(addr) = self.addr_of.get(p as usize) else {
                continue;
            };
            match groups.iter_mut().find(|(a, _)| a == addr) {
                Some((_, ps)) => ps.push(p),
                None => groups.push((addr.clone(), vec![p])),
            }
        }
        groups
    }
}

/// The topic's layout over `protocol`; creates it with `create_partitions`
/// first when it is missing and `create_partitions` is given.
pub fn topic(
    protocol: Protocol,
    bootstrap: &str,
    name: &str,
    create_partitions: Option<u32>,
) -> Result<Topic, BenchError> {
    match protocol {
        Protocol::Native => native_topic(bootstrap, name, create_partitions),
        Protocol::Kafka => kafka_topic(bootstrap, name, create_partitions),
    }
}

/// Kafka's error codes the topic lookup tells apart.
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const LEADER_NOT_AVAILABLE: i16 = 5;
/// A new topic's leaders may take a while (1,000 partitions on Kafka).
const KAFKA_METADATA_TRIES: u32 = 600;

/// The Kafka-protocol lookup: each partition is served by its leader's
/// `host:port` from Metadata (one broker here: every partition the same).
fn kafka_topic(
    bootstrap: &str,
    name: &str,
    create_partitions: Option<u32>,
) -> Result<Topic, BenchError> {
    let conn = crate::conn::connect_stream(bootstrap)?;
    let mut client =
        KafkaClient::from_stream(conn).map_err(|e| e.context(&format!("Kafka at {bootstrap}")))?;
    let mut created = false;
    let mut last_error = String::new();
    for _ in 0..KAFKA_METADATA_TRIES {
        let metadata = client.metadata(&[name])?;
        let found = metadata
            .topics
            .iter()
            .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == name));
        let code = found.map_or(UNKNOWN_TOPIC_OR_PARTITION, |t| t.error_code);
        match (found, code) {
            (Some(t), 0) => {
                let mut leaders: Vec<(i32, i32, i16)> = t
                    .partitions
                    .iter()
                    .map(|p| (p.partition_index, p.leader_id.0, p.error_code))
                    .collect();
                leaders.sort_unstable();
                let brokers: Vec<(i32, String)> = metadata
                    .brokers
                    .iter()
                    .map(|b| {
                        let port = u16::try_from(b.port).unwrap_or(0);
                        (b.node_id.0, shard_addr(bootstrap, b.host.as_str(), port))
                    })
                    .collect();
                if let Some(addr_of) = kafka_layout(&leaders, &brokers) {
                    let topic = Topic {
                        name: name.to_owned(),
                        addr_of,
                    };
                    // Metadata can name a leader before that broker serves
                    // the partition (NOT_LEADER_OR_FOLLOWER right after
                    // creation): ready means every leader lists its offsets.
                    match kafka_leaders_answer(&topic) {
                        Ok(()) => return Ok(topic),
                        Err(e) => last_error = e.to_string(),
                    }
                }
            }
            (_, UNKNOWN_TOPIC_OR_PARTITION) if !created => {
                let Some(partitions) = create_partitions else {
                    return Err(BenchError::new(format!("topic {name} does not exist")));
                };
                client.create_topic(name, partitions)?;
                eprintln!("created topic {name} with {partitions} partitions");
                created = true;
                continue;
            }
            (_, UNKNOWN_TOPIC_OR_PARTITION | LEADER_NOT_AVAILABLE) => {}
            (_, code) => {
                return Err(BenchError::new(format!(
                    "topic {name}: {}",
                    crate::error::kafka_error(code)
                )))
            }
        }
        thread::sleep(METADATA_RETRY_WAIT);
    }
    Err(BenchError::new(format!(
        "topic {name}: partitions not ready after {KAFKA_METADATA_TRIES} tries {last_error}"
    )))
}

/// Every partition's leader answers ListOffsets for it without an error.
fn kafka_leaders_answer(topic: &Topic) -> Result<(), BenchError> {
    let all: Vec<u32> = (0..topic.partitions()).collect();
    for (addr, partitions) in topic.group_by_shard(&all) {
        let mut conn = crate::conn::Conn::connect(&addr, Protocol::Kafka)?;
        conn.list_offsets(
            &topic.name,
            &partitions,
            sluice_protocol::types::list_offsets_timestamp::LATEST,
        )?;
    }
    Ok(())
}

/// Each partition's leader address, when every partition 0..n is listed
/// (sorted) with no error and a known leader; `None` while not ready.
fn kafka_layout(leaders: &[(i32, i32, i16)], brokers: &[(i32, String)]) -> Option<Vec<String>> {
    if leaders.is_empty() {
        return None;
    }
    leaders
        .iter()
        .enumerate()
        .map(|(i, &(index, leader, error))| {
            let in_order = usize::try_from(index).is_ok_and(|p| p == i);
            if !in_order || error != 0 || leader < 0 {
                return None;
            }
            brokers
                .iter()
                .find(|(id, _)| *id == leader)
                .map(|(_, addr)| addr.clone())
        })
        .collect()
}

fn native_topic(
    bootstrap: &str,
    name: &str,
    create_partitions: Option<u32>,
) -> Result<Topic, BenchError> {
    let mut client =
        Client::connect(bootstrap).map_err(|e| BenchError::from(e).context(bootstrap))?;
    let mut created = false;
    for _ in 0..METADATA_TRIES {
        let metadata = client.metadata(vec![name.to_owned()])?;
        let found = metadata.topics.iter().find(|t| t.name == name);
        match found {
            Some(t) if t.error.is_ok() && ready(t) => return layout(bootstrap, &metadata, t),
            Some(t) if t.error.is_ok() || t.error == ErrorCode::UNKNOWN_TOPIC_OR_PARTITION => {}
            None => {}
            Some(t) => return Err(BenchError::new(format!("topic {name}: {}", t.error))),
        }
        let missing = found.is_none_or(|t| t.error == ErrorCode::UNKNOWN_TOPIC_OR_PARTITION);
        if missing && !created {
            let Some(partitions) = create_partitions else {
                return Err(BenchError::new(format!("topic {name} does not exist")));
            };
            create(&mut client, name, partitions)?;
            created = true;
            continue;
        }
        thread::sleep(METADATA_RETRY_WAIT);
    }
    Err(BenchError::new(format!(
        "topic {name}: partitions not ready after {METADATA_TRIES} tries"
    )))
}

fn create(client: &mut Client, name: &str, partitions: u32) -> Result<(), BenchError> {
    let request = CreateTopic {
        name: name.to_owned(),
        partitions,
        configs: Vec::new(),
    };
    let results = client.create_topics(vec![request])?;
    match results.first() {
        Some(r) if r.error.is_ok() || r.error == ErrorCode::TOPIC_ALREADY_EXISTS => {
            eprintln!("created topic {name} with {partitions} partitions");
            Ok(())
        }
        Some(r) => Err(BenchError::new(format!(
            "creating topic {name}: {}: {}",
            r.error, r.message
        ))),
        None => Err(BenchError::new(format!("creating topic {name}: no result"))),
    }
}

/// Every partition is listed, in order, without an error.
fn ready(t: &TopicMetadata) -> bool {
    !t.partitions.is_empty()
        && t.partitions
            .iter()
            .enumerate()
            .all(|(i, p)| p.error.is_ok() && usize::try_from(p.partition).is_ok_and(|p| p == i))
}

fn layout(
    bootstrap: &str,
    metadata: &MetadataResponse,
    t: &TopicMetadata,
) -> Result<Topic, BenchError> {
    let addr_of = t
        .partitions
        .iter()
        .map(|p| {
            let shard = metadata.shards.iter().find(|s| s.shard == p.shard);
            let Some(s) = shard else {
                return Err(BenchError::new(format!(
                    "topic {}: partition {} is on shard {}, which Metadata does not list",
                    t.name, p.partition, p.shard
                )));
            };
            Ok(shard_addr(bootstrap, &s.host, s.port))
        })
        .collect::<Result<Vec<String>, BenchError>>()?;
    Ok(Topic {
        name: t.name.clone(),
        addr_of,
    })
}

/// `host:port` of a shard; a shard that names no host (or every host) is
/// reached on the bootstrap's host.
fn shard_addr(bootstrap: &str, host: &str, port: u16) -> String {
    let host = if host.is_empty() || host == "0.0.0.0" || host == "::" {
        bootstrap.rsplit_once(':').map_or(bootstrap, |(h, _)| h)
    } else {
        host
    };
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_group_by_their_shard() {
        let t = Topic {
            name: "t".into(),
            addr_of: vec!["a:1".into(), "b:2".into(), "a:1".into(), "b:2".into()],
        };
        let groups = t.group_by_shard(&[0, 1, 2, 3, 9]);
        assert_eq!(
            groups,
            [
                ("a:1".to_owned(), vec![0, 2]),
                ("b:2".to_owned(), vec![1, 3])
            ]
        );
        assert_eq!(t.partitions(), 4);
    }

    #[test]
    fn shard_addresses_fall_back_to_the_bootstrap_host() {
        assert_eq!(shard_addr("10.0.0.1:9192", "", 9193), "10.0.0.1:9193");
        assert_eq!(shard_addr("h:9192", "0.0.0.0", 9194), "h:9194");
        assert_eq!(shard_addr("h:9192", "127.0.0.1", 9194), "127.0.0.1:9194");
        assert_eq!(shard_addr("h:9192", "::1", 9194), "[::1]:9194");
    }

    #[test]
    fn kafka_layout_waits_for_every_leader() {
        let brokers = vec![(1, "127.0.0.1:9092".to_owned())];
        let ok = [(0, 1, 0), (1, 1, 0)];
        assert_eq!(
            kafka_layout(&ok, &brokers),
            Some(vec!["127.0.0.1:9092".to_owned(); 2])
        );
        assert_eq!(kafka_layout(&[(0, -1, 0), (1, 1, 0)], &brokers), None);
        assert_eq!(kafka_layout(&[(0, 1, 5)], &brokers), None);
        assert_eq!(
            kafka_layout(&[(1, 1, 0)], &brokers),
            None,
            "partition 0 missing"
        );
        assert_eq!(kafka_layout(&[(0, 2, 0)], &brokers), None, "unknown broker");
        assert_eq!(kafka_layout(&[], &brokers), None);
    }
}
