use std::time::{Duration, Instant};

use tgb_fault_suite::invariant::check_invariants;
use tgb_fault_suite::workload::{Agents, Poison, publish_poison, raise_burst, spawn_agents};
use tgb_fault_suite::{Broker, Burst, Expected, FaultSystem, Options, Report, burst_size};

/// The burst size in CI when `TGB_FAULT_CASES` is not set (see the crate README for the
/// measured times at 2,000).
pub const DEFAULT_CASES: usize = 300;

/// How long a scenario may take to converge after its fault: `TGB_FAULT_CONVERGE_SECS`, else
/// 200 s, or a quarter second per case for bursts larger than 800.
pub fn converge_within(cases: usize) -> Duration {
    match std::env::var("TGB_FAULT_CONVERGE_SECS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        Some(secs) => Duration::from_secs(secs),
        None => Duration::from_millis(200_000.max(cases as u64 * 250)),
    }
}

/// A started scenario: the system, the burst raised, the agents answering, the poison sent.
pub struct Run {
    pub name: String,
    pub sys: FaultSystem,
    pub burst: Burst,
    pub expected: Expected,
    pub poison: Vec<Poison>,
    pub agents: Agents,
    pub started: Instant,
}

impl Run {
    /// Starts the system with `opts` and raises the burst in TG.
    pub async fn start(name: &str, opts: Options) -> Run {
        let (sys, burst) = Run::system(opts).await;
        Run::raise(name, sys, burst).await
    }

    /// The system started, and the burst it will get.
    pub async fn system(opts: Options) -> (FaultSystem, Burst) {
        Run::system_of(opts, DEFAULT_CASES).await
    }

    /// [`Run::system`] with another burst size when `TGB_FAULT_CASES` is not set.
    pub async fn system_of(opts: Options, default_cases: usize) -> (FaultSystem, Burst) {
        let t = Instant::now();
        let sys = FaultSystem::start(opts).await.expect("the system starts");
        println!("system started in {:.1} s", t.elapsed().as_secs_f64());
        (sys, Burst::of(burst_size(default_cases)))
    }

    /// Raises `burst` on a started system.
    pub async fn raise(name: &str, sys: FaultSystem, burst: Burst) -> Run {
        let started = Instant::now();
        let poison = publish_poison(&sys).await.expect("poison published");
        let expected = raise_burst(&sys, &burst).expect("burst raised");
        Run::running(name, sys, burst, expected, poison, started)
    }

    /// A burst the scenario raised itself; starts the agents on its notes.
    pub fn running(
        name: &str,
        sys: FaultSystem,
        burst: Burst,
        expected: Expected,
        poison: Vec<Poison>,
        started: Instant,
    ) -> Run {
        let agents = spawn_agents(&sys, expected.agent_notes.clone());
        Run {
            name: name.to_owned(),
            sys,
            burst,
            expected,
            poison,
            agents,
            started,
        }
    }

    /// The invariant check; prints the report, stops everything, fails on any loss,
    /// duplicate, echo or unexpected dead letter.
    pub async fn finish(mut self) -> Report {
        let report = check_invariants(
            &self.name,
            &mut self.sys,
            &self.expected,
            &self.poison,
            self.started,
            converge_within(self.burst.cases),
        )
        .await
        .expect("the check runs");
        self.agents
            .finish()
            .await
            .expect("the agents wrote every note");
        println!("{} cases\n{report}", self.burst.cases);
        if !report.is_clean() {
            for s in &self.sys.services {
                println!("--- {} (last lines)\n{}", s.label(), s.log_tail(15));
            }
            if let Broker::Cluster(cluster) = &self.sys.nats {
                for node in &cluster.nodes {
                    println!(
                        "--- nats-server {} (last warnings)\n{}",
                        node.name,
                        node.log_warnings(30)
                    );
                }
            }
        }
        self.sys.stop().await;
        assert!(report.is_clean(), "{report}");
        report
    }

    /// A share of the burst, at least 1.
    pub fn share(&self, num: usize, den: usize) -> u64 {
        ((self.burst.cases * num) / den).max(1) as u64
    }
}
