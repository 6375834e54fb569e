//! # sluice-protocol
//!
//! Everything that crosses the wire, sans-IO where possible:
//!
//! - [`batch`]: Kafka RecordBatch v2, byte for byte — parsing, validation
//!   (length, magic, CRC-32C, record count), in-place stamping of
//!   `baseOffset` and `partitionLeaderEpoch`, and building batches.
//! - [`compression`]: decompressing a batch's records (gzip, snappy, lz4,
//!   zstd) for the readers that must see every record, such as the cleaner.
//! - [`partitioner`]: Kafka's murmur2 key partitioner, so a keyed record lands
//!   on the same partition whichever client wrote it.
//! - [`native`]: the native protocol — length-prefixed frames whose headers
//!   are FlatBuffers (schema in `schema/`), followed by raw record batches.
//! - [`client`]: a blocking client for the native protocol, used by the
//!   `sluice` CLI, `sluice-bench` and the tests.
//!
//! Every decoder here is total: any byte string gives a value or an error,
//! never a panic, an unbounded allocation or a hang.

pub mod batch;
pub mod client;
pub mod compression;
pub mod error_code;
pub mod native;
pub mod partitioner;
pub mod types;

pub use error_code::ErrorCode;
pub use types::{LeaderEpoch, Offset, PartitionId, ProducerId, ShardId};
