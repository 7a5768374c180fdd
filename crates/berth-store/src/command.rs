//! The command encoding: what goes into the Raft log ([`Request`]: a versioned batch of
//! [`Command`]s and the parts they carry, [`NewTask`], [`TaskStop`], [`TagTarget`]), what
//! applying a command answers ([`Response`]) and the changes it records for watchers
//! ([`Change`]). Commands are stored in the Raft log, and responses (of proposals, for
//! retries) and changes (per revision, for watchers) in the applied state: their serde
//! shapes must stay readable by the next build.
//!
//! Commands are the only way cluster state changes. Each is proposed to Raft and applied by
//! [`apply`](crate::apply::apply), a deterministic function of the command and the current
//! state (time and ids travel inside the command). Nothing is half-applied: `apply` stages
//! every write and the caller commits the staged set atomically, or nothing when the result
//! is an error.
//!
//! This module depends on no other module of the crate: the resource modules
//! ([`crate::clusters`], [`crate::task_definitions`], [`crate::tags`], [`crate::tasks`],
//! [`crate::services`], [`crate::elb`]) use its types, and
//! [`crate::apply`](mod@crate::apply) dispatches each command to them.

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
        /// The join token the agent presented (its secret checked by the server, never
        /// in the log). A new machine (or one deregistered before) consumes one use and
        /// is refused if the token expired, was revoked or is used up.
        #[serde(default)]
        token: Option<String>,
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
    /// A new join token (its id must be new).
    CreateJoinToken {
        token: berth_model::token::JoinToken,
    },
    /// Revokes a join token; revoking [`berth_model::token::LEGACY_TOKEN_ID`] records it.
    RevokeJoinToken { id: String, at: f64 },
    /// A `berth lb` node or a server joined with token `id` (counts a use).
    UseJoinToken {
        id: String,
        kind: berth_model::token::TokenKind,
        at: f64,
    },
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

/// One task the controller stops.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TaskStop {
    pub task_id: String,
    /// e.g. `Scaling activity initiated by (deployment ecs-svc/…)`
    pub reason: String,
    /// e.g. `ServiceSchedulerInitiated`
    pub stop_code: String,
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
            Command::CreateJoinToken { .. } => "CreateJoinToken",
            Command::RevokeJoinToken { .. } => "RevokeJoinToken",
            Command::UseJoinToken { .. } => "UseJoinToken",
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
    JoinToken {
        token: Box<berth_model::token::JoinToken>,
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
    /// A join token was created, used or revoked.
    JoinToken {
        id: String,
    },
    /// Only the stored health of targets changed (SetTargetHealth): the controller acts
    /// on it; load balancer nodes, which check health themselves, ignore it.
    ElbHealth,
}

pub(crate) fn err(error: ApiError) -> Response {
    Response::Error { error }
}

pub fn inactive_cluster() -> ApiError {
    ApiError::invalid("The specified cluster is inactive. Specify an active cluster and try again.")
}
