//! Diagnostics per function: calls, errors, run time (mean and p99 over
//! the last [`SAMPLES`] calls), reads and writes per call, reruns per
//! call, and the share of commits refused for a conflict.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

/// Run times kept per function for the p99.
pub const SAMPLES: usize = 1024;

#[derive(Default)]
struct Counts {
    calls: u64,
    errors: u64,
    run_ns: u128,
    recent_us: VecDeque<u64>,
    reads: u64,
    writes: u64,
    reruns: u64,
    rejections: u64,
}

/// The diagnostics of every function called.
#[derive(Default)]
pub struct Stats {
    by_function: Mutex<HashMap<String, Counts>>,
}

/// One function's diagnostics (`GET /v1/functions`, `/metrics`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FunctionStats {
    /// The function.
    pub name: String,
    /// Calls answered (from a run, not from a stored outcome).
    pub calls: u64,
    /// Of those, calls that failed.
    pub errors: u64,
    /// Mean time from the first run to the commit decision, reruns
    /// included, in microseconds.
    pub mean_us: f64,
    /// 99th percentile of the same over the last 1,024 calls.
    pub p99_us: u64,
    /// Mean distinct paths read by the committed run.
    pub mean_reads: f64,
    /// Mean writes of the committed run.
    pub mean_writes: f64,
    /// Mean reruns per call (conflicts that made the runner run again).
    pub reruns_per_call: f64,
    /// Commits refused for a conflict, over commits tried.
    pub rejection_rate: f64,
}

/// One answered call, for [`Stats::record`].
pub struct Sample<'a> {
    /// The function.
    pub function: &'a str,
    /// First run to commit decision.
    pub time: Duration,
    /// Reads of the final run.
    pub reads: usize,
    /// Writes of the final run.
    pub writes: usize,
    /// Reruns.
    pub reruns: u32,
    /// Whether it failed.
    pub error: bool,
}

impl Stats {
    fn with(&self, function: &str, f: impl FnOnce(&mut Counts)) {
        let mut map = self.by_function.lock().unwrap_or_else(|p| p.into_inner());
        match map.get_mut(function) {
            Some(c) => f(c),
            None => f(map.entry(function.to_string()).or_default()),
        }
    }

    /// Records an answered call.
    pub fn record(&self, s: Sample<'_>) {
        self.with(s.function, |c| {
            c.calls += 1;
            c.errors += u64::from(s.error);
            c.run_ns += s.time.as_nanos();
            if c.recent_us.len() == SAMPLES {
                c.recent_us.pop_front();
            }
            c.recent_us
                .push_back(u64::try_from(s.time.as_micros()).unwrap_or(u64::MAX));
            c.reads += s.reads as u64;
            c.writes += s.writes as u64;
            c.reruns += u64::from(s.reruns);
        });
    }

    /// Records a commit refused for a conflict.
    pub fn rejected(&self, function: &str) {
        self.with(function, |c| c.rejections += 1);
    }

    /// Every function's diagnostics, by name.
    pub fn snapshot(&self) -> Vec<FunctionStats> {
        let map = self.by_function.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<FunctionStats> = map
            .iter()
            .map(|(name, c)| {
                let per_call = |n: u64| {
                    if c.calls == 0 {
                        0.0
                    } else {
                        n as f64 / c.calls as f64
                    }
                };
                let mut recent: Vec<u64> = c.recent_us.iter().copied().collect();
                recent.sort_unstable();
                let p99 = if recent.is_empty() {
                    0
                } else {
                    recent[(recent.len() * 99).div_ceil(100).saturating_sub(1)]
                };
                let tried = c.calls + c.rejections;
                FunctionStats {
                    name: name.clone(),
                    calls: c.calls,
                    errors: c.errors,
                    mean_us: if c.calls == 0 {
                        0.0
                    } else {
                        c.run_ns as f64 / 1000.0 / c.calls as f64
                    },
                    p99_us: p99,
                    mean_reads: per_call(c.reads),
                    mean_writes: per_call(c.writes),
                    reruns_per_call: per_call(c.reruns),
                    rejection_rate: if tried == 0 {
                        0.0
                    } else {
                        c.rejections as f64 / tried as f64
                    },
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn means_p99_and_rates() {
        let stats = Stats::default();
        for i in 1..=100u64 {
            stats.record(Sample {
                function: "f",
                time: Duration::from_micros(i),
                reads: 2,
                writes: 1,
                reruns: u32::from(i % 2 == 0),
                error: i == 100,
            });
        }
        for _ in 0..50 {
            stats.rejected("f");
        }
        let s = &stats.snapshot()[0];
        assert_eq!((s.calls, s.errors), (100, 1));
        assert!((s.mean_us - 50.5).abs() < 1e-9);
        assert_eq!(s.p99_us, 99);
        assert_eq!(
            (s.mean_reads, s.mean_writes, s.reruns_per_call),
            (2.0, 1.0, 0.5)
        );
        assert!((s.rejection_rate - 50.0 / 150.0).abs() < 1e-9);
    }
}
