//! Placement: which container instance each task goes to.
//!
//! ECS's process (reference §8.1): keep the instances that can take the task (ACTIVE,
//! agent connected, CPU, memory, ports), keep those that satisfy every constraint
//! (`memberOf` with the cluster query language, `distinctInstance`, the task
//! definition's `requiresAttributes`), order them by the strategies in list order
//! (each one a tie-breaker for the ones before), take the first.

use std::collections::BTreeMap;

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
    let _ = list;
    todo!()
}

/// Parses `placementStrategy` (≤5). Errors are `InvalidParameterException` naming the
/// bad value.
pub fn parse_strategies(list: &[PlacementStrategy]) -> Result<Vec<Strategy>, ApiError> {
    let _ = list;
    todo!()
}

/// CPU units, MiB and static host ports a task definition (with overrides) reserves.
pub fn reservation(td: &TaskDefinition, ov: &TaskOverride) -> Reservation {
    let _ = (td, ov);
    todo!()
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
        let _ = (rec, tasks);
        todo!()
    }
}

/// A cluster's instances, indexed for placement. Placing a task updates the chosen
/// node (resources, group counts) so the next placement sees it.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    nodes: Vec<Node>,
    by_id: BTreeMap<String, usize>,
}

impl ClusterView {
    pub fn new(nodes: Vec<Node>) -> ClusterView {
        let by_id = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.clone(), i))
            .collect();
        ClusterView { nodes, by_id }
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn node(&self, id: &str) -> Option<&Node> {
        self.by_id.get(id).map(|&i| &self.nodes[i])
    }

    /// Places up to `count` tasks like `req`, updating the view.
    pub fn place(&mut self, req: &Request, count: usize) -> Placement {
        let _ = (req, count);
        todo!()
    }

    /// Whether `id` can take one task like `req` now (DAEMON services: one task per
    /// eligible instance). `Err` holds the rejection reason.
    pub fn place_on(&mut self, id: &str, req: &Request) -> Result<(), Rejection> {
        let _ = (id, req);
        todo!()
    }

    /// Instances that satisfy `req`'s constraints and attributes, whatever their
    /// resources, status or agent (DAEMON services: where a task belongs).
    pub fn matching(&self, req: &Request) -> Vec<String> {
        let _ = req;
        todo!()
    }

    /// Forget a task that is being stopped (frees what it held on `id`).
    pub fn release(&mut self, id: &str, group: &str, reservation: &Reservation) {
        let _ = (id, group, reservation);
        todo!()
    }
}
