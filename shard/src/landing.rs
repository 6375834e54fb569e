//! Landings: batches received from a socket straight into memory that the
//! segment writer can hand to direct I/O as it is, so the produce path makes
//! no user-space copy of the payload (the kernel's copy out of the socket
//! buffer is the only one).
//!
//! Direct I/O on the disks we run on wants every buffer 512-byte aligned and
//! every `writev` segment a multiple of 512 bytes long; ext4 (and XFS) issue
//! a direct-I/O write without blocking, from the submitting thread, only
//! when it covers whole filesystem blocks (4 KiB) of space already allocated
//! ([`crate::partition`] preallocates it). A landing is a buffer aligned for
//! both: the batch starts at its first byte and zeros follow up to the next
//! 4 KiB boundary. The writer puts a group of landed batches on disk with one
//! `writev` starting at a 4 KiB boundary of the segment, so a landed batch may
//! be preceded by fewer than 4 KiB of zero bytes (a *gap*) in the file.
//! Every reader of segment files skips gaps ([`gap_at`]), including the
//! shorter gaps (to a 512-byte boundary) that earlier versions wrote.
//!
//! A batch is recognised as landed by its address: each shard keeps a map
//! from landing addresses to weak references ([`lookup`]). Landings may be
//! dropped on any thread (a cached batch can leave in a cross-shard reply);
//! a dead entry simply fails to upgrade.

use std::alloc::Layout;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ptr::NonNull;
use std::sync::{Arc, Weak};

use bytes::Bytes;

use crate::arena::{self, Span};

/// Alignment of landings and of gap ends in segment files: the filesystem
/// block size of the disks Sluice writes to (a multiple of their logical
/// block size and DMA alignment, 512).
pub const LANDING_ALIGN: usize = 4096;

/// Gaps in segments written before landings were 4 KiB aligned end at a
/// boundary of this many bytes; readers still step over them.
const LEGACY_GAP_ALIGN: usize = 512;

/// Smallest records field worth landing: below this the copy costs little and
/// the gap (2 KiB on average) would waste a larger share of the segment.
pub const LANDING_MIN_BYTES: usize = 8192;

/// The memory of one landing: `capacity` bytes, 4 KiB aligned, of which
/// the first `len` are the batch bytes and the rest zeros: exactly the gap
/// ([`gap_len`]) that readers skip after a batch ending there.
pub struct LandingMem {
    /// 4 KiB aligned, inside the allocation at `base`.
    ptr: NonNull<u8>,
    capacity: usize,
    len: usize,
    /// Where the memory came from, to give it back.
    origin: Origin,
}

/// The memory behind a landing.
enum Origin {
    /// Pages of the process's registered arena ([`crate::arena`]).
    Arena(Span),
    /// A heap allocation of `capacity + LANDING_ALIGN - 1` bytes, plainly
    /// aligned, with the aligned start found inside it: glibc's `memalign`
    /// splits chunks in a way that fragmented the heap (peak RSS 282 MB
    /// against 216 MB without landings at (a1)). Used when there is no
    /// arena or it has no room.
    Heap(NonNull<u8>),
}

// SAFETY: plain memory (heap or arena) with no thread affinity; once frozen
// it is only written by the owning shard's writer, through `stamp_in_place`,
// before the batch is published to any reader.
unsafe impl Send for LandingMem {}
// SAFETY: see `Send`.
unsafe impl Sync for LandingMem {}

impl LandingMem {
    fn layout(capacity: usize) -> Option<Layout> {
        Layout::from_size_align(capacity + LANDING_ALIGN - 1, 16).ok()
    }

    /// The start of the memory (4 KiB aligned).
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// Bytes to write: the batch and its zero padding (a multiple of 4 KiB).
    pub fn padded_len(&self) -> usize {
        self.capacity
    }

    /// Bytes the landing holds: its padded length, plus (on the heap) the
    /// slack allocated to find a 4 KiB aligned start.
    pub fn allocated_bytes(&self) -> usize {
        match self.origin {
            Origin::Arena(_) => self.capacity,
            Origin::Heap(_) => self.capacity + LANDING_ALIGN - 1,
        }
    }

    /// Whether the memory is the registered arena's.
    pub fn in_arena(&self) -> bool {
        matches!(self.origin, Origin::Arena(_))
    }

    /// Bytes of the batch.
    pub fn len(&self) -> usize {
        self.len
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The whole padded memory (batch, then zeros).
    pub fn padded(&self) -> &[u8] {
        // SAFETY: `capacity` bytes stay alive with `self`; a `LandingMem`
        // exists only once its batch bytes were filled (`Landing::freeze`)
        // and the padding was zeroed at allocation.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.capacity) }
    }

    /// Lets the writer stamp a landed batch's base offset and leader epoch
    /// (`batch::stamp`) in the memory it then writes.
    ///
    /// # Safety
    /// Nothing may read these bytes while `f` runs: the caller is the shard
    /// that received the batch, and the batch has not yet been published
    /// (cached, answered, routed) by it.
    pub unsafe fn stamp_in_place(&self, f: impl FnOnce(&mut [u8])) {
        // SAFETY: the memory is valid for `len` bytes; exclusivity is the
        // caller's promise.
        let bytes = unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) };
        f(bytes);
    }
}

impl Drop for LandingMem {
    fn drop(&mut self) {
        match self.origin {
            Origin::Arena(span) => {
                if let Some(arena) = arena::installed() {
                    arena.free(span);
                }
            }
            Origin::Heap(base) => {
                if let Some(layout) = Self::layout(self.capacity) {
                    // SAFETY: allocated with this very layout in `Landing::new`.
                    unsafe { std::alloc::dealloc(base.as_ptr(), layout) };
                }
            }
        }
    }
}

/// The owner behind a landed batch's `Bytes`.
struct Owner(Arc<LandingMem>);

impl AsRef<[u8]> for Owner {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: the first `len` bytes were filled before the owner existed.
        unsafe { std::slice::from_raw_parts(self.0.ptr.as_ptr(), self.0.len) }
    }
}

thread_local! {
    static LANDINGS: RefCell<HashMap<usize, Weak<LandingMem>>> = RefCell::new(HashMap::new());
}

/// A landing being filled from a socket.
pub struct Landing {
    mem: LandingMem,
    filled: usize,
}

impl Landing {
    /// Room for a batch of `len` bytes (`None` when it cannot be allocated).
    #[must_use]
    pub fn new(len: usize) -> Option<Landing> {
        // The padding is exactly the gap readers expect after a batch that
        // ends there (landings are written back to back from a boundary).
        let capacity = (len + gap_len(len as u64)).max(LANDING_ALIGN);
        let (ptr, origin) = match arena::installed().and_then(|a| Some((a, a.alloc(capacity)?))) {
            Some((arena, span)) => (arena.ptr(span), Origin::Arena(span)),
            None => Self::from_heap(capacity)?,
        };
        // The padding must be zeros on disk; the batch bytes are received
        // before anything reads them (`freeze` refuses an unfilled landing).
        // Arena pages are reused, so they are not zeros already.
        // SAFETY: `len..capacity` lies inside the memory.
        unsafe { std::ptr::write_bytes(ptr.as_ptr().add(len), 0, capacity - len) };
        Some(Landing {
            mem: LandingMem {
                ptr,
                capacity,
                len,
                origin,
            },
            filled: 0,
        })
    }

    /// `capacity` bytes, 4 KiB aligned, from the heap.
    fn from_heap(capacity: usize) -> Option<(NonNull<u8>, Origin)> {
        let layout = LandingMem::layout(capacity)?;
        // SAFETY: the layout has a non-zero size.
        let base = NonNull::new(unsafe { std::alloc::alloc(layout) })?;
        let skew = base.as_ptr().align_offset(LANDING_ALIGN);
        if skew >= LANDING_ALIGN {
            // SAFETY: just allocated with `layout`.
            unsafe { std::alloc::dealloc(base.as_ptr(), layout) };
            return None;
        }
        // SAFETY: `skew + capacity` bytes fit in the allocation.
        let ptr = NonNull::new(unsafe { base.as_ptr().add(skew) })?;
        Some((ptr, Origin::Heap(base)))
    }

    /// Bytes still to receive.
    #[must_use]
    pub fn remaining(&self) -> usize {
        self.mem.len - self.filled
    }

    /// Where the next received bytes go, and how many may go there.
    pub fn unfilled(&mut self) -> (*mut u8, usize) {
        // SAFETY: `filled <= len <= capacity`, inside the allocation.
        let at = unsafe { self.mem.ptr.as_ptr().add(self.filled) };
        (at, self.remaining())
    }

    /// Records that `n` more bytes were written at [`Landing::unfilled`].
    pub fn advance(&mut self, n: usize) {
        self.filled = (self.filled + n).min(self.mem.len);
    }

    /// Copies `bytes` in (for tests, and for bytes that arrived before the
    /// landing was made).
    pub fn fill_from(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.remaining());
        let (at, _) = self.unfilled();
        // SAFETY: `at` has `remaining() >= n` writable bytes, disjoint from `bytes`.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), at, n) };
        self.advance(n);
    }

    /// The received batch as `Bytes`, registered on this thread as landed.
    /// `None` until every byte has been received.
    #[must_use]
    pub fn freeze(self) -> Option<Bytes> {
        if self.filled != self.mem.len {
            return None;
        }
        let mem = Arc::new(self.mem);
        let key = mem.ptr.as_ptr() as usize;
        LANDINGS.with(|m| {
            let mut m = m.borrow_mut();
            if m.len() >= 4096 && m.len().is_power_of_two() {
                m.retain(|_, w| w.strong_count() > 0);
            }
            m.insert(key, Arc::downgrade(&mem));
        });
        Some(Bytes::from_owner(Owner(mem)))
    }
}

/// A copy of `bytes` as a landed batch (tests, benchmarks of the write path).
#[must_use]
pub fn land(bytes: &[u8]) -> Option<Bytes> {
    let mut l = Landing::new(bytes.len())?;
    l.fill_from(bytes);
    l.freeze()
}

/// The landing `batch` is, when it is exactly one landed on this thread.
#[must_use]
pub fn lookup(batch: &Bytes) -> Option<Arc<LandingMem>> {
    let key = batch.as_ptr() as usize;
    if !key.is_multiple_of(LANDING_ALIGN) {
        return None;
    }
    let mem = LANDINGS.with(|m| m.borrow().get(&key).and_then(Weak::upgrade))?;
    (mem.len == batch.len()).then_some(mem)
}

/// Fewest bytes in a gap. A batch starts with its base offset (8 bytes) and
/// its length (4 bytes, never 0), so 12 zero bytes cannot start a batch.
pub const GAP_MIN: usize = 12;

/// The gap a writer leaves after a batch ending at `pos` before a landed
/// batch: up to the next 4 KiB boundary, or the one after it when the next
/// is closer than [`GAP_MIN`]; 0 at a boundary. No gap at `pos` is longer.
#[must_use]
pub fn gap_len(pos: u64) -> usize {
    let into = (pos % LANDING_ALIGN as u64) as usize;
    match into {
        0 => 0,
        _ if LANDING_ALIGN - into < GAP_MIN => 2 * LANDING_ALIGN - into,
        _ => LANDING_ALIGN - into,
    }
}

/// What the bytes at a file position hold, for readers of segment files.
#[derive(Debug, PartialEq, Eq)]
pub enum Gap {
    /// Not a gap: a batch (or the end of the data) starts here.
    None,
    /// Zeros up to a boundary where a batch starts: skip this many bytes.
    Skip(usize),
    /// Zeros up to the end of `buf`, before the boundary: read further to tell.
    Undecided,
}

/// Whether `buf`, holding the segment bytes from file position `pos`, starts
/// with a gap: [`gap_len`] zeros from a position that is not 4 KiB aligned,
/// or (written by earlier versions) zeros up to an earlier 512-byte boundary
/// at least [`GAP_MIN`] bytes on, where a batch starts. A batch never starts
/// with `GAP_MIN` zero bytes, so the two cannot be confused. A zero run at a
/// 4 KiB boundary is never a gap (it is the padding after the last batch, or
/// damage).
#[must_use]
pub fn gap_at(buf: &[u8], pos: u64) -> Gap {
    let len = gap_len(pos);
    if len == 0 || buf.is_empty() {
        return Gap::None;
    }
    let is_zero = |from: usize, to: usize| buf[from..to].iter().all(|&b| b == 0);
    // Candidate ends of a 512-byte gap, relative to `pos`.
    let into = (pos % LEGACY_GAP_ALIGN as u64) as usize;
    let mut end = LEGACY_GAP_ALIGN - into;
    if end < GAP_MIN {
        end += LEGACY_GAP_ALIGN;
    }
    let mut zero_to = 0;
    while end < len {
        if buf.len() < end {
            return match is_zero(zero_to, buf.len()) {
                true => Gap::Undecided,
                false => Gap::None,
            };
        }
        if !is_zero(zero_to, end) {
            return Gap::None;
        }
        zero_to = end;
        let next = (end + GAP_MIN).min(buf.len());
        if !is_zero(end, next) {
            // A batch starts at this 512-byte boundary.
            return Gap::Skip(end);
        }
        if next < end + GAP_MIN {
            return Gap::Undecided;
        }
        end += LEGACY_GAP_ALIGN;
    }
    let seen = len.min(buf.len());
    if !is_zero(zero_to, seen) {
        return Gap::None;
    }
    if seen < len {
        return Gap::Undecided;
    }
    Gap::Skip(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_landing_is_aligned_padded_with_zeros_and_found_by_address() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8 + 1).collect();
        let b = land(&data).expect("landed");
        assert_eq!(&b[..], &data[..]);
        assert_eq!(b.as_ptr() as usize % LANDING_ALIGN, 0);
        let mem = lookup(&b).expect("registered");
        assert_eq!(mem.padded_len(), 8192);
        // A batch ending closer than GAP_MIN to a boundary: the padding runs
        // to the boundary after it, as readers expect.
        let tight = land(&[7u8; 4090]).expect("landed");
        assert_eq!(lookup(&tight).expect("registered").padded_len(), 8192);
        let exact = land(&[7u8; 4096]).expect("landed");
        assert_eq!(lookup(&exact).expect("registered").padded_len(), 4096);
        assert!(mem.padded()[5000..].iter().all(|&x| x == 0));
        // A slice of it, or ordinary memory, is not a landing.
        assert!(lookup(&b.slice(0..100)).is_none());
        assert!(lookup(&b.slice(512..1024)).is_none());
        assert!(lookup(&Bytes::from(data.clone())).is_none());
    }

    #[test]
    fn an_unfinished_landing_does_not_freeze() {
        let mut l = Landing::new(100).expect("landing");
        l.fill_from(&[1; 60]);
        assert_eq!(l.remaining(), 40);
        assert!(l.freeze().is_none());
    }

    #[test]
    fn gaps_are_zeros_from_an_unaligned_position_to_the_boundary() {
        let zeros = [0u8; 9000];
        assert_eq!(gap_at(&zeros, 0), Gap::None, "aligned: padding, not a gap");
        assert_eq!(
            gap_at(&zeros, 8192),
            Gap::None,
            "aligned: padding, not a gap"
        );
        assert_eq!(gap_at(&zeros, 1000), Gap::Skip(3096));
        // A 512-byte boundary is not a 4 KiB one: zeros there are a gap.
        assert_eq!(gap_at(&zeros, 1024), Gap::Skip(3072));
        // Closer than 12 bytes to the boundary: the gap runs to the next one,
        // so a batch whose base offset starts with zero bytes is not a gap.
        assert_eq!(gap_len(4090), 4102);
        assert_eq!(gap_at(&zeros, 4090), Gap::Skip(4102));
        let mut batch_like = [0u8; 600];
        batch_like[11] = 70; // a length of 70 after a small base offset
        assert_eq!(gap_at(&batch_like, 4090), Gap::None);
        assert_eq!(gap_at(&batch_like, 1000), Gap::None);
        assert_eq!(gap_at(&zeros[..10], 1000), Gap::Undecided);
        assert_eq!(gap_at(&zeros[..3000], 1000), Gap::Undecided);
        let mut b = [0u8; 30];
        b[5] = 1;
        assert_eq!(gap_at(&b, 1000), Gap::None, "data inside");
        assert_eq!(gap_at(&[], 1000), Gap::None);
    }

    /// Segments written with 512-byte landings have gaps up to the next
    /// 512-byte boundary (or the one after it, within 12 bytes of it).
    #[test]
    fn gaps_written_by_512_byte_landings_are_still_skipped() {
        let batch_at = |rel: usize| {
            let mut b = vec![0u8; 4200];
            b[rel + 11] = 70; // a batch's length field
            b
        };
        assert_eq!(gap_at(&batch_at(24), 1000), Gap::Skip(24));
        assert_eq!(gap_at(&batch_at(516), 1020), Gap::Skip(516));
        // Data before the boundary, or a batch not at a boundary: no gap.
        let mut inside = batch_at(24);
        inside[3] = 9;
        assert_eq!(gap_at(&inside, 1000), Gap::None);
        assert_eq!(gap_at(&batch_at(100), 1000), Gap::None);
        // Cut between the boundary and the batch's length: read further.
        assert_eq!(gap_at(&batch_at(24)[..30], 1000), Gap::Undecided);
        assert_eq!(gap_at(&batch_at(24)[..24], 1000), Gap::Undecided);
    }
}
