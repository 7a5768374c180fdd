//! The container runtime seam. The agent's reconcile loop only speaks this trait; the shipped
//! implementation is [`crate::containerd::Containerd`], unit tests use an in-memory double.
//!
//! Ids: every container berth creates is named `berth-<task id>-<container name>` in the
//! containerd namespace `berth` and labelled with `berth.task-arn`, `berth.container-name`
//! and `berth.cluster`, so a restarted agent can adopt what it finds.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// Label keys berth puts on every container it creates.
pub const LABEL_TASK_ARN: &str = "berth.task-arn";
pub const LABEL_CONTAINER_NAME: &str = "berth.container-name";
pub const LABEL_CLUSTER: &str = "berth.cluster";

/// How the agent decides whether to contact the registry (ECS_IMAGE_PULL_BEHAVIOR).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum PullPolicy {
    /// Pull; if the pull fails, use the cached image if there is one.
    #[default]
    Default,
    /// Pull; if the pull fails, fail the task.
    Always,
    /// Pull only if this agent has never pulled it (or it was removed).
    Once,
    /// Pull only if there is no cached image.
    PreferCached,
}

impl std::str::FromStr for PullPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "default" => Ok(PullPolicy::Default),
            "always" => Ok(PullPolicy::Always),
            "once" => Ok(PullPolicy::Once),
            "prefer-cached" => Ok(PullPolicy::PreferCached),
            other => Err(format!(
                "unknown pull behavior {other:?}: expected default, always, once or prefer-cached"
            )),
        }
    }
}

/// Basic credentials for a registry (from `repositoryCredentials`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryAuth {
    pub username: String,
    pub password: String,
}

/// A resolved image: what the agent needs to build a container from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ImageInfo {
    /// The reference as containerd stores it, e.g. `127.0.0.1:5000/web:latest`.
    pub name: String,
    /// Manifest digest, `sha256:…` (reported as the container's `imageDigest`).
    pub digest: String,
    /// The image config's defaults.
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub stop_signal: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Whether the registry was contacted for this resolution (false: served from cache).
    pub pulled: bool,
}

/// Where a container's network namespace comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetNs {
    /// Share the host's network namespace (`networkMode: host`).
    Host,
    /// Join the namespace bind-mounted at this path (bridge, awsvpc, none).
    Path(PathBuf),
}

/// A host path mounted into the container (`mountPoints` resolved against `volumes`, plus
/// berth's own generated files such as `/etc/hosts`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    pub source: PathBuf,
    pub destination: String,
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ulimit {
    /// `nofile`, `nproc`, … (ECS names, without the RLIMIT_ prefix).
    pub name: String,
    pub soft: u64,
    pub hard: u64,
}

/// Everything needed to create one container, already resolved from the container
/// definition, the task's overrides and the image config. Built by `taskspec::container_spec`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// containerd container id (`berth-<task id>-<name>`).
    pub id: String,
    pub image: String,
    /// The full argv (entryPoint + command, with the image's defaults applied).
    pub args: Vec<String>,
    /// `KEY=value`, image env first, then the definition's, then overrides.
    pub env: Vec<String>,
    pub cwd: String,
    /// `uid`, `uid:gid`, `user` or `user:group`, as ECS `user`.
    pub user: Option<String>,
    pub hostname: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// cpu units (1024 = one core) → cgroup cpu shares; 0 means unset (shares 2 as docker).
    pub cpu_shares: u64,
    /// Hard limit in MiB (`memory`).
    pub memory_limit_mib: Option<u64>,
    /// Soft limit in MiB (`memoryReservation`).
    pub memory_reservation_mib: Option<u64>,
    pub ulimits: Vec<Ulimit>,
    pub readonly_rootfs: bool,
    pub privileged: bool,
    pub mounts: Vec<Mount>,
    pub netns: NetNs,
    /// Files for stdout and stderr; the runtime arranges for the container's output to reach
    /// them (berth's log driver rotates them).
    pub log_path: PathBuf,
}

/// What the runtime knows about one container right now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    /// Created (task created in containerd) but not started.
    Created,
    Running {
        pid: u32,
    },
    Stopped {
        exit_code: i32,
        /// Exit time, ms since the epoch (0 if unknown).
        exited_at_ms: u64,
        /// The kernel's OOM killer ended it.
        oom_killed: bool,
    },
}

/// A container found in the runtime (for adoption after a restart).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExistingContainer {
    pub id: String,
    pub labels: BTreeMap<String, String>,
    /// `None` when the container exists but has no task (never started, or deleted task).
    pub state: Option<ContainerState>,
}

/// Something happened to a container; delivered as soon as the runtime learns of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RuntimeEvent {
    Exited {
        id: String,
        exit_code: i32,
        exited_at_ms: u64,
    },
    Oom {
        id: String,
    },
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum RuntimeError {
    /// The image reference does not exist in the registry (or is malformed).
    #[error("CannotPullContainerError: {0}")]
    ImageNotFound(String),
    /// The registry refused (auth, TLS, network).
    #[error("CannotPullContainerError: {0}")]
    Pull(String),
    /// The container could not be created or started (e.g. the command is not in the image).
    #[error("CannotStartContainerError: {0}")]
    Start(String),
    #[error("container {0} not found")]
    NotFound(String),
    /// containerd is not reachable or failed otherwise.
    #[error("runtime unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Other(String),
}

/// Exit status of a command run inside a container (health checks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecOutcome {
    Exited(i32),
    TimedOut,
}

#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// Make the image available locally according to `policy`; pull from its registry if
    /// needed. Registries on loopback or listed as insecure are spoken to over plain HTTP.
    async fn ensure_image(
        &self,
        reference: &str,
        auth: Option<&RegistryAuth>,
        policy: PullPolicy,
    ) -> Result<ImageInfo, RuntimeError>;

    /// Create the container (snapshot from the image, OCI spec from `spec`) and its task,
    /// not yet started. Idempotent for an id that already exists with a task.
    async fn create(&self, spec: &ContainerSpec) -> Result<(), RuntimeError>;

    /// Start a created container; returns its pid.
    async fn start(&self, id: &str) -> Result<u32, RuntimeError>;

    /// Send a signal (libc number) to the container's init process. Not an error if the
    /// container has already exited.
    async fn kill(&self, id: &str, signal: i32) -> Result<(), RuntimeError>;

    /// The current state, `Ok(None)` if there is no such container.
    async fn state(&self, id: &str) -> Result<Option<ContainerState>, RuntimeError>;

    /// Remove the task, the container and its snapshot. Not an error if already gone.
    async fn remove(&self, id: &str) -> Result<(), RuntimeError>;

    /// Every container in berth's namespace, with its labels and state.
    async fn list(&self) -> Result<Vec<ExistingContainer>, RuntimeError>;

    /// Run `argv` inside the running container (health checks) and wait for its exit code.
    async fn exec(
        &self,
        id: &str,
        argv: Vec<String>,
        timeout: Duration,
    ) -> Result<ExecOutcome, RuntimeError>;

    /// A stream of exits and OOM kills. May be called again after it ends (reconnect).
    async fn events(&self) -> Result<tokio::sync::mpsc::Receiver<RuntimeEvent>, RuntimeError>;
}
