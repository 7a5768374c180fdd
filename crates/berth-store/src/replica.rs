//! The replicated store as its users on a server see it: the API handlers
//! (`berth-api`) and the leader's reconcilers (`berth-control`) read applied state,
//! wait for a linearizable read point, and propose commands — nothing else. A server
//! node implements it over Raft; unit tests can implement it over a [`StateReader`]
//! that applies commands directly.

use berth_model::ApiError;

use crate::{Command, Response, StateReader};

#[async_trait::async_trait]
pub trait Replica: Send + Sync {
    /// The applied state on this server (a consistent snapshot per read).
    fn reader(&self) -> &StateReader;

    /// Proposes `command`; answers once it is committed and applied here. A command the
    /// state machine refuses answers `Ok(Response::Error { .. })`; `Err` is a failure to
    /// commit (no leader, timeout).
    async fn propose(&self, command: Command) -> Result<Response, ApiError>;

    /// Returns once this server has applied everything committed before the call
    /// (Raft's read index), so a following read sees every acknowledged write.
    async fn read_barrier(&self) -> Result<(), ApiError>;

    /// Whether this server is the Raft leader now (reconcilers run only there).
    fn is_leader(&self) -> bool;
}

/// Now, in epoch seconds: the time that travels inside a command (applying a command
/// never reads a clock).
pub fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
