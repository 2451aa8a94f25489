//! Section 3: CPU (utime + stime from `/proc/<pid>/stat`) and peak RSS (VmHWM from
//! `/proc/<pid>/status`) of each process, over a stretch of time.

use serde::Serialize;

use super::harness::now_ms;
use super::procs::{ProcSample, clock_ticks, sample};

/// What one process used over a stretch of time.
#[derive(Clone, Debug, Serialize)]
pub struct ProcUsage {
    /// The process (a service, nats-server, or this process).
    pub process: String,
    /// CPU time over wall time, percent of one core.
    pub cpu_percent: f64,
    /// VmHWM at the end of the stretch, MiB: the peak resident set since the process started.
    pub peak_rss_mib: f64,
    /// VmRSS at the end, MiB.
    pub rss_mib: f64,
}

/// Readings of every process at one time.
#[derive(Clone, Debug)]
pub struct Reading {
    at_ms: f64,
    samples: Vec<(String, Option<ProcSample>)>,
}

/// The processes sampled.
#[derive(Clone, Debug)]
pub struct Sampler {
    pids: Vec<(String, u32)>,
    ticks: u64,
}

impl Sampler {
    /// Samples these processes.
    pub fn new(pids: Vec<(String, u32)>) -> Sampler {
        Sampler {
            pids,
            ticks: clock_ticks(),
        }
    }

    /// Reads every process now.
    pub fn sample(&self) -> Reading {
        Reading {
            at_ms: now_ms(),
            samples: self
                .pids
                .iter()
                .map(|(n, p)| (n.clone(), sample(*p).ok()))
                .collect(),
        }
    }

    /// What each process used between two readings.
    pub fn usage(&self, before: &Reading, after: &Reading) -> Vec<ProcUsage> {
        let secs = ((after.at_ms - before.at_ms) / 1000.0).max(1e-3);
        before
            .samples
            .iter()
            .zip(&after.samples)
            .filter_map(|((name, b), (_, a))| {
                let (b, a) = ((*b)?, (*a)?);
                let cpu = a.cpu_ticks.saturating_sub(b.cpu_ticks) as f64 / self.ticks as f64;
                Some(ProcUsage {
                    process: name.clone(),
                    cpu_percent: 100.0 * cpu / secs,
                    peak_rss_mib: a.hwm_kib as f64 / 1024.0,
                    rss_mib: a.rss_kib as f64 / 1024.0,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_memory_and_uses_cpu() {
        let s = Sampler::new(vec![("me".into(), std::process::id())]);
        let before = s.sample();
        let mut x = 0u64;
        let until = std::time::Instant::now() + std::time::Duration::from_millis(300);
        while std::time::Instant::now() < until {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let after = s.sample();
        let u = s.usage(&before, &after);
        assert_eq!(u.len(), 1);
        assert!(u[0].peak_rss_mib > 0.0 && u[0].peak_rss_mib >= u[0].rss_mib * 0.99);
        assert!(u[0].cpu_percent > 10.0, "{:?}", u[0]);
    }
}
