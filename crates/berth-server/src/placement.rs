//! Standalone-task placement (RunTask): a pure function of the cluster's instances and
//! the task's needs. Simple but correct; the full scheduler (strategies, services) will
//! replace it.
//!
//! Candidates are ACTIVE instances with a connected agent that satisfy the constraints
//! (`memberOf`, `distinctInstance`, the task definition's `requiresAttributes`) and have
//! the CPU, memory and static host ports the task needs. Each task of a `count` goes to
//! the candidate with the fewest tasks (ties: lowest id), so tasks spread.

use std::collections::{BTreeMap, BTreeSet};

use berth_model::cql::{self, InstanceView};
use berth_model::{
    ApiError, Attribute, ContainerInstanceRecord, Failure, Reservation, TaskDefinition,
    TaskOverride, TaskRecord,
};
use berth_store::Remaining;

/// A placement constraint, already parsed.
#[derive(Debug, Clone)]
pub enum Constraint {
    MemberOf(cql::Expr),
    DistinctInstance,
}

/// One instance as placement sees it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub id: String,
    pub arn: String,
    pub status: String,
    pub agent_connected: bool,
    pub remaining: Remaining,
    /// Tasks holding resources on it (not STOPPED).
    pub task_count: usize,
    /// What CQL sees (its task groups are those of tasks meant to run).
    pub view: InstanceView,
}

impl Candidate {
    pub fn new(rec: &ContainerInstanceRecord, tasks: &[TaskRecord]) -> Candidate {
        let i = &rec.instance;
        let attributes = i
            .attributes
            .iter()
            .map(|a| (a.name.clone(), a.value.clone()))
            .collect();
        Candidate {
            id: rec.id().to_string(),
            arn: i.container_instance_arn.clone().unwrap_or_default(),
            status: rec.status().to_string(),
            agent_connected: rec.agent_connected(),
            remaining: Remaining::of(i, tasks),
            task_count: tasks.iter().filter(|t| t.task.holds_resources()).count(),
            view: InstanceView {
                attributes,
                instance_id: rec.id().to_string(),
                registered_at: i.registered_at.unwrap_or(0.0),
                running_tasks_count: i.running_tasks_count,
                task_groups: tasks
                    .iter()
                    .filter(|t| t.task.desired_status() == "RUNNING")
                    .filter_map(|t| t.task.group.clone())
                    .collect(),
                agent_connected: rec.agent_connected(),
                agent_version: i
                    .version_info
                    .as_ref()
                    .and_then(|v| v.agent_version.clone()),
            },
        }
    }
}

/// What one task needs.
#[derive(Debug, Clone, Default)]
pub struct Requirement {
    pub reservation: Reservation,
    pub group: String,
    pub constraints: Vec<Constraint>,
    pub requires_attributes: Vec<Attribute>,
}

fn parse_i64(s: Option<&str>) -> Option<i64> {
    s.and_then(|v| v.trim().parse().ok())
}

/// CPU units, MiB and static host ports a task definition (with overrides) reserves.
/// CPU: the task-level value, else the sum of the containers'. Memory: the task-level
/// value, else per container `memory` or `memoryReservation`, summed. Ports: `hostPort > 0`
/// in bridge mode; in host mode the container port is the host port; none in awsvpc.
pub fn reservation(td: &TaskDefinition, ov: &TaskOverride) -> Reservation {
    let co = |name: &Option<String>| {
        ov.container_overrides
            .iter()
            .flatten()
            .find(|o| o.name.is_some() && o.name == *name)
    };
    let task_cpu = parse_i64(ov.cpu.as_deref()).or_else(|| parse_i64(td.cpu.as_deref()));
    let task_mem = parse_i64(ov.memory.as_deref()).or_else(|| parse_i64(td.memory.as_deref()));
    let cpu = task_cpu.unwrap_or_else(|| {
        td.container_definitions
            .iter()
            .map(|c| co(&c.name).and_then(|o| o.cpu).or(c.cpu).unwrap_or(0))
            .sum()
    });
    let memory = task_mem.unwrap_or_else(|| {
        td.container_definitions
            .iter()
            .map(|c| {
                let o = co(&c.name);
                o.and_then(|o| o.memory)
                    .or(c.memory)
                    .or_else(|| o.and_then(|o| o.memory_reservation))
                    .or(c.memory_reservation)
                    .unwrap_or(0)
            })
            .sum()
    });
    let mut tcp = BTreeSet::new();
    let mut udp = BTreeSet::new();
    let mode = td.network_mode.as_deref().unwrap_or("bridge");
    if mode == "bridge" || mode == "host" {
        for c in &td.container_definitions {
            for pm in c.port_mappings.iter().flatten() {
                let host = if mode == "host" {
                    pm.host_port.filter(|p| *p > 0).or(pm.container_port)
                } else {
                    pm.host_port
                };
                let Some(p) = host.filter(|p| *p > 0 && *p <= 65535) else {
                    continue;
                };
                if pm.protocol.as_deref() == Some("udp") {
                    udp.insert(p as u16);
                } else {
                    tcp.insert(p as u16);
                }
            }
        }
    }
    Reservation {
        cpu,
        memory,
        ports: tcp.into_iter().collect(),
        ports_udp: udp.into_iter().collect(),
    }
}

/// Parses `placementConstraints` (request and task definition together).
pub fn constraints(list: &[(Option<String>, Option<String>)]) -> Result<Vec<Constraint>, ApiError> {
    if list.len() > 10 {
        return Err(ApiError::invalid(format!(
            "At most 10 placement constraints are allowed (including the task definition's); {} were given.",
            list.len()
        )));
    }
    let mut out = Vec::new();
    for (ty, expr) in list {
        match (ty.as_deref(), expr.as_deref()) {
            (Some("distinctInstance"), None | Some("")) => out.push(Constraint::DistinctInstance),
            (Some("distinctInstance"), Some(_)) => {
                return Err(ApiError::invalid(
                    "A distinctInstance placement constraint cannot have an expression.",
                ))
            }
            (Some("memberOf"), Some(e)) if !e.trim().is_empty() => {
                let parsed = cql::parse(e).map_err(|err| {
                    ApiError::invalid(format!("Invalid memberOf expression '{e}': {err}"))
                })?;
                out.push(Constraint::MemberOf(parsed));
            }
            (Some("memberOf"), _) => {
                return Err(ApiError::invalid(
                    "A memberOf placement constraint needs an expression.",
                ))
            }
            (other, _) => {
                return Err(ApiError::invalid(format!(
                    "Invalid placement constraint type '{}'. Valid types are distinctInstance and memberOf.",
                    other.unwrap_or("")
                )))
            }
        }
    }
    Ok(out)
}

/// Why `c` cannot take the task, or `None` when it can.
fn rejection(c: &Candidate, req: &Requirement) -> Option<&'static str> {
    if c.status != "ACTIVE" {
        return Some("INACTIVE");
    }
    if !c.agent_connected {
        return Some("AGENT");
    }
    for a in &req.requires_attributes {
        let ok = match c.view.attributes.get(&a.name) {
            None => false,
            Some(v) => a.value.is_none() || a.value == *v,
        };
        if !ok {
            return Some("ATTRIBUTE");
        }
    }
    for k in &req.constraints {
        match k {
            Constraint::MemberOf(e) if !e.eval(&c.view) => return Some("MemberOf"),
            Constraint::DistinctInstance if c.view.task_groups.contains(&req.group) => {
                return Some("DistinctInstance")
            }
            _ => {}
        }
    }
    c.remaining.misfit(&req.reservation)
}

/// The result of placing `count` tasks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Placement {
    /// Instance id of every placed task, in order.
    pub placed: Vec<String>,
    /// One per rejected instance and reason, for the tasks that could not be placed.
    pub failures: Vec<Failure>,
}

/// Places `count` tasks, one pass per task so they spread. `candidates` is updated as
/// tasks are placed (resources, task counts, groups).
pub fn place(candidates: &mut [Candidate], req: &Requirement, count: usize) -> Placement {
    candidates.sort_by(|a, b| a.id.cmp(&b.id));
    let mut out = Placement::default();
    let mut seen: BTreeMap<(String, String), ()> = BTreeMap::new();
    for _ in 0..count {
        let mut best: Option<usize> = None;
        let mut rejected = Vec::new();
        for (i, c) in candidates.iter().enumerate() {
            match rejection(c, req) {
                Some(why) => rejected.push((c.arn.clone(), why)),
                None => {
                    if best.is_none_or(|b| c.task_count < candidates[b].task_count) {
                        best = Some(i);
                    }
                }
            }
        }
        match best {
            Some(i) => {
                let c = &mut candidates[i];
                c.remaining.take(&req.reservation);
                c.task_count += 1;
                c.view.task_groups.push(req.group.clone());
                out.placed.push(c.id.clone());
            }
            None => {
                for (arn, why) in rejected {
                    if seen.insert((arn.clone(), why.to_string()), ()).is_none() {
                        out.failures.push(Failure {
                            arn: Some(arn),
                            reason: Some(why.to_string()),
                            detail: None,
                        });
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_model::{ContainerDefinition, ContainerOverride, PortMapping};

    fn cand(id: &str, cpu: i64, mem: i64, tasks: usize) -> Candidate {
        let mut attributes = BTreeMap::new();
        attributes.insert("ecs.instance-type".to_string(), Some(format!("t2.{id}")));
        Candidate {
            id: id.into(),
            arn: format!("arn:ci/{id}"),
            status: "ACTIVE".into(),
            agent_connected: true,
            remaining: Remaining {
                cpu,
                memory: mem,
                ports: [22].into_iter().collect(),
                ports_udp: BTreeSet::new(),
            },
            task_count: tasks,
            view: InstanceView {
                attributes,
                instance_id: id.into(),
                ..Default::default()
            },
        }
    }

    fn req(cpu: i64, mem: i64) -> Requirement {
        Requirement {
            reservation: Reservation {
                cpu,
                memory: mem,
                ..Default::default()
            },
            group: "family:web".into(),
            ..Default::default()
        }
    }

    #[test]
    fn count_two_on_two_instances_lands_one_on_each() {
        let mut cs = vec![cand("b", 1024, 1024, 0), cand("a", 1024, 1024, 0)];
        let p = place(&mut cs, &req(100, 100), 2);
        assert_eq!(p.placed, vec!["a", "b"]);
        assert!(p.failures.is_empty());
    }

    #[test]
    fn fewest_tasks_wins() {
        let mut cs = vec![cand("a", 1024, 1024, 3), cand("b", 1024, 1024, 1)];
        let p = place(&mut cs, &req(100, 100), 3);
        assert_eq!(p.placed, vec!["b", "b", "a"]);
    }

    #[test]
    fn failures_name_each_rejected_instance_with_its_reason() {
        let mut cs = vec![cand("a", 1024, 64, 0), cand("b", 64, 1024, 0)];
        let mut d = cand("c", 1024, 1024, 0);
        d.agent_connected = false;
        cs.push(d);
        let p = place(&mut cs, &req(100, 100), 2);
        assert!(p.placed.is_empty());
        let f: Vec<_> = p
            .failures
            .iter()
            .map(|f| (f.arn.clone().unwrap(), f.reason.clone().unwrap()))
            .collect();
        assert_eq!(
            f,
            vec![
                ("arn:ci/a".into(), "RESOURCE:MEMORY".into()),
                ("arn:ci/b".into(), "RESOURCE:CPU".into()),
                ("arn:ci/c".into(), "AGENT".into())
            ]
        );
    }

    #[test]
    fn resources_are_used_up_within_one_call() {
        let mut cs = vec![cand("a", 1024, 200, 0)];
        let p = place(&mut cs, &req(100, 100), 3);
        assert_eq!(p.placed, vec!["a", "a"]);
        assert_eq!(p.failures[0].reason.as_deref(), Some("RESOURCE:MEMORY"));
    }

    #[test]
    fn ports_member_of_distinct_instance_and_attributes() {
        let mut r = req(1, 1);
        r.reservation.ports = vec![22];
        let p = place(&mut [cand("a", 10, 10, 0)], &r, 1);
        assert_eq!(p.failures[0].reason.as_deref(), Some("RESOURCE:PORTS"));

        let mut r = req(1, 1);
        r.constraints = constraints(&[(
            Some("memberOf".into()),
            Some("attribute:ecs.instance-type =~ t2.b".into()),
        )])
        .unwrap();
        let mut cs = vec![cand("a", 10, 10, 0), cand("b", 10, 10, 5)];
        let p = place(&mut cs, &r, 1);
        assert_eq!(p.placed, vec!["b"]);

        let mut r = req(1, 1);
        r.constraints = constraints(&[(Some("distinctInstance".into()), None)]).unwrap();
        let mut cs = vec![cand("a", 10, 10, 0), cand("b", 10, 10, 0)];
        let p = place(&mut cs, &r, 3);
        assert_eq!(p.placed, vec!["a", "b"]);
        assert_eq!(p.failures.len(), 2);
        assert!(p
            .failures
            .iter()
            .all(|f| f.reason.as_deref() == Some("DistinctInstance")));

        let mut r = req(1, 1);
        r.requires_attributes = vec![Attribute {
            name: "ecs.capability.task-eni".into(),
            ..Default::default()
        }];
        let p = place(&mut [cand("a", 10, 10, 0)], &r, 1);
        assert_eq!(p.failures[0].reason.as_deref(), Some("ATTRIBUTE"));
    }

    #[test]
    fn constraint_errors() {
        let e = constraints(&[(Some("memberOf".into()), Some("foo == 1".into()))]).unwrap_err();
        assert!(e.message.contains("unknown subject 'foo'"), "{}", e.message);
        assert!(constraints(&[(Some("distinctInstance".into()), Some("x".into()))]).is_err());
        assert!(constraints(&[(Some("spread".into()), None)]).is_err());
        assert!(constraints(&[(Some("memberOf".into()), None)]).is_err());
    }

    fn td(mode: Option<&str>) -> TaskDefinition {
        TaskDefinition {
            network_mode: mode.map(str::to_string),
            container_definitions: vec![
                ContainerDefinition {
                    name: Some("a".into()),
                    cpu: Some(100),
                    memory: Some(128),
                    port_mappings: Some(vec![
                        PortMapping {
                            container_port: Some(80),
                            host_port: Some(8080),
                            ..Default::default()
                        },
                        PortMapping {
                            container_port: Some(53),
                            host_port: Some(0),
                            protocol: Some("udp".into()),
                            ..Default::default()
                        },
                    ]),
                    ..Default::default()
                },
                ContainerDefinition {
                    name: Some("b".into()),
                    cpu: Some(50),
                    memory_reservation: Some(64),
                    port_mappings: Some(vec![PortMapping {
                        container_port: Some(9000),
                        ..Default::default()
                    }]),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn reservations_from_task_definitions() {
        let r = reservation(&td(None), &TaskOverride::default());
        assert_eq!((r.cpu, r.memory), (150, 192));
        assert_eq!(r.ports, vec![8080], "dynamic ports are not reserved");
        assert!(r.ports_udp.is_empty());
        let r = reservation(&td(Some("host")), &TaskOverride::default());
        assert_eq!(r.ports, vec![8080, 9000]);
        assert_eq!(r.ports_udp, vec![53]);
        let r = reservation(&td(Some("awsvpc")), &TaskOverride::default());
        assert!(r.ports.is_empty());
        let mut t = td(None);
        t.cpu = Some("512".into());
        t.memory = Some("1024".into());
        let r = reservation(&t, &TaskOverride::default());
        assert_eq!((r.cpu, r.memory), (512, 1024));
        let ov = TaskOverride {
            container_overrides: Some(vec![ContainerOverride {
                name: Some("b".into()),
                cpu: Some(10),
                memory: Some(32),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let r = reservation(&td(None), &ov);
        assert_eq!((r.cpu, r.memory), (110, 160));
    }
}
