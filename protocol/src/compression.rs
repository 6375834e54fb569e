//! Decompression of a batch's records section, for the readers that must see
//! every record of a stored batch (the log cleaner, keyed-topic checks).
//!
//! ```text
//! codec   id  records section as Kafka writes it
//! gzip     1  a gzip stream (RFC 1952)
//! snappy   2  xerial framing: magic 82 'SNAPPY' 00 | version i32 | compatible i32,
//!             then blocks of { length i32 | raw snappy block };
//!             or one raw snappy block (librdkafka, older clients)
//! lz4      3  the LZ4 frame format (KafkaLZ4BlockOutputStream, magic v2 batches)
//! zstd     4  a zstd frame
//! ```
//!
//! The produce path never decompresses: batches are stored as sent. Every
//! decoder here is bounded by [`DECOMPRESSED_BYTES_MAX`], so a small batch
//! cannot expand into an unbounded allocation (a decompression bomb).

use std::io::Read;

use crate::batch::{BatchError, BatchHeader, Compression, BATCH_HEADER_BYTES};

/// The largest records section a batch may decompress to.
pub const DECOMPRESSED_BYTES_MAX: usize = 256 * 1024 * 1024;

/// The xerial snappy-java stream header: magic, version, compatible version.
const XERIAL_MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";
const XERIAL_HEADER_BYTES: usize = 16;

/// The records section of the batch at the front of `batch`, decompressed
/// (copied as is when the batch is not compressed).
pub fn decompress_records(batch: &[u8]) -> Result<Vec<u8>, BatchError> {
    let header = BatchHeader::parse(batch)?;
    let total = header.total_bytes();
    let section = batch
        .get(BATCH_HEADER_BYTES..total)
        .ok_or(BatchError::Truncated {
            needed: total,
            available: batch.len(),
        })?;
    decompress(header.compression()?, section)
}

/// `section` decompressed with `codec`, at most [`DECOMPRESSED_BYTES_MAX`].
pub fn decompress(codec: Compression, section: &[u8]) -> Result<Vec<u8>, BatchError> {
    match codec {
        Compression::None => Ok(section.to_vec()),
        Compression::Gzip => read_bounded(flate2::read::MultiGzDecoder::new(section), "gzip"),
        Compression::Snappy => snappy(section),
        Compression::Lz4 => read_bounded(lz4_flex::frame::FrameDecoder::new(section), "lz4"),
        Compression::Zstd => {
            let decoder = zstd::stream::read::Decoder::with_buffer(section)
                .map_err(|_| BatchError::MalformedRecord("zstd: bad stream"))?;
            read_bounded(decoder, "zstd")
        }
    }
}

/// A reader of `section` decompressed with `codec`, for walking it without
/// holding it whole. The caller bounds how much it reads
/// ([`DECOMPRESSED_BYTES_MAX`]); a decoder's failure is an `io::Error`,
/// to be reported as [`corrupt`].
pub fn stream(codec: Compression, section: &[u8]) -> Result<Box<dyn Read + '_>, BatchError> {
    Ok(match codec {
        Compression::None => Box::new(section),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(section)),
        Compression::Lz4 => Box::new(lz4_flex::frame::FrameDecoder::new(section)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(section)
                .map_err(|_| BatchError::MalformedRecord("zstd: bad stream"))?,
        ),
        Compression::Snappy => Box::new(SnappyBlocks::new(section)),
    })
}

/// The error for a `codec` stream that fails to decode.
#[must_use]
pub fn corrupt(codec: Compression) -> BatchError {
    BatchError::MalformedRecord(match codec {
        Compression::Gzip => codec_error("gzip"),
        Compression::Lz4 => codec_error("lz4"),
        Compression::Snappy => "snappy: corrupt compressed records",
        Compression::Zstd => codec_error("zstd"),
        Compression::None => "corrupt records",
    })
}

/// Snappy in Kafka's xerial framing (or one raw block), decoded one block
/// at a time.
struct SnappyBlocks<'a> {
    /// Framed blocks still to decode; `None` for a single raw block.
    rest: &'a [u8],
    raw: Option<&'a [u8]>,
    block: Vec<u8>,
    at: usize,
}

impl<'a> SnappyBlocks<'a> {
    fn new(section: &'a [u8]) -> SnappyBlocks<'a> {
        let framed = section
            .strip_prefix(XERIAL_MAGIC)
            .and_then(|r| r.get(XERIAL_HEADER_BYTES - XERIAL_MAGIC.len()..));
        SnappyBlocks {
            rest: framed.unwrap_or(&[]),
            raw: if framed.is_none() {
                Some(section)
            } else {
                None
            },
            block: Vec::new(),
            at: 0,
        }
    }

    /// Decodes the next block into `self.block`; false at the end.
    fn next_block(&mut self) -> std::io::Result<bool> {
        let bad = |what: &'static str| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
        let compressed = if let Some(raw) = self.raw.take() {
            raw
        } else {
            if self.rest.is_empty() {
                return Ok(false);
            }
            let (len, tail) = self
                .rest
                .split_first_chunk::<4>()
                .ok_or_else(|| bad("snappy: cut block length"))?;
            let len = usize::try_from(i32::from_be_bytes(*len))
                .map_err(|_| bad("snappy: negative block length"))?;
            let block = tail.get(..len).ok_or_else(|| bad("snappy: cut block"))?;
            self.rest = &tail[len..];
            block
        };
        self.block.clear();
        self.at = 0;
        snappy_block(compressed, &mut self.block).map_err(|_| bad("snappy: corrupt block"))?;
        Ok(true)
    }
}

impl Read for SnappyBlocks<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.block.len() {
            if !self.next_block()? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.block.len() - self.at);
        buf[..n].copy_from_slice(&self.block[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

fn read_bounded(reader: impl Read, what: &'static str) -> Result<Vec<u8>, BatchError> {
    let mut out = Vec::new();
    let limit = DECOMPRESSED_BYTES_MAX as u64 + 1;
    reader
        .take(limit)
        .read_to_end(&mut out)
        .map_err(|_| BatchError::MalformedRecord(codec_error(what)))?;
    if out.len() > DECOMPRESSED_BYTES_MAX {
        return Err(BatchError::MalformedRecord(
            "decompressed records exceed the limit",
        ));
    }
    Ok(out)
}

fn codec_error(what: &'static str) -> &'static str {
    match what {
        "gzip" => "gzip: corrupt compressed records",
        "lz4" => "lz4: corrupt compressed records",
        _ => "zstd: corrupt compressed records",
    }
}

fn snappy(section: &[u8]) -> Result<Vec<u8>, BatchError> {
    let Some(mut rest) = section
        .strip_prefix(XERIAL_MAGIC)
        .and_then(|r| r.get(XERIAL_HEADER_BYTES - XERIAL_MAGIC.len()..))
    else {
        let mut out = Vec::new();
        snappy_block(section, &mut out)?;
        return Ok(out);
    };
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (len, tail) = rest
            .split_first_chunk::<4>()
            .ok_or(BatchError::MalformedRecord("snappy: cut block length"))?;
        let len = usize::try_from(i32::from_be_bytes(*len))
            .map_err(|_| BatchError::MalformedRecord("snappy: negative block length"))?;
        let block = tail
            .get(..len)
            .ok_or(BatchError::MalformedRecord("snappy: cut block"))?;
        snappy_block(block, &mut out)?;
        rest = &tail[len..];
    }
    Ok(out)
}

/// Appends one raw snappy block, decompressed, to `out`, within the bound.
fn snappy_block(block: &[u8], out: &mut Vec<u8>) -> Result<(), BatchError> {
    let corrupt = BatchError::MalformedRecord("snappy: corrupt compressed records");
    let len = snap::raw::decompress_len(block).map_err(|_| corrupt.clone())?;
    if out.len() + len > DECOMPRESSED_BYTES_MAX {
        return Err(BatchError::MalformedRecord(
            "decompressed records exceed the limit",
        ));
    }
    let start = out.len();
    out.resize(start + len, 0);
    let n = snap::raw::Decoder::new()
        .decompress(block, &mut out[start..])
        .map_err(|_| corrupt)?;
    out.truncate(start + n);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const DATA: &[u8] = b"records records records records records records records";

    #[test]
    fn every_codec_round_trips() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(DATA).expect("gzip");
        let gz = gz.finish().expect("gzip");
        assert_eq!(decompress(Compression::Gzip, &gz).expect("gzip"), DATA);

        let raw = snap::raw::Encoder::new()
            .compress_vec(DATA)
            .expect("snappy");
        assert_eq!(decompress(Compression::Snappy, &raw).expect("raw"), DATA);
        let mut xerial = XERIAL_MAGIC.to_vec();
        xerial.extend_from_slice(&1i32.to_be_bytes());
        xerial.extend_from_slice(&1i32.to_be_bytes());
        for half in [&DATA[..10], &DATA[10..]] {
            let block = snap::raw::Encoder::new()
                .compress_vec(half)
                .expect("snappy");
            xerial.extend_from_slice(&(block.len() as i32).to_be_bytes());
            xerial.extend_from_slice(&block);
        }
        assert_eq!(
            decompress(Compression::Snappy, &xerial).expect("xerial"),
            DATA
        );

        let mut lz4 = lz4_flex::frame::FrameEncoder::new(Vec::new());
        lz4.write_all(DATA).expect("lz4");
        let lz4 = lz4.finish().expect("lz4");
        assert_eq!(decompress(Compression::Lz4, &lz4).expect("lz4"), DATA);

        let zstd = zstd::encode_all(DATA, 1).expect("zstd");
        assert_eq!(decompress(Compression::Zstd, &zstd).expect("zstd"), DATA);
    }

    #[test]
    fn garbage_and_truncation_are_errors_not_panics() {
        let zstd = zstd::encode_all(DATA, 1).expect("zstd");
        for codec in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            for cut in 0..zstd.len() {
                let _ = decompress(codec, &zstd[..cut]);
            }
            assert!(decompress(codec, b"\x82SNAPPY\x00garbage garbage").is_err());
        }
    }
}
