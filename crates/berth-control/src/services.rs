//! The service reconciler: runs on the Raft leader only. It reads the store, asks the
//! pure scheduler (`berth_scheduler::service::reconcile`) what each service needs,
//! places the tasks to start (`berth_scheduler::placement`), and proposes the answer as
//! one `ReconcileService` command per service. It never writes anything itself.
//!
//! A decision carries the service record's `version` it was computed from; the store
//! drops it if the version moved (a user's UpdateService, or the same decision proposed
//! twice across a leader change). So a new leader simply resumes: whatever the old one
//! committed is in the store, whatever it did not is recomputed.
//!
//! Cost: the controller keeps a copy of every instance's placement view (resources,
//! task groups) and refreshes only the instances that changed since its last pass; it
//! reconciles only the services whose tasks, record or cluster changed, plus a sweep of
//! every service every few seconds for time-based steps (the 40 s healthy rule,
//! back-off expiry, grace periods).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use berth_model::ArnContext;
use berth_model::{
    Attribute, ContainerInstanceRecord, PlacementConstraint, ServiceRecord, TaskDefinition,
    TaskOverride, TaskRecord,
};
use berth_scheduler::placement::{
    self, ClusterView, Node, Rejection, Request, SpreadField, Strategy,
};
use berth_scheduler::service::{
    self, Config, Decision, Input, InstanceInfo, LbInfo, LbUnhealthy, Start, TaskInfo,
};
use berth_store::{Change, Command, Replica, Response, TaskStop};

use berth_store::now_secs;

use crate::{propose_checked, Proposed, Reconciler, IDLE_REQUEUE};

/// The service reconciler's knobs.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    /// The region and account of the ARNs of the tasks it starts.
    pub arn: ArnContext,
    pub scheduler: Config,
    /// How often every service is looked at even without a change.
    pub sweep: Duration,
}

impl ServiceSettings {
    pub fn new(arn: ArnContext) -> Self {
        ServiceSettings {
            arn,
            scheduler: Config::default(),
            sweep: Duration::from_secs(2),
        }
    }
}

/// At most this many tasks are started by one decision (one Raft entry).
pub const MAX_STARTS_PER_DECISION: usize = 100;

/// Per-cluster cache of the placement view.
#[derive(Default)]
struct ClusterCache {
    nodes: BTreeMap<String, Node>,
    /// (status, connected) per instance, to tell real instance changes from heartbeats.
    states: BTreeMap<String, (String, bool)>,
}

/// The controller's memory between passes. Only a cache: dropping it is always safe.
#[derive(Default)]
struct State {
    /// Revision the caches reflect; `None` forces a full reload.
    revision: Option<u64>,
    clusters: BTreeMap<String, ClusterCache>,
    /// Services to reconcile at the next pass: (cluster, name).
    dirty: BTreeSet<(String, String)>,
    /// Clusters whose every service must be reconciled.
    dirty_clusters: BTreeSet<String>,
    last_sweep: Option<Instant>,
    /// Task definitions by ARN (immutable apart from status; fine to cache briefly).
    task_defs: HashMap<String, TaskDefinition>,
    /// The ELB state changed (target health, registrations): reconcile the services
    /// that have load balancers.
    elb_dirty: bool,
}

/// Keeps every ACTIVE or DRAINING service's tasks where the scheduler says.
pub struct ServiceReconciler {
    settings: ServiceSettings,
    state: State,
}

impl ServiceReconciler {
    pub fn new(settings: ServiceSettings) -> Self {
        ServiceReconciler {
            settings,
            state: State::default(),
        }
    }
}

#[async_trait::async_trait]
impl Reconciler for ServiceReconciler {
    fn name(&self) -> &'static str {
        "services"
    }

    fn reset(&mut self) {
        self.state = State::default();
    }

    async fn pass(&mut self, replica: &dyn Replica) -> Result<Duration, String> {
        pass(replica, &self.settings, &mut self.state).await?;
        Ok(IDLE_REQUEUE)
    }
}

type PassResult = Result<(), String>;

fn serr<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// Brings the caches up to the current revision and collects what is dirty.
fn refresh(node: &dyn Replica, state: &mut State) -> PassResult {
    let reader = node.reader();
    let current = reader.revision();
    let changes = match state.revision {
        None => None,
        // Compacted away: reload everything.
        Some(r) => reader.changes_since(r).map_err(serr)?.ok(),
    };
    let Some(changes) = changes else {
        // Full reload.
        state.clusters.clear();
        state.task_defs.clear();
        for c in reader.clusters().map_err(serr)? {
            if c.status.as_deref() != Some("ACTIVE") {
                continue;
            }
            let name = c.cluster_name.clone().unwrap_or_default();
            let mut cache = ClusterCache::default();
            for rec in reader.container_instances(&name).map_err(serr)? {
                load_node(node, &name, &rec, &mut cache)?;
            }
            state.clusters.insert(name.clone(), cache);
            state.dirty_clusters.insert(name);
        }
        state.revision = Some(current);
        return Ok(());
    };
    let mut touched: BTreeSet<(String, String)> = BTreeSet::new();
    for rc in changes {
        for ch in rc.changes {
            match ch {
                Change::Cluster { name } => {
                    state.dirty_clusters.insert(name.clone());
                    state.clusters.entry(name).or_default();
                }
                Change::ContainerInstance { cluster, id } => {
                    touched.insert((cluster, id));
                }
                Change::Task {
                    cluster,
                    id,
                    instance_id,
                } => {
                    touched.insert((cluster.clone(), instance_id));
                    if let Some(t) = reader.task(&cluster, &id).map_err(serr)? {
                        if let Some(name) = t
                            .task
                            .group
                            .as_deref()
                            .and_then(|g| g.strip_prefix("service:"))
                        {
                            state.dirty.insert((cluster, name.to_string()));
                        }
                    }
                }
                Change::Service { cluster, name } => {
                    state.dirty.insert((cluster, name));
                }
                // Target health moved: services behind load balancers may step on.
                Change::Elb | Change::ElbHealth => {
                    state.elb_dirty = true;
                }
                Change::Membership
                | Change::TaskDefinition { .. }
                | Change::Tags { .. }
                | Change::JoinToken { .. } => {}
            }
        }
    }
    for (cluster, id) in touched {
        let cache = state.clusters.entry(cluster.clone()).or_default();
        match reader.container_instance(&cluster, &id).map_err(serr)? {
            Some(rec) => {
                let before = cache.states.get(&id).cloned();
                load_node(node, &cluster, &rec, cache)?;
                if before != cache.states.get(&id).cloned() {
                    // Status or agent changed: DAEMON services, draining, placement.
                    state.dirty_clusters.insert(cluster);
                }
            }
            None => {
                cache.nodes.remove(&id);
                cache.states.remove(&id);
                state.dirty_clusters.insert(cluster);
            }
        }
    }
    state.revision = Some(current);
    Ok(())
}

fn load_node(
    node: &dyn Replica,
    cluster: &str,
    rec: &ContainerInstanceRecord,
    cache: &mut ClusterCache,
) -> PassResult {
    let id = rec.id().to_string();
    let tasks = node
        .reader()
        .tasks_on_instance(cluster, &id)
        .map_err(serr)?;
    cache
        .nodes
        .insert(id.clone(), Node::from_store(rec, &tasks));
    cache
        .states
        .insert(id, (rec.status().to_string(), rec.agent_connected()));
    Ok(())
}

async fn pass(node: &dyn Replica, settings: &ServiceSettings, state: &mut State) -> PassResult {
    refresh(node, state)?;
    let sweep = state
        .last_sweep
        .map(|t| t.elapsed() >= settings.sweep)
        .unwrap_or(true);
    if sweep {
        state.last_sweep = Some(Instant::now());
        state.dirty_clusters.extend(state.clusters.keys().cloned());
    }
    let mut work: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    if std::mem::take(&mut state.elb_dirty) {
        for c in state.clusters.keys() {
            for s in node.reader().services(c).map_err(serr)? {
                if !s.service.load_balancers.is_empty()
                    && matches!(s.service.status.as_str(), "ACTIVE" | "DRAINING")
                {
                    work.entry(c.clone())
                        .or_default()
                        .insert(s.name().to_string());
                }
            }
        }
    }
    for c in std::mem::take(&mut state.dirty_clusters) {
        for s in node.reader().services(&c).map_err(serr)? {
            if matches!(s.service.status.as_str(), "ACTIVE" | "DRAINING") {
                work.entry(c.clone())
                    .or_default()
                    .insert(s.name().to_string());
            }
        }
    }
    for (c, s) in std::mem::take(&mut state.dirty) {
        work.entry(c).or_default().insert(s);
    }
    for (cluster, names) in work {
        let Some(cache) = state.clusters.get(&cluster) else {
            continue;
        };
        let mut view = ClusterView::new(cache.nodes.values().cloned().collect());
        let instances: Vec<InstanceInfo> = cache
            .nodes
            .values()
            .map(|n| InstanceInfo {
                id: n.id.clone(),
                status: n.status.clone(),
                agent_connected: n.agent_connected,
                eligible: false,
                other_service_tasks: 0,
            })
            .collect();
        for name in names {
            let Some(rec) = node.reader().service(&cluster, &name).map_err(serr)? else {
                continue;
            };
            if !matches!(rec.service.status.as_str(), "ACTIVE" | "DRAINING") {
                continue;
            }
            match reconcile_one(node, settings, state, &cluster, &rec, &mut view, &instances).await
            {
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!(cluster, service = name, error = %e, "reconcile failed");
                }
            }
        }
    }
    Ok(())
}

fn task_def(node: &dyn Replica, state: &mut State, arn: &str) -> Result<TaskDefinition, String> {
    if let Some(td) = state.task_defs.get(arn) {
        return Ok(td.clone());
    }
    let tail = arn.rsplit('/').next().unwrap_or(arn);
    let (family, rev) = tail
        .rsplit_once(':')
        .ok_or_else(|| format!("bad task definition ARN {arn}"))?;
    let rev: u32 = rev
        .parse()
        .map_err(|_| format!("bad task definition ARN {arn}"))?;
    let td = node
        .reader()
        .task_definition(family, rev)
        .map_err(serr)?
        .ok_or_else(|| format!("task definition {arn} not found"))?;
    state.task_defs.insert(arn.to_string(), td.clone());
    Ok(td)
}

fn has_health_check(td: &TaskDefinition) -> bool {
    td.container_definitions
        .iter()
        .any(|c| c.essential.unwrap_or(true) && c.health_check.is_some())
}

/// The load balancer's view of a task of a service with `loadBalancers`: healthy when
/// every target it has (in target groups that still exist and get traffic) is healthy.
///
/// A task is judged by the targets it actually has, not by the service's current list:
/// tasks of an older deployment that predates a `loadBalancers` change are not all
/// "not healthy" at once (which would let a rollout stop them below the minimum). A
/// RUNNING task with no live target at all (registered before the service had load
/// balancers, its binding missing, or deregistered by hand) falls back to the rules
/// without a load balancer, so it can never be stuck "starting" for good.
fn lb_info(
    node: &dyn Replica,
    cluster: &str,
    groups: &BTreeSet<String>,
    t: &TaskRecord,
) -> Result<Option<LbInfo>, String> {
    if groups.is_empty() {
        return Ok(None);
    }
    if t.task.last_status() != "RUNNING" {
        return Ok(Some(LbInfo::default()));
    }
    let targets = node
        .reader()
        .elb_targets_of_task(cluster, t.task.id())
        .map_err(serr)?;
    let mut info = LbInfo {
        healthy: true,
        unhealthy: None,
    };
    let mut live = 0;
    for tr in &targets {
        if tr.draining() || !groups.contains(&tr.target_group_arn) {
            continue;
        }
        live += 1;
        match tr.health.state.as_str() {
            "healthy" | "unavailable" => {}
            "unhealthy" => {
                info.healthy = false;
                if info.unhealthy.is_none() {
                    info.unhealthy = Some(LbUnhealthy {
                        target_group_arn: tr.target_group_arn.clone(),
                        target_id: tr.id.clone(),
                        port: tr.port,
                        description: tr
                            .health
                            .description
                            .clone()
                            .unwrap_or_else(|| "Health checks failed".into()),
                    });
                }
            }
            _ => info.healthy = false,
        }
    }
    if live == 0 {
        return Ok(None);
    }
    Ok(Some(info))
}

fn task_info(t: &TaskRecord, health_checked: bool) -> TaskInfo {
    let task = &t.task;
    TaskInfo {
        id: task.id().to_string(),
        deployment_id: task.started_by.clone().unwrap_or_default(),
        instance_id: t.instance_id.clone(),
        last_status: task.last_status().to_string(),
        desired_status: task.desired_status().to_string(),
        health_status: task
            .health_status
            .clone()
            .unwrap_or_else(|| "UNKNOWN".into()),
        has_health_check: health_checked,
        created_at: task.created_at.unwrap_or(0.0),
        started_at: task.started_at,
        stopped_at: task.stopped_at,
        stop_code: task.stop_code.clone(),
        stopped_reason: task.stopped_reason.clone(),
        lb: None,
    }
}

/// The placement request of a service's tasks of one task definition.
fn request_for(rec: &ServiceRecord, td: &TaskDefinition, seed: u64) -> Result<Request, String> {
    let mut constraints: Vec<PlacementConstraint> = rec.service.placement_constraints.clone();
    for c in td.placement_constraints.iter().flatten() {
        constraints.push(PlacementConstraint {
            kind: c.r#type.clone(),
            expression: c.expression.clone(),
        });
    }
    let constraints = placement::parse_constraints(&constraints).map_err(|e| e.message)?;
    let mut strategies =
        placement::parse_strategies(&rec.service.placement_strategy).map_err(|e| e.message)?;
    if strategies.is_empty() && rec.service.scheduling_strategy != "DAEMON" {
        // ECS's service default: spread over availability zones, then over instances.
        strategies = vec![
            Strategy::Spread(SpreadField::Attribute("ecs.availability-zone".into())),
            Strategy::Spread(SpreadField::InstanceId),
        ];
    }
    Ok(Request {
        reservation: placement::reservation(td, &TaskOverride::default()),
        group: rec.group(),
        constraints,
        requires_attributes: td
            .requires_attributes
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect::<Vec<Attribute>>(),
        strategies,
        seed,
    })
}

/// ECS's wording for the closest rejection.
fn placement_event(name: &str, rejections: &[Rejection]) -> String {
    let head = format!(
        "(service {name}) was unable to place a task because no container instance met all of its requirements."
    );
    let tail =
        "For more information, see the Troubleshooting section of the Amazon ECS Developer Guide.";
    let Some(r) = rejections.first() else {
        return format!("{head} Reason: No Container Instances were found in your cluster. {tail}");
    };
    let what = match r.reason.as_str() {
        "RESOURCE:CPU" => "has insufficient CPU units available.".to_string(),
        "RESOURCE:MEMORY" => "has insufficient memory available.".to_string(),
        "RESOURCE:PORTS" | "RESOURCE:PORTS_UDP" => {
            "is already using a port required by your task.".to_string()
        }
        other => format!("encountered error \"{other}\"."),
    };
    format!(
        "{head} The closest matching (container-instance {}) {what} {tail}",
        r.instance_id
    )
}

fn seed_of(s: &str, version: u64) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes().chain(version.to_le_bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

#[allow(clippy::too_many_arguments)]
async fn reconcile_one(
    node: &dyn Replica,
    settings: &ServiceSettings,
    state: &mut State,
    cluster: &str,
    rec: &ServiceRecord,
    view: &mut ClusterView,
    base_instances: &[InstanceInfo],
) -> PassResult {
    let now = now_secs();
    let group = rec.group();
    let records = node
        .reader()
        .tasks_of_group(cluster, &group)
        .map_err(serr)?;
    let mut checked: HashMap<String, bool> = HashMap::new();
    // The service's target groups that exist and that a listener forwards to. A deleted
    // one no longer gates health, nor does one whose listener is gone: it gets neither
    // traffic nor health checks (its targets are `unused`, `Target.NotInUse`).
    let mut lb_groups = BTreeSet::new();
    for l in &rec.service.load_balancers {
        if let Some(arn) = &l.target_group_arn {
            let tg = node.reader().elb_target_group(arn).map_err(serr)?;
            if tg.is_some_and(|g| !g.target_group.load_balancer_arns.is_empty()) {
                lb_groups.insert(arn.clone());
            }
        }
    }
    let mut tasks = Vec::with_capacity(records.len());
    for t in &records {
        let arn = t.task.task_definition_arn.clone().unwrap_or_default();
        let hc = match checked.get(&arn) {
            Some(v) => *v,
            None => {
                let v = task_def(node, state, &arn)
                    .map(|td| has_health_check(&td))
                    .unwrap_or(false);
                checked.insert(arn, v);
                v
            }
        };
        let mut info = task_info(t, hc);
        info.lb = lb_info(node, cluster, &lb_groups, t)?;
        tasks.push(info);
    }
    let primary_td = task_def(node, state, &rec.service.task_definition)?;
    let seed = seed_of(&rec.service.service_arn, rec.version);
    let base_req = request_for(rec, &primary_td, seed)?;
    let daemon = rec.service.scheduling_strategy == "DAEMON";
    let instances: Vec<InstanceInfo> = if daemon {
        let eligible: BTreeSet<String> = view.matching(&base_req).into_iter().collect();
        base_instances
            .iter()
            .map(|i| {
                let others = view
                    .node(&i.id)
                    .map(|n| {
                        n.groups
                            .iter()
                            .filter(|(g, _)| g.starts_with("service:") && **g != group)
                            .map(|(_, c)| *c)
                            .sum()
                    })
                    .unwrap_or(0);
                InstanceInfo {
                    eligible: eligible.contains(&i.id),
                    other_service_tasks: others,
                    ..i.clone()
                }
            })
            .collect()
    } else {
        base_instances.to_vec()
    };
    let decision: Decision = service::reconcile(&Input {
        record: rec,
        tasks: &tasks,
        instances: &instances,
        now,
        config: &settings.scheduler,
    });
    if decision.is_noop(rec) {
        return Ok(());
    }
    let Decision {
        record: mut next,
        mut start,
        stop,
    } = decision;
    // Big services start in batches: one Raft entry stays small enough to replicate
    // within a heartbeat, and the next pass starts the rest.
    start.truncate(MAX_STARTS_PER_DECISION);

    // Stops free their resources for this pass's placements.
    for s in &stop {
        if let Some(t) = records.iter().find(|t| t.task.id() == s.task_id) {
            view.release(&t.instance_id, &group, &t.reserved);
        }
    }

    // Starts: grouped by task definition (a rollback may start an older one).
    let mut by_td: BTreeMap<String, Vec<&Start>> = BTreeMap::new();
    for s in &start {
        by_td.entry(s.task_definition.clone()).or_default().push(s);
    }
    let tags = match rec.service.propagate_tags.as_str() {
        "SERVICE" => rec.service.tags.clone().unwrap_or_default(),
        _ => vec![],
    };
    let launch_type = rec
        .service
        .launch_type
        .clone()
        .unwrap_or_else(|| "EC2".into());
    let mut new_tasks = Vec::new();
    let mut unplaced: Option<Vec<Rejection>> = None;
    for (td_arn, starts) in by_td {
        let td = task_def(node, state, &td_arn)?;
        let req = request_for(rec, &td, seed)?;
        let td_tags = if rec.service.propagate_tags == "TASK_DEFINITION" {
            node.reader().tags(&td_arn).map_err(serr)?
        } else {
            tags.clone()
        };
        let mut targets: Vec<(String, String)> = Vec::new(); // (instance, deployment)
        let floating: Vec<&&Start> = starts.iter().filter(|s| s.instance_id.is_none()).collect();
        for s in starts.iter().filter(|s| s.instance_id.is_some()) {
            let id = s.instance_id.clone().unwrap_or_default();
            match view.place_on(&id, &req) {
                Ok(()) => targets.push((id, s.deployment_id.clone())),
                Err(r) => unplaced.get_or_insert_with(Vec::new).push(r),
            }
        }
        if !floating.is_empty() {
            let p = view.place(&req, floating.len());
            for (i, id) in p.placed.iter().enumerate() {
                targets.push((id.clone(), floating[i].deployment_id.clone()));
            }
            if p.placed.len() < floating.len() {
                unplaced.get_or_insert_with(Vec::new).extend(p.rejections);
            }
        }
        for (instance, deployment) in targets {
            new_tasks.push(berth_store::new_task::build(
                &settings.arn,
                cluster,
                &td,
                &TaskOverride::default(),
                &group,
                Some(deployment),
                td_tags.clone(),
                &launch_type,
                &instance,
                rec.service.enable_execute_command,
                placement::reservation(&td, &TaskOverride::default()),
            ));
        }
    }
    if let Some(rejections) = unplaced {
        service::push_event(&mut next, placement_event(rec.name(), &rejections), now);
    }
    if !new_tasks.is_empty() {
        let list: Vec<String> = new_tasks
            .iter()
            .map(|t| format!("(task {})", t.task_id))
            .collect();
        service::push_event(
            &mut next,
            format!(
                "(service {}) has started {} tasks: {}.",
                rec.name(),
                new_tasks.len(),
                list.join(" ")
            ),
            now,
        );
    }
    if new_tasks.is_empty() && stop.is_empty() && next == *rec {
        return Ok(());
    }
    let stops: Vec<TaskStop> = stop
        .into_iter()
        .map(|s| TaskStop {
            task_id: s.task_id,
            reason: s.reason,
            stop_code: s.stop_code,
        })
        .collect();
    let started = new_tasks.len();
    let stopped = stops.len();
    let cmd = Command::ReconcileService {
        ctx: settings.arn.clone(),
        cluster: cluster.to_string(),
        name: rec.name().to_string(),
        expected_version: rec.version,
        record: next,
        new_tasks,
        stops,
        at: now,
    };
    match propose_checked(node, cmd).await? {
        Proposed::Applied(Response::Reconciled { failures, .. }) => {
            tracing::debug!(
                cluster,
                service = rec.name(),
                started,
                stopped,
                refused = failures.len(),
                "service reconciled"
            );
            Ok(())
        }
        Proposed::Conflict => Ok(()),
        Proposed::Applied(other) => Err(format!("unexpected answer {other:?}")),
    }
}
