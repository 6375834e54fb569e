//! A full disk, through real sockets against a real `sluice` process whose
//! data directory is on a small tmpfs.
//!
//! The guarantee (STYLE.md, "disk full ... is the environment: return an
//! error, keep serving everyone else"; Kafka's KAFKA_STORAGE_ERROR is the
//! retryable storage failure): a produce that cannot be written fails with
//! KAFKA_STORAGE_ERROR and consumes no offset; every acknowledged record
//! stays readable with its exact bytes at its exact offset; the broker keeps
//! serving; once space returns, writes succeed at the next offset; and a
//! restart finds exactly the acknowledged records.
//!
//! Mounting needs root (these tests run as root, CI included); elsewhere
//! the test says it skips and returns.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{batch_of, Broker};
use sluice_protocol::client::Client;
use sluice_protocol::native::{Acks, ListOffsetsPartition, ProducePartition};
use sluice_protocol::ErrorCode;

const TOPIC: &str = "fill";
const PARTITIONS: u32 = 2;
const TMPFS_BYTES: u64 = 16 * 1024 * 1024;
/// Space left free by the filler file: room for a few dozen batches.
const FREE_AFTER_FILL_BYTES: u64 = 2 * 1024 * 1024;
const RECORDS_PER_BATCH: usize = 4;
/// Four records of this make a batch of about 64 KiB.
const VALUE_BYTES: usize = 16 * 1024;
/// Produces tried before the disk must have run out: 2 MiB of room is ~32
/// batches.
const PRODUCE_ATTEMPTS_MAX: usize = 200;
/// Produces tried once it is full; each must fail or be acknowledged.
const PRODUCES_WHILE_FULL: usize = 5;

/// A tmpfs mounted for the test, unmounted (lazily, so an open file cannot
/// keep it) when dropped, even after a failed assertion.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, bytes: u64) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(path).map_err(|e| format!("mkdir {}: {e}", path.display()))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(format!("mount -t tmpfs failed: {}", stderr.trim()));
        }
        Ok(Tmpfs {
            path: path.to_path_buf(),
        })
    }

    /// Bytes an unprivileged writer may still use.
    fn available_bytes(&self) -> u64 {
        let path = std::ffi::CString::new(self.path.as_os_str().as_encoded_bytes())
            .expect("path without NUL");
        // SAFETY: statvfs writes into the zeroed struct we own; path is NUL-terminated.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::statvfs(path.as_ptr(), &mut st) };
        assert_eq!(rc, 0, "statvfs {}", self.path.display());
        st.f_bavail * st.f_frsize
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Writes real bytes (tmpfs does not count holes) until `path` holds `bytes`
/// or the disk is full.
fn write_filler(path: &Path, bytes: u64) {
    let mut file = std::fs::File::create(path).expect("create filler");
    let chunk = vec![0xF1u8; 1024 * 1024];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        if file.write_all(&chunk[..n]).is_err() {
            return;
        }
        left -= n as u64;
    }
}

/// Deterministic, distinct value bytes for record `record` of batch `batch`.
fn value(batch: usize, record: usize) -> Vec<u8> {
    let mut v = format!("batch {batch} record {record} ").into_bytes();
    let mut x =
        ((batch * RECORDS_PER_BATCH + record) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while v.len() < VALUE_BYTES {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.push(x as u8);
    }
    v
}

/// What the test knows each partition must hold: every acknowledged record.
struct Acked {
    records: Vec<Vec<(i64, Vec<u8>)>>,
    batches: usize,
}

impl Acked {
    fn next_offset(&self, partition: u32) -> i64 {
        self.records[partition as usize].len() as i64
    }

    /// Produces the next batch (acks=all) to `partition`; on success checks
    /// its base offset and records it. Returns the partition's error code.
    fn produce(&mut self, c: &mut Client, partition: u32) -> ErrorCode {
        let values: Vec<Vec<u8>> = (0..RECORDS_PER_BATCH)
            .map(|r| value(self.batches, r))
            .collect();
        self.batches += 1;
        let slices: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
        let r = c
            .produce(
                Acks::All,
                10_000,
                vec![ProducePartition {
                    topic: TOPIC.into(),
                    partition,
                    records: batch_of(&slices),
                }],
            )
            .expect("produce: a full disk must fail the partition, not the request");
        assert_eq!(r.len(), 1);
        if r[0].error != ErrorCode::NONE {
            return r[0].error;
        }
        let next = self.next_offset(partition);
        assert_eq!(
            r[0].base_offset, next,
            "base offset of an acknowledged batch"
        );
        let model = &mut self.records[partition as usize];
        model.extend(
            values
                .into_iter()
                .enumerate()
                .map(|(i, v)| (next + i as i64, v)),
        );
        ErrorCode::NONE
    }

    /// Every acknowledged record is readable, bytes and offsets, and the log
    /// ends right after the last of them.
    fn verify(&self, b: &Broker, when: &str) {
        let mut c = b.client();
        for p in 0..PARTITIONS {
            let got = fetch_all(&mut c, p, when);
            let want = &self.records[p as usize];
            let got_offsets: Vec<i64> = got.iter().map(|r| r.0).collect();
            let want_offsets: Vec<i64> = want.iter().map(|r| r.0).collect();
            assert_eq!(got_offsets, want_offsets, "offsets of {TOPIC}/{p} {when}");
            for ((offset, got), (_, want)) in got.iter().zip(want) {
                assert!(
                    got == want,
                    "bytes of {TOPIC}/{p} at offset {offset} {when}"
                );
            }
            assert_eq!(
                log_end(&mut c, p),
                self.next_offset(p),
                "log end of {TOPIC}/{p} {when}"
            );
        }
        let meta = c.metadata(vec![]).expect("metadata");
        assert!(
            meta.topics.iter().any(|t| t.name == TOPIC),
            "metadata {when}"
        );
    }
}

fn fetch_all(c: &mut Client, partition: u32, when: &str) -> Vec<(i64, Vec<u8>)> {
    common::fetch_all(c, TOPIC, partition, 0, 256 * 1024, when)
}

fn log_end(c: &mut Client, partition: u32) -> i64 {
    let r = c
        .list_offsets(vec![ListOffsetsPartition {
            topic: TOPIC.into(),
            partition,
            timestamp: -1,
        }])
        .expect("list offsets");
    assert_eq!(r[0].error, ErrorCode::NONE);
    r[0].offset
}

/// Produces until a produce fails with KAFKA_STORAGE_ERROR; returns how
/// many were acknowledged first.
fn produce_until_full(b: &Broker, acked: &mut Acked) -> usize {
    let mut c = b.client();
    for attempt in 0..PRODUCE_ATTEMPTS_MAX {
        let partition = attempt as u32 % PARTITIONS;
        match acked.produce(&mut c, partition) {
            ErrorCode::NONE => {}
            ErrorCode::KAFKA_STORAGE_ERROR => return attempt,
            other => panic!(
                "produce {attempt} on a filling disk: {other}, expected NONE or \
                 KAFKA_STORAGE_ERROR"
            ),
        }
    }
    panic!("{PRODUCE_ATTEMPTS_MAX} produces of ~64 KiB fit in {FREE_AFTER_FILL_BYTES} free bytes");
}

/// A broker whose data directory is on a fresh tmpfs, with one topic. Fields
/// drop in order: the broker is killed before the unmount, and the unmount
/// comes before the temporary directory is removed.
struct Fixture {
    b: Broker,
    mount: Tmpfs,
    /// The broker's log (stderr), on the ordinary disk.
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Fixture {
    /// `None` (having said why) where a tmpfs cannot be mounted.
    fn start() -> Option<Fixture> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipping: mounting a tmpfs needs root");
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let mount = match Tmpfs::mount(&dir.path().join("mnt"), TMPFS_BYTES) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("skipping: {e}");
                return None;
            }
        };
        // The data directory is on the tmpfs; the broker's config and log sit
        // beside the symlink to it, on the ordinary disk, so they are not lost
        // to the full disk.
        let on_tmpfs = mount.path.join("data");
        std::fs::create_dir(&on_tmpfs).expect("data dir");
        let data_dir = dir.path().join("data");
        std::os::unix::fs::symlink(&on_tmpfs, &data_dir).expect("symlink");
        let b = Broker::start(&data_dir, 1);
        b.create_topic(TOPIC, PARTITIONS);
        Some(Fixture {
            b,
            log: data_dir.with_extension("log"),
            mount,
            _dir: dir,
        })
    }

    fn filler(&self, n: u32) -> PathBuf {
        self.mount.path.join(format!("filler-{n}"))
    }

    /// Fills the tmpfs but for [`FREE_AFTER_FILL_BYTES`], then produces
    /// until the first KAFKA_STORAGE_ERROR.
    fn fill_and_produce_until_full(&self, acked: &mut Acked) {
        let available = self.mount.available_bytes();
        write_filler(
            &self.filler(0),
            available.saturating_sub(FREE_AFTER_FILL_BYTES),
        );
        let fitted = produce_until_full(&self.b, acked);
        eprintln!("{fitted} produces were acknowledged before KAFKA_STORAGE_ERROR");
        assert!(
            fitted > 0,
            "no produce fitted in {FREE_AFTER_FILL_BYTES} bytes (log {})",
            self.log.display()
        );
    }

    /// Produces on a full disk: each fails the same way or, if a failed
    /// write left room, is acknowledged at the next offset; nothing else.
    fn produce_while_full(&self, acked: &mut Acked) {
        let mut c = self.b.client();
        for i in 0..PRODUCES_WHILE_FULL {
            let code = acked.produce(&mut c, i as u32 % PARTITIONS);
            assert!(
                code == ErrorCode::NONE || code == ErrorCode::KAFKA_STORAGE_ERROR,
                "produce {i} on a full disk: {code} (log {})",
                self.log.display()
            );
        }
    }

    /// Every partition takes a produce at its next offset.
    fn produce_to_each(&self, acked: &mut Acked, when: &str) {
        let mut c = self.b.client();
        for p in 0..PARTITIONS {
            let code = acked.produce(&mut c, p);
            assert_eq!(code, ErrorCode::NONE, "produce to {TOPIC}/{p} {when}");
        }
    }
}

fn acked_none() -> Acked {
    Acked {
        records: vec![Vec::new(); PARTITIONS as usize],
        batches: 0,
    }
}

#[test]
fn full_disk_fails_produce_with_storage_error_and_loses_nothing() {
    let Some(mut f) = Fixture::start() else {
        return;
    };
    let mut acked = acked_none();
    f.fill_and_produce_until_full(&mut acked);
    acked.verify(&f.b, "after the first storage error");
    f.produce_while_full(&mut acked);
    acked.verify(&f.b, "after produces on a full disk");

    // Space returns: the next produce gets exactly the log end offset from
    // before the failures (Acked::produce checks the base offset).
    std::fs::remove_file(f.filler(0)).expect("remove filler");
    f.produce_to_each(&mut acked, "once space returned");
    acked.verify(&f.b, "once space returned");

    let status = f.b.terminate();
    assert!(
        status.success(),
        "SIGTERM exit: {status:?} (log {})",
        f.log.display()
    );
    f.b.spawn();
    acked.verify(&f.b, "after a restart");
    f.produce_to_each(&mut acked, "after the restart");
    acked.verify(&f.b, "after a produce following the restart");
}

/// A stop (SIGTERM, whose index writes fail) and a crash (SIGKILL) on a
/// completely full disk; once space returns, the restart finds exactly the
/// acknowledged records. (Starting while still full is refused with a clear
/// message by the start-up check of the data directory: not tested here.)
#[test]
fn stop_or_crash_on_a_full_disk_loses_nothing_once_space_returns() {
    let Some(mut f) = Fixture::start() else {
        return;
    };
    let mut acked = acked_none();
    f.fill_and_produce_until_full(&mut acked);
    write_filler(&f.filler(1), TMPFS_BYTES); // not one block left
    f.produce_while_full(&mut acked);
    let status = f.b.terminate();
    // The final flush (indexes) cannot be written: the operator must hear
    // of it, so the broker exits non-zero (recovery repairs it at start).
    let log = std::fs::read_to_string(f.b.data_dir.with_extension("log")).unwrap_or_default();
    if log.contains("flushing on shutdown") {
        assert!(
            !status.success(),
            "a failed shutdown flush must not exit 0: {status:?}"
        );
    }
    for n in 0..2 {
        std::fs::remove_file(f.filler(n)).expect("remove filler");
    }
    f.b.spawn();
    acked.verify(&f.b, "after a stop on a full disk");
    f.produce_to_each(&mut acked, "after a stop on a full disk");

    write_filler(&f.filler(0), TMPFS_BYTES);
    f.produce_while_full(&mut acked);
    f.b.kill9();
    std::fs::remove_file(f.filler(0)).expect("remove filler");
    f.b.spawn();
    acked.verify(&f.b, "after a crash on a full disk");
    f.produce_to_each(&mut acked, "after a crash on a full disk");
    acked.verify(&f.b, "after a produce following the crash");
}
