#![forbid(unsafe_code)]
//! berth: a self-hosted Amazon ECS in one binary.

mod agentcmd;
mod awsprofile;
mod bench;
mod client;
mod config;
mod dev;
mod lbcmd;
mod tokencmd;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use berth_model::ArnContext;
use berth_server::{ApiConfig, AuthMode, NodeConfig, ServerNode};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "berth",
    version,
    about = "A self-hosted Amazon ECS: servers, agents and a load balancer in one binary."
)]
struct Cli {
    /// Log format: human or json. The filter comes from RUST_LOG (default: info).
    #[arg(long, global = true, env = "BERTH_LOG_FORMAT", default_value = "human")]
    log_format: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a server: Raft-replicated state and the ECS-compatible API.
    Server(ServerArgs),
    /// Run the container agent on this machine: join a cluster as a container instance and
    /// run its tasks through containerd.
    Agent(agentcmd::AgentArgs),
    /// Run a load balancer node on an edge machine: follows the cluster's listeners,
    /// rules and targets from the servers and serves them (servers run one already).
    Lb(lbcmd::LbArgs),
    /// Container images on this machine.
    Image {
        #[command(subcommand)]
        what: ImageCmd,
    },
    /// Print a task's container output (on the machine that runs it).
    Logs(agentcmd::LogsArgs),
    /// The cluster's join tokens: create, list, revoke.
    Token {
        #[command(subcommand)]
        what: tokencmd::TokenCmd,
    },
    /// The log driver containerd's shim runs for berth's containers (not for people).
    #[command(hide = true)]
    LogDriver {
        path: PathBuf,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        rest: Vec<String>,
    },
    /// One process, one machine, zero setup: a single-node cluster with the API.
    Dev(dev::DevArgs),
    /// Print the version.
    Version,
    /// Check a server config file and report every mistake.
    Validate {
        #[arg(long)]
        config: PathBuf,
    },
    /// Whole-system benchmarks.
    Bench {
        #[command(subcommand)]
        what: bench::BenchCmd,
    },
}

#[derive(Subcommand)]
enum ImageCmd {
    /// Import an OCI image archive (or `docker save` output) for air-gapped machines.
    Import(agentcmd::ImportArgs),
}

/// Every flag also reads BERTH_<NAME>; flags and env override the config file.
#[derive(Args, Debug, Default, Clone)]
pub struct ServerArgs {
    /// TOML config file (keys as the long flag names, e.g. node-id = 1).
    #[arg(long, env = "BERTH_CONFIG")]
    config: Option<PathBuf>,
    /// This server's Raft node id: unique in the cluster, never reused.
    #[arg(long, env = "BERTH_NODE_ID")]
    node_id: Option<u64>,
    #[arg(long, env = "BERTH_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// ECS API listen address (default 127.0.0.1:7700).
    #[arg(long, env = "BERTH_API_ADDR")]
    api_addr: Option<String>,
    /// Raft gRPC listen address (default 127.0.0.1:7701).
    #[arg(long, env = "BERTH_RAFT_ADDR")]
    raft_addr: Option<String>,
    /// Address other servers reach this one's Raft port at (default: --raft-addr).
    #[arg(long, env = "BERTH_ADVERTISE_RAFT_ADDR")]
    advertise_raft_addr: Option<String>,
    /// Raft address of any existing member to join through (first start only).
    #[arg(long, env = "BERTH_JOIN")]
    join: Option<String>,
    /// Region used in ARNs.
    #[arg(long, env = "BERTH_REGION")]
    region: Option<String>,
    /// 12-digit account id used in ARNs.
    #[arg(long, env = "BERTH_ACCOUNT_ID")]
    account_id: Option<String>,
    /// Access key as ACCESS_KEY_ID:SECRET; repeatable (env: comma-separated).
    #[arg(long = "access-key", env = "BERTH_ACCESS_KEYS", value_delimiter = ',')]
    access_keys: Vec<String>,
    /// sigv4 (default) or none.
    #[arg(long, env = "BERTH_AUTH")]
    auth: Option<String>,
    /// fsync every Raft log append (default true).
    #[arg(long, env = "BERTH_FSYNC")]
    fsync: Option<bool>,
    #[arg(long, env = "BERTH_SNAPSHOT_EVERY")]
    snapshot_every: Option<u64>,
    #[arg(long, env = "BERTH_BODY_LIMIT")]
    body_limit: Option<usize>,
    /// Token agents must present to join (default: generated into <data-dir>/join-token).
    #[arg(long, env = "BERTH_JOIN_TOKEN")]
    join_token: Option<String>,
    /// Mark an agent disconnected after this long without a heartbeat (default 15s).
    #[arg(long, env = "BERTH_AGENT_HEARTBEAT_TIMEOUT")]
    agent_heartbeat_timeout: Option<String>,
    /// Mark a disconnected agent's tasks STOPPED (services replace them elsewhere) this
    /// long after it was last heard from (default 30s).
    #[arg(long, env = "BERTH_AGENT_LOST_AFTER")]
    agent_lost_after: Option<String>,
    /// A running service task without a container health check counts as healthy for
    /// deployments after this long (default 40s, as ECS).
    #[arg(long, env = "BERTH_TASK_HEALTHY_AFTER")]
    task_healthy_after: Option<String>,
    /// Address the built-in load balancer's listeners bind on (default 0.0.0.0; "none":
    /// no load balancer on this server).
    #[arg(long, env = "BERTH_LB_BIND")]
    lb_bind: Option<String>,
    /// Idle timeout of the load balancer's pooled target connections (default 60s). Client
    /// connections follow their load balancer's `idle_timeout.timeout_seconds` attribute.
    #[arg(long, env = "BERTH_LB_IDLE_TIMEOUT")]
    lb_idle_timeout: Option<String>,
    /// With --join: the cluster CA's hash the first server printed (sha256:…). The joining
    /// server refuses to show its token to a cluster with another CA.
    #[arg(long, env = "BERTH_CA_CERT_HASH")]
    ca_cert_hash: Option<String>,
    /// Serve the API over plain HTTP instead of HTTPS (only on a network you trust).
    #[arg(long, env = "BERTH_API_INSECURE_HTTP")]
    api_insecure_http: bool,
    /// The API's certificate chain (PEM) instead of one from the cluster CA; reloaded on SIGHUP.
    #[arg(long, env = "BERTH_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// The key of --tls-cert (PEM).
    #[arg(long, env = "BERTH_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Extra DNS name or address for the API certificate from the cluster CA; repeatable.
    #[arg(long = "api-san", env = "BERTH_API_SANS", value_delimiter = ',')]
    api_san: Vec<String>,
    /// Lifetime of the agent and lb certificates this server issues (default 7d; renewed
    /// when a third is left).
    #[arg(long, env = "BERTH_CERT_LIFETIME")]
    cert_lifetime: Option<String>,
    /// `berth bench` only: no TLS on the cluster port (anyone who reaches it can write
    /// the cluster state), to measure what mutual TLS costs.
    #[arg(long, hide = true)]
    bench_plain_cluster_port: bool,
}

impl ServerArgs {
    pub fn into_config(self) -> Result<config::ServerConfig, String> {
        let mut c = match &self.config {
            Some(p) => config::ServerConfig::from_file(p)?,
            None => config::ServerConfig::default(),
        };
        macro_rules! over {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { c.$f = v; } )* };
        }
        over!(
            node_id,
            data_dir,
            api_addr,
            raft_addr,
            region,
            account_id,
            auth,
            fsync,
            snapshot_every,
            body_limit,
            agent_heartbeat_timeout,
            agent_lost_after,
            task_healthy_after,
            lb_bind,
            lb_idle_timeout,
            cert_lifetime
        );
        if self.ca_cert_hash.is_some() {
            c.ca_cert_hash = self.ca_cert_hash;
        }
        if self.api_insecure_http {
            c.api_insecure_http = true;
        }
        c.bench_plain_cluster_port = self.bench_plain_cluster_port;
        if self.tls_cert.is_some() {
            c.tls_cert = self.tls_cert;
        }
        if self.tls_key.is_some() {
            c.tls_key = self.tls_key;
        }
        if !self.api_san.is_empty() {
            c.api_san = self.api_san;
        }
        if self.join_token.is_some() {
            c.join_token = self.join_token;
        }
        if self.advertise_raft_addr.is_some() {
            c.advertise_raft_addr = self.advertise_raft_addr;
        }
        if self.join.is_some() {
            c.join = self.join;
        }
        if !self.access_keys.is_empty() {
            c.access_keys = self.access_keys;
        }
        Ok(c)
    }
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,openraft=warn,sled=warn,h2=warn,tower=warn")
    });
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}

fn main() -> std::process::ExitCode {
    let started = Instant::now();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Version => {
            println!("berth {}", env!("CARGO_PKG_VERSION"));
            return std::process::ExitCode::SUCCESS;
        }
        Cmd::Logs(args)
            if args
                .data_dir
                .as_ref()
                .is_some_and(|d| !d.as_os_str().is_empty()) =>
        {
            return match agentcmd::logs(args) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("berth logs: {e:#}");
                    std::process::ExitCode::FAILURE
                }
            };
        }
        Cmd::LogDriver { path, .. } => {
            return match berth_agent::logdriver::run(&path) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("berth log-driver {}: {e}", path.display());
                    std::process::ExitCode::FAILURE
                }
            };
        }
        Cmd::Validate { config } => {
            return match config::ServerConfig::from_file(&config)
                .map_err(|e| vec![e])
                .and_then(|c| c.validate())
            {
                Ok(_) => {
                    println!("{}: ok", config.display());
                    std::process::ExitCode::SUCCESS
                }
                Err(errs) => {
                    eprintln!("{}: {} problem(s):", config.display(), errs.len());
                    for e in errs {
                        eprintln!("  - {e}");
                    }
                    std::process::ExitCode::FAILURE
                }
            };
        }
        _ => {}
    }
    if cli.log_format != "human" && cli.log_format != "json" {
        eprintln!(
            "berth: --log-format must be human or json, not '{}'",
            cli.log_format
        );
        return std::process::ExitCode::from(2);
    }
    init_logging(&cli.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berth: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let res = rt.block_on(async move {
        match cli.cmd {
            Cmd::Server(args) => run_server_cmd(args, started).await,
            Cmd::Dev(args) => dev::run(args, started).await,
            Cmd::Lb(args) => lbcmd::run(args).await,
            Cmd::Bench { what } => bench::run(what).await,
            Cmd::Agent(args) => agentcmd::run(args).await,
            Cmd::Logs(args) => agentcmd::logs_via_api(args).await,
            Cmd::Token { what } => tokencmd::run(what).await,
            Cmd::Image {
                what: ImageCmd::Import(args),
            } => agentcmd::import(args).await,
            _ => Ok(()),
        }
    });
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run_server_cmd(args: ServerArgs, started: Instant) -> anyhow::Result<()> {
    let cfg = args.into_config().map_err(|e| anyhow::anyhow!(e))?;
    let valid = cfg
        .validate()
        .map_err(|errs| anyhow::anyhow!("invalid configuration:\n  - {}", errs.join("\n  - ")))?;
    let running = start_server(valid, started).await?;
    running.wait_for_signal().await
}

/// The join token kept in `<data dir>/join-token` (0600), created on first start.
fn load_or_create_join_token(data_dir: &std::path::Path) -> anyhow::Result<String> {
    let path = data_dir.join("join-token");
    if let Ok(t) = std::fs::read_to_string(&path) {
        let t = t.trim().to_string();
        if !t.is_empty() {
            return Ok(t);
        }
    }
    use rand::Rng;
    let token: String = rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(40)
        .map(char::from)
        .collect();
    berth_tls::write_private(&path, &token)?;
    tracing::info!(path = %path.display(), "generated the agent join token; agents join with --join-token $(cat {})", path.display());
    Ok(token)
}

/// A started server: node, API, and the shutdown switch.
pub struct Running {
    pub node: Arc<ServerNode>,
    pub api_addr: std::net::SocketAddr,
    /// `https` or `http`.
    pub api_scheme: &'static str,
    /// The operator's API certificate, reloaded on SIGHUP.
    reload: Option<(Arc<berth_server::http::ApiTls>, PathBuf, PathBuf)>,
    shutdown: tokio::sync::watch::Sender<bool>,
    api_task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    pub async fn wait_for_signal(self) -> anyhow::Result<()> {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("install SIGTERM handler")?;
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("install SIGHUP handler")?;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT: shutting down"); break; }
                _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
                _ = hup.recv() => match &self.reload {
                    Some((tls, cert, key)) => match operator_tls(cert, key) {
                        Ok(cfg) => { tls.set(cfg); tracing::info!(cert = %cert.display(), "SIGHUP: reloaded the API certificate"); }
                        Err(e) => tracing::error!(error = %format!("{e:#}"), "SIGHUP: the API certificate was not reloaded; still serving the previous one"),
                    },
                    None => tracing::info!("SIGHUP: nothing to reload (the API certificate comes from the cluster CA)"),
                },
            }
        }
        self.stop().await
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        match tokio::time::timeout(std::time::Duration::from_secs(15), self.api_task).await {
            Ok(Ok(r)) => r?,
            Ok(Err(e)) => tracing::warn!(error = %e, "API task failed"),
            Err(_) => tracing::warn!("API did not stop within 15 s"),
        }
        let _ = self.node.raft.shutdown().await;
        berth_store::flush(&self.node.db)
            .await
            .context("flush the store")?;
        tracing::info!("stopped cleanly");
        Ok(())
    }
}

fn operator_tls(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let c = std::fs::read_to_string(cert).with_context(|| format!("read {}", cert.display()))?;
    let k = std::fs::read_to_string(key).with_context(|| format!("read {}", key.display()))?;
    berth_tls::api_server_config(&c, &k)
}

/// The names the API certificate from the cluster CA is for: the API address (unless it
/// is every interface), loopback, the host's name, the advertised cluster address, and
/// `--api-san`.
fn api_names(valid: &config::Valid) -> Vec<String> {
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if !valid.api_addr.ip().is_unspecified() {
        names.push(valid.api_addr.ip().to_string());
    }
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let h = h.trim();
        if !h.is_empty() {
            names.push(h.to_string());
        }
    }
    if let Some(a) = &valid.cfg.advertise_raft_addr {
        if let Some((host, _)) = a.rsplit_once(':') {
            names.push(
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string(),
            );
        }
    }
    if !valid.raft_addr.ip().is_unspecified() {
        names.push(valid.raft_addr.ip().to_string());
    }
    names.extend(valid.cfg.api_san.iter().cloned());
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

pub async fn start_server(valid: config::Valid, started: Instant) -> anyhow::Result<Running> {
    let cfg = &valid.cfg;
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let mut ncfg = NodeConfig::new(cfg.node_id, cfg.data_dir.clone(), valid.raft_addr);
    ncfg.raft_advertise = cfg
        .advertise_raft_addr
        .clone()
        .unwrap_or_else(|| cfg.raft_addr.clone());
    ncfg.fsync = cfg.fsync;
    ncfg.cache_capacity = cfg.cache_capacity_mb << 20;
    ncfg.snapshot_every = cfg.snapshot_every;
    ncfg.heartbeat_ms = cfg.heartbeat_ms;
    ncfg.election_timeout_min_ms = cfg.election_timeout_ms;
    ncfg.election_timeout_max_ms = cfg.election_timeout_ms * 2;
    let join_token = match &cfg.join_token {
        Some(t) => t.clone(),
        None => load_or_create_join_token(&cfg.data_dir)?,
    };
    let mut agents = berth_server::sessions::AgentSettings::new(ArnContext::new(
        cfg.region.clone(),
        cfg.account_id.clone(),
    ));
    agents.heartbeat_timeout = valid.agent_heartbeat_timeout;
    agents.heartbeat_interval =
        (valid.agent_heartbeat_timeout / 3).min(std::time::Duration::from_secs(5));
    agents.lost_after = valid.agent_lost_after;
    let plan = cfg.join.as_ref().map(|via| berth_server::pki::JoinPlan {
        via: via.clone(),
        token: join_token.clone(),
        pinned: valid.ca_cert_hash.clone(),
    });
    agents.join_token = Some(join_token);
    ncfg.agents = agents;
    let first_start = !cfg.data_dir.join("tls").exists();
    let pki = berth_server::pki::Pki::prepare(
        &cfg.data_dir,
        cfg.node_id,
        // Plain (a benchmark's comparison): nothing to join over TLS; the CA made here is unused.
        if cfg.bench_plain_cluster_port {
            None
        } else {
            plan
        },
        berth_server::pki::Lifetimes {
            member: valid.cert_lifetime,
            ..Default::default()
        },
    )
    .await?;
    if cfg.bench_plain_cluster_port {
        tracing::warn!("the cluster port is PLAIN gRPC (--bench-plain-cluster-port, for benchmarks only): anyone who reaches it can write the cluster state");
    } else {
        ncfg.pki = Some(pki.clone());
    }
    if !cfg.fsync {
        tracing::warn!("fsync is OFF: acknowledged writes can be lost on power failure");
    }
    let node = ServerNode::start(ncfg, shutdown_rx.clone())
        .await
        .with_context(|| format!("start node in {}", cfg.data_dir.display()))?;
    node.bootstrap_or_join(cfg.join.clone()).await?;
    let mut services = berth_control::services::ServiceSettings::new(ArnContext::new(
        cfg.region.clone(),
        cfg.account_id.clone(),
    ));
    services.scheduler.healthy_after_secs = valid.task_healthy_after.as_secs_f64();
    berth_control::start(
        node.clone(),
        berth_control::ControlSettings {
            services,
            instances: berth_control::instances::InstanceSettings {
                heartbeat_timeout: valid.agent_heartbeat_timeout,
                lost_after: valid.agent_lost_after,
            },
        },
        shutdown_rx.clone(),
    );
    {
        let opts = berth_lb::LbOptions {
            bind: valid
                .lb_bind
                .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1])),
            idle_timeout: valid.lb_idle_timeout,
            ..Default::default()
        };
        let serve = valid.lb_bind.is_some();
        berth_server::lb_runtime::start(node.clone(), opts, serve, shutdown_rx.clone());
        match valid.lb_bind {
            Some(bind) => tracing::info!(bind = %bind, "load balancer: listeners follow the cluster's ELB state"),
            None => tracing::info!("load balancer: no listeners on this server (--lb-bind none); health checks still run"),
        }
    }

    let auth = if cfg.auth == "none" {
        tracing::warn!("authentication is OFF (--auth none): anyone who can reach the API can change the cluster");
        AuthMode::None
    } else {
        AuthMode::SigV4
    };
    let api_cfg = ApiConfig {
        ctx: ArnContext::new(cfg.region.clone(), cfg.account_id.clone()),
        auth,
        keys: Arc::new(valid.keys.clone()),
        body_limit: cfg.body_limit,
    };
    let listener = tokio::net::TcpListener::bind(valid.api_addr)
        .await
        .with_context(|| format!("bind API address {}", valid.api_addr))?;
    let api_addr = listener.local_addr()?;
    let front = Arc::new(berth_server::http::Front {
        node: node.clone(),
        api: berth_api::Ctx {
            cluster: node.clone(),
            cfg: api_cfg,
        },
    });
    let (api_tls, reload) = match (&cfg.tls_cert, &cfg.tls_key) {
        _ if cfg.api_insecure_http => {
            tracing::warn!("the API is plain HTTP (--api-insecure-http): request bodies and signatures cross the network in the clear");
            (None, None)
        }
        (Some(c), Some(k)) => {
            let tls = berth_server::http::ApiTls::new(operator_tls(c, k)?);
            (Some(tls.clone()), Some((tls, c.clone(), k.clone())))
        }
        _ => {
            let names = api_names(&valid);
            let (cert, key) = pki.issue_api(&names)?;
            let dir = pki.dir();
            berth_tls::write_private(&dir.join("api.key"), &key)?;
            berth_tls::write_public(&dir.join("api.pem"), &cert)?;
            let chain = format!("{cert}{}", pki.ca_cert_pem());
            (
                Some(berth_server::http::ApiTls::new(
                    berth_tls::api_server_config(&chain, &key)?,
                )),
                None,
            )
        }
    };
    let api_scheme = if api_tls.is_some() { "https" } else { "http" };
    let api_task = tokio::spawn(berth_server::http::serve(
        listener,
        front,
        shutdown_rx,
        api_tls,
    ));
    let hash = pki.ca_hash();
    let bundle = pki.bundle_path();
    tracing::info!(
        node_id = cfg.node_id,
        api = %format!("{api_scheme}://{api_addr}"),
        raft = %valid.raft_addr,
        ca = %bundle.display(),
        ca_hash = %hash,
        startup_ms = started.elapsed().as_secs_f64() * 1e3,
        "berth server listening"
    );
    if first_start && cfg.join.is_none() {
        let raft = cfg
            .advertise_raft_addr
            .clone()
            .unwrap_or_else(|| cfg.raft_addr.clone());
        let token_hint = match &cfg.join_token {
            Some(_) => "<the --join-token>".to_string(),
            None => format!("$(cat {})", cfg.data_dir.join("join-token").display()),
        };
        tracing::info!(
            ca_hash = %hash,
            ca_bundle = %bundle.display(),
            add_agent = %format!("berth agent --server {raft} --cluster default --join-token {token_hint} --ca-cert-hash {hash}"),
            add_server = %format!("berth server --node-id 2 --join {raft} --join-token {token_hint} --ca-cert-hash {hash} ..."),
            clients = %format!("export AWS_CA_BUNDLE={}", bundle.display()),
            "created the cluster CA: machines join with the commands below (or with a token of their own: berth token create --kind agent|server|lb)"
        );
    }
    Ok(Running {
        node,
        api_addr,
        api_scheme,
        reload,
        shutdown: shutdown_tx,
        api_task,
    })
}
