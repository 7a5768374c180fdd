//! ECS task definitions: register, describe, list (and families), deregister, delete.

use berth_model::{
    check_max_results, decode_opt_token, page, parse_task_definition_ref, validate_family,
    validate_register, ApiError, RegisterTaskDefinitionRequest, TaskDefinition,
};
use berth_store::{Command, Response};
use serde::Deserialize;
use serde_json::{json, Value};

use super::common::{required, store_err, to_value, unexpected, with_token};
use crate::context::Ctx;

pub(super) async fn register_task_definition(
    ctx: &Ctx,
    req: RegisterTaskDefinitionRequest,
) -> Result<Value, ApiError> {
    let spec = validate_register(req)?;
    let cmd = Command::RegisterTaskDefinition {
        ctx: ctx.cfg.ctx.clone(),
        spec,
        registered_at: ctx.now(),
        registered_by: format!("arn:aws:iam::{}:root", ctx.cfg.ctx.account_id),
    };
    match ctx.propose(cmd).await? {
        Response::TaskDefinition {
            task_definition,
            tags,
        } => {
            let mut v = json!({ "taskDefinition": to_value(&task_definition)? });
            if !tags.is_empty() {
                v["tags"] = to_value(&tags)?;
            }
            Ok(v)
        }
        other => Err(unexpected(other)),
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub(super) struct DescribeTaskDefinitionRequest {
    task_definition: Option<String>,
    include: Option<Vec<String>>,
}

pub(super) fn unable_to_describe() -> ApiError {
    ApiError::client("Unable to describe task definition.")
}

/// Resolves `family`, `family:revision` or an ARN against applied state.
pub(crate) fn resolve_task_definition(
    ctx: &Ctx,
    s: &str,
) -> Result<Option<TaskDefinition>, ApiError> {
    let r = parse_task_definition_ref(s)?;
    match r.revision {
        Some(rev) => ctx
            .reader()
            .task_definition(&r.family, rev)
            .map_err(store_err),
        None => ctx.reader().latest_active(&r.family).map_err(store_err),
    }
}

pub(super) async fn describe_task_definition(
    ctx: &Ctx,
    req: DescribeTaskDefinitionRequest,
) -> Result<Value, ApiError> {
    let s = required(&req.task_definition, "taskDefinition")?;
    let include = req.include.unwrap_or_default();
    if let Some(bad) = include.iter().find(|i| i.as_str() != "TAGS") {
        return Err(ApiError::invalid(format!(
            "Invalid include value '{bad}'. The only valid value is TAGS."
        )));
    }
    parse_task_definition_ref(s)?;
    ctx.cluster.read_barrier().await?;
    let td = resolve_task_definition(ctx, s)?.ok_or_else(unable_to_describe)?;
    let mut v = json!({ "taskDefinition": to_value(&td)? });
    if include.iter().any(|i| i == "TAGS") {
        let arn = td.task_definition_arn.clone().unwrap_or_default();
        v["tags"] = to_value(&ctx.reader().tags(&arn).map_err(store_err)?)?;
    }
    Ok(v)
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub(super) struct ListTaskDefinitionsRequest {
    family_prefix: Option<String>,
    status: Option<String>,
    sort: Option<String>,
    next_token: Option<String>,
    max_results: Option<i64>,
}

pub(super) fn td_key(td: &TaskDefinition) -> String {
    format!("{}\u{1}{:010}", td.family, td.revision)
}

pub(super) async fn list_task_definitions(
    ctx: &Ctx,
    req: ListTaskDefinitionsRequest,
) -> Result<Value, ApiError> {
    let status = req.status.unwrap_or_else(|| "ACTIVE".into());
    if !matches!(
        status.as_str(),
        "ACTIVE" | "INACTIVE" | "DELETE_IN_PROGRESS"
    ) {
        return Err(ApiError::invalid(format!(
            "Invalid status '{status}'. Valid values are ACTIVE, INACTIVE and DELETE_IN_PROGRESS."
        )));
    }
    let desc = match req.sort.as_deref() {
        None | Some("ASC") => false,
        Some("DESC") => true,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "Invalid sort '{other}'. Valid values are ASC and DESC."
            )))
        }
    };
    if let Some(f) = &req.family_prefix {
        validate_family(f)?;
    }
    let max = check_max_results(req.max_results, 100)?;
    let after = decode_opt_token("ListTaskDefinitions", req.next_token.as_deref())?;
    ctx.cluster.read_barrier().await?;
    let iter = ctx.reader().task_definitions(req.family_prefix.as_deref());
    let filtered = |r: Result<TaskDefinition, berth_store::StoreError>| match r {
        Ok(td) if td.status.as_deref() == Some(status.as_str()) => Some(Ok(td)),
        Ok(_) => None,
        Err(e) => Some(Err(e)),
    };
    let tds: Vec<TaskDefinition> = if desc {
        iter.rev()
            .filter_map(filtered)
            .collect::<Result<_, _>>()
            .map_err(store_err)?
    } else {
        iter.filter_map(filtered)
            .collect::<Result<_, _>>()
            .map_err(store_err)?
    };
    let (items, next) = page(tds, after.as_deref(), max, "ListTaskDefinitions", td_key);
    let arns: Vec<String> = items
        .into_iter()
        .filter_map(|t| t.task_definition_arn)
        .collect();
    Ok(with_token(json!({ "taskDefinitionArns": arns }), next))
}

pub(super) async fn list_task_definition_families(
    ctx: &Ctx,
    req: ListTaskDefinitionsRequest,
) -> Result<Value, ApiError> {
    let status = req.status.unwrap_or_else(|| "ALL".into());
    if !matches!(status.as_str(), "ACTIVE" | "INACTIVE" | "ALL") {
        return Err(ApiError::invalid(format!(
            "Invalid status '{status}'. Valid values are ACTIVE, INACTIVE and ALL."
        )));
    }
    let max = check_max_results(req.max_results, 100)?;
    let after = decode_opt_token("ListTaskDefinitionFamilies", req.next_token.as_deref())?;
    ctx.cluster.read_barrier().await?;
    let prefix = req.family_prefix.unwrap_or_default();
    let mut families = Vec::new();
    for f in ctx.reader().families().map_err(store_err)? {
        if !f.starts_with(&prefix) {
            continue;
        }
        let keep = if status == "ALL" {
            true
        } else {
            let mut any_active = false;
            for td in ctx.reader().task_definitions(Some(&f)) {
                if td.map_err(store_err)?.status.as_deref() == Some("ACTIVE") {
                    any_active = true;
                    break;
                }
            }
            any_active == (status == "ACTIVE")
        };
        if keep {
            families.push(f);
        }
    }
    let (items, next) = page(
        families,
        after.as_deref(),
        max,
        "ListTaskDefinitionFamilies",
        |f| f.clone(),
    );
    Ok(with_token(json!({ "families": items }), next))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub(super) struct DeregisterRequest {
    task_definition: Option<String>,
}

pub(super) async fn deregister_task_definition(
    ctx: &Ctx,
    req: DeregisterRequest,
) -> Result<Value, ApiError> {
    let s = required(&req.task_definition, "taskDefinition")?;
    let r = parse_task_definition_ref(s)?;
    let Some(revision) = r.revision else {
        return Err(ApiError::client(format!(
            "A revision is required to deregister a task definition: '{s}'. Use family:revision or the full ARN."
        )));
    };
    match ctx
        .propose(Command::DeregisterTaskDefinition {
            family: r.family,
            revision,
            at: ctx.now(),
        })
        .await?
    {
        Response::TaskDefinition {
            task_definition, ..
        } => Ok(json!({ "taskDefinition": to_value(&task_definition)? })),
        other => Err(unexpected(other)),
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub(super) struct DeleteTaskDefinitionsRequest {
    task_definitions: Option<Vec<String>>,
}

pub(super) async fn delete_task_definitions(
    ctx: &Ctx,
    req: DeleteTaskDefinitionsRequest,
) -> Result<Value, ApiError> {
    let list = req.task_definitions.unwrap_or_default();
    if list.is_empty() || list.len() > 10 {
        return Err(ApiError::invalid(format!(
            "taskDefinitions must name between 1 and 10 task definitions; {} were given.",
            list.len()
        )));
    }
    let mut items = Vec::new();
    for s in &list {
        let r = parse_task_definition_ref(s)?;
        let Some(revision) = r.revision else {
            return Err(ApiError::client(format!(
                "A revision is required to delete a task definition: '{s}'. Use family:revision or the full ARN."
            )));
        };
        items.push((r.family, revision));
    }
    match ctx
        .propose(Command::DeleteTaskDefinitions {
            ctx: ctx.cfg.ctx.clone(),
            items,
            at: ctx.now(),
        })
        .await?
    {
        Response::TaskDefinitions {
            task_definitions,
            failures,
        } => Ok(
            json!({ "taskDefinitions": to_value(&task_definitions)?, "failures": to_value(&failures)? }),
        ),
        other => Err(unexpected(other)),
    }
}
