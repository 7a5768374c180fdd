//! The replicated state machine over sled. Each applied log index is a revision; the staged
//! writes of one entry, the revision's change record and `last_applied` are committed in
//! one sled batch, so a reader never sees half a command.
//!
//! Snapshots are stored as one value (metadata and data together, so a reader never sees
//! one without the other), replaced only by a newer one, and made durable before the log
//! is purged behind them.

use std::io::Cursor;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, Entry, EntryPayload, LogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};
use tokio::sync::watch;

use crate::apply::apply_batch;
use crate::command::{Change, Response, COMMAND_VERSION};
use crate::kv::{KvRead, Staged, StoreError};
use crate::{keys, DurableSnapshot, Node, NodeId, TypeConfig};

/// How many revisions of change records are kept for watchers.
pub const CHANGES_KEPT: u64 = 10_000;
/// How long (by the proposers' clocks) a retried proposal is still recognised. Retries
/// give up after 15 s, so this leaves a wide margin.
pub const PROPOSAL_TTL_MS: u64 = 30_000;
/// At most this many expired proposal records are dropped per entry (bounded apply work).
const PROPOSAL_PRUNE_PER_ENTRY: usize = 64;

const SNAP_CURRENT: &[u8] = b"current";

pub struct StateMachine {
    db: sled::Db,
    sm: sled::Tree,
    snaps: SnapshotStore,
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

/// What is kept of an answer for a retried proposal: registrations (the bulk of writes)
/// are kept as a reference and rebuilt from state, so the records stay small.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(tag = "k", rename_all = "camelCase")]
enum Recorded {
    Full {
        response: Response,
    },
    TaskDefinition {
        family: String,
        revision: u32,
        tags: Vec<berth_model::Tag>,
    },
}

impl Recorded {
    fn of(r: &Response) -> Recorded {
        match r {
            Response::TaskDefinition {
                task_definition,
                tags,
            } => Recorded::TaskDefinition {
                family: task_definition.family.clone(),
                revision: task_definition.revision,
                tags: tags.clone(),
            },
            other => Recorded::Full {
                response: other.clone(),
            },
        }
    }

    fn replay(self, sm: &sled::Tree) -> Result<Response, StoreError> {
        Ok(match self {
            Recorded::Full { response } => response,
            Recorded::TaskDefinition {
                family,
                revision,
                tags,
            } => {
                match Staged::new(sm as &dyn KvRead).get_json(&keys::task_def(&family, revision))? {
                    Some(td) => Response::TaskDefinition {
                        task_definition: Box::new(td),
                        tags,
                    },
                    None => Response::Error {
                        error: berth_model::ApiError::server(format!(
                            "task definition {family}:{revision} of a retried request is missing"
                        )),
                    },
                }
            }
        })
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ProposalRecord {
    id: String,
    at_ms: u64,
}

/// The stored snapshot: one sled value `[u32 meta length][meta JSON][data]`.
#[derive(Clone)]
struct SnapshotStore {
    tree: sled::Tree,
    db: sled::Db,
    /// Serializes replacing the stored snapshot (the builder runs on its own task).
    lock: Arc<Mutex<()>>,
    durable: DurableSnapshot,
}

/// A stored snapshot: its metadata and its data.
type StoredSnapshot = (SnapshotMeta<NodeId, Node>, Vec<u8>);

/// Key/value pairs of the state tree.
pub type KvPairs = Vec<(Vec<u8>, Vec<u8>)>;

impl SnapshotStore {
    fn load(&self) -> Result<Option<StoredSnapshot>, StorageError<NodeId>> {
        let Some(v) = self.tree.get(SNAP_CURRENT).map_err(|e| sm_err(&e))? else {
            return Ok(None);
        };
        let bad = |m: &str| -> StorageError<NodeId> {
            StorageIOError::read_snapshot(None, AnyError::error(m)).into()
        };
        if v.len() < 4 {
            return Err(bad("stored snapshot is truncated"));
        }
        let n = u32::from_be_bytes([v[0], v[1], v[2], v[3]]) as usize;
        if v.len() < 4 + n {
            return Err(bad("stored snapshot metadata is truncated"));
        }
        let meta = serde_json::from_slice(&v[4..4 + n]).map_err(|e| sm_err(&e))?;
        Ok(Some((meta, v[4 + n..].to_vec())))
    }

    /// Stores `meta`+`data` unless a snapshot at least as new is stored; then flushes and
    /// advances the durable index. Returns whether it was stored.
    async fn store(
        &self,
        meta: &SnapshotMeta<NodeId, Node>,
        data: &[u8],
    ) -> Result<bool, StorageError<NodeId>> {
        {
            let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((current, _)) = self.load()? {
                if current.last_log_id >= meta.last_log_id {
                    return Ok(false);
                }
            }
            let m = serde_json::to_vec(meta).map_err(|e| sm_err(&e))?;
            let mut v = Vec::with_capacity(4 + m.len() + data.len());
            v.extend_from_slice(&(m.len() as u32).to_be_bytes());
            v.extend_from_slice(&m);
            v.extend_from_slice(data);
            self.tree.insert(SNAP_CURRENT, v).map_err(|e| sm_err(&e))?;
        }
        crate::flush(&self.db).await.map_err(|e| sm_err(&e))?;
        let idx = meta.last_log_id.map(|l| l.index).unwrap_or(0);
        self.durable.fetch_max(idx, Ordering::SeqCst);
        Ok(true)
    }
}

impl StateMachine {
    /// Opens the state machine with its own durable-snapshot marker (tests).
    pub fn open(
        db: &sled::Db,
        applied_tx: Arc<watch::Sender<u64>>,
    ) -> Result<Self, StorageError<NodeId>> {
        Self::open_with(db, applied_tx, DurableSnapshot::default())
    }

    pub fn open_with(
        db: &sled::Db,
        applied_tx: Arc<watch::Sender<u64>>,
        durable: DurableSnapshot,
    ) -> Result<Self, StorageError<NodeId>> {
        let sm = db.open_tree("state").map_err(|e| sm_err(&e))?;
        let tree = db.open_tree("snapshot").map_err(|e| sm_err(&e))?;
        let snaps = SnapshotStore {
            tree,
            db: db.clone(),
            lock: Arc::default(),
            durable,
        };
        let mut me = StateMachine {
            db: db.clone(),
            sm,
            snaps,
            last_applied: None,
            membership: StoredMembership::default(),
            applied_tx,
            snapshot_seq: 0,
        };
        me.last_applied = decode(me.sm.get(keys::META_LAST_APPLIED).map_err(|e| sm_err(&e))?)?;
        me.membership =
            decode(me.sm.get(keys::META_MEMBERSHIP).map_err(|e| sm_err(&e))?)?.unwrap_or_default();
        if let Some((meta, data)) = me.snaps.load()? {
            me.snaps.durable.fetch_max(
                meta.last_log_id.map(|l| l.index).unwrap_or(0),
                Ordering::SeqCst,
            );
            // A crash during a snapshot install can leave a stored snapshot newer than the
            // state: finish the install now.
            if meta.last_log_id > me.last_applied {
                tracing::warn!(
                    snapshot = ?meta.last_log_id, applied = ?me.last_applied,
                    "completing an interrupted snapshot install"
                );
                me.replace_state(&meta, &data)?;
            }
        }
        me.applied_tx
            .send_replace(me.last_applied.map(|l| l.index).unwrap_or(0));
        Ok(me)
    }

    /// Replaces the whole state with a snapshot's (one atomic batch).
    fn replace_state(
        &mut self,
        meta: &SnapshotMeta<NodeId, Node>,
        data: &[u8],
    ) -> Result<(), StorageError<NodeId>> {
        let pairs = parse_dump(data).map_err(|e| -> StorageError<NodeId> {
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
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        Ok(())
    }

    fn apply_one(&mut self, entry: &Entry<TypeConfig>) -> Result<Vec<Response>, StoreError> {
        let index = entry.log_id.index;
        let mut batch = sled::Batch::default();
        let (response, changes) = match &entry.payload {
            EntryPayload::Blank => (Vec::new(), Vec::new()),
            EntryPayload::Normal(req) if req.v != COMMAND_VERSION => {
                // Skipping it would make this server diverge from newer ones: stop instead.
                return Err(StoreError::UnsupportedVersion {
                    version: req.v,
                    supported: COMMAND_VERSION,
                });
            }
            EntryPayload::Normal(req) => {
                let seen = match &req.id {
                    Some(id) => self.sm.get(keys::proposal(id))?,
                    None => None,
                };
                if let Some(first) = seen {
                    // A retry of a proposal that is already applied: answer as the first time.
                    let recorded: Vec<Recorded> = serde_json::from_slice(&first)?;
                    let resps = recorded
                        .into_iter()
                        .map(|r| r.replay(&self.sm))
                        .collect::<Result<_, _>>()?;
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
                        let recorded: Vec<Recorded> = resps.iter().map(Recorded::of).collect();
                        batch.insert(keys::proposal(id), serde_json::to_vec(&recorded)?);
                        let rec = ProposalRecord {
                            id: id.clone(),
                            at_ms: req.at_ms,
                        };
                        batch.insert(keys::proposal_index(index), serde_json::to_vec(&rec)?);
                    }
                    self.prune_proposals(req.at_ms, &mut batch)?;
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
        batch.insert(keys::META_LAST_APPLIED, serde_json::to_vec(&entry.log_id)?);
        self.sm.apply_batch(batch)?;
        self.last_applied = Some(entry.log_id);
        Ok(response)
    }

    /// Drops proposal records older than the TTL, judged by the time inside the entry being
    /// applied (so every replica drops the same ones).
    fn prune_proposals(&self, now_ms: u64, batch: &mut sled::Batch) -> Result<(), StoreError> {
        let cutoff = now_ms.saturating_sub(PROPOSAL_TTL_MS);
        for item in self
            .sm
            .scan_prefix(keys::PROPOSAL_INDEX)
            .take(PROPOSAL_PRUNE_PER_ENTRY)
        {
            let (k, v) = item?;
            let rec: ProposalRecord = serde_json::from_slice(&v)?;
            if rec.at_ms >= cutoff {
                break;
            }
            batch.remove(keys::proposal(&rec.id));
            batch.remove(k);
        }
        Ok(())
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
pub fn parse_dump(mut data: &[u8]) -> Result<KvPairs, String> {
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
    snaps: SnapshotStore,
    /// The cut state, or why it could not be cut (then no snapshot is built).
    data: Result<Vec<u8>, String>,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, Node>,
    seq: u64,
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
        // Stored (and durable) before openraft purges the log behind it. If a newer snapshot
        // was installed meanwhile, this older cut is not stored.
        self.snaps.store(&meta, &data).await?;
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
            let r = self.apply_one(&entry).map_err(|e| -> StorageError<NodeId> {
                tracing::error!(index = log_id.index, error = %e, "cannot apply a committed entry; stopping");
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
        SnapshotBuilder {
            snaps: self.snaps.clone(),
            data: self.dump().map_err(|e| e.to_string()),
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
        parse_dump(&data).map_err(|e| -> StorageError<NodeId> {
            StorageIOError::read_snapshot(Some(meta.signature()), AnyError::error(e)).into()
        })?;
        // The snapshot first (durable), then the state: a crash in between is completed from
        // the stored snapshot when the state machine opens.
        self.snaps.store(meta, &data).await?;
        self.replace_state(meta, &data)?;
        crate::flush(&self.db).await.map_err(|e| sm_err(&e))?;
        self.applied_tx
            .send_replace(self.last_applied.map(|l| l.index).unwrap_or(0));
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        Ok(self.snaps.load()?.map(|(meta, data)| Snapshot {
            meta,
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
        let mut sm = open_sm(&db);
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
        let mut sm = open_sm(&db);
        sm.apply(vec![entry(1, Request::new(register()).with_id("old"))])
            .await
            .unwrap();
        assert!(sm.sm.get(keys::proposal("old")).unwrap().is_some());
        let later = entry(2, Request::new(register()).at(PROPOSAL_TTL_MS + 10));
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

    fn meta(index: u64) -> SnapshotMeta<NodeId, Node> {
        SnapshotMeta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(1, 1), index)),
            last_membership: StoredMembership::default(),
            snapshot_id: format!("s{index}"),
        }
    }

    fn open_sm(db: &sled::Db) -> StateMachine {
        let (tx, _rx) = watch::channel(0);
        StateMachine::open(db, Arc::new(tx)).unwrap()
    }

    #[tokio::test]
    async fn a_late_snapshot_build_never_replaces_a_newer_installed_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let mut sm = open_sm(&db);
        sm.apply(vec![entry(1, Request::new(register()))])
            .await
            .unwrap();
        let mut builder = sm.get_snapshot_builder().await; // cut at index 1
                                                           // Meanwhile a snapshot at 50 arrives from the leader and is installed.
        let mut donor = open_sm(&sled::Config::new().temporary(true).open().unwrap());
        for i in 1..=50 {
            donor
                .apply(vec![entry(i, Request::new(register()))])
                .await
                .unwrap();
        }
        let snap = donor
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        sm.install_snapshot(&snap.meta, snap.snapshot)
            .await
            .unwrap();
        builder.build_snapshot().await.unwrap();
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta.last_log_id.map(|l| l.index), Some(50));
        assert_eq!(sm.snaps.durable.load(Ordering::SeqCst), 50);
    }

    #[tokio::test]
    async fn an_interrupted_install_is_completed_when_the_state_machine_opens() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let mut donor = open_sm(&sled::Config::new().temporary(true).open().unwrap());
        for i in 1..=7 {
            donor
                .apply(vec![entry(i, Request::new(register()))])
                .await
                .unwrap();
        }
        let data = donor.dump().unwrap();
        {
            let sm = open_sm(&db);
            // The crash came after the snapshot was stored and before the state was replaced.
            sm.snaps.store(&meta(7), &data).await.unwrap();
            assert_eq!(sm.last_applied, None);
        }
        let mut sm = open_sm(&db);
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied.map(|l| l.index), Some(7));
        let td = sm.sm.get(keys::task_def("once", 7)).unwrap();
        assert!(td.is_some(), "the snapshot's state is in place");
    }
}
