//! `berth bench scheduler`: the scheduler at scale.
//!
//! 1. The pure scheduler: a cluster view of `--pure-instances` instances (three
//!    availability zones, most of them x86_64), services totalling `--pure-tasks` tasks
//!    placed with `spread(attribute:ecs.availability-zone)`, `binpack(memory)` and a
//!    `memberOf(attribute:ecs.cpu-architecture == x86_64)` constraint. The peer, measured in
//!    the same run on the same cluster: a naive placement that filters and sorts every
//!    instance for every task (what the index is there to avoid).
//! 2. End to end: `--servers` real `berth server` processes (child processes of this
//!    binary, fsync on), `--instances` simulated agents ([`crate::bench::simagent`]) speaking the
//!    real agent protocol over gRPC, and services totalling `--tasks` tasks created through
//!    the signed ECS API with the same strategies and constraint. The leader's controller
//!    places them and commits them through Raft; the agents' servers send them down the
//!    sessions; the agents report PENDING and RUNNING, which are committed in turn. Measured:
//!    time and rate until every task is committed and delivered to its agent, time until
//!    every task's RUNNING is committed, and every server's RSS.
//!
//! Nomad's published C1M/C2M runs are quoted for reference only (not measured here).

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use berth_model::cql::{self, InstanceView};
use berth_model::{Remaining, Reservation};
use berth_scheduler::placement::{
    BinpackField, ClusterView, Constraint, Node, Request, SpreadField, Strategy,
};
use clap::{ArgAction, Args};
use serde_json::{json, Value};

use crate::bench::harness::{self as bench, ms, Proc};
use crate::bench::simagent::{self, Fleet, SimConfig};

/// Every simulated or modelled instance.
const INSTANCE_CPU: i64 = 4096;
const INSTANCE_MEMORY: i64 = 16384;
/// Every task.
const TASK_CPU: i64 = 32;
const TASK_MEMORY: i64 = 64;
const AZ_ATTR: &str = "ecs.availability-zone";
const MEMBER_OF: &str = "attribute:ecs.cpu-architecture == x86_64";
const CLUSTER: &str = "bench";
const FAMILY: &str = "sched";

#[derive(Args, Debug, Clone)]
pub struct SchedBenchArgs {
    /// End to end: simulated container instances (agents).
    #[arg(long, default_value_t = 1_000)]
    pub instances: usize,
    /// End to end: tasks over all services.
    #[arg(long, default_value_t = 20_000)]
    pub tasks: usize,
    /// End to end: services the tasks are split over.
    #[arg(long, default_value_t = 10)]
    pub services: usize,
    /// Pure scheduler: instances in the cluster view.
    #[arg(long, default_value_t = 10_000)]
    pub pure_instances: usize,
    /// Pure scheduler: tasks placed.
    #[arg(long, default_value_t = 1_000_000)]
    pub pure_tasks: usize,
    /// Pure scheduler: services the tasks are split over.
    #[arg(long, default_value_t = 100)]
    pub pure_services: usize,
    /// Tasks the naive peer places (it sorts every instance for every task).
    #[arg(long, default_value_t = 2_000)]
    pub naive_tasks: usize,
    /// Skip the pure scheduler part.
    #[arg(long)]
    pub no_pure: bool,
    /// Skip the end-to-end part.
    #[arg(long)]
    pub no_e2e: bool,
    /// Servers in the end-to-end cluster.
    #[arg(long, default_value_t = 3)]
    pub servers: usize,
    /// Simulated agents sharing one gRPC channel (HTTP/2 connection).
    #[arg(long, default_value_t = 50)]
    pub agents_per_channel: usize,
    /// Agent sessions opening at once.
    #[arg(long, default_value_t = 200)]
    pub concurrent_hellos: usize,
    /// Mutual TLS on the cluster port, as in production: every simulated agent joins with
    /// the token, gets its certificate and holds its own connection. Without it the cluster
    /// port is plain and agents share connections (--agents-per-channel).
    #[arg(long)]
    pub tls: bool,
    /// After the agents registered: SIGKILL the last server, start it again, and time until
    /// every agent is connected again (with --tls: every reconnect a new TLS handshake).
    #[arg(long)]
    pub restart_server: bool,
    /// How long a simulated task stays PENDING before it reports RUNNING (ms).
    #[arg(long, default_value_t = 100)]
    pub start_delay_ms: u64,
    /// Then scale every service to 0 and time until every task's STOPPED is committed.
    #[arg(long)]
    pub scale_down: bool,
    /// Raft heartbeat interval of the servers in ms (0: the servers' default, 250 ms).
    /// openraft 0.9 gives every AppendEntries just this long. The election timeout
    /// follows at 5x.
    #[arg(long, default_value_t = 0)]
    pub raft_heartbeat_ms: u64,
    /// fsync every Raft log append on the servers.
    #[arg(long, default_value_t = true, action = ArgAction::Set)]
    pub fsync: bool,
    /// Fail when neither count moved for this long (s).
    #[arg(long, default_value_t = 120)]
    pub stall_secs: u64,
    /// Hard deadline for the whole run (s).
    #[arg(long, default_value_t = 3600)]
    pub deadline_secs: u64,
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Parent directory of the temp dir (default: $TMPDIR or /tmp); use a disk, not tmpfs.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Keep the temp dir (data dirs and server logs).
    #[arg(long)]
    pub keep_temp: bool,
    /// The berth binary started as servers (default: this executable).
    #[arg(long)]
    pub berth_bin: Option<PathBuf>,
}

pub async fn run(args: SchedBenchArgs) -> anyhow::Result<()> {
    let secs = args.deadline_secs;
    // Dropping the run (deadline or ctrl-c) kills the servers (kill_on_drop) and removes
    // the temp dir.
    tokio::select! {
        r = tokio::time::timeout(Duration::from_secs(secs), run_all(args)) => match r {
            Ok(r) => r,
            Err(_) => bail!("bench scheduler: hard deadline of {secs} s passed; servers killed, temp dir removed"),
        },
        _ = tokio::signal::ctrl_c() => bail!("bench scheduler: interrupted; servers killed, temp dir removed"),
    }
}

fn cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn profile() -> &'static str {
    if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    }
}

/// 1234567 -> "1,234,567"
fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut parts = Vec::new();
    let mut end = s.len();
    while end > 3 {
        parts.push(&s[end - 3..end]);
        end -= 3;
    }
    parts.push(&s[..end]);
    parts.reverse();
    parts.join(",")
}

fn rate(n: usize, d: Duration) -> f64 {
    let s = d.as_secs_f64();
    if s > 0.0 {
        n as f64 / s
    } else {
        0.0
    }
}

/// `total` split over `parts` (the first ones one larger).
fn share(total: usize, parts: usize, i: usize) -> usize {
    total / parts + usize::from(i < total % parts)
}

async fn run_all(args: SchedBenchArgs) -> anyhow::Result<()> {
    println!(
        "berth bench scheduler: berth {} ({} build), {} CPUs",
        env!("CARGO_PKG_VERSION"),
        profile(),
        cpus()
    );
    if profile() == "debug" {
        println!("  note: debug build; use `cargo build --release` for figures that matter");
    }
    let mut out = json!({
        "berthVersion": env!("CARGO_PKG_VERSION"),
        "profile": profile(),
        "cpus": cpus(),
    });
    let pure = if args.no_pure {
        None
    } else {
        let p = tokio::task::spawn_blocking({
            let args = args.clone();
            move || pure_part(&args)
        })
        .await
        .context("pure scheduler part")??;
        out["pure"] = p.to_json();
        Some(p)
    };
    let e2e = if args.no_e2e {
        None
    } else {
        let e = e2e_part(&args).await?;
        out["endToEnd"] = e.to_json();
        Some(e)
    };
    print_summary(&args, pure.as_ref(), e2e.as_ref());
    if let Some(p) = &args.json {
        std::fs::write(p, serde_json::to_string_pretty(&out)? + "\n")
            .with_context(|| format!("write {}", p.display()))?;
        println!("figures written to {}", p.display());
    }
    if let Some(e) = &e2e {
        if let Some(problem) = &e.problem {
            bail!("end-to-end run incomplete: {problem}");
        }
    }
    Ok(())
}

// ------------------------------------------------------------------ pure scheduler

fn instance_view(i: usize) -> InstanceView {
    InstanceView {
        attributes: simagent::attributes(i).into_iter().collect(),
        instance_id: simagent::instance_id(i),
        registered_at: 1.7e9,
        running_tasks_count: 0,
        task_groups: Vec::new(),
        agent_connected: true,
        agent_version: Some("sim".into()),
    }
}

fn nodes(n: usize) -> Vec<Node> {
    (0..n)
        .map(|i| Node {
            id: simagent::instance_id(i),
            arn: format!(
                "arn:aws:ecs:us-east-1:123456789012:container-instance/{CLUSTER}/{}",
                simagent::instance_id(i)
            ),
            status: "ACTIVE".into(),
            agent_connected: true,
            remaining: Remaining {
                cpu: INSTANCE_CPU,
                memory: INSTANCE_MEMORY,
                ports: [22].into_iter().collect(),
                ports_udp: Default::default(),
            },
            groups: BTreeMap::new(),
            view: instance_view(i),
        })
        .collect()
}

fn service_name(s: usize) -> String {
    format!("svc-{s:03}")
}

fn request(service: usize) -> anyhow::Result<Request> {
    Ok(Request {
        reservation: Reservation {
            cpu: TASK_CPU,
            memory: TASK_MEMORY,
            ports: Vec::new(),
            ports_udp: Vec::new(),
        },
        group: format!("service:{}", service_name(service)),
        constraints: vec![Constraint::MemberOf(
            cql::parse(MEMBER_OF).map_err(|e| anyhow::anyhow!("{MEMBER_OF}: {e:?}"))?,
        )],
        requires_attributes: Vec::new(),
        strategies: vec![
            Strategy::Spread(SpreadField::Attribute(AZ_ATTR.into())),
            Strategy::Binpack(BinpackField::Memory),
        ],
        seed: service as u64,
    })
}

/// The peer: for every task, filter every instance (resources, status, the constraint
/// evaluated afresh), count the group's tasks per zone, and sort all candidates by
/// (tasks of the group in the candidate's zone, remaining memory, instance id).
struct Naive {
    nodes: Vec<NaiveNode>,
}

struct NaiveNode {
    id: String,
    status: String,
    agent_connected: bool,
    cpu: i64,
    memory: i64,
    view: InstanceView,
    groups: HashMap<String, u32>,
}

impl Naive {
    fn new(nodes: &[Node]) -> Naive {
        Naive {
            nodes: nodes
                .iter()
                .map(|n| NaiveNode {
                    id: n.id.clone(),
                    status: n.status.clone(),
                    agent_connected: n.agent_connected,
                    cpu: n.remaining.cpu,
                    memory: n.remaining.memory,
                    view: n.view.clone(),
                    groups: n.groups.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                })
                .collect(),
        }
    }

    fn place_one(&mut self, group: &str, expr: &cql::Expr) -> Option<String> {
        let mut per_zone: HashMap<String, u32> = HashMap::new();
        for n in &self.nodes {
            if let Some(Some(z)) = n.view.attributes.get(AZ_ATTR) {
                *per_zone.entry(z.clone()).or_default() +=
                    n.groups.get(group).copied().unwrap_or(0);
            }
        }
        let mut cands: Vec<(u32, i64, &str, usize)> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| {
                n.status == "ACTIVE"
                    && n.agent_connected
                    && n.cpu >= TASK_CPU
                    && n.memory >= TASK_MEMORY
                    && expr.eval(&n.view)
            })
            .map(|(i, n)| {
                let zone = n
                    .view
                    .attributes
                    .get(AZ_ATTR)
                    .and_then(|z| z.as_deref())
                    .map(|z| per_zone.get(z).copied().unwrap_or(0))
                    .unwrap_or(u32::MAX);
                (zone, n.memory, n.id.as_str(), i)
            })
            .collect();
        cands.sort();
        let &(_, _, _, i) = cands.first()?;
        let n = &mut self.nodes[i];
        n.cpu -= TASK_CPU;
        n.memory -= TASK_MEMORY;
        *n.groups.entry(group.to_string()).or_default() += 1;
        Some(n.id.clone())
    }
}

#[derive(Debug, Default)]
struct PureReport {
    instances: usize,
    services: usize,
    tasks: usize,
    placed: usize,
    build: Duration,
    elapsed: Duration,
    /// Slowest single `place` call (one service's tasks).
    slowest_call: Duration,
    nodes_used: usize,
    /// Largest (max - min) of a service's tasks per zone.
    worst_zone_skew: u32,
    /// Tasks on instances the constraint rules out (must be 0).
    misplaced: usize,
    /// The same first tasks on a fresh cluster: the index and the naive peer.
    sample: usize,
    index_sample: Duration,
    naive_placed: usize,
    naive: Duration,
    agree: usize,
}

impl PureReport {
    fn rate(&self) -> f64 {
        rate(self.placed, self.elapsed)
    }
    fn index_sample_rate(&self) -> f64 {
        rate(self.sample, self.index_sample)
    }
    fn naive_rate(&self) -> f64 {
        rate(self.naive_placed, self.naive)
    }
    fn to_json(&self) -> Value {
        json!({
            "instances": self.instances,
            "services": self.services,
            "tasks": self.tasks,
            "placed": self.placed,
            "seconds": self.elapsed.as_secs_f64(),
            "placementsPerSecond": self.rate(),
            "slowestServiceCallMs": ms(self.slowest_call),
            "nodesUsed": self.nodes_used,
            "worstZoneSkew": self.worst_zone_skew,
            "misplaced": self.misplaced,
            "sample": {
                "tasks": self.sample,
                "indexPerSecond": self.index_sample_rate(),
                "naivePerSecond": self.naive_rate(),
                "sameChoices": self.agree,
            },
        })
    }
}

fn pure_part(args: &SchedBenchArgs) -> anyhow::Result<PureReport> {
    let (n, total, services) = (
        args.pure_instances.max(1),
        args.pure_tasks,
        args.pure_services.max(1),
    );
    println!(
        "\n== pure scheduler: {} instances, {} tasks in {} services ==",
        thousands(n as u64),
        thousands(total as u64),
        services
    );
    println!(
        "  strategies spread({AZ_ATTR}), binpack(memory); constraint memberOf({MEMBER_OF}); task {TASK_CPU} CPU / {TASK_MEMORY} MiB; instance {INSTANCE_CPU} / {INSTANCE_MEMORY}"
    );
    let mut r = PureReport {
        instances: n,
        services,
        tasks: total,
        ..Default::default()
    };
    let t = Instant::now();
    let base = nodes(n);
    let mut view = ClusterView::new(base.clone());
    r.build = t.elapsed();
    let reqs: Vec<Request> = (0..services).map(request).collect::<Result<_, _>>()?;

    // The same first tasks on a fresh cluster, index and naive.
    let sample = args.naive_tasks.min(share(total, services, 0));
    r.sample = sample;
    if sample > 0 {
        let mut fresh = ClusterView::new(base.clone());
        let t = Instant::now();
        let idx = fresh.place(&reqs[0], sample);
        r.index_sample = t.elapsed();
        let expr = cql::parse(MEMBER_OF).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let mut naive = Naive::new(&base);
        let t = Instant::now();
        let mut picks = Vec::with_capacity(sample);
        for _ in 0..sample {
            match naive.place_one(&reqs[0].group, &expr) {
                Some(id) => picks.push(id),
                None => break,
            }
        }
        r.naive = t.elapsed();
        r.naive_placed = picks.len();
        r.agree = idx
            .placed
            .iter()
            .zip(&picks)
            .filter(|(a, b)| a == b)
            .count();
        println!(
            "  first {sample} tasks on a fresh cluster: index {:.0}/s ({:.1} ms), naive sort per task {:.0}/s ({:.1} ms): {:.0}x; same choices for {} of {}",
            r.index_sample_rate(),
            ms(r.index_sample),
            r.naive_rate(),
            ms(r.naive),
            r.index_sample_rate() / r.naive_rate().max(1e-9),
            r.agree,
            sample
        );
    }

    let t = Instant::now();
    for (s, req) in reqs.iter().enumerate() {
        let count = share(total, services, s);
        let c = Instant::now();
        let p = view.place(req, count);
        r.slowest_call = r.slowest_call.max(c.elapsed());
        r.placed += p.placed.len();
        if p.placed.len() < count {
            println!(
                "  service {} placed {} of {} ({} rejections)",
                service_name(s),
                p.placed.len(),
                count,
                p.rejections.len()
            );
        }
    }
    r.elapsed = t.elapsed();
    // What came out: every service spread over the zones, the constraint held, binpacked.
    let expr = cql::parse(MEMBER_OF).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let mut zones: HashMap<(&str, &str), u32> = HashMap::new();
    for node in view.nodes() {
        let held: u32 = node.groups.values().sum();
        if held == 0 {
            continue;
        }
        r.nodes_used += 1;
        if !expr.eval(&node.view) {
            r.misplaced += held as usize;
        }
        let z = node
            .view
            .attributes
            .get(AZ_ATTR)
            .and_then(|z| z.as_deref())
            .unwrap_or("");
        for (g, c) in &node.groups {
            *zones.entry((g.as_str(), z)).or_default() += c;
        }
    }
    let mut by_group: HashMap<&str, Vec<u32>> = HashMap::new();
    for ((g, _), c) in &zones {
        by_group.entry(g).or_default().push(*c);
    }
    r.worst_zone_skew = by_group
        .values()
        .map(|v| {
            let (mx, mn) = (v.iter().max(), v.iter().min());
            let mn = if v.len() < 3 { &0 } else { mn.unwrap_or(&0) };
            mx.unwrap_or(&0) - mn
        })
        .max()
        .unwrap_or(0);
    println!(
        "  index: {} placed in {:.2} s = {:.0} placements/s (slowest service call {:.1} ms; view built in {:.1} ms)",
        thousands(r.placed as u64),
        r.elapsed.as_secs_f64(),
        r.rate(),
        ms(r.slowest_call),
        ms(r.build)
    );
    println!(
        "  check: {} instances used, worst zone skew of a service {}, tasks outside memberOf {}",
        thousands(r.nodes_used as u64),
        r.worst_zone_skew,
        r.misplaced
    );
    Ok(r)
}

// ------------------------------------------------------------------ end to end

#[derive(Debug, Default)]
struct RssFigure {
    node: usize,
    leader: bool,
    idle: f64,
    end: f64,
    peak: f64,
}

#[derive(Debug, Default)]
struct E2eReport {
    servers: usize,
    instances: usize,
    services: usize,
    tasks: usize,
    fs: String,
    registered: Option<Duration>,
    create_services: Duration,
    /// From the first CreateService to the last task delivered to its agent.
    assigned: Option<Duration>,
    /// 10% and 90% of the tasks delivered.
    assigned_10: Option<Duration>,
    assigned_90: Option<Duration>,
    running: Option<Duration>,
    stopped: Option<Duration>,
    counts: Value,
    verify: Duration,
    rss: Vec<RssFigure>,
    bench_rss: f64,
    revisions: Option<u64>,
    leader_changes: usize,
    resyncs: usize,
    disconnects: usize,
    frames_in: u64,
    bytes_in: u64,
    errors: Vec<String>,
    problem: Option<String>,
}

impl E2eReport {
    fn commit_rate(&self) -> Option<f64> {
        self.assigned.map(|d| rate(self.tasks, d))
    }
    fn steady_rate(&self) -> Option<f64> {
        let (a, b) = (self.assigned_10?, self.assigned_90?);
        Some(rate(self.tasks * 8 / 10, b.saturating_sub(a)))
    }
    fn to_json(&self) -> Value {
        let s = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
        json!({
            "servers": self.servers,
            "instances": self.instances,
            "services": self.services,
            "tasks": self.tasks,
            "filesystem": self.fs,
            "agentsRegisteredSeconds": s(self.registered),
            "createServicesSeconds": self.create_services.as_secs_f64(),
            "allCommittedSeconds": s(self.assigned),
            "committedPerSecond": self.commit_rate(),
            "committedPerSecond10to90": self.steady_rate(),
            "allRunningSeconds": s(self.running),
            "allStoppedSeconds": s(self.stopped),
            "counts": self.counts,
            "rssMiB": self.rss.iter().map(|r| json!({"node": r.node, "leader": r.leader, "idle": r.idle, "end": r.end, "peak": r.peak})).collect::<Vec<_>>(),
            "benchProcessRssMiB": self.bench_rss,
            "raftAppliedIndex": self.revisions,
            "leaderChanges": self.leader_changes,
            "agentResyncs": self.resyncs,
            "agentDisconnects": self.disconnects,
            "framesToAgents": self.frames_in,
            "bytesToAgents": self.bytes_in,
            "errors": self.errors,
            "problem": self.problem,
        })
    }
}

fn proc_status_mib(pid: u32, field: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// The leader's node id as `p` sees it, and its applied index.
async fn status(p: &Proc) -> Option<(u64, Option<u64>)> {
    match bench::get(p.api, "/status").await {
        Ok((200, b)) => {
            let v: Value = serde_json::from_slice(&b).ok()?;
            Some((
                v["current_leader"].as_u64()?,
                v["last_applied"]["index"].as_u64(),
            ))
        }
        _ => None,
    }
}

async fn leader_of(ps: &[Proc]) -> Option<usize> {
    for p in ps {
        if let Some((l, _)) = status(p).await {
            return Some(l as usize);
        }
    }
    None
}

/// One signed ECS call; Err on anything but 200.
async fn call(addr: SocketAddr, op: &str, body: Value) -> anyhow::Result<Value> {
    call_within(addr, op, body, Duration::from_secs(120)).await
}

async fn call_within(
    addr: SocketAddr,
    op: &str,
    body: Value,
    timeout: Duration,
) -> anyhow::Result<Value> {
    let req = bench::ecs_request(addr, op, body.to_string().as_bytes());
    let mut c = None;
    match bench::send(&mut c, addr, req, timeout).await {
        Ok((200, b)) => Ok(serde_json::from_slice(&b).unwrap_or(Value::Null)),
        Ok((st, b)) => bail!("{op}: HTTP {st}: {}", String::from_utf8_lossy(&b)),
        Err(e) => bail!("{op}: {e}"),
    }
}

/// The counts the API reports (from the leader), into `r.counts`.
async fn verify(api: SocketAddr, r: &mut E2eReport) -> anyhow::Result<()> {
    let t = Instant::now();
    let within = Duration::from_secs(60);
    let c = call_within(
        api,
        "DescribeClusters",
        json!({"clusters": [CLUSTER]}),
        within,
    )
    .await?;
    let c = &c["clusters"][0];
    let mut svc_running = 0i64;
    let mut svc_desired = 0i64;
    let names: Vec<String> = (0..r.services).map(service_name).collect();
    for chunk in names.chunks(10) {
        let v = call_within(
            api,
            "DescribeServices",
            json!({"cluster": CLUSTER, "services": chunk}),
            within,
        )
        .await?;
        for s in v["services"].as_array().into_iter().flatten() {
            svc_running += s["runningCount"].as_i64().unwrap_or(0);
            svc_desired += s["desiredCount"].as_i64().unwrap_or(0);
        }
    }
    r.verify = t.elapsed();
    r.counts = json!({
        "registeredContainerInstancesCount": c["registeredContainerInstancesCount"],
        "runningTasksCount": c["runningTasksCount"],
        "pendingTasksCount": c["pendingTasksCount"],
        "servicesDesiredCount": svc_desired,
        "servicesRunningCount": svc_running,
    });
    println!(
        "  API (leader, read in {:.0} ms): instances {}, runningTasksCount {}, pendingTasksCount {}, services runningCount {} of desiredCount {}",
        ms(r.verify),
        c["registeredContainerInstancesCount"],
        c["runningTasksCount"],
        c["pendingTasksCount"],
        svc_running,
        svc_desired
    );
    Ok(())
}

fn service_body(s: usize, desired: usize) -> Value {
    json!({
        "cluster": CLUSTER,
        "serviceName": service_name(s),
        "taskDefinition": FAMILY,
        "desiredCount": desired,
        "launchType": "EC2",
        "placementStrategy": [
            {"type": "spread", "field": format!("attribute:{AZ_ATTR}")},
            {"type": "binpack", "field": "memory"},
        ],
        "placementConstraints": [{"type": "memberOf", "expression": MEMBER_OF}],
    })
}

/// Every `interval`, while `done` is false: the counters, progress on stderr, stall check.
struct Watch<'a> {
    what: &'a str,
    started: Instant,
    last_change: Instant,
    last: (usize, usize),
    last_print: Instant,
}

impl<'a> Watch<'a> {
    fn new(what: &'a str, started: Instant) -> Self {
        let now = Instant::now();
        Watch {
            what,
            started,
            last_change: now,
            last: (usize::MAX, usize::MAX),
            last_print: now,
        }
    }

    /// Err when nothing moved for `stall`.
    fn tick(
        &mut self,
        a: usize,
        b: usize,
        total: usize,
        stall: Duration,
        extra: &str,
    ) -> Result<(), String> {
        if (a, b) != self.last {
            self.last = (a, b);
            self.last_change = Instant::now();
        }
        if self.last_print.elapsed() >= Duration::from_secs(5) {
            self.last_print = Instant::now();
            eprintln!(
                "  [{:>7.1} s] {}: {} / {} and {} / {}{extra}",
                self.started.elapsed().as_secs_f64(),
                self.what,
                thousands(a as u64),
                thousands(total as u64),
                thousands(b as u64),
                thousands(total as u64)
            );
            let _ = std::io::stderr().flush();
        }
        if self.last_change.elapsed() > stall {
            return Err(format!(
                "{}: no progress for {} s at {a} and {b} of {total}",
                self.what,
                stall.as_secs()
            ));
        }
        Ok(())
    }
}

async fn e2e_part(args: &SchedBenchArgs) -> anyhow::Result<E2eReport> {
    let (n, total, services, nservers) = (
        args.instances.max(1),
        args.tasks,
        args.services.max(1),
        args.servers.max(1),
    );
    let capacity = (0..n)
        .filter(|&i| {
            simagent::attributes(i)
                .iter()
                .any(|(k, v)| k == "ecs.cpu-architecture" && v.as_deref() == Some("x86_64"))
        })
        .count()
        * (INSTANCE_CPU / TASK_CPU).min(INSTANCE_MEMORY / TASK_MEMORY) as usize;
    println!(
        "\n== end to end: {nservers} servers, {} simulated instances, {} tasks in {services} services ==",
        thousands(n as u64),
        thousands(total as u64),
    );
    if total > capacity {
        bail!("{total} tasks do not fit on {n} instances (capacity {capacity} under the memberOf constraint)");
    }
    let exe = match &args.berth_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("locate the berth binary")?,
    };
    let mut tb = tempfile::Builder::new();
    tb.prefix("berth-bench-sched-");
    let tmp = match &args.dir {
        Some(d) => tb.tempdir_in(d),
        None => tb.tempdir(),
    }
    .context("create a temp dir")?;
    let root = tmp.path().to_path_buf();
    let fs = bench::fs_type(&root).unwrap_or_else(|| "unknown".into());
    println!(
        "  servers: {}, fsync {}; temp dir {} (filesystem {fs})",
        exe.display(),
        if args.fsync { "on" } else { "OFF" },
        root.display()
    );
    let mut r = E2eReport {
        servers: nservers,
        instances: n,
        services,
        tasks: total,
        fs,
        ..Default::default()
    };
    let token: String = {
        use rand::Rng;
        rand::thread_rng()
            .sample_iter(&rand::distributions::Alphanumeric)
            .take(32)
            .map(char::from)
            .collect()
    };
    let mut extra: Vec<String> = vec!["--join-token".into(), token.clone()];
    if args.tls {
        println!("  cluster port: mutual TLS; each agent joins for its certificate and has its own connection");
    } else {
        extra.push("--bench-plain-cluster-port".into());
        println!(
            "  cluster port: plain (no --tls); agents share connections, {} per channel",
            args.agents_per_channel
        );
    }
    if args.raft_heartbeat_ms > 0 {
        let hb = args.raft_heartbeat_ms;
        let path = root.join("server.toml");
        std::fs::write(
            &path,
            format!("heartbeat-ms = {hb}\nelection-timeout-ms = {}\n", hb * 5),
        )?;
        extra.push("--config".into());
        extra.push(path.display().to_string());
        println!(
            "  servers: Raft heartbeat {hb} ms, election timeout {} ms",
            hb * 5
        );
    }
    let ports = bench::free_ports(2 * nservers)?;
    let deadline = Instant::now() + bench::STARTUP_DEADLINE;
    let mut ps: Vec<Proc> = Vec::new();
    for id in 1..=nservers as u64 {
        let i = (id as usize - 1) * 2;
        let join = (id > 1).then(|| ps[0].peer);
        let mut p = bench::spawn_berth(
            &exe,
            id,
            &root.join(format!("node{id}-data")),
            &root.join(format!("node{id}.log")),
            bench::loopback(ports[i]),
            bench::loopback(ports[i + 1]),
            join,
            args.fsync,
            &extra,
        )?;
        if id == 1 {
            bench::wait_berth_healthy(&mut p, deadline).await?;
        }
        ps.push(p);
    }
    bench::wait_berth_voters(&mut ps, deadline).await?;
    let respawn = |p: &Proc| {
        bench::spawn_berth(
            &exe,
            ps_id(p),
            &p.data,
            &p.log,
            p.api,
            p.peer,
            None,
            args.fsync,
            &extra,
        )
    };
    let res = e2e_run(args, &mut r, &mut ps, &token, &respawn).await;
    for p in ps.iter_mut() {
        let _ = p.stop().await;
    }
    if let Err(e) = res {
        println!("  failed: {e:#}");
        r.problem.get_or_insert_with(|| format!("{e:#}"));
    }
    if args.keep_temp {
        let kept = tmp.keep();
        println!("  temp dir kept: {}", kept.display());
    } else {
        let _ = tmp.close();
    }
    Ok(r)
}

/// The node id of a server the benchmark started (`berth node <id>`).
fn ps_id(p: &Proc) -> u64 {
    p.name
        .rsplit(' ')
        .next()
        .and_then(|i| i.parse().ok())
        .unwrap_or(1)
}

async fn e2e_run(
    args: &SchedBenchArgs,
    r: &mut E2eReport,
    ps: &mut [Proc],
    token: &str,
    respawn: &dyn Fn(&Proc) -> anyhow::Result<Proc>,
) -> anyhow::Result<()> {
    let (n, total, services) = (r.instances, r.tasks, r.services);
    let stall = Duration::from_secs(args.stall_secs.max(5));
    let leader0 = leader_of(ps).await.unwrap_or(1);
    let api = ps[leader0 - 1].api;
    call(api, "CreateCluster", json!({"clusterName": CLUSTER})).await?;
    call(
        api,
        "RegisterTaskDefinition",
        json!({"family": FAMILY, "containerDefinitions": [{
            "name": "app", "image": "busybox", "cpu": TASK_CPU, "memory": TASK_MEMORY,
            "command": ["sleep", "3600"], "essential": true,
        }]}),
    )
    .await?;

    // Agents, spread over the servers.
    let servers: Vec<String> = ps.iter().map(|p| p.peer.to_string()).collect();
    let fleet = Fleet::start(
        SimConfig {
            cluster: CLUSTER.into(),
            join_token: token.into(),
            cpu: INSTANCE_CPU,
            memory: INSTANCE_MEMORY,
            start_delay: Duration::from_millis(args.start_delay_ms),
            concurrent_hellos: args.concurrent_hellos,
            tls: args.tls,
        },
        &servers,
        n,
        args.agents_per_channel,
    )?;
    let stats = fleet.stats.clone();
    let res = async {
        let t = Instant::now();
        let mut w = Watch::new("agents registered, connected", t);
        loop {
            let (a, b) = (
                stats.registered.load(Ordering::Relaxed),
                stats.connected.load(Ordering::Relaxed),
            );
            if a >= n && b >= n {
                break;
            }
            for p in ps.iter_mut() {
                p.check_alive()?;
            }
            if let Err(e) = w.tick(a, b, n, stall, "") {
                bail!("{e}; session errors: {:?}", stats.errors.lock().map(|v| v.clone()).unwrap_or_default());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        r.registered = Some(t.elapsed());
        println!(
            "  {} agents registered and connected in {:.2} s ({:.0}/s)",
            thousands(n as u64),
            t.elapsed().as_secs_f64(),
            rate(n, t.elapsed())
        );
        if args.restart_server {
            let last = ps.len() - 1;
            let before = stats.disconnects.load(Ordering::Relaxed);
            let _ = ps[last].child.kill().await;
            let _ = ps[last].child.wait().await;
            let t = Instant::now();
            ps[last] = respawn(&ps[last])?;
            let restarted_deadline = t + Duration::from_secs(300);
            // First every session of that server ends (with one server: all of them), then
            // everyone is back.
            let cut = n / ps.len();
            while stats.disconnects.load(Ordering::Relaxed) - before < cut && t.elapsed() < Duration::from_secs(30) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let low = stats.disconnects.load(Ordering::Relaxed) - before;
            while stats.connected.load(Ordering::Relaxed) < n {
                if Instant::now() > restarted_deadline {
                    bail!("only {} of {n} agents reconnected within 300 s of the restart", stats.connected.load(Ordering::Relaxed));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let took = t.elapsed();
            println!(
                "  server {} killed (SIGKILL) and restarted: {} sessions were cut off, all {} agents connected again {:.2} s after the kill ({})",
                last + 1,
                thousands(low as u64),
                thousands(n as u64),
                took.as_secs_f64(),
                if args.tls { "each a new mutual-TLS handshake" } else { "plain connections" }
            );
        }
        // Let the registrations settle before the idle figure.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let leader = leader_of(ps).await.unwrap_or(leader0);
        for (i, p) in ps.iter().enumerate() {
            let pid = p.pid().unwrap_or(0);
            r.rss.push(RssFigure {
                node: i + 1,
                leader: i + 1 == leader,
                idle: proc_status_mib(pid, "VmRSS:").unwrap_or(0.0),
                ..Default::default()
            });
        }

        // Services, a few calls at a time.
        let t0 = Instant::now();
        let mut pending = Vec::new();
        for s in 0..services {
            let body = service_body(s, share(total, services, s));
            pending.push(tokio::spawn(call(api, "CreateService", body)));
            if pending.len() >= 8 {
                pending.remove(0).await??;
            }
        }
        for h in pending {
            h.await??;
        }
        r.create_services = t0.elapsed();
        println!(
            "  {services} CreateService calls answered in {:.1} ms",
            ms(r.create_services)
        );

        let mut w = Watch::new("tasks committed+delivered, RUNNING committed", t0);
        let mut leader_seen = leader;
        let mut last_leader_check = Instant::now();
        loop {
            let (a, b) = (
                stats.assigned.load(Ordering::Relaxed),
                stats.running.load(Ordering::Relaxed),
            );
            let el = t0.elapsed();
            if a * 10 >= total && r.assigned_10.is_none() {
                r.assigned_10 = Some(el);
            }
            if a * 10 >= total * 9 && r.assigned_90.is_none() {
                r.assigned_90 = Some(el);
            }
            if a >= total && r.assigned.is_none() {
                r.assigned = Some(el);
                println!(
                    "  all {} tasks committed and delivered to their agents after {:.2} s ({:.0} tasks/s)",
                    thousands(total as u64),
                    el.as_secs_f64(),
                    rate(total, el)
                );
            }
            if b >= total {
                r.running = Some(el);
                println!(
                    "  all {} tasks RUNNING (committed) after {:.2} s",
                    thousands(total as u64),
                    el.as_secs_f64()
                );
                break;
            }
            for p in ps.iter_mut() {
                p.check_alive()?;
            }
            if last_leader_check.elapsed() > Duration::from_secs(2) {
                last_leader_check = Instant::now();
                if let Some(l) = leader_of(ps).await {
                    if l != leader_seen {
                        r.leader_changes += 1;
                        leader_seen = l;
                    }
                }
            }
            let extra = format!(
                "; leader RSS {:.0} MiB",
                ps.get(leader_seen - 1)
                    .and_then(|p| p.pid())
                    .and_then(|pid| proc_status_mib(pid, "VmRSS:"))
                    .unwrap_or(0.0)
            );
            if let Err(e) = w.tick(a, b, total, stall, &extra) {
                r.problem = Some(e);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for f in r.rss.iter_mut() {
            let pid = ps[f.node - 1].pid().unwrap_or(0);
            f.end = proc_status_mib(pid, "VmRSS:").unwrap_or(0.0);
            f.peak = proc_status_mib(pid, "VmHWM:").unwrap_or(0.0);
            f.leader = f.node == leader_seen;
        }
        r.revisions = status(&ps[leader_seen - 1]).await.and_then(|(_, i)| i);
        // What the API says, from the leader.
        let api = ps[leader_seen - 1].api;
        if let Err(e) = verify(api, r).await {
            println!("  API check failed: {e:#}");
            r.problem.get_or_insert_with(|| format!("API check failed: {e:#}"));
        }

        if args.scale_down && r.problem.is_none() {
            let t0 = Instant::now();
            for s in 0..services {
                call(
                    api,
                    "UpdateService",
                    json!({"cluster": CLUSTER, "service": service_name(s), "desiredCount": 0}),
                )
                .await?;
            }
            let mut w = Watch::new("tasks told to stop, STOPPED committed", t0);
            loop {
                let (a, b) = (
                    stats.stop_requested.load(Ordering::Relaxed),
                    stats.stopped.load(Ordering::Relaxed),
                );
                if b >= total {
                    r.stopped = Some(t0.elapsed());
                    println!(
                        "  scaled to 0: all {} tasks STOPPED (committed) after {:.2} s",
                        thousands(total as u64),
                        t0.elapsed().as_secs_f64()
                    );
                    break;
                }
                for p in ps.iter_mut() {
                    p.check_alive()?;
                }
                if let Err(e) = w.tick(a, b, total, stall, "") {
                    r.problem = Some(e);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }
    .await;
    r.bench_rss = proc_status_mib(std::process::id(), "VmRSS:").unwrap_or(0.0);
    r.resyncs = stats.resyncs.load(Ordering::Relaxed);
    r.disconnects = stats.disconnects.load(Ordering::Relaxed);
    r.frames_in = stats.frames_in.load(Ordering::Relaxed);
    r.bytes_in = stats.bytes_in.load(Ordering::Relaxed);
    r.errors = stats.errors.lock().map(|v| v.clone()).unwrap_or_default();
    fleet.stop().await;
    res
}

// ------------------------------------------------------------------ summary

fn print_summary(args: &SchedBenchArgs, pure: Option<&PureReport>, e2e: Option<&E2eReport>) {
    println!("\n== summary ==");
    if let Some(p) = pure {
        println!(
            "pure scheduler, {} instances, {} tasks in {} services (spread AZ + binpack memory + memberOf):",
            thousands(p.instances as u64),
            thousands(p.tasks as u64),
            p.services
        );
        println!(
            "  {:<44} {:>14} placements/s  ({} placed in {:.2} s)",
            "berth placement index",
            thousands(p.rate() as u64),
            thousands(p.placed as u64),
            p.elapsed.as_secs_f64()
        );
        if p.sample > 0 {
            println!(
                "  {:<44} {:>14} placements/s",
                format!("berth placement index, first {} tasks", p.sample),
                thousands(p.index_sample_rate() as u64)
            );
            println!(
                "  {:<44} {:>14} placements/s",
                format!("peer: naive sort per task, first {} tasks", p.naive_placed),
                thousands(p.naive_rate() as u64)
            );
            println!(
                "  ratio index/naive on the same tasks: {:.0}x (same choices for {} of {})",
                p.index_sample_rate() / p.naive_rate().max(1e-9),
                p.agree,
                p.sample
            );
        }
    }
    if let Some(e) = e2e {
        println!(
            "end to end, {} servers (fsync {}, {}), {} simulated instances, {} tasks in {} services:",
            e.servers,
            if args.fsync { "on" } else { "off" },
            e.fs,
            thousands(e.instances as u64),
            thousands(e.tasks as u64),
            e.services
        );
        let secs = |d: Option<Duration>| {
            d.map(|d| format!("{:.2} s", d.as_secs_f64()))
                .unwrap_or_else(|| "not reached".into())
        };
        println!("  {:<44} {:>14}", "agents registered", secs(e.registered));
        println!(
            "  {:<44} {:>14}",
            "all tasks committed + delivered to agents",
            secs(e.assigned)
        );
        if let Some(rt) = e.commit_rate() {
            println!(
                "  {:<44} {:>14} tasks/s (10%..90%: {} tasks/s)",
                "tasks committed per second",
                thousands(rt as u64),
                thousands(e.steady_rate().unwrap_or(0.0) as u64)
            );
        }
        println!(
            "  {:<44} {:>14}",
            "all tasks RUNNING (committed)",
            secs(e.running)
        );
        if args.scale_down {
            println!(
                "  {:<44} {:>14}",
                "scale to 0: all STOPPED (committed)",
                secs(e.stopped)
            );
        }
        for f in &e.rss {
            println!(
                "  {:<44} {:>10.0} MiB  (idle with agents {:.0} MiB, peak {:.0} MiB)",
                format!(
                    "server {} RSS{}",
                    f.node,
                    if f.leader { " (leader)" } else { "" }
                ),
                f.end,
                f.idle,
                f.peak
            );
        }
        println!(
            "  {:<44} {:>10.0} MiB",
            "this process (all simulated agents) RSS", e.bench_rss
        );
        println!(
            "  raft applied index {}, leader changes {}, agent resyncs {}, agent disconnects {}, {} frames / {:.0} MiB to agents",
            e.revisions.map(|v| v.to_string()).unwrap_or_else(|| "?".into()),
            e.leader_changes,
            e.resyncs,
            e.disconnects,
            thousands(e.frames_in),
            e.bytes_in as f64 / (1 << 20) as f64
        );
        for err in &e.errors {
            println!("  session error: {err}");
        }
        if let Some(p) = &e.problem {
            println!("  PROBLEM: {p}");
        }
    }
    println!("reference (published, not measured here):");
    println!("  Nomad C1M: 1,000,000 containers on 5,000 hosts in under 5 minutes (> 3,300 placements/s end to end)");
    println!("  Nomad C2M: 2,000,000 containers on 6,100 hosts in 22 minutes (~1,500 placements/s end to end)");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_000_000), "1,000,000");
    }

    #[test]
    fn shares_add_up() {
        assert_eq!((0..7).map(|i| share(100, 7, i)).sum::<usize>(), 100);
    }

    #[test]
    fn naive_spreads_then_binpacks() {
        let ns = nodes(6);
        let mut naive = Naive::new(&ns);
        let expr = cql::parse(MEMBER_OF).unwrap();
        let picks: Vec<String> = (0..6)
            .map(|_| naive.place_one("service:a", &expr).unwrap())
            .collect();
        // Zones a, b, c in turn (instances 0,3 / 1,4 / 2,5), binpacked on the first of each.
        assert_eq!(
            picks,
            [
                "sim-000000",
                "sim-000001",
                "sim-000002",
                "sim-000000",
                "sim-000001",
                "sim-000002"
            ]
        );
    }
}
