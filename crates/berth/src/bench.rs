//! Whole-system benchmarks (filled in below).
use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum BenchCmd {
    /// RegisterTaskDefinition throughput and latency against real servers.
    Api,
}

pub async fn run(_what: BenchCmd) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
