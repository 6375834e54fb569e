//! The Fetch response, encoded by hand around the raw record batches.
//!
//! Every other response goes through the `kafka-protocol` encoders, which
//! copy `records` into one buffer. For Fetch that would copy every payload
//! byte a consumer reads, so the framing is written here and the batches are
//! returned as separate chunks for one scatter/gather send:
//!
//! ```text
//! [size][header][throttle][error, session v7+][topics ...
//!    [topic][partitions ...
//!       [partition, error, hw, lso, log start v5+, aborted, preferred v11+][records len]
//!       <records chunk> <records chunk> ...        <- never copied
//!       [tagged fields v12+] ...
//! ```
//!
//! Versions 4 to 12 (v12 is the first flexible one: compact arrays and
//! strings, tagged fields). The encoder is checked against the codec crate's
//! decoder for every version in the tests.

use bytes::{BufMut, Bytes, BytesMut};

/// Lowest and highest Fetch versions this encoder writes.
pub const FETCH_VERSION_MIN: i16 = 4;
pub const FETCH_VERSION_MAX: i16 = 12;
const FLEXIBLE_FROM: i16 = 12;

/// One partition of a fetch response.
#[derive(Clone, Debug, Default)]
pub struct FetchedPartition {
    pub partition: i32,
    pub error: i16,
    pub high_watermark: i64,
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
    /// Record batches, concatenated on the wire.
    pub records: Vec<Bytes>,
}

/// One topic of a fetch response.
#[derive(Clone, Debug, Default)]
pub struct FetchedTopic {
    pub name: String,
    pub partitions: Vec<FetchedPartition>,
}

/// The top-level fields of a fetch response.
#[derive(Clone, Copy, Debug, Default)]
pub struct FetchTop {
    pub correlation_id: i32,
    pub throttle_time_ms: i32,
    pub error: i16,
    pub session_id: i32,
    /// READ_COMMITTED consumers get an empty aborted-transactions list;
    /// READ_UNCOMMITTED ones get null, as Kafka answers.
    pub read_committed: bool,
}

struct Writer {
    version: i16,
    chunks: Vec<Bytes>,
    current: BytesMut,
}

impl Writer {
    fn flexible(&self) -> bool {
        self.version >= FLEXIBLE_FROM
    }

    fn uvarint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.current.put_u8((v as u8) | 0x80);
            v >>= 7;
        }
        self.current.put_u8(v as u8);
    }

    fn array_len(&mut self, n: usize) {
        match self.flexible() {
            true => self.uvarint(n as u64 + 1),
            false => self.current.put_i32(n as i32),
        }
    }

    fn string(&mut self, s: &str) {
        match self.flexible() {
            true => self.uvarint(s.len() as u64 + 1),
            false => self.current.put_i16(s.len() as i16),
        }
        self.current.put_slice(s.as_bytes());
    }

    fn no_tagged_fields(&mut self) {
        if self.flexible() {
            self.uvarint(0);
        }
    }

    /// Ends the current framing chunk and appends the records, uncopied.
    fn records(&mut self, records: &[Bytes]) {
        let len: usize = records.iter().map(Bytes::len).sum();
        match self.flexible() {
            true => self.uvarint(len as u64 + 1),
            false => self.current.put_i32(len as i32),
        }
        if len == 0 {
            return;
        }
        let framing = std::mem::replace(&mut self.current, BytesMut::with_capacity(128));
        self.chunks.push(framing.freeze());
        self.chunks
            .extend(records.iter().filter(|r| !r.is_empty()).cloned());
    }
}

/// Encodes a whole response frame (size, header, body) as chunks.
pub fn encode_fetch_response(version: i16, top: FetchTop, topics: &[FetchedTopic]) -> Vec<Bytes> {
    debug_assert!((FETCH_VERSION_MIN..=FETCH_VERSION_MAX).contains(&version));
    let mut w = Writer {
        version,
        chunks: Vec::new(),
        current: BytesMut::with_capacity(256),
    };
    w.current.put_i32(0); // size, patched below
    w.current.put_i32(top.correlation_id);
    w.no_tagged_fields(); // response header v1 for flexible versions
    w.current.put_i32(top.throttle_time_ms);
    if version >= 7 {
        w.current.put_i16(top.error);
        w.current.put_i32(top.session_id);
    }
    w.array_len(topics.len());
    for t in topics {
        w.string(&t.name);
        w.array_len(t.partitions.len());
        for p in &t.partitions {
            partition(&mut w, p, top.read_committed);
        }
        w.no_tagged_fields();
    }
    w.no_tagged_fields();
    let last = std::mem::take(&mut w.current);
    if !last.is_empty() {
        w.chunks.push(last.freeze());
    }
    patch_size(w.chunks)
}

fn partition(w: &mut Writer, p: &FetchedPartition, read_committed: bool) {
    w.current.put_i32(p.partition);
    w.current.put_i16(p.error);
    w.current.put_i64(p.high_watermark);
    w.current.put_i64(p.last_stable_offset);
    if w.version >= 5 {
        w.current.put_i64(p.log_start_offset);
    }
    // Aborted transactions: none (transactions are not supported).
    match (read_committed, w.flexible()) {
        (true, _) => w.array_len(0),
        (false, true) => w.uvarint(0),
        (false, false) => w.current.put_i32(-1),
    }
    if w.version >= 11 {
        w.current.put_i32(-1); // preferred read replica: none
    }
    w.records(&p.records);
    w.no_tagged_fields();
}

/// Writes the frame size into the first four bytes.
fn patch_size(mut chunks: Vec<Bytes>) -> Vec<Bytes> {
    let total: usize = chunks.iter().map(Bytes::len).sum();
    let size = ((total - 4) as i32).to_be_bytes();
    if let Some(first) = chunks.first_mut() {
        let mut head = BytesMut::from(&first[..]);
        head[0..4].copy_from_slice(&size);
        *first = head.freeze();
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{FetchResponse, ResponseHeader};
    use kafka_protocol::protocol::Decodable;

    fn sample() -> Vec<FetchedTopic> {
        vec![
            FetchedTopic {
                name: "orders".into(),
                partitions: vec![
                    FetchedPartition {
                        partition: 3,
                        error: 0,
                        high_watermark: 100,
                        last_stable_offset: 100,
                        log_start_offset: 7,
                        records: vec![Bytes::from_static(b"abc"), Bytes::from_static(b"defg")],
                    },
                    FetchedPartition {
                        partition: 4,
                        error: 1,
                        high_watermark: -1,
                        ..Default::default()
                    },
                ],
            },
            FetchedTopic {
                name: "empty".into(),
                partitions: vec![],
            },
        ]
    }

    #[test]
    fn every_version_decodes_with_the_reference_codec_and_records_are_not_copied() {
        let topics = sample();
        for version in FETCH_VERSION_MIN..=FETCH_VERSION_MAX {
            for read_committed in [false, true] {
                let top = FetchTop {
                    correlation_id: 42,
                    session_id: 0,
                    read_committed,
                    ..Default::default()
                };
                let chunks = encode_fetch_response(version, top, &topics);
                assert!(chunks
                    .iter()
                    .any(|c| c.as_ptr() == topics[0].partitions[0].records[0].as_ptr()));
                let joined: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
                let size = i32::from_be_bytes([joined[0], joined[1], joined[2], joined[3]]);
                assert_eq!(size as usize, joined.len() - 4, "v{version}");
                let mut buf = Bytes::from(joined[4..].to_vec());
                let header_version = if version >= FLEXIBLE_FROM { 1 } else { 0 };
                let header = ResponseHeader::decode(&mut buf, header_version).expect("header");
                assert_eq!(header.correlation_id, 42);
                let r = FetchResponse::decode(&mut buf, version).expect("body");
                assert!(buf.is_empty(), "v{version}: trailing bytes");
                assert_eq!(r.responses.len(), 2);
                let p = &r.responses[0].partitions[0];
                assert_eq!(r.responses[0].topic.0.as_str(), "orders");
                assert_eq!((p.partition_index, p.high_watermark), (3, 100));
                assert_eq!(p.records.as_deref(), Some(&b"abcdefg"[..]));
                if version >= 5 {
                    assert_eq!(p.log_start_offset, 7);
                }
                assert_eq!(
                    p.aborted_transactions.as_ref().map(Vec::len),
                    read_committed.then_some(0)
                );
                assert_eq!(r.responses[0].partitions[1].error_code, 1);
            }
        }
    }
}
