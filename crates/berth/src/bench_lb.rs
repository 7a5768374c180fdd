//! `berth bench lb`: the built-in load balancer against nginx and HAProxy.
use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct LbBenchArgs {}

pub async fn run(_args: LbBenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("bench lb: not implemented yet")
}
