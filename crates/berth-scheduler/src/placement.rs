//! Placement: which container instance each task goes to.
//!
//! ECS's process (reference §8.1): keep the instances that can take the task (ACTIVE,
//! agent connected, CPU, memory, ports), keep those that satisfy every constraint
//! (`memberOf` with the cluster query language, `distinctInstance`, the task
//! definition's `requiresAttributes`), order them by the strategies in list order
//! (each one a tie-breaker for the ones before), take the first.
//!
//! # The ordering
//!
//! Every feasible instance has a key: one number per strategy, in list order, then its
//! id. The task goes to the instance with the smallest key.
//!
//! | strategy | number (smaller goes first) |
//! |---|---|
//! | `binpack cpu` / `binpack memory` | what the instance has left of it |
//! | `spread instanceId` | live tasks of the request's group on the instance |
//! | `spread attribute:X` | live tasks of the group on every instance (feasible or not) with the instance's value of X; instances without X share one value |
//! | `random` | the instance's random clock (below) |
//!
//! `random` gives each instance a clock that starts at an exponentially distributed
//! step drawn from a hash of (seed, instance id, 0) and advances by a new step, drawn
//! from (seed, id, k), when the instance takes its k-th task of the call. Taking the
//! smallest clock is then a uniform choice among the instances (exponential steps are
//! memoryless), deterministic for a seed, and only the chosen instance's clock moves, so
//! the index below stays cheap. (A hash of the call's task count would change every
//! instance's number at every step.)
//!
//! # The index
//!
//! [`ClusterView::place`] does not scan every instance per task. Per call it checks
//! every instance once, then keeps the feasible ones in *buckets*, one per tuple of
//! values of the `spread attribute:*` fields (one bucket when there is no such
//! strategy). Within a bucket the attribute numbers are equal, so a `BTreeSet` ordered
//! by the other numbers and the id puts the bucket's best first. A second ordered map
//! holds each bucket's best with its full key (the bucket's attribute counts filled
//! in), so the first entry is the answer. Placing a task on instance X changes only X
//! (its resources, its group count, its clock, its memberOf verdict on `task:group`)
//! and the group counts of X's attribute values: X is taken out, re-checked and put back
//! when it still fits, and the buckets that share one of X's values get their entry
//! recomputed. With one spread attribute that is X's bucket alone: O(log n) per task,
//! after O(n log n) to build the index per call. With several, it is every bucket that
//! shares X's zone or X's rack (say): a value shared by many buckets costs as many
//! updates. The tests compare every choice with sorting all instances by the full key.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use berth_model::cql;
use berth_model::{
    ApiError, Attribute, ContainerInstanceRecord, PlacementConstraint, PlacementStrategy,
    Remaining, Reservation, TaskDefinition, TaskOverride, TaskRecord,
};

/// A placement constraint, parsed.
#[derive(Debug, Clone)]
pub enum Constraint {
    MemberOf(cql::Expr),
    DistinctInstance,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinpackField {
    Cpu,
    Memory,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpreadField {
    /// `instanceId` (alias `host`)
    InstanceId,
    /// `attribute:<name>`
    Attribute(String),
}

/// A placement strategy, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Strategy {
    Binpack(BinpackField),
    Spread(SpreadField),
    Random,
}

/// Parses `placementConstraints` (the request's and the task definition's together,
/// ≤10). Errors are `InvalidParameterException` naming the bad value.
pub fn parse_constraints(list: &[PlacementConstraint]) -> Result<Vec<Constraint>, ApiError> {
    if list.len() > MAX_CONSTRAINTS {
        return Err(ApiError::invalid(format!(
            "At most {MAX_CONSTRAINTS} placement constraints are allowed (including the task definition's); {} were given.",
            list.len()
        )));
    }
    list.iter().map(parse_constraint).collect()
}

const MAX_CONSTRAINTS: usize = 10;
const MAX_STRATEGIES: usize = 5;
const MAX_EXPRESSION: usize = 2000;

fn parse_constraint(c: &PlacementConstraint) -> Result<Constraint, ApiError> {
    let expression = c.expression.as_deref().filter(|e| !e.trim().is_empty());
    match (c.kind.as_deref(), expression) {
        (Some("distinctInstance"), None) => Ok(Constraint::DistinctInstance),
        (Some("distinctInstance"), Some(e)) => Err(ApiError::invalid(format!(
            "A distinctInstance placement constraint cannot have an expression; '{e}' was given."
        ))),
        (Some("memberOf"), None) => Err(ApiError::invalid(
            "A memberOf placement constraint needs an expression.",
        )),
        (Some("memberOf"), Some(e)) => {
            let len = e.chars().count();
            if len > MAX_EXPRESSION {
                return Err(ApiError::invalid(format!(
                    "A memberOf expression can be at most {MAX_EXPRESSION} characters; one of {len} was given."
                )));
            }
            cql::parse(e).map(Constraint::MemberOf).map_err(|err| {
                ApiError::invalid(format!("Invalid memberOf expression '{e}': {err}"))
            })
        }
        (other, _) => Err(ApiError::invalid(format!(
            "Invalid placement constraint type '{}'. Valid types are distinctInstance and memberOf.",
            other.unwrap_or("")
        ))),
    }
}

/// Parses `placementStrategy` (≤5). Errors are `InvalidParameterException` naming the
/// bad value.
pub fn parse_strategies(list: &[PlacementStrategy]) -> Result<Vec<Strategy>, ApiError> {
    if list.len() > MAX_STRATEGIES {
        return Err(ApiError::invalid(format!(
            "At most {MAX_STRATEGIES} placement strategies are allowed; {} were given.",
            list.len()
        )));
    }
    list.iter().map(parse_strategy).collect()
}

fn parse_strategy(s: &PlacementStrategy) -> Result<Strategy, ApiError> {
    let field = s.field.as_deref().unwrap_or("");
    match s.kind.as_deref().unwrap_or("") {
        // ECS: "For the random placement strategy, this field is not used."
        "random" => Ok(Strategy::Random),
        "binpack" => match field.to_ascii_lowercase().as_str() {
            "cpu" => Ok(Strategy::Binpack(BinpackField::Cpu)),
            "memory" => Ok(Strategy::Binpack(BinpackField::Memory)),
            _ => Err(ApiError::invalid(format!(
                "Invalid field '{field}' for placement strategy type binpack. Valid fields are cpu and memory."
            ))),
        },
        "spread" => match field.strip_prefix("attribute:") {
            _ if field == "instanceId" || field == "host" => {
                Ok(Strategy::Spread(SpreadField::InstanceId))
            }
            Some(name) if !name.is_empty() => {
                Ok(Strategy::Spread(SpreadField::Attribute(name.to_string())))
            }
            _ => Err(ApiError::invalid(format!(
                "Invalid field '{field}' for placement strategy type spread. Valid fields are instanceId, host and attribute:<name>."
            ))),
        },
        other => Err(ApiError::invalid(format!(
            "Invalid placement strategy type '{other}'. Valid types are binpack, random and spread."
        ))),
    }
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

/// What one placement asks for. All tasks of one call are alike.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub reservation: Reservation,
    /// The task group (`service:<name>` for service tasks): what `spread` and
    /// `distinctInstance` count against.
    pub group: String,
    pub constraints: Vec<Constraint>,
    /// The task definition's `requiresAttributes`.
    pub requires_attributes: Vec<Attribute>,
    /// Empty: the service default (spread by `attribute:ecs.availability-zone`, then by
    /// `instanceId`) is the caller's to pass; empty means no ordering beyond instance id.
    pub strategies: Vec<Strategy>,
    /// Seed for `random` (deterministic for a given seed).
    pub seed: u64,
}

/// Why a task could not be placed on one instance (ECS's failure reasons).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub instance_id: String,
    pub instance_arn: String,
    /// `RESOURCE:CPU` | `RESOURCE:MEMORY` | `RESOURCE:PORTS` | `RESOURCE:PORTS_UDP` |
    /// `MemberOf` | `DistinctInstance` | `AGENT` | `INACTIVE` | `ATTRIBUTE`
    pub reason: String,
}

/// The outcome of placing `count` tasks.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    /// Instance id for each task placed, in order (may be shorter than asked).
    pub placed: Vec<String>,
    /// When not every task found a place: the reason per instance that was ruled out
    /// (for RunTask's `failures[]`), closest match first.
    pub rejections: Vec<Rejection>,
}

/// One container instance as placement sees it.
#[derive(Debug, Clone)]
pub struct Node {
    pub id: String,
    pub arn: String,
    /// ACTIVE | DRAINING | …
    pub status: String,
    pub agent_connected: bool,
    pub remaining: Remaining,
    /// Live (not STOPPED, desired RUNNING) tasks per task group.
    pub groups: BTreeMap<String, u32>,
    /// What the cluster query language sees.
    pub view: cql::InstanceView,
}

impl Node {
    /// An instance and the tasks the store keeps on it.
    pub fn from_store(rec: &ContainerInstanceRecord, tasks: &[TaskRecord]) -> Node {
        let i = &rec.instance;
        let live: Vec<&str> = tasks
            .iter()
            .filter(|t| t.task.desired_status() == "RUNNING" && t.task.last_status() != "STOPPED")
            .filter_map(|t| t.task.group.as_deref())
            .collect();
        let mut groups = BTreeMap::new();
        for g in &live {
            *groups.entry(g.to_string()).or_insert(0) += 1;
        }
        Node {
            id: rec.id().to_string(),
            arn: i.container_instance_arn.clone().unwrap_or_default(),
            status: rec.status().to_string(),
            agent_connected: rec.agent_connected(),
            remaining: Remaining::of(i, tasks),
            groups,
            view: cql::InstanceView {
                attributes: i
                    .attributes
                    .iter()
                    .map(|a| (a.name.clone(), a.value.clone()))
                    .collect(),
                instance_id: rec.id().to_string(),
                registered_at: i.registered_at.unwrap_or(0.0),
                running_tasks_count: i.running_tasks_count,
                task_groups: live.iter().map(|g| g.to_string()).collect(),
                agent_connected: rec.agent_connected(),
                agent_version: i
                    .version_info
                    .as_ref()
                    .and_then(|v| v.agent_version.clone()),
            },
        }
    }

    /// Live tasks of `group` on this instance.
    pub fn group_count(&self, group: &str) -> u32 {
        self.groups.get(group).copied().unwrap_or(0)
    }

    /// The value of attribute `name` (`None` when absent or valueless).
    fn attribute(&self, name: &str) -> Option<&str> {
        self.view.attributes.get(name).and_then(|v| v.as_deref())
    }

    /// `requiresAttributes`: each named attribute present, with the value when one is given.
    fn has_attributes(&self, wanted: &[Attribute]) -> bool {
        wanted
            .iter()
            .all(|a| match self.view.attributes.get(&a.name) {
                None => false,
                Some(v) => a.value.is_none() || a.value == *v,
            })
    }

    /// Takes one task like `req`.
    fn take(&mut self, req: &Request) {
        self.remaining.take(&req.reservation);
        match self.groups.get_mut(&req.group) {
            Some(c) => *c += 1,
            None => {
                self.groups.insert(req.group.clone(), 1);
            }
        }
        self.view.task_groups.push(req.group.clone());
    }
}

/// The inverse of [`Remaining::take`] (which lives in the model).
fn give_back(r: &mut Remaining, held: &Reservation) {
    r.cpu += held.cpu;
    r.memory += held.memory;
    for p in &held.ports {
        r.ports.remove(p);
    }
    for p in &held.ports_udp {
        r.ports_udp.remove(p);
    }
}

/// Why `n` cannot take a task like `req` now, or `None` when it can: the first failing
/// check, in ECS's order (the instance, its resources, then the constraints).
fn rejection(n: &Node, req: &Request) -> Option<&'static str> {
    if n.status != "ACTIVE" {
        return Some("INACTIVE");
    }
    if !n.agent_connected {
        return Some("AGENT");
    }
    if let Some(why) = n.remaining.misfit(&req.reservation) {
        return Some(why);
    }
    constraint_rejection(n, req)
}

/// The first of `requiresAttributes`, `memberOf`, `distinctInstance` that `n` fails.
fn constraint_rejection(n: &Node, req: &Request) -> Option<&'static str> {
    if !n.has_attributes(&req.requires_attributes) {
        return Some("ATTRIBUTE");
    }
    let member = req.constraints.iter().all(|c| match c {
        Constraint::MemberOf(e) => e.eval(&n.view),
        Constraint::DistinctInstance => true,
    });
    if !member {
        return Some("MemberOf");
    }
    let distinct = req
        .constraints
        .iter()
        .any(|c| matches!(c, Constraint::DistinctInstance));
    if distinct && n.group_count(&req.group) > 0 {
        return Some("DistinctInstance");
    }
    None
}

/// The order of rejections, closest match first: instances that fail on resources
/// alone, then those that fail a constraint, then those that cannot run tasks at all;
/// within each, by reason in check order, then by id.
fn closeness(n: &Node, req: &Request, reason: &str) -> (u8, usize) {
    const ORDER: [&str; 9] = [
        "RESOURCE:CPU",
        "RESOURCE:MEMORY",
        "RESOURCE:PORTS",
        "RESOURCE:PORTS_UDP",
        "ATTRIBUTE",
        "MemberOf",
        "DistinctInstance",
        "AGENT",
        "INACTIVE",
    ];
    let tier = if reason == "INACTIVE" || reason == "AGENT" {
        2
    } else if constraint_rejection(n, req).is_none() {
        0
    } else {
        1
    };
    let rank = ORDER
        .iter()
        .position(|r| *r == reason)
        .unwrap_or(ORDER.len());
    (tier, rank)
}

/// A cluster's instances, indexed for placement. Placing a task updates the chosen
/// node (resources, group counts) so the next placement sees it.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    nodes: Vec<Node>,
    by_id: BTreeMap<String, usize>,
    /// Position of each node in id order (the final tie-break).
    rank: Vec<u32>,
    /// Node index by rank.
    by_rank: Vec<usize>,
}

impl ClusterView {
    pub fn new(nodes: Vec<Node>) -> ClusterView {
        let by_id = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.clone(), i))
            .collect();
        let mut by_rank: Vec<usize> = (0..nodes.len()).collect();
        by_rank.sort_by(|&a, &b| nodes[a].id.cmp(&nodes[b].id).then(a.cmp(&b)));
        let mut rank = vec![0u32; nodes.len()];
        for (r, &i) in by_rank.iter().enumerate() {
            rank[i] = r as u32;
        }
        ClusterView {
            nodes,
            by_id,
            rank,
            by_rank,
        }
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn node(&self, id: &str) -> Option<&Node> {
        self.by_id.get(id).map(|&i| &self.nodes[i])
    }

    /// Places up to `count` tasks like `req`, updating the view.
    pub fn place(&mut self, req: &Request, count: usize) -> Placement {
        let mut out = Placement::default();
        if count == 0 {
            return out;
        }
        let plan = Plan::new(req);
        let mut index = Index::build(self, &plan);
        while out.placed.len() < count {
            let Some((i, bucket)) = index.pop_best(self) else {
                out.rejections = self.rejections(req);
                break;
            };
            self.nodes[i].take(req);
            index.after_placing(self, &plan, i, bucket);
            out.placed.push(self.nodes[i].id.clone());
        }
        out
    }

    /// One rejection per instance, closest match first. Every instance must fail.
    fn rejections(&self, req: &Request) -> Vec<Rejection> {
        let mut out: Vec<((u8, usize, u32), Rejection)> = self
            .nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| {
                let why = rejection(n, req)?;
                let (tier, reason) = closeness(n, req, why);
                Some((
                    (tier, reason, self.rank[i]),
                    Rejection {
                        instance_id: n.id.clone(),
                        instance_arn: n.arn.clone(),
                        reason: why.to_string(),
                    },
                ))
            })
            .collect();
        out.sort_by_key(|(key, _)| *key);
        out.into_iter().map(|(_, r)| r).collect()
    }

    /// Whether `id` can take one task like `req` now (DAEMON services: one task per
    /// eligible instance). `Err` holds the rejection reason.
    ///
    /// An id the view does not know is rejected with reason `MISSING`.
    pub fn place_on(&mut self, id: &str, req: &Request) -> Result<(), Rejection> {
        let Some(&i) = self.by_id.get(id) else {
            return Err(Rejection {
                instance_id: id.to_string(),
                instance_arn: String::new(),
                reason: "MISSING".into(),
            });
        };
        let n = &mut self.nodes[i];
        if let Some(why) = rejection(n, req) {
            return Err(Rejection {
                instance_id: n.id.clone(),
                instance_arn: n.arn.clone(),
                reason: why.to_string(),
            });
        }
        n.take(req);
        Ok(())
    }

    /// Instances that satisfy `req`'s constraints and attributes, whatever their
    /// resources, status or agent (DAEMON services: where a task belongs).
    /// `distinctInstance` is left out (it is about how many, not where). In id order.
    pub fn matching(&self, req: &Request) -> Vec<String> {
        self.by_rank
            .iter()
            .map(|&i| &self.nodes[i])
            .filter(|n| {
                n.has_attributes(&req.requires_attributes)
                    && req.constraints.iter().all(|c| match c {
                        Constraint::MemberOf(e) => e.eval(&n.view),
                        Constraint::DistinctInstance => true,
                    })
            })
            .map(|n| n.id.clone())
            .collect()
    }

    /// Forget a task that is being stopped (frees what it held on `id`).
    /// Unknown ids are ignored.
    pub fn release(&mut self, id: &str, group: &str, reservation: &Reservation) {
        let Some(&i) = self.by_id.get(id) else {
            return;
        };
        let n = &mut self.nodes[i];
        give_back(&mut n.remaining, reservation);
        if let Some(c) = n.groups.get_mut(group) {
            *c = c.saturating_sub(1);
            if *c == 0 {
                n.groups.remove(group);
            }
        }
        if let Some(pos) = n.view.task_groups.iter().position(|g| g == group) {
            n.view.task_groups.remove(pos);
        }
    }
}

// ---------------------------------------------------------------- the ordering

/// One strategy's number in an instance's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Cpu,
    Memory,
    Instance,
    Random,
    /// `spread attribute:<name>`: index into [`Plan::attrs`].
    Attr(usize),
}

/// A key: one number per strategy, in list order. The tie-break by id comes after it.
type Key = Vec<i64>;

/// What one call needs to know of the request, worked out once.
struct Plan<'r> {
    req: &'r Request,
    parts: Vec<Part>,
    /// The distinct `spread attribute:<name>` names.
    attrs: Vec<&'r str>,
    random: bool,
    /// The memberOf expressions that placing a task can change the verdict of
    /// (those that read `task:group`); the others hold for the whole call.
    dynamic: Vec<&'r cql::Expr>,
    distinct: bool,
}

fn reads_task_groups(e: &cql::Expr) -> bool {
    match e {
        cql::Expr::And(a, b) | cql::Expr::Or(a, b) => reads_task_groups(a) || reads_task_groups(b),
        cql::Expr::Not(a) => reads_task_groups(a),
        cql::Expr::Pred(p) => p.subject == cql::Subject::TaskGroup,
    }
}

impl<'r> Plan<'r> {
    fn new(req: &'r Request) -> Plan<'r> {
        let mut attrs: Vec<&str> = Vec::new();
        let parts = req
            .strategies
            .iter()
            .map(|s| match s {
                Strategy::Binpack(BinpackField::Cpu) => Part::Cpu,
                Strategy::Binpack(BinpackField::Memory) => Part::Memory,
                Strategy::Spread(SpreadField::InstanceId) => Part::Instance,
                Strategy::Random => Part::Random,
                Strategy::Spread(SpreadField::Attribute(name)) => {
                    match attrs.iter().position(|a| a == name) {
                        Some(j) => Part::Attr(j),
                        None => {
                            attrs.push(name);
                            Part::Attr(attrs.len() - 1)
                        }
                    }
                }
            })
            .collect::<Vec<_>>();
        Plan {
            req,
            random: parts.contains(&Part::Random),
            parts,
            attrs,
            dynamic: req
                .constraints
                .iter()
                .filter_map(|c| match c {
                    Constraint::MemberOf(e) if reads_task_groups(e) => Some(e),
                    _ => None,
                })
                .collect(),
            distinct: req
                .constraints
                .iter()
                .any(|c| matches!(c, Constraint::DistinctInstance)),
        }
    }

    /// The numbers that differ within a bucket (every part but `Attr`).
    fn instance_key(&self, n: &Node, clock: u64) -> Key {
        self.parts
            .iter()
            .filter_map(|p| match p {
                Part::Cpu => Some(n.remaining.cpu),
                Part::Memory => Some(n.remaining.memory),
                Part::Instance => Some(i64::from(n.group_count(&self.req.group))),
                Part::Random => Some(ordered(clock)),
                Part::Attr(_) => None,
            })
            .collect()
    }

    /// The full key of an instance of a bucket: its instance key with the bucket's
    /// attribute counts put in their places.
    fn full_key(&self, instance: &[i64], values: &[u32], counts: &[Vec<i64>]) -> Key {
        let mut own = instance.iter();
        self.parts
            .iter()
            .map(|p| match p {
                Part::Attr(j) => counts[*j][values[*j] as usize],
                _ => own.next().copied().unwrap_or(0),
            })
            .collect()
    }

    /// Whether `n`, feasible before it took a task of this call, still is: what a task
    /// changes is its resources, its task groups (memberOf on `task:group`) and
    /// `distinctInstance`.
    fn still_fits(&self, n: &Node) -> bool {
        n.remaining.misfit(&self.req.reservation).is_none()
            && self.dynamic.iter().all(|e| e.eval(&n.view))
            && !(self.distinct && n.group_count(&self.req.group) > 0)
    }
}

/// `u64` → `i64` keeping the order.
fn ordered(x: u64) -> i64 {
    (x ^ (1 << 63)) as i64
}

/// FNV-1a of an instance id.
fn id_hash(id: &str) -> u64 {
    id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// splitmix64's finaliser.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Step `k` of an instance's random clock: exponentially distributed (mean 2^32), from a
/// hash of (seed, id, k).
fn random_step(seed: u64, id_hash: u64, k: u64) -> u64 {
    let h = mix(seed ^ mix(id_hash ^ mix(k)));
    let u = (h >> 11) as f64 / (1u64 << 53) as f64; // [0, 1)
    let e = -(-u).ln_1p(); // -ln(1 - u) ≥ 0
    (e * 4_294_967_296.0) as u64
}

// ---------------------------------------------------------------- the index

struct Bucket {
    /// Value id per spread attribute.
    values: Vec<u32>,
    /// Feasible members: (instance key, rank).
    members: BTreeSet<(Key, u32)>,
    /// This bucket's entry in [`Index::top`].
    entry: Option<(Key, u32)>,
}

/// One call's index (see the module documentation).
struct Index {
    attrs: usize,
    /// Value id of every node for every spread attribute: `values[node * attrs + j]`.
    values: Vec<u32>,
    /// Live tasks of the group per spread attribute and value id.
    counts: Vec<Vec<i64>>,
    buckets: Vec<Bucket>,
    /// Buckets per spread attribute and value id.
    by_value: Vec<Vec<Vec<u32>>>,
    /// Each non-empty bucket's best: (full key, rank) → bucket.
    top: BTreeMap<(Key, u32), u32>,
    seed: u64,
    ids: Vec<u64>,
    clocks: Vec<u64>,
    taken: Vec<u64>,
}

impl Index {
    fn build(view: &ClusterView, plan: &Plan) -> Index {
        let attrs = plan.attrs.len();
        let n = view.nodes.len();
        let mut names: Vec<HashMap<Option<&str>, u32>> = vec![HashMap::new(); attrs];
        let mut counts: Vec<Vec<i64>> = vec![Vec::new(); attrs];
        let mut values = Vec::with_capacity(n * attrs);
        for node in &view.nodes {
            let live = i64::from(node.group_count(&plan.req.group));
            for (j, name) in plan.attrs.iter().enumerate() {
                let next = names[j].len() as u32;
                let v = *names[j].entry(node.attribute(name)).or_insert(next);
                if v == next {
                    counts[j].push(0);
                }
                counts[j][v as usize] += live;
                values.push(v);
            }
        }
        let (ids, clocks) = if plan.random {
            let ids: Vec<u64> = view.nodes.iter().map(|n| id_hash(&n.id)).collect();
            let clocks = ids
                .iter()
                .map(|&h| random_step(plan.req.seed, h, 0))
                .collect();
            (ids, clocks)
        } else {
            (Vec::new(), Vec::new())
        };
        let mut ix = Index {
            attrs,
            values,
            by_value: counts.iter().map(|c| vec![Vec::new(); c.len()]).collect(),
            counts,
            buckets: Vec::new(),
            top: BTreeMap::new(),
            seed: plan.req.seed,
            ids,
            taken: if plan.random { vec![0; n] } else { Vec::new() },
            clocks,
        };
        let mut bucket_ids: HashMap<Vec<u32>, u32> = HashMap::new();
        for (i, node) in view.nodes.iter().enumerate() {
            if rejection(node, plan.req).is_some() {
                continue;
            }
            let vals = ix.values[i * attrs..(i + 1) * attrs].to_vec();
            let b = match bucket_ids.get(&vals) {
                Some(&b) => b,
                None => {
                    let b = ix.buckets.len() as u32;
                    for (j, &v) in vals.iter().enumerate() {
                        ix.by_value[j][v as usize].push(b);
                    }
                    bucket_ids.insert(vals.clone(), b);
                    ix.buckets.push(Bucket {
                        values: vals,
                        members: BTreeSet::new(),
                        entry: None,
                    });
                    b
                }
            };
            let key = plan.instance_key(node, ix.clock(i));
            ix.buckets[b as usize].members.insert((key, view.rank[i]));
        }
        for b in 0..ix.buckets.len() {
            ix.refresh(plan, b as u32);
        }
        ix
    }

    fn clock(&self, i: usize) -> u64 {
        self.clocks.get(i).copied().unwrap_or(0)
    }

    /// Recomputes bucket `b`'s entry in `top`.
    fn refresh(&mut self, plan: &Plan, b: u32) {
        let bucket = &mut self.buckets[b as usize];
        if let Some(old) = bucket.entry.take() {
            self.top.remove(&old);
        }
        if let Some((key, rank)) = bucket.members.first() {
            let full = plan.full_key(key, &bucket.values, &self.counts);
            bucket.entry = Some((full.clone(), *rank));
            self.top.insert((full, *rank), b);
        }
    }

    /// Takes the best node out of the index: (node index, its bucket).
    fn pop_best(&mut self, view: &ClusterView) -> Option<(usize, u32)> {
        let (_, &b) = self.top.first_key_value()?;
        let (_, rank) = self.buckets[b as usize].members.pop_first()?;
        Some((view.by_rank[rank as usize], b))
    }

    /// Node `i` of bucket `b` has just taken a task: update its clock and the group
    /// counts, put it back if it still fits, and refresh the buckets whose key moved.
    fn after_placing(&mut self, view: &ClusterView, plan: &Plan, i: usize, b: u32) {
        let node = &view.nodes[i];
        for j in 0..self.attrs {
            let v = self.values[i * self.attrs + j] as usize;
            self.counts[j][v] += 1;
        }
        if plan.random {
            self.taken[i] += 1;
            let step = random_step(self.seed, self.ids[i], self.taken[i]);
            self.clocks[i] = self.clocks[i].saturating_add(step);
        }
        if plan.still_fits(node) {
            let key = plan.instance_key(node, self.clock(i));
            self.buckets[b as usize].members.insert((key, view.rank[i]));
        }
        if self.attrs <= 1 {
            // With one spread attribute, a value is one bucket.
            self.refresh(plan, b);
            return;
        }
        let mut moved: Vec<u32> = vec![b];
        for j in 0..self.attrs {
            let v = self.buckets[b as usize].values[j] as usize;
            moved.extend(&self.by_value[j][v]);
        }
        moved.sort_unstable();
        moved.dedup();
        for m in moved {
            self.refresh(plan, m);
        }
    }
}

#[cfg(test)]
#[path = "placement_tests.rs"]
mod tests;
