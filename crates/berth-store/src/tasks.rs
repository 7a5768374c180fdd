//! Container instances and tasks: the apply functions of their commands, and the reads
//! (remaining resources, counts) shared by the state machine and [`crate::StateReader`].
//!
//! Everything here is deterministic: time arrives in the command, ids are chosen by the
//! API layer (tasks) or the agent (instances).

use std::collections::{BTreeMap, BTreeSet};

use berth_model::agent::{Hello, TaskReport};
use berth_model::{
    task_id_from_arn, task_status_rank, ApiError, ArnContext, Attachment, Attribute, Cluster,
    ContainerInstance, ContainerInstanceRecord, ErrorKind, Failure, KeyValuePair, Remaining,
    Resource, Task, TaskRecord, VersionInfo,
};
use serde::{Deserialize, Serialize};

use crate::command::{err, inactive_cluster, Change, NewTask, Response};
use crate::keys::{self, TaskIndexKind};
use crate::kv::{get_json, scan_json, KvRead, Staged, StoreError};

/// At most this many custom attributes per container instance (ECS's limit).
pub const MAX_CUSTOM_ATTRIBUTES: usize = 10;

/// A RunTask client token: the tasks it created, and when (for purging).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ClientTokenRecord {
    pub task_ids: Vec<String>,
    pub at: f64,
}

// ---------------------------------------------------------------- reads

/// A stored instance as stored (without remaining resources and counts).
pub fn load_instance<R: KvRead + ?Sized>(
    kv: &R,
    cluster: &str,
    id: &str,
) -> Result<Option<ContainerInstanceRecord>, StoreError> {
    get_json(kv, &keys::instance(cluster, id))
}

pub fn load_task<R: KvRead + ?Sized>(
    kv: &R,
    cluster: &str,
    id: &str,
) -> Result<Option<TaskRecord>, StoreError> {
    get_json(kv, &keys::task(cluster, id))
}

/// Task ids in one index, in id order.
pub fn task_ids_by<R: KvRead + ?Sized>(
    kv: &R,
    cluster: &str,
    kind: TaskIndexKind,
    value: &str,
) -> Result<Vec<String>, StoreError> {
    let prefix = keys::task_index_prefix(cluster, kind, value);
    Ok(kv
        .scan_prefix(&prefix)?
        .into_iter()
        .map(|(k, _)| String::from_utf8_lossy(&k[prefix.len()..]).into_owned())
        .collect())
}

/// Tasks in one index, in id order.
pub fn tasks_by<R: KvRead + ?Sized>(
    kv: &R,
    cluster: &str,
    kind: TaskIndexKind,
    value: &str,
) -> Result<Vec<TaskRecord>, StoreError> {
    let mut out = Vec::new();
    for id in task_ids_by(kv, cluster, kind, value)? {
        if let Some(t) = load_task(kv, cluster, &id)? {
            out.push(t);
        }
    }
    Ok(out)
}

/// Every task on an instance that the store still keeps (STOPPED ones included).
pub fn tasks_on_instance<R: KvRead + ?Sized>(
    kv: &R,
    cluster: &str,
    instance_id: &str,
) -> Result<Vec<TaskRecord>, StoreError> {
    tasks_by(kv, cluster, TaskIndexKind::Instance, instance_id)
}

pub fn tasks_of_cluster<R: KvRead + ?Sized>(
    kv: &R,
    cluster: &str,
) -> Result<Vec<TaskRecord>, StoreError> {
    scan_json(kv, &keys::task_prefix(cluster))
}

pub fn instances_of_cluster<R: KvRead + ?Sized>(
    kv: &R,
    cluster: &str,
) -> Result<Vec<ContainerInstanceRecord>, StoreError> {
    scan_json(kv, &keys::instance_prefix(cluster))
}

/// Fills in the computed members of an instance: `remainingResources`,
/// `runningTasksCount`, `pendingTasksCount`.
pub fn decorate(instance: &mut ContainerInstance, tasks: &[TaskRecord]) {
    instance.remaining_resources = Remaining::of(instance, tasks).resources();
    instance.running_tasks_count =
        tasks.iter().filter(|t| t.task.counts_as_running()).count() as i64;
    instance.pending_tasks_count =
        tasks.iter().filter(|t| t.task.counts_as_pending()).count() as i64;
}

/// An instance with its computed members filled in.
pub fn decorated_instance<R: KvRead + ?Sized>(
    kv: &R,
    cluster: &str,
    mut rec: ContainerInstanceRecord,
) -> Result<ContainerInstanceRecord, StoreError> {
    let tasks = tasks_on_instance(kv, cluster, rec.id())?;
    decorate(&mut rec.instance, &tasks);
    Ok(rec)
}

/// `registeredContainerInstancesCount`, `runningTasksCount`, `pendingTasksCount` of a cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterCounts {
    pub registered_container_instances: i64,
    pub running_tasks: i64,
    pub pending_tasks: i64,
    /// ACTIVE services (`activeServicesCount`); filled in by [`crate::services`].
    pub active_services: i64,
    /// DRAINING services (for the cluster statistics).
    pub draining_services: i64,
}

pub fn cluster_counts<R: KvRead + ?Sized>(
    kv: &R,
    cluster: &str,
) -> Result<ClusterCounts, StoreError> {
    let mut c = ClusterCounts::default();
    for i in instances_of_cluster(kv, cluster)? {
        if matches!(i.status(), "ACTIVE" | "DRAINING") {
            c.registered_container_instances += 1;
        }
    }
    // Running and pending tasks all want to run; stopped ones are never counted.
    for t in tasks_by(kv, cluster, TaskIndexKind::DesiredStatus, "RUNNING")? {
        if t.task.counts_as_running() {
            c.running_tasks += 1;
        }
        if t.task.counts_as_pending() {
            c.pending_tasks += 1;
        }
    }
    // A task being stopped may still be pending (it never started).
    for t in tasks_by(kv, cluster, TaskIndexKind::DesiredStatus, "STOPPED")? {
        if t.task.counts_as_pending() {
            c.pending_tasks += 1;
        }
    }
    Ok(c)
}

// ---------------------------------------------------------------- writes

fn family_of(task: &Task) -> String {
    // `…:task-definition/{family}:{revision}`
    let arn = task.task_definition_arn.as_deref().unwrap_or("");
    let fr = arn.rsplit('/').next().unwrap_or(arn);
    fr.rsplit_once(':')
        .map(|(f, _)| f)
        .unwrap_or(fr)
        .to_string()
}

fn index_entries(cluster: &str, rec: &TaskRecord) -> Vec<Vec<u8>> {
    let id = rec.task.id();
    let mut v = vec![
        keys::task_index(cluster, TaskIndexKind::Instance, &rec.instance_id, id),
        keys::task_index(cluster, TaskIndexKind::Family, &family_of(&rec.task), id),
        keys::task_index(
            cluster,
            TaskIndexKind::DesiredStatus,
            rec.task.desired_status(),
            id,
        ),
    ];
    if let Some(s) = &rec.task.started_by {
        v.push(keys::task_index(cluster, TaskIndexKind::StartedBy, s, id));
    }
    if let Some(g) = &rec.task.group {
        v.push(keys::task_index(cluster, TaskIndexKind::Group, g, id));
    }
    v
}

/// Writes a task and keeps its indexes in step with `old` (its previous version). The
/// load balancer wiring runs here, so that every path that moves a task sees it: a
/// service task reaching RUNNING registers its targets, one reaching STOPPED drains them
/// (see [`crate::elb::on_task_write`]).
pub(crate) fn put_task<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    cluster: &str,
    old: Option<&TaskRecord>,
    new: &TaskRecord,
    at: f64,
) -> Result<(), StoreError> {
    let mut new = new.clone();
    crate::elb::on_task_write(st, cluster, old, &mut new, at)?;
    let new = &new;
    let new_idx = index_entries(cluster, new);
    if let Some(old) = old {
        for k in index_entries(cluster, old) {
            if !new_idx.contains(&k) {
                st.delete(k);
            }
        }
    }
    for k in new_idx {
        st.writes.insert(k, Some(Vec::new()));
    }
    st.put_json(keys::task(cluster, new.task.id()), new)?;
    st.changes.push(Change::Task {
        cluster: cluster.to_string(),
        id: new.task.id().to_string(),
        instance_id: new.instance_id.clone(),
    });
    Ok(())
}

fn put_instance<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    cluster: &str,
    rec: &ContainerInstanceRecord,
) -> Result<(), StoreError> {
    st.put_json(keys::instance(cluster, rec.id()), rec)?;
    st.changes.push(Change::ContainerInstance {
        cluster: cluster.to_string(),
        id: rec.id().to_string(),
    });
    Ok(())
}

/// The cluster, which must exist and be ACTIVE (an unknown one is
/// `ClusterNotFoundException`, an INACTIVE one the ECS "inactive" message).
fn active_cluster<R: KvRead + ?Sized>(
    st: &Staged<'_, R>,
    cluster: &str,
) -> Result<Result<Cluster, ApiError>, StoreError> {
    Ok(match st.get_json::<Cluster>(&keys::cluster(cluster))? {
        None => Err(ApiError::cluster_not_found()),
        Some(c) if c.status.as_deref() != Some("ACTIVE") => Err(inactive_cluster()),
        Some(c) => Ok(c),
    })
}

/// `arn:…:cluster/{name}` → `arn:…:{kind}/{name}/{id}`.
fn arn_in_cluster(cluster: &Cluster, kind: &str, id: &str) -> String {
    let carn = cluster.cluster_arn.as_deref().unwrap_or("");
    match carn.split_once(":cluster/") {
        Some((prefix, name)) => format!("{prefix}:{kind}/{name}/{id}"),
        None => id.to_string(),
    }
}

fn failure(arn: String, reason: &str) -> Failure {
    Failure {
        arn: Some(arn),
        reason: Some(reason.to_string()),
        detail: None,
    }
}

/// Merges `extra` into `base` by name (later wins), keeping first-seen order.
fn merge_attributes(base: &mut Vec<Attribute>, extra: &[Attribute]) {
    for a in extra {
        match base.iter_mut().find(|b| b.name == a.name) {
            Some(b) => b.value = a.value.clone(),
            None => base.push(Attribute {
                name: a.name.clone(),
                value: a.value.clone(),
                target_type: None,
                target_id: None,
            }),
        }
    }
}

/// Why a deregistered instance's agent is refused.
pub fn deregistered_message(cluster: &str, id: &str) -> String {
    format!("container instance {id} was deregistered from cluster {cluster}: its agent cannot rejoin as it; to add this machine again, start its agent with a new --data-dir (a new instance id)")
}

pub(crate) fn register_container_instance<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    ctx: &ArnContext,
    hello: &Hello,
    at: f64,
    token: Option<&str>,
) -> Result<Response, StoreError> {
    let cluster = hello.cluster.as_str();
    match st.get_json::<Cluster>(&keys::cluster(cluster))? {
        Some(c) if c.status.as_deref() == Some("ACTIVE") => {}
        _ => return Ok(err(ApiError::cluster_not_found())),
    }
    let id = hello.instance_id.as_str();
    if id.is_empty() {
        return Ok(err(ApiError::invalid(
            "The agent sent an empty instance id.",
        )));
    }
    let existing = load_instance(st, cluster, id)?;
    if existing.as_ref().is_some_and(|e| e.status() == "INACTIVE") {
        // As ECS: a deregistered instance's agent does not come back under its old
        // identity; the machine joins again as a new instance (a new agent data dir).
        return Ok(err(ApiError::new(
            ErrorKind::AccessDeniedException,
            deregistered_message(cluster, id),
        )));
    }
    // Reconnecting: registered and presenting the token it joined with. Anything else
    // is a machine joining anew, within its token's limits.
    let rejoining = |t: &str| {
        existing
            .as_ref()
            .is_some_and(|e| crate::tokens::joined_with(e) == t)
    };
    let join_token_id = match token {
        Some(t) if !rejoining(t) => {
            if let Err(e) = crate::tokens::consume(st, t, berth_model::token::TokenKind::Agent, at)?
            {
                return Ok(err(ApiError::new(ErrorKind::AccessDeniedException, e)));
            }
            Some(t.to_string())
        }
        Some(t) => Some(t.to_string()),
        None => existing.as_ref().and_then(|e| e.join_token_id.clone()),
    };
    let custom = existing
        .as_ref()
        .map(|e| e.custom_attributes.clone())
        .unwrap_or_default();
    let (status, registered_at) = match &existing {
        Some(e) if e.status() != "INACTIVE" => (
            if e.status() == "DRAINING" {
                "DRAINING"
            } else {
                "ACTIVE"
            },
            e.instance.registered_at.unwrap_or(at),
        ),
        _ => ("ACTIVE", at),
    };
    let mut attributes = Vec::new();
    merge_attributes(&mut attributes, &hello.attributes);
    merge_attributes(&mut attributes, &custom);
    let r = &hello.resources;
    let instance = ContainerInstance {
        container_instance_arn: Some(ctx.container_instance(cluster, id)),
        ec2_instance_id: Some(id.to_string()),
        version: existing.as_ref().map(|e| e.instance.version).unwrap_or(0) + 1,
        version_info: Some(VersionInfo {
            agent_version: Some(hello.agent_version.clone()),
            agent_hash: None,
            docker_version: Some(hello.runtime_version.clone()),
        }),
        registered_resources: vec![
            Resource::integer("CPU", r.cpu),
            Resource::integer("MEMORY", r.memory),
            Resource::ports("PORTS", &r.ports),
            Resource::ports("PORTS_UDP", &r.ports_udp),
        ],
        status: Some(status.to_string()),
        agent_connected: Some(true),
        attributes,
        registered_at: Some(registered_at),
        ..Default::default()
    };
    let rec = ContainerInstanceRecord {
        instance,
        host_ip: hello.host_ip.clone(),
        hostname: hello.hostname.clone(),
        last_seen: at,
        custom_attributes: custom,
        join_token_id,
    };
    put_instance(st, cluster, &rec)?;
    if existing.as_ref().is_some_and(|e| e.host_ip != rec.host_ip) {
        crate::elb::instance_address_changed(st, id, &rec.host_ip)?;
    }
    let rec = decorated_instance(st, cluster, rec)?;
    Ok(Response::ContainerInstance {
        container_instance: Box::new(rec.instance),
    })
}

pub(crate) fn set_agent_connected<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    cluster: &str,
    instance_id: &str,
    connected: bool,
    at: f64,
) -> Result<Response, StoreError> {
    let Some(mut rec) = load_instance(st, cluster, instance_id)? else {
        return Ok(Response::Ok);
    };
    if rec.status() == "INACTIVE" {
        return Ok(Response::Ok);
    }
    if rec.instance.agent_connected != Some(connected) {
        rec.instance.agent_connected = Some(connected);
        rec.instance.version += 1;
    }
    rec.last_seen = at;
    put_instance(st, cluster, &rec)?;
    Ok(Response::Ok)
}

fn rank(s: Option<&str>) -> Option<usize> {
    s.and_then(task_status_rank)
}

/// Container statuses move PENDING → RUNNING → STOPPED only.
fn container_rank(s: Option<&str>) -> usize {
    match s {
        Some("RUNNING") => 1,
        Some("STOPPED") => 2,
        _ => 0,
    }
}

fn set_once(slot: &mut Option<f64>, v: Option<f64>) {
    if slot.is_none() {
        *slot = v;
    }
}

/// A deterministic attachment id for a task's network interface.
fn attachment_id(task_id: &str) -> String {
    let h = format!("{task_id:0<32}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn apply_report(rec: &mut TaskRecord, r: &TaskReport, at: f64) {
    let t = &mut rec.task;
    if let Some(new) = task_status_rank(&r.last_status) {
        if rank(t.last_status.as_deref()).is_none_or(|cur| new > cur) {
            t.last_status = Some(r.last_status.clone());
        }
    }
    let stopped = t.last_status() == "STOPPED";
    for cr in &r.containers {
        let Some(c) = t
            .containers
            .iter_mut()
            .find(|c| c.name.as_deref() == Some(cr.name.as_str()))
        else {
            continue;
        };
        if cr.runtime_id.is_some() {
            c.runtime_id = cr.runtime_id.clone();
        }
        if cr.image_digest.is_some() {
            c.image_digest = cr.image_digest.clone();
        }
        if container_rank(Some(&cr.last_status)) >= container_rank(c.last_status.as_deref()) {
            c.last_status = Some(cr.last_status.clone());
        }
        if cr.exit_code.is_some() {
            c.exit_code = cr.exit_code;
        }
        if cr.reason.is_some() {
            c.reason = cr.reason.clone();
        }
        if !cr.network_bindings.is_empty() {
            c.network_bindings = Some(cr.network_bindings.clone());
        }
        if !cr.network_interfaces.is_empty() {
            c.network_interfaces = Some(cr.network_interfaces.clone());
        }
        if cr.health_status.is_some() {
            c.health_status = cr.health_status.clone();
        }
    }
    if stopped {
        for c in &mut t.containers {
            c.last_status = Some("STOPPED".into());
        }
    }
    if r.health_status.is_some() {
        t.health_status = r.health_status.clone();
    }
    set_once(&mut t.pull_started_at, r.pull_started_at);
    set_once(&mut t.pull_stopped_at, r.pull_stopped_at);
    set_once(&mut t.started_at, r.started_at);
    set_once(&mut t.execution_stopped_at, r.execution_stopped_at);
    if t.connectivity.as_deref() != Some("CONNECTED") {
        t.connectivity = Some("CONNECTED".into());
        t.connectivity_at = Some(at);
    }
    if rec.network_mode.as_deref() == Some("awsvpc") {
        if let Some(ip) = &r.private_ipv4_address {
            let aid = attachment_id(t.task_arn.as_deref().map(task_id_from_arn).unwrap_or(""));
            t.attachments = Some(vec![Attachment {
                id: Some(aid.clone()),
                r#type: Some("ElasticNetworkInterface".into()),
                status: Some(if stopped { "DELETED" } else { "ATTACHED" }.into()),
                details: Some(vec![KeyValuePair {
                    name: Some("privateIPv4Address".into()),
                    value: Some(ip.clone()),
                }]),
            }]);
            for c in &mut t.containers {
                if c.network_interfaces.as_ref().is_none_or(|v| v.is_empty()) {
                    c.network_interfaces = Some(vec![berth_model::NetworkInterface {
                        attachment_id: Some(aid.clone()),
                        private_ipv4_address: Some(ip.clone()),
                        ipv6_address: None,
                    }]);
                }
            }
        }
    }
    if stopped {
        t.desired_status = Some("STOPPED".into());
        set_once(&mut t.stopping_at, Some(at));
        set_once(&mut t.stopped_at, Some(at));
        set_once(&mut t.execution_stopped_at, Some(at));
        if t.stop_code.is_none() && t.stopped_reason.is_none() {
            t.stop_code = r.stop_code.clone();
            t.stopped_reason = r.stopped_reason.clone();
        }
    }
}

pub(crate) fn report_tasks<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    cluster: &str,
    instance_id: &str,
    reports: &[TaskReport],
    at: f64,
) -> Result<Response, StoreError> {
    for r in reports {
        let id = task_id_from_arn(&r.task_arn);
        let Some(old) = load_task(st, cluster, id)? else {
            continue;
        };
        if old.instance_id != instance_id || r.seq <= old.reported_seq {
            continue;
        }
        let mut new = old.clone();
        apply_report(&mut new, r, at);
        new.reported_seq = r.seq;
        if new.task != old.task {
            new.task.version += 1;
        }
        put_task(st, cluster, Some(&old), &new, at)?;
    }
    Ok(Response::Ok)
}

fn with_tags<R: KvRead + ?Sized>(kv: &R, mut t: Task) -> Result<Task, StoreError> {
    let tags: Vec<berth_model::Tag> =
        get_json(kv, &keys::tags(t.task_arn.as_deref().unwrap_or("")))?.unwrap_or_default();
    t.tags = (!tags.is_empty()).then_some(tags);
    Ok(t)
}

pub(crate) fn run_tasks<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    ctx: &ArnContext,
    cluster: &str,
    tasks: &[NewTask],
    client_token: Option<&str>,
    at: f64,
) -> Result<Response, StoreError> {
    let c = match active_cluster(st, cluster)? {
        Ok(c) => c,
        Err(e) => return Ok(err(e)),
    };
    if let Some(token) = client_token {
        if let Some(prev) = st.get_json::<ClientTokenRecord>(&keys::client_token(cluster, token))? {
            let mut out = Vec::new();
            for id in &prev.task_ids {
                if let Some(t) = load_task(st, cluster, id)? {
                    out.push(with_tags(st, t.task)?);
                }
            }
            return Ok(Response::Tasks {
                tasks: out,
                failures: vec![],
            });
        }
    }
    let mut created = Vec::new();
    let mut failures = Vec::new();
    for nt in tasks {
        let iarn = arn_in_cluster(&c, "container-instance", &nt.instance_id);
        let Some(inst) = load_instance(st, cluster, &nt.instance_id)? else {
            failures.push(failure(iarn, "MISSING"));
            continue;
        };
        if inst.status() != "ACTIVE" {
            failures.push(failure(iarn, "INACTIVE"));
            continue;
        }
        if !inst.agent_connected() {
            failures.push(failure(iarn, "AGENT"));
            continue;
        }
        if load_task(st, cluster, &nt.task_id)?.is_some() {
            return Ok(err(ApiError::server(format!(
                "task id {} is already taken; retry the request",
                nt.task_id
            ))));
        }
        let on = tasks_on_instance(st, cluster, &nt.instance_id)?;
        if let Some(why) = Remaining::of(&inst.instance, &on).misfit(&nt.reservation) {
            failures.push(failure(iarn, why));
            continue;
        }
        let task_arn = ctx.task(cluster, &nt.task_id);
        let containers = nt
            .containers
            .iter()
            .cloned()
            .map(|mut ct| {
                ct.task_arn = Some(task_arn.clone());
                ct.last_status = Some("PENDING".into());
                ct
            })
            .collect();
        let task = Task {
            task_arn: Some(task_arn.clone()),
            cluster_arn: c.cluster_arn.clone(),
            task_definition_arn: Some(nt.task_definition_arn.clone()),
            container_instance_arn: inst.instance.container_instance_arn.clone(),
            containers,
            cpu: nt.cpu.clone(),
            memory: nt.memory.clone(),
            created_at: Some(at),
            desired_status: Some("RUNNING".into()),
            last_status: Some("PROVISIONING".into()),
            group: Some(nt.group.clone()),
            started_by: nt.started_by.clone(),
            launch_type: Some(nt.launch_type.clone()),
            overrides: Some(nt.overrides.clone()),
            enable_execute_command: Some(nt.enable_execute_command),
            attributes: None,
            health_status: Some("UNKNOWN".into()),
            version: 1,
            availability_zone: inst
                .instance
                .attribute("ecs.availability-zone")
                .flatten()
                .map(str::to_string),
            ..Default::default()
        };
        let rec = TaskRecord {
            task,
            instance_id: nt.instance_id.clone(),
            reported_seq: 0,
            reserved: nt.reservation.clone(),
            network_mode: nt.network_mode.clone(),
            drain_until: None,
        };
        put_task(st, cluster, None, &rec, at)?;
        if !nt.tags.is_empty() {
            st.put_json(keys::tags(&task_arn), &nt.tags)?;
            st.changes.push(Change::Tags {
                arn: task_arn.clone(),
            });
        }
        let mut answer = rec.task.clone();
        answer.tags = (!nt.tags.is_empty()).then(|| nt.tags.clone());
        created.push(answer);
    }
    if let Some(token) = client_token {
        let ids = created.iter().map(|t| t.id().to_string()).collect();
        st.put_json(
            keys::client_token(cluster, token),
            &ClientTokenRecord { task_ids: ids, at },
        )?;
    }
    Ok(Response::Tasks {
        tasks: created,
        failures,
    })
}

/// Marks a task STOPPED on the server's own authority (its agent is gone).
fn stop_now(t: &mut Task, at: f64) {
    t.last_status = Some("STOPPED".into());
    t.desired_status = Some("STOPPED".into());
    set_once(&mut t.stopping_at, Some(at));
    set_once(&mut t.execution_stopped_at, Some(at));
    set_once(&mut t.stopped_at, Some(at));
    for c in &mut t.containers {
        c.last_status = Some("STOPPED".into());
    }
}

pub(crate) fn stop_task<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    cluster: &str,
    task_id: &str,
    reason: &str,
    stop_code: &str,
    at: f64,
) -> Result<Response, StoreError> {
    if st.get_json::<Cluster>(&keys::cluster(cluster))?.is_none() {
        return Ok(err(ApiError::cluster_not_found()));
    }
    let Some(old) = load_task(st, cluster, task_id)? else {
        return Ok(err(ApiError::invalid("The referenced task was not found.")));
    };
    if old.task.desired_status() == "STOPPED" {
        return Ok(Response::Task {
            task: Box::new(old.task),
        });
    }
    let mut new = old.clone();
    let t = &mut new.task;
    t.desired_status = Some("STOPPED".into());
    t.stopping_at = Some(at);
    t.stopped_reason = Some(reason.to_string());
    t.stop_code = Some(stop_code.to_string());
    let instance_gone = match load_instance(st, cluster, &old.instance_id)? {
        None => true,
        Some(i) => i.status() == "INACTIVE",
    };
    if instance_gone {
        stop_now(t, at);
    } else if let Some(until) = crate::elb::begin_task_drain(st, cluster, task_id, at)? {
        // Its targets drain first (ECS's DEACTIVATING); the agent keeps it running until
        // the ElbSweep at `until` clears `drain_until`.
        new.drain_until = Some(until);
        if new.task.last_status() == "RUNNING" {
            new.task.last_status = Some("DEACTIVATING".into());
        }
    }
    let t = &mut new.task;
    t.version += 1;
    put_task(st, cluster, Some(&old), &new, at)?;
    Ok(Response::Task {
        task: Box::new(new.task),
    })
}

/// A lost machine: every task on it that is not STOPPED yet stops now, on the server's
/// authority (desired and last status STOPPED, containers too), releasing what it held.
/// A stop reason given earlier (by a user or the scheduler) is kept. When the agent comes
/// back it finds the tasks gone from its desired set and stops them; its later reports
/// cannot move them back (reports never lower a status).
pub(crate) fn stop_instance_tasks<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    cluster: &str,
    instance_id: &str,
    reason: &str,
    stop_code: &str,
    at: f64,
) -> Result<Response, StoreError> {
    if st.get_json::<Cluster>(&keys::cluster(cluster))?.is_none() {
        return Ok(err(ApiError::cluster_not_found()));
    }
    for old in tasks_on_instance(st, cluster, instance_id)? {
        if old.task.last_status() == "STOPPED" {
            continue;
        }
        let mut new = old.clone();
        let t = &mut new.task;
        if t.stopped_reason.is_none() && t.stop_code.is_none() {
            t.stopped_reason = Some(reason.to_string());
            t.stop_code = Some(stop_code.to_string());
        }
        stop_now(t, at);
        t.version += 1;
        put_task(st, cluster, Some(&old), &new, at)?;
    }
    Ok(Response::Ok)
}

pub(crate) fn deregister_container_instance<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    cluster: &str,
    instance_id: &str,
    force: bool,
    at: f64,
) -> Result<Response, StoreError> {
    if st.get_json::<Cluster>(&keys::cluster(cluster))?.is_none() {
        return Ok(err(ApiError::cluster_not_found()));
    }
    let Some(mut rec) = load_instance(st, cluster, instance_id)? else {
        return Ok(err(ApiError::invalid(format!(
            "Container instance not found: {instance_id}"
        ))));
    };
    if rec.status() == "INACTIVE" {
        let rec = decorated_instance(st, cluster, rec)?;
        return Ok(Response::ContainerInstance {
            container_instance: Box::new(rec.instance),
        });
    }
    let tasks = tasks_on_instance(st, cluster, instance_id)?;
    let running: Vec<&TaskRecord> = tasks
        .iter()
        .filter(|t| t.task.desired_status() == "RUNNING")
        .collect();
    if !running.is_empty() && !force {
        return Ok(err(ApiError::invalid(
            "Found running tasks on the instance.",
        )));
    }
    // With force the tasks are orphaned: no agent will report on them again, so they
    // are stopped here (and stop holding the instance's resources).
    for old in tasks.iter().filter(|t| t.task.last_status() != "STOPPED") {
        let mut new = (*old).clone();
        if new.task.stopped_reason.is_none() {
            new.task.stopped_reason =
                Some("Container instance deregistered while the task was running".into());
            new.task.stop_code = Some("UserInitiated".into());
        }
        stop_now(&mut new.task, at);
        new.task.version += 1;
        put_task(st, cluster, Some(old), &new, at)?;
    }
    rec.instance.status = Some("INACTIVE".into());
    rec.instance.agent_connected = Some(false);
    rec.instance.version += 1;
    put_instance(st, cluster, &rec)?;
    let rec = decorated_instance(st, cluster, rec)?;
    Ok(Response::ContainerInstance {
        container_instance: Box::new(rec.instance),
    })
}

pub(crate) fn update_container_instances_state<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    cluster: &str,
    instance_ids: &[String],
    status: &str,
    _at: f64,
) -> Result<Response, StoreError> {
    if !matches!(status, "ACTIVE" | "DRAINING") {
        return Ok(err(ApiError::invalid(format!(
            "Invalid status '{status}'. Container instances can only be set to ACTIVE or DRAINING."
        ))));
    }
    let c = match st.get_json::<Cluster>(&keys::cluster(cluster))? {
        Some(c) => c,
        None => return Ok(err(ApiError::cluster_not_found())),
    };
    let mut out = Vec::new();
    let mut failures = Vec::new();
    for id in instance_ids {
        let Some(mut rec) = load_instance(st, cluster, id)? else {
            failures.push(failure(
                arn_in_cluster(&c, "container-instance", id),
                "MISSING",
            ));
            continue;
        };
        if rec.status() == "INACTIVE" {
            failures.push(failure(
                rec.instance
                    .container_instance_arn
                    .clone()
                    .unwrap_or_default(),
                "INACTIVE",
            ));
            continue;
        }
        if rec.status() != status {
            rec.instance.status = Some(status.to_string());
            rec.instance.version += 1;
            put_instance(st, cluster, &rec)?;
        }
        out.push(decorated_instance(st, cluster, rec)?.instance);
    }
    Ok(Response::ContainerInstances {
        container_instances: out,
        failures,
    })
}

fn target_not_found(id: &str) -> ApiError {
    ApiError::new(
        ErrorKind::TargetNotFoundException,
        format!("Could not find the specified target: container-instance {id}."),
    )
}

/// Groups attributes by their target instance, refusing unknown or INACTIVE targets.
#[allow(clippy::type_complexity)]
fn attribute_targets<R: KvRead + ?Sized>(
    st: &Staged<'_, R>,
    cluster: &str,
    attributes: &[Attribute],
) -> Result<Result<BTreeMap<String, (ContainerInstanceRecord, Vec<Attribute>)>, ApiError>, StoreError>
{
    let mut by: BTreeMap<String, (ContainerInstanceRecord, Vec<Attribute>)> = BTreeMap::new();
    for a in attributes {
        let id = a.target_id.clone().unwrap_or_default();
        if !by.contains_key(&id) {
            match load_instance(st, cluster, &id)? {
                Some(rec) if rec.status() != "INACTIVE" => {
                    by.insert(id.clone(), (rec, Vec::new()));
                }
                _ => return Ok(Err(target_not_found(&id))),
            }
        }
        if let Some(entry) = by.get_mut(&id) {
            entry.1.push(a.clone());
        }
    }
    Ok(Ok(by))
}

pub(crate) fn put_attributes<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    cluster: &str,
    attributes: &[Attribute],
) -> Result<Response, StoreError> {
    if let Err(e) = active_cluster(st, cluster)? {
        return Ok(err(e));
    }
    let by = match attribute_targets(st, cluster, attributes)? {
        Ok(b) => b,
        Err(e) => return Ok(err(e)),
    };
    for (id, (mut rec, attrs)) in by {
        merge_attributes(&mut rec.custom_attributes, &attrs);
        if rec.custom_attributes.len() > MAX_CUSTOM_ATTRIBUTES {
            return Ok(err(ApiError::new(
                ErrorKind::AttributeLimitExceededException,
                format!(
                    "Container instance {id} would have {} custom attributes; at most {MAX_CUSTOM_ATTRIBUTES} are allowed.",
                    rec.custom_attributes.len()
                ),
            )));
        }
        merge_attributes(&mut rec.instance.attributes, &attrs);
        rec.instance.version += 1;
        put_instance(st, cluster, &rec)?;
    }
    Ok(Response::Attributes {
        attributes: attributes.to_vec(),
    })
}

pub(crate) fn delete_attributes<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    cluster: &str,
    attributes: &[Attribute],
) -> Result<Response, StoreError> {
    if let Err(e) = active_cluster(st, cluster)? {
        return Ok(err(e));
    }
    let by = match attribute_targets(st, cluster, attributes)? {
        Ok(b) => b,
        Err(e) => return Ok(err(e)),
    };
    for (_, (mut rec, attrs)) in by {
        let names: BTreeSet<&str> = attrs.iter().map(|a| a.name.as_str()).collect();
        rec.custom_attributes
            .retain(|a| !names.contains(a.name.as_str()));
        rec.instance
            .attributes
            .retain(|a| !names.contains(a.name.as_str()));
        rec.instance.version += 1;
        put_instance(st, cluster, &rec)?;
    }
    Ok(Response::Attributes {
        attributes: attributes.to_vec(),
    })
}

pub(crate) fn purge_stopped_tasks<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    cluster: &str,
    before: f64,
) -> Result<Response, StoreError> {
    for rec in tasks_by(st, cluster, TaskIndexKind::DesiredStatus, "STOPPED")? {
        let t = &rec.task;
        if t.last_status() != "STOPPED" || t.stopped_at.unwrap_or(f64::MAX) >= before {
            continue;
        }
        for k in index_entries(cluster, &rec) {
            st.delete(k);
        }
        st.delete(keys::task(cluster, t.id()));
        let arn = t.task_arn.clone().unwrap_or_default();
        st.delete(keys::tags(&arn));
        st.changes.push(Change::Task {
            cluster: cluster.to_string(),
            id: t.id().to_string(),
            instance_id: rec.instance_id.clone(),
        });
    }
    for (k, v) in st.scan_prefix(&keys::client_token_prefix(cluster))? {
        let tok: ClientTokenRecord = serde_json::from_slice(&v).unwrap_or_default();
        if tok.at < before {
            st.delete(k);
        }
    }
    Ok(Response::Ok)
}

/// DeleteCluster's preconditions, in ECS's words.
pub(crate) fn delete_cluster_precondition<R: KvRead + ?Sized>(
    st: &Staged<'_, R>,
    cluster: &str,
) -> Result<Option<ApiError>, StoreError> {
    if instances_of_cluster(st, cluster)?
        .iter()
        .any(|i| matches!(i.status(), "ACTIVE" | "DRAINING"))
    {
        return Ok(Some(ApiError::new(
            ErrorKind::ClusterContainsContainerInstancesException,
            "The Cluster cannot be deleted while Container Instances are active or draining.",
        )));
    }
    let busy = |kv: &Staged<'_, R>, d: &str| -> Result<bool, StoreError> {
        Ok(tasks_by(kv, cluster, TaskIndexKind::DesiredStatus, d)?
            .iter()
            .any(|t| t.task.last_status() != "STOPPED"))
    };
    if busy(st, "RUNNING")? || busy(st, "STOPPED")? {
        return Ok(Some(ApiError::new(
            ErrorKind::ClusterContainsTasksException,
            "The Cluster cannot be deleted while Tasks are active.",
        )));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;
    use berth_model::agent::{ContainerReport, InstanceResources};
    use berth_model::{Container, NetworkBinding, Reservation, Tag};

    use crate::test_util::{ctx, run, Map};

    fn error_of(r: &Response) -> &ApiError {
        match r {
            Response::Error { error } => error,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    fn create_cluster(s: &mut Map, name: &str) {
        run(
            s,
            Command::CreateCluster {
                cluster: Cluster {
                    cluster_arn: Some(ctx().cluster(name)),
                    cluster_name: Some(name.into()),
                    status: Some("ACTIVE".into()),
                    ..Default::default()
                },
                tags: vec![],
            },
        );
    }

    fn hello(id: &str) -> Hello {
        Hello {
            protocol_version: 1,
            join_token: "t".into(),
            cluster: "c".into(),
            instance_id: id.into(),
            hostname: format!("host-{id}"),
            host_ip: "10.0.0.1".into(),
            resources: InstanceResources {
                cpu: 2048,
                memory: 1024,
                ports: vec![22, 2376],
                ports_udp: vec![],
            },
            attributes: vec![Attribute {
                name: "ecs.os-type".into(),
                value: Some("linux".into()),
                ..Default::default()
            }],
            agent_version: "0.1.0".into(),
            runtime_version: "containerd 1.6".into(),
        }
    }

    fn register(s: &mut Map, id: &str) -> ContainerInstance {
        match run(
            s,
            Command::RegisterContainerInstance {
                ctx: ctx(),
                hello: hello(id),
                at: 100.0,
                token: None,
            },
        ) {
            Response::ContainerInstance { container_instance } => *container_instance,
            other => panic!("{other:?}"),
        }
    }

    /// A cluster `c` with instances `i1`, `i2`.
    fn setup() -> Map {
        let mut s = Map::new();
        create_cluster(&mut s, "c");
        register(&mut s, "i1");
        register(&mut s, "i2");
        s
    }

    fn new_task(id: &str, instance: &str, mem: i64, ports: Vec<u16>) -> NewTask {
        NewTask {
            task_id: id.into(),
            task_definition_arn: ctx().task_definition("web", 3),
            family: "web".into(),
            revision: 3,
            instance_id: instance.into(),
            group: "family:web".into(),
            started_by: Some("me".into()),
            containers: vec![Container {
                name: Some("app".into()),
                image: Some("busybox".into()),
                ..Default::default()
            }],
            reservation: Reservation {
                cpu: 128,
                memory: mem,
                ports,
                ports_udp: vec![],
            },
            launch_type: "EC2".into(),
            ..Default::default()
        }
    }

    fn run_tasks(
        s: &mut Map,
        tasks: Vec<NewTask>,
        token: Option<&str>,
    ) -> (Vec<Task>, Vec<Failure>) {
        match run(
            s,
            Command::RunTasks {
                ctx: ctx(),
                cluster: "c".into(),
                tasks,
                client_token: token.map(str::to_string),
                at: 200.0,
            },
        ) {
            Response::Tasks { tasks, failures } => (tasks, failures),
            other => panic!("{other:?}"),
        }
    }

    fn report(id: &str, seq: u64, status: &str) -> TaskReport {
        TaskReport {
            task_arn: ctx().task("c", id),
            seq,
            last_status: status.into(),
            health_status: None,
            pull_started_at: Some(201.0),
            pull_stopped_at: None,
            started_at: (status == "RUNNING").then_some(202.0),
            execution_stopped_at: None,
            stop_code: None,
            stopped_reason: None,
            private_ipv4_address: None,
            containers: vec![ContainerReport {
                name: "app".into(),
                runtime_id: Some("rt-1".into()),
                image_digest: Some("sha256:abc".into()),
                last_status: if status == "STOPPED" {
                    "STOPPED"
                } else {
                    "RUNNING"
                }
                .into(),
                exit_code: (status == "STOPPED").then_some(0),
                reason: None,
                network_bindings: vec![NetworkBinding {
                    bind_ip: Some("0.0.0.0".into()),
                    container_port: Some(80),
                    host_port: Some(49153),
                    protocol: Some("tcp".into()),
                }],
                network_interfaces: vec![],
                health_status: None,
            }],
        }
    }

    fn send(s: &mut Map, instance: &str, reports: Vec<TaskReport>, at: f64) -> Response {
        run(
            s,
            Command::ReportTasks {
                cluster: "c".into(),
                instance_id: instance.into(),
                reports,
                at,
            },
        )
    }

    fn task(s: &Map, id: &str) -> TaskRecord {
        load_task(s, "c", id).unwrap().unwrap()
    }

    fn instance(s: &Map, id: &str) -> ContainerInstance {
        let rec = load_instance(s, "c", id).unwrap().unwrap();
        decorated_instance(s, "c", rec).unwrap().instance
    }

    fn remaining(ci: &ContainerInstance, name: &str) -> Resource {
        ci.remaining_resources
            .iter()
            .find(|r| r.name == name)
            .cloned()
            .unwrap()
    }

    #[test]
    fn register_builds_an_ecs_container_instance() {
        let mut s = Map::new();
        create_cluster(&mut s, "c");
        let ci = register(&mut s, "i1");
        assert_eq!(
            ci.container_instance_arn.as_deref(),
            Some("arn:aws:ecs:us-east-1:123456789012:container-instance/c/i1")
        );
        assert_eq!(ci.ec2_instance_id.as_deref(), Some("i1"));
        assert_eq!(ci.status.as_deref(), Some("ACTIVE"));
        assert_eq!(ci.agent_connected, Some(true));
        assert_eq!(ci.version, 1);
        assert_eq!(ci.registered_at, Some(100.0));
        assert_eq!(ci.registered_integer("CPU"), 2048);
        assert_eq!(ci.registered_integer("MEMORY"), 1024);
        assert_eq!(ci.registered_ports("PORTS"), vec![22, 2376]);
        assert_eq!(remaining(&ci, "MEMORY").integer_value, 1024);
        assert_eq!(
            ci.version_info.as_ref().unwrap().agent_version.as_deref(),
            Some("0.1.0")
        );
        assert_eq!(ci.attribute("ecs.os-type"), Some(Some("linux")));
        let rec = load_instance(&s, "c", "i1").unwrap().unwrap();
        assert_eq!(rec.host_ip, "10.0.0.1");
        assert_eq!(rec.hostname, "host-i1");
        // Unknown or deleted cluster: refused.
        let mut h = hello("i9");
        h.cluster = "nope".into();
        let r = run(
            &mut s,
            Command::RegisterContainerInstance {
                ctx: ctx(),
                hello: h,
                at: 1.0,
                token: None,
            },
        );
        assert_eq!(error_of(&r).kind, ErrorKind::ClusterNotFoundException);
    }

    #[test]
    fn re_registration_keeps_identity_custom_attributes_and_draining() {
        let mut s = setup();
        let put = run(
            &mut s,
            Command::PutAttributes {
                cluster: "c".into(),
                attributes: vec![Attribute {
                    name: "stack".into(),
                    value: Some("prod".into()),
                    target_type: Some("container-instance".into()),
                    target_id: Some("i1".into()),
                }],
            },
        );
        assert!(matches!(put, Response::Attributes { .. }));
        run(
            &mut s,
            Command::UpdateContainerInstancesState {
                cluster: "c".into(),
                instance_ids: vec!["i1".into()],
                status: "DRAINING".into(),
                at: 150.0,
            },
        );
        let before = instance(&s, "i1");
        let mut h = hello("i1");
        h.agent_version = "0.2.0".into();
        let again = match run(
            &mut s,
            Command::RegisterContainerInstance {
                ctx: ctx(),
                hello: h,
                at: 300.0,
                token: None,
            },
        ) {
            Response::ContainerInstance { container_instance } => *container_instance,
            other => panic!("{other:?}"),
        };
        assert_eq!(again.status.as_deref(), Some("DRAINING"));
        assert_eq!(again.registered_at, Some(100.0), "same registration");
        assert_eq!(again.version, before.version + 1);
        assert_eq!(again.attribute("stack"), Some(Some("prod")));
        assert_eq!(again.attribute("ecs.os-type"), Some(Some("linux")));
        // Deregistered: its agent does not come back under that id (as ECS's).
        run(
            &mut s,
            Command::DeregisterContainerInstance {
                cluster: "c".into(),
                instance_id: "i1".into(),
                force: false,
                at: 400.0,
            },
        );
        assert_eq!(instance(&s, "i1").status.as_deref(), Some("INACTIVE"));
        let refused = run(
            &mut s,
            Command::RegisterContainerInstance {
                ctx: ctx(),
                hello: hello("i1"),
                at: 500.0,
                token: None,
            },
        );
        match refused {
            Response::Error { error } => {
                assert_eq!(error.kind, ErrorKind::AccessDeniedException);
                assert!(
                    error.message.contains("i1 was deregistered"),
                    "{}",
                    error.message
                );
            }
            other => panic!("a deregistered instance registered again: {other:?}"),
        }
        assert_eq!(instance(&s, "i1").status.as_deref(), Some("INACTIVE"));
        assert_eq!(
            instance(&s, "i1").container_instance_arn,
            before.container_instance_arn
        );
    }

    #[test]
    fn agent_connected_is_recorded_and_unknown_instances_are_a_no_op() {
        let mut s = setup();
        let set = |s: &mut Map, id: &str, c: bool| {
            run(
                s,
                Command::SetAgentConnected {
                    cluster: "c".into(),
                    instance_id: id.into(),
                    connected: c,
                    at: 500.0,
                },
            )
        };
        assert_eq!(set(&mut s, "i1", false), Response::Ok);
        let ci = instance(&s, "i1");
        assert_eq!(ci.agent_connected, Some(false));
        assert_eq!(ci.version, 2);
        assert_eq!(
            load_instance(&s, "c", "i1").unwrap().unwrap().last_seen,
            500.0
        );
        let before = s.clone();
        assert_eq!(set(&mut s, "ghost", true), Response::Ok);
        assert_eq!(s, before);
        // A disconnected agent takes no tasks.
        let (tasks, failures) = run_tasks(&mut s, vec![new_task("t1", "i1", 64, vec![])], None);
        assert!(tasks.is_empty());
        assert_eq!(failures[0].reason.as_deref(), Some("AGENT"));
    }

    #[test]
    fn run_tasks_creates_provisioning_tasks_and_reserves_resources() {
        let mut s = setup();
        let mut nt = new_task("t1", "i1", 512, vec![8080]);
        nt.tags = vec![Tag {
            key: "k".into(),
            value: "v".into(),
        }];
        let (tasks, failures) = run_tasks(&mut s, vec![nt], None);
        assert!(failures.is_empty());
        let t = &tasks[0];
        assert_eq!(t.task_arn.as_deref(), Some(ctx().task("c", "t1").as_str()));
        assert_eq!(t.last_status(), "PROVISIONING");
        assert_eq!(t.desired_status(), "RUNNING");
        assert_eq!(t.created_at, Some(200.0));
        assert_eq!(t.containers[0].last_status.as_deref(), Some("PENDING"));
        assert_eq!(t.containers[0].task_arn, t.task_arn);
        assert_eq!(t.group.as_deref(), Some("family:web"));
        assert_eq!(t.tags.as_ref().unwrap()[0].key, "k");
        assert_eq!(
            t.container_instance_arn.as_deref(),
            Some(ctx().container_instance("c", "i1").as_str())
        );
        let ci = instance(&s, "i1");
        assert_eq!(remaining(&ci, "MEMORY").integer_value, 512);
        assert_eq!(remaining(&ci, "CPU").integer_value, 2048 - 128);
        assert_eq!(
            remaining(&ci, "PORTS").string_set_value.unwrap(),
            vec!["22", "2376", "8080"]
        );
        assert_eq!(ci.pending_tasks_count, 1);
        assert_eq!(ci.running_tasks_count, 0);
        // Re-checked in apply: memory, then ports.
        let (tasks, failures) = run_tasks(
            &mut s,
            vec![
                new_task("t2", "i1", 600, vec![]),
                new_task("t3", "i1", 64, vec![8080]),
                new_task("t4", "i1", 64, vec![22]),
                new_task("t5", "ghost", 64, vec![]),
                new_task("t6", "i1", 512, vec![]),
                new_task("t7", "i1", 1, vec![]),
            ],
            None,
        );
        let reasons: Vec<_> = failures.iter().map(|f| f.reason.clone().unwrap()).collect();
        assert_eq!(
            reasons,
            vec![
                "RESOURCE:MEMORY",
                "RESOURCE:PORTS",
                "RESOURCE:PORTS",
                "MISSING",
                "RESOURCE:MEMORY"
            ]
        );
        assert_eq!(
            failures[0].arn.as_deref(),
            Some(ctx().container_instance("c", "i1").as_str())
        );
        // t6 fits exactly; t7 then sees t6's reservation (same command) and does not.
        assert_eq!(tasks.len(), 1);
        assert_eq!(tasks[0].id(), "t6");
        let mut big = new_task("t8", "i2", 1, vec![]);
        big.reservation.cpu = 4096;
        let (_, failures) = run_tasks(&mut s, vec![big], None);
        assert_eq!(failures[0].reason.as_deref(), Some("RESOURCE:CPU"));
        // indexes
        assert_eq!(
            task_ids_by(&s, "c", TaskIndexKind::Instance, "i1").unwrap(),
            vec!["t1", "t6"]
        );
        assert_eq!(
            task_ids_by(&s, "c", TaskIndexKind::Family, "web").unwrap(),
            vec!["t1", "t6"]
        );
        assert_eq!(
            task_ids_by(&s, "c", TaskIndexKind::StartedBy, "me").unwrap(),
            vec!["t1", "t6"]
        );
        let counts = cluster_counts(&s, "c").unwrap();
        assert_eq!(counts.registered_container_instances, 2);
        assert_eq!(counts.pending_tasks, 2);
    }

    #[test]
    fn client_token_returns_the_first_tasks() {
        let mut s = setup();
        let (first, _) = run_tasks(&mut s, vec![new_task("t1", "i1", 64, vec![])], Some("tok"));
        let (again, failures) =
            run_tasks(&mut s, vec![new_task("t2", "i2", 64, vec![])], Some("tok"));
        assert!(failures.is_empty());
        assert_eq!(again, first);
        assert!(load_task(&s, "c", "t2").unwrap().is_none());
        // Another token creates.
        let (other, _) = run_tasks(&mut s, vec![new_task("t3", "i2", 64, vec![])], Some("x"));
        assert_eq!(other[0].id(), "t3");
    }

    #[test]
    fn reports_advance_tasks_and_never_move_them_backwards() {
        let mut s = setup();
        run_tasks(&mut s, vec![new_task("t1", "i1", 64, vec![])], None);
        send(&mut s, "i1", vec![report("t1", 2, "RUNNING")], 210.0);
        let t = task(&s, "t1");
        assert_eq!(t.task.last_status(), "RUNNING");
        assert_eq!(t.reported_seq, 2);
        assert_eq!(t.task.version, 2);
        assert_eq!(t.task.started_at, Some(202.0));
        assert_eq!(t.task.pull_started_at, Some(201.0));
        assert_eq!(t.task.connectivity.as_deref(), Some("CONNECTED"));
        let c = &t.task.containers[0];
        assert_eq!(c.runtime_id.as_deref(), Some("rt-1"));
        assert_eq!(c.image_digest.as_deref(), Some("sha256:abc"));
        assert_eq!(c.last_status.as_deref(), Some("RUNNING"));
        assert_eq!(
            c.network_bindings.as_ref().unwrap()[0].host_port,
            Some(49153)
        );
        assert_eq!(instance(&s, "i1").running_tasks_count, 1);
        assert_eq!(cluster_counts(&s, "c").unwrap().running_tasks, 1);

        // An old seq (replayed) and a lower status with a newer seq are both ignored.
        let before = task(&s, "t1");
        send(&mut s, "i1", vec![report("t1", 1, "PENDING")], 211.0);
        assert_eq!(task(&s, "t1"), before, "seq <= reported_seq is ignored");
        let mut back = report("t1", 3, "PENDING");
        back.started_at = Some(999.0);
        send(&mut s, "i1", vec![back], 212.0);
        let t = task(&s, "t1");
        assert_eq!(t.task.last_status(), "RUNNING");
        assert_eq!(t.task.started_at, Some(202.0), "timestamps are set once");
        assert_eq!(t.reported_seq, 3);

        // Reports from another instance, and for unknown tasks, are ignored.
        let before = s.clone();
        send(&mut s, "i2", vec![report("t1", 9, "STOPPED")], 213.0);
        send(&mut s, "i1", vec![report("nope", 9, "STOPPED")], 213.0);
        assert_eq!(s, before);

        // STOPPED from the agent: its code and reason, desired STOPPED, resources freed.
        let mut stop = report("t1", 4, "STOPPED");
        stop.stop_code = Some("EssentialContainerExited".into());
        stop.stopped_reason = Some("Essential container in task exited".into());
        send(&mut s, "i1", vec![stop], 220.0);
        let t = task(&s, "t1");
        assert_eq!(t.task.last_status(), "STOPPED");
        assert_eq!(t.task.desired_status(), "STOPPED");
        assert_eq!(t.task.stopped_at, Some(220.0));
        assert_eq!(
            t.task.stop_code.as_deref(),
            Some("EssentialContainerExited")
        );
        assert_eq!(t.task.containers[0].exit_code, Some(0));
        let ci = instance(&s, "i1");
        assert_eq!(remaining(&ci, "MEMORY").integer_value, 1024);
        assert_eq!(ci.running_tasks_count, 0);
        assert_eq!(
            task_ids_by(&s, "c", TaskIndexKind::DesiredStatus, "STOPPED").unwrap(),
            vec!["t1"]
        );
        assert!(
            task_ids_by(&s, "c", TaskIndexKind::DesiredStatus, "RUNNING")
                .unwrap()
                .is_empty()
        );
        // Nothing moves a STOPPED task.
        send(&mut s, "i1", vec![report("t1", 5, "RUNNING")], 230.0);
        assert_eq!(task(&s, "t1").task.last_status(), "STOPPED");
    }

    #[test]
    fn user_stop_keeps_its_reason_when_the_agent_reports_stopped() {
        let mut s = setup();
        run_tasks(&mut s, vec![new_task("t1", "i1", 64, vec![])], None);
        let r = run(
            &mut s,
            Command::StopTask {
                cluster: "c".into(),
                task_id: "t1".into(),
                reason: "Task stopped by user".into(),
                stop_code: "UserInitiated".into(),
                at: 300.0,
            },
        );
        let Response::Task { task: t } = r else {
            panic!("{r:?}")
        };
        assert_eq!(t.desired_status(), "STOPPED");
        assert_eq!(t.last_status(), "PROVISIONING", "the agent stops it");
        assert_eq!(t.stopping_at, Some(300.0));
        assert_eq!(t.stop_code.as_deref(), Some("UserInitiated"));
        let mut stop = report("t1", 1, "STOPPED");
        stop.stop_code = Some("EssentialContainerExited".into());
        stop.stopped_reason = Some("Essential container in task exited".into());
        send(&mut s, "i1", vec![stop], 310.0);
        let t = task(&s, "t1").task;
        assert_eq!(t.last_status(), "STOPPED");
        assert_eq!(t.stopped_reason.as_deref(), Some("Task stopped by user"));
        assert_eq!(t.stop_code.as_deref(), Some("UserInitiated"));
        // Stopping a stopped task answers it unchanged.
        let again = run(
            &mut s,
            Command::StopTask {
                cluster: "c".into(),
                task_id: "t1".into(),
                reason: "again".into(),
                stop_code: "UserInitiated".into(),
                at: 400.0,
            },
        );
        assert_eq!(again, Response::Task { task: Box::new(t) });
        // Unknown task / cluster
        let e = run(
            &mut s,
            Command::StopTask {
                cluster: "c".into(),
                task_id: "zz".into(),
                reason: "r".into(),
                stop_code: "UserInitiated".into(),
                at: 1.0,
            },
        );
        assert_eq!(error_of(&e).kind, ErrorKind::InvalidParameterException);
        let e = run(
            &mut s,
            Command::StopTask {
                cluster: "nope".into(),
                task_id: "t1".into(),
                reason: "r".into(),
                stop_code: "UserInitiated".into(),
                at: 1.0,
            },
        );
        assert_eq!(error_of(&e).kind, ErrorKind::ClusterNotFoundException);
    }

    #[test]
    fn deregister_refuses_running_tasks_unless_forced() {
        let mut s = setup();
        run_tasks(&mut s, vec![new_task("t1", "i1", 64, vec![])], None);
        let dereg = |s: &mut Map, force| {
            run(
                s,
                Command::DeregisterContainerInstance {
                    cluster: "c".into(),
                    instance_id: "i1".into(),
                    force,
                    at: 500.0,
                },
            )
        };
        let before = s.clone();
        let e = dereg(&mut s, false);
        assert_eq!(error_of(&e).kind, ErrorKind::InvalidParameterException);
        assert_eq!(error_of(&e).message, "Found running tasks on the instance.");
        assert_eq!(s, before);
        let Response::ContainerInstance { container_instance } = dereg(&mut s, true) else {
            panic!()
        };
        assert_eq!(container_instance.status.as_deref(), Some("INACTIVE"));
        let t = task(&s, "t1").task;
        assert_eq!(t.desired_status(), "STOPPED");
        assert_eq!(t.last_status(), "STOPPED");
        assert!(t.stopped_reason.is_some());
        // Deregistering again answers the INACTIVE instance.
        assert!(matches!(
            dereg(&mut s, false),
            Response::ContainerInstance { .. }
        ));
        // Agent on a deregistered instance: connection flag is a no-op.
        let before = s.clone();
        run(
            &mut s,
            Command::SetAgentConnected {
                cluster: "c".into(),
                instance_id: "i1".into(),
                connected: true,
                at: 600.0,
            },
        );
        assert_eq!(s, before);
        let e = run(
            &mut s,
            Command::DeregisterContainerInstance {
                cluster: "c".into(),
                instance_id: "ghost".into(),
                force: true,
                at: 1.0,
            },
        );
        assert_eq!(error_of(&e).kind, ErrorKind::InvalidParameterException);
    }

    #[test]
    fn stop_on_a_deregistered_instance_stops_at_once() {
        let mut s = setup();
        run_tasks(&mut s, vec![new_task("t1", "i1", 64, vec![])], None);
        // Simulate the instance vanishing from the store.
        s.remove(&keys::instance("c", "i1"));
        let Response::Task { task: t } = run(
            &mut s,
            Command::StopTask {
                cluster: "c".into(),
                task_id: "t1".into(),
                reason: "bye".into(),
                stop_code: "UserInitiated".into(),
                at: 300.0,
            },
        ) else {
            panic!()
        };
        assert_eq!(t.last_status(), "STOPPED");
        assert_eq!(t.stopped_at, Some(300.0));
        assert_eq!(t.stopped_reason.as_deref(), Some("bye"));
    }

    #[test]
    fn update_state_only_active_or_draining_with_missing_failures() {
        let mut s = setup();
        let r = run(
            &mut s,
            Command::UpdateContainerInstancesState {
                cluster: "c".into(),
                instance_ids: vec!["i1".into(), "ghost".into()],
                status: "DRAINING".into(),
                at: 1.0,
            },
        );
        let Response::ContainerInstances {
            container_instances,
            failures,
        } = r
        else {
            panic!("{r:?}")
        };
        assert_eq!(container_instances[0].status.as_deref(), Some("DRAINING"));
        assert_eq!(container_instances[0].version, 2);
        assert_eq!(failures[0].reason.as_deref(), Some("MISSING"));
        assert_eq!(
            failures[0].arn.as_deref(),
            Some(ctx().container_instance("c", "ghost").as_str())
        );
        // DRAINING takes no new tasks
        let (_, f) = run_tasks(&mut s, vec![new_task("t1", "i1", 64, vec![])], None);
        assert_eq!(f[0].reason.as_deref(), Some("INACTIVE"));
        let e = run(
            &mut s,
            Command::UpdateContainerInstancesState {
                cluster: "c".into(),
                instance_ids: vec!["i1".into()],
                status: "INACTIVE".into(),
                at: 1.0,
            },
        );
        assert_eq!(error_of(&e).kind, ErrorKind::InvalidParameterException);
    }

    fn attr(name: &str, target: &str) -> Attribute {
        Attribute {
            name: name.into(),
            value: Some("v".into()),
            target_type: Some("container-instance".into()),
            target_id: Some(target.into()),
        }
    }

    #[test]
    fn attributes_limit_and_unknown_targets() {
        let mut s = setup();
        let put = |s: &mut Map, attrs: Vec<Attribute>| {
            run(
                s,
                Command::PutAttributes {
                    cluster: "c".into(),
                    attributes: attrs,
                },
            )
        };
        let ten: Vec<Attribute> = (0..10).map(|i| attr(&format!("a{i}"), "i1")).collect();
        assert!(matches!(put(&mut s, ten), Response::Attributes { .. }));
        // Overwriting an existing one is fine; an eleventh is not.
        assert!(matches!(
            put(&mut s, vec![attr("a0", "i1")]),
            Response::Attributes { .. }
        ));
        let before = s.clone();
        let e = put(&mut s, vec![attr("a10", "i1")]);
        assert_eq!(
            error_of(&e).kind,
            ErrorKind::AttributeLimitExceededException
        );
        assert_eq!(s, before);
        let e = put(&mut s, vec![attr("x", "ghost")]);
        assert_eq!(error_of(&e).kind, ErrorKind::TargetNotFoundException);
        let r = run(
            &mut s,
            Command::DeleteAttributes {
                cluster: "c".into(),
                attributes: vec![attr("a0", "i1")],
            },
        );
        assert!(matches!(r, Response::Attributes { .. }));
        let ci = instance(&s, "i1");
        assert_eq!(ci.attribute("a0"), None);
        assert_eq!(ci.attribute("a1"), Some(Some("v")));
        assert!(matches!(
            put(&mut s, vec![attr("a10", "i1")]),
            Response::Attributes { .. }
        ));
        let e = run(
            &mut s,
            Command::DeleteAttributes {
                cluster: "c".into(),
                attributes: vec![attr("a0", "ghost")],
            },
        );
        assert_eq!(error_of(&e).kind, ErrorKind::TargetNotFoundException);
    }

    #[test]
    fn delete_cluster_preconditions() {
        let mut s = setup();
        run_tasks(&mut s, vec![new_task("t1", "i1", 64, vec![])], None);
        let del = |s: &mut Map| run(s, Command::DeleteCluster { name: "c".into() });
        let e = del(&mut s);
        assert_eq!(
            error_of(&e).kind,
            ErrorKind::ClusterContainsContainerInstancesException
        );
        for id in ["i1", "i2"] {
            // i1 has a task: force
            run(
                &mut s,
                Command::DeregisterContainerInstance {
                    cluster: "c".into(),
                    instance_id: id.into(),
                    force: true,
                    at: 1.0,
                },
            );
        }
        // Tasks were stopped by the forced deregistration, so the cluster can go.
        assert!(matches!(del(&mut s), Response::Cluster { .. }));

        // A task not yet STOPPED blocks deletion.
        let mut s = setup();
        run_tasks(&mut s, vec![new_task("t1", "i1", 64, vec![])], None);
        s.remove(&keys::instance("c", "i1"));
        s.remove(&keys::instance("c", "i2"));
        let e = del(&mut s);
        assert_eq!(error_of(&e).kind, ErrorKind::ClusterContainsTasksException);
        assert_eq!(
            error_of(&e).message,
            "The Cluster cannot be deleted while Tasks are active."
        );
    }

    #[test]
    fn purge_forgets_only_tasks_stopped_before_the_cutoff() {
        let mut s = setup();
        run_tasks(
            &mut s,
            vec![
                new_task("t1", "i1", 64, vec![]),
                new_task("t2", "i1", 64, vec![]),
            ],
            Some("tok"),
        );
        send(&mut s, "i1", vec![report("t1", 1, "STOPPED")], 1000.0);
        send(&mut s, "i1", vec![report("t2", 1, "RUNNING")], 1000.0);
        run(
            &mut s,
            Command::PurgeStoppedTasks {
                cluster: "c".into(),
                before: 1000.0,
            },
        );
        assert!(
            load_task(&s, "c", "t1").unwrap().is_some(),
            "stopped at the cutoff: kept"
        );
        run(
            &mut s,
            Command::PurgeStoppedTasks {
                cluster: "c".into(),
                before: 4600.0,
            },
        );
        assert!(load_task(&s, "c", "t1").unwrap().is_none());
        assert!(load_task(&s, "c", "t2").unwrap().is_some());
        assert_eq!(
            task_ids_by(&s, "c", TaskIndexKind::Instance, "i1").unwrap(),
            vec!["t2"]
        );
        assert!(
            task_ids_by(&s, "c", TaskIndexKind::DesiredStatus, "STOPPED")
                .unwrap()
                .is_empty()
        );
        assert!(!s.contains_key(&keys::client_token("c", "tok")));
    }

    #[test]
    fn awsvpc_address_goes_into_attachments() {
        let mut s = setup();
        let mut nt = new_task("t1", "i1", 64, vec![]);
        nt.network_mode = Some("awsvpc".into());
        run_tasks(&mut s, vec![nt], None);
        let mut r = report("t1", 1, "RUNNING");
        r.private_ipv4_address = Some("10.88.0.5".into());
        send(&mut s, "i1", vec![r], 1.0);
        let t = task(&s, "t1").task;
        let a = &t.attachments.as_ref().unwrap()[0];
        assert_eq!(a.r#type.as_deref(), Some("ElasticNetworkInterface"));
        assert_eq!(
            a.details.as_ref().unwrap()[0],
            KeyValuePair {
                name: Some("privateIPv4Address".into()),
                value: Some("10.88.0.5".into())
            }
        );
        let ni = &t.containers[0].network_interfaces.as_ref().unwrap()[0];
        assert_eq!(ni.private_ipv4_address.as_deref(), Some("10.88.0.5"));
        assert_eq!(ni.attachment_id, a.id);
    }

    #[test]
    fn task_commands_are_deterministic_and_round_trip() {
        let cmds = vec![
            Command::RegisterContainerInstance {
                ctx: ctx(),
                hello: hello("i1"),
                at: 1.0,
                token: None,
            },
            Command::RunTasks {
                ctx: ctx(),
                cluster: "c".into(),
                tasks: vec![new_task("t1", "i1", 64, vec![80])],
                client_token: Some("x".into()),
                at: 2.0,
            },
            Command::ReportTasks {
                cluster: "c".into(),
                instance_id: "i1".into(),
                reports: vec![report("t1", 1, "RUNNING")],
                at: 3.0,
            },
            Command::StopTask {
                cluster: "c".into(),
                task_id: "t1".into(),
                reason: "r".into(),
                stop_code: "UserInitiated".into(),
                at: 4.0,
            },
            Command::PurgeStoppedTasks {
                cluster: "c".into(),
                before: 5.0,
            },
        ];
        let go = || {
            let mut s = Map::new();
            create_cluster(&mut s, "c");
            let r: Vec<_> = cmds.iter().map(|c| run(&mut s, c.clone())).collect();
            (r, s)
        };
        assert_eq!(go(), go());
        for c in cmds {
            let req = crate::Request::new(c);
            let back: crate::Request =
                serde_json::from_slice(&serde_json::to_vec(&req).unwrap()).unwrap();
            assert_eq!(back, req);
        }
    }
}
