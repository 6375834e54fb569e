//! The API versions Sluice advertises in ApiVersions.
//!
//! Each range starts where the codec's own message type starts (Kafka 4.x's
//! oldest version) and ends at the lower of what the codec can encode and
//! what Sluice implements. Two deliberate exceptions, for librdkafka's
//! exact-version feature checks (see shared/KAFKA-CLIENTS.md):
//! - Produce is advertised from v0, as Kafka 4.x does; v0-v2 (message
//!   formats before v2) are refused with UNSUPPORTED_VERSION.
//! - OffsetCommit/OffsetFetch stop at v9 and InitProducerId at v5: the codec
//!   lists v10/v6 but cannot encode them.

use kafka_protocol::messages::*;
use kafka_protocol::protocol::Message;

/// The highest ApiVersions version Sluice speaks.
pub const API_VERSIONS_MAX: i16 = 4;

/// Lowest Produce version whose records are RecordBatch v2 (magic 2).
pub const PRODUCE_VERSION_MIN_SERVED: i16 = 3;

/// One advertised API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Advertised {
    pub key: ApiKey,
    pub min: i16,
    pub max: i16,
}

const fn range(key: ApiKey, codec_min: i16, codec_max: i16, ours_max: i16) -> Advertised {
    let max = if codec_max < ours_max {
        codec_max
    } else {
        ours_max
    };
    Advertised {
        key,
        min: codec_min,
        max,
    }
}

macro_rules! api {
    ($key:ident, $ty:ty, $max:expr) => {
        range(ApiKey::$key, <$ty>::VERSIONS.min, <$ty>::VERSIONS.max, $max)
    };
}

/// Every API Sluice serves, with its advertised version range.
pub const ADVERTISED: &[Advertised] = &[
    Advertised {
        key: ApiKey::Produce,
        min: 0,
        max: 11,
    },
    // Fetch responses are encoded by hand (zero copy) up to v12; v13+ needs
    // topic ids in the fetch path.
    api!(Fetch, FetchRequest, 12),
    api!(ListOffsets, ListOffsetsRequest, 8),
    api!(Metadata, MetadataRequest, 12),
    api!(OffsetCommit, OffsetCommitRequest, 9),
    api!(OffsetFetch, OffsetFetchRequest, 9),
    api!(FindCoordinator, FindCoordinatorRequest, 5),
    api!(JoinGroup, JoinGroupRequest, 9),
    api!(Heartbeat, HeartbeatRequest, 4),
    api!(LeaveGroup, LeaveGroupRequest, 5),
    api!(SyncGroup, SyncGroupRequest, 5),
    api!(DescribeGroups, DescribeGroupsRequest, 5),
    api!(ListGroups, ListGroupsRequest, 4),
    api!(ApiVersions, ApiVersionsRequest, API_VERSIONS_MAX),
    api!(CreateTopics, CreateTopicsRequest, 7),
    api!(DeleteTopics, DeleteTopicsRequest, 5),
    api!(DeleteRecords, DeleteRecordsRequest, 2),
    api!(InitProducerId, InitProducerIdRequest, 5),
    api!(OffsetForLeaderEpoch, OffsetForLeaderEpochRequest, 4),
    api!(DescribeConfigs, DescribeConfigsRequest, 4),
    api!(AlterConfigs, AlterConfigsRequest, 2),
    api!(CreatePartitions, CreatePartitionsRequest, 3),
    api!(DeleteGroups, DeleteGroupsRequest, 2),
    api!(IncrementalAlterConfigs, IncrementalAlterConfigsRequest, 1),
    api!(OffsetDelete, OffsetDeleteRequest, 0),
    api!(DescribeCluster, DescribeClusterRequest, 1),
];

/// The advertised range of `key`, if Sluice serves it.
pub fn advertised(key: ApiKey) -> Option<Advertised> {
    ADVERTISED.iter().copied().find(|a| a.key == key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_sane_and_cover_what_old_librdkafka_checks() {
        for a in ADVERTISED {
            assert!(a.min <= a.max, "{a:?}");
        }
        // librdkafka 2.0.2 feature checks: exact versions inside the ranges.
        let has = |k: ApiKey, v: i16| advertised(k).is_some_and(|a| a.min <= v && v <= a.max);
        assert!(has(ApiKey::Produce, 0) && has(ApiKey::Produce, 3) && has(ApiKey::Produce, 7));
        assert!(has(ApiKey::Fetch, 4) && has(ApiKey::Fetch, 10) && has(ApiKey::Fetch, 11));
        assert!(has(ApiKey::ListOffsets, 1) && has(ApiKey::InitProducerId, 0));
        for k in [
            ApiKey::FindCoordinator,
            ApiKey::JoinGroup,
            ApiKey::SyncGroup,
            ApiKey::Heartbeat,
        ] {
            assert!(has(k, 0), "{k:?} v0");
        }
        assert!(
            has(ApiKey::LeaveGroup, 0)
                && has(ApiKey::OffsetCommit, 2)
                && has(ApiKey::OffsetFetch, 1)
        );
        assert!(
            has(ApiKey::Metadata, 4) && has(ApiKey::OffsetCommit, 7) && has(ApiKey::JoinGroup, 5)
        );
    }
}
