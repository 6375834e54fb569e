//! Device flushes shared by a shard's partitions.
//!
//! An `acks=all` append is answered once an `fdatasync` that began after its
//! direct-I/O write completed has finished. Done per partition, a produce
//! request spread over four partitions of a shard costs four `fdatasync`s,
//! each an io-wq hand-off, a device cache flush and a wake-up, although one
//! device cache flush makes every write completed before it durable.
//!
//! What one flush cannot cover is metadata: a write into blocks that
//! `fallocate` left unwritten, or one that moves the file's size, needs its
//! own file's `fdatasync` to write the change (the extent blocks and inode,
//! or the journal commit that holds them). So a
//! partition shares a flush only for a group whose written blocks all lie
//! below the segment's `stable_to`: the prefix of the file whose blocks were
//! written, inside the file's size, before an `fdatasync` of that file began
//! (and finished). Everything else takes the partition's own `fdatasync`,
//! which moves `stable_to` on (see `partition::flusher_loop`). With zeros
//! filled ahead of the data (`partition::fill_ahead`) a steadily appending
//! partition takes its own flush about once per filled MiB.
//!
//! A shared flush is an `fdatasync` of the shard's *anchor* on that device
//! ([`prepare_anchor`]): an empty file with an inode-table block of its
//! own, so the call writes nothing and is one device cache flush (a
//! segment's `fdatasync` would also write the segment's inode, dirtied by
//! every write's mtime, first, on ext4 without a journal). Without an
//! anchor it is an `fdatasync` of one of the waiting files. On ext4 and XFS
//! either flushes the device's write cache even when the file has no
//! metadata to write. Files elsewhere (another file system kind, one whose
//! writes do not bypass the page cache, as in ext4's `data=journal`, or an
//! XFS realtime file, whose data is on another device) never share:
//! [`shared_flush_device`] says `None` for them.
//!
//! Rounds: the first waiter starts one. Before its `fdatasync` is issued the
//! round waits for the flushed writes already under way on the shard (the
//! other partitions of the same produce request, typically), so their
//! groups join it; that wait is at most one write long and needs no timer.
//! Waiters arriving while the `fdatasync` is in flight make the next round.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use futures_channel::oneshot;
use glommio::io::DmaFile;

use crate::partition::StorageError;
use crate::stats;

const EXT4_SUPER_MAGIC: i64 = 0xEF53;
const XFS_SUPER_MAGIC: i64 = 0x5846_5342;

thread_local! {
    static ENABLED: Cell<bool> = const { Cell::new(true) };
    static ROUNDS: RefCell<HashMap<u64, Round>> = RefCell::new(HashMap::new());
    static WRITES: RefCell<Writes> = RefCell::new(Writes::default());
    /// Each device's flush anchor on this shard ([`prepare_anchor`]).
    static ANCHORS: RefCell<HashMap<u64, Rc<Anchor>>> = RefCell::new(HashMap::new());
}

/// Inodes in one inode-table block: 16 of 256 bytes (ext4's default inode
/// size) in a 4 KiB block. Windows of this many inode numbers, aligned as
/// the inode tables are, each lie in one block.
const ANCHOR_WINDOW: u64 = 16;
/// Empty files created per try, and tries, to find a window of inodes held
/// only by them (up to 4,096 files). New files first fill the holes deleted
/// files left in the inode table, so on a file system with much churn the
/// window can take a few hundred; creating one costs about 4 us here.
const ANCHOR_BATCH: usize = 64;
const ANCHOR_TRIES: usize = 64;

/// Shards make their anchors one at a time, so their files do not
/// interleave in the inode tables.
static ANCHOR_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// An empty file whose `fdatasync` is a bare device cache flush: no data,
/// and an inode-table block no other file's inode lives in.
struct Anchor {
    file: Rc<DmaFile>,
    path: PathBuf,
}

/// The window (`(inode - 1) / ANCHOR_WINDOW`) whose every inode number is
/// in `inodes`, if there is one.
fn owned_window(inodes: &[u64]) -> Option<u64> {
    let mut counts: HashMap<u64, u64> = HashMap::new();
    for &ino in inodes {
        if ino > 0 {
            *counts.entry((ino - 1) / ANCHOR_WINDOW).or_default() += 1;
        }
    }
    let mut full: Vec<u64> = counts
        .into_iter()
        .filter(|&(_, n)| n == ANCHOR_WINDOW)
        .map(|(w, _)| w)
        .collect();
    full.sort_unstable();
    full.first().copied()
}

/// Creates empty files in `dir` (recreated) until a window of
/// [`ANCHOR_WINDOW`] inodes is all theirs; keeps those, removes the rest,
/// and returns the first of them (`None` when no window came up).
fn make_anchor_files(dir: &Path) -> Result<Option<PathBuf>, StorageError> {
    let _one_at_a_time = ANCHOR_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(StorageError::io("clear", dir, e));
        }
        _ => {}
    }
    std::fs::create_dir_all(dir).map_err(|e| StorageError::io("create", dir, e))?;
    let mut made: Vec<(u64, PathBuf)> = Vec::new();
    let mut window = None;
    for _ in 0..ANCHOR_TRIES {
        for _ in 0..ANCHOR_BATCH {
            let path = dir.join(format!("anchor-{:04}", made.len()));
            let file =
                std::fs::File::create(&path).map_err(|e| StorageError::io("create", &path, e))?;
            let ino = file
                .metadata()
                .map_err(|e| StorageError::io("stat", &path, e))?
                .ino();
            made.push((ino, path));
        }
        let inodes: Vec<u64> = made.iter().map(|(ino, _)| *ino).collect();
        window = owned_window(&inodes);
        if window.is_some() {
            break;
        }
    }
    let in_window = |ino: u64| ino > 0 && Some((ino - 1) / ANCHOR_WINDOW) == window;
    // The files outside the window go; those inside stay, so no other file
    // takes an inode of the anchor's block while the broker runs.
    for (ino, path) in &made {
        if !in_window(*ino) {
            let _ = std::fs::remove_file(path);
        }
    }
    Ok(made
        .into_iter()
        .find(|(ino, _)| in_window(*ino))
        .map(|(_, path)| path))
}

/// Makes this shard's shared flushes `fdatasync` an empty file of their
/// own in `dir` (recreated; on the data's file system) instead of one of
/// the waiting segments.
///
/// Why: a segment's `fdatasync` also writes the segment's inode whenever it
/// is dirty, and every write dirties it (its mtime moves once per clock
/// tick). ext4 without a journal writes that inode's table block
/// synchronously inside the `fdatasync` (kernel 6.18 does so on every call
/// where the block is dirty), a device round trip before the cache flush
/// itself. The writes a shared flush covers need no metadata at all (they
/// lie below `stable_to`), so the flush may as well be of a file with
/// nothing to write: empty, and with its inode in a table block that only
/// holds other empty files made here, so no other file's timestamps dirty
/// it. Any `fdatasync` on ext4 or XFS ends with a device cache flush
/// whether or not the file had anything to write.
///
/// Returns whether an anchor is in use; `false` when no block of inodes
/// could be had to itself (the flushes then stay as they were).
pub async fn prepare_anchor(dir: &Path) -> Result<bool, StorageError> {
    let Some(path) = make_anchor_files(dir)? else {
        let _ = std::fs::remove_dir_all(dir);
        return Ok(false);
    };
    let file = DmaFile::open(&path)
        .await
        .map_err(|e| StorageError::io("open with O_DIRECT", &path, e))?;
    let Some(dev) = shared_flush_device(&file) else {
        let _ = file.close().await;
        let _ = std::fs::remove_dir_all(dir);
        return Ok(false);
    };
    let anchor = Rc::new(Anchor {
        file: Rc::new(file),
        path,
    });
    ANCHORS.with(|a| a.borrow_mut().insert(dev, anchor));
    Ok(true)
}

/// The shard's flushed writes under way, by the order they began.
#[derive(Default)]
struct Writes {
    next: u64,
    in_flight: BTreeSet<u64>,
    /// Woken once no write numbered below theirs is in flight.
    waiters: Vec<(u64, oneshot::Sender<()>)>,
}

/// A flushed write under way on this shard, from just before its I/O is
/// issued until its group is handed to the flusher (dropped).
pub(crate) struct WriteInFlight(u64);

impl WriteInFlight {
    pub(crate) fn begin() -> WriteInFlight {
        WRITES.with(|w| {
            let mut w = w.borrow_mut();
            let seq = w.next;
            w.next += 1;
            w.in_flight.insert(seq);
            WriteInFlight(seq)
        })
    }
}

impl Drop for WriteInFlight {
    fn drop(&mut self) {
        let ready = WRITES.try_with(|w| {
            let mut w = w.borrow_mut();
            w.in_flight.remove(&self.0);
            let oldest = w.in_flight.first().copied().unwrap_or(u64::MAX);
            let (ready, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut w.waiters)
                .into_iter()
                .partition(|(upto, _)| *upto <= oldest);
            w.waiters = wait;
            ready
        });
        for (_, done) in ready.unwrap_or_default() {
            let _ = done.send(());
        }
    }
}

/// Lets every task already runnable run before this one goes on.
async fn yield_once() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            return std::task::Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    })
    .await
}

/// Waits until every flushed write that began before this call is done.
async fn writes_under_way_done() {
    let wait = WRITES.with(|w| {
        let mut w = w.borrow_mut();
        let upto = w.next;
        match w.in_flight.first() {
            Some(&oldest) if oldest < upto => {
                let (done, rx) = oneshot::channel();
                w.waiters.push((upto, done));
                Some(rx)
            }
            _ => None,
        }
    });
    if let Some(rx) = wait {
        let _ = rx.await;
    }
}

/// Lets the calling shard's partitions share device flushes (the default),
/// or makes each flush its own file's `fdatasync`.
pub fn set_shared_flush(enabled: bool) {
    ENABLED.set(enabled);
}

pub(crate) fn enabled() -> bool {
    ENABLED.get()
}

/// The device a flush of `file` may be shared on: its `st_dev`, when the
/// file system is ext4 or XFS and the file's direct-I/O writes really
/// bypass the page cache (`statx` reports a direct-I/O alignment).
pub(crate) fn shared_flush_device(file: &DmaFile) -> Option<u64> {
    shared_flush_device_of(file.as_raw_fd())
}

/// [`shared_flush_device`] of any open file: whether files like it (in the
/// same directory) may share flushes.
pub fn shared_flush_device_of(fd: std::os::fd::RawFd) -> Option<u64> {
    // SAFETY: plain syscalls on an open descriptor, into zeroed structs.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(fd, &mut fs) } != 0 {
        return None;
    }
    match fs.f_type as i64 {
        EXT4_SUPER_MAGIC => {}
        // A realtime file's data lives on another device than the one its
        // fdatasync flushes when it has no metadata to log.
        XFS_SUPER_MAGIC if !xfs_realtime(fd)? => {}
        _ => return None,
    }
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    let empty = c"";
    let rc = unsafe {
        libc::statx(
            fd,
            empty.as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        )
    };
    if rc != 0 || stx.stx_mask & libc::STATX_DIOALIGN == 0 || stx.stx_dio_offset_align == 0 {
        return None;
    }
    Some(libc::makedev(stx.stx_dev_major, stx.stx_dev_minor))
}

/// Whether an XFS file is a realtime one (`FS_XFLAG_REALTIME`); `None`
/// when the file system does not say.
fn xfs_realtime(fd: std::os::fd::RawFd) -> Option<bool> {
    /// `struct fsxattr`, what `FS_IOC_FSGETXATTR` fills in.
    #[repr(C)]
    struct FsXattr {
        xflags: u32,
        extsize: u32,
        nextents: u32,
        projid: u32,
        cowextsize: u32,
        pad: [u8; 8],
    }
    const FS_IOC_FSGETXATTR: libc::c_ulong = 0x801c_581f;
    const FS_XFLAG_REALTIME: u32 = 0x1;
    let mut attr = FsXattr {
        xflags: 0,
        extsize: 0,
        nextents: 0,
        projid: 0,
        cowextsize: 0,
        pad: [0; 8],
    };
    // SAFETY: the ioctl fills a `struct fsxattr`, which `attr` is.
    let rc = unsafe { libc::ioctl(fd, FS_IOC_FSGETXATTR as _, &mut attr) };
    (rc == 0).then_some(attr.xflags & FS_XFLAG_REALTIME != 0)
}

#[derive(Default)]
struct Round {
    /// A round's `fdatasync` is in flight (or about to be issued).
    running: bool,
    waiting: Vec<Waiter>,
}

struct Waiter {
    file: Rc<DmaFile>,
    path: PathBuf,
    done: oneshot::Sender<Result<(), StorageError>>,
}

/// Waits for a device cache flush on `dev` issued after this call: every
/// direct-I/O write to that device completed before the call is durable
/// when it returns `Ok`. `file` (on `dev`) may be the one flushed.
pub(crate) async fn flush_device(
    dev: u64,
    file: Rc<DmaFile>,
    path: PathBuf,
) -> Result<(), StorageError> {
    let (done, rx) = oneshot::channel();
    let start = ROUNDS.with(|r| {
        let mut r = r.borrow_mut();
        let round = r.entry(dev).or_default();
        round.waiting.push(Waiter { file, path, done });
        !std::mem::replace(&mut round.running, true)
    });
    if start {
        // One task per device runs the rounds while there are waiters; it
        // lets the other flushers woken in this pass join first.
        glommio::spawn_local(flush_rounds(dev)).detach();
    }
    match rx.await {
        Ok(result) => result,
        Err(_) => Err(StorageError("the shard's flush task ended".into())),
    }
}

async fn flush_rounds(dev: u64) {
    loop {
        let pending = ROUNDS.with(|r| r.borrow().get(&dev).is_some_and(|r| !r.waiting.is_empty()));
        if pending {
            // Flushers already woken (by writes done in this executor pass)
            // run first, and writes under way now may bring groups too.
            yield_once().await;
            writes_under_way_done().await;
        }
        let waiting = ROUNDS.with(|r| {
            let mut r = r.borrow_mut();
            let Some(round) = r.get_mut(&dev) else {
                return Vec::new();
            };
            if round.waiting.is_empty() {
                round.running = false;
            }
            std::mem::take(&mut round.waiting)
        });
        let Some(first) = waiting.first() else { return };
        let anchor = ANCHORS.with(|a| a.borrow().get(&dev).cloned());
        let (file, path) = match &anchor {
            Some(a) => (&a.file, &a.path),
            None => (&first.file, &first.path),
        };
        let began = std::time::Instant::now();
        let result = crate::uring::fdatasync(file)
            .await
            .map_err(|e| StorageError::io("fdatasync", path, e));
        stats::record_flush(began.elapsed());
        stats::add_fdatasyncs(1);
        if anchor.is_some() {
            stats::add_anchored_flushes(1);
        }
        stats::add_shared_flushes(waiting.len() as u64);
        for w in waiting {
            let _ = w.done.send(result.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owned_window_is_one_whose_every_inode_is_ours() {
        // Inodes 17..=32 are window 1; 1..=16 window 0 (one missing).
        let mut inodes: Vec<u64> = (2..=32).collect();
        assert_eq!(owned_window(&inodes), Some(1));
        inodes.retain(|&i| i != 20);
        assert_eq!(owned_window(&inodes), None, "a window with a stranger");
        inodes.extend(1..=1);
        assert_eq!(owned_window(&inodes), Some(0), "the lowest full window");
        assert_eq!(owned_window(&[0]), None);
    }

    /// The ioctl number and struct match the kernel's: ext4 and XFS answer
    /// `FS_IOC_FSGETXATTR`, and a new file is not a realtime one.
    #[test]
    fn a_new_file_on_ext4_or_xfs_is_not_realtime() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = std::fs::File::create(dir.path().join("f")).expect("file");
        let fd = file.as_raw_fd();
        // SAFETY: a plain syscall into a zeroed struct.
        let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::fstatfs(fd, &mut fs) }, 0);
        if matches!(fs.f_type as i64, EXT4_SUPER_MAGIC | XFS_SUPER_MAGIC) {
            assert_eq!(xfs_realtime(fd), Some(false));
        }
    }
}
