//! A [`Replica`] without Raft: every proposed command is applied at once to a store that
//! lives in memory. For unit tests of the API handlers and the reconcilers (enable the
//! `memory` feature in dev-dependencies); never shipped.

use berth_model::ApiError;
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
use tokio::sync::Mutex;

use crate::{
    open_temporary, Command, Replica, Request, Response, StateMachine, StateReader, TypeConfig,
};

pub struct MemoryReplica {
    sm: Mutex<(StateMachine, u64)>,
    reader: StateReader,
    leader: std::sync::atomic::AtomicBool,
}

impl MemoryReplica {
    pub fn new() -> Self {
        let opened = open_temporary().expect("a temporary sled store opens");
        MemoryReplica {
            sm: Mutex::new((opened.state_machine, 0)),
            reader: opened.reader,
            leader: std::sync::atomic::AtomicBool::new(true),
        }
    }

    /// Makes this replica a follower (`false`) or the leader again.
    pub fn set_leader(&self, leader: bool) {
        self.leader
            .store(leader, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Default for MemoryReplica {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait::async_trait]
impl Replica for MemoryReplica {
    fn reader(&self) -> &StateReader {
        &self.reader
    }

    async fn propose(&self, command: Command) -> Result<Response, ApiError> {
        let mut guard = self.sm.lock().await;
        let (sm, index) = &mut *guard;
        *index += 1;
        let entry: Entry<TypeConfig> = Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), *index),
            payload: EntryPayload::Normal(Request::new(command)),
        };
        let mut out = sm
            .apply(vec![entry])
            .await
            .map_err(|e| ApiError::server(format!("apply: {e}")))?;
        out.pop()
            .and_then(|r| r.into_iter().next())
            .ok_or_else(|| ApiError::server("the state machine gave no answer"))
    }

    async fn read_barrier(&self) -> Result<(), ApiError> {
        Ok(())
    }

    fn is_leader(&self) -> bool {
        self.leader.load(std::sync::atomic::Ordering::SeqCst)
    }
}
