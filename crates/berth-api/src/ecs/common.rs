//! What the ECS handlers share: naming things (a cluster by name or ARN, a task or
//! container instance by id or ARN), required members, and encoding answers.

use berth_model::{is_arn, parse_arn, ApiError, ResourceArn};
use berth_store::Response;
use serde_json::Value;

use crate::context::Ctx;

/// The `cluster` member: a name or ARN, `default` when absent.
pub(super) fn cluster_of(c: &Option<String>) -> Result<String, ApiError> {
    match c.as_deref() {
        None | Some("") => Ok("default".into()),
        Some(s) => berth_model::cluster_name_from(s),
    }
}

/// The cluster, which must exist (`ClusterNotFoundException`); `active` also refuses an
/// INACTIVE one.
pub(super) fn existing_cluster(ctx: &Ctx, name: &str, active: bool) -> Result<(), ApiError> {
    match ctx.reader().cluster(name).map_err(store_err)? {
        None => Err(ApiError::cluster_not_found()),
        Some(c) if active && c.status.as_deref() != Some("ACTIVE") => {
            Err(berth_store::command::inactive_cluster())
        }
        Some(_) => Ok(()),
    }
}

/// Which kind of id an `id or ARN` parameter names.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum IdKind {
    Task,
    ContainerInstance,
}

/// An id or a full ARN → (id, the ARN to report it under). An ARN of another cluster or
/// kind → `Err(the input)` (reported as MISSING by Describe*).
pub(super) fn resolve_id(
    ctx: &Ctx,
    cluster: &str,
    s: &str,
    kind: IdKind,
) -> Result<String, String> {
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

pub(super) fn resolve_or_invalid(
    ctx: &Ctx,
    cluster: &str,
    s: &str,
    kind: IdKind,
) -> Result<String, ApiError> {
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

pub(super) fn check_include(include: &[String], allowed: &[&str]) -> Result<(), ApiError> {
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

pub(crate) fn required<'a>(v: &'a Option<String>, name: &str) -> Result<&'a str, ApiError> {
    match v.as_deref() {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(ApiError::invalid(format!(
            "{name} is required and must not be empty."
        ))),
    }
}

pub(crate) fn store_err(e: berth_store::StoreError) -> ApiError {
    ApiError::server(format!("state store error: {e}"))
}

pub(crate) fn to_value<T: serde::Serialize>(v: &T) -> Result<Value, ApiError> {
    serde_json::to_value(v).map_err(|e| ApiError::server(format!("encode response: {e}")))
}

pub(crate) fn unexpected(r: Response) -> ApiError {
    ApiError::server(format!("unexpected state-machine response: {r:?}"))
}

pub(crate) fn with_token(mut v: Value, next: Option<String>) -> Value {
    if let (Some(t), Some(o)) = (next, v.as_object_mut()) {
        o.insert("nextToken".into(), Value::String(t));
    }
    v
}
