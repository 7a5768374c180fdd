//! Simulated container agents for `berth bench scheduler`.
//!
//! A simulated agent speaks the real agent protocol (`proto/agent.proto`, the JSON messages
//! of `berth_model::agent`) over a real gRPC stream, but runs nothing: it registers with
//! resources and attributes, and for every task it is told to run reports `PENDING` at once
//! and `RUNNING` one report tick later, each with a higher `seq`, and `STOPPED` as soon as
//! the task's desired status becomes `STOPPED`. Reports the server has not acknowledged are
//! sent again after a reconnect, as the real agent does.
//!
//! Many agents share one process and one gRPC channel per group (HTTP/2 streams multiplexed
//! on one connection), so thousands of them cost the machine little next to the servers.
//! What they observe is counted in [`SimStats`]: a task counts as *assigned* when it first
//! arrives in a desired set (it is committed through Raft and applied on the agent's
//! server), as *running* when the server acknowledges its `RUNNING` report (committed).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_model::agent::{
    AgentMessage, ContainerReport, Hello, InstanceResources, TaskReport, AGENT_PROTOCOL_VERSION,
};
use berth_model::Attribute;
use berth_proto::agent::agent_session_client::AgentSessionClient;
use berth_proto::agent::Frame;
use serde::Deserialize;
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// What every simulated agent of a run shares.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub cluster: String,
    pub join_token: String,
    /// CPU units and MiB each simulated instance registers.
    pub cpu: i64,
    pub memory: i64,
    /// How long a task stays PENDING before the agent reports it RUNNING.
    pub start_delay: Duration,
    /// Sessions opening at once (each costs the servers a registration, a linearizable
    /// read and a full desired set); the others wait for a slot.
    pub concurrent_hellos: usize,
    /// Mutual TLS, as real agents: each agent joins with the token (its certificate) and
    /// has its own connection. Otherwise plain gRPC, agents sharing connections.
    pub tls: bool,
}

/// Counters the driver reads while the agents run.
#[derive(Default)]
pub struct SimStats {
    /// Agents welcomed at least once.
    pub registered: AtomicUsize,
    /// Sessions open now.
    pub connected: AtomicUsize,
    /// Sessions that ended (reconnects follow).
    pub disconnects: AtomicUsize,
    /// Distinct tasks that arrived desired RUNNING.
    pub assigned: AtomicUsize,
    /// Tasks whose RUNNING report the server acknowledged.
    pub running: AtomicUsize,
    /// Tasks told to stop after they were assigned.
    pub stop_requested: AtomicUsize,
    /// Tasks whose STOPPED report the server acknowledged.
    pub stopped: AtomicUsize,
    /// Desired sets with `full: true` after the first one of a session (the server resent
    /// everything because the agent's changes were compacted or it fell behind).
    pub resyncs: AtomicUsize,
    pub frames_in: AtomicU64,
    pub bytes_in: AtomicU64,
    pub frames_out: AtomicU64,
    /// The first few session errors, for the report.
    pub errors: Mutex<Vec<String>>,
}

impl SimStats {
    fn error(&self, e: String) {
        let mut v = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if v.len() < 5 {
            v.push(e);
        }
    }
}

/// The attributes of simulated instance `i`: three availability zones in turn, and
/// `ecs.cpu-architecture` arm64 on every tenth instance (x86_64 on the rest), plus the
/// built-ins the real agent sends.
pub fn attributes(i: usize) -> Vec<(String, Option<String>)> {
    let az = ["us-east-1a", "us-east-1b", "us-east-1c"][i % 3];
    let arch = if i % 10 == 9 { "arm64" } else { "x86_64" };
    vec![
        ("ecs.availability-zone".into(), Some(az.into())),
        ("ecs.capability.external".into(), None),
        ("ecs.cpu-architecture".into(), Some(arch.into())),
        ("ecs.instance-type".into(), Some("sim.large".into())),
        ("ecs.os-family".into(), Some("LINUX".into())),
        ("ecs.os-type".into(), Some("linux".into())),
    ]
}

pub fn instance_id(i: usize) -> String {
    format!("sim-{i:06}")
}

fn hello(cfg: &SimConfig, i: usize) -> Hello {
    Hello {
        protocol_version: AGENT_PROTOCOL_VERSION,
        join_token: cfg.join_token.clone(),
        cluster: cfg.cluster.clone(),
        instance_id: instance_id(i),
        hostname: format!("sim{i}"),
        host_ip: "127.0.0.1".into(),
        resources: InstanceResources {
            cpu: cfg.cpu,
            memory: cfg.memory,
            ports: vec![22],
            ports_udp: Vec::new(),
        },
        attributes: attributes(i)
            .into_iter()
            .map(|(name, value)| Attribute {
                name,
                value,
                target_type: None,
                target_id: None,
            })
            .collect(),
        agent_version: format!("{}-sim", env!("CARGO_PKG_VERSION")),
        runtime_version: "sim".into(),
    }
}

// ---------------------------------------------------------------- what the server sends

/// The parts of a `ServerMessage` a simulated agent needs, decoded without building the
/// task definitions (a flat struct: serde skips the rest without buffering it).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Inbound {
    #[serde(rename = "type")]
    kind: String,
    // Welcome
    heartbeat_interval_ms: u64,
    // Desired
    full: bool,
    tasks: Vec<InTask>,
    // Ack
    task_arn: String,
    seq: u64,
    // Error
    code: String,
    message: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct InTask {
    task_arn: String,
    desired_status: String,
    last_status: String,
    reported_seq: u64,
    task_definition: InTaskDef,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct InTaskDef {
    container_definitions: Vec<InContainer>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct InContainer {
    name: Option<String>,
}

// ---------------------------------------------------------------- one agent's tasks

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Pending,
    Running,
    Stopped,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "PENDING",
            Phase::Running => "RUNNING",
            Phase::Stopped => "STOPPED",
        }
    }
}

#[derive(Debug)]
struct SimTask {
    seq: u64,
    acked: u64,
    phase: Phase,
    /// The seq of the RUNNING / STOPPED report (0: not made yet).
    running_seq: u64,
    stopped_seq: u64,
    counted_running: bool,
    counted_stopped: bool,
    containers: Vec<String>,
    started_at: Option<f64>,
    stopped_at: Option<f64>,
}

/// One simulated agent's memory: outlives its sessions, as the real agent's state file.
#[derive(Default)]
struct AgentState {
    tasks: HashMap<String, SimTask>,
    /// Tasks whose current state is to be reported at the next flush.
    outbox: Vec<String>,
    /// Tasks reported PENDING that turn RUNNING at the next flush.
    starting: Vec<String>,
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn task_id(arn: &str) -> &str {
    arn.rsplit('/').next().unwrap_or(arn)
}

impl AgentState {
    /// Applies a desired set; returns whether something is to be reported.
    fn desired(&mut self, full: bool, tasks: Vec<InTask>, stats: &SimStats) {
        let mut listed = std::collections::HashSet::new();
        for d in tasks {
            if full {
                listed.insert(d.task_arn.clone());
            }
            match self.tasks.get_mut(&d.task_arn) {
                Some(t) => {
                    // After a reconnect the server may be behind: resend what it lacks.
                    if full && d.reported_seq < t.seq {
                        self.outbox.push(d.task_arn.clone());
                    }
                    t.acked = t.acked.max(d.reported_seq.min(t.seq));
                    if d.desired_status == "STOPPED" && t.phase != Phase::Stopped {
                        t.phase = Phase::Stopped;
                        t.seq += 1;
                        t.stopped_seq = t.seq;
                        t.stopped_at = Some(now_secs());
                        stats.stop_requested.fetch_add(1, Ordering::Relaxed);
                        self.outbox.push(d.task_arn);
                    }
                }
                None if d.last_status == "STOPPED" => {}
                None => {
                    let containers = d
                        .task_definition
                        .container_definitions
                        .into_iter()
                        .filter_map(|c| c.name)
                        .collect();
                    let stop = d.desired_status == "STOPPED";
                    let seq = d.reported_seq + 1;
                    let t = SimTask {
                        seq,
                        acked: d.reported_seq,
                        phase: if stop { Phase::Stopped } else { Phase::Pending },
                        running_seq: 0,
                        stopped_seq: if stop { seq } else { 0 },
                        counted_running: false,
                        counted_stopped: false,
                        containers,
                        started_at: None,
                        stopped_at: stop.then(now_secs),
                    };
                    if stop {
                        stats.stop_requested.fetch_add(1, Ordering::Relaxed);
                    } else {
                        stats.assigned.fetch_add(1, Ordering::Relaxed);
                    }
                    self.tasks.insert(d.task_arn.clone(), t);
                    self.outbox.push(d.task_arn);
                }
            }
        }
        if full {
            // What the server no longer assigns here is gone (the real agent stops it).
            self.tasks
                .retain(|arn, t| listed.contains(arn) || t.phase == Phase::Stopped);
        }
    }

    fn ack(&mut self, arn: &str, seq: u64, stats: &SimStats) {
        let Some(t) = self.tasks.get_mut(arn) else {
            return;
        };
        t.acked = t.acked.max(seq);
        if !t.counted_running && t.running_seq > 0 && t.acked >= t.running_seq {
            t.counted_running = true;
            stats.running.fetch_add(1, Ordering::Relaxed);
        }
        if !t.counted_stopped && t.stopped_seq > 0 && t.acked >= t.stopped_seq {
            t.counted_stopped = true;
            stats.stopped.fetch_add(1, Ordering::Relaxed);
            // Confirmed: nothing more will be said about it.
            self.tasks.remove(arn);
        }
    }

    /// The reports of one flush: tasks reported PENDING last time turn RUNNING, then
    /// everything in the outbox as it stands now.
    fn flush(&mut self) -> Vec<TaskReport> {
        for arn in std::mem::take(&mut self.starting) {
            if let Some(t) = self.tasks.get_mut(&arn) {
                if t.phase == Phase::Pending {
                    t.phase = Phase::Running;
                    t.seq += 1;
                    t.running_seq = t.seq;
                    t.started_at = Some(now_secs());
                    self.outbox.push(arn);
                }
            }
        }
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for arn in std::mem::take(&mut self.outbox) {
            if !seen.insert(arn.clone()) {
                continue;
            }
            let Some(t) = self.tasks.get(&arn) else {
                continue;
            };
            if t.phase == Phase::Pending {
                self.starting.push(arn.clone());
            }
            out.push(report(&arn, t));
        }
        out
    }

    /// Everything not acknowledged, for a new session.
    fn unacked(&mut self) {
        for (arn, t) in &self.tasks {
            if t.seq > t.acked {
                self.outbox.push(arn.clone());
            }
        }
    }
}

fn report(arn: &str, t: &SimTask) -> TaskReport {
    let status = t.phase.as_str();
    let id = task_id(arn);
    TaskReport {
        task_arn: arn.to_string(),
        seq: t.seq,
        last_status: status.into(),
        health_status: None,
        pull_started_at: t.started_at,
        pull_stopped_at: t.started_at,
        started_at: t.started_at,
        execution_stopped_at: t.stopped_at,
        stop_code: None,
        stopped_reason: None,
        private_ipv4_address: None,
        containers: t
            .containers
            .iter()
            .map(|name| ContainerReport {
                name: name.clone(),
                runtime_id: (t.phase != Phase::Pending).then(|| format!("{id}-{name}")),
                image_digest: None,
                last_status: status.into(),
                exit_code: (t.phase == Phase::Stopped).then_some(0),
                reason: None,
                network_bindings: Vec::new(),
                network_interfaces: Vec::new(),
                health_status: None,
            })
            .collect(),
    }
}

fn frame(msg: &AgentMessage) -> Frame {
    Frame {
        data: serde_json::to_vec(msg).unwrap_or_default(),
    }
}

// ---------------------------------------------------------------- sessions

/// A set of running simulated agents. Dropping it (or [`Fleet::stop`]) ends them.
pub struct Fleet {
    pub stats: Arc<SimStats>,
    shutdown: tokio::sync::watch::Sender<bool>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl Fleet {
    /// Starts `count` agents, `per_channel` of them on each gRPC channel, the channels
    /// spread over `servers` (cluster ports, `host:port`) in turn.
    pub fn start(
        cfg: SimConfig,
        servers: &[String],
        count: usize,
        per_channel: usize,
    ) -> anyhow::Result<Fleet> {
        let stats = Arc::new(SimStats::default());
        let (shutdown, rx) = tokio::sync::watch::channel(false);
        let cfg = Arc::new(cfg);
        let hellos = Arc::new(Semaphore::new(cfg.concurrent_hellos.max(1)));
        let per_channel = per_channel.max(1);
        let mut handles = Vec::with_capacity(count);
        let mut channel = None;
        for i in 0..count {
            if cfg.tls {
                let server = servers[i % servers.len()].clone();
                let (cfg, stats, hellos, rx) =
                    (cfg.clone(), stats.clone(), hellos.clone(), rx.clone());
                handles.push(tokio::spawn(async move {
                    let hello = hello(&cfg, i);
                    let ch = loop {
                        let joined = {
                            let _slot = hellos.acquire().await;
                            let mut h = hello.clone();
                            h.join_token = String::new();
                            berth_tls::join::join(
                                &server,
                                &cfg.join_token,
                                None,
                                berth_tls::join::Joining::Agent {
                                    hello: serde_json::to_value(&h).unwrap_or_default(),
                                },
                            )
                            .await
                        };
                        match joined {
                            Ok((resp, key)) => {
                                let m = berth_tls::join::Material {
                                    bundle: resp.ca_bundle,
                                    cert: resp.cert,
                                    key,
                                };
                                match m.channel(&server) {
                                    Ok(ch) => break ch,
                                    Err(e) => stats.error(format!("{}: {e:#}", hello.instance_id)),
                                }
                            }
                            Err(e) => stats.error(format!("{}: join: {e}", hello.instance_id)),
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    };
                    agent(ch, hello, cfg, stats, hellos, rx).await
                }));
                continue;
            }
            if i % per_channel == 0 {
                let server = &servers[(i / per_channel) % servers.len()];
                let ep = tonic::transport::Endpoint::from_shared(format!("http://{server}"))?
                    .connect_timeout(Duration::from_secs(5))
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(10))
                    .keep_alive_timeout(Duration::from_secs(20))
                    .initial_connection_window_size(Some(8 << 20))
                    .initial_stream_window_size(Some(1 << 20));
                channel = Some(ep.connect_lazy());
            }
            let ch = channel.clone().expect("set for the first agent of a group");
            handles.push(tokio::spawn(agent(
                ch,
                hello(&cfg, i),
                cfg.clone(),
                stats.clone(),
                hellos.clone(),
                rx.clone(),
            )));
        }
        Ok(Fleet {
            stats,
            shutdown,
            handles,
        })
    }

    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for h in self.handles {
            let _ = tokio::time::timeout(Duration::from_secs(5), h).await;
        }
    }
}

/// One agent: sessions until shutdown, reconnecting after a short, jittered pause.
async fn agent(
    channel: Channel,
    hello: Hello,
    cfg: Arc<SimConfig>,
    stats: Arc<SimStats>,
    hellos: Arc<Semaphore>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut state = AgentState::default();
    let mut welcomed_once = false;
    let mut attempt = 0u32;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let res = session(
            channel.clone(),
            &hello,
            &cfg,
            &stats,
            &hellos,
            &mut state,
            &mut welcomed_once,
            &mut shutdown,
        )
        .await;
        if *shutdown.borrow() {
            return;
        }
        if let Err(e) = res {
            stats.error(format!("{}: {e}", hello.instance_id));
        }
        stats.disconnects.fetch_add(1, Ordering::Relaxed);
        attempt = (attempt + 1).min(5);
        let pause =
            Duration::from_millis(250 << attempt).mul_f64(0.8 + 0.4 * rand::random::<f64>());
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn session(
    channel: Channel,
    hello: &Hello,
    cfg: &SimConfig,
    stats: &SimStats,
    hellos: &Semaphore,
    state: &mut AgentState,
    welcomed_once: &mut bool,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<(), String> {
    let mut permit = Some(hellos.acquire().await.map_err(|e| e.to_string())?);
    let mut client = AgentSessionClient::new(channel)
        .max_decoding_message_size(256 << 20)
        .max_encoding_message_size(64 << 20);
    let (tx, rx) = mpsc::channel::<Frame>(64);
    let _ = tx
        .send(frame(&AgentMessage::Hello(Box::new(hello.clone()))))
        .await;
    let mut inbound = client
        .session(ReceiverStream::new(rx))
        .await
        .map_err(|e| format!("open session: {e}"))?
        .into_inner();
    stats.connected.fetch_add(1, Ordering::Relaxed);
    let _connected = Decrement(&stats.connected);
    let mut heartbeat = tokio::time::interval(Duration::from_secs(5));
    heartbeat.reset();
    let mut flush_at: Option<tokio::time::Instant> = None;
    let mut synced = false;
    loop {
        tokio::select! {
            msg = inbound.message() => {
                let f = match msg {
                    Ok(Some(f)) => f,
                    Ok(None) => return Err("the server closed the session".into()),
                    Err(e) => return Err(format!("stream: {e}")),
                };
                stats.frames_in.fetch_add(1, Ordering::Relaxed);
                stats.bytes_in.fetch_add(f.data.len() as u64, Ordering::Relaxed);
                let m: Inbound = serde_json::from_slice(&f.data)
                    .map_err(|e| format!("undecodable server message: {e}"))?;
                match m.kind.as_str() {
                    "welcome" => {
                        if !*welcomed_once {
                            *welcomed_once = true;
                            stats.registered.fetch_add(1, Ordering::Relaxed);
                        }
                        heartbeat = tokio::time::interval(Duration::from_millis(m.heartbeat_interval_ms.max(200)));
                        heartbeat.reset();
                    }
                    "desired" => {
                        if m.full {
                            if synced {
                                stats.resyncs.fetch_add(1, Ordering::Relaxed);
                            }
                            permit = None;
                        }
                        state.desired(m.full, m.tasks, stats);
                        if m.full && !synced {
                            synced = true;
                            state.unacked();
                        }
                    }
                    "ack" => state.ack(&m.task_arn, m.seq, stats),
                    "logs" => {}
                    "error" => return Err(format!("{}: {}", m.code, m.message)),
                    other => return Err(format!("unknown server message type {other:?}")),
                }
                if synced && flush_at.is_none() && !(state.outbox.is_empty() && state.starting.is_empty()) {
                    flush_at = Some(tokio::time::Instant::now() + cfg.start_delay);
                }
            }
            _ = async { tokio::time::sleep_until(flush_at.expect("guarded")).await }, if flush_at.is_some() => {
                flush_at = None;
                let reports = state.flush();
                if !reports.is_empty() {
                    if tx.send(frame(&AgentMessage::Report { reports })).await.is_err() {
                        return Err("session closed while reporting".into());
                    }
                    stats.frames_out.fetch_add(1, Ordering::Relaxed);
                }
                if !(state.outbox.is_empty() && state.starting.is_empty()) {
                    flush_at = Some(tokio::time::Instant::now() + cfg.start_delay);
                }
            }
            _ = heartbeat.tick() => {
                if tx.send(frame(&AgentMessage::Heartbeat)).await.is_err() {
                    return Err("session closed".into());
                }
                stats.frames_out.fetch_add(1, Ordering::Relaxed);
            }
            _ = shutdown.changed() => {
                drop(permit);
                return Ok(());
            }
        }
    }
}

struct Decrement<'a>(&'a AtomicUsize);

impl Drop for Decrement<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_model::agent::{DesiredTask, ServerMessage};

    fn desired(arn: &str, desired_status: &str, last: &str, seq: u64) -> DesiredTask {
        let td: berth_model::TaskDefinition = serde_json::from_value(serde_json::json!({
            "family": "f", "revision": 1,
            "containerDefinitions": [{"name": "app", "image": "busybox", "cpu": 32, "memory": 64}],
        }))
        .unwrap();
        DesiredTask {
            task_arn: arn.into(),
            cluster: "c".into(),
            task_definition: td,
            overrides: Default::default(),
            desired_status: desired_status.into(),
            last_status: last.into(),
            started_by: None,
            stopped_reason: None,
            reported_seq: seq,
        }
    }

    fn decode(m: &ServerMessage) -> Inbound {
        serde_json::from_slice(&serde_json::to_vec(m).unwrap()).unwrap()
    }

    #[test]
    fn decodes_the_real_server_messages() {
        let w = decode(&ServerMessage::Welcome {
            container_instance_arn: "arn:x".into(),
            servers: vec!["a:1".into()],
            heartbeat_interval_ms: 5000,
        });
        assert_eq!(
            (w.kind.as_str(), w.heartbeat_interval_ms),
            ("welcome", 5000)
        );
        let d = decode(&ServerMessage::Desired {
            full: true,
            revision: 7,
            tasks: vec![desired("arn:t/1", "RUNNING", "PROVISIONING", 0)],
        });
        assert_eq!(d.kind, "desired");
        assert!(d.full);
        assert_eq!(
            d.tasks[0].task_definition.container_definitions[0]
                .name
                .as_deref(),
            Some("app")
        );
        let a = decode(&ServerMessage::Ack {
            task_arn: "arn:t/1".into(),
            seq: 3,
        });
        assert_eq!(
            (a.kind.as_str(), a.task_arn.as_str(), a.seq),
            ("ack", "arn:t/1", 3)
        );
        let e = decode(&ServerMessage::Error {
            code: "AccessDenied".into(),
            message: "no".into(),
        });
        assert_eq!(
            (e.kind.as_str(), e.code.as_str()),
            ("error", "AccessDenied")
        );
    }

    fn tasks(d: Vec<DesiredTask>) -> Vec<InTask> {
        let m = decode(&ServerMessage::Desired {
            full: false,
            revision: 1,
            tasks: d,
        });
        m.tasks
    }

    #[test]
    fn pending_then_running_then_stopped() {
        let stats = SimStats::default();
        let mut st = AgentState::default();
        st.desired(
            false,
            tasks(vec![desired("arn:t/1", "RUNNING", "PROVISIONING", 0)]),
            &stats,
        );
        assert_eq!(stats.assigned.load(Ordering::Relaxed), 1);
        let r = st.flush();
        assert_eq!((r[0].last_status.as_str(), r[0].seq), ("PENDING", 1));
        assert_eq!(r[0].containers[0].name, "app");
        // The same task again (the server echoes our own report) changes nothing.
        st.desired(
            false,
            tasks(vec![desired("arn:t/1", "RUNNING", "PENDING", 1)]),
            &stats,
        );
        assert_eq!(stats.assigned.load(Ordering::Relaxed), 1);
        let r = st.flush();
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].last_status.as_str(), r[0].seq), ("RUNNING", 2));
        assert!(st.flush().is_empty());
        st.ack("arn:t/1", 1, &stats);
        assert_eq!(stats.running.load(Ordering::Relaxed), 0);
        st.ack("arn:t/1", 2, &stats);
        assert_eq!(stats.running.load(Ordering::Relaxed), 1);
        st.desired(
            false,
            tasks(vec![desired("arn:t/1", "STOPPED", "RUNNING", 2)]),
            &stats,
        );
        let r = st.flush();
        assert_eq!((r[0].last_status.as_str(), r[0].seq), ("STOPPED", 3));
        assert_eq!(r[0].containers[0].exit_code, Some(0));
        st.ack("arn:t/1", 3, &stats);
        assert_eq!(stats.stopped.load(Ordering::Relaxed), 1);
        assert!(st.tasks.is_empty());
    }

    #[test]
    fn full_set_after_reconnect_resends_what_the_server_lacks() {
        let stats = SimStats::default();
        let mut st = AgentState::default();
        st.desired(
            false,
            tasks(vec![desired("arn:t/1", "RUNNING", "PROVISIONING", 0)]),
            &stats,
        );
        st.flush();
        st.flush();
        // Reconnect: the server has only the PENDING report.
        let mut full = tasks(vec![desired("arn:t/1", "RUNNING", "PENDING", 1)]);
        st.desired(true, std::mem::take(&mut full), &stats);
        st.unacked();
        let r = st.flush();
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].last_status.as_str(), r[0].seq), ("RUNNING", 2));
        // A task missing from a full set is dropped.
        st.desired(true, Vec::new(), &stats);
        assert!(st.tasks.is_empty());
    }
}
