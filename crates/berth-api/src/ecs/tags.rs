//! Tags on ECS resources: TagResource, UntagResource, ListTagsForResource.

use berth_model::{
    parse_arn, validate_tag_keys, validate_tags, ApiError, ErrorKind, ResourceArn, Tag,
};
use berth_store::{Command, TagTarget};
use serde::Deserialize;
use serde_json::{json, Value};

use super::common::{required, store_err, to_value};
use crate::context::Ctx;

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub(super) struct TagRequest {
    resource_arn: Option<String>,
    tags: Option<Vec<Tag>>,
    tag_keys: Option<Vec<String>>,
}

pub(super) fn not_found(arn: &str) -> ApiError {
    ApiError::new(
        ErrorKind::ResourceNotFoundException,
        format!("The specified resource was not found: {arn}"),
    )
}

/// Maps an ARN to the resource it names in this cluster.
/// Maps an ARN to the resource it names in this cluster, and to the canonical ARN its tags
/// are kept under (so `auth:01` and `auth:1` are the same resource).
pub(super) fn tag_target(ctx: &Ctx, arn: &str) -> Result<(String, TagTarget), ApiError> {
    let parsed = parse_arn(arn)?;
    if parsed.region != ctx.cfg.ctx.region || parsed.account_id != ctx.cfg.ctx.account_id {
        return Err(not_found(arn));
    }
    let canonical = ctx.cfg.ctx.format(&parsed.resource);
    match parsed.resource {
        ResourceArn::Cluster { name } => Ok((canonical, TagTarget::Cluster { name })),
        ResourceArn::TaskDefinition { family, revision } => {
            Ok((canonical, TagTarget::TaskDefinition { family, revision }))
        }
        ResourceArn::Service { cluster, name } => {
            Ok((canonical, TagTarget::Service { cluster, name }))
        }
        // Tasks and container instances arrive with later issues.
        _ => Err(not_found(arn)),
    }
}

pub(super) async fn tag_resource(ctx: &Ctx, req: TagRequest) -> Result<Value, ApiError> {
    let arn = required(&req.resource_arn, "resourceArn")?.to_string();
    let tags = req.tags.unwrap_or_default();
    validate_tags(&tags)?;
    let (arn, target) = tag_target(ctx, &arn)?;
    ctx.propose(Command::TagResource { arn, target, tags })
        .await?;
    Ok(json!({}))
}

pub(super) async fn untag_resource(ctx: &Ctx, req: TagRequest) -> Result<Value, ApiError> {
    let arn = required(&req.resource_arn, "resourceArn")?.to_string();
    let keys = req.tag_keys.unwrap_or_default();
    validate_tag_keys(&keys)?;
    let (arn, target) = tag_target(ctx, &arn)?;
    ctx.propose(Command::UntagResource { arn, target, keys })
        .await?;
    Ok(json!({}))
}

pub(super) async fn list_tags_for_resource(ctx: &Ctx, req: TagRequest) -> Result<Value, ApiError> {
    let given = required(&req.resource_arn, "resourceArn")?.to_string();
    let (arn, target) = tag_target(ctx, &given)?;
    ctx.cluster.read_barrier().await?;
    let exists = match &target {
        TagTarget::Cluster { name } => {
            let c = ctx.reader().cluster(name).map_err(store_err)?;
            if c.is_none() {
                return Err(ApiError::cluster_not_found());
            }
            true
        }
        TagTarget::TaskDefinition { family, revision } => ctx
            .reader()
            .task_definition(family, *revision)
            .map_err(store_err)?
            .is_some_and(|td| td.status.as_deref() != Some("DELETE_IN_PROGRESS")),
        TagTarget::Service { cluster, name } => ctx
            .reader()
            .service(cluster, name)
            .map_err(store_err)?
            .is_some_and(|s| s.service.status != "INACTIVE"),
    };
    if !exists {
        return Err(not_found(&given));
    }
    Ok(json!({ "tags": to_value(&ctx.reader().tags(&arn).map_err(store_err)?)? }))
}
