//! The replicated state machine over sled. Each applied log index is a revision; the staged
//! writes of one command, the revision's change record and `last_applied` are committed in
//! one sled batch, so a reader never sees half a command.

use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, Entry, EntryPayload, LogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};
use tokio::sync::watch;

use crate::command::{apply_batch, Change, KvRead, Response, Staged, StoreError, COMMAND_VERSION};
use crate::{keys, Node, NodeId, TypeConfig};

/// How many revisions of change records are kept for watchers.
pub const CHANGES_KEPT: u64 = 10_000;
/// How many log entries back a retried proposal is still recognised (seconds of traffic).
pub const PROPOSALS_KEPT: u64 = 2_000;

const SNAP_META: &[u8] = b"meta";
const SNAP_DATA: &[u8] = b"data";

pub struct StateMachine {
    db: sled::Db,
    sm: sled::Tree,
    snaps: sled::Tree,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, Node>,
    applied_tx: Arc<watch::Sender<u64>>,
    snapshot_seq: u64,
}

fn sm_err<E: std::error::Error + 'static>(e: &E) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(AnyError::new(e)).into()
}

fn decode<T: serde::de::DeserializeOwned>(
    v: Option<sled::IVec>,
) -> Result<Option<T>, StorageError<NodeId>> {
    match v {
        None => Ok(None),
        Some(v) => serde_json::from_slice(&v)
            .map(Some)
            .map_err(|e| StorageIOError::read_state_machine(AnyError::new(&e)).into()),
    }
}

impl StateMachine {
    pub fn open(
        db: &sled::Db,
        applied_tx: Arc<watch::Sender<u64>>,
    ) -> Result<Self, StorageError<NodeId>> {
        let sm = db.open_tree("state").map_err(|e| sm_err(&e))?;
        let snaps = db.open_tree("snapshot").map_err(|e| sm_err(&e))?;
        let last_applied: Option<LogId<NodeId>> =
            decode(sm.get(keys::META_LAST_APPLIED).map_err(|e| sm_err(&e))?)?;
        let membership =
            decode(sm.get(keys::META_MEMBERSHIP).map_err(|e| sm_err(&e))?)?.unwrap_or_default();
        applied_tx.send_replace(last_applied.map(|l| l.index).unwrap_or(0));
        Ok(StateMachine {
            db: db.clone(),
            sm,
            snaps,
            last_applied,
            membership,
            applied_tx,
            snapshot_seq: 0,
        })
    }

    fn apply_one(&mut self, entry: &Entry<TypeConfig>) -> Result<Vec<Response>, StoreError> {
        let index = entry.log_id.index;
        let mut batch = sled::Batch::default();
        let (response, changes) = match &entry.payload {
            EntryPayload::Blank => (Vec::new(), Vec::new()),
            EntryPayload::Normal(req) if req.v != COMMAND_VERSION => {
                // Every server of one version answers the same; a newer command is refused.
                let error = berth_model::ApiError::server(format!(
                    "command version {} is not supported by this server (supports {COMMAND_VERSION}); upgrade it",
                    req.v
                ));
                (
                    req.commands
                        .iter()
                        .map(|_| Response::Error {
                            error: error.clone(),
                        })
                        .collect(),
                    Vec::new(),
                )
            }
            EntryPayload::Normal(req) => {
                let seen = match &req.id {
                    Some(id) => self.sm.get(keys::proposal(id))?,
                    None => None,
                };
                if let Some(first) = seen {
                    // A retry of a proposal that is already applied: answer as the first time.
                    let resps: Vec<Response> = serde_json::from_slice(&first)?;
                    (resps, Vec::new())
                } else {
                    let tree: &sled::Tree = &self.sm;
                    let mut st = Staged::new(tree as &dyn KvRead);
                    let resps = apply_batch(&mut st, &req.commands)?;
                    for (k, v) in st.writes {
                        match v {
                            Some(v) => batch.insert(k, v),
                            None => batch.remove(k),
                        }
                    }
                    if let Some(id) = &req.id {
                        batch.insert(keys::proposal(id), serde_json::to_vec(&resps)?);
                        batch.insert(keys::proposal_index(index), id.as_bytes());
                    }
                    (resps, st.changes)
                }
            }
            EntryPayload::Membership(m) => {
                self.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                batch.insert(keys::META_MEMBERSHIP, serde_json::to_vec(&self.membership)?);
                (Vec::new(), vec![Change::Membership])
            }
        };
        if !changes.is_empty() {
            batch.insert(keys::revision(index), serde_json::to_vec(&changes)?);
        }
        if index > CHANGES_KEPT {
            batch.remove(keys::revision(index - CHANGES_KEPT));
        }
        if index > PROPOSALS_KEPT {
            let old = keys::proposal_index(index - PROPOSALS_KEPT);
            if let Some(id) = self.sm.get(&old)? {
                batch.remove(keys::proposal(&String::from_utf8_lossy(&id)));
                batch.remove(old);
            }
        }
        batch.insert(keys::META_LAST_APPLIED, serde_json::to_vec(&entry.log_id)?);
        self.sm.apply_batch(batch)?;
        self.last_applied = Some(entry.log_id);
        Ok(response)
    }

    /// Every key/value of the state tree, length-prefixed: the snapshot format.
    fn dump(&self) -> Result<Vec<u8>, StorageError<NodeId>> {
        let mut out = Vec::new();
        for item in self.sm.iter() {
            let (k, v) = item.map_err(|e| sm_err(&e))?;
            out.extend_from_slice(&(k.len() as u32).to_be_bytes());
            out.extend_from_slice(&k);
            out.extend_from_slice(&(v.len() as u32).to_be_bytes());
            out.extend_from_slice(&v);
        }
        Ok(out)
    }
}

/// Parses the snapshot format written by `dump`.
pub fn parse_dump(mut data: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>, String> {
    let mut out = Vec::new();
    let take = |data: &mut &[u8]| -> Result<Vec<u8>, String> {
        if data.len() < 4 {
            return Err("truncated snapshot (length)".into());
        }
        let n = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
        if data.len() < 4 + n {
            return Err("truncated snapshot (value)".into());
        }
        let v = data[4..4 + n].to_vec();
        *data = &data[4 + n..];
        Ok(v)
    };
    while !data.is_empty() {
        let k = take(&mut data)?;
        let v = take(&mut data)?;
        out.push((k, v));
    }
    Ok(out)
}

pub struct SnapshotBuilder {
    snaps: sled::Tree,
    db: sled::Db,
    /// The cut state, or why it could not be cut (then no snapshot is built).
    data: Result<Vec<u8>, String>,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, Node>,
    seq: u64,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredSnapshotMeta {
    meta: SnapshotMeta<NodeId, Node>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let data = std::mem::replace(&mut self.data, Err("snapshot already built".into()))
            .map_err(|e| -> StorageError<NodeId> {
                StorageIOError::read_state_machine(AnyError::error(e)).into()
            })?;
        let snapshot_id = match self.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, self.seq),
            None => format!("--{}", self.seq),
        };
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
            snapshot_id,
        };
        let meta_bytes = serde_json::to_vec(&StoredSnapshotMeta { meta: meta.clone() })
            .map_err(|e| sm_err(&e))?;
        let mut batch = sled::Batch::default();
        batch.insert(SNAP_META, meta_bytes);
        batch.insert(SNAP_DATA, data.clone());
        self.snaps.apply_batch(batch).map_err(|e| sm_err(&e))?;
        // The snapshot (and the state it was cut from) must be durable before logs are purged.
        self.db.flush_async().await.map_err(|e| sm_err(&e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, Node>), StorageError<NodeId>> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<Response>>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let mut out = Vec::new();
        for entry in entries {
            let log_id = entry.log_id;
            let r = self
                .apply_one(&entry)
                .map_err(|e| -> StorageError<NodeId> {
                    StorageIOError::apply(log_id, AnyError::new(&e)).into()
                })?;
            out.push(r);
        }
        if let Some(l) = self.last_applied {
            self.applied_tx.send_replace(l.index);
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // Cut here, on the state-machine task, so no apply runs while the state is copied.
        self.snapshot_seq += 1;
        let data = self.dump().map_err(|e| e.to_string());
        SnapshotBuilder {
            snaps: self.snaps.clone(),
            db: self.db.clone(),
            data,
            last_applied: self.last_applied,
            membership: self.membership.clone(),
            seq: self.snapshot_seq,
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Node>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = snapshot.into_inner();
        let pairs = parse_dump(&data).map_err(|e| -> StorageError<NodeId> {
            StorageIOError::read_snapshot(Some(meta.signature()), AnyError::error(e)).into()
        })?;
        let mut batch = sled::Batch::default();
        for item in self.sm.iter() {
            let (k, _) = item.map_err(|e| sm_err(&e))?;
            batch.remove(k);
        }
        for (k, v) in pairs {
            batch.insert(k, v);
        }
        batch.insert(
            keys::META_LAST_APPLIED,
            serde_json::to_vec(&meta.last_log_id).map_err(|e| sm_err(&e))?,
        );
        batch.insert(
            keys::META_MEMBERSHIP,
            serde_json::to_vec(&meta.last_membership).map_err(|e| sm_err(&e))?,
        );
        self.sm.apply_batch(batch).map_err(|e| sm_err(&e))?;
        let mut sbatch = sled::Batch::default();
        sbatch.insert(
            SNAP_META,
            serde_json::to_vec(&StoredSnapshotMeta { meta: meta.clone() })
                .map_err(|e| sm_err(&e))?,
        );
        sbatch.insert(SNAP_DATA, data);
        self.snaps.apply_batch(sbatch).map_err(|e| sm_err(&e))?;
        self.db.flush_async().await.map_err(|e| sm_err(&e))?;
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.applied_tx
            .send_replace(self.last_applied.map(|l| l.index).unwrap_or(0));
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let meta: Option<StoredSnapshotMeta> =
            decode(self.snaps.get(SNAP_META).map_err(|e| sm_err(&e))?)?;
        let Some(m) = meta else { return Ok(None) };
        let data = self
            .snaps
            .get(SNAP_DATA)
            .map_err(|e| sm_err(&e))?
            .map(|v| v.to_vec())
            .unwrap_or_default();
        Ok(Some(Snapshot {
            meta: m.meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Command, Request};
    use berth_model::{validate_register, ArnContext, RegisterTaskDefinitionRequest};
    use openraft::CommittedLeaderId;

    fn register() -> Command {
        let req: RegisterTaskDefinitionRequest = serde_json::from_value(serde_json::json!({
            "family": "once", "containerDefinitions": [{"name": "app", "image": "busybox", "memory": 64}]
        }))
        .unwrap();
        Command::RegisterTaskDefinition {
            ctx: ArnContext::new("us-east-1", "123456789012"),
            spec: validate_register(req).unwrap(),
            registered_at: 1.0,
            registered_by: "test".into(),
        }
    }

    fn entry(index: u64, req: Request) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(req),
        }
    }

    #[tokio::test]
    async fn a_retried_proposal_is_answered_from_its_first_application() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new()
            .path(dir.path())
            .temporary(true)
            .open()
            .unwrap();
        let (tx, _rx) = watch::channel(0);
        let mut sm = StateMachine::open(&db, Arc::new(tx)).unwrap();
        let first = Request::new(register()).with_id("p1");
        let out = sm
            .apply(vec![
                entry(1, first.clone()),
                entry(2, first),
                entry(3, Request::new(register()).with_id("p2")),
            ])
            .await
            .unwrap();
        assert_eq!(out[0], out[1], "the retry gets the first answer");
        let rev = |r: &Vec<Response>| match &r[0] {
            Response::TaskDefinition {
                task_definition, ..
            } => task_definition.revision,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            (rev(&out[0]), rev(&out[2])),
            (1, 2),
            "the retry did not register a revision"
        );
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied.map(|l| l.index), Some(3));
    }

    #[tokio::test]
    async fn proposal_ids_are_forgotten_after_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new()
            .path(dir.path())
            .temporary(true)
            .open()
            .unwrap();
        let (tx, _rx) = watch::channel(0);
        let mut sm = StateMachine::open(&db, Arc::new(tx)).unwrap();
        sm.apply(vec![entry(1, Request::new(register()).with_id("old"))])
            .await
            .unwrap();
        assert!(sm.sm.get(keys::proposal("old")).unwrap().is_some());
        let later = entry(1 + PROPOSALS_KEPT, Request::new(register()));
        sm.apply(vec![later]).await.unwrap();
        assert!(sm.sm.get(keys::proposal("old")).unwrap().is_none());
        assert!(sm.sm.get(keys::proposal_index(1)).unwrap().is_none());
    }

    #[test]
    fn dump_format_round_trips() {
        let mut data = Vec::new();
        for (k, v) in [
            (b"a".to_vec(), b"1".to_vec()),
            (b"td\0x\0\0\0\0\x01".to_vec(), vec![]),
        ] {
            data.extend_from_slice(&(k.len() as u32).to_be_bytes());
            data.extend_from_slice(&k);
            data.extend_from_slice(&(v.len() as u32).to_be_bytes());
            data.extend_from_slice(&v);
        }
        let pairs = parse_dump(&data).unwrap();
        assert_eq!(pairs.len(), 2);
        assert_eq!(pairs[1].0, b"td\0x\0\0\0\0\x01".to_vec());
        assert!(parse_dump(&data[..data.len() - 1]).is_ok() || parse_dump(&data[..3]).is_err());
        assert!(parse_dump(&data[..3]).is_err());
    }
}
