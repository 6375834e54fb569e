//! The records the coordinator keeps in `__consumer_offsets`, in Kafka's own schema so
//! that the topic reads the same as Apache Kafka's (and Kafka's tools can decode it).
//!
//! Every record is keyed; the topic is compacted, so the latest value per key wins and a
//! null value (a tombstone) deletes the key. All integers are big-endian; a `string` is
//! an i16 length then UTF-8 bytes (-1 = null where nullable); `bytes` is an i32 length.
//!
//! ```text
//! offset commit key   (version 1): i16 1 | string group | string topic | i32 partition
//! offset commit value (version 3): i16 3 | i64 offset | i32 leader_epoch
//!                                  | string metadata | i64 commit_timestamp_ms
//! group metadata key   (version 2): i16 2 | string group
//! group metadata value (version 3): i16 3 | string protocol_type | i32 generation
//!                                  | nullable string protocol | nullable string leader
//!                                  | i64 current_state_timestamp_ms | i32 member count
//!                                  | member*
//! member: string member_id | nullable string group_instance_id | string client_id
//!         | string client_host | i32 rebalance_timeout_ms | i32 session_timeout_ms
//!         | bytes subscription | bytes assignment
//! ```
//!
//! Key versions 0 and 1 (offset commits) share one layout; value versions 0-3 of an offset
//! commit are decoded (v1 carries an expiry, v2 drops it, v3 adds the leader epoch); group
//! metadata values of versions 0-3 are decoded. Other key versions (Kafka 4's share and
//! KIP-848 records) are skipped by the loader.

use bytes::Bytes;

pub const KEY_VERSION_OFFSET: i16 = 1;
pub const KEY_VERSION_GROUP: i16 = 2;
pub const VALUE_VERSION_OFFSET: i16 = 3;
pub const VALUE_VERSION_GROUP: i16 = 3;

/// A decoded key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordKey {
    Offset {
        group: String,
        topic: String,
        partition: i32,
    },
    Group {
        group: String,
    },
}

/// A decoded offset commit value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetValue {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp_ms: i64,
}

/// A decoded group metadata value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupValue {
    pub protocol_type: String,
    pub generation: i32,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub state_timestamp_ms: i64,
    pub members: Vec<MemberValue>,
}

/// One member of a group metadata value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberValue {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub session_timeout_ms: i32,
    pub subscription: Bytes,
    pub assignment: Bytes,
}

/// Why a stored record could not be decoded (the loader skips it and warns).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    Truncated,
    BadUtf8,
    UnknownVersion(i16),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Truncated => write!(f, "truncated record"),
            DecodeError::BadUtf8 => write!(f, "string is not UTF-8"),
            DecodeError::UnknownVersion(v) => write!(f, "unknown schema version {v}"),
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Strings longer than i16::MAX never reach here: group ids, topics, member ids and
    // metadata are bounded by the request decoder and the coordinator's limits.
    let len = i16::try_from(s.len()).unwrap_or(i16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&s.as_bytes()[..len as usize]);
}

fn put_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => put_str(out, s),
        None => out.extend_from_slice(&(-1i16).to_be_bytes()),
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    let len = i32::try_from(b.len()).unwrap_or(i32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&b[..len as usize]);
}

pub fn offset_key(group: &str, topic: &str, partition: i32) -> Vec<u8> {
    let mut out = Vec::with_capacity(10 + group.len() + topic.len());
    out.extend_from_slice(&KEY_VERSION_OFFSET.to_be_bytes());
    put_str(&mut out, group);
    put_str(&mut out, topic);
    out.extend_from_slice(&partition.to_be_bytes());
    out
}

pub fn group_key(group: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + group.len());
    out.extend_from_slice(&KEY_VERSION_GROUP.to_be_bytes());
    put_str(&mut out, group);
    out
}

pub fn offset_value(v: &OffsetValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + v.metadata.len());
    out.extend_from_slice(&VALUE_VERSION_OFFSET.to_be_bytes());
    out.extend_from_slice(&v.offset.to_be_bytes());
    out.extend_from_slice(&v.leader_epoch.to_be_bytes());
    put_str(&mut out, &v.metadata);
    out.extend_from_slice(&v.commit_timestamp_ms.to_be_bytes());
    out
}

pub fn group_value(v: &GroupValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&VALUE_VERSION_GROUP.to_be_bytes());
    put_str(&mut out, &v.protocol_type);
    out.extend_from_slice(&v.generation.to_be_bytes());
    put_opt_str(&mut out, v.protocol.as_deref());
    put_opt_str(&mut out, v.leader.as_deref());
    out.extend_from_slice(&v.state_timestamp_ms.to_be_bytes());
    let count = i32::try_from(v.members.len()).unwrap_or(i32::MAX);
    out.extend_from_slice(&count.to_be_bytes());
    for m in &v.members {
        put_str(&mut out, &m.member_id);
        put_opt_str(&mut out, m.instance_id.as_deref());
        put_str(&mut out, &m.client_id);
        put_str(&mut out, &m.client_host);
        out.extend_from_slice(&m.rebalance_timeout_ms.to_be_bytes());
        out.extend_from_slice(&m.session_timeout_ms.to_be_bytes());
        put_bytes(&mut out, &m.subscription);
        put_bytes(&mut out, &m.assignment);
    }
    out
}

/// A checked reader over untrusted bytes.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn i16(&mut self) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    fn opt_str(&mut self) -> Result<Option<String>, DecodeError> {
        let len = self.i16()?;
        let Ok(len) = usize::try_from(len) else {
            return Ok(None);
        };
        let raw = self.take(len)?;
        let s = std::str::from_utf8(raw).map_err(|_| DecodeError::BadUtf8)?;
        Ok(Some(s.to_owned()))
    }

    fn str(&mut self) -> Result<String, DecodeError> {
        Ok(self.opt_str()?.unwrap_or_default())
    }

    fn bytes(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.i32()?;
        let Ok(len) = usize::try_from(len) else {
            return Ok(Bytes::new());
        };
        Ok(Bytes::copy_from_slice(self.take(len)?))
    }
}

pub fn decode_key(buf: &[u8]) -> Result<RecordKey, DecodeError> {
    let mut r = Reader { buf };
    match r.i16()? {
        0 | 1 => Ok(RecordKey::Offset {
            group: r.str()?,
            topic: r.str()?,
            partition: r.i32()?,
        }),
        2 => Ok(RecordKey::Group { group: r.str()? }),
        v => Err(DecodeError::UnknownVersion(v)),
    }
}

pub fn decode_offset_value(buf: &[u8]) -> Result<OffsetValue, DecodeError> {
    let mut r = Reader { buf };
    let version = r.i16()?;
    if !(0..=3).contains(&version) {
        return Err(DecodeError::UnknownVersion(version));
    }
    let offset = r.i64()?;
    let leader_epoch = if version >= 3 { r.i32()? } else { -1 };
    let metadata = r.str()?;
    let commit_timestamp_ms = r.i64()?;
    if version == 1 {
        r.i64()?; // expire timestamp, no longer used
    }
    Ok(OffsetValue {
        offset,
        leader_epoch,
        metadata,
        commit_timestamp_ms,
    })
}

pub fn decode_group_value(buf: &[u8]) -> Result<GroupValue, DecodeError> {
    let mut r = Reader { buf };
    let version = r.i16()?;
    if !(0..=3).contains(&version) {
        return Err(DecodeError::UnknownVersion(version));
    }
    let protocol_type = r.str()?;
    let generation = r.i32()?;
    let protocol = r.opt_str()?;
    let leader = r.opt_str()?;
    let state_timestamp_ms = if version >= 2 { r.i64()? } else { -1 };
    let count = r.i32()?;
    let mut members = Vec::new();
    for _ in 0..count.max(0) {
        members.push(decode_member(&mut r, version)?);
    }
    Ok(GroupValue {
        protocol_type,
        generation,
        protocol,
        leader,
        state_timestamp_ms,
        members,
    })
}

fn decode_member(r: &mut Reader<'_>, version: i16) -> Result<MemberValue, DecodeError> {
    let member_id = r.str()?;
    let instance_id = if version >= 3 { r.opt_str()? } else { None };
    let client_id = r.str()?;
    let client_host = r.str()?;
    let rebalance_timeout_ms = if version >= 1 { r.i32()? } else { -1 };
    let session_timeout_ms = r.i32()?;
    let rebalance_timeout_ms = if version >= 1 {
        rebalance_timeout_ms
    } else {
        session_timeout_ms
    };
    Ok(MemberValue {
        member_id,
        instance_id,
        client_id,
        client_host,
        rebalance_timeout_ms,
        session_timeout_ms,
        subscription: r.bytes()?,
        assignment: r.bytes()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_commit_record_round_trips_in_kafka_schema() {
        let key = offset_key("g", "t", 7);
        assert_eq!(key, [0, 1, 0, 1, b'g', 0, 1, b't', 0, 0, 0, 7]);
        let decoded = decode_key(&key);
        let expected = RecordKey::Offset {
            group: "g".into(),
            topic: "t".into(),
            partition: 7,
        };
        assert_eq!(decoded, Ok(expected));
        let value = OffsetValue {
            offset: 42,
            leader_epoch: 3,
            metadata: "m".into(),
            commit_timestamp_ms: 1000,
        };
        assert_eq!(decode_offset_value(&offset_value(&value)), Ok(value));
    }

    #[test]
    fn group_metadata_record_round_trips_in_kafka_schema() {
        let value = GroupValue {
            protocol_type: "consumer".into(),
            generation: 5,
            protocol: Some("range".into()),
            leader: Some("a".into()),
            state_timestamp_ms: 9,
            members: vec![MemberValue {
                member_id: "a".into(),
                instance_id: Some("i".into()),
                client_id: "c".into(),
                client_host: "h".into(),
                rebalance_timeout_ms: 1,
                session_timeout_ms: 2,
                subscription: Bytes::from_static(b"sub"),
                assignment: Bytes::from_static(b"asg"),
            }],
        };
        assert_eq!(decode_group_value(&group_value(&value)), Ok(value));
        let key = decode_key(&group_key("g"));
        assert_eq!(key, Ok(RecordKey::Group { group: "g".into() }));
    }

    #[test]
    fn truncated_records_are_errors_not_panics() {
        let value = offset_value(&OffsetValue {
            offset: 1,
            leader_epoch: 1,
            metadata: "meta".into(),
            commit_timestamp_ms: 1,
        });
        for len in 0..value.len() {
            assert!(decode_offset_value(&value[..len]).is_err());
        }
        let key = offset_key("group", "topic", 1);
        for len in 0..key.len() {
            assert!(decode_key(&key[..len]).is_err());
        }
        let group = group_value(&GroupValue {
            members: vec![MemberValue::default()],
            ..GroupValue::default()
        });
        for len in 0..group.len() {
            assert!(decode_group_value(&group[..len]).is_err());
        }
    }
}
