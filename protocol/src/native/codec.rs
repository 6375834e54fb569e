//! Frames of the native protocol.
//!
//! ```text
//!  0        4        8                  8+H                       4+F
//!  +--------+--------+------------------+-------------------------+
//!  | F: u32 | H: u32 | header: H bytes  | payload: F-4-H bytes    |
//!  +--------+--------+------------------+-------------------------+
//!
//!  F  frame_len, big-endian: the bytes after this field.
//!  H  header_len, big-endian: the bytes of the header.
//!  header   a FlatBuffers `Request` or `Response` (schema/sluice.fbs),
//!           verified before use.
//!  payload  raw Kafka record batches, never parsed here: each partition's
//!           `records_len` bytes, concatenated in the order the header lists
//!           the partitions. The `records_len` must add up to the payload's
//!           length exactly. Only produce requests and fetch responses have
//!           a payload; every other frame's payload is empty.
//! ```
//!
//! The header is small and goes through FlatBuffers; the records, which are
//! most of the bytes, are hand-placed so that neither side copies them: a
//! decoded produce request's records are [`Bytes::slice`]s of the frame, and
//! an encoded frame is a list of chunks (prefix and header first, then the
//! records as given) for a vectored write.
//!
//! A receiver learns a frame's size from its first [`FRAME_PREFIX_BYTES`]
//! with [`frame_len`], which rejects a size outside
//! `FRAME_BYTES_MIN..=max_frame_bytes` before anything is allocated.

use std::fmt;

use bytes::Bytes;
use flatbuffers::{FlatBufferBuilder, InvalidFlatbuffer, VerifierOptions};

use super::message::{Request, Response, ResponseBody};
use super::{decode, encode, fb};
use crate::ErrorCode;

/// Bytes of the `frame_len` field that opens every frame.
pub const FRAME_PREFIX_BYTES: usize = 4;
/// Bytes of the `header_len` field.
pub const HEADER_LEN_BYTES: usize = 4;
/// The smallest valid FlatBuffers header: a root offset, a table's vtable
/// offset, and an empty vtable (two u16).
pub const HEADER_BYTES_MIN: usize = 12;
/// The smallest whole frame, prefix included.
pub const FRAME_BYTES_MIN: usize = FRAME_PREFIX_BYTES + HEADER_LEN_BYTES + HEADER_BYTES_MIN;
/// The default bound on a whole frame, prefix included. Receivers take their
/// bound as a parameter (`max_frame_bytes`), from configuration.
pub const FRAME_BYTES_MAX_DEFAULT: usize = 100 * 1024 * 1024;
/// The largest frame the format can express: `frame_len` is a u32.
pub const FRAME_BYTES_MAX_FORMAT: usize = FRAME_PREFIX_BYTES + u32::MAX as usize;

/// The deepest nesting of tables in the schema is 4 (Response, MetadataResponse,
/// TopicMetadata, Config); a header nested deeper is malformed.
const HEADER_DEPTH_MAX: usize = 8;
/// The verifier counts every byte it checks, shared ones once per reference.
/// A valid header counts under 2x its length (vtables are shared), so 4x
/// leaves room while bounding what a header of shared references (a DAG) can
/// make the decoder allocate.
const HEADER_APPARENT_FACTOR: usize = 4;
const HEADER_APPARENT_SLACK_BYTES: usize = 1024;

const _: () = assert!(FRAME_BYTES_MIN <= FRAME_BYTES_MAX_DEFAULT);
const _: () = assert!(FRAME_BYTES_MAX_DEFAULT <= FRAME_BYTES_MAX_FORMAT);

/// A frame's length prefix is outside the acceptable bounds. The stream
/// cannot be resynchronised after this: close the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameError {
    TooSmall { frame_bytes: usize, min: usize },
    TooLarge { frame_bytes: usize, max: usize },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooSmall { frame_bytes, min } => {
                write!(f, "frame of {frame_bytes} bytes is under the minimum {min}")
            }
            FrameError::TooLarge { frame_bytes, max } => {
                write!(f, "frame of {frame_bytes} bytes is over the maximum {max}")
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// Why a frame could not be decoded.
#[derive(Clone, Debug, PartialEq)]
pub struct DecodeError {
    /// The frame's correlation id, when the header was readable that far, so
    /// that a server can still answer the request with an error.
    pub correlation_id: Option<u32>,
    pub kind: DecodeErrorKind,
}

#[derive(Clone, Debug, PartialEq)]
pub enum DecodeErrorKind {
    /// The length prefix is out of bounds.
    Frame(FrameError),
    /// The length prefix disagrees with the bytes given.
    FrameLength {
        declared_bytes: usize,
        actual_bytes: usize,
    },
    /// `header_len` is too small or runs past the frame.
    HeaderLength {
        header_bytes: usize,
        available_bytes: usize,
    },
    /// The FlatBuffers verifier rejected the header.
    Header(InvalidFlatbuffer),
    /// The header has no body.
    BodyMissing,
    /// The body's union tag is not one this version knows.
    BodyUnknown { tag: u8 },
    /// `acks` is not -1, 0 or 1.
    AcksUnknown { acks: i8 },
    /// The partitions' `records_len` do not add up to the payload's length.
    PayloadLength {
        declared_bytes: u64,
        actual_bytes: usize,
    },
}

impl DecodeError {
    pub(super) fn new(correlation_id: Option<u32>, kind: DecodeErrorKind) -> DecodeError {
        DecodeError {
            correlation_id,
            kind,
        }
    }

    /// The whole-request error a server answers this with (when it has a
    /// correlation id to answer).
    #[must_use]
    pub fn error_code(&self) -> ErrorCode {
        match self.kind {
            DecodeErrorKind::BodyUnknown { .. } => ErrorCode::UNSUPPORTED_VERSION,
            DecodeErrorKind::AcksUnknown { .. } => ErrorCode::INVALID_REQUIRED_ACKS,
            _ => ErrorCode::INVALID_REQUEST,
        }
    }
}

impl fmt::Display for DecodeErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeErrorKind::Frame(e) => e.fmt(f),
            DecodeErrorKind::FrameLength {
                declared_bytes,
                actual_bytes,
            } => write!(
                f,
                "frame prefix declares {declared_bytes} bytes but {actual_bytes} were given"
            ),
            DecodeErrorKind::HeaderLength {
                header_bytes,
                available_bytes,
            } => write!(
                f,
                "header of {header_bytes} bytes does not fit the frame's {available_bytes}"
            ),
            DecodeErrorKind::Header(e) => write!(f, "invalid header: {e}"),
            DecodeErrorKind::BodyMissing => f.write_str("header has no body"),
            DecodeErrorKind::BodyUnknown { tag } => write!(f, "unknown body type {tag}"),
            DecodeErrorKind::AcksUnknown { acks } => write!(f, "unknown acks {acks}"),
            DecodeErrorKind::PayloadLength {
                declared_bytes,
                actual_bytes,
            } => write!(
                f,
                "records_len add up to {declared_bytes} bytes but the payload has {actual_bytes}"
            ),
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.correlation_id {
            Some(id) => write!(f, "{} (correlation id {id})", self.kind),
            None => self.kind.fmt(f),
        }
    }
}

impl std::error::Error for DecodeError {}

/// The length of the next whole frame, prefix included, once `prefix` holds
/// at least [`FRAME_PREFIX_BYTES`]; `None` before that. A length outside
/// `FRAME_BYTES_MIN..=max_frame_bytes` is an error, so a receiver can check
/// it before allocating.
pub fn frame_len(prefix: &[u8], max_frame_bytes: usize) -> Result<Option<usize>, FrameError> {
    let Some(field) = prefix.first_chunk::<FRAME_PREFIX_BYTES>() else {
        return Ok(None);
    };
    let frame_bytes = FRAME_PREFIX_BYTES.saturating_add(u32::from_be_bytes(*field) as usize);
    if frame_bytes < FRAME_BYTES_MIN {
        return Err(FrameError::TooSmall {
            frame_bytes,
            min: FRAME_BYTES_MIN,
        });
    }
    if frame_bytes > max_frame_bytes {
        return Err(FrameError::TooLarge {
            frame_bytes,
            max: max_frame_bytes,
        });
    }
    Ok(Some(frame_bytes))
}

/// A frame cut into its header and payload.
struct Parts {
    header: Bytes,
    payload: Bytes,
}

/// Checks both length fields of a whole frame and cuts it.
fn split_frame(frame: &Bytes) -> Result<Parts, DecodeErrorKind> {
    let total = frame_len(frame, FRAME_BYTES_MAX_FORMAT).map_err(DecodeErrorKind::Frame)?;
    let Some(total) = total else {
        let min = FRAME_BYTES_MIN;
        let e = FrameError::TooSmall {
            frame_bytes: frame.len(),
            min,
        };
        return Err(DecodeErrorKind::Frame(e));
    };
    if total != frame.len() {
        let (declared_bytes, actual_bytes) = (total, frame.len());
        return Err(DecodeErrorKind::FrameLength {
            declared_bytes,
            actual_bytes,
        });
    }
    // frame_len ensured total >= FRAME_BYTES_MIN, so the field is there.
    let header_start = FRAME_PREFIX_BYTES + HEADER_LEN_BYTES;
    let field = frame[FRAME_PREFIX_BYTES..header_start].first_chunk::<HEADER_LEN_BYTES>();
    let header_bytes = field.map_or(0, |f| u32::from_be_bytes(*f) as usize);
    let available_bytes = frame.len() - header_start;
    if header_bytes < HEADER_BYTES_MIN || header_bytes > available_bytes {
        return Err(DecodeErrorKind::HeaderLength {
            header_bytes,
            available_bytes,
        });
    }
    let header_end = header_start + header_bytes;
    Ok(Parts {
        header: frame.slice(header_start..header_end),
        payload: frame.slice(header_end..),
    })
}

/// Verifier bounds for a header of `header_bytes`.
fn verifier_options(header_bytes: usize) -> VerifierOptions {
    let apparent = header_bytes
        .saturating_mul(HEADER_APPARENT_FACTOR)
        .saturating_add(HEADER_APPARENT_SLACK_BYTES);
    VerifierOptions {
        max_depth: HEADER_DEPTH_MAX,
        max_tables: apparent / 4,
        max_apparent_size: apparent,
        ..VerifierOptions::default()
    }
}

/// Decodes a whole request frame (prefix included): its correlation id and
/// body. Produce records are slices of `frame`. When the header is readable
/// as far as the correlation id, the error carries it.
pub fn decode_request(frame: Bytes) -> Result<(u32, Request), DecodeError> {
    let parts = split_frame(&frame).map_err(|kind| DecodeError::new(None, kind))?;
    let opts = verifier_options(parts.header.len());
    let header = match flatbuffers::root_with_opts::<fb::Request>(&opts, &parts.header) {
        Ok(header) => header,
        Err(e) => {
            let id = flatbuffers::root_with_opts::<fb::RequestCorrelation>(&opts, &parts.header)
                .ok()
                .map(|c| c.correlation_id());
            return Err(DecodeError::new(id, DecodeErrorKind::Header(e)));
        }
    };
    let id = header.correlation_id();
    let request =
        decode::request(&header, parts.payload).map_err(|kind| DecodeError::new(Some(id), kind))?;
    Ok((id, request))
}

/// Decodes a whole response frame (prefix included). Fetch records are
/// slices of `frame`, one chunk per partition that has records.
pub fn decode_response(frame: Bytes) -> Result<Response, DecodeError> {
    let parts = split_frame(&frame).map_err(|kind| DecodeError::new(None, kind))?;
    let opts = verifier_options(parts.header.len());
    let header = flatbuffers::root_with_opts::<fb::Response>(&opts, &parts.header)
        .map_err(|e| DecodeError::new(None, DecodeErrorKind::Header(e)))?;
    let id = header.correlation_id();
    decode::response(&header, parts.payload).map_err(|kind| DecodeError::new(Some(id), kind))
}

/// Encodes a request as chunks for a vectored write: the prefix and header
/// first, then each produce partition's records, uncopied.
///
/// # Panics
///
/// If the frame would not fit the format (over 4 GiB): the caller must keep
/// its frames under the receiver's `max_frame_bytes`.
#[must_use]
pub fn encode_request(correlation_id: u32, request: &Request) -> Vec<Bytes> {
    let mut fbb = FlatBufferBuilder::new();
    let records = encode::request(&mut fbb, correlation_id, request);
    frame_chunks(fbb.finished_data(), records)
}

/// Encodes a response as chunks for a vectored write: the prefix and header
/// first, then each fetch partition's record chunks, uncopied.
///
/// # Panics
///
/// As [`encode_request`].
#[must_use]
pub fn encode_response(response: &Response) -> Vec<Bytes> {
    let mut fbb = FlatBufferBuilder::new();
    let records = encode::response(&mut fbb, response);
    frame_chunks(fbb.finished_data(), records)
}

/// Encodes a response that fails the whole request, with no body.
#[must_use]
pub fn encode_error_response(correlation_id: u32, error: ErrorCode, message: &str) -> Vec<Bytes> {
    let response = Response {
        correlation_id,
        error,
        message: message.to_owned(),
        body: ResponseBody::Error,
    };
    encode_response(&response)
}

/// Puts the prefix before `header` and appends the non-empty record chunks.
fn frame_chunks(header: &[u8], records: Vec<Bytes>) -> Vec<Bytes> {
    let payload_bytes: usize = records.iter().map(Bytes::len).sum();
    let frame_bytes = FRAME_PREFIX_BYTES + HEADER_LEN_BYTES + header.len() + payload_bytes;
    assert!(
        frame_bytes <= FRAME_BYTES_MAX_FORMAT,
        "frame of {frame_bytes} bytes"
    );
    assert!(
        header.len() >= HEADER_BYTES_MIN,
        "header of {} bytes",
        header.len()
    );
    let frame_len = u32::try_from(frame_bytes - FRAME_PREFIX_BYTES).unwrap_or(u32::MAX);
    let header_len = u32::try_from(header.len()).unwrap_or(u32::MAX);
    let mut first = Vec::with_capacity(FRAME_PREFIX_BYTES + HEADER_LEN_BYTES + header.len());
    first.extend_from_slice(&frame_len.to_be_bytes());
    first.extend_from_slice(&header_len.to_be_bytes());
    first.extend_from_slice(header);
    let mut chunks = Vec::with_capacity(1 + records.len());
    chunks.push(Bytes::from(first));
    chunks.extend(records.into_iter().filter(|chunk| !chunk.is_empty()));
    chunks
}
