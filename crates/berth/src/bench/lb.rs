//! `berth bench lb`: the built-in load balancer (`berth-lb`) against nginx and HAProxy.
//!
//! 1. Throughput and latency: `wrk --latency` through three proxies, each in its own
//!    process with the same worker count (`--workers`): berth's `Lb` in a child process
//!    of this very binary (a tokio runtime of `--workers` threads), nginx
//!    (`worker_processes N`, upstream keepalive) and HAProxy (`nbthread N`,
//!    `http-reuse always`), all round-robin over the same backends (small hyper servers,
//!    child processes of this binary returning a fixed 13-byte body). "direct" (wrk
//!    straight at one backend) is the ceiling. Every proxy is measured `--rounds` times,
//!    interleaved (the order reversed every other round), after a warm-up; the best round
//!    by req/s is reported, with ratios to nginx.
//! 2. Target join: under steady load on an in-process `Lb`, a new backend is started and
//!    added (ALB-like health checks: interval 5 s, healthy threshold 2); the backend
//!    records when it answers each health check and when it gets its first proxied
//!    request.
//! 3. Target death: a backend is SIGKILLed under load; the time until `Lb::health()`
//!    reports it unhealthy (interval 5 s, unhealthy threshold 2) and the client requests
//!    that failed meanwhile.
//!
//! Every child runs in its own process group with `kill_on_drop`; the whole run sits
//! under a hard deadline and a ctrl-c handler, and dropping the run kills the groups
//! (nginx's workers too) and removes the temp dir.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use berth_lb::{
    Lb, LbOptions, ListenerConfig, RoutingConfig, TargetConfig, TargetGroupConfig, TargetKey,
};
use berth_model::elb::{
    Action, Attribute, Matcher, Rule, TargetGroup, TargetGroupRecord, TargetHealth,
};
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

use crate::bench::harness::{free_ports, loopback};

#[derive(Args, Debug, Clone)]
pub struct LbBenchArgs {
    /// Worker threads of berth's proxy = nginx worker_processes = HAProxy nbthread.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// wrk connections (-c).
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// wrk threads (-t).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Measured seconds per wrk run (-d).
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Warm-up seconds (an unrecorded wrk run) before each measured run.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Measured runs per proxy, interleaved; the best by req/s is reported.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Backend servers behind every proxy.
    #[arg(long, default_value_t = 3)]
    pub backends: usize,
    /// Samples of the target join and target death measurements.
    #[arg(long, default_value_t = 3)]
    pub samples: usize,
    /// Target group health check interval (s) in the join/death measurements (ALB: 5..300).
    #[arg(long, default_value_t = 5)]
    pub hc_interval: u32,
    /// Healthy threshold (ALB: 2..10).
    #[arg(long, default_value_t = 2)]
    pub healthy_threshold: u32,
    /// Unhealthy threshold (ALB: 2..10).
    #[arg(long, default_value_t = 2)]
    pub unhealthy_threshold: u32,
    /// Concurrent clients of the steady load during the join/death measurements.
    #[arg(long, default_value_t = 8)]
    pub churn_clients: usize,
    /// Pause of each of those clients between requests (ms).
    #[arg(long, default_value_t = 1)]
    pub churn_pause_ms: u64,
    /// Skip the wrk throughput part.
    #[arg(long)]
    pub no_throughput: bool,
    /// Skip the target join/death part.
    #[arg(long)]
    pub no_churn: bool,
    /// Also write the summary as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Hard deadline for the whole run, in seconds.
    #[arg(long, default_value_t = 300)]
    pub deadline_secs: u64,
    /// Keep the temp dir (configs and logs) instead of removing it.
    #[arg(long)]
    pub keep_temp: bool,
    #[arg(long, default_value = "wrk")]
    pub wrk: String,
    #[arg(long, default_value = "nginx")]
    pub nginx: String,
    #[arg(long, default_value = "haproxy")]
    pub haproxy: String,
    /// Internal: run as a child of the benchmark (`backend` or `proxy`).
    #[arg(long, hide = true)]
    pub role: Option<String>,
    /// Internal: the backend's listen address.
    #[arg(long, hide = true)]
    pub listen: Option<SocketAddr>,
    /// Internal: the proxy child's config (JSON).
    #[arg(long, hide = true)]
    pub config: Option<PathBuf>,
}

const LB_ARN: &str =
    "arn:aws:elasticloadbalancing:us-east-1:000000000000:loadbalancer/app/bench/0123456789abcdef";
const LISTENER_ARN: &str = "arn:aws:elasticloadbalancing:us-east-1:000000000000:listener/app/bench/0123456789abcdef/fedcba9876543210";
const RULE_ARN: &str = "arn:aws:elasticloadbalancing:us-east-1:000000000000:listener-rule/app/bench/0123456789abcdef/fedcba9876543210/0000000000000001";
const TG_ARN: &str =
    "arn:aws:elasticloadbalancing:us-east-1:000000000000:targetgroup/bench/00112233445566aa";
const HEALTH_PATH: &str = "/health";
const STATS_PATH: &str = "/__bench/stats";
const BODY: &[u8] = b"hello, berth\n";
const READY_DEADLINE: Duration = Duration::from_secs(30);

pub async fn run(args: LbBenchArgs) -> anyhow::Result<()> {
    match args.role.as_deref() {
        Some("backend") => {
            let listen = args.listen.context("--role backend needs --listen")?;
            return backend_main(listen).await;
        }
        Some("proxy") => return proxy_child(&args).await,
        Some(r) => bail!("unknown --role {r}"),
        None => {}
    }
    let secs = args.deadline_secs;
    // Dropping `bench(..)` kills every child process group and removes the temp dir.
    tokio::select! {
        r = tokio::time::timeout(Duration::from_secs(secs), bench(args)) => match r {
            Ok(r) => r,
            Err(_) => bail!("bench lb: hard deadline of {secs} s passed; children killed, temp dir removed"),
        },
        _ = tokio::signal::ctrl_c() => bail!("bench lb: interrupted; children killed, temp dir removed"),
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// (b - a) in ms, signed.
fn delta_ms(a: u64, b: u64) -> f64 {
    (b as f64 - a as f64) / 1e6
}

// ------------------------------------------------------------------ backend (child)

#[derive(Default)]
struct BackendState {
    /// Unix ns of every health check answered (the first 1,000).
    health: Mutex<Vec<u64>>,
    /// Unix ns of the first proxied (non-health, non-stats) request; 0 = none yet.
    first_request: AtomicU64,
    requests: AtomicU64,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct BackendStats {
    health_ns: Vec<u64>,
    first_request_ns: u64,
    requests: u64,
}

fn backend_response(st: &BackendState, path: &str) -> Response<Full<Bytes>> {
    let (body, ctype) = match path {
        HEALTH_PATH => {
            let mut h = st.health.lock().unwrap();
            if h.len() < 1000 {
                h.push(now_ns());
            }
            (Bytes::from_static(b"ok\n"), "text/plain")
        }
        STATS_PATH => {
            let s = BackendStats {
                health_ns: st.health.lock().unwrap().clone(),
                first_request_ns: st.first_request.load(Ordering::SeqCst),
                requests: st.requests.load(Ordering::SeqCst),
            };
            (
                Bytes::from(serde_json::to_vec(&s).unwrap_or_default()),
                "application/json",
            )
        }
        _ => {
            if st.first_request.load(Ordering::Relaxed) == 0 {
                let _ = st.first_request.compare_exchange(
                    0,
                    now_ns(),
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                );
            }
            st.requests.fetch_add(1, Ordering::Relaxed);
            (Bytes::from_static(BODY), "text/plain")
        }
    };
    let mut r = Response::new(Full::new(body));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(ctype),
    );
    r
}

/// A tiny HTTP/1.1 keep-alive server: 200 with a fixed body for every path, and the
/// timestamps of its health checks and first request on `STATS_PATH`.
async fn backend_main(listen: SocketAddr) -> anyhow::Result<()> {
    let l = TcpListener::bind(listen)
        .await
        .with_context(|| format!("bind {listen}"))?;
    let st = Arc::new(BackendState::default());
    loop {
        let (s, _) = match l.accept().await {
            Ok(x) => x,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = s.set_nodelay(true);
        let st = st.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let r = backend_response(&st, req.uri().path());
                async move { Ok::<_, Infallible>(r) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(s), svc)
                .await;
        });
    }
}

// ------------------------------------------------------------------ berth routing

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct HealthParams {
    interval: u32,
    timeout: u32,
    healthy: u32,
    unhealthy: u32,
}

impl HealthParams {
    fn from_args(a: &LbBenchArgs) -> Self {
        HealthParams {
            interval: a.hc_interval.max(1),
            // ALB's timeout must be below the interval; 2 s is its minimum.
            timeout: 2.min(a.hc_interval.max(2) - 1).max(1),
            healthy: a.healthy_threshold.max(1),
            unhealthy: a.unhealthy_threshold.max(1),
        }
    }
}

/// What the berth proxy child runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ProxyChildConfig {
    port: u16,
    targets: Vec<(String, SocketAddr)>,
    health: HealthParams,
}

fn lb_options() -> LbOptions {
    LbOptions {
        bind: std::net::IpAddr::from([127, 0, 0, 1]),
        health_checks: true,
        ..LbOptions::default()
    }
}

fn target_key(id: &str, addr: SocketAddr) -> TargetKey {
    (TG_ARN.to_string(), id.to_string(), addr.port())
}

/// One listener whose default rule forwards to one round-robin target group, as an ALB
/// user would set it up.
fn routing(port: u16, targets: &[(String, SocketAddr)], hc: HealthParams) -> RoutingConfig {
    let rule = Rule {
        rule_arn: RULE_ARN.into(),
        priority: "default".into(),
        conditions: vec![],
        actions: vec![Action {
            action_type: "forward".into(),
            target_group_arn: Some(TG_ARN.into()),
            ..Default::default()
        }],
        is_default: true,
    };
    let tg = TargetGroup {
        target_group_arn: TG_ARN.into(),
        target_group_name: "bench".into(),
        protocol: "HTTP".into(),
        port: 80,
        vpc_id: None,
        health_check_protocol: "HTTP".into(),
        health_check_port: "traffic-port".into(),
        health_check_enabled: true,
        health_check_interval_seconds: hc.interval,
        health_check_timeout_seconds: hc.timeout,
        healthy_threshold_count: hc.healthy,
        unhealthy_threshold_count: hc.unhealthy,
        health_check_path: HEALTH_PATH.into(),
        matcher: Matcher {
            http_code: Some("200".into()),
            grpc_code: None,
        },
        load_balancer_arns: vec![LB_ARN.into()],
        target_type: "instance".into(),
        protocol_version: Some("HTTP1".into()),
        ip_address_type: Some("ipv4".into()),
    };
    let attr = |k: &str, v: &str| Attribute {
        key: k.into(),
        value: v.into(),
    };
    let record = TargetGroupRecord {
        target_group: tg,
        attributes: vec![
            attr("load_balancing.algorithm.type", "round_robin"),
            attr("deregistration_delay.timeout_seconds", "0"),
            attr("slow_start.duration_seconds", "0"),
            attr("stickiness.enabled", "false"),
        ],
    };
    let targets = targets
        .iter()
        .map(|(id, addr)| TargetConfig {
            id: id.clone(),
            port: addr.port(),
            addr: *addr,
            draining: false,
            registration: 0,
        })
        .collect();
    RoutingConfig {
        listeners: vec![ListenerConfig {
            listener_arn: LISTENER_ARN.into(),
            port,
            rules: vec![rule],
            idle_timeout: None,
        }],
        target_groups: HashMap::from([(TG_ARN.to_string(), TargetGroupConfig { record, targets })]),
    }
}

type HealthRx = tokio::sync::watch::Receiver<HashMap<TargetKey, TargetHealth>>;

fn state_of(rx: &HealthRx, key: &TargetKey) -> String {
    rx.borrow()
        .get(key)
        .map(|h| h.state.clone())
        .unwrap_or_else(|| "-".into())
}

/// Waits until every key is in `state`; returns the unix ns it saw that.
async fn wait_state(
    rx: &mut HealthRx,
    keys: &[TargetKey],
    state: &str,
    deadline: Instant,
) -> anyhow::Result<u64> {
    loop {
        {
            let m = rx.borrow_and_update();
            if keys
                .iter()
                .all(|k| m.get(k).map(|h| h.state == state).unwrap_or(false))
            {
                return Ok(now_ns());
            }
        }
        match tokio::time::timeout_at(deadline.into(), rx.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => bail!("the load balancer's health watch closed"),
            Err(_) => {
                let m = rx.borrow();
                let now: Vec<String> = keys
                    .iter()
                    .map(|k| {
                        format!(
                            "{}:{}={}",
                            k.1,
                            k.2,
                            m.get(k).map(|h| h.state.as_str()).unwrap_or("absent")
                        )
                    })
                    .collect();
                bail!("targets not {state} in time: {}", now.join(", "))
            }
        }
    }
}

/// The berth proxy child: its own tokio runtime of `--workers` threads running one `Lb`.
/// Prints `listening ADDR`, then `ready` once every target is healthy, then runs until
/// killed.
async fn proxy_child(args: &LbBenchArgs) -> anyhow::Result<()> {
    let path = args.config.clone().context("--role proxy needs --config")?;
    let cfg: ProxyChildConfig = serde_json::from_slice(
        &std::fs::read(&path).with_context(|| format!("read {}", path.display()))?,
    )
    .with_context(|| format!("parse {}", path.display()))?;
    let workers = args.workers.max(1);
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("lb-runtime".into())
        .spawn(move || {
            let r = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .thread_name("lb-worker")
                .enable_all()
                .build()
                .context("build the proxy runtime")
                .and_then(|rt| rt.block_on(proxy_serve(cfg)));
            let _ = tx.send(r);
        })?;
    rx.await
        .unwrap_or_else(|_| Err(anyhow!("the proxy runtime panicked")))
}

async fn proxy_serve(cfg: ProxyChildConfig) -> anyhow::Result<()> {
    let lb = Lb::new(lb_options());
    let errs = lb.apply(routing(cfg.port, &cfg.targets, cfg.health)).await;
    if !errs.is_empty() {
        bail!("listener errors: {errs:?}");
    }
    let addr = lb
        .listening()
        .get(LISTENER_ARN)
        .copied()
        .context("the listener is not listening")?;
    println!("listening {addr}");
    let keys: Vec<TargetKey> = cfg
        .targets
        .iter()
        .map(|(id, a)| target_key(id, *a))
        .collect();
    let mut rx = lb.health();
    let deadline = Instant::now()
        + Duration::from_secs(cfg.health.interval as u64 * (cfg.health.healthy as u64 + 2) + 10);
    match wait_state(&mut rx, &keys, "healthy", deadline).await {
        Ok(_) => println!("ready"),
        Err(e) => println!("ready (not all targets healthy: {e:#})"),
    }
    std::future::pending::<()>().await;
    Ok(())
}

// ------------------------------------------------------------------ child processes

/// A child process in its own process group, killed (with the whole group) on drop.
struct Kid {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Kid {
    fn spawn(name: &str, cmd: &mut Command, log: &Path, stdout_piped: bool) -> anyhow::Result<Kid> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("open {}", log.display()))?;
        let out = if stdout_piped {
            Stdio::piped()
        } else {
            Stdio::from(f.try_clone()?)
        };
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("BERTH_") {
                cmd.env_remove(&k);
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(Stdio::from(f))
            .process_group(0)
            .kill_on_drop(true);
        let child = cmd.spawn().with_context(|| format!("start {name}"))?;
        Ok(Kid {
            name: name.into(),
            child,
            log: log.to_path_buf(),
        })
    }

    fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Ok(Some(st)) = self.child.try_wait() {
            bail!("{} exited ({st})\n{}", self.name, self.log_tail());
        }
        Ok(())
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(12);
        format!(
            "--- last lines of {} ---\n{}",
            self.log.display(),
            lines[from..].join("\n")
        )
    }

    /// Signals the child's process group (it is the group leader).
    fn signal_group(&mut self, sig: &str) {
        if !self.running() {
            return;
        }
        if let Some(pid) = self.pid() {
            let _ = std::process::Command::new("kill")
                .arg(format!("-{sig}"))
                .arg("--")
                .arg(format!("-{pid}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }

    /// SIGKILL now (a crash), and reap.
    async fn kill(&mut self) {
        self.signal_group("KILL");
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }

    /// SIGTERM, up to 5 s, then SIGKILL.
    async fn stop(&mut self) {
        self.signal_group("TERM");
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            self.kill().await;
        }
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        self.signal_group("KILL");
    }
}

fn find_on_path(bin: &str) -> Option<PathBuf> {
    if bin.contains('/') {
        let p = PathBuf::from(bin);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].iter().map(PathBuf::from))
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

fn first_line(bin: &Path, arg: &str) -> String {
    std::process::Command::new(bin)
        .arg(arg)
        .output()
        .ok()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).to_string();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s.lines().next().unwrap_or("").trim().to_string()
        })
        .unwrap_or_default()
}

/// One GET on a fresh connection.
async fn http_get(addr: SocketAddr, path: &str, t: Duration) -> anyhow::Result<(u16, Bytes)> {
    tokio::time::timeout(t, async {
        let s = TcpStream::connect(addr).await?;
        let _ = s.set_nodelay(true);
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await?;
        tokio::spawn(conn);
        let req = Request::get(path)
            .header(hyper::header::HOST, "bench.local")
            .body(Empty::<Bytes>::new())?;
        let resp = tx.send_request(req).await?;
        let st = resp.status().as_u16();
        let b = resp.into_body().collect().await?.to_bytes();
        anyhow::Ok((st, b))
    })
    .await
    .map_err(|_| anyhow!("GET http://{addr}{path}: timed out"))?
}

/// Waits until `addr` answers 200 on `path`.
async fn wait_200(
    kid: &mut Kid,
    addr: SocketAddr,
    path: &str,
    deadline: Instant,
) -> anyhow::Result<()> {
    loop {
        kid.check_alive()?;
        let last = match http_get(addr, path, Duration::from_secs(2)).await {
            Ok((200, _)) => return Ok(()),
            Ok((st, b)) => format!("HTTP {st}: {}", String::from_utf8_lossy(&b).trim()),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() > deadline {
            bail!(
                "{} never answered 200 on {path} ({last})\n{}",
                kid.name,
                kid.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn backend_stats(addr: SocketAddr) -> anyhow::Result<BackendStats> {
    let (st, b) = http_get(addr, STATS_PATH, Duration::from_secs(2)).await?;
    if st != 200 {
        bail!("stats: HTTP {st}");
    }
    Ok(serde_json::from_slice(&b)?)
}

async fn spawn_backend(exe: &Path, dir: &Path, name: &str) -> anyhow::Result<(Kid, SocketAddr)> {
    let addr = loopback(free_ports(1)?[0]);
    let mut cmd = Command::new(exe);
    cmd.args(["bench", "lb", "--role", "backend", "--listen"])
        .arg(addr.to_string());
    let mut kid = Kid::spawn(
        &format!("backend {name}"),
        &mut cmd,
        &dir.join(format!("backend-{name}.log")),
        false,
    )?;
    wait_200(
        &mut kid,
        addr,
        STATS_PATH,
        Instant::now() + Duration::from_secs(10),
    )
    .await?;
    Ok((kid, addr))
}

// ------------------------------------------------------------------ /proc accounting

/// pid -> (ppid, utime + stime ticks)
fn proc_table() -> HashMap<u32, (u32, u64)> {
    let mut m = HashMap::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return m;
    };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(i) = s.rfind(')') else { continue };
        let f: Vec<&str> = s[i + 1..].split_whitespace().collect();
        // After the comm: state(0) ppid(1) ... utime(11) stime(12)
        if f.len() > 12 {
            let ppid = f[1].parse().unwrap_or(0);
            let t = f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0);
            m.insert(pid, (ppid, t));
        }
    }
    m
}

fn tree(root: u32, table: &HashMap<u32, (u32, u64)>) -> Vec<u32> {
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(
            table
                .iter()
                .filter(|(_, (pp, _))| *pp == p)
                .map(|(c, _)| *c),
        );
        i += 1;
    }
    out
}

/// CPU ticks used so far by `root` and its descendants (nginx's workers).
fn tree_ticks(root: u32) -> u64 {
    let t = proc_table();
    tree(root, &t)
        .iter()
        .filter_map(|p| t.get(p))
        .map(|x| x.1)
        .sum()
}

fn tree_rss_mib(root: u32) -> f64 {
    let t = proc_table();
    tree(root, &t)
        .iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .sum::<f64>()
        / 1024.0
}

fn clk_tck() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

// ------------------------------------------------------------------ wrk

#[derive(Debug, Clone, Default, Serialize)]
struct WrkResult {
    requests: u64,
    seconds: f64,
    req_per_s: f64,
    p50_ms: f64,
    p75_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    socket_errors: u64,
    non_2xx_3xx: u64,
}

impl WrkResult {
    fn errors(&self) -> u64 {
        self.socket_errors + self.non_2xx_3xx
    }
}

/// "553.00us" / "1.20ms" / "2.00s" / "1.00m" → ms.
fn parse_wrk_time(s: &str) -> Option<f64> {
    let s = s.trim();
    for (suf, mul) in [
        ("us", 1e-3),
        ("ms", 1.0),
        ("s", 1e3),
        ("m", 60e3),
        ("h", 3600e3),
    ] {
        if let Some(v) = s.strip_suffix(suf) {
            return v.parse::<f64>().ok().map(|x| x * mul);
        }
    }
    None
}

fn parse_wrk(out: &str) -> anyhow::Result<WrkResult> {
    let mut r = WrkResult::default();
    let mut in_dist = false;
    let mut have_rps = false;
    for line in out.lines() {
        let t = line.trim();
        if t.starts_with("Latency Distribution") {
            in_dist = true;
            continue;
        }
        if in_dist {
            let mut it = t.split_whitespace();
            if let (Some(p), Some(v)) = (it.next(), it.next()) {
                if let Some(p) = p.strip_suffix('%') {
                    let v = parse_wrk_time(v).context("latency value")?;
                    match p {
                        "50" => r.p50_ms = v,
                        "75" => r.p75_ms = v,
                        "90" => r.p90_ms = v,
                        "99" => r.p99_ms = v,
                        _ => {}
                    }
                    continue;
                }
            }
            in_dist = false;
        }
        if t.contains(" requests in ") {
            // "123456 requests in 10.00s, 15.00MB read"
            let mut it = t.split_whitespace();
            r.requests = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            if let Some(d) = t
                .split(" requests in ")
                .nth(1)
                .and_then(|x| x.split(',').next())
            {
                r.seconds = parse_wrk_time(d).unwrap_or(0.0) / 1e3;
            }
        } else if let Some(v) = t.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            r.socket_errors = v
                .split(',')
                .filter_map(|kv| kv.split_whitespace().nth(1))
                .filter_map(|n| n.parse::<u64>().ok())
                .sum();
        } else if let Some(v) = t.strip_prefix("Non-2xx or 3xx responses:") {
            r.non_2xx_3xx = v.trim().parse().unwrap_or(0);
        } else if let Some(v) = t.strip_prefix("Requests/sec:") {
            r.req_per_s = v.trim().parse().context("Requests/sec")?;
            have_rps = true;
        }
    }
    if !have_rps {
        bail!("no Requests/sec in wrk's output:\n{out}");
    }
    Ok(r)
}

async fn run_wrk(
    args: &LbBenchArgs,
    wrk: &Path,
    addr: SocketAddr,
    secs: u64,
) -> anyhow::Result<WrkResult> {
    let mut cmd = Command::new(wrk);
    cmd.arg(format!("-t{}", args.threads.max(1)))
        .arg(format!("-c{}", args.connections.max(args.threads.max(1))))
        .arg(format!("-d{secs}s"))
        .arg("--latency")
        .arg("--timeout")
        .arg("5s")
        .arg(format!("http://{addr}/"))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(secs + 30), cmd.output())
        .await
        .map_err(|_| anyhow!("wrk did not finish in {} s", secs + 30))?
        .context("run wrk")?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        bail!(
            "wrk failed ({}): {}{}",
            out.status,
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_wrk(&text)
}

// ------------------------------------------------------------------ throughput

#[derive(Debug, Clone, Serialize)]
struct ThroughputRun {
    system: String,
    round: usize,
    #[serde(flatten)]
    wrk: WrkResult,
    /// CPU of the proxy's processes (all of nginx's), % of one core.
    cpu_pct: Option<f64>,
}

struct Target {
    system: &'static str,
    addr: SocketAddr,
    pid: Option<u32>,
}

fn nginx_conf(
    dir: &Path,
    workers: usize,
    port: u16,
    backends: &[SocketAddr],
    keepalive: usize,
    root: bool,
) -> String {
    let d = dir.display();
    let servers: String = backends
        .iter()
        .map(|b| format!("        server {b};\n"))
        .collect();
    let user = if root { "user root root;\n" } else { "" };
    format!(
        r#"{user}worker_processes {workers};
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/nginx-tmp/body;
    proxy_temp_path {d}/nginx-tmp/proxy;
    fastcgi_temp_path {d}/nginx-tmp/fastcgi;
    uwsgi_temp_path {d}/nginx-tmp/uwsgi;
    scgi_temp_path {d}/nginx-tmp/scgi;
    keepalive_timeout 60s;
    keepalive_requests 1000000;
    upstream backends {{
{servers}        keepalive {keepalive};
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
}}
"#
    )
}

fn haproxy_conf(workers: usize, port: u16, backends: &[SocketAddr]) -> String {
    let servers: String = backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("    server b{} {b}\n", i + 1))
        .collect();
    format!(
        r#"global
    nbthread {workers}
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
    option http-keep-alive
    option forwardfor
    http-reuse always
frontend fe
    bind 127.0.0.1:{port}
    default_backend be
backend be
    balance roundrobin
{servers}"#
    )
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Starts berth's proxy child and waits for its `ready` line.
async fn start_berth_proxy(
    ctx: &Ctx,
    backends: &[SocketAddr],
) -> anyhow::Result<(Kid, SocketAddr, Option<String>)> {
    let port = free_ports(1)?[0];
    let cfg = ProxyChildConfig {
        port,
        targets: backends
            .iter()
            .enumerate()
            .map(|(i, a)| (format!("i-bench{i:012}"), *a))
            .collect(),
        health: HealthParams::from_args(&ctx.args),
    };
    let path = ctx.dir.join("berth-proxy.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&cfg)?)?;
    let mut cmd = Command::new(&ctx.exe);
    cmd.args(["bench", "lb", "--role", "proxy", "--workers"])
        .arg(ctx.args.workers.to_string())
        .arg("--config")
        .arg(&path);
    let mut kid = Kid::spawn(
        "berth proxy",
        &mut cmd,
        &ctx.dir.join("berth-proxy.log"),
        true,
    )?;
    let stdout = kid.child.stdout.take().context("proxy stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let wait = Duration::from_secs(
        ctx.args.hc_interval as u64 * (ctx.args.healthy_threshold as u64 + 2) + 20,
    );
    let deadline = Instant::now() + wait;
    let mut addr = None;
    let mut note = None;
    loop {
        let line = match tokio::time::timeout_at(deadline.into(), lines.next_line()).await {
            Err(_) => bail!(
                "berth proxy not ready within {} s\n{}",
                wait.as_secs(),
                kid.log_tail()
            ),
            Ok(Ok(Some(l))) => l,
            Ok(Ok(None)) | Ok(Err(_)) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                kid.check_alive()?;
                bail!("berth proxy closed its stdout\n{}", kid.log_tail());
            }
        };
        if let Some(a) = line.strip_prefix("listening ") {
            addr = Some(a.trim().parse::<SocketAddr>()?);
        } else if line.starts_with("ready") {
            if line != "ready" {
                note = Some(format!("berth proxy: {line}"));
            }
            break;
        }
    }
    // Keep draining its stdout so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let addr = addr.context("berth proxy printed no listening address")?;
    wait_200(&mut kid, addr, "/", Instant::now() + READY_DEADLINE).await?;
    Ok((kid, addr, note))
}

async fn start_nginx(
    ctx: &Ctx,
    bin: &Path,
    backends: &[SocketAddr],
) -> anyhow::Result<(Kid, SocketAddr)> {
    let port = free_ports(1)?[0];
    let tmp = ctx.dir.join("nginx-tmp");
    std::fs::create_dir_all(&tmp)?;
    let conf = ctx.dir.join("nginx.conf");
    std::fs::write(
        &conf,
        nginx_conf(
            &ctx.dir,
            ctx.args.workers.max(1),
            port,
            backends,
            ctx.args.connections.max(1),
            running_as_root(),
        ),
    )?;
    let mut cmd = Command::new(bin);
    cmd.arg("-p")
        .arg(&ctx.dir)
        .arg("-e")
        .arg(ctx.dir.join("nginx-error.log"))
        .arg("-c")
        .arg(&conf)
        .arg("-g")
        .arg("daemon off;");
    let mut kid = Kid::spawn("nginx", &mut cmd, &ctx.dir.join("nginx.log"), false)?;
    let addr = loopback(port);
    wait_200(&mut kid, addr, "/", Instant::now() + READY_DEADLINE).await?;
    Ok((kid, addr))
}

async fn start_haproxy(
    ctx: &Ctx,
    bin: &Path,
    backends: &[SocketAddr],
) -> anyhow::Result<(Kid, SocketAddr)> {
    let port = free_ports(1)?[0];
    let conf = ctx.dir.join("haproxy.cfg");
    std::fs::write(&conf, haproxy_conf(ctx.args.workers.max(1), port, backends))?;
    let mut cmd = Command::new(bin);
    cmd.arg("-f").arg(&conf).arg("-db");
    let mut kid = Kid::spawn("haproxy", &mut cmd, &ctx.dir.join("haproxy.log"), false)?;
    let addr = loopback(port);
    wait_200(&mut kid, addr, "/", Instant::now() + READY_DEADLINE).await?;
    Ok((kid, addr))
}

struct Ctx {
    args: LbBenchArgs,
    exe: PathBuf,
    dir: PathBuf,
    wrk: PathBuf,
    nginx: PathBuf,
    haproxy: PathBuf,
    notes: Vec<String>,
}

#[derive(Debug, Default, Serialize)]
struct ThroughputReport {
    runs: Vec<ThroughputRun>,
    rss_mib: HashMap<String, f64>,
}

async fn throughput(ctx: &mut Ctx) -> anyhow::Result<ThroughputReport> {
    let a = ctx.args.clone();
    println!(
        "\n== throughput: wrk -t{} -c{} -d{}s --latency (after a {} s warm-up), {} backends, {} worker{} per proxy, {} round{} ==",
        a.threads,
        a.connections,
        a.duration,
        a.warmup,
        a.backends,
        a.workers,
        if a.workers == 1 { "" } else { "s" },
        a.rounds,
        if a.rounds == 1 { "" } else { "s" },
    );
    let mut backends = Vec::new();
    let mut kids = Vec::new();
    for i in 0..a.backends.max(1) {
        let (k, addr) = spawn_backend(&ctx.exe, &ctx.dir, &format!("t{i}")).await?;
        backends.push(addr);
        kids.push(k);
    }
    let mut targets = vec![Target {
        system: "direct",
        addr: backends[0],
        pid: kids[0].pid(),
    }];
    // berth first: its targets need two passing health checks before they take traffic.
    let mut berth = None;
    match start_berth_proxy(ctx, &backends).await {
        Ok((k, addr, note)) => {
            if let Some(n) = note {
                println!("  note: {n}");
                ctx.notes.push(n);
            }
            targets.push(Target {
                system: "berth",
                addr,
                pid: k.pid(),
            });
            berth = Some(k);
        }
        Err(e) => {
            let msg = format!(
                "berth's proxy is not usable, skipped: {}",
                first_lines(&format!("{e:#}"), 14)
            );
            println!("  {msg}");
            ctx.notes.push(msg);
        }
    }
    let (mut nginx, naddr) = start_nginx(ctx, &ctx.nginx, &backends).await?;
    targets.push(Target {
        system: "nginx",
        addr: naddr,
        pid: nginx.pid(),
    });
    let (mut haproxy, haddr) = start_haproxy(ctx, &ctx.haproxy, &backends).await?;
    targets.push(Target {
        system: "haproxy",
        addr: haddr,
        pid: haproxy.pid(),
    });
    let tck = clk_tck();
    let mut rep = ThroughputReport::default();
    for round in 1..=a.rounds.max(1) {
        let mut order: Vec<&Target> = targets.iter().collect();
        if round % 2 == 0 {
            order.reverse();
        }
        for t in order {
            if a.warmup > 0 {
                run_wrk(&a, &ctx.wrk, t.addr, a.warmup).await?;
            }
            let t0 = t.pid.map(tree_ticks);
            let w = run_wrk(&a, &ctx.wrk, t.addr, a.duration).await?;
            let cpu = match (t.pid, t0) {
                (Some(p), Some(t0)) if w.seconds > 0.0 => {
                    Some(100.0 * (tree_ticks(p).saturating_sub(t0)) as f64 / tck / w.seconds)
                }
                _ => None,
            };
            println!(
                "  round {round} {:<8} {:>9.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  errors {}  cpu {}",
                t.system,
                w.req_per_s,
                w.p50_ms,
                w.p99_ms,
                w.errors(),
                cpu.map(|c| format!("{c:.0}%")).unwrap_or_else(|| "-".into())
            );
            rep.runs.push(ThroughputRun {
                system: t.system.into(),
                round,
                wrk: w,
                cpu_pct: cpu,
            });
        }
        if let Some(k) = berth.as_mut() {
            k.check_alive()?;
        }
        nginx.check_alive()?;
        haproxy.check_alive()?;
    }
    for t in &targets {
        if let Some(p) = t.pid {
            rep.rss_mib.insert(t.system.into(), tree_rss_mib(p));
        }
    }
    if let Some(mut k) = berth {
        k.stop().await;
    }
    nginx.stop().await;
    haproxy.stop().await;
    for k in kids.iter_mut() {
        k.stop().await;
    }
    Ok(rep)
}

fn first_lines(s: &str, n: usize) -> String {
    s.lines().take(n).collect::<Vec<_>>().join("\n    ")
}

/// The best run of each system, by req/s.
fn best_runs(runs: &[ThroughputRun]) -> Vec<ThroughputRun> {
    let mut out: Vec<ThroughputRun> = Vec::new();
    for sys in ["direct", "berth", "nginx", "haproxy"] {
        if let Some(b) = runs
            .iter()
            .filter(|r| r.system == sys)
            .max_by(|a, b| a.wrk.req_per_s.total_cmp(&b.wrk.req_per_s))
        {
            out.push(b.clone());
        }
    }
    out
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map(|x| format!("{x:.2}x")).unwrap_or_else(|| "-".into())
}

fn print_throughput(rep: &ThroughputReport, rounds: usize) -> Vec<Value> {
    let best = best_runs(&rep.runs);
    let nginx = best.iter().find(|r| r.system == "nginx").cloned();
    println!(
        "\n{:<10} {:>9} {:>8} {:>8} {:>7} {:>10} {:>10} {:>10} {:>6} {:>8}",
        "proxy",
        "req/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "req/s/ngx",
        "p50/ngx",
        "p99/ngx",
        "cpu",
        "RSS MiB"
    );
    let mut js = Vec::new();
    for r in &best {
        let (rr, r50, r99) = match &nginx {
            Some(n) => (
                ratio(r.wrk.req_per_s, n.wrk.req_per_s),
                ratio(r.wrk.p50_ms, n.wrk.p50_ms),
                ratio(r.wrk.p99_ms, n.wrk.p99_ms),
            ),
            None => (None, None, None),
        };
        let label = if r.system == "direct" {
            "direct*"
        } else {
            r.system.as_str()
        };
        println!(
            "{:<10} {:>9.0} {:>8.2} {:>8.2} {:>7} {:>10} {:>10} {:>10} {:>6} {:>8}",
            label,
            r.wrk.req_per_s,
            r.wrk.p50_ms,
            r.wrk.p99_ms,
            r.wrk.errors(),
            fmt_ratio(rr),
            fmt_ratio(r50),
            fmt_ratio(r99),
            r.cpu_pct
                .map(|c| format!("{c:.0}%"))
                .unwrap_or_else(|| "-".into()),
            rep.rss_mib
                .get(&r.system)
                .map(|m| format!("{m:.1}"))
                .unwrap_or_else(|| "-".into()),
        );
        js.push(json!({
            "system": r.system, "round": r.round, "req_per_s": r.wrk.req_per_s,
            "p50_ms": r.wrk.p50_ms, "p99_ms": r.wrk.p99_ms, "errors": r.wrk.errors(),
            "cpu_pct": r.cpu_pct, "rss_mib": rep.rss_mib.get(&r.system),
            "req_per_s_over_nginx": rr, "p50_over_nginx": r50, "p99_over_nginx": r99,
        }));
    }
    println!(
        "(best of {rounds} interleaved round{} by req/s; direct* = wrk straight at one backend, the ceiling; \
         errors = socket errors + non-2xx/3xx; cpu = the proxy's processes, % of one core; ratios to nginx: \
         req/s higher is better, latency lower is better)",
        if rounds == 1 { "" } else { "s" }
    );
    js
}

// ------------------------------------------------------------------ steady load

#[derive(Default)]
struct LoadShared {
    stop: AtomicBool,
    /// (start unix ns, latency µs, ok)
    samples: Mutex<Vec<(u64, u32, bool)>>,
    /// (unix ns, what), the first 200
    failures: Mutex<Vec<(u64, String)>>,
}

struct Load {
    shared: Arc<LoadShared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(addr: SocketAddr) -> anyhow::Result<Sender> {
    let s = TcpStream::connect(addr).await?;
    let _ = s.set_nodelay(true);
    let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await?;
    tokio::spawn(conn);
    Ok(tx)
}

impl Load {
    fn start(addr: SocketAddr, clients: usize, pause: Duration) -> Load {
        let shared = Arc::new(LoadShared::default());
        let tasks = (0..clients.max(1))
            .map(|_| {
                let sh = shared.clone();
                tokio::spawn(async move {
                    let mut local = Vec::new();
                    let mut conn: Option<Sender> = None;
                    while !sh.stop.load(Ordering::Relaxed) {
                        if let Some(c) = conn.as_mut() {
                            // A keep-alive connection the proxy closed while idle: reconnect,
                            // as any client would, without counting a failure.
                            if c.ready().await.is_err() {
                                conn = None;
                            }
                        }
                        let start = now_ns();
                        let t0 = Instant::now();
                        let res: anyhow::Result<u16> = async {
                            if conn.is_none() {
                                conn = Some(connect(addr).await.context("connect")?);
                            }
                            let c = conn.as_mut().unwrap();
                            let req = Request::get("/")
                                .header(hyper::header::HOST, "bench.local")
                                .body(Empty::<Bytes>::new())?;
                            let resp = tokio::time::timeout(Duration::from_secs(10), async {
                                let r = c.send_request(req).await?;
                                let st = r.status().as_u16();
                                r.into_body().collect().await?;
                                anyhow::Ok(st)
                            })
                            .await
                            .map_err(|_| anyhow!("timed out after 10 s"))??;
                            Ok(resp)
                        }
                        .await;
                        let lat = t0.elapsed().as_micros().min(u32::MAX as u128) as u32;
                        let ok = matches!(res, Ok(200));
                        local.push((start, lat, ok));
                        if !ok {
                            let what = match res {
                                Ok(st) => format!("HTTP {st}"),
                                Err(e) => {
                                    conn = None;
                                    format!("{e:#}")
                                }
                            };
                            let mut f = sh.failures.lock().unwrap();
                            if f.len() < 200 {
                                f.push((start, what));
                            }
                        }
                        if local.len() >= 4096 {
                            sh.samples.lock().unwrap().append(&mut local);
                        }
                        if !pause.is_zero() {
                            tokio::time::sleep(pause).await;
                        }
                    }
                    sh.samples.lock().unwrap().append(&mut local);
                })
            })
            .collect();
        Load { shared, tasks }
    }

    async fn stop(self) -> (Vec<(u64, u32, bool)>, Vec<(u64, String)>) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(15), t).await;
        }
        let mut s = std::mem::take(&mut *self.shared.samples.lock().unwrap());
        s.sort_by_key(|x| x.0);
        let f = std::mem::take(&mut *self.shared.failures.lock().unwrap());
        (s, f)
    }
}

// ------------------------------------------------------------------ join / death

#[derive(Debug, Clone, Serialize)]
struct JoinSample {
    /// apply() returned → the backend answered its first health check.
    apply_to_first_check_ms: Option<f64>,
    /// First passing health check → first proxied request (the brief's figure).
    first_check_to_first_request_ms: f64,
    /// The passing check that made it healthy (the threshold-th) → first request.
    healthy_check_to_first_request_ms: Option<f64>,
    /// `Lb::health()` said healthy → first request.
    lb_healthy_to_first_request_ms: Option<f64>,
    /// apply() returned → first request.
    apply_to_first_request_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
struct DeathSample {
    /// SIGKILL → `Lb::health()` says unhealthy.
    kill_to_unhealthy_ms: f64,
    /// Client requests started in [kill, unhealthy + 1 s] and how many failed.
    requests: u64,
    failed: u64,
    max_latency_ms: f64,
}

#[derive(Debug, Default, Serialize)]
struct ChurnReport {
    join: Vec<JoinSample>,
    death: Vec<DeathSample>,
    total_requests: u64,
    total_failed: u64,
    /// Failed requests by kind.
    failure_kinds: HashMap<String, u64>,
    failure_examples: Vec<String>,
}

async fn churn(args: LbBenchArgs, exe: PathBuf, dir: PathBuf) -> anyhow::Result<ChurnReport> {
    let hc = HealthParams::from_args(&args);
    println!(
        "\n== target join and death: in-process berth Lb ({} runtime threads of this process), health check every {} s, healthy/unhealthy threshold {}/{}; steady load of {} clients ({} ms pause) ==",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        hc.interval,
        hc.healthy,
        hc.unhealthy,
        args.churn_clients,
        args.churn_pause_ms,
    );
    let port = free_ports(1)?[0];
    let lb = Lb::new(lb_options());
    let mut rx = lb.health();
    let mut base: Vec<(String, SocketAddr)> = Vec::new();
    let mut base_kids = Vec::new();
    for i in 0..2 {
        let (k, a) = spawn_backend(&exe, &dir, &format!("base{i}")).await?;
        base.push((format!("i-base{i:011}"), a));
        base_kids.push(k);
    }
    let errs = lb.apply(routing(port, &base, hc)).await;
    if !errs.is_empty() {
        bail!("listener errors: {errs:?}");
    }
    let listen = lb
        .listening()
        .get(LISTENER_ARN)
        .copied()
        .context("listener not listening")?;
    let hc_wait =
        Duration::from_secs(hc.interval as u64 * (hc.healthy.max(hc.unhealthy) as u64 + 2) + 10);
    let keys: Vec<TargetKey> = base.iter().map(|(id, a)| target_key(id, *a)).collect();
    wait_state(&mut rx, &keys, "healthy", Instant::now() + hc_wait).await?;
    let load = Load::start(
        listen,
        args.churn_clients,
        Duration::from_millis(args.churn_pause_ms),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut rep = ChurnReport::default();
    let res = churn_measure(
        &args, &exe, &dir, &lb, &mut rx, port, &base, hc, hc_wait, &mut rep,
    )
    .await;
    let (samples, failures) = load.stop().await;
    lb.shutdown().await;
    for k in base_kids.iter_mut() {
        k.stop().await;
    }
    let windows = res?;
    for (s, w) in rep.death.iter_mut().zip(&windows) {
        let in_w = samples.iter().filter(|x| x.0 >= w.0 && x.0 <= w.1);
        let (mut n, mut f, mut max) = (0u64, 0u64, 0u32);
        for x in in_w {
            n += 1;
            if !x.2 {
                f += 1;
            }
            max = max.max(x.1);
        }
        s.requests = n;
        s.failed = f;
        s.max_latency_ms = max as f64 / 1e3;
    }
    rep.total_requests = samples.len() as u64;
    rep.total_failed = samples.iter().filter(|x| !x.2).count() as u64;
    for (_, what) in &failures {
        let kind: String = what.chars().take(80).collect();
        *rep.failure_kinds.entry(kind).or_default() += 1;
    }
    rep.failure_examples = failures.iter().take(5).map(|(_, w)| w.clone()).collect();
    Ok(rep)
}

/// Runs the join then the death samples; returns the death windows (unix ns).
#[allow(clippy::too_many_arguments)]
async fn churn_measure(
    args: &LbBenchArgs,
    exe: &Path,
    dir: &Path,
    lb: &Arc<Lb>,
    rx: &mut HealthRx,
    port: u16,
    base: &[(String, SocketAddr)],
    hc: HealthParams,
    hc_wait: Duration,
    rep: &mut ChurnReport,
) -> anyhow::Result<Vec<(u64, u64)>> {
    let samples = args.samples.max(1);
    // ---- join
    for i in 0..samples {
        let (mut kid, addr) = spawn_backend(exe, dir, &format!("join{i}")).await?;
        let id = format!("i-join{i:011}");
        let key = target_key(&id, addr);
        let mut cfg = base.to_vec();
        cfg.push((id.clone(), addr));
        let errs = lb.apply(routing(port, &cfg, hc)).await;
        if !errs.is_empty() {
            bail!("listener errors: {errs:?}");
        }
        let applied = now_ns();
        let deadline = Instant::now() + hc_wait + Duration::from_secs(10);
        let mut lb_healthy = None;
        let mut closed = false;
        let stats = loop {
            if closed {
                tokio::time::sleep(Duration::from_millis(10)).await;
            } else {
                tokio::select! {
                    r = rx.changed() => { if r.is_err() { closed = true; } }
                    _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                }
            }
            if lb_healthy.is_none() && state_of(rx, &key) == "healthy" {
                lb_healthy = Some(now_ns());
            }
            kid.check_alive()?;
            let s = backend_stats(addr).await?;
            if s.first_request_ns > 0 {
                break s;
            }
            if Instant::now() > deadline {
                bail!(
                    "join sample {}: the new target got no request within {} s (health checks answered: {}, LB state {})",
                    i + 1,
                    hc_wait.as_secs() + 10,
                    s.health_ns.len(),
                    state_of(rx, &key)
                );
            }
        };
        let first_req = stats.first_request_ns;
        let Some(&first_check) = stats.health_ns.first() else {
            bail!(
                "join sample {}: a request arrived before any health check",
                i + 1
            );
        };
        let healthy_check = stats
            .health_ns
            .get(hc.healthy as usize - 1)
            .copied()
            .filter(|&t| t <= first_req);
        let s = JoinSample {
            apply_to_first_check_ms: Some(delta_ms(applied, first_check)),
            first_check_to_first_request_ms: delta_ms(first_check, first_req),
            healthy_check_to_first_request_ms: healthy_check.map(|t| delta_ms(t, first_req)),
            lb_healthy_to_first_request_ms: lb_healthy.map(|t| delta_ms(t, first_req)),
            apply_to_first_request_ms: delta_ms(applied, first_req),
        };
        println!(
            "  join {}: apply -> 1st passing check {:.1} ms; 1st passing check -> 1st request {:.1} ms; check #{} (healthy) -> 1st request {}; Lb::health healthy -> 1st request {}; apply -> 1st request {:.1} ms",
            i + 1,
            s.apply_to_first_check_ms.unwrap_or(0.0),
            s.first_check_to_first_request_ms,
            hc.healthy,
            s.healthy_check_to_first_request_ms.map(|v| format!("{v:.1} ms")).unwrap_or_else(|| "-".into()),
            s.lb_healthy_to_first_request_ms.map(|v| format!("{v:.1} ms")).unwrap_or_else(|| "-".into()),
            s.apply_to_first_request_ms,
        );
        rep.join.push(s);
        // Deregister it (gone from the config) and stop it.
        let errs = lb.apply(routing(port, base, hc)).await;
        if !errs.is_empty() {
            bail!("listener errors: {errs:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        kid.stop().await;
    }
    // ---- death
    let mut victims = Vec::new();
    let mut cfg = base.to_vec();
    for i in 0..samples {
        let (kid, addr) = spawn_backend(exe, dir, &format!("victim{i}")).await?;
        let id = format!("i-victim{i:09}");
        cfg.push((id.clone(), addr));
        victims.push((kid, target_key(&id, addr)));
    }
    let errs = lb.apply(routing(port, &cfg, hc)).await;
    if !errs.is_empty() {
        bail!("listener errors: {errs:?}");
    }
    let keys: Vec<TargetKey> = victims.iter().map(|v| v.1.clone()).collect();
    wait_state(rx, &keys, "healthy", Instant::now() + hc_wait).await?;
    let mut windows = Vec::new();
    for (i, (kid, key)) in victims.iter_mut().enumerate() {
        // Let it take traffic for a moment first.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let killed = now_ns();
        kid.kill().await;
        let unhealthy = wait_state(
            rx,
            std::slice::from_ref(key),
            "unhealthy",
            Instant::now() + hc_wait,
        )
        .await?;
        let ms = delta_ms(killed, unhealthy);
        println!(
            "  death {}: SIGKILL -> Lb::health unhealthy {:.1} ms",
            i + 1,
            ms
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        windows.push((killed, unhealthy + 1_000_000_000));
        rep.death.push(DeathSample {
            kill_to_unhealthy_ms: ms,
            requests: 0,
            failed: 0,
            max_latency_ms: 0.0,
        });
    }
    Ok(windows)
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.1} ms"))
        .unwrap_or_else(|| "-".into())
}

fn print_churn(rep: &ChurnReport, hc: HealthParams) -> Value {
    let j = |f: fn(&JoinSample) -> Option<f64>| median(rep.join.iter().filter_map(f).collect());
    let first = j(|s| Some(s.first_check_to_first_request_ms));
    let healthy = j(|s| s.healthy_check_to_first_request_ms);
    let lbh = j(|s| s.lb_healthy_to_first_request_ms);
    let apply_first = j(|s| Some(s.apply_to_first_request_ms));
    let apply_check = j(|s| s.apply_to_first_check_ms);
    let dead = median(rep.death.iter().map(|s| s.kill_to_unhealthy_ms).collect());
    let failed: u64 = rep.death.iter().map(|s| s.failed).sum();
    let reqs: u64 = rep.death.iter().map(|s| s.requests).sum();
    let maxlat = rep
        .death
        .iter()
        .map(|s| s.max_latency_ms)
        .fold(0.0, f64::max);
    println!("\ntarget join (median of {}):", rep.join.len());
    println!("  1st passing health check -> 1st proxied request: {}  (expected ~ (healthy threshold - 1) x interval = {} s)", fmt_ms(first), (hc.healthy.saturating_sub(1)) * hc.interval);
    println!(
        "  check #{} (the one that makes it healthy) -> 1st request: {}",
        hc.healthy,
        fmt_ms(healthy)
    );
    println!("  Lb::health() healthy -> 1st request: {}", fmt_ms(lbh));
    println!(
        "  apply -> 1st health check: {};  apply -> 1st request: {}",
        fmt_ms(apply_check),
        fmt_ms(apply_first)
    );
    println!("target death (median of {}):", rep.death.len());
    println!(
        "  SIGKILL -> unhealthy in Lb::health() (out of rotation): {}  (expected <= unhealthy threshold x interval = {} s)",
        fmt_ms(dead),
        hc.unhealthy * hc.interval
    );
    println!(
        "  client requests failed from the kill to 1 s after unhealthy: {failed} of {reqs} (max latency {maxlat:.1} ms)"
    );
    for (i, s) in rep.death.iter().enumerate() {
        println!(
            "    death {}: {} of {} failed, max latency {:.1} ms",
            i + 1,
            s.failed,
            s.requests,
            s.max_latency_ms
        );
    }
    println!(
        "  steady load overall: {} requests, {} failed",
        rep.total_requests, rep.total_failed
    );
    for (k, n) in &rep.failure_kinds {
        println!("    failure: {n} x {k}");
    }
    json!({
        "health_check": {"interval_s": hc.interval, "timeout_s": hc.timeout, "healthy_threshold": hc.healthy, "unhealthy_threshold": hc.unhealthy},
        "join_median_ms": {
            "first_passing_check_to_first_request": first,
            "healthy_check_to_first_request": healthy,
            "lb_healthy_to_first_request": lbh,
            "apply_to_first_check": apply_check,
            "apply_to_first_request": apply_first,
        },
        "death_median_ms": {"kill_to_unhealthy": dead},
        "death_failed_requests": failed,
        "death_window_requests": reqs,
        "death_max_latency_ms": maxlat,
        "samples": rep,
    })
}

// ------------------------------------------------------------------ driver

async fn bench(args: LbBenchArgs) -> anyhow::Result<()> {
    if args.connections == 0 || args.duration == 0 || args.backends == 0 {
        bail!("--connections, --duration and --backends must be at least 1");
    }
    let need = |bin: &str, pkg: &str| {
        find_on_path(bin).ok_or_else(|| {
            anyhow!("bench lb: `{bin}` not found; install the Debian package `{pkg}` (apt-get install {pkg})")
        })
    };
    let (wrk, nginx, haproxy) = if args.no_throughput {
        (PathBuf::new(), PathBuf::new(), PathBuf::new())
    } else {
        (
            need(&args.wrk, "wrk")?,
            need(&args.nginx, "nginx-light")?,
            need(&args.haproxy, "haproxy")?,
        )
    };
    let exe = std::env::current_exe().context("locate the berth binary")?;
    let tmp = tempfile::Builder::new()
        .prefix("berth-bench-lb-")
        .tempdir()
        .context("create a temp dir")?;
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let nginx_v = if args.no_throughput {
        String::new()
    } else {
        first_line(&nginx, "-v")
    };
    let haproxy_v = if args.no_throughput {
        String::new()
    } else {
        first_line(&haproxy, "-v")
    };
    let wrk_v = if args.no_throughput {
        String::new()
    } else {
        first_line(&wrk, "--version")
    };
    println!(
        "berth bench lb: berth {} ({profile} build), {cpus} CPUs; wrk, the proxies and the backends all share them, everything on loopback",
        env!("CARGO_PKG_VERSION")
    );
    if profile == "debug" {
        println!("  note: debug build; use `cargo build --release` for figures that matter");
    }
    if !args.no_throughput {
        println!("  peers: {nginx_v}; {haproxy_v}; load: {wrk_v}");
    }
    println!("  temp dir {}", tmp.path().display());
    let mut ctx = Ctx {
        args: args.clone(),
        exe: exe.clone(),
        dir: tmp.path().to_path_buf(),
        wrk,
        nginx,
        haproxy,
        notes: Vec::new(),
    };
    let mut summary = json!({
        "berth_version": env!("CARGO_PKG_VERSION"),
        "profile": profile,
        "cpus": cpus,
        "workers": args.workers,
        "wrk": {"threads": args.threads, "connections": args.connections, "duration_s": args.duration, "warmup_s": args.warmup, "rounds": args.rounds, "version": wrk_v},
        "peers": {"nginx": nginx_v, "haproxy": haproxy_v},
        "backends": args.backends,
    });
    let mut line = Vec::new();
    if !args.no_throughput {
        let rep = throughput(&mut ctx).await?;
        let js = print_throughput(&rep, args.rounds.max(1));
        let best = best_runs(&rep.runs);
        let get = |s: &str| best.iter().find(|r| r.system == s);
        if let (Some(b), Some(n), Some(h)) = (get("berth"), get("nginx"), get("haproxy")) {
            line.push(format!(
                "berth {:.0} req/s = {:.2}x nginx, {:.2}x HAProxy (p99 {:.2} ms vs {:.2} / {:.2})",
                b.wrk.req_per_s,
                b.wrk.req_per_s / n.wrk.req_per_s.max(1e-9),
                b.wrk.req_per_s / h.wrk.req_per_s.max(1e-9),
                b.wrk.p99_ms,
                n.wrk.p99_ms,
                h.wrk.p99_ms
            ));
        } else if let (Some(n), Some(h)) = (get("nginx"), get("haproxy")) {
            line.push(format!(
                "berth not measured; nginx {:.0} req/s, HAProxy {:.0} req/s",
                n.wrk.req_per_s, h.wrk.req_per_s
            ));
        }
        summary["throughput"] = json!({"best": js, "runs": rep.runs, "rss_mib": rep.rss_mib, "reported": "best round by req/s"});
    }
    if !args.no_churn {
        // Its own task: a panic inside the load balancer (not implemented yet) becomes an
        // error here instead of taking the benchmark down.
        let h = tokio::spawn(churn(args.clone(), exe.clone(), ctx.dir.clone()));
        match h.await {
            Ok(Ok(rep)) => {
                let hc = HealthParams::from_args(&args);
                let js = print_churn(&rep, hc);
                let first = js["join_median_ms"]["first_passing_check_to_first_request"].as_f64();
                let dead = js["death_median_ms"]["kill_to_unhealthy"].as_f64();
                line.push(format!(
                    "a new target takes traffic {} after its first passing check ({} s interval, threshold {}), a dead one is out {} after SIGKILL with {} failed requests",
                    first.map(|v| format!("{:.2} s", v / 1e3)).unwrap_or_else(|| "-".into()),
                    hc.interval,
                    hc.healthy,
                    dead.map(|v| format!("{:.2} s", v / 1e3)).unwrap_or_else(|| "-".into()),
                    rep.death.iter().map(|s| s.failed).sum::<u64>(),
                ));
                summary["churn"] = js;
            }
            Ok(Err(e)) => {
                let m = format!("target join/death not measured: {e:#}");
                println!("\n{m}");
                ctx.notes.push(m);
            }
            Err(e) => {
                let m = format!("target join/death not measured: the load balancer panicked ({e})");
                println!("\n{m}");
                ctx.notes.push(m);
            }
        }
    }
    for n in &ctx.notes {
        println!("note: {n}");
    }
    if !line.is_empty() {
        println!("\nsummary: {}", line.join("; "));
    }
    summary["notes"] = json!(ctx.notes);
    summary["summary"] = json!(line.join("; "));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&summary)? + "\n")
            .with_context(|| format!("write {}", path.display()))?;
        println!("summary written to {}", path.display());
    }
    if args.keep_temp {
        let kept = tmp.keep();
        println!("temp dir kept: {}", kept.display());
    } else {
        tmp.close().context("remove the temp dir")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK_OUT: &str = "Running 10s test @ http://127.0.0.1:8080/
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   615.26us  120.33us   8.10ms   91.20%
    Req/Sec   103.21k     3.12k  108.93k    72.00%
  Latency Distribution
     50%  598.00us
     75%  650.00us
     90%    1.20ms
     99%    2.00s
  1027123 requests in 10.00s, 123.45MB read
  Socket errors: connect 1, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 7
Requests/sec: 102712.30
Transfer/sec:     12.35MB
";

    #[test]
    fn parses_wrk() {
        let r = parse_wrk(WRK_OUT).unwrap();
        assert_eq!(r.requests, 1027123);
        assert!((r.seconds - 10.0).abs() < 1e-9);
        assert!((r.req_per_s - 102712.30).abs() < 1e-6);
        assert!((r.p50_ms - 0.598).abs() < 1e-9);
        assert!((r.p75_ms - 0.650).abs() < 1e-9);
        assert!((r.p90_ms - 1.2).abs() < 1e-9);
        assert!((r.p99_ms - 2000.0).abs() < 1e-9);
        assert_eq!(r.socket_errors, 6);
        assert_eq!(r.non_2xx_3xx, 7);
        assert_eq!(r.errors(), 13);
        assert!(parse_wrk("garbage").is_err());
    }

    #[test]
    fn wrk_times() {
        assert_eq!(parse_wrk_time("1.00m"), Some(60_000.0));
        assert_eq!(parse_wrk_time("3.00ms"), Some(3.0));
        assert_eq!(parse_wrk_time("x"), None);
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }

    #[test]
    fn routing_forwards_to_the_group() {
        let hc = HealthParams {
            interval: 5,
            timeout: 2,
            healthy: 2,
            unhealthy: 2,
        };
        let r = routing(8080, &[("i-1".into(), loopback(9000))], hc);
        assert_eq!(
            r.listeners[0].rules[0].actions[0].forward_targets(),
            vec![(TG_ARN.to_string(), 1)]
        );
        let tg = &r.target_groups[TG_ARN];
        assert_eq!(tg.targets[0].port, 9000);
        assert_eq!(tg.record.settings().algorithm, "round_robin");
    }

    #[test]
    fn proxy_configs_mention_every_backend() {
        let b = [loopback(9001), loopback(9002)];
        let n = nginx_conf(Path::new("/tmp/x"), 2, 8080, &b, 64, true);
        assert!(
            n.contains("server 127.0.0.1:9001;")
                && n.contains("worker_processes 2;")
                && n.contains("keepalive 64;")
        );
        let h = haproxy_conf(2, 8080, &b);
        assert!(
            h.contains("server b2 127.0.0.1:9002")
                && h.contains("nbthread 2")
                && h.contains("http-reuse always")
        );
    }
}
