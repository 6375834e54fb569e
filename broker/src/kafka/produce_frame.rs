//! Reading a Produce request so that its record batches arrive where they
//! will be written from: the produce path's only copy of a payload is the
//! kernel's, out of the socket buffer.
//!
//! A Produce frame (v3-v11) is parsed as it arrives. Everything but the
//! `records` fields goes into a *skeleton* of the frame, in which each
//! `records` field is replaced by a null; each records field is received
//! into memory of its own: a `sluice_shard::landing` (4 KiB aligned and
//! zero-padded, written to the segment as it is) when it is at least
//! `LANDING_MIN_BYTES` long, else a plain buffer. The handler decodes the
//! skeleton with the `kafka-protocol` codec and puts the records back in
//! order.
//!
//! ```text
//! header (v1, or v2 from Produce v9): api_key i16 | api_version i16 |
//!     correlation_id i32 | client_id nullable string (i16 length) | [tags]
//! body: transactional_id nullable string | acks i16 | timeout_ms i32 |
//!     [topic: name string | [partition: index i32 | records nullable bytes
//!     | [tags]] | [tags]] | [tags]
//! ```
//!
//! From v9 strings, bytes and arrays are compact (unsigned varint length
//! plus one, 0 for null) and `[tags]` are tagged fields (varint count, then
//! tag, size and bytes each). At most [`STAGE_BYTES`] of a batch's first
//! bytes can arrive with the fields before it and are copied into its
//! memory; the rest is received there directly.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_lite::io::AsyncReadExt;
use sluice_shard::landing::{Landing, LANDING_MIN_BYTES};

use crate::memory::{FrameMemory, RequestMemory, Reservation};
use crate::native::Incoming;

/// Produce versions read this way (the ones Sluice serves).
pub const VERSIONS: std::ops::RangeInclusive<i16> = 3..=11;
/// Smallest frame worth it: a smaller one is read whole.
pub const FRAME_MIN_BYTES: usize = 8 * 1024;
/// Bytes received at a time while parsing the fields between batches.
const STAGE_BYTES: usize = 128;
/// Bytes reserved in request memory at a time for a batch being received.
const RECORDS_STEP_BYTES: usize = 64 * 1024;

/// Whether Produce frames are read apart. Setting `SLUICE_LANDING=0` in the
/// environment turns it off (every frame is read whole and its batches are
/// copied into the write buffer), to measure the two against each other.
pub fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("SLUICE_LANDING").map_or(true, |v| v != "0"))
}

/// A Produce frame read apart: the skeleton (with the length prefix, as
/// `parse_request` expects) and the records fields in request order.
pub struct ProduceFrame {
    pub skeleton: Bytes,
    pub records: Vec<Option<Bytes>>,
    pub memory: Reservation,
}

struct Reader<'a> {
    incoming: &'a mut Incoming,
    pool: &'a RequestMemory,
    memory: FrameMemory,
    /// Bytes of the frame not yet received.
    left: usize,
    /// Received, not yet parsed.
    staged: BytesMut,
    skeleton: BytesMut,
    records: Vec<Option<Bytes>>,
}

/// Reads the rest of a Produce frame of `total` bytes whose first bytes
/// (`head`: the length prefix, api key and version) were already read.
pub async fn read(
    incoming: &mut Incoming,
    head: &[u8],
    total: usize,
    version: i16,
    pool: &RequestMemory,
) -> Result<ProduceFrame, String> {
    let mut memory = pool.frame();
    memory.grow(pool, head.len() as u64).await;
    let mut r = Reader {
        incoming,
        pool,
        memory,
        left: total - head.len(),
        staged: BytesMut::with_capacity(STAGE_BYTES),
        skeleton: BytesMut::with_capacity(256),
        records: Vec::new(),
    };
    r.skeleton.extend_from_slice(head);
    if r.fields(version).await.is_err() {
        // Not a Produce request we can follow: keep the bytes as they come,
        // so the handler's decoder reports what is wrong with them.
    }
    // Whatever follows (nothing, in a well-formed request).
    r.skeleton.extend_from_slice(&r.staged.split());
    while r.left > 0 {
        let n = r.left.min(RECORDS_STEP_BYTES);
        r.memory.grow(r.pool, n as u64).await;
        let at = r.skeleton.len();
        r.skeleton.resize(at + n, 0);
        r.incoming
            .reader
            .read_exact(&mut r.skeleton[at..])
            .await
            .map_err(|e| format!("connection lost mid-frame: {e}"))?;
        r.left -= n;
    }
    Ok(ProduceFrame {
        skeleton: r.skeleton.freeze(),
        records: r.records,
        memory: r.memory.done(),
    })
}

/// A field that does not parse: the rest of the frame is kept raw.
struct Malformed;

impl Reader<'_> {
    async fn fields(&mut self, version: i16) -> Result<(), Malformed> {
        let flexible = version >= 9;
        // Header: correlation id, client id (never compact), tags.
        self.copy(4).await?;
        let client_id = self.i16().await?;
        if client_id > 0 {
            self.copy(client_id as usize).await?;
        }
        if flexible {
            self.tags().await?;
        }
        // Body.
        self.string(flexible).await?; // transactional_id
        self.copy(2 + 4).await?; // acks, timeout_ms
        let topics = self.count(flexible).await?;
        for _ in 0..topics {
            self.string(flexible).await?;
            let partitions = self.count(flexible).await?;
            for _ in 0..partitions {
                self.copy(4).await?; // index
                self.records(flexible).await?;
                if flexible {
                    self.tags().await?;
                }
            }
            if flexible {
                self.tags().await?;
            }
        }
        if flexible {
            self.tags().await?;
        }
        Ok(())
    }

    /// Makes at least `n` bytes staged, receiving up to [`STAGE_BYTES`] more.
    async fn ensure(&mut self, n: usize) -> Result<(), Malformed> {
        if self.staged.len() >= n {
            return Ok(());
        }
        let need = n - self.staged.len();
        if need > self.left {
            return Err(Malformed);
        }
        let want = need.max(STAGE_BYTES).min(self.left);
        self.memory.grow(self.pool, want as u64).await;
        let at = self.staged.len();
        self.staged.resize(at + want, 0);
        let got = receive(self.incoming, &mut self.staged[at..], need).await;
        let n = *got.as_ref().unwrap_or(&0);
        self.staged.truncate(at + n);
        self.left -= n;
        got.map(|_| ()).map_err(|_| Malformed)
    }

    /// Moves `n` parsed bytes to the skeleton.
    async fn copy(&mut self, n: usize) -> Result<(), Malformed> {
        self.ensure(n).await?;
        let bytes = self.staged.split_to(n);
        self.skeleton.extend_from_slice(&bytes);
        Ok(())
    }

    async fn i16(&mut self) -> Result<i16, Malformed> {
        self.ensure(2).await?;
        let v = (&self.staged[..2]).get_i16();
        self.copy(2).await?;
        Ok(v)
    }

    async fn i32(&mut self) -> Result<i32, Malformed> {
        self.ensure(4).await?;
        let v = (&self.staged[..4]).get_i32();
        self.copy(4).await?;
        Ok(v)
    }

    /// An unsigned varint, left staged; returns (value, its bytes).
    async fn peek_uvarint(&mut self) -> Result<(u64, usize), Malformed> {
        let mut value = 0u64;
        for i in 0..5 {
            self.ensure(i + 1).await?;
            let b = self.staged[i];
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok((value, i + 1));
            }
        }
        Err(Malformed)
    }

    async fn uvarint(&mut self) -> Result<u64, Malformed> {
        let (v, n) = self.peek_uvarint().await?;
        self.copy(n).await?;
        Ok(v)
    }

    /// A (nullable) string: i16 length, or compact.
    async fn string(&mut self, flexible: bool) -> Result<(), Malformed> {
        let len = match flexible {
            true => (self.uvarint().await? as usize).saturating_sub(1),
            false => self.i16().await?.max(0) as usize,
        };
        self.copy(len).await
    }

    /// An array's element count (each element takes at least one byte).
    async fn count(&mut self, flexible: bool) -> Result<usize, Malformed> {
        let n = match flexible {
            true => (self.uvarint().await? as usize).saturating_sub(1),
            false => self.i32().await?.max(0) as usize,
        };
        if n > self.left + self.staged.len() {
            return Err(Malformed);
        }
        Ok(n)
    }

    async fn tags(&mut self) -> Result<(), Malformed> {
        let n = self.uvarint().await? as usize;
        if n > self.left + self.staged.len() {
            return Err(Malformed);
        }
        for _ in 0..n {
            self.uvarint().await?;
            let size = self.uvarint().await? as usize;
            self.copy(size).await?;
        }
        Ok(())
    }

    /// A records field: received into memory of its own, a null in the
    /// skeleton.
    async fn records(&mut self, flexible: bool) -> Result<(), Malformed> {
        let len = match flexible {
            true => {
                let (v, n) = self.peek_uvarint().await?;
                self.staged.advance(n);
                self.skeleton.put_u8(0);
                match v {
                    0 => None,
                    v => Some(v as usize - 1),
                }
            }
            false => {
                self.ensure(4).await?;
                let v = self.staged.get_i32();
                self.skeleton.put_i32(-1);
                (v >= 0).then_some(v as usize)
            }
        };
        let Some(len) = len else {
            self.records.push(None);
            return Ok(());
        };
        if len > self.left + self.staged.len() {
            return Err(Malformed);
        }
        let bytes = match len >= LANDING_MIN_BYTES {
            true => self.land(len).await?,
            false => {
                self.ensure(len).await?;
                self.staged.split_to(len).freeze()
            }
        };
        self.records.push(Some(bytes));
        Ok(())
    }

    /// Receives `len` bytes into a landing.
    async fn land(&mut self, len: usize) -> Result<Bytes, Malformed> {
        let mut landing = Landing::new(len).ok_or(Malformed)?;
        let early = self.staged.len().min(len);
        landing.fill_from(&self.staged.split_to(early));
        while landing.remaining() > 0 {
            let n = landing.remaining().min(RECORDS_STEP_BYTES);
            self.memory.grow(self.pool, n as u64).await;
            let (at, _) = landing.unfilled();
            // SAFETY: the landing has `remaining() >= n` writable bytes at
            // `at`; nothing else refers to them until it is frozen.
            let dest = unsafe { std::slice::from_raw_parts_mut(at, n) };
            let got = receive(self.incoming, dest, n)
                .await
                .map_err(|_| Malformed)?;
            landing.advance(got);
            self.left -= got;
        }
        landing.freeze().ok_or(Malformed)
    }
}

/// Receives into `buf`: at least `need` bytes (waiting for them), and
/// whatever more up to its length is already there. Returns the count.
async fn receive(incoming: &mut Incoming, buf: &mut [u8], need: usize) -> Result<usize, String> {
    let mut got = 0;
    while got < need {
        // SAFETY: `buf[got..]` is valid for writes of its length.
        let n = unsafe {
            libc::recv(
                incoming.fd,
                buf[got..].as_mut_ptr().cast::<libc::c_void>(),
                buf.len() - got,
                libc::MSG_DONTWAIT,
            )
        };
        if n > 0 {
            got += n as usize;
            continue;
        }
        if n == 0 {
            return Err("connection lost mid-frame: end of stream".into());
        }
        let e = std::io::Error::last_os_error();
        match e.kind() {
            std::io::ErrorKind::WouldBlock => {
                // Wait for the next byte through the executor.
                incoming
                    .reader
                    .read_exact(&mut buf[got..got + 1])
                    .await
                    .map_err(|e| format!("connection lost mid-frame: {e}"))?;
                got += 1;
            }
            std::io::ErrorKind::Interrupted => {}
            _ => return Err(format!("connection lost mid-frame: {e}")),
        }
    }
    Ok(got)
}
