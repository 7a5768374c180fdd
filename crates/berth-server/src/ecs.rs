//! ECS operations: decode and validate, propose or read, encode. Nothing else.

use std::collections::BTreeSet;

use berth_model::{
    check_max_results, decode_opt_token, page, parse_arn, parse_task_definition_ref,
    validate_cluster_name, validate_family, validate_register, validate_tag_keys, validate_tags,
    ApiError, CapacityProviderStrategyItem, Cluster, ClusterSetting, ErrorKind, Failure,
    KeyValuePair, RegisterTaskDefinitionRequest, ResourceArn, Tag, TaskDefinition,
};
use berth_store::{Command, Response, TagTarget};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::Ctx;
use crate::{ecs_services, ecs_tasks};

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body: &[u8] = if body.iter().all(|b| b.is_ascii_whitespace()) {
        b"{}"
    } else {
        body
    };
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() || path == "." {
            ApiError::serialization(format!("The request body is not valid JSON: {inner}"))
        } else {
            ApiError::serialization(format!("Invalid value for '{path}': {inner}"))
        }
    })
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

pub async fn dispatch(ctx: &Ctx, op: &str, body: &[u8]) -> Result<Value, ApiError> {
    match op {
        "CreateCluster" => create_cluster(ctx, parse(body)?).await,
        "DescribeClusters" => describe_clusters(ctx, parse(body)?).await,
        "ListClusters" => list_clusters(ctx, parse(body)?).await,
        "DeleteCluster" => delete_cluster(ctx, parse(body)?).await,
        "UpdateCluster" => update_cluster(ctx, parse(body)?).await,
        "RegisterTaskDefinition" => register_task_definition(ctx, parse(body)?).await,
        "DescribeTaskDefinition" => describe_task_definition(ctx, parse(body)?).await,
        "ListTaskDefinitions" => list_task_definitions(ctx, parse(body)?).await,
        "ListTaskDefinitionFamilies" => list_task_definition_families(ctx, parse(body)?).await,
        "DeregisterTaskDefinition" => deregister_task_definition(ctx, parse(body)?).await,
        "DeleteTaskDefinitions" => delete_task_definitions(ctx, parse(body)?).await,
        "TagResource" => tag_resource(ctx, parse(body)?).await,
        "UntagResource" => untag_resource(ctx, parse(body)?).await,
        "GetTaskLogs" => crate::ecs_tasks::get_task_logs(ctx, parse(body)?).await,
        "ListTagsForResource" => list_tags_for_resource(ctx, parse(body)?).await,
        "DescribeContainerInstances" => {
            ecs_tasks::describe_container_instances(ctx, parse(body)?).await
        }
        "ListContainerInstances" => ecs_tasks::list_container_instances(ctx, parse(body)?).await,
        "DeregisterContainerInstance" => {
            ecs_tasks::deregister_container_instance(ctx, parse(body)?).await
        }
        "UpdateContainerInstancesState" => {
            ecs_tasks::update_container_instances_state(ctx, parse(body)?).await
        }
        "PutAttributes" => ecs_tasks::put_attributes(ctx, parse(body)?).await,
        "DeleteAttributes" => ecs_tasks::delete_attributes(ctx, parse(body)?).await,
        "ListAttributes" => ecs_tasks::list_attributes(ctx, parse(body)?).await,
        "RunTask" => ecs_tasks::run_task(ctx, parse(body)?).await,
        "StartTask" => ecs_tasks::start_task(ctx, parse(body)?).await,
        "StopTask" => ecs_tasks::stop_task(ctx, parse(body)?).await,
        "DescribeTasks" => ecs_tasks::describe_tasks(ctx, parse(body)?).await,
        "ListTasks" => ecs_tasks::list_tasks(ctx, parse(body)?).await,
        "CreateService" => ecs_services::create_service(ctx, parse(body)?).await,
        "UpdateService" => ecs_services::update_service(ctx, parse(body)?).await,
        "DeleteService" => ecs_services::delete_service(ctx, parse(body)?).await,
        "DescribeServices" => ecs_services::describe_services(ctx, parse(body)?).await,
        "ListServices" => ecs_services::list_services(ctx, parse(body)?).await,
        "ListServiceDeployments" => ecs_services::list_service_deployments(ctx, parse(body)?).await,
        "DescribeServiceDeployments" => {
            ecs_services::describe_service_deployments(ctx, parse(body)?).await
        }
        other => Err(ApiError::new(
            ErrorKind::UnknownOperationException,
            format!("Operation '{other}' is not supported by this berth server."),
        )),
    }
}

/// The result of a proposed command, or its deterministic refusal.
pub(crate) async fn propose(ctx: &Ctx, cmd: Command) -> Result<Response, ApiError> {
    match ctx.node.write(cmd).await? {
        Response::Error { error } => Err(error),
        r => Ok(r),
    }
}

// ---------------------------------------------------------------- clusters

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct CreateClusterRequest {
    cluster_name: Option<String>,
    tags: Option<Vec<Tag>>,
    settings: Option<Vec<ClusterSetting>>,
    configuration: Option<Value>,
    capacity_providers: Option<Vec<String>>,
    default_capacity_provider_strategy: Option<Vec<CapacityProviderStrategyItem>>,
    service_connect_defaults: Option<Value>,
}

fn validate_settings(settings: &[ClusterSetting]) -> Result<(), ApiError> {
    for s in settings {
        let name = s.name.as_deref().unwrap_or("");
        if name != "containerInsights" {
            return Err(ApiError::invalid(format!(
                "Invalid cluster setting name '{name}'. The only supported setting is 'containerInsights'."
            )));
        }
        let value = s.value.as_deref().unwrap_or("");
        if !matches!(value, "enhanced" | "enabled" | "disabled") {
            return Err(ApiError::invalid(format!(
                "Invalid value '{value}' for cluster setting containerInsights. Valid values are enhanced, enabled and disabled."
            )));
        }
    }
    Ok(())
}

async fn create_cluster(ctx: &Ctx, req: CreateClusterRequest) -> Result<Value, ApiError> {
    let name = req
        .cluster_name
        .clone()
        .unwrap_or_else(|| "default".to_string());
    validate_cluster_name(&name)?;
    let tags = req.tags.clone().unwrap_or_default();
    validate_tags(&tags)?;
    if let Some(s) = &req.settings {
        validate_settings(s)?;
    }
    if let Some(strategy) = &req.default_capacity_provider_strategy {
        for item in strategy {
            if item.capacity_provider.is_empty() {
                return Err(ApiError::invalid(
                    "defaultCapacityProviderStrategy[].capacityProvider is required.",
                ));
            }
        }
    }
    let cluster = Cluster {
        cluster_arn: Some(ctx.cfg.ctx.cluster(&name)),
        cluster_name: Some(name.clone()),
        status: Some("ACTIVE".into()),
        settings: req.settings.clone(),
        configuration: req.configuration.clone(),
        capacity_providers: req.capacity_providers.clone(),
        default_capacity_provider_strategy: req.default_capacity_provider_strategy.clone(),
        service_connect_defaults: req.service_connect_defaults.clone(),
        ..Default::default()
    };
    match propose(ctx, Command::CreateCluster { cluster, tags }).await? {
        Response::Cluster { cluster } => Ok(json!({ "cluster": to_value(&cluster)? })),
        other => Err(unexpected(other)),
    }
}

pub(crate) fn unexpected(r: Response) -> ApiError {
    ApiError::server(format!("unexpected state-machine response: {r:?}"))
}

fn cluster_tags(ctx: &Ctx, c: &Cluster) -> Result<Vec<Tag>, ApiError> {
    ctx.node
        .reader
        .tags(c.cluster_arn.as_deref().unwrap_or_default())
        .map_err(store_err)
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct DescribeClustersRequest {
    clusters: Option<Vec<String>>,
    include: Option<Vec<String>>,
}

const CLUSTER_FIELDS: [&str; 5] = [
    "ATTACHMENTS",
    "CONFIGURATIONS",
    "SETTINGS",
    "STATISTICS",
    "TAGS",
];

/// `statistics` (every berth task and service counts as EC2; there is no Fargate).
fn statistics(c: &berth_store::ClusterCounts) -> Vec<KeyValuePair> {
    [
        ("runningEC2TasksCount", c.running_tasks),
        ("runningFargateTasksCount", 0),
        ("pendingEC2TasksCount", c.pending_tasks),
        ("pendingFargateTasksCount", 0),
        ("activeEC2ServiceCount", c.active_services),
        ("activeFargateServiceCount", 0),
        ("drainingEC2ServiceCount", c.draining_services),
        ("drainingFargateServiceCount", 0),
    ]
    .iter()
    .map(|(n, v)| KeyValuePair {
        name: Some(n.to_string()),
        value: Some(v.to_string()),
    })
    .collect()
}

async fn describe_clusters(ctx: &Ctx, req: DescribeClustersRequest) -> Result<Value, ApiError> {
    let include: BTreeSet<String> = req.include.unwrap_or_default().into_iter().collect();
    for f in &include {
        if !CLUSTER_FIELDS.contains(&f.as_str()) {
            return Err(ApiError::invalid(format!(
                "Invalid include value '{f}'. Valid values are {}.",
                CLUSTER_FIELDS.join(", ")
            )));
        }
    }
    let wanted = req.clusters.unwrap_or_else(|| vec!["default".into()]);
    if wanted.len() > 100 {
        return Err(ApiError::invalid(format!(
            "At most 100 clusters can be described at once; {} were given.",
            wanted.len()
        )));
    }
    ctx.node.read_barrier().await?;
    let mut clusters = Vec::new();
    let mut failures = Vec::new();
    for w in wanted {
        let name = match berth_model::cluster_name_from(&w) {
            Ok(n) => n,
            Err(_) => {
                failures.push(Failure {
                    arn: Some(w.clone()),
                    reason: Some("MISSING".into()),
                    detail: None,
                });
                continue;
            }
        };
        match ctx.node.reader.cluster(&name).map_err(store_err)? {
            None => failures.push(Failure {
                arn: Some(ctx.cfg.ctx.cluster(&name)),
                reason: Some("MISSING".into()),
                detail: None,
            }),
            Some(mut c) => {
                let counts = ctx.node.reader.cluster_counts(&name).map_err(store_err)?;
                c.registered_container_instances_count = counts.registered_container_instances;
                c.running_tasks_count = counts.running_tasks;
                c.pending_tasks_count = counts.pending_tasks;
                c.active_services_count = counts.active_services;
                if include.contains("TAGS") {
                    let tags = cluster_tags(ctx, &c)?;
                    c.tags = Some(tags);
                }
                if include.contains("STATISTICS") {
                    c.statistics = Some(statistics(&counts));
                }
                if !include.contains("SETTINGS") {
                    c.settings = None;
                }
                if !include.contains("CONFIGURATIONS") {
                    c.configuration = None;
                }
                clusters.push(c);
            }
        }
    }
    Ok(json!({ "clusters": to_value(&clusters)?, "failures": to_value(&failures)? }))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct ListRequest {
    next_token: Option<String>,
    max_results: Option<i64>,
}

async fn list_clusters(ctx: &Ctx, req: ListRequest) -> Result<Value, ApiError> {
    let max = check_max_results(req.max_results, 100)?;
    let after = decode_opt_token("ListClusters", req.next_token.as_deref())?;
    ctx.node.read_barrier().await?;
    let active: Vec<Cluster> = ctx
        .node
        .reader
        .clusters()
        .map_err(store_err)?
        .into_iter()
        .filter(|c| c.status.as_deref() == Some("ACTIVE"))
        .collect();
    let (items, next) = page(active, after.as_deref(), max, "ListClusters", |c| {
        c.cluster_name.clone().unwrap_or_default()
    });
    let arns: Vec<String> = items.into_iter().filter_map(|c| c.cluster_arn).collect();
    Ok(with_token(json!({ "clusterArns": arns }), next))
}

pub(crate) fn with_token(mut v: Value, next: Option<String>) -> Value {
    if let (Some(t), Some(o)) = (next, v.as_object_mut()) {
        o.insert("nextToken".into(), Value::String(t));
    }
    v
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct ClusterRef {
    cluster: Option<String>,
}

async fn delete_cluster(ctx: &Ctx, req: ClusterRef) -> Result<Value, ApiError> {
    let name = berth_model::cluster_name_from(required(&req.cluster, "cluster")?)?;
    match propose(ctx, Command::DeleteCluster { name }).await? {
        Response::Cluster { cluster } => Ok(json!({ "cluster": to_value(&cluster)? })),
        other => Err(unexpected(other)),
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct UpdateClusterRequest {
    cluster: Option<String>,
    settings: Option<Vec<ClusterSetting>>,
    configuration: Option<Value>,
    service_connect_defaults: Option<Value>,
}

async fn update_cluster(ctx: &Ctx, req: UpdateClusterRequest) -> Result<Value, ApiError> {
    let name = berth_model::cluster_name_from(required(&req.cluster, "cluster")?)?;
    if let Some(s) = &req.settings {
        validate_settings(s)?;
    }
    let cmd = Command::UpdateCluster {
        name,
        settings: req.settings,
        configuration: req.configuration,
        service_connect_defaults: req.service_connect_defaults,
    };
    match propose(ctx, cmd).await? {
        Response::Cluster { cluster } => Ok(json!({ "cluster": to_value(&cluster)? })),
        other => Err(unexpected(other)),
    }
}

// ---------------------------------------------------------------- task definitions

async fn register_task_definition(
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
    match propose(ctx, cmd).await? {
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
struct DescribeTaskDefinitionRequest {
    task_definition: Option<String>,
    include: Option<Vec<String>>,
}

fn unable_to_describe() -> ApiError {
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
            .node
            .reader
            .task_definition(&r.family, rev)
            .map_err(store_err),
        None => ctx.node.reader.latest_active(&r.family).map_err(store_err),
    }
}

async fn describe_task_definition(
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
    ctx.node.read_barrier().await?;
    let td = resolve_task_definition(ctx, s)?.ok_or_else(unable_to_describe)?;
    let mut v = json!({ "taskDefinition": to_value(&td)? });
    if include.iter().any(|i| i == "TAGS") {
        let arn = td.task_definition_arn.clone().unwrap_or_default();
        v["tags"] = to_value(&ctx.node.reader.tags(&arn).map_err(store_err)?)?;
    }
    Ok(v)
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct ListTaskDefinitionsRequest {
    family_prefix: Option<String>,
    status: Option<String>,
    sort: Option<String>,
    next_token: Option<String>,
    max_results: Option<i64>,
}

fn td_key(td: &TaskDefinition) -> String {
    format!("{}\u{1}{:010}", td.family, td.revision)
}

async fn list_task_definitions(
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
    ctx.node.read_barrier().await?;
    let iter = ctx
        .node
        .reader
        .task_definitions(req.family_prefix.as_deref());
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

async fn list_task_definition_families(
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
    ctx.node.read_barrier().await?;
    let prefix = req.family_prefix.unwrap_or_default();
    let mut families = Vec::new();
    for f in ctx.node.reader.families().map_err(store_err)? {
        if !f.starts_with(&prefix) {
            continue;
        }
        let keep = if status == "ALL" {
            true
        } else {
            let mut any_active = false;
            for td in ctx.node.reader.task_definitions(Some(&f)) {
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
struct DeregisterRequest {
    task_definition: Option<String>,
}

async fn deregister_task_definition(ctx: &Ctx, req: DeregisterRequest) -> Result<Value, ApiError> {
    let s = required(&req.task_definition, "taskDefinition")?;
    let r = parse_task_definition_ref(s)?;
    let Some(revision) = r.revision else {
        return Err(ApiError::client(format!(
            "A revision is required to deregister a task definition: '{s}'. Use family:revision or the full ARN."
        )));
    };
    match propose(
        ctx,
        Command::DeregisterTaskDefinition {
            family: r.family,
            revision,
            at: ctx.now(),
        },
    )
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
struct DeleteTaskDefinitionsRequest {
    task_definitions: Option<Vec<String>>,
}

async fn delete_task_definitions(
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
    match propose(
        ctx,
        Command::DeleteTaskDefinitions {
            ctx: ctx.cfg.ctx.clone(),
            items,
            at: ctx.now(),
        },
    )
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

// ---------------------------------------------------------------- tags

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct TagRequest {
    resource_arn: Option<String>,
    tags: Option<Vec<Tag>>,
    tag_keys: Option<Vec<String>>,
}

fn not_found(arn: &str) -> ApiError {
    ApiError::new(
        ErrorKind::ResourceNotFoundException,
        format!("The specified resource was not found: {arn}"),
    )
}

/// Maps an ARN to the resource it names in this cluster.
/// Maps an ARN to the resource it names in this cluster, and to the canonical ARN its tags
/// are kept under (so `auth:01` and `auth:1` are the same resource).
fn tag_target(ctx: &Ctx, arn: &str) -> Result<(String, TagTarget), ApiError> {
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

async fn tag_resource(ctx: &Ctx, req: TagRequest) -> Result<Value, ApiError> {
    let arn = required(&req.resource_arn, "resourceArn")?.to_string();
    let tags = req.tags.unwrap_or_default();
    validate_tags(&tags)?;
    let (arn, target) = tag_target(ctx, &arn)?;
    propose(ctx, Command::TagResource { arn, target, tags }).await?;
    Ok(json!({}))
}

async fn untag_resource(ctx: &Ctx, req: TagRequest) -> Result<Value, ApiError> {
    let arn = required(&req.resource_arn, "resourceArn")?.to_string();
    let keys = req.tag_keys.unwrap_or_default();
    validate_tag_keys(&keys)?;
    let (arn, target) = tag_target(ctx, &arn)?;
    propose(ctx, Command::UntagResource { arn, target, keys }).await?;
    Ok(json!({}))
}

async fn list_tags_for_resource(ctx: &Ctx, req: TagRequest) -> Result<Value, ApiError> {
    let given = required(&req.resource_arn, "resourceArn")?.to_string();
    let (arn, target) = tag_target(ctx, &given)?;
    ctx.node.read_barrier().await?;
    let exists = match &target {
        TagTarget::Cluster { name } => {
            let c = ctx.node.reader.cluster(name).map_err(store_err)?;
            if c.is_none() {
                return Err(ApiError::cluster_not_found());
            }
            true
        }
        TagTarget::TaskDefinition { family, revision } => ctx
            .node
            .reader
            .task_definition(family, *revision)
            .map_err(store_err)?
            .is_some_and(|td| td.status.as_deref() != Some("DELETE_IN_PROGRESS")),
        TagTarget::Service { cluster, name } => ctx
            .node
            .reader
            .service(cluster, name)
            .map_err(store_err)?
            .is_some_and(|s| s.service.status != "INACTIVE"),
    };
    if !exists {
        return Err(not_found(&given));
    }
    Ok(json!({ "tags": to_value(&ctx.node.reader.tags(&arn).map_err(store_err)?)? }))
}

/// Creates the cluster `name` unless it exists and is ACTIVE (used by `berth dev` for `default`).
pub async fn ensure_cluster(
    node: &crate::node::ServerNode,
    arn: &berth_model::ArnContext,
    name: &str,
) -> Result<(), ApiError> {
    node.read_barrier().await?;
    if let Some(c) = node.reader.cluster(name).map_err(store_err)? {
        if c.status.as_deref() == Some("ACTIVE") {
            return Ok(());
        }
    }
    let cluster = Cluster {
        cluster_arn: Some(arn.cluster(name)),
        cluster_name: Some(name.to_string()),
        status: Some("ACTIVE".into()),
        ..Default::default()
    };
    match node
        .write(Command::CreateCluster {
            cluster,
            tags: vec![],
        })
        .await?
    {
        Response::Error { error } => Err(error),
        _ => Ok(()),
    }
}
