//! Kafka's key partitioner: murmur2 of the key bytes, made non-negative, modulo the
//! partition count.
//!
//! This must agree bit for bit with the Java client's `Utils.murmur2` and
//! `Utils.toPositive`, so that a keyed record lands on the same partition whether the
//! Java client, librdkafka (`murmur2_random`) or a Sluice client wrote it. The Java code
//! works on signed 32-bit ints with wrapping multiplication and unsigned shifts (`>>>`);
//! here the same bits are kept in a `u32`.

/// The seed the Java client passes to murmur2.
const MURMUR2_SEED: u32 = 0x9747_b28c;
/// MurmurHash2's mixing constant.
const MURMUR2_M: u32 = 0x5bd1_e995;
/// MurmurHash2's mixing shift.
const MURMUR2_R: u32 = 24;

/// Kafka's murmur2 of `data`, as the Java client's signed `int`.
#[must_use]
pub fn murmur2(data: &[u8]) -> i32 {
    // Java takes the length as an int; keys beyond 2 GiB wrap the same way.
    let mut h = MURMUR2_SEED ^ (data.len() as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(MURMUR2_M);
        k ^= k >> MURMUR2_R;
        k = k.wrapping_mul(MURMUR2_M);
        h = h.wrapping_mul(MURMUR2_M);
        h ^= k;
    }
    // The Java switch falls through from case 3 to case 1.
    let tail = chunks.remainder();
    if !tail.is_empty() {
        for (i, &byte) in tail.iter().enumerate() {
            h ^= u32::from(byte) << (8 * i);
        }
        h = h.wrapping_mul(MURMUR2_M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(MURMUR2_M);
    h ^= h >> 15;
    h as i32
}

/// The partition Kafka's default partitioner picks for `key`:
/// `toPositive(murmur2(key)) % partitions`, where `toPositive` clears the sign bit.
///
/// # Panics
/// If `partitions` is 0: a topic always has at least one partition, so that is a caller
/// bug.
#[must_use]
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    assert!(partitions > 0, "a topic has at least one partition");
    let positive = (murmur2(key) & 0x7fff_ffff) as u32;
    positive % partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors from Kafka's `UtilsTest.testMurmur2`.
    #[test]
    fn murmur2_matches_kafka_utils_test() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (key, expected) in cases {
            assert_eq!(murmur2(key), expected, "{}", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn partition_for_key_clears_the_sign_bit_then_takes_the_modulus() {
        // murmur2(b"21") is negative: toPositive keeps its low 31 bits.
        let positive = (-973_932_308i32 & 0x7fff_ffff) as u32;
        for partitions in [1, 2, 3, 7, 12, 100, u32::MAX] {
            assert_eq!(partition_for_key(b"21", partitions), positive % partitions);
        }
        assert_eq!(partition_for_key(b"abc", 1000), 479_470_107 % 1000);
    }

    #[test]
    fn every_tail_length_is_stable() {
        // Keys of 0..=8 bytes cover each tail length (0-3) both with and without a
        // whole block in front; each must give a partition in range.
        let key = b"abcdefgh";
        for len in 0..=key.len() {
            assert!(partition_for_key(&key[..len], 16) < 16);
        }
    }

    #[test]
    #[should_panic(expected = "at least one partition")]
    fn zero_partitions_is_a_caller_bug() {
        let _ = partition_for_key(b"k", 0);
    }
}
