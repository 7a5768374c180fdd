//! ECS operations on tasks, container instances and attributes: decode and validate,
//! place (RunTask), propose or read, encode. Time and random ids are made here and
//! travel inside the commands.

use std::collections::BTreeSet;

use berth_model::cql::{self, InstanceView};
use berth_model::{
    check_max_results, decode_opt_token, is_arn, page, parse_arn, validate_tags, ApiError,
    Attribute, Container, ContainerInstance, Failure, PlacementConstraint, PlacementStrategy,
    ResourceArn, Tag, Task, TaskDefinition, TaskOverride,
};
use berth_scheduler::placement::{
    self, ClusterView, Node, Rejection, Request, SpreadField, Strategy,
};
use berth_store::{Command, NewTask, Response, TaskIndexKind};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::Ctx;
use crate::ecs::{
    propose, required, resolve_task_definition, store_err, to_value, unexpected, with_token,
};

// ---------------------------------------------------------------- identifiers

/// The `cluster` member: a name or ARN, `default` when absent.
fn cluster_of(c: &Option<String>) -> Result<String, ApiError> {
    match c.as_deref() {
        None | Some("") => Ok("default".into()),
        Some(s) => berth_model::cluster_name_from(s),
    }
}

/// The cluster, which must exist (`ClusterNotFoundException`); `active` also refuses an
/// INACTIVE one.
fn existing_cluster(ctx: &Ctx, name: &str, active: bool) -> Result<(), ApiError> {
    match ctx.node.reader.cluster(name).map_err(store_err)? {
        None => Err(ApiError::cluster_not_found()),
        Some(c) if active && c.status.as_deref() != Some("ACTIVE") => {
            Err(berth_store::command::inactive_cluster())
        }
        Some(_) => Ok(()),
    }
}

/// Which kind of id an `id or ARN` parameter names.
#[derive(Clone, Copy, PartialEq)]
enum IdKind {
    Task,
    ContainerInstance,
}

/// An id or a full ARN → (id, the ARN to report it under). An ARN of another cluster or
/// kind → `Err(the input)` (reported as MISSING by Describe*).
fn resolve_id(ctx: &Ctx, cluster: &str, s: &str, kind: IdKind) -> Result<String, String> {
    if is_arn(s) {
        match parse_arn(s).map(|p| p.resource) {
            Ok(ResourceArn::Task { cluster: c, id }) if kind == IdKind::Task && c == cluster => {
                Ok(id)
            }
            Ok(ResourceArn::ContainerInstance { cluster: c, id })
                if kind == IdKind::ContainerInstance && c == cluster =>
            {
                Ok(id)
            }
            _ => Err(s.to_string()),
        }
    } else if !s.is_empty()
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        Ok(s.to_string())
    } else {
        let _ = ctx;
        Err(s.to_string())
    }
}

fn resolve_or_invalid(ctx: &Ctx, cluster: &str, s: &str, kind: IdKind) -> Result<String, ApiError> {
    resolve_id(ctx, cluster, s, kind).map_err(|bad| {
        let what = match kind {
            IdKind::Task => "task",
            IdKind::ContainerInstance => "container instance",
        };
        ApiError::invalid(format!(
            "Invalid {what} '{bad}': give its id or its full ARN in cluster '{cluster}'."
        ))
    })
}

fn check_include(include: &[String], allowed: &[&str]) -> Result<(), ApiError> {
    for i in include {
        if !allowed.contains(&i.as_str()) {
            return Err(ApiError::invalid(format!(
                "Invalid include value '{i}'. Valid values are {}.",
                allowed.join(", ")
            )));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- container instances

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct DescribeContainerInstancesRequest {
    cluster: Option<String>,
    container_instances: Option<Vec<String>>,
    include: Option<Vec<String>>,
}

fn health(ci: &ContainerInstance) -> Value {
    let ok = ci.agent_connected == Some(true);
    json!({
        "overallStatus": if ok { "OK" } else { "IMPAIRED" },
        "details": [{
            "type": "CONTAINER_RUNTIME",
            "status": if ok { "OK" } else { "IMPAIRED" },
        }],
    })
}

pub(crate) async fn describe_container_instances(
    ctx: &Ctx,
    req: DescribeContainerInstancesRequest,
) -> Result<Value, ApiError> {
    let cluster = cluster_of(&req.cluster)?;
    let wanted = req.container_instances.unwrap_or_default();
    if wanted.is_empty() || wanted.len() > 100 {
        return Err(ApiError::invalid(format!(
            "containerInstances must name between 1 and 100 container instances; {} were given.",
            wanted.len()
        )));
    }
    let include = req.include.unwrap_or_default();
    check_include(&include, &["TAGS", "CONTAINER_INSTANCE_HEALTH"])?;
    ctx.node.read_barrier().await?;
    existing_cluster(ctx, &cluster, false)?;
    let mut out = Vec::new();
    let mut failures = Vec::new();
    for w in &wanted {
        let rec = match resolve_id(ctx, &cluster, w, IdKind::ContainerInstance) {
            Ok(id) => match ctx
                .node
                .reader
                .container_instance(&cluster, &id)
                .map_err(store_err)?
            {
                Some(r) => r,
                None => {
                    failures.push(Failure::missing(
                        ctx.cfg.ctx.container_instance(&cluster, &id),
                    ));
                    continue;
                }
            },
            Err(bad) => {
                failures.push(Failure::missing(bad));
                continue;
            }
        };
        let mut ci = rec.instance;
        if include.iter().any(|i| i == "TAGS") {
            let arn = ci.container_instance_arn.clone().unwrap_or_default();
            ci.tags = Some(ctx.node.reader.tags(&arn).map_err(store_err)?);
        }
        if include.iter().any(|i| i == "CONTAINER_INSTANCE_HEALTH") {
            ci.health_status = Some(health(&ci));
        }
        out.push(ci);
    }
    Ok(json!({ "containerInstances": to_value(&out)?, "failures": to_value(&failures)? }))
}

const INSTANCE_STATUSES: [&str; 5] = [
    "ACTIVE",
    "DRAINING",
    "REGISTERING",
    "DEREGISTERING",
    "REGISTRATION_FAILED",
];

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct ListContainerInstancesRequest {
    cluster: Option<String>,
    filter: Option<String>,
    status: Option<String>,
    next_token: Option<String>,
    max_results: Option<i64>,
}

/// What CQL sees of an instance (task groups of the tasks meant to run on it).
fn view_of(
    ctx: &Ctx,
    cluster: &str,
    rec: &berth_model::ContainerInstanceRecord,
) -> Result<InstanceView, ApiError> {
    let tasks = ctx
        .node
        .reader
        .tasks_on_instance(cluster, rec.id())
        .map_err(store_err)?;
    Ok(Node::from_store(rec, &tasks).view)
}

pub(crate) async fn list_container_instances(
    ctx: &Ctx,
    req: ListContainerInstancesRequest,
) -> Result<Value, ApiError> {
    let cluster = cluster_of(&req.cluster)?;
    if let Some(s) = &req.status {
        if !INSTANCE_STATUSES.contains(&s.as_str()) {
            return Err(ApiError::invalid(format!(
                "Invalid status '{s}'. Valid values are {}.",
                INSTANCE_STATUSES.join(", ")
            )));
        }
    }
    let filter = match req.filter.as_deref() {
        None | Some("") => None,
        Some(f) => Some(
            cql::parse(f)
                .map_err(|e| ApiError::invalid(format!("Invalid filter expression '{f}': {e}.")))?,
        ),
    };
    let max = check_max_results(req.max_results, 100)?;
    let after = decode_opt_token("ListContainerInstances", req.next_token.as_deref())?;
    ctx.node.read_barrier().await?;
    existing_cluster(ctx, &cluster, false)?;
    let mut keep = Vec::new();
    for rec in ctx
        .node
        .reader
        .container_instances(&cluster)
        .map_err(store_err)?
    {
        let ok_status = match &req.status {
            Some(s) => rec.status() == s,
            None => rec.status() != "INACTIVE",
        };
        if !ok_status {
            continue;
        }
        if let Some(f) = &filter {
            if !f.eval(&view_of(ctx, &cluster, &rec)?) {
                continue;
            }
        }
        keep.push(rec);
    }
    let (items, next) = page(keep, after.as_deref(), max, "ListContainerInstances", |r| {
        r.id().to_string()
    });
    let arns: Vec<String> = items
        .into_iter()
        .filter_map(|r| r.instance.container_instance_arn)
        .collect();
    Ok(with_token(json!({ "containerInstanceArns": arns }), next))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct DeregisterContainerInstanceRequest {
    cluster: Option<String>,
    container_instance: Option<String>,
    force: Option<bool>,
}

pub(crate) async fn deregister_container_instance(
    ctx: &Ctx,
    req: DeregisterContainerInstanceRequest,
) -> Result<Value, ApiError> {
    let cluster = cluster_of(&req.cluster)?;
    let given = required(&req.container_instance, "containerInstance")?;
    let id = resolve_or_invalid(ctx, &cluster, given, IdKind::ContainerInstance)?;
    let cmd = Command::DeregisterContainerInstance {
        cluster,
        instance_id: id,
        force: req.force.unwrap_or(false),
        at: ctx.now(),
    };
    match propose(ctx, cmd).await? {
        Response::ContainerInstance { container_instance } => {
            Ok(json!({ "containerInstance": to_value(&container_instance)? }))
        }
        other => Err(unexpected(other)),
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct UpdateContainerInstancesStateRequest {
    cluster: Option<String>,
    container_instances: Option<Vec<String>>,
    status: Option<String>,
}

pub(crate) async fn update_container_instances_state(
    ctx: &Ctx,
    req: UpdateContainerInstancesStateRequest,
) -> Result<Value, ApiError> {
    let cluster = cluster_of(&req.cluster)?;
    let status = required(&req.status, "status")?.to_string();
    if status != "ACTIVE" && status != "DRAINING" {
        return Err(ApiError::invalid(format!(
            "Invalid status '{status}'. Container instances can only be set to ACTIVE or DRAINING."
        )));
    }
    let list = req.container_instances.unwrap_or_default();
    if list.is_empty() || list.len() > 10 {
        return Err(ApiError::invalid(format!(
            "containerInstances must name between 1 and 10 container instances; {} were given.",
            list.len()
        )));
    }
    let mut ids = Vec::new();
    let mut failures = Vec::new();
    for s in &list {
        match resolve_id(ctx, &cluster, s, IdKind::ContainerInstance) {
            Ok(id) => ids.push(id),
            Err(bad) => failures.push(Failure::missing(bad)),
        }
    }
    let cmd = Command::UpdateContainerInstancesState {
        cluster,
        instance_ids: ids,
        status,
        at: ctx.now(),
    };
    match propose(ctx, cmd).await? {
        Response::ContainerInstances {
            container_instances,
            failures: more,
        } => {
            failures.extend(more);
            Ok(
                json!({ "containerInstances": to_value(&container_instances)?, "failures": to_value(&failures)? }),
            )
        }
        other => Err(unexpected(other)),
    }
}

// ---------------------------------------------------------------- attributes

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct AttributesRequest {
    cluster: Option<String>,
    attributes: Option<Vec<Attribute>>,
}

fn valid_attr_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 128
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '/' | '\\' | '.'))
}

fn valid_attr_value(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && !v.starts_with(' ')
        && !v.ends_with(' ')
        && v.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@' | '/' | '\\' | ':' | ' ')
        })
}

/// Validates attributes and resolves their targets to instance ids.
fn attribute_targets(
    ctx: &Ctx,
    cluster: &str,
    attrs: &[Attribute],
    with_values: bool,
) -> Result<Vec<Attribute>, ApiError> {
    if attrs.is_empty() || attrs.len() > 10 {
        return Err(ApiError::invalid(format!(
            "attributes must list between 1 and 10 attributes; {} were given.",
            attrs.len()
        )));
    }
    let mut out = Vec::new();
    for a in attrs {
        if !valid_attr_name(&a.name) {
            return Err(ApiError::invalid(format!(
                "Invalid attribute name '{}': use 1-128 letters, digits, hyphens, underscores, slashes, backslashes or periods.",
                a.name
            )));
        }
        if with_values {
            if let Some(v) = &a.value {
                if !valid_attr_value(v) {
                    return Err(ApiError::invalid(format!(
                        "Invalid value '{v}' for attribute '{}': use 1-128 letters, digits, hyphens, underscores, periods, at signs, slashes, backslashes, colons or spaces, without leading or trailing spaces.",
                        a.name
                    )));
                }
            }
        }
        let target = a.target_id.as_deref().unwrap_or("");
        if target.is_empty() {
            return Err(ApiError::invalid(format!(
                "Attribute '{}' needs a targetId (a container instance id or ARN).",
                a.name
            )));
        }
        if let Some(t) = a.target_type.as_deref() {
            if t != "container-instance" {
                return Err(ApiError::invalid(format!(
                    "Invalid targetType '{t}'. The only valid value is container-instance."
                )));
            }
        } else if !is_arn(target) {
            return Err(ApiError::invalid(format!(
                "Attribute '{}' names target '{target}' by id, so targetType container-instance is required.",
                a.name
            )));
        }
        let id = resolve_id(ctx, cluster, target, IdKind::ContainerInstance).map_err(|bad| {
            ApiError::new(
                berth_model::ErrorKind::TargetNotFoundException,
                format!("Could not find the specified target: {bad}."),
            )
        })?;
        out.push(Attribute {
            name: a.name.clone(),
            value: a.value.clone(),
            target_type: Some("container-instance".into()),
            target_id: Some(id),
        });
    }
    Ok(out)
}

pub(crate) async fn put_attributes(ctx: &Ctx, req: AttributesRequest) -> Result<Value, ApiError> {
    let cluster = cluster_of(&req.cluster)?;
    let given = req.attributes.unwrap_or_default();
    let attributes = attribute_targets(ctx, &cluster, &given, true)?;
    match propose(
        ctx,
        Command::PutAttributes {
            cluster,
            attributes,
        },
    )
    .await?
    {
        Response::Attributes { .. } => Ok(json!({ "attributes": to_value(&given)? })),
        other => Err(unexpected(other)),
    }
}

pub(crate) async fn delete_attributes(
    ctx: &Ctx,
    req: AttributesRequest,
) -> Result<Value, ApiError> {
    let cluster = cluster_of(&req.cluster)?;
    let given = req.attributes.unwrap_or_default();
    let attributes = attribute_targets(ctx, &cluster, &given, false)?;
    match propose(
        ctx,
        Command::DeleteAttributes {
            cluster,
            attributes,
        },
    )
    .await?
    {
        Response::Attributes { .. } => Ok(json!({ "attributes": to_value(&given)? })),
        other => Err(unexpected(other)),
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct ListAttributesRequest {
    cluster: Option<String>,
    target_type: Option<String>,
    attribute_name: Option<String>,
    attribute_value: Option<String>,
    next_token: Option<String>,
    max_results: Option<i64>,
}

pub(crate) async fn list_attributes(
    ctx: &Ctx,
    req: ListAttributesRequest,
) -> Result<Value, ApiError> {
    let cluster = cluster_of(&req.cluster)?;
    match req.target_type.as_deref() {
        Some("container-instance") => {}
        None | Some("") => {
            return Err(ApiError::invalid(
                "targetType is required. The only valid value is container-instance.",
            ))
        }
        Some(t) => {
            return Err(ApiError::invalid(format!(
                "Invalid targetType '{t}'. The only valid value is container-instance."
            )))
        }
    }
    if req.attribute_value.is_some() && req.attribute_name.is_none() {
        return Err(ApiError::invalid(
            "attributeValue can only be given together with attributeName.",
        ));
    }
    let max = check_max_results(req.max_results, 100)?;
    let after = decode_opt_token("ListAttributes", req.next_token.as_deref())?;
    ctx.node.read_barrier().await?;
    existing_cluster(ctx, &cluster, false)?;
    let mut all = Vec::new();
    for rec in ctx
        .node
        .reader
        .container_instances(&cluster)
        .map_err(store_err)?
    {
        if rec.status() == "INACTIVE" {
            continue;
        }
        for a in &rec.instance.attributes {
            if req.attribute_name.as_ref().is_some_and(|n| *n != a.name) {
                continue;
            }
            if req.attribute_value.is_some() && req.attribute_value != a.value {
                continue;
            }
            all.push((
                format!("{}\u{1}{}", rec.id(), a.name),
                Attribute {
                    name: a.name.clone(),
                    value: a.value.clone(),
                    target_type: Some("container-instance".into()),
                    target_id: rec.instance.container_instance_arn.clone(),
                },
            ));
        }
    }
    let (items, next) = page(all, after.as_deref(), max, "ListAttributes", |(k, _)| {
        k.clone()
    });
    let attrs: Vec<Attribute> = items.into_iter().map(|(_, a)| a).collect();
    Ok(with_token(json!({ "attributes": to_value(&attrs)? }), next))
}

// ---------------------------------------------------------------- tasks

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

fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Containers of a new task: ARN, name, image and their cpu/memory as strings.
fn containers_of(
    arn: &berth_model::ArnContext,
    cluster: &str,
    task_id: &str,
    td: &TaskDefinition,
    ov: &TaskOverride,
) -> Vec<Container> {
    td.container_definitions
        .iter()
        .map(|c| {
            let o = ov
                .container_overrides
                .iter()
                .flatten()
                .find(|o| o.name.is_some() && o.name == c.name);
            let cpu = o.and_then(|o| o.cpu).or(c.cpu).unwrap_or(0);
            Container {
                container_arn: Some(arn.container(
                    cluster,
                    task_id,
                    &uuid::Uuid::new_v4().to_string(),
                )),
                name: c.name.clone(),
                image: c.image.clone(),
                cpu: Some(cpu.to_string()),
                memory: o.and_then(|o| o.memory).or(c.memory).map(|m| m.to_string()),
                memory_reservation: o
                    .and_then(|o| o.memory_reservation)
                    .or(c.memory_reservation)
                    .map(|m| m.to_string()),
                network_interfaces: Some(vec![]),
                network_bindings: Some(vec![]),
                ..Default::default()
            }
        })
        .collect()
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
    build_new_task(
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
    )
}

/// A new task of `td` (with `overrides`) on `instance_id`, with fresh ids: what RunTask,
/// StartTask and the service controller propose.
#[allow(clippy::too_many_arguments)]
pub(crate) fn build_new_task(
    arn: &berth_model::ArnContext,
    cluster: &str,
    td: &TaskDefinition,
    overrides: &TaskOverride,
    group: &str,
    started_by: Option<String>,
    tags: Vec<Tag>,
    launch_type: &str,
    instance_id: &str,
    enable_execute_command: bool,
) -> NewTask {
    let task_id = new_id();
    NewTask {
        containers: containers_of(arn, cluster, &task_id, td, overrides),
        task_id,
        task_definition_arn: td.task_definition_arn.clone().unwrap_or_default(),
        family: td.family.clone(),
        revision: td.revision,
        instance_id: instance_id.to_string(),
        group: group.to_string(),
        started_by,
        overrides: TaskOverride {
            container_overrides: Some(overrides.container_overrides.clone().unwrap_or_default()),
            ..overrides.clone()
        },
        tags,
        cpu: overrides.cpu.clone().or_else(|| td.cpu.clone()),
        memory: overrides.memory.clone().or_else(|| td.memory.clone()),
        reservation: placement::reservation(td, overrides),
        network_mode: td.network_mode.clone(),
        launch_type: launch_type.to_string(),
        enable_execute_command,
    }
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
    match propose(ctx, cmd).await? {
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
        .node
        .reader
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
    ctx.node.read_barrier().await?;
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
        .node
        .reader
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
    ctx.node.read_barrier().await?;
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
            .node
            .reader
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
    match propose(ctx, cmd).await? {
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
    ctx.node.read_barrier().await?;
    existing_cluster(ctx, &cluster, false)?;
    let mut out: Vec<Task> = Vec::new();
    let mut failures = Vec::new();
    for w in &wanted {
        match resolve_id(ctx, &cluster, w, IdKind::Task) {
            Ok(id) => match ctx.node.reader.task(&cluster, &id).map_err(store_err)? {
                Some(rec) => {
                    let mut t = rec.task;
                    if include.iter().any(|i| i == "TAGS") {
                        let arn = t.task_arn.clone().unwrap_or_default();
                        t.tags = Some(ctx.node.reader.tags(&arn).map_err(store_err)?);
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
    ctx.node.read_barrier().await?;
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
    let reader = &ctx.node.reader;
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
        .node
        .reader
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
        .node
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
