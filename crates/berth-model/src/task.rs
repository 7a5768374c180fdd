//! Tasks and container instances in ECS wire form (`Task`, `Container`, `ContainerInstance`,
//! `Resource`, …) and the task lifecycle.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::types::{Attribute, KeyValuePair, ResourceRequirement, Tag};

/// `NetworkBinding`: where a container port is reachable on the host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct NetworkBinding {
    #[serde(rename = "bindIP", skip_serializing_if = "Option::is_none")]
    pub bind_ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_port: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_port: Option<i64>,
    /// `tcp` | `udp`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

/// `NetworkInterface` of a container (awsvpc).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct NetworkInterface {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attachment_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_ipv4_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv6_address: Option<String>,
}

/// `ContainerOverride` (RunTask/StartTask `overrides.containerOverrides[]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ContainerOverride {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<Vec<KeyValuePair>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment_files: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_reservation: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_requirements: Option<Vec<ResourceRequirement>>,
}

/// `TaskOverride`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TaskOverride {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_overrides: Option<Vec<ContainerOverride>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_role_arn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub execution_role_arn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ephemeral_storage: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inference_accelerator_overrides: Option<serde_json::Value>,
}

/// The task lifecycle as ECS reports it, in order. A task's `lastStatus` only moves forward.
pub const TASK_STATUSES: [&str; 8] = [
    "PROVISIONING",
    "PENDING",
    "ACTIVATING",
    "RUNNING",
    "DEACTIVATING",
    "STOPPING",
    "DEPROVISIONING",
    "STOPPED",
];

/// Position of a task status in [`TASK_STATUSES`] (`None` for an unknown word).
pub fn task_status_rank(s: &str) -> Option<usize> {
    TASK_STATUSES.iter().position(|x| *x == s)
}

// ---------------------------------------------------------------- tasks and instances (wire form)

/// `Resource` of a container instance. ECS sends every numeric member (zeros for the
/// unused ones), so they are always present here too.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Resource {
    pub name: String,
    #[serde(rename = "type")]
    pub r#type: String,
    pub double_value: f64,
    pub long_value: i64,
    pub integer_value: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub string_set_value: Option<Vec<String>>,
}

impl Resource {
    /// An `INTEGER` resource (`CPU`, `MEMORY`).
    pub fn integer(name: &str, v: i64) -> Self {
        Resource {
            name: name.into(),
            r#type: "INTEGER".into(),
            integer_value: v,
            ..Default::default()
        }
    }

    /// A `STRINGSET` resource (`PORTS`, `PORTS_UDP`); ports are sorted numerically.
    pub fn ports(name: &str, ports: &[u16]) -> Self {
        let mut p = ports.to_vec();
        p.sort_unstable();
        p.dedup();
        Resource {
            name: name.into(),
            r#type: "STRINGSET".into(),
            string_set_value: Some(p.iter().map(|x| x.to_string()).collect()),
            ..Default::default()
        }
    }
}

/// `VersionInfo` of a container instance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct VersionInfo {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_hash: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub docker_version: Option<String>,
}

/// `Attachment` (a task's network interface in awsvpc mode).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Attachment {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub r#type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Vec<KeyValuePair>>,
}

/// Appendix B `ContainerInstance`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ContainerInstance {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_instance_arn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ec2_instance_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity_provider_name: Option<String>,
    pub version: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version_info: Option<VersionInfo>,
    pub remaining_resources: Vec<Resource>,
    pub registered_resources: Vec<Resource>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    /// Always set by the store (ECS always sends it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_connected: Option<bool>,
    pub running_tasks_count: i64,
    pub pending_tasks_count: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_update_status: Option<String>,
    pub attributes: Vec<Attribute>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registered_at: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attachments: Option<Vec<Attachment>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<Tag>>,
    /// `ContainerInstanceHealthStatus`, only with `include: CONTAINER_INSTANCE_HEALTH`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_status: Option<serde_json::Value>,
}

impl ContainerInstance {
    /// The `INTEGER` value of a registered resource (`CPU`, `MEMORY`), 0 if absent.
    pub fn registered_integer(&self, name: &str) -> i64 {
        self.registered_resources
            .iter()
            .find(|r| r.name == name)
            .map(|r| r.integer_value)
            .unwrap_or(0)
    }

    /// The ports of a registered `STRINGSET` resource (`PORTS`, `PORTS_UDP`).
    pub fn registered_ports(&self, name: &str) -> Vec<u16> {
        self.registered_resources
            .iter()
            .find(|r| r.name == name)
            .and_then(|r| r.string_set_value.as_ref())
            .map(|v| v.iter().filter_map(|p| p.parse().ok()).collect())
            .unwrap_or_default()
    }

    /// The value of an attribute, `Some(None)` for one without a value, `None` if absent.
    pub fn attribute(&self, name: &str) -> Option<Option<&str>> {
        self.attributes
            .iter()
            .find(|a| a.name == name)
            .map(|a| a.value.as_deref())
    }
}

/// Appendix B `Container` (in a task).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Container {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_arn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_arn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_bindings: Option<Vec<NetworkBinding>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_interfaces: Option<Vec<NetworkInterface>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_reservation: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_ids: Option<Vec<String>>,
}

/// Appendix B `Task`. `cpu`/`memory` are strings; timestamps are epoch seconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Task {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attachments: Option<Vec<Attachment>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attributes: Option<Vec<Attribute>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub availability_zone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity_provider_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_arn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connectivity: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connectivity_at: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_instance_arn: Option<String>,
    pub containers: Vec<Container>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub desired_status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enable_execute_command: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub execution_stopped_at: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub launch_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overrides: Option<TaskOverride>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform_family: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pull_started_at: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pull_stopped_at: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopping_at: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<Tag>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_arn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_definition_arn: Option<String>,
    pub version: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ephemeral_storage: Option<serde_json::Value>,
}

impl Task {
    pub fn last_status(&self) -> &str {
        self.last_status.as_deref().unwrap_or("")
    }

    pub fn desired_status(&self) -> &str {
        self.desired_status.as_deref().unwrap_or("")
    }

    /// The task id: the last path segment of its ARN.
    pub fn id(&self) -> &str {
        task_id_from_arn(self.task_arn.as_deref().unwrap_or(""))
    }

    /// Whether the task holds its instance's resources (every state but STOPPED).
    pub fn holds_resources(&self) -> bool {
        self.last_status() != "STOPPED"
    }

    /// `runningTasksCount`: RUNNING and meant to stay so.
    pub fn counts_as_running(&self) -> bool {
        self.last_status() == "RUNNING" && self.desired_status() == "RUNNING"
    }

    /// `pendingTasksCount`: on its way to RUNNING.
    pub fn counts_as_pending(&self) -> bool {
        matches!(
            self.last_status(),
            "PROVISIONING" | "PENDING" | "ACTIVATING"
        )
    }
}

/// The id part of a task ARN (`…:task/{cluster}/{id}`), or the input when it has no `/`.
pub fn task_id_from_arn(arn: &str) -> &str {
    arn.rsplit('/').next().unwrap_or(arn)
}

/// What a task reserves on its instance while it is not STOPPED: CPU units, MiB, and
/// static host ports (dynamic ports are not counted, as in ECS).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Reservation {
    pub cpu: i64,
    pub memory: i64,
    pub ports: Vec<u16>,
    pub ports_udp: Vec<u16>,
}

/// A task as the store keeps it. `instance_id` is the container instance id.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TaskRecord {
    pub task: Task,
    pub instance_id: String,
    /// Highest agent report `seq` applied to this task.
    pub reported_seq: u64,
    /// What the task holds on its instance (berth-side; not an ECS field).
    pub reserved: Reservation,
    /// The task definition's `networkMode` (`awsvpc` puts the address in `attachments`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_mode: Option<String>,
    /// Set while the task drains out of its load balancer target groups before it
    /// stops (ECS's DEACTIVATING): its desired status is already STOPPED, but its agent
    /// is told to keep it running until the store's `ElbSweep` at or after this time
    /// clears the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_until: Option<f64>,
}

/// A container instance as the store keeps it: the ECS shape plus what only berth needs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ContainerInstanceRecord {
    pub instance: ContainerInstance,
    /// The address other machines and the load balancer reach this host on.
    pub host_ip: String,
    pub hostname: String,
    /// When the agent was last heard from (connect, disconnect or report).
    pub last_seen: f64,
    /// Attributes put with PutAttributes (kept across re-registration; ≤10).
    pub custom_attributes: Vec<Attribute>,
    /// The join token the machine joined with (its agent reconnects with it; revoking
    /// it ends the machine's session).
    pub join_token_id: Option<String>,
}

impl ContainerInstanceRecord {
    pub fn id(&self) -> &str {
        self.instance.ec2_instance_id.as_deref().unwrap_or("")
    }

    pub fn status(&self) -> &str {
        self.instance.status.as_deref().unwrap_or("")
    }

    pub fn agent_connected(&self) -> bool {
        self.instance.agent_connected.unwrap_or(false)
    }
}

/// What an instance has left once the tasks holding resources on it are subtracted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Remaining {
    pub cpu: i64,
    pub memory: i64,
    /// Ports in use: reserved at registration plus static host ports of tasks.
    pub ports: BTreeSet<u16>,
    pub ports_udp: BTreeSet<u16>,
}

impl Remaining {
    pub fn of(instance: &ContainerInstance, tasks: &[TaskRecord]) -> Remaining {
        let mut r = Remaining {
            cpu: instance.registered_integer("CPU"),
            memory: instance.registered_integer("MEMORY"),
            ports: instance.registered_ports("PORTS").into_iter().collect(),
            ports_udp: instance.registered_ports("PORTS_UDP").into_iter().collect(),
        };
        for t in tasks.iter().filter(|t| t.task.holds_resources()) {
            r.take(&t.reserved);
        }
        r
    }

    pub fn take(&mut self, need: &Reservation) {
        self.cpu -= need.cpu;
        self.memory -= need.memory;
        self.ports.extend(need.ports.iter().copied());
        self.ports_udp.extend(need.ports_udp.iter().copied());
    }

    /// Why `need` does not fit (`RESOURCE:CPU`, `RESOURCE:MEMORY`, `RESOURCE:PORTS`,
    /// `RESOURCE:PORTS_UDP`), or `None` when it does.
    pub fn misfit(&self, need: &Reservation) -> Option<&'static str> {
        if need.cpu > self.cpu {
            Some("RESOURCE:CPU")
        } else if need.memory > self.memory {
            Some("RESOURCE:MEMORY")
        } else if need.ports.iter().any(|p| self.ports.contains(p)) {
            Some("RESOURCE:PORTS")
        } else if need.ports_udp.iter().any(|p| self.ports_udp.contains(p)) {
            Some("RESOURCE:PORTS_UDP")
        } else {
            None
        }
    }

    pub fn resources(&self) -> Vec<Resource> {
        let ports: Vec<u16> = self.ports.iter().copied().collect();
        let udp: Vec<u16> = self.ports_udp.iter().copied().collect();
        vec![
            Resource::integer("CPU", self.cpu),
            Resource::integer("MEMORY", self.memory),
            Resource::ports("PORTS", &ports),
            Resource::ports("PORTS_UDP", &udp),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_send_every_numeric_member() {
        let v = serde_json::to_value(Resource::integer("CPU", 2048)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"name":"CPU","type":"INTEGER","doubleValue":0.0,"longValue":0,"integerValue":2048})
        );
        let v = serde_json::to_value(Resource::ports("PORTS", &[2376, 22, 22])).unwrap();
        assert_eq!(v["stringSetValue"], serde_json::json!(["22", "2376"]));
        assert_eq!(v["integerValue"], 0);
    }

    #[test]
    fn task_wire_form() {
        let t = Task {
            task_arn: Some("arn:aws:ecs:us-east-1:1:task/c/abc".into()),
            cpu: Some("256".into()),
            created_at: Some(1.5),
            containers: vec![Container {
                name: Some("web".into()),
                exit_code: None,
                ..Default::default()
            }],
            ..Default::default()
        };
        let v = serde_json::to_value(&t).unwrap();
        assert_eq!(v["cpu"], "256");
        assert_eq!(v["createdAt"], 1.5);
        assert_eq!(v["version"], 0);
        assert!(v.get("stoppedAt").is_none());
        assert!(v["containers"][0].get("exitCode").is_none());
        assert_eq!(t.id(), "abc");
        let back: Task = serde_json::from_value(v).unwrap();
        assert_eq!(back, t);
    }
}
