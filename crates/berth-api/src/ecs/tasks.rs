//! ECS tasks: RunTask, StartTask, StopTask, DescribeTasks, ListTasks, and GetTaskLogs
//! (a berth extension that reads a task's container output from its agent).

use std::collections::BTreeSet;

use berth_model::{
    check_max_results, decode_opt_token, is_arn, page, validate_tags, ApiError, Failure,
    PlacementConstraint, PlacementStrategy, Tag, Task, TaskDefinition, TaskOverride,
};
use berth_scheduler::placement::{
    self, ClusterView, Node, Rejection, Request, SpreadField, Strategy,
};
use berth_store::{Command, NewTask, Response, TaskIndexKind};
use serde::Deserialize;
use serde_json::{json, Value};

use super::common::*;
use super::common::{required, store_err, to_value, unexpected, with_token};
use super::task_definitions::resolve_task_definition;
use crate::context::Ctx;

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct RunTaskRequest {
    cluster: Option<String>,
    task_definition: Option<String>,
    count: Option<i64>,
    group: Option<String>,
    started_by: Option<String>,
    overrides: Option<TaskOverride>,
    placement_constraints: Option<Vec<PlacementConstraint>>,
    placement_strategy: Option<Vec<PlacementStrategy>>,
    launch_type: Option<String>,
    capacity_provider_strategy: Option<Value>,
    tags: Option<Vec<Tag>>,
    propagate_tags: Option<String>,
    enable_execute_command: Option<bool>,
    client_token: Option<String>,
    /// StartTask only.
    container_instances: Option<Vec<String>>,
}

fn validate_started_by(s: &Option<String>, max: usize) -> Result<(), ApiError> {
    if let Some(s) = s {
        if s.len() > max
            || !s
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'/' | b'-'))
        {
            return Err(ApiError::invalid(format!(
                "Invalid startedBy '{s}': up to {max} letters, numbers, hyphens, forward slashes and underscores."
            )));
        }
    }
    Ok(())
}

/// Overrides may only name containers of the task definition.
fn validate_overrides(td: &TaskDefinition, ov: &TaskOverride) -> Result<(), ApiError> {
    for o in ov.container_overrides.iter().flatten() {
        let name = o.name.as_deref().unwrap_or("");
        if !td
            .container_definitions
            .iter()
            .any(|c| c.name.as_deref() == Some(name))
        {
            return Err(ApiError::invalid(format!(
                "Override for container named {name} is not a container in the TaskDefinition."
            )));
        }
    }
    Ok(())
}

struct Prepared {
    cluster: String,
    td: TaskDefinition,
    overrides: TaskOverride,
    group: String,
    tags: Vec<Tag>,
    launch_type: String,
}

/// Validation common to RunTask and StartTask (reads the task definition).
fn prepare(ctx: &Ctx, req: &RunTaskRequest, started_by_max: usize) -> Result<Prepared, ApiError> {
    let cluster = cluster_of(&req.cluster)?;
    let td_ref = required(&req.task_definition, "taskDefinition")?;
    validate_started_by(&req.started_by, started_by_max)?;
    if let Some(g) = &req.group {
        if g.is_empty() || g.len() > 255 {
            return Err(ApiError::invalid("group must be 1-255 characters."));
        }
    }
    let tags = req.tags.clone().unwrap_or_default();
    validate_tags(&tags)?;
    if req.propagate_tags.as_deref() == Some("SERVICE") {
        return Err(ApiError::invalid(
            "propagateTags SERVICE is only valid for tasks of a service.",
        ));
    }
    if let Some(t) = &req.client_token {
        if t.is_empty() || t.len() > 64 || !t.bytes().all(|b| (33..=126).contains(&b)) {
            return Err(ApiError::invalid(
                "clientToken must be 1-64 printable ASCII characters without spaces.",
            ));
        }
    }
    if req.launch_type.is_some() && req.capacity_provider_strategy.is_some() {
        return Err(ApiError::invalid(
            "Specifying both a launch type and capacity provider strategy is not supported. Remove one and try again.",
        ));
    }
    let launch_type = match req.launch_type.as_deref() {
        None => "EC2".to_string(),
        Some(l @ ("EC2" | "EXTERNAL")) => l.to_string(),
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "Launch type {other} is not supported by berth. Use EC2 or EXTERNAL."
            )))
        }
    };
    let td = resolve_task_definition(ctx, td_ref)?
        .filter(|td| td.status.as_deref() != Some("DELETE_IN_PROGRESS"))
        .ok_or_else(|| ApiError::invalid("TaskDefinition not found."))?;
    let overrides = req.overrides.clone().unwrap_or_default();
    validate_overrides(&td, &overrides)?;
    let group = req
        .group
        .clone()
        .unwrap_or_else(|| format!("family:{}", td.family));
    Ok(Prepared {
        cluster,
        td,
        overrides,
        group,
        tags,
        launch_type,
    })
}

fn new_task(ctx: &Ctx, p: &Prepared, req: &RunTaskRequest, instance_id: &str) -> NewTask {
    berth_store::new_task::build(
        &ctx.cfg.ctx,
        &p.cluster,
        &p.td,
        &p.overrides,
        &p.group,
        req.started_by.clone(),
        p.tags.clone(),
        &p.launch_type,
        instance_id,
        req.enable_execute_command.unwrap_or(false),
        placement::reservation(&p.td, &p.overrides),
    )
}

async fn create_tasks(
    ctx: &Ctx,
    cluster: String,
    tasks: Vec<NewTask>,
    client_token: Option<String>,
    mut failures: Vec<Failure>,
) -> Result<Value, ApiError> {
    let sent: BTreeSet<String> = tasks.iter().map(|t| t.task_id.clone()).collect();
    let cmd = Command::RunTasks {
        ctx: ctx.cfg.ctx.clone(),
        cluster,
        tasks,
        client_token,
        at: ctx.now(),
    };
    match ctx.propose(cmd).await? {
        Response::Tasks {
            tasks,
            failures: more,
        } => {
            if tasks.iter().any(|t| !sent.contains(t.id())) {
                // A repeated clientToken: the answer is the first request's.
                failures.clear();
            }
            failures.extend(more);
            Ok(json!({ "tasks": to_value(&tasks)?, "failures": to_value(&failures)? }))
        }
        other => Err(unexpected(other)),
    }
}

/// The task definition's placement constraints (memberOf only), in the request's form.
fn td_constraints(td: &TaskDefinition) -> impl Iterator<Item = PlacementConstraint> + '_ {
    td.placement_constraints
        .iter()
        .flatten()
        .map(|c| PlacementConstraint {
            kind: c.r#type.clone(),
            expression: c.expression.clone(),
        })
}

/// An instance as placement sees it, with the tasks the store keeps on it.
fn placement_node(
    ctx: &Ctx,
    cluster: &str,
    rec: &berth_model::ContainerInstanceRecord,
) -> Result<Node, ApiError> {
    let tasks = ctx
        .reader()
        .tasks_on_instance(cluster, rec.id())
        .map_err(store_err)?;
    Ok(Node::from_store(rec, &tasks))
}

/// Whether an instance is one placement considers (and names in failures): ACTIVE or
/// DRAINING; placement itself tells which can take tasks.
fn placeable(rec: &berth_model::ContainerInstanceRecord) -> bool {
    matches!(rec.status(), "ACTIVE" | "DRAINING")
}

fn failure_of(r: Rejection) -> Failure {
    Failure {
        arn: Some(r.instance_arn),
        reason: Some(r.reason),
        detail: None,
    }
}

pub(crate) async fn run_task(ctx: &Ctx, req: RunTaskRequest) -> Result<Value, ApiError> {
    let count = req.count.unwrap_or(1);
    if !(1..=10).contains(&count) {
        return Err(ApiError::invalid(format!(
            "count must be between 1 and 10; {count} was given."
        )));
    }
    let mut strategies =
        placement::parse_strategies(req.placement_strategy.as_deref().unwrap_or_default())?;
    if strategies.is_empty() {
        // berth's RunTask default: spread the group's tasks over instances.
        strategies = vec![Strategy::Spread(SpreadField::InstanceId)];
    }
    ctx.cluster.read_barrier().await?;
    let p = prepare(ctx, &req, 128)?;
    existing_cluster(ctx, &p.cluster, true)?;
    let mut listed = req.placement_constraints.clone().unwrap_or_default();
    listed.extend(td_constraints(&p.td));
    let request = Request {
        reservation: placement::reservation(&p.td, &p.overrides),
        group: p.group.clone(),
        constraints: placement::parse_constraints(&listed)?,
        requires_attributes: p.td.requires_attributes.clone().unwrap_or_default(),
        strategies,
        seed: uuid::Uuid::new_v4().as_u64_pair().0,
    };
    let mut nodes = Vec::new();
    for rec in ctx
        .reader()
        .container_instances(&p.cluster)
        .map_err(store_err)?
    {
        if placeable(&rec) {
            nodes.push(placement_node(ctx, &p.cluster, &rec)?);
        }
    }
    if nodes.is_empty() {
        return Err(ApiError::invalid(
            "No Container Instances were found in your cluster.",
        ));
    }
    let placed = ClusterView::new(nodes).place(&request, count as usize);
    let tasks = placed
        .placed
        .iter()
        .map(|id| new_task(ctx, &p, &req, id))
        .collect();
    let failures = placed.rejections.into_iter().map(failure_of).collect();
    create_tasks(
        ctx,
        p.cluster.clone(),
        tasks,
        req.client_token.clone(),
        failures,
    )
    .await
}

pub(crate) async fn start_task(ctx: &Ctx, req: RunTaskRequest) -> Result<Value, ApiError> {
    let list = req.container_instances.clone().unwrap_or_default();
    if list.is_empty() || list.len() > 10 {
        return Err(ApiError::invalid(format!(
            "containerInstances must name between 1 and 10 container instances; {} were given.",
            list.len()
        )));
    }
    ctx.cluster.read_barrier().await?;
    let p = prepare(ctx, &req, 36)?;
    existing_cluster(ctx, &p.cluster, true)?;
    // No strategies or request constraints in StartTask: the instances are named. The
    // task definition's constraints, attributes and resources are still checked.
    let constraints: Vec<PlacementConstraint> = td_constraints(&p.td).collect();
    let request = Request {
        reservation: placement::reservation(&p.td, &p.overrides),
        group: p.group.clone(),
        constraints: placement::parse_constraints(&constraints)?,
        requires_attributes: p.td.requires_attributes.clone().unwrap_or_default(),
        ..Default::default()
    };
    let mut ids = Vec::new();
    let mut failures = Vec::new();
    for s in &list {
        match resolve_id(ctx, &p.cluster, s, IdKind::ContainerInstance) {
            Ok(id) => ids.push(id),
            Err(bad) => failures.push(Failure::missing(bad)),
        }
    }
    let mut nodes = Vec::new();
    for id in ids.iter().collect::<BTreeSet<_>>() {
        if let Some(rec) = ctx
            .reader()
            .container_instance(&p.cluster, id)
            .map_err(store_err)?
            .filter(placeable)
        {
            nodes.push(placement_node(ctx, &p.cluster, &rec)?);
        }
    }
    let mut view = ClusterView::new(nodes);
    let mut tasks = Vec::new();
    for id in &ids {
        // An instance the view does not have (unknown, INACTIVE) is the store's to refuse.
        if view.node(id).is_none() {
            tasks.push(new_task(ctx, &p, &req, id));
            continue;
        }
        match view.place_on(id, &request) {
            Ok(()) => tasks.push(new_task(ctx, &p, &req, id)),
            Err(r) => failures.push(failure_of(r)),
        }
    }
    create_tasks(ctx, p.cluster.clone(), tasks, None, failures).await
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct StopTaskRequest {
    cluster: Option<String>,
    task: Option<String>,
    reason: Option<String>,
}

pub(crate) async fn stop_task(ctx: &Ctx, req: StopTaskRequest) -> Result<Value, ApiError> {
    let cluster = cluster_of(&req.cluster)?;
    let given = required(&req.task, "task")?;
    let task_id = resolve_id(ctx, &cluster, given, IdKind::Task)
        .map_err(|_| ApiError::invalid("The referenced task was not found."))?;
    let reason = match req.reason.as_deref() {
        None | Some("") => "Task stopped by user".to_string(),
        Some(r) if r.len() > 1024 => {
            return Err(ApiError::invalid("reason must be at most 1024 characters."))
        }
        Some(r) => r.to_string(),
    };
    let cmd = Command::StopTask {
        cluster,
        task_id,
        reason,
        stop_code: "UserInitiated".into(),
        at: ctx.now(),
    };
    match ctx.propose(cmd).await? {
        Response::Task { task } => Ok(json!({ "task": to_value(&task)? })),
        other => Err(unexpected(other)),
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct DescribeTasksRequest {
    cluster: Option<String>,
    tasks: Option<Vec<String>>,
    include: Option<Vec<String>>,
}

pub(crate) async fn describe_tasks(
    ctx: &Ctx,
    req: DescribeTasksRequest,
) -> Result<Value, ApiError> {
    let cluster = cluster_of(&req.cluster)?;
    let wanted = req.tasks.unwrap_or_default();
    if wanted.is_empty() || wanted.len() > 100 {
        return Err(ApiError::invalid(format!(
            "tasks must name between 1 and 100 tasks; {} were given.",
            wanted.len()
        )));
    }
    let include = req.include.unwrap_or_default();
    check_include(&include, &["TAGS"])?;
    ctx.cluster.read_barrier().await?;
    existing_cluster(ctx, &cluster, false)?;
    let mut out: Vec<Task> = Vec::new();
    let mut failures = Vec::new();
    for w in &wanted {
        match resolve_id(ctx, &cluster, w, IdKind::Task) {
            Ok(id) => match ctx.reader().task(&cluster, &id).map_err(store_err)? {
                Some(rec) => {
                    let mut t = rec.task;
                    if include.iter().any(|i| i == "TAGS") {
                        let arn = t.task_arn.clone().unwrap_or_default();
                        t.tags = Some(ctx.reader().tags(&arn).map_err(store_err)?);
                    }
                    out.push(t);
                }
                None => failures.push(Failure::missing(ctx.cfg.ctx.task(&cluster, &id))),
            },
            Err(bad) => failures.push(Failure::missing(bad)),
        }
    }
    Ok(json!({ "tasks": to_value(&out)?, "failures": to_value(&failures)? }))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct ListTasksRequest {
    cluster: Option<String>,
    container_instance: Option<String>,
    family: Option<String>,
    service_name: Option<String>,
    started_by: Option<String>,
    desired_status: Option<String>,
    launch_type: Option<String>,
    next_token: Option<String>,
    max_results: Option<i64>,
}

pub(crate) async fn list_tasks(ctx: &Ctx, req: ListTasksRequest) -> Result<Value, ApiError> {
    let cluster = cluster_of(&req.cluster)?;
    let desired = req
        .desired_status
        .clone()
        .unwrap_or_else(|| "RUNNING".into());
    if !matches!(desired.as_str(), "RUNNING" | "PENDING" | "STOPPED") {
        return Err(ApiError::invalid(format!(
            "Invalid desiredStatus '{desired}'. Valid values are RUNNING, PENDING and STOPPED."
        )));
    }
    let max = check_max_results(req.max_results, 100)?;
    let after = decode_opt_token("ListTasks", req.next_token.as_deref())?;
    let instance = match req.container_instance.as_deref() {
        None | Some("") => None,
        Some(s) => Some(resolve_or_invalid(
            ctx,
            &cluster,
            s,
            IdKind::ContainerInstance,
        )?),
    };
    ctx.cluster.read_barrier().await?;
    existing_cluster(ctx, &cluster, false)?;
    // PENDING is never a desired status.
    if desired == "PENDING" {
        return Ok(json!({ "taskArns": [] }));
    }
    // A service's tasks are those of its task group.
    let group = match req.service_name.as_deref() {
        None | Some("") => None,
        // a name, or (leniently) the service's ARN
        Some(s) if is_arn(s) => Some(format!("service:{}", s.rsplit('/').next().unwrap_or(s))),
        Some(s) => Some(format!("service:{s}")),
    };
    let reader = &ctx.reader();
    // Start from the most selective index; the other filters check the records.
    let ids = if let Some(i) = &instance {
        reader.task_ids_by(&cluster, TaskIndexKind::Instance, i)
    } else if let Some(s) = &req.started_by {
        reader.task_ids_by(&cluster, TaskIndexKind::StartedBy, s)
    } else if let Some(g) = &group {
        reader.task_ids_by(&cluster, TaskIndexKind::Group, g)
    } else if let Some(f) = &req.family {
        reader.task_ids_by(&cluster, TaskIndexKind::Family, f)
    } else {
        reader.task_ids_by(&cluster, TaskIndexKind::DesiredStatus, &desired)
    }
    .map_err(store_err)?;
    let mut keep = Vec::new();
    for id in ids {
        let Some(rec) = reader.task(&cluster, &id).map_err(store_err)? else {
            continue;
        };
        let t = &rec.task;
        let family_ok = req.family.as_ref().is_none_or(|f| {
            t.task_definition_arn
                .as_deref()
                .and_then(|a| a.rsplit('/').next())
                .and_then(|fr| fr.rsplit_once(':'))
                .is_some_and(|(fam, _)| fam == f)
        });
        if t.desired_status() == desired
            && family_ok
            && instance.as_ref().is_none_or(|i| *i == rec.instance_id)
            && group.as_ref().is_none_or(|g| t.group.as_ref() == Some(g))
            && req
                .started_by
                .as_ref()
                .is_none_or(|s| t.started_by.as_ref() == Some(s))
            && req
                .launch_type
                .as_ref()
                .is_none_or(|l| t.launch_type.as_ref() == Some(l))
        {
            keep.push(rec);
        }
    }
    let (items, next) = page(keep, after.as_deref(), max, "ListTasks", |r| {
        r.task.id().to_string()
    });
    let arns: Vec<String> = items.into_iter().filter_map(|r| r.task.task_arn).collect();
    Ok(with_token(json!({ "taskArns": arns }), next))
}

// ---------------------------------------------------------------- logs (berth extension)

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct GetTaskLogsRequest {
    cluster: Option<String>,
    task: Option<String>,
    container: Option<String>,
    tail: Option<i64>,
    next_token: Option<String>,
}

/// `GetTaskLogs` (not an ECS operation; `berth logs` uses it): a task's container output,
/// read by its agent. Each answer carries a `nextToken` that continues exactly after it, so
/// following is polling with the token (like CloudWatch Logs' GetLogEvents).
pub(crate) async fn get_task_logs(ctx: &Ctx, req: GetTaskLogsRequest) -> Result<Value, ApiError> {
    use base64::Engine as _;
    let cluster = cluster_of(&req.cluster)?;
    existing_cluster(ctx, &cluster, false)?;
    let task = required(&req.task, "task")?;
    let id = resolve_id(ctx, &cluster, task, IdKind::Task)
        .map_err(|s| ApiError::invalid(format!("The referenced task {s} was not found.")))?;
    let rec = ctx
        .reader()
        .task(&cluster, &id)
        .map_err(store_err)?
        .ok_or_else(|| ApiError::invalid(format!("The referenced task {task} was not found.")))?;
    let cursors = match req.next_token.as_deref().filter(|t| !t.is_empty()) {
        None => Default::default(),
        Some(t) => base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(t)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| ApiError::invalid(format!("Invalid nextToken {t:?}.")))?,
    };
    let tail = match req.tail {
        None => None,
        Some(n) if n >= 0 => Some(n as usize),
        Some(n) => {
            return Err(ApiError::invalid(format!(
                "tail must be 0 or more, not {n}."
            )))
        }
    };
    let lreq = berth_model::agent::LogsRequest {
        request_id: uuid::Uuid::new_v4().to_string(),
        task_id: id.clone(),
        container: req.container.clone(),
        cursors,
        tail,
    };
    let resp = ctx
        .cluster
        .agent_logs(&cluster, &rec.instance_id, lreq)
        .await
        .map_err(|e| ApiError::client(format!("Cannot read the logs of task {id}: {e}.")))?;
    if let Some(e) = resp.error {
        return Err(ApiError::invalid(format!("{e}.")));
    }
    let cursors: std::collections::BTreeMap<String, berth_model::agent::LogCursor> = resp
        .logs
        .iter()
        .map(|l| (l.container.clone(), l.cursor))
        .collect();
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&cursors).unwrap_or_default());
    Ok(serde_json::json!({
        "logs": resp.logs.iter().map(|l| serde_json::json!({"container": l.container, "data": l.data})).collect::<Vec<_>>(),
        "lastStatus": rec.task.last_status,
        "nextToken": token,
    }))
}
