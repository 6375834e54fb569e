//! Registered memory for landings: appends written by direct I/O from
//! buffers the kernel pinned once, not at every write.
//!
//! A direct-I/O write from ordinary memory makes the kernel pin each of its
//! pages (`get_user_pages`) and release them afterwards, one atomic update
//! of every page's reference count per write. Profiled at 100-byte records
//! with acks=1 (workload (c) of docs/benchmarks.md), the pinning and the
//! bio building around it took about 8% of the broker's CPU.
//!
//! The arena is one range of address space for the whole process, reserved
//! when the broker starts (`MAP_NORESERVE`: no memory until touched, advised
//! for transparent huge pages) and divided into chunks of [`CHUNK_BYTES`].
//! Landings ([`crate::landing`]) are carved out of it first fit, in 4 KiB
//! pages, so the memory in use stays packed at the low end, and its pages
//! become resident as landings first fill them, as heap memory would. Each side ring ([`crate::uring`])
//! registers of each chunk the part landings have been given so far
//! (resident: a landing writes every page it gets, so at most the pages of
//! landings still being received are faulted in by it) with the kernel
//! (`IORING_REGISTER_BUFFERS_UPDATE`, which pins it), registers it again
//! larger as that part grows by a quarter, and writes groups that lie within
//! a registered part of one chunk with `WRITEV_FIXED`; other groups go out
//! as plain `WRITEV`s. What is registered stays resident.
//!
//! Four ways of doing this were measured and dropped (2026-12-07, against
//! the heap landings before, alternated pairs at 50 MB/s end to end):
//! - The whole arena faulted in and registered at start: resident memory
//!   counted the arena on top of the heap that native-protocol appends,
//!   which do not land, still use; the 128 MiB budget test peaked at
//!   167 MiB.
//! - Chunks registered on first use, their untouched pages faulted in by
//!   the registration: a shard stopped for the faults of 16 MiB in the
//!   middle of traffic, and the end-to-end p99.9 rose from about 5 to
//!   28-40 ms.
//! - The next chunk faulted in ahead by a helper thread: the helper shares
//!   the shards' CPUs, and p99.9 still reached 24-34 ms in two pairs of
//!   four.
//! - Chunks registered only once every page of them had been handed out:
//!   with a small tail cache, landings reuse the same low pages and the
//!   first chunk never fills, so nothing was ever registered.
//!
//! Huge pages matter here as much as registration: without them the
//! registered build saved about 2% of broker CPU per GB at 100 B records
//! with acks=1, with them a further 6% (alternated pairs, 2026-12-07).
//! The price is paid while landings first fill the arena after a start:
//! each first touch of a 2 MiB page zeroes it on the shard thread, and at
//! 50 MB/s with only 3 s of warm-up the end-to-end p99 was 1.5-2.5 ms
//! against 0.8-1.2 before (four pairs). Once it is filled (after the
//! shards' tail caches and request memory have been used once), that is
//! over: with 10 s of warm-up the two were level (p99 1.2-1.4 against
//! 1.2-1.7 ms).
//!
//! Landings may be dropped on any thread, so the page map sits behind a
//! mutex (two short critical sections a landing). A landing that does not
//! fit (the arena full or fragmented, or larger than a chunk) comes from the
//! heap as before, and is written with a plain `WRITEV`.

use std::io;
use std::ptr::NonNull;
use std::sync::{Mutex, OnceLock};

/// Bytes per registered buffer. Groups of landings within one chunk go out
/// as one fixed write; a larger chunk makes a group straddle two less often,
/// and takes longer to fill before it is registered. The kernel takes at
/// most 1 GiB.
pub const CHUNK_BYTES: usize = 16 << 20;
const CHUNK_BYTES_MAX: usize = 1 << 30;
/// Granule of the arena: the landing alignment.
pub const PAGE_BYTES: usize = 4096;
/// Huge page size the range is aligned to and sized in.
const HUGE_BYTES: usize = 2 << 20;

/// A run of pages handed out by [`Arena::alloc`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// First page.
    pub page: usize,
    pub pages: usize,
}

/// The memory and its page map.
pub struct Arena {
    base: NonNull<u8>,
    len: usize,
    chunk_bytes: usize,
    map: Mutex<PageMap>,
    /// The mapping as made (for `munmap`).
    mapped: (NonNull<u8>, usize),
}

// SAFETY: the range is plain anonymous memory; the page map is behind a
// mutex, and the memory of a span is used only by whoever holds the span.
unsafe impl Send for Arena {}
// SAFETY: see `Send`.
unsafe impl Sync for Arena {}

impl Arena {
    /// Maps `bytes` (rounded up to 2 MiB) in chunks of [`CHUNK_BYTES`],
    /// reserved only: pages become resident as landings first write them.
    pub fn new(bytes: usize) -> io::Result<Arena> {
        Self::with_chunks(bytes, CHUNK_BYTES)
    }

    /// [`Arena::new`] with chunks of `chunk_bytes` (a multiple of 2 MiB).
    pub fn with_chunks(bytes: usize, chunk_bytes: usize) -> io::Result<Arena> {
        if chunk_bytes == 0
            || !chunk_bytes.is_multiple_of(HUGE_BYTES)
            || chunk_bytes > CHUNK_BYTES_MAX
        {
            return Err(io::Error::other(
                "arena chunks: a multiple of 2 MiB, at most 1 GiB",
            ));
        }
        let len = bytes.max(1).div_ceil(HUGE_BYTES) * HUGE_BYTES;
        let mapped_len = len + HUGE_BYTES;
        // SAFETY: an anonymous private mapping; no file, no fixed address.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mapped =
            NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("null mapping"))?;
        let skew = mapped.as_ptr().align_offset(HUGE_BYTES);
        // SAFETY: `skew < HUGE_BYTES`, inside the mapping.
        let base = NonNull::new(unsafe { mapped.as_ptr().add(skew) })
            .ok_or_else(|| io::Error::other("null mapping"))?;
        // Advice only: without huge pages the arena works the same.
        // SAFETY: the range lies inside the mapping just made.
        unsafe { libc::madvise(base.as_ptr().cast(), len, libc::MADV_HUGEPAGE) };
        Ok(Arena {
            base,
            len,
            chunk_bytes,
            map: Mutex::new(PageMap::new(len / PAGE_BYTES, chunk_bytes / PAGE_BYTES)),
            mapped: (mapped, mapped_len),
        })
    }

    /// Bytes in the arena.
    pub fn len(&self) -> usize {
        self.len
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Chunks in the arena (registered buffers it takes).
    pub fn chunks(&self) -> usize {
        self.len.div_ceil(self.chunk_bytes)
    }

    /// Pages for `bytes` (rounded up to whole pages), within one chunk.
    pub fn alloc(&self, bytes: usize) -> Option<Span> {
        let pages = bytes.div_ceil(PAGE_BYTES).max(1);
        let mut map = self.map.lock().ok()?;
        map.alloc(pages).map(|page| Span { page, pages })
    }

    /// Bytes from the start of `chunk` that landings have been given: the
    /// pages below the highest ever handed out, resident (a landing writes
    /// every page it is given), so registering them faults in at most the
    /// pages of landings still being received.
    /// (Rounding this up to the end of a huge page, to register whole huge
    /// pages, measured 4% more CPU per GB at 100 B records, not less.)
    pub fn touched(&self, chunk: usize) -> usize {
        let start = chunk.saturating_mul(self.chunk_bytes);
        let high = self.map.lock().map_or(0, |m| m.high * PAGE_BYTES);
        high.saturating_sub(start).min(self.chunk_len(chunk))
    }

    /// Bytes in `chunk` (the last may be short).
    pub fn chunk_len(&self, chunk: usize) -> usize {
        let start = chunk.saturating_mul(self.chunk_bytes).min(self.len);
        self.chunk_bytes.min(self.len - start)
    }

    /// Gives a span back.
    pub fn free(&self, span: Span) {
        // A poisoned map (a panic while it was held) keeps its pages.
        if let Ok(mut map) = self.map.lock() {
            map.free(span.page, span.pages);
        }
    }

    /// Pages handed out now.
    pub fn used_pages(&self) -> usize {
        self.map.lock().map_or(0, |m| m.used)
    }

    /// Where a span's memory starts (4 KiB aligned).
    pub fn ptr(&self, span: Span) -> NonNull<u8> {
        // SAFETY: spans come from this arena's page map, inside the range.
        unsafe { NonNull::new_unchecked(self.base.as_ptr().add(span.page * PAGE_BYTES)) }
    }

    /// The chunk that holds all of `len` bytes at `ptr`, if one does, and
    /// where in it they end.
    pub fn chunk_of(&self, ptr: *const u8, len: usize) -> Option<(usize, usize)> {
        let from = (ptr as usize).checked_sub(self.base.as_ptr() as usize)?;
        let to = from.checked_add(len)?;
        let chunk = from / self.chunk_bytes;
        (len > 0 && to <= self.len && (to - 1) / self.chunk_bytes == chunk)
            .then_some((chunk, to - chunk * self.chunk_bytes))
    }

    /// The first `len` bytes of chunk `chunk` as a buffer to register.
    pub fn chunk_iovec(&self, chunk: usize, len: usize) -> libc::iovec {
        let at = chunk.saturating_mul(self.chunk_bytes).min(self.len);
        libc::iovec {
            // SAFETY: `at <= len`, inside the mapping.
            iov_base: unsafe { self.base.as_ptr().add(at) }.cast(),
            iov_len: len.min(self.chunk_len(chunk)),
        }
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, of exactly this length. The
        // process-wide arena is never dropped; others (tests) outlive
        // their spans.
        unsafe { libc::munmap(self.mapped.0.as_ptr().cast(), self.mapped.1) };
    }
}

static ARENA: OnceLock<Arena> = OnceLock::new();

/// Sets up the process's arena of `bytes`; landings made after this come
/// from it. Once per process: later calls return the first arena.
pub fn install(bytes: usize) -> io::Result<&'static Arena> {
    if let Some(a) = ARENA.get() {
        return Ok(a);
    }
    let arena = Arena::new(bytes)?;
    Ok(ARENA.get_or_init(|| arena))
}

/// The process's arena, once installed.
pub fn installed() -> Option<&'static Arena> {
    ARENA.get()
}

/// Which pages are in use, one bit each.
struct PageMap {
    words: Vec<u64>,
    pages: usize,
    chunk_pages: usize,
    used: usize,
    /// No free page lies below this one.
    low: usize,
    /// No page at or above this one was ever handed out.
    high: usize,
}

impl PageMap {
    fn new(pages: usize, chunk_pages: usize) -> PageMap {
        PageMap {
            words: vec![0; pages.div_ceil(64)],
            pages,
            chunk_pages: chunk_pages.max(1),
            used: 0,
            low: 0,
            high: 0,
        }
    }

    /// The first page of the lowest free run of `n` pages that stays
    /// within one chunk, marked used.
    fn alloc(&mut self, n: usize) -> Option<usize> {
        if n == 0 || n > self.chunk_pages || n > self.pages - self.used {
            return None;
        }
        let mut at = self.first(self.low, false)?;
        self.low = at;
        while at + n <= self.pages {
            let chunk_end = (at / self.chunk_pages + 1) * self.chunk_pages;
            if at + n > chunk_end {
                at = self.first(chunk_end, false)?;
                continue;
            }
            match self.first(at, true).filter(|&u| u < at + n) {
                None => {
                    self.set(at, n, true);
                    self.used += n;
                    self.high = self.high.max(at + n);
                    if at == self.low {
                        self.low = at + n;
                    }
                    return Some(at);
                }
                Some(u) => at = self.first(u, false)?,
            }
        }
        None
    }

    fn free(&mut self, at: usize, n: usize) {
        if at + n > self.pages {
            return;
        }
        self.set(at, n, false);
        self.used = self.used.saturating_sub(n);
        self.low = self.low.min(at);
    }

    /// The first page at or after `from` that is used (`used`) or free.
    fn first(&self, from: usize, used: bool) -> Option<usize> {
        let mut i = from;
        while i < self.pages {
            let w = i / 64;
            let word = if used { self.words[w] } else { !self.words[w] };
            let rest = word >> (i % 64);
            if rest != 0 {
                let found = i + rest.trailing_zeros() as usize;
                return (found < self.pages).then_some(found);
            }
            i = (w + 1) * 64;
        }
        None
    }

    fn set(&mut self, at: usize, n: usize, used: bool) {
        let mut i = at;
        let end = at + n;
        while i < end {
            let w = i / 64;
            let lo = i % 64;
            let hi = (end - w * 64).min(64);
            let mask = match hi - lo {
                64 => u64::MAX,
                bits => ((1u64 << bits) - 1) << lo,
            };
            if used {
                self.words[w] |= mask;
            } else {
                self.words[w] &= !mask;
            }
            i = w * 64 + hi;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small chunks for the tests: 4,096 pages (16 MiB).
    const CHUNK_PAGES: usize = 4096;

    #[test]
    fn runs_are_first_fit_and_never_cross_a_chunk() {
        let mut m = PageMap::new(2 * CHUNK_PAGES, CHUNK_PAGES);
        assert_eq!(m.alloc(10), Some(0));
        assert_eq!(m.alloc(CHUNK_PAGES - 12), Some(10));
        // 2 pages left in chunk 0: a 3-page run goes to chunk 1.
        assert_eq!(m.alloc(3), Some(CHUNK_PAGES));
        assert_eq!(m.alloc(2), Some(CHUNK_PAGES - 2));
        m.free(0, 10);
        assert_eq!(m.alloc(4), Some(0), "the lowest hole first");
        assert_eq!(m.alloc(CHUNK_PAGES + 1), None, "larger than a chunk");
        assert_eq!(m.alloc(0), None);
        assert_eq!(m.used, 10 + CHUNK_PAGES - 12 + 3 + 2 + 4 - 10);
    }

    /// The page map against a plain vector of flags, over a long run of
    /// allocations and frees in mixed order.
    #[test]
    fn the_page_map_agrees_with_a_naive_one() {
        let pages = 2 * CHUNK_PAGES;
        let mut m = PageMap::new(pages, CHUNK_PAGES);
        let mut naive = vec![false; pages];
        let mut live: Vec<(usize, usize)> = Vec::new();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            if next() % 3 != 0 || live.is_empty() {
                let n = (next() % 300) as usize + 1;
                let expect = (0..pages).find(|&at| {
                    at + n <= pages
                        && at / CHUNK_PAGES == (at + n - 1) / CHUNK_PAGES
                        && naive[at..at + n].iter().all(|u| !u)
                });
                let got = m.alloc(n);
                assert_eq!(got, expect, "alloc of {n}");
                if let Some(at) = got {
                    naive[at..at + n].iter_mut().for_each(|u| *u = true);
                    live.push((at, n));
                }
            } else {
                let (at, n) = live.swap_remove((next() as usize) % live.len());
                m.free(at, n);
                naive[at..at + n].iter_mut().for_each(|u| *u = false);
            }
            assert_eq!(m.used, naive.iter().filter(|u| **u).count());
        }
    }

    #[test]
    fn touched_bytes_follow_the_highest_page_ever_handed_out() {
        let chunk = CHUNK_PAGES * PAGE_BYTES;
        let a = Arena::with_chunks(chunk + HUGE_BYTES, chunk).expect("arena");
        assert_eq!(a.touched(0), 0);
        let first = a.alloc(3 * PAGE_BYTES).expect("span");
        assert_eq!(a.touched(0), 3 * PAGE_BYTES);
        a.free(first);
        let again = a.alloc(PAGE_BYTES).expect("span");
        assert_eq!(a.touched(0), 3 * PAGE_BYTES, "freed pages stay touched");
        let rest = a.alloc(chunk - PAGE_BYTES).expect("span");
        assert_eq!((a.touched(0), a.touched(1)), (chunk, 0));
        let last = a.alloc(PAGE_BYTES).expect("the short last chunk");
        assert_eq!(a.touched(1), PAGE_BYTES);
        assert_eq!(a.chunk_len(1), HUGE_BYTES);
        for s in [again, rest, last] {
            a.free(s);
        }
    }

    #[test]
    fn spans_map_to_chunks_and_come_back() {
        let chunk = CHUNK_PAGES * PAGE_BYTES;
        let a = Arena::with_chunks(chunk + 1, chunk).expect("arena");
        assert_eq!(a.len(), chunk + HUGE_BYTES, "rounded up to 2 MiB");
        assert_eq!(a.chunks(), 2);
        let s = a.alloc(5000).expect("span");
        assert_eq!(s.pages, 2);
        let p = a.ptr(s);
        assert_eq!(p.as_ptr() as usize % PAGE_BYTES, 0);
        assert_eq!(a.chunk_of(p.as_ptr(), 8192), Some((0, 8192)));
        // SAFETY: the span's two pages are ours.
        unsafe { std::ptr::write_bytes(p.as_ptr(), 7, 8192) };
        // SAFETY: arithmetic inside the range, not dereferenced.
        let near_end = unsafe { a.ptr(Span { page: 0, pages: 1 }).as_ptr().add(chunk - 10) };
        assert_eq!(a.chunk_of(near_end, 10), Some((0, chunk)));
        assert_eq!(a.chunk_of(near_end, 11), None, "straddles two chunks");
        // SAFETY: as above.
        let second = unsafe { near_end.add(10) };
        assert_eq!(
            a.chunk_of(second, HUGE_BYTES),
            Some((1, HUGE_BYTES)),
            "the short last chunk"
        );
        assert_eq!(a.chunk_of(second, HUGE_BYTES + 1), None, "past the end");
        assert_eq!(a.chunk_of(std::ptr::null(), 1), None, "not in the arena");
        assert_eq!(a.used_pages(), 2);
        a.free(s);
        assert_eq!(a.used_pages(), 0);
        assert_eq!(a.chunk_iovec(0, 8192).iov_len, 8192);
        assert_eq!(a.chunk_iovec(0, usize::MAX).iov_len, chunk);
        assert_eq!(
            a.chunk_iovec(1, usize::MAX).iov_len,
            HUGE_BYTES,
            "the last chunk is short"
        );
        assert!(
            Arena::with_chunks(chunk, 4096).is_err(),
            "chunks of whole huge pages"
        );
    }
}
