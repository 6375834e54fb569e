//! What `compare` must undo if it is interrupted: the brokers it started and
//! a kernel setting it changed. On SIGINT, SIGTERM or SIGHUP a watcher thread
//! runs every cleanup still registered, newest first, then ends the process
//! with status 128 + the signal's number. A cleanup is unregistered when the
//! code that owns it has undone the change itself.
//!
//! A run killed outright (SIGKILL, a session that ends) runs no handler, so
//! each registered cleanup is also noted in a journal file
//! (`$TMPDIR/sluice-bench-cleanups/PID-N`, one line) until it is undone, and
//! the next `compare` runs what a dead run left there ([`recover`]) before
//! it starts anything: a Kafka left running would otherwise share the CPUs
//! with the next run's brokers, unseen.

use std::path::{Path, PathBuf};
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
    /// Write a setting's old value back.
    Restore { path: PathBuf, value: String },
    /// Remove a directory if it is empty (a memory cgroup once its
    /// processes are gone).
    RemoveEmptyDir { dir: PathBuf },
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
            Cleanup::Restore { path, value } => {
                if let Err(e) = std::fs::write(&path, &value) {
                    eprintln!("could not put {} back to {value}: {e}", path.display());
                }
            }
            Cleanup::RemoveEmptyDir { dir } => {
                let _ = std::fs::remove_dir(&dir);
            }
        }
    }

    /// One journal line; `None` when a path holds a tab or a line break
    /// (such a cleanup is not journaled).
    fn to_line(&self) -> Option<String> {
        let path = |p: &Path| {
            let s = p.to_str()?;
            (!s.contains(['\t', '\n'])).then(|| s.to_owned())
        };
        Some(match self {
            Cleanup::StopKafka { script, port, dir } => {
                format!("stop-kafka\t{}\t{port}\t{}", path(script)?, path(dir)?)
            }
            Cleanup::StopProcess { pid, data_dir } => {
                format!("stop-process\t{pid}\t{}", path(data_dir)?)
            }
            Cleanup::Restore { path: p, value } => {
                if value.contains(['\t', '\n']) {
                    return None;
                }
                format!("restore\t{}\t{value}", path(p)?)
            }
            Cleanup::RemoveEmptyDir { dir } => format!("remove-empty-dir\t{}", path(dir)?),
        })
    }

    fn from_line(line: &str) -> Option<Cleanup> {
        let fields: Vec<&str> = line.trim_end_matches('\n').split('\t').collect();
        match fields.as_slice() {
            ["stop-kafka", script, port, dir] => Some(Cleanup::StopKafka {
                script: script.into(),
                port: port.parse().ok()?,
                dir: dir.into(),
            }),
            ["stop-process", pid, data_dir] => Some(Cleanup::StopProcess {
                pid: pid.parse().ok()?,
                data_dir: data_dir.into(),
            }),
            ["restore", path, value] => Some(Cleanup::Restore {
                path: path.into(),
                value: (*value).to_owned(),
            }),
            ["remove-empty-dir", dir] => Some(Cleanup::RemoveEmptyDir { dir: dir.into() }),
            _ => None,
        }
    }

    /// Runs a cleanup a dead run journaled. A process is signalled only
    /// while its command line still names its data directory: after a
    /// reboot its pid may belong to another program (Kafka's pid is the
    /// one `kafka.pid` in its directory holds).
    fn recover(self) {
        let (pid, dir) = match &self {
            Cleanup::StopProcess { pid, data_dir } => (Some(*pid), data_dir),
            Cleanup::StopKafka { dir, .. } => {
                let pid = std::fs::read_to_string(dir.join("kafka.pid"))
                    .ok()
                    .and_then(|p| p.trim().parse().ok());
                (pid, dir)
            }
            Cleanup::Restore { .. } | Cleanup::RemoveEmptyDir { .. } => return self.run(),
        };
        if pid.is_some_and(|pid| names(pid, dir)) {
            self.run();
        } else {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    fn describe(&self) -> String {
        match self {
            Cleanup::StopKafka { port, dir, .. } => {
                format!("stopped Kafka on port {port} and deleted {}", dir.display())
            }
            Cleanup::StopProcess { pid, data_dir } => {
                format!("stopped process {pid} and deleted {}", data_dir.display())
            }
            Cleanup::Restore { path, value } => format!("put {} back to {value}", path.display()),
            Cleanup::RemoveEmptyDir { dir } => format!("removed {} if empty", dir.display()),
        }
    }
}

/// The journal of cleanups not yet undone (see the module's docs).
pub fn journal_dir() -> PathBuf {
    std::env::temp_dir().join("sluice-bench-cleanups")
}

/// Runs the cleanups journaled in `dir` by runs that are gone, oldest
/// first, and deletes their entries; describes what it did. Entries of a
/// live `sluice-bench` (another compare running now) are left alone, and so
/// are lines this tool did not write (deleted).
pub fn recover(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut stale: Vec<(u32, u64, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let (owner, n) = name.split_once('-')?;
            Some((owner.parse().ok()?, n.parse().ok()?, e.path()))
        })
        .filter(|&(owner, _, _)| !live_compare(owner))
        .collect();
    stale.sort_by_key(|&(owner, n, _)| (owner, n));
    let mut done = Vec::new();
    // Newest first, as an interrupt runs them: a setting restored twice
    // ends at its oldest value.
    for (_, _, path) in stale.into_iter().rev() {
        let line = std::fs::read_to_string(&path).unwrap_or_default();
        if let Some(cleanup) = Cleanup::from_line(&line) {
            done.push(cleanup.describe());
            cleanup.recover();
        }
        let _ = std::fs::remove_file(&path);
    }
    done
}

/// Whether process `pid` runs with `dir` in one of its arguments.
fn names(pid: u32, dir: &Path) -> bool {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    dir.to_str().is_some_and(|d| {
        cmdline
            .split(|&b| b == 0)
            .any(|arg| String::from_utf8_lossy(arg).contains(d))
    })
}

/// Whether `pid` is another `sluice-bench` process still running.
fn live_compare(pid: u32) -> bool {
    pid != std::process::id()
        && alive(pid)
        && std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|comm| comm.trim() == "sluice-bench")
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
    /// Where pending cleanups are noted for a run after a kill.
    journal: Option<PathBuf>,
}

impl Cleanups {
    /// Cleanups kept in memory only.
    pub const fn new() -> Self {
        Self {
            pending: Mutex::new(Vec::new()),
            next: AtomicU64::new(0),
            journal: None,
        }
    }

    /// Cleanups also noted in `dir` while they are pending.
    pub fn journaled(dir: PathBuf) -> Self {
        Self {
            journal: Some(dir),
            ..Self::new()
        }
    }

    fn entry(&self, id: u64) -> Option<PathBuf> {
        let dir = self.journal.as_ref()?;
        Some(dir.join(format!("{}-{id}", std::process::id())))
    }

    fn add(&self, cleanup: Cleanup) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        if let (Some(entry), Some(line)) = (self.entry(id), cleanup.to_line()) {
            let noted = entry
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::write(&entry, line + "\n"));
            if let Err(e) = noted {
                eprintln!(
                    "cannot note a cleanup in {} ({e}): if this run is killed, undo it by hand",
                    entry.display()
                );
            }
        }
        self.lock().push((id, cleanup));
        id
    }

    fn remove(&self, id: u64) {
        self.lock().retain(|(i, _)| *i != id);
        if let Some(entry) = self.entry(id) {
            let _ = std::fs::remove_file(entry);
        }
    }

    /// Runs every pending cleanup, newest first; how many ran.
    pub fn run_all(&self) -> usize {
        let pending = std::mem::take(&mut *self.lock());
        let n = pending.len();
        for (id, cleanup) in pending.into_iter().rev() {
            cleanup.run();
            if let Some(entry) = self.entry(id) {
                let _ = std::fs::remove_file(entry);
            }
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

static PROCESS: std::sync::LazyLock<Cleanups> =
    std::sync::LazyLock::new(|| Cleanups::journaled(journal_dir()));
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
    fn pending_cleanups_are_journaled_until_undone() {
        let journal = tempfile::tempdir().expect("tempdir");
        let setting = journal.path().join("setting");
        let cleanups = Cleanups::journaled(journal.path().join("j"));
        let restore = Cleanup::Restore {
            path: setting.clone(),
            value: "9".to_owned(),
        };
        let entries = || {
            std::fs::read_dir(journal.path().join("j"))
                .map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
                .unwrap_or_default()
        };
        let guard = Registered::new(&cleanups, restore);
        let noted = entries();
        assert_eq!(noted.len(), 1);
        assert_eq!(
            std::fs::read_to_string(&noted[0]).expect("entry"),
            format!("restore\t{}\t9\n", setting.display())
        );
        drop(guard);
        assert!(entries().is_empty(), "undone by its owner: no entry left");
        // A process already gone: nothing is signalled.
        let mut gone = Command::new("true").spawn().expect("true");
        gone.wait().expect("wait");
        let _pending = Registered::new(
            &cleanups,
            Cleanup::StopProcess {
                pid: gone.id(),
                data_dir: journal.path().join("data"),
            },
        );
        assert_eq!(entries().len(), 1);
        assert_eq!(cleanups.run_all(), 1);
        assert!(entries().is_empty(), "run on interrupt: no entry left");
        // Every kind reads back as it was written.
        for c in [
            Cleanup::StopKafka {
                script: "/r/scripts/kafka-peer.sh".into(),
                port: 9092,
                dir: "/tmp/k".into(),
            },
            Cleanup::StopProcess {
                pid: 42,
                data_dir: "/tmp/s".into(),
            },
            Cleanup::Restore {
                path: "/sys/x".into(),
                value: "10".into(),
            },
            Cleanup::RemoveEmptyDir {
                dir: "/sys/fs/cgroup/memory/sluice-bench-1".into(),
            },
        ] {
            let line = c.to_line().expect("a line");
            let back = Cleanup::from_line(&line).expect("parsed");
            assert_eq!(format!("{back:?}"), format!("{c:?}"));
        }
        assert!(Cleanup::from_line("stop-process\tnot-a-pid\t/x").is_none());
        let odd = Cleanup::Restore {
            path: "/a\tb".into(),
            value: "1".into(),
        };
        assert!(
            odd.to_line().is_none(),
            "a path with a tab is not journaled"
        );
    }

    #[test]
    fn what_a_killed_run_left_is_undone_by_the_next() {
        let root = tempfile::tempdir().expect("tempdir");
        let journal = root.path().join("journal");
        let setting = root.path().join("setting");
        std::fs::write(&setting, "10").expect("write");
        // A broker whose command line names its data directory, and a
        // process at a recorded pid that does not (the pid reused).
        let ours = root.path().join("ours");
        std::fs::create_dir(&ours).expect("mkdir");
        let mut broker = Command::new("python3")
            .args(["-c", "import time; time.sleep(30)"])
            .arg(&ours)
            .spawn()
            .expect("python3");
        let reused = root.path().join("reused");
        std::fs::create_dir(&reused).expect("mkdir");
        let mut stranger = Command::new("sleep").arg("30").spawn().expect("sleep");
        let empty = root.path().join("cgroup");
        std::fs::create_dir(&empty).expect("mkdir");
        {
            // The killed run: its cleanups noted and never undone.
            let run = Cleanups::journaled(journal.clone());
            for c in [
                Cleanup::Restore {
                    path: setting.clone(),
                    value: "9".into(),
                },
                Cleanup::StopProcess {
                    pid: broker.id(),
                    data_dir: ours.clone(),
                },
                Cleanup::StopProcess {
                    pid: stranger.id(),
                    data_dir: reused.clone(),
                },
                Cleanup::RemoveEmptyDir { dir: empty.clone() },
            ] {
                std::mem::forget(Registered::new(&run, c));
            }
            std::fs::write(journal.join("junk-entry"), "not ours").expect("write");
            std::fs::write(journal.join("7-7"), "garbage line").expect("write");
        }
        // The next run: this process is not a live `sluice-bench`, so what
        // it noted counts as left by a dead run.
        let done = recover(&journal);
        assert_eq!(done.len(), 4, "{done:?}");
        assert!(!empty.exists());
        assert_eq!(std::fs::read_to_string(&setting).expect("read"), "9");
        let status = broker.wait().expect("wait");
        assert!(!status.success(), "the broker was stopped: {status:?}");
        assert!(!ours.exists() && !reused.exists());
        assert!(
            matches!(stranger.try_wait(), Ok(None)),
            "a process that is not the broker is left alone"
        );
        let _ = stranger.kill();
        let _ = stranger.wait();
        let left: Vec<_> = std::fs::read_dir(&journal)
            .expect("journal")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(
            left,
            ["junk-entry"],
            "entries recovered or unreadable are gone"
        );
        assert!(recover(&journal).is_empty(), "nothing runs twice");
        assert!(recover(&root.path().join("absent")).is_empty());
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
