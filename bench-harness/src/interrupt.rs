//! What `compare` must undo if it is interrupted: the brokers it started and
//! a kernel setting it changed. On SIGINT, SIGTERM or SIGHUP a watcher thread
//! runs every cleanup still registered, newest first, then ends the process
//! with status 128 + the signal's number. A cleanup is unregistered when the
//! code that owns it has undone the change itself.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once, PoisonError};
use std::time::{Duration, Instant};

/// One thing to undo.
#[derive(Debug)]
pub enum Cleanup {
    /// Stop Apache Kafka with `SCRIPT stop --port PORT --dir DIR`, then
    /// delete DIR.
    StopKafka {
        script: PathBuf,
        port: u16,
        dir: PathBuf,
    },
    /// SIGTERM a broker process, wait up to 20 s for it to end, then delete
    /// its data directory.
    StopProcess { pid: u32, data_dir: PathBuf },
    /// Write a setting's old value back, then delete `journal` (where the
    /// old value was noted for a later run, should this one be killed).
    Restore {
        path: PathBuf,
        value: String,
        journal: Option<PathBuf>,
    },
}

impl Cleanup {
    /// Undoes it now (also what the owners call when they undo it
    /// themselves, so both ways do the same).
    pub fn run(self) {
        match self {
            Cleanup::StopKafka { script, port, dir } => {
                let _ = Command::new(&script)
                    .args(["stop", "--port", &port.to_string(), "--dir"])
                    .arg(&dir)
                    .stdin(Stdio::null())
                    .status();
                let _ = std::fs::remove_dir_all(&dir);
            }
            Cleanup::StopProcess { pid, data_dir } => {
                if let Ok(pid) = libc::pid_t::try_from(pid) {
                    // SAFETY: kill(2) with a pid this process started.
                    unsafe { libc::kill(pid, libc::SIGTERM) };
                }
                let deadline = Instant::now() + Duration::from_secs(20);
                while alive(pid) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = std::fs::remove_dir_all(&data_dir);
            }
            Cleanup::Restore {
                path,
                value,
                journal,
            } => match std::fs::write(&path, &value) {
                Ok(()) => {
                    if let Some(journal) = journal {
                        let _ = std::fs::remove_file(journal);
                    }
                }
                // The journal stays, so the next run puts it back.
                Err(e) => eprintln!("could not put {} back to {value}: {e}", path.display()),
            },
        }
    }
}

/// Whether `pid` still runs: it has a `/proc` entry that is not a zombie
/// (an exited child nobody has waited for).
pub(crate) fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state follows the command name's closing parenthesis.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        !matches!(state, Some('Z' | 'X') | None)
    })
}

/// Cleanups registered and not yet undone by their owners.
#[derive(Debug, Default)]
pub struct Cleanups {
    pending: Mutex<Vec<(u64, Cleanup)>>,
    next: AtomicU64,
}

impl Cleanups {
    pub const fn new() -> Self {
        Self {
            pending: Mutex::new(Vec::new()),
            next: AtomicU64::new(0),
        }
    }

    fn add(&self, cleanup: Cleanup) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().push((id, cleanup));
        id
    }

    fn remove(&self, id: u64) {
        self.lock().retain(|(i, _)| *i != id);
    }

    /// Runs every pending cleanup, newest first; how many ran.
    pub fn run_all(&self) -> usize {
        let pending = std::mem::take(&mut *self.lock());
        let n = pending.len();
        for (_, cleanup) in pending.into_iter().rev() {
            cleanup.run();
        }
        n
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(u64, Cleanup)>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A cleanup in `cleanups`, taken off it when this is dropped.
pub struct Registered<'a> {
    cleanups: &'a Cleanups,
    id: u64,
}

impl Registered<'_> {
    pub fn new(cleanups: &Cleanups, cleanup: Cleanup) -> Registered<'_> {
        let id = cleanups.add(cleanup);
        Registered { cleanups, id }
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.cleanups.remove(self.id);
    }
}

static PROCESS: Cleanups = Cleanups::new();
static WATCH: Once = Once::new();

/// Registers `cleanup` to run if this process is interrupted before the
/// returned guard is dropped, starting the signal watcher the first time.
pub fn on_interrupt(cleanup: Cleanup) -> Registered<'static> {
    WATCH.call_once(|| {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        match signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) {
            Ok(mut signals) => {
                std::thread::spawn(move || {
                    if let Some(signal) = signals.forever().next() {
                        eprintln!("interrupted: stopping what this run started");
                        PROCESS.run_all();
                        std::process::exit(128 + signal);
                    }
                });
            }
            Err(e) => eprintln!(
                "cannot watch for signals ({e}): an interrupted run leaves its brokers running"
            ),
        }
    });
    Registered::new(&PROCESS, cleanup)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_cleanups_run_newest_first_and_dropped_ones_not_at_all() {
        let dir = tempfile::tempdir().expect("tempdir");
        let setting = dir.path().join("setting");
        let skipped = dir.path().join("skipped");
        std::fs::write(&setting, "changed").expect("write");
        let cleanups = Cleanups::new();
        let restore = |path: &PathBuf, value: &str| Cleanup::Restore {
            path: path.clone(),
            value: value.to_owned(),
            journal: None,
        };
        // Both restore the same setting: the older one must win, running last.
        let _older = Registered::new(&cleanups, restore(&setting, "original"));
        let _newer = Registered::new(&cleanups, restore(&setting, "intermediate"));
        drop(Registered::new(
            &cleanups,
            restore(&skipped, "undone already"),
        ));
        assert_eq!(cleanups.run_all(), 2);
        assert_eq!(std::fs::read_to_string(&setting).expect("read"), "original");
        assert!(!skipped.exists());
        // Nothing runs twice.
        assert_eq!(cleanups.run_all(), 0);
    }

    #[test]
    fn stopping_a_process_ends_it_and_deletes_its_data() {
        let data = tempfile::tempdir().expect("tempdir").keep();
        std::fs::write(data.join("segment"), b"bytes").expect("write");
        let mut child = Command::new("sleep").arg("30").spawn().expect("sleep");
        let cleanups = Cleanups::new();
        let _guard = Registered::new(
            &cleanups,
            Cleanup::StopProcess {
                pid: child.id(),
                data_dir: data.clone(),
            },
        );
        let started = Instant::now();
        assert_eq!(cleanups.run_all(), 1);
        let status = child.wait().expect("wait");
        assert!(!status.success(), "{status:?}");
        assert!(started.elapsed() < Duration::from_secs(20));
        assert!(!data.exists());
    }
}
