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
//! at start-up (`MAP_NORESERVE`: no memory until touched) and divided into
//! chunks of [`CHUNK_BYTES`]. Landings ([`crate::landing`]) are carved out
//! of it first fit, in 4 KiB pages, so the memory in use stays packed at
//! the low end. Each side ring ([`crate::uring`]) registers a chunk with the
//! kernel (`IORING_REGISTER_BUFFERS_UPDATE`, pinning it) the first time it
//! writes from it, and then writes groups that lie within one chunk with
//! `WRITEV_FIXED`. A chunk never registered is never pinned, so resident
//! memory follows the landings in use, as it did on the heap; a registered
//! chunk stays resident. The range is advised for transparent huge pages.
//!
//! Landings may be dropped on any thread, so the page map sits behind a
//! mutex (two short critical sections a landing). A landing that does not
//! fit (the arena full or fragmented, or larger than a chunk) comes from the
//! heap as before, and is written with a plain `WRITEV`.

use std::io;
use std::ptr::NonNull;
use std::sync::{Mutex, OnceLock};

/// Bytes per registered buffer. Groups of landings within one chunk go out
/// as one fixed write; a larger chunk makes a group straddle two less often
/// and pins more at once.
pub const CHUNK_BYTES: usize = 16 << 20;
/// Granule of the arena: the landing alignment.
pub const PAGE_BYTES: usize = 4096;
const CHUNK_PAGES: usize = CHUNK_BYTES / PAGE_BYTES;
/// Huge page size the range is aligned to.
const HUGE_BYTES: usize = 2 << 20;

/// A run of pages handed out by [`Arena::alloc`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// First page.
    pub page: usize,
    pub pages: usize,
}

/// The address range and its page map.
pub struct Arena {
    base: NonNull<u8>,
    chunks: usize,
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
    /// Reserves `bytes` (rounded up to whole chunks) of address space.
    pub fn new(bytes: usize) -> io::Result<Arena> {
        let chunks = bytes.div_ceil(CHUNK_BYTES).max(1);
        let len = chunks * CHUNK_BYTES + HUGE_BYTES;
        // SAFETY: an anonymous private mapping; no file, no fixed address.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
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
        unsafe {
            libc::madvise(
                base.as_ptr().cast(),
                chunks * CHUNK_BYTES,
                libc::MADV_HUGEPAGE,
            )
        };
        Ok(Arena {
            base,
            chunks,
            map: Mutex::new(PageMap::new(chunks * CHUNK_PAGES)),
            mapped: (mapped, len),
        })
    }

    /// Chunks in the arena (registered buffers it may take).
    pub fn chunks(&self) -> usize {
        self.chunks
    }

    /// Pages for `bytes` (rounded up to whole pages), within one chunk.
    pub fn alloc(&self, bytes: usize) -> Option<Span> {
        let pages = bytes.div_ceil(PAGE_BYTES).max(1);
        let mut map = self.map.lock().ok()?;
        map.alloc(pages).map(|page| Span { page, pages })
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

    /// The chunk that holds all of `len` bytes at `ptr`, if one does.
    pub fn chunk_of(&self, ptr: *const u8, len: usize) -> Option<usize> {
        let from = (ptr as usize).checked_sub(self.base.as_ptr() as usize)?;
        let to = from.checked_add(len)?;
        let chunk = from / CHUNK_BYTES;
        (chunk < self.chunks && len > 0 && (to - 1) / CHUNK_BYTES == chunk).then_some(chunk)
    }

    /// The chunk as a buffer to register.
    pub fn chunk_iovec(&self, chunk: usize) -> libc::iovec {
        libc::iovec {
            // SAFETY: `chunk < chunks`, inside the range (callers check).
            iov_base: unsafe { self.base.as_ptr().add(chunk * CHUNK_BYTES) }.cast(),
            iov_len: CHUNK_BYTES,
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
    used: usize,
    /// No free page lies below this one.
    low: usize,
}

impl PageMap {
    fn new(pages: usize) -> PageMap {
        PageMap {
            words: vec![0; pages.div_ceil(64)],
            pages,
            used: 0,
            low: 0,
        }
    }

    /// The first page of the lowest free run of `n` pages that stays
    /// within one chunk, marked used.
    fn alloc(&mut self, n: usize) -> Option<usize> {
        if n == 0 || n > CHUNK_PAGES || n > self.pages - self.used {
            return None;
        }
        let mut at = self.first(self.low, false)?;
        self.low = at;
        while at + n <= self.pages {
            let chunk_end = (at / CHUNK_PAGES + 1) * CHUNK_PAGES;
            if at + n > chunk_end {
                at = self.first(chunk_end, false)?;
                continue;
            }
            match self.first(at, true).filter(|&u| u < at + n) {
                None => {
                    self.set(at, n, true);
                    self.used += n;
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

    #[test]
    fn runs_are_first_fit_and_never_cross_a_chunk() {
        let mut m = PageMap::new(2 * CHUNK_PAGES);
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
        let mut m = PageMap::new(pages);
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
    fn spans_map_to_chunks_and_come_back() {
        let a = Arena::new(CHUNK_BYTES + 1).expect("arena");
        assert_eq!(a.chunks(), 2);
        let s = a.alloc(5000).expect("span");
        assert_eq!(s.pages, 2);
        let p = a.ptr(s);
        assert_eq!(p.as_ptr() as usize % PAGE_BYTES, 0);
        assert_eq!(a.chunk_of(p.as_ptr(), 8192), Some(0));
        // SAFETY: the span's two pages are ours.
        unsafe { std::ptr::write_bytes(p.as_ptr(), 7, 8192) };
        let last = CHUNK_BYTES - 10;
        // SAFETY: arithmetic inside the range, not dereferenced.
        let near_end = unsafe { a.ptr(Span { page: 0, pages: 1 }).as_ptr().add(last) };
        assert_eq!(a.chunk_of(near_end, 10), Some(0));
        assert_eq!(a.chunk_of(near_end, 11), None, "straddles two chunks");
        assert_eq!(a.chunk_of(std::ptr::null(), 1), None, "not in the arena");
        assert_eq!(a.used_pages(), 2);
        a.free(s);
        assert_eq!(a.used_pages(), 0);
        assert_eq!(a.chunk_iovec(1).iov_len, CHUNK_BYTES);
    }
}
