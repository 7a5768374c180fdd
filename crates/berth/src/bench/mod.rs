//! Whole-system benchmarks (`berth bench …`) and the simulated agents they drive.
//!
//! * [`api`]: the Raft write path through the signed ECS API, against etcd.
//! * [`tasks`]: task start through a real agent and containerd, against `ctr run`.
//! * [`scheduler`]: placement, and delivery to [`simagent`]s at scale.
//! * [`lb`]: the load balancer against nginx and HAProxy.
//!
//! [`harness`] holds what they share: free ports, child processes killed on drop,
//! signed requests, waiting for a cluster, percentiles.

pub mod api;
pub mod harness;
pub mod lb;
pub mod scheduler;
pub mod simagent;
pub mod tasks;

use std::time::Duration;

use anyhow::bail;
use clap::Subcommand;

use api::{api, ApiBenchArgs};

#[derive(Subcommand, Debug)]
pub enum BenchCmd {
    /// RegisterTaskDefinition throughput and latency against real servers,
    /// with etcd (if installed) measured in the same run as the peer.
    Api(ApiBenchArgs),
    /// RunTask -> RUNNING latency on this machine's containerd against `ctr run -d`, and
    /// the agent's memory.
    Tasks(tasks::TasksBenchArgs),
    /// Placement throughput of the pure scheduler (10,000 instances, 1,000,000 tasks) against
    /// a naive sort-per-task, then services placed, committed through Raft on 3 servers and
    /// run by simulated agents speaking the real agent protocol.
    Scheduler(scheduler::SchedBenchArgs),
    /// The built-in load balancer under wrk against nginx and HAProxy (same backends,
    /// same worker count), and how fast targets join and leave.
    Lb(lb::LbBenchArgs),
}

pub async fn run(what: BenchCmd) -> anyhow::Result<()> {
    match what {
        BenchCmd::Tasks(args) => tasks::run(args).await,
        BenchCmd::Scheduler(args) => scheduler::run(args).await,
        BenchCmd::Lb(args) => lb::run(args).await,
        BenchCmd::Api(args) => {
            let secs = args.deadline_secs;
            // Dropping `api(..)` (deadline or ctrl-c) kills every child
            // (kill_on_drop) and removes the temp dir (TempDir's drop).
            tokio::select! {
                r = tokio::time::timeout(Duration::from_secs(secs), api(args)) => match r {
                    Ok(r) => r,
                    Err(_) => bail!("bench api: hard deadline of {secs} s passed; servers killed, temp dir removed"),
                },
                _ = tokio::signal::ctrl_c() => bail!("bench api: interrupted; servers killed, temp dir removed"),
            }
        }
    }
}

// ------------------------------------------------------------------ figures
