//! State-machine tests of the service reconciler: a small simulator plays the
//! controller (applies decisions, places tasks), the agents (tasks start, run, pass or
//! fail health checks, stop) and the clock, and every step checks the deployment
//! invariants (maximumPercent, minimumHealthyPercent, determinism).

use std::collections::{BTreeMap, BTreeSet};

use berth_model::{
    max_tasks, min_healthy_tasks, DeploymentCircuitBreaker, DeploymentConfiguration, Service,
    ServiceRecord,
};
use proptest::prelude::*;

use super::*;

const ARN: &str = "arn:aws:ecs:us-east-1:000000000000:service/demo/web";
const STUCK: &str = "(service web) was unable to stop or start tasks during a deployment because of the service deployment configuration. Update the minimumHealthyPercent or maximumPercent value and try again.";
const STEADY: &str = "(service web) has reached a steady state.";
const BACKOFF: &str = "(service web) is unable to consistently start tasks successfully.";

/// How the tasks of a task definition behave on the simulated agents.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Behaviour {
    /// Runs; no container health check (healthy 40 s after RUNNING).
    Good,
    /// Runs; its health check reports HEALTHY `HC_SECS` after RUNNING.
    HealthyHc,
    /// Runs; its health check reports UNHEALTHY `HC_SECS` after RUNNING.
    UnhealthyHc,
    /// Never reaches RUNNING (image pull fails).
    FailStart,
}

const HC_SECS: f64 = 20.0;

struct Sim {
    rec: ServiceRecord,
    tasks: Vec<TaskInfo>,
    instances: Vec<InstanceInfo>,
    now: f64,
    cfg: Config,
    step_secs: f64,
    next_task: u64,
    next_deployment: u64,
    behaviour: BTreeMap<String, Behaviour>,
    task_def: BTreeMap<String, String>,
    /// Assert at every step that no stop takes the healthy count under the minimum.
    guard_min: bool,
    /// Every decision applied, in order.
    decisions: Vec<Decision>,
}

fn instance(id: &str) -> InstanceInfo {
    InstanceInfo {
        id: id.into(),
        status: "ACTIVE".into(),
        agent_connected: true,
        eligible: true,
        other_service_tasks: 0,
    }
}

fn config(min: i64, max: i64) -> DeploymentConfiguration {
    DeploymentConfiguration {
        maximum_percent: Some(max),
        minimum_healthy_percent: Some(min),
        ..Default::default()
    }
}

fn is_healthy(t: &TaskInfo, now: f64) -> bool {
    t.desired_status == "RUNNING"
        && t.last_status == "RUNNING"
        && if t.has_health_check {
            t.health_status == "HEALTHY"
        } else {
            t.started_at.is_some_and(|s| s + 40.0 <= now)
        }
}

impl Sim {
    fn new(strategy: &str, desired: i64, dc: DeploymentConfiguration, instances: usize) -> Sim {
        let rec = ServiceRecord {
            service: Service {
                service_arn: ARN.into(),
                service_name: "web".into(),
                cluster_arn: "arn:aws:ecs:us-east-1:000000000000:cluster/demo".into(),
                status: "ACTIVE".into(),
                desired_count: desired,
                deployment_configuration: dc,
                scheduling_strategy: strategy.into(),
                created_at: 1_000.0,
                ..Default::default()
            },
            ..Default::default()
        };
        let mut behaviour = BTreeMap::new();
        behaviour.insert("web:1".to_string(), Behaviour::Good);
        behaviour.insert("web:2".to_string(), Behaviour::Good);
        Sim {
            rec,
            tasks: Vec::new(),
            instances: (1..=instances)
                .map(|i| instance(&format!("i-{i}")))
                .collect(),
            now: 1_000.0,
            cfg: Config::default(),
            step_secs: 10.0,
            next_task: 1,
            next_deployment: 1,
            behaviour,
            task_def: BTreeMap::new(),
            guard_min: false,
            decisions: Vec::new(),
        }
    }

    /// A REPLICA service created with `web:1` and run until steady.
    fn steady_replica(desired: i64, min: i64, max: i64) -> Sim {
        let mut sim = Sim::new("REPLICA", desired, config(min, max), 3);
        sim.deploy("web:1");
        sim.run_until_steady(100);
        sim
    }

    /// What CreateService/UpdateService do: a new deployment, one write.
    fn deploy(&mut self, task_definition: &str) -> String {
        let id = format!(
            "ecs-svc/{}",
            1_000_000_000_000_000_000u64 + self.next_deployment
        );
        self.next_deployment += 1;
        new_deployment(&mut self.rec, task_definition, &id, self.now, None);
        self.rec.version += 1;
        id
    }

    /// An API write to the record (UpdateService without a deployment, DeleteService).
    fn update(&mut self, f: impl FnOnce(&mut ServiceRecord)) {
        f(&mut self.rec);
        self.rec.version += 1;
    }

    fn decide(&self) -> Decision {
        let input = Input {
            record: &self.rec,
            tasks: &self.tasks,
            instances: &self.instances,
            now: self.now,
            config: &self.cfg,
        };
        let d = reconcile(&input);
        // The same input gives the same decision.
        let again = reconcile(&input);
        assert_eq!(d.record, again.record);
        assert_eq!(d.start, again.start);
        assert_eq!(d.stop, again.stop);
        d
    }

    fn live(&self) -> Vec<&TaskInfo> {
        self.tasks
            .iter()
            .filter(|t| t.desired_status == "RUNNING" && t.last_status != "STOPPED")
            .collect()
    }

    fn healthy(&self) -> usize {
        self.tasks
            .iter()
            .filter(|t| is_healthy(t, self.now))
            .count()
    }

    fn live_of(&self, deployment: &str) -> usize {
        self.live()
            .iter()
            .filter(|t| t.deployment_id == deployment)
            .count()
    }

    fn limits(&self, rec: &ServiceRecord) -> (i64, i64) {
        let (max, min) = percentages(rec);
        let desired = rec.service.desired_count;
        (
            max_tasks(desired, max).max(if is_daemon(rec) { 0 } else { desired }),
            min_healthy_tasks(desired, min),
        )
    }

    /// The invariants every decision keeps.
    fn check(&self, d: &Decision) {
        let stops: BTreeSet<&str> = d.stop.iter().map(|s| s.task_id.as_str()).collect();
        assert_eq!(
            stops.len(),
            d.stop.len(),
            "a task stopped twice: {:?}",
            d.stop
        );
        for s in &d.stop {
            let t = self
                .tasks
                .iter()
                .find(|t| t.id == s.task_id)
                .expect("stop of an unknown task");
            assert!(
                t.desired_status == "RUNNING" && t.last_status != "STOPPED",
                "stop of a task not live: {t:?}"
            );
            assert_eq!(s.stop_code, "ServiceSchedulerInitiated");
        }
        let (max_total, min_healthy) = self.limits(&d.record);
        let live_after = self
            .live()
            .iter()
            .filter(|t| !stops.contains(t.id.as_str()))
            .count()
            + d.start.len();
        if !d.start.is_empty() {
            assert!(
                live_after as i64 <= max_total,
                "{} live after starting {} > max {max_total}",
                live_after,
                d.start.len()
            );
        }
        let healthy_stopped = self
            .tasks
            .iter()
            .filter(|t| stops.contains(t.id.as_str()) && is_healthy(t, self.now))
            .count();
        if self.guard_min && healthy_stopped > 0 && d.record.service.status == "ACTIVE" {
            let healthy_after = self.healthy() - healthy_stopped;
            assert!(
                healthy_after as i64 >= min_healthy,
                "stopping {healthy_stopped} healthy tasks leaves {healthy_after} < min {min_healthy}"
            );
        }
    }

    /// The controller: the record is written (version bumped) when anything changed,
    /// stops mark tasks desired STOPPED, starts are placed and created PROVISIONING.
    fn apply(&mut self, d: &Decision) {
        let noop = d.is_noop(&self.rec);
        self.rec = d.record.clone();
        if !noop {
            self.rec.version += 1;
        }
        for s in &d.stop {
            let t = self.tasks.iter_mut().find(|t| t.id == s.task_id).unwrap();
            t.desired_status = "STOPPED".into();
            t.stop_code = Some(s.stop_code.clone());
            t.stopped_reason = Some(s.reason.clone());
        }
        for s in &d.start {
            let instance_id = match &s.instance_id {
                Some(i) => i.clone(),
                None => {
                    // Spread: the ACTIVE instance with the fewest tasks of the service.
                    let mut best: Option<(usize, String)> = None;
                    for i in self
                        .instances
                        .iter()
                        .filter(|i| i.status == "ACTIVE" && i.agent_connected)
                    {
                        let n = self.live().iter().filter(|t| t.instance_id == i.id).count();
                        if best.as_ref().is_none_or(|(m, _)| n < *m) {
                            best = Some((n, i.id.clone()));
                        }
                    }
                    match best {
                        Some((_, id)) => id,
                        None => continue,
                    }
                }
            };
            let id = format!("t{:04}", self.next_task);
            self.next_task += 1;
            let behaviour = self
                .behaviour
                .get(&s.task_definition)
                .copied()
                .unwrap_or(Behaviour::Good);
            self.task_def.insert(id.clone(), s.task_definition.clone());
            self.tasks.push(TaskInfo {
                id,
                deployment_id: s.deployment_id.clone(),
                instance_id,
                last_status: "PROVISIONING".into(),
                desired_status: "RUNNING".into(),
                health_status: "UNKNOWN".into(),
                has_health_check: matches!(
                    behaviour,
                    Behaviour::HealthyHc | Behaviour::UnhealthyHc
                ),
                created_at: self.now,
                ..Default::default()
            });
        }
    }

    /// The agents: stops complete, new tasks run (or fail to), health checks report.
    fn advance(&mut self) {
        let now = self.now;
        for t in &mut self.tasks {
            if t.last_status == "STOPPED" {
                continue;
            }
            if t.desired_status == "STOPPED" {
                t.last_status = "STOPPED".into();
                t.stopped_at = Some(now);
                continue;
            }
            let behaviour = self
                .behaviour
                .get(&self.task_def[&t.id])
                .copied()
                .unwrap_or(Behaviour::Good);
            match t.last_status.as_str() {
                "PROVISIONING" if behaviour == Behaviour::FailStart => {
                    t.last_status = "STOPPED".into();
                    t.desired_status = "STOPPED".into();
                    t.stopped_at = Some(now);
                    t.stop_code = Some("TaskFailedToStart".into());
                    t.stopped_reason = Some("CannotPullContainerError: pull access denied".into());
                }
                "PROVISIONING" => {
                    t.last_status = "RUNNING".into();
                    t.started_at = Some(now);
                }
                "RUNNING"
                    if t.has_health_check
                        && t.started_at.is_some_and(|s| s + HC_SECS <= now)
                        && t.health_status == "UNKNOWN" =>
                {
                    t.health_status = if behaviour == Behaviour::UnhealthyHc {
                        "UNHEALTHY"
                    } else {
                        "HEALTHY"
                    }
                    .into();
                }
                _ => {}
            }
        }
        // The store purges tasks stopped over an hour ago.
        self.tasks
            .retain(|t| t.stopped_at.is_none_or(|s| s + 3600.0 > now));
    }

    fn step(&mut self) -> Decision {
        self.advance();
        let d = self.decide();
        self.check(&d);
        self.apply(&d);
        self.decisions.push(d.clone());
        self.now += self.step_secs;
        d
    }

    fn steady(&self) -> bool {
        self.rec.steady
            && self.rec.service.deployments.len() == 1
            && self.rec.service.deployments[0].rollout_state == "COMPLETED"
    }

    /// Steps until `done`; panics after `max` steps.
    fn run_until(&mut self, max: usize, done: impl Fn(&Sim) -> bool) -> usize {
        for n in 0..max {
            if done(self) {
                return n;
            }
            self.step();
        }
        panic!(
            "not done after {max} steps; deployments {:#?}\nevents {:#?}\ntasks {:#?}",
            self.rec.service.deployments,
            self.messages(),
            self.live()
        );
    }

    fn run_until_steady(&mut self, max: usize) -> usize {
        self.run_until(max, |s| s.steady())
    }

    /// Event messages, oldest first.
    fn messages(&self) -> Vec<String> {
        self.rec
            .service
            .events
            .iter()
            .rev()
            .map(|e| e.message.clone())
            .collect()
    }

    /// Event messages since `from` (an earlier `messages().len()`), oldest first.
    fn messages_since(&self, from: usize) -> Vec<String> {
        self.messages()[from..].to_vec()
    }

    fn primary(&self) -> &Deployment {
        self.rec.primary().expect("a PRIMARY deployment")
    }
}

fn stopped_event(ids: &[&str]) -> String {
    let list: Vec<String> = ids.iter().map(|i| format!("(task {i})")).collect();
    format!(
        "(service web) has stopped {} running tasks: {}.",
        ids.len(),
        list.join(" ")
    )
}

// ---------------------------------------------------------------------------------
// Creation and steady state

#[test]
fn create_starts_desired_tasks_and_completes() {
    let mut sim = Sim::new("REPLICA", 3, config(100, 200), 3);
    let id = sim.deploy("web:1");
    let first = sim.step();
    assert_eq!(first.start.len(), 3);
    assert!(first
        .start
        .iter()
        .all(|s| s.deployment_id == id && s.task_definition == "web:1" && s.instance_id.is_none()));
    assert!(first.stop.is_empty());
    assert!(!sim.rec.steady);
    // Placed one per instance.
    let instances: BTreeSet<&str> = sim.tasks.iter().map(|t| t.instance_id.as_str()).collect();
    assert_eq!(instances.len(), 3);

    sim.run_until_steady(20);
    let p = sim.primary();
    assert_eq!(p.rollout_state, "COMPLETED");
    assert_eq!(
        p.rollout_state_reason,
        format!("ECS deployment {id} completed.")
    );
    assert_eq!(
        (p.desired_count, p.running_count, p.pending_count),
        (3, 3, 0)
    );
    assert_eq!(sim.rec.service.running_count, 3);
    assert_eq!(sim.rec.history.len(), 1);
    assert_eq!(sim.rec.history[0].status, "SUCCESSFUL");
    assert!(sim.rec.history[0].finished_at.is_some());
    assert_eq!(
        sim.messages(),
        vec![
            format!("(service web) (deployment {id}) deployment completed."),
            STEADY.to_string()
        ]
    );
    // Newest first: the steady-state event is on top.
    assert_eq!(sim.rec.service.events[0].message, STEADY);
}

#[test]
fn steady_service_is_a_noop_pass_after_pass() {
    let mut sim = Sim::steady_replica(3, 100, 200);
    let version = sim.rec.version;
    let events = sim.rec.service.events.len();
    for _ in 0..500 {
        let before = sim.rec.clone();
        let d = sim.step();
        assert!(
            d.is_noop(&before),
            "a steady pass changed something: {:?}",
            d.record
        );
    }
    assert_eq!(sim.rec.version, version);
    assert_eq!(sim.rec.service.events.len(), events);

    // After 6 hours the steady-state event comes again, once.
    sim.now += 6.0 * 3600.0;
    let before = sim.rec.clone();
    let d = sim.step();
    assert!(!d.is_noop(&before));
    assert!(d.start.is_empty() && d.stop.is_empty());
    assert_eq!(sim.rec.service.events.len(), events + 1);
    assert_eq!(sim.rec.service.events[0].message, STEADY);
    let before = sim.rec.clone();
    assert!(sim.step().is_noop(&before));
}

// ---------------------------------------------------------------------------------
// Rolling updates

/// Rolls `web:1` → `web:2` on a steady service, checking at every step that the
/// healthy tasks never fall under the minimum and live tasks never exceed the maximum.
/// Returns the simulator and the first decision of the rollout.
fn rollout(desired: i64, min: i64, max: i64) -> (Sim, Decision, String, String) {
    let mut sim = Sim::steady_replica(desired, min, max);
    sim.guard_min = true;
    let old = sim.primary().id.clone();
    let from = sim.messages().len();
    let new = sim.deploy("web:2");
    assert_eq!(
        sim.primary().rollout_state_reason,
        format!("ECS deployment {new} in progress.")
    );
    assert_eq!(sim.rec.service.task_definition, "web:2");
    let min_healthy = min_healthy_tasks(desired, min) as usize;
    let max_total = max_tasks(desired, max) as usize;
    let first = sim.step();
    for _ in 0..200 {
        if sim.steady() {
            break;
        }
        assert!(
            sim.healthy() >= min_healthy,
            "healthy {} < min {min_healthy}",
            sim.healthy()
        );
        assert!(
            sim.live().len() <= max_total,
            "live {} > max {max_total}",
            sim.live().len()
        );
        sim.step();
    }
    assert!(
        sim.steady(),
        "rollout did not finish: {:#?}",
        sim.rec.service.deployments
    );
    assert_eq!(sim.rec.service.deployments.len(), 1);
    let p = sim.primary();
    assert_eq!(
        (p.id.as_str(), p.task_definition.as_str()),
        (new.as_str(), "web:2")
    );
    assert_eq!(p.rollout_state, "COMPLETED");
    assert_eq!(sim.live().len() as i64, desired);
    assert!(sim.live().iter().all(|t| t.deployment_id == new));
    assert_eq!(sim.healthy() as i64, desired);
    // Every old task was stopped by the scheduler as scaling activity of the new deployment.
    for t in sim.tasks.iter().filter(|t| t.deployment_id == old) {
        assert_eq!(
            t.stopped_reason.as_deref(),
            Some(format!("Scaling activity initiated by (deployment {new})").as_str())
        );
        assert_eq!(t.stop_code.as_deref(), Some("ServiceSchedulerInitiated"));
    }
    let events = sim.messages_since(from);
    let n = events.len();
    assert_eq!(
        events[n - 2],
        format!("(service web) (deployment {new}) deployment completed.")
    );
    assert_eq!(events[n - 1], STEADY);
    let stopped: usize = events[..n - 2]
        .iter()
        .map(|m| {
            assert!(
                m.starts_with("(service web) has stopped "),
                "unexpected event {m}"
            );
            m.matches("(task ").count()
        })
        .sum();
    assert_eq!(stopped as i64, desired);
    // History: the old deployment stays SUCCESSFUL, the new one is SUCCESSFUL too.
    let statuses: Vec<(&str, &str)> = sim
        .rec
        .history
        .iter()
        .map(|h| (h.id.as_str(), h.status.as_str()))
        .collect();
    assert_eq!(
        statuses,
        vec![(old.as_str(), "SUCCESSFUL"), (new.as_str(), "SUCCESSFUL")]
    );
    assert_eq!(
        sim.rec.history[1].source_task_definitions,
        vec!["web:1".to_string()]
    );
    (sim, first, old, new)
}

#[test]
fn rolling_update_100_200_starts_all_new_tasks_first() {
    let (sim, first, old, _) = rollout(3, 100, 200);
    assert_eq!(first.start.len(), 3);
    assert!(first.stop.is_empty());
    // The old tasks were only stopped once new ones were healthy: never more than 6 live.
    assert!(sim.decisions.iter().all(|d| d.stop.iter().all(|s| sim
        .tasks
        .iter()
        .any(|t| t.id == s.task_id && t.deployment_id == old))));
}

#[test]
fn rolling_update_50_200_stops_half_and_starts_all() {
    let (_, first, _, _) = rollout(4, 50, 200);
    assert_eq!(first.start.len(), 4);
    assert_eq!(first.stop.len(), 2);
}

#[test]
fn rolling_update_0_100_stops_old_first_then_starts() {
    let (sim, first, _, new) = rollout(3, 0, 100);
    assert_eq!(first.stop.len(), 3);
    assert!(first.start.is_empty());
    // The pass right after the stops starts the new tasks.
    let i = sim
        .decisions
        .iter()
        .position(|d| d.stop.len() == 3)
        .unwrap();
    assert_eq!(sim.decisions[i + 1].start.len(), 3);
    assert!(sim.decisions[i + 1]
        .start
        .iter()
        .all(|s| s.deployment_id == new));
}

#[test]
fn rolling_update_100_150_desired_3_one_at_a_time() {
    let (sim, first, _, new) = rollout(3, 100, 150);
    // max = floor(4.5) = 4: one extra task at a time.
    assert_eq!(first.start.len(), 1);
    assert!(first.stop.is_empty());
    let from = sim
        .decisions
        .iter()
        .position(|d| d.start.iter().any(|s| s.deployment_id == new))
        .unwrap();
    assert!(sim.decisions[from..]
        .iter()
        .all(|d| d.start.len() <= 1 && d.stop.len() <= 1));
}

#[test]
fn rolling_update_with_health_checks() {
    let mut sim = Sim::new("REPLICA", 2, config(100, 200), 3);
    sim.behaviour.insert("web:1".into(), Behaviour::HealthyHc);
    sim.behaviour.insert("web:2".into(), Behaviour::HealthyHc);
    sim.deploy("web:1");
    sim.run_until_steady(50);
    sim.guard_min = true;
    sim.deploy("web:2");
    sim.run_until_steady(50);
    assert_eq!(sim.primary().task_definition, "web:2");
}

#[test]
fn rolling_update_100_100_is_stuck_and_says_so() {
    let mut sim = Sim::steady_replica(3, 100, 100);
    sim.guard_min = true;
    let new = sim.deploy("web:2");
    let d = sim.step();
    assert!(d.start.is_empty() && d.stop.is_empty());
    assert_eq!(sim.rec.service.events[0].message, STUCK);
    let events = sim.rec.service.events.len();
    // Nothing moves, and nothing is rewritten pass after pass.
    for _ in 0..50 {
        let before = sim.rec.clone();
        assert!(sim.step().is_noop(&before));
    }
    assert_eq!(sim.rec.service.events.len(), events);
    assert_eq!(sim.primary().rollout_state, "IN_PROGRESS");
    assert_eq!(sim.live_of(&new), 0);

    // UpdateService lowers the minimum: the rollout proceeds.
    sim.update(|r| r.service.deployment_configuration.minimum_healthy_percent = Some(50));
    sim.run_until_steady(100);
    assert_eq!(sim.primary().id, new);
}

// ---------------------------------------------------------------------------------
// Scaling

#[test]
fn desired_zero_stops_everything() {
    let mut sim = Sim::steady_replica(3, 100, 200);
    let primary = sim.primary().id.clone();
    sim.update(|r| r.service.desired_count = 0);
    let d = sim.step();
    assert!(d.start.is_empty());
    assert_eq!(d.stop.len(), 3);
    assert!(d
        .stop
        .iter()
        .all(|s| s.reason == format!("Scaling activity initiated by (deployment {primary})")));
    let ids: Vec<&str> = d.stop.iter().map(|s| s.task_id.as_str()).collect();
    assert_eq!(sim.rec.service.events[0].message, stopped_event(&ids));
    sim.run_until(10, |s| s.rec.steady && s.live().is_empty());
    assert_eq!(sim.primary().desired_count, 0);
    assert_eq!(sim.rec.service.running_count, 0);
    let before = sim.rec.clone();
    assert!(sim.step().is_noop(&before));
}

#[test]
fn scale_up_and_down_without_a_deployment() {
    let mut sim = Sim::steady_replica(3, 100, 200);
    sim.guard_min = true;
    let id = sim.primary().id.clone();
    sim.update(|r| r.service.desired_count = 5);
    let d = sim.step();
    assert_eq!(d.start.len(), 2);
    assert!(d.stop.is_empty());
    assert!(!sim.rec.steady);
    sim.run_until(20, |s| s.rec.steady);
    assert_eq!(sim.live().len(), 5);
    assert_eq!(sim.primary().id, id);
    assert_eq!(sim.primary().desired_count, 5);

    // Scale in: the most loaded instances lose tasks first.
    sim.update(|r| r.service.desired_count = 2);
    let d = sim.step();
    assert!(d.start.is_empty());
    assert_eq!(d.stop.len(), 3);
    sim.run_until(20, |s| s.rec.steady);
    assert_eq!(sim.live().len(), 2);
    let instances: BTreeSet<&str> = sim.live().iter().map(|t| t.instance_id.as_str()).collect();
    assert_eq!(instances.len(), 2, "scale-in keeps the spread");
    assert_eq!(sim.rec.service.deployments.len(), 1);
    assert_eq!(sim.rec.history.len(), 1, "scaling is not a deployment");
}

#[test]
fn a_task_that_exits_is_replaced() {
    let mut sim = Sim::steady_replica(2, 100, 200);
    let t = sim.live()[0].id.clone();
    let task = sim.tasks.iter_mut().find(|x| x.id == t).unwrap();
    task.last_status = "STOPPED".into();
    task.desired_status = "STOPPED".into();
    task.stop_code = Some("EssentialContainerExited".into());
    task.stopped_at = Some(sim.now);
    let d = sim.step();
    assert_eq!(d.start.len(), 1);
    assert!(sim.rec.accounted_stops.contains(&t));
    // The deployment has a healthy task: no consecutive failures.
    assert_eq!(sim.primary().failed_tasks, 0);
    assert_eq!(sim.rec.history[0].failure_count, 1);
    sim.run_until(20, |s| s.rec.steady);
    // Accounted once.
    assert_eq!(sim.rec.history[0].failure_count, 1);
}

#[test]
fn a_task_stopped_by_a_user_is_replaced_without_counting_a_failure() {
    let mut sim = Sim::steady_replica(2, 100, 200);
    let t = sim.live()[0].id.clone();
    let task = sim.tasks.iter_mut().find(|x| x.id == t).unwrap();
    task.desired_status = "STOPPED".into();
    task.stop_code = Some("UserInitiated".into());
    task.stopped_reason = Some("Task stopped by user".into());
    let d = sim.step();
    assert_eq!(d.start.len(), 1);
    assert!(
        d.stop.is_empty(),
        "a task already desired STOPPED is not stopped again"
    );
    sim.run_until(20, |s| s.rec.steady);
    assert_eq!(sim.rec.history[0].failure_count, 0);
    assert!(sim.rec.accounted_stops.contains(&t));
}

#[test]
fn tasks_of_an_unlisted_deployment_are_scaled_away() {
    // e.g. left over from an earlier service of the same name.
    let mut sim = Sim::steady_replica(2, 100, 200);
    let now = sim.now;
    sim.tasks.push(TaskInfo {
        id: "stray".into(),
        deployment_id: "ecs-svc/9999999999999999999".into(),
        instance_id: "i-1".into(),
        last_status: "RUNNING".into(),
        desired_status: "RUNNING".into(),
        health_status: "UNKNOWN".into(),
        created_at: now - 500.0,
        started_at: Some(now - 500.0),
        ..Default::default()
    });
    sim.task_def.insert("stray".into(), "web:0".into());
    let d = sim.step();
    assert!(d.start.is_empty());
    let primary = sim.primary().id.clone();
    assert_eq!(
        d.stop,
        vec![Stop {
            task_id: "stray".into(),
            reason: format!("Scaling activity initiated by (deployment {primary})"),
            stop_code: SCHEDULER_STOP_CODE.into(),
        }]
    );
    sim.run_until(5, |s| s.rec.steady);
    assert_eq!(sim.live().len(), 2);
}

// ---------------------------------------------------------------------------------
// Failures: back-off and circuit breaker

fn breaker(rollback: bool) -> DeploymentConfiguration {
    DeploymentConfiguration {
        deployment_circuit_breaker: Some(DeploymentCircuitBreaker {
            enable: true,
            rollback,
        }),
        ..config(100, 200)
    }
}

#[test]
fn failing_tasks_back_off_trip_the_breaker_and_roll_back() {
    let mut sim = Sim::new("REPLICA", 2, breaker(true), 3);
    let good = sim.deploy("web:1");
    sim.run_until_steady(50);
    sim.guard_min = true;
    sim.behaviour.insert("web:2".into(), Behaviour::FailStart);
    let bad = sim.deploy("web:2");

    // Launch failures pile up; past 3 in a row, starts wait for the back-off.
    sim.run_until(20, |s| s.rec.next_launch_at > s.now);
    assert_eq!(sim.rec.service.events[0].message, BACKOFF);
    assert!(sim.rec.launch_failures >= 3);
    let until = sim.rec.next_launch_at;
    while sim.now < until {
        let d = sim.step();
        assert!(d.start.is_empty(), "started during the back-off");
    }
    // The old tasks keep serving meanwhile.
    assert_eq!(sim.healthy(), 2);

    // Threshold for desired 2 is 10 failures.
    sim.run_until(400, |s| {
        s.rec
            .history
            .iter()
            .any(|h| h.id == bad && h.finished_at.is_some())
    });
    // The pass that trips the breaker: the failed deployment turns FAILED and ACTIVE
    // under the rollback, and (no task left) leaves `deployments[]` in the same pass.
    let trip = sim.decisions.last().unwrap();
    assert!(trip.record.service.deployments.iter().all(|d| d.id != bad));
    assert_eq!(trip.start.len(), 2, "the rollback starts at once");
    let msgs = sim.messages();
    let n = msgs.len();
    assert_eq!(
        msgs[n - 2],
        format!("(service web) (deployment {bad}) deployment failed: tasks failed to start.")
    );
    assert_eq!(
        msgs[n - 1],
        format!("(service web) rolling back to deployment {good}.")
    );
    // The rollback deployment runs the last completed task definition.
    let rollback = sim.primary().clone();
    assert_eq!(rollback.task_definition, "web:1");
    assert_eq!(rollback.rollout_state, "IN_PROGRESS");
    assert_eq!(sim.rec.service.task_definition, "web:1");
    let h = sim.rec.history.last().unwrap();
    assert_eq!(
        (h.id.as_str(), h.status.as_str(), h.rollback),
        (rollback.id.as_str(), "ROLLBACK_IN_PROGRESS", true)
    );
    assert_eq!(h.rollback_from.as_deref(), Some(bad.as_str()));
    let bad_h = sim.rec.history.iter().find(|h| h.id == bad).unwrap();
    assert_eq!(bad_h.status, "STOPPED");
    assert_eq!(
        bad_h.status_reason,
        "ECS deployment circuit breaker: tasks failed to start."
    );
    assert!(bad_h.failure_count >= 10);
    // The rollback id is a deployment id.
    let digits = rollback.id.strip_prefix("ecs-svc/").unwrap();
    assert!(digits.len() == 19 && digits.bytes().all(|b| b.is_ascii_digit()));
    // The back-off does not hold the rollback.
    assert_eq!(sim.rec.next_launch_at, 0.0);

    sim.run_until_steady(100);
    let p = sim.primary();
    assert_eq!(
        (p.id.as_str(), p.rollout_state.as_str()),
        (rollback.id.as_str(), "COMPLETED")
    );
    assert_eq!(
        sim.rec.history.last().unwrap().status,
        "ROLLBACK_SUCCESSFUL"
    );
    assert_eq!(sim.rec.service.deployments.len(), 1);
    assert!(sim.live().iter().all(|t| t.deployment_id == rollback.id));
}

#[test]
fn back_off_grows_and_resets_when_a_task_runs() {
    let mut sim = Sim::new("REPLICA", 1, config(100, 200), 1);
    sim.behaviour.insert("web:1".into(), Behaviour::FailStart);
    sim.deploy("web:1");
    let mut delays = Vec::new();
    let mut last = 0.0;
    for _ in 0..300 {
        sim.step();
        if sim.rec.next_launch_at != last && sim.rec.next_launch_at > 0.0 {
            last = sim.rec.next_launch_at;
            delays.push(sim.rec.next_launch_at - (sim.now - sim.step_secs));
        }
    }
    // base 10 s, doubling, capped at 300 s.
    assert_eq!(&delays[..6], &[10.0, 20.0, 40.0, 80.0, 160.0, 300.0]);
    assert!(delays[6..].iter().all(|d| *d == 300.0));
    assert_eq!(
        sim.rec
            .service
            .events
            .iter()
            .filter(|e| e.message == BACKOFF)
            .count(),
        1,
        "deduplicated"
    );

    // The image is fixed: the next task runs and the counter resets.
    sim.behaviour.insert("web:1".into(), Behaviour::Good);
    sim.run_until(100, |s| s.rec.steady);
    assert_eq!(sim.rec.launch_failures, 0);
}

#[test]
fn breaker_without_rollback_fails_and_launches_nothing_more() {
    let mut sim = Sim::new("REPLICA", 2, breaker(false), 3);
    let good = sim.deploy("web:1");
    sim.run_until_steady(50);
    sim.guard_min = true;
    sim.behaviour.insert("web:2".into(), Behaviour::FailStart);
    let bad = sim.deploy("web:2");
    sim.run_until(500, |s| s.primary().rollout_state == "FAILED");
    assert_eq!(sim.primary().id, bad);
    assert_eq!(
        sim.rec.service.events[0].message,
        format!("(service web) (deployment {bad}) deployment failed: tasks failed to start.")
    );
    let h = sim.rec.history.last().unwrap();
    assert_eq!(
        (h.status.as_str(), h.status_reason.as_str()),
        ("STOPPED", CIRCUIT_BREAKER_REASON)
    );
    // From now on: nothing starts, the old tasks keep running, nothing is rewritten.
    for _ in 0..50 {
        let before = sim.rec.clone();
        let d = sim.step();
        assert!(d.start.is_empty() && d.stop.is_empty());
        assert!(
            d.is_noop(&before)
                || sim
                    .tasks
                    .iter()
                    .any(|t| t.stopped_at == Some(sim.now - sim.step_secs))
        );
    }
    assert_eq!(sim.live_of(&good), 2);
    assert_eq!(sim.healthy(), 2);
}

#[test]
fn failing_health_checks_trip_the_breaker_once_tasks_run() {
    // Stage 2: the new tasks reach RUNNING but never pass their health check.
    let mut sim = Sim::new("REPLICA", 1, breaker(true), 2);
    sim.behaviour.insert("web:1".into(), Behaviour::HealthyHc);
    sim.behaviour.insert("web:2".into(), Behaviour::UnhealthyHc);
    let good = sim.deploy("web:1");
    sim.run_until_steady(50);
    sim.guard_min = true;
    let bad = sim.deploy("web:2");
    sim.run_until(500, |s| {
        s.rec
            .history
            .iter()
            .any(|h| h.id == bad && h.finished_at.is_some())
    });
    assert_eq!(
        sim.rec
            .history
            .iter()
            .find(|h| h.id == bad)
            .unwrap()
            .failure_count,
        10
    );
    assert!(sim
        .messages()
        .iter()
        .any(|m| m.ends_with("failed container health checks.")));
    assert!(sim
        .messages()
        .contains(&format!("(service web) rolling back to deployment {good}.")));
    assert!(sim
        .tasks
        .iter()
        .filter(|t| t.deployment_id == bad && t.stopped_reason.is_some())
        .all(|t| t.stopped_reason.as_deref() == Some(UNHEALTHY_REASON)
            || t.stopped_reason.as_deref().unwrap().starts_with("Scaling")));
    sim.run_until_steady(100);
    assert_eq!(sim.primary().task_definition, "web:1");
}

// ---------------------------------------------------------------------------------
// Unhealthy tasks

fn make_unhealthy(sim: &mut Sim, id: &str) {
    let t = sim.tasks.iter_mut().find(|t| t.id == id).unwrap();
    t.health_status = "UNHEALTHY".into();
}

fn steady_with_health_checks(desired: i64, min: i64, max: i64, grace: i64) -> Sim {
    let mut sim = Sim::new("REPLICA", desired, config(min, max), 3);
    sim.rec.service.health_check_grace_period_seconds = grace;
    sim.behaviour.insert("web:1".into(), Behaviour::HealthyHc);
    sim.deploy("web:1");
    sim.run_until_steady(50);
    sim
}

#[test]
fn unhealthy_task_is_replaced_first_when_there_is_room() {
    let mut sim = steady_with_health_checks(3, 100, 200, 0);
    sim.guard_min = true;
    let sick = sim.live()[1].id.clone();
    make_unhealthy(&mut sim, &sick);
    let d = sim.step();
    assert_eq!(d.start.len(), 1, "a replacement first");
    assert!(
        d.stop.is_empty(),
        "the unhealthy task stays until its replacement is healthy"
    );
    assert!(!sim.rec.steady);
    let d = loop {
        let d = sim.step();
        if !d.stop.is_empty() {
            break d;
        }
        assert!(d.start.is_empty(), "one replacement only");
    };
    assert_eq!(
        d.stop,
        vec![Stop {
            task_id: sick.clone(),
            reason: UNHEALTHY_REASON.into(),
            stop_code: SCHEDULER_STOP_CODE.into()
        }]
    );
    let msgs = sim.messages();
    let n = msgs.len();
    assert_eq!(
        msgs[n - 2],
        format!("(service web) (task {sick}) failed container health checks.")
    );
    assert_eq!(msgs[n - 1], stopped_event(&[&sick]));
    assert_eq!(sim.rec.history[0].failure_count, 1);
    assert_eq!(
        sim.primary().failed_tasks,
        0,
        "the deployment has healthy tasks"
    );
    sim.run_until(20, |s| s.rec.steady);
    assert_eq!(sim.live().len(), 3);
}

#[test]
fn unhealthy_task_is_stopped_first_without_room() {
    let mut sim = steady_with_health_checks(3, 100, 100, 0);
    let sick = sim.live()[0].id.clone();
    make_unhealthy(&mut sim, &sick);
    let d = sim.step();
    assert!(d.start.is_empty());
    assert_eq!(d.stop.len(), 1);
    assert_eq!(
        (d.stop[0].task_id.as_str(), d.stop[0].reason.as_str()),
        (sick.as_str(), UNHEALTHY_REASON)
    );
    let d = sim.step();
    assert_eq!(d.start.len(), 1, "then its replacement");
    sim.run_until(20, |s| s.rec.steady);
    assert!(!sim.messages().contains(&STUCK.to_string()));
}

#[test]
fn grace_period_ignores_unhealthy_tasks() {
    let mut sim = steady_with_health_checks(2, 100, 200, 120);
    // A task that just started and reports UNHEALTHY inside the grace period.
    let young = sim.live()[0].id.clone();
    {
        let now = sim.now;
        let t = sim.tasks.iter_mut().find(|t| t.id == young).unwrap();
        t.started_at = Some(now - 30.0);
        t.health_status = "UNHEALTHY".into();
    }
    for _ in 0..8 {
        let d = sim.step();
        assert!(d.stop.is_empty(), "stopped inside the grace period");
        assert!(d.start.is_empty(), "replaced inside the grace period");
    }
    // Past 120 s after its start: replaced.
    sim.run_until(10, |s| {
        s.decisions.last().is_some_and(|d| !d.start.is_empty())
    });
    sim.run_until(20, |s| s.rec.steady);
    assert!(sim
        .tasks
        .iter()
        .any(|t| t.id == young && t.stopped_reason.as_deref() == Some(UNHEALTHY_REASON)));
}

#[test]
fn unhealthy_in_grace_period_goes_first_on_scale_in() {
    let mut sim = steady_with_health_checks(3, 100, 200, 600);
    let young = sim.live()[2].id.clone();
    make_unhealthy(&mut sim, &young);
    sim.update(|r| r.service.desired_count = 2);
    let d = sim.step();
    assert_eq!(d.stop.len(), 1);
    assert_eq!(d.stop[0].task_id, young);
}

// ---------------------------------------------------------------------------------
// Draining instances

fn drain(sim: &mut Sim, id: &str) {
    sim.instances
        .iter_mut()
        .find(|i| i.id == id)
        .unwrap()
        .status = "DRAINING".into();
}

#[test]
fn draining_instance_replacements_first_then_stops() {
    let mut sim = Sim::steady_replica(3, 100, 200);
    sim.guard_min = true;
    let on_1: Vec<String> = sim
        .live()
        .iter()
        .filter(|t| t.instance_id == "i-1")
        .map(|t| t.id.clone())
        .collect();
    assert_eq!(on_1.len(), 1);
    drain(&mut sim, "i-1");
    let d = sim.step();
    assert_eq!(d.start.len(), 1, "a replacement first");
    assert!(
        d.stop.is_empty(),
        "the draining task counts until its replacement is healthy"
    );
    let d = loop {
        let d = sim.step();
        assert!(d.start.is_empty());
        if !d.stop.is_empty() {
            break d;
        }
    };
    assert_eq!(d.stop.len(), 1);
    assert_eq!(d.stop[0].task_id, on_1[0]);
    assert_eq!(d.stop[0].reason, "Container instance i-1 is being drained");
    sim.run_until(10, |s| s.rec.steady);
    assert!(sim.live().iter().all(|t| t.instance_id != "i-1"));
    assert_eq!(sim.live().len(), 3);
}

#[test]
fn draining_instance_with_50_100_never_goes_below_the_minimum() {
    let mut sim = Sim::steady_replica(4, 50, 100);
    sim.guard_min = true;
    // All four tasks on two instances; both drain, two new instances join.
    drain(&mut sim, "i-1");
    drain(&mut sim, "i-2");
    drain(&mut sim, "i-3");
    sim.instances.push(instance("i-4"));
    sim.instances.push(instance("i-5"));
    for _ in 0..60 {
        assert!(sim.healthy() >= 2);
        sim.step();
    }
    assert!(sim.rec.steady);
    assert!(sim
        .live()
        .iter()
        .all(|t| t.instance_id == "i-4" || t.instance_id == "i-5"));
}

#[test]
fn draining_with_100_100_is_stuck() {
    let mut sim = Sim::steady_replica(3, 100, 100);
    drain(&mut sim, "i-1");
    let d = sim.step();
    assert!(d.start.is_empty() && d.stop.is_empty());
    assert_eq!(sim.rec.service.events[0].message, STUCK);
    let before = sim.rec.clone();
    assert!(sim.step().is_noop(&before));
}

#[test]
fn tasks_of_a_deregistered_instance_are_replaced() {
    let mut sim = Sim::steady_replica(3, 100, 200);
    sim.instances.retain(|i| i.id != "i-2");
    assert_eq!(sim.step().start.len(), 1);
    sim.run_until(20, |s| s.rec.steady);
    assert!(sim.live().iter().all(|t| t.instance_id != "i-2"));
    assert!(sim
        .tasks
        .iter()
        .any(|t| t.stopped_reason.as_deref()
            == Some("Container instance i-2 is no longer registered")));
}

// ---------------------------------------------------------------------------------
// DAEMON

fn steady_daemon(instances: usize) -> Sim {
    let mut sim = Sim::new("DAEMON", 0, DeploymentConfiguration::default(), instances);
    sim.deploy("web:1");
    let d = sim.step();
    let mut on: Vec<Option<String>> = d.start.iter().map(|s| s.instance_id.clone()).collect();
    on.sort();
    let want: Vec<Option<String>> = (1..=instances).map(|i| Some(format!("i-{i}"))).collect();
    assert_eq!(on, want, "one task per instance, placed by the scheduler");
    sim.run_until_steady(20);
    assert_eq!(sim.rec.service.desired_count, instances as i64);
    sim
}

#[test]
fn daemon_runs_one_task_per_instance() {
    let mut sim = steady_daemon(3);
    assert_eq!(sim.primary().desired_count, 3);
    // A new instance gets a task.
    sim.instances.push(instance("i-9"));
    let d = sim.step();
    assert_eq!(d.start.len(), 1);
    assert_eq!(d.start[0].instance_id.as_deref(), Some("i-9"));
    assert_eq!(sim.rec.service.desired_count, 4);
    sim.run_until(10, |s| s.rec.steady);

    // An instance that no longer matches loses its task.
    sim.instances
        .iter_mut()
        .find(|i| i.id == "i-2")
        .unwrap()
        .eligible = false;
    let d = sim.step();
    assert!(d.start.is_empty());
    assert_eq!(d.stop.len(), 1);
    let t = sim
        .tasks
        .iter()
        .find(|t| t.id == d.stop[0].task_id)
        .unwrap();
    assert_eq!(t.instance_id, "i-2");
    assert!(d.stop[0].reason.contains("no longer satisfies"));
    sim.run_until(10, |s| s.rec.steady);
    assert_eq!(sim.rec.service.desired_count, 3);

    // A disconnected instance gets no task until it is back.
    sim.instances.push(InstanceInfo {
        agent_connected: false,
        ..instance("i-8")
    });
    let d = sim.step();
    assert!(d.start.is_empty());
    sim.instances.last_mut().unwrap().agent_connected = true;
    let d = sim.step();
    assert_eq!(d.start[0].instance_id.as_deref(), Some("i-8"));
}

#[test]
fn daemon_task_on_a_draining_instance_stops_after_the_others() {
    let mut sim = steady_daemon(3);
    let on_1 = sim
        .live()
        .iter()
        .find(|t| t.instance_id == "i-1")
        .unwrap()
        .id
        .clone();
    {
        let i = sim.instances.iter_mut().find(|i| i.id == "i-1").unwrap();
        i.status = "DRAINING".into();
        i.other_service_tasks = 2;
    }
    sim.step();
    for _ in 0..5 {
        let before = sim.rec.clone();
        let d = sim.step();
        assert!(
            d.stop.is_empty(),
            "the daemon stays while other tasks drain"
        );
        assert!(d.is_noop(&before));
    }
    assert_eq!(sim.rec.service.desired_count, 2);
    assert!(!sim.rec.steady, "3 tasks for 2 instances");
    sim.instances
        .iter_mut()
        .find(|i| i.id == "i-1")
        .unwrap()
        .other_service_tasks = 0;
    let d = sim.step();
    assert_eq!(d.stop.len(), 1);
    assert_eq!(d.stop[0].task_id, on_1);
    assert_eq!(d.stop[0].reason, "Container instance i-1 is being drained");
    sim.run_until(10, |s| s.rec.steady);
    assert_eq!(sim.live().len(), 2);
}

#[test]
fn daemon_rollout_replaces_per_instance() {
    // DAEMON defaults: min 0 %, max 100 %: each instance's old task stops, then the new one starts.
    let mut sim = steady_daemon(3);
    let new = sim.deploy("web:2");
    let d = sim.step();
    assert!(d.start.is_empty());
    assert_eq!(d.stop.len(), 3);
    let d = sim.step();
    assert_eq!(d.start.len(), 3);
    assert!(d
        .start
        .iter()
        .all(|s| s.deployment_id == new && s.instance_id.is_some()));
    sim.run_until_steady(20);
    assert_eq!(sim.primary().id, new);
    assert_eq!(sim.live().len(), 3);

    // With min 50 %, max 100 %: never fewer than 2 healthy of 3.
    sim.update(|r| r.service.deployment_configuration = config(50, 100));
    sim.guard_min = true;
    sim.deploy("web:1");
    let d = sim.step();
    assert_eq!(d.stop.len(), 1);
    sim.run_until_steady(50);

    // With max 200 %: new task beside the old one, old one stops once the new one is healthy.
    sim.update(|r| r.service.deployment_configuration = config(100, 200));
    sim.deploy("web:2");
    let d = sim.step();
    assert_eq!(d.start.len(), 3);
    assert!(d.stop.is_empty());
    sim.run_until_steady(50);
    assert_eq!(sim.live().len(), 3);
}

// ---------------------------------------------------------------------------------
// DeleteService

#[test]
fn delete_service_drains_then_goes_inactive() {
    let mut sim = Sim::steady_replica(3, 100, 200);
    sim.update(|r| {
        r.service.desired_count = 0;
        r.service.status = "DRAINING".into();
    });
    let d = sim.step();
    assert_eq!(d.stop.len(), 3);
    assert!(d.stop.iter().all(|s| s.reason == DELETING_REASON));
    assert!(d.start.is_empty());
    assert_eq!(sim.rec.service.status, "DRAINING");
    sim.run_until(5, |s| s.rec.service.status == "INACTIVE");
    assert!(sim.live().is_empty());
    for _ in 0..10 {
        let before = sim.rec.clone();
        assert!(sim.step().is_noop(&before));
    }
}

#[test]
fn delete_daemon_service_needs_no_scale_to_zero() {
    let mut sim = steady_daemon(2);
    sim.update(|r| r.service.status = "DRAINING".into());
    let d = sim.step();
    assert_eq!(d.stop.len(), 2);
    sim.run_until(5, |s| s.rec.service.status == "INACTIVE");
    assert_eq!(sim.rec.service.desired_count, 0);
}

// ---------------------------------------------------------------------------------
// Leader change, determinism

#[test]
fn lost_decision_is_recomputed_identically_and_not_repeated() {
    let mut sim = Sim::steady_replica(3, 100, 200);
    sim.deploy("web:2");
    sim.advance();
    // The leader computes the rollout's first decision, then loses leadership before
    // it commits.
    let lost = sim.decide();
    assert_eq!(lost.start.len(), 3);
    // The new leader recomputes from the same committed state.
    let again = sim.decide();
    assert_eq!(lost.record, again.record);
    assert_eq!(lost.start, again.start);
    assert_eq!(lost.stop, again.stop);
    // Both carry the version they were computed from; the store takes one, after which
    // the other no longer matches the record's version and is dropped.
    let version = sim.rec.version;
    assert_eq!(lost.record.version, version);
    assert_eq!(again.record.version, version);
    assert!(!again.is_noop(&sim.rec));
    sim.apply(&again);
    assert_eq!(sim.rec.version, version + 1);
    assert_ne!(lost.record.version, sim.rec.version);
    // The next decision does not start again what the applied one started.
    let live = sim.live().len();
    let next = sim.decide();
    let max_total = max_tasks(3, 200) as usize;
    assert!(live + next.start.len() <= max_total);
    assert!(next.start.is_empty(), "already started: {:?}", next.start);
}

#[test]
fn rollback_decision_is_deterministic() {
    let mut sim = Sim::new("REPLICA", 1, breaker(true), 1);
    sim.deploy("web:1");
    sim.run_until_steady(50);
    sim.behaviour.insert("web:2".into(), Behaviour::FailStart);
    sim.deploy("web:2");
    // Step until the pass that rolls back, then recompute that pass.
    loop {
        sim.advance();
        let d = sim.decide();
        if d.record.history.iter().any(|h| h.rollback) {
            let again = sim.decide();
            assert_eq!(d.record, again.record);
            assert_eq!(d.start, again.start);
            break;
        }
        sim.apply(&d);
        sim.now += sim.step_secs;
    }
}

// ---------------------------------------------------------------------------------
// Events and deployments

#[test]
fn events_are_deduplicated_capped_and_have_stable_ids() {
    let mut rec = ServiceRecord::default();
    rec.service.service_arn = ARN.into();
    push_event(&mut rec, "a".into(), 0.0);
    push_event(&mut rec, "a".into(), 10.0);
    assert_eq!(rec.service.events.len(), 1);
    push_event(&mut rec, "a".into(), 6.0 * 3600.0);
    assert_eq!(rec.service.events.len(), 2);
    push_event(&mut rec, "b".into(), 6.0 * 3600.0);
    push_event(&mut rec, "a".into(), 6.0 * 3600.0);
    assert_eq!(
        rec.service.events.len(),
        4,
        "only the newest event suppresses a repeat"
    );
    for i in 0..200 {
        push_event(&mut rec, format!("m{i}"), 1e5);
    }
    assert_eq!(rec.service.events.len(), 100);
    assert_eq!(rec.service.events[0].message, "m199");
    assert_eq!(rec.next_event, 204);
    let ids: BTreeSet<&str> = rec.service.events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), 100);
    let id = &rec.service.events[0].id;
    assert_eq!(id.len(), 36);
    assert_eq!(id.matches('-').count(), 4);
    assert_eq!(&id[14..15], "4");

    let mut other = ServiceRecord::default();
    other.service.service_arn = ARN.into();
    other.next_event = 203;
    push_event(&mut other, "x".into(), 0.0);
    assert_eq!(
        &other.service.events[0].id, id,
        "ids follow from the service and the counter"
    );
}

#[test]
fn new_deployment_demotes_the_primary_and_records_history() {
    let mut rec = ServiceRecord::default();
    rec.service.desired_count = 4;
    rec.service.deployment_configuration = config(100, 200);
    new_deployment(&mut rec, "web:1", "ecs-svc/1000000000000000001", 10.0, None);
    assert_eq!(rec.service.deployments.len(), 1);
    let d = &rec.service.deployments[0];
    assert_eq!(
        (d.status.as_str(), d.rollout_state.as_str(), d.desired_count),
        ("PRIMARY", "IN_PROGRESS", 4)
    );
    assert_eq!(
        d.rollout_state_reason,
        "ECS deployment ecs-svc/1000000000000000001 in progress."
    );
    assert_eq!(rec.history[0].status, "IN_PROGRESS");
    assert_eq!(rec.history[0].threshold, 10);

    new_deployment(&mut rec, "web:2", "ecs-svc/1000000000000000002", 20.0, None);
    let statuses: Vec<(&str, &str)> = rec
        .service
        .deployments
        .iter()
        .map(|d| (d.id.as_str(), d.status.as_str()))
        .collect();
    assert_eq!(
        statuses,
        vec![
            ("ecs-svc/1000000000000000002", "PRIMARY"),
            ("ecs-svc/1000000000000000001", "ACTIVE")
        ]
    );
    assert_eq!(rec.service.task_definition, "web:2");
    assert_eq!(rec.history[0].status, "STOPPED");
    assert_eq!(rec.history[0].finished_at, Some(20.0));
    assert_eq!(rec.history[1].status, "IN_PROGRESS");
    assert_eq!(
        rec.history[1].source_task_definitions,
        vec!["web:1".to_string()]
    );

    // Idempotent on the id.
    let before = rec.clone();
    new_deployment(&mut rec, "web:2", "ecs-svc/1000000000000000002", 30.0, None);
    assert_eq!(rec, before);

    new_deployment(
        &mut rec,
        "web:1",
        "ecs-svc/1000000000000000003",
        40.0,
        Some("ecs-svc/1000000000000000002"),
    );
    let h = rec.history.last().unwrap();
    assert_eq!(
        (h.status.as_str(), h.rollback),
        ("ROLLBACK_IN_PROGRESS", true)
    );
}

#[test]
fn history_is_bounded_but_keeps_the_last_success() {
    let mut rec = ServiceRecord::default();
    new_deployment(&mut rec, "web:1", "ecs-svc/1", 0.0, None);
    rec.history[0].status = "SUCCESSFUL".into();
    for i in 2..=150 {
        new_deployment(&mut rec, "web:2", &format!("ecs-svc/{i}"), i as f64, None);
    }
    assert_eq!(rec.history.len(), MAX_HISTORY);
    assert_eq!(rec.history[0].id, "ecs-svc/1");
}

#[test]
fn inactive_service_is_left_alone() {
    let mut sim = Sim::steady_replica(1, 100, 200);
    sim.update(|r| r.service.status = "INACTIVE".into());
    let before = sim.rec.clone();
    let d = sim.step();
    assert!(d.is_noop(&before));
}

// ---------------------------------------------------------------------------------
// Property: any allowed configuration rolls out within its limits and finishes.

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn rollouts_keep_limits_and_finish(
        desired in 0i64..7,
        min in prop::sample::select(vec![0i64, 25, 50, 75, 100]),
        max in prop::sample::select(vec![100i64, 125, 150, 200]),
        hc in any::<bool>(),
    ) {
        // Only min 100 with no extra room cannot move (that case has its own test).
        let max_total = max_tasks(desired, max).max(desired);
        prop_assume!(desired == 0 || min_healthy_tasks(desired, min) < max_total);
        let mut sim = Sim::new("REPLICA", desired, config(min, max), 3);
        if hc {
            sim.behaviour.insert("web:1".into(), Behaviour::HealthyHc);
            sim.behaviour.insert("web:2".into(), Behaviour::HealthyHc);
        }
        sim.deploy("web:1");
        sim.run_until_steady(100);
        sim.guard_min = true;
        let new = sim.deploy("web:2");
        let min_healthy = min_healthy_tasks(desired, min) as usize;
        for _ in 0..300 {
            if sim.steady() { break; }
            prop_assert!(sim.healthy() >= min_healthy);
            prop_assert!(sim.live().len() as i64 <= max_total);
            sim.step();
        }
        prop_assert!(sim.steady());
        prop_assert_eq!(&sim.primary().id, &new);
        prop_assert_eq!(sim.live().len() as i64, desired);
        prop_assert!(!sim.messages().contains(&STUCK.to_string()));
    }
}

// ------------------------------------------------------------ load balancer health

const TG: &str =
    "arn:aws:elasticloadbalancing:us-east-1:000000000000:targetgroup/web/0123456789abcdef";

#[test]
fn behind_a_load_balancer_a_task_is_healthy_only_when_its_targets_are() {
    // The new task runs for longer than the 40 s rule, but its target is still
    // `initial`: the rollout must wait (ECS waits for the target to be healthy).
    let mut sim = Sim::steady_replica(1, 100, 200);
    let dep = sim.deploy("web:2");
    let gate = |sim: &mut Sim, healthy: bool| {
        for t in &mut sim.tasks {
            t.lb = Some(LbInfo {
                healthy: healthy || t.deployment_id != dep,
                unhealthy: None,
            });
        }
    };
    for _ in 0..20 {
        sim.step();
        gate(&mut sim, false);
    }
    assert_eq!(sim.live_of(&dep), 1);
    assert_ne!(sim.primary().rollout_state, "COMPLETED");
    assert_eq!(sim.live().len(), 2, "the old task must keep serving");
    gate(&mut sim, true);
    sim.run_until_steady(20);
    assert_eq!(sim.live().len(), 1);
}

#[test]
fn a_task_failing_elb_health_checks_is_replaced_after_the_grace_period() {
    // 0/100: no room for a replacement first, so the failing task is stopped at once.
    let mut sim = Sim::steady_replica(2, 0, 100);
    sim.update(|r| r.service.health_check_grace_period_seconds = 60);
    let victim = sim.live()[0].id.clone();
    let started = sim.now - 10.0;
    for t in &mut sim.tasks {
        if t.last_status == "RUNNING" {
            t.lb = Some(LbInfo {
                healthy: t.id != victim,
                unhealthy: (t.id == victim).then(|| LbUnhealthy {
                    target_group_arn: TG.into(),
                    target_id: "i-1".into(),
                    port: 49153,
                    description: "Health checks failed with these codes: [503]".into(),
                }),
            });
            t.started_at = Some(started);
        }
    }
    // Within the grace period: nothing stops.
    let d = sim.decide();
    assert!(d.stop.is_empty(), "{:?}", d.stop);
    // Past it: the task stops with ECS's reason and event.
    for t in &mut sim.tasks {
        t.started_at = Some(sim.now - 120.0);
    }
    let d = sim.decide();
    let stop = d
        .stop
        .iter()
        .find(|s| s.task_id == victim)
        .expect("victim stopped");
    assert_eq!(
        stop.reason,
        format!("Task failed ELB health checks in (target-group {TG})")
    );
    assert!(d.record.service.events.iter().any(|e| e.message
        == format!("(service web) (instance i-1) (port 49153) is unhealthy in (target-group {TG}) due to (reason Health checks failed with these codes: [503]).")));
}
