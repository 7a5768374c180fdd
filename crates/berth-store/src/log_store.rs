//! The Raft log and vote, persisted in sled. Every append is flushed (fsync) before
//! openraft is told it is durable, unless the operator turned fsync off.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    AnyError, Entry, LogId, LogState, OptionalSend, RaftLogReader, StorageError, StorageIOError,
    Vote,
};

use crate::{DurableSnapshot, NodeId, TypeConfig};

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const LAST_PURGED: &[u8] = b"last_purged";

#[derive(Clone)]
pub struct LogStore {
    db: sled::Db,
    logs: sled::Tree,
    meta: sled::Tree,
    fsync: bool,
    durable_snapshot: DurableSnapshot,
}

fn io_err<E: std::error::Error + 'static>(
    f: fn(AnyError) -> StorageIOError<NodeId>,
    e: &E,
) -> StorageError<NodeId> {
    f(AnyError::new(e)).into()
}

impl LogStore {
    pub fn open(
        db: &sled::Db,
        fsync: bool,
        durable_snapshot: DurableSnapshot,
    ) -> Result<Self, sled::Error> {
        Ok(LogStore {
            db: db.clone(),
            logs: db.open_tree("raft_log")?,
            meta: db.open_tree("raft_meta")?,
            fsync,
            durable_snapshot,
        })
    }

    async fn flush(&self) -> Result<(), sled::Error> {
        if self.fsync {
            crate::flush(&self.db).await?;
        }
        Ok(())
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StorageError<NodeId>> {
        let v = self
            .meta
            .get(key)
            .map_err(|e| io_err(StorageIOError::read, &e))?;
        match v {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| io_err(StorageIOError::read, &e)),
        }
    }

    fn put_meta<T: serde::Serialize>(&self, key: &[u8], v: &T) -> Result<(), StorageError<NodeId>> {
        let bytes = serde_json::to_vec(v).map_err(|e| io_err(StorageIOError::write, &e))?;
        self.meta
            .insert(key, bytes)
            .map_err(|e| io_err(StorageIOError::write, &e))?;
        Ok(())
    }

    fn last_log_id(&self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        match self
            .logs
            .last()
            .map_err(|e| io_err(StorageIOError::read_logs, &e))?
        {
            None => Ok(None),
            Some((_, v)) => {
                let e: Entry<TypeConfig> = serde_json::from_slice(&v)
                    .map_err(|e| io_err(StorageIOError::read_logs, &e))?;
                Ok(Some(e.log_id))
            }
        }
    }

    /// Number of entries currently kept (for status pages and tests).
    pub fn len(&self) -> usize {
        self.logs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.logs.is_empty()
    }
}

fn bound_key(b: Bound<&u64>) -> Bound<[u8; 8]> {
    match b {
        Bound::Included(i) => Bound::Included(i.to_be_bytes()),
        Bound::Excluded(i) => Bound::Excluded(i.to_be_bytes()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let r = (bound_key(range.start_bound()), bound_key(range.end_bound()));
        let mut out = Vec::new();
        for item in self.logs.range::<[u8; 8], _>(r) {
            let (_, v) = item.map_err(|e| io_err(StorageIOError::read_logs, &e))?;
            out.push(
                serde_json::from_slice(&v).map_err(|e| io_err(StorageIOError::read_logs, &e))?,
            );
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let last_purged: Option<LogId<NodeId>> = self.get_meta(LAST_PURGED)?;
        // Entries at or below the purge point may survive a crash in the middle of a purge;
        // they never make the last log id go below it.
        let last = std::cmp::max(self.last_log_id()?, last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.put_meta(VOTE, vote)?;
        // A vote must be durable before it is acted on, whatever the fsync setting of the log.
        crate::flush(&self.db)
            .await
            .map_err(|e| io_err(StorageIOError::write_vote, &e))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.get_meta(VOTE)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        // Not flushed on its own: it only speeds up re-applying after a restart.
        self.put_meta(COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.get_meta::<Option<LogId<NodeId>>>(COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        for e in entries {
            let bytes =
                serde_json::to_vec(&e).map_err(|err| io_err(StorageIOError::write_logs, &err))?;
            batch.insert(&e.log_id.index.to_be_bytes(), bytes);
        }
        self.logs
            .apply_batch(batch)
            .map_err(|e| io_err(StorageIOError::write_logs, &e))?;
        let res = self.flush().await.map_err(std::io::Error::other);
        callback.log_io_completed(res);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut batch = sled::Batch::default();
        for item in self.logs.range(log_id.index.to_be_bytes()..) {
            let (k, _) = item.map_err(|e| io_err(StorageIOError::write_logs, &e))?;
            batch.remove(k);
        }
        self.logs
            .apply_batch(batch)
            .map_err(|e| io_err(StorageIOError::write_logs, &e))?;
        self.flush()
            .await
            .map_err(|e| io_err(StorageIOError::write_logs, &e))
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        // Never purge past what a durably stored snapshot covers: a follower may be told to
        // purge while the snapshot it received is still being installed, and a crash then
        // must not leave it without the entries or the snapshot. Skipped entries are purged
        // by a later call.
        let durable = self
            .durable_snapshot
            .load(std::sync::atomic::Ordering::SeqCst);
        if log_id.index > durable {
            tracing::debug!(
                upto = log_id.index,
                durable,
                "purge deferred until the snapshot is durable"
            );
            return Ok(());
        }
        // Record the purge point first: a crash in between leaves extra entries, never a gap.
        self.put_meta(LAST_PURGED, &log_id)?;
        self.flush()
            .await
            .map_err(|e| io_err(StorageIOError::write_logs, &e))?;
        let mut batch = sled::Batch::default();
        for item in self.logs.range(..=log_id.index.to_be_bytes()) {
            let (k, _) = item.map_err(|e| io_err(StorageIOError::write_logs, &e))?;
            batch.remove(k);
        }
        self.logs
            .apply_batch(batch)
            .map_err(|e| io_err(StorageIOError::write_logs, &e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload};
    use std::sync::atomic::Ordering;

    fn put(store: &LogStore, index: u64) {
        let e: Entry<TypeConfig> = Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Blank,
        };
        store
            .logs
            .insert(index.to_be_bytes(), serde_json::to_vec(&e).unwrap())
            .unwrap();
    }

    fn lid(index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(1, 1), index)
    }

    #[tokio::test]
    async fn purge_waits_for_a_durable_snapshot() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let durable = DurableSnapshot::default();
        let mut store = LogStore::open(&db, true, durable.clone()).unwrap();
        for i in 1..=10 {
            put(&store, i);
        }
        store.purge(lid(5)).await.unwrap();
        assert_eq!(
            store.len(),
            10,
            "nothing is purged past the durable snapshot (none yet)"
        );
        assert_eq!(
            store.get_log_state().await.unwrap().last_purged_log_id,
            None
        );
        durable.store(5, Ordering::SeqCst);
        store.purge(lid(5)).await.unwrap();
        assert_eq!(store.len(), 5);
        let st = store.get_log_state().await.unwrap();
        assert_eq!(
            (st.last_purged_log_id, st.last_log_id),
            (Some(lid(5)), Some(lid(10)))
        );
    }

    #[tokio::test]
    async fn the_last_log_id_is_never_below_the_purge_point() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let mut store = LogStore::open(&db, true, DurableSnapshot::default()).unwrap();
        // A crash between recording the purge point and deleting the entries.
        for i in 1..=3 {
            put(&store, i);
        }
        store.put_meta(LAST_PURGED, &lid(10)).unwrap();
        let st = store.get_log_state().await.unwrap();
        assert_eq!(
            (st.last_purged_log_id, st.last_log_id),
            (Some(lid(10)), Some(lid(10)))
        );
    }
}
