//! A second io_uring ring per shard, for what glommio does not expose.
//!
//! Cold reads (fetches of data no longer in the tail cache) must reach the
//! socket without a user-space copy. glommio's direct-I/O reads land in its
//! own `!Send` DMA buffers, which cannot become the `Bytes` a response (or a
//! cross-shard reply) carries without copying. So each shard owns a second
//! ring, driven with the `io-uring` crate: `O_DIRECT` reads go straight from
//! the device into 4 KiB-aligned heap buffers that become `Bytes` by
//! ownership (`Bytes::from_owner`), and batches are sliced out of them. The
//! payload is then touched once more, by the kernel, when `sendmsg` copies
//! it into the socket.
//!
//! Integration with the executor: the ring signals completions on an eventfd
//! (registered with the ring; opened blocking, wrapped as a glommio file), and
//! one glommio task per shard reads that eventfd through glommio's own ring,
//! then drains this ring's completion queue and wakes the waiting reads. The
//! ring is set up without `DEFER_TASKRUN`, which would keep the eventfd from
//! ever firing.
//!
//! The shard's `fdatasync`s go through this ring too ([`fdatasync`]): its
//! `submit` enters the kernel at once, where glommio queues a request in its
//! main ring until the reactor next polls, after the tasks of the current
//! pass. Measured at workload (a) of docs/benchmarks.md, 14 alternated pairs
//! in two sets: 3.4% and 8.6% more throughput (paired ratios 1.034 and
//! 1.086, standard errors 0.014 and 0.017) at the same or lower CPU per GB
//! (the first set's build also registered an io-wq CPU affinity, since
//! dropped: it changed no worker's affinity). At (b) nine pairs showed no
//! difference in CPU per GB beyond the noise.
//!
//! A landed write that needs a flush of its own (one not covered by a shared
//! device flush, `flush`) goes further: its `fdatasync` is linked behind it
//! (`IOSQE_IO_LINK`, [`SideRing::write_vectored_then_sync`]), so the kernel
//! starts the flush as the write completes, before the executor has even
//! seen the write's completion. A short or failed write cancels it. At (a),
//! 14 alternated pairs against the same binary with `SLUICE_LINKED_SYNC=0`
//! (2026-12-06, 23:20-23:37 UTC): paired throughput ratio 1.04 (standard
//! error about 0.04), produce-acknowledgement median 4.32 against 4.41 ms:
//! a small gain at best, within this machine's noise; at (b) and (d) no
//! difference beyond the noise (docs/benchmarks.md).
//!
//! An entry pushed onto the ring runs whenever the kernel is next entered,
//! so `submit` never returns between its push and its completion: a refusal
//! to enter the kernel for a passing reason is retried for up to a second,
//! and anything else gives the ring up for good (it is never entered again,
//! so nothing left queued on it runs, and the shard falls back to glommio).
//! Otherwise a write reported failed, after which the append path truncates
//! and reuses the range, could land later over newer data.
//!
//! Why not splice or zero-copy send: `sluice-bench sendpath` measures every
//! way of putting bytes a broker holds on a socket, by the sender's CPU per
//! GB (docs/benchmarks.md has the table). On this project's loopback
//! benchmarks a plain `sendmsg` from user memory costs the least: io_uring
//! `SEND_ZC` from registered buffers costs 1.35x as much, `MSG_ZEROCOPY`
//! 1.66x, `vmsplice` into a pipe and `splice` to the socket 2.4x, and
//! `sendfile` from the page cache (splicing a segment file) 2.8x. Loopback
//! copies zero-copy pages at delivery anyway (both zero-copy mechanisms
//! report so on every send), and page-by-page socket buffers cost more than
//! the copy they save. Splicing a segment would also first pull it into the
//! page cache, which direct I/O keeps it out of. So fetch responses go out
//! with scatter/gather `sendmsg`: tail-cache batches and side-ring buffers
//! as they are, no payload byte copied in user space. The side ring is
//! measured against the copying read it replaced (`SLUICE_SIDE_RING=0`) in
//! docs/benchmarks.md: a consumer reading 1 GB of cold segments cost the
//! broker 0.29-0.37 CPU-s/GB through it, 0.63 through the copying read. That
//! holds only while read buffers are reused (a per-thread pool): a fresh
//! 1 MiB buffer per read, zeroed, faulted in and unmapped again, made the
//! side ring cost more than the copy it saves.

use std::alloc::Layout;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::os::fd::{FromRawFd, RawFd};
use std::ptr::NonNull;
use std::rc::Rc;

use bytes::Bytes;
use futures_channel::oneshot;
use io_uring::{opcode, types, IoUring};

use crate::limits::BLOCK_BYTES;
use crate::stats;

/// Entries in each side ring: bounds the reads in flight per shard.
pub const SIDE_RING_ENTRIES: u32 = 256;

/// A heap buffer aligned for direct I/O. `Send`: plain owned memory.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    capacity: usize,
    len: usize,
    /// Bytes from the start known to be initialised: all of a zeroed
    /// buffer, what the kernel wrote into a read buffer.
    init: usize,
    /// A read buffer: given back to the dropping thread's pool.
    pooled: bool,
}

// SAFETY: the buffer is uniquely owned heap memory with no thread affinity.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access is read-only (`as_ref`).
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    fn layout(capacity: usize) -> Option<Layout> {
        Layout::from_size_align(capacity, BLOCK_BYTES).ok()
    }

    /// A zeroed buffer of `capacity` bytes (rounded up to a block).
    pub fn new(capacity: usize) -> Option<AlignedBuf> {
        let capacity = capacity.div_ceil(BLOCK_BYTES).max(1) * BLOCK_BYTES;
        let layout = Self::layout(capacity)?;
        // SAFETY: the layout has a non-zero size.
        let ptr = NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) })?;
        Some(AlignedBuf {
            ptr,
            capacity,
            len: 0,
            init: capacity,
            pooled: false,
        })
    }

    /// A buffer of at least `capacity` bytes (rounded up to a block) for a
    /// read to fill: not zeroed, and none of it readable (`len` 0) until the
    /// read says how many bytes it wrote. Taken from this thread's pool of
    /// read buffers when one fits. Zeroing a fresh 1 MiB buffer, and the page
    /// faults and unmapping of one allocated and freed per read, cost about
    /// as much as the copy the side ring exists to avoid (docs/benchmarks.md).
    fn for_read(capacity: usize) -> Option<AlignedBuf> {
        let capacity = capacity.div_ceil(BLOCK_BYTES).max(1) * BLOCK_BYTES;
        let pooled = READ_POOL
            .try_with(|p| p.borrow_mut().take(capacity))
            .ok()
            .flatten();
        let (ptr, capacity) = match pooled {
            Some(buf) => buf,
            None => {
                let layout = Self::layout(capacity)?;
                // SAFETY: the layout has a non-zero size.
                (
                    NonNull::new(unsafe { std::alloc::alloc(layout) })?,
                    capacity,
                )
            }
        };
        Some(AlignedBuf {
            ptr,
            capacity,
            len: 0,
            init: 0,
            pooled: true,
        })
    }
}

/// Most bytes of read buffers one thread keeps for reuse: a few fetches'
/// worth of 1 MiB partition reads.
const READ_POOL_BYTES: usize = 8 << 20;

/// Read buffers given back on this thread (a shard, or whichever thread
/// dropped a response), for the next read of about the same size.
struct ReadPool {
    bufs: Vec<(NonNull<u8>, usize)>,
    bytes: usize,
}

impl ReadPool {
    /// A pooled buffer of `capacity` to `capacity * 5 / 4` bytes.
    fn take(&mut self, capacity: usize) -> Option<(NonNull<u8>, usize)> {
        let i = self
            .bufs
            .iter()
            .position(|&(_, c)| c >= capacity && c <= capacity + capacity / 4)?;
        let buf = self.bufs.swap_remove(i);
        self.bytes -= buf.1;
        Some(buf)
    }

    /// Keeps `ptr` when there is room; hands it back otherwise.
    fn give(&mut self, ptr: NonNull<u8>, capacity: usize) -> Option<NonNull<u8>> {
        if self.bytes + capacity > READ_POOL_BYTES {
            return Some(ptr);
        }
        self.bytes += capacity;
        self.bufs.push((ptr, capacity));
        None
    }
}

impl Drop for ReadPool {
    fn drop(&mut self) {
        for &(ptr, capacity) in &self.bufs {
            if let Some(layout) = AlignedBuf::layout(capacity) {
                // SAFETY: allocated with this layout by `AlignedBuf::for_read`
                // and owned by the pool since its buffer was dropped.
                unsafe { std::alloc::dealloc(ptr.as_ptr(), layout) };
            }
        }
    }
}

thread_local! {
    static READ_POOL: RefCell<ReadPool> = const {
        RefCell::new(ReadPool {
            bufs: Vec::new(),
            bytes: 0,
        })
    };
}

impl AlignedBuf {
    /// The start of the buffer.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// The first `len` bytes (at most the initialised ones: the capacity of
    /// a zeroed buffer), which become the buffer's contents.
    pub fn as_mut_slice(&mut self, len: usize) -> &mut [u8] {
        self.len = len.min(self.init);
        // SAFETY: `len <= init <= capacity` bytes were allocated and
        // initialised, and are borrowed mutably through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `len <= init <= capacity` bytes were allocated and initialised.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let (ptr, capacity) = (self.ptr, self.capacity);
        let kept = self.pooled
            && READ_POOL
                .try_with(|p| p.borrow_mut().give(ptr, capacity).is_none())
                .unwrap_or(false);
        if kept {
            return;
        }
        if let Some(layout) = Self::layout(self.capacity) {
            // SAFETY: allocated with this very layout in `new` or `for_read`.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) };
        }
    }
}

/// An operation in flight: its memory is kept alive until the kernel is done.
struct InFlight {
    /// A read's destination, handed back with the result.
    buf: Option<AlignedBuf>,
    /// A write's sources and iovec array.
    _keep: Option<Box<dyn std::any::Any>>,
    /// Its place among the operations in flight, given back when it is
    /// reaped (not when the waiting future goes away).
    _slot: Option<glommio::sync::StaticPermit>,
    done: oneshot::Sender<(i32, Option<AlignedBuf>)>,
}

/// An operation to submit, with the memory it needs kept alive.
struct Op {
    id: u64,
    entry: io_uring::squeue::Entry,
    buf: Option<AlignedBuf>,
    keep: Option<Box<dyn std::any::Any>>,
}

/// Where an operation's completion comes.
type Answer = oneshot::Receiver<(i32, Option<AlignedBuf>)>;

/// Waits for a completion (a negative result is the error).
async fn answer(answer: Option<Answer>) -> io::Result<(i32, Option<AlignedBuf>)> {
    let answer = answer.ok_or_else(|| io::Error::other("side ring lost an operation"))?;
    let (res, buf) = answer
        .await
        .map_err(|_| io::Error::other("side ring stopped"))?;
    if res < 0 {
        return Err(io::Error::from_raw_os_error(-res));
    }
    Ok((res, buf))
}

/// An `fdatasync` linked behind a write ([`SideRing::write_vectored_then_sync`]).
pub struct LinkedSync(Option<Answer>);

impl LinkedSync {
    /// Waits for the flush.
    pub async fn wait(self) -> io::Result<()> {
        answer(self.0).await.map(drop)
    }
}

/// Operations in flight on a side ring at most: as many as its completion
/// queue holds (twice the submission queue). More would overflow it, and
/// completions the kernel keeps aside on overflow come back only on a later
/// `io_uring_enter`, which signals the eventfd no more: their waiters
/// would wait for ever.
const IN_FLIGHT_MAX: u64 = 2 * SIDE_RING_ENTRIES as u64;

/// How long `submit` keeps trying to enter the kernel when it refuses for a
/// passing reason (`EAGAIN`, `EBUSY`, `EINTR`, or entries left unsubmitted)
/// before it gives the ring up.
const ENTER_PATIENCE: std::time::Duration = std::time::Duration::from_secs(1);

/// The shard's side ring (`!Send`: one per shard).
pub struct SideRing {
    ring: RefCell<IoUring>,
    in_flight: RefCell<HashMap<u64, InFlight>>,
    /// [`IN_FLIGHT_MAX`] places; an operation waits for one.
    slots: Rc<glommio::sync::Semaphore>,
    next_id: Cell<u64>,
    /// Set when the kernel could not be entered: the ring is never entered
    /// again, so entries pushed but not submitted never run.
    given_up: Cell<bool>,
    /// How many bytes from the start of each chunk of the arena
    /// ([`crate::arena`]) this ring registered; `None` when it writes from
    /// none (no arena, no `WRITEV_FIXED` in this kernel, or the kernel
    /// refused to pin).
    registered: RefCell<Option<Vec<usize>>>,
    /// Tests: the outcomes of the next kernel entries, in order, instead of
    /// entering (an errno, or 0 for an entry that submits nothing).
    #[cfg(test)]
    refusals: RefCell<std::collections::VecDeque<i32>>,
}

thread_local! {
    static SIDE_RING: RefCell<Option<Option<Rc<SideRing>>>> = const { RefCell::new(None) };
}

/// The calling shard's side ring, set up on first use; `None` when it cannot
/// be (callers then fall back to glommio's reads and one copy). Setting
/// `SLUICE_SIDE_RING=0` in the environment turns it off, to measure the
/// copying path against it (see docs/benchmarks.md).
pub fn side_ring() -> Option<Rc<SideRing>> {
    SIDE_RING.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() && std::env::var("SLUICE_SIDE_RING").is_ok_and(|v| v == "0") {
            *slot = Some(None);
        }
        if slot.is_none() {
            let ring = SideRing::start()
                .map_err(|e| tracing::warn!(error = %e, "no side ring: cold reads will copy"))
                .ok();
            *slot = Some(ring);
        }
        // A ring given up is not handed out: callers fall back to glommio.
        slot.as_ref()
            .and_then(Clone::clone)
            .filter(|ring| !ring.given_up())
    })
}

impl SideRing {
    fn start() -> io::Result<Rc<SideRing>> {
        let ring = IoUring::new(SIDE_RING_ENTRIES)?;
        // SAFETY: a plain eventfd; blocking, so glommio's read of it waits.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        if let Err(e) = ring.submitter().register_eventfd(efd) {
            // SAFETY: we own `efd` and nothing else uses it yet.
            unsafe { libc::close(efd) };
            return Err(e);
        }
        let registered = RefCell::new(Self::arena_table(&ring));
        let side = Rc::new(SideRing {
            ring: RefCell::new(ring),
            in_flight: RefCell::new(HashMap::new()),
            slots: Rc::new(glommio::sync::Semaphore::new(IN_FLIGHT_MAX)),
            next_id: Cell::new(0),
            given_up: Cell::new(false),
            registered,
            #[cfg(test)]
            refusals: RefCell::new(Default::default()),
        });
        // SAFETY: the task below owns the eventfd from here on.
        let events = unsafe { glommio::io::BufferedFile::from_raw_fd(efd) };
        glommio::spawn_local(completions(Rc::downgrade(&side), events)).detach();
        Ok(side)
    }

    /// An empty table of registered buffers with a place for each chunk of
    /// the process's arena, when there is one and this kernel writes from
    /// registered buffers with `WRITEV_FIXED` (Linux 6.15).
    fn arena_table(ring: &IoUring) -> Option<Vec<usize>> {
        let arena = crate::arena::installed()?;
        if !probe_writev_fixed(ring) {
            tracing::info!(
                "this kernel has no WRITEV_FIXED: appends are written from unregistered memory"
            );
            return None;
        }
        let chunks = u32::try_from(arena.chunks()).ok()?;
        match ring.submitter().register_buffers_sparse(chunks) {
            Ok(()) => Some(vec![0; arena.chunks()]),
            Err(e) => {
                tracing::info!(error = %e, "no registered buffers: appends are written from unregistered memory");
                None
            }
        }
    }

    /// The registered buffer all of `segments` lie in; `None` when they
    /// are not all in the registered part of one chunk of the arena, or the
    /// ring writes from no registered buffers. A chunk's registered part is
    /// what landings had been given of it ([`crate::arena::Arena::touched`],
    /// resident, so pinning it faults little in), registered again larger
    /// once that has grown by a quarter (and 64 KiB): pinning costs in
    /// proportion to the size pinned, so a chunk is pinned a few times over
    /// at most, not once for every landing that reaches past it.
    fn fixed_buffer(&self, segments: &[(*const u8, usize)]) -> Option<u16> {
        const GROWTH_MIN: usize = 64 << 10;
        let arena = crate::arena::installed()?;
        let (first, rest) = segments.split_first()?;
        let (chunk, mut end) = arena.chunk_of(first.0, first.1)?;
        for &(p, len) in rest {
            match arena.chunk_of(p, len) {
                Some((c, e)) if c == chunk => end = end.max(e),
                _ => return None,
            }
        }
        let index = u16::try_from(chunk).ok()?;
        let mut table = self.registered.borrow_mut();
        let registered = table.as_mut()?.get_mut(chunk)?;
        if end <= *registered {
            return Some(index);
        }
        let touched = arena.touched(chunk);
        let grown = touched >= *registered + (*registered / 4).max(GROWTH_MIN)
            || touched == arena.chunk_len(chunk);
        if touched < end || !grown {
            return None;
        }
        let iovec = arena.chunk_iovec(chunk, touched);
        // SAFETY: the range is part of the process's arena, which is never
        // unmapped, so it stays valid while registered. Replacing a
        // registration leaves operations in flight with the old one intact.
        let r = unsafe {
            self.ring
                .borrow()
                .submitter()
                .register_buffers_update(u32::from(index), &[iovec], None)
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, chunk, "the kernel would not pin arena memory (RLIMIT_MEMLOCK?): appends are written from unregistered memory");
            *table = None;
            return None;
        }
        *registered = touched;
        Some(index)
    }

    /// A `WRITEV` of `iovecs` at `offset`, from a registered buffer when
    /// they all lie in one ([`SideRing::fixed_buffer`]).
    fn writev_entry(
        &self,
        fd: RawFd,
        offset: u64,
        segments: &[(*const u8, usize)],
        iovecs: &[libc::iovec],
        count: u32,
    ) -> io_uring::squeue::Entry {
        match self.fixed_buffer(segments) {
            Some(index) => {
                stats::add_registered_writes(1);
                opcode::WritevFixed::new(types::Fd(fd), iovecs.as_ptr(), count, index)
                    .offset(offset)
                    .build()
            }
            None => opcode::Writev::new(types::Fd(fd), iovecs.as_ptr(), count)
                .offset(offset)
                .build(),
        }
    }

    /// Reads `len` bytes at `offset` of an `O_DIRECT` file descriptor into a
    /// fresh aligned buffer; `offset` must be block-aligned. The result may
    /// be shorter at the end of the file.
    pub async fn read_direct(&self, fd: RawFd, offset: u64, len: usize) -> io::Result<Bytes> {
        debug_assert_eq!(offset % BLOCK_BYTES as u64, 0);
        let buf = AlignedBuf::for_read(len).ok_or_else(|| io::Error::other("buffer allocation"))?;
        let id = self.take_id();
        // The blocks asked for, not the whole buffer: a pooled one may be
        // up to a quarter larger.
        let want = (len.div_ceil(BLOCK_BYTES).max(1) * BLOCK_BYTES).min(buf.capacity);
        let want = u32::try_from(want).map_err(|_| io::Error::other("read too large"))?;
        let entry = opcode::Read::new(types::Fd(fd), buf.ptr.as_ptr(), want)
            .offset(offset)
            .build()
            .user_data(id);
        let (res, buf) = self.submit(id, entry, Some(buf), None).await?;
        let mut buf = buf.ok_or_else(|| io::Error::other("side ring lost a buffer"))?;
        // The kernel wrote `res` bytes; only those (at most `len`) are read.
        buf.init = (res as usize).min(buf.capacity);
        buf.len = buf.init.min(len);
        Ok(Bytes::from_owner(buf))
    }

    /// Writes `segments` back to back at `offset` of an `O_DIRECT` file
    /// descriptor with one `WRITEV`. Each segment must be 512-byte aligned
    /// and a multiple of 512 bytes long, and stay valid while `keep` lives
    /// (it is held until the kernel is done). Returns the bytes written.
    pub async fn write_vectored(
        &self,
        fd: RawFd,
        offset: u64,
        segments: &[(*const u8, usize)],
        keep: Box<dyn std::any::Any>,
    ) -> io::Result<usize> {
        let (iovecs, count) = iovecs_of(segments)?;
        let id = self.take_id();
        let entry = self
            .writev_entry(fd, offset, segments, &iovecs, count)
            .user_data(id);
        let keep: Box<dyn std::any::Any> = Box::new((keep, iovecs));
        let (res, _) = self.submit(id, entry, None, Some(keep)).await?;
        Ok(res as usize)
    }

    /// [`SideRing::write_vectored`] with an `fdatasync` of `fd` linked
    /// behind it: the kernel starts the flush as soon as the write
    /// completes, with no trip through the executor. Returns the write's
    /// outcome (its byte count) and the flush to wait on; the outer error
    /// is a submission that failed (neither runs). A short or failed write
    /// cancels the flush (it then reports `ECANCELED`).
    pub async fn write_vectored_then_sync(
        &self,
        fd: RawFd,
        offset: u64,
        segments: &[(*const u8, usize)],
        keep: Box<dyn std::any::Any>,
    ) -> io::Result<(io::Result<usize>, LinkedSync)> {
        let (iovecs, count) = iovecs_of(segments)?;
        let (write_id, sync_id) = (self.take_id(), self.take_id());
        let write = self
            .writev_entry(fd, offset, segments, &iovecs, count)
            .flags(io_uring::squeue::Flags::IO_LINK)
            .user_data(write_id);
        let sync = opcode::Fsync::new(types::Fd(fd))
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(sync_id);
        let keep: Box<dyn std::any::Any> = Box::new((keep, iovecs));
        let mut answers = self
            .submit_all(vec![
                Op {
                    id: write_id,
                    entry: write,
                    buf: None,
                    keep: Some(keep),
                },
                Op {
                    id: sync_id,
                    entry: sync,
                    buf: None,
                    keep: None,
                },
            ])
            .await?;
        let sync = LinkedSync(answers.pop());
        let written = answer(answers.pop()).await.map(|(res, _)| res as usize);
        Ok((written, sync))
    }

    fn take_id(&self) -> u64 {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        id
    }

    /// `fdatasync` of `fd` (the kernel runs it on an io-wq worker). The
    /// caller keeps `fd` open until it returns.
    pub async fn fdatasync(&self, fd: RawFd) -> io::Result<()> {
        let id = self.take_id();
        let entry = opcode::Fsync::new(types::Fd(fd))
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(id);
        self.submit(id, entry, None, None).await.map(drop)
    }

    /// Whether the ring was given up (see [`SideRing::enter`]).
    pub fn given_up(&self) -> bool {
        self.given_up.get()
    }

    /// Submits `entry` and waits for its completion (a negative result is
    /// the error).
    async fn submit(
        &self,
        id: u64,
        entry: io_uring::squeue::Entry,
        buf: Option<AlignedBuf>,
        keep: Option<Box<dyn std::any::Any>>,
    ) -> io::Result<(i32, Option<AlignedBuf>)> {
        let mut answers = self
            .submit_all(vec![Op {
                id,
                entry,
                buf,
                keep,
            }])
            .await?;
        answer(answers.pop()).await
    }

    /// Pushes `ops` (all or none) and enters the kernel; returns where each
    /// one's completion will come, in order.
    ///
    /// Once pushed, an entry runs whenever the kernel is next entered, by
    /// this call or any other. So after the push this returns only with the
    /// entries submitted, or with the ring given up, which guarantees they
    /// never run: an error never hides a write that lands later (after the
    /// append path has truncated the file and reused the range).
    async fn submit_all(&self, ops: Vec<Op>) -> io::Result<Vec<Answer>> {
        let n = ops.len() as u64;
        let slots = self
            .slots
            .acquire_static_permit(n)
            .await
            .map_err(|e| io::Error::other(format!("side ring slots: {e}")))?;
        if self.given_up() {
            return Err(gave_up());
        }
        let mut answers = Vec::with_capacity(ops.len());
        {
            let mut ring = self.ring.borrow_mut();
            let mut queue = ring.submission();
            if queue.capacity() - queue.len() < ops.len() {
                return Err(io::Error::new(io::ErrorKind::WouldBlock, "side ring full"));
            }
            // The places of all go with the last, given back when it is
            // reaped: linked operations complete in order, so the others'
            // completions are reaped by then.
            let mut slots = Some(slots);
            for (i, op) in ops.into_iter().enumerate() {
                let slot = match i as u64 + 1 == n {
                    true => slots.take(),
                    false => None,
                };
                let (done, answer) = oneshot::channel();
                // SAFETY: the memory the entry points at stays alive in
                // `in_flight` until the completion for `op.id` is reaped (or
                // for good, if the ring is given up with the entry
                // unsubmitted). There is room for every entry (checked
                // above), so none is refused.
                let pushed = unsafe { queue.push(&op.entry) };
                debug_assert!(pushed.is_ok());
                self.in_flight.borrow_mut().insert(
                    op.id,
                    InFlight {
                        buf: op.buf,
                        _keep: op.keep,
                        _slot: slot,
                        done,
                    },
                );
                answers.push(answer);
            }
        }
        self.enter().await?;
        Ok(answers)
    }

    /// Enters the kernel until the submission queue is empty. A passing
    /// refusal (`EAGAIN`, `EBUSY`, `EINTR`, or a partial submission) is
    /// retried with a growing pause for up to [`ENTER_PATIENCE`]; any other
    /// error, or running out of patience, gives the ring up: it is never
    /// entered again, so what is still queued never runs, and its callers'
    /// errors are true.
    async fn enter(&self) -> io::Result<()> {
        let started = std::time::Instant::now();
        let mut pause = std::time::Duration::from_micros(20);
        loop {
            if self.given_up() {
                return Err(gave_up());
            }
            let outcome = {
                let mut ring = self.ring.borrow_mut();
                self.enter_once(&ring).map(|_| ring.submission().is_empty())
            };
            let passing = match &outcome {
                Ok(true) => return Ok(()),
                Ok(false) => true,
                Err(e) => matches!(
                    e.raw_os_error(),
                    Some(libc::EAGAIN | libc::EBUSY | libc::EINTR)
                ),
            };
            if !passing || started.elapsed() >= ENTER_PATIENCE {
                self.given_up.set(true);
                let error = outcome.err();
                tracing::error!(
                    error = ?error,
                    "side ring: cannot submit to the kernel; given up, its queued operations will not run"
                );
                return Err(gave_up());
            }
            // Completions waiting to be reaped may be what the kernel is
            // short of (`EBUSY`).
            self.reap();
            glommio::timer::sleep(pause).await;
            pause = (pause * 2).min(std::time::Duration::from_millis(5));
        }
    }

    #[cfg(not(test))]
    fn enter_once(&self, ring: &IoUring) -> io::Result<usize> {
        ring.submit()
    }

    #[cfg(test)]
    fn enter_once(&self, ring: &IoUring) -> io::Result<usize> {
        match self.refusals.borrow_mut().pop_front() {
            Some(0) => Ok(0),
            Some(errno) => Err(io::Error::from_raw_os_error(errno)),
            None => ring.submit(),
        }
    }

    fn reap(&self) {
        let mut ring = self.ring.borrow_mut();
        let done: Vec<(u64, i32)> = ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        drop(ring);
        for (id, res) in done {
            if let Some(f) = self.in_flight.borrow_mut().remove(&id) {
                let _ = f.done.send((res, f.buf));
            }
        }
    }
}

fn probe_writev_fixed(ring: &IoUring) -> bool {
    let mut probe = io_uring::Probe::new();
    ring.submitter().register_probe(&mut probe).is_ok()
        && probe.is_supported(opcode::WritevFixed::CODE)
}

/// Whether this kernel writes from registered buffers with `WRITEV_FIXED`
/// (Linux 6.15): without it, appends are written from unregistered memory.
pub fn writev_fixed_supported() -> bool {
    IoUring::new(2).is_ok_and(|ring| probe_writev_fixed(&ring))
}

fn gave_up() -> io::Error {
    io::Error::other("side ring given up: the kernel refused its submissions")
}

/// `fdatasync` of `file`: through the shard's side ring when it has one
/// (submitted at once), else glommio's.
pub async fn fdatasync(file: &glommio::io::DmaFile) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    match side_ring() {
        Some(ring) => ring.fdatasync(file.as_raw_fd()).await,
        None => file.fdatasync().await.map_err(io::Error::from),
    }
}

/// Waits on the eventfd through glommio's ring and wakes finished reads.
async fn completions(side: std::rc::Weak<SideRing>, events: glommio::io::BufferedFile) {
    loop {
        if events.read_at(0, 8).await.is_err() {
            tracing::error!("side ring eventfd failed; cold reads stop");
            return;
        }
        match side.upgrade() {
            Some(s) => s.reap(),
            None => return,
        }
    }
}

/// The `iovec`s of `segments` (pointer, length) for a `WRITEV`, and their
/// count; the box must live until the kernel is done with the entry.
fn iovecs_of(segments: &[(*const u8, usize)]) -> io::Result<(Box<[libc::iovec]>, u32)> {
    let iovecs: Box<[libc::iovec]> = segments
        .iter()
        .map(|&(ptr, len)| libc::iovec {
            iov_base: ptr.cast_mut().cast(),
            iov_len: len,
        })
        .collect();
    let count = u32::try_from(iovecs.len()).map_err(|_| io::Error::other("too many iovecs"))?;
    Ok((iovecs, count))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reused_read_buffer_shows_none_of_its_last_contents() {
        let mut first = AlignedBuf::for_read(1 << 20).expect("buffer");
        let ptr = first.as_ptr();
        // What a read would have left in it.
        // SAFETY: the buffer holds `capacity` writable bytes.
        unsafe { std::ptr::write_bytes(first.ptr.as_ptr(), 0xAB, first.capacity) };
        first.init = first.capacity;
        first.len = first.capacity;
        drop(first);
        // A read of about the same size gets the same memory back, but none
        // of it is readable until the kernel fills it.
        let mut again = AlignedBuf::for_read((1 << 20) - 100).expect("buffer");
        assert_eq!(again.as_ptr(), ptr, "reused from this thread's pool");
        assert!(again.as_ref().is_empty());
        assert!(again.as_mut_slice(4096).is_empty());
        // A much smaller read does not take a 1 MiB buffer.
        let small = AlignedBuf::for_read(64 << 10).expect("buffer");
        assert_ne!(small.as_ptr(), ptr);
        assert_eq!(small.capacity, 64 << 10);
        // Zeroed buffers stay usable in full and are never pooled.
        let mut zeroed = AlignedBuf::new(5000).expect("buffer");
        assert_eq!(zeroed.as_mut_slice(5000).len(), 5000);
        assert!(zeroed.as_mut_slice(8192).iter().all(|&b| b == 0));
    }

    /// Runs `f` on a fresh executor with a fresh side ring, and an
    /// `O_DIRECT` file of one zeroed 4 KiB block.
    fn with_ring_and_file<F, Fut>(f: F)
    where
        F: FnOnce(Rc<SideRing>, std::fs::File, std::path::PathBuf) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + 'static,
    {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        std::fs::write(&path, [0u8; BLOCK_BYTES]).expect("file");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .expect("open O_DIRECT");
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(move || async move {
                let ring = SideRing::start().expect("a side ring");
                f(ring, file, path).await
            })
            .expect("executor starts")
            .join()
            .expect("test executor finished");
        drop(dir);
    }

    /// Whether every byte of the file at `path` is `byte`.
    fn file_holds_only(path: &std::path::Path, byte: u8) -> bool {
        std::fs::read(path)
            .expect("read back")
            .iter()
            .all(|&b| b == byte)
    }

    /// One block of `byte`, aligned for direct I/O.
    fn block_of(byte: u8) -> AlignedBuf {
        let mut buf = AlignedBuf::new(BLOCK_BYTES).expect("buffer");
        buf.as_mut_slice(BLOCK_BYTES).fill(byte);
        buf
    }

    async fn write_block(ring: &SideRing, fd: RawFd, buf: AlignedBuf) -> io::Result<usize> {
        let segment = [(buf.as_ptr(), BLOCK_BYTES)];
        ring.write_vectored(fd, 0, &segment, Box::new(buf)).await
    }

    /// The kernel refusing to take a submission for a passing reason (and
    /// once taking none of it) delays a write; it still lands, once.
    #[test]
    fn a_refused_submission_is_retried_and_the_write_lands() {
        with_ring_and_file(|ring, file, path| async move {
            use std::os::fd::AsRawFd;
            ring.refusals
                .borrow_mut()
                .extend([libc::EAGAIN, libc::EINTR, 0, libc::EBUSY]);
            let written = write_block(&ring, file.as_raw_fd(), block_of(0x5A))
                .await
                .expect("the write, after four refusals");
            assert_eq!(written, BLOCK_BYTES);
            assert!(ring.refusals.borrow().is_empty(), "every refusal was met");
            assert!(!ring.given_up());
            ring.fdatasync(file.as_raw_fd()).await.expect("fdatasync");
            assert!(file_holds_only(&path, 0x5A), "the block was written");
        });
    }

    /// A submission the kernel refuses for good gives the ring up: the
    /// write's caller gets an error, and the write never lands later, even
    /// when more operations are asked of the ring afterwards (which, before,
    /// entered the kernel and ran the stranded write with theirs).
    #[test]
    fn a_ring_that_cannot_submit_is_given_up_and_its_write_never_lands() {
        with_ring_and_file(|ring, file, path| async move {
            use std::os::fd::AsRawFd;
            ring.refusals.borrow_mut().push_back(libc::EINVAL);
            let err = write_block(&ring, file.as_raw_fd(), block_of(0xC3))
                .await
                .expect_err("the kernel refused the write");
            assert_ne!(
                err.kind(),
                io::ErrorKind::WouldBlock,
                "not 'nothing written'"
            );
            assert!(ring.given_up());
            let after = ring
                .fdatasync(file.as_raw_fd())
                .await
                .expect_err("a ring given up takes nothing more");
            assert!(after.to_string().contains("given up"), "{after}");
            glommio::timer::sleep(std::time::Duration::from_millis(50)).await;
            assert!(file_holds_only(&path, 0), "the refused write never landed");
        });
    }

    /// Passing refusals that outlast [`ENTER_PATIENCE`] give the ring up too.
    #[test]
    fn a_ring_refused_for_longer_than_its_patience_is_given_up() {
        with_ring_and_file(|ring, file, path| async move {
            use std::os::fd::AsRawFd;
            // More refusals than fit in a second of pauses (at most 5 ms each).
            ring.refusals.borrow_mut().extend([libc::EAGAIN; 400]);
            let started = std::time::Instant::now();
            let err = write_block(&ring, file.as_raw_fd(), block_of(0x11))
                .await
                .expect_err("refused for over a second");
            assert!(
                started.elapsed() >= ENTER_PATIENCE,
                "{:?}",
                started.elapsed()
            );
            assert!(err.to_string().contains("given up"), "{err}");
            assert!(ring.given_up());
            assert!(file_holds_only(&path, 0), "the refused write never landed");
        });
    }

    /// A write with a flush linked behind it lands, and its flush reports
    /// success once done.
    #[test]
    fn a_write_with_a_linked_sync_lands_and_is_flushed() {
        with_ring_and_file(|ring, file, path| async move {
            use std::os::fd::AsRawFd;
            let buf = block_of(0x3C);
            let segment = [(buf.as_ptr(), BLOCK_BYTES)];
            let (written, sync) = ring
                .write_vectored_then_sync(file.as_raw_fd(), 0, &segment, Box::new(buf))
                .await
                .expect("submitted");
            assert_eq!(written.expect("the write"), BLOCK_BYTES);
            sync.wait().await.expect("the linked fdatasync");
            assert!(file_holds_only(&path, 0x3C), "the block was written");
        });
    }

    /// A write the kernel refuses (a length direct I/O cannot take) cancels
    /// the flush linked behind it: the flush never reports a success that
    /// would acknowledge the write.
    #[test]
    fn a_failed_write_cancels_its_linked_sync() {
        with_ring_and_file(|ring, file, _path| async move {
            use std::os::fd::AsRawFd;
            let buf = block_of(0x77);
            let segment = [(buf.as_ptr(), 100)];
            let (written, sync) = ring
                .write_vectored_then_sync(file.as_raw_fd(), 0, &segment, Box::new(buf))
                .await
                .expect("submitted");
            let err = written.expect_err("100 bytes with O_DIRECT");
            assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{err}");
            let err = sync.wait().await.expect_err("cancelled with its write");
            assert_eq!(err.raw_os_error(), Some(libc::ECANCELED), "{err}");
        });
    }

    #[test]
    fn the_read_pool_keeps_at_most_its_budget() {
        let bufs: Vec<AlignedBuf> = (0..20)
            .map(|_| AlignedBuf::for_read(1 << 20).expect("buffer"))
            .collect();
        drop(bufs);
        let kept = READ_POOL.with(|p| p.borrow().bytes);
        assert!(kept <= READ_POOL_BYTES, "{kept}");
        assert_eq!(kept, READ_POOL_BYTES, "8 of the 20 buffers kept");
    }
}
