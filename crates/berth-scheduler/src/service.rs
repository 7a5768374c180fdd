//! Service reconciliation: from a service record, its tasks and the cluster's
//! instances, what to start, what to stop, and the service's next record (deployments,
//! rollout state, failed tasks, events). A pure function, run by the controller on
//! the leader at every change and tick; its answer is proposed as one command that is
//! dropped if the record's `version` moved meanwhile.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use berth_model::{
    circuit_breaker_threshold, max_tasks, min_healthy_tasks, Deployment, DeploymentHistory,
    ServiceRecord,
};

/// One task of the service as the reconciler sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskInfo {
    pub id: String,
    /// `startedBy`: the deployment id (`ecs-svc/…`) it belongs to.
    pub deployment_id: String,
    pub instance_id: String,
    /// PROVISIONING | PENDING | ACTIVATING | RUNNING | DEACTIVATING | STOPPING |
    /// DEPROVISIONING | STOPPED
    pub last_status: String,
    /// RUNNING | STOPPED
    pub desired_status: String,
    /// HEALTHY | UNHEALTHY | UNKNOWN (task `healthStatus`)
    pub health_status: String,
    /// An essential container of the task has a health check.
    pub has_health_check: bool,
    pub created_at: f64,
    /// When it reached RUNNING (`startedAt`).
    pub started_at: Option<f64>,
    pub stopped_at: Option<f64>,
    pub stop_code: Option<String>,
    pub stopped_reason: Option<String>,
    /// The load balancer's view, for a service with `loadBalancers` (`None` otherwise).
    pub lb: Option<LbInfo>,
}

/// A task's targets in its service's target groups, as the load balancer sees them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LbInfo {
    /// Registered in every target group of the service and healthy in each.
    pub healthy: bool,
    /// A target of the task found unhealthy by the load balancer.
    pub unhealthy: Option<LbUnhealthy>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct LbUnhealthy {
    pub target_group_arn: String,
    /// The target's id (the container instance id, or the task IP) and port.
    pub target_id: String,
    pub port: u16,
    /// ALB's description, e.g. `Health checks failed with these codes: [503]`.
    pub description: String,
}

/// One container instance as the reconciler sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InstanceInfo {
    pub id: String,
    /// ACTIVE | DRAINING | …
    pub status: String,
    pub agent_connected: bool,
    /// DAEMON: the instance satisfies the service's constraints and attributes.
    pub eligible: bool,
    /// Live tasks on it that belong to other services (DAEMON tasks on a DRAINING
    /// instance stop after these).
    pub other_service_tasks: u32,
}

/// Scheduler knobs (server flags; ECS's values as defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// A RUNNING task without a container health check counts as healthy after this
    /// (ECS: 40 s).
    pub healthy_after_secs: f64,
    /// Launch back-off after repeated failures: first delay and cap.
    pub backoff_base_secs: f64,
    pub backoff_max_secs: f64,
    /// Consecutive launch failures before the back-off starts.
    pub backoff_after: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            healthy_after_secs: 40.0,
            backoff_base_secs: 10.0,
            backoff_max_secs: 300.0,
            backoff_after: 3,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Input<'a> {
    pub record: &'a ServiceRecord,
    /// Every task of the service the store keeps (STOPPED ones included).
    pub tasks: &'a [TaskInfo],
    /// Every container instance of the cluster.
    pub instances: &'a [InstanceInfo],
    pub now: f64,
    pub config: &'a Config,
}

/// One task to start.
#[derive(Debug, Clone, PartialEq)]
pub struct Start {
    pub deployment_id: String,
    pub task_definition: String,
    /// DAEMON: the instance it belongs on. REPLICA: `None` (placement decides).
    pub instance_id: Option<String>,
}

/// One task to stop.
#[derive(Debug, Clone, PartialEq)]
pub struct Stop {
    pub task_id: String,
    /// e.g. `Scaling activity initiated by (deployment ecs-svc/…)`
    pub reason: String,
    /// `ServiceSchedulerInitiated`
    pub stop_code: String,
}

#[derive(Debug, Clone)]
pub struct Decision {
    /// The service's next record (`version` untouched: apply bumps it).
    pub record: ServiceRecord,
    pub start: Vec<Start>,
    pub stop: Vec<Stop>,
}

impl Decision {
    /// Whether anything is to be proposed.
    pub fn is_noop(&self, before: &ServiceRecord) -> bool {
        self.start.is_empty() && self.stop.is_empty() && self.record == *before
    }
}

/// `stopCode` of every stop the scheduler decides.
pub const SCHEDULER_STOP_CODE: &str = "ServiceSchedulerInitiated";
/// `stopCode` of StopTask.
pub const USER_STOP_CODE: &str = "UserInitiated";
/// A repeated event message is suppressed for this long; "has reached a steady state."
/// comes back after it while the service stays steady.
pub const EVENT_DEDUP_SECS: f64 = 6.0 * 3600.0;
/// `events[]` keeps at most this many (ECS: 100).
pub const MAX_EVENTS: usize = 100;
/// The deployment history keeps at most this many entries (the last successful one is
/// always kept: rollback needs it).
pub const MAX_HISTORY: usize = 100;
/// `stoppedReason` of a task stopped for failing its container health check.
pub const UNHEALTHY_REASON: &str = "Task failed container health checks";
/// `stoppedReason` of the tasks of a service being deleted.
pub const DELETING_REASON: &str = "Service is being deleted";
/// `rolloutStateReason` (and the history's `statusReason`) of a deployment the circuit
/// breaker failed.
pub const CIRCUIT_BREAKER_REASON: &str = "ECS deployment circuit breaker: tasks failed to start.";

/// `stoppedReason` of scale-in and deployment replacement:
/// `Scaling activity initiated by (deployment ecs-svc/…)`.
pub fn scaling_reason(deployment_id: &str) -> String {
    format!("Scaling activity initiated by (deployment {deployment_id})")
}

/// Whether the service uses the DAEMON scheduling strategy.
pub fn is_daemon(record: &ServiceRecord) -> bool {
    record.service.scheduling_strategy == "DAEMON"
}

/// `(maximumPercent, minimumHealthyPercent)` of the service, with the defaults of its
/// scheduling strategy when absent (REPLICA 200/100, DAEMON 100/0).
pub fn percentages(record: &ServiceRecord) -> (i64, i64) {
    let dc = &record.service.deployment_configuration;
    if is_daemon(record) {
        (
            dc.maximum_percent.unwrap_or(100),
            dc.minimum_healthy_percent.unwrap_or(0),
        )
    } else {
        (dc.max_percent(), dc.min_healthy_percent())
    }
}

/// A deployment id (`ecs-svc/` and 19 digits) derived from `parts`: the same parts give
/// the same id, so a recomputed decision is identical.
pub fn derive_deployment_id(parts: &[&str]) -> String {
    let h = fnv1a(parts.iter().map(|p| p.as_bytes()));
    // 19 digits, no leading zero.
    format!(
        "ecs-svc/{}",
        1_000_000_000_000_000_000 + h % 9_000_000_000_000_000_000
    )
}

fn fnv1a<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        // A separator, so ("ab", "c") and ("a", "bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The short id ECS prints in events: the last segment of an ARN, or the id itself.
fn short_id(id: &str) -> &str {
    id.rsplit('/').next().unwrap_or(id)
}

/// Where a live task stands, in the order the scheduler prefers to stop them:
/// tasks that do nothing for the service go first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    /// Not RUNNING yet.
    Pending,
    /// RUNNING, container health check UNHEALTHY past the grace period.
    Unhealthy,
    /// RUNNING, not healthy yet (under 40 s without a health check, UNKNOWN, or
    /// UNHEALTHY within the grace period).
    Starting,
    /// RUNNING and counts toward minimumHealthyPercent.
    Healthy,
}

fn is_live(t: &TaskInfo) -> bool {
    t.desired_status == "RUNNING" && t.last_status != "STOPPED"
}

fn phase(t: &TaskInfo, grace: f64, now: f64, cfg: &Config) -> Phase {
    if t.last_status != "RUNNING" {
        return Phase::Pending;
    }
    let since = t.started_at.unwrap_or(t.created_at);
    if let Some(lb) = &t.lb {
        // Behind a load balancer: healthy when its targets are (and its container
        // health check, if it has one); failing either past the grace period replaces it.
        let past_grace = since + grace <= now;
        if past_grace
            && (lb.unhealthy.is_some() || (t.has_health_check && t.health_status == "UNHEALTHY"))
        {
            return Phase::Unhealthy;
        }
        let container_ok = !t.has_health_check || t.health_status == "HEALTHY";
        return if lb.healthy && container_ok {
            Phase::Healthy
        } else {
            Phase::Starting
        };
    }
    if t.has_health_check {
        match t.health_status.as_str() {
            "HEALTHY" => Phase::Healthy,
            "UNHEALTHY" if since + grace <= now => Phase::Unhealthy,
            _ => Phase::Starting,
        }
    } else if since + cfg.healthy_after_secs <= now {
        Phase::Healthy
    } else {
        Phase::Starting
    }
}

/// A task that stopped by itself (not by the scheduler or a user on purpose).
fn is_failure(t: &TaskInfo) -> bool {
    !matches!(
        t.stop_code.as_deref(),
        Some(SCHEDULER_STOP_CODE | USER_STOP_CODE | "TerminationNotice" | "SpotInterruption")
    )
}

/// Consecutive launch failures of the deployment: its newest tasks (by creation) that
/// stopped by themselves without reaching RUNNING, up to the newest one that reached
/// RUNNING. Tasks still starting and tasks stopped on purpose before they ran are
/// neither.
fn consecutive_launch_failures(tasks: &[&TaskInfo], deployment_id: &str) -> u32 {
    let mut mine: Vec<&TaskInfo> = tasks
        .iter()
        .copied()
        .filter(|t| t.deployment_id == deployment_id)
        .collect();
    mine.sort_by(|a, b| {
        b.created_at
            .total_cmp(&a.created_at)
            .then_with(|| b.id.cmp(&a.id))
    });
    let mut n = 0;
    for t in mine {
        if t.started_at.is_some() {
            break;
        }
        if t.last_status == "STOPPED" && is_failure(t) {
            n += 1;
        }
    }
    n
}

/// One live task of the service, classified.
#[derive(Debug)]
struct Live<'a> {
    task: &'a TaskInfo,
    phase: Phase,
    /// It belongs to the PRIMARY deployment.
    primary: bool,
    /// Age of its deployment: 0 for a deployment the service no longer lists, then
    /// oldest first.
    rank: usize,
    /// It must leave its instance (REPLICA: DRAINING or gone; DAEMON: no longer a
    /// target): the stop reason.
    moving: Option<String>,
    /// Live tasks of the service on its instance.
    on_instance: usize,
}

impl Live<'_> {
    /// Preferred stop order among candidates: useless tasks first, then older
    /// deployments, tasks that must move, the most loaded instance, the task id.
    fn key(&self) -> (Phase, usize, bool, Reverse<usize>, &str) {
        (
            self.phase,
            self.rank,
            self.moving.is_none(),
            Reverse(self.on_instance),
            self.task.id.as_str(),
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Why {
    Scaling,
    Unhealthy,
    Moving(String),
    Deleting,
}

#[derive(Debug, Default)]
struct Plan {
    starts: Vec<Start>,
    /// Indexes into the live tasks, with why.
    stops: Vec<(usize, Why)>,
    /// Work remains but the percentages let nothing start or stop.
    stuck: bool,
}

/// What [`plan_replica`] and [`plan_daemon`] need to know besides the tasks.
struct Limits<'a> {
    desired: i64,
    max_total: i64,
    min_healthy: i64,
    primary: Option<&'a Deployment>,
    /// The PRIMARY may start tasks (not FAILED, no launch back-off).
    can_launch: bool,
}

impl Limits<'_> {
    fn primary_failed(&self) -> bool {
        self.primary.is_some_and(|p| p.rollout_state == "FAILED")
    }

    fn start(&self, instance_id: Option<String>) -> Option<Start> {
        self.primary.map(|p| Start {
            deployment_id: p.id.clone(),
            task_definition: p.task_definition.clone(),
            instance_id,
        })
    }
}

fn moving_or_scaling(l: &Live<'_>) -> Why {
    l.moving.clone().map_or(Why::Scaling, Why::Moving)
}

/// Applies minimumHealthyPercent to the healthy candidates: each is stopped only if
/// the healthy tasks left afterwards still reach the minimum.
/// Healthy tasks already among `stops` do not count.
fn stop_guarded(
    live: &[Live<'_>],
    mut guarded: Vec<(usize, Why)>,
    min_healthy: i64,
    stops: &mut Vec<(usize, Why)>,
) {
    guarded.sort_by(|a, b| live[a.0].key().cmp(&live[b.0].key()));
    let stopping: BTreeSet<usize> = stops.iter().map(|(i, _)| *i).collect();
    let mut healthy_left = live
        .iter()
        .enumerate()
        .filter(|(i, l)| l.phase == Phase::Healthy && !stopping.contains(i))
        .count() as i64;
    for (i, why) in guarded {
        if healthy_left > min_healthy {
            stops.push((i, why));
            healthy_left -= 1;
        }
    }
}

fn plan_replica(live: &[Live<'_>], lim: &Limits<'_>) -> Plan {
    let mut order: Vec<usize> = (0..live.len()).collect();
    order.sort_by(|&a, &b| live[a].key().cmp(&live[b].key()));

    // PRIMARY tasks that will stay: not on a draining instance, not unhealthy.
    let good: Vec<usize> = order
        .iter()
        .copied()
        .filter(|&i| {
            live[i].primary && live[i].moving.is_none() && live[i].phase != Phase::Unhealthy
        })
        .collect();
    let n_good = good.len() as i64;
    let want = (lim.desired - n_good).max(0);
    let room = (lim.max_total - live.len() as i64).max(0);
    let n_start = if lim.can_launch && lim.primary.is_some() {
        want.min(room)
    } else {
        0
    };

    let mut free = Vec::new(); // not healthy: stopping them never breaks the minimum
    let mut guarded = Vec::new(); // healthy: minimumHealthyPercent decides

    // PRIMARY surplus (scale-in), the least useful first.
    let surplus = (n_good - lim.desired).max(0) as usize;
    for &i in good.iter().take(surplus) {
        if live[i].phase == Phase::Healthy {
            guarded.push((i, Why::Scaling));
        } else {
            free.push((i, Why::Scaling));
        }
    }

    // Unhealthy PRIMARY tasks: replaced first when maximumPercent leaves room (and
    // stopped once the replacements are healthy), stopped right away otherwise.
    let unhealthy: Vec<usize> = order
        .iter()
        .copied()
        .filter(|&i| live[i].primary && live[i].phase == Phase::Unhealthy)
        .collect();
    let healthy_good = good
        .iter()
        .filter(|&&i| live[i].phase == Phase::Healthy)
        .count() as i64;
    let k = if healthy_good >= lim.desired {
        unhealthy.len()
    } else {
        ((want - room).max(0) as usize).min(unhealthy.len())
    };
    free.extend(unhealthy.iter().take(k).map(|&i| (i, Why::Unhealthy)));

    // PRIMARY tasks on draining instances: counted healthy while they run; replaced
    // within maximumPercent, stopped as the minimum allows.
    for &i in &order {
        let l = &live[i];
        if l.primary && l.phase != Phase::Unhealthy {
            if let Some(reason) = &l.moving {
                let why = Why::Moving(reason.clone());
                if l.phase == Phase::Healthy {
                    guarded.push((i, why));
                } else {
                    free.push((i, why));
                }
            }
        }
    }

    // Older deployments. Under a FAILED PRIMARY they stay (it launches nothing, so
    // nothing would replace them); while the PRIMARY cannot launch (back-off) and still
    // lacks tasks, only unhealthy ones go.
    if !lim.primary_failed() {
        let old_ok = lim.can_launch || n_good >= lim.desired;
        for &i in &order {
            let l = &live[i];
            if l.primary {
                continue;
            }
            match l.phase {
                Phase::Unhealthy => free.push((i, Why::Unhealthy)),
                _ if !old_ok => {}
                Phase::Healthy => guarded.push((i, moving_or_scaling(l))),
                _ => free.push((i, moving_or_scaling(l))),
            }
        }
    }

    let mut stops = free;
    stop_guarded(live, guarded, lim.min_healthy, &mut stops);

    let transitioning = live
        .iter()
        .any(|l| matches!(l.phase, Phase::Pending | Phase::Starting));
    let stuck = lim.desired > 0
        && lim.can_launch
        && want > 0
        && room == 0
        && stops.is_empty()
        && !transitioning;

    Plan {
        starts: (0..n_start).filter_map(|_| lim.start(None)).collect(),
        stops,
        stuck,
    }
}

fn plan_daemon(
    live: &[Live<'_>],
    lim: &Limits<'_>,
    targets: &[&InstanceInfo],
    instances: &BTreeMap<&str, &InstanceInfo>,
) -> Plan {
    let mut order: Vec<usize> = (0..live.len()).collect();
    order.sort_by(|&a, &b| live[a].key().cmp(&live[b].key()));

    let target_ids: BTreeSet<&str> = targets.iter().map(|i| i.id.as_str()).collect();
    let on_target = |l: &Live<'_>| target_ids.contains(l.task.instance_id.as_str());
    let target_live = live.iter().filter(|l| on_target(l)).count() as i64;
    let mut room = (lim.max_total - target_live).max(0);

    // Per target instance, the PRIMARY task kept: the healthiest, then the lowest id.
    let mut keeper: BTreeMap<&str, usize> = BTreeMap::new();
    for &i in &order {
        let l = &live[i];
        if l.primary && l.phase != Phase::Unhealthy && on_target(l) {
            let inst = l.task.instance_id.as_str();
            let better = match keeper.get(inst) {
                None => true,
                Some(&k) => l.phase > live[k].phase,
            };
            if better {
                keeper.insert(inst, i);
            }
        }
    }

    let mut starts = Vec::new();
    let mut planned: BTreeSet<&str> = BTreeSet::new();
    let mut missing = 0;
    for inst in targets {
        if keeper.contains_key(inst.id.as_str()) || !inst.agent_connected {
            continue;
        }
        missing += 1;
        if lim.can_launch && room > 0 {
            if let Some(s) = lim.start(Some(inst.id.clone())) {
                starts.push(s);
                planned.insert(inst.id.as_str());
                room -= 1;
            }
        }
    }

    let mut free = Vec::new();
    let mut guarded = Vec::new();
    for &i in &order {
        let l = &live[i];
        let inst_id = l.task.instance_id.as_str();
        if !on_target(l) {
            if l.task.instance_id.is_empty() {
                continue; // not placed yet
            }
            // A draining instance keeps its daemon task until its other tasks are gone.
            if let Some(inst) = instances.get(inst_id) {
                if inst.status == "DRAINING" && inst.other_service_tasks > 0 {
                    continue;
                }
            }
            let why = if l.phase == Phase::Unhealthy {
                Why::Unhealthy
            } else {
                moving_or_scaling(l)
            };
            free.push((i, why));
            continue;
        }
        if l.primary {
            if l.phase == Phase::Unhealthy {
                free.push((i, Why::Unhealthy));
            } else if keeper.get(inst_id) != Some(&i) {
                // A second PRIMARY task on the instance.
                if l.phase == Phase::Healthy {
                    guarded.push((i, Why::Scaling));
                } else {
                    free.push((i, Why::Scaling));
                }
            }
            continue;
        }
        // An older deployment's task on a target instance.
        if lim.primary_failed() {
            continue;
        }
        if l.phase == Phase::Unhealthy {
            free.push((i, Why::Unhealthy));
            continue;
        }
        match keeper.get(inst_id) {
            // Replaced: its successor is healthy.
            Some(&k) if live[k].phase == Phase::Healthy => free.push((i, Why::Scaling)),
            // The successor is on its way.
            Some(_) => {}
            None if planned.contains(inst_id) => {}
            None => {
                let connected = instances.get(inst_id).is_some_and(|i| i.agent_connected);
                if !lim.can_launch || !connected {
                    continue;
                }
                // No room to start the successor beside it: it goes first.
                if l.phase == Phase::Healthy {
                    guarded.push((i, Why::Scaling));
                } else {
                    free.push((i, Why::Scaling));
                }
            }
        }
    }

    let mut stops = free;
    stop_guarded(live, guarded, lim.min_healthy, &mut stops);

    let transitioning = live
        .iter()
        .any(|l| matches!(l.phase, Phase::Pending | Phase::Starting));
    let stuck = lim.desired > 0
        && lim.can_launch
        && missing > 0
        && starts.is_empty()
        && stops.is_empty()
        && !transitioning;
    Plan {
        starts,
        stops,
        stuck,
    }
}

fn plan_delete(live: &[Live<'_>]) -> Plan {
    let mut order: Vec<usize> = (0..live.len()).collect();
    order.sort_by(|&a, &b| live[a].key().cmp(&live[b].key()));
    Plan {
        starts: Vec::new(),
        stops: order.into_iter().map(|i| (i, Why::Deleting)).collect(),
        stuck: false,
    }
}

/// Counts a failed task against its deployment (`failedTasks`, unless the deployment
/// has a healthy task, which resets it) and its history entry (`failureCount`).
fn count_failure(rec: &mut ServiceRecord, deployment_id: &str, healthy_deps: &BTreeSet<&str>) {
    if !healthy_deps.contains(deployment_id) {
        if let Some(d) = rec
            .service
            .deployments
            .iter_mut()
            .find(|d| d.id == deployment_id)
        {
            d.failed_tasks += 1;
        }
    }
    if let Some(h) = rec.history.iter_mut().rev().find(|h| h.id == deployment_id) {
        h.failure_count += 1;
    }
}

/// What the service needs next.
///
/// One pass: account for tasks that stopped since the last pass (failures, launch
/// back-off), apply the circuit breaker (and roll back), decide starts and stops within
/// maximumPercent / minimumHealthyPercent (REPLICA), per instance (DAEMON) or all stops
/// (DRAINING), then update deployments, rollout state, events and steady state. A
/// steady service gives a no-op decision pass after pass.
pub fn reconcile(input: &Input<'_>) -> Decision {
    let before = input.record;
    let mut rec = before.clone();
    if rec.service.status == "INACTIVE" {
        return Decision {
            record: rec,
            start: Vec::new(),
            stop: Vec::new(),
        };
    }
    let now = input.now;
    let cfg = input.config;
    let name = rec.name().to_string();
    let draining_service = rec.service.status == "DRAINING";
    let daemon = is_daemon(&rec);
    let grace = rec.service.health_check_grace_period_seconds.max(0) as f64;

    let mut tasks: Vec<&TaskInfo> = input.tasks.iter().collect();
    tasks.sort_by(|a, b| a.id.cmp(&b.id));
    tasks.dedup_by(|a, b| a.id == b.id);
    let instances: BTreeMap<&str, &InstanceInfo> =
        input.instances.iter().map(|i| (i.id.as_str(), i)).collect();
    // DAEMON: one task per eligible ACTIVE instance.
    let targets: Vec<&InstanceInfo> = instances
        .values()
        .copied()
        .filter(|i| i.eligible && i.status == "ACTIVE")
        .collect();

    let desired = if draining_service {
        0
    } else if daemon {
        targets.len() as i64
    } else {
        rec.service.desired_count.max(0)
    };
    if daemon || draining_service {
        rec.service.desired_count = desired;
    }

    let live_tasks: Vec<(&TaskInfo, Phase)> = tasks
        .iter()
        .copied()
        .filter(|t| is_live(t))
        .map(|t| (t, phase(t, grace, now, cfg)))
        .collect();
    let healthy_deps: BTreeSet<&str> = live_tasks
        .iter()
        .filter(|(_, p)| *p == Phase::Healthy)
        .map(|(t, _)| t.deployment_id.as_str())
        .collect();

    // 1. Tasks that stopped since the last pass: failures count once.
    let present: BTreeSet<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
    rec.accounted_stops
        .retain(|id| present.contains(id.as_str()));
    let mut newly: Vec<&TaskInfo> = tasks
        .iter()
        .copied()
        .filter(|t| t.last_status == "STOPPED" && !rec.accounted_stops.contains(&t.id))
        .collect();
    newly.sort_by(|a, b| {
        a.stopped_at
            .unwrap_or(0.0)
            .total_cmp(&b.stopped_at.unwrap_or(0.0))
            .then_with(|| a.id.cmp(&b.id))
    });
    for t in newly {
        rec.accounted_stops.insert(t.id.clone());
        if is_failure(t) {
            count_failure(&mut rec, &t.deployment_id, &healthy_deps);
        }
    }
    // A deployment with a healthy task has no consecutive failures.
    for d in &mut rec.service.deployments {
        if healthy_deps.contains(d.id.as_str()) {
            d.failed_tasks = 0;
        }
    }

    // 2. Launch back-off, from the PRIMARY's consecutive launch failures.
    if rec.service.status == "ACTIVE" {
        let n = rec
            .primary()
            .map_or(0, |p| consecutive_launch_failures(&tasks, &p.id));
        if n > rec.launch_failures && n >= cfg.backoff_after {
            let exp = (n - cfg.backoff_after).min(62) as i32;
            let delay = (cfg.backoff_base_secs * 2f64.powi(exp)).min(cfg.backoff_max_secs);
            rec.next_launch_at = now + delay;
            push_event(
                &mut rec,
                format!("(service {name}) is unable to consistently start tasks successfully."),
                now,
            );
        }
        rec.launch_failures = n;
        if n == 0 && rec.next_launch_at > now {
            rec.next_launch_at = 0.0;
        }
    }

    // 3. Circuit breaker.
    let cb = rec.service.deployment_configuration.circuit_breaker();
    if cb.enable && rec.service.status == "ACTIVE" {
        let threshold = circuit_breaker_threshold(desired);
        let tripped = rec.service.deployments.iter().position(|d| {
            d.status == "PRIMARY" && d.rollout_state == "IN_PROGRESS" && d.failed_tasks >= threshold
        });
        if let Some(pi) = tripped {
            let failed_id = rec.service.deployments[pi].id.clone();
            {
                let d = &mut rec.service.deployments[pi];
                d.rollout_state = "FAILED".into();
                d.rollout_state_reason = CIRCUIT_BREAKER_REASON.into();
            }
            push_event(
                &mut rec,
                format!("(service {name}) (deployment {failed_id}) deployment failed: tasks failed to start."),
                now,
            );
            let was_rollback = rec
                .history
                .iter()
                .rev()
                .find(|h| h.id == failed_id)
                .is_some_and(|h| h.rollback);
            let target = if cb.rollback && !was_rollback {
                rec.history
                    .iter()
                    .rev()
                    .find(|h| {
                        h.id != failed_id
                            && matches!(h.status.as_str(), "SUCCESSFUL" | "ROLLBACK_SUCCESSFUL")
                    })
                    .map(|h| (h.id.clone(), h.task_definition.clone()))
            } else {
                None
            };
            if let Some(h) = rec.history.iter_mut().rev().find(|h| h.id == failed_id) {
                h.status = if was_rollback {
                    "ROLLBACK_FAILED"
                } else {
                    "STOPPED"
                }
                .into();
                h.status_reason = CIRCUIT_BREAKER_REASON.into();
                h.finished_at = Some(now);
            }
            if let Some((target_id, task_definition)) = target {
                let version = before.version.to_string();
                let new_id =
                    derive_deployment_id(&[&rec.service.service_arn, &version, &failed_id]);
                new_deployment(&mut rec, &task_definition, &new_id, now, Some(&failed_id));
                push_event(
                    &mut rec,
                    format!("(service {name}) rolling back to deployment {target_id}."),
                    now,
                );
            }
        }
    }

    // 4. Classify the live tasks against the (possibly new) PRIMARY.
    let primary_id = rec.primary().map(|p| p.id.clone()).unwrap_or_default();
    let mut by_age: Vec<&Deployment> = rec.service.deployments.iter().collect();
    by_age.sort_by(|a, b| {
        a.created_at
            .total_cmp(&b.created_at)
            .then_with(|| a.id.cmp(&b.id))
    });
    let rank: BTreeMap<&str, usize> = by_age
        .iter()
        .enumerate()
        .map(|(i, d)| (d.id.as_str(), i + 1))
        .collect();
    let mut per_instance: BTreeMap<&str, usize> = BTreeMap::new();
    for (t, _) in &live_tasks {
        *per_instance.entry(t.instance_id.as_str()).or_default() += 1;
    }
    let target_ids: BTreeSet<&str> = targets.iter().map(|i| i.id.as_str()).collect();
    let live: Vec<Live<'_>> = live_tasks
        .iter()
        .map(|&(t, phase)| {
            let moving = if t.instance_id.is_empty() {
                None
            } else {
                match instances.get(t.instance_id.as_str()) {
                    None => Some(format!("Container instance {} is no longer registered", t.instance_id)),
                    Some(i) if i.status == "DRAINING" => {
                        Some(format!("Container instance {} is being drained", t.instance_id))
                    }
                    Some(i) if i.status != "ACTIVE" => {
                        Some(format!("Container instance {} is {}", t.instance_id, i.status))
                    }
                    Some(_) if daemon && !target_ids.contains(t.instance_id.as_str()) => Some(format!(
                        "Container instance {} no longer satisfies the service's placement constraints",
                        t.instance_id
                    )),
                    Some(_) => None,
                }
            };
            Live {
                task: t,
                phase,
                primary: !primary_id.is_empty() && t.deployment_id == primary_id,
                rank: rank.get(t.deployment_id.as_str()).copied().unwrap_or(0),
                moving,
                on_instance: per_instance.get(t.instance_id.as_str()).copied().unwrap_or(0),
            }
        })
        .collect();

    // 5. What to start and stop.
    let (max_pct, min_pct) = percentages(&rec);
    let max_total = if daemon {
        max_tasks(desired, max_pct)
    } else {
        // A REPLICA maximum under 100 % could never reach the desired count.
        max_tasks(desired, max_pct).max(desired)
    };
    let min_healthy = min_healthy_tasks(desired, min_pct).min(desired);
    let primary = rec.primary().cloned();
    let can_launch = primary
        .as_ref()
        .is_some_and(|p| p.rollout_state != "FAILED")
        && now >= rec.next_launch_at;
    let lim = Limits {
        desired,
        max_total,
        min_healthy,
        primary: primary.as_ref(),
        can_launch,
    };
    let plan = if draining_service {
        plan_delete(&live)
    } else if daemon {
        plan_daemon(&live, &lim, &targets, &instances)
    } else {
        plan_replica(&live, &lim)
    };

    // 6. Stops, their events and failures.
    let mut stops = Vec::new();
    let mut stopped: BTreeSet<usize> = BTreeSet::new();
    let scaling = scaling_reason(&primary_id);
    for (i, why) in &plan.stops {
        if !stopped.insert(*i) {
            continue;
        }
        let t = live[*i].task;
        let lb_unhealthy = t.lb.as_ref().and_then(|l| l.unhealthy.as_ref());
        let reason = match why {
            Why::Scaling => scaling.clone(),
            Why::Unhealthy => match lb_unhealthy {
                Some(u) => format!(
                    "Task failed ELB health checks in (target-group {})",
                    u.target_group_arn
                ),
                None => UNHEALTHY_REASON.to_string(),
            },
            Why::Moving(r) => r.clone(),
            Why::Deleting => DELETING_REASON.to_string(),
        };
        if *why == Why::Unhealthy {
            let event = match lb_unhealthy {
                Some(u) => format!(
                    "(service {name}) (instance {}) (port {}) is unhealthy in (target-group {}) due to (reason {}).",
                    u.target_id, u.port, u.target_group_arn, u.description
                ),
                None => format!(
                    "(service {name}) (task {}) failed container health checks.",
                    short_id(&t.id)
                ),
            };
            push_event(&mut rec, event, now);
            count_failure(&mut rec, &t.deployment_id, &healthy_deps);
        }
        stops.push(Stop {
            task_id: t.id.clone(),
            reason,
            stop_code: SCHEDULER_STOP_CODE.into(),
        });
    }
    if !stops.is_empty() {
        let list: Vec<String> = stops
            .iter()
            .map(|s| format!("(task {})", short_id(&s.task_id)))
            .collect();
        push_event(
            &mut rec,
            format!(
                "(service {name}) has stopped {} running tasks: {}.",
                stops.len(),
                list.join(" ")
            ),
            now,
        );
    }
    if plan.stuck {
        push_event(
            &mut rec,
            format!(
                "(service {name}) was unable to stop or start tasks during a deployment because of the \
                 service deployment configuration. Update the minimumHealthyPercent or maximumPercent \
                 value and try again."
            ),
            now,
        );
    }

    // 7. Deployments: counts, finished ones removed, updatedAt.
    #[derive(Default)]
    struct Counts {
        running: i64,
        pending: i64,
        remaining: i64,
    }
    let mut counts: BTreeMap<&str, Counts> = BTreeMap::new();
    for (i, l) in live.iter().enumerate() {
        let c = counts.entry(l.task.deployment_id.as_str()).or_default();
        if l.task.last_status == "RUNNING" {
            c.running += 1;
        } else {
            c.pending += 1;
        }
        if !stopped.contains(&i) {
            c.remaining += 1;
        }
    }
    rec.service.deployments.retain(|d| {
        d.status == "PRIMARY" || counts.get(d.id.as_str()).is_some_and(|c| c.remaining > 0)
    });
    for d in &mut rec.service.deployments {
        let c = counts.get(d.id.as_str());
        d.running_count = c.map_or(0, |c| c.running);
        d.pending_count = c.map_or(0, |c| c.pending);
        d.desired_count = if d.status == "PRIMARY" {
            desired
        } else {
            c.map_or(0, |c| c.remaining)
        };
    }
    rec.service.running_count = live
        .iter()
        .filter(|l| l.task.last_status == "RUNNING")
        .count() as i64;
    rec.service.pending_count = live.len() as i64 - rec.service.running_count;
    if !primary_id.is_empty() {
        let threshold = circuit_breaker_threshold(desired);
        if let Some(h) = rec.history.iter_mut().rev().find(|h| h.id == primary_id) {
            if h.finished_at.is_none() {
                h.threshold = threshold;
            }
        }
    }

    // 8. Rollout completion and steady state.
    let complete = rec.service.status == "ACTIVE"
        && plan.starts.is_empty()
        && stops.is_empty()
        && rec.service.deployments.len() == 1
        && primary
            .as_ref()
            .is_some_and(|p| p.rollout_state != "FAILED")
        && live.len() as i64 == desired
        && live
            .iter()
            .all(|l| l.primary && l.phase == Phase::Healthy && l.moving.is_none());
    if complete {
        let mut completed = None;
        if let Some(p) = rec
            .service
            .deployments
            .iter_mut()
            .find(|d| d.status == "PRIMARY")
        {
            if p.rollout_state == "IN_PROGRESS" {
                p.rollout_state = "COMPLETED".into();
                p.rollout_state_reason = format!("ECS deployment {} completed.", p.id);
                completed = Some(p.id.clone());
            }
        }
        if let Some(id) = completed {
            if let Some(h) = rec.history.iter_mut().rev().find(|h| h.id == id) {
                if h.finished_at.is_none() {
                    h.status = if h.rollback {
                        "ROLLBACK_SUCCESSFUL"
                    } else {
                        "SUCCESSFUL"
                    }
                    .into();
                    h.finished_at = Some(now);
                }
            }
            push_event(
                &mut rec,
                format!("(service {name}) (deployment {id}) deployment completed."),
                now,
            );
        }
        push_event(
            &mut rec,
            format!("(service {name}) has reached a steady state."),
            now,
        );
    }
    // Steady exactly while complete: a service waiting for a task to become healthy, or
    // held by the back-off, is not steady either. The steady-state event is not repeated
    // when it comes back within 6 hours (push_event's dedup).
    rec.steady = complete;

    // 9. DeleteService: INACTIVE once nothing runs.
    if draining_service && live.is_empty() {
        rec.service.status = "INACTIVE".into();
    }

    // updatedAt of every deployment that changed in this pass.
    for d in &mut rec.service.deployments {
        if let Some(old) = before.service.deployments.iter().find(|o| o.id == d.id) {
            let mut cmp = d.clone();
            cmp.updated_at = old.updated_at;
            if cmp != *old {
                d.updated_at = now;
            }
        }
    }

    Decision {
        record: rec,
        start: plan.starts,
        stop: stops,
    }
}

/// Adds an event (newest first, ≤100), unless the newest event already says the same
/// and is younger than 6 hours (ECS suppresses duplicates).
pub fn push_event(record: &mut ServiceRecord, message: String, now: f64) {
    record.push_event(message, now);
}

/// Starts a deployment of `task_definition` with id `id` (`ecs-svc/<19 digits>`): it
/// becomes PRIMARY with rolloutState IN_PROGRESS and reason `ECS deployment <id> in
/// progress.`, the previous PRIMARY becomes ACTIVE (an IN_PROGRESS one in the history
/// becomes STOPPED), `service.taskDefinition` follows, and a history entry
/// (IN_PROGRESS, or ROLLBACK_IN_PROGRESS when `rollback_from` is given) is appended.
/// Used by CreateService/UpdateService (API) and by the circuit breaker's rollback.
///
/// Also clears the launch back-off (a new deployment gets a fresh start) and the
/// steady flag. A deployment id the service already lists is left alone (idempotent).
pub fn new_deployment(
    record: &mut ServiceRecord,
    task_definition: &str,
    id: &str,
    now: f64,
    rollback_from: Option<&str>,
) {
    if record.service.deployments.iter().any(|d| d.id == id) {
        return;
    }
    let mut sources: Vec<String> = Vec::new();
    for d in &record.service.deployments {
        if !sources.contains(&d.task_definition) {
            sources.push(d.task_definition.clone());
        }
    }
    for d in &mut record.service.deployments {
        if d.status == "PRIMARY" {
            d.status = "ACTIVE".into();
            d.updated_at = now;
        }
    }
    for h in &mut record.history {
        if matches!(
            h.status.as_str(),
            "PENDING" | "IN_PROGRESS" | "ROLLBACK_IN_PROGRESS"
        ) {
            h.status = "STOPPED".into();
            h.finished_at = Some(now);
            if h.status_reason.is_empty() {
                h.status_reason = format!("Replaced by deployment {id}.");
            }
        }
    }
    let desired = record.service.desired_count.max(0);
    record.service.deployments.insert(
        0,
        Deployment {
            id: id.to_string(),
            status: "PRIMARY".into(),
            task_definition: task_definition.to_string(),
            desired_count: desired,
            pending_count: 0,
            running_count: 0,
            failed_tasks: 0,
            created_at: now,
            updated_at: now,
            launch_type: record.service.launch_type.clone(),
            network_configuration: record.service.network_configuration.clone(),
            rollout_state: "IN_PROGRESS".into(),
            rollout_state_reason: format!("ECS deployment {id} in progress."),
        },
    );
    record.service.task_definition = task_definition.to_string();
    record.history.push(DeploymentHistory {
        id: id.to_string(),
        task_definition: task_definition.to_string(),
        created_at: now,
        started_at: now,
        finished_at: None,
        status: if rollback_from.is_some() {
            "ROLLBACK_IN_PROGRESS"
        } else {
            "IN_PROGRESS"
        }
        .into(),
        status_reason: String::new(),
        source_task_definitions: sources,
        deployment_configuration: record.service.deployment_configuration.clone(),
        rollback: rollback_from.is_some(),
        rollback_from: rollback_from.map(str::to_string),
        failure_count: 0,
        threshold: circuit_breaker_threshold(desired),
    });
    while record.history.len() > MAX_HISTORY {
        let keep = record
            .history
            .iter()
            .rposition(|h| matches!(h.status.as_str(), "SUCCESSFUL" | "ROLLBACK_SUCCESSFUL"));
        let drop = if keep == Some(0) { 1 } else { 0 };
        record.history.remove(drop);
    }
    record.steady = false;
    record.launch_failures = 0;
    record.next_launch_at = 0.0;
}

#[cfg(test)]
#[path = "service_tests.rs"]
mod service_tests;
