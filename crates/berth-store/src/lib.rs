#![forbid(unsafe_code)]
// openraft's `StorageError` is large and its storage traits return it; boxing it in our
// helpers would only add allocations on the write path.
#![allow(clippy::result_large_err)]
//! berth-store: the replicated state of a berth cluster.
//!
//! * [`command`]: the versioned commands of the Raft log, what applying one answers and
//!   the changes it records. It depends on no other module here.
//! * [`kv`]: the key/value view commands are applied to ([`kv::Staged`]) and
//!   [`StoreError`]; [`keys`]: the key layout.
//! * One module per resource, with the apply functions of its commands (and its reads):
//!   [`clusters`], [`task_definitions`], [`tags`] (ECS tags), [`tasks`] (container
//!   instances and tasks), [`services`], [`elb`] (ELBv2).
//! * [`apply()`] / [`apply_batch`]: the deterministic state transition, which dispatches
//!   each command to its resource's module (`command` ← resources ← `apply`).
//! * [`log_store`] / [`state_machine`]: openraft's storage traits over sled.
//! * [`StateReader`]: consistent reads of applied state, and a revision watch.
//! * [`Replica`]: the store as the API and the reconcilers reach it (propose, read).
//! * [`new_task`]: a new task with fresh ids, as RunTask and the reconciler propose it.

pub mod apply;
pub mod clusters;
pub mod command;
pub mod elb;
pub mod keys;
pub mod kv;
pub mod log_store;
#[cfg(any(test, feature = "memory"))]
pub mod memory;
pub mod new_task;
pub mod replica;
pub mod services;
pub mod state_machine;
pub mod tags;
pub mod task_definitions;
pub mod tasks;
#[cfg(test)]
mod test_util;
pub mod tokens;

use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;

use berth_model::elb as elbm;
use berth_model::{
    Cluster, ContainerInstanceRecord, ServiceRecord, Tag, TaskDefinition, TaskRecord,
};
use tokio::sync::watch;

pub use apply::{apply, apply_batch};
pub use berth_model::Remaining;
pub use command::{
    Change, Command, NewTask, Request, Response, TagTarget, TaskStop, COMMAND_VERSION,
};
pub use elb::{default_rule_arn, TargetKey};
pub use keys::TaskIndexKind;
pub use kv::StoreError;
pub use log_store::LogStore;
pub use replica::{now_secs, Replica};
pub use state_machine::StateMachine;
pub use task_definitions::FamilyMeta;
pub use tasks::ClusterCounts;

pub type NodeId = u64;
pub type Node = openraft::BasicNode;

openraft::declare_raft_types!(
    /// openraft type configuration of berth.
    pub TypeConfig:
        D = Request,
        R = Vec<Response>,
);

pub type Raft = openraft::Raft<TypeConfig>;

/// Storage tuning.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// fsync every log append (the default). Off only for benchmarks that say so.
    pub fsync: bool,
    /// sled page-cache cap in bytes (sled treats it as a hint; keep it small).
    pub cache_capacity: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            fsync: true,
            cache_capacity: 32 * 1024 * 1024,
        }
    }
}

/// Flushes sled on the blocking pool. (sled 0.34's `flush_async` can hang when several
/// flushes run at once — sled issues #1308/#1241; a blocking `flush` does not.)
pub async fn flush(db: &sled::Db) -> Result<usize, sled::Error> {
    let db = db.clone();
    match tokio::task::spawn_blocking(move || db.flush()).await {
        Ok(r) => r,
        Err(e) => Err(sled::Error::Io(std::io::Error::other(format!(
            "flush task failed: {e}"
        )))),
    }
}

/// The last log index covered by a durably stored snapshot; the log is never purged past it.
pub type DurableSnapshot = Arc<std::sync::atomic::AtomicU64>;

/// Everything a server needs from its data dir.
pub struct OpenedStore {
    pub log_store: LogStore,
    pub state_machine: StateMachine,
    pub reader: StateReader,
    pub db: sled::Db,
}

/// Opens (or creates) the store under `dir`.
pub fn open(dir: &Path, opts: &StoreOptions) -> Result<OpenedStore, anyhow_lite::Error> {
    std::fs::create_dir_all(dir)
        .map_err(|e| anyhow_lite::Error(format!("create {}: {e}", dir.display())))?;
    let db = sled::Config::new()
        .path(dir.join("sled"))
        .cache_capacity(opts.cache_capacity)
        .mode(sled::Mode::HighThroughput)
        .open()
        .map_err(|e| anyhow_lite::Error(format!("open sled store in {}: {e}", dir.display())))?;
    open_db(db, opts)
}

/// A store that lives in memory only (sled's temporary mode): for unit tests.
pub fn open_temporary() -> Result<OpenedStore, anyhow_lite::Error> {
    let db = sled::Config::new()
        .temporary(true)
        .open()
        .map_err(|e| anyhow_lite::Error(format!("open a temporary sled store: {e}")))?;
    open_db(
        db,
        &StoreOptions {
            fsync: false,
            ..Default::default()
        },
    )
}

fn open_db(db: sled::Db, opts: &StoreOptions) -> Result<OpenedStore, anyhow_lite::Error> {
    let (tx, rx) = watch::channel(0u64);
    let tx = Arc::new(tx);
    let durable = DurableSnapshot::default();
    let state_machine = StateMachine::open_with(&db, tx.clone(), durable.clone())
        .map_err(|e| anyhow_lite::Error(e.to_string()))?;
    let log_store =
        LogStore::open(&db, opts.fsync, durable).map_err(|e| anyhow_lite::Error(e.to_string()))?;
    let sm_tree = db
        .open_tree("state")
        .map_err(|e| anyhow_lite::Error(e.to_string()))?;
    let reader = StateReader {
        sm: sm_tree,
        applied: rx,
        _tx: tx,
    };
    Ok(OpenedStore {
        log_store,
        state_machine,
        reader,
        db,
    })
}

/// A tiny string error so this crate needs no anyhow.
pub mod anyhow_lite {
    #[derive(Debug)]
    pub struct Error(pub String);
    impl std::fmt::Display for Error {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }
    impl std::error::Error for Error {}
}

/// The changes one revision made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevisionChanges {
    pub revision: u64,
    pub changes: Vec<Change>,
}

/// Watchers asked for revisions older than the ones still kept.
#[derive(Debug, thiserror::Error)]
#[error("revision {asked} is compacted; the oldest kept revision is {oldest}; re-list and watch from the current revision")]
pub struct Compacted {
    pub asked: u64,
    pub oldest: u64,
}

/// Read access to the applied state. Cheap to clone. Reads see whole commands only.
#[derive(Clone)]
pub struct StateReader {
    sm: sled::Tree,
    applied: watch::Receiver<u64>,
    _tx: Arc<watch::Sender<u64>>,
}

fn decode<T: serde::de::DeserializeOwned>(k: &[u8], v: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(v).map_err(|source| StoreError::Corrupt {
        key: String::from_utf8_lossy(k).into_owned(),
        source,
    })
}

impl StateReader {
    /// The last applied log index (the current revision).
    pub fn revision(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Waits until the state has applied at least `revision`.
    pub async fn wait_for(&self, revision: u64) {
        let mut rx = self.applied.clone();
        let _ = rx.wait_for(|r| *r >= revision).await;
    }

    /// A receiver that changes whenever a revision is applied.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied.clone()
    }

    fn get<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StoreError> {
        match self.sm.get(key)? {
            None => Ok(None),
            Some(v) => decode(key, &v).map(Some),
        }
    }

    pub fn cluster(&self, name: &str) -> Result<Option<Cluster>, StoreError> {
        self.get(&keys::cluster(name))
    }

    /// All clusters (any status), ordered by name.
    pub fn clusters(&self) -> Result<Vec<Cluster>, StoreError> {
        self.sm
            .scan_prefix(keys::CLUSTER)
            .map(|r| {
                let (k, v) = r?;
                decode(&k, &v)
            })
            .collect()
    }

    pub fn task_definition(
        &self,
        family: &str,
        revision: u32,
    ) -> Result<Option<TaskDefinition>, StoreError> {
        self.get(&keys::task_def(family, revision))
    }

    /// The newest ACTIVE revision of a family.
    pub fn latest_active(&self, family: &str) -> Result<Option<TaskDefinition>, StoreError> {
        for r in self
            .sm
            .scan_prefix(keys::task_def_family_prefix(family))
            .rev()
        {
            let (k, v) = r?;
            let td: TaskDefinition = decode(&k, &v)?;
            if td.status.as_deref() == Some("ACTIVE") {
                return Ok(Some(td));
            }
        }
        Ok(None)
    }

    /// Task definitions of one family (or all, with `None`), family then revision ascending.
    pub fn task_definitions(
        &self,
        family: Option<&str>,
    ) -> impl DoubleEndedIterator<Item = Result<TaskDefinition, StoreError>> + '_ {
        let prefix = match family {
            Some(f) => keys::task_def_family_prefix(f),
            None => keys::TASK_DEF.to_vec(),
        };
        self.sm.scan_prefix(prefix).map(|r| {
            let (k, v) = r?;
            decode(&k, &v)
        })
    }

    /// Every family ever registered (revisions are never reused, so families never vanish).
    pub fn families(&self) -> Result<Vec<String>, StoreError> {
        self.sm
            .scan_prefix(keys::FAMILY)
            .map(|r| {
                let (k, _) = r?;
                Ok(String::from_utf8_lossy(&k[keys::FAMILY.len()..]).into_owned())
            })
            .collect()
    }

    pub fn tags(&self, arn: &str) -> Result<Vec<Tag>, StoreError> {
        Ok(self.get(&keys::tags(arn))?.unwrap_or_default())
    }

    /// A container instance with its computed members (`remainingResources`,
    /// `runningTasksCount`, `pendingTasksCount`) filled in.
    pub fn container_instance(
        &self,
        cluster: &str,
        id: &str,
    ) -> Result<Option<ContainerInstanceRecord>, StoreError> {
        match tasks::load_instance(&self.sm, cluster, id)? {
            None => Ok(None),
            Some(rec) => tasks::decorated_instance(&self.sm, cluster, rec).map(Some),
        }
    }

    /// Every container instance of a cluster (INACTIVE ones included), by id, decorated.
    pub fn container_instances(
        &self,
        cluster: &str,
    ) -> Result<Vec<ContainerInstanceRecord>, StoreError> {
        tasks::instances_of_cluster(&self.sm, cluster)?
            .into_iter()
            .map(|rec| tasks::decorated_instance(&self.sm, cluster, rec))
            .collect()
    }

    pub fn task(&self, cluster: &str, id: &str) -> Result<Option<TaskRecord>, StoreError> {
        tasks::load_task(&self.sm, cluster, id)
    }

    /// Every task the store keeps on an instance (STOPPED ones still retained included).
    pub fn tasks_on_instance(
        &self,
        cluster: &str,
        instance_id: &str,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        tasks::tasks_on_instance(&self.sm, cluster, instance_id)
    }

    /// Every task of a cluster, by id.
    pub fn tasks(&self, cluster: &str) -> Result<Vec<TaskRecord>, StoreError> {
        tasks::tasks_of_cluster(&self.sm, cluster)
    }

    /// Ids of the tasks whose instance / family / startedBy / desiredStatus is `value`,
    /// by id, from the index (no scan of other tasks).
    pub fn task_ids_by(
        &self,
        cluster: &str,
        kind: TaskIndexKind,
        value: &str,
    ) -> Result<Vec<String>, StoreError> {
        tasks::task_ids_by(&self.sm, cluster, kind, value)
    }

    /// `registeredContainerInstancesCount`, `runningTasksCount`, `pendingTasksCount`,
    /// `activeServicesCount` (and DRAINING services, for the statistics).
    pub fn cluster_counts(&self, cluster: &str) -> Result<ClusterCounts, StoreError> {
        let mut c = tasks::cluster_counts(&self.sm, cluster)?;
        (c.active_services, c.draining_services) = services::service_counts(&self.sm, cluster)?;
        Ok(c)
    }

    /// A service (any status) as stored: counts are not filled in, tags are not in it.
    pub fn service(&self, cluster: &str, name: &str) -> Result<Option<ServiceRecord>, StoreError> {
        services::load_service(&self.sm, cluster, name)
    }

    /// Every service of a cluster (ACTIVE, DRAINING and INACTIVE), by name.
    pub fn services(&self, cluster: &str) -> Result<Vec<ServiceRecord>, StoreError> {
        services::services_of_cluster(&self.sm, cluster)
    }

    /// Every task the store keeps of a task group (STOPPED ones still retained included),
    /// by id, from the group index. A service's tasks: `group == "service:<name>"`.
    pub fn tasks_of_group(
        &self,
        cluster: &str,
        group: &str,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        services::tasks_of_group(&self.sm, cluster, group)
    }

    // ------------------------------------------------------------ ELBv2

    /// Every load balancer, by name.
    pub fn elb_load_balancers(&self) -> Result<Vec<elbm::LoadBalancer>, StoreError> {
        elb::load_balancers(&self.sm)
    }

    pub fn elb_load_balancer(&self, arn: &str) -> Result<Option<elbm::LoadBalancer>, StoreError> {
        elb::load_balancer(&self.sm, arn)
    }

    /// A load balancer with its attributes (ALB's defaults for those not stored).
    pub fn elb_load_balancer_record(
        &self,
        arn: &str,
    ) -> Result<Option<elbm::LoadBalancerRecord>, StoreError> {
        elb::load_balancer_record(&self.sm, arn)
    }

    /// Every load balancer with its attributes, by name.
    pub fn elb_load_balancer_records(&self) -> Result<Vec<elbm::LoadBalancerRecord>, StoreError> {
        elb::load_balancer_records(&self.sm)
    }

    /// Every target group, by name, with `LoadBalancerArns` filled in.
    pub fn elb_target_groups(&self) -> Result<Vec<elbm::TargetGroupRecord>, StoreError> {
        elb::target_groups(&self.sm)
    }

    /// A target group with `LoadBalancerArns` filled in.
    pub fn elb_target_group(
        &self,
        arn: &str,
    ) -> Result<Option<elbm::TargetGroupRecord>, StoreError> {
        elb::target_group(&self.sm, arn)
    }

    /// Listeners of one load balancer (or of all), by port.
    pub fn elb_listeners(
        &self,
        load_balancer_arn: Option<&str>,
    ) -> Result<Vec<elbm::Listener>, StoreError> {
        elb::listeners(&self.sm, load_balancer_arn)
    }

    pub fn elb_listener(&self, arn: &str) -> Result<Option<elbm::Listener>, StoreError> {
        elb::listener(&self.sm, arn)
    }

    /// A listener's rules in evaluation order (by priority, the default rule last).
    pub fn elb_rules(&self, listener_arn: &str) -> Result<Vec<elbm::Rule>, StoreError> {
        elb::rules(&self.sm, listener_arn)
    }

    /// Every rule of every listener, by listener ARN then evaluation order.
    pub fn elb_all_rules(&self) -> Result<Vec<elbm::RuleRecord>, StoreError> {
        elb::all_rules(&self.sm)
    }

    pub fn elb_rule(&self, arn: &str) -> Result<Option<elbm::RuleRecord>, StoreError> {
        elb::rule(&self.sm, arn)
    }

    /// A target group's targets (draining ones included), by id then port.
    pub fn elb_targets(
        &self,
        target_group_arn: &str,
    ) -> Result<Vec<elbm::TargetRecord>, StoreError> {
        elb::targets(&self.sm, target_group_arn)
    }

    /// Every target, by target group, id, port.
    pub fn elb_all_targets(&self) -> Result<Vec<elbm::TargetRecord>, StoreError> {
        elb::all_targets(&self.sm)
    }

    /// The targets a service registered for a task (draining ones included).
    pub fn elb_targets_of_task(
        &self,
        cluster: &str,
        task_id: &str,
    ) -> Result<Vec<elbm::TargetRecord>, StoreError> {
        elb::targets_of_task(&self.sm, cluster, task_id)
    }

    /// When the next `ElbSweep` has work (a draining target or task whose deadline
    /// passes), if ever: the controller proposes `ElbSweep { at }` at or after it.
    pub fn join_token(
        &self,
        id: &str,
    ) -> Result<Option<berth_model::token::JoinToken>, StoreError> {
        tokens::load(&self.sm, id)
    }

    pub fn join_tokens(&self) -> Result<Vec<berth_model::token::JoinToken>, StoreError> {
        tokens::list(&self.sm)
    }

    pub fn next_drain_deadline(&self) -> Result<Option<f64>, StoreError> {
        elb::next_drain_deadline(&self.sm)
    }

    /// The changes of every revision after `after`, oldest first.
    pub fn changes_since(
        &self,
        after: u64,
    ) -> Result<Result<Vec<RevisionChanges>, Compacted>, StoreError> {
        let current = self.revision();
        let oldest_kept = current.saturating_sub(state_machine::CHANGES_KEPT) + 1;
        if after + 1 < oldest_kept {
            return Ok(Err(Compacted {
                asked: after,
                oldest: oldest_kept,
            }));
        }
        let mut out = Vec::new();
        for r in self
            .sm
            .range(keys::revision(after + 1)..keys::revision(u64::MAX))
        {
            let (k, v) = r?;
            if !k.starts_with(keys::REVISION) {
                break;
            }
            let revision =
                u64::from_be_bytes(k[keys::REVISION.len()..].try_into().unwrap_or([0; 8]));
            out.push(RevisionChanges {
                revision,
                changes: decode(&k, &v)?,
            });
        }
        Ok(Ok(out))
    }
}
