use std::collections::{BTreeMap, BTreeSet};

use berth_model::cql::InstanceView;
use berth_model::{
    ContainerDefinition, ContainerInstance, ContainerOverride, PortMapping, Resource, Task,
};
use proptest::prelude::{any, prop, prop_assert, prop_assert_eq, prop_oneof, proptest, Just};
use proptest::strategy::Strategy as PStrategy;
use proptest::test_runner::Config as ProptestConfig;

use super::*;

// ---------------------------------------------------------------- helpers

fn node(id: &str, cpu: i64, memory: i64) -> Node {
    Node {
        id: id.into(),
        arn: format!("arn:ci/{id}"),
        status: "ACTIVE".into(),
        agent_connected: true,
        remaining: Remaining {
            cpu,
            memory,
            ports: [22].into_iter().collect(),
            ports_udp: BTreeSet::new(),
        },
        groups: BTreeMap::new(),
        view: InstanceView {
            instance_id: id.into(),
            agent_connected: true,
            ..Default::default()
        },
    }
}

fn attr(mut n: Node, name: &str, value: &str) -> Node {
    n.view
        .attributes
        .insert(name.to_string(), Some(value.to_string()));
    n
}

/// `count` live tasks of `group` already on the node.
fn tasks(mut n: Node, group: &str, count: u32) -> Node {
    if count > 0 {
        *n.groups.entry(group.to_string()).or_insert(0) += count;
    }
    for _ in 0..count {
        n.view.task_groups.push(group.to_string());
    }
    n
}

fn req(cpu: i64, memory: i64) -> Request {
    Request {
        reservation: Reservation {
            cpu,
            memory,
            ..Default::default()
        },
        group: "family:web".into(),
        ..Default::default()
    }
}

fn strategies(list: &[(&str, &str)]) -> Vec<Strategy> {
    let list: Vec<PlacementStrategy> = list
        .iter()
        .map(|(t, f)| PlacementStrategy {
            kind: Some(t.to_string()),
            field: (!f.is_empty()).then(|| f.to_string()),
        })
        .collect();
    parse_strategies(&list).unwrap()
}

fn member_of(e: &str) -> Constraint {
    parse_constraints(&[PlacementConstraint {
        kind: Some("memberOf".into()),
        expression: Some(e.into()),
    }])
    .unwrap()
    .remove(0)
}

fn reasons(p: &Placement) -> Vec<(String, String)> {
    p.rejections
        .iter()
        .map(|r| (r.instance_id.clone(), r.reason.clone()))
        .collect()
}

fn place(nodes: Vec<Node>, r: &Request, count: usize) -> Placement {
    ClusterView::new(nodes).place(r, count)
}

// ---------------------------------------------------------------- strategies

#[test]
fn binpack_memory_fills_the_instance_with_the_least_memory_left_first() {
    let mut r = req(10, 200);
    r.strategies = strategies(&[("binpack", "memory")]);
    let p = place(
        vec![
            node("a", 4096, 1000),
            node("b", 4096, 500),
            node("c", 4096, 800),
        ],
        &r,
        5,
    );
    // b: 500 → 300 → 100 (full), then c: 800 → 600 → 400.
    assert_eq!(p.placed, ["b", "b", "c", "c", "c"]);
    assert!(p.rejections.is_empty());
}

#[test]
fn binpack_cpu_fills_the_instance_with_the_least_cpu_left_first() {
    let mut r = req(512, 10);
    r.strategies = strategies(&[("binpack", "CPU")]);
    let p = place(vec![node("a", 1024, 4096), node("b", 2048, 4096)], &r, 4);
    assert_eq!(p.placed, ["a", "a", "b", "b"]);
}

#[test]
fn spread_instance_id_goes_round_robin_from_the_emptiest() {
    let mut r = req(1, 1);
    r.strategies = strategies(&[("spread", "instanceId")]);
    let nodes = vec![
        node("c", 100, 100),
        tasks(node("b", 100, 100), "family:web", 1),
        tasks(node("a", 100, 100), "family:other", 3),
    ];
    let p = place(nodes, &r, 5);
    assert_eq!(p.placed, ["a", "c", "a", "b", "c"]);
}

#[test]
fn spread_over_zones_then_binpack_memory_within_each() {
    // The documented example: [spread attribute:ecs.availability-zone, binpack memory].
    let az = "ecs.availability-zone";
    let nodes = vec![
        attr(node("a1", 4096, 1000), az, "us-east-1a"),
        attr(node("a2", 4096, 600), az, "us-east-1a"),
        attr(node("b1", 4096, 800), az, "us-east-1b"),
        attr(node("b2", 4096, 2000), az, "us-east-1b"),
    ];
    let mut r = req(1, 100);
    r.strategies = strategies(&[
        ("spread", "attribute:ecs.availability-zone"),
        ("binpack", "memory"),
    ]);
    let p = place(nodes, &r, 6);
    assert_eq!(p.placed, ["a2", "b1", "a2", "b1", "a2", "b1"]);
}

#[test]
fn spread_over_zones_counts_the_tasks_already_there_and_instances_without_the_attribute_form_a_zone(
) {
    let az = "ecs.availability-zone";
    let nodes = vec![
        tasks(attr(node("a1", 4096, 4096), az, "a"), "family:web", 2),
        // not a candidate, but its task counts for zone b
        tasks(attr(node("b0", 0, 0), az, "b"), "family:web", 1),
        attr(node("b1", 4096, 4096), az, "b"),
        node("x1", 4096, 4096),
    ];
    let mut r = req(1, 1);
    r.strategies = strategies(&[("spread", "attribute:ecs.availability-zone")]);
    let p = place(nodes, &r, 4);
    // zones a=2, b=1, none=0 → x1, then b1 (b=1, none=1: b1 < x1), x1, then all at 2: a1.
    assert_eq!(p.placed, ["x1", "b1", "x1", "a1"]);
}

#[test]
fn random_is_the_same_for_a_seed_and_differs_across_seeds() {
    let nodes: Vec<Node> = (0..8).map(|i| node(&format!("i-{i}"), 100, 100)).collect();
    let mut r = req(1, 1);
    r.strategies = strategies(&[("random", "")]);
    let run = |seed: u64| {
        let mut r = r.clone();
        r.seed = seed;
        place(nodes.clone(), &r, 10).placed
    };
    assert_eq!(run(7), run(7));
    let firsts: BTreeSet<String> = (0..32).map(|s| run(s)[0].clone()).collect();
    assert!(firsts.len() >= 5, "{firsts:?}");
    let sequences: BTreeSet<Vec<String>> = (0..32).map(run).collect();
    assert_eq!(sequences.len(), 32);
}

#[test]
fn random_chooses_each_instance_about_equally_often() {
    let nodes: Vec<Node> = (0..3)
        .map(|i| node(&format!("i-{i}"), 1 << 40, 1 << 40))
        .collect();
    let mut r = req(1, 1);
    r.strategies = strategies(&[("random", "")]);
    r.seed = 42;
    let p = place(nodes, &r, 3000);
    let mut per: BTreeMap<String, usize> = BTreeMap::new();
    for id in &p.placed {
        *per.entry(id.clone()).or_insert(0) += 1;
    }
    assert!(per.values().all(|&n| (850..=1150).contains(&n)), "{per:?}");
    // and not in runs: the same instance twice in a row about a third of the time
    let repeats = p.placed.windows(2).filter(|w| w[0] == w[1]).count();
    assert!((850..=1150).contains(&repeats), "{repeats}");
}

#[test]
fn without_strategies_the_lowest_instance_id_goes_first() {
    let p = place(
        vec![node("b", 100, 100), node("a", 100, 100)],
        &req(10, 10),
        3,
    );
    assert_eq!(p.placed, ["a", "a", "a"]);
}

// ---------------------------------------------------------------- rejections

fn one_reason(n: Node, r: &Request) -> String {
    let p = place(vec![n], r, 1);
    assert!(p.placed.is_empty());
    assert_eq!(p.rejections.len(), 1);
    p.rejections[0].reason.clone()
}

#[test]
fn every_rejection_reason() {
    let r = req(100, 100);
    let mut n = node("a", 1000, 1000);
    n.status = "DRAINING".into();
    assert_eq!(one_reason(n, &r), "INACTIVE");
    let mut n = node("a", 1000, 1000);
    n.agent_connected = false;
    assert_eq!(one_reason(n, &r), "AGENT");
    assert_eq!(one_reason(node("a", 99, 1000), &r), "RESOURCE:CPU");
    assert_eq!(one_reason(node("a", 1000, 99), &r), "RESOURCE:MEMORY");
    let mut pr = req(1, 1);
    pr.reservation.ports = vec![22];
    assert_eq!(one_reason(node("a", 10, 10), &pr), "RESOURCE:PORTS");
    let mut ur = req(1, 1);
    ur.reservation.ports_udp = vec![53];
    let mut n = node("a", 10, 10);
    n.remaining.ports_udp.insert(53);
    assert_eq!(one_reason(n, &ur), "RESOURCE:PORTS_UDP");

    let mut ar = req(1, 1);
    ar.requires_attributes = vec![Attribute {
        name: "ecs.capability.task-eni".into(),
        ..Default::default()
    }];
    assert_eq!(one_reason(node("a", 10, 10), &ar), "ATTRIBUTE");
    ar.requires_attributes[0].value = Some("yes".into());
    let n = attr(node("a", 10, 10), "ecs.capability.task-eni", "no");
    assert_eq!(one_reason(n, &ar), "ATTRIBUTE");
    let n = attr(node("a", 10, 10), "ecs.capability.task-eni", "yes");
    assert!(place(vec![n], &ar, 1).rejections.is_empty());

    let mut mr = req(1, 1);
    mr.constraints = vec![member_of("attribute:stack == prod")];
    assert_eq!(one_reason(node("a", 10, 10), &mr), "MemberOf");
    let mut dr = req(1, 1);
    dr.constraints = vec![Constraint::DistinctInstance];
    assert_eq!(
        one_reason(tasks(node("a", 10, 10), "family:web", 1), &dr),
        "DistinctInstance"
    );
}

#[test]
fn the_first_failing_check_is_the_reason() {
    let mut r = req(100, 100);
    r.constraints = vec![member_of("attribute:stack == prod")];
    let mut n = node("a", 10, 10);
    n.agent_connected = false;
    assert_eq!(one_reason(n.clone(), &r), "AGENT");
    n.agent_connected = true;
    assert_eq!(one_reason(n, &r), "RESOURCE:CPU");
}

#[test]
fn rejections_list_the_closest_match_first() {
    let mut r = req(100, 100);
    r.constraints = vec![member_of("attribute:stack == prod")];
    let mut gone = attr(node("a", 1000, 1000), "stack", "prod");
    gone.agent_connected = false;
    let nodes = vec![
        gone,
        node("b", 1000, 1000),                      // MemberOf
        attr(node("c", 1000, 50), "stack", "prod"), // memory only
        node("d", 50, 1000),                        // CPU, and not prod either
        attr(node("e", 50, 1000), "stack", "prod"), // CPU only
    ];
    let p = place(nodes, &r, 1);
    assert_eq!(
        reasons(&p),
        [
            ("e".to_string(), "RESOURCE:CPU".to_string()),
            ("c".into(), "RESOURCE:MEMORY".into()),
            ("d".into(), "RESOURCE:CPU".into()),
            ("b".into(), "MemberOf".into()),
            ("a".into(), "AGENT".into()),
        ]
    );
    assert_eq!(p.rejections[0].instance_arn, "arn:ci/e");
}

#[test]
fn resources_are_used_up_within_one_call_and_placement_stops_there() {
    let p = place(vec![node("a", 1024, 200)], &req(100, 100), 3);
    assert_eq!(p.placed, ["a", "a"]);
    assert_eq!(
        reasons(&p),
        [("a".to_string(), "RESOURCE:MEMORY".to_string())]
    );
}

#[test]
fn a_static_host_port_blocks_a_second_task_on_the_same_instance() {
    let mut r = req(1, 1);
    r.reservation.ports = vec![8080];
    let p = place(vec![node("a", 100, 100), node("b", 100, 100)], &r, 3);
    assert_eq!(p.placed, ["a", "b"]);
    assert_eq!(
        reasons(&p),
        [
            ("a".to_string(), "RESOURCE:PORTS".to_string()),
            ("b".into(), "RESOURCE:PORTS".into())
        ]
    );
}

// ---------------------------------------------------------------- constraints

#[test]
fn member_of_on_task_group_is_checked_again_after_each_placement() {
    // Anti-affinity with itself: one per instance.
    let mut r = req(1, 1);
    r.constraints = vec![member_of("not(task:group == family:web)")];
    let p = place(vec![node("a", 100, 100), node("b", 100, 100)], &r, 3);
    assert_eq!(p.placed, ["a", "b"]);
    assert!(p.rejections.iter().all(|x| x.reason == "MemberOf"));
    // Affinity: only beside the database.
    let mut r = req(1, 1);
    r.constraints = vec![member_of("task:group == database")];
    let nodes = vec![
        node("a", 100, 100),
        tasks(node("b", 100, 100), "database", 1),
    ];
    assert_eq!(place(nodes, &r, 2).placed, ["b", "b"]);
}

#[test]
fn member_of_running_tasks_count_sees_running_tasks_not_the_ones_being_placed() {
    let mut busy = node("a", 100, 100);
    busy.view.running_tasks_count = 3;
    let mut r = req(1, 1);
    r.constraints = vec![member_of("runningTasksCount < 2")];
    let p = place(vec![busy, node("b", 100, 100)], &r, 3);
    assert_eq!(p.placed, ["b", "b", "b"]);
}

#[test]
fn distinct_instance_puts_one_task_of_the_group_per_instance() {
    let mut r = req(1, 1);
    r.constraints = vec![Constraint::DistinctInstance];
    let nodes = vec![
        tasks(node("a", 100, 100), "family:web", 1),
        tasks(node("b", 100, 100), "family:other", 1),
        node("c", 100, 100),
    ];
    let p = place(nodes, &r, 3);
    assert_eq!(p.placed, ["b", "c"]);
    assert_eq!(p.rejections.len(), 3);
    assert!(p.rejections.iter().all(|x| x.reason == "DistinctInstance"));
}

// ---------------------------------------------------------------- place_on, matching, release

#[test]
fn place_on_checks_the_instance_and_takes_its_resources() {
    let mut view = ClusterView::new(vec![node("a", 100, 100), node("b", 10, 10)]);
    let r = req(60, 10);
    assert_eq!(view.place_on("a", &r), Ok(()));
    assert_eq!(view.node("a").unwrap().remaining.cpu, 40);
    assert_eq!(view.node("a").unwrap().group_count("family:web"), 1);
    let e = view.place_on("a", &r).unwrap_err();
    assert_eq!(
        (e.instance_id.as_str(), e.reason.as_str()),
        ("a", "RESOURCE:CPU")
    );
    assert_eq!(e.instance_arn, "arn:ci/a");
    assert_eq!(view.place_on("b", &r).unwrap_err().reason, "RESOURCE:CPU");
    assert_eq!(view.place_on("zz", &r).unwrap_err().reason, "MISSING");
}

#[test]
fn matching_ignores_status_agent_resources_and_distinct_instance() {
    let mut gone = attr(node("a", 0, 0), "stack", "prod");
    gone.status = "DRAINING".into();
    gone.agent_connected = false;
    let nodes = vec![
        tasks(gone, "family:web", 1),
        node("b", 100, 100),
        attr(node("c", 100, 100), "stack", "prod"),
    ];
    let view = ClusterView::new(nodes);
    let mut r = req(1000, 1000);
    r.constraints = vec![
        member_of("attribute:stack == prod"),
        Constraint::DistinctInstance,
    ];
    assert_eq!(view.matching(&r), ["a", "c"]);
    r.requires_attributes = vec![Attribute {
        name: "stack".into(),
        value: Some("dev".into()),
        ..Default::default()
    }];
    assert!(view.matching(&r).is_empty());
}

#[test]
fn release_gives_back_what_a_task_held() {
    let mut r = req(60, 10);
    r.reservation.ports = vec![8080];
    r.constraints = vec![Constraint::DistinctInstance];
    let mut view = ClusterView::new(vec![node("a", 100, 100)]);
    assert_eq!(view.place(&r, 1).placed, ["a"]);
    assert!(view.place(&r, 1).placed.is_empty());
    view.release("a", "family:web", &r.reservation);
    let a = view.node("a").unwrap();
    assert_eq!((a.remaining.cpu, a.remaining.memory), (100, 100));
    assert_eq!(a.remaining.ports, [22].into_iter().collect());
    assert!(a.groups.is_empty() && a.view.task_groups.is_empty());
    assert_eq!(view.place(&r, 1).placed, ["a"]);
    view.release("nope", "family:web", &r.reservation);
}

#[test]
fn a_view_remembers_placements_across_calls() {
    let mut r = req(1, 1);
    r.strategies = strategies(&[("spread", "host")]);
    let mut view = ClusterView::new(vec![node("a", 100, 100), node("b", 100, 100)]);
    assert_eq!(view.place(&r, 1).placed, ["a"]);
    assert_eq!(view.place(&r, 1).placed, ["b"]);
    assert_eq!(view.place(&r, 0).placed, Vec::<String>::new());
    assert_eq!(view.place(&r, 3).placed, ["a", "b", "a"]);
}

// ---------------------------------------------------------------- from_store

fn task_record(group: &str, last: &str, desired: &str, cpu: i64) -> TaskRecord {
    TaskRecord {
        task: Task {
            group: Some(group.into()),
            last_status: Some(last.into()),
            desired_status: Some(desired.into()),
            ..Default::default()
        },
        instance_id: "i-1".into(),
        reserved: Reservation {
            cpu,
            memory: cpu,
            ports: vec![8080],
            ports_udp: vec![],
        },
        ..Default::default()
    }
}

#[test]
fn a_node_from_the_store_counts_live_tasks_and_what_they_hold() {
    let rec = ContainerInstanceRecord {
        instance: ContainerInstance {
            container_instance_arn: Some("arn:ci/i-1".into()),
            ec2_instance_id: Some("i-1".into()),
            status: Some("ACTIVE".into()),
            agent_connected: Some(true),
            running_tasks_count: 1,
            registered_resources: vec![
                Resource::integer("CPU", 1024),
                Resource::integer("MEMORY", 2048),
            ],
            attributes: vec![Attribute {
                name: "ecs.availability-zone".into(),
                value: Some("us-east-1a".into()),
                ..Default::default()
            }],
            ..Default::default()
        },
        ..Default::default()
    };
    let tasks = [
        task_record("service:web", "RUNNING", "RUNNING", 100),
        task_record("service:web", "PENDING", "RUNNING", 100),
        task_record("service:web", "RUNNING", "STOPPED", 100), // stopping: holds, not live
        task_record("service:web", "STOPPED", "STOPPED", 100), // gone
        task_record("family:db", "PROVISIONING", "RUNNING", 100),
    ];
    let n = Node::from_store(&rec, &tasks);
    assert_eq!(
        (n.id.as_str(), n.arn.as_str(), n.status.as_str()),
        ("i-1", "arn:ci/i-1", "ACTIVE")
    );
    assert!(n.agent_connected);
    assert_eq!((n.remaining.cpu, n.remaining.memory), (624, 1648));
    assert!(n.remaining.ports.contains(&8080));
    assert_eq!(n.group_count("service:web"), 2);
    assert_eq!(n.group_count("family:db"), 1);
    assert_eq!(
        n.view.task_groups,
        ["service:web", "service:web", "family:db"]
    );
    assert_eq!(n.view.running_tasks_count, 1);
    assert_eq!(
        n.view.attributes["ecs.availability-zone"].as_deref(),
        Some("us-east-1a")
    );
}

// ---------------------------------------------------------------- parsing

fn constraint(kind: &str, expression: Option<&str>) -> PlacementConstraint {
    PlacementConstraint {
        kind: Some(kind.into()),
        expression: expression.map(str::to_string),
    }
}

#[test]
fn constraint_errors_name_what_was_wrong() {
    let e = parse_constraints(&[constraint("memberOf", Some("foo == 1"))]).unwrap_err();
    assert!(e.message.contains("'foo == 1'"), "{}", e.message);
    assert!(e.message.contains("unknown subject 'foo'"), "{}", e.message);
    assert!(e.message.contains("position"), "{}", e.message);
    let e = parse_constraints(&[constraint("memberOf", Some("attribute:stack =="))]).unwrap_err();
    assert!(e.message.contains("end of expression"), "{}", e.message);
    let e = parse_constraints(&[constraint("distinctInstance", Some("x"))]).unwrap_err();
    assert!(e.message.contains("distinctInstance"), "{}", e.message);
    let e = parse_constraints(&[constraint("memberOf", None)]).unwrap_err();
    assert!(e.message.contains("needs an expression"), "{}", e.message);
    let e = parse_constraints(&[constraint("spread", None)]).unwrap_err();
    assert!(e.message.contains("'spread'"), "{}", e.message);
    let long = format!("attribute:x in [{}]", vec!["abcdefghi"; 250].join(","));
    let e = parse_constraints(&[constraint("memberOf", Some(&long))]).unwrap_err();
    assert!(e.message.contains("2000"), "{}", e.message);
    let many = vec![constraint("distinctInstance", None); 11];
    let e = parse_constraints(&many).unwrap_err();
    assert!(e.message.contains("11 were given"), "{}", e.message);
    assert_eq!(parse_constraints(&many[..10]).unwrap().len(), 10);
    assert_eq!(e.kind, berth_model::ErrorKind::InvalidParameterException);
    let ok = parse_constraints(&[
        constraint("distinctInstance", Some("")),
        constraint("memberOf", Some("attribute:ecs.instance-type =~ t2.*")),
    ])
    .unwrap();
    assert!(matches!(
        ok[..],
        [Constraint::DistinctInstance, Constraint::MemberOf(_)]
    ));
}

#[test]
fn strategies_parse_like_ecs() {
    assert_eq!(
        strategies(&[
            ("binpack", "MEMORY"),
            ("binpack", "cpu"),
            ("spread", "host"),
            ("spread", "attribute:ecs.availability-zone"),
            ("random", ""),
        ]),
        [
            Strategy::Binpack(BinpackField::Memory),
            Strategy::Binpack(BinpackField::Cpu),
            Strategy::Spread(SpreadField::InstanceId),
            Strategy::Spread(SpreadField::Attribute("ecs.availability-zone".into())),
            Strategy::Random,
        ]
    );
    let bad = |t: &str, f: Option<&str>| {
        parse_strategies(&[PlacementStrategy {
            kind: Some(t.into()),
            field: f.map(str::to_string),
        }])
        .unwrap_err()
        .message
    };
    assert!(bad("binpack", Some("disk")).contains("'disk'"));
    assert!(bad("binpack", None).contains("binpack"));
    assert!(bad("spread", Some("attribute:")).contains("'attribute:'"));
    assert!(bad("spread", Some("zone")).contains("'zone'"));
    assert!(bad("pack", None).contains("'pack'"));
    let six = vec![
        PlacementStrategy {
            kind: Some("random".into()),
            field: None
        };
        6
    ];
    assert!(parse_strategies(&six)
        .unwrap_err()
        .message
        .contains("6 were given"));
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

// ---------------------------------------------------------------- the reference

/// Placement by definition: at every step, check every instance and sort all the
/// feasible ones by their full key (recomputed from scratch), take the first.
fn reference(nodes: &mut [Node], req: &Request, count: usize) -> Placement {
    let hashes: Vec<u64> = nodes.iter().map(|n| id_hash(&n.id)).collect();
    let mut taken = vec![0u64; nodes.len()];
    let mut clocks: Vec<u64> = hashes
        .iter()
        .map(|&h| random_step(req.seed, h, 0))
        .collect();
    let mut out = Placement::default();
    for _ in 0..count {
        let mut feasible: Vec<(Key, &str, usize)> = Vec::new();
        for (i, n) in nodes.iter().enumerate() {
            if rejection(n, req).is_some() {
                continue;
            }
            let key = req
                .strategies
                .iter()
                .map(|s| match s {
                    Strategy::Binpack(BinpackField::Cpu) => n.remaining.cpu,
                    Strategy::Binpack(BinpackField::Memory) => n.remaining.memory,
                    Strategy::Spread(SpreadField::InstanceId) => {
                        i64::from(n.group_count(&req.group))
                    }
                    Strategy::Spread(SpreadField::Attribute(a)) => nodes
                        .iter()
                        .filter(|m| m.attribute(a) == n.attribute(a))
                        .map(|m| i64::from(m.group_count(&req.group)))
                        .sum(),
                    Strategy::Random => ordered(clocks[i]),
                })
                .collect();
            feasible.push((key, &n.id, i));
        }
        feasible.sort();
        let Some(&(_, _, i)) = feasible.first() else {
            let mut all: Vec<((u8, usize), &str, Rejection)> = nodes
                .iter()
                .map(|n| {
                    let why = rejection(n, req).unwrap();
                    let r = Rejection {
                        instance_id: n.id.clone(),
                        instance_arn: n.arn.clone(),
                        reason: why.to_string(),
                    };
                    (closeness(n, req, why), n.id.as_str(), r)
                })
                .collect();
            all.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
            out.rejections = all.into_iter().map(|(_, _, r)| r).collect();
            break;
        };
        nodes[i].take(req);
        taken[i] += 1;
        clocks[i] = clocks[i].saturating_add(random_step(req.seed, hashes[i], taken[i]));
        out.placed.push(nodes[i].id.clone());
    }
    out
}

// ---------------------------------------------------------------- properties

const GROUPS: [&str; 2] = ["g1", "g2"];
const ZONES: [&str; 3] = ["a", "b", "c"];
const STACKS: [&str; 2] = ["prod", "dev"];
const EXPRESSIONS: [&str; 6] = [
    "attribute:az == a",
    "attribute:stack != prod",
    "not(task:group == g1)",
    "task:group == g2 or runningTasksCount < 2",
    "attribute:az exists",
    "not(task:group == g2) and attribute:az in [a, b]",
];

fn arb_node() -> impl PStrategy<Value = Node> {
    (
        (
            0i64..=8,
            0i64..=8,
            prop::bool::weighted(0.9),
            prop::bool::weighted(0.9),
        ),
        (
            prop::bool::weighted(0.3),
            prop::bool::weighted(0.2),
            0usize..=3,
            0usize..=2,
        ),
        (0u32..=3, 0u32..=3, 0i64..=3),
    )
        .prop_map(
            |((cpu, mem, active, agent), (p80, u53, az, stack), (g1, g2, running))| {
                let mut n = node("", cpu * 256, mem * 256);
                if !active {
                    n.status = "DRAINING".into();
                }
                n.agent_connected = agent;
                if p80 {
                    n.remaining.ports.insert(80);
                }
                if u53 {
                    n.remaining.ports_udp.insert(53);
                }
                if let Some(z) = ZONES.get(az) {
                    n = attr(n, "az", z);
                }
                if let Some(s) = STACKS.get(stack) {
                    n = attr(n, "stack", s);
                }
                n.view.running_tasks_count = running;
                tasks(tasks(n, "g1", g1), "g2", g2)
            },
        )
}

fn arb_nodes(max: usize) -> impl PStrategy<Value = Vec<Node>> {
    prop::collection::vec(arb_node(), 1..=max).prop_map(|mut nodes| {
        // ids not in list order: 37 is prime to every length drawn here
        for (i, n) in nodes.iter_mut().enumerate() {
            let id = format!("i-{:03}", (i * 37) % 101);
            n.arn = format!("arn:ci/{id}");
            n.view.instance_id = id.clone();
            n.id = id;
        }
        nodes
    })
}

fn arb_strategy() -> impl PStrategy<Value = Strategy> {
    prop_oneof![
        Just(Strategy::Binpack(BinpackField::Cpu)),
        Just(Strategy::Binpack(BinpackField::Memory)),
        Just(Strategy::Spread(SpreadField::InstanceId)),
        Just(Strategy::Spread(SpreadField::Attribute("az".into()))),
        Just(Strategy::Spread(SpreadField::Attribute("stack".into()))),
        Just(Strategy::Random),
    ]
}

fn arb_request(max_count: usize) -> impl PStrategy<Value = (Request, usize)> {
    (
        (
            0i64..=4,
            0i64..=4,
            prop::bool::weighted(0.2),
            prop::bool::weighted(0.1),
            0usize..2,
        ),
        (
            prop::sample::subsequence(EXPRESSIONS.to_vec(), 0..=2),
            prop::bool::weighted(0.2),
            0usize..=4,
        ),
        (
            prop::collection::vec(arb_strategy(), 0..=4),
            any::<u64>(),
            1..=max_count,
        ),
    )
        .prop_map(
            |((cpu, mem, p80, u53, g), (exprs, distinct, needs), (strategies, seed, count))| {
                let mut constraints: Vec<Constraint> = exprs.iter().map(|e| member_of(e)).collect();
                if distinct {
                    constraints.push(Constraint::DistinctInstance);
                }
                let requires_attributes = match needs {
                    1 => vec![Attribute {
                        name: "stack".into(),
                        ..Default::default()
                    }],
                    2 => vec![Attribute {
                        name: "stack".into(),
                        value: Some("prod".into()),
                        ..Default::default()
                    }],
                    _ => vec![],
                };
                let r = Request {
                    reservation: Reservation {
                        cpu: cpu * 128,
                        memory: mem * 128,
                        ports: if p80 { vec![80, 8080] } else { vec![] },
                        ports_udp: if u53 { vec![53] } else { vec![] },
                    },
                    group: GROUPS[g].into(),
                    constraints,
                    requires_attributes,
                    strategies,
                    seed,
                };
                (r, count)
            },
        )
}

/// Checks one call's answer against the rules, replaying it on the view as it was.
fn check_call(before: &[Node], after: &ClusterView, req: &Request, count: usize, p: &Placement) {
    let mut replay = before.to_vec();
    let at = |nodes: &[Node], id: &str| nodes.iter().position(|n| n.id == id).unwrap();
    for id in &p.placed {
        let i = at(&replay, id);
        let n = &replay[i];
        // (b) every rule held where and when the task was placed
        assert_eq!(n.status, "ACTIVE");
        assert!(n.agent_connected);
        assert!(n.has_attributes(&req.requires_attributes));
        for c in &req.constraints {
            match c {
                Constraint::MemberOf(e) => assert!(e.eval(&n.view), "memberOf broken on {id}"),
                Constraint::DistinctInstance => assert_eq!(n.group_count(&req.group), 0),
            }
        }
        replay[i].take(req);
    }
    // (a) nothing over-committed, no static port twice
    for n in before {
        let k = p.placed.iter().filter(|id| **id == n.id).count() as i64;
        if k == 0 {
            continue;
        }
        assert!(
            k * req.reservation.cpu <= n.remaining.cpu,
            "cpu on {}",
            n.id
        );
        assert!(
            k * req.reservation.memory <= n.remaining.memory,
            "memory on {}",
            n.id
        );
        if !req.reservation.ports.is_empty() || !req.reservation.ports_udp.is_empty() {
            assert_eq!(k, 1, "a static port twice on {}", n.id);
        }
        assert!(req
            .reservation
            .ports
            .iter()
            .all(|p| !n.remaining.ports.contains(p)));
        assert!(req
            .reservation
            .ports_udp
            .iter()
            .all(|p| !n.remaining.ports_udp.contains(p)));
    }
    // (d) stopping early means nothing could take another task
    if p.placed.len() < count {
        for n in after.nodes() {
            assert!(
                rejection(n, req).is_some(),
                "{} could have taken a task",
                n.id
            );
        }
        let ids: BTreeSet<&str> = p
            .rejections
            .iter()
            .map(|r| r.instance_id.as_str())
            .collect();
        assert_eq!(ids.len(), after.nodes().len());
        assert_eq!(p.rejections.len(), after.nodes().len());
    } else {
        assert!(p.rejections.is_empty());
    }
}

fn same_state(a: &[Node], b: &[Node]) -> bool {
    a.iter().zip(b).all(|(x, y)| {
        x.id == y.id
            && x.remaining == y.remaining
            && x.groups == y.groups
            && x.view.task_groups == y.view.task_groups
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// (a)–(d) on small clusters, two calls in a row on one view.
    #[test]
    fn placement_keeps_every_rule_and_equals_sorting_every_instance(
        nodes in arb_nodes(12),
        calls in prop::collection::vec(arb_request(25), 1..=2),
    ) {
        let mut view = ClusterView::new(nodes.clone());
        let mut naive = nodes;
        for (req, count) in &calls {
            let before = view.nodes().to_vec();
            let got = view.place(req, *count);
            let want = reference(&mut naive, req, *count);
            // (c) the same choice at every step, and the same rejections
            prop_assert_eq!(&got.placed, &want.placed);
            prop_assert_eq!(&got.rejections, &want.rejections);
            prop_assert!(same_state(view.nodes(), &naive));
            check_call(&before, &view, req, *count, &got);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Bigger clusters and longer calls: deeper trees, many buckets.
    #[test]
    fn placement_equals_sorting_every_instance_on_bigger_clusters(
        nodes in arb_nodes(100),
        (req, count) in arb_request(300),
    ) {
        let mut view = ClusterView::new(nodes.clone());
        let mut naive = nodes.clone();
        let got = view.place(&req, count);
        let want = reference(&mut naive, &req, count);
        prop_assert_eq!(&got.placed, &want.placed);
        prop_assert_eq!(&got.rejections, &want.rejections);
        check_call(&nodes, &view, &req, count, &got);
    }

    /// Releasing what was placed gives back the view placement started from.
    #[test]
    fn release_undoes_place(nodes in arb_nodes(12), (req, count) in arb_request(25)) {
        let mut view = ClusterView::new(nodes.clone());
        let p = view.place(&req, count);
        for id in p.placed.iter().rev() {
            view.release(id, &req.group, &req.reservation);
        }
        let sorted = |v: &[Node]| {
            let mut v = v.to_vec();
            for n in &mut v {
                n.view.task_groups.sort();
            }
            v
        };
        prop_assert!(same_state(&sorted(view.nodes()), &sorted(&nodes)));
    }
}

// ---------------------------------------------------------------- scale

/// The placement benchmark's scenario: run with
/// `cargo test -p berth-scheduler --release -- --ignored --nocapture`.
#[test]
#[ignore = "a benchmark: run in release with --ignored"]
fn places_a_million_tasks_on_ten_thousand_instances() {
    let zones = ["us-east-1a", "us-east-1b", "us-east-1c"];
    let nodes: Vec<Node> = (0..10_000)
        .map(|i| {
            let n = node(&format!("i-{i:05}"), 4096, 16384 - (i as i64 % 7) * 1024);
            let n = attr(n, "ecs.availability-zone", zones[i % 3]);
            let arch = if i % 10 == 9 { "arm64" } else { "x86_64" };
            attr(n, "ecs.cpu-architecture", arch)
        })
        .collect();
    let r = Request {
        reservation: Reservation {
            cpu: 16,
            memory: 64,
            ..Default::default()
        },
        group: "service:bench".into(),
        constraints: vec![member_of("attribute:ecs.cpu-architecture == x86_64")],
        strategies: strategies(&[
            ("spread", "attribute:ecs.availability-zone"),
            ("binpack", "memory"),
        ]),
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let mut view = ClusterView::new(nodes);
    let p = view.place(&r, 1_000_000);
    let took = started.elapsed();
    assert_eq!(p.placed.len(), 1_000_000);
    let mut per_zone = [0usize; 3];
    for n in view.nodes() {
        let z = zones
            .iter()
            .position(|z| n.attribute("ecs.availability-zone") == Some(z))
            .unwrap();
        per_zone[z] += n.group_count("service:bench") as usize;
        if n.attribute("ecs.cpu-architecture") == Some("arm64") {
            assert_eq!(n.group_count("service:bench"), 0);
        }
    }
    assert!(
        per_zone.iter().max().unwrap() - per_zone.iter().min().unwrap() <= 1,
        "{per_zone:?}"
    );
    eprintln!(
        "placed 1,000,000 tasks on 10,000 instances in {:.3} s ({:.2} µs per task)",
        took.as_secs_f64(),
        took.as_secs_f64() * 1e6 / p.placed.len() as f64
    );
}
