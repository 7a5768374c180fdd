//! The agent ↔ server protocol: JSON messages carried in `proto/agent.proto`'s `Frame`.
//!
//! The agent connects to any server and sends [`AgentMessage::Hello`]; the server answers
//! [`ServerMessage::Welcome`], then the full set of tasks this instance should know about
//! ([`ServerMessage::Desired`] with `full: true`) and afterwards every change (`full:
//! false`), each stamped with the store revision it reflects. The agent heartbeats and
//! reports every task and container transition ([`AgentMessage::Report`]); reports carry a
//! per-task sequence number so a replayed or reordered report never moves a task backwards.

use serde::{Deserialize, Serialize};

use crate::task::{NetworkBinding, NetworkInterface, TaskOverride};
use crate::types::{Attribute, TaskDefinition};

/// Version of this protocol; a server refuses agents of another major version.
pub const AGENT_PROTOCOL_VERSION: u32 = 1;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceResources {
    /// CPU units, 1024 per core.
    pub cpu: i64,
    /// Memory in MiB.
    pub memory: i64,
    /// Reserved TCP ports (never given to tasks).
    pub ports: Vec<u16>,
    pub ports_udp: Vec<u16>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hello {
    pub protocol_version: u32,
    pub join_token: String,
    pub cluster: String,
    /// Stable id of this machine's agent, generated once and kept in its state file; becomes
    /// the container instance id (and `ec2InstanceId`-like identity).
    pub instance_id: String,
    pub hostname: String,
    /// The address other machines (and the load balancer) reach this host on.
    pub host_ip: String,
    pub resources: InstanceResources,
    /// Built-in attributes (`ecs.os-type`, …) and `--attribute k=v`.
    pub attributes: Vec<Attribute>,
    pub agent_version: String,
    pub runtime_version: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerReport {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    /// `PENDING` | `RUNNING` | `STOPPED`
    pub last_status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default)]
    pub network_bindings: Vec<NetworkBinding>,
    #[serde(default)]
    pub network_interfaces: Vec<NetworkInterface>,
    /// `HEALTHY` | `UNHEALTHY` | `UNKNOWN`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_status: Option<String>,
}

/// Everything the agent observed about one task, sent whole on every transition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskReport {
    pub task_arn: String,
    /// Per task, increases with every report the agent makes about it.
    pub seq: u64,
    /// One of `task::TASK_STATUSES`.
    pub last_status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_status: Option<String>,
    /// ECS wire timestamps (seconds since the epoch, fractional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_started_at: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_stopped_at: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_stopped_at: Option<f64>,
    /// Set when the agent itself stops the task (`EssentialContainerExited`,
    /// `TaskFailedToStart`); a user's stop keeps the server's code and reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_reason: Option<String>,
    /// The task's address (awsvpc, bridge), for `attachments[]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_ipv4_address: Option<String>,
    pub containers: Vec<ContainerReport>,
}

/// One task as the server wants it on this instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DesiredTask {
    pub task_arn: String,
    pub cluster: String,
    pub task_definition: TaskDefinition,
    #[serde(default)]
    pub overrides: TaskOverride,
    /// `RUNNING` | `STOPPED`
    pub desired_status: String,
    /// The server's `lastStatus` (the agent uses it to learn what the server already has).
    pub last_status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_reason: Option<String>,
    /// Highest report `seq` the server has applied for this task.
    #[serde(default)]
    pub reported_seq: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum AgentMessage {
    Hello(Box<Hello>),
    Heartbeat,
    Report {
        reports: Vec<TaskReport>,
    },
    /// The answer to a [`ServerMessage::Logs`].
    Logs(LogsResponse),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum ServerMessage {
    #[serde(rename_all = "camelCase")]
    Welcome {
        container_instance_arn: String,
        /// Cluster addresses (host:port of every server's cluster port) to fail over to.
        servers: Vec<String>,
        heartbeat_interval_ms: u64,
    },
    /// Desired tasks. `full`: this is every task of the instance not yet STOPPED on the
    /// server (plus recently stopped ones); the agent stops anything it runs that is not
    /// listed. Otherwise: only these changed.
    #[serde(rename_all = "camelCase")]
    Desired {
        full: bool,
        revision: u64,
        tasks: Vec<DesiredTask>,
    },
    /// Reports up to and including these per-task seqs are durable.
    #[serde(rename_all = "camelCase")]
    Ack { task_arn: String, seq: u64 },
    /// Read a task's container output.
    Logs(LogsRequest),
    /// The session is refused or ends (bad token, unknown cluster, deregistered instance).
    #[serde(rename_all = "camelCase")]
    Error { code: String, message: String },
}

/// Where a reader of a container's log stopped: the log file (by inode) and the offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct LogCursor {
    pub inode: u64,
    pub offset: u64,
}

/// A read of a task's container output (`berth logs`), relayed by a server to the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogsRequest {
    pub request_id: String,
    pub task_id: String,
    /// Only this container (default: all of the task's).
    #[serde(default)]
    pub container: Option<String>,
    /// Continue after these positions (per container); absent: start from the beginning,
    /// or from the last `tail` lines.
    #[serde(default)]
    pub cursors: std::collections::BTreeMap<String, LogCursor>,
    #[serde(default)]
    pub tail: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerLogs {
    pub container: String,
    pub data: String,
    pub cursor: LogCursor,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogsResponse {
    pub request_id: String,
    #[serde(default)]
    pub logs: Vec<ContainerLogs>,
    #[serde(default)]
    pub error: Option<String>,
}
