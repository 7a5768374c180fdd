//! ECS operations on services (reference §6.4, §9): decode and validate, build the record
//! (ARN, defaults, first deployment), propose or read, encode. Time and random ids
//! (deployment ids) are made here and travel inside the commands.
//!
//! Updates are conditional on the record's version (`PutService`): when the controller
//! wrote the service in between, the update is recomputed from the new record and
//! proposed again (a few times), so neither side's change is lost.
//!
//! Counts that follow from tasks (`runningCount`, `pendingCount`, per deployment and in
//! total) are computed here from the service's tasks (the group index) on every read.

use berth_model::{
    check_max_results, decode_opt_token, is_arn, page, parse_arn, validate_service_name,
    validate_tags, ApiError, DeploymentAlarms, DeploymentCircuitBreaker, DeploymentConfiguration,
    DeploymentController, DeploymentHistory, Failure, LoadBalancer, PlacementConstraint,
    PlacementStrategy, ResourceArn, Service, ServiceRecord, ServiceRegistry, Tag, TaskDefinition,
    TaskRecord,
};
use berth_store::{Command, Response};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::common::{required, store_err, to_value, unexpected, with_token};
use super::task_definitions::resolve_task_definition;
use crate::context::Ctx;

/// How often an update is recomputed when the service changed under it.
const PUT_ATTEMPTS: usize = 5;

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
    match ctx.reader().cluster(name).map_err(store_err)? {
        None => Err(ApiError::cluster_not_found()),
        Some(c) if active && c.status.as_deref() != Some("ACTIVE") => {
            Err(berth_store::command::inactive_cluster())
        }
        Some(_) => Ok(()),
    }
}

/// A `service` member (a name or a service ARN) in `cluster` → the service name, or
/// `Err(the input)` when it cannot name a service of that cluster.
fn service_name_in(cluster: &str, s: &str) -> Result<String, String> {
    if is_arn(s) {
        match parse_arn(s).map(|p| p.resource) {
            Ok(ResourceArn::Service { cluster: c, name }) if c == cluster => Ok(name),
            _ => Err(s.to_string()),
        }
    } else if validate_service_name(s).is_ok() {
        Ok(s.to_string())
    } else {
        Err(s.to_string())
    }
}

/// The (cluster, service name) an Update/Delete/ListServiceDeployments request names.
/// Without a `cluster` member a service ARN names its own cluster.
fn target_of(
    cluster: &Option<String>,
    service: &Option<String>,
) -> Result<(String, String), ApiError> {
    let given = required(service, "service")?;
    let cluster = match (cluster.as_deref(), parse_arn(given).map(|p| p.resource)) {
        (None | Some(""), Ok(ResourceArn::Service { cluster, .. })) => cluster,
        _ => cluster_of(cluster)?,
    };
    let name = service_name_in(&cluster, given).map_err(|_| ApiError::service_not_found())?;
    Ok((cluster, name))
}

/// `ecs-svc/` and 19 random digits.
fn new_deployment_id() -> String {
    let n = uuid::Uuid::new_v4().as_u128();
    let digits = (n % 9_000_000_000_000_000_000) as u64 + 1_000_000_000_000_000_000;
    format!("ecs-svc/{digits}")
}

fn deployment_digits(id: &str) -> &str {
    id.strip_prefix("ecs-svc/").unwrap_or(id)
}

/// `arn:aws:ecs:{region}:{account}:service-deployment/{cluster}/{service}/{digits}`
fn service_deployment_arn(ctx: &Ctx, cluster: &str, service: &str, id: &str) -> String {
    format!(
        "arn:aws:ecs:{}:{}:service-deployment/{cluster}/{service}/{}",
        ctx.cfg.ctx.region,
        ctx.cfg.ctx.account_id,
        deployment_digits(id)
    )
}

/// `arn:aws:ecs:{region}:{account}:service-revision/{cluster}/{service}/{digits}`
fn service_revision_arn(ctx: &Ctx, cluster: &str, service: &str, id: &str) -> String {
    format!(
        "arn:aws:ecs:{}:{}:service-revision/{cluster}/{service}/{}",
        ctx.cfg.ctx.region,
        ctx.cfg.ctx.account_id,
        deployment_digits(id)
    )
}

// ---------------------------------------------------------------- request members

#[derive(Deserialize, Default, Clone)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct CircuitBreakerIn {
    enable: Option<bool>,
    rollback: Option<bool>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct AlarmsIn {
    alarm_names: Option<Vec<String>>,
    enable: Option<bool>,
    rollback: Option<bool>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct DeploymentConfigurationIn {
    deployment_circuit_breaker: Option<CircuitBreakerIn>,
    maximum_percent: Option<i64>,
    minimum_healthy_percent: Option<i64>,
    alarms: Option<AlarmsIn>,
    strategy: Option<String>,
}

/// The defaults ECS fills in: REPLICA 200/100, DAEMON 100/0, circuit breaker off.
fn default_deployment_configuration(daemon: bool) -> DeploymentConfiguration {
    DeploymentConfiguration {
        deployment_circuit_breaker: Some(DeploymentCircuitBreaker::default()),
        maximum_percent: Some(if daemon { 100 } else { 200 }),
        minimum_healthy_percent: Some(if daemon { 0 } else { 100 }),
        alarms: None,
        strategy: None,
    }
}

/// `given` over `base`, validated for the scheduling strategy.
fn merge_deployment_configuration(
    base: &DeploymentConfiguration,
    given: &DeploymentConfigurationIn,
    daemon: bool,
) -> Result<DeploymentConfiguration, ApiError> {
    let mut out = base.clone();
    if let Some(cb) = &given.deployment_circuit_breaker {
        let (Some(enable), Some(rollback)) = (cb.enable, cb.rollback) else {
            return Err(ApiError::invalid(
                "deploymentConfiguration.deploymentCircuitBreaker needs both enable and rollback.",
            ));
        };
        out.deployment_circuit_breaker = Some(DeploymentCircuitBreaker { enable, rollback });
    }
    if let Some(a) = &given.alarms {
        let (Some(names), Some(enable), Some(rollback)) =
            (a.alarm_names.clone(), a.enable, a.rollback)
        else {
            return Err(ApiError::invalid(
                "deploymentConfiguration.alarms needs alarmNames, enable and rollback.",
            ));
        };
        if enable {
            return Err(ApiError::invalid(
                "Deployment alarms (CloudWatch) are not supported by berth; set alarms.enable to false or leave alarms out.",
            ));
        }
        out.alarms = Some(DeploymentAlarms {
            alarm_names: names,
            enable,
            rollback,
        });
    }
    if let Some(s) = &given.strategy {
        if s != "ROLLING" {
            return Err(ApiError::invalid(format!(
                "Deployment strategy {s} is not supported by berth. Use ROLLING."
            )));
        }
        out.strategy = Some(s.clone());
    }
    if let Some(m) = given.maximum_percent {
        out.maximum_percent = Some(m);
    }
    if let Some(m) = given.minimum_healthy_percent {
        out.minimum_healthy_percent = Some(m);
    }
    let min = out.min_healthy_percent();
    if !(0..=100).contains(&min) {
        return Err(ApiError::invalid(format!(
            "Invalid minimumHealthyPercent: {min}. minimumHealthyPercent must be between 0 and 100."
        )));
    }
    let max = out.max_percent();
    if daemon {
        if max > 100 {
            return Err(ApiError::invalid(
                "The daemon scheduling strategy does not support values above 100 for maximumPercent on a deployment configuration. Change the maximumPercent value to 100, and try again",
            ));
        }
        if max < 0 {
            return Err(ApiError::invalid(format!(
                "Invalid maximumPercent: {max}. maximumPercent must be between 0 and 100 for the DAEMON scheduling strategy."
            )));
        }
    } else if !(100..=i32::MAX as i64).contains(&max) {
        return Err(ApiError::invalid(format!(
            "Invalid maximumPercent: {max}. For the REPLICA scheduling strategy maximumPercent must be at least 100."
        )));
    }
    Ok(out)
}

fn check_desired_count(n: i64) -> Result<(), ApiError> {
    if !(0..=i32::MAX as i64).contains(&n) {
        return Err(ApiError::invalid(format!(
            "Invalid desiredCount: {n}. desiredCount must be 0 or more."
        )));
    }
    Ok(())
}

fn check_grace_period(n: Option<i64>) -> Result<(), ApiError> {
    match n {
        Some(n) if !(0..=i32::MAX as i64).contains(&n) => Err(ApiError::invalid(format!(
            "Invalid healthCheckGracePeriodSeconds: {n}. It must be between 0 and 2147483647."
        ))),
        _ => Ok(()),
    }
}

fn check_propagate_tags(p: &Option<String>) -> Result<(), ApiError> {
    match p.as_deref() {
        None | Some("TASK_DEFINITION" | "SERVICE" | "NONE") => Ok(()),
        Some(other) => Err(ApiError::invalid(format!(
            "Invalid propagateTags '{other}'. Valid values are TASK_DEFINITION, SERVICE and NONE."
        ))),
    }
}

fn check_deployment_controller(c: &Option<DeploymentController>) -> Result<(), ApiError> {
    match c.as_ref().map(|c| c.kind.as_deref()) {
        None | Some(Some("ECS")) => Ok(()),
        Some(Some(t @ ("CODE_DEPLOY" | "EXTERNAL"))) => Err(ApiError::invalid(format!(
            "Deployment controller type {t} is not supported by berth. Use ECS."
        ))),
        Some(t) => Err(ApiError::invalid(format!(
            "Invalid deploymentController type '{}'. Valid values are ECS, CODE_DEPLOY and EXTERNAL.",
            t.unwrap_or("")
        ))),
    }
}

fn check_capacity_providers(cps: &Option<Value>) -> Result<(), ApiError> {
    match cps {
        Some(Value::Array(a)) if a.is_empty() => Ok(()),
        None | Some(Value::Null) => Ok(()),
        Some(_) => Err(ApiError::invalid(
            "Capacity provider strategies are not supported by berth. Use launchType EC2 or EXTERNAL.",
        )),
    }
}

/// A task definition a service may run: it exists and is ACTIVE.
fn service_task_definition(ctx: &Ctx, s: &str) -> Result<TaskDefinition, ApiError> {
    match resolve_task_definition(ctx, s)? {
        None => Err(ApiError::invalid("TaskDefinition not found.")),
        Some(td) if td.status.as_deref() != Some("ACTIVE") => Err(ApiError::invalid(format!(
            "TaskDefinition is inactive: {}",
            td.task_definition_arn.as_deref().unwrap_or(s)
        ))),
        Some(td) => Ok(td),
    }
}

/// `loadBalancers[]`: target groups only (no Classic ELB); the container and port exist in
/// the task definition. Stored for the load balancer to use.
fn check_load_balancers(lbs: &[LoadBalancer], td: &TaskDefinition) -> Result<(), ApiError> {
    if lbs.len() > 5 {
        return Err(ApiError::invalid(format!(
            "A service can have at most 5 load balancers (target groups); {} were given.",
            lbs.len()
        )));
    }
    for lb in lbs {
        let Some(tg) = lb.target_group_arn.as_deref().filter(|s| !s.is_empty()) else {
            return Err(ApiError::invalid(if lb.load_balancer_name.is_some() {
                "Classic Load Balancers (loadBalancerName) are not supported by berth. Give targetGroupArn."
            } else {
                "loadBalancers[].targetGroupArn is required."
            }));
        };
        if !tg.starts_with("arn:") || !tg.contains(":targetgroup/") {
            return Err(ApiError::invalid(format!(
                "Invalid targetGroupArn '{tg}': expected arn:aws:elasticloadbalancing:<region>:<account>:targetgroup/<name>/<id>."
            )));
        }
        let name = lb.container_name.as_deref().unwrap_or("");
        if name.is_empty() {
            return Err(ApiError::invalid(
                "loadBalancers[].containerName is required.",
            ));
        }
        let Some(port) = lb.container_port else {
            return Err(ApiError::invalid(
                "loadBalancers[].containerPort is required.",
            ));
        };
        let Some(c) = td
            .container_definitions
            .iter()
            .find(|c| c.name.as_deref() == Some(name))
        else {
            return Err(ApiError::invalid(format!(
                "The container {name} does not exist in the task definition."
            )));
        };
        if !c
            .port_mappings
            .iter()
            .flatten()
            .any(|pm| pm.container_port == Some(port))
        {
            return Err(ApiError::invalid(format!(
                "The container {name} did not have a container port {port} defined."
            )));
        }
    }
    Ok(())
}

/// The target groups of `loadBalancers[]` exist and are used by a load balancer (ECS
/// refuses a target group without one), and the same group is not given twice.
fn check_target_groups(ctx: &Ctx, lbs: &[LoadBalancer]) -> Result<(), ApiError> {
    let mut seen = std::collections::BTreeSet::new();
    for lb in lbs {
        let Some(arn) = lb.target_group_arn.as_deref() else {
            continue;
        };
        let port = lb.container_port.unwrap_or_default();
        if !seen.insert((arn, lb.container_name.clone(), port)) {
            return Err(ApiError::invalid(format!(
                "The target group {arn} is given twice for the same container and port."
            )));
        }
        let Some(tg) = ctx.reader().elb_target_group(arn).map_err(store_err)? else {
            return Err(ApiError::invalid(format!(
                "The target group with targetGroupArn {arn} does not exist."
            )));
        };
        if tg.target_group.load_balancer_arns.is_empty() {
            return Err(ApiError::invalid(format!(
                "The target group with targetGroupArn {arn} does not have an associated load balancer."
            )));
        }
    }
    Ok(())
}

/// `serviceRegistries[]`: at most one, with its registry; a named container exists.
fn check_service_registries(regs: &[ServiceRegistry], td: &TaskDefinition) -> Result<(), ApiError> {
    if regs.len() > 1 {
        return Err(ApiError::invalid(format!(
            "A service can have at most 1 service registry; {} were given.",
            regs.len()
        )));
    }
    for r in regs {
        if r.registry_arn.as_deref().unwrap_or("").is_empty() {
            return Err(ApiError::invalid(
                "serviceRegistries[].registryArn is required.",
            ));
        }
        if let Some(name) = &r.container_name {
            if !td
                .container_definitions
                .iter()
                .any(|c| c.name.as_deref() == Some(name.as_str()))
            {
                return Err(ApiError::invalid(format!(
                    "The container {name} does not exist in the task definition."
                )));
            }
        }
    }
    Ok(())
}

/// Placement of a service: the constraints (with the task definition's, ≤10) and the
/// strategies (≤5, none for DAEMON), parsed as the scheduler will parse them.
fn check_placement(
    constraints: &[PlacementConstraint],
    strategies: &[PlacementStrategy],
    td: Option<&TaskDefinition>,
    daemon: bool,
) -> Result<(), ApiError> {
    if daemon && !strategies.is_empty() {
        return Err(ApiError::invalid(
            "Placement strategies are not supported with the DAEMON scheduling strategy.",
        ));
    }
    let mut all = constraints.to_vec();
    all.extend(
        td.and_then(|td| td.placement_constraints.as_ref())
            .into_iter()
            .flatten()
            .map(|c| PlacementConstraint {
                kind: c.r#type.clone(),
                expression: c.expression.clone(),
            }),
    );
    if all.len() > 10 {
        return Err(ApiError::invalid(format!(
            "At most 10 placement constraints are allowed, counting the task definition's; {} were given.",
            all.len()
        )));
    }
    if strategies.len() > 5 {
        return Err(ApiError::invalid(format!(
            "At most 5 placement strategies are allowed; {} were given.",
            strategies.len()
        )));
    }
    berth_scheduler::placement::parse_constraints(&all)?;
    berth_scheduler::placement::parse_strategies(strategies)?;
    Ok(())
}

fn role_arn(ctx: &Ctx, role: &Option<String>) -> Option<String> {
    role.as_deref().filter(|r| !r.is_empty()).map(|r| {
        if is_arn(r) {
            r.to_string()
        } else {
            format!("arn:aws:iam::{}:role/{r}", ctx.cfg.ctx.account_id)
        }
    })
}

// ---------------------------------------------------------------- views

fn live(t: &TaskRecord) -> bool {
    t.task.desired_status() == "RUNNING" && t.task.last_status() != "STOPPED"
}

/// (running, pending) tasks of one deployment.
fn deployment_counts(tasks: &[TaskRecord], id: &str) -> (i64, i64) {
    let mine = || {
        tasks
            .iter()
            .filter(move |t| t.task.started_by.as_deref() == Some(id))
    };
    let running = mine().filter(|t| t.task.last_status() == "RUNNING").count() as i64;
    let pending = mine()
        .filter(|t| live(t) && t.task.last_status() != "RUNNING")
        .count() as i64;
    (running, pending)
}

/// The service as DescribeServices shows it: counts computed from its tasks, the
/// current service deployment, and `tags` as given.
pub(crate) fn service_view(
    ctx: &Ctx,
    cluster: &str,
    rec: &ServiceRecord,
    tags: Option<Vec<Tag>>,
) -> Result<Service, ApiError> {
    let tasks = ctx
        .reader()
        .tasks_of_group(cluster, &rec.group())
        .map_err(store_err)?;
    let mut svc = rec.service.clone();
    let (mut running, mut pending) = (0, 0);
    for d in &mut svc.deployments {
        (d.running_count, d.pending_count) = deployment_counts(&tasks, &d.id);
        running += d.running_count;
        pending += d.pending_count;
        if d.launch_type.is_none() {
            d.launch_type = svc.launch_type.clone();
        }
    }
    svc.running_count = running;
    svc.pending_count = pending;
    if let Some(p) = rec.primary() {
        svc.current_service_deployment = Some(service_deployment_arn(
            ctx,
            cluster,
            &svc.service_name,
            &p.id,
        ));
    }
    svc.tags = tags;
    Ok(svc)
}

fn service_json(
    ctx: &Ctx,
    cluster: &str,
    rec: &ServiceRecord,
    tags: Option<Vec<Tag>>,
) -> Result<Value, ApiError> {
    Ok(json!({ "service": to_value(&service_view(ctx, cluster, rec, tags)?)? }))
}

// ---------------------------------------------------------------- CreateService

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct CreateServiceRequest {
    cluster: Option<String>,
    service_name: Option<String>,
    task_definition: Option<String>,
    load_balancers: Option<Vec<LoadBalancer>>,
    service_registries: Option<Vec<ServiceRegistry>>,
    desired_count: Option<i64>,
    client_token: Option<String>,
    launch_type: Option<String>,
    capacity_provider_strategy: Option<Value>,
    role: Option<String>,
    deployment_configuration: Option<DeploymentConfigurationIn>,
    placement_constraints: Option<Vec<PlacementConstraint>>,
    placement_strategy: Option<Vec<PlacementStrategy>>,
    network_configuration: Option<Value>,
    health_check_grace_period_seconds: Option<i64>,
    scheduling_strategy: Option<String>,
    deployment_controller: Option<DeploymentController>,
    tags: Option<Vec<Tag>>,
    #[serde(rename = "enableECSManagedTags")]
    enable_ecs_managed_tags: Option<bool>,
    propagate_tags: Option<String>,
    enable_execute_command: Option<bool>,
}

fn launch_type_of(lt: &Option<String>, cps: &Option<Value>) -> Result<String, ApiError> {
    if lt.is_some() && cps.as_ref().is_some_and(|v| !v.is_null()) {
        return Err(ApiError::invalid(
            "Specifying both a launch type and capacity provider strategy is not supported. Remove one and try again.",
        ));
    }
    check_capacity_providers(cps)?;
    match lt.as_deref() {
        None => Ok("EC2".into()),
        Some(l @ ("EC2" | "EXTERNAL")) => Ok(l.to_string()),
        Some(other) => Err(ApiError::invalid(format!(
            "Launch type {other} is not supported by berth. Use EC2 or EXTERNAL."
        ))),
    }
}

pub(crate) async fn create_service(
    ctx: &Ctx,
    req: CreateServiceRequest,
) -> Result<Value, ApiError> {
    let name = required(&req.service_name, "serviceName")?.to_string();
    validate_service_name(&name)?;
    let cluster = cluster_of(&req.cluster)?;
    let strategy = req
        .scheduling_strategy
        .clone()
        .unwrap_or_else(|| "REPLICA".into());
    let daemon = match strategy.as_str() {
        "REPLICA" => false,
        "DAEMON" => true,
        other => {
            return Err(ApiError::invalid(format!(
                "Invalid schedulingStrategy '{other}'. Valid values are REPLICA and DAEMON."
            )))
        }
    };
    check_deployment_controller(&req.deployment_controller)?;
    let td_ref = required(&req.task_definition, "taskDefinition")?.to_string();
    let desired_count = match (daemon, req.desired_count) {
        (false, None) => {
            return Err(ApiError::invalid(
                "desiredCount is required for a service with the REPLICA scheduling strategy.",
            ))
        }
        (false, Some(n)) => {
            check_desired_count(n)?;
            n
        }
        (true, None) => 0,
        (true, Some(_)) => {
            return Err(ApiError::invalid(
                "desiredCount is not supported for a service with the DAEMON scheduling strategy: it runs one task on each container instance.",
            ))
        }
    };
    let launch_type = launch_type_of(&req.launch_type, &req.capacity_provider_strategy)?;
    let deployment_configuration = merge_deployment_configuration(
        &default_deployment_configuration(daemon),
        &req.deployment_configuration.clone().unwrap_or_default(),
        daemon,
    )?;
    check_grace_period(req.health_check_grace_period_seconds)?;
    check_propagate_tags(&req.propagate_tags)?;
    let tags = req.tags.clone().unwrap_or_default();
    validate_tags(&tags)?;
    if let Some(t) = &req.client_token {
        if t.is_empty() || t.chars().count() > 36 {
            return Err(ApiError::invalid(
                "clientToken must be 1-36 characters long.",
            ));
        }
    }
    let constraints = req.placement_constraints.clone().unwrap_or_default();
    let strategies = req.placement_strategy.clone().unwrap_or_default();
    let load_balancers = req.load_balancers.clone().unwrap_or_default();
    let registries = req.service_registries.clone().unwrap_or_default();

    ctx.cluster.read_barrier().await?;
    existing_cluster(ctx, &cluster, true)?;
    let td = service_task_definition(ctx, &td_ref)?;
    check_placement(&constraints, &strategies, Some(&td), daemon)?;
    check_load_balancers(&load_balancers, &td)?;
    check_target_groups(ctx, &load_balancers)?;
    check_service_registries(&registries, &td)?;
    let td_arn = td.task_definition_arn.clone().unwrap_or_default();
    let now = ctx.now();
    let mut rec = ServiceRecord {
        service: Service {
            service_arn: ctx.cfg.ctx.service(&cluster, &name),
            service_name: name.clone(),
            cluster_arn: ctx.cfg.ctx.cluster(&cluster),
            load_balancers,
            service_registries: registries,
            status: "ACTIVE".into(),
            desired_count,
            launch_type: Some(launch_type),
            task_definition: td_arn.clone(),
            deployment_configuration,
            created_at: now,
            placement_constraints: constraints,
            placement_strategy: strategies,
            network_configuration: req.network_configuration.clone(),
            health_check_grace_period_seconds: req.health_check_grace_period_seconds.unwrap_or(0),
            scheduling_strategy: strategy,
            deployment_controller: DeploymentController {
                kind: Some("ECS".into()),
            },
            tags: (!tags.is_empty()).then(|| tags.clone()),
            created_by: Some(format!("arn:aws:iam::{}:root", ctx.cfg.ctx.account_id)),
            enable_ecs_managed_tags: req.enable_ecs_managed_tags.unwrap_or(false),
            propagate_tags: req.propagate_tags.clone().unwrap_or_else(|| "NONE".into()),
            enable_execute_command: req.enable_execute_command.unwrap_or(false),
            role_arn: role_arn(ctx, &req.role),
            ..Default::default()
        },
        client_token: req.client_token.clone(),
        ..Default::default()
    };
    berth_scheduler::service::new_deployment(&mut rec, &td_arn, &new_deployment_id(), now, None);
    let cmd = Command::CreateService {
        cluster: cluster.clone(),
        record: rec,
        at: now,
    };
    match ctx.propose(cmd).await? {
        Response::Service { service } => {
            let tags = service.service.tags.clone();
            service_json(ctx, &cluster, &service, tags)
        }
        other => Err(unexpected(other)),
    }
}

// ---------------------------------------------------------------- conditional writes

/// What an update decided about the current record.
enum Decision {
    /// Write this record (conditional on the version it was computed from).
    Put(Box<ServiceRecord>),
    /// Nothing to write: answer with the current record.
    Keep,
}

/// Reads the service, lets `decide` compute its next record, and proposes it
/// conditionally; recomputes when the service changed meanwhile. Answers with the
/// service as written (or as it is).
async fn update_with_retry<F>(
    ctx: &Ctx,
    cluster: &str,
    name: &str,
    mut decide: F,
) -> Result<ServiceRecord, ApiError>
where
    F: FnMut(&ServiceRecord) -> Result<Decision, ApiError>,
{
    for _ in 0..PUT_ATTEMPTS {
        ctx.cluster.read_barrier().await?;
        existing_cluster(ctx, cluster, false)?;
        let current = ctx
            .reader()
            .service(cluster, name)
            .map_err(store_err)?
            .ok_or_else(ApiError::service_not_found)?;
        let record = match decide(&current)? {
            Decision::Keep => return Ok(current),
            Decision::Put(r) => *r,
        };
        let cmd = Command::PutService {
            cluster: cluster.to_string(),
            name: name.to_string(),
            expected_version: current.version,
            record,
            at: ctx.now(),
        };
        match ctx.propose(cmd).await? {
            Response::Service { service } => return Ok(*service),
            Response::Conflict => continue,
            other => return Err(unexpected(other)),
        }
    }
    Err(ApiError::server(format!(
        "Service {name} kept changing while it was being updated; retry the request."
    )))
}

// ---------------------------------------------------------------- UpdateService

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct UpdateServiceRequest {
    cluster: Option<String>,
    service: Option<String>,
    desired_count: Option<i64>,
    task_definition: Option<String>,
    capacity_provider_strategy: Option<Value>,
    deployment_configuration: Option<DeploymentConfigurationIn>,
    network_configuration: Option<Value>,
    placement_constraints: Option<Vec<PlacementConstraint>>,
    placement_strategy: Option<Vec<PlacementStrategy>>,
    force_new_deployment: Option<bool>,
    health_check_grace_period_seconds: Option<i64>,
    deployment_controller: Option<DeploymentController>,
    enable_execute_command: Option<bool>,
    #[serde(rename = "enableECSManagedTags")]
    enable_ecs_managed_tags: Option<bool>,
    load_balancers: Option<Vec<LoadBalancer>>,
    propagate_tags: Option<String>,
    service_registries: Option<Vec<ServiceRegistry>>,
}

/// The next record of `current` for an UpdateService request (reference §6.4: which
/// members start a deployment and which only apply to later placements).
fn updated(
    ctx: &Ctx,
    current: &ServiceRecord,
    req: &UpdateServiceRequest,
    now: f64,
) -> Result<ServiceRecord, ApiError> {
    if current.service.status != "ACTIVE" {
        return Err(ApiError::service_not_active());
    }
    let daemon = current.service.scheduling_strategy == "DAEMON";
    let mut rec = current.clone();
    let svc = &mut rec.service;
    if let Some(n) = req.desired_count {
        if daemon {
            return Err(ApiError::invalid(
                "desiredCount is not supported for a service with the DAEMON scheduling strategy: it runs one task on each container instance.",
            ));
        }
        check_desired_count(n)?;
        svc.desired_count = n;
    }
    if let Some(dc) = &req.deployment_configuration {
        svc.deployment_configuration =
            merge_deployment_configuration(&svc.deployment_configuration, dc, daemon)?;
    }
    // The task definition the service will run. Without a new one, the current one is
    // only read to validate against; a service whose task definition is gone can still
    // be scaled.
    let td = match &req.task_definition {
        Some(s) => Some(service_task_definition(ctx, s)?),
        None => resolve_task_definition(ctx, &svc.task_definition)?,
    };
    let td_arn = td
        .as_ref()
        .and_then(|t| t.task_definition_arn.clone())
        .unwrap_or_else(|| svc.task_definition.clone());
    let mut deploy = req.force_new_deployment.unwrap_or(false);
    if td_arn != svc.task_definition {
        deploy = true;
    }
    if let Some(lbs) = &req.load_balancers {
        if *lbs != svc.load_balancers {
            deploy = true;
            svc.load_balancers = lbs.clone();
        }
    }
    if let Some(regs) = &req.service_registries {
        if *regs != svc.service_registries {
            deploy = true;
            svc.service_registries = regs.clone();
        }
    }
    if let Some(nc) = &req.network_configuration {
        if svc.network_configuration.as_ref() != Some(nc) {
            deploy = true;
            svc.network_configuration = Some(nc.clone());
        }
    }
    if let Some(lbs) = &req.load_balancers {
        check_target_groups(ctx, lbs)?;
    }
    if let Some(td) = &td {
        check_load_balancers(&svc.load_balancers, td)?;
        check_service_registries(&svc.service_registries, td)?;
    }
    if let Some(c) = &req.placement_constraints {
        svc.placement_constraints = c.clone();
    }
    if let Some(s) = &req.placement_strategy {
        svc.placement_strategy = s.clone();
    }
    check_placement(
        &svc.placement_constraints,
        &svc.placement_strategy,
        td.as_ref(),
        daemon,
    )?;
    if req.health_check_grace_period_seconds.is_some() {
        svc.health_check_grace_period_seconds = req.health_check_grace_period_seconds.unwrap_or(0);
    }
    if let Some(b) = req.enable_execute_command {
        svc.enable_execute_command = b;
    }
    if let Some(b) = req.enable_ecs_managed_tags {
        svc.enable_ecs_managed_tags = b;
    }
    if let Some(p) = &req.propagate_tags {
        svc.propagate_tags = p.clone();
    }
    if deploy {
        berth_scheduler::service::new_deployment(
            &mut rec,
            &td_arn,
            &new_deployment_id(),
            now,
            None,
        );
    }
    Ok(rec)
}

pub(crate) async fn update_service(
    ctx: &Ctx,
    req: UpdateServiceRequest,
) -> Result<Value, ApiError> {
    let (cluster, name) = target_of(&req.cluster, &req.service)?;
    if let Some(n) = req.desired_count {
        check_desired_count(n)?;
    }
    check_deployment_controller(&req.deployment_controller)?;
    check_capacity_providers(&req.capacity_provider_strategy)?;
    check_grace_period(req.health_check_grace_period_seconds)?;
    check_propagate_tags(&req.propagate_tags)?;
    if let Some(s) = &req.task_definition {
        berth_model::parse_task_definition_ref(s)?;
    }
    let rec = update_with_retry(ctx, &cluster, &name, |current| {
        updated(ctx, current, &req, ctx.now()).map(|r| Decision::Put(Box::new(r)))
    })
    .await?;
    service_json(ctx, &cluster, &rec, None)
}

// ---------------------------------------------------------------- DeleteService

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct DeleteServiceRequest {
    cluster: Option<String>,
    service: Option<String>,
    force: Option<bool>,
}

pub(crate) async fn delete_service(
    ctx: &Ctx,
    req: DeleteServiceRequest,
) -> Result<Value, ApiError> {
    let (cluster, name) = target_of(&req.cluster, &req.service)?;
    let force = req.force.unwrap_or(false);
    let rec = update_with_retry(ctx, &cluster, &name, |current| {
        match current.service.status.as_str() {
            "ACTIVE" => {}
            // Already being deleted: answer with it, as ECS does.
            "DRAINING" => return Ok(Decision::Keep),
            _ => return Err(ApiError::service_not_active()),
        }
        if current.service.scheduling_strategy != "DAEMON"
            && current.service.desired_count > 0
            && !force
        {
            return Err(ApiError::invalid(
                "The service cannot be stopped while it is scaled above 0.",
            ));
        }
        let mut rec = current.clone();
        rec.service.status = "DRAINING".into();
        rec.service.desired_count = 0;
        Ok(Decision::Put(Box::new(rec)))
    })
    .await?;
    service_json(ctx, &cluster, &rec, None)
}

// ---------------------------------------------------------------- DescribeServices

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct DescribeServicesRequest {
    cluster: Option<String>,
    services: Option<Vec<String>>,
    include: Option<Vec<String>>,
}

pub(crate) async fn describe_services(
    ctx: &Ctx,
    req: DescribeServicesRequest,
) -> Result<Value, ApiError> {
    let cluster = cluster_of(&req.cluster)?;
    let wanted = req.services.unwrap_or_default();
    if wanted.is_empty() || wanted.len() > 10 {
        return Err(ApiError::invalid(format!(
            "services must name between 1 and 10 services; {} were given.",
            wanted.len()
        )));
    }
    let include = req.include.unwrap_or_default();
    if let Some(bad) = include.iter().find(|i| i.as_str() != "TAGS") {
        return Err(ApiError::invalid(format!(
            "Invalid include value '{bad}'. The only valid value is TAGS."
        )));
    }
    let with_tags = !include.is_empty();
    ctx.cluster.read_barrier().await?;
    existing_cluster(ctx, &cluster, false)?;
    let mut services = Vec::new();
    let mut failures = Vec::new();
    for w in &wanted {
        let name = match service_name_in(&cluster, w) {
            Ok(n) => n,
            Err(bad) => {
                failures.push(Failure::missing(bad));
                continue;
            }
        };
        let Some(rec) = ctx.reader().service(&cluster, &name).map_err(store_err)? else {
            failures.push(Failure::missing(ctx.cfg.ctx.service(&cluster, &name)));
            continue;
        };
        let tags = if with_tags {
            Some(
                ctx.reader()
                    .tags(&rec.service.service_arn)
                    .map_err(store_err)?,
            )
        } else {
            None
        };
        services.push(service_view(ctx, &cluster, &rec, tags)?);
    }
    Ok(json!({ "services": to_value(&services)?, "failures": to_value(&failures)? }))
}

// ---------------------------------------------------------------- ListServices

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct ListServicesRequest {
    cluster: Option<String>,
    next_token: Option<String>,
    max_results: Option<i64>,
    launch_type: Option<String>,
    scheduling_strategy: Option<String>,
    resource_management_type: Option<String>,
}

pub(crate) async fn list_services(ctx: &Ctx, req: ListServicesRequest) -> Result<Value, ApiError> {
    let cluster = cluster_of(&req.cluster)?;
    if let Some(l) = &req.launch_type {
        if !matches!(
            l.as_str(),
            "EC2" | "FARGATE" | "EXTERNAL" | "MANAGED_INSTANCES"
        ) {
            return Err(ApiError::invalid(format!(
                "Invalid launchType '{l}'. Valid values are EC2, FARGATE, EXTERNAL and MANAGED_INSTANCES."
            )));
        }
    }
    if let Some(s) = &req.scheduling_strategy {
        if !matches!(s.as_str(), "REPLICA" | "DAEMON") {
            return Err(ApiError::invalid(format!(
                "Invalid schedulingStrategy '{s}'. Valid values are REPLICA and DAEMON."
            )));
        }
    }
    match req.resource_management_type.as_deref() {
        None | Some("CUSTOMER") => {}
        // berth manages no services of its own.
        Some("ECS") => return Ok(json!({ "serviceArns": [] })),
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "Invalid resourceManagementType '{other}'. Valid values are CUSTOMER and ECS."
            )))
        }
    }
    let max = check_max_results(req.max_results, 10)?;
    let after = decode_opt_token("ListServices", req.next_token.as_deref())?;
    ctx.cluster.read_barrier().await?;
    existing_cluster(ctx, &cluster, false)?;
    let keep: Vec<ServiceRecord> = ctx
        .reader()
        .services(&cluster)
        .map_err(store_err)?
        .into_iter()
        .filter(|r| r.service.status == "ACTIVE")
        .filter(|r| req.launch_type.is_none() || r.service.launch_type == req.launch_type)
        .filter(|r| {
            req.scheduling_strategy
                .as_ref()
                .is_none_or(|s| r.service.scheduling_strategy == *s)
        })
        .collect();
    let (items, next) = page(keep, after.as_deref(), max, "ListServices", |r| {
        r.service.service_name.clone()
    });
    let arns: Vec<String> = items.into_iter().map(|r| r.service.service_arn).collect();
    Ok(with_token(json!({ "serviceArns": arns }), next))
}

// ---------------------------------------------------------------- service deployments

const DEPLOYMENT_STATUSES: [&str; 9] = [
    "PENDING",
    "SUCCESSFUL",
    "STOPPED",
    "STOP_REQUESTED",
    "IN_PROGRESS",
    "ROLLBACK_REQUESTED",
    "ROLLBACK_IN_PROGRESS",
    "ROLLBACK_SUCCESSFUL",
    "ROLLBACK_FAILED",
];

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct CreatedAtIn {
    before: Option<Value>,
    after: Option<Value>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct ListServiceDeploymentsRequest {
    service: Option<String>,
    cluster: Option<String>,
    status: Option<Vec<String>>,
    created_at: Option<CreatedAtIn>,
    next_token: Option<String>,
    max_results: Option<i64>,
}

/// A request timestamp: epoch seconds (the AWS JSON protocol), or an RFC 3339 string.
fn timestamp(v: &Option<Value>, what: &str) -> Result<Option<f64>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(Value::String(s)) => s
            .parse::<f64>()
            .ok()
            .or_else(|| parse_rfc3339(s))
            .map(Some)
            .ok_or_else(|| ApiError::invalid(format!("Invalid timestamp for {what}: '{s}'."))),
        Some(other) => Err(ApiError::invalid(format!(
            "Invalid timestamp for {what}: {other}."
        ))),
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.fff](Z|±HH:MM)` → epoch seconds.
fn parse_rfc3339(s: &str) -> Option<f64> {
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = &s[19..];
    let mut frac = 0.0;
    if let Some(r) = rest.strip_prefix('.') {
        let n = r.bytes().take_while(|c| c.is_ascii_digit()).count();
        frac = format!("0.{}", &r[..n]).parse().ok()?;
        rest = &r[n..];
    }
    let offset = match rest {
        "" | "Z" | "z" => 0,
        o if o.len() == 6 && (o.starts_with('+') || o.starts_with('-')) => {
            let sign = if o.starts_with('-') { -1 } else { 1 };
            sign * (o[1..3].parse::<i64>().ok()? * 3600 + o[4..6].parse::<i64>().ok()? * 60)
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3600 + mi * 60 + sec - offset) as f64 + frac)
}

/// The paging key of a history entry: newest first sorts last-created highest.
fn history_key(h: &DeploymentHistory) -> String {
    format!("{:020.3}\u{1}{}", h.created_at, h.id)
}

fn put_opt(m: &mut Map<String, Value>, k: &str, v: Option<f64>) {
    if let Some(v) = v {
        m.insert(k.into(), json!(v));
    }
}

fn brief(ctx: &Ctx, cluster: &str, rec: &ServiceRecord, h: &DeploymentHistory) -> Value {
    let name = &rec.service.service_name;
    let mut m = Map::new();
    m.insert(
        "serviceDeploymentArn".into(),
        json!(service_deployment_arn(ctx, cluster, name, &h.id)),
    );
    m.insert("serviceArn".into(), json!(rec.service.service_arn));
    m.insert("clusterArn".into(), json!(rec.service.cluster_arn));
    m.insert("startedAt".into(), json!(h.started_at));
    m.insert("createdAt".into(), json!(h.created_at));
    put_opt(&mut m, "finishedAt", h.finished_at);
    m.insert(
        "targetServiceRevisionArn".into(),
        json!(service_revision_arn(ctx, cluster, name, &h.id)),
    );
    m.insert("status".into(), json!(h.status));
    if !h.status_reason.is_empty() {
        m.insert("statusReason".into(), json!(h.status_reason));
    }
    Value::Object(m)
}

pub(crate) async fn list_service_deployments(
    ctx: &Ctx,
    req: ListServiceDeploymentsRequest,
) -> Result<Value, ApiError> {
    let (cluster, name) = target_of(&req.cluster, &req.service)?;
    let statuses = req.status.clone().unwrap_or_default();
    for s in &statuses {
        if !DEPLOYMENT_STATUSES.contains(&s.as_str()) {
            return Err(ApiError::invalid(format!(
                "Invalid status '{s}'. Valid values are {}.",
                DEPLOYMENT_STATUSES.join(", ")
            )));
        }
    }
    let created = req.created_at.unwrap_or_default();
    let before = timestamp(&created.before, "createdAt.before")?;
    let after_t = timestamp(&created.after, "createdAt.after")?;
    let max = check_max_results(req.max_results, 20)?;
    let after = decode_opt_token("ListServiceDeployments", req.next_token.as_deref())?;
    ctx.cluster.read_barrier().await?;
    existing_cluster(ctx, &cluster, false)?;
    let rec = ctx
        .reader()
        .service(&cluster, &name)
        .map_err(store_err)?
        .ok_or_else(ApiError::service_not_found)?;
    let mut items: Vec<&DeploymentHistory> = rec
        .history
        .iter()
        .filter(|h| statuses.is_empty() || statuses.contains(&h.status))
        .filter(|h| before.is_none_or(|b| h.created_at <= b))
        .filter(|h| after_t.is_none_or(|a| h.created_at >= a))
        .collect();
    // Newest first.
    items.sort_by_key(|h| std::cmp::Reverse(history_key(h)));
    let (items, next) = page(
        items,
        after.as_deref(),
        max,
        "ListServiceDeployments",
        |h| history_key(h),
    );
    let out: Vec<Value> = items
        .into_iter()
        .map(|h| brief(ctx, &cluster, &rec, h))
        .collect();
    Ok(with_token(json!({ "serviceDeployments": out }), next))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct DescribeServiceDeploymentsRequest {
    service_deployment_arns: Option<Vec<String>>,
}

/// `…:service-deployment/{cluster}/{service}/{digits}` of this server's region and
/// account → (cluster, service, `ecs-svc/{digits}`).
fn parse_service_deployment_arn(ctx: &Ctx, arn: &str) -> Option<(String, String, String)> {
    let prefix = format!(
        "arn:aws:ecs:{}:{}:service-deployment/",
        ctx.cfg.ctx.region, ctx.cfg.ctx.account_id
    );
    let rest = arn.strip_prefix(&prefix)?;
    let mut parts = rest.split('/');
    let (Some(c), Some(s), Some(id), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    if c.is_empty() || s.is_empty() || id.is_empty() {
        return None;
    }
    Some((c.to_string(), s.to_string(), format!("ecs-svc/{id}")))
}

/// `ServiceRevisionSummary` of a deployment: the tasks it asks for and has.
fn revision_summary(
    ctx: &Ctx,
    cluster: &str,
    rec: &ServiceRecord,
    tasks: &[TaskRecord],
    id: &str,
) -> Value {
    let requested = rec
        .service
        .deployments
        .iter()
        .find(|d| d.id == id)
        .map(|d| d.desired_count)
        .unwrap_or(0);
    let (running, pending) = deployment_counts(tasks, id);
    json!({
        "arn": service_revision_arn(ctx, cluster, &rec.service.service_name, id),
        "requestedTaskCount": requested,
        "runningTaskCount": running,
        "pendingTaskCount": pending,
    })
}

fn service_deployment(
    ctx: &Ctx,
    cluster: &str,
    rec: &ServiceRecord,
    tasks: &[TaskRecord],
    index: usize,
) -> Result<Value, ApiError> {
    let h = &rec.history[index];
    let mut m = match brief(ctx, cluster, rec, h) {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    m.remove("targetServiceRevisionArn");
    let live = rec.service.deployments.iter().find(|d| d.id == h.id);
    let updated = [
        Some(h.started_at),
        h.finished_at,
        live.map(|d| d.updated_at),
    ]
    .into_iter()
    .flatten()
    .fold(h.created_at, f64::max);
    m.insert("updatedAt".into(), json!(updated));
    if matches!(h.status.as_str(), "STOPPED" | "ROLLBACK_FAILED") {
        put_opt(&mut m, "stoppedAt", h.finished_at);
    }
    // Source revisions: the latest earlier deployment of each task definition that ran.
    let mut sources = Vec::new();
    for td in &h.source_task_definitions {
        if let Some(src) = rec.history[..index]
            .iter()
            .rev()
            .find(|e| e.task_definition == *td)
        {
            sources.push(revision_summary(ctx, cluster, rec, tasks, &src.id));
        }
    }
    m.insert("sourceServiceRevisions".into(), Value::Array(sources));
    m.insert(
        "targetServiceRevision".into(),
        revision_summary(ctx, cluster, rec, tasks, &h.id),
    );
    m.insert(
        "deploymentConfiguration".into(),
        to_value(&h.deployment_configuration)?,
    );
    // Rolled back: the deployment that replaced this one as a rollback.
    if let Some(rb) = rec
        .history
        .iter()
        .find(|e| e.rollback && e.rollback_from.as_deref() == Some(h.id.as_str()))
    {
        m.insert(
            "rollback".into(),
            json!({
                "reason": "ECS deployment circuit breaker: tasks failed to start.",
                "startedAt": rb.started_at,
                "serviceRevisionArn": service_revision_arn(ctx, cluster, &rec.service.service_name, &rb.id),
            }),
        );
    }
    let cb = h.deployment_configuration.circuit_breaker();
    let cb_status = if !cb.enable {
        "DISABLED"
    } else if h.threshold > 0 && h.failure_count >= h.threshold {
        "TRIGGERED"
    } else if h.finished_at.is_some() {
        "MONITORING_COMPLETE"
    } else {
        "MONITORING"
    };
    m.insert(
        "deploymentCircuitBreaker".into(),
        json!({ "status": cb_status, "failureCount": h.failure_count, "threshold": h.threshold }),
    );
    m.insert(
        "alarms".into(),
        json!({ "status": "DISABLED", "alarmNames": [], "triggeredAlarmNames": [] }),
    );
    Ok(Value::Object(m))
}

pub(crate) async fn describe_service_deployments(
    ctx: &Ctx,
    req: DescribeServiceDeploymentsRequest,
) -> Result<Value, ApiError> {
    let arns = req.service_deployment_arns.unwrap_or_default();
    if arns.is_empty() || arns.len() > 20 {
        return Err(ApiError::invalid(format!(
            "serviceDeploymentArns must name between 1 and 20 service deployments; {} were given.",
            arns.len()
        )));
    }
    ctx.cluster.read_barrier().await?;
    let mut out = Vec::new();
    let mut failures = Vec::new();
    for arn in &arns {
        let found = match parse_service_deployment_arn(ctx, arn) {
            None => None,
            Some((cluster, name, id)) => {
                match ctx.reader().service(&cluster, &name).map_err(store_err)? {
                    Some(rec) => rec
                        .history
                        .iter()
                        .position(|h| h.id == id)
                        .map(|i| (cluster, rec, i)),
                    None => None,
                }
            }
        };
        match found {
            None => failures.push(Failure::missing(arn.clone())),
            Some((cluster, rec, i)) => {
                let tasks = ctx
                    .reader()
                    .tasks_of_group(&cluster, &rec.group())
                    .map_err(store_err)?;
                out.push(service_deployment(ctx, &cluster, &rec, &tasks, i)?);
            }
        }
    }
    Ok(json!({ "serviceDeployments": out, "failures": to_value(&failures)? }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_ids_have_19_digits() {
        for _ in 0..100 {
            let id = new_deployment_id();
            let digits = id.strip_prefix("ecs-svc/").unwrap();
            assert_eq!(digits.len(), 19, "{id}");
            assert!(digits.bytes().all(|b| b.is_ascii_digit()));
        }
    }

    #[test]
    fn deployment_configuration_defaults_and_ranges() {
        let none = DeploymentConfigurationIn::default();
        let r =
            merge_deployment_configuration(&default_deployment_configuration(false), &none, false)
                .unwrap();
        assert_eq!(r.maximum_percent, Some(200));
        assert_eq!(r.minimum_healthy_percent, Some(100));
        assert_eq!(
            r.deployment_circuit_breaker,
            Some(DeploymentCircuitBreaker {
                enable: false,
                rollback: false
            })
        );
        let d =
            merge_deployment_configuration(&default_deployment_configuration(true), &none, true)
                .unwrap();
        assert_eq!(
            (d.maximum_percent, d.minimum_healthy_percent),
            (Some(100), Some(0))
        );
        let with = |max: Option<i64>, min: Option<i64>| DeploymentConfigurationIn {
            maximum_percent: max,
            minimum_healthy_percent: min,
            ..Default::default()
        };
        let base = default_deployment_configuration(false);
        assert!(merge_deployment_configuration(&base, &with(None, Some(101)), false).is_err());
        assert!(merge_deployment_configuration(&base, &with(None, Some(-1)), false).is_err());
        assert!(merge_deployment_configuration(&base, &with(Some(99), None), false).is_err());
        let ok = merge_deployment_configuration(&base, &with(Some(150), Some(50)), false).unwrap();
        assert_eq!(
            (ok.maximum_percent, ok.minimum_healthy_percent),
            (Some(150), Some(50))
        );
        // A later update of one member keeps the other.
        let next = merge_deployment_configuration(&ok, &with(None, Some(75)), false).unwrap();
        assert_eq!(
            (next.maximum_percent, next.minimum_healthy_percent),
            (Some(150), Some(75))
        );
        let e = merge_deployment_configuration(
            &default_deployment_configuration(true),
            &with(Some(200), None),
            true,
        )
        .unwrap_err();
        assert!(e.message.contains("does not support values above 100"));
        let half = DeploymentConfigurationIn {
            deployment_circuit_breaker: Some(CircuitBreakerIn {
                enable: Some(true),
                rollback: None,
            }),
            ..Default::default()
        };
        assert!(merge_deployment_configuration(&base, &half, false).is_err());
    }

    #[test]
    fn rfc3339_timestamps() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0.0));
        assert_eq!(parse_rfc3339("2024-11-21T09:00:00Z"), Some(1732179600.0));
        assert_eq!(
            parse_rfc3339("2024-11-21T10:00:00.5+01:00"),
            Some(1732179600.5)
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
}
