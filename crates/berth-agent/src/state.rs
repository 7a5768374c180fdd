//! The agent's own durable state: which tasks it manages, what it has done for each, and the
//! port allocator. Written whole (temp file + fsync + rename + directory fsync) after every
//! transition, so a `kill -9` at any moment leaves either the old or the new file.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use berth_model::agent::{ContainerReport, DesiredTask, TaskReport};
use serde::{Deserialize, Serialize};

use crate::network::TaskNetwork;

pub const STATE_VERSION: u32 = 1;

/// One container as the agent knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct LocalContainer {
    pub name: String,
    /// containerd id, set once created.
    pub runtime_id: Option<String>,
    pub image_digest: Option<String>,
    /// `PENDING` | `RUNNING` | `STOPPED`
    pub status: String,
    /// Created in the runtime (so a restart adopts rather than recreates it).
    pub created: bool,
    /// Has been started at least once.
    pub started: bool,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    pub health: Option<String>,
    /// (host port, container port, protocol) as reported in networkBindings.
    pub bindings: Vec<(u16, u16, String)>,
    /// Signal sent to stop it, and when (ms since the epoch), to escalate after stopTimeout.
    pub stop_sent_ms: Option<u64>,
}

/// One task as the agent knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalTask {
    pub desired: DesiredTask,
    /// The lifecycle status the agent has reached (one of `TASK_STATUSES`).
    pub status: String,
    /// Report sequence: bumped with every change worth reporting.
    pub seq: u64,
    /// Highest seq the server acknowledged as committed.
    pub acked_seq: u64,
    pub network: Option<TaskNetwork>,
    /// Host ports this task holds (port, protocol), released when it stops.
    pub host_ports: Vec<(u16, String)>,
    pub containers: BTreeMap<String, LocalContainer>,
    pub health: Option<String>,
    pub pull_started_at: Option<f64>,
    pub pull_stopped_at: Option<f64>,
    pub started_at: Option<f64>,
    pub execution_stopped_at: Option<f64>,
    pub stop_code: Option<String>,
    pub stopped_reason: Option<String>,
    /// Resources are released and nothing remains on the machine (STOPPED and cleaned up).
    pub cleaned: bool,
}

impl LocalTask {
    pub fn new(desired: DesiredTask) -> Self {
        let containers = desired
            .task_definition
            .container_definitions
            .iter()
            .map(|c| {
                let name = c.name.clone().unwrap_or_default();
                (
                    name.clone(),
                    LocalContainer {
                        name,
                        status: "PENDING".into(),
                        ..Default::default()
                    },
                )
            })
            .collect();
        LocalTask {
            status: "PROVISIONING".into(),
            seq: desired.reported_seq,
            acked_seq: desired.reported_seq,
            desired,
            network: None,
            host_ports: Vec::new(),
            containers,
            health: None,
            pull_started_at: None,
            pull_stopped_at: None,
            started_at: None,
            execution_stopped_at: None,
            stop_code: None,
            stopped_reason: None,
            cleaned: false,
        }
    }

    pub fn task_id(&self) -> &str {
        task_id_of(&self.desired.task_arn)
    }

    pub fn is_stopped(&self) -> bool {
        self.status == "STOPPED"
    }

    /// The report the server should hold for this task now.
    pub fn report(&self) -> TaskReport {
        let ip = self.network.as_ref().and_then(|n| n.ipv4.clone());
        let awsvpc = matches!(
            self.network.as_ref().map(|n| n.mode),
            Some(crate::network::NetworkMode::Awsvpc)
        );
        TaskReport {
            task_arn: self.desired.task_arn.clone(),
            seq: self.seq,
            last_status: self.status.clone(),
            health_status: self.health.clone(),
            pull_started_at: self.pull_started_at,
            pull_stopped_at: self.pull_stopped_at,
            started_at: self.started_at,
            execution_stopped_at: self.execution_stopped_at,
            stop_code: self.stop_code.clone(),
            stopped_reason: self.stopped_reason.clone(),
            private_ipv4_address: if awsvpc { ip.clone() } else { None },
            containers: self
                .containers
                .values()
                .map(|c| ContainerReport {
                    name: c.name.clone(),
                    runtime_id: c.runtime_id.clone(),
                    image_digest: c.image_digest.clone(),
                    last_status: c.status.clone(),
                    exit_code: c.exit_code,
                    reason: c.reason.clone(),
                    network_bindings: c
                        .bindings
                        .iter()
                        .map(|(h, cp, p)| berth_model::NetworkBinding {
                            bind_ip: Some("0.0.0.0".into()),
                            container_port: Some(*cp as i64),
                            host_port: Some(*h as i64),
                            protocol: Some(p.clone()),
                        })
                        .collect(),
                    network_interfaces: if awsvpc {
                        vec![berth_model::NetworkInterface {
                            attachment_id: Some(self.task_id().to_string()),
                            private_ipv4_address: ip.clone(),
                            ipv6_address: None,
                        }]
                    } else {
                        Vec::new()
                    },
                    health_status: c.health.clone(),
                })
                .collect(),
        }
    }
}

pub fn task_id_of(arn: &str) -> &str {
    arn.rsplit('/').next().unwrap_or(arn)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentState {
    pub version: u32,
    /// Stable identity of this machine's agent (the container instance id).
    pub instance_id: String,
    pub cluster: String,
    pub container_instance_arn: Option<String>,
    /// Images pulled by this agent (for the `once` pull behavior).
    #[serde(default)]
    pub pulled_images: Vec<String>,
    pub tasks: BTreeMap<String, LocalTask>,
    #[serde(default)]
    pub ports: serde_json::Value,
}

impl AgentState {
    pub fn new(cluster: &str) -> Self {
        AgentState {
            version: STATE_VERSION,
            instance_id: uuid::Uuid::new_v4().simple().to_string(),
            cluster: cluster.to_string(),
            container_instance_arn: None,
            pulled_images: Vec::new(),
            tasks: BTreeMap::new(),
            ports: serde_json::Value::Null,
        }
    }
}

/// Where the state lives: `<data dir>/agent-state.json`.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn new(data_dir: &Path) -> Self {
        StateFile {
            path: data_dir.join("agent-state.json"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved state, `None` on first start. A file written by an unknown (newer) version
    /// is an error: the agent must not guess at it.
    pub fn load(&self) -> anyhow::Result<Option<AgentState>> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(anyhow::anyhow!("read {}: {e}", self.path.display())),
        };
        let st: AgentState = serde_json::from_slice(&bytes)
            .map_err(|e| anyhow::anyhow!("agent state {} is corrupt: {e}", self.path.display()))?;
        if st.version > STATE_VERSION {
            anyhow::bail!(
                "agent state {} was written by a newer berth (state version {}); upgrade this agent",
                self.path.display(),
                st.version
            );
        }
        Ok(Some(st))
    }

    /// Replaces the file atomically and durably.
    pub fn save(&self, st: &AgentState) -> std::io::Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(".agent-state.json.tmp");
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec(st).map_err(std::io::Error::other)?)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        std::fs::File::open(dir)?.sync_all()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired(arn: &str) -> DesiredTask {
        DesiredTask {
            task_arn: arn.into(),
            cluster: "c".into(),
            task_definition: berth_model::TaskDefinition {
                family: "f".into(),
                revision: 1,
                container_definitions: vec![berth_model::ContainerDefinition {
                    name: Some("web".into()),
                    image: Some("img".into()),
                    ..Default::default()
                }],
                ..Default::default()
            },
            overrides: Default::default(),
            desired_status: "RUNNING".into(),
            last_status: "PROVISIONING".into(),
            started_by: None,
            stopped_reason: None,
            reported_seq: 0,
        }
    }

    #[test]
    fn save_then_load_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::new(dir.path());
        assert!(f.load().unwrap().is_none());
        let mut st = AgentState::new("c");
        let mut t = LocalTask::new(desired("arn:aws:ecs:r:1:task/c/abc"));
        t.status = "RUNNING".into();
        t.seq = 4;
        st.tasks.insert(t.desired.task_arn.clone(), t);
        f.save(&st).unwrap();
        let back = f.load().unwrap().unwrap();
        assert_eq!(back, st);
        // No temp file left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("agent-state.json")]);
    }

    #[test]
    fn corrupt_or_newer_state_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::new(dir.path());
        std::fs::write(f.path(), b"{not json").unwrap();
        assert!(f.load().unwrap_err().to_string().contains("corrupt"));
        let mut st = AgentState::new("c");
        st.version = STATE_VERSION + 1;
        std::fs::write(f.path(), serde_json::to_vec(&st).unwrap()).unwrap();
        assert!(f.load().unwrap_err().to_string().contains("newer berth"));
    }

    #[test]
    fn report_carries_bindings_and_ip() {
        let mut t = LocalTask::new(desired("arn:aws:ecs:r:1:task/c/abc"));
        t.containers.get_mut("web").unwrap().bindings = vec![(49200, 80, "tcp".into())];
        t.network = Some(TaskNetwork {
            mode: crate::network::NetworkMode::Awsvpc,
            netns: None,
            ipv4: Some("172.30.0.5".into()),
            gateway: None,
            forwards: vec![],
        });
        let r = t.report();
        assert_eq!(r.private_ipv4_address.as_deref(), Some("172.30.0.5"));
        let b = &r.containers[0].network_bindings[0];
        assert_eq!((b.host_port, b.container_port), (Some(49200), Some(80)));
        assert_eq!(
            r.containers[0].network_interfaces[0]
                .private_ipv4_address
                .as_deref(),
            Some("172.30.0.5")
        );
    }
}
