//! The generator's threads: one per core (`--threads`, by default as many
//! as the CPUs this process may run on), each running its share of the
//! producers and consumers as tasks. A thread steps every task (sends what
//! is due, asks for more records), then waits in one `ppoll` on all its
//! tasks' connections that have answers to come, until the first answer or
//! the earliest time a task asked to be stepped again; each answer is read
//! and timed as it arrives. So a run with hundreds of connections and
//! partitions costs a few threads, not one per client, and
//! `generator cpu` in the report shows when the generator itself is the
//! bottleneck.

use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use crate::consume;
use crate::error::BenchError;
use crate::produce;

/// The longest a thread waits before it steps its tasks again.
const STEP_AT_LEAST_EVERY: Duration = Duration::from_millis(100);

/// What a task wants after a step.
pub enum Step {
    /// Finished: take its outcome.
    Done,
    /// Step it again by this time, or when one of its connections is
    /// readable.
    Until(Instant),
}

/// A producer or a consumer.
pub enum Task<'a> {
    Produce(produce::Task<'a>),
    Consume(consume::Task<'a>),
}

/// What a task measured.
pub enum Outcome {
    Produce(produce::Outcome),
    Consume(consume::Outcome),
}

impl Task<'_> {
    fn step(&mut self) -> Result<Step, BenchError> {
        match self {
            Task::Produce(t) => t.step(),
            Task::Consume(t) => t.step(),
        }
    }

    fn watched(&self, out: &mut Vec<(usize, RawFd)>) {
        match self {
            Task::Produce(t) => t.watched(out),
            Task::Consume(t) => t.watched(out),
        }
    }

    fn readable(&mut self, c: usize) -> Result<(), BenchError> {
        match self {
            Task::Produce(t) => t.readable(c),
            Task::Consume(t) => t.readable(c),
        }
    }

    fn finish(self) -> Result<Outcome, BenchError> {
        Ok(match self {
            Task::Produce(t) => Outcome::Produce(t.finish()),
            Task::Consume(t) => Outcome::Consume(t.finish()?),
        })
    }
}

/// How many generator threads: `threads`, or with 0 the CPUs this process
/// may run on; never more than there are tasks.
#[must_use]
pub fn thread_count(threads: u32, tasks: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let wanted = if threads == 0 {
        cores
    } else {
        threads as usize
    };
    wanted.clamp(1, tasks.max(1))
}

/// Deals `tasks` out to `threads` threads in turn: task i to thread
/// i mod threads.
#[must_use]
pub fn deal<T>(tasks: Vec<T>, threads: usize) -> Vec<Vec<T>> {
    let mut dealt: Vec<Vec<T>> = (0..threads.max(1)).map(|_| Vec::new()).collect();
    let n = dealt.len();
    for (i, task) in tasks.into_iter().enumerate() {
        dealt[i % n].push(task);
    }
    dealt
}

/// Runs `tasks` on this thread until every one is done; their outcomes, in
/// the order they finished. The first error ends the thread's run.
pub fn run(tasks: Vec<Task<'_>>) -> Result<Vec<Outcome>, BenchError> {
    let mut live: Vec<Option<Task<'_>>> = tasks.into_iter().map(Some).collect();
    let mut outcomes = Vec::with_capacity(live.len());
    let mut watched: Vec<(usize, RawFd)> = Vec::new();
    // (task, connection) of each descriptor polled.
    let mut owners: Vec<(usize, usize)> = Vec::new();
    let mut fds: Vec<RawFd> = Vec::new();
    loop {
        let mut wake = Instant::now() + STEP_AT_LEAST_EVERY;
        for slot in &mut live {
            let Some(task) = slot else { continue };
            match task.step()? {
                Step::Done => {
                    if let Some(task) = slot.take() {
                        outcomes.push(task.finish()?);
                    }
                }
                Step::Until(at) => wake = wake.min(at),
            }
        }
        if live.iter().all(Option::is_none) {
            return Ok(outcomes);
        }
        owners.clear();
        fds.clear();
        for (t, task) in live.iter().enumerate() {
            let Some(task) = task else { continue };
            watched.clear();
            task.watched(&mut watched);
            for &(c, fd) in &watched {
                owners.push((t, c));
                fds.push(fd);
            }
        }
        let timeout = wake.saturating_duration_since(Instant::now());
        for i in crate::conn::wait_readable(&fds, timeout)? {
            let (t, c) = owners[i];
            if let Some(task) = live[t].as_mut() {
                task.readable(c)?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_are_dealt_in_turn_and_threads_never_outnumber_them() {
        let dealt = deal((0..5).collect(), 2);
        assert_eq!(dealt, vec![vec![0, 2, 4], vec![1, 3]]);
        assert_eq!(deal((0..2).collect::<Vec<u32>>(), 4).len(), 4);
        assert_eq!(thread_count(4, 2), 2, "no idle threads");
        assert_eq!(thread_count(3, 10), 3);
        assert_eq!(thread_count(0, 0), 1);
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        assert_eq!(thread_count(0, 1000), cores, "one per core by default");
    }
}
