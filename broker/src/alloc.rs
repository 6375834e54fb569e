//! The global allocator: the system allocator, except that very large
//! allocations are mapped with `MAP_NORESERVE`.
//!
//! Why: a Kafka request can claim an array of two billion elements in a few
//! bytes. The codec (`kafka-protocol`) reserves capacity for the claimed
//! count before it finds the bytes are not there, and a reservation larger
//! than the machine's memory would make the system allocator fail, which
//! aborts the process: one malformed request would stop the broker. Mapped
//! with `MAP_NORESERVE`, such a reservation costs only address space; the
//! decoder touches no more pages than the request really holds, fails, and
//! the mapping is returned. Ordinary allocations are unaffected.

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations at least this large are mapped instead of `malloc`ed.
const MAPPED_BYTES_MIN: usize = 1 << 30;
const PAGE_BYTES: usize = 4096;

pub struct Allocator;

// SAFETY: small allocations go to `System` unchanged; large ones are
// page-aligned anonymous mappings (valid for any alignment up to a page,
// zero-filled), released with the same size they were made with. Layouts
// with a larger alignment are left to `System`.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() < MAPPED_BYTES_MIN || layout.align() > PAGE_BYTES {
            // SAFETY: forwarded with the caller's guarantees.
            return unsafe { System.alloc(layout) };
        }
        // SAFETY: an anonymous private mapping; no file, no fixed address.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                layout.size(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            std::ptr::null_mut()
        } else {
            p.cast()
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.size() < MAPPED_BYTES_MIN || layout.align() > PAGE_BYTES {
            // SAFETY: `ptr` came from `System.alloc` with this layout.
            unsafe { System.dealloc(ptr, layout) };
            return;
        }
        // SAFETY: `ptr` is a mapping of exactly `layout.size()` bytes.
        unsafe { libc::munmap(ptr.cast(), layout.size()) };
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_reservation_larger_than_memory_costs_only_address_space() {
        // 256 GiB: far beyond this machine's memory.
        let mut v: Vec<u64> = Vec::with_capacity(32 << 30);
        v.push(7);
        assert_eq!(v[0], 7);
        drop(v);
        let small: Vec<u8> = Vec::with_capacity(1024);
        assert!(small.capacity() >= 1024);
    }
}
