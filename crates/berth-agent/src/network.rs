//! The network seam: a namespace per task, wired by CNI plugins. The shipped implementation
//! is [`crate::cni::Cni`]; unit tests use an in-memory double.

use std::path::PathBuf;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// ECS `networkMode`, decided on once from the task definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    Bridge,
    Host,
    Awsvpc,
    None,
}

impl NetworkMode {
    /// From the task definition's `networkMode` (absent means bridge on Linux, as ECS).
    pub fn from_ecs(s: Option<&str>) -> NetworkMode {
        match s {
            Some("host") => NetworkMode::Host,
            Some("awsvpc") => NetworkMode::Awsvpc,
            Some("none") => NetworkMode::None,
            _ => NetworkMode::Bridge,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

/// A host port forwarded into the task's namespace (bridge mode).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortForward {
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
}

/// What setting up a task's network produced; kept in the agent's state file so teardown
/// after a restart knows what to undo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskNetwork {
    pub mode: NetworkMode,
    /// Bind-mounted namespace path (absent for host mode).
    pub netns: Option<PathBuf>,
    /// The task's address inside the bridge network (bridge and awsvpc).
    pub ipv4: Option<String>,
    pub gateway: Option<String>,
    pub forwards: Vec<PortForward>,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum NetworkError {
    /// A CNI plugin failed; the message carries the plugin's own `msg`/`details`.
    #[error("CNI {plugin} {command} failed: {message}")]
    Plugin {
        plugin: String,
        command: String,
        message: String,
    },
    #[error("network namespace: {0}")]
    Namespace(String),
    #[error("{0}")]
    Other(String),
}

#[async_trait]
pub trait Network: Send + Sync + 'static {
    /// Create the namespace (not for host mode) and run the CNI ADD chain for `mode`:
    /// bridge = bridge + host-local + portmap(forwards); awsvpc = bridge + host-local;
    /// none = loopback only. `task_id` names the namespace and the CNI container id.
    /// Idempotent: calling it again for a task already set up returns the same result.
    async fn setup(
        &self,
        task_id: &str,
        mode: NetworkMode,
        forwards: &[PortForward],
    ) -> Result<TaskNetwork, NetworkError>;

    /// Create the task's namespace ahead of `setup` (so containers can be created in it
    /// while the CNI plugins run) and return its path; `None` for host mode. `setup` then
    /// wires this same namespace. The default creates nothing.
    async fn prepare(
        &self,
        _task_id: &str,
        _mode: NetworkMode,
    ) -> Result<Option<PathBuf>, NetworkError> {
        Ok(None)
    }

    /// Undo `setup`: CNI DEL (releases the address and port mappings) and remove the
    /// namespace. Idempotent; tolerates half-set-up and already-removed state.
    async fn teardown(&self, task_id: &str, net: &TaskNetwork) -> Result<(), NetworkError>;
}
