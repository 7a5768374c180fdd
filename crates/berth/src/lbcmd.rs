//! `berth lb`: a load balancer node on an edge machine. It follows the cluster's ELB
//! state from any server (long-polling `GET /berth/lb/config`, failing over between the
//! servers given), checks target health itself and serves the listeners. It stores
//! nothing: a restart re-reads the state.

use std::time::Duration;

use anyhow::Context;
use berth_server::lb_runtime::{routing_config, LbSnapshot};
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;

#[derive(Args, Debug, Clone)]
pub struct LbArgs {
    /// API address(es) of the servers, e.g. 10.0.0.1:7700 (repeatable or comma-separated).
    #[arg(
        long = "server",
        env = "BERTH_SERVERS",
        value_delimiter = ',',
        required = true
    )]
    servers: Vec<String>,
    /// The cluster's join token (the servers' <data-dir>/join-token).
    #[arg(long, env = "BERTH_JOIN_TOKEN")]
    join_token: Option<String>,
    /// Address the listeners bind on.
    #[arg(long, env = "BERTH_LB_BIND", default_value = "0.0.0.0")]
    bind: std::net::IpAddr,
    /// Idle timeout for client and target connections (ALB: 60s).
    #[arg(long, env = "BERTH_LB_IDLE_TIMEOUT", default_value = "60s")]
    idle_timeout: String,
}

async fn fetch(server: &str, token: &str, after: Option<u64>) -> anyhow::Result<LbSnapshot> {
    let host = server
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let stream = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(&host),
    )
    .await
    .with_context(|| format!("connect to {host}: timed out"))?
    .with_context(|| format!("connect to {host}"))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let uri = match after {
        Some(a) => format!("/berth/lb/config?after={a}"),
        None => "/berth/lb/config".to_string(),
    };
    let req = Request::get(uri)
        .header("host", &host)
        .header("authorization", format!("Bearer {token}"))
        .body(Empty::<Bytes>::new())?;
    let resp = tokio::time::timeout(Duration::from_secs(40), send.send_request(req))
        .await
        .context("the server did not answer within 40 s")??;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        anyhow::bail!(
            "{host} answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(serde_json::from_slice(&body).context("decode the ELB state")?)
}

pub async fn run(args: LbArgs) -> anyhow::Result<()> {
    let idle = crate::config::parse_duration(&args.idle_timeout)
        .map_err(|e| anyhow::anyhow!("--idle-timeout: {e}"))?;
    let token = args.join_token.clone().unwrap_or_default();
    let lb = berth_lb::Lb::new(berth_lb::LbOptions {
        bind: args.bind,
        idle_timeout: idle,
        ..Default::default()
    });
    let mut current: Option<LbSnapshot> = None;
    let mut reported = std::collections::HashMap::new();
    let mut i = 0usize;
    let mut failures = 0u32;
    tracing::info!(servers = ?args.servers, bind = %args.bind, "berth lb: following the cluster's load balancers");
    loop {
        let server = &args.servers[i % args.servers.len()];
        let after = current.as_ref().map(|s| s.revision);
        let fetched = tokio::select! {
            r = fetch(server, &token, after) => r,
            _ = tokio::signal::ctrl_c() => break,
        };
        match fetched {
            Ok(s) if current.as_ref().is_some_and(|c| s.revision < c.revision) => {
                // A server that lags behind the one answered before: keep the newer
                // routes, ask again.
                tracing::debug!(
                    server,
                    revision = s.revision,
                    "berth lb: ignoring an older state"
                );
                i += 1;
            }
            Ok(s) => {
                if failures > 0 {
                    tracing::info!(server, "berth lb: following the cluster again");
                }
                failures = 0;
                let same = current.as_ref().map(|c| {
                    c.listeners == s.listeners
                        && c.rules == s.rules
                        && c.target_groups == s.target_groups
                        && c.targets == s.targets
                });
                if same != Some(true) || !reported.is_empty() {
                    berth_server::lb_runtime::apply_logged(&lb, routing_config(&s), &mut reported)
                        .await;
                    tracing::info!(
                        revision = s.revision,
                        listeners = s.listeners.len(),
                        targets = s.targets.len(),
                        "berth lb: routing updated"
                    );
                }
                current = Some(s);
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(server, error = %format!("{e:#}"), "berth lb: cannot read the cluster's state; keeps serving the last known routes and tries the next server");
                i += 1;
                let backoff = Duration::from_millis(200 * u64::from(failures.min(10)));
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = tokio::signal::ctrl_c() => break,
                }
            }
        }
    }
    lb.shutdown().await;
    Ok(())
}
