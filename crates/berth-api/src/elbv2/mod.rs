//! The ELBv2 (Application Load Balancer) API on the API port: AWS Query requests
//! (a form body with `Action=…`, SigV4 scope `elasticloadbalancing`) answered in XML.
//! Decode ([`crate::protocol::query`]) and validate ([`validate`]), propose or read,
//! encode ([`crate::protocol::xml`]). Writes go through Raft; reads come from the local reader, as the
//! ECS handlers do. Random ids are made here and travel inside the commands.

use std::collections::{BTreeMap, BTreeSet};

use berth_model::elb::{
    self as model, AvailabilityZone, Listener, LoadBalancer, LoadBalancerState, Rule, RuleRecord,
    TargetDescription, TargetGroupRecord, TargetHealth, TargetRecord,
};
use berth_model::{decode_token, page, ApiError, ErrorKind};
use berth_store::{Command, Response as StoreResponse};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{json, Map, Value};

pub mod validate;

use crate::context::Ctx;
use crate::protocol::query::{decode_form, to_tree, Params, QueryError};
use crate::protocol::{read_body, respond, verify_signature, xml};
use validate::{self as v, Lookup};

/// ELBv2's errors are the Query protocol's.
pub type ElbError = QueryError;

/// The SigV4 credential-scope service of ELBv2.
pub const SIGNING_NAME: &str = "elasticloadbalancing";
pub const API_VERSION: &str = "2015-12-01";
/// The namespace of every ELBv2 document.
pub const XMLNS: &str = "http://elasticloadbalancing.amazonaws.com/doc/2015-12-01/";

type R<T> = Result<T, ElbError>;

/// Serves one ELBv2 request: every answer, authentication failures included, is an
/// ELBv2 XML document.
pub async fn serve(
    ctx: &Ctx,
    req: Request<Incoming>,
    rid: &str,
    peer: &str,
) -> Response<Full<Bytes>> {
    let started = std::time::Instant::now();
    let (parts, body) = req.into_parts();
    let mut op = String::from("ELBv2");
    let result = async {
        let body = read_body(ctx, &parts, body).await?;
        verify_signature(ctx, &parts, &body, SIGNING_NAME)?;
        let tree = to_tree(&decode_form(&body)?)?;
        let p = Params::new(&tree);
        let action = p.str("Action")?.unwrap_or("");
        if action.is_empty() {
            return Err(ElbError::new(
                "MissingAction",
                400,
                "The request must contain the parameter Action",
            ));
        }
        op = action.to_string();
        match p.str("Version")? {
            Some(API_VERSION) => {}
            Some(other) => {
                return Err(ElbError::new(
                    "InvalidAction",
                    400,
                    format!("Could not find operation {action} for version {other}: ELBv2's API version is {API_VERSION}"),
                ))
            }
            None => {
                return Err(ElbError::new(
                    "MissingParameter",
                    400,
                    format!("The request must contain the parameter Version ({API_VERSION})"),
                ))
            }
        }
        dispatch(ctx, action, &p).await
    }
    .await;
    let resp = match result {
        Ok(v) => respond(
            200,
            "text/xml",
            xml::success(XMLNS, &op, &v, rid).into_bytes(),
            rid,
        ),
        Err(e) => {
            if e.status >= 500 {
                tracing::error!(op = %op, peer, request_id = %rid, error = %e.message, "ELBv2 request failed");
            }
            respond(
                e.status,
                "text/xml",
                xml::error(XMLNS, &e, rid).into_bytes(),
                rid,
            )
        }
    };
    tracing::debug!(op = %op, status = resp.status().as_u16(), elapsed_ms = started.elapsed().as_secs_f64() * 1e3, "elbv2");
    resp
}

pub(crate) async fn dispatch(ctx: &Ctx, action: &str, p: &Params<'_>) -> R<Value> {
    match action {
        "CreateLoadBalancer" => create_load_balancer(ctx, p).await,
        "DescribeLoadBalancers" => describe_load_balancers(ctx, p),
        "DeleteLoadBalancer" => delete_load_balancer(ctx, p).await,
        "DescribeLoadBalancerAttributes" => describe_load_balancer_attributes(ctx, p),
        "ModifyLoadBalancerAttributes" => modify_load_balancer_attributes(ctx, p).await,
        "CreateTargetGroup" => create_target_group(ctx, p).await,
        "DescribeTargetGroups" => describe_target_groups(ctx, p),
        "ModifyTargetGroup" => modify_target_group(ctx, p).await,
        "DescribeTargetGroupAttributes" => describe_target_group_attributes(ctx, p),
        "ModifyTargetGroupAttributes" => modify_target_group_attributes(ctx, p).await,
        "DeleteTargetGroup" => delete_target_group(ctx, p).await,
        "CreateListener" => create_listener(ctx, p).await,
        "DescribeListeners" => describe_listeners(ctx, p),
        "ModifyListener" => modify_listener(ctx, p).await,
        "DeleteListener" => delete_listener(ctx, p).await,
        "CreateRule" => create_rule(ctx, p).await,
        "DescribeRules" => describe_rules(ctx, p),
        "ModifyRule" => modify_rule(ctx, p).await,
        "SetRulePriorities" => set_rule_priorities(ctx, p).await,
        "DeleteRule" => delete_rule(ctx, p).await,
        "RegisterTargets" => register_targets(ctx, p).await,
        "DeregisterTargets" => deregister_targets(ctx, p).await,
        "DescribeTargetHealth" => describe_target_health(ctx, p),
        "DescribeTags" => describe_tags(ctx, p),
        "AddTags" => add_tags(ctx, p).await,
        "RemoveTags" => remove_tags(ctx, p).await,
        other => Err(ElbError::new(
            "InvalidAction",
            400,
            format!("Could not find operation {other} for version {API_VERSION}: berth does not implement it"),
        )),
    }
}

// ---------------------------------------------------------------- plumbing

fn store_err(e: berth_store::StoreError) -> ElbError {
    ElbError::from(ApiError::server(format!("state store error: {e}")))
}

/// Proposes a command whose only answer is `Ok` (an empty ELBv2 result).
async fn propose_ok(ctx: &Ctx, cmd: Command) -> R<Value> {
    match ctx.propose(cmd).await? {
        StoreResponse::Ok => Ok(json!({})),
        other => Err(unexpected(other)),
    }
}

fn unexpected(r: StoreResponse) -> ElbError {
    ElbError::from(ApiError::server(format!(
        "unexpected state-machine response: {r:?}"
    )))
}

fn to_json<T: serde::Serialize>(v: &T) -> R<Value> {
    serde_json::to_value(v)
        .map_err(|e| ElbError::from(ApiError::server(format!("encode response: {e}"))))
}

/// 16 random lowercase hex digits (the id part of ELBv2 ARNs).
fn new_id() -> String {
    let u = uuid::Uuid::new_v4().simple().to_string();
    u[..16].to_string()
}

fn not_found(kind: ErrorKind) -> ElbError {
    let what = match kind {
        ErrorKind::LoadBalancerNotFound => "load balancers",
        ErrorKind::TargetGroupNotFound => "target groups",
        ErrorKind::ListenerNotFound => "listeners",
        _ => "rules",
    };
    ElbError::kind(kind, format!("One or more {what} not found"))
}

/// A load balancer as sent: `CreatedTime` in ISO 8601.
fn lb_json(lb: &LoadBalancer) -> R<Value> {
    let mut v = to_json(lb)?;
    if let Some(m) = v.as_object_mut() {
        m.insert(
            "CreatedTime".into(),
            Value::String(xml::iso8601(lb.created_time)),
        );
    }
    Ok(v)
}

/// `Marker`/`PageSize` (1-400) paging over `items`, already in list order; `key`
/// must be unique and ascending in that order.
fn paged<T>(
    p: &Params<'_>,
    op: &str,
    items: Vec<T>,
    key: impl Fn(&T) -> String,
) -> R<(Vec<T>, Option<String>)> {
    let size = p.int("PageSize", 1, 400)?.unwrap_or(400) as usize;
    let after = match p.str("Marker")? {
        None | Some("") => None,
        Some(m) => Some(decode_token(op, m).map_err(|_| {
            ElbError::validation(format!(
                "Invalid Marker '{m}': pass the NextMarker of the previous page"
            ))
        })?),
    };
    Ok(page(items, after.as_deref(), size, op, key))
}

fn with_marker(mut result: Map<String, Value>, marker: Option<String>) -> Value {
    if let Some(m) = marker {
        result.insert("NextMarker".into(), Value::String(m));
    }
    Value::Object(result)
}

/// At most one of `names` may be given (a non-empty list or a value).
fn at_most_one(p: &Params<'_>, names: &[&str]) -> R<()> {
    let given: Vec<&str> = names.iter().copied().filter(|n| p.has(n)).collect();
    if given.len() > 1 {
        return Err(ElbError::validation(format!(
            "{} cannot be specified at the same time",
            given.join(" and ")
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------- reads (local adapter)

fn load_balancers(ctx: &Ctx) -> R<Vec<LoadBalancer>> {
    let mut v = ctx.reader().elb_load_balancers().map_err(store_err)?;
    v.sort_by(|a, b| a.load_balancer_name.cmp(&b.load_balancer_name));
    Ok(v)
}

fn load_balancer(ctx: &Ctx, arn: &str) -> R<LoadBalancer> {
    ctx.reader()
        .elb_load_balancer(arn)
        .map_err(store_err)?
        .ok_or_else(|| not_found(ErrorKind::LoadBalancerNotFound))
}

fn target_groups(ctx: &Ctx) -> R<Vec<TargetGroupRecord>> {
    let mut v = ctx.reader().elb_target_groups().map_err(store_err)?;
    v.sort_by(|a, b| {
        a.target_group
            .target_group_name
            .cmp(&b.target_group.target_group_name)
    });
    Ok(v)
}

fn target_group(ctx: &Ctx, arn: &str) -> R<TargetGroupRecord> {
    ctx.reader()
        .elb_target_group(arn)
        .map_err(store_err)?
        .ok_or_else(|| not_found(ErrorKind::TargetGroupNotFound))
}

/// Listeners (of one load balancer, or all), by port.
fn listeners(ctx: &Ctx, lb: Option<&str>) -> R<Vec<Listener>> {
    let mut v = ctx.reader().elb_listeners(lb).map_err(store_err)?;
    v.sort_by(|a, b| (a.port, &a.listener_arn).cmp(&(b.port, &b.listener_arn)));
    Ok(v)
}

fn listener(ctx: &Ctx, arn: &str) -> R<Listener> {
    ctx.reader()
        .elb_listener(arn)
        .map_err(store_err)?
        .ok_or_else(|| not_found(ErrorKind::ListenerNotFound))
}

/// Numeric priority order, the default rule last.
fn rule_key(r: &Rule) -> String {
    match r.priority.parse::<u32>() {
        Ok(n) if !r.is_default => format!("{n:05}"),
        _ => "default".into(),
    }
}

fn rules(ctx: &Ctx, listener_arn: &str) -> R<Vec<Rule>> {
    let mut v = ctx.reader().elb_rules(listener_arn).map_err(store_err)?;
    v.sort_by_key(rule_key);
    Ok(v)
}

fn rule(ctx: &Ctx, arn: &str) -> R<RuleRecord> {
    ctx.reader()
        .elb_rule(arn)
        .map_err(store_err)?
        .ok_or_else(|| not_found(ErrorKind::RuleNotFound))
}

fn targets_of(ctx: &Ctx, tg_arn: &str) -> R<Vec<TargetRecord>> {
    ctx.reader().elb_targets(tg_arn).map_err(store_err)
}

/// Target groups as the action validator sees them: type and load balancers.
struct Groups(BTreeMap<String, (String, Vec<String>)>);

impl Groups {
    fn read(ctx: &Ctx) -> R<Self> {
        Ok(Groups(
            target_groups(ctx)?
                .into_iter()
                .map(|r| {
                    let tg = r.target_group;
                    (tg.target_group_arn, (tg.target_type, tg.load_balancer_arns))
                })
                .collect(),
        ))
    }
}

impl Lookup for Groups {
    fn target_group(&self, arn: &str) -> Option<(String, Vec<String>)> {
        self.0.get(arn).cloned()
    }
}

/// The availability zones berth's machines report (`ecs.availability-zone`), or
/// `berth-local` when none does.
fn zones(ctx: &Ctx) -> R<Vec<String>> {
    let mut zones = BTreeSet::new();
    for c in ctx.reader().clusters().map_err(store_err)? {
        let Some(name) = c.cluster_name else { continue };
        for ci in ctx.reader().container_instances(&name).map_err(store_err)? {
            for a in &ci.instance.attributes {
                if a.name == "ecs.availability-zone" {
                    if let Some(v) = a.value.as_deref().filter(|v| !v.is_empty()) {
                        zones.insert(v.to_string());
                    }
                }
            }
        }
    }
    if zones.is_empty() {
        zones.insert("berth-local".to_string());
    }
    Ok(zones.into_iter().collect())
}

/// Container instance ids (and their ARNs' last segment) that `instance` targets may name.
fn instance_ids(ctx: &Ctx) -> R<BTreeSet<String>> {
    let mut ids = BTreeSet::new();
    for c in ctx.reader().clusters().map_err(store_err)? {
        let Some(name) = c.cluster_name else { continue };
        for ci in ctx.reader().container_instances(&name).map_err(store_err)? {
            if ci.status() == "INACTIVE" {
                continue;
            }
            ids.insert(ci.id().to_string());
            if let Some(arn) = &ci.instance.container_instance_arn {
                if let Some(last) = arn.rsplit('/').next() {
                    ids.insert(last.to_string());
                }
            }
        }
    }
    Ok(ids)
}

// ---------------------------------------------------------------- load balancers

async fn create_load_balancer(ctx: &Ctx, p: &Params<'_>) -> R<Value> {
    let name = p.req_str("Name")?;
    v::load_balancer_name(name)?;
    match p.str("Type")?.unwrap_or("application") {
        "application" => {}
        t @ ("network" | "gateway") => {
            return Err(ElbError::validation(format!(
                "Load balancer type '{t}' is not supported: berth serves application load balancers only"
            )))
        }
        t => {
            return Err(ElbError::validation(format!(
                "Load balancer type '{t}' is not valid: use 'application'"
            )))
        }
    }
    let scheme = p.str("Scheme")?.unwrap_or("internet-facing");
    if !matches!(scheme, "internet-facing" | "internal") {
        return Err(ElbError::validation(format!(
            "Scheme '{scheme}' is not valid: use 'internet-facing' or 'internal'"
        )));
    }
    let ip_type = p.str("IpAddressType")?.unwrap_or("ipv4");
    if !matches!(ip_type, "ipv4" | "dualstack") {
        return Err(ElbError::validation(format!(
            "IP address type '{ip_type}' is not valid: use 'ipv4' or 'dualstack'"
        )));
    }
    at_most_one(p, &["Subnets", "SubnetMappings"])?;
    let mut subnets = p.str_list("Subnets")?.unwrap_or_default();
    for m in p.struct_list("SubnetMappings")?.unwrap_or_default() {
        subnets.push(m.params().req_str("SubnetId")?.to_string());
    }
    let security_groups = p.str_list("SecurityGroups")?.unwrap_or_default();
    let tags = v::tags(p)?;
    let zones = zones(ctx)?;
    let availability_zones = if subnets.is_empty() {
        zones
            .iter()
            .map(|z| AvailabilityZone {
                zone_name: z.clone(),
                subnet_id: None,
            })
            .collect()
    } else {
        subnets
            .iter()
            .enumerate()
            .map(|(i, s)| AvailabilityZone {
                zone_name: zones[i % zones.len()].clone(),
                subnet_id: Some(s.clone()),
            })
            .collect()
    };
    let id = new_id();
    let region = &ctx.cfg.ctx.region;
    let lb = LoadBalancer {
        load_balancer_arn: model::load_balancer_arn(region, &ctx.cfg.ctx.account_id, name, &id),
        dns_name: format!("{name}-{id}.{region}.elb.berth.local"),
        canonical_hosted_zone_id: None,
        created_time: ctx.now(),
        load_balancer_name: name.to_string(),
        scheme: scheme.to_string(),
        vpc_id: None,
        state: LoadBalancerState {
            code: "active".into(),
            reason: None,
        },
        lb_type: "application".into(),
        availability_zones,
        security_groups,
        ip_address_type: ip_type.to_string(),
    };
    match ctx
        .propose(Command::CreateLoadBalancer {
            load_balancer: lb,
            tags,
        })
        .await?
    {
        StoreResponse::LoadBalancer { load_balancer } => {
            Ok(json!({ "LoadBalancers": [lb_json(&load_balancer)?] }))
        }
        other => Err(unexpected(other)),
    }
}

fn describe_load_balancers(ctx: &Ctx, p: &Params<'_>) -> R<Value> {
    at_most_one(p, &["LoadBalancerArns", "Names"])?;
    let all = load_balancers(ctx)?;
    let arns = p.str_list("LoadBalancerArns")?.unwrap_or_default();
    let names = p.str_list("Names")?.unwrap_or_default();
    let chosen: Vec<LoadBalancer> = if !arns.is_empty() {
        if arns
            .iter()
            .any(|a| !all.iter().any(|lb| &lb.load_balancer_arn == a))
        {
            return Err(not_found(ErrorKind::LoadBalancerNotFound));
        }
        all.into_iter()
            .filter(|lb| arns.contains(&lb.load_balancer_arn))
            .collect()
    } else if !names.is_empty() {
        if names
            .iter()
            .any(|n| !all.iter().any(|lb| &lb.load_balancer_name == n))
        {
            return Err(not_found(ErrorKind::LoadBalancerNotFound));
        }
        all.into_iter()
            .filter(|lb| names.contains(&lb.load_balancer_name))
            .collect()
    } else {
        all
    };
    let (items, marker) = paged(p, "DescribeLoadBalancers", chosen, |lb| {
        lb.load_balancer_name.clone()
    })?;
    let items = items.iter().map(lb_json).collect::<R<Vec<_>>>()?;
    let mut m = Map::new();
    m.insert("LoadBalancers".into(), Value::Array(items));
    Ok(with_marker(m, marker))
}

async fn delete_load_balancer(ctx: &Ctx, p: &Params<'_>) -> R<Value> {
    let arn = p.req_str("LoadBalancerArn")?;
    propose_ok(
        ctx,
        Command::DeleteLoadBalancer {
            arn: arn.to_string(),
        },
    )
    .await
}

fn describe_load_balancer_attributes(ctx: &Ctx, p: &Params<'_>) -> R<Value> {
    let arn = p.req_str("LoadBalancerArn")?;
    let rec = ctx
        .reader()
        .elb_load_balancer_record(arn)
        .map_err(store_err)?
        .ok_or_else(|| not_found(ErrorKind::LoadBalancerNotFound))?;
    Ok(json!({ "Attributes": to_json(&rec.attributes)? }))
}

/// Checks every attribute first (a refused request changes nothing), then merges them
/// through Raft; answers with every attribute, as ALB does.
async fn modify_load_balancer_attributes(ctx: &Ctx, p: &Params<'_>) -> R<Value> {
    let arn = p.req_str("LoadBalancerArn")?;
    load_balancer(ctx, arn)?;
    let attributes = v::load_balancer_attributes(p)?;
    let cmd = Command::ModifyLoadBalancerAttributes {
        arn: arn.to_string(),
        attributes,
    };
    match ctx.propose(cmd).await? {
        StoreResponse::LoadBalancerAttributes { attributes } => {
            Ok(json!({ "Attributes": to_json(&attributes)? }))
        }
        other => Err(unexpected(other)),
    }
}

// ---------------------------------------------------------------- target groups

async fn create_target_group(ctx: &Ctx, p: &Params<'_>) -> R<Value> {
    let mut tg = v::new_target_group(p)?;
    let tags = v::tags(p)?;
    tg.target_group_arn = model::target_group_arn(
        &ctx.cfg.ctx.region,
        &ctx.cfg.ctx.account_id,
        &tg.target_group_name,
        &new_id(),
    );
    let record = TargetGroupRecord {
        target_group: tg,
        attributes: v::default_attributes(),
    };
    match ctx
        .propose(Command::CreateTargetGroup { record, tags })
        .await?
    {
        StoreResponse::TargetGroup { record } => {
            Ok(json!({ "TargetGroups": [to_json(&record.target_group)?] }))
        }
        other => Err(unexpected(other)),
    }
}

fn describe_target_groups(ctx: &Ctx, p: &Params<'_>) -> R<Value> {
    at_most_one(p, &["LoadBalancerArn", "TargetGroupArns", "Names"])?;
    let all = target_groups(ctx)?;
    let arns = p.str_list("TargetGroupArns")?.unwrap_or_default();
    let names = p.str_list("Names")?.unwrap_or_default();
    let chosen: Vec<TargetGroupRecord> = if let Some(lb) = p.str("LoadBalancerArn")? {
        load_balancer(ctx, lb)?;
        all.into_iter()
            .filter(|r| r.target_group.load_balancer_arns.iter().any(|a| a == lb))
            .collect()
    } else if !arns.is_empty() {
        if arns
            .iter()
            .any(|a| !all.iter().any(|r| &r.target_group.target_group_arn == a))
        {
            return Err(not_found(ErrorKind::TargetGroupNotFound));
        }
        all.into_iter()
            .filter(|r| arns.contains(&r.target_group.target_group_arn))
            .collect()
    } else if !names.is_empty() {
        if names
            .iter()
            .any(|n| !all.iter().any(|r| &r.target_group.target_group_name == n))
        {
            return Err(not_found(ErrorKind::TargetGroupNotFound));
        }
        all.into_iter()
            .filter(|r| names.contains(&r.target_group.target_group_name))
            .collect()
    } else {
        all
    };
    let (items, marker) = paged(p, "DescribeTargetGroups", chosen, |r| {
        r.target_group.target_group_name.clone()
    })?;
    let items = items
        .iter()
        .map(|r| to_json(&r.target_group))
        .collect::<R<Vec<_>>>()?;
    let mut m = Map::new();
    m.insert("TargetGroups".into(), Value::Array(items));
    Ok(with_marker(m, marker))
}

async fn modify_target_group(ctx: &Ctx, p: &Params<'_>) -> R<Value> {
    let arn = p.req_str("TargetGroupArn")?;
    let current = target_group(ctx, arn)?;
    let patch = v::target_group_patch(p, &current.target_group)?;
    match ctx
        .propose(Command::ModifyTargetGroup {
            arn: arn.to_string(),
            patch,
        })
        .await?
    {
        StoreResponse::TargetGroup { record } => {
            Ok(json!({ "TargetGroups": [to_json(&record.target_group)?] }))
        }
        other => Err(unexpected(other)),
    }
}

fn describe_target_group_attributes(ctx: &Ctx, p: &Params<'_>) -> R<Value> {
    let rec = target_group(ctx, p.req_str("TargetGroupArn")?)?;
    Ok(json!({ "Attributes": to_json(&rec.attributes)? }))
}

async fn modify_target_group_attributes(ctx: &Ctx, p: &Params<'_>) -> R<Value> {
    let arn = p.req_str("TargetGroupArn")?;
    let current = target_group(ctx, arn)?;
    let changes = v::target_group_attributes(p)?;
    let cmd = Command::ModifyTargetGroupAttributes {
        arn: arn.to_string(),
        attributes: changes.clone(),
    };
    let attributes = match ctx.propose(cmd).await? {
        StoreResponse::TargetGroup { record } => record.attributes,
        StoreResponse::Ok => model::merge_attributes(&current.attributes, &changes),
        other => return Err(unexpected(other)),
    };
    Ok(json!({ "Attributes": to_json(&attributes)? }))
}

async fn delete_target_group(ctx: &Ctx, p: &Params<'_>) -> R<Value> {
    let arn = p.req_str("TargetGroupArn")?;
    propose_ok(
        ctx,
        Command::DeleteTargetGroup {
            arn: arn.to_string(),
        },
    )
    .await
}

// ---------------------------------------------------------------- listeners

/// `Protocol` of a listener: HTTP only (HTTPS needs certificates berth does not store).
fn listener_protocol(p: &Params<'_>) -> R<Option<&'static str>> {
    let proto = match p.str("Protocol")? {
        None => None,
        Some("HTTP") => Some("HTTP"),
        Some("HTTPS") => {
            return Err(ElbError::kind(
                ErrorKind::UnsupportedProtocol,
                "Protocol 'HTTPS' is not supported: berth has no certificate store yet, so its listeners speak HTTP only",
            ))
        }
        Some(s @ ("TCP" | "TLS" | "UDP" | "TCP_UDP" | "GENEVE" | "QUIC" | "TCP_QUIC")) => {
            return Err(ElbError::kind(
                ErrorKind::UnsupportedProtocol,
                format!("Protocol '{s}' is for network and gateway load balancers; an application load balancer's listener uses HTTP"),
            ))
        }
        Some(s) => {
            return Err(ElbError::validation(format!(
                "Listener protocol '{s}' is not valid: use HTTP"
            )))
        }
    };
    for m in ["Certificates", "SslPolicy", "AlpnPolicy"] {
        if p.has(m) {
            return Err(ElbError::validation(format!(
                "{m} cannot be specified for HTTP listeners"
            )));
        }
    }
    Ok(proto)
}

/// Refuses `port` when another listener uses it: on the same load balancer (as ALB
/// does) or on another one (berth serves every load balancer on the same addresses).
fn check_port(ctx: &Ctx, lb_arn: &str, port: u16, except: Option<&str>) -> R<()> {
    for l in listeners(ctx, None)? {
        if l.port != port || Some(l.listener_arn.as_str()) == except {
            continue;
        }
        if l.load_balancer_arn == lb_arn {
            return Err(ElbError::kind(
                ErrorKind::DuplicateListener,
                "A listener already exists on this port for this load balancer",
            ));
        }
        let other = ctx
            .reader()
            .elb_load_balancer(&l.load_balancer_arn)
            .map_err(store_err)?
            .map(|lb| lb.load_balancer_name)
            .unwrap_or_else(|| l.load_balancer_arn.clone());
        return Err(ElbError::kind(
            ErrorKind::DuplicateListener,
            format!("Port {port} is already used by a listener of load balancer '{other}': berth serves every load balancer on the same addresses, so each port has one listener"),
        ));
    }
    Ok(())
}

async fn create_listener(ctx: &Ctx, p: &Params<'_>) -> R<Value> {
    let lb_arn = p.req_str("LoadBalancerArn")?;
    let protocol = listener_protocol(p)?.unwrap_or("HTTP");
    let port = p
        .int("Port", 1, 65535)?
        .ok_or_else(|| ElbError::validation("A listener port must be specified"))?
        as u16;
    load_balancer(ctx, lb_arn)?;
    let actions = v::actions(
        p,
        "DefaultActions",
        &Groups::read(ctx)?,
        lb_arn,
        Some((protocol, port)),
    )?;
    let tags = v::tags(p)?;
    // Creating the same listener again answers with it, as ALB does.
    if let Some(same) = listeners(ctx, Some(lb_arn))?
        .into_iter()
        .find(|l| l.port == port && l.protocol == protocol && l.default_actions == actions)
    {
        return Ok(json!({ "Listeners": [to_json(&same)?] }));
    }
    check_port(ctx, lb_arn, port, None)?;
    let listener = Listener {
        listener_arn: model::listener_arn(lb_arn, &new_id()),
        load_balancer_arn: lb_arn.to_string(),
        port,
        protocol: protocol.to_string(),
        default_actions: actions,
    };
    match ctx
        .propose(Command::CreateListener { listener, tags })
        .await?
    {
        StoreResponse::Listener { listener } => Ok(json!({ "Listeners": [to_json(&listener)?] })),
        other => Err(unexpected(other)),
    }
}

fn describe_listeners(ctx: &Ctx, p: &Params<'_>) -> R<Value> {
    at_most_one(p, &["LoadBalancerArn", "ListenerArns"])?;
    let chosen = if let Some(lb) = p.str("LoadBalancerArn")? {
        load_balancer(ctx, lb)?;
        listeners(ctx, Some(lb))?
    } else if let Some(arns) = p.str_list("ListenerArns")?.filter(|a| !a.is_empty()) {
        let all = listeners(ctx, None)?;
        if arns
            .iter()
            .any(|a| !all.iter().any(|l| &l.listener_arn == a))
        {
            return Err(not_found(ErrorKind::ListenerNotFound));
        }
        all.into_iter()
            .filter(|l| arns.contains(&l.listener_arn))
            .collect()
    } else {
        return Err(ElbError::validation(
            "You must specify either listener ARNs or a load balancer ARN",
        ));
    };
    let (items, marker) = paged(p, "DescribeListeners", chosen, |l| {
        format!("{:05}{}", l.port, l.listener_arn)
    })?;
    let items = items.iter().map(to_json).collect::<R<Vec<_>>>()?;
    let mut m = Map::new();
    m.insert("Listeners".into(), Value::Array(items));
    Ok(with_marker(m, marker))
}

async fn modify_listener(ctx: &Ctx, p: &Params<'_>) -> R<Value> {
    let arn = p.req_str("ListenerArn")?;
    let protocol = listener_protocol(p)?;
    let port = p.int("Port", 1, 65535)?.map(|n| n as u16);
    let current = listener(ctx, arn)?;
    let effective = (
        protocol.unwrap_or(current.protocol.as_str()),
        port.unwrap_or(current.port),
    );
    let default_actions = if p.has("DefaultActions") {
        Some(v::actions(
            p,
            "DefaultActions",
            &Groups::read(ctx)?,
            &current.load_balancer_arn,
            Some(effective),
        )?)
    } else {
        None
    };
    if let Some(port) = port {
        check_port(ctx, &current.load_balancer_arn, port, Some(arn))?;
    }
    let cmd = Command::ModifyListener {
        arn: arn.to_string(),
        port,
        protocol: protocol.map(String::from),
        default_actions,
    };
    match ctx.propose(cmd).await? {
        StoreResponse::Listener { listener } => Ok(json!({ "Listeners": [to_json(&listener)?] })),
        other => Err(unexpected(other)),
    }
}

async fn delete_listener(ctx: &Ctx, p: &Params<'_>) -> R<Value> {
    let arn = p.req_str("ListenerArn")?;
    listener(ctx, arn)?;
    propose_ok(
        ctx,
        Command::DeleteListener {
            arn: arn.to_string(),
        },
    )
    .await
}

// ---------------------------------------------------------------- rules

/// Rules per listener, the default rule not counted (ALB's default quota).
const MAX_RULES: usize = 100;

fn priority_in_use(priority: i64) -> ElbError {
    ElbError::kind(
        ErrorKind::PriorityInUse,
        format!("Priority '{priority}' is currently in use"),
    )
}

async fn create_rule(ctx: &Ctx, p: &Params<'_>) -> R<Value> {
    let listener_arn = p.req_str("ListenerArn")?;
    let priority = p
        .int("Priority", 1, 50_000)?
        .ok_or_else(|| ElbError::validation("A rule priority must be specified"))?;
    let conditions = v::conditions(p)?;
    let l = listener(ctx, listener_arn)?;
    let actions = v::actions(
        p,
        "Actions",
        &Groups::read(ctx)?,
        &l.load_balancer_arn,
        Some((&l.protocol, l.port)),
    )?;
    let tags = v::tags(p)?;
    let existing = rules(ctx, listener_arn)?;
    if existing
        .iter()
        .any(|r| !r.is_default && r.priority == priority.to_string())
    {
        return Err(priority_in_use(priority));
    }
    if existing.iter().filter(|r| !r.is_default).count() >= MAX_RULES {
        return Err(ElbError::kind(
            ErrorKind::TooManyRules,
            format!("Listener '{listener_arn}' already has {MAX_RULES} rules, the most a listener can have"),
        ));
    }
    let record = RuleRecord {
        listener_arn: listener_arn.to_string(),
        rule: Rule {
            rule_arn: model::rule_arn(listener_arn, &new_id()),
            priority: priority.to_string(),
            conditions,
            actions,
            is_default: false,
        },
    };
    match ctx.propose(Command::CreateRule { record, tags }).await? {
        StoreResponse::Rule { rule } => Ok(json!({ "Rules": [to_json(&rule)?] })),
        other => Err(unexpected(other)),
    }
}

fn describe_rules(ctx: &Ctx, p: &Params<'_>) -> R<Value> {
    at_most_one(p, &["ListenerArn", "RuleArns"])?;
    let chosen = if let Some(l) = p.str("ListenerArn")? {
        listener(ctx, l)?;
        rules(ctx, l)?
    } else if let Some(arns) = p.str_list("RuleArns")?.filter(|a| !a.is_empty()) {
        let mut out = Vec::new();
        for a in &arns {
            let r = rule(ctx, a)?.rule;
            if !out.iter().any(|x: &Rule| x.rule_arn == r.rule_arn) {
                out.push(r);
            }
        }
        out.sort_by_key(|r| (rule_key(r), r.rule_arn.clone()));
        out
    } else {
        return Err(ElbError::validation(
            "You must specify either listener ARN or rule ARNs",
        ));
    };
    let (items, marker) = paged(p, "DescribeRules", chosen, |r| {
        format!("{}{}", rule_key(r), r.rule_arn)
    })?;
    let items = items.iter().map(to_json).collect::<R<Vec<_>>>()?;
    let mut m = Map::new();
    m.insert("Rules".into(), Value::Array(items));
    Ok(with_marker(m, marker))
}

async fn modify_rule(ctx: &Ctx, p: &Params<'_>) -> R<Value> {
    let arn = p.req_str("RuleArn")?;
    let current = rule(ctx, arn)?;
    let conditions = if p.has("Conditions") {
        if current.rule.is_default {
            return Err(ElbError::kind(
                ErrorKind::OperationNotPermitted,
                "The conditions of a listener's default rule cannot be modified",
            ));
        }
        Some(v::conditions(p)?)
    } else {
        None
    };
    let actions = if p.has("Actions") {
        let l = listener(ctx, &current.listener_arn)?;
        Some(v::actions(
            p,
            "Actions",
            &Groups::read(ctx)?,
            &l.load_balancer_arn,
            Some((&l.protocol, l.port)),
        )?)
    } else {
        None
    };
    let cmd = Command::ModifyRule {
        arn: arn.to_string(),
        conditions,
        actions,
    };
    match ctx.propose(cmd).await? {
        StoreResponse::Rule { rule } => Ok(json!({ "Rules": [to_json(&rule)?] })),
        other => Err(unexpected(other)),
    }
}

async fn set_rule_priorities(ctx: &Ctx, p: &Params<'_>) -> R<Value> {
    let items = p.struct_list("RulePriorities")?.unwrap_or_default();
    if items.is_empty() {
        return Err(ElbError::validation(
            "At least one rule priority must be specified",
        ));
    }
    let mut wanted: Vec<(String, u32)> = Vec::new();
    // listener → (rules of it being moved, new priorities)
    let mut by_listener: BTreeMap<String, Vec<(String, i64)>> = BTreeMap::new();
    for item in &items {
        let rp = item.params();
        let arn = rp.req_str("RuleArn")?;
        let prio = rp.int("Priority", 1, 50_000)?.ok_or_else(|| {
            ElbError::validation(format!("{}.Priority must be specified", item.path()))
        })?;
        if wanted.iter().any(|(a, _)| a == arn) {
            return Err(ElbError::validation(format!(
                "Rule '{arn}' is given more than once"
            )));
        }
        let rec = rule(ctx, arn)?;
        if rec.rule.is_default {
            return Err(ElbError::kind(
                ErrorKind::OperationNotPermitted,
                format!("The priority of the default rule '{arn}' cannot be changed"),
            ));
        }
        let moved = by_listener.entry(rec.listener_arn.clone()).or_default();
        if moved.iter().any(|(_, p)| *p == prio) {
            return Err(priority_in_use(prio));
        }
        moved.push((arn.to_string(), prio));
        wanted.push((arn.to_string(), prio as u32));
    }
    for (listener_arn, moved) in &by_listener {
        for r in rules(ctx, listener_arn)? {
            if r.is_default || moved.iter().any(|(a, _)| *a == r.rule_arn) {
                continue;
            }
            if let Some((_, prio)) = moved.iter().find(|(_, p)| r.priority == p.to_string()) {
                return Err(priority_in_use(*prio));
            }
        }
    }
    match ctx
        .propose(Command::SetRulePriorities { priorities: wanted })
        .await?
    {
        StoreResponse::Rules { mut rules } => {
            rules.sort_by_key(rule_key);
            Ok(json!({ "Rules": to_json(&rules)? }))
        }
        other => Err(unexpected(other)),
    }
}

async fn delete_rule(ctx: &Ctx, p: &Params<'_>) -> R<Value> {
    let arn = p.req_str("RuleArn")?;
    let rec = rule(ctx, arn)?;
    if rec.rule.is_default {
        return Err(ElbError::kind(
            ErrorKind::OperationNotPermitted,
            "The default rule of a listener cannot be deleted: delete the listener instead",
        ));
    }
    propose_ok(
        ctx,
        Command::DeleteRule {
            arn: arn.to_string(),
        },
    )
    .await
}

// ---------------------------------------------------------------- targets

/// Targets per target group.
const MAX_TARGETS: usize = 1000;

fn target_names(ts: &[TargetDescription]) -> String {
    ts.iter()
        .map(|t| format!("'{}'", t.id))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn register_targets(ctx: &Ctx, p: &Params<'_>) -> R<Value> {
    let arn = p.req_str("TargetGroupArn")?;
    let rec = target_group(ctx, arn)?;
    let tg = &rec.target_group;
    let targets = v::targets(p, &tg.target_type, tg.port)?;
    if tg.target_type == "instance" {
        let known = instance_ids(ctx)?;
        let unknown: Vec<TargetDescription> = targets
            .iter()
            .filter(|t| !known.contains(&t.id))
            .cloned()
            .collect();
        if !unknown.is_empty() {
            return Err(ElbError::kind(
                ErrorKind::InvalidTarget,
                format!(
                    "The following targets are not registered container instances and cannot be registered: {}",
                    target_names(&unknown)
                ),
            ));
        }
    }
    let existing = targets_of(ctx, arn)?;
    let new = targets
        .iter()
        .filter(|t| {
            !existing
                .iter()
                .any(|e| e.id == t.id && Some(e.port) == t.port)
        })
        .count();
    if existing.len() + new > MAX_TARGETS {
        return Err(ElbError::kind(
            ErrorKind::TooManyTargets,
            format!("Target group '{arn}' can have at most {MAX_TARGETS} targets"),
        ));
    }
    let cmd = Command::RegisterTargets {
        target_group_arn: arn.to_string(),
        targets,
        at: ctx.now(),
    };
    propose_ok(ctx, cmd).await
}

async fn deregister_targets(ctx: &Ctx, p: &Params<'_>) -> R<Value> {
    let arn = p.req_str("TargetGroupArn")?;
    let rec = target_group(ctx, arn)?;
    let targets = v::targets(p, &rec.target_group.target_type, rec.target_group.port)?;
    let existing = targets_of(ctx, arn)?;
    let missing: Vec<TargetDescription> = targets
        .iter()
        .filter(|t| {
            !existing
                .iter()
                .any(|e| e.id == t.id && Some(e.port) == t.port)
        })
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Err(ElbError::kind(
            ErrorKind::InvalidTarget,
            format!(
                "The following targets are not registered in target group '{arn}': {}",
                missing
                    .iter()
                    .map(|t| format!("'{}:{}'", t.id, t.port.unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let cmd = Command::DeregisterTargets {
        target_group_arn: arn.to_string(),
        targets,
        at: ctx.now(),
    };
    propose_ok(ctx, cmd).await
}

/// One `TargetHealthDescription`.
fn health_description(
    tg_health_port: &str,
    target: TargetDescription,
    health: TargetHealth,
) -> R<Value> {
    let port = target.port.unwrap_or_default();
    let hc_port = if tg_health_port == "traffic-port" {
        port.to_string()
    } else {
        tg_health_port.to_string()
    };
    Ok(json!({
        "Target": to_json(&target)?,
        "HealthCheckPort": hc_port,
        "TargetHealth": to_json(&health)?,
    }))
}

/// What DescribeTargetHealth shows for a stored target of a group that is (`in_use`)
/// or is not on any listener.
fn record_health(t: &TargetRecord, in_use: bool) -> TargetHealth {
    if t.draining() {
        TargetHealth::draining()
    } else if !in_use {
        // No listener forwards to the group: no traffic and no health checks, so the
        // last verdict would be stale. ALB's words.
        TargetHealth::new(
            "unused",
            Some("Target.NotInUse"),
            Some("Target group is not configured to receive traffic from the load balancer"),
        )
    } else {
        t.health.clone()
    }
}

fn describe_target_health(ctx: &Ctx, p: &Params<'_>) -> R<Value> {
    let arn = p.req_str("TargetGroupArn")?;
    let rec = target_group(ctx, arn)?;
    let tg = &rec.target_group;
    let in_use = !tg.load_balancer_arns.is_empty();
    let mut registered = targets_of(ctx, arn)?;
    registered.sort_by(|a, b| (&a.id, a.port).cmp(&(&b.id, b.port)));
    let mut out = Vec::new();
    match p.struct_list("Targets")? {
        None => {
            for t in &registered {
                out.push(health_description(
                    &tg.health_check_port,
                    t.description(),
                    record_health(t, in_use),
                )?);
            }
        }
        Some(filter) => {
            for f in &filter {
                let f = f.params();
                let id = f.req_str("Id")?;
                let port = f.int("Port", 1, 65535)?.map(|n| n as u16);
                let matching: Vec<&TargetRecord> = registered
                    .iter()
                    .filter(|t| t.id == id && port.is_none_or(|p| p == t.port))
                    .collect();
                if matching.is_empty() {
                    out.push(health_description(
                        &tg.health_check_port,
                        TargetDescription {
                            id: id.to_string(),
                            port: Some(port.unwrap_or(tg.port)),
                            availability_zone: f.str("AvailabilityZone")?.map(String::from),
                        },
                        TargetHealth::new(
                            "unused",
                            Some("Target.NotRegistered"),
                            Some("Target is not registered to the target group"),
                        ),
                    )?);
                }
                for t in matching {
                    out.push(health_description(
                        &tg.health_check_port,
                        t.description(),
                        record_health(t, in_use),
                    )?);
                }
            }
        }
    }
    Ok(json!({ "TargetHealthDescriptions": out }))
}

// ---------------------------------------------------------------- tags

/// `ResourceArns` (1-20), each an existing load balancer, target group, listener or rule.
fn resource_arns(ctx: &Ctx, p: &Params<'_>) -> R<Vec<String>> {
    let arns = p.str_list("ResourceArns")?.unwrap_or_default();
    if arns.is_empty() || arns.len() > 20 {
        return Err(ElbError::validation(format!(
            "ResourceArns must name between 1 and 20 resources, not {}",
            arns.len()
        )));
    }
    for arn in &arns {
        if arn.contains(":loadbalancer/") {
            load_balancer(ctx, arn)?;
        } else if arn.contains(":targetgroup/") {
            target_group(ctx, arn)?;
        } else if arn.contains(":listener/") {
            listener(ctx, arn)?;
        } else if arn.contains(":listener-rule/") {
            rule(ctx, arn)?;
        } else {
            return Err(ElbError::validation(format!(
                "'{arn}' is not a load balancer, target group, listener or rule ARN"
            )));
        }
    }
    Ok(arns)
}

/// DescribeTags: the tags of load balancers, target groups, listeners and rules.
fn describe_tags(ctx: &Ctx, p: &Params<'_>) -> R<Value> {
    let mut out = Vec::new();
    for arn in resource_arns(ctx, p)? {
        let tags: Vec<Value> = ctx
            .reader()
            .tags(&arn)
            .map_err(store_err)?
            .into_iter()
            .map(|t| json!({ "Key": t.key, "Value": t.value }))
            .collect();
        out.push(json!({ "ResourceArn": arn, "Tags": tags }));
    }
    Ok(json!({ "TagDescriptions": out }))
}

/// AddTags: every resource is checked before any is tagged (one write per resource).
async fn add_tags(ctx: &Ctx, p: &Params<'_>) -> R<Value> {
    let arns = resource_arns(ctx, p)?;
    let tags = v::tags(p)?;
    if tags.is_empty() {
        return Err(ElbError::validation("At least one tag must be specified"));
    }
    for arn in arns {
        let cmd = Command::AddElbTags {
            arn,
            tags: tags.clone(),
        };
        match ctx.propose(cmd).await? {
            StoreResponse::Ok => {}
            other => return Err(unexpected(other)),
        }
    }
    Ok(json!({}))
}

async fn remove_tags(ctx: &Ctx, p: &Params<'_>) -> R<Value> {
    let arns = resource_arns(ctx, p)?;
    let keys = p.str_list("TagKeys")?.unwrap_or_default();
    if keys.is_empty() {
        return Err(ElbError::validation(
            "At least one tag key must be specified",
        ));
    }
    for arn in arns {
        let cmd = Command::RemoveElbTags {
            arn,
            keys: keys.clone(),
        };
        match ctx.propose(cmd).await? {
            StoreResponse::Ok => {}
            other => return Err(unexpected(other)),
        }
    }
    Ok(json!({}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_rule_order() {
        let id = new_id();
        assert_eq!(id.len(), 16);
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        let r = |p: &str, d: bool| Rule {
            priority: p.into(),
            is_default: d,
            ..Default::default()
        };
        let mut v = [r("default", true), r("100", false), r("9", false)];
        v.sort_by_key(rule_key);
        assert_eq!(
            v.iter().map(|r| r.priority.as_str()).collect::<Vec<_>>(),
            ["9", "100", "default"]
        );
    }
}
