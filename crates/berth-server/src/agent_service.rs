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
//! ([`crate::sessions::Watchers`]) reads each new revision's changes once and hands every session only the
//! changes of its own instance, so a server with thousands of agents reads each revision
//! once, not once per agent. A session that falls behind (its queue of notices is full, or
//! the fan-out's changes were compacted) is sent its full desired set again.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use berth_model::agent::{
    AgentMessage, DesiredTask, Hello, ServerMessage, TaskReport, AGENT_PROTOCOL_VERSION,
};
use berth_model::token::TokenKind;
use berth_model::{ErrorKind, TaskDefinition, TaskRecord};
use berth_proto::agent::agent_session_server::{AgentSession, AgentSessionServer};
use berth_proto::agent::Frame;
use berth_store::{Command, Response};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Status, Streaming};

use crate::node::ServerNode;

use berth_store::now_secs;

use crate::sessions::{send, WatchGuard};

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
        let info = crate::cluster_port::PeerInfo::of(&req).cloned();
        let peer = info
            .as_ref()
            .map(|p| p.addr.to_string())
            .unwrap_or_else(|| "?".into());
        let identity = match info.map(|i| i.peer) {
            Some(crate::cluster_port::Peer::Member(id)) => Some(id),
            Some(crate::cluster_port::Peer::Plain) => None,
            _ => {
                return Err(Status::permission_denied(
                    "agent sessions need an agent certificate",
                ))
            }
        };
        let inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(256);
        let node = self.node.clone();
        tokio::spawn(async move {
            if let Err(e) = run_session(node, inbound, tx.clone(), &peer, identity).await {
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

fn decode(frame: &Frame) -> Result<AgentMessage, SessionError> {
    serde_json::from_slice(&frame.data)
        .map_err(|e| err("BadMessage", format!("undecodable agent message: {e}")))
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

/// An agent with a certificate: the Hello must be for the instance its certificate names,
/// and that instance registered and not deregistered (read linearizably: it registered as
/// it joined, maybe through another server). Answers the token it joined with.
async fn admit_by_cert(
    node: &ServerNode,
    peer: &str,
    hello: &Hello,
    id: &berth_tls::Identity,
) -> Result<String, SessionError> {
    let refuse = |why: String| {
        tracing::warn!(peer, cluster = hello.cluster, instance_id = hello.instance_id, who = %id.role, reason = %why, "agent refused");
        Err(err("AccessDenied", why))
    };
    match &id.role {
        berth_tls::Role::Agent { cluster, instance }
            if *cluster == hello.cluster && *instance == hello.instance_id => {}
        other => {
            return refuse(format!(
                "this certificate is for {other}; it cannot open a session for instance {} of cluster {}",
                hello.instance_id, hello.cluster
            ))
        }
    }
    node.read_barrier()
        .await
        .map_err(|e| err("Unavailable", e.message.clone()))?;
    let registered = node
        .reader
        .container_instance(&hello.cluster, &hello.instance_id)
        .ok()
        .flatten();
    match registered {
        None => refuse(format!(
            "container instance {} is not registered in cluster {} (deregistered and purged?); give the agent a new --data-dir and a join token to add the machine again",
            hello.instance_id, hello.cluster
        )),
        Some(ci) if ci.status() == "INACTIVE" => refuse(berth_store::tasks::deregistered_message(
            &hello.cluster,
            &hello.instance_id,
        )),
        Some(ci) => match crate::cluster_port::refusal(node, id) {
            Some(why) => refuse(why),
            None => Ok(berth_store::tokens::joined_with(&ci).to_string()),
        },
    }
}

/// Without TLS (benchmarks): the Hello carries the join token.
fn admit_by_token(node: &ServerNode, peer: &str, hello: &Hello) -> Result<String, SessionError> {
    agent_token(node, &hello.cluster, &hello.instance_id, &hello.join_token).map_err(|reason| {
        tracing::warn!(peer, cluster = hello.cluster, instance_id = hello.instance_id, reason = %reason, "agent refused");
        err("AccessDenied", reason)
    })
}

/// Whether `token` admits the agent of instance `instance` of `cluster` (a new machine
/// within the token's limits, or a registered one with the token it joined with), and it is
/// not deregistered; answers the admitting token's id, or why not. The token is checked
/// first, so a stranger learns nothing about the instance.
pub(crate) fn agent_token(
    node: &ServerNode,
    cluster: &str,
    instance: &str,
    token: &str,
) -> Result<String, String> {
    let registered = node
        .reader
        .container_instance(cluster, instance)
        .ok()
        .flatten();
    let token_id = berth_store::tokens::check_presented(
        &node.reader,
        node.agent_settings.join_token.as_deref(),
        token,
        TokenKind::Agent,
        now_secs(),
        registered
            .as_ref()
            .filter(|ci| ci.status() != "INACTIVE")
            .map(berth_store::tokens::joined_with),
    )
    .map_err(|r| r.to_string())?;
    if registered.is_some_and(|ci| ci.status() == "INACTIVE") {
        return Err(berth_store::tasks::deregistered_message(cluster, instance));
    }
    Ok(token_id)
}

async fn run_session(
    node: Arc<ServerNode>,
    mut inbound: Streaming<Frame>,
    tx: mpsc::Sender<Result<Frame, Status>>,
    peer: &str,
    identity: Option<berth_tls::Identity>,
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
    let token_id = match &identity {
        Some(id) => admit_by_cert(&node, peer, &hello, id).await?,
        None => admit_by_token(&node, peer, &hello)?,
    };
    let mut hello = hello;
    // The token's secret stays out of the Raft log.
    hello.join_token = String::new();
    let cluster = hello.cluster.clone();
    let instance_id = hello.instance_id.clone();
    let resp = node
        .write(Command::RegisterContainerInstance {
            ctx: settings.ctx.clone(),
            hello: hello.clone(),
            at: now_secs(),
            // A certificate holder was counted against its token when it joined.
            token: identity.is_none().then(|| token_id.clone()),
        })
        .await
        .map_err(|e| err("RegisterFailed", e.message.clone()))?;
    let arn = match resp {
        Response::ContainerInstance { container_instance } => container_instance
            .container_instance_arn
            .clone()
            .unwrap_or_default(),
        // A token refused as the registration applied (its last use taken meanwhile).
        Response::Error { error } if error.kind == ErrorKind::AccessDeniedException => {
            tracing::warn!(peer, cluster, instance_id, reason = %error.message, "agent refused");
            return Err(err("AccessDenied", error.message));
        }
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
                // A revoked token ends the sessions it admitted, and a deregistered
                // instance's session ends (within one interval).
                if node.reader.join_token(&token_id).ok().flatten().is_some_and(|t| t.revoked_at.is_some()) {
                    tracing::warn!(peer, cluster, instance_id, token = token_id, "join token revoked: ending the agent's session");
                    break Err(err("AccessDenied", format!("join token {token_id} was revoked")));
                }
                if let Some(why) = identity.as_ref().and_then(|id| crate::cluster_port::refusal(&node, id)) {
                    tracing::warn!(peer, cluster, instance_id, reason = why, "ending the agent's session");
                    break Err(err("AccessDenied", why));
                }
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
