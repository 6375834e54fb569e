//! Strong types for every kind of number that crosses a crate boundary.
//!
//! Passing a byte position where an offset belongs must not compile, so each
//! kind of number is its own type. They are all `Copy` and cost nothing.

use std::fmt;

macro_rules! number_type {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl From<$inner> for $name {
            fn from(v: $inner) -> Self {
                Self(v)
            }
        }
    };
}

number_type!(
    /// A record's position in its partition: the first record ever written is 0.
    Offset(i64)
);
number_type!(
    /// A partition's index within its topic.
    PartitionId(u32)
);
number_type!(
    /// The index of a shard (one per core) within a broker.
    ShardId(u32)
);
number_type!(
    /// The epoch of a partition's leadership, stamped into every batch.
    LeaderEpoch(i32)
);
number_type!(
    /// An idempotent producer's id (-1 when the producer has none).
    ProducerId(i64)
);

impl Offset {
    /// The offset `n` records after this one.
    #[must_use]
    pub fn plus(self, n: i64) -> Offset {
        Offset(self.0 + n)
    }
}

/// Special timestamps accepted by ListOffsets, as Kafka defines them.
pub mod list_offsets_timestamp {
    /// The log end offset (the next offset to be written).
    pub const LATEST: i64 = -1;
    /// The log start offset.
    pub const EARLIEST: i64 = -2;
}
