//! The fixed-rate schedule, and how work is split between threads.
//!
//! Coordinated omission: a producer that waits for a slow acknowledgement
//! sends its next batch late, and timing from the actual send would hide
//! the wait. So at a fixed rate each batch has an intended send time from
//! the schedule, and its latency is counted from then. Flat out there is no
//! schedule, and the intended time is the actual send time.

use std::time::Duration;

/// When batches are due, for one thread.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Schedule {
    /// Send as soon as a request slot is free.
    FlatOut,
    /// This thread's records per second.
    Fixed { rate_per_s: f64 },
}

impl Schedule {
    /// One thread's share of `rate_total` records per second (0: flat out).
    #[must_use]
    pub fn for_thread(rate_total: f64, threads: u32) -> Schedule {
        if rate_total <= 0.0 {
            Schedule::FlatOut
        } else {
            Schedule::Fixed {
                rate_per_s: rate_total / f64::from(threads.max(1)),
            }
        }
    }

    /// How long after the start the record numbered `records_before` (this
    /// thread's count, from 0) is due; `None` flat out. A batch is due when
    /// its first record is.
    #[must_use]
    pub fn due_after(&self, records_before: u64) -> Option<Duration> {
        match *self {
            Schedule::FlatOut => None,
            Schedule::Fixed { rate_per_s } => {
                // f64 is exact to 2^53 records, far beyond any run.
                Some(Duration::from_secs_f64(records_before as f64 / rate_per_s))
            }
        }
    }

    /// Records in the next batch: at most `records_max` (what the batch's
    /// bytes and the run have room for), and at a fixed rate no more than
    /// `linger_ms` of the schedule, so a batch at a low rate is not a
    /// second's worth of records sent at once. Never 0.
    #[must_use]
    pub fn batch_records(&self, records_max: u64, linger_ms: f64) -> u64 {
        let records_max = records_max.max(1);
        match *self {
            Schedule::FlatOut => records_max,
            Schedule::Fixed { rate_per_s } => {
                let by_time = (rate_per_s * linger_ms / 1000.0).ceil();
                // Saturating float-to-int: huge rates give u64::MAX.
                records_max.min((by_time as u64).max(1))
            }
        }
    }
}

/// Thread `thread`'s share of `total` (the first `total % threads` threads
/// take one more).
#[must_use]
pub fn share(total: u64, thread: u32, threads: u32) -> u64 {
    let threads = u64::from(threads.max(1));
    let thread = u64::from(thread);
    total / threads + u64::from(thread < total % threads)
}

/// The partitions thread `thread` of `threads` serves, out of `partitions`:
/// every `threads`-th one, disjoint between threads. With more threads than
/// partitions, the extra threads share a partition with an earlier one
/// (producers only; consumers must stay disjoint and get none).
#[must_use]
pub fn partitions_of(thread: u32, threads: u32, partitions: u32, shared_ok: bool) -> Vec<u32> {
    if partitions == 0 {
        return Vec::new();
    }
    if thread >= partitions {
        return if shared_ok {
            vec![thread % partitions]
        } else {
            Vec::new()
        };
    }
    (thread..partitions)
        .step_by(threads.max(1) as usize)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_out_has_no_due_time() {
        let s = Schedule::for_thread(0.0, 4);
        assert_eq!(s, Schedule::FlatOut);
        assert_eq!(s.due_after(1_000), None);
        assert_eq!(s.batch_records(2_000, 1.0), 2_000);
    }

    #[test]
    fn fixed_rate_spaces_records_evenly() {
        // 50,000/s over 2 threads: 25,000/s each, one record every 40 us.
        let s = Schedule::for_thread(50_000.0, 2);
        assert_eq!(
            s,
            Schedule::Fixed {
                rate_per_s: 25_000.0
            }
        );
        assert_eq!(s.due_after(0), Some(Duration::ZERO));
        assert_eq!(s.due_after(1), Some(Duration::from_micros(40)));
        assert_eq!(s.due_after(25_000), Some(Duration::from_secs(1)));
        assert_eq!(s.due_after(250_000), Some(Duration::from_secs(10)));
    }

    #[test]
    fn fixed_rate_batches_hold_at_most_the_linger() {
        let s = Schedule::Fixed {
            rate_per_s: 50_000.0,
        };
        assert_eq!(s.batch_records(2_000, 1.0), 50);
        assert_eq!(s.batch_records(20, 1.0), 20, "records_max bounds first");
        let slow = Schedule::Fixed { rate_per_s: 10.0 };
        assert_eq!(slow.batch_records(2_000, 1.0), 1, "never empty");
        let huge = Schedule::Fixed { rate_per_s: 1e30 };
        assert_eq!(huge.batch_records(2_000, 1.0), 2_000);
        assert_eq!(s.batch_records(0, 1.0), 1);
    }

    #[test]
    fn shares_add_up() {
        let total: u64 = (0..3).map(|t| share(1_000_000, t, 3)).sum();
        assert_eq!(total, 1_000_000);
        assert_eq!(share(10, 0, 3), 4);
        assert_eq!(share(10, 2, 3), 3);
        assert_eq!(share(2, 2, 3), 0);
    }

    #[test]
    fn partitions_are_disjoint_and_complete() {
        let all: Vec<Vec<u32>> = (0..3).map(|t| partitions_of(t, 3, 8, false)).collect();
        assert_eq!(all, [vec![0, 3, 6], vec![1, 4, 7], vec![2, 5]]);
        assert_eq!(partitions_of(0, 1, 4, false), [0, 1, 2, 3]);
        assert_eq!(partitions_of(5, 6, 4, true), [1]);
        assert!(partitions_of(5, 6, 4, false).is_empty());
        assert!(partitions_of(0, 1, 0, true).is_empty());
    }
}
