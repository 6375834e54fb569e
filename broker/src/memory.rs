//! The broker's memory budget and the per-shard pool of request memory.
//!
//! `broker.memory_budget_bytes` bounds the whole process. It is split once,
//! at start-up:
//!
//! ```text
//! budget = reserve + shards x (io_memory + request_memory + tail_cache)
//! ```
//!
//! - the **reserve** (fixed, [`RESERVE_BYTES`]) covers what does not grow with
//!   traffic: the binary and its libraries, thread stacks, io_uring rings,
//!   topic and partition metadata, indexes, producer and group state, the
//!   allocator's slack, and the idle read buffers each shard keeps for its
//!   next cold reads (at most 8 MiB per thread, `sluice_shard::uring`);
//! - **io_memory** is what each shard registers with the kernel for direct
//!   I/O (locked at start);
//! - **request memory** bounds, per shard, the request frames being read and
//!   answered and the fetch responses being built and sent (see
//!   [`RequestMemory`]);
//! - the **tail cache** holds recently written batches (slices of produce
//!   frames), evicting the oldest when full.
//!
//! Each part left at 0 in the configuration is derived: request memory is a
//! quarter of a shard's share and the tail cache is the rest. Parts set by
//! hand must fit, or the broker refuses to start.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::task::{Poll, Waker};

/// Memory outside the per-shard parts: binary, stacks, rings, metadata,
/// allocator slack.
pub const RESERVE_BYTES: u64 = 64 << 20;
/// The budget used when `memory_budget_bytes = 0`: reserve plus this per shard.
pub const AUTO_BYTES_PER_SHARD: u64 = 128 << 20;
/// Smallest request memory a shard may have: one large produce frame.
pub const REQUEST_MEMORY_MIN: u64 = 4 << 20;
/// Smallest tail cache a shard may have.
pub const TAIL_CACHE_MIN: u64 = 1 << 20;

/// How the budget is split (bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryPlan {
    pub budget: u64,
    pub reserve: u64,
    pub shards: u32,
    pub io_memory: u64,
    pub request_memory: u64,
    pub tail_cache: u64,
}

impl MemoryPlan {
    /// Splits `budget` (0: automatic) among `shards`; the other arguments
    /// are per shard, 0 meaning "derive it".
    pub fn new(
        budget: u64,
        shards: u32,
        io_memory: u64,
        request_memory: u64,
        tail_cache: u64,
    ) -> Result<MemoryPlan, String> {
        let shards = shards.max(1);
        let n = u64::from(shards);
        let budget = match budget {
            0 => RESERVE_BYTES + n * AUTO_BYTES_PER_SHARD,
            b => b,
        };
        let share = budget.saturating_sub(RESERVE_BYTES) / n;
        let needed =
            io_memory + request_memory.max(REQUEST_MEMORY_MIN) + tail_cache.max(TAIL_CACHE_MIN);
        if share < needed {
            return Err(format!(
                "broker.memory_budget_bytes = {budget} is too small: {shards} shards need at \
                 least {} bytes ({} MiB reserved for the process, then per shard {} MiB of I/O \
                 memory, {} MiB of request memory and {} MiB of tail cache). Raise the budget, \
                 run fewer shards, or lower the per-shard parts.",
                RESERVE_BYTES + n * needed,
                RESERVE_BYTES >> 20,
                io_memory >> 20,
                request_memory.max(REQUEST_MEMORY_MIN) >> 20,
                tail_cache.max(TAIL_CACHE_MIN) >> 20,
            ));
        }
        // From here `free` holds both parts at their minimum or set sizes.
        let free = share - io_memory;
        let request_memory = match (request_memory, tail_cache) {
            (0, 0) => (free / 4).max(REQUEST_MEMORY_MIN),
            (0, t) => (free / 4).min(free - t).max(REQUEST_MEMORY_MIN),
            (r, _) => r,
        };
        let tail_cache = match tail_cache {
            0 => free - request_memory,
            t => t,
        };
        Ok(MemoryPlan {
            budget,
            reserve: RESERVE_BYTES,
            shards,
            io_memory,
            request_memory,
            tail_cache,
        })
    }
}

/// A shard's pool of request memory.
///
/// A connection reserves a frame's bytes step by step as it reads them
/// ([`FrameMemory`]), and the reservation is held until the answer has been
/// written: when the pool is used up, readers wait before reading more
/// (TCP pushes back on the clients) instead of growing the heap. Only bytes
/// that arrive are reserved, so a client that announces a large frame and
/// sends little holds only what it sent.
///
/// Readers waiting in the middle of frames could hold the whole pool and
/// wait for each other forever. So one reader at a time may overdraw the
/// pool to finish its frame: the pool can be exceeded by at most one frame
/// (`max_frame_bytes`) per shard, and some frame always completes.
///
/// A fetch reserves what its response may hold before reading, as much as
/// is free: when the pool is short it reads less (at least one batch per
/// response, as Kafka promises) and never waits.
pub struct RequestMemory {
    state: Rc<Pool>,
}

struct Pool {
    capacity: u64,
    in_use: Cell<u64>,
    /// A reader is overdrawing the pool to finish its frame.
    overdrawn: Cell<bool>,
    waiters: RefCell<Vec<Waker>>,
}

impl Pool {
    fn release(&self, bytes: u64) {
        self.in_use.set(self.in_use.get().saturating_sub(bytes));
        for w in self.waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }
}

impl RequestMemory {
    pub fn new(capacity: u64) -> RequestMemory {
        RequestMemory {
            state: Rc::new(Pool {
                capacity,
                in_use: Cell::new(0),
                overdrawn: Cell::new(false),
                waiters: RefCell::new(Vec::new()),
            }),
        }
    }

    pub fn capacity(&self) -> u64 {
        self.state.capacity
    }

    /// Bytes reserved now.
    pub fn in_use(&self) -> u64 {
        self.state.in_use.get()
    }

    /// A reservation for the frame a connection is about to read.
    pub fn frame(&self) -> FrameMemory {
        FrameMemory {
            held: self.reservation(0),
            overdraw: false,
        }
    }

    /// Reserves up to `bytes`, as much as is free now, without waiting.
    pub fn reserve_up_to(&self, bytes: u64) -> Reservation {
        let free = self.state.capacity.saturating_sub(self.state.in_use.get());
        self.reservation(bytes.min(free))
    }

    fn reservation(&self, units: u64) -> Reservation {
        let pool = &self.state;
        pool.in_use.set(pool.in_use.get() + units);
        Reservation {
            pool: pool.clone(),
            units,
        }
    }

    /// Waits until the pool has changed (a release).
    async fn changed(&self) {
        let mut registered = false;
        std::future::poll_fn(|cx| {
            if registered {
                return Poll::Ready(());
            }
            registered = true;
            self.state.waiters.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        })
        .await;
    }
}

/// The request memory of one frame being read.
pub struct FrameMemory {
    held: Reservation,
    /// This reader holds the pool's overdraft.
    overdraw: bool,
}

impl FrameMemory {
    /// Reserves `bytes` more before reading them: waits while the pool is
    /// full, unless no other reader overdraws it (then this one does, until
    /// its frame is read).
    pub async fn grow(&mut self, pool: &RequestMemory, bytes: u64) {
        let state = &pool.state;
        loop {
            let room = state.in_use.get() + bytes <= state.capacity;
            if room || self.overdraw || !state.overdrawn.get() {
                if !room && !self.overdraw {
                    state.overdrawn.set(true);
                    self.overdraw = true;
                }
                state.in_use.set(state.in_use.get() + bytes);
                self.held.units += bytes;
                return;
            }
            pool.changed().await;
        }
    }

    /// The whole frame is read: what it holds stays reserved until its
    /// answer is written.
    pub fn done(mut self) -> Reservation {
        self.give_up_overdraft();
        let empty = Reservation {
            pool: self.held.pool.clone(),
            units: 0,
        };
        std::mem::replace(&mut self.held, empty)
    }

    fn give_up_overdraft(&mut self) {
        if self.overdraw {
            self.overdraw = false;
            self.held.pool.overdrawn.set(false);
            self.held.pool.release(0);
        }
    }
}

impl Drop for FrameMemory {
    fn drop(&mut self) {
        // A connection lost mid-frame lets the next reader overdraw.
        self.give_up_overdraft();
    }
}

/// Reserved request memory, given back when dropped.
pub struct Reservation {
    pool: Rc<Pool>,
    units: u64,
}

impl Reservation {
    pub fn bytes(&self) -> u64 {
        self.units
    }

    /// Gives back everything above `bytes`.
    pub fn shrink_to(&mut self, bytes: u64) {
        if bytes < self.units {
            let back = self.units - bytes;
            self.units = bytes;
            self.pool.release(back);
        }
    }

    /// Adds `other`'s bytes to this reservation.
    pub fn absorb(&mut self, mut other: Reservation) {
        self.units += other.units;
        other.units = 0;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.shrink_to(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn automatic_budget_scales_with_shards_and_derives_the_parts() {
        let p = MemoryPlan::new(0, 2, 10 * MIB, 0, 0).expect("plan");
        assert_eq!(p.budget, 64 * MIB + 2 * 128 * MIB);
        // Share 128 MiB: 10 MiB of I/O, a quarter of the other 118 MiB for
        // requests, the rest for the tail cache.
        assert_eq!(p.io_memory, 10 * MIB);
        assert_eq!(p.request_memory, 118 * MIB / 4);
        assert_eq!(p.tail_cache, 118 * MIB - 118 * MIB / 4);
        let total =
            p.reserve + u64::from(p.shards) * (p.io_memory + p.request_memory + p.tail_cache);
        assert!(total <= p.budget);
    }

    #[test]
    fn explicit_parts_must_fit_the_budget() {
        let p = MemoryPlan::new(256 * MIB, 2, 10 * MIB, 8 * MIB, 16 * MIB).expect("fits");
        assert_eq!((p.request_memory, p.tail_cache), (8 * MIB, 16 * MIB));
        let e =
            MemoryPlan::new(256 * MIB, 2, 10 * MIB, 8 * MIB, 200 * MIB).expect_err("must not fit");
        assert!(e.contains("too small"), "{e}");
        // A tail cache set by hand leaves the rest to requests, and the
        // other way round.
        let p = MemoryPlan::new(256 * MIB, 2, 10 * MIB, 0, 80 * MIB).expect("fits");
        assert_eq!((p.request_memory, p.tail_cache), (6 * MIB, 80 * MIB));
        let p = MemoryPlan::new(256 * MIB, 2, 10 * MIB, 50 * MIB, 0).expect("fits");
        assert_eq!((p.request_memory, p.tail_cache), (50 * MIB, 36 * MIB));
        let e = MemoryPlan::new(100 * MIB, 4, 10 * MIB, 0, 0).expect_err("must not fit");
        assert!(e.contains("too small"), "{e}");
    }

    #[test]
    fn frames_wait_for_room_and_one_reader_may_overdraw() {
        glommio::LocalExecutor::default().run(async {
            let pool = Rc::new(RequestMemory::new(100));
            let mut a = pool.frame();
            a.grow(&pool, 60).await;
            let a = a.done();
            assert_eq!(a.bytes(), 60);
            let b = pool.reserve_up_to(80);
            assert_eq!(b.bytes(), 40, "only what is free, without waiting");
            assert_eq!(pool.in_use(), 100);
            assert_eq!(pool.reserve_up_to(10).bytes(), 0);
            // The pool is full: the first reader to want more overdraws it
            // until its frame is read...
            let mut c = pool.frame();
            c.grow(&pool, 30).await;
            c.grow(&pool, 30).await;
            assert_eq!(pool.in_use(), 160);
            // ...while a second one waits for room.
            let waiter = {
                let pool = pool.clone();
                glommio::spawn_local(async move {
                    let mut d = pool.frame();
                    d.grow(&pool, 50).await;
                    d.done().bytes()
                })
            };
            glommio::yield_if_needed().await;
            glommio::executor().yield_task_queue_now().await;
            assert_eq!(pool.in_use(), 160, "the second reader waits");
            let c = c.done();
            drop(a);
            drop(b);
            drop(c);
            assert_eq!(waiter.await, 50);
            assert_eq!(pool.in_use(), 0, "every reservation given back");
        });
    }

    #[test]
    fn a_reader_lost_mid_frame_gives_back_its_bytes_and_the_overdraft() {
        glommio::LocalExecutor::default().run(async {
            let pool = RequestMemory::new(10);
            let full = pool.reserve_up_to(10);
            let mut lost = pool.frame();
            lost.grow(&pool, 5).await;
            drop(lost);
            assert_eq!(pool.in_use(), 10);
            let mut next = pool.frame();
            next.grow(&pool, 5).await;
            assert_eq!(pool.in_use(), 15, "the overdraft passed to the next reader");
            drop(next);
            drop(full);
            assert_eq!(pool.in_use(), 0);
        });
    }

    #[test]
    fn fetch_reservations_shrink_and_absorb() {
        let pool = RequestMemory::new(100);
        let mut r = pool.reserve_up_to(70);
        r.absorb(pool.reserve_up_to(70));
        assert_eq!(r.bytes(), 100);
        r.shrink_to(25);
        assert_eq!(pool.in_use(), 25);
        drop(r);
        assert_eq!(pool.in_use(), 0);
    }
}
