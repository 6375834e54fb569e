//! What the generator puts in records: value sizes (fixed or drawn from a
//! distribution), keys, value content, and batch compression.
//!
//! - Sizes: `--record-bytes 1024`, `uniform:MIN-MAX` or
//!   `normal:MEAN,STDDEV` (clamped to `[8, MEAN + 4 STDDEV]`), drawn with a
//!   seeded generator so two runs send the same sizes.
//! - Keys (`--key-bytes N`, 0 = none): each partition cycles through its own
//!   `--key-space` keys, so a key always lands in the same partition as it
//!   would with a keyed producer. A key is its number in decimal, padded on
//!   the left with `k` to N bytes.
//! - Values: the 8-byte send-time stamp, then text from a fixed pseudo-random
//!   word list (compressible like log lines: about 5:1 with gzip, 3.4:1
//!   with snappy).
//! - Compression (`--compression`): the records section of each batch is
//!   compressed with Kafka's framing for that codec (through the
//!   `kafka-protocol` crate's codecs), as a Kafka producer does.

use std::fmt;
use std::str::FromStr;

use bytes::{Bytes, BytesMut};
use kafka_protocol::compression::{Compressor, Decompressor, Gzip, Lz4, Snappy, Zstd};
use sluice_protocol::batch::{self, BatchHeader, BATCH_HEADER_BYTES};

use crate::produce::STAMP_BYTES;

/// Bytes of text values are cut from.
const TEXT_BYTES: usize = 1 << 20;

/// A small, fast, seeded generator (splitmix64): sizes and text only, not
/// for anything that needs real randomness.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    #[must_use]
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[0, n)`; `n` > 0.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// How big each record's value is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RecordSize {
    Fixed(usize),
    Uniform { min: usize, max: usize },
    Normal { mean: f64, stddev: f64 },
}

impl RecordSize {
    /// The largest value this can draw.
    #[must_use]
    pub fn max(&self) -> usize {
        match *self {
            RecordSize::Fixed(n) => n,
            RecordSize::Uniform { max, .. } => max,
            RecordSize::Normal { mean, stddev } => (mean + 4.0 * stddev).ceil() as usize,
        }
    }

    /// The smallest value this can draw.
    #[must_use]
    pub fn min(&self) -> usize {
        match *self {
            RecordSize::Fixed(n) => n,
            RecordSize::Uniform { min, .. } => min,
            RecordSize::Normal { .. } => STAMP_BYTES,
        }
    }

    pub fn sample(&self, rng: &mut Rng) -> usize {
        match *self {
            RecordSize::Fixed(n) => n,
            RecordSize::Uniform { min, max } => min + rng.below((max - min + 1) as u64) as usize,
            RecordSize::Normal { mean, stddev } => {
                // Box-Muller.
                let u1 = rng.next_f64().max(f64::MIN_POSITIVE);
                let u2 = rng.next_f64();
                let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                let v = (mean + stddev * z).round();
                (v.max(self.min() as f64) as usize).min(self.max())
            }
        }
    }
}

impl FromStr for RecordSize {
    type Err = String;

    fn from_str(s: &str) -> Result<RecordSize, String> {
        let num = |t: &str| -> Result<f64, String> {
            t.trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| format!("{t:?} is not a size in bytes"))
        };
        let size = match s.split_once(':') {
            None => RecordSize::Fixed(num(s)? as usize),
            Some(("uniform", range)) => {
                let (lo, hi) = range
                    .split_once('-')
                    .ok_or("uniform sizes are written uniform:MIN-MAX")?;
                let (min, max) = (num(lo)? as usize, num(hi)? as usize);
                if min > max {
                    return Err("uniform:MIN-MAX needs MIN <= MAX".to_owned());
                }
                RecordSize::Uniform { min, max }
            }
            Some(("normal", params)) => {
                let (m, sd) = params
                    .split_once(',')
                    .ok_or("normal sizes are written normal:MEAN,STDDEV")?;
                RecordSize::Normal {
                    mean: num(m)?,
                    stddev: num(sd)?,
                }
            }
            Some((kind, _)) => {
                return Err(format!(
                "unknown size distribution {kind:?} (fixed N, uniform:MIN-MAX, normal:MEAN,STDDEV)"
            ))
            }
        };
        if size.min() < STAMP_BYTES {
            return Err(format!(
                "values must hold at least {STAMP_BYTES} bytes (the send time)"
            ));
        }
        Ok(size)
    }
}

impl fmt::Display for RecordSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RecordSize::Fixed(n) => write!(f, "{n}"),
            RecordSize::Uniform { min, max } => write!(f, "uniform:{min}-{max}"),
            RecordSize::Normal { mean, stddev } => write!(f, "normal:{mean},{stddev}"),
        }
    }
}

/// Batch compression, with Kafka's codec ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Codec {
    #[default]
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Codec {
    fn id(self) -> i16 {
        match self {
            Codec::None => 0,
            Codec::Gzip => 1,
            Codec::Snappy => 2,
            Codec::Lz4 => 3,
            Codec::Zstd => 4,
        }
    }

    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Codec::None => "none",
            Codec::Gzip => "gzip",
            Codec::Snappy => "snappy",
            Codec::Lz4 => "lz4",
            Codec::Zstd => "zstd",
        }
    }
}

/// Offsets of the header fields a compressed batch changes.
const LENGTH_AT: usize = 8;
const CRC_AT: usize = 17;
const ATTRIBUTES_AT: usize = 21;
const COMPRESSION_MASK: i16 = 0x07;

/// Compresses the records section of an uncompressed batch in place of the
/// original, fixing its length, attributes and CRC.
pub fn compress_batch(batch: Vec<u8>, codec: Codec) -> Result<Vec<u8>, String> {
    if codec == Codec::None {
        return Ok(batch);
    }
    let section = batch
        .get(BATCH_HEADER_BYTES..)
        .ok_or("a batch shorter than its header")?;
    let mut out = BytesMut::with_capacity(batch.len());
    out.extend_from_slice(&batch[..BATCH_HEADER_BYTES]);
    let fill = |tmp: &mut BytesMut| -> anyhow::Result<()> {
        tmp.extend_from_slice(section);
        Ok(())
    };
    let done = match codec {
        Codec::None => Ok(()),
        Codec::Gzip => Gzip::compress(&mut out, fill),
        Codec::Snappy => Snappy::compress(&mut out, fill),
        Codec::Lz4 => Lz4::compress(&mut out, fill),
        Codec::Zstd => Zstd::compress(&mut out, fill),
    };
    done.map_err(|e| format!("{} compression failed: {e:#}", codec.name()))?;
    let mut out = out.to_vec();
    let length = i32::try_from(out.len() - 12).map_err(|_| "a batch over 2 GiB")?;
    out[LENGTH_AT..LENGTH_AT + 4].copy_from_slice(&length.to_be_bytes());
    let attributes = i16::from_be_bytes([out[ATTRIBUTES_AT], out[ATTRIBUTES_AT + 1]]);
    let attributes = (attributes & !COMPRESSION_MASK) | codec.id();
    out[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&attributes.to_be_bytes());
    let crc = batch::compute_crc(&out);
    out[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    Ok(out)
}

/// The same batch with its records section decompressed and its
/// compression bits cleared, so [`batch::records`] can walk it. The CRC is
/// left as it was (check it on the original).
pub fn decompress_batch(bytes: &[u8], header: &BatchHeader) -> Result<Vec<u8>, String> {
    let codec = header.compression().map_err(|e| e.to_string())?;
    let total = header.total_bytes();
    let section = bytes
        .get(BATCH_HEADER_BYTES..total)
        .ok_or("a batch shorter than its length")?;
    let mut input = Bytes::copy_from_slice(section);
    let take = |plain: &mut Bytes| -> anyhow::Result<Bytes> { Ok(plain.clone()) };
    let plain = match codec {
        batch::Compression::None => Ok(input.clone()),
        batch::Compression::Gzip => Gzip::decompress(&mut input, take),
        batch::Compression::Snappy => Snappy::decompress(&mut input, take),
        batch::Compression::Lz4 => Lz4::decompress(&mut input, take),
        batch::Compression::Zstd => Zstd::decompress(&mut input, take),
    }
    .map_err(|e| format!("{} batch fails to decompress: {e:#}", codec.name()))?;
    let mut out = Vec::with_capacity(BATCH_HEADER_BYTES + plain.len());
    out.extend_from_slice(&bytes[..BATCH_HEADER_BYTES]);
    out.extend_from_slice(&plain);
    let length = i32::try_from(out.len() - 12).map_err(|_| "a batch over 2 GiB")?;
    out[LENGTH_AT..LENGTH_AT + 4].copy_from_slice(&length.to_be_bytes());
    let attributes = i16::from_be_bytes([out[ATTRIBUTES_AT], out[ATTRIBUTES_AT + 1]]);
    out[ATTRIBUTES_AT..ATTRIBUTES_AT + 2]
        .copy_from_slice(&(attributes & !COMPRESSION_MASK).to_be_bytes());
    Ok(out)
}

/// Makes each record's key and value.
pub struct Payload {
    size: RecordSize,
    key_bytes: usize,
    key_space: u64,
    partitions: u64,
    /// Per partition: how many keys it has handed out.
    key_next: Vec<u64>,
    rng: Rng,
    /// Pseudo-random text; each value is a window of it, whose first 8
    /// bytes are overwritten with the stamp.
    text: Vec<u8>,
    at: usize,
    key: Vec<u8>,
}

impl Payload {
    /// `seed` makes each producer thread's sizes and text its own.
    #[must_use]
    pub fn new(
        size: RecordSize,
        key_bytes: usize,
        key_space: u64,
        partitions: u32,
        seed: u64,
    ) -> Payload {
        let mut rng = Rng::new(seed);
        let text = text(TEXT_BYTES.max(2 * size.max()), &mut rng);
        Payload {
            size,
            key_bytes,
            key_space: key_space.max(1),
            partitions: u64::from(partitions.max(1)),
            key_next: vec![0; partitions.max(1) as usize],
            rng,
            text,
            at: 0,
            key: vec![b'k'; key_bytes],
        }
    }

    /// The next record for `partition`: its key (if keys are on) and its
    /// value, stamped `stamp_ns`.
    pub fn next(&mut self, partition: u32, stamp_ns: u64) -> (Option<&[u8]>, &[u8]) {
        let len = self.size.sample(&mut self.rng);
        if self.at + len > self.text.len() {
            self.at = 0;
        }
        let start = self.at;
        // Successive values overlap little and start at varied places.
        self.at += 1 + self.rng.below(len as u64 + 1) as usize;
        let value = &mut self.text[start..start + len];
        value[..STAMP_BYTES].copy_from_slice(&stamp_ns.to_be_bytes());
        let key = if self.key_bytes == 0 {
            None
        } else {
            let p = u64::from(partition) % self.partitions;
            let slot = &mut self.key_next[p as usize];
            let index = p + self.partitions * (*slot % self.key_space);
            *slot += 1;
            write_key(&mut self.key, index);
            Some(&self.key[..])
        };
        (key, &self.text[start..start + len])
    }
}

/// `index` in decimal, right-aligned in `key`, padded with `k` (keeping
/// the last digits when `key` is too short for all of them).
fn write_key(key: &mut [u8], mut index: u64) {
    for b in key.iter_mut().rev() {
        if index == 0 {
            *b = b'k';
            continue;
        }
        *b = b'0' + (index % 10) as u8;
        index /= 10;
    }
    if key.iter().all(|&b| b == b'k') {
        if let Some(last) = key.last_mut() {
            *last = b'0';
        }
    }
}

/// Lowercase words separated by spaces: compresses like log text.
fn text(bytes: usize, rng: &mut Rng) -> Vec<u8> {
    const WORDS: [&str; 32] = [
        "the",
        "order",
        "filled",
        "at",
        "price",
        "user",
        "clicked",
        "page",
        "session",
        "id",
        "latency",
        "ms",
        "sensor",
        "reading",
        "temperature",
        "host",
        "request",
        "served",
        "status",
        "ok",
        "error",
        "retry",
        "queue",
        "depth",
        "trade",
        "symbol",
        "bid",
        "ask",
        "volume",
        "event",
        "region",
        "eu-west",
    ];
    let mut out = Vec::with_capacity(bytes + 32);
    while out.len() < bytes {
        let w = WORDS[rng.below(WORDS.len() as u64) as usize];
        out.extend_from_slice(w.as_bytes());
        if rng.below(8) == 0 {
            // A number now and then, as log lines have.
            out.extend_from_slice(format!(" {}", rng.below(100_000)).as_bytes());
        }
        out.push(b' ');
    }
    out.truncate(bytes);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_protocol::batch::BatchBuilder;

    #[test]
    fn sizes_parse_and_stay_in_range() {
        assert_eq!("100".parse(), Ok(RecordSize::Fixed(100)));
        assert_eq!(
            "uniform:64-4096".parse(),
            Ok(RecordSize::Uniform { min: 64, max: 4096 })
        );
        assert!("uniform:100-10".parse::<RecordSize>().is_err());
        assert!("4".parse::<RecordSize>().is_err());
        assert!("pareto:1,2".parse::<RecordSize>().is_err());
        let normal: RecordSize = "normal:512,128".parse().expect("normal");
        assert_eq!(normal.max(), 1024);
        let mut rng = Rng::new(7);
        let uniform: RecordSize = "uniform:64-4096".parse().expect("uniform");
        let (mut lo, mut hi, mut sum) = (usize::MAX, 0, 0.0);
        for _ in 0..20_000 {
            let u = uniform.sample(&mut rng);
            assert!((64..=4096).contains(&u));
            let n = normal.sample(&mut rng);
            assert!((8..=1024).contains(&n));
            lo = lo.min(u);
            hi = hi.max(u);
            sum += n as f64;
        }
        // The draws cover the range, and the normal one centres on its mean.
        assert!(lo < 100 && hi > 4000, "{lo}..{hi}");
        let mean = sum / 20_000.0;
        assert!((mean - 512.0).abs() < 10.0, "{mean}");
        assert_eq!(normal.to_string(), "normal:512,128");
    }

    #[test]
    fn keys_stay_with_their_partition() {
        let mut p = Payload::new(RecordSize::Fixed(16), 6, 3, 4, 1);
        let mut keys = Vec::new();
        for _ in 0..4 {
            let (k, v) = p.next(2, 99);
            keys.push(String::from_utf8(k.expect("keyed").to_vec()).expect("ascii"));
            assert_eq!(crate::produce::read_stamp(v), Some(99));
            assert_eq!(v.len(), 16);
        }
        // Partition 2 of 4, key space 3: keys 2, 6, 10, then 2 again.
        assert_eq!(keys, ["kkkkk2", "kkkkk6", "kkkk10", "kkkkk2"]);
        let (k, _) = p.next(0, 1);
        assert_eq!(k, Some(&b"kkkkk0"[..]));
        let mut none = Payload::new(RecordSize::Fixed(16), 0, 3, 4, 1);
        assert!(none.next(0, 1).0.is_none());
    }

    #[test]
    fn every_codec_round_trips_a_batch() {
        let mut p = Payload::new("uniform:20-300".parse().expect("size"), 8, 100, 1, 5);
        let mut b = BatchBuilder::new(1_700_000_000_000);
        let mut expect = Vec::new();
        for i in 0..200 {
            let (k, v) = p.next(0, i);
            expect.push((k.map(<[u8]>::to_vec), v.to_vec()));
            b.push(1_700_000_000_000, k, Some(v), &[]);
        }
        let plain = b.finish();
        for codec in [Codec::Gzip, Codec::Snappy, Codec::Lz4, Codec::Zstd] {
            let packed = compress_batch(plain.clone(), codec).expect("compress");
            // A valid batch: length, CRC and codec as a broker checks them.
            let header = batch::validate(&packed).expect("valid");
            assert_eq!(header.compression().expect("codec").id(), codec.id() as u8);
            assert!(
                packed.len() < plain.len() / 2,
                "{} {}",
                codec.name(),
                packed.len()
            );
            let unpacked = decompress_batch(&packed, &header).expect("decompress");
            let got: Vec<(Option<Vec<u8>>, Vec<u8>)> = batch::records(&unpacked)
                .expect("records")
                .map(|r| {
                    let r = r.expect("record");
                    (
                        r.key.map(<[u8]>::to_vec),
                        r.value.unwrap_or_default().to_vec(),
                    )
                })
                .collect();
            assert_eq!(got, expect, "{}", codec.name());
        }
        assert_eq!(compress_batch(plain.clone(), Codec::None), Ok(plain));
    }
}
