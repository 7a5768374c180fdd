//! Commands: the only way cluster state changes. Each is proposed to Raft and applied by
//! [`apply`], a deterministic function of the command and the current state (time and ids
//! travel inside the command). Nothing is half-applied: `apply` stages every write and the
//! caller commits the staged set atomically, or nothing when the result is an error.

use std::collections::BTreeMap;

use berth_model::{
    ApiError, ArnContext, Cluster, ClusterSetting, Failure, Tag, TaskDefinition, TaskDefinitionSpec,
};
use serde::{Deserialize, Serialize};

use crate::keys;

/// Version of the command encoding this build writes and understands.
pub const COMMAND_VERSION: u32 = 1;

/// What goes into the Raft log: a versioned command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub v: u32,
    pub command: Command,
}

impl Request {
    pub fn new(command: Command) -> Self {
        Request {
            v: COMMAND_VERSION,
            command,
        }
    }
}

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "v{} {}", self.v, self.command.name())
    }
}

/// The resource a tag operation targets, resolved from its ARN by the API layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum TagTarget {
    Cluster { name: String },
    TaskDefinition { family: String, revision: u32 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum Command {
    /// Create a cluster, or return the existing ACTIVE one of that name (ECS is idempotent here).
    #[serde(rename_all = "camelCase")]
    CreateCluster { cluster: Cluster, tags: Vec<Tag> },
    #[serde(rename_all = "camelCase")]
    UpdateCluster {
        name: String,
        settings: Option<Vec<ClusterSetting>>,
        configuration: Option<serde_json::Value>,
        service_connect_defaults: Option<serde_json::Value>,
    },
    #[serde(rename_all = "camelCase")]
    DeleteCluster { name: String },
    /// Register the next revision of a family. The revision is chosen here, in apply.
    #[serde(rename_all = "camelCase")]
    RegisterTaskDefinition {
        ctx: ArnContext,
        spec: TaskDefinitionSpec,
        registered_at: f64,
        registered_by: String,
    },
    #[serde(rename_all = "camelCase")]
    DeregisterTaskDefinition {
        family: String,
        revision: u32,
        at: f64,
    },
    #[serde(rename_all = "camelCase")]
    DeleteTaskDefinitions {
        ctx: ArnContext,
        items: Vec<(String, u32)>,
        at: f64,
    },
    #[serde(rename_all = "camelCase")]
    TagResource {
        arn: String,
        target: TagTarget,
        tags: Vec<Tag>,
    },
    #[serde(rename_all = "camelCase")]
    UntagResource {
        arn: String,
        target: TagTarget,
        keys: Vec<String>,
    },
}

impl Command {
    pub fn name(&self) -> &'static str {
        match self {
            Command::CreateCluster { .. } => "CreateCluster",
            Command::UpdateCluster { .. } => "UpdateCluster",
            Command::DeleteCluster { .. } => "DeleteCluster",
            Command::RegisterTaskDefinition { .. } => "RegisterTaskDefinition",
            Command::DeregisterTaskDefinition { .. } => "DeregisterTaskDefinition",
            Command::DeleteTaskDefinitions { .. } => "DeleteTaskDefinitions",
            Command::TagResource { .. } => "TagResource",
            Command::UntagResource { .. } => "UntagResource",
        }
    }
}

/// The result of applying one command, returned to the proposer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "r", rename_all = "camelCase")]
pub enum Response {
    #[default]
    Ok,
    Cluster {
        cluster: Box<Cluster>,
    },
    #[serde(rename_all = "camelCase")]
    TaskDefinition {
        task_definition: Box<TaskDefinition>,
        tags: Vec<Tag>,
    },
    #[serde(rename_all = "camelCase")]
    TaskDefinitions {
        task_definitions: Vec<TaskDefinition>,
        failures: Vec<Failure>,
    },
    /// A deterministic refusal: nothing was written.
    Error {
        error: ApiError,
    },
}

/// One changed object, recorded per revision for watchers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Change {
    Cluster { name: String },
    TaskDefinition { family: String, revision: u32 },
    Tags { arn: String },
    Membership,
}

/// Family bookkeeping that outlives every revision: revisions are never reused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FamilyMeta {
    pub max_revision: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("corrupt value under key {key}: {source}")]
    Corrupt {
        key: String,
        source: serde_json::Error,
    },
    #[error("encode: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Read access to state (the sled tree in production, a map in tests).
pub trait KvRead {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
}

impl KvRead for sled::Tree {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(sled::Tree::get(self, key)?.map(|v| v.to_vec()))
    }
}

impl KvRead for BTreeMap<Vec<u8>, Vec<u8>> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(BTreeMap::get(self, key).cloned())
    }
}

/// Writes staged over a read view; reads see staged writes first.
pub struct Staged<'a, R: KvRead + ?Sized> {
    base: &'a R,
    pub writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    pub changes: Vec<Change>,
}

impl<'a, R: KvRead + ?Sized> Staged<'a, R> {
    pub fn new(base: &'a R) -> Self {
        Staged {
            base,
            writes: BTreeMap::new(),
            changes: Vec::new(),
        }
    }

    fn get_raw(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.writes.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.base.get(key),
        }
    }

    pub fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        match self.get_raw(key)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|source| StoreError::Corrupt {
                    key: String::from_utf8_lossy(key).into_owned(),
                    source,
                }),
        }
    }

    pub fn put_json<T: Serialize>(&mut self, key: Vec<u8>, value: &T) -> Result<(), StoreError> {
        self.writes.insert(key, Some(serde_json::to_vec(value)?));
        Ok(())
    }

    pub fn delete(&mut self, key: Vec<u8>) {
        self.writes.insert(key, None);
    }
}

/// Applies `cmd` to the staged view. On `Response::Error` the caller must discard the staged
/// writes (apply never stages anything before it has decided to succeed, but the contract
/// makes that explicit).
pub fn apply<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    cmd: &Command,
) -> Result<Response, StoreError> {
    match cmd {
        Command::CreateCluster { cluster, tags } => {
            let key = keys::cluster(&cluster.cluster_name.clone().unwrap_or_default());
            if let Some(existing) = st.get_json::<Cluster>(&key)? {
                if existing.status.as_deref() == Some("ACTIVE") {
                    return Ok(Response::Cluster {
                        cluster: Box::new(existing),
                    });
                }
            }
            let arn = cluster.cluster_arn.clone().unwrap_or_default();
            st.put_json(key, cluster)?;
            // A re-created cluster starts with exactly the tags given now.
            if tags.is_empty() {
                st.delete(keys::tags(&arn));
            } else {
                st.put_json(keys::tags(&arn), tags)?;
            }
            st.changes.push(Change::Cluster {
                name: cluster.cluster_name.clone().unwrap_or_default(),
            });
            st.changes.push(Change::Tags { arn });
            Ok(Response::Cluster {
                cluster: Box::new(cluster.clone()),
            })
        }
        Command::UpdateCluster {
            name,
            settings,
            configuration,
            service_connect_defaults,
        } => {
            let key = keys::cluster(name);
            let Some(mut c) = st.get_json::<Cluster>(&key)? else {
                return Ok(err(ApiError::cluster_not_found()));
            };
            if c.status.as_deref() != Some("ACTIVE") {
                return Ok(err(inactive_cluster()));
            }
            if let Some(s) = settings {
                let mut merged = c.settings.clone().unwrap_or_default();
                for new in s {
                    match merged.iter_mut().find(|old| old.name == new.name) {
                        Some(old) => old.value = new.value.clone(),
                        None => merged.push(new.clone()),
                    }
                }
                c.settings = Some(merged);
            }
            if let Some(v) = configuration {
                c.configuration = Some(v.clone());
            }
            if let Some(v) = service_connect_defaults {
                c.service_connect_defaults = Some(v.clone());
            }
            st.put_json(key, &c)?;
            st.changes.push(Change::Cluster { name: name.clone() });
            Ok(Response::Cluster {
                cluster: Box::new(c),
            })
        }
        Command::DeleteCluster { name } => {
            let key = keys::cluster(name);
            let Some(mut c) = st.get_json::<Cluster>(&key)? else {
                return Ok(err(ApiError::cluster_not_found()));
            };
            if c.status.as_deref() != Some("ACTIVE") {
                // Deleting an INACTIVE cluster again answers with it, as ECS does.
                return Ok(Response::Cluster {
                    cluster: Box::new(c),
                });
            }
            // Container instances, services and tasks arrive with later issues; their
            // preconditions (ClusterContains*Exception) are checked here once they exist.
            c.status = Some("INACTIVE".to_string());
            st.put_json(key, &c)?;
            st.changes.push(Change::Cluster { name: name.clone() });
            Ok(Response::Cluster {
                cluster: Box::new(c),
            })
        }
        Command::RegisterTaskDefinition {
            ctx,
            spec,
            registered_at,
            registered_by,
        } => {
            let family = spec.task_definition.family.clone();
            let fkey = keys::family(&family);
            let mut meta: FamilyMeta = st.get_json(&fkey)?.unwrap_or_default();
            let Some(revision) = meta.max_revision.checked_add(1) else {
                return Ok(err(ApiError::client(format!(
                    "Family '{family}' has no revisions left."
                ))));
            };
            meta.max_revision = revision;
            let td = spec
                .clone()
                .into_registered(ctx, revision, *registered_at, registered_by);
            let arn = ctx.task_definition(&family, revision);
            st.put_json(fkey, &meta)?;
            st.put_json(keys::task_def(&family, revision), &td)?;
            if !spec.tags.is_empty() {
                st.put_json(keys::tags(&arn), &spec.tags)?;
                st.changes.push(Change::Tags { arn });
            }
            st.changes.push(Change::TaskDefinition { family, revision });
            Ok(Response::TaskDefinition {
                task_definition: Box::new(td),
                tags: spec.tags.clone(),
            })
        }
        Command::DeregisterTaskDefinition {
            family,
            revision,
            at,
        } => {
            let key = keys::task_def(family, *revision);
            let Some(mut td) = st.get_json::<TaskDefinition>(&key)? else {
                return Ok(err(ApiError::client(format!(
                    "The specified task definition does not exist: {family}:{revision}."
                ))));
            };
            if td.status.as_deref() == Some("ACTIVE") {
                td.status = Some("INACTIVE".to_string());
                td.deregistered_at = Some(*at);
                st.put_json(key, &td)?;
                st.changes.push(Change::TaskDefinition {
                    family: family.clone(),
                    revision: *revision,
                });
            }
            Ok(Response::TaskDefinition {
                task_definition: Box::new(td),
                tags: vec![],
            })
        }
        Command::DeleteTaskDefinitions { ctx, items, at } => {
            let mut done = Vec::new();
            let mut failures = Vec::new();
            for (family, revision) in items {
                let arn = ctx.task_definition(family, *revision);
                let key = keys::task_def(family, *revision);
                match st.get_json::<TaskDefinition>(&key)? {
                    None => failures.push(failure(&arn, "TASK_DEFINITION_NOT_FOUND", "The specified task definition does not exist.")),
                    Some(td) if td.status.as_deref() == Some("ACTIVE") => failures.push(failure(
                        &arn,
                        "TASK_DEFINITION_NOT_INACTIVE",
                        "The specified task definition is still ACTIVE. Deregister it before deleting it.",
                    )),
                    Some(mut td) => {
                        if td.status.as_deref() != Some("DELETE_IN_PROGRESS") {
                            td.status = Some("DELETE_IN_PROGRESS".to_string());
                            td.delete_requested_at = Some(*at);
                            st.put_json(key, &td)?;
                            st.delete(keys::tags(&arn));
                            st.changes.push(Change::TaskDefinition { family: family.clone(), revision: *revision });
                        }
                        done.push(td);
                    }
                }
            }
            Ok(Response::TaskDefinitions {
                task_definitions: done,
                failures,
            })
        }
        Command::TagResource { arn, target, tags } => {
            if let Some(e) = check_tag_target(st, target)? {
                return Ok(err(e));
            }
            let key = keys::tags(arn);
            let mut current: Vec<Tag> = st.get_json(&key)?.unwrap_or_default();
            for t in tags {
                match current.iter_mut().find(|c| c.key == t.key) {
                    Some(c) => c.value = t.value.clone(),
                    None => current.push(t.clone()),
                }
            }
            if current.len() > 50 {
                return Ok(err(ApiError::invalid(format!(
                    "Resource {arn} would have {} tags; at most 50 are allowed.",
                    current.len()
                ))));
            }
            st.put_json(key, &current)?;
            st.changes.push(Change::Tags { arn: arn.clone() });
            Ok(Response::Ok)
        }
        Command::UntagResource {
            arn,
            target,
            keys: tag_keys,
        } => {
            if let Some(e) = check_tag_target(st, target)? {
                return Ok(err(e));
            }
            let key = keys::tags(arn);
            let mut current: Vec<Tag> = st.get_json(&key)?.unwrap_or_default();
            current.retain(|t| !tag_keys.contains(&t.key));
            if current.is_empty() {
                st.delete(key);
            } else {
                st.put_json(key, &current)?;
            }
            st.changes.push(Change::Tags { arn: arn.clone() });
            Ok(Response::Ok)
        }
    }
}

fn err(error: ApiError) -> Response {
    Response::Error { error }
}

fn failure(arn: &str, reason: &str, detail: &str) -> Failure {
    Failure {
        arn: Some(arn.to_string()),
        reason: Some(reason.to_string()),
        detail: Some(detail.to_string()),
    }
}

pub fn inactive_cluster() -> ApiError {
    ApiError::invalid("The specified cluster is inactive. Specify an active cluster and try again.")
}

fn check_tag_target<R: KvRead + ?Sized>(
    st: &Staged<'_, R>,
    target: &TagTarget,
) -> Result<Option<ApiError>, StoreError> {
    Ok(match target {
        TagTarget::Cluster { name } => match st.get_json::<Cluster>(&keys::cluster(name))? {
            None => Some(ApiError::cluster_not_found()),
            Some(c) if c.status.as_deref() != Some("ACTIVE") => Some(inactive_cluster()),
            Some(_) => None,
        },
        TagTarget::TaskDefinition { family, revision } => {
            match st.get_json::<TaskDefinition>(&keys::task_def(family, *revision))? {
                Some(td) if td.status.as_deref() != Some("DELETE_IN_PROGRESS") => None,
                _ => Some(ApiError::new(
                    berth_model::ErrorKind::ResourceNotFoundException,
                    format!(
                        "The specified resource was not found: task-definition/{family}:{revision}"
                    ),
                )),
            }
        }
    })
}
