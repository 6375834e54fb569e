//! Start-up checks of the environment. Each failure is one clear message
//! saying what to change, and the broker exits non-zero before any shard runs.

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

/// Bytes of locked memory one shard needs beyond its registered I/O memory
/// (its io_uring rings).
const RING_LOCKED_BYTES_PER_SHARD: u64 = 2 * 1024 * 1024;

/// io_uring must be usable: not disabled by sysctl nor blocked by seccomp.
pub fn check_io_uring() -> Result<(), String> {
    if let Ok(v) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        if v.trim() == "2" {
            return Err(
                "io_uring is disabled on this host (kernel.io_uring_disabled = 2). \
                Sluice does all its I/O through io_uring: run \
                `sysctl -w kernel.io_uring_disabled=0` (as root) and start again."
                    .into(),
            );
        }
    }
    match io_uring::IoUring::new(8) {
        Ok(_) => Ok(()),
        Err(e) => {
            let why = match e.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => {
                    "the kernel refused io_uring_setup: a seccomp profile (Docker's and \
                     Podman's default block io_uring) or kernel.io_uring_disabled = 1 for \
                     this user. Run the container with a seccomp profile that allows \
                     io_uring_setup, io_uring_enter and io_uring_register, or set \
                     kernel.io_uring_disabled=0"
                }
                Some(libc::ENOSYS) => "this kernel has no io_uring (Linux 5.8 or newer is needed)",
                Some(libc::ENOMEM) => "not enough locked memory for an io_uring ring: raise the memlock limit (ulimit -l)",
                _ => "io_uring_setup failed",
            };
            Err(format!("io_uring is unavailable: {why} ({e})"))
        }
    }
}

/// Locked memory must cover every shard's registered buffers and rings. Raises
/// the soft limit up to the hard one when that is enough.
pub fn check_memlock(shards: u32, io_memory_bytes: usize) -> Result<(), String> {
    let needed = u64::from(shards) * (io_memory_bytes as u64 + RING_LOCKED_BYTES_PER_SHARD);
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0 {
        return Ok(());
    }
    if lim.rlim_cur == libc::RLIM_INFINITY || lim.rlim_cur >= needed {
        return Ok(());
    }
    if lim.rlim_max == libc::RLIM_INFINITY || lim.rlim_max >= needed {
        let raised = libc::rlimit {
            rlim_cur: needed,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raised) } == 0 {
            return Ok(());
        }
    }
    if has_ipc_lock() {
        return Ok(());
    }
    Err(format!(
        "the locked-memory limit is too low: {} KiB, and {shards} shards need {} KiB \
         (io_memory_bytes per shard plus its rings). Raise it with `ulimit -l {}` \
         (or LimitMEMLOCK= in a systemd unit, --ulimit memlock= for Docker), or lower \
         --shards / broker.io_memory_bytes.",
        lim.rlim_cur / 1024,
        needed / 1024,
        needed.div_ceil(1024)
    ))
}

/// Whether the process holds CAP_IPC_LOCK (locked memory is then unlimited).
fn has_ipc_lock() -> bool {
    const CAP_IPC_LOCK: u32 = 14;
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

/// The data directory must exist (or be creatable) and be writable; it is
/// locked so two brokers never share it. The returned file holds the lock.
pub fn check_data_dir(dir: &Path) -> Result<File, String> {
    let hint = "point --data-dir (or broker.data_dir) at a writable directory";
    std::fs::create_dir_all(dir.join("topics"))
        .map_err(|e| format!("data directory {} is unusable: {e}; {hint}", dir.display()))?;
    let probe = dir.join(".write-probe");
    std::fs::write(&probe, b"probe").map_err(|e| {
        format!(
            "data directory {} is not writable: {e}; {hint}",
            dir.display()
        )
    })?;
    let _ = std::fs::remove_file(&probe);
    let lock_path = dir.join(".lock");
    let lock = File::create(&lock_path)
        .map_err(|e| format!("cannot create {}: {e}; {hint}", lock_path.display()))?;
    // SAFETY: flock on a file descriptor we own.
    let rc = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&lock),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    };
    if rc != 0 {
        return Err(format!(
            "data directory {} is in use by another Sluice process; stop it or choose \
             another --data-dir",
            dir.display()
        ));
    }
    Ok(lock)
}

/// How long a listener may linger after its process exited.
const LISTENER_LINGER_MS: u64 = 3000;

/// Nothing may already listen on our addresses. A connection attempt tells:
/// another Sluice would share a port with ours silently (SO_REUSEPORT), and
/// a plain bind probe would be fooled by the lingering connections of a
/// broker that just stopped. Binds that still fail are reported by the shard.
///
/// A broker that has just exited can still be listening for a moment: the
/// kernel tears its io_uring instances down asynchronously, and an accept
/// still queued on a ring keeps its listening socket open until then. So a
/// listener must persist for `LISTENER_LINGER_MS` before it counts as taken.
pub fn check_addresses_free(addrs: &[(SocketAddr, &str)]) -> Result<(), String> {
    for (addr, what) in addrs {
        let mut target = *addr;
        if target.ip().is_unspecified() {
            target.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let started = std::time::Instant::now();
        let mut taken = listening(&target);
        while taken && started.elapsed() < Duration::from_millis(LISTENER_LINGER_MS) {
            std::thread::sleep(Duration::from_millis(50));
            taken = listening(&target);
        }
        if taken {
            return Err(format!(
                "cannot listen on {addr} ({what}): another process (another broker?) is \
                 listening there. Stop it, or choose another address with --native-addr or \
                 broker.native_shard_port_base."
            ));
        }
    }
    Ok(())
}

fn listening(addr: &SocketAddr) -> bool {
    TcpStream::connect_timeout(addr, Duration::from_millis(500)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_address_and_a_locked_data_dir_are_reported() {
        let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = busy.local_addr().expect("addr");
        let err = check_addresses_free(&[(addr, "native")]).expect_err("in use");
        assert!(err.contains("cannot listen"), "{err}");

        let dir = tempfile::tempdir().expect("tempdir");
        let lock = check_data_dir(dir.path()).expect("usable");
        let err = check_data_dir(dir.path()).expect_err("locked");
        assert!(err.contains("in use"), "{err}");
        drop(lock);
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").expect("write");
        let err = check_data_dir(&file.join("sub")).expect_err("not a directory");
        assert!(err.contains("unusable"), "{err}");
    }
}
