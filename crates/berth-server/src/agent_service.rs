//! The agent session: one bidirectional gRPC stream per connected agent, served by every
//! server on its cluster port.
//!
//! An agent says `Hello` (join token, identity, resources); the server registers it as a
//! container instance through Raft, answers `Welcome`, sends the instance's full desired task
//! set and then every change to it, as the store applies them (the session is a watcher of
//! the store like every other reader). Reports become `ReportTasks` commands; the server acks
//! each task's report sequence once it is committed. A heartbeat refreshes the instance's
//! `last_seen` in the store every few seconds; the leader marks instances whose agent went
//! quiet `agentConnected=false` (`berth_control::instances`).
//!
//! Sessions do not read the store's change log themselves: one fan-out task per server
//! ([`Watchers`]) reads each new revision's changes once and hands every session only the
//! changes of its own instance, so a server with thousands of agents reads each revision
//! once, not once per agent. A session that falls behind (its queue of notices is full, or
//! the fan-out's changes were compacted) is sent its full desired set again.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_model::agent::{
    AgentMessage, DesiredTask, Hello, LogsRequest, LogsResponse, ServerMessage, TaskReport,
    AGENT_PROTOCOL_VERSION,
};
use berth_model::{ArnContext, TaskDefinition, TaskRecord};
use berth_proto::agent::agent_session_server::{AgentSession, AgentSessionServer};
use berth_proto::agent::Frame;
use berth_store::{Change, Command, Response, StateReader};
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
    /// The desired-state watches of the sessions, fed by one fan-out task.
    watchers: Arc<Watchers>,
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

/// What the store's changes mean for one session: the changes of its own instance, each
/// with the revision that made it.
#[derive(Debug, Default)]
struct Notice {
    /// The revision this notice brings the session up to.
    revision: u64,
    /// Tasks of the session's instance that changed.
    tasks: Vec<(u64, String)>,
    /// The revision at which the instance record itself last changed, if it did.
    instance: Option<u64>,
}

/// Notices queued per session before it counts as lagging (and is resynced).
const NOTICES_QUEUED: usize = 64;

struct Watch {
    id: u64,
    /// Changes at or before this revision were applied before the session registered (it
    /// reads its full set afterwards, so it has them).
    from: u64,
    tx: mpsc::Sender<Notice>,
    /// Set when a notice could not be queued: the session must re-read its full set.
    lagged: Arc<AtomicBool>,
}

#[derive(Default)]
struct WatchState {
    sessions: HashMap<(String, String), Watch>,
    /// The revision the fan-out has routed up to; `None` while no fan-out task runs.
    pos: Option<u64>,
}

/// The sessions' watches of the store, and the one task that feeds them (started with the
/// first session, ended when the last is gone).
#[derive(Default)]
pub struct Watchers {
    state: Mutex<WatchState>,
}

impl Watchers {
    /// Watches the changes of (cluster, instance) from now on. Register before reading the
    /// full set: nothing applied after registration is missed.
    fn watch(
        self: &Arc<Self>,
        reader: &StateReader,
        cluster: &str,
        instance: &str,
        id: u64,
    ) -> (mpsc::Receiver<Notice>, Arc<AtomicBool>) {
        let (tx, rx) = mpsc::channel(NOTICES_QUEUED);
        let lagged = Arc::new(AtomicBool::new(false));
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let from = match st.pos {
            Some(p) => p,
            None => {
                let p = reader.revision();
                st.pos = Some(p);
                tokio::spawn(fan_out(self.clone(), reader.clone(), p));
                p
            }
        };
        st.sessions.insert(
            (cluster.to_string(), instance.to_string()),
            Watch {
                id,
                from,
                tx,
                lagged: lagged.clone(),
            },
        );
        (rx, lagged)
    }

    fn unwatch(&self, cluster: &str, instance: &str, id: u64) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let key = (cluster.to_string(), instance.to_string());
        if st.sessions.get(&key).map(|w| w.id) == Some(id) {
            st.sessions.remove(&key);
        }
    }
}

/// Ends a session's watch however the session ends.
struct WatchGuard<'a> {
    watchers: &'a Watchers,
    cluster: &'a str,
    instance: &'a str,
    id: u64,
}

impl Drop for WatchGuard<'_> {
    fn drop(&mut self) {
        self.watchers.unwatch(self.cluster, self.instance, self.id);
    }
}

/// The fan-out: reads every new revision's changes once and queues each session the
/// changes of its instance. Ends when no session is left (or the store is gone).
async fn fan_out(w: Arc<Watchers>, reader: StateReader, mut pos: u64) {
    let mut applied = reader.subscribe();
    loop {
        if applied.changed().await.is_err() {
            let mut st = w.state.lock().unwrap_or_else(|p| p.into_inner());
            st.pos = None;
            // Dropping the senders ends the sessions' watches.
            st.sessions.clear();
            return;
        }
        let current = *applied.borrow_and_update();
        if current <= pos {
            continue;
        }
        let changes = reader.changes_since(pos);
        let mut st = w.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.sessions.is_empty() {
            st.pos = None;
            return;
        }
        let revs = match changes {
            Ok(Ok(revs)) => revs,
            other => {
                match other {
                    Ok(Err(compacted)) => {
                        tracing::warn!(%compacted, "the agent sessions' watch fell behind the store; resending every agent its full set")
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the store's changes; resending every agent its full set")
                    }
                    Ok(Ok(_)) => {}
                }
                for s in st.sessions.values() {
                    s.lagged.store(true, Ordering::SeqCst);
                    let _ = s.tx.try_send(Notice {
                        revision: current,
                        ..Default::default()
                    });
                }
                pos = current;
                st.pos = Some(pos);
                continue;
            }
        };
        let upto = revs
            .last()
            .map(|r| r.revision)
            .unwrap_or(current)
            .max(current);
        let mut out: HashMap<(String, String), Notice> = HashMap::new();
        for rc in revs {
            for ch in rc.changes {
                let (key, task) = match ch {
                    Change::Task {
                        cluster,
                        id,
                        instance_id,
                    } => ((cluster, instance_id), Some(id)),
                    Change::ContainerInstance { cluster, id } => ((cluster, id), None),
                    _ => continue,
                };
                match st.sessions.get(&key) {
                    Some(s) if rc.revision > s.from => {}
                    _ => continue,
                }
                let n = out.entry(key).or_default();
                match task {
                    Some(id) => n.tasks.push((rc.revision, id)),
                    None => n.instance = Some(rc.revision),
                }
            }
        }
        for (key, mut n) in out {
            n.revision = upto;
            if let Some(s) = st.sessions.get(&key) {
                if s.tx.try_send(n).is_err() {
                    // Full (or the session is ending): it re-reads everything instead.
                    s.lagged.store(true, Ordering::SeqCst);
                }
            }
        }
        pos = upto;
        st.pos = Some(pos);
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

use berth_store::now_secs;

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

/// Task definitions a session has read (immutable but for their status, which agents do
/// not look at).
type TaskDefs = HashMap<String, TaskDefinition>;

fn desired_task(node: &ServerNode, rec: &TaskRecord, tds: &mut TaskDefs) -> Option<DesiredTask> {
    let t = &rec.task;
    let td_arn = t.task_definition_arn.as_deref()?;
    let td = match tds.get(td_arn) {
        Some(td) => td.clone(),
        None => {
            let (family, revision) = td_arn.rsplit_once('/')?.1.rsplit_once(':')?;
            let revision: u32 = revision.parse().ok()?;
            let td = node.reader.task_definition(family, revision).ok()??;
            if tds.len() >= 64 {
                tds.clear();
            }
            tds.insert(td_arn.to_string(), td.clone());
            td
        }
    };
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
        // A task draining out of its target groups keeps running until the drain is
        // over (the store's ElbSweep clears `drain_until`), as ECS's DEACTIVATING.
        desired_status: if rec.drain_until.is_some() {
            "RUNNING".into()
        } else {
            t.desired_status.clone().unwrap_or_else(|| "RUNNING".into())
        },
        last_status: t.last_status.clone().unwrap_or_default(),
        started_by: t.started_by.clone(),
        stopped_reason: t.stopped_reason.clone(),
        reported_seq: rec.reported_seq,
    })
}

/// Tasks the agent should know about: everything on the instance the server does not yet
/// consider STOPPED.
fn full_set(
    node: &ServerNode,
    cluster: &str,
    instance_id: &str,
    tds: &mut TaskDefs,
) -> Vec<DesiredTask> {
    let tasks = node
        .reader
        .tasks_on_instance(cluster, instance_id)
        .unwrap_or_default();
    tasks
        .iter()
        .filter(|r| r.task.last_status.as_deref() != Some("STOPPED"))
        .filter_map(|r| desired_task(node, r, tds))
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
    // Watch first, then read: whatever is applied after the read is still delivered.
    let watch_id = node.hub.next.fetch_add(1, Ordering::Relaxed);
    let (mut notices, lagged) =
        node.hub
            .watchers
            .watch(&node.reader, &cluster, &instance_id, watch_id);
    let _watch = WatchGuard {
        watchers: &node.hub.watchers,
        cluster: &cluster,
        instance: &instance_id,
        id: watch_id,
    };
    let mut tds = TaskDefs::new();
    node.read_barrier()
        .await
        .map_err(|e| err("Unavailable", e.message.clone()))?;
    let mut revision = node.reader.revision();
    let tasks = full_set(&node, &cluster, &instance_id, &mut tds);
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
    let mut refreshing: Option<tokio::task::JoinHandle<()>> = None;
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
            // The agent's messages first: after a stall (a slow send), a message that has
            // arrived counts before the heartbeat deadline does.
            biased;
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
            notice = notices.recv() => {
                let Some(n) = notice else {
                    break Ok(());
                };
                let resync = lagged.swap(false, Ordering::SeqCst);
                if !resync && n.revision <= revision {
                    continue;
                }
                let mut deregistered = false;
                // After a lag the instance's own change may be among the dropped notices.
                if resync || n.instance.is_some_and(|r| r > revision) {
                    if let Ok(Some(ci)) = node.reader.container_instance(&cluster, &instance_id) {
                        if ci.instance.status.as_deref() == Some("INACTIVE") {
                            deregistered = true;
                        }
                    }
                }
                let affected: BTreeSet<String> = n
                    .tasks
                    .into_iter()
                    .filter(|(r, _)| *r > revision)
                    .map(|(_, id)| id)
                    .collect();
                if resync {
                    // Everything as of now; notices still queued repeat part of it.
                    revision = node.reader.revision().max(n.revision);
                } else {
                    revision = n.revision;
                }
                if deregistered {
                    // Tell the agent what to stop first, then end the session.
                    let _ = send(&tx, &ServerMessage::Desired { full: true, revision, tasks: full_set(&node, &cluster, &instance_id, &mut tds) }).await;
                    break Err(err("InstanceDeregistered", format!("container instance {instance_id} was deregistered from cluster {cluster}")));
                }
                let msg = if resync {
                    ServerMessage::Desired { full: true, revision, tasks: full_set(&node, &cluster, &instance_id, &mut tds) }
                } else if affected.is_empty() {
                    continue;
                } else {
                    let tasks = affected
                        .iter()
                        .filter_map(|id| node.reader.task(&cluster, id).ok().flatten())
                        .filter_map(|r| desired_task(&node, &r, &mut tds))
                        .collect();
                    ServerMessage::Desired { full: false, revision, tasks }
                };
                if !send(&tx, &msg).await {
                    break Ok(());
                }
            }
            _ = refresh.tick() => {
                // Keep `last_seen` fresh in the store so the leader knows this agent lives,
                // whichever server it is connected to. Committed aside, so a slow commit
                // never holds up the session; one at a time.
                if refreshing.as_ref().is_none_or(|h| h.is_finished()) {
                    let node = node.clone();
                    let (cluster, instance_id) = (cluster.clone(), instance_id.clone());
                    refreshing = Some(tokio::spawn(async move {
                        let _ = node
                            .write(Command::SetAgentConnected {
                                cluster,
                                instance_id,
                                connected: true,
                                at: now_secs(),
                            })
                            .await;
                    }));
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                break Err(err("HeartbeatTimeout", format!("no message from the agent for {:?}", settings.heartbeat_timeout)));
            }
        }
    };
    if let Some(h) = refreshing {
        h.abort();
    }
    writer.abort();
    node.hub.unregister(&cluster, &instance_id, hub_id);
    // agentConnected turns false through the leader's heartbeat deadline, not here: the agent
    // may already be connected to another server, and a late `false` would be wrong.
    tracing::info!(peer, cluster, instance_id, "agent disconnected");
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_model::agent::InstanceResources;
    use berth_model::{Cluster, Container, Reservation};
    use berth_store::{NewTask, StateMachine, StoreOptions, TypeConfig};
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

    struct Store {
        sm: StateMachine,
        reader: StateReader,
        index: u64,
        _dir: tempfile::TempDir,
    }

    fn ctx() -> ArnContext {
        ArnContext::new("us-east-1", "123456789012")
    }

    impl Store {
        async fn new() -> Store {
            let dir = tempfile::tempdir().unwrap();
            let opened = berth_store::open(
                dir.path(),
                &StoreOptions {
                    fsync: false,
                    cache_capacity: 1 << 20,
                },
            )
            .unwrap();
            let mut s = Store {
                sm: opened.state_machine,
                reader: opened.reader,
                index: 0,
                _dir: dir,
            };
            s.apply(Command::CreateCluster {
                cluster: Cluster {
                    cluster_arn: Some(ctx().cluster("c")),
                    cluster_name: Some("c".into()),
                    status: Some("ACTIVE".into()),
                    ..Default::default()
                },
                tags: vec![],
            })
            .await;
            for id in ["i1", "i2"] {
                s.apply(Command::RegisterContainerInstance {
                    ctx: ctx(),
                    hello: hello(id),
                    at: 100.0,
                })
                .await;
            }
            s
        }

        async fn apply(&mut self, cmd: Command) -> u64 {
            self.index += 1;
            let entry: Entry<TypeConfig> = Entry {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), self.index),
                payload: EntryPayload::Normal(berth_store::Request::new(cmd)),
            };
            self.sm.apply(vec![entry]).await.unwrap();
            self.index
        }

        async fn run(&mut self, task: &str, instance: &str) -> u64 {
            self.apply(Command::RunTasks {
                ctx: ctx(),
                cluster: "c".into(),
                tasks: vec![NewTask {
                    task_id: task.into(),
                    task_definition_arn: ctx().task_definition("web", 1),
                    family: "web".into(),
                    revision: 1,
                    instance_id: instance.into(),
                    group: "family:web".into(),
                    containers: vec![Container {
                        name: Some("app".into()),
                        image: Some("busybox".into()),
                        ..Default::default()
                    }],
                    reservation: Reservation {
                        cpu: 1,
                        memory: 1,
                        ports: vec![],
                        ports_udp: vec![],
                    },
                    launch_type: "EC2".into(),
                    ..Default::default()
                }],
                client_token: None,
                at: 101.0,
            })
            .await
        }
    }

    fn hello(id: &str) -> Hello {
        Hello {
            protocol_version: AGENT_PROTOCOL_VERSION,
            join_token: "t".into(),
            cluster: "c".into(),
            instance_id: id.into(),
            hostname: id.into(),
            host_ip: "10.0.0.1".into(),
            resources: InstanceResources {
                cpu: 4096,
                memory: 4096,
                ports: vec![],
                ports_udp: vec![],
            },
            attributes: vec![],
            agent_version: "0".into(),
            runtime_version: "0".into(),
        }
    }

    async fn next(rx: &mut mpsc::Receiver<Notice>) -> Notice {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a notice within 5 s")
            .expect("the fan-out is running")
    }

    async fn settle(w: &Watchers, revision: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while w.state.lock().unwrap().pos < Some(revision) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the fan-out is stuck"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test]
    async fn each_session_gets_only_its_instances_changes_once_per_revision() {
        let mut s = Store::new().await;
        let w = Arc::new(Watchers::default());
        let (mut rx1, lag1) = w.watch(&s.reader, "c", "i1", 1);
        let (mut rx2, _) = w.watch(&s.reader, "c", "i2", 2);
        let r1 = s.run("t1", "i1").await;
        let n = next(&mut rx1).await;
        assert_eq!(n.tasks, vec![(r1, "t1".to_string())]);
        assert_eq!(n.revision, r1);
        let r2 = s.run("t2", "i2").await;
        let n = next(&mut rx2).await;
        assert_eq!(n.tasks, vec![(r2, "t2".to_string())]);
        assert!(rx1.try_recv().is_err(), "i1 hears nothing of i2's task");
        // The instance record changing (a heartbeat) is flagged with its revision.
        let r3 = s
            .apply(Command::SetAgentConnected {
                cluster: "c".into(),
                instance_id: "i1".into(),
                connected: true,
                at: 102.0,
            })
            .await;
        let n = next(&mut rx1).await;
        assert_eq!((n.instance, n.tasks.len()), (Some(r3), 0));
        assert!(!lag1.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_session_registered_later_gets_nothing_from_before_and_a_full_queue_lags() {
        let mut s = Store::new().await;
        let w = Arc::new(Watchers::default());
        let (mut rx1, lag1) = w.watch(&s.reader, "c", "i1", 1);
        s.run("t1", "i1").await;
        next(&mut rx1).await;
        // i2's session registers after t1: it is told only what comes later.
        let (mut rx2, _) = w.watch(&s.reader, "c", "i2", 2);
        let r = s.run("t2", "i2").await;
        assert_eq!(next(&mut rx2).await.tasks, vec![(r, "t2".to_string())]);
        // i1 stops reading: once its queue is full it is marked to resync.
        for k in 0..NOTICES_QUEUED + 2 {
            let r = s.run(&format!("u{k}"), "i1").await;
            // One notice per revision: let the fan-out route each before the next.
            settle(&w, r).await;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !lag1.load(Ordering::SeqCst) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "never marked lagged"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Another session replacing it (same instance, new id) is not unwatched by the old.
        let (_rx1b, _) = w.watch(&s.reader, "c", "i1", 3);
        w.unwatch("c", "i1", 1);
        assert_eq!(w.state.lock().unwrap().sessions.len(), 2);
        // With no session left, the fan-out ends at the next revision.
        w.unwatch("c", "i1", 3);
        w.unwatch("c", "i2", 2);
        s.run("t9", "i2").await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while w.state.lock().unwrap().pos.is_some() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the fan-out kept running"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
