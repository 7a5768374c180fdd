//! What every handler gets: the cluster (through the [`Cluster`] trait) and the API's
//! settings.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use berth_model::agent::{LogsRequest, LogsResponse};
use berth_model::{ApiError, ArnContext};
use berth_store::{Command, Replica, Response};

/// The cluster as the API sees it: the replicated store ([`Replica`]: propose, read
/// linearizably, read locally) and the agents' sessions.
#[async_trait::async_trait]
pub trait Cluster: Replica {
    /// A task's container output, from the agent of `instance` wherever its session is.
    async fn agent_logs(
        &self,
        cluster: &str,
        instance: &str,
        req: LogsRequest,
    ) -> Result<LogsResponse, String>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Every request must carry a valid SigV4 signature from a known access key.
    SigV4,
    /// Accept any request (local experiments only; `berth server` warns loudly).
    None,
}

#[derive(Clone)]
pub struct ApiConfig {
    pub ctx: ArnContext,
    pub auth: AuthMode,
    /// access key id -> secret
    pub keys: Arc<HashMap<String, String>>,
    /// Largest request body accepted, in bytes.
    pub body_limit: usize,
}

/// What a handler needs: the cluster (writes, reads), the ARN context, the settings.
pub struct Ctx {
    pub cluster: Arc<dyn Cluster>,
    pub cfg: ApiConfig,
}

impl Ctx {
    /// Now, in epoch seconds with millisecond precision, as ECS sends.
    pub fn now(&self) -> f64 {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        (d.as_millis() as f64) / 1000.0
    }

    /// Proposes `cmd`; a command the state machine refuses is its error.
    pub async fn propose(&self, cmd: Command) -> Result<Response, ApiError> {
        match self.cluster.propose(cmd).await? {
            Response::Error { error } => Err(error),
            r => Ok(r),
        }
    }

    /// The local, applied state (read after [`Replica::read_barrier`] for linearizable reads).
    pub fn reader(&self) -> &berth_store::StateReader {
        self.cluster.reader()
    }
}

/// The store's in-memory test double as a cluster without agents: for unit tests of the
/// handlers here and of code that drives them (feature `memory`, never in the binary).
#[cfg(any(test, feature = "memory"))]
#[async_trait::async_trait]
impl Cluster for berth_store::memory::MemoryReplica {
    async fn agent_logs(
        &self,
        _cluster: &str,
        instance: &str,
        _req: LogsRequest,
    ) -> Result<LogsResponse, String> {
        Err(format!(
            "no agent session for {instance}: this cluster is in memory"
        ))
    }
}
