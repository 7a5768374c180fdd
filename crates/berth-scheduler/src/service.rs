//! Service reconciliation: from a service record, its tasks and the cluster's
//! instances, what to start, what to stop, and the service's next record (deployments,
//! rollout state, failed tasks, events). A pure function, run by the controller on
//! the leader at every change and tick; its answer is proposed as one command that is
//! dropped if the record's `version` moved meanwhile.

use berth_model::ServiceRecord;

/// One task of the service as the reconciler sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskInfo {
    pub id: String,
    /// `startedBy`: the deployment id (`ecs-svc/…`) it belongs to.
    pub deployment_id: String,
    pub instance_id: String,
    /// PROVISIONING | PENDING | ACTIVATING | RUNNING | DEACTIVATING | STOPPING |
    /// DEPROVISIONING | STOPPED
    pub last_status: String,
    /// RUNNING | STOPPED
    pub desired_status: String,
    /// HEALTHY | UNHEALTHY | UNKNOWN (task `healthStatus`)
    pub health_status: String,
    /// An essential container of the task has a health check.
    pub has_health_check: bool,
    pub created_at: f64,
    /// When it reached RUNNING (`startedAt`).
    pub started_at: Option<f64>,
    pub stopped_at: Option<f64>,
    pub stop_code: Option<String>,
    pub stopped_reason: Option<String>,
}

/// One container instance as the reconciler sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InstanceInfo {
    pub id: String,
    /// ACTIVE | DRAINING | …
    pub status: String,
    pub agent_connected: bool,
    /// DAEMON: the instance satisfies the service's constraints and attributes.
    pub eligible: bool,
    /// Live tasks on it that belong to other services (DAEMON tasks on a DRAINING
    /// instance stop after these).
    pub other_service_tasks: u32,
}

/// Scheduler knobs (server flags; ECS's values as defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// A RUNNING task without a container health check counts as healthy after this
    /// (ECS: 40 s).
    pub healthy_after_secs: f64,
    /// Launch back-off after repeated failures: first delay and cap.
    pub backoff_base_secs: f64,
    pub backoff_max_secs: f64,
    /// Consecutive launch failures before the back-off starts.
    pub backoff_after: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            healthy_after_secs: 40.0,
            backoff_base_secs: 10.0,
            backoff_max_secs: 300.0,
            backoff_after: 3,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Input<'a> {
    pub record: &'a ServiceRecord,
    /// Every task of the service the store keeps (STOPPED ones included).
    pub tasks: &'a [TaskInfo],
    /// Every container instance of the cluster.
    pub instances: &'a [InstanceInfo],
    pub now: f64,
    pub config: &'a Config,
}

/// One task to start.
#[derive(Debug, Clone, PartialEq)]
pub struct Start {
    pub deployment_id: String,
    pub task_definition: String,
    /// DAEMON: the instance it belongs on. REPLICA: `None` (placement decides).
    pub instance_id: Option<String>,
}

/// One task to stop.
#[derive(Debug, Clone, PartialEq)]
pub struct Stop {
    pub task_id: String,
    /// e.g. `Scaling activity initiated by (deployment ecs-svc/…)`
    pub reason: String,
    /// `ServiceSchedulerInitiated`
    pub stop_code: String,
}

#[derive(Debug, Clone)]
pub struct Decision {
    /// The service's next record (`version` untouched: apply bumps it).
    pub record: ServiceRecord,
    pub start: Vec<Start>,
    pub stop: Vec<Stop>,
}

impl Decision {
    /// Whether anything is to be proposed.
    pub fn is_noop(&self, before: &ServiceRecord) -> bool {
        self.start.is_empty() && self.stop.is_empty() && self.record == *before
    }
}

/// What the service needs next.
pub fn reconcile(input: &Input<'_>) -> Decision {
    let _ = input;
    todo!()
}

/// Adds an event (newest first, ≤100), unless the newest event already says the same
/// and is younger than 6 hours (ECS suppresses duplicates).
pub fn push_event(record: &mut ServiceRecord, message: String, now: f64) {
    let _ = (record, message, now);
    todo!()
}

/// Starts a deployment of `task_definition` with id `id` (`ecs-svc/<19 digits>`): it
/// becomes PRIMARY with rolloutState IN_PROGRESS and reason `ECS deployment <id> in
/// progress.`, the previous PRIMARY becomes ACTIVE (an IN_PROGRESS one in the history
/// becomes STOPPED), `service.taskDefinition` follows, and a history entry
/// (IN_PROGRESS, or ROLLBACK_IN_PROGRESS when `rollback_from` is given) is appended.
/// Used by CreateService/UpdateService (API) and by the circuit breaker's rollback.
pub fn new_deployment(
    record: &mut ServiceRecord,
    task_definition: &str,
    id: &str,
    now: f64,
    rollback_from: Option<&str>,
) {
    let _ = (record, task_definition, id, now, rollback_from);
    todo!()
}
