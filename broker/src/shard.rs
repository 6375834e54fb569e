//! One shard of the broker: its store, its copy of the topic table, its
//! links to the other shards, and the operations it performs on the
//! partitions it owns.
//!
//! `Shard` is `!Send`: one per executor. Requests arriving on any shard are
//! routed here by the helpers in `handlers` (through [`Shard::ask`] and
//! [`Shard::send`]); the `local_*`
//! methods only ever touch partitions this shard owns.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_channel::oneshot;
use glommio::channels::channel_mesh::Senders;
use sluice_protocol::native::{
    FetchPartitionResponse, ListOffsetsPartition, ListOffsetsPartitionResponse,
    ProducePartitionResponse, TopicResult,
};
use sluice_protocol::types::list_offsets_timestamp::{EARLIEST, LATEST};

/// ListOffsets: the record with the largest timestamp (KIP-734).
pub const MAX_TIMESTAMP: i64 = -3;
/// ListOffsets: the first offset in local storage (KIP-405), the log start here.
pub const EARLIEST_LOCAL: i64 = -4;
use sluice_protocol::ErrorCode;
use sluice_replication::EpochHistory;
use sluice_shard::config::LogConfig;
use sluice_shard::partition::{Durability, Partition};
use sluice_shard::store::{owner_shard, partition_dir, ShardStore};

use crate::config::Config;
use crate::kafka::group::{GroupCoordinator, OFFSETS_TOPIC};
use crate::memory::{MemoryPlan, RequestMemory};
use crate::router::{FetchPart, FetchedPart, ProducePart, ShardMsg, TopicChange};
use crate::topics::{self, TopicMeta, TopicTable};

/// A shard's state (`!Send`).
pub struct Shard {
    pub id: u32,
    pub count: u32,
    pub config: Config,
    pub log_defaults: LogConfig,
    /// The leader epoch of this run of the broker (bumped at every start).
    pub generation: i32,
    /// This cluster's id (fixed when the data directory is first used).
    pub cluster_id: String,
    pub store: Rc<ShardStore>,
    /// The consumer groups whose `__consumer_offsets` partition this shard owns.
    pub groups: Rc<GroupCoordinator>,
    pub topics: RefCell<TopicTable>,
    pub peers: Rc<Senders<ShardMsg>>,
    pub epochs: RefCell<HashMap<(String, u32), EpochHistory>>,
    pub connections: Cell<usize>,
    pub in_flight: Cell<usize>,
    /// Producer ids handed out by this shard in this run.
    pub producer_ids: Cell<u64>,
    /// Raised when the shard begins to stop.
    pub stopping: StopSignal,
    /// How the process's memory budget is split.
    pub memory: MemoryPlan,
    /// This shard's pool for request frames and fetch responses.
    pub request_memory: RequestMemory,
}

/// A flag raised once, that the shard's tasks can await instead of polling
/// it (an idle shard then has no timer to wake for).
#[derive(Default)]
pub struct StopSignal {
    raised: Cell<bool>,
    waiters: RefCell<Vec<std::task::Waker>>,
}

impl StopSignal {
    /// Raises the flag and wakes every task waiting on it.
    pub fn raise(&self) {
        self.raised.set(true);
        for waker in self.waiters.take() {
            waker.wake();
        }
    }

    /// Completes once the flag is raised. A task that waits again (a fresh
    /// future each time round its loop) is registered once.
    pub fn wait(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.raised.get() {
                return Poll::Ready(());
            }
            let mut waiters = self.waiters.borrow_mut();
            if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
                waiters.push(cx.waker().clone());
            }
            Poll::Pending
        })
    }
}

impl Shard {
    pub fn owner(&self, topic: &str, partition: u32) -> u32 {
        owner_shard(topic, partition, self.count).0
    }

    pub fn cluster_id(&self) -> String {
        self.cluster_id.clone()
    }

    /// The Kafka broker id that leads the partitions of shard `id`: one per
    /// shard with `kafka_shard_brokers`, else the node's own id.
    pub fn kafka_broker_id(&self, id: u32) -> i32 {
        let node = self.config.broker.node_id;
        match self.config.broker.kafka_shard_brokers {
            true => node.saturating_mul(1024).saturating_add(id as i32),
            false => node,
        }
    }

    /// Every Kafka broker this node advertises: (id, host, port).
    pub fn kafka_brokers(&self) -> Vec<(i32, String, u16)> {
        let (host, port) = self.kafka_advertised();
        match self.config.broker.kafka_shard_brokers {
            true => (0..self.count)
                .map(|s| {
                    (
                        self.kafka_broker_id(s),
                        host.clone(),
                        kafka_shard_port(&self.config, s),
                    )
                })
                .collect(),
            false => vec![(self.kafka_broker_id(0), host, port)],
        }
    }

    /// The Kafka broker (id, host, port) that leads shard `id`'s partitions.
    pub fn kafka_broker_of(&self, id: u32) -> (i32, String, u16) {
        let (host, port) = self.kafka_advertised();
        match self.config.broker.kafka_shard_brokers {
            true => (
                self.kafka_broker_id(id),
                host,
                kafka_shard_port(&self.config, id),
            ),
            false => (self.kafka_broker_id(0), host, port),
        }
    }

    /// The host and port Kafka clients are told to connect to.
    pub fn kafka_advertised(&self) -> (String, u16) {
        let port = self.config.kafka_socket_addr().map_or(9092, |a| a.port());
        (self.config.advertised_host(), port)
    }

    /// The port on which shard `id` listens alone.
    pub fn shard_port(&self, id: u32) -> u16 {
        shard_port(&self.config, id)
    }

    /// Sends a message to another shard; `false` when it is gone (stopping).
    pub async fn send(&self, to: u32, msg: ShardMsg) -> bool {
        debug_assert_ne!(to, self.id, "local work is done in place, not sent");
        self.peers.send_to(to as usize, msg).await.is_ok()
    }

    /// Sends `msg` (built around its reply address) to shard `to` and waits
    /// for the answer; `None` when that shard is gone or dropped it.
    pub async fn ask<T: Send + 'static>(
        &self,
        to: u32,
        msg: impl FnOnce(crate::router::Reply<T>) -> ShardMsg,
    ) -> Option<T> {
        let (reply, answer) = crate::router::reply_channel();
        if !self.send(to, msg(reply)).await {
            return None;
        }
        answer.await.ok()
    }

    /// Opens every partition this shard owns (start-up).
    pub async fn open_owned_partitions(&self) -> Result<(), String> {
        let metas: Vec<TopicMeta> = self.topics.borrow().all().cloned().collect();
        for meta in metas {
            self.open_topic_partitions(&meta).await?;
        }
        Ok(())
    }

    async fn open_topic_partitions(&self, meta: &TopicMeta) -> Result<(), String> {
        let config = meta.log_config(&self.log_defaults)?;
        for p in (0..meta.partitions).filter(|p| self.owner(&meta.name, *p) == self.id) {
            let fresh = self.store.get(&meta.name, p).is_none();
            let log = self
                .store
                .open_partition(&meta.name, p, config.clone(), self.generation)
                .await
                .map_err(|e| format!("partition {}/{p}: {e}", meta.name))?;
            self.begin_epoch(&meta.name, p, &log)?;
            if fresh && meta.name == OFFSETS_TOPIC {
                // Committed offsets and groups come back before any group
                // request is served (they get COORDINATOR_LOAD_IN_PROGRESS).
                let groups = self.groups.clone();
                groups
                    .load(p)
                    .await
                    .map_err(|e| format!("loading {OFFSETS_TOPIC}/{p}: {e}"))?;
            }
        }
        Ok(())
    }

    /// Shard 0 at start-up: creates `__consumer_offsets` if it is missing.
    pub async fn ensure_offsets_topic(self: &Rc<Self>) -> Result<(), String> {
        if self.id != 0 || self.topics.borrow().get(OFFSETS_TOPIC).is_some() {
            return Ok(());
        }
        let topic = sluice_protocol::native::CreateTopic {
            name: OFFSETS_TOPIC.to_string(),
            partitions: self.config.broker.offsets_topic_partitions,
            configs: vec![("cleanup.policy".into(), "compact".into())],
        };
        let created = self.controller_create(vec![topic]).await;
        match created.first() {
            Some(t) if t.error.is_ok() => Ok(()),
            Some(t) => Err(format!(
                "creating {OFFSETS_TOPIC}: {}: {}",
                t.error, t.message
            )),
            None => Err(format!("creating {OFFSETS_TOPIC}: no answer")),
        }
    }

    /// Records in the partition's epoch history that this run's epoch begins
    /// at its log end.
    fn begin_epoch(&self, topic: &str, partition: u32, log: &Partition) -> Result<(), String> {
        let dir = partition_dir(self.store.data_dir(), topic, partition);
        let what = |e: std::io::Error| format!("epoch history of {topic}/{partition}: {e}");
        let mut history = EpochHistory::load(&dir).map_err(what)?;
        let end = log.offsets().log_end;
        history.truncate_to(end).map_err(what)?;
        if history.latest().is_none_or(|l| l.epoch < self.generation) {
            history.begin_epoch(self.generation, end).map_err(what)?;
        }
        self.epochs
            .borrow_mut()
            .insert((topic.to_string(), partition), history);
        Ok(())
    }

    pub async fn local_produce(
        &self,
        durability: Durability,
        parts: Vec<ProducePart>,
    ) -> Vec<ProducePartitionResponse> {
        let mut pending = Vec::with_capacity(parts.len());
        for part in parts {
            let log = self.store.get(&part.topic, part.partition);
            // Appends to different partitions proceed together; each
            // partition's writer groups what arrives in the same turn.
            let task = glommio::spawn_local(async move {
                match log {
                    None => Err((ErrorCode::UNKNOWN_TOPIC_OR_PARTITION, None)),
                    Some(log) => log.append(part.records, durability).await.map_err(|e| {
                        tracing::debug!(error = %e, "append refused");
                        (e.error_code(), e.client_message())
                    }),
                }
            });
            pending.push((part.topic, part.partition, task));
        }
        let mut out = Vec::with_capacity(pending.len());
        for (topic, partition, task) in pending {
            let (error, base_offset, log_start_offset, error_message) = match task.await {
                Ok(a) => (ErrorCode::NONE, a.base_offset, a.log_start_offset, None),
                Err((code, message)) => (code, -1, -1, message),
            };
            out.push(ProducePartitionResponse {
                topic,
                partition,
                error,
                base_offset,
                log_start_offset,
                error_message,
            });
        }
        out
    }

    /// Reads every partition of `parts` at once: cold reads of several
    /// partitions are in flight together on the side ring instead of one
    /// after another.
    pub async fn local_fetch(&self, parts: Vec<FetchPart>) -> Vec<FetchedPart> {
        join_all(parts.into_iter().map(|part| self.fetch_one(part)).collect()).await
    }

    async fn fetch_one(&self, read: FetchPart) -> FetchedPart {
        let FetchPart { part, whole_up_to } = read;
        let mut next_batch_bytes = None;
        let mut resp = FetchPartitionResponse {
            topic: part.topic,
            partition: part.partition,
            error: ErrorCode::NONE,
            high_watermark: -1,
            log_start_offset: -1,
            log_end_offset: -1,
            records: Vec::new(),
        };
        let Some(log) = self.store.get(&resp.topic, resp.partition) else {
            resp.error = ErrorCode::UNKNOWN_TOPIC_OR_PARTITION;
            return FetchedPart {
                response: resp,
                next_batch_bytes,
            };
        };
        let offsets = log.offsets();
        resp.high_watermark = offsets.high_watermark;
        resp.log_start_offset = offsets.log_start;
        resp.log_end_offset = offsets.log_end;
        let (max_bytes, up_to) = (part.max_bytes as usize, whole_up_to as usize);
        match log.read_fitting(part.offset, max_bytes, up_to).await {
            Ok(read) => {
                resp.records = read.chunks;
                next_batch_bytes = read.next_batch_bytes;
            }
            Err(e) => resp.error = e.error_code(),
        }
        FetchedPart {
            response: resp,
            next_batch_bytes,
        }
    }

    /// Completes when any partition grows past the given end, or at `timeout`.
    pub async fn local_watch(&self, parts: Vec<(String, u32, i64)>, timeout: Duration) {
        let mut waiters = Vec::with_capacity(parts.len());
        for (topic, partition, seen_end) in parts {
            let Some(log) = self.store.get(&topic, partition) else {
                return;
            };
            if log.offsets().log_end > seen_end {
                return;
            }
            waiters.push(log.append_waiter());
        }
        if waiters.is_empty() {
            return;
        }
        let any = FirstOf { waiters };
        futures_lite::future::or(any, glommio::timer::sleep(timeout)).await;
    }

    /// OffsetForLeaderEpoch on a partition this shard owns.
    pub fn local_epoch_end(
        &self,
        topic: &str,
        partition: u32,
        epoch: i32,
    ) -> Option<Result<(i32, i64), i16>> {
        let log = self.store.get(topic, partition)?;
        let end = log.offsets().log_end;
        let epochs = self.epochs.borrow();
        let history = epochs.get(&(topic.to_string(), partition))?;
        // An epoch older than any we know: Kafka answers UNDEFINED (-1, -1).
        Some(Ok(history.end_offset_for(epoch, end).unwrap_or((-1, -1))))
    }

    /// A new producer id, unique across shards and restarts (see
    /// InitProducerId).
    pub fn next_producer_id(&self) -> i64 {
        let n = self.producer_ids.get();
        self.producer_ids.set(n + 1);
        let low = n.wrapping_mul(u64::from(self.count)) + u64::from(self.id);
        (i64::from(self.generation) << 32) | (low & 0xFFFF_FFFF) as i64
    }

    pub async fn local_list_offsets(
        &self,
        parts: Vec<ListOffsetsPartition>,
    ) -> Vec<ListOffsetsPartitionResponse> {
        let mut out = Vec::with_capacity(parts.len());
        for part in parts {
            let (error, offset, timestamp) = match self.store.get(&part.topic, part.partition) {
                None => (ErrorCode::UNKNOWN_TOPIC_OR_PARTITION, -1, -1),
                Some(log) => match part.timestamp {
                    EARLIEST | EARLIEST_LOCAL => (ErrorCode::NONE, log.offsets().log_start, -1),
                    LATEST => (ErrorCode::NONE, log.offsets().log_end, -1),
                    MAX_TIMESTAMP => match log.offset_for_timestamp(log.max_timestamp()).await {
                        Ok(Some((o, t))) => (ErrorCode::NONE, o, t),
                        Ok(None) => (ErrorCode::NONE, -1, -1),
                        Err(e) => (e.error_code(), -1, -1),
                    },
                    ts if ts < 0 => (ErrorCode::INVALID_REQUEST, -1, -1),
                    ts => match log.offset_for_timestamp(ts).await {
                        Ok(Some((o, t))) => (ErrorCode::NONE, o, t),
                        Ok(None) => (ErrorCode::NONE, -1, -1),
                        Err(e) => (e.error_code(), -1, -1),
                    },
                },
            };
            out.push(ListOffsetsPartitionResponse {
                topic: part.topic,
                partition: part.partition,
                error,
                offset,
                timestamp,
            });
        }
        out
    }

    /// Learns a topic and opens the partitions this shard owns.
    pub async fn apply_topic_created(&self, meta: TopicMeta) -> Result<(), String> {
        self.topics.borrow_mut().insert(meta.clone());
        self.open_topic_partitions(&meta).await
    }

    /// Forgets a topic and deletes the partitions this shard owns.
    pub async fn apply_topic_deleted(&self, name: &str) {
        let meta = self.topics.borrow_mut().remove(name);
        let Some(meta) = meta else { return };
        for p in (0..meta.partitions).filter(|p| self.owner(name, *p) == self.id) {
            self.epochs.borrow_mut().remove(&(name.to_string(), p));
            if let Err(e) = self.store.delete_partition(name, p).await {
                tracing::error!(topic = name, partition = p, error = %e, "deleting partition");
            }
        }
    }

    /// Shard 0: validates, persists and announces new topics.
    pub async fn controller_create(
        self: &Rc<Self>,
        topics: Vec<sluice_protocol::native::CreateTopic>,
    ) -> Vec<TopicResult> {
        let mut out = Vec::with_capacity(topics.len());
        for t in topics {
            let meta = TopicMeta::new(t.name, t.partitions, t.configs);
            let (error, message) = match self.create_one(meta.clone()).await {
                Ok(()) => (ErrorCode::NONE, String::new()),
                Err((code, message)) => (code, message),
            };
            out.push(TopicResult {
                name: meta.name,
                error,
                message,
            });
        }
        out
    }

    async fn create_one(self: &Rc<Self>, meta: TopicMeta) -> Result<(), (ErrorCode, String)> {
        topics::validate_new(&meta, &self.log_defaults)?;
        if self.topics.borrow().get(&meta.name).is_some() {
            let msg = format!("topic {:?} already exists", meta.name);
            return Err((ErrorCode::TOPIC_ALREADY_EXISTS, msg));
        }
        // Claimed at once so a concurrent create of the same name fails.
        self.topics.borrow_mut().insert(meta.clone());
        if let Err(e) = topics::persist(self.store.data_dir(), &meta) {
            self.topics.borrow_mut().remove(&meta.name);
            return Err((
                ErrorCode::KAFKA_STORAGE_ERROR,
                format!("persisting topic: {e}"),
            ));
        }
        let mut errors = Vec::new();
        if let Err(e) = self.apply_topic_created(meta.clone()).await {
            errors.push(e);
        }
        for to in (0..self.count).filter(|s| *s != self.id) {
            let (reply, answer) = crate::router::reply_channel();
            let msg = ShardMsg::TopicCreated {
                meta: meta.clone(),
                reply,
            };
            if !self.send(to, msg).await {
                errors.push(format!("shard {to} is not running"));
                continue;
            }
            match answer.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => errors.push(e),
                Err(_) => errors.push(format!("shard {to} dropped the request")),
            }
        }
        match errors.is_empty() {
            true => Ok(()),
            false => Err((ErrorCode::KAFKA_STORAGE_ERROR, errors.join("; "))),
        }
    }

    /// Shard 0: validates, persists and announces a change to a topic.
    pub async fn controller_alter(
        self: &Rc<Self>,
        name: &str,
        change: TopicChange,
        validate_only: bool,
    ) -> Result<(), (i16, String)> {
        let Some(mut meta) = self.topics.borrow().get(name).cloned() else {
            return Err((
                ErrorCode::UNKNOWN_TOPIC_OR_PARTITION.0,
                format!("no topic {name:?}"),
            ));
        };
        match change {
            TopicChange::Partitions(n) if n < meta.partitions => {
                return Err((
                    ErrorCode::INVALID_PARTITIONS.0,
                    format!(
                        "topic has {} partitions; they can only be added",
                        meta.partitions
                    ),
                ));
            }
            TopicChange::Partitions(n) if n > topics::PARTITIONS_PER_TOPIC_MAX => {
                return Err((
                    ErrorCode::INVALID_PARTITIONS.0,
                    "too many partitions".into(),
                ));
            }
            TopicChange::Partitions(n) => meta.partitions = n,
            TopicChange::ReplaceConfigs(configs) => meta.configs = configs,
            TopicChange::EditConfigs(edits) => {
                for (key, value) in edits {
                    meta.configs.retain(|(k, _)| *k != key);
                    if let Some(v) = value {
                        meta.configs.push((key, v));
                    }
                }
            }
        }
        meta.log_config(&self.log_defaults)
            .map_err(|e| (ErrorCode::INVALID_CONFIG.0, e))?;
        if validate_only {
            return Ok(());
        }
        topics::persist(self.store.data_dir(), &meta).map_err(|e| {
            (
                ErrorCode::KAFKA_STORAGE_ERROR.0,
                format!("persisting topic: {e}"),
            )
        })?;
        let mut errors = Vec::new();
        if let Err(e) = self.apply_topic_updated(meta.clone()).await {
            errors.push(e);
        }
        for to in (0..self.count).filter(|s| *s != self.id) {
            let (reply, answer) = crate::router::reply_channel();
            if !self
                .send(
                    to,
                    ShardMsg::TopicUpdated {
                        meta: meta.clone(),
                        reply,
                    },
                )
                .await
            {
                errors.push(format!("shard {to} is not running"));
                continue;
            }
            if let Ok(Err(e)) = answer.await {
                errors.push(e);
            }
        }
        match errors.is_empty() {
            true => Ok(()),
            false => Err((ErrorCode::KAFKA_STORAGE_ERROR.0, errors.join("; "))),
        }
    }

    /// Applies a topic's new metadata on this shard.
    pub async fn apply_topic_updated(&self, meta: TopicMeta) -> Result<(), String> {
        let config = meta.log_config(&self.log_defaults)?;
        self.topics.borrow_mut().insert(meta.clone());
        for p in (0..meta.partitions).filter(|p| self.owner(&meta.name, *p) == self.id) {
            if let Some(log) = self.store.get(&meta.name, p) {
                log.set_config(config.clone());
            }
        }
        self.open_topic_partitions(&meta).await
    }

    /// DeleteRecords on a partition this shard owns: the new log start.
    pub async fn local_delete_records(
        &self,
        topic: &str,
        partition: u32,
        offset: i64,
    ) -> Result<i64, i16> {
        let log = self
            .store
            .get(topic, partition)
            .ok_or(ErrorCode::UNKNOWN_TOPIC_OR_PARTITION.0)?;
        let hw = log.offsets().high_watermark;
        let before = if offset == -1 { hw } else { offset };
        if before < 0 || before > hw {
            return Err(ErrorCode::OFFSET_OUT_OF_RANGE.0);
        }
        log.delete_records_before(before).await.map_err(|e| {
            tracing::warn!(topic, partition, error = %e, "DeleteRecords");
            ErrorCode::KAFKA_STORAGE_ERROR.0
        })
    }

    /// Shard 0: deletes topics everywhere, then their metadata.
    pub async fn controller_delete(self: &Rc<Self>, names: Vec<String>) -> Vec<TopicResult> {
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            if self.topics.borrow().get(&name).is_none() {
                out.push(TopicResult {
                    message: format!("topic {name:?} does not exist"),
                    name,
                    error: ErrorCode::UNKNOWN_TOPIC_OR_PARTITION,
                });
                continue;
            }
            self.apply_topic_deleted(&name).await;
            for to in (0..self.count).filter(|s| *s != self.id) {
                let (reply, answer) = crate::router::reply_channel();
                if self
                    .send(
                        to,
                        ShardMsg::TopicDeleted {
                            name: name.clone(),
                            reply,
                        },
                    )
                    .await
                {
                    let _ = answer.await;
                }
            }
            let (error, message) = match topics::remove(self.store.data_dir(), &name) {
                Ok(()) => (ErrorCode::NONE, String::new()),
                Err(e) => (
                    ErrorCode::KAFKA_STORAGE_ERROR,
                    format!("removing topic files: {e}"),
                ),
            };
            out.push(TopicResult {
                name,
                error,
                message,
            });
        }
        out
    }

    /// Serves one message from another shard.
    pub async fn handle_msg(self: Rc<Self>, msg: ShardMsg) {
        match msg {
            ShardMsg::Produce {
                durability,
                parts,
                reply,
            } => {
                let _ = reply.send(self.local_produce(durability, parts).await);
            }
            ShardMsg::Fetch { parts, reply } => {
                let _ = reply.send(self.local_fetch(parts).await);
            }
            ShardMsg::WatchAppend {
                parts,
                timeout,
                reply,
            } => {
                self.local_watch(parts, timeout).await;
                let _ = reply.send(());
            }
            ShardMsg::Reply { id, value } => crate::router::deliver(id, value),
            ShardMsg::Metrics { reply } => {
                let _ = reply.send(self.local_metrics());
            }
            ShardMsg::Group { request, reply } => {
                let _ = reply.send(self.groups.handle(request).await);
            }
            ShardMsg::EpochEnd {
                topic,
                partition,
                epoch,
                reply,
            } => {
                let _ = reply.send(self.local_epoch_end(&topic, partition, epoch));
            }
            ShardMsg::ListOffsets { parts, reply } => {
                let _ = reply.send(self.local_list_offsets(parts).await);
            }
            ShardMsg::CreateTopics { topics, reply } => {
                let _ = reply.send(self.controller_create(topics).await);
            }
            ShardMsg::DeleteTopics { names, reply } => {
                let _ = reply.send(self.controller_delete(names).await);
            }
            ShardMsg::TopicCreated { meta, reply } => {
                let _ = reply.send(self.apply_topic_created(meta).await);
            }
            ShardMsg::AlterTopic {
                name,
                change,
                validate_only,
                reply,
            } => {
                let _ = reply.send(self.controller_alter(&name, change, validate_only).await);
            }
            ShardMsg::TopicUpdated { meta, reply } => {
                let _ = reply.send(self.apply_topic_updated(meta).await);
            }
            ShardMsg::DeleteRecords {
                topic,
                partition,
                offset,
                reply,
            } => {
                let _ = reply.send(self.local_delete_records(&topic, partition, offset).await);
            }
            ShardMsg::TopicDeleted { name, reply } => {
                self.apply_topic_deleted(&name).await;
                let _ = reply.send(());
            }
        }
    }
}

/// The port on which shard `id` serves the Kafka protocol alone.
pub fn kafka_shard_port(config: &Config, id: u32) -> u16 {
    let base = match config.broker.kafka_shard_port_base {
        0 => config
            .kafka_socket_addr()
            .map_or(9092, |a| a.port())
            .saturating_add(1),
        b => b,
    };
    base.saturating_add(id as u16)
}

/// The port on which shard `id` listens alone.
pub fn shard_port(config: &Config, id: u32) -> u16 {
    let base = match config.broker.native_shard_port_base {
        0 => config
            .native_socket_addr()
            .map_or(9192, |a| a.port())
            .saturating_add(1),
        b => b,
    };
    base.saturating_add(id as u16)
}

/// Completes when any of the waiters fires or is dropped.
struct FirstOf {
    waiters: Vec<oneshot::Receiver<()>>,
}

impl Future for FirstOf {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        for w in self.waiters.iter_mut() {
            if Pin::new(w).poll(cx).is_ready() {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }
}

/// Polls `futures` together on the calling task until all are done; their
/// outputs in order.
async fn join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    use std::task::Poll;
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, out) in futures.iter_mut().zip(outputs.iter_mut()) {
            if out.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *out = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::join_all;

    /// The futures run together: the first can only finish once the second
    /// has run (done one after another they would never finish), and the
    /// outputs keep the input order.
    #[test]
    fn join_all_runs_together_and_keeps_order() {
        let handle = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(|| async {
                let (tx, rx) = futures_channel::oneshot::channel::<u32>();
                let mut tx = Some(tx);
                let waits = Box::pin(async move { rx.await.unwrap_or(0) + 1 });
                let sends = Box::pin(async move {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(41);
                    }
                    7
                });
                let both: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = u32>>>> =
                    vec![waits, sends];
                // A hang guard, not a speed check.
                glommio::timer::timeout(Duration::from_secs(30), async { Ok(join_all(both).await) })
                    .await
            })
            .expect("executor");
        let outputs = handle.join().expect("joined").expect("join_all finished");
        assert_eq!(outputs, [42, 7]);
    }
}
