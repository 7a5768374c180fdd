//! ECS clusters: CreateCluster, DescribeClusters, ListClusters, UpdateCluster, DeleteCluster.

use std::collections::BTreeSet;

use berth_model::{
    check_max_results, decode_opt_token, page, validate_cluster_name, validate_tags, ApiError,
    CapacityProviderStrategyItem, Cluster, ClusterSetting, Failure, KeyValuePair, Tag,
};
use berth_store::{Command, Response};
use serde::Deserialize;
use serde_json::{json, Value};

use super::common::{required, store_err, to_value, unexpected, with_token};
use crate::context::Ctx;

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub(super) struct CreateClusterRequest {
    cluster_name: Option<String>,
    tags: Option<Vec<Tag>>,
    settings: Option<Vec<ClusterSetting>>,
    configuration: Option<Value>,
    capacity_providers: Option<Vec<String>>,
    default_capacity_provider_strategy: Option<Vec<CapacityProviderStrategyItem>>,
    service_connect_defaults: Option<Value>,
}

pub(super) fn validate_settings(settings: &[ClusterSetting]) -> Result<(), ApiError> {
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

pub(super) async fn create_cluster(
    ctx: &Ctx,
    req: CreateClusterRequest,
) -> Result<Value, ApiError> {
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
    match ctx
        .propose(Command::CreateCluster { cluster, tags })
        .await?
    {
        Response::Cluster { cluster } => Ok(json!({ "cluster": to_value(&cluster)? })),
        other => Err(unexpected(other)),
    }
}

pub(super) fn cluster_tags(ctx: &Ctx, c: &Cluster) -> Result<Vec<Tag>, ApiError> {
    ctx.reader()
        .tags(c.cluster_arn.as_deref().unwrap_or_default())
        .map_err(store_err)
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub(super) struct DescribeClustersRequest {
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
pub(super) fn statistics(c: &berth_store::ClusterCounts) -> Vec<KeyValuePair> {
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

pub(super) async fn describe_clusters(
    ctx: &Ctx,
    req: DescribeClustersRequest,
) -> Result<Value, ApiError> {
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
    ctx.cluster.read_barrier().await?;
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
        match ctx.reader().cluster(&name).map_err(store_err)? {
            None => failures.push(Failure {
                arn: Some(ctx.cfg.ctx.cluster(&name)),
                reason: Some("MISSING".into()),
                detail: None,
            }),
            Some(mut c) => {
                let counts = ctx.reader().cluster_counts(&name).map_err(store_err)?;
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
pub(super) struct ListRequest {
    next_token: Option<String>,
    max_results: Option<i64>,
}

pub(super) async fn list_clusters(ctx: &Ctx, req: ListRequest) -> Result<Value, ApiError> {
    let max = check_max_results(req.max_results, 100)?;
    let after = decode_opt_token("ListClusters", req.next_token.as_deref())?;
    ctx.cluster.read_barrier().await?;
    let active: Vec<Cluster> = ctx
        .reader()
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

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub(super) struct ClusterRef {
    cluster: Option<String>,
}

pub(super) async fn delete_cluster(ctx: &Ctx, req: ClusterRef) -> Result<Value, ApiError> {
    let name = berth_model::cluster_name_from(required(&req.cluster, "cluster")?)?;
    match ctx.propose(Command::DeleteCluster { name }).await? {
        Response::Cluster { cluster } => Ok(json!({ "cluster": to_value(&cluster)? })),
        other => Err(unexpected(other)),
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub(super) struct UpdateClusterRequest {
    cluster: Option<String>,
    settings: Option<Vec<ClusterSetting>>,
    configuration: Option<Value>,
    service_connect_defaults: Option<Value>,
}

pub(super) async fn update_cluster(
    ctx: &Ctx,
    req: UpdateClusterRequest,
) -> Result<Value, ApiError> {
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
    match ctx.propose(cmd).await? {
        Response::Cluster { cluster } => Ok(json!({ "cluster": to_value(&cluster)? })),
        other => Err(unexpected(other)),
    }
}

/// Creates the cluster `name` unless it exists and is ACTIVE (used by `berth dev` for `default`).
pub async fn ensure_cluster(
    node: &dyn berth_store::Replica,
    arn: &berth_model::ArnContext,
    name: &str,
) -> Result<(), ApiError> {
    node.read_barrier().await?;
    if let Some(c) = node.reader().cluster(name).map_err(store_err)? {
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
        .propose(Command::CreateCluster {
            cluster,
            tags: vec![],
        })
        .await?
    {
        Response::Error { error } => Err(error),
        _ => Ok(()),
    }
}
