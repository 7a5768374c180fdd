//! Services: the apply functions of their commands, and the reads shared by the state
//! machine and [`crate::StateReader`].
//!
//! A service is one [`ServiceRecord`] per (cluster, name). Every command that writes it
//! bumps its `version`; `PutService` (the API's updates) and `ReconcileService` (the
//! controller's decisions) carry the version they were computed from and are dropped with
//! [`Response::Conflict`] when it moved, writing nothing. That is what makes a leader
//! change safe: a stale or repeated decision never starts or stops a task twice.
//!
//! Tags of a service are kept under the tag key of its ARN (as for clusters), not inside
//! the record, so TagResource/UntagResource/ListTagsForResource work on them unchanged.

use berth_model::{ApiError, ArnContext, Cluster, ServiceRecord, Tag, TaskRecord};

use crate::command::{err, inactive_cluster, Change, NewTask, Response, TaskStop};
use crate::keys::{self, TaskIndexKind};
use crate::kv::{get_json, KvRead, Staged, StoreError};
use crate::tasks;

// ---------------------------------------------------------------- reads

pub fn load_service<R: KvRead + ?Sized>(
    kv: &R,
    cluster: &str,
    name: &str,
) -> Result<Option<ServiceRecord>, StoreError> {
    get_json(kv, &keys::service(cluster, name))
}

/// Every service of a cluster (any status), by name.
pub fn services_of_cluster<R: KvRead + ?Sized>(
    kv: &R,
    cluster: &str,
) -> Result<Vec<ServiceRecord>, StoreError> {
    kv.scan_prefix(&keys::service_prefix(cluster))?
        .into_iter()
        .map(|(k, v)| {
            serde_json::from_slice(&v).map_err(|source| StoreError::Corrupt {
                key: String::from_utf8_lossy(&k).into_owned(),
                source,
            })
        })
        .collect()
}

/// Every task the store keeps whose group is `group` (STOPPED ones included), by id.
pub fn tasks_of_group<R: KvRead + ?Sized>(
    kv: &R,
    cluster: &str,
    group: &str,
) -> Result<Vec<TaskRecord>, StoreError> {
    tasks::tasks_by(kv, cluster, TaskIndexKind::Group, group)
}

/// (ACTIVE, DRAINING) services of a cluster.
pub fn service_counts<R: KvRead + ?Sized>(kv: &R, cluster: &str) -> Result<(i64, i64), StoreError> {
    let mut active = 0;
    let mut draining = 0;
    for s in services_of_cluster(kv, cluster)? {
        match s.service.status.as_str() {
            "ACTIVE" => active += 1,
            "DRAINING" => draining += 1,
            _ => {}
        }
    }
    Ok((active, draining))
}

fn is_live(rec: &ServiceRecord) -> bool {
    matches!(rec.service.status.as_str(), "ACTIVE" | "DRAINING")
}

/// DeleteCluster's precondition for services: none ACTIVE or DRAINING.
pub(crate) fn delete_cluster_precondition<R: KvRead + ?Sized>(
    st: &Staged<'_, R>,
    cluster: &str,
) -> Result<Option<ApiError>, StoreError> {
    if services_of_cluster(st, cluster)?.iter().any(is_live) {
        return Ok(Some(ApiError::new(
            berth_model::ErrorKind::ClusterContainsServicesException,
            "The Cluster cannot be deleted while Services are active.",
        )));
    }
    Ok(None)
}

// ---------------------------------------------------------------- writes

/// The stored record with its tags put back (for answers).
fn with_tags<R: KvRead + ?Sized>(
    kv: &R,
    mut rec: ServiceRecord,
) -> Result<ServiceRecord, StoreError> {
    let tags: Vec<Tag> = get_json(kv, &keys::tags(&rec.service.service_arn))?.unwrap_or_default();
    rec.service.tags = (!tags.is_empty()).then_some(tags);
    Ok(rec)
}

pub(crate) fn put_service<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    cluster: &str,
    rec: &ServiceRecord,
) -> Result<(), StoreError> {
    let name = rec.service.service_name.clone();
    // Tags live under the ARN's tag key, never inside the record.
    let mut stored = rec.clone();
    stored.service.tags = None;
    st.put_json(keys::service(cluster, &name), &stored)?;
    st.changes.push(Change::Service {
        cluster: cluster.to_string(),
        name,
    });
    Ok(())
}

pub(crate) fn create_service<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    cluster: &str,
    record: &ServiceRecord,
) -> Result<Response, StoreError> {
    match st.get_json::<Cluster>(&keys::cluster(cluster))? {
        None => return Ok(err(ApiError::cluster_not_found())),
        Some(c) if c.status.as_deref() != Some("ACTIVE") => return Ok(err(inactive_cluster())),
        Some(_) => {}
    }
    let name = record.service.service_name.as_str();
    if name.is_empty() {
        return Ok(err(ApiError::invalid("serviceName is required.")));
    }
    let existing = load_service(st, cluster, name)?;
    if let Some(old) = &existing {
        if is_live(old) {
            if record.client_token.is_some() && record.client_token == old.client_token {
                return Ok(Response::Service {
                    service: Box::new(with_tags(st, old.clone())?),
                });
            }
            return Ok(err(ApiError::invalid(
                "Creation of service was not idempotent.",
            )));
        }
    }
    let mut rec = record.clone();
    // Over an INACTIVE service of the same name the version keeps counting up, so that a
    // decision computed for the old service can never match the new one.
    rec.version = existing.map(|o| o.version).unwrap_or(0) + 1;
    let tags = rec.service.tags.clone().unwrap_or_default();
    let arn = rec.service.service_arn.clone();
    // A re-created service starts with exactly the tags given now.
    if tags.is_empty() {
        st.delete(keys::tags(&arn));
    } else {
        st.put_json(keys::tags(&arn), &tags)?;
    }
    st.changes.push(Change::Tags { arn });
    put_service(st, cluster, &rec)?;
    rec.service.tags = (!tags.is_empty()).then_some(tags);
    Ok(Response::Service {
        service: Box::new(rec),
    })
}

/// The stored record if its version is `expected`.
fn expect_version<R: KvRead + ?Sized>(
    st: &Staged<'_, R>,
    cluster: &str,
    name: &str,
    expected: u64,
) -> Result<Option<ServiceRecord>, StoreError> {
    Ok(load_service(st, cluster, name)?.filter(|r| r.version == expected))
}

pub(crate) fn put_service_if<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    cluster: &str,
    name: &str,
    expected_version: u64,
    record: &ServiceRecord,
) -> Result<Response, StoreError> {
    let Some(_) = expect_version(st, cluster, name, expected_version)? else {
        return Ok(Response::Conflict);
    };
    let mut rec = record.clone();
    rec.version = expected_version + 1;
    put_service(st, cluster, &rec)?;
    Ok(Response::Service {
        service: Box::new(with_tags(st, rec)?),
    })
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn reconcile_service<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    ctx: &ArnContext,
    cluster: &str,
    name: &str,
    expected_version: u64,
    record: &ServiceRecord,
    new_tasks: &[NewTask],
    stops: &[TaskStop],
    at: f64,
) -> Result<Response, StoreError> {
    let Some(_) = expect_version(st, cluster, name, expected_version)? else {
        return Ok(Response::Conflict);
    };
    let mut rec = record.clone();
    rec.version = expected_version + 1;
    put_service(st, cluster, &rec)?;
    // Stops first: a task stopped on a machine that is gone frees its resources at once.
    for s in stops {
        match tasks::load_task(st, cluster, &s.task_id)? {
            Some(t) if t.task.desired_status() != "STOPPED" => {}
            // Gone (purged) or already being stopped: nothing to do.
            _ => continue,
        }
        if let Response::Error { error } =
            tasks::stop_task(st, cluster, &s.task_id, &s.reason, &s.stop_code, at)?
        {
            return Ok(err(error));
        }
    }
    if new_tasks.is_empty() {
        return Ok(Response::Reconciled {
            tasks: vec![],
            failures: vec![],
        });
    }
    match tasks::run_tasks(st, ctx, cluster, new_tasks, None, at)? {
        Response::Tasks { tasks, failures } => Ok(Response::Reconciled { tasks, failures }),
        Response::Error { error } => Ok(err(error)),
        other => Ok(err(ApiError::server(format!(
            "unexpected answer creating a service's tasks: {other:?}"
        )))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;
    use crate::test_util::{ctx, run, Map};
    use berth_model::agent::{Hello, InstanceResources, TaskReport};
    use berth_model::{Container, Deployment, ErrorKind, Reservation, Service, Task};

    fn error_of(r: &Response) -> &ApiError {
        match r {
            Response::Error { error } => error,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    fn service_of(r: &Response) -> &ServiceRecord {
        match r {
            Response::Service { service } => service,
            other => panic!("expected a service, got {other:?}"),
        }
    }

    fn reconciled(r: &Response) -> (&Vec<Task>, &Vec<berth_model::Failure>) {
        match r {
            Response::Reconciled { tasks, failures } => (tasks, failures),
            other => panic!("expected Reconciled, got {other:?}"),
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

    fn register_instance(s: &mut Map, id: &str) {
        let hello = Hello {
            protocol_version: 1,
            join_token: "t".into(),
            cluster: "c".into(),
            instance_id: id.into(),
            hostname: format!("host-{id}"),
            host_ip: "10.0.0.1".into(),
            resources: InstanceResources {
                cpu: 1024,
                memory: 512,
                ports: vec![22],
                ports_udp: vec![],
            },
            attributes: vec![],
            agent_version: "0.1.0".into(),
            runtime_version: "containerd 1.6".into(),
        };
        let r = run(
            s,
            Command::RegisterContainerInstance {
                ctx: ctx(),
                hello,
                at: 100.0,
                token: None,
            },
        );
        assert!(matches!(r, Response::ContainerInstance { .. }), "{r:?}");
    }

    /// A cluster `c` with instance `i1` (1024 cpu, 512 MiB).
    fn setup() -> Map {
        let mut s = Map::new();
        create_cluster(&mut s, "c");
        register_instance(&mut s, "i1");
        s
    }

    const DEP: &str = "ecs-svc/1234567890123456789";

    fn record(name: &str, token: Option<&str>) -> ServiceRecord {
        let td = ctx().task_definition("web", 1);
        ServiceRecord {
            service: Service {
                service_arn: ctx().service("c", name),
                service_name: name.into(),
                cluster_arn: ctx().cluster("c"),
                status: "ACTIVE".into(),
                desired_count: 2,
                task_definition: td.clone(),
                scheduling_strategy: "REPLICA".into(),
                deployments: vec![Deployment {
                    id: DEP.into(),
                    status: "PRIMARY".into(),
                    task_definition: td,
                    desired_count: 2,
                    rollout_state: "IN_PROGRESS".into(),
                    rollout_state_reason: format!("ECS deployment {DEP} in progress."),
                    ..Default::default()
                }],
                tags: Some(vec![Tag {
                    key: "team".into(),
                    value: "a".into(),
                }]),
                ..Default::default()
            },
            client_token: token.map(str::to_string),
            ..Default::default()
        }
    }

    fn create(name: &str, token: Option<&str>) -> Command {
        Command::CreateService {
            cluster: "c".into(),
            record: record(name, token),
            at: 150.0,
        }
    }

    fn stored(s: &Map, name: &str) -> ServiceRecord {
        load_service(s, "c", name).unwrap().unwrap()
    }

    fn put(name: &str, expected: u64, rec: ServiceRecord) -> Command {
        Command::PutService {
            cluster: "c".into(),
            name: name.into(),
            expected_version: expected,
            record: rec,
            at: 160.0,
        }
    }

    fn new_task(id: &str, mem: i64) -> NewTask {
        NewTask {
            task_id: id.into(),
            task_definition_arn: ctx().task_definition("web", 1),
            family: "web".into(),
            revision: 1,
            instance_id: "i1".into(),
            group: "service:web".into(),
            started_by: Some(DEP.into()),
            containers: vec![Container {
                name: Some("app".into()),
                image: Some("busybox".into()),
                ..Default::default()
            }],
            reservation: Reservation {
                cpu: 128,
                memory: mem,
                ports: vec![],
                ports_udp: vec![],
            },
            launch_type: "EC2".into(),
            ..Default::default()
        }
    }

    fn reconcile(
        expected: u64,
        rec: ServiceRecord,
        new_tasks: Vec<NewTask>,
        stops: Vec<TaskStop>,
    ) -> Command {
        Command::ReconcileService {
            ctx: ctx(),
            cluster: "c".into(),
            name: "web".into(),
            expected_version: expected,
            record: rec,
            new_tasks,
            stops,
            at: 200.0,
        }
    }

    fn task(s: &Map, id: &str) -> TaskRecord {
        tasks::load_task(s, "c", id).unwrap().unwrap()
    }

    #[test]
    fn create_service_writes_version_1_and_keeps_tags_beside_the_record() {
        let mut s = setup();
        let r = run(&mut s, create("web", None));
        let svc = service_of(&r);
        assert_eq!(svc.version, 1);
        assert_eq!(svc.service.tags.as_ref().map(|t| t.len()), Some(1));
        let st = stored(&s, "web");
        assert_eq!(st.version, 1);
        assert_eq!(st.service.tags, None, "tags live under the ARN's tag key");
        let tags: Vec<Tag> = Staged::new(&s)
            .get_json(&keys::tags(&ctx().service("c", "web")))
            .unwrap()
            .unwrap();
        assert_eq!(tags[0].key, "team");
        // An unknown or deleted cluster refuses.
        let e = run(
            &mut s,
            Command::CreateService {
                cluster: "nope".into(),
                record: record("web", None),
                at: 1.0,
            },
        );
        assert_eq!(error_of(&e).kind, ErrorKind::ClusterNotFoundException);
    }

    #[test]
    fn create_is_idempotent_with_the_same_token_and_refuses_a_clash() {
        let mut s = setup();
        run(&mut s, create("web", Some("tok-1")));
        let before = s.clone();
        // The same token: the stored service, unchanged (and nothing written).
        let mut again = record("web", Some("tok-1"));
        again.service.desired_count = 7;
        let r = run(
            &mut s,
            Command::CreateService {
                cluster: "c".into(),
                record: again,
                at: 170.0,
            },
        );
        assert_eq!(service_of(&r).service.desired_count, 2);
        assert_eq!(service_of(&r).service.tags.as_ref().unwrap().len(), 1);
        assert_eq!(s, before);
        for token in [None, Some("tok-2")] {
            let e = run(&mut s, create("web", token));
            assert_eq!(error_of(&e).kind, ErrorKind::InvalidParameterException);
            assert_eq!(
                error_of(&e).message,
                "Creation of service was not idempotent."
            );
        }
        assert_eq!(s, before, "a refused create writes nothing");
    }

    #[test]
    fn draining_names_clash_and_inactive_ones_are_recreated() {
        let mut s = setup();
        run(&mut s, create("web", None));
        let mut draining = stored(&s, "web");
        draining.service.status = "DRAINING".into();
        service_of(&run(&mut s, put("web", 1, draining)));
        let e = run(&mut s, create("web", None));
        assert_eq!(
            error_of(&e).message,
            "Creation of service was not idempotent."
        );
        let mut inactive = stored(&s, "web");
        inactive.service.status = "INACTIVE".into();
        service_of(&run(&mut s, put("web", 2, inactive)));
        let mut fresh = record("web", None);
        fresh.service.tags = None;
        fresh.service.desired_count = 5;
        let r = run(
            &mut s,
            Command::CreateService {
                cluster: "c".into(),
                record: fresh,
                at: 300.0,
            },
        );
        let svc = service_of(&r);
        assert_eq!(svc.service.status, "ACTIVE");
        assert_eq!(svc.service.desired_count, 5);
        assert_eq!(
            svc.version, 4,
            "versions keep counting over the old service"
        );
        assert_eq!(
            svc.service.tags, None,
            "the new service has only its own tags"
        );
        let tags: Option<Vec<Tag>> = Staged::new(&s)
            .get_json(&keys::tags(&ctx().service("c", "web")))
            .unwrap();
        assert_eq!(tags, None);
    }

    #[test]
    fn put_service_is_conditional_on_the_version() {
        let mut s = setup();
        run(&mut s, create("web", None));
        let mut rec = stored(&s, "web");
        rec.service.desired_count = 3;
        let r = run(&mut s, put("web", 1, rec.clone()));
        assert_eq!(service_of(&r).version, 2);
        assert_eq!(service_of(&r).service.tags.as_ref().unwrap().len(), 1);
        let before = s.clone();
        rec.service.desired_count = 9;
        assert_eq!(run(&mut s, put("web", 1, rec.clone())), Response::Conflict);
        assert_eq!(run(&mut s, put("nope", 0, rec)), Response::Conflict);
        assert_eq!(s, before, "a conflict writes nothing");
        assert_eq!(stored(&s, "web").service.desired_count, 3);
    }

    #[test]
    fn reconcile_starts_and_stops_tasks_and_a_stale_decision_is_dropped() {
        let mut s = setup();
        run(&mut s, create("web", None));
        let mut rec = stored(&s, "web");
        rec.next_event = 1;
        let cmd = reconcile(
            1,
            rec.clone(),
            vec![
                new_task("t1", 128),
                new_task("t2", 128),
                new_task("t3", 400),
            ],
            vec![],
        );
        let r = run(&mut s, cmd.clone());
        let (created, failures) = reconciled(&r);
        assert_eq!(created.len(), 2);
        assert_eq!(failures.len(), 1, "resources are re-checked: {failures:?}");
        assert_eq!(failures[0].reason.as_deref(), Some("RESOURCE:MEMORY"));
        assert_eq!(stored(&s, "web").version, 2);
        assert_eq!(stored(&s, "web").next_event, 1);
        let t1 = task(&s, "t1");
        assert_eq!(t1.task.group.as_deref(), Some("service:web"));
        assert_eq!(t1.task.started_by.as_deref(), Some(DEP));
        // The same decision again (a repeated proposal, or one from a deposed leader):
        // dropped, nothing written.
        let before = s.clone();
        assert_eq!(run(&mut s, cmd), Response::Conflict);
        assert_eq!(s, before);
        // Stop one; one already being stopped and one unknown are skipped.
        let stop = |id: &str| TaskStop {
            task_id: id.into(),
            reason: format!("Scaling activity initiated by (deployment {DEP})"),
            stop_code: "ServiceSchedulerInitiated".into(),
        };
        let cur = stored(&s, "web");
        let r = run(
            &mut s,
            reconcile(2, cur, vec![], vec![stop("t1"), stop("ghost")]),
        );
        assert_eq!(reconciled(&r).0.len(), 0);
        let t1 = task(&s, "t1");
        assert_eq!(t1.task.desired_status(), "STOPPED");
        assert_eq!(
            t1.task.stop_code.as_deref(),
            Some("ServiceSchedulerInitiated")
        );
        assert!(t1.task.stopped_reason.as_deref().unwrap().contains(DEP));
        let v = t1.task.version;
        let mut again = stop("t1");
        again.reason = "other".into();
        let cur = stored(&s, "web");
        run(&mut s, reconcile(3, cur, vec![], vec![again]));
        let t1 = task(&s, "t1");
        assert_eq!(
            t1.task.version, v,
            "a task already being stopped is left alone"
        );
        assert!(t1.task.stopped_reason.as_deref().unwrap().contains(DEP));
        assert_eq!(stored(&s, "web").version, 4);
    }

    #[test]
    fn reconcile_of_a_missing_service_or_with_a_taken_task_id_writes_nothing() {
        let mut s = setup();
        let before = s.clone();
        assert_eq!(
            run(
                &mut s,
                reconcile(0, record("web", None), vec![new_task("t1", 64)], vec![])
            ),
            Response::Conflict
        );
        assert_eq!(s, before);
        run(&mut s, create("web", None));
        let cur = stored(&s, "web");
        run(&mut s, reconcile(1, cur, vec![new_task("t1", 64)], vec![]));
        let before = s.clone();
        let cur = stored(&s, "web");
        let r = run(&mut s, reconcile(2, cur, vec![new_task("t1", 64)], vec![]));
        assert_eq!(error_of(&r).kind, ErrorKind::ServerException);
        assert_eq!(
            s, before,
            "a refused decision writes nothing, not even the record"
        );
    }

    #[test]
    fn the_group_index_follows_tasks_through_stop_and_purge() {
        let mut s = setup();
        run(&mut s, create("web", None));
        let cur = stored(&s, "web");
        run(
            &mut s,
            reconcile(1, cur, vec![new_task("t1", 64), new_task("t2", 64)], vec![]),
        );
        // A standalone task of another group.
        let mut other = new_task("t3", 64);
        other.group = "family:web".into();
        run(
            &mut s,
            Command::RunTasks {
                ctx: ctx(),
                cluster: "c".into(),
                tasks: vec![other],
                client_token: None,
                at: 210.0,
            },
        );
        let ids = |s: &Map| -> Vec<String> {
            tasks_of_group(s, "c", "service:web")
                .unwrap()
                .into_iter()
                .map(|t| t.task.id().to_string())
                .collect()
        };
        assert_eq!(ids(&s), vec!["t1", "t2"]);
        assert_eq!(
            tasks::task_ids_by(&s, "c", TaskIndexKind::Group, "family:web").unwrap(),
            vec!["t3"]
        );
        run(
            &mut s,
            Command::StopInstanceTasks {
                cluster: "c".into(),
                instance_id: "i1".into(),
                reason: "lost".into(),
                stop_code: "TerminationNotice".into(),
                at: 300.0,
            },
        );
        assert_eq!(ids(&s), vec!["t1", "t2"], "stopped tasks stay in the group");
        run(
            &mut s,
            Command::PurgeStoppedTasks {
                cluster: "c".into(),
                before: 301.0,
            },
        );
        assert!(ids(&s).is_empty());
        assert!(
            tasks::task_ids_by(&s, "c", TaskIndexKind::Group, "family:web")
                .unwrap()
                .is_empty()
        );
        let left: Vec<_> = s
            .keys()
            .filter(|k| k.starts_with(keys::TASK_INDEX))
            .collect();
        assert!(left.is_empty(), "purge leaves no index entries behind");
    }

    fn report(id: &str, seq: u64, status: &str) -> TaskReport {
        serde_json::from_value(serde_json::json!({
            "taskArn": ctx().task("c", id),
            "seq": seq,
            "lastStatus": status,
            "containers": [{"name": "app", "lastStatus": status}],
        }))
        .unwrap()
    }

    #[test]
    fn stop_instance_tasks_stops_everything_on_a_lost_machine_for_good() {
        let mut s = setup();
        register_instance(&mut s, "i2");
        run(&mut s, create("web", None));
        let mut on_i2 = new_task("t3", 64);
        on_i2.instance_id = "i2".into();
        let cur = stored(&s, "web");
        run(
            &mut s,
            reconcile(
                1,
                cur,
                vec![new_task("t1", 200), new_task("t2", 64), on_i2],
                vec![],
            ),
        );
        run(
            &mut s,
            Command::ReportTasks {
                cluster: "c".into(),
                instance_id: "i1".into(),
                reports: vec![report("t1", 1, "RUNNING")],
                at: 210.0,
            },
        );
        // A user stopped t2 earlier: its reason is kept.
        run(
            &mut s,
            Command::StopTask {
                cluster: "c".into(),
                task_id: "t2".into(),
                reason: "by me".into(),
                stop_code: "UserInitiated".into(),
                at: 220.0,
            },
        );
        let r = run(
            &mut s,
            Command::StopInstanceTasks {
                cluster: "c".into(),
                instance_id: "i1".into(),
                reason: "The container instance was lost.".into(),
                stop_code: "TerminationNotice".into(),
                at: 300.0,
            },
        );
        assert_eq!(r, Response::Ok);
        let t1 = task(&s, "t1");
        assert_eq!(t1.task.last_status(), "STOPPED");
        assert_eq!(t1.task.desired_status(), "STOPPED");
        assert_eq!(t1.task.stopped_at, Some(300.0));
        assert_eq!(t1.task.execution_stopped_at, Some(300.0));
        assert_eq!(t1.task.stop_code.as_deref(), Some("TerminationNotice"));
        assert_eq!(
            t1.task.stopped_reason.as_deref(),
            Some("The container instance was lost.")
        );
        assert!(t1
            .task
            .containers
            .iter()
            .all(|c| c.last_status.as_deref() == Some("STOPPED")));
        let t2 = task(&s, "t2");
        assert_eq!(t2.task.last_status(), "STOPPED");
        assert_eq!(t2.task.stopped_reason.as_deref(), Some("by me"));
        assert_eq!(
            task(&s, "t3").task.last_status(),
            "PROVISIONING",
            "other machines untouched"
        );
        // Resources are released: the instance can take a 500 MiB task again.
        let inst = tasks::load_instance(&s, "c", "i1").unwrap().unwrap();
        let on = tasks::tasks_on_instance(&s, "c", "i1").unwrap();
        let big = Reservation {
            cpu: 128,
            memory: 500,
            ports: vec![],
            ports_udp: vec![],
        };
        assert_eq!(
            berth_model::Remaining::of(&inst.instance, &on).misfit(&big),
            None
        );
        // The agent comes back and reports the task RUNNING: it stays STOPPED.
        run(
            &mut s,
            Command::ReportTasks {
                cluster: "c".into(),
                instance_id: "i1".into(),
                reports: vec![report("t1", 2, "RUNNING")],
                at: 400.0,
            },
        );
        let t1 = task(&s, "t1");
        assert_eq!(t1.task.last_status(), "STOPPED");
        assert_eq!(t1.task.desired_status(), "STOPPED");
        assert!(t1
            .task
            .containers
            .iter()
            .all(|c| c.last_status.as_deref() == Some("STOPPED")));
        // Again: a no-op.
        let before = s.clone();
        run(
            &mut s,
            Command::StopInstanceTasks {
                cluster: "c".into(),
                instance_id: "i1".into(),
                reason: "again".into(),
                stop_code: "TerminationNotice".into(),
                at: 500.0,
            },
        );
        assert_eq!(s, before);
    }

    #[test]
    fn delete_cluster_refuses_live_services_and_counts_follow_status() {
        let mut s = Map::new();
        create_cluster(&mut s, "c");
        run(&mut s, create("web", None));
        run(&mut s, create("api", None));
        assert_eq!(service_counts(&s, "c").unwrap(), (2, 0));
        let mut d = stored(&s, "web");
        d.service.status = "DRAINING".into();
        run(&mut s, put("web", 1, d));
        assert_eq!(service_counts(&s, "c").unwrap(), (1, 1));
        let mut i = stored(&s, "api");
        i.service.status = "INACTIVE".into();
        run(&mut s, put("api", 1, i));
        let e = run(&mut s, Command::DeleteCluster { name: "c".into() });
        assert_eq!(
            error_of(&e).kind,
            ErrorKind::ClusterContainsServicesException
        );
        assert_eq!(
            error_of(&e).message,
            "The Cluster cannot be deleted while Services are active."
        );
        let mut i = stored(&s, "web");
        i.service.status = "INACTIVE".into();
        run(&mut s, put("web", 2, i));
        assert_eq!(service_counts(&s, "c").unwrap(), (0, 0));
        assert!(matches!(
            run(&mut s, Command::DeleteCluster { name: "c".into() }),
            Response::Cluster { .. }
        ));
        assert_eq!(
            services_of_cluster(&s, "c").unwrap().len(),
            2,
            "INACTIVE ones are kept"
        );
    }

    #[test]
    fn service_commands_are_deterministic_and_round_trip() {
        let mut rec2 = record("web", None);
        rec2.version = 1;
        let cmds = vec![
            create("web", Some("x")),
            reconcile(1, rec2, vec![new_task("t1", 64)], vec![]),
            reconcile(
                2,
                record("web", None),
                vec![],
                vec![TaskStop {
                    task_id: "t1".into(),
                    reason: "r".into(),
                    stop_code: "ServiceSchedulerInitiated".into(),
                }],
            ),
            put("web", 3, record("web", None)),
            put("web", 3, record("web", None)),
            Command::StopInstanceTasks {
                cluster: "c".into(),
                instance_id: "i1".into(),
                reason: "lost".into(),
                stop_code: "TerminationNotice".into(),
                at: 1.0,
            },
        ];
        let mut s1 = setup();
        let mut s2 = setup();
        let r1: Vec<_> = cmds.iter().map(|c| run(&mut s1, c.clone())).collect();
        let r2: Vec<_> = cmds.iter().map(|c| run(&mut s2, c.clone())).collect();
        assert_eq!(r1, r2);
        assert_eq!(s1, s2);
        assert_eq!(r1[4], Response::Conflict);
        for c in cmds {
            let req = crate::Request::new(c);
            let back: crate::Request =
                serde_json::from_slice(&serde_json::to_vec(&req).unwrap()).unwrap();
            assert_eq!(back, req);
        }
        for r in r1 {
            let back: Response = serde_json::from_value(serde_json::to_value(&r).unwrap()).unwrap();
            assert_eq!(back, r);
        }
    }
}
