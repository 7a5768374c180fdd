use super::*;
use berth_model::agent::{ContainerReport, Hello, InstanceResources, TaskReport};
use berth_model::elb::{
    self as elb, ForwardActionConfig, Matcher, TargetGroup, TargetGroupTuple, Values,
};
use berth_model::{
    Attribute, Cluster, Container, NetworkBinding, Reservation, Service, ServiceRecord,
};

use crate::command::NewTask;
use crate::test_util::{ctx, run, Map};

const R: &str = "us-east-1";
const A: &str = "123456789012";

fn error_of(r: &Response) -> &ApiError {
    match r {
        Response::Error { error } => error,
        other => panic!("expected an error, got {other:?}"),
    }
}

/// Runs a command that must be refused with `kind`, and checks it wrote nothing.
fn refused(s: &mut Map, cmd: Command, kind: ErrorKind) -> String {
    let before = s.clone();
    let r = run(s, cmd);
    let e = error_of(&r);
    assert_eq!(e.kind, kind, "{}", e.message);
    assert_eq!(*s, before, "a refused command writes nothing");
    e.message.clone()
}

fn lb_arn(name: &str) -> String {
    elb::load_balancer_arn(R, A, name, &format!("{name}-id"))
}

fn tg_arn(name: &str) -> String {
    elb::target_group_arn(R, A, name, &format!("{name}-id"))
}

fn listener_arn(lb: &str, port: u16) -> String {
    elb::listener_arn(&lb_arn(lb), &format!("l{port}"))
}

fn lb(name: &str) -> LoadBalancer {
    LoadBalancer {
        load_balancer_arn: lb_arn(name),
        dns_name: format!("{name}.elb.berth.local"),
        created_time: 1.0,
        load_balancer_name: name.into(),
        scheme: "internet-facing".into(),
        state: elb::LoadBalancerState {
            code: "active".into(),
            reason: None,
        },
        lb_type: "application".into(),
        ip_address_type: "ipv4".into(),
        ..Default::default()
    }
}

fn create_lb(s: &mut Map, name: &str) {
    let r = run(
        s,
        Command::CreateLoadBalancer {
            load_balancer: lb(name),
            tags: vec![],
        },
    );
    assert!(matches!(r, Response::LoadBalancer { .. }), "{r:?}");
}

fn tg_record(name: &str, target_type: &str) -> TargetGroupRecord {
    TargetGroupRecord {
        target_group: TargetGroup {
            target_group_arn: tg_arn(name),
            target_group_name: name.into(),
            protocol: "HTTP".into(),
            port: 80,
            health_check_protocol: "HTTP".into(),
            health_check_port: "traffic-port".into(),
            health_check_enabled: true,
            health_check_interval_seconds: 30,
            health_check_timeout_seconds: 5,
            healthy_threshold_count: 5,
            unhealthy_threshold_count: 2,
            health_check_path: "/".into(),
            matcher: Matcher {
                http_code: Some("200".into()),
                grpc_code: None,
            },
            target_type: target_type.into(),
            ..Default::default()
        },
        attributes: vec![ElbAttribute {
            key: "deregistration_delay.timeout_seconds".into(),
            value: "300".into(),
        }],
    }
}

fn create_tg(s: &mut Map, name: &str, target_type: &str) {
    let r = run(
        s,
        Command::CreateTargetGroup {
            record: tg_record(name, target_type),
            tags: vec![],
        },
    );
    assert!(matches!(r, Response::TargetGroup { .. }), "{r:?}");
}

fn set_delay(s: &mut Map, tg: &str, secs: u32) {
    let r = run(
        s,
        Command::ModifyTargetGroupAttributes {
            arn: tg_arn(tg),
            attributes: vec![ElbAttribute {
                key: "deregistration_delay.timeout_seconds".into(),
                value: secs.to_string(),
            }],
        },
    );
    assert!(matches!(r, Response::TargetGroup { .. }), "{r:?}");
}

fn forward(tg: &str) -> Action {
    Action {
        action_type: "forward".into(),
        target_group_arn: Some(tg_arn(tg)),
        forward_config: Some(ForwardActionConfig {
            target_groups: vec![TargetGroupTuple {
                target_group_arn: tg_arn(tg),
                weight: Some(1),
            }],
            target_group_stickiness_config: None,
        }),
        ..Default::default()
    }
}

fn fixed() -> Action {
    Action {
        action_type: "fixed-response".into(),
        fixed_response_config: Some(elb::FixedResponseActionConfig {
            status_code: "404".into(),
            content_type: None,
            message_body: None,
        }),
        ..Default::default()
    }
}

fn listener_cmd(lb: &str, port: u16, actions: Vec<Action>) -> Command {
    Command::CreateListener {
        listener: Listener {
            listener_arn: listener_arn(lb, port),
            load_balancer_arn: lb_arn(lb),
            port,
            protocol: "HTTP".into(),
            default_actions: actions,
        },
        tags: vec![],
    }
}

fn rule_arn(lb: &str, port: u16, id: &str) -> String {
    elb::rule_arn(&listener_arn(lb, port), id)
}

fn rule_cmd(lb: &str, port: u16, id: &str, priority: u32, actions: Vec<Action>) -> Command {
    Command::CreateRule {
        record: RuleRecord {
            listener_arn: listener_arn(lb, port),
            rule: Rule {
                rule_arn: rule_arn(lb, port, id),
                priority: priority.to_string(),
                conditions: vec![path(&format!("/{id}/*"))],
                actions,
                is_default: false,
            },
        },
        tags: vec![],
    }
}

fn path(p: &str) -> RuleCondition {
    RuleCondition {
        field: "path-pattern".into(),
        path_pattern_config: Some(Values {
            values: vec![p.into()],
        }),
        ..Default::default()
    }
}

fn ok(r: Response) {
    assert!(!matches!(r, Response::Error { .. }), "{r:?}");
}

fn desc(id: &str, port: Option<u16>) -> TargetDescription {
    TargetDescription {
        id: id.into(),
        port,
        availability_zone: None,
    }
}

// ------------------------------------------------------------------ ECS fixtures

fn hello(id: &str, ip: &str) -> Hello {
    Hello {
        protocol_version: 1,
        join_token: "t".into(),
        cluster: "c".into(),
        instance_id: id.into(),
        hostname: format!("host-{id}"),
        host_ip: ip.into(),
        resources: InstanceResources {
            cpu: 2048,
            memory: 1024,
            ports: vec![22],
            ports_udp: vec![],
        },
        attributes: vec![Attribute {
            name: "ecs.availability-zone".into(),
            value: Some("zone-a".into()),
            ..Default::default()
        }],
        agent_version: "0.1.0".into(),
        runtime_version: "containerd 1.6".into(),
    }
}

/// A cluster `c` with instance `i1` (10.0.0.7, zone-a).
fn ecs() -> Map {
    let mut s = Map::new();
    ok(run(
        &mut s,
        Command::CreateCluster {
            cluster: Cluster {
                cluster_arn: Some(ctx().cluster("c")),
                cluster_name: Some("c".into()),
                status: Some("ACTIVE".into()),
                ..Default::default()
            },
            tags: vec![],
        },
    ));
    ok(run(
        &mut s,
        Command::RegisterContainerInstance {
            ctx: ctx(),
            hello: hello("i1", "10.0.0.7"),
            at: 100.0,
            token: None,
        },
    ));
    s
}

/// An ECS service `web` whose container `app` port 80 feeds target group `web`.
fn service(s: &mut Map) {
    let record = ServiceRecord {
        service: Service {
            service_arn: ctx().service("c", "web"),
            service_name: "web".into(),
            cluster_arn: ctx().cluster("c"),
            status: "ACTIVE".into(),
            load_balancers: vec![berth_model::LoadBalancer {
                target_group_arn: Some(tg_arn("web")),
                load_balancer_name: None,
                container_name: Some("app".into()),
                container_port: Some(80),
            }],
            ..Default::default()
        },
        ..Default::default()
    };
    ok(run(
        s,
        Command::CreateService {
            cluster: "c".into(),
            record,
            at: 150.0,
        },
    ));
}

fn start_task(s: &mut Map, id: &str, network_mode: Option<&str>) {
    let r = run(
        s,
        Command::RunTasks {
            ctx: ctx(),
            cluster: "c".into(),
            tasks: vec![NewTask {
                task_id: id.into(),
                task_definition_arn: ctx().task_definition("web", 1),
                family: "web".into(),
                revision: 1,
                instance_id: "i1".into(),
                group: "service:web".into(),
                containers: vec![Container {
                    name: Some("app".into()),
                    image: Some("busybox".into()),
                    ..Default::default()
                }],
                reservation: Reservation {
                    cpu: 128,
                    memory: 64,
                    ports: vec![],
                    ports_udp: vec![],
                },
                network_mode: network_mode.map(str::to_string),
                launch_type: "EC2".into(),
                ..Default::default()
            }],
            client_token: None,
            at: 200.0,
        },
    );
    match r {
        Response::Tasks { tasks, failures } => {
            assert_eq!(tasks.len(), 1, "{failures:?}");
        }
        other => panic!("{other:?}"),
    }
}

fn report(id: &str, seq: u64, status: &str, ip: Option<&str>) -> TaskReport {
    TaskReport {
        task_arn: ctx().task("c", id),
        seq,
        last_status: status.into(),
        health_status: None,
        pull_started_at: None,
        pull_stopped_at: None,
        started_at: None,
        execution_stopped_at: None,
        stop_code: None,
        stopped_reason: None,
        private_ipv4_address: ip.map(str::to_string),
        containers: vec![ContainerReport {
            name: "app".into(),
            runtime_id: None,
            image_digest: None,
            last_status: if status == "STOPPED" {
                "STOPPED"
            } else {
                "RUNNING"
            }
            .into(),
            exit_code: None,
            reason: None,
            network_bindings: if ip.is_some() {
                vec![]
            } else {
                vec![NetworkBinding {
                    bind_ip: Some("0.0.0.0".into()),
                    container_port: Some(80),
                    host_port: Some(49160),
                    protocol: Some("tcp".into()),
                }]
            },
            network_interfaces: vec![],
            health_status: None,
        }],
    }
}

fn send(s: &mut Map, r: TaskReport, at: f64) {
    ok(run(
        s,
        Command::ReportTasks {
            cluster: "c".into(),
            instance_id: "i1".into(),
            reports: vec![r],
            at,
        },
    ));
}

/// Runs a command on `s` (keeping its writes, like `run`) and returns its response with
/// the changes it announced.
fn run_changes(s: &mut Map, cmd: Command) -> (Response, Vec<Change>) {
    let (resp, writes, changes) = {
        let mut st = Staged::new(&*s);
        let resp = crate::apply::apply(&mut st, &cmd).unwrap();
        (resp, st.writes, st.changes)
    };
    for (k, v) in writes {
        match v {
            Some(v) => s.insert(k, v),
            None => s.remove(&k),
        };
    }
    (resp, changes)
}

fn task(s: &Map, id: &str) -> TaskRecord {
    crate::tasks::load_task(s, "c", id).unwrap().unwrap()
}

/// ECS cluster + a load balancer `lb` with a listener on 8080 forwarding to `web`,
/// service `web`, and task `t1` RUNNING on i1 with host port 49160.
fn running_service_task() -> Map {
    let mut s = ecs();
    create_lb(&mut s, "lb");
    create_tg(&mut s, "web", "instance");
    ok(run(&mut s, listener_cmd("lb", 8080, vec![forward("web")])));
    service(&mut s);
    start_task(&mut s, "t1", None);
    send(&mut s, report("t1", 1, "PENDING", None), 201.0);
    assert!(targets(&s, &tg_arn("web")).unwrap().is_empty());
    send(&mut s, report("t1", 2, "RUNNING", None), 202.0);
    s
}

// ------------------------------------------------------------------ load balancers

#[test]
fn load_balancer_names_are_unique_and_identical_recreate_answers_the_existing_one() {
    let mut s = Map::new();
    create_lb(&mut s, "a");
    let mut again = lb("a");
    again.load_balancer_arn = elb::load_balancer_arn(R, A, "a", "other");
    again.created_time = 9.0;
    match run(
        &mut s,
        Command::CreateLoadBalancer {
            load_balancer: again.clone(),
            tags: vec![],
        },
    ) {
        Response::LoadBalancer { load_balancer } => {
            assert_eq!(load_balancer.load_balancer_arn, lb_arn("a"))
        }
        other => panic!("{other:?}"),
    }
    again.scheme = "internal".into();
    let m = refused(
        &mut s,
        Command::CreateLoadBalancer {
            load_balancer: again,
            tags: vec![],
        },
        ErrorKind::DuplicateLoadBalancerName,
    );
    assert!(m.contains("'a'"), "{m}");
    assert_eq!(load_balancers(&s).unwrap().len(), 1);
}

#[test]
fn delete_load_balancer_takes_its_listeners_and_rules_and_is_idempotent() {
    let mut s = Map::new();
    create_lb(&mut s, "a");
    create_tg(&mut s, "web", "instance");
    ok(run(&mut s, listener_cmd("a", 80, vec![forward("web")])));
    ok(run(
        &mut s,
        rule_cmd("a", 80, "r1", 5, vec![forward("web")]),
    ));
    assert_eq!(rules(&s, &listener_arn("a", 80)).unwrap().len(), 2);
    ok(run(
        &mut s,
        Command::DeleteLoadBalancer { arn: lb_arn("a") },
    ));
    assert!(load_balancers(&s).unwrap().is_empty());
    assert!(listeners(&s, None).unwrap().is_empty());
    assert!(all_rules(&s).unwrap().is_empty());
    // The target group is free again: it can be deleted.
    assert!(target_group(&s, &tg_arn("web"))
        .unwrap()
        .unwrap()
        .target_group
        .load_balancer_arns
        .is_empty());
    ok(run(
        &mut s,
        Command::DeleteLoadBalancer { arn: lb_arn("a") },
    ));
    ok(run(
        &mut s,
        Command::DeleteTargetGroup { arn: tg_arn("web") },
    ));
}

fn lb_attr(s: &Map, name: &str, k: &str) -> String {
    load_balancer_record(s, &lb_arn(name))
        .unwrap()
        .unwrap()
        .attributes
        .into_iter()
        .find(|a| a.key == k)
        .map(|a| a.value)
        .unwrap_or_else(|| panic!("no attribute {k}"))
}

fn set_lb_attrs(name: &str, attrs: &[(&str, &str)]) -> Command {
    Command::ModifyLoadBalancerAttributes {
        arn: lb_arn(name),
        attributes: attrs
            .iter()
            .map(|(k, v)| ElbAttribute {
                key: k.to_string(),
                value: v.to_string(),
            })
            .collect(),
    }
}

#[test]
fn a_new_load_balancer_has_albs_default_attributes() {
    let mut s = Map::new();
    create_lb(&mut s, "a");
    let rec = load_balancer_record(&s, &lb_arn("a")).unwrap().unwrap();
    assert_eq!(rec.load_balancer, lb("a"));
    assert_eq!(rec.attributes, elb::default_load_balancer_attributes());
    assert_eq!(lb_attr(&s, "a", "idle_timeout.timeout_seconds"), "60");
    assert_eq!(lb_attr(&s, "a", "deletion_protection.enabled"), "false");
    assert_eq!(
        lb_attr(&s, "a", "routing.http.desync_mitigation_mode"),
        "defensive"
    );
    // Load balancers still read as the wire shape.
    assert_eq!(load_balancers(&s).unwrap(), vec![lb("a")]);
    assert_eq!(load_balancer_records(&s).unwrap(), vec![rec]);
}

#[test]
fn a_load_balancer_stored_before_attributes_reads_with_the_defaults() {
    let mut s = Map::new();
    // What a server from before load balancer attributes wrote: the bare wire shape.
    s.insert(
        key(LB, &lb_arn("old")),
        serde_json::to_vec(&lb("old")).unwrap(),
    );
    let rec = load_balancer_record(&s, &lb_arn("old")).unwrap().unwrap();
    assert_eq!(rec.load_balancer, lb("old"));
    assert_eq!(rec.attributes, elb::default_load_balancer_attributes());
    assert_eq!(load_balancer(&s, &lb_arn("old")).unwrap(), Some(lb("old")));
    // Modifying it stores every attribute, the change merged in.
    let r = run(
        &mut s,
        set_lb_attrs("old", &[("idle_timeout.timeout_seconds", "5")]),
    );
    let Response::LoadBalancerAttributes { attributes } = r else {
        panic!("{r:?}")
    };
    assert_eq!(
        attributes.len(),
        elb::default_load_balancer_attributes().len()
    );
    assert_eq!(lb_attr(&s, "old", "idle_timeout.timeout_seconds"), "5");
    // Deleting it works as before.
    ok(run(
        &mut s,
        Command::DeleteLoadBalancer { arn: lb_arn("old") },
    ));
    assert!(load_balancers(&s).unwrap().is_empty());
}

#[test]
fn load_balancer_attributes_merge_by_key() {
    let mut s = Map::new();
    create_lb(&mut s, "a");
    create_lb(&mut s, "b");
    let r = run(
        &mut s,
        set_lb_attrs(
            "a",
            &[
                ("idle_timeout.timeout_seconds", "5"),
                ("routing.http2.enabled", "false"),
            ],
        ),
    );
    let Response::LoadBalancerAttributes { attributes } = r else {
        panic!("{r:?}")
    };
    let mut want = elb::default_load_balancer_attributes();
    for a in &mut want {
        match a.key.as_str() {
            "idle_timeout.timeout_seconds" => a.value = "5".into(),
            "routing.http2.enabled" => a.value = "false".into(),
            _ => {}
        }
    }
    assert_eq!(attributes, want, "every attribute, in the same order");
    ok_attrs(run(
        &mut s,
        set_lb_attrs("a", &[("idle_timeout.timeout_seconds", "7")]),
    ));
    assert_eq!(lb_attr(&s, "a", "idle_timeout.timeout_seconds"), "7");
    assert_eq!(lb_attr(&s, "a", "routing.http2.enabled"), "false");
    let rec = load_balancer_record(&s, &lb_arn("a")).unwrap().unwrap();
    assert_eq!(rec.settings().idle_timeout_secs, 7);
    // The other load balancer keeps its own.
    assert_eq!(lb_attr(&s, "b", "idle_timeout.timeout_seconds"), "60");
    // An unknown load balancer: refused, nothing written.
    let m = refused(
        &mut s,
        set_lb_attrs("nope", &[("idle_timeout.timeout_seconds", "5")]),
        ErrorKind::LoadBalancerNotFound,
    );
    assert!(m.contains(&lb_arn("nope")), "{m}");
}

fn ok_attrs(r: Response) {
    assert!(
        matches!(r, Response::LoadBalancerAttributes { .. }),
        "{r:?}"
    );
}

#[test]
fn deletion_protection_refuses_delete_until_it_is_turned_off() {
    let mut s = Map::new();
    create_lb(&mut s, "a");
    create_tg(&mut s, "web", "instance");
    ok(run(&mut s, listener_cmd("a", 80, vec![forward("web")])));
    ok_attrs(run(
        &mut s,
        set_lb_attrs("a", &[("deletion_protection.enabled", "true")]),
    ));
    let m = refused(
        &mut s,
        Command::DeleteLoadBalancer { arn: lb_arn("a") },
        ErrorKind::OperationNotPermitted,
    );
    assert_eq!(
        m,
        format!(
            "Load balancer '{}' cannot be deleted because deletion protection is enabled",
            lb_arn("a")
        )
    );
    // Everything is still there: the load balancer, its listener and its rule.
    assert_eq!(load_balancers(&s).unwrap().len(), 1);
    assert_eq!(listeners(&s, None).unwrap().len(), 1);
    assert_eq!(all_rules(&s).unwrap().len(), 1);
    ok_attrs(run(
        &mut s,
        set_lb_attrs("a", &[("deletion_protection.enabled", "false")]),
    ));
    ok(run(
        &mut s,
        Command::DeleteLoadBalancer { arn: lb_arn("a") },
    ));
    assert!(load_balancers(&s).unwrap().is_empty());
    assert!(listeners(&s, None).unwrap().is_empty());
}

#[test]
fn recreating_a_load_balancer_keeps_its_attributes() {
    let mut s = Map::new();
    create_lb(&mut s, "a");
    ok_attrs(run(
        &mut s,
        set_lb_attrs("a", &[("idle_timeout.timeout_seconds", "9")]),
    ));
    create_lb(&mut s, "a");
    assert_eq!(lb_attr(&s, "a", "idle_timeout.timeout_seconds"), "9");
}

// ------------------------------------------------------------------ target groups

#[test]
fn target_group_names_are_unique_modify_and_attributes_merge() {
    let mut s = Map::new();
    create_tg(&mut s, "web", "instance");
    // identical: the existing one
    let mut same = tg_record("web", "instance");
    same.target_group.target_group_arn = elb::target_group_arn(R, A, "web", "zzz");
    match run(
        &mut s,
        Command::CreateTargetGroup {
            record: same.clone(),
            tags: vec![],
        },
    ) {
        Response::TargetGroup { record } => {
            assert_eq!(record.target_group.target_group_arn, tg_arn("web"))
        }
        other => panic!("{other:?}"),
    }
    same.target_group.port = 81;
    refused(
        &mut s,
        Command::CreateTargetGroup {
            record: same,
            tags: vec![],
        },
        ErrorKind::DuplicateTargetGroupName,
    );
    // modify
    let patch = TargetGroupPatch {
        health_check_path: Some("/health".into()),
        health_check_interval_seconds: Some(10),
        matcher: Some(Matcher {
            http_code: Some("200-299".into()),
            grpc_code: None,
        }),
        ..Default::default()
    };
    match run(
        &mut s,
        Command::ModifyTargetGroup {
            arn: tg_arn("web"),
            patch,
        },
    ) {
        Response::TargetGroup { record } => {
            assert_eq!(record.target_group.health_check_path, "/health");
            assert_eq!(record.target_group.health_check_interval_seconds, 10);
            assert_eq!(record.target_group.health_check_timeout_seconds, 5);
            assert_eq!(
                record.target_group.matcher.http_code.as_deref(),
                Some("200-299")
            );
        }
        other => panic!("{other:?}"),
    }
    // the timeout must stay below the interval, with the stored values
    refused(
        &mut s,
        Command::ModifyTargetGroup {
            arn: tg_arn("web"),
            patch: TargetGroupPatch {
                health_check_interval_seconds: Some(5),
                ..Default::default()
            },
        },
        ErrorKind::ValidationError,
    );
    refused(
        &mut s,
        Command::ModifyTargetGroup {
            arn: tg_arn("nope"),
            patch: TargetGroupPatch::default(),
        },
        ErrorKind::TargetGroupNotFound,
    );
    set_delay(&mut s, "web", 30);
    ok(run(
        &mut s,
        Command::ModifyTargetGroupAttributes {
            arn: tg_arn("web"),
            attributes: vec![ElbAttribute {
                key: "slow_start.duration_seconds".into(),
                value: "60".into(),
            }],
        },
    ));
    let rec = target_group(&s, &tg_arn("web")).unwrap().unwrap();
    assert_eq!(rec.attributes.len(), 2);
    assert_eq!(rec.settings().deregistration_delay_secs, 30);
    assert_eq!(rec.settings().slow_start_secs, 60);
    refused(
        &mut s,
        Command::ModifyTargetGroupAttributes {
            arn: tg_arn("nope"),
            attributes: vec![],
        },
        ErrorKind::TargetGroupNotFound,
    );
}

#[test]
fn a_target_group_in_use_cannot_be_deleted_and_reports_its_load_balancer() {
    let mut s = Map::new();
    create_lb(&mut s, "a");
    create_tg(&mut s, "web", "ip");
    create_tg(&mut s, "api", "ip");
    ok(run(&mut s, listener_cmd("a", 80, vec![fixed()])));
    ok(run(
        &mut s,
        rule_cmd("a", 80, "r1", 1, vec![forward("api")]),
    ));
    ok(run(
        &mut s,
        Command::ModifyListener {
            arn: listener_arn("a", 80),
            port: None,
            protocol: None,
            default_actions: Some(vec![forward("web")]),
        },
    ));
    let groups = target_groups(&s).unwrap();
    assert_eq!(
        groups
            .iter()
            .map(|g| (
                g.target_group.target_group_name.as_str(),
                g.target_group.load_balancer_arns.clone()
            ))
            .collect::<Vec<_>>(),
        vec![("api", vec![lb_arn("a")]), ("web", vec![lb_arn("a")])]
    );
    let m = refused(
        &mut s,
        Command::DeleteTargetGroup { arn: tg_arn("web") },
        ErrorKind::ResourceInUse,
    );
    assert!(m.contains(&tg_arn("web")), "{m}");
    refused(
        &mut s,
        Command::DeleteTargetGroup { arn: tg_arn("api") },
        ErrorKind::ResourceInUse,
    );
    ok(run(
        &mut s,
        Command::DeleteRule {
            arn: rule_arn("a", 80, "r1"),
        },
    ));
    ok(run(
        &mut s,
        Command::RegisterTargets {
            target_group_arn: tg_arn("api"),
            targets: vec![desc("10.1.0.1", None)],
            at: 1.0,
        },
    ));
    ok(run(
        &mut s,
        Command::DeleteTargetGroup { arn: tg_arn("api") },
    ));
    assert!(all_targets(&s).unwrap().is_empty(), "targets go with it");
    assert!(target_group(&s, &tg_arn("api")).unwrap().is_none());
}

#[test]
fn a_target_group_serves_one_load_balancer_only() {
    let mut s = Map::new();
    create_lb(&mut s, "a");
    create_lb(&mut s, "b");
    create_tg(&mut s, "web", "ip");
    ok(run(&mut s, listener_cmd("a", 80, vec![forward("web")])));
    // a second listener of the same LB may use it
    ok(run(&mut s, listener_cmd("a", 81, vec![forward("web")])));
    let m = refused(
        &mut s,
        listener_cmd("b", 82, vec![forward("web")]),
        ErrorKind::TargetGroupAssociationLimit,
    );
    assert!(m.contains(&tg_arn("web")), "{m}");
    ok(run(&mut s, listener_cmd("b", 82, vec![fixed()])));
    refused(
        &mut s,
        rule_cmd("b", 82, "r", 1, vec![forward("web")]),
        ErrorKind::TargetGroupAssociationLimit,
    );
    refused(
        &mut s,
        rule_cmd("b", 82, "r", 1, vec![forward("ghost")]),
        ErrorKind::TargetGroupNotFound,
    );
    refused(
        &mut s,
        Command::ModifyListener {
            arn: listener_arn("b", 82),
            port: None,
            protocol: None,
            default_actions: Some(vec![forward("web")]),
        },
        ErrorKind::TargetGroupAssociationLimit,
    );
    // once `a` lets go, `b` may take it
    ok(run(
        &mut s,
        Command::DeleteLoadBalancer { arn: lb_arn("a") },
    ));
    ok(run(
        &mut s,
        Command::ModifyListener {
            arn: listener_arn("b", 82),
            port: None,
            protocol: None,
            default_actions: Some(vec![forward("web")]),
        },
    ));
    let rules = rules(&s, &listener_arn("b", 82)).unwrap();
    assert_eq!(rules.len(), 1);
    assert!(rules[0].is_default);
    assert_eq!(rules[0].actions, vec![forward("web")]);
}

// ------------------------------------------------------------------ listeners

#[test]
fn listener_ports_are_unique_across_load_balancers() {
    let mut s = Map::new();
    create_lb(&mut s, "stage01");
    create_lb(&mut s, "stage02");
    match run(&mut s, listener_cmd("stage01", 8080, vec![fixed()])) {
        Response::Listener { listener } => assert_eq!(listener.port, 8080),
        other => panic!("{other:?}"),
    }
    let m = refused(
        &mut s,
        listener_cmd("stage02", 8080, vec![fixed()]),
        ErrorKind::DuplicateListener,
    );
    assert_eq!(
        m,
        "A listener already exists on port 8080 (load balancer stage01)"
    );
    ok(run(&mut s, listener_cmd("stage02", 9090, vec![fixed()])));
    refused(
        &mut s,
        Command::ModifyListener {
            arn: listener_arn("stage02", 9090),
            port: Some(8080),
            protocol: None,
            default_actions: None,
        },
        ErrorKind::DuplicateListener,
    );
    // its own port is fine; a free one too
    ok(run(
        &mut s,
        Command::ModifyListener {
            arn: listener_arn("stage02", 9090),
            port: Some(9090),
            protocol: None,
            default_actions: None,
        },
    ));
    match run(
        &mut s,
        Command::ModifyListener {
            arn: listener_arn("stage02", 9090),
            port: Some(9191),
            protocol: None,
            default_actions: None,
        },
    ) {
        Response::Listener { listener } => assert_eq!(listener.port, 9191),
        other => panic!("{other:?}"),
    }
    refused(
        &mut s,
        listener_cmd("ghost", 1000, vec![fixed()]),
        ErrorKind::LoadBalancerNotFound,
    );
    refused(
        &mut s,
        Command::ModifyListener {
            arn: listener_arn("ghost", 1),
            port: None,
            protocol: None,
            default_actions: None,
        },
        ErrorKind::ListenerNotFound,
    );
    refused(
        &mut s,
        Command::DeleteListener {
            arn: listener_arn("ghost", 1),
        },
        ErrorKind::ListenerNotFound,
    );
    let ls = listeners(&s, Some(&lb_arn("stage01"))).unwrap();
    assert_eq!(ls.len(), 1);
    assert_eq!(listeners(&s, None).unwrap().len(), 2);
    ok(run(
        &mut s,
        Command::DeleteListener {
            arn: listener_arn("stage01", 8080),
        },
    ));
    assert!(rules(&s, &listener_arn("stage01", 8080))
        .unwrap()
        .is_empty());
    ok(run(&mut s, listener_cmd("stage02", 8080, vec![fixed()])));
}

// ------------------------------------------------------------------ rules

#[test]
fn rule_priorities_are_unique_per_listener_and_the_default_rule_is_fixed() {
    let mut s = Map::new();
    create_lb(&mut s, "a");
    create_tg(&mut s, "web", "ip");
    ok(run(&mut s, listener_cmd("a", 80, vec![fixed()])));
    ok(run(&mut s, listener_cmd("a", 81, vec![fixed()])));
    match run(&mut s, rule_cmd("a", 80, "r1", 10, vec![forward("web")])) {
        Response::Rule { rule } => {
            assert_eq!(rule.priority, "10");
            assert!(!rule.is_default);
        }
        other => panic!("{other:?}"),
    }
    ok(run(&mut s, rule_cmd("a", 80, "r2", 5, vec![fixed()])));
    // the same priority on another listener is fine
    ok(run(&mut s, rule_cmd("a", 81, "r3", 10, vec![fixed()])));
    let m = refused(
        &mut s,
        rule_cmd("a", 80, "r4", 10, vec![fixed()]),
        ErrorKind::PriorityInUse,
    );
    assert!(
        m.contains("'10'") && m.contains(&listener_arn("a", 80)),
        "{m}"
    );
    refused(
        &mut s,
        rule_cmd("a", 99, "r4", 1, vec![fixed()]),
        ErrorKind::ListenerNotFound,
    );
    // evaluation order: priority, default last
    let order: Vec<String> = rules(&s, &listener_arn("a", 80))
        .unwrap()
        .into_iter()
        .map(|r| r.priority)
        .collect();
    assert_eq!(order, vec!["5", "10", "default"]);
    let default = default_rule_arn(&listener_arn("a", 80));
    refused(
        &mut s,
        Command::DeleteRule {
            arn: default.clone(),
        },
        ErrorKind::OperationNotPermitted,
    );
    refused(
        &mut s,
        Command::ModifyRule {
            arn: default.clone(),
            conditions: Some(vec![path("/x")]),
            actions: None,
        },
        ErrorKind::OperationNotPermitted,
    );
    refused(
        &mut s,
        Command::SetRulePriorities {
            priorities: vec![(default.clone(), 3)],
        },
        ErrorKind::OperationNotPermitted,
    );
    // the default rule's actions may change (and the listener follows)
    ok(run(
        &mut s,
        Command::ModifyRule {
            arn: default.clone(),
            conditions: None,
            actions: Some(vec![forward("web")]),
        },
    ));
    assert_eq!(
        listener(&s, &listener_arn("a", 80))
            .unwrap()
            .unwrap()
            .default_actions,
        vec![forward("web")]
    );
    match run(
        &mut s,
        Command::ModifyRule {
            arn: rule_arn("a", 80, "r1"),
            conditions: Some(vec![path("/new/*")]),
            actions: None,
        },
    ) {
        Response::Rule { rule } => {
            assert_eq!(rule.conditions, vec![path("/new/*")]);
            assert_eq!(rule.actions, vec![forward("web")]);
        }
        other => panic!("{other:?}"),
    }
    refused(
        &mut s,
        Command::ModifyRule {
            arn: rule_arn("a", 80, "ghost"),
            conditions: None,
            actions: None,
        },
        ErrorKind::RuleNotFound,
    );
    refused(
        &mut s,
        Command::DeleteRule {
            arn: rule_arn("a", 80, "ghost"),
        },
        ErrorKind::RuleNotFound,
    );
}

#[test]
fn set_rule_priorities_is_all_or_nothing() {
    let mut s = Map::new();
    create_lb(&mut s, "a");
    ok(run(&mut s, listener_cmd("a", 80, vec![fixed()])));
    ok(run(&mut s, rule_cmd("a", 80, "r1", 1, vec![fixed()])));
    ok(run(&mut s, rule_cmd("a", 80, "r2", 2, vec![fixed()])));
    ok(run(&mut s, rule_cmd("a", 80, "r3", 3, vec![fixed()])));
    // a swap is fine (checked on the final state)
    match run(
        &mut s,
        Command::SetRulePriorities {
            priorities: vec![(rule_arn("a", 80, "r1"), 2), (rule_arn("a", 80, "r2"), 1)],
        },
    ) {
        Response::Rules { rules } => {
            assert_eq!(rules.len(), 2);
            assert_eq!(rules[0].priority, "2");
        }
        other => panic!("{other:?}"),
    }
    // r1 → 3 collides with r3: nothing changes, r2's move included
    let m = refused(
        &mut s,
        Command::SetRulePriorities {
            priorities: vec![(rule_arn("a", 80, "r2"), 7), (rule_arn("a", 80, "r1"), 3)],
        },
        ErrorKind::PriorityInUse,
    );
    assert!(m.contains("'3'"), "{m}");
    refused(
        &mut s,
        Command::SetRulePriorities {
            priorities: vec![
                (rule_arn("a", 80, "r2"), 7),
                (rule_arn("a", 80, "ghost"), 8),
            ],
        },
        ErrorKind::RuleNotFound,
    );
    let order: Vec<String> = rules(&s, &listener_arn("a", 80))
        .unwrap()
        .into_iter()
        .map(|r| r.rule_arn)
        .collect();
    assert_eq!(
        order,
        vec![
            rule_arn("a", 80, "r2"),
            rule_arn("a", 80, "r1"),
            rule_arn("a", 80, "r3"),
            default_rule_arn(&listener_arn("a", 80))
        ]
    );
}

#[test]
fn at_most_100_rules_per_listener() {
    let mut s = Map::new();
    create_lb(&mut s, "a");
    ok(run(&mut s, listener_cmd("a", 80, vec![fixed()])));
    for i in 1..=100u32 {
        ok(run(
            &mut s,
            rule_cmd("a", 80, &format!("r{i}"), i, vec![fixed()]),
        ));
    }
    refused(
        &mut s,
        rule_cmd("a", 80, "r101", 101, vec![fixed()]),
        ErrorKind::TooManyRules,
    );
}

// ------------------------------------------------------------------ targets

#[test]
fn register_instance_and_ip_targets() {
    let mut s = ecs();
    create_tg(&mut s, "inst", "instance");
    create_tg(&mut s, "ips", "ip");
    ok(run(
        &mut s,
        Command::RegisterTargets {
            target_group_arn: tg_arn("inst"),
            targets: vec![desc("i1", None), desc("i1", Some(8080))],
            at: 5.0,
        },
    ));
    let ts = targets(&s, &tg_arn("inst")).unwrap();
    assert_eq!(ts.len(), 2);
    assert_eq!((ts[0].port, ts[1].port), (80, 8080));
    assert_eq!(ts[0].address, "10.0.0.7");
    assert_eq!(ts[0].availability_zone.as_deref(), Some("zone-a"));
    assert_eq!(ts[0].health, TargetHealth::initial());
    assert_eq!(ts[0].registered_at, 5.0);
    let m = refused(
        &mut s,
        Command::RegisterTargets {
            target_group_arn: tg_arn("inst"),
            targets: vec![desc("i1", Some(9)), desc("i-ghost", None)],
            at: 5.0,
        },
        ErrorKind::InvalidTarget,
    );
    assert_eq!(
        m,
        "The following targets are not valid instances: 'i-ghost'"
    );
    refused(
        &mut s,
        Command::RegisterTargets {
            target_group_arn: tg_arn("ips"),
            targets: vec![desc("i1", None)],
            at: 5.0,
        },
        ErrorKind::InvalidTarget,
    );
    ok(run(
        &mut s,
        Command::RegisterTargets {
            target_group_arn: tg_arn("ips"),
            targets: vec![desc("10.9.0.1", Some(3000))],
            at: 5.0,
        },
    ));
    let t = &targets(&s, &tg_arn("ips")).unwrap()[0];
    assert_eq!((t.address.as_str(), t.port), ("10.9.0.1", 3000));
    refused(
        &mut s,
        Command::RegisterTargets {
            target_group_arn: tg_arn("ghost"),
            targets: vec![desc("10.9.0.1", None)],
            at: 5.0,
        },
        ErrorKind::TargetGroupNotFound,
    );
    assert_eq!(all_targets(&s).unwrap().len(), 3);
}

#[test]
fn at_most_1000_targets_per_group() {
    let mut s = Map::new();
    create_tg(&mut s, "ips", "ip");
    let many: Vec<_> = (0..1000)
        .map(|i| desc(&format!("10.0.{}.{}", i / 250, i % 250 + 1), None))
        .collect();
    ok(run(
        &mut s,
        Command::RegisterTargets {
            target_group_arn: tg_arn("ips"),
            targets: many.clone(),
            at: 1.0,
        },
    ));
    // re-registering the same ones is fine
    ok(run(
        &mut s,
        Command::RegisterTargets {
            target_group_arn: tg_arn("ips"),
            targets: many[..10].to_vec(),
            at: 1.0,
        },
    ));
    refused(
        &mut s,
        Command::RegisterTargets {
            target_group_arn: tg_arn("ips"),
            targets: vec![desc("10.9.9.9", None)],
            at: 1.0,
        },
        ErrorKind::TooManyTargets,
    );
}

#[test]
fn deregister_drains_and_the_sweep_removes() {
    let mut s = Map::new();
    create_tg(&mut s, "ips", "ip");
    set_delay(&mut s, "ips", 30);
    ok(run(
        &mut s,
        Command::RegisterTargets {
            target_group_arn: tg_arn("ips"),
            targets: vec![desc("10.0.0.1", None), desc("10.0.0.2", None)],
            at: 1.0,
        },
    ));
    assert_eq!(next_drain_deadline(&s).unwrap(), None);
    refused(
        &mut s,
        Command::DeregisterTargets {
            target_group_arn: tg_arn("ips"),
            targets: vec![desc("10.0.0.1", None), desc("10.0.0.3", None)],
            at: 10.0,
        },
        ErrorKind::InvalidTarget,
    );
    ok(run(
        &mut s,
        Command::DeregisterTargets {
            target_group_arn: tg_arn("ips"),
            targets: vec![desc("10.0.0.1", None)],
            at: 10.0,
        },
    ));
    let t = &targets(&s, &tg_arn("ips")).unwrap()[0];
    assert_eq!(t.drain_until, Some(40.0));
    assert_eq!(t.health, TargetHealth::draining());
    assert_eq!(next_drain_deadline(&s).unwrap(), Some(40.0));
    // health updates skip draining targets and unknown ones, and apply to live ones
    ok(run(
        &mut s,
        Command::SetTargetHealth {
            updates: vec![
                TargetHealthUpdate {
                    target_group_arn: tg_arn("ips"),
                    id: "10.0.0.1".into(),
                    port: 80,
                    health: TargetHealth::healthy(),
                },
                TargetHealthUpdate {
                    target_group_arn: tg_arn("ips"),
                    id: "10.0.0.2".into(),
                    port: 80,
                    health: TargetHealth::healthy(),
                },
                TargetHealthUpdate {
                    target_group_arn: tg_arn("ips"),
                    id: "10.0.0.9".into(),
                    port: 80,
                    health: TargetHealth::healthy(),
                },
            ],
        },
    ));
    let ts = targets(&s, &tg_arn("ips")).unwrap();
    assert_eq!(ts[0].health, TargetHealth::draining());
    assert_eq!(ts[1].health, TargetHealth::healthy());
    // the same verdict again writes nothing
    let before = s.clone();
    let (resp, changes) = {
        let mut st = Staged::new(&s);
        let r = crate::apply::apply(
            &mut st,
            &Command::SetTargetHealth {
                updates: vec![TargetHealthUpdate {
                    target_group_arn: tg_arn("ips"),
                    id: "10.0.0.2".into(),
                    port: 80,
                    health: TargetHealth::healthy(),
                }],
            },
        )
        .unwrap();
        (r, st.changes)
    };
    assert_eq!(resp, Response::Ok);
    assert!(changes.is_empty());
    assert_eq!(s, before);
    // deregistering a draining target again changes nothing
    ok(run(
        &mut s,
        Command::DeregisterTargets {
            target_group_arn: tg_arn("ips"),
            targets: vec![desc("10.0.0.1", None)],
            at: 20.0,
        },
    ));
    assert_eq!(next_drain_deadline(&s).unwrap(), Some(40.0));
    ok(run(&mut s, Command::ElbSweep { at: 39.9 }));
    assert_eq!(targets(&s, &tg_arn("ips")).unwrap().len(), 2);
    ok(run(&mut s, Command::ElbSweep { at: 40.0 }));
    let ts = targets(&s, &tg_arn("ips")).unwrap();
    assert_eq!(ts.len(), 1);
    assert_eq!(ts[0].id, "10.0.0.2");
    assert_eq!(next_drain_deadline(&s).unwrap(), None);
    // delay 0: gone at once
    set_delay(&mut s, "ips", 0);
    ok(run(
        &mut s,
        Command::DeregisterTargets {
            target_group_arn: tg_arn("ips"),
            targets: vec![desc("10.0.0.2", None)],
            at: 50.0,
        },
    ));
    assert!(targets(&s, &tg_arn("ips")).unwrap().is_empty());
}

#[test]
fn registering_a_draining_target_revives_it() {
    let mut s = Map::new();
    create_tg(&mut s, "ips", "ip");
    let reg = |at| Command::RegisterTargets {
        target_group_arn: tg_arn("ips"),
        targets: vec![desc("10.0.0.1", None)],
        at,
    };
    ok(run(&mut s, reg(1.0)));
    ok(run(
        &mut s,
        Command::DeregisterTargets {
            target_group_arn: tg_arn("ips"),
            targets: vec![desc("10.0.0.1", None)],
            at: 2.0,
        },
    ));
    ok(run(&mut s, reg(3.0)));
    let t = &targets(&s, &tg_arn("ips")).unwrap()[0];
    assert_eq!(t.drain_until, None);
    assert_eq!(t.health, TargetHealth::initial());
    assert_eq!(t.registered_at, 3.0);
    assert_eq!(next_drain_deadline(&s).unwrap(), None, "index entry gone");
    // the old deadline's sweep leaves it alone
    ok(run(&mut s, Command::ElbSweep { at: 1000.0 }));
    assert_eq!(targets(&s, &tg_arn("ips")).unwrap().len(), 1);
}

#[test]
fn every_elb_write_emits_an_elb_change() {
    let s = Map::new();
    let mut st = Staged::new(&s);
    crate::apply::apply(
        &mut st,
        &Command::CreateLoadBalancer {
            load_balancer: lb("a"),
            tags: vec![Tag {
                key: "k".into(),
                value: "v".into(),
            }],
        },
    )
    .unwrap();
    assert!(st.changes.contains(&Change::Elb));
    assert!(st.changes.contains(&Change::Tags { arn: lb_arn("a") }));
}

// ------------------------------------------------------------------ ECS wiring

#[test]
fn a_service_task_reaching_running_registers_its_host_port() {
    let mut s = running_service_task();
    let ts = targets(&s, &tg_arn("web")).unwrap();
    assert_eq!(ts.len(), 1);
    let t = &ts[0];
    assert_eq!(
        (t.id.as_str(), t.port, t.address.as_str()),
        ("i1", 49160, "10.0.0.7")
    );
    assert_eq!(t.availability_zone.as_deref(), Some("zone-a"));
    assert_eq!(
        t.task,
        Some(TargetTask {
            cluster: "c".into(),
            task_id: "t1".into(),
            service_name: "web".into()
        })
    );
    assert_eq!(targets_of_task(&s, "c", "t1").unwrap(), ts);
    // a later report does not register again (even after a manual deregistration)
    set_delay(&mut s, "web", 0);
    ok(run(
        &mut s,
        Command::DeregisterTargets {
            target_group_arn: tg_arn("web"),
            targets: vec![desc("i1", Some(49160))],
            at: 203.0,
        },
    ));
    send(&mut s, report("t1", 3, "RUNNING", None), 204.0);
    assert!(targets(&s, &tg_arn("web")).unwrap().is_empty());
    assert!(targets_of_task(&s, "c", "t1").unwrap().is_empty());
}

#[test]
fn stop_task_drains_then_the_sweep_lets_it_stop() {
    let mut s = running_service_task();
    set_delay(&mut s, "web", 30);
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
    match r {
        Response::Task { task } => {
            assert_eq!(task.last_status(), "DEACTIVATING");
            assert_eq!(task.desired_status(), "STOPPED");
        }
        other => panic!("{other:?}"),
    }
    let t = task(&s, "t1");
    assert_eq!(t.drain_until, Some(330.0));
    let tgt = &targets(&s, &tg_arn("web")).unwrap()[0];
    assert_eq!(tgt.drain_until, Some(330.0));
    assert_eq!(tgt.health, TargetHealth::draining());
    assert_eq!(next_drain_deadline(&s).unwrap(), Some(330.0));
    // a RUNNING report meanwhile does not move it back
    send(&mut s, report("t1", 3, "RUNNING", None), 310.0);
    assert_eq!(task(&s, "t1").task.last_status(), "DEACTIVATING");
    // the sweep at the deadline lets it go: drain_until cleared (a task change for the
    // agent session), target removed
    let (_, changes) = run_changes(&mut s, Command::ElbSweep { at: 330.0 });
    assert!(changes.contains(&Change::Task {
        cluster: "c".into(),
        id: "t1".into(),
        instance_id: "i1".into()
    }));
    assert!(changes.contains(&Change::Elb));
    assert_eq!(task(&s, "t1").drain_until, None);
    assert!(targets(&s, &tg_arn("web")).unwrap().is_empty());
    assert_eq!(next_drain_deadline(&s).unwrap(), None);
    // then the agent stops it
    send(&mut s, report("t1", 4, "STOPPED", None), 340.0);
    assert_eq!(task(&s, "t1").task.last_status(), "STOPPED");
}

#[test]
fn a_stopped_report_while_draining_ends_the_drain() {
    let mut s = running_service_task();
    set_delay(&mut s, "web", 30);
    ok(run(
        &mut s,
        Command::StopTask {
            cluster: "c".into(),
            task_id: "t1".into(),
            reason: "x".into(),
            stop_code: "UserInitiated".into(),
            at: 300.0,
        },
    ));
    send(&mut s, report("t1", 3, "STOPPED", None), 305.0);
    let t = task(&s, "t1");
    assert_eq!(t.task.last_status(), "STOPPED");
    assert_eq!(t.drain_until, None);
    // the target keeps draining to its own deadline
    assert_eq!(next_drain_deadline(&s).unwrap(), Some(330.0));
    ok(run(&mut s, Command::ElbSweep { at: 330.0 }));
    assert!(targets(&s, &tg_arn("web")).unwrap().is_empty());
}

#[test]
fn a_task_that_dies_drains_its_target_at_once() {
    let mut s = running_service_task();
    set_delay(&mut s, "web", 30);
    send(&mut s, report("t1", 3, "STOPPED", None), 400.0);
    let t = task(&s, "t1");
    assert_eq!(t.task.last_status(), "STOPPED");
    assert_eq!(t.drain_until, None);
    let tgt = &targets(&s, &tg_arn("web")).unwrap()[0];
    assert_eq!(tgt.drain_until, Some(430.0));
    assert_eq!(tgt.health.state, "draining");
    ok(run(&mut s, Command::ElbSweep { at: 430.0 }));
    assert!(targets(&s, &tg_arn("web")).unwrap().is_empty());
}

#[test]
fn a_lost_instance_drains_its_tasks_targets() {
    let mut s = running_service_task();
    ok(run(
        &mut s,
        Command::StopInstanceTasks {
            cluster: "c".into(),
            instance_id: "i1".into(),
            reason: "lost".into(),
            stop_code: "TerminationNotice".into(),
            at: 500.0,
        },
    ));
    assert_eq!(task(&s, "t1").task.last_status(), "STOPPED");
    let tgt = &targets(&s, &tg_arn("web")).unwrap()[0];
    assert_eq!(tgt.drain_until, Some(800.0), "default delay 300 s");
}

#[test]
fn delay_zero_stops_without_draining() {
    let mut s = running_service_task();
    set_delay(&mut s, "web", 0);
    match run(
        &mut s,
        Command::StopTask {
            cluster: "c".into(),
            task_id: "t1".into(),
            reason: "x".into(),
            stop_code: "UserInitiated".into(),
            at: 300.0,
        },
    ) {
        Response::Task { task } => assert_eq!(task.last_status(), "RUNNING"),
        other => panic!("{other:?}"),
    }
    assert_eq!(task(&s, "t1").drain_until, None);
    assert!(targets(&s, &tg_arn("web")).unwrap().is_empty());
    assert_eq!(next_drain_deadline(&s).unwrap(), None);
}

#[test]
fn a_task_without_targets_stops_as_before() {
    let mut s = ecs();
    create_tg(&mut s, "web", "instance");
    service(&mut s);
    start_task(&mut s, "t1", None);
    ok(run(
        &mut s,
        Command::StopTask {
            cluster: "c".into(),
            task_id: "t1".into(),
            reason: "x".into(),
            stop_code: "UserInitiated".into(),
            at: 300.0,
        },
    ));
    let t = task(&s, "t1");
    assert_eq!(t.task.last_status(), "PROVISIONING");
    assert_eq!(t.drain_until, None);
    // it never registers once its desired status is STOPPED
    send(&mut s, report("t1", 1, "RUNNING", None), 301.0);
    assert!(all_targets(&s).unwrap().is_empty());
}

#[test]
fn awsvpc_tasks_register_their_ip_and_container_port() {
    let mut s = ecs();
    create_tg(&mut s, "web", "ip");
    service(&mut s);
    start_task(&mut s, "t1", Some("awsvpc"));
    send(
        &mut s,
        report("t1", 1, "RUNNING", Some("172.16.0.9")),
        202.0,
    );
    let ts = targets(&s, &tg_arn("web")).unwrap();
    assert_eq!(ts.len(), 1);
    assert_eq!(
        (ts[0].id.as_str(), ts[0].address.as_str(), ts[0].port),
        ("172.16.0.9", "172.16.0.9", 80)
    );
}

#[test]
fn a_missing_binding_or_target_group_registers_nothing() {
    let mut s = ecs();
    // the service's target group does not exist
    service(&mut s);
    start_task(&mut s, "t1", None);
    send(&mut s, report("t1", 1, "RUNNING", None), 202.0);
    assert!(all_targets(&s).unwrap().is_empty());
    // the group exists but the container reports no binding for port 80
    create_tg(&mut s, "web", "instance");
    start_task(&mut s, "t2", None);
    let mut r = report("t2", 1, "RUNNING", None);
    r.containers[0].network_bindings[0].container_port = Some(81);
    send(&mut s, r, 202.0);
    assert!(all_targets(&s).unwrap().is_empty());
}

#[test]
fn elb_commands_round_trip_through_the_log_encoding() {
    for c in [
        listener_cmd("a", 80, vec![forward("web")]),
        Command::SetRulePriorities {
            priorities: vec![("x".into(), 3)],
        },
        Command::ElbSweep { at: 1.5 },
        set_lb_attrs("a", &[("deletion_protection.enabled", "true")]),
        Command::ModifyTargetGroup {
            arn: "x".into(),
            patch: TargetGroupPatch {
                healthy_threshold_count: Some(3),
                ..Default::default()
            },
        },
    ] {
        let req = crate::command::Request::new(c);
        let bytes = serde_json::to_vec(&req).unwrap();
        let back: crate::command::Request = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, req);
    }
}

#[test]
fn tags_on_elb_resources() {
    let mut s = Map::new();
    create_lb(&mut s, "a");
    create_tg(&mut s, "web", "ip");
    let tag = |k: &str| Tag {
        key: k.into(),
        value: "v".into(),
    };
    ok(run(
        &mut s,
        Command::AddElbTags {
            arn: tg_arn("web"),
            tags: vec![tag("a"), tag("b")],
        },
    ));
    ok(run(
        &mut s,
        Command::RemoveElbTags {
            arn: tg_arn("web"),
            keys: vec!["a".into()],
        },
    ));
    let stored: Vec<Tag> = Staged::new(&s)
        .get_json(&keys::tags(&tg_arn("web")))
        .unwrap()
        .unwrap();
    assert_eq!(stored, vec![tag("b")]);
    refused(
        &mut s,
        Command::AddElbTags {
            arn: tg_arn("ghost"),
            tags: vec![tag("a")],
        },
        ErrorKind::TargetGroupNotFound,
    );
    refused(
        &mut s,
        Command::AddElbTags {
            arn: listener_arn("a", 1),
            tags: vec![tag("a")],
        },
        ErrorKind::ListenerNotFound,
    );
    refused(
        &mut s,
        Command::AddElbTags {
            arn: lb_arn("a"),
            tags: (0..51).map(|i| tag(&format!("k{i}"))).collect(),
        },
        ErrorKind::TooManyTags,
    );
    // tags go with the resource
    ok(run(
        &mut s,
        Command::DeleteTargetGroup { arn: tg_arn("web") },
    ));
    assert_eq!(s.get(&keys::tags(&tg_arn("web"))), None);
}

#[test]
fn an_awsvpc_task_never_takes_over_another_live_tasks_target() {
    // Two machines' bridge subnets can hand out the same private IP.
    let mut s = ecs();
    create_tg(&mut s, "web", "ip");
    service(&mut s);
    start_task(&mut s, "t1", Some("awsvpc"));
    start_task(&mut s, "t2", Some("awsvpc"));
    send(
        &mut s,
        report("t1", 1, "RUNNING", Some("172.16.0.9")),
        202.0,
    );
    send(
        &mut s,
        report("t2", 1, "RUNNING", Some("172.16.0.9")),
        203.0,
    );
    let ts = targets(&s, &tg_arn("web")).unwrap();
    assert_eq!(ts.len(), 1);
    assert_eq!(ts[0].task.as_ref().unwrap().task_id, "t1");
    assert_eq!(targets_of_task(&s, "c", "t1").unwrap().len(), 1);
}

#[test]
fn stop_task_after_a_manual_deregister_waits_for_that_drain() {
    let mut s = running_service_task();
    set_delay(&mut s, "web", 30);
    ok(run(
        &mut s,
        Command::DeregisterTargets {
            target_group_arn: tg_arn("web"),
            targets: vec![TargetDescription {
                id: "i1".into(),
                port: Some(49160),
                availability_zone: None,
            }],
            at: 290.0,
        },
    ));
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
    match r {
        Response::Task { task } => assert_eq!(task.last_status(), "DEACTIVATING"),
        other => panic!("{other:?}"),
    }
    // in-flight requests of the target deregistered at 290 get their 30 s
    assert_eq!(task(&s, "t1").drain_until, Some(320.0));
}

fn drain_report(s: &mut Map, node: &str, idle: &[(&str, f64)], at: f64) {
    let idle = idle
        .iter()
        .map(|(tg, until)| DrainIdle {
            target_group_arn: tg_arn(tg),
            id: "i1".into(),
            port: 49160,
            drain_until: *until,
        })
        .collect();
    ok(run(
        s,
        Command::ElbDrainReport {
            node: node.into(),
            idle,
            at,
        },
    ));
}

fn stop_t1(s: &mut Map, at: f64) {
    let r = run(
        s,
        Command::StopTask {
            cluster: "c".into(),
            task_id: "t1".into(),
            reason: "Task stopped by user".into(),
            stop_code: "UserInitiated".into(),
            at,
        },
    );
    assert!(matches!(r, Response::Task { .. }), "{r:?}");
}

#[test]
fn a_drain_ends_early_once_every_active_load_balancer_node_found_it_idle() {
    let mut s = running_service_task();
    set_delay(&mut s, "web", 300);
    drain_report(&mut s, "server-1", &[], 299.0);
    drain_report(&mut s, "edge-a", &[], 299.5);
    stop_t1(&mut s, 300.0);
    assert_eq!(task(&s, "t1").drain_until, Some(600.0));
    // one of the two nodes found it idle: the task keeps draining
    drain_report(&mut s, "server-1", &[("web", 600.0)], 301.0);
    assert_eq!(task(&s, "t1").drain_until, Some(600.0));
    assert_eq!(task(&s, "t1").task.last_status(), "DEACTIVATING");
    let tgt = &targets(&s, &tg_arn("web")).unwrap()[0];
    assert_eq!(tgt.idle_on, vec!["server-1".to_string()]);
    // the same report again changes nothing
    drain_report(&mut s, "server-1", &[("web", 600.0)], 301.5);
    assert_eq!(task(&s, "t1").drain_until, Some(600.0));
    // the other one too: the task may stop now (a task change for its agent)...
    let (resp, changes) = run_changes(
        &mut s,
        Command::ElbDrainReport {
            node: "edge-a".into(),
            idle: vec![DrainIdle {
                target_group_arn: tg_arn("web"),
                id: "i1".into(),
                port: 49160,
                drain_until: 600.0,
            }],
            at: 302.0,
        },
    );
    ok(resp);
    assert!(changes.contains(&Change::Task {
        cluster: "c".into(),
        id: "t1".into(),
        instance_id: "i1".into()
    }));
    // ...and no load balancer node has anything to rebuild
    assert!(!changes.contains(&Change::Elb), "{changes:?}");
    assert_eq!(task(&s, "t1").drain_until, None);
    // the target shows `draining` until the deadline, as on ALB, and goes at the sweep
    let tgt = &targets(&s, &tg_arn("web")).unwrap()[0];
    assert_eq!(tgt.health, TargetHealth::draining());
    assert_eq!(next_drain_deadline(&s).unwrap(), Some(600.0));
    send(&mut s, report("t1", 3, "STOPPED", None), 303.0);
    assert_eq!(task(&s, "t1").task.last_status(), "STOPPED");
    assert_eq!(targets(&s, &tg_arn("web")).unwrap().len(), 1);
    ok(run(&mut s, Command::ElbSweep { at: 600.0 }));
    assert!(targets(&s, &tg_arn("web")).unwrap().is_empty());
}

#[test]
fn a_node_silent_past_its_ttl_no_longer_holds_a_drain() {
    let mut s = running_service_task();
    set_delay(&mut s, "web", 300);
    drain_report(&mut s, "server-1", &[], 299.0);
    drain_report(&mut s, "server-2", &[], 299.0);
    stop_t1(&mut s, 300.0);
    drain_report(&mut s, "server-1", &[("web", 600.0)], 301.0);
    assert_eq!(task(&s, "t1").drain_until, Some(600.0));
    // server-2 last reported at 299: at 299 + TTL it still counts...
    drain_report(
        &mut s,
        "server-1",
        &[("web", 600.0)],
        299.0 + LB_NODE_TTL_SECS,
    );
    assert_eq!(task(&s, "t1").drain_until, Some(600.0));
    // ...a second later it does not
    drain_report(
        &mut s,
        "server-1",
        &[("web", 600.0)],
        300.0 + LB_NODE_TTL_SECS,
    );
    assert_eq!(task(&s, "t1").drain_until, None);
    // and a node silent for an hour is forgotten
    drain_report(&mut s, "server-1", &[], 299.0 + 3601.0);
    let nodes: Vec<String> = lb_nodes(&s).unwrap().into_iter().map(|n| n.node).collect();
    assert_eq!(nodes, vec!["server-1".to_string()]);
}

#[test]
fn an_idle_report_about_another_drain_or_a_live_target_changes_nothing() {
    let mut s = running_service_task();
    set_delay(&mut s, "web", 300);
    // a live target is never "idle-drained"
    drain_report(&mut s, "server-1", &[("web", 600.0)], 299.0);
    assert!(targets(&s, &tg_arn("web")).unwrap()[0].idle_on.is_empty());
    stop_t1(&mut s, 300.0);
    // a report naming an earlier drain's deadline (the target drained and came back)
    drain_report(&mut s, "server-1", &[("web", 450.0)], 301.0);
    assert!(targets(&s, &tg_arn("web")).unwrap()[0].idle_on.is_empty());
    assert_eq!(task(&s, "t1").drain_until, Some(600.0));
    // a report about a target group that does not exist
    drain_report(&mut s, "server-1", &[("nope", 600.0)], 301.0);
    assert_eq!(task(&s, "t1").drain_until, Some(600.0));
    // registered again while draining: the new registration starts with no idle marks
    drain_report(&mut s, "server-1", &[("web", 600.0)], 302.0);
    assert_eq!(task(&s, "t1").drain_until, None);
    ok(run(
        &mut s,
        Command::RegisterTargets {
            target_group_arn: tg_arn("web"),
            targets: vec![desc("i1", Some(49160))],
            at: 303.0,
        },
    ));
    let tgt = &targets(&s, &tg_arn("web")).unwrap()[0];
    assert!(!tgt.draining() && tgt.idle_on.is_empty(), "{tgt:?}");
}

#[test]
fn a_drain_report_round_trips_through_the_log_encoding() {
    let req = crate::command::Request::new(Command::ElbDrainReport {
        node: "server-1".into(),
        idle: vec![DrainIdle {
            target_group_arn: tg_arn("web"),
            id: "i1".into(),
            port: 49160,
            drain_until: 1_763_000_000.123,
        }],
        at: 1_763_000_001.5,
    });
    let bytes = serde_json::to_vec(&req).unwrap();
    let back: crate::command::Request = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(back, req);
}

#[test]
fn a_node_last_seen_never_goes_back_with_a_slower_servers_clock() {
    let mut s = running_service_task();
    drain_report(&mut s, "edge-a", &[], 400.0);
    // relayed through a server whose clock is 50 s behind
    drain_report(&mut s, "edge-a", &[], 350.0);
    let n = lb_nodes(&s).unwrap();
    assert_eq!(n.len(), 1);
    assert_eq!(n[0].last_seen, 400.0);
}

#[test]
fn targets_follow_an_instance_that_comes_back_with_a_new_address() {
    let mut s = running_service_task();
    assert_eq!(targets(&s, &tg_arn("web")).unwrap()[0].address, "10.0.0.7");
    let (resp, changes) = run_changes(
        &mut s,
        Command::RegisterContainerInstance {
            ctx: ctx(),
            hello: hello("i1", "10.0.0.9"),
            at: 400.0,
            token: None,
        },
    );
    assert!(
        matches!(resp, Response::ContainerInstance { .. }),
        "{resp:?}"
    );
    let t = &targets(&s, &tg_arn("web")).unwrap()[0];
    assert_eq!(
        (t.id.as_str(), t.port, t.address.as_str()),
        ("i1", 49160, "10.0.0.9")
    );
    assert!(changes.contains(&Change::Elb), "{changes:?}");
    // the same address again writes no target
    let (_, changes) = run_changes(
        &mut s,
        Command::RegisterContainerInstance {
            ctx: ctx(),
            hello: hello("i1", "10.0.0.9"),
            at: 401.0,
            token: None,
        },
    );
    assert!(!changes.contains(&Change::Elb), "{changes:?}");
}
