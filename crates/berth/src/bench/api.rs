//! `berth bench api`:
//!
//! Starts real `berth server` child processes (this very binary) on free
//! loopback ports, each in a fresh temp data dir with fsync on, and drives
//! them with many concurrent HTTP/1.1 keep-alive clients sending signed
//! RegisterTaskDefinition requests. A peer (etcd, when installed) is measured
//! in the same run the same way, and berth's throughput is printed as a ratio
//! of it (see CONVENTIONS.md "Benchmarks": absolute numbers alone mean little
//! on noisy machines).
//!
//! Every child is started with `kill_on_drop`, and the whole run sits under
//! one hard deadline and a ctrl-c handler: when either fires, the run's
//! future is dropped, which kills the children and removes the temp dirs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use base64::Engine as _;
use bytes::Bytes;
use clap::{ArgAction, Args};
use http_body_util::Full;
use hyper::Request;
use serde_json::{json, Value};
use tokio::process::Command;

use super::harness::*;

const TD_BODY: &str = r#"{"family":"bench","containerDefinitions":[{"name":"app","image":"busybox","cpu":128,"memory":64,"portMappings":[{"containerPort":8080}],"essential":true}]}"#;
/// Size of the value etcd stores per put (about one task definition).
const ETCD_VALUE_BYTES: usize = 300;

#[derive(Args, Debug, Clone)]
pub struct ApiBenchArgs {
    /// Concurrent clients, each with its own keep-alive connection.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Measured requests per topology (split over the clients).
    #[arg(long, default_value_t = 10_000)]
    pub requests: usize,
    /// Warm-up requests per topology before measuring.
    #[arg(long, default_value_t = 200)]
    pub warmup: usize,
    /// Topologies to run, as node counts (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,3")]
    pub nodes: Vec<usize>,
    /// Also write the summary as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Hard deadline for the whole run, in seconds.
    #[arg(long, default_value_t = 600)]
    pub deadline_secs: u64,
    /// fsync every Raft log append on the servers.
    #[arg(long, default_value_t = true, action = ArgAction::Set)]
    pub fsync: bool,
    /// Fail the run if more than this percentage of berth requests fail.
    #[arg(long, default_value_t = 1.0)]
    pub max_error_pct: f64,
    /// The etcd binary used as the peer.
    #[arg(long, default_value = "etcd")]
    pub etcd: String,
    /// Skip the etcd peer.
    #[arg(long)]
    pub no_peer: bool,
    /// Skip the multi-node runs without TLS on the cluster port (the TLS-cost comparison).
    #[arg(long)]
    pub no_plain: bool,
    /// Skip the warm-restart measurement.
    #[arg(long)]
    pub no_restart: bool,
    /// Keep the temp dir (data and logs) instead of removing it.
    #[arg(long)]
    pub keep_temp: bool,
    /// Parent directory of the temp dir holding data dirs and logs (default:
    /// $TMPDIR or /tmp). Use a disk-backed one: fsync on tmpfs costs nothing.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The berth binary to start as servers (default: this executable).
    #[arg(long)]
    pub berth_bin: Option<PathBuf>,
}

/// One measured load phase.
#[derive(Debug, Clone)]
struct LoadStats {
    system: String,
    nodes: usize,
    clients: usize,
    requests: usize,
    ok: usize,
    errors: usize,
    elapsed: Duration,
    p50: Duration,
    p90: Duration,
    p99: Duration,
    max: Duration,
    /// Error kind -> count, and up to a few example messages.
    error_kinds: BTreeMap<String, usize>,
    error_samples: Vec<String>,
}

impl LoadStats {
    fn rps(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.ok as f64 / s
        } else {
            0.0
        }
    }

    fn error_pct(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            100.0 * self.errors as f64 / self.requests as f64
        }
    }

    fn label(&self) -> String {
        format!(
            "{} {} node{}",
            self.system,
            self.nodes,
            if self.nodes == 1 { "" } else { "s" }
        )
    }

    fn print(&self) {
        println!(
            "  {}: {:.0} req/s  p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms  errors {} ({:.2}%)  [{} requests, {} clients, {:.2} s]",
            self.label(),
            self.rps(),
            ms(self.p50),
            ms(self.p90),
            ms(self.p99),
            ms(self.max),
            self.errors,
            self.error_pct(),
            self.requests,
            self.clients,
            self.elapsed.as_secs_f64()
        );
        for (kind, n) in &self.error_kinds {
            println!("    error: {n} x {kind}");
        }
        for s in &self.error_samples {
            println!("    e.g. {s}");
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "system": self.system,
            "nodes": self.nodes,
            "clients": self.clients,
            "requests": self.requests,
            "ok": self.ok,
            "errors": self.errors,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "req_per_s": self.rps(),
            "p50_ms": ms(self.p50),
            "p90_ms": ms(self.p90),
            "p99_ms": ms(self.p99),
            "max_ms": ms(self.max),
            "error_kinds": self.error_kinds,
        })
    }
}

#[derive(Debug, Default)]
struct Report {
    runs: Vec<LoadStats>,
    /// (what, ms)
    startup: Vec<(String, f64)>,
    /// (what, MiB)
    rss: Vec<(String, f64)>,
    /// revisions in the data dir the warm restart opened
    restart_revisions: Option<u64>,
    notes: Vec<String>,
}

// ------------------------------------------------------------------ children

/// Starts etcd members e1..eN (all at once, as a new cluster).
fn spawn_etcd(bin: &str, dir: &Path, n: usize) -> anyhow::Result<Vec<Proc>> {
    let ports = free_ports(2 * n)?;
    let cluster: Vec<String> = (0..n)
        .map(|i| format!("e{}=http://127.0.0.1:{}", i + 1, ports[2 * i + 1]))
        .collect();
    let cluster = cluster.join(",");
    let mut procs = Vec::new();
    for i in 0..n {
        let name = format!("e{}", i + 1);
        let data = dir.join(format!("{name}-data"));
        let log = dir.join(format!("{name}.log"));
        let client = format!("http://127.0.0.1:{}", ports[2 * i]);
        let peer = format!("http://127.0.0.1:{}", ports[2 * i + 1]);
        let (out, err) = open_log(&log)?;
        let mut cmd = Command::new(bin);
        cmd.arg("--name")
            .arg(&name)
            .arg("--data-dir")
            .arg(&data)
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(&cluster)
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--initial-cluster-token")
            .arg("berth-bench")
            .arg("--logger")
            .arg("zap")
            .arg("--log-outputs")
            .arg("stderr");
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ETCD") {
                cmd.env_remove(&k);
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        let spawned = Instant::now();
        let child = cmd.spawn().with_context(|| format!("start {bin}"))?;
        procs.push(Proc {
            name: format!("etcd {name}"),
            child,
            api: loopback(ports[2 * i]),
            peer: loopback(ports[2 * i + 1]),
            data,
            log,
            spawned,
        });
    }
    Ok(procs)
}

fn etcd_put_request(
    addr: SocketAddr,
    client: usize,
    seq: usize,
    value: &str,
) -> Request<Full<Bytes>> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = format!("bench/{client}/{seq}");
    let body = json!({"key": b64.encode(key), "value": value}).to_string();
    Request::post("/v3/kv/put")
        .header("host", addr.to_string())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("valid request")
}

// ------------------------------------------------------------------ waiting

async fn wait_etcd_healthy(ps: &mut [Proc], deadline: Instant) -> anyhow::Result<Duration> {
    let start = ps
        .iter()
        .map(|p| p.spawned)
        .min()
        .unwrap_or_else(Instant::now);
    loop {
        let mut ready = true;
        for p in ps.iter_mut() {
            p.check_alive()?;
            let ok = matches!(get(p.api, "/health").await,
                Ok((200, b)) if serde_json::from_slice::<Value>(&b).map(|v| v["health"] == "true").unwrap_or(false));
            ready &= ok;
        }
        if ready {
            return Ok(start.elapsed());
        }
        if Instant::now() > deadline {
            let tails: Vec<String> = ps.iter().map(|p| p.log_tail()).collect();
            bail!(
                "etcd did not report healthy within {} s\n{}",
                STARTUP_DEADLINE.as_secs(),
                tails.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ------------------------------------------------------------------ load

type MakeReq = Arc<dyn Fn(SocketAddr, usize, usize) -> Request<Full<Bytes>> + Send + Sync>;

struct ClientOut {
    latencies: Vec<Duration>,
    errors: Vec<String>,
}

fn share(total: usize, clients: usize, i: usize) -> usize {
    total / clients + usize::from(i < total % clients)
}

/// `clients` tasks, client i on `addrs[i % len]` with its own connection:
/// warm-up, then (all together) the measured requests.
async fn load(
    system: &str,
    nodes: usize,
    addrs: &[SocketAddr],
    clients: usize,
    warmup: usize,
    requests: usize,
    make: MakeReq,
) -> anyhow::Result<LoadStats> {
    let clients = clients.max(1);
    let barrier = Arc::new(tokio::sync::Barrier::new(clients + 1));
    let mut tasks = Vec::with_capacity(clients);
    for i in 0..clients {
        let addr = addrs[i % addrs.len()];
        let (w, n) = (share(warmup, clients, i), share(requests, clients, i));
        let make = make.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = None;
            let mut seq = 0usize;
            for _ in 0..w {
                let _ = send(&mut conn, addr, make(addr, i, seq), REQUEST_TIMEOUT).await;
                seq += 1;
            }
            barrier.wait().await;
            let mut out = ClientOut {
                latencies: Vec::with_capacity(n),
                errors: Vec::new(),
            };
            for _ in 0..n {
                let req = make(addr, i, seq);
                seq += 1;
                let t = Instant::now();
                match send(&mut conn, addr, req, REQUEST_TIMEOUT).await {
                    Ok((200, _)) => out.latencies.push(t.elapsed()),
                    Ok((status, body)) => {
                        let b = String::from_utf8_lossy(&body);
                        let b: String = b.chars().take(200).collect();
                        out.errors.push(format!("HTTP {status} from {addr}: {b}"));
                    }
                    Err(e) => out.errors.push(format!("{e} ({addr})")),
                }
            }
            out
        }));
    }
    barrier.wait().await;
    let started = Instant::now();
    let mut lat = Vec::with_capacity(requests);
    let mut errs = Vec::new();
    for t in tasks {
        let o = t.await.map_err(|e| anyhow!("client task failed: {e}"))?;
        lat.extend(o.latencies);
        errs.extend(o.errors);
    }
    let elapsed = started.elapsed();
    lat.sort_unstable();
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for e in &errs {
        // Group by the message up to the first digit-heavy detail: the status line or error text.
        let k: String = e.chars().take(60).collect();
        *kinds.entry(k).or_default() += 1;
    }
    Ok(LoadStats {
        system: system.to_string(),
        nodes,
        clients,
        requests,
        ok: lat.len(),
        errors: errs.len(),
        elapsed,
        p50: percentile(&lat, 50.0),
        p90: percentile(&lat, 90.0),
        p99: percentile(&lat, 99.0),
        max: lat.last().copied().unwrap_or_default(),
        error_kinds: kinds,
        error_samples: errs.into_iter().take(3).collect(),
    })
}

fn berth_register() -> MakeReq {
    Arc::new(|addr, _, _| ecs_request(addr, "RegisterTaskDefinition", TD_BODY.as_bytes()))
}

fn etcd_put() -> MakeReq {
    use rand::Rng;
    let raw: String = rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(ETCD_VALUE_BYTES)
        .map(char::from)
        .collect();
    let value: Arc<str> = base64::engine::general_purpose::STANDARD.encode(raw).into();
    Arc::new(move |addr, client, seq| etcd_put_request(addr, client, seq, &value))
}

// ------------------------------------------------------------------ phases

struct Ctx {
    args: ApiBenchArgs,
    exe: PathBuf,
    root: PathBuf,
    fs: String,
    report: Report,
}

/// Starts an n-node berth cluster; records node 1's spawn→healthz and the
/// spawn→all-voters time.
async fn start_berth(
    ctx: &mut Ctx,
    n: usize,
    dir: &Path,
    extra: &[String],
) -> anyhow::Result<Vec<Proc>> {
    std::fs::create_dir_all(dir)?;
    let ports = free_ports(2 * n)?;
    let deadline = Instant::now() + STARTUP_DEADLINE;
    let mut ps = Vec::new();
    let mut p1 = spawn_berth(
        &ctx.exe,
        1,
        &dir.join("node1-data"),
        &dir.join("node1.log"),
        loopback(ports[0]),
        loopback(ports[1]),
        None,
        ctx.args.fsync,
        extra,
    )?;
    let up = wait_berth_healthy(&mut p1, deadline).await?;
    let plural = if n == 1 { "" } else { "s" };
    println!(
        "  berth {n} node{plural}: node 1 spawn -> /healthz ok: {:.1} ms",
        ms(up)
    );
    ctx.report.startup.push((
        format!("berth {n}-node cluster: node 1 spawn -> /healthz ok (new data dir)"),
        ms(up),
    ));
    let join = p1.peer;
    let t0 = p1.spawned;
    ps.push(p1);
    for id in 2..=n as u64 {
        let i = (id as usize - 1) * 2;
        ps.push(spawn_berth(
            &ctx.exe,
            id,
            &dir.join(format!("node{id}-data")),
            &dir.join(format!("node{id}.log")),
            loopback(ports[i]),
            loopback(ports[i + 1]),
            Some(join),
            ctx.args.fsync,
            extra,
        )?);
    }
    wait_berth_voters(&mut ps, deadline).await?;
    if n > 1 {
        let t = t0.elapsed();
        println!(
            "  berth {n} nodes: node 1 spawn -> all {n} voters, leader known: {:.1} ms",
            ms(t)
        );
        ctx.report.startup.push((
            format!("berth {n}-node cluster: node 1 spawn -> {n} voters + leader"),
            ms(t),
        ));
    }
    Ok(ps)
}

async fn stop_all(ps: &mut [Proc]) {
    for p in ps.iter_mut() {
        let _ = p.stop().await;
    }
}

fn remove_dir(ctx: &Ctx, dir: &Path) {
    if !ctx.args.keep_temp {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// One berth topology under load. `plain`: without TLS on the cluster port, to show what
/// mutual TLS costs on the write path (the default run has it on).
async fn berth_topology(ctx: &mut Ctx, n: usize, plain: bool) -> anyhow::Result<f64> {
    let dir = ctx
        .root
        .join(format!("berth-{n}{}", if plain { "-plain" } else { "" }));
    let extra: Vec<String> = if plain {
        vec!["--bench-plain-cluster-port".into()]
    } else {
        vec![]
    };
    let mut ps = start_berth(ctx, n, &dir, &extra).await?;
    let addrs: Vec<SocketAddr> = ps.iter().map(|p| p.api).collect();
    let stats = load(
        if plain { "berth-plain" } else { "berth" },
        n,
        &addrs,
        ctx.args.clients,
        ctx.args.warmup,
        ctx.args.requests,
        berth_register(),
    )
    .await?;
    stats.print();
    let rps = stats.rps();
    for p in ps.iter_mut() {
        p.check_alive()?;
    }
    if plain {
        ctx.report.runs.push(stats);
        stop_all(&mut ps).await;
        drop(ps);
        remove_dir(ctx, &dir);
        return Ok(rps);
    }
    if let Some(rss) = ps[0].pid().and_then(rss_mib) {
        let revs = latest_revision(ps[0].api).await;
        let what = match revs {
            Some(r) => format!("berth {n}-node: node 1 RSS after {r} revisions"),
            None => format!("berth {n}-node: node 1 RSS after the run"),
        };
        println!("  {what}: {rss:.1} MiB");
        ctx.report.rss.push((what, rss));
    }
    ctx.report.runs.push(stats);
    if n == 1 && !ctx.args.no_restart {
        let r = warm_restart(ctx, &mut ps[0]).await;
        stop_all(&mut ps).await;
        r?;
    } else {
        stop_all(&mut ps).await;
    }
    drop(ps);
    remove_dir(ctx, &dir);
    Ok(rps)
}

/// The newest revision of family "bench", via a signed DescribeTaskDefinition.
async fn latest_revision(addr: SocketAddr) -> Option<u64> {
    let req = ecs_request(
        addr,
        "DescribeTaskDefinition",
        br#"{"taskDefinition":"bench"}"#,
    );
    let mut c = None;
    match send(&mut c, addr, req, Duration::from_secs(10)).await {
        Ok((200, b)) => {
            serde_json::from_slice::<Value>(&b).ok()?["taskDefinition"]["revision"].as_u64()
        }
        _ => None,
    }
}

/// Stops node 1 gracefully, then starts a new server on its data dir (same
/// ports) and times spawn -> /healthz ok and spawn -> first signed
/// ListTaskDefinitions answered 200.
async fn warm_restart(ctx: &mut Ctx, p: &mut Proc) -> anyhow::Result<()> {
    let revs = latest_revision(p.api).await;
    p.stop().await?;
    let log = p.log.with_file_name("node1-restart.log");
    let mut q = spawn_berth(
        &ctx.exe,
        1,
        &p.data,
        &log,
        p.api,
        p.peer,
        None,
        ctx.args.fsync,
        &[],
    )?;
    let deadline = Instant::now() + STARTUP_DEADLINE;
    let up = wait_berth_healthy(&mut q, deadline).await?;
    let listed = loop {
        q.check_alive()?;
        let req = ecs_request(q.api, "ListTaskDefinitions", br#"{"familyPrefix":"bench"}"#);
        let mut c = None;
        if let Ok((200, _)) = send(&mut c, q.api, req, Duration::from_secs(5)).await {
            break q.spawned.elapsed();
        }
        if Instant::now() > deadline {
            bail!(
                "restarted node never answered ListTaskDefinitions\n{}",
                q.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let revs_s = revs.map(|r| r.to_string()).unwrap_or_else(|| "?".into());
    println!(
        "  berth warm restart on a data dir of {revs_s} revisions: spawn -> /healthz ok {:.1} ms, -> first ListTaskDefinitions {:.1} ms",
        ms(up),
        ms(listed)
    );
    ctx.report.restart_revisions = revs;
    ctx.report.startup.push((
        format!("berth 1-node warm restart ({revs_s} revisions): spawn -> /healthz ok"),
        ms(up),
    ));
    ctx.report.startup.push((
        format!(
            "berth 1-node warm restart ({revs_s} revisions): spawn -> first ListTaskDefinitions"
        ),
        ms(listed),
    ));
    if let Some(rss) = q.pid().and_then(rss_mib) {
        let what = format!("berth 1-node: RSS right after the warm restart ({revs_s} revisions)");
        println!("  {what}: {rss:.1} MiB");
        ctx.report.rss.push((what, rss));
    }
    q.stop().await?;
    Ok(())
}

async fn etcd_topology(ctx: &mut Ctx, n: usize) -> anyhow::Result<()> {
    let dir = ctx.root.join(format!("etcd-{n}"));
    std::fs::create_dir_all(&dir)?;
    let mut ps = spawn_etcd(&ctx.args.etcd, &dir, n)?;
    let up = wait_etcd_healthy(&mut ps, Instant::now() + STARTUP_DEADLINE).await?;
    let plural = if n == 1 { "" } else { "s" };
    println!(
        "  etcd {n} node{plural}: spawn -> /health true on all: {:.1} ms",
        ms(up)
    );
    ctx.report.startup.push((
        format!("etcd {n}-node cluster: spawn -> /health true on all (new data dir)"),
        ms(up),
    ));
    let addrs: Vec<SocketAddr> = ps.iter().map(|p| p.api).collect();
    let stats = load(
        "etcd",
        n,
        &addrs,
        ctx.args.clients,
        ctx.args.warmup,
        ctx.args.requests,
        etcd_put(),
    )
    .await?;
    stats.print();
    if let Some(rss) = ps[0].pid().and_then(rss_mib) {
        let what = format!(
            "etcd {n}-node: member 1 RSS after {} puts",
            ctx.args.warmup + ctx.args.requests
        );
        println!("  {what}: {rss:.1} MiB");
        ctx.report.rss.push((what, rss));
    }
    if stats.error_pct() > ctx.args.max_error_pct {
        ctx.report.notes.push(format!(
            "etcd {n}-node run had {:.2}% errors: its ratio is unreliable",
            stats.error_pct()
        ));
    }
    ctx.report.runs.push(stats);
    stop_all(&mut ps).await;
    drop(ps);
    remove_dir(ctx, &dir);
    Ok(())
}

// ------------------------------------------------------------------ driver

pub(crate) async fn api(args: ApiBenchArgs) -> anyhow::Result<()> {
    if args.clients == 0 || args.requests == 0 {
        bail!("--clients and --requests must be at least 1");
    }
    if args.nodes.is_empty() || args.nodes.iter().any(|&n| n == 0 || n > 9) {
        bail!("--nodes takes node counts from 1 to 9, e.g. 1,3");
    }
    let exe = match &args.berth_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("locate the berth binary")?,
    };
    let mut tb = tempfile::Builder::new();
    tb.prefix("berth-bench-");
    let tmp = match &args.dir {
        Some(d) => tb.tempdir_in(d),
        None => tb.tempdir(),
    }
    .context("create a temp dir")?;
    let fs = fs_type(tmp.path()).unwrap_or_else(|| "unknown".into());
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "berth bench api: berth {} ({profile} build), {cpus} CPUs, {} clients, {} requests (+{} warm-up) per topology, fsync {}",
        env!("CARGO_PKG_VERSION"),
        args.clients,
        args.requests,
        args.warmup,
        if args.fsync { "on" } else { "OFF" }
    );
    if profile == "debug" {
        println!("  note: debug build; use `cargo build --release` for figures that matter");
    }
    println!(
        "  servers: {}; temp dir {} (filesystem {fs})",
        exe.display(),
        tmp.path().display()
    );
    if fs == "tmpfs" || fs == "ramfs" {
        println!("  note: the temp dir is in memory, so fsync costs nothing; pass --dir on a disk");
    }
    let peer = !args.no_peer && on_path(&args.etcd);
    if !args.no_peer && !peer {
        println!("peer: etcd not installed (apt-get install etcd-server)");
    }
    let etcd_version = if peer {
        std::process::Command::new(&args.etcd)
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.lines().next().map(|l| l.trim().to_string()))
    } else {
        None
    };
    let mut ctx = Ctx {
        args: args.clone(),
        exe,
        root: tmp.path().to_path_buf(),
        fs: fs.clone(),
        report: Report::default(),
    };
    for &n in &args.nodes {
        let plural = if n == 1 { "" } else { "s" };
        println!("\n== {n} node{plural} ==");
        let tls = berth_topology(&mut ctx, n, false).await?;
        if n > 1 && !args.no_plain {
            let plain = berth_topology(&mut ctx, n, true).await?;
            let line = format!(
                "berth {n}-node: mutual TLS on the cluster port costs {:.1}% of write throughput ({tls:.0} req/s with it, {plain:.0} req/s plain)",
                (1.0 - tls / plain) * 100.0
            );
            println!("  {line}");
            ctx.report.notes.push(line);
        }
        if peer {
            if let Err(e) = etcd_topology(&mut ctx, n).await {
                println!("  peer: etcd {n}-node run failed: {e:#}");
                ctx.report
                    .notes
                    .push(format!("etcd {n}-node run failed: {e:#}"));
            }
        }
    }
    let summary = print_summary(&ctx, profile, cpus, etcd_version.as_deref());
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
    let bad: Vec<String> = ctx
        .report
        .runs
        .iter()
        .filter(|r| r.system == "berth" && r.error_pct() > args.max_error_pct)
        .map(|r| format!("{}: {:.2}% errors", r.label(), r.error_pct()))
        .collect();
    if !bad.is_empty() {
        bail!(
            "more than {}% of requests failed: {}",
            args.max_error_pct,
            bad.join("; ")
        );
    }
    Ok(())
}

fn print_summary(ctx: &Ctx, profile: &str, cpus: usize, etcd_version: Option<&str>) -> Value {
    let r = &ctx.report;
    println!("\n== summary ==");
    println!(
        "{:<16} {:>5} {:>7} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>7}",
        "system",
        "nodes",
        "clients",
        "requests",
        "req/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "errors"
    );
    for s in &r.runs {
        println!(
            "{:<16} {:>5} {:>7} {:>9} {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>7}",
            s.system,
            s.nodes,
            s.clients,
            s.requests,
            s.rps(),
            ms(s.p50),
            ms(s.p90),
            ms(s.p99),
            ms(s.max),
            s.errors
        );
    }
    let mut ratios = Vec::new();
    for b in r.runs.iter().filter(|s| s.system == "berth") {
        if let Some(e) = r
            .runs
            .iter()
            .find(|s| s.system == "etcd" && s.nodes == b.nodes)
        {
            if e.rps() > 0.0 {
                let ratio = b.rps() / e.rps();
                let p50 = if ms(e.p50) > 0.0 {
                    ms(b.p50) / ms(e.p50)
                } else {
                    0.0
                };
                println!(
                    "ratio berth/etcd, {} node{}: req/s {:.2}x, p50 latency {:.2}x",
                    b.nodes,
                    if b.nodes == 1 { "" } else { "s" },
                    ratio,
                    p50
                );
                ratios.push(json!({"nodes": b.nodes, "req_per_s": ratio, "p50_latency": p50}));
            }
        }
    }
    println!("startup:");
    for (what, v) in &r.startup {
        println!("  {what}: {v:.1} ms");
    }
    println!("memory:");
    for (what, v) in &r.rss {
        println!("  {what}: {v:.1} MiB");
    }
    for n in &r.notes {
        println!("note: {n}");
    }
    json!({
        "berth_version": env!("CARGO_PKG_VERSION"),
        "profile": profile,
        "cpus": cpus,
        "fsync": ctx.args.fsync,
        "filesystem": ctx.fs,
        "clients": ctx.args.clients,
        "requests": ctx.args.requests,
        "warmup": ctx.args.warmup,
        "peer": etcd_version,
        "runs": r.runs.iter().map(LoadStats::to_json).collect::<Vec<_>>(),
        "ratios_berth_over_etcd": ratios,
        "startup_ms": r.startup.iter().map(|(k, v)| json!({"what": k, "ms": v})).collect::<Vec<_>>(),
        "rss_mib": r.rss.iter().map(|(k, v)| json!({"what": k, "mib": v})).collect::<Vec<_>>(),
        "restart_revisions": r.restart_revisions,
        "notes": r.notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn d(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&x| Duration::from_millis(x)).collect()
    }

    #[test]
    fn percentile_nearest_rank() {
        let v = d(&(1..=100).collect::<Vec<_>>());
        assert_eq!(percentile(&v, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&v, 90.0), Duration::from_millis(90));
        assert_eq!(percentile(&v, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&v, 100.0), Duration::from_millis(100));
        assert_eq!(percentile(&v, 0.0), Duration::from_millis(1));
        let v = d(&[10, 20, 30, 40, 50]);
        assert_eq!(percentile(&v, 50.0), Duration::from_millis(30));
        assert_eq!(percentile(&v, 90.0), Duration::from_millis(50));
        assert_eq!(percentile(&v, 20.0), Duration::from_millis(10));
        assert_eq!(percentile(&v, 21.0), Duration::from_millis(20));
        assert_eq!(percentile(&d(&[7]), 99.0), Duration::from_millis(7));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }

    #[test]
    fn requests_split_over_clients() {
        let total: usize = (0..64).map(|i| share(10_000, 64, i)).sum();
        assert_eq!(total, 10_000);
        assert_eq!(share(200, 64, 0), 4);
        assert_eq!(share(200, 64, 63), 3);
    }

    #[test]
    fn voters_from_raft_metrics() {
        let v: Value = serde_json::from_str(
            r#"{"current_leader":1,"membership_config":{"membership":{"configs":[[1,2,3]],"nodes":{}}}}"#,
        )
        .unwrap();
        let (c, leader) = voters_of(&v);
        assert!(leader);
        assert_eq!(c, vec![BTreeSet::from([1, 2, 3])]);
        let v: Value = serde_json::from_str(r#"{"current_leader":null}"#).unwrap();
        assert_eq!(voters_of(&v), (vec![], false));
    }
}
