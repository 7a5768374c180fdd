//! The agent session: one bidirectional gRPC stream per connected agent, served by every
//! server on its cluster port.
//!
//! An agent says `Hello` (join token, identity, resources); the server registers it as a
//! container instance through Raft, answers `Welcome`, sends the instance's full desired task
//! set and then every change to it, as the store applies them (the session is a watcher of
//! the store like every other reader). Reports become `ReportTasks` commands; the server acks
//! each task's report sequence once it is committed. A heartbeat refreshes the instance's
//! `last_seen` in the store every few seconds; the leader marks instances whose agent went
//! quiet `agentConnected=false` ([`watch_heartbeats`]).

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use berth_model::agent::{
    AgentMessage, DesiredTask, Hello, LogsRequest, LogsResponse, ServerMessage, TaskReport,
    AGENT_PROTOCOL_VERSION,
};
use berth_model::{ArnContext, TaskRecord};
use berth_proto::agent::agent_session_server::{AgentSession, AgentSessionServer};
use berth_proto::agent::Frame;
use berth_store::{Change, Command, Response};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Status, Streaming};

use crate::node::ServerNode;

/// How agents are admitted and watched.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// Agents must present this token. `None`: every agent is refused.
    pub join_token: Option<String>,
    pub ctx: ArnContext,
    /// How often agents heartbeat (told to them in `Welcome`).
    pub heartbeat_interval: Duration,
    /// An agent silent for this long is disconnected (`agentConnected=false`).
    pub heartbeat_timeout: Duration,
    /// A disconnected instance's tasks are marked STOPPED this long after it was last
    /// heard from (services then replace them elsewhere; the agent, if it comes back,
    /// stops them).
    pub lost_after: Duration,
}

impl AgentSettings {
    pub fn new(ctx: ArnContext) -> Self {
        AgentSettings {
            join_token: None,
            ctx,
            heartbeat_interval: Duration::from_secs(5),
            heartbeat_timeout: Duration::from_secs(15),
            lost_after: Duration::from_secs(30),
        }
    }
}

/// A session: its number (to unregister only itself) and its outbound stream.
type SessionEntry = (u64, mpsc::Sender<Result<Frame, Status>>);

/// The agent sessions this server holds, so requests for an agent (its logs) can reach it.
#[derive(Default)]
pub struct Hub {
    sessions: std::sync::Mutex<std::collections::HashMap<(String, String), SessionEntry>>,
    waiters: std::sync::Mutex<
        std::collections::HashMap<String, tokio::sync::oneshot::Sender<LogsResponse>>,
    >,
    next: std::sync::atomic::AtomicU64,
}

/// How long a logs request waits for the agent.
pub const LOGS_TIMEOUT: Duration = Duration::from_secs(10);

impl Hub {
    fn register(
        &self,
        cluster: &str,
        instance: &str,
        tx: mpsc::Sender<Result<Frame, Status>>,
    ) -> u64 {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.sessions
            .lock()
            .unwrap()
            .insert((cluster.to_string(), instance.to_string()), (id, tx));
        id
    }

    fn unregister(&self, cluster: &str, instance: &str, id: u64) {
        let mut s = self.sessions.lock().unwrap();
        let key = (cluster.to_string(), instance.to_string());
        if s.get(&key).map(|(i, _)| *i) == Some(id) {
            s.remove(&key);
        }
    }

    fn answer(&self, resp: LogsResponse) {
        if let Some(tx) = self.waiters.lock().unwrap().remove(&resp.request_id) {
            let _ = tx.send(resp);
        }
    }

    /// Asks the agent of this instance, if its session is on this server (`None` if not).
    pub async fn logs(
        &self,
        cluster: &str,
        instance: &str,
        req: LogsRequest,
    ) -> Option<Result<LogsResponse, String>> {
        let tx = self
            .sessions
            .lock()
            .unwrap()
            .get(&(cluster.to_string(), instance.to_string()))
            .map(|(_, tx)| tx.clone())?;
        let (wtx, wrx) = tokio::sync::oneshot::channel();
        let rid = req.request_id.clone();
        self.waiters.lock().unwrap().insert(rid.clone(), wtx);
        if !send(&tx, &ServerMessage::Logs(req)).await {
            self.waiters.lock().unwrap().remove(&rid);
            return Some(Err("the agent's session just ended".into()));
        }
        let res = match tokio::time::timeout(LOGS_TIMEOUT, wrx).await {
            Ok(Ok(r)) => Ok(r),
            _ => Err(format!("the agent did not answer within {LOGS_TIMEOUT:?}")),
        };
        self.waiters.lock().unwrap().remove(&rid);
        Some(res)
    }
}

#[derive(Clone)]
pub struct AgentSvc {
    node: Arc<ServerNode>,
}

pub fn service(node: Arc<ServerNode>) -> AgentSessionServer<AgentSvc> {
    AgentSessionServer::new(AgentSvc { node })
        .max_decoding_message_size(16 << 20)
        .max_encoding_message_size(64 << 20)
}

type FrameStream = Pin<Box<dyn Stream<Item = Result<Frame, Status>> + Send>>;

#[tonic::async_trait]
impl AgentSession for AgentSvc {
    type SessionStream = FrameStream;

    async fn session(
        &self,
        req: Request<Streaming<Frame>>,
    ) -> Result<tonic::Response<FrameStream>, Status> {
        let peer = req
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "?".into());
        let inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(256);
        let node = self.node.clone();
        tokio::spawn(async move {
            if let Err(e) = run_session(node, inbound, tx.clone(), &peer).await {
                tracing::info!(peer, error = %e, "agent session ended");
                let _ = send(
                    &tx,
                    &ServerMessage::Error {
                        code: e.code.into(),
                        message: e.message.clone(),
                    },
                )
                .await;
            }
        });
        Ok(tonic::Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[derive(Debug)]
struct SessionError {
    code: &'static str,
    message: String,
}

impl std::fmt::Display for SessionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

fn err(code: &'static str, message: impl Into<String>) -> SessionError {
    SessionError {
        code,
        message: message.into(),
    }
}

async fn send(tx: &mpsc::Sender<Result<Frame, Status>>, msg: &ServerMessage) -> bool {
    let data = match serde_json::to_vec(msg) {
        Ok(d) => d,
        Err(_) => return false,
    };
    tx.send(Ok(Frame { data })).await.is_ok()
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn decode(frame: &Frame) -> Result<AgentMessage, SessionError> {
    serde_json::from_slice(&frame.data)
        .map_err(|e| err("BadMessage", format!("undecodable agent message: {e}")))
}

/// Constant-time comparison of join tokens.
fn token_matches(expected: &str, given: &str) -> bool {
    let (a, b) = (expected.as_bytes(), given.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn desired_task(node: &ServerNode, rec: &TaskRecord) -> Option<DesiredTask> {
    let t = &rec.task;
    let td_arn = t.task_definition_arn.as_deref()?;
    let (family, revision) = td_arn.rsplit_once('/')?.1.rsplit_once(':')?;
    let revision: u32 = revision.parse().ok()?;
    let td = node.reader.task_definition(family, revision).ok()??;
    let cluster = t
        .cluster_arn
        .as_deref()
        .and_then(|a| a.rsplit_once('/'))
        .map(|(_, c)| c.to_string())
        .unwrap_or_default();
    Some(DesiredTask {
        task_arn: t.task_arn.clone().unwrap_or_default(),
        cluster,
        task_definition: td,
        overrides: t.overrides.clone().unwrap_or_default(),
        desired_status: t.desired_status.clone().unwrap_or_else(|| "RUNNING".into()),
        last_status: t.last_status.clone().unwrap_or_default(),
        started_by: t.started_by.clone(),
        stopped_reason: t.stopped_reason.clone(),
        reported_seq: rec.reported_seq,
    })
}

/// Tasks the agent should know about: everything on the instance the server does not yet
/// consider STOPPED.
fn full_set(node: &ServerNode, cluster: &str, instance_id: &str) -> Vec<DesiredTask> {
    let tasks = node
        .reader
        .tasks_on_instance(cluster, instance_id)
        .unwrap_or_default();
    tasks
        .iter()
        .filter(|r| r.task.last_status.as_deref() != Some("STOPPED"))
        .filter_map(|r| desired_task(node, r))
        .collect()
}

async fn run_session(
    node: Arc<ServerNode>,
    mut inbound: Streaming<Frame>,
    tx: mpsc::Sender<Result<Frame, Status>>,
    peer: &str,
) -> Result<(), SessionError> {
    let settings = node.agent_settings.clone();
    // 1. Hello.
    let first = tokio::time::timeout(Duration::from_secs(15), inbound.message())
        .await
        .map_err(|_| err("Timeout", "no Hello within 15 s"))?
        .map_err(|e| err("Stream", e.to_string()))?
        .ok_or_else(|| err("Stream", "closed before Hello"))?;
    let hello: Hello = match decode(&first)? {
        AgentMessage::Hello(h) => *h,
        _ => return Err(err("BadMessage", "the first message must be Hello")),
    };
    if hello.protocol_version != AGENT_PROTOCOL_VERSION {
        return Err(err(
            "UnsupportedVersion",
            format!(
                "agent protocol {} is not supported by this server (it speaks {}); run the same berth version on servers and agents",
                hello.protocol_version, AGENT_PROTOCOL_VERSION
            ),
        ));
    }
    match &settings.join_token {
        Some(t) if token_matches(t, &hello.join_token) => {}
        Some(_) => return Err(err(
            "AccessDenied",
            "the join token is wrong: use the token the servers were started with (--join-token)",
        )),
        None => {
            return Err(err(
                "AccessDenied",
                "this server accepts no agents: it has no join token configured",
            ))
        }
    }
    let cluster = hello.cluster.clone();
    let instance_id = hello.instance_id.clone();
    let resp = node
        .write(Command::RegisterContainerInstance {
            ctx: settings.ctx.clone(),
            hello: hello.clone(),
            at: now_secs(),
        })
        .await
        .map_err(|e| err("RegisterFailed", e.message.clone()))?;
    let arn = match resp {
        Response::ContainerInstance { container_instance } => container_instance
            .container_instance_arn
            .clone()
            .unwrap_or_default(),
        Response::Error { error } => return Err(err("RegisterFailed", error.message)),
        other => return Err(err("RegisterFailed", format!("unexpected {other:?}"))),
    };
    tracing::info!(
        peer,
        cluster,
        instance_id,
        hostname = hello.hostname,
        "agent registered"
    );

    // 2. Welcome and the full desired set, as of a linearizable read.
    if !send(
        &tx,
        &ServerMessage::Welcome {
            container_instance_arn: arn,
            servers: node.member_addrs(),
            heartbeat_interval_ms: settings.heartbeat_interval.as_millis() as u64,
        },
    )
    .await
    {
        return Ok(());
    }
    node.read_barrier()
        .await
        .map_err(|e| err("Unavailable", e.message.clone()))?;
    let mut revision = node.reader.revision();
    let tasks = full_set(&node, &cluster, &instance_id);
    if !send(
        &tx,
        &ServerMessage::Desired {
            full: true,
            revision,
            tasks,
        },
    )
    .await
    {
        return Ok(());
    }

    // 3. The session loop.
    let hub_id = node.hub.register(&cluster, &instance_id, tx.clone());
    let mut watch = node.reader.subscribe();
    let mut refresh = tokio::time::interval(settings.heartbeat_interval);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = tokio::time::Instant::now();
    let (report_tx, mut report_rx) = mpsc::channel::<Vec<TaskReport>>(64);
    // Reports are committed by a helper so a slow commit never stalls the desired stream.
    let writer = {
        let node = node.clone();
        let tx = tx.clone();
        let cluster = cluster.clone();
        let instance_id = instance_id.clone();
        tokio::spawn(async move {
            while let Some(mut reports) = report_rx.recv().await {
                while let Ok(more) = report_rx.try_recv() {
                    reports.extend(more);
                }
                let acks: BTreeMap<String, u64> = reports
                    .iter()
                    .map(|r| (r.task_arn.clone(), r.seq))
                    .collect();
                let res = node
                    .write(Command::ReportTasks {
                        cluster: cluster.clone(),
                        instance_id: instance_id.clone(),
                        reports,
                        at: now_secs(),
                    })
                    .await;
                match res {
                    Ok(_) => {
                        for (task_arn, seq) in acks {
                            if !send(&tx, &ServerMessage::Ack { task_arn, seq }).await {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        // Not acked: the agent resends on its next connection.
                        tracing::warn!(error = %e.message, "could not commit agent reports");
                    }
                }
            }
        })
    };
    let result = loop {
        let deadline = last_heard + settings.heartbeat_timeout;
        tokio::select! {
            msg = inbound.message() => {
                let frame = match msg {
                    Ok(Some(f)) => f,
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(err("Stream", e.to_string())),
                };
                last_heard = tokio::time::Instant::now();
                match decode(&frame)? {
                    AgentMessage::Heartbeat => {}
                    AgentMessage::Report { reports } => {
                        if report_tx.send(reports).await.is_err() {
                            break Ok(());
                        }
                    }
                    AgentMessage::Logs(resp) => node.hub.answer(resp),
                    AgentMessage::Hello(_) => break Err(err("BadMessage", "Hello sent twice")),
                }
            }
            changed = watch.changed() => {
                if changed.is_err() {
                    break Ok(());
                }
                let current = *watch.borrow_and_update();
                if current <= revision {
                    continue;
                }
                let mut affected = BTreeSet::new();
                let mut resync = false;
                let mut deregistered = false;
                match node.reader.changes_since(revision) {
                    Ok(Ok(revs)) => {
                        for rc in revs {
                            for ch in rc.changes {
                                match ch {
                                    Change::Task { cluster: c, id, instance_id: i }
                                        if c == cluster && i == instance_id =>
                                    {
                                        affected.insert(id);
                                    }
                                    Change::ContainerInstance { cluster: c, id }
                                        if c == cluster && id == instance_id =>
                                    {
                                        if let Ok(Some(ci)) = node.reader.container_instance(&cluster, &instance_id) {
                                            if ci.instance.status.as_deref() == Some("INACTIVE") {
                                                deregistered = true;
                                            }
                                        }
                                    }
                                    _ => {}
                                }
                            }
                        }
                    }
                    _ => resync = true,
                }
                revision = current;
                if deregistered {
                    // Tell the agent what to stop first, then end the session.
                    let _ = send(&tx, &ServerMessage::Desired { full: true, revision, tasks: full_set(&node, &cluster, &instance_id) }).await;
                    break Err(err("InstanceDeregistered", format!("container instance {instance_id} was deregistered from cluster {cluster}")));
                }
                let msg = if resync {
                    ServerMessage::Desired { full: true, revision, tasks: full_set(&node, &cluster, &instance_id) }
                } else if affected.is_empty() {
                    continue;
                } else {
                    let tasks = affected
                        .iter()
                        .filter_map(|id| node.reader.task(&cluster, id).ok().flatten())
                        .filter_map(|r| desired_task(&node, &r))
                        .collect();
                    ServerMessage::Desired { full: false, revision, tasks }
                };
                if !send(&tx, &msg).await {
                    break Ok(());
                }
            }
            _ = refresh.tick() => {
                // Keep `last_seen` fresh in the store so the leader knows this agent lives,
                // whichever server it is connected to.
                let _ = node
                    .write(Command::SetAgentConnected {
                        cluster: cluster.clone(),
                        instance_id: instance_id.clone(),
                        connected: true,
                        at: now_secs(),
                    })
                    .await;
            }
            _ = tokio::time::sleep_until(deadline) => {
                break Err(err("HeartbeatTimeout", format!("no message from the agent for {:?}", settings.heartbeat_timeout)));
            }
        }
    };
    writer.abort();
    node.hub.unregister(&cluster, &instance_id, hub_id);
    // agentConnected turns false through the leader's heartbeat deadline, not here: the agent
    // may already be connected to another server, and a late `false` would be wrong.
    tracing::info!(peer, cluster, instance_id, "agent disconnected");
    result
}

/// How long a STOPPED task stays describable.
pub const STOPPED_TASK_RETENTION: Duration = Duration::from_secs(3600);

/// Leader only: marks instances whose agent has not been seen within the heartbeat timeout
/// as disconnected (their server may have died with the session), marks the tasks of
/// instances disconnected for longer than `lost_after` STOPPED (see [`lost_machine`]),
/// and purges tasks stopped longer ago than [`STOPPED_TASK_RETENTION`].
pub async fn watch_heartbeats(
    node: Arc<ServerNode>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let timeout = node.agent_settings.heartbeat_timeout;
    let lost_after = node.agent_settings.lost_after;
    let mut tick = tokio::time::interval(Duration::from_secs(1).min(timeout / 2));
    let mut last_purge = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => return,
        }
        if !node.is_leader() {
            continue;
        }
        let now = now_secs();
        let Ok(clusters) = node.reader.clusters() else {
            continue;
        };
        // Stopped tasks stay describable for an hour (as ECS promises), then go.
        let purge = last_purge.elapsed() >= Duration::from_secs(60);
        if purge {
            last_purge = tokio::time::Instant::now();
        }
        for c in clusters {
            let name = c.cluster_name.clone().unwrap_or_default();
            if purge {
                let _ = node
                    .write(Command::PurgeStoppedTasks {
                        cluster: name.clone(),
                        before: now - STOPPED_TASK_RETENTION.as_secs_f64(),
                    })
                    .await;
            }
            let Ok(instances) = node.reader.container_instances(&name) else {
                continue;
            };
            for ci in instances {
                let connected = ci.instance.agent_connected.unwrap_or(false);
                if !connected && ci.last_seen + lost_after.as_secs_f64() < now {
                    lost_machine(&node, &name, &ci, now).await;
                    continue;
                }
                if connected && ci.last_seen + timeout.as_secs_f64() < now {
                    let id = ci.instance.ec2_instance_id.clone().unwrap_or_default();
                    tracing::warn!(
                        cluster = name,
                        instance = id,
                        "agent missed its heartbeat deadline; marking it disconnected"
                    );
                    let _ = node
                        .write(Command::SetAgentConnected {
                            cluster: name.clone(),
                            instance_id: id,
                            connected: false,
                            at: now,
                        })
                        .await;
                }
            }
        }
    }
}

/// An instance whose agent has been gone past the grace period: its tasks that are not
/// STOPPED yet become STOPPED, so services replace them on other machines. The agent,
/// if it returns, no longer finds them in its desired set and stops them.
async fn lost_machine(
    node: &ServerNode,
    cluster: &str,
    ci: &berth_model::ContainerInstanceRecord,
    now: f64,
) {
    let id = ci.id().to_string();
    let Ok(tasks) = node.reader.tasks_on_instance(cluster, &id) else {
        return;
    };
    let live = tasks
        .iter()
        .filter(|t| t.task.last_status() != "STOPPED")
        .count();
    if live == 0 {
        return;
    }
    let since = (now - ci.last_seen).max(0.0).round() as u64;
    tracing::warn!(
        cluster,
        instance = id,
        tasks = live,
        "agent lost for {since}s; marking its tasks STOPPED"
    );
    let _ = node
        .write(Command::StopInstanceTasks {
            cluster: cluster.to_string(),
            instance_id: id.clone(),
            reason: format!(
                "Container instance {id} lost contact with the cluster: its agent has not been heard from for {since}s"
            ),
            stop_code: "TerminationNotice".into(),
            at: now,
        })
        .await;
}
