//! One berth server's Raft node: storage, openraft, the server-to-server gRPC services,
//! bootstrap and join, writes forwarded to the leader and linearizable reads anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use berth_model::ApiError;
use berth_proto::raft::cluster_server::Cluster;
use berth_proto::raft::raft_server::Raft as RaftSvc;
use berth_proto::raft::{Empty, JoinRequest, Payload, Reply};
use berth_store::{Command, Node, NodeId, Raft, Request, Response, StateReader, StoreOptions};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, ServerState};
use tokio::sync::{mpsc, oneshot, Mutex, Semaphore};

const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
const READ_INDEX_TIMEOUT: Duration = Duration::from_secs(2);
const JOIN_TIMEOUT: Duration = Duration::from_secs(120);

/// Most commands grouped into one Raft entry.
const MAX_BATCH: usize = 256;
/// Batches proposed concurrently; while they are in flight the next batch fills up.
const MAX_IN_FLIGHT: usize = 2;

struct PendingWrite {
    command: Command,
    tx: oneshot::Sender<Result<Response, ApiError>>,
}

use crate::network::{Channels, NetworkFactory};

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_id: NodeId,
    pub data_dir: PathBuf,
    /// Address the Raft gRPC server binds.
    pub raft_listen: SocketAddr,
    /// Address other servers use to reach this one (defaults to `raft_listen`).
    pub raft_advertise: String,
    pub fsync: bool,
    pub cache_capacity: u64,
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot (and purge the log before it) every this many applied entries.
    pub snapshot_every: u64,
    /// Log entries kept behind the latest snapshot (for followers that lag a little).
    pub logs_kept_after_snapshot: u64,
    /// How long a write or read waits for a leader before giving up.
    pub leader_wait: Duration,
    /// Admission and liveness of agents (served on the same gRPC port).
    pub agents: crate::sessions::AgentSettings,
    /// The cluster's PKI: the cluster port is mutual TLS with it. `None` is plain gRPC, for
    /// `berth bench`'s plain-vs-TLS comparison only.
    pub pki: Option<Arc<crate::pki::Pki>>,
}

impl NodeConfig {
    pub fn new(node_id: NodeId, data_dir: PathBuf, raft_listen: SocketAddr) -> Self {
        NodeConfig {
            node_id,
            data_dir,
            raft_listen,
            raft_advertise: raft_listen.to_string(),
            fsync: true,
            cache_capacity: 32 << 20,
            heartbeat_ms: 250,
            election_timeout_min_ms: 1000,
            election_timeout_max_ms: 2000,
            snapshot_every: 5000,
            logs_kept_after_snapshot: 1000,
            leader_wait: Duration::from_secs(15),
            agents: crate::sessions::AgentSettings::new(berth_model::ArnContext::new(
                "us-east-1",
                "123456789012",
            )),
            pki: None,
        }
    }
}

pub struct ServerNode {
    pub id: NodeId,
    pub raft: Raft,
    pub reader: StateReader,
    pub db: sled::Db,
    pub advertise: String,
    channels: Channels,
    membership_lock: Mutex<()>,
    leader_wait: Duration,
    writes: mpsc::Sender<PendingWrite>,
    pub agent_settings: crate::sessions::AgentSettings,
    /// The agent sessions held by this server.
    pub hub: crate::sessions::Hub,
    pub pki: Option<Arc<crate::pki::Pki>>,
}

fn server_err(e: impl std::fmt::Display) -> ApiError {
    ApiError::server(format!("internal error: {e}"))
}

/// The leader as this node knows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaderInfo {
    pub id: NodeId,
    pub addr: String,
}

impl ServerNode {
    /// Opens the store and starts openraft (its network is the cluster port, which
    /// [`ServerNode::start`] serves).
    pub(crate) async fn open(cfg: &NodeConfig) -> anyhow::Result<Arc<Self>> {
        let opened = berth_store::open(
            &cfg.data_dir,
            &StoreOptions {
                fsync: cfg.fsync,
                cache_capacity: cfg.cache_capacity,
            },
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let raft_config = openraft::Config {
            cluster_name: "berth".into(),
            heartbeat_interval: cfg.heartbeat_ms,
            election_timeout_min: cfg.election_timeout_min_ms,
            election_timeout_max: cfg.election_timeout_max_ms,
            install_snapshot_timeout: 10_000,
            // openraft gives each AppendEntries one heartbeat interval to complete. Fewer
            // entries per request keep a follower's append (and fsync) within it under
            // load; a request that always times out would stall replication for good.
            max_payload_entries: 64,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(cfg.snapshot_every),
            max_in_snapshot_log_to_keep: cfg.logs_kept_after_snapshot,
            ..Default::default()
        };
        let raft_config = Arc::new(
            raft_config
                .validate()
                .map_err(|e| anyhow::anyhow!("raft config: {e}"))?,
        );
        let channels = Channels::new(cfg.pki.clone());
        let raft = Raft::new(
            cfg.node_id,
            raft_config,
            NetworkFactory {
                channels: channels.clone(),
            },
            opened.log_store,
            opened.state_machine,
        )
        .await
        .map_err(|e| anyhow::anyhow!("start raft: {e}"))?;
        let (writes, writes_rx) = mpsc::channel(4096);
        let node = Arc::new(ServerNode {
            id: cfg.node_id,
            raft,
            reader: opened.reader,
            db: opened.db,
            advertise: cfg.raft_advertise.clone(),
            channels,
            membership_lock: Mutex::new(()),
            leader_wait: cfg.leader_wait,
            writes,
            agent_settings: cfg.agents.clone(),
            hub: Default::default(),
            pki: cfg.pki.clone(),
        });
        tokio::spawn(batcher(Arc::downgrade(&node), writes_rx));
        Ok(node)
    }

    /// First start of the first server: become a one-node cluster. Later starts: nothing to do.
    /// With `join`, ask that member to add this node (retrying until it answers).
    pub async fn bootstrap_or_join(self: &Arc<Self>, join: Option<String>) -> anyhow::Result<()> {
        let initialized = self
            .raft
            .is_initialized()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if initialized {
            tracing::info!(node_id = self.id, "restarting with existing cluster state");
            self.elect_if_alone().await;
            // A join interrupted after `add_learner` leaves this node a learner: finish it.
            if let Some(addr) = join {
                if !self.is_voter() {
                    let node = self.clone();
                    tokio::spawn(async move { node.join_loop(addr).await });
                }
            }
            return Ok(());
        }
        match join {
            None => {
                let mut members = BTreeMap::new();
                members.insert(
                    self.id,
                    Node {
                        addr: self.advertise.clone(),
                    },
                );
                self.raft
                    .initialize(members)
                    .await
                    .map_err(|e| anyhow::anyhow!("bootstrap: {e}"))?;
                tracing::info!(node_id = self.id, "bootstrapped a new cluster");
                Ok(())
            }
            Some(addr) => {
                let node = self.clone();
                tokio::spawn(async move { node.join_loop(addr).await });
                Ok(())
            }
        }
    }

    async fn elect_if_alone(&self) {
        let m = self.raft.metrics().borrow().clone();
        let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
        if voters == vec![self.id] {
            let _ = self.raft.trigger().elect().await;
        }
    }

    /// Whether this node is a voter in the membership it knows.
    pub fn is_voter(&self) -> bool {
        let m = self.raft.metrics().borrow().clone();
        let voter = m
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == self.id);
        voter
    }

    async fn join_loop(self: Arc<Self>, addr: String) {
        let mut delay = Duration::from_millis(200);
        let mut attempt = 0u32;
        loop {
            if self.is_voter() {
                tracing::info!(node_id = self.id, "this node is a voter");
                return;
            }
            attempt += 1;
            let res = async {
                let mut client = self.channels.cluster(&addr).map_err(|e| e.to_string())?;
                // Joining waits for this node to catch up as a learner, which can take a while.
                let call = client.join(JoinRequest {
                    node_id: self.id,
                    raft_addr: self.advertise.clone(),
                });
                let reply = tokio::time::timeout(JOIN_TIMEOUT, call)
                    .await
                    .map_err(|_| "join timed out".to_string())?
                    .map_err(|s| format!("{}: {}", s.code(), s.message()))?
                    .into_inner();
                if reply.error.is_empty() {
                    Ok(())
                } else {
                    Err(reply.error)
                }
            }
            .await;
            match res {
                Ok(()) => {
                    tracing::info!(node_id = self.id, via = %addr, "joined the cluster as a voter");
                    return;
                }
                Err(e) => {
                    tracing::warn!(node_id = self.id, via = %addr, attempt, error = %e, "join failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    pub fn leader(&self) -> Option<LeaderInfo> {
        let m = self.raft.metrics().borrow().clone();
        let id = m.current_leader?;
        let addr = m
            .membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone())?;
        Some(LeaderInfo { id, addr })
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// Proposes a command and returns its result, wherever the leader is. Concurrent writes
    /// are grouped into one Raft entry (group commit): one fsync and one replication round
    /// commit them all, and each still gets its own result.
    pub async fn write(&self, command: Command) -> Result<Response, ApiError> {
        let (tx, rx) = oneshot::channel();
        let stopping = || ApiError::server("The server is shutting down; retry on another server.");
        self.writes
            .send(PendingWrite { command, tx })
            .await
            .map_err(|_| stopping())?;
        rx.await.map_err(|_| stopping())?
    }

    /// Proposes one batch, forwarding it to the leader when this node is not the leader, and
    /// waiting (up to `leader_wait`) through elections.
    async fn propose(&self, req: Request) -> Result<Vec<Response>, ApiError> {
        let deadline = tokio::time::Instant::now() + self.leader_wait;
        loop {
            let leader = match self.raft.client_write(req.clone()).await {
                Ok(r) => return Ok(r.data),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    f.leader_node.map(|n| LeaderInfo {
                        id: f.leader_id.unwrap_or_default(),
                        addr: n.addr,
                    })
                }
                Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                    return Err(server_err(e))
                }
                Err(RaftError::Fatal(e)) => return Err(server_err(e)),
            };
            if leader.is_none() {
                tracing::debug!("write: no leader known; waiting");
            }
            if let Some(leader) = leader {
                match self.forward(&leader.addr, &req).await {
                    Ok(Some(resp)) => return Ok(resp),
                    Ok(None) => {
                        tracing::debug!(leader = %leader.addr, "forward: callee is not the leader; retrying")
                    }
                    Err(e) => {
                        tracing::debug!(leader = %leader.addr, error = %e, "forward failed; retrying")
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::server("No leader is available to accept writes; the cluster may have lost its quorum. Retry later."));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Ok(None) when the callee is not (or no longer) the leader.
    async fn forward(&self, addr: &str, req: &Request) -> Result<Option<Vec<Response>>, String> {
        let mut client = self.channels.cluster(addr).map_err(|e| e.to_string())?;
        let data = serde_json::to_vec(req).map_err(|e| e.to_string())?;
        let reply = tokio::time::timeout(FORWARD_TIMEOUT, client.forward(Payload { data }))
            .await
            .map_err(|_| format!("forward to {addr} timed out"))?
            .map_err(|s| format!("{}: {}", s.code(), s.message()))?
            .into_inner();
        if !reply.error.is_empty() {
            return Ok(None);
        }
        serde_json::from_slice(&reply.data)
            .map(Some)
            .map_err(|e| e.to_string())
    }

    /// Returns once this node's state reflects every write acknowledged before the call
    /// (a linearizable read barrier): the leader confirms its leadership with a quorum,
    /// followers ask the leader for that read index and wait until they applied it.
    pub async fn read_barrier(&self) -> Result<(), ApiError> {
        let deadline = tokio::time::Instant::now() + self.leader_wait;
        loop {
            if self.is_leader() {
                match self.raft.ensure_linearizable().await {
                    Ok(_) => return Ok(()),
                    Err(e) => tracing::debug!(error = %e, "leader read barrier failed; retrying"),
                }
            } else if let Some(leader) = self.leader() {
                match self.read_index(&leader.addr).await {
                    Ok(Some(index)) => {
                        let remaining =
                            deadline.saturating_duration_since(tokio::time::Instant::now());
                        if tokio::time::timeout(remaining, self.reader.wait_for(index))
                            .await
                            .is_ok()
                        {
                            return Ok(());
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::debug!(leader = %leader.addr, error = %e, "read index failed; retrying")
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::server("No leader is available to serve a consistent read; the cluster may have lost its quorum. Retry later."));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn read_index(&self, addr: &str) -> Result<Option<u64>, String> {
        let mut client = self.channels.cluster(addr).map_err(|e| e.to_string())?;
        let reply = tokio::time::timeout(READ_INDEX_TIMEOUT, client.read_index(Empty {}))
            .await
            .map_err(|_| format!("read index from {addr} timed out"))?
            .map_err(|s| format!("{}: {}", s.code(), s.message()))?
            .into_inner();
        if !reply.error.is_empty() {
            return Ok(None);
        }
        serde_json::from_slice(&reply.data)
            .map(Some)
            .map_err(|e| e.to_string())
    }

    /// Adds `id` as a learner, waits for it to catch up, then promotes it to voter.
    /// Runs on the leader; membership changes are serialized.
    async fn add_member(&self, id: NodeId, addr: String) -> Result<(), String> {
        let _guard = self.membership_lock.lock().await;
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        if membership.voter_ids().any(|v| v == id) {
            // A voter that asks to join again lost its data (its own membership would have
            // told it it is a voter). Letting it back under the same id could lose
            // acknowledged writes: it must come back with a new id.
            return Err(format!(
                "node id {id} is already a voter (at {}); a server whose data dir was wiped must join with a new --node-id (ids are never reused)",
                membership.get_node(&id).map(|n| n.addr.as_str()).unwrap_or("?")
            ));
        }
        self.raft
            .add_learner(id, Node { addr: addr.clone() }, true)
            .await
            .map_err(|e| e.to_string())?;
        let mut voters: BTreeSet<NodeId> = BTreeSet::new();
        voters.insert(id);
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(voters), false)
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(node_id = id, %addr, "added a voter");
        Ok(())
    }

    /// A task's container output from its agent, wherever its session is: here, or on
    /// another server (asked in turn).
    pub async fn agent_logs(
        &self,
        cluster: &str,
        instance: &str,
        req: berth_model::agent::LogsRequest,
    ) -> Result<berth_model::agent::LogsResponse, String> {
        if let Some(r) = self.hub.logs(cluster, instance, req.clone()).await {
            return r;
        }
        let payload = serde_json::to_vec(&(cluster, instance, &req)).map_err(|e| e.to_string())?;
        for addr in self.member_addrs().into_iter().skip(1) {
            let Ok(mut client) = self.channels.cluster(&addr) else {
                continue;
            };
            let call = client.agent_logs(Payload {
                data: payload.clone(),
            });
            let Ok(Ok(reply)) =
                tokio::time::timeout(crate::sessions::LOGS_TIMEOUT + Duration::from_secs(1), call)
                    .await
            else {
                continue;
            };
            let reply = reply.into_inner();
            if reply.error == "no session" {
                continue;
            }
            if !reply.error.is_empty() {
                return Err(reply.error);
            }
            return serde_json::from_slice(&reply.data).map_err(|e| e.to_string());
        }
        Err(format!(
            "the agent of container instance {instance} is not connected to any server"
        ))
    }

    /// Cluster addresses of every member, this one first.
    /// Whether server `id` may send this node Raft RPCs: it is in the membership this node
    /// knows, or this node knows none yet (a new server being added).
    pub fn may_send_raft(&self, id: NodeId) -> bool {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let mut nodes = membership.nodes().map(|(n, _)| *n).peekable();
        nodes.peek().is_none() || membership.nodes().any(|(n, _)| *n == id)
    }

    pub fn member_addrs(&self) -> Vec<String> {
        let m = self.raft.metrics().borrow().clone();
        let mut out = vec![self.advertise.clone()];
        for (_, n) in m.membership_config.membership().nodes() {
            if !out.contains(&n.addr) {
                out.push(n.addr.clone());
            }
        }
        out
    }

    pub fn metrics_json(&self) -> serde_json::Value {
        let m = self.raft.metrics().borrow().clone();
        serde_json::to_value(&m).unwrap_or(serde_json::Value::Null)
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Groups queued writes into batches and proposes them, at most `MAX_IN_FLIGHT` at a time.
async fn batcher(node: Weak<ServerNode>, mut rx: mpsc::Receiver<PendingWrite>) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let Some(node) = node.upgrade() else { return };
        tokio::spawn(async move {
            let (commands, txs): (Vec<Command>, Vec<_>) =
                batch.into_iter().map(|p| (p.command, p.tx)).unzip();
            let n = commands.len();
            match node
                .propose(
                    Request::batch(commands)
                        .with_id(uuid::Uuid::new_v4().simple().to_string())
                        .at(now_ms()),
                )
                .await
            {
                Ok(resps) if resps.len() == n => {
                    for (tx, r) in txs.into_iter().zip(resps) {
                        let _ = tx.send(Ok(r));
                    }
                }
                Ok(resps) => {
                    let e = ApiError::server(format!(
                        "internal error: {} results for {n} commands",
                        resps.len()
                    ));
                    for tx in txs {
                        let _ = tx.send(Err(e.clone()));
                    }
                }
                Err(e) => {
                    for tx in txs {
                        let _ = tx.send(Err(e.clone()));
                    }
                }
            }
            drop(permit);
        });
    }
}

#[derive(Clone)]
pub(crate) struct GrpcService {
    pub(crate) node: Arc<ServerNode>,
}

fn reply_json<T: serde::Serialize>(v: &T) -> Result<tonic::Response<Reply>, tonic::Status> {
    let data = serde_json::to_vec(v).map_err(|e| tonic::Status::internal(e.to_string()))?;
    Ok(tonic::Response::new(Reply {
        data,
        ..Default::default()
    }))
}

fn decode<T: serde::de::DeserializeOwned>(p: &Payload) -> Result<T, tonic::Status> {
    serde_json::from_slice(&p.data)
        .map_err(|e| tonic::Status::invalid_argument(format!("bad payload: {e}")))
}

impl GrpcService {
    fn not_leader(&self, error: &str) -> tonic::Response<Reply> {
        let leader = self.node.leader();
        tonic::Response::new(Reply {
            data: vec![],
            error: error.to_string(),
            leader_id: leader.as_ref().map(|l| l.id).unwrap_or(0),
            leader_addr: leader.map(|l| l.addr).unwrap_or_default(),
        })
    }
}

#[tonic::async_trait]
impl RaftSvc for GrpcService {
    async fn append_entries(
        &self,
        req: tonic::Request<Payload>,
    ) -> Result<tonic::Response<Reply>, tonic::Status> {
        let rpc = decode(req.get_ref())?;
        reply_json(&self.node.raft.append_entries(rpc).await)
    }

    async fn vote(
        &self,
        req: tonic::Request<Payload>,
    ) -> Result<tonic::Response<Reply>, tonic::Status> {
        let rpc = decode(req.get_ref())?;
        reply_json(&self.node.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        req: tonic::Request<Payload>,
    ) -> Result<tonic::Response<Reply>, tonic::Status> {
        let rpc = decode(req.get_ref())?;
        reply_json(&self.node.raft.install_snapshot(rpc).await)
    }
}

#[tonic::async_trait]
impl Cluster for GrpcService {
    async fn join(
        &self,
        req: tonic::Request<JoinRequest>,
    ) -> Result<tonic::Response<Reply>, tonic::Status> {
        let JoinRequest { node_id, raft_addr } = req.into_inner();
        if !self.node.is_leader() {
            // Relay to the leader so a joining node may name any member.
            let Some(leader) = self.node.leader() else {
                return Ok(self.not_leader("no leader is known yet; retry"));
            };
            let mut client = self
                .node
                .channels
                .cluster(&leader.addr)
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            return client.join(JoinRequest { node_id, raft_addr }).await;
        }
        // In its own task: a caller that goes away must not cancel a half-done change.
        let node = self.node.clone();
        let res = tokio::spawn(async move { node.add_member(node_id, raft_addr).await })
            .await
            .unwrap_or_else(|e| Err(format!("join task failed: {e}")));
        match res {
            Ok(()) => Ok(tonic::Response::new(Reply::default())),
            Err(e) => Ok(self.not_leader(&e)),
        }
    }

    async fn forward(
        &self,
        req: tonic::Request<Payload>,
    ) -> Result<tonic::Response<Reply>, tonic::Status> {
        let request: Request = decode(req.get_ref())?;
        match self.node.raft.client_write(request).await {
            Ok(r) => reply_json(&r.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                Ok(self.not_leader("not the leader"))
            }
            Err(e) => Err(tonic::Status::internal(e.to_string())),
        }
    }

    async fn agent_logs(
        &self,
        req: tonic::Request<Payload>,
    ) -> Result<tonic::Response<Reply>, tonic::Status> {
        let (cluster, instance, lreq): (String, String, berth_model::agent::LogsRequest) =
            decode(req.get_ref())?;
        match self.node.hub.logs(&cluster, &instance, lreq).await {
            None => Ok(tonic::Response::new(Reply {
                error: "no session".into(),
                ..Default::default()
            })),
            Some(Ok(r)) => reply_json(&r),
            Some(Err(e)) => Ok(tonic::Response::new(Reply {
                error: e,
                ..Default::default()
            })),
        }
    }

    async fn read_index(
        &self,
        _req: tonic::Request<Empty>,
    ) -> Result<tonic::Response<Reply>, tonic::Status> {
        match self.node.raft.get_read_log_id().await {
            Ok((read_log_id, _applied)) => reply_json(&read_log_id.map(|l| l.index).unwrap_or(0)),
            Err(_) => Ok(self.not_leader("not the leader")),
        }
    }
}

/// The API and the reconcilers reach the replicated store through this node.
#[async_trait::async_trait]
impl berth_store::Replica for ServerNode {
    fn reader(&self) -> &StateReader {
        &self.reader
    }

    async fn propose(&self, command: Command) -> Result<Response, ApiError> {
        self.write(command).await
    }

    async fn read_barrier(&self) -> Result<(), ApiError> {
        ServerNode::read_barrier(self).await
    }

    fn is_leader(&self) -> bool {
        ServerNode::is_leader(self)
    }
}

#[async_trait::async_trait]
impl berth_api::Cluster for ServerNode {
    async fn agent_logs(
        &self,
        cluster: &str,
        instance: &str,
        req: berth_model::agent::LogsRequest,
    ) -> Result<berth_model::agent::LogsResponse, String> {
        ServerNode::agent_logs(self, cluster, instance, req).await
    }
}
