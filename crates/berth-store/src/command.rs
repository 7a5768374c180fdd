//! Commands: the only way cluster state changes. Each is proposed to Raft and applied by
//! [`apply`], a deterministic function of the command and the current state (time and ids
//! travel inside the command). Nothing is half-applied: `apply` stages every write and the
//! caller commits the staged set atomically, or nothing when the result is an error.

use std::collections::BTreeMap;

use berth_model::elb::{
    Action, Attribute as ElbAttribute, DrainIdle, Listener, LoadBalancer, Rule, RuleCondition,
    RuleRecord, TargetDescription, TargetGroupPatch, TargetGroupRecord, TargetHealthUpdate,
};
use berth_model::{
    ApiError, ArnContext, Attribute, Cluster, ClusterSetting, Container, ContainerInstance,
    Failure, Reservation, ServiceRecord, Tag, Task, TaskDefinition, TaskDefinitionSpec,
    TaskOverride,
};
use serde::{Deserialize, Serialize};

use crate::keys;
pub use crate::services::TaskStop;

/// Version of the command encoding this build writes and understands.
pub const COMMAND_VERSION: u32 = 1;

/// What goes into the Raft log: a versioned batch of commands, applied in order. Concurrent
/// API requests are grouped into one entry so one fsync (and one replication round)
/// commits many of them; each command still succeeds or fails on its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub v: u32,
    /// Unique per proposal. A proposal retried after an ambiguous failure (the leader died
    /// after appending it) carries the same id and is answered from the first application
    /// instead of being applied twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The proposer's wall clock (ms since the epoch) when it proposed; ages proposal ids.
    #[serde(default)]
    pub at_ms: u64,
    pub commands: Vec<Command>,
}

impl Request {
    pub fn new(command: Command) -> Self {
        Request {
            v: COMMAND_VERSION,
            id: None,
            at_ms: 0,
            commands: vec![command],
        }
    }

    pub fn batch(commands: Vec<Command>) -> Self {
        Request {
            v: COMMAND_VERSION,
            id: None,
            at_ms: 0,
            commands,
        }
    }

    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    pub fn at(mut self, at_ms: u64) -> Self {
        self.at_ms = at_ms;
        self
    }
}

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.commands.as_slice() {
            [one] => write!(f, "v{} {}", self.v, one.name()),
            many => write!(f, "v{} batch of {}", self.v, many.len()),
        }
    }
}

/// The resource a tag operation targets, resolved from its ARN by the API layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum TagTarget {
    Cluster {
        name: String,
    },
    TaskDefinition {
        family: String,
        revision: u32,
    },
    /// A service (ACTIVE or DRAINING).
    Service {
        cluster: String,
        name: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
// Commands are built once per request and moved into the log; their size difference
// does not matter, and boxing would make every match noisier.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Create a cluster, or return the existing ACTIVE one of that name (ECS is idempotent here).
    #[serde(rename_all = "camelCase")]
    CreateCluster { cluster: Cluster, tags: Vec<Tag> },
    #[serde(rename_all = "camelCase")]
    UpdateCluster {
        name: String,
        settings: Option<Vec<ClusterSetting>>,
        configuration: Option<serde_json::Value>,
        service_connect_defaults: Option<serde_json::Value>,
    },
    #[serde(rename_all = "camelCase")]
    DeleteCluster { name: String },
    /// Register the next revision of a family. The revision is chosen here, in apply.
    #[serde(rename_all = "camelCase")]
    RegisterTaskDefinition {
        ctx: ArnContext,
        spec: TaskDefinitionSpec,
        registered_at: f64,
        registered_by: String,
    },
    #[serde(rename_all = "camelCase")]
    DeregisterTaskDefinition {
        family: String,
        revision: u32,
        at: f64,
    },
    #[serde(rename_all = "camelCase")]
    DeleteTaskDefinitions {
        ctx: ArnContext,
        items: Vec<(String, u32)>,
        at: f64,
    },
    #[serde(rename_all = "camelCase")]
    TagResource {
        arn: String,
        target: TagTarget,
        tags: Vec<Tag>,
    },
    #[serde(rename_all = "camelCase")]
    UntagResource {
        arn: String,
        target: TagTarget,
        keys: Vec<String>,
    },
    /// An agent's hello: register (or re-register) its machine as a container instance.
    #[serde(rename_all = "camelCase")]
    RegisterContainerInstance {
        ctx: ArnContext,
        hello: berth_model::agent::Hello,
        at: f64,
    },
    /// The agent's session opened or closed (unknown or INACTIVE instance: no-op).
    #[serde(rename_all = "camelCase")]
    SetAgentConnected {
        cluster: String,
        instance_id: String,
        connected: bool,
        at: f64,
    },
    /// Observed task states from an agent. Never moves a task backwards.
    #[serde(rename_all = "camelCase")]
    ReportTasks {
        cluster: String,
        instance_id: String,
        reports: Vec<berth_model::agent::TaskReport>,
        at: f64,
    },
    /// Create tasks on the instances the API's placement chose (re-checked here).
    #[serde(rename_all = "camelCase")]
    RunTasks {
        ctx: ArnContext,
        cluster: String,
        tasks: Vec<NewTask>,
        client_token: Option<String>,
        at: f64,
    },
    #[serde(rename_all = "camelCase")]
    StopTask {
        cluster: String,
        task_id: String,
        reason: String,
        stop_code: String,
        at: f64,
    },
    #[serde(rename_all = "camelCase")]
    DeregisterContainerInstance {
        cluster: String,
        instance_id: String,
        force: bool,
        at: f64,
    },
    #[serde(rename_all = "camelCase")]
    UpdateContainerInstancesState {
        cluster: String,
        instance_ids: Vec<String>,
        status: String,
        at: f64,
    },
    /// Custom attributes; `targetId` of each is the container instance id.
    #[serde(rename_all = "camelCase")]
    PutAttributes {
        cluster: String,
        attributes: Vec<Attribute>,
    },
    #[serde(rename_all = "camelCase")]
    DeleteAttributes {
        cluster: String,
        attributes: Vec<Attribute>,
    },
    /// Forget STOPPED tasks that stopped before `before` (and client tokens older than it).
    #[serde(rename_all = "camelCase")]
    PurgeStoppedTasks { cluster: String, before: f64 },
    /// A lost machine: every task on it not yet STOPPED is STOPPED now (desired and last
    /// status, containers too), releasing its resources; an earlier stop reason is kept.
    #[serde(rename_all = "camelCase")]
    StopInstanceTasks {
        cluster: String,
        instance_id: String,
        reason: String,
        stop_code: String,
        at: f64,
    },
    /// A new service, fully built by the API (ARN, defaults, first deployment). The name
    /// may be reused only over an INACTIVE service; the same `clientToken` as the live
    /// service of that name answers with it (idempotent).
    #[serde(rename_all = "camelCase")]
    CreateService {
        cluster: String,
        record: ServiceRecord,
        at: f64,
    },
    /// Replace a service's record if its version is still `expected_version`
    /// (UpdateService, DeleteService); otherwise [`Response::Conflict`] and no write.
    #[serde(rename_all = "camelCase")]
    PutService {
        cluster: String,
        name: String,
        expected_version: u64,
        record: ServiceRecord,
        at: f64,
    },
    /// The controller's decision for a service, computed from `expected_version`: the
    /// next record, tasks to create (as RunTasks does) and tasks to stop (as StopTask
    /// does). A stale or repeated decision is [`Response::Conflict`] and writes nothing.
    #[serde(rename_all = "camelCase")]
    ReconcileService {
        ctx: ArnContext,
        cluster: String,
        name: String,
        expected_version: u64,
        record: ServiceRecord,
        new_tasks: Vec<NewTask>,
        stops: Vec<TaskStop>,
        at: f64,
    },
    // ------------------------------------------------------------------ ELBv2
    /// A new load balancer, fully built by the API. The same name with the same
    /// settings answers with the existing one; otherwise `DuplicateLoadBalancerName`.
    #[serde(rename_all = "camelCase")]
    CreateLoadBalancer {
        load_balancer: LoadBalancer,
        tags: Vec<Tag>,
    },
    /// Deletes a load balancer with its listeners and their rules (unknown ARN: Ok).
    /// Refused (`OperationNotPermitted`) while its deletion protection is enabled.
    #[serde(rename_all = "camelCase")]
    DeleteLoadBalancer { arn: String },
    /// Merges load balancer attributes by key (validated by the API); answers with
    /// every attribute.
    #[serde(rename_all = "camelCase")]
    ModifyLoadBalancerAttributes {
        arn: String,
        attributes: Vec<ElbAttribute>,
    },
    #[serde(rename_all = "camelCase")]
    CreateTargetGroup {
        record: TargetGroupRecord,
        tags: Vec<Tag>,
    },
    #[serde(rename_all = "camelCase")]
    ModifyTargetGroup {
        arn: String,
        patch: TargetGroupPatch,
    },
    /// Merges attributes by key.
    #[serde(rename_all = "camelCase")]
    ModifyTargetGroupAttributes {
        arn: String,
        attributes: Vec<ElbAttribute>,
    },
    /// Refused (`ResourceInUse`) while a listener or rule forwards to it; removes its targets.
    #[serde(rename_all = "camelCase")]
    DeleteTargetGroup { arn: String },
    /// Creates the listener and its default rule.
    #[serde(rename_all = "camelCase")]
    CreateListener { listener: Listener, tags: Vec<Tag> },
    #[serde(rename_all = "camelCase")]
    ModifyListener {
        arn: String,
        port: Option<u16>,
        protocol: Option<String>,
        default_actions: Option<Vec<Action>>,
    },
    #[serde(rename_all = "camelCase")]
    DeleteListener { arn: String },
    #[serde(rename_all = "camelCase")]
    CreateRule { record: RuleRecord, tags: Vec<Tag> },
    #[serde(rename_all = "camelCase")]
    ModifyRule {
        arn: String,
        conditions: Option<Vec<RuleCondition>>,
        actions: Option<Vec<Action>>,
    },
    /// All or nothing.
    #[serde(rename_all = "camelCase")]
    SetRulePriorities { priorities: Vec<(String, u32)> },
    #[serde(rename_all = "camelCase")]
    DeleteRule { arn: String },
    #[serde(rename_all = "camelCase")]
    RegisterTargets {
        target_group_arn: String,
        targets: Vec<TargetDescription>,
        at: f64,
    },
    /// Registered targets start draining (removed at once with a deregistration delay of 0).
    #[serde(rename_all = "camelCase")]
    DeregisterTargets {
        target_group_arn: String,
        targets: Vec<TargetDescription>,
        at: f64,
    },
    /// Health transitions from the leader's health checker (unknown or draining
    /// targets are ignored).
    #[serde(rename_all = "camelCase")]
    SetTargetHealth { updates: Vec<TargetHealthUpdate> },
    /// Removes targets whose draining ended and clears tasks' `drainUntil` at or before `at`.
    #[serde(rename_all = "camelCase")]
    ElbSweep { at: f64 },
    /// A load balancer node reports in (at least every `LB_NODE_REPORT_SECS` while it
    /// serves listeners) with the draining targets it found idle; a task whose draining
    /// targets every active node found idle stops before its deadline.
    #[serde(rename_all = "camelCase")]
    ElbDrainReport {
        node: String,
        idle: Vec<DrainIdle>,
        at: f64,
    },
    /// ELBv2 AddTags on one load balancer, target group, listener or rule (merge by key,
    /// at most 50: `TooManyTags`; unknown ARN: its kind's NotFound error).
    #[serde(rename_all = "camelCase")]
    AddElbTags { arn: String, tags: Vec<Tag> },
    /// ELBv2 RemoveTags on one resource.
    #[serde(rename_all = "camelCase")]
    RemoveElbTags { arn: String, keys: Vec<String> },
}

/// One task to create, fully decided by the API layer (id, placement, containers).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct NewTask {
    /// 32 lowercase hex characters.
    pub task_id: String,
    pub task_definition_arn: String,
    pub family: String,
    pub revision: u32,
    /// The container instance the task is placed on.
    pub instance_id: String,
    pub group: String,
    pub started_by: Option<String>,
    pub overrides: TaskOverride,
    pub tags: Vec<Tag>,
    /// Task-level `cpu`/`memory` as the task definition (or overrides) give them.
    pub cpu: Option<String>,
    pub memory: Option<String>,
    /// Containers with ARN, name, image and cpu/memory; status is set by apply.
    pub containers: Vec<Container>,
    /// What the task needs on its instance.
    pub reservation: Reservation,
    pub network_mode: Option<String>,
    /// `EC2` | `EXTERNAL`
    pub launch_type: String,
    pub enable_execute_command: bool,
}

impl Command {
    pub fn name(&self) -> &'static str {
        match self {
            Command::CreateCluster { .. } => "CreateCluster",
            Command::UpdateCluster { .. } => "UpdateCluster",
            Command::DeleteCluster { .. } => "DeleteCluster",
            Command::RegisterTaskDefinition { .. } => "RegisterTaskDefinition",
            Command::DeregisterTaskDefinition { .. } => "DeregisterTaskDefinition",
            Command::DeleteTaskDefinitions { .. } => "DeleteTaskDefinitions",
            Command::TagResource { .. } => "TagResource",
            Command::UntagResource { .. } => "UntagResource",
            Command::RegisterContainerInstance { .. } => "RegisterContainerInstance",
            Command::SetAgentConnected { .. } => "SetAgentConnected",
            Command::ReportTasks { .. } => "ReportTasks",
            Command::RunTasks { .. } => "RunTasks",
            Command::StopTask { .. } => "StopTask",
            Command::DeregisterContainerInstance { .. } => "DeregisterContainerInstance",
            Command::UpdateContainerInstancesState { .. } => "UpdateContainerInstancesState",
            Command::PutAttributes { .. } => "PutAttributes",
            Command::DeleteAttributes { .. } => "DeleteAttributes",
            Command::PurgeStoppedTasks { .. } => "PurgeStoppedTasks",
            Command::StopInstanceTasks { .. } => "StopInstanceTasks",
            Command::CreateService { .. } => "CreateService",
            Command::PutService { .. } => "PutService",
            Command::ReconcileService { .. } => "ReconcileService",
            Command::CreateLoadBalancer { .. } => "CreateLoadBalancer",
            Command::DeleteLoadBalancer { .. } => "DeleteLoadBalancer",
            Command::CreateTargetGroup { .. } => "CreateTargetGroup",
            Command::ModifyTargetGroup { .. } => "ModifyTargetGroup",
            Command::ModifyTargetGroupAttributes { .. } => "ModifyTargetGroupAttributes",
            Command::ModifyLoadBalancerAttributes { .. } => "ModifyLoadBalancerAttributes",
            Command::DeleteTargetGroup { .. } => "DeleteTargetGroup",
            Command::CreateListener { .. } => "CreateListener",
            Command::ModifyListener { .. } => "ModifyListener",
            Command::DeleteListener { .. } => "DeleteListener",
            Command::CreateRule { .. } => "CreateRule",
            Command::ModifyRule { .. } => "ModifyRule",
            Command::SetRulePriorities { .. } => "SetRulePriorities",
            Command::DeleteRule { .. } => "DeleteRule",
            Command::RegisterTargets { .. } => "RegisterTargets",
            Command::DeregisterTargets { .. } => "DeregisterTargets",
            Command::SetTargetHealth { .. } => "SetTargetHealth",
            Command::ElbSweep { .. } => "ElbSweep",
            Command::ElbDrainReport { .. } => "ElbDrainReport",
            Command::AddElbTags { .. } => "AddElbTags",
            Command::RemoveElbTags { .. } => "RemoveElbTags",
        }
    }
}

/// The result of applying one command, returned to the proposer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "r", rename_all = "camelCase")]
pub enum Response {
    #[default]
    Ok,
    Cluster {
        cluster: Box<Cluster>,
    },
    #[serde(rename_all = "camelCase")]
    TaskDefinition {
        task_definition: Box<TaskDefinition>,
        tags: Vec<Tag>,
    },
    #[serde(rename_all = "camelCase")]
    TaskDefinitions {
        task_definitions: Vec<TaskDefinition>,
        failures: Vec<Failure>,
    },
    #[serde(rename_all = "camelCase")]
    ContainerInstance {
        container_instance: Box<ContainerInstance>,
    },
    #[serde(rename_all = "camelCase")]
    ContainerInstances {
        container_instances: Vec<ContainerInstance>,
        failures: Vec<Failure>,
    },
    Task {
        task: Box<Task>,
    },
    Tasks {
        tasks: Vec<Task>,
        failures: Vec<Failure>,
    },
    Attributes {
        attributes: Vec<Attribute>,
    },
    /// A service (with its tags).
    Service {
        service: Box<ServiceRecord>,
    },
    /// A conditional service write whose expected version no longer matches (or whose
    /// service is gone): nothing was written; re-read and decide again.
    Conflict,
    /// What a `ReconcileService` created (and the placements it had to refuse).
    Reconciled {
        tasks: Vec<Task>,
        failures: Vec<Failure>,
    },
    #[serde(rename_all = "camelCase")]
    LoadBalancer {
        load_balancer: Box<LoadBalancer>,
    },
    /// Every attribute of a load balancer.
    LoadBalancerAttributes {
        attributes: Vec<ElbAttribute>,
    },
    /// A target group with its attributes (`LoadBalancerArns` filled in).
    TargetGroup {
        record: Box<TargetGroupRecord>,
    },
    Listener {
        listener: Box<Listener>,
    },
    Rule {
        rule: Box<Rule>,
    },
    Rules {
        rules: Vec<Rule>,
    },
    /// A deterministic refusal: nothing was written.
    Error {
        error: ApiError,
    },
}

/// One changed object, recorded per revision for watchers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Change {
    Cluster {
        name: String,
    },
    TaskDefinition {
        family: String,
        revision: u32,
    },
    Tags {
        arn: String,
    },
    Membership,
    ContainerInstance {
        cluster: String,
        id: String,
    },
    #[serde(rename_all = "camelCase")]
    Task {
        cluster: String,
        id: String,
        instance_id: String,
    },
    /// A service's record was written.
    Service {
        cluster: String,
        name: String,
    },
    /// Any ELBv2 object (load balancer, listener, rule, target group, target) changed.
    Elb,
    /// Only the stored health of targets changed (SetTargetHealth): the controller acts
    /// on it; load balancer nodes, which check health themselves, ignore it.
    ElbHealth,
}

/// Family bookkeeping that outlives every revision: revisions are never reused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FamilyMeta {
    pub max_revision: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("corrupt value under key {key}: {source}")]
    Corrupt {
        key: String,
        source: serde_json::Error,
    },
    #[error("encode: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("command version {version} is not supported by this server (it supports {supported}); upgrade this server")]
    UnsupportedVersion { version: u32, supported: u32 },
}

/// Read access to state (the sled tree in production, a map in tests).
pub trait KvRead {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Every key/value pair whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, prefix: &[u8]) -> Result<KvList, StoreError>;
}

/// Key/value pairs in key order.
pub type KvList = Vec<(Vec<u8>, Vec<u8>)>;

impl KvRead for sled::Tree {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(sled::Tree::get(self, key)?.map(|v| v.to_vec()))
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<KvList, StoreError> {
        sled::Tree::scan_prefix(self, prefix)
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(Into::into))
            .collect()
    }
}

impl KvRead for BTreeMap<Vec<u8>, Vec<u8>> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(BTreeMap::get(self, key).cloned())
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<KvList, StoreError> {
        Ok(self
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

/// Writes staged over a read view; reads see staged writes first.
pub struct Staged<'a, R: KvRead + ?Sized> {
    base: &'a R,
    pub writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    pub changes: Vec<Change>,
}

impl<R: KvRead + ?Sized> KvRead for Staged<'_, R> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.get_raw(key)
    }

    /// The base's pairs overlaid with the staged writes and deletes.
    fn scan_prefix(&self, prefix: &[u8]) -> Result<KvList, StoreError> {
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> =
            self.base.scan_prefix(prefix)?.into_iter().collect();
        for (k, v) in self
            .writes
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
        {
            match v {
                Some(v) => merged.insert(k.clone(), v.clone()),
                None => merged.remove(k),
            };
        }
        Ok(merged.into_iter().collect())
    }
}

/// Applies a batch in order: each command sees the writes of the ones before it, and a
/// refused command contributes nothing (the others still apply).
pub fn apply_batch<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    commands: &[Command],
) -> Result<Vec<Response>, StoreError> {
    let mut out = Vec::with_capacity(commands.len());
    for cmd in commands {
        let (resp, writes, changes) = {
            let mut inner = Staged::new(&*st);
            let resp = apply(&mut inner, cmd)?;
            (resp, inner.writes, inner.changes)
        };
        if !matches!(resp, Response::Error { .. } | Response::Conflict) {
            st.writes.extend(writes);
            st.changes.extend(changes);
        }
        out.push(resp);
    }
    Ok(out)
}

impl<'a, R: KvRead + ?Sized> Staged<'a, R> {
    pub fn new(base: &'a R) -> Self {
        Staged {
            base,
            writes: BTreeMap::new(),
            changes: Vec::new(),
        }
    }

    fn get_raw(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.writes.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.base.get(key),
        }
    }

    pub fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        match self.get_raw(key)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|source| StoreError::Corrupt {
                    key: String::from_utf8_lossy(key).into_owned(),
                    source,
                }),
        }
    }

    pub fn put_json<T: Serialize>(&mut self, key: Vec<u8>, value: &T) -> Result<(), StoreError> {
        self.writes.insert(key, Some(serde_json::to_vec(value)?));
        Ok(())
    }

    pub fn delete(&mut self, key: Vec<u8>) {
        self.writes.insert(key, None);
    }
}

/// Applies `cmd` to the staged view. On `Response::Error` the caller must discard the staged
/// writes (apply never stages anything before it has decided to succeed, but the contract
/// makes that explicit).
pub fn apply<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    cmd: &Command,
) -> Result<Response, StoreError> {
    match cmd {
        Command::CreateCluster { cluster, tags } => {
            let key = keys::cluster(&cluster.cluster_name.clone().unwrap_or_default());
            if let Some(existing) = st.get_json::<Cluster>(&key)? {
                if existing.status.as_deref() == Some("ACTIVE") {
                    // The answer carries the cluster's tags, read here so that it is right
                    // whichever server the request came through.
                    let mut existing = existing;
                    let arn = existing.cluster_arn.clone().unwrap_or_default();
                    let tags: Vec<Tag> = st.get_json(&keys::tags(&arn))?.unwrap_or_default();
                    existing.tags = (!tags.is_empty()).then_some(tags);
                    return Ok(Response::Cluster {
                        cluster: Box::new(existing),
                    });
                }
            }
            let arn = cluster.cluster_arn.clone().unwrap_or_default();
            st.put_json(key, cluster)?;
            // A re-created cluster starts with exactly the tags given now.
            if tags.is_empty() {
                st.delete(keys::tags(&arn));
            } else {
                st.put_json(keys::tags(&arn), tags)?;
            }
            st.changes.push(Change::Cluster {
                name: cluster.cluster_name.clone().unwrap_or_default(),
            });
            st.changes.push(Change::Tags { arn });
            let mut answer = cluster.clone();
            answer.tags = (!tags.is_empty()).then(|| tags.clone());
            Ok(Response::Cluster {
                cluster: Box::new(answer),
            })
        }
        Command::UpdateCluster {
            name,
            settings,
            configuration,
            service_connect_defaults,
        } => {
            let key = keys::cluster(name);
            let Some(mut c) = st.get_json::<Cluster>(&key)? else {
                return Ok(err(ApiError::cluster_not_found()));
            };
            if c.status.as_deref() != Some("ACTIVE") {
                return Ok(err(inactive_cluster()));
            }
            if let Some(s) = settings {
                let mut merged = c.settings.clone().unwrap_or_default();
                for new in s {
                    match merged.iter_mut().find(|old| old.name == new.name) {
                        Some(old) => old.value = new.value.clone(),
                        None => merged.push(new.clone()),
                    }
                }
                c.settings = Some(merged);
            }
            if let Some(v) = configuration {
                c.configuration = Some(v.clone());
            }
            if let Some(v) = service_connect_defaults {
                c.service_connect_defaults = Some(v.clone());
            }
            st.put_json(key, &c)?;
            st.changes.push(Change::Cluster { name: name.clone() });
            Ok(Response::Cluster {
                cluster: Box::new(c),
            })
        }
        Command::DeleteCluster { name } => {
            let key = keys::cluster(name);
            let Some(mut c) = st.get_json::<Cluster>(&key)? else {
                return Ok(err(ApiError::cluster_not_found()));
            };
            if c.status.as_deref() != Some("ACTIVE") {
                // Deleting an INACTIVE cluster again answers with it, as ECS does.
                return Ok(Response::Cluster {
                    cluster: Box::new(c),
                });
            }
            if let Some(e) = crate::tasks::delete_cluster_precondition(st, name)? {
                return Ok(err(e));
            }
            if let Some(e) = crate::services::delete_cluster_precondition(st, name)? {
                return Ok(err(e));
            }
            c.status = Some("INACTIVE".to_string());
            st.put_json(key, &c)?;
            // Tags go with the resource (ECS deletes them with it).
            let arn = c.cluster_arn.clone().unwrap_or_default();
            st.delete(keys::tags(&arn));
            st.changes.push(Change::Cluster { name: name.clone() });
            st.changes.push(Change::Tags { arn });
            Ok(Response::Cluster {
                cluster: Box::new(c),
            })
        }
        Command::RegisterTaskDefinition {
            ctx,
            spec,
            registered_at,
            registered_by,
        } => {
            let family = spec.task_definition.family.clone();
            let fkey = keys::family(&family);
            let mut meta: FamilyMeta = st.get_json(&fkey)?.unwrap_or_default();
            let Some(revision) = meta.max_revision.checked_add(1) else {
                return Ok(err(ApiError::client(format!(
                    "Family '{family}' has no revisions left."
                ))));
            };
            meta.max_revision = revision;
            let td = spec
                .clone()
                .into_registered(ctx, revision, *registered_at, registered_by);
            let arn = ctx.task_definition(&family, revision);
            st.put_json(fkey, &meta)?;
            st.put_json(keys::task_def(&family, revision), &td)?;
            if !spec.tags.is_empty() {
                st.put_json(keys::tags(&arn), &spec.tags)?;
                st.changes.push(Change::Tags { arn });
            }
            st.changes.push(Change::TaskDefinition { family, revision });
            Ok(Response::TaskDefinition {
                task_definition: Box::new(td),
                tags: spec.tags.clone(),
            })
        }
        Command::DeregisterTaskDefinition {
            family,
            revision,
            at,
        } => {
            let key = keys::task_def(family, *revision);
            let Some(mut td) = st.get_json::<TaskDefinition>(&key)? else {
                return Ok(err(ApiError::client(format!(
                    "The specified task definition does not exist: {family}:{revision}."
                ))));
            };
            if td.status.as_deref() == Some("ACTIVE") {
                td.status = Some("INACTIVE".to_string());
                td.deregistered_at = Some(*at);
                st.put_json(key, &td)?;
                st.changes.push(Change::TaskDefinition {
                    family: family.clone(),
                    revision: *revision,
                });
            }
            Ok(Response::TaskDefinition {
                task_definition: Box::new(td),
                tags: vec![],
            })
        }
        Command::DeleteTaskDefinitions { ctx, items, at } => {
            let mut done = Vec::new();
            let mut failures = Vec::new();
            for (family, revision) in items {
                let arn = ctx.task_definition(family, *revision);
                let key = keys::task_def(family, *revision);
                match st.get_json::<TaskDefinition>(&key)? {
                    None => failures.push(failure(
                        &arn,
                        "TASK_DEFINITION_NOT_FOUND",
                        "The specified task definition does not exist.",
                    )),
                    Some(td) if td.status.as_deref() == Some("ACTIVE") => failures.push(failure(
                        &arn,
                        "TASK_DEFINITION_NOT_INACTIVE",
                        "The specified task definition is still ACTIVE. Deregister it before deleting it.",
                    )),
                    Some(mut td) => {
                        if td.status.as_deref() != Some("DELETE_IN_PROGRESS") {
                            td.status = Some("DELETE_IN_PROGRESS".to_string());
                            td.delete_requested_at = Some(*at);
                            st.put_json(key, &td)?;
                            st.delete(keys::tags(&arn));
                            st.changes
                                .push(Change::TaskDefinition { family: family.clone(), revision: *revision });
                        }
                        done.push(td);
                    }
                }
            }
            Ok(Response::TaskDefinitions {
                task_definitions: done,
                failures,
            })
        }
        Command::TagResource { arn, target, tags } => {
            if let Some(e) = check_tag_target(st, target)? {
                return Ok(err(e));
            }
            let key = keys::tags(arn);
            let mut current: Vec<Tag> = st.get_json(&key)?.unwrap_or_default();
            for t in tags {
                match current.iter_mut().find(|c| c.key == t.key) {
                    Some(c) => c.value = t.value.clone(),
                    None => current.push(t.clone()),
                }
            }
            if current.len() > 50 {
                return Ok(err(ApiError::invalid(format!(
                    "Resource {arn} would have {} tags; at most 50 are allowed.",
                    current.len()
                ))));
            }
            st.put_json(key, &current)?;
            st.changes.push(Change::Tags { arn: arn.clone() });
            Ok(Response::Ok)
        }
        Command::UntagResource {
            arn,
            target,
            keys: tag_keys,
        } => {
            if let Some(e) = check_tag_target(st, target)? {
                return Ok(err(e));
            }
            let key = keys::tags(arn);
            let mut current: Vec<Tag> = st.get_json(&key)?.unwrap_or_default();
            current.retain(|t| !tag_keys.contains(&t.key));
            if current.is_empty() {
                st.delete(key);
            } else {
                st.put_json(key, &current)?;
            }
            st.changes.push(Change::Tags { arn: arn.clone() });
            Ok(Response::Ok)
        }
        Command::RegisterContainerInstance { ctx, hello, at } => {
            crate::tasks::register_container_instance(st, ctx, hello, *at)
        }
        Command::SetAgentConnected {
            cluster,
            instance_id,
            connected,
            at,
        } => crate::tasks::set_agent_connected(st, cluster, instance_id, *connected, *at),
        Command::ReportTasks {
            cluster,
            instance_id,
            reports,
            at,
        } => crate::tasks::report_tasks(st, cluster, instance_id, reports, *at),
        Command::RunTasks {
            ctx,
            cluster,
            tasks,
            client_token,
            at,
        } => crate::tasks::run_tasks(st, ctx, cluster, tasks, client_token.as_deref(), *at),
        Command::StopTask {
            cluster,
            task_id,
            reason,
            stop_code,
            at,
        } => crate::tasks::stop_task(st, cluster, task_id, reason, stop_code, *at),
        Command::DeregisterContainerInstance {
            cluster,
            instance_id,
            force,
            at,
        } => crate::tasks::deregister_container_instance(st, cluster, instance_id, *force, *at),
        Command::UpdateContainerInstancesState {
            cluster,
            instance_ids,
            status,
            at,
        } => crate::tasks::update_container_instances_state(st, cluster, instance_ids, status, *at),
        Command::PutAttributes {
            cluster,
            attributes,
        } => crate::tasks::put_attributes(st, cluster, attributes),
        Command::DeleteAttributes {
            cluster,
            attributes,
        } => crate::tasks::delete_attributes(st, cluster, attributes),
        Command::PurgeStoppedTasks { cluster, before } => {
            crate::tasks::purge_stopped_tasks(st, cluster, *before)
        }
        Command::StopInstanceTasks {
            cluster,
            instance_id,
            reason,
            stop_code,
            at,
        } => crate::tasks::stop_instance_tasks(st, cluster, instance_id, reason, stop_code, *at),
        Command::CreateService {
            cluster, record, ..
        } => crate::services::create_service(st, cluster, record),
        Command::PutService {
            cluster,
            name,
            expected_version,
            record,
            ..
        } => crate::services::put_service_if(st, cluster, name, *expected_version, record),
        Command::ReconcileService {
            ctx,
            cluster,
            name,
            expected_version,
            record,
            new_tasks,
            stops,
            at,
        } => crate::services::reconcile_service(
            st,
            ctx,
            cluster,
            name,
            *expected_version,
            record,
            new_tasks,
            stops,
            *at,
        ),
        Command::CreateLoadBalancer { .. }
        | Command::DeleteLoadBalancer { .. }
        | Command::CreateTargetGroup { .. }
        | Command::ModifyTargetGroup { .. }
        | Command::ModifyTargetGroupAttributes { .. }
        | Command::ModifyLoadBalancerAttributes { .. }
        | Command::DeleteTargetGroup { .. }
        | Command::CreateListener { .. }
        | Command::ModifyListener { .. }
        | Command::DeleteListener { .. }
        | Command::CreateRule { .. }
        | Command::ModifyRule { .. }
        | Command::SetRulePriorities { .. }
        | Command::DeleteRule { .. }
        | Command::RegisterTargets { .. }
        | Command::DeregisterTargets { .. }
        | Command::SetTargetHealth { .. }
        | Command::ElbSweep { .. }
        | Command::ElbDrainReport { .. }
        | Command::AddElbTags { .. }
        | Command::RemoveElbTags { .. } => crate::elb::apply(st, cmd),
    }
}

pub(crate) fn err(error: ApiError) -> Response {
    Response::Error { error }
}

fn failure(arn: &str, reason: &str, detail: &str) -> Failure {
    Failure {
        arn: Some(arn.to_string()),
        reason: Some(reason.to_string()),
        detail: Some(detail.to_string()),
    }
}

pub fn inactive_cluster() -> ApiError {
    ApiError::invalid("The specified cluster is inactive. Specify an active cluster and try again.")
}

fn check_tag_target<R: KvRead + ?Sized>(
    st: &Staged<'_, R>,
    target: &TagTarget,
) -> Result<Option<ApiError>, StoreError> {
    Ok(match target {
        TagTarget::Cluster { name } => match st.get_json::<Cluster>(&keys::cluster(name))? {
            None => Some(ApiError::cluster_not_found()),
            Some(c) if c.status.as_deref() != Some("ACTIVE") => Some(inactive_cluster()),
            Some(_) => None,
        },
        TagTarget::TaskDefinition { family, revision } => {
            match st.get_json::<TaskDefinition>(&keys::task_def(family, *revision))? {
                Some(td) if td.status.as_deref() != Some("DELETE_IN_PROGRESS") => None,
                _ => Some(ApiError::new(
                    berth_model::ErrorKind::ResourceNotFoundException,
                    format!(
                        "The specified resource was not found: task-definition/{family}:{revision}"
                    ),
                )),
            }
        }
        TagTarget::Service { cluster, name } => {
            match crate::services::load_service(st, cluster, name)? {
                Some(s) if s.service.status != "INACTIVE" => None,
                _ => Some(ApiError::new(
                    berth_model::ErrorKind::ResourceNotFoundException,
                    format!("The specified resource was not found: service/{cluster}/{name}"),
                )),
            }
        }
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use berth_model::{validate_register, RegisterTaskDefinitionRequest};

    pub(crate) type Map = BTreeMap<Vec<u8>, Vec<u8>>;

    pub(crate) fn ctx() -> ArnContext {
        ArnContext::new("us-east-1", "123456789012")
    }

    /// Applies like the state machine does: commit staged writes only on success.
    pub(crate) fn run(state: &mut Map, cmd: Command) -> Response {
        let (resp, writes) = {
            let mut st = Staged::new(&*state);
            let resp = apply(&mut st, &cmd).unwrap();
            (resp, st.writes)
        };
        if !matches!(resp, Response::Error { .. }) {
            for (k, v) in writes {
                match v {
                    Some(v) => state.insert(k, v),
                    None => state.remove(&k),
                };
            }
        }
        resp
    }

    fn cluster(name: &str) -> Command {
        Command::CreateCluster {
            cluster: Cluster {
                cluster_arn: Some(ctx().cluster(name)),
                cluster_name: Some(name.into()),
                status: Some("ACTIVE".into()),
                ..Default::default()
            },
            tags: vec![Tag {
                key: "env".into(),
                value: "dev".into(),
            }],
        }
    }

    /// CreateCluster for an existing name, with no tags.
    fn recreate(name: &str) -> Command {
        Command::CreateCluster {
            cluster: Cluster {
                cluster_name: Some(name.into()),
                status: Some("ACTIVE".into()),
                ..Default::default()
            },
            tags: vec![],
        }
    }

    fn register(family: &str) -> Command {
        let req: RegisterTaskDefinitionRequest = serde_json::from_value(serde_json::json!({
            "family": family,
            "containerDefinitions": [{"name": "app", "image": "busybox", "memory": 64}]
        }))
        .unwrap();
        Command::RegisterTaskDefinition {
            ctx: ctx(),
            spec: validate_register(req).unwrap(),
            registered_at: 1700000000.5,
            registered_by: "arn:aws:iam::123456789012:root".into(),
        }
    }

    fn revision_of(r: &Response) -> u32 {
        match r {
            Response::TaskDefinition {
                task_definition, ..
            } => task_definition.revision,
            other => panic!("expected a task definition, got {other:?}"),
        }
    }

    fn error_of(r: &Response) -> &ApiError {
        match r {
            Response::Error { error } => error,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn create_cluster_is_idempotent_and_keeps_the_first_tags() {
        let mut s = Map::new();
        run(&mut s, cluster("a"));
        let again = recreate("a");
        match run(&mut s, again) {
            Response::Cluster { cluster } => {
                assert_eq!(
                    cluster.cluster_arn.as_deref(),
                    Some(ctx().cluster("a").as_str())
                )
            }
            other => panic!("{other:?}"),
        }
        let tags: Vec<Tag> = Staged::new(&s)
            .get_json(&keys::tags(&ctx().cluster("a")))
            .unwrap()
            .unwrap();
        assert_eq!(tags.len(), 1);
    }

    #[test]
    fn deleted_cluster_is_inactive_and_refuses_updates_and_tags() {
        let mut s = Map::new();
        run(&mut s, cluster("a"));
        match run(&mut s, Command::DeleteCluster { name: "a".into() }) {
            Response::Cluster { cluster } => {
                assert_eq!(cluster.status.as_deref(), Some("INACTIVE"))
            }
            other => panic!("{other:?}"),
        }
        let before = s.clone();
        let e = run(
            &mut s,
            Command::UpdateCluster {
                name: "a".into(),
                settings: Some(vec![]),
                configuration: None,
                service_connect_defaults: None,
            },
        );
        assert!(error_of(&e).message.contains("inactive"));
        let e = run(
            &mut s,
            Command::TagResource {
                arn: ctx().cluster("a"),
                target: TagTarget::Cluster { name: "a".into() },
                tags: vec![Tag {
                    key: "k".into(),
                    value: "v".into(),
                }],
            },
        );
        assert_eq!(
            error_of(&e).kind,
            berth_model::ErrorKind::InvalidParameterException
        );
        assert_eq!(s, before, "a refused command changes nothing");
        let e = run(
            &mut s,
            Command::DeleteCluster {
                name: "nope".into(),
            },
        );
        assert_eq!(
            error_of(&e).kind,
            berth_model::ErrorKind::ClusterNotFoundException
        );
    }

    #[test]
    fn create_cluster_answers_with_its_tags_and_delete_drops_them() {
        let mut s = Map::new();
        let tags_of = |r: &Response| match r {
            Response::Cluster { cluster } => cluster.tags.clone(),
            other => panic!("{other:?}"),
        };
        let expected = Some(vec![Tag {
            key: "env".into(),
            value: "dev".into(),
        }]);
        assert_eq!(tags_of(&run(&mut s, cluster("a"))), expected);
        // Creating it again answers with the stored tags, from the state machine itself.
        let again = recreate("a");
        assert_eq!(tags_of(&run(&mut s, again)), expected);
        run(&mut s, Command::DeleteCluster { name: "a".into() });
        let stored: Option<Vec<Tag>> = Staged::new(&s)
            .get_json(&keys::tags(&ctx().cluster("a")))
            .unwrap();
        assert_eq!(stored, None, "tags go with the deleted cluster");
    }

    #[test]
    fn update_cluster_merges_settings_by_name() {
        let mut s = Map::new();
        run(&mut s, cluster("a"));
        let set = |v: &str| Command::UpdateCluster {
            name: "a".into(),
            settings: Some(vec![ClusterSetting {
                name: Some("containerInsights".into()),
                value: Some(v.into()),
            }]),
            configuration: None,
            service_connect_defaults: None,
        };
        run(&mut s, set("enabled"));
        match run(&mut s, set("disabled")) {
            Response::Cluster { cluster } => {
                let settings = cluster.settings.unwrap();
                assert_eq!(settings.len(), 1);
                assert_eq!(settings[0].value.as_deref(), Some("disabled"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn revisions_count_up_per_family_and_are_never_reused() {
        let mut s = Map::new();
        assert_eq!(revision_of(&run(&mut s, register("a"))), 1);
        assert_eq!(revision_of(&run(&mut s, register("a"))), 2);
        assert_eq!(revision_of(&run(&mut s, register("b"))), 1);
        run(
            &mut s,
            Command::DeregisterTaskDefinition {
                family: "a".into(),
                revision: 2,
                at: 5.0,
            },
        );
        match run(
            &mut s,
            Command::DeleteTaskDefinitions {
                ctx: ctx(),
                items: vec![("a".into(), 2), ("a".into(), 1), ("a".into(), 9)],
                at: 6.0,
            },
        ) {
            Response::TaskDefinitions {
                task_definitions,
                failures,
            } => {
                assert_eq!(task_definitions.len(), 1);
                assert_eq!(
                    task_definitions[0].status.as_deref(),
                    Some("DELETE_IN_PROGRESS")
                );
                assert_eq!(task_definitions[0].delete_requested_at, Some(6.0));
                let reasons: Vec<_> = failures.iter().filter_map(|f| f.reason.clone()).collect();
                assert_eq!(
                    reasons,
                    vec!["TASK_DEFINITION_NOT_INACTIVE", "TASK_DEFINITION_NOT_FOUND"]
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            revision_of(&run(&mut s, register("a"))),
            3,
            "a deleted revision's number is not reused"
        );
    }

    #[test]
    fn deregister_sets_inactive_once() {
        let mut s = Map::new();
        run(&mut s, register("a"));
        let first = run(
            &mut s,
            Command::DeregisterTaskDefinition {
                family: "a".into(),
                revision: 1,
                at: 7.0,
            },
        );
        let second = run(
            &mut s,
            Command::DeregisterTaskDefinition {
                family: "a".into(),
                revision: 1,
                at: 8.0,
            },
        );
        for r in [&first, &second] {
            match r {
                Response::TaskDefinition {
                    task_definition, ..
                } => {
                    assert_eq!(task_definition.status.as_deref(), Some("INACTIVE"));
                    assert_eq!(task_definition.deregistered_at, Some(7.0));
                }
                other => panic!("{other:?}"),
            }
        }
        let e = run(
            &mut s,
            Command::DeregisterTaskDefinition {
                family: "a".into(),
                revision: 4,
                at: 8.0,
            },
        );
        assert!(error_of(&e).message.contains("a:4"));
    }

    #[test]
    fn tags_merge_overwrite_and_untag() {
        let mut s = Map::new();
        run(&mut s, register("a"));
        let arn = ctx().task_definition("a", 1);
        let target = TagTarget::TaskDefinition {
            family: "a".into(),
            revision: 1,
        };
        let tag = |k: &str, v: &str| Tag {
            key: k.into(),
            value: v.into(),
        };
        run(
            &mut s,
            Command::TagResource {
                arn: arn.clone(),
                target: target.clone(),
                tags: vec![tag("a", "1"), tag("b", "2")],
            },
        );
        run(
            &mut s,
            Command::TagResource {
                arn: arn.clone(),
                target: target.clone(),
                tags: vec![tag("a", "9")],
            },
        );
        run(
            &mut s,
            Command::UntagResource {
                arn: arn.clone(),
                target: target.clone(),
                keys: vec!["b".into()],
            },
        );
        let tags: Vec<Tag> = Staged::new(&s)
            .get_json(&keys::tags(&arn))
            .unwrap()
            .unwrap();
        assert_eq!(tags, vec![tag("a", "9")]);
        let too_many: Vec<Tag> = (0..50).map(|i| tag(&format!("k{i}"), "v")).collect();
        let e = run(
            &mut s,
            Command::TagResource {
                arn: arn.clone(),
                target: target.clone(),
                tags: too_many,
            },
        );
        assert!(error_of(&e).message.contains("51"));
        let missing = TagTarget::TaskDefinition {
            family: "a".into(),
            revision: 2,
        };
        let e = run(
            &mut s,
            Command::TagResource {
                arn,
                target: missing,
                tags: vec![tag("x", "y")],
            },
        );
        assert_eq!(
            error_of(&e).kind,
            berth_model::ErrorKind::ResourceNotFoundException
        );
    }

    #[test]
    fn apply_is_deterministic() {
        let cmds = [
            cluster("a"),
            register("x"),
            register("x"),
            Command::DeleteCluster { name: "a".into() },
            register("y"),
        ];
        let mut s1 = Map::new();
        let mut s2 = Map::new();
        let r1: Vec<_> = cmds.iter().map(|c| run(&mut s1, c.clone())).collect();
        let r2: Vec<_> = cmds.iter().map(|c| run(&mut s2, c.clone())).collect();
        assert_eq!(r1, r2);
        assert_eq!(s1, s2);
    }

    #[test]
    fn a_batch_applies_in_order_and_a_refused_command_contributes_nothing() {
        let mut s = Map::new();
        let cmds = vec![
            register("a"),
            Command::DeleteCluster {
                name: "nope".into(),
            },
            register("a"),
            cluster("c"),
        ];
        let (resps, writes) = {
            let mut st = Staged::new(&s);
            let r = apply_batch(&mut st, &cmds).unwrap();
            (r, st.writes)
        };
        for (k, v) in writes {
            if let Some(v) = v {
                s.insert(k, v);
            }
        }
        assert_eq!(revision_of(&resps[0]), 1);
        assert_eq!(
            error_of(&resps[1]).kind,
            berth_model::ErrorKind::ClusterNotFoundException
        );
        assert_eq!(
            revision_of(&resps[2]),
            2,
            "the second registration sees the first"
        );
        assert!(matches!(resps[3], Response::Cluster { .. }));
        // The same commands one by one give the same state.
        let mut one_by_one = Map::new();
        for c in cmds {
            run(&mut one_by_one, c);
        }
        assert_eq!(s, one_by_one);
    }

    #[test]
    fn commands_round_trip_through_the_log_encoding() {
        for c in [
            cluster("a"),
            register("x"),
            Command::DeleteCluster { name: "a".into() },
        ] {
            let req = Request::new(c);
            let bytes = serde_json::to_vec(&req).unwrap();
            let back: Request = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(back, req);
            assert_eq!(back.v, COMMAND_VERSION);
        }
    }
}
