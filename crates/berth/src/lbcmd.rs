//! `berth lb`: a load balancer node on an edge machine. It joins the cluster once with an
//! lb join token (its certificate is kept in `--data-dir`), then follows the cluster's ELB
//! state from any server over the cluster port (mutual TLS, long-polling `LbFeed.Config`,
//! failing over between the servers given), checks target health itself and serves the
//! listeners. It reports the draining targets it has nothing in flight to
//! (`LbFeed.Report`), so drains end early without cutting its requests. Apart from its
//! certificate it stores nothing: a restart re-reads the state (and is a new node).

use std::time::Duration;

use std::sync::{Arc, RwLock};

use berth_proto::raft::lb_feed_client::LbFeedClient;
use berth_server::lb_runtime::{drain_report_loop, routing_config, LbSnapshot, REGISTER_WAIT};
use berth_tls::join::{decode_reply, payload, JoinError, Joining, Material};
use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct LbArgs {
    /// Cluster address(es) of the servers, e.g. 10.0.0.1:7701 (repeatable or comma-separated).
    #[arg(
        long = "server",
        env = "BERTH_SERVERS",
        value_delimiter = ',',
        required = true
    )]
    servers: Vec<String>,
    /// A join token of kind lb (`berth token create --kind lb`) or the servers' own, presented
    /// once to get this node's certificate.
    #[arg(long, env = "BERTH_JOIN_TOKEN")]
    join_token: Option<String>,
    /// The cluster CA's hash (sha256:…): the token is shown only to servers of that CA.
    #[arg(long, env = "BERTH_CA_CERT_HASH")]
    ca_cert_hash: Option<String>,
    /// Where this node keeps its certificate.
    #[arg(long, env = "BERTH_LB_DATA_DIR", default_value = "/var/lib/berth-lb")]
    data_dir: std::path::PathBuf,
    /// Address the listeners bind on.
    #[arg(long, env = "BERTH_LB_BIND", default_value = "0.0.0.0")]
    bind: std::net::IpAddr,
    /// Idle timeout of pooled target connections (client connections follow their load
    /// balancer's `idle_timeout.timeout_seconds` attribute).
    #[arg(long, env = "BERTH_LB_IDLE_TIMEOUT", default_value = "60s")]
    idle_timeout: String,
}

/// One request to a server's API, authorized by the join token.
type Creds = Arc<RwLock<Material>>;

fn feed(server: &str, creds: &Creds) -> anyhow::Result<LbFeedClient<tonic::transport::Channel>> {
    let m = creds.read().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(LbFeedClient::new(m.channel(server)?)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(16 << 20))
}

async fn fetch(server: &str, creds: &Creds, after: Option<u64>) -> anyhow::Result<LbSnapshot> {
    let mut c = feed(server, creds)?;
    let reply = tokio::time::timeout(Duration::from_secs(40), c.config(payload(&after)))
        .await
        .map_err(|_| anyhow::anyhow!("{server} did not answer within 40 s"))?
        .map_err(|s| anyhow::anyhow!("{server}: {}: {}", s.code(), s.message()))?
        .into_inner();
    decode_reply(reply).map_err(|e| anyhow::anyhow!("{server}: {e}"))
}

async fn send_report(
    server: &str,
    creds: &Creds,
    node: &str,
    idle: &[berth_model::elb::DrainIdle],
) -> anyhow::Result<()> {
    let mut c = feed(server, creds)?;
    let body = serde_json::json!({ "node": node, "idle": idle });
    let reply = tokio::time::timeout(Duration::from_secs(10), c.report(payload(&body)))
        .await
        .map_err(|_| anyhow::anyhow!("{server} did not answer within 10 s"))?
        .map_err(|s| anyhow::anyhow!("{server}: {}: {}", s.code(), s.message()))?
        .into_inner();
    decode_reply::<serde_json::Value>(reply)
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("{server}: {e}"))
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into())
}

/// This node's certificate: from `--data-dir`, or a join with the token.
async fn credentials(args: &LbArgs, token: &str) -> anyhow::Result<Material> {
    let dir = args.data_dir.join("tls");
    if let Some(m) = Material::load(&dir, "lb")? {
        let expired = m
            .identity()
            .map(|i| i.not_after <= berth_store::now_secs() as i64)
            .unwrap_or(true);
        if !expired {
            return Ok(m);
        }
        tracing::warn!(
            "berth lb: this node's certificate has expired; joining again with the token"
        );
    }
    if token.is_empty() {
        anyhow::bail!("berth lb needs --join-token (an lb token: berth token create --kind lb) to join the cluster");
    }
    let pinned = args
        .ca_cert_hash
        .as_deref()
        .map(berth_tls::parse_ca_hash)
        .transpose()?;
    let mut i = 0usize;
    let mut delay = Duration::from_millis(200);
    loop {
        let server = &args.servers[i % args.servers.len()];
        match berth_tls::join::join(
            server,
            token,
            pinned.as_deref(),
            Joining::Lb { name: host_name() },
        )
        .await
        {
            Ok((resp, key)) => {
                let m = Material {
                    bundle: resp.ca_bundle,
                    cert: resp.cert,
                    key,
                };
                m.save(&dir, "lb")?;
                tracing::info!(
                    server,
                    "berth lb: joined the cluster; certificate in {}",
                    dir.display()
                );
                return Ok(m);
            }
            Err(JoinError::Refused(m)) => anyhow::bail!("the cluster refused this lb node: {m}"),
            Err(JoinError::Retry(m)) => {
                tracing::warn!(server, error = m, "berth lb: cannot join yet; retrying");
                i += 1;
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Renews the certificate when a third of its lifetime is left.
async fn renew_loop(servers: Vec<String>, dir: std::path::PathBuf, creds: Creds) {
    let mut i = 0usize;
    loop {
        let m = creds.read().unwrap_or_else(|p| p.into_inner()).clone();
        let Ok(id) = m.identity() else { return };
        tokio::time::sleep(id.check_interval(berth_store::now_secs() as i64)).await;
        let m = creds.read().unwrap_or_else(|p| p.into_inner()).clone();
        let Ok(id) = m.identity() else { return };
        if !id.due_for_renewal(berth_store::now_secs() as i64) {
            continue;
        }
        let server = &servers[i % servers.len()];
        match berth_tls::join::renew(server, &m).await {
            Ok(new) => {
                if let Err(e) = new.save(&dir, "lb") {
                    tracing::warn!(error = %format!("{e:#}"), "berth lb: could not save the renewed certificate");
                }
                *creds.write().unwrap_or_else(|p| p.into_inner()) = new;
                tracing::info!(server, "berth lb: renewed this node's certificate");
            }
            Err(e) => {
                tracing::warn!(server, error = %format!("{e:#}"), "berth lb: renewing the certificate failed; trying again");
                i += 1;
            }
        }
    }
}

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
    token: Creds,
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
    let token: Creds = Arc::new(RwLock::new(credentials(&args, &token).await?));
    tokio::spawn(renew_loop(
        args.servers.clone(),
        args.data_dir.join("tls"),
        token.clone(),
    ));
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
