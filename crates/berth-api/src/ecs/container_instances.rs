//! ECS container instances and their attributes: Describe/List/Deregister container
//! instances, UpdateContainerInstancesState, Put/Delete/ListAttributes.

use berth_model::cql::{self, InstanceView};
use berth_model::{
    check_max_results, decode_opt_token, is_arn, page, ApiError, Attribute, ContainerInstance,
    Failure,
};
use berth_scheduler::placement::Node;
use berth_store::{Command, Response};
use serde::Deserialize;
use serde_json::{json, Value};

use super::common::*;
use super::common::{required, store_err, to_value, unexpected, with_token};
use crate::context::Ctx;

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
    ctx.cluster.read_barrier().await?;
    existing_cluster(ctx, &cluster, false)?;
    let mut out = Vec::new();
    let mut failures = Vec::new();
    for w in &wanted {
        let rec = match resolve_id(ctx, &cluster, w, IdKind::ContainerInstance) {
            Ok(id) => match ctx
                .reader()
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
            ci.tags = Some(ctx.reader().tags(&arn).map_err(store_err)?);
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
        .reader()
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
    ctx.cluster.read_barrier().await?;
    existing_cluster(ctx, &cluster, false)?;
    let mut keep = Vec::new();
    for rec in ctx
        .reader()
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
    match ctx.propose(cmd).await? {
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
    match ctx.propose(cmd).await? {
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
    match ctx
        .propose(Command::PutAttributes {
            cluster,
            attributes,
        })
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
    match ctx
        .propose(Command::DeleteAttributes {
            cluster,
            attributes,
        })
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
    ctx.cluster.read_barrier().await?;
    existing_cluster(ctx, &cluster, false)?;
    let mut all = Vec::new();
    for rec in ctx
        .reader()
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
