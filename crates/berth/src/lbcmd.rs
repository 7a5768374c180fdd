//! `berth lb`: a load balancer node on an edge machine. It follows the cluster's ELB
//! state from any server (long-polling `GET /berth/lb/config`, failing over between the
//! servers given), checks target health itself and serves the listeners. It reports the
//! draining targets it has nothing in flight to (`POST /berth/lb/report`), so drains
//! end early without cutting its requests. It stores nothing: a restart re-reads the
//! state (and is a new node).

use std::time::Duration;

use anyhow::Context;
use berth_server::lb_runtime::{drain_report_loop, routing_config, LbSnapshot, REGISTER_WAIT};
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
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
    /// Idle timeout of pooled target connections (client connections follow their load
    /// balancer's `idle_timeout.timeout_seconds` attribute).
    #[arg(long, env = "BERTH_LB_IDLE_TIMEOUT", default_value = "60s")]
    idle_timeout: String,
}

/// One request to a server's API, authorized by the join token.
async fn call(
    server: &str,
    token: &str,
    req: hyper::http::request::Builder,
    body: Bytes,
    wait: Duration,
) -> anyhow::Result<Bytes> {
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
    let req = req
        .header("host", &host)
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(body))?;
    let resp = tokio::time::timeout(wait, send.send_request(req))
        .await
        .with_context(|| format!("the server did not answer within {} s", wait.as_secs()))??;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        anyhow::bail!(
            "{host} answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(body)
}

async fn fetch(server: &str, token: &str, after: Option<u64>) -> anyhow::Result<LbSnapshot> {
    let uri = match after {
        Some(a) => format!("/berth/lb/config?after={a}"),
        None => "/berth/lb/config".to_string(),
    };
    let body = call(
        server,
        token,
        Request::get(uri),
        Bytes::new(),
        Duration::from_secs(40),
    )
    .await?;
    serde_json::from_slice(&body).context("decode the ELB state")
}

/// Sends one drain report (see `berth_server::lb_runtime`) to `server`.
async fn send_report(
    server: &str,
    token: &str,
    node: &str,
    idle: &[berth_model::elb::DrainIdle],
) -> anyhow::Result<()> {
    let body = serde_json::json!({ "node": node, "idle": idle }).to_string();
    call(
        server,
        token,
        Request::post("/berth/lb/report").header("content-type", "application/json"),
        Bytes::from(body),
        Duration::from_secs(10),
    )
    .await
    .map(|_| ())
}

/// This node's name in its reports. A restarted node is a new node: the old one's
/// requests died with it.
fn node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("edge-{host}-{}-{nanos:08x}", std::process::id())
}

/// This node's reports: the draining targets it will send nothing more, so their tasks
/// can stop before the deregistration delay is over.
async fn report_drains(
    servers: Vec<String>,
    token: String,
    node: String,
    lb: std::sync::Arc<berth_lb::Lb>,
    applied: tokio::sync::watch::Receiver<Option<std::sync::Arc<LbSnapshot>>>,
) {
    // The server to send to; the next one after a failure.
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    drain_report_loop(lb, applied, |idle| {
        let (servers, token, node, next) = (servers.clone(), token.clone(), node.clone(), next.clone());
        async move {
            let i = next.load(std::sync::atomic::Ordering::Relaxed);
            let server = &servers[i % servers.len()];
            match send_report(server, &token, &node, &idle).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::debug!(server, error = %format!("{e:#}"), "berth lb: drain report failed; trying the next server");
                    next.store(i + 1, std::sync::atomic::Ordering::Relaxed);
                    false
                }
            }
        }
    })
    .await
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
    let node = node_name();
    tracing::info!(node, "berth lb: reports drains as this node");
    // Known to the cluster before routing anything, so no drain ends without its word.
    let mut registered = false;
    for server in &args.servers {
        match tokio::time::timeout(REGISTER_WAIT, send_report(server, &token, &node, &[])).await {
            Ok(Ok(())) => {
                registered = true;
                break;
            }
            Ok(Err(e)) => {
                tracing::debug!(server, error = %format!("{e:#}"), "berth lb: registering failed")
            }
            Err(_) => tracing::debug!(server, "berth lb: registering timed out"),
        }
    }
    if !registered {
        tracing::warn!("berth lb: could not make this node known to the cluster; serving anyway");
    }
    let (applied_tx, applied_rx) = tokio::sync::watch::channel(None);
    let reports = tokio::spawn(report_drains(
        args.servers.clone(),
        token.clone(),
        node,
        lb.clone(),
        applied_rx,
    ));
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
                let cfg = routing_config(&s);
                // What the proxy runs, not the records (their drain marks change
                // without changing any route).
                let same = current.as_ref().is_some_and(|c| routing_config(c) == cfg);
                if !same || !reported.is_empty() {
                    berth_server::lb_runtime::apply_logged(&lb, cfg, &mut reported).await;
                    tracing::info!(
                        revision = s.revision,
                        listeners = s.listeners.len(),
                        targets = s.targets.len(),
                        "berth lb: routing updated"
                    );
                }
                applied_tx.send_replace(Some(std::sync::Arc::new(s.clone())));
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
    reports.abort();
    lb.shutdown().await;
    Ok(())
}
