//! Services: the ECS wire shapes (`Service`, `Deployment`, `ServiceEvent`, …) and the
//! record the store keeps (`ServiceRecord`), which the pure reconciler in
//! `berth-scheduler` reads and rewrites.
//!
//! Counts that follow from tasks (`runningCount`, `pendingCount`, per deployment and per
//! service) are not stored: they are computed from the service's tasks when read.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::types::Tag;

/// `placementConstraints[]` item of a request or a service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PlacementConstraint {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expression: Option<String>,
}

/// `placementStrategy[]` item.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PlacementStrategy {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DeploymentCircuitBreaker {
    pub enable: bool,
    pub rollback: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DeploymentAlarms {
    pub alarm_names: Vec<String>,
    pub enable: bool,
    pub rollback: bool,
}

/// `deploymentConfiguration`. Absent percentages take the defaults of the scheduling
/// strategy (REPLICA 200/100, DAEMON 100/0) when the service is created.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DeploymentConfiguration {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployment_circuit_breaker: Option<DeploymentCircuitBreaker>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maximum_percent: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minimum_healthy_percent: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alarms: Option<DeploymentAlarms>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
}

impl DeploymentConfiguration {
    pub fn max_percent(&self) -> i64 {
        self.maximum_percent.unwrap_or(200)
    }
    pub fn min_healthy_percent(&self) -> i64 {
        self.minimum_healthy_percent.unwrap_or(100)
    }
    pub fn circuit_breaker(&self) -> DeploymentCircuitBreaker {
        self.deployment_circuit_breaker.clone().unwrap_or_default()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DeploymentController {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

/// `loadBalancers[]` item.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LoadBalancer {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_group_arn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_balancer_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_port: Option<i64>,
}

/// `serviceRegistries[]` item.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ServiceRegistry {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registry_arn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_port: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ServiceEvent {
    pub id: String,
    pub created_at: f64,
    pub message: String,
}

/// One rollout of a service (`deployments[]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Deployment {
    /// `ecs-svc/<19 digits>`
    pub id: String,
    /// PRIMARY | ACTIVE | INACTIVE
    pub status: String,
    pub task_definition: String,
    pub desired_count: i64,
    pub pending_count: i64,
    pub running_count: i64,
    pub failed_tasks: i64,
    pub created_at: f64,
    pub updated_at: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub launch_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_configuration: Option<serde_json::Value>,
    /// IN_PROGRESS | COMPLETED | FAILED
    pub rollout_state: String,
    pub rollout_state_reason: String,
}

/// The ECS `Service` as DescribeServices returns it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Service {
    pub service_arn: String,
    pub service_name: String,
    pub cluster_arn: String,
    pub load_balancers: Vec<LoadBalancer>,
    pub service_registries: Vec<ServiceRegistry>,
    /// ACTIVE | DRAINING | INACTIVE
    pub status: String,
    pub desired_count: i64,
    pub running_count: i64,
    pub pending_count: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub launch_type: Option<String>,
    pub task_definition: String,
    pub deployment_configuration: DeploymentConfiguration,
    pub deployments: Vec<Deployment>,
    pub events: Vec<ServiceEvent>,
    pub created_at: f64,
    pub placement_constraints: Vec<PlacementConstraint>,
    pub placement_strategy: Vec<PlacementStrategy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_configuration: Option<serde_json::Value>,
    pub health_check_grace_period_seconds: i64,
    /// REPLICA | DAEMON
    pub scheduling_strategy: String,
    pub deployment_controller: DeploymentController,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<Tag>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// `enableECSManagedTags` on the wire (not the camelCase of the Rust name).
    #[serde(rename = "enableECSManagedTags")]
    pub enable_ecs_managed_tags: bool,
    /// TASK_DEFINITION | SERVICE | NONE
    pub propagate_tags: String,
    pub enable_execute_command: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_service_deployment: Option<String>,
}

/// What a finished or running deployment is remembered as, for ListServiceDeployments,
/// DescribeServiceDeployments and circuit-breaker rollback.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DeploymentHistory {
    /// The `ecs-svc/…` id.
    pub id: String,
    pub task_definition: String,
    pub created_at: f64,
    pub started_at: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<f64>,
    /// ServiceDeployment status: PENDING | IN_PROGRESS | SUCCESSFUL | STOPPED |
    /// ROLLBACK_IN_PROGRESS | ROLLBACK_SUCCESSFUL | ROLLBACK_FAILED
    pub status: String,
    pub status_reason: String,
    /// Task definitions running when it started (the source revisions).
    pub source_task_definitions: Vec<String>,
    pub deployment_configuration: DeploymentConfiguration,
    /// This deployment is a rollback (to `rollback_from`'s predecessor).
    pub rollback: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback_from: Option<String>,
    pub failure_count: i64,
    pub threshold: i64,
}

/// A service as the store keeps it: the wire shape (counts left at zero; events and
/// deployments are live) plus the scheduler's own bookkeeping.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ServiceRecord {
    pub service: Service,
    /// Bumped by every command that writes the record. A controller decision carries
    /// the version it was computed from and is dropped when it no longer matches, so a
    /// stale or repeated decision never starts or stops a task twice.
    pub version: u64,
    /// Deployments of this service, newest last (bounded; for ListServiceDeployments).
    pub history: Vec<DeploymentHistory>,
    /// STOPPED tasks the reconciler has already accounted for (failures, events).
    /// Pruned to tasks the store still keeps.
    pub accounted_stops: BTreeSet<String>,
    /// Consecutive launch failures of the service (tasks that never reached RUNNING).
    pub launch_failures: u32,
    /// No new task is started before this time (launch back-off), epoch seconds.
    pub next_launch_at: f64,
    /// Event id counter (events get `<n>` based ids, deterministic).
    pub next_event: u64,
    /// The scheduler considers the service steady (for "has reached a steady state.").
    pub steady: bool,
    /// Client token of CreateService (idempotency).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_token: Option<String>,
}

fn event_fnv1a<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        // A separator, so ("ab", "c") and ("a", "bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A service event's id: a UUID-shaped hash of the service ARN and the event's number
/// (deterministic, so every server applies the same).
pub fn service_event_id(service_arn: &str, n: u64) -> String {
    let n = n.to_le_bytes();
    let a = event_fnv1a([service_arn.as_bytes(), &n[..], b"hi"]);
    let b = event_fnv1a([service_arn.as_bytes(), &n[..], b"lo"]);
    let hex = format!("{a:016x}{b:016x}");
    let variant = ["8", "9", "a", "b"][usize::from(hex.as_bytes()[16] & 3)];
    format!(
        "{}-{}-4{}-{}{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        variant,
        &hex[17..20],
        &hex[20..32]
    )
}

/// A repeat of the newest event within this long is not added again (ECS: 6 h).
pub const SERVICE_EVENT_DEDUP_SECS: f64 = 6.0 * 3600.0;
/// Events kept per service (ECS shows the newest 100).
pub const SERVICE_MAX_EVENTS: usize = 100;

impl ServiceRecord {
    /// Adds an event (newest first), unless it repeats the newest one within 6 h.
    pub fn push_event(&mut self, message: String, now: f64) {
        if let Some(newest) = self.service.events.first() {
            if newest.message == message && now - newest.created_at < SERVICE_EVENT_DEDUP_SECS {
                return;
            }
        }
        let id = service_event_id(&self.service.service_arn, self.next_event);
        self.next_event += 1;
        self.service.events.insert(
            0,
            ServiceEvent {
                id,
                created_at: now,
                message,
            },
        );
        self.service.events.truncate(SERVICE_MAX_EVENTS);
    }

    pub fn name(&self) -> &str {
        &self.service.service_name
    }

    pub fn primary(&self) -> Option<&Deployment> {
        self.service
            .deployments
            .iter()
            .find(|d| d.status == "PRIMARY")
    }

    pub fn group(&self) -> String {
        service_group(&self.service.service_name)
    }
}

/// The task group of a service's tasks: `service:<name>`.
pub fn service_group(name: &str) -> String {
    format!("service:{name}")
}

/// ECS's circuit breaker threshold: `clamp(ceil(0.5 × desiredCount), 10, 200)`.
pub fn circuit_breaker_threshold(desired: i64) -> i64 {
    ((desired.max(0) + 1) / 2).clamp(10, 200)
}

/// `maximumPercent` of `desired`, rounded down.
pub fn max_tasks(desired: i64, max_percent: i64) -> i64 {
    (desired.max(0) * max_percent.max(0)) / 100
}

/// `minimumHealthyPercent` of `desired`, rounded up.
pub fn min_healthy_tasks(desired: i64, min_percent: i64) -> i64 {
    (desired.max(0) * min_percent.max(0) + 99) / 100
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecs_rounding() {
        assert_eq!(max_tasks(4, 200), 8);
        assert_eq!(max_tasks(3, 125), 3);
        assert_eq!(min_healthy_tasks(4, 50), 2);
        assert_eq!(min_healthy_tasks(2, 75), 2);
        assert_eq!(min_healthy_tasks(3, 0), 0);
        assert_eq!(circuit_breaker_threshold(1), 10);
        assert_eq!(circuit_breaker_threshold(25), 13);
        assert_eq!(circuit_breaker_threshold(400), 200);
        assert_eq!(circuit_breaker_threshold(800), 200);
    }

    #[test]
    fn service_wire_names() {
        let v = serde_json::to_value(Service {
            enable_ecs_managed_tags: true,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(v["enableECSManagedTags"], true);
        assert!(v.get("enableEcsManagedTags").is_none());
        let back: Service = serde_json::from_value(v).unwrap();
        assert!(back.enable_ecs_managed_tags);
    }

    #[test]
    fn placement_wire_names() {
        let v = serde_json::to_value(PlacementStrategy {
            kind: Some("spread".into()),
            field: Some("instanceId".into()),
        })
        .unwrap();
        assert_eq!(v, serde_json::json!({"type":"spread","field":"instanceId"}));
    }
}
