//! The group coordinator's durable log: the shard's own partitions of
//! `__consumer_offsets`, appended with `acks=all` durability.

use std::rc::Rc;

use bytes::Bytes;
use sluice_shard::partition::Durability;
use sluice_shard::store::ShardStore;

use super::group::{LocalBoxFuture, OffsetsLog, OFFSETS_TOPIC};

/// `__consumer_offsets` partitions owned by one shard (`!Send`).
pub struct ShardOffsetsLog {
    pub store: Rc<ShardStore>,
}

impl OffsetsLog for ShardOffsetsLog {
    fn append(&self, partition: u32, batch: Bytes) -> LocalBoxFuture<'_, Result<i64, String>> {
        Box::pin(async move {
            let log = self
                .store
                .get(OFFSETS_TOPIC, partition)
                .ok_or_else(|| format!("{OFFSETS_TOPIC}/{partition} is not on this shard"))?;
            log.append(batch, Durability::Flushed)
                .await
                .map(|a| a.base_offset)
                .map_err(|e| e.to_string())
        })
    }

    fn read(
        &self,
        partition: u32,
        offset: i64,
        max_bytes: usize,
    ) -> LocalBoxFuture<'_, Result<(Vec<Bytes>, i64), String>> {
        Box::pin(async move {
            let log = self
                .store
                .get(OFFSETS_TOPIC, partition)
                .ok_or_else(|| format!("{OFFSETS_TOPIC}/{partition} is not on this shard"))?;
            let end = log.offsets().log_end;
            let start = offset.max(log.offsets().log_start);
            let read = log
                .read(start, max_bytes)
                .await
                .map_err(|e| format!("{e:?}"))?;
            Ok((read.chunks, end))
        })
    }
}
