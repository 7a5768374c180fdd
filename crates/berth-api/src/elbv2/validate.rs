//! ELBv2 request members → model values, validated as an Application Load Balancer
//! does (reference §10): names, target-group settings and attributes, listener
//! actions, rule conditions, targets. Defaults are filled in here so responses look
//! like ALB's.
//!
//! Pure: no I/O. What needs state (does a target group exist, is a port taken) is
//! asked through the [`Lookup`] trait or checked by the caller.

use std::collections::BTreeSet;
use std::net::IpAddr;

use berth_model::elb::{
    Action, Attribute, FixedResponseActionConfig, ForwardActionConfig, HttpHeaderConfig, Matcher,
    QueryStringConfig, QueryStringKeyValue, RedirectActionConfig, RuleCondition, TargetDescription,
    TargetGroup, TargetGroupPatch, TargetGroupStickinessConfig, TargetGroupTuple, Values,
};
use berth_model::{ErrorKind, Tag};

use crate::protocol::query::Params;
use crate::protocol::query::QueryError as ElbError;

type R<T> = Result<T, ElbError>;

fn invalid(msg: impl Into<String>) -> ElbError {
    ElbError::validation(msg)
}

fn unsupported(msg: impl Into<String>) -> ElbError {
    ElbError::kind(ErrorKind::UnsupportedProtocol, msg)
}

fn bad_action(msg: impl Into<String>) -> ElbError {
    ElbError::kind(ErrorKind::InvalidLoadBalancerAction, msg)
}

// ---------------------------------------------------------------- names

fn check_name(what: &str, name: &str) -> R<()> {
    if name.len() > 32 {
        return Err(invalid(format!(
            "{what} name '{name}' cannot be longer than '32' characters"
        )));
    }
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(invalid(format!(
            "{what} name '{name}' can only contain characters that are alphanumeric characters or hyphens(-)"
        )));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(invalid(format!(
            "{what} name '{name}' cannot begin or end with '-'"
        )));
    }
    Ok(())
}

/// ≤32 alphanumerics or hyphens, no leading/trailing hyphen, not `internal-…`.
pub fn load_balancer_name(name: &str) -> R<()> {
    check_name("Load balancer", name)?;
    if name.to_ascii_lowercase().starts_with("internal-") {
        return Err(invalid(format!(
            "Load balancer name '{name}' cannot begin with 'internal-'"
        )));
    }
    Ok(())
}

pub fn target_group_name(name: &str) -> R<()> {
    check_name("Target group", name)
}

/// `Tags.member.N.Key/Value`: keys 1-128 chars, values ≤256, no `aws:` prefix, no
/// duplicate keys, ≤50.
pub fn tags(p: &Params<'_>) -> R<Vec<Tag>> {
    let Some(items) = p.struct_list("Tags")? else {
        return Ok(vec![]);
    };
    if items.len() > 50 {
        return Err(ElbError::new(
            "TooManyTags",
            400,
            format!("{} tags given; a resource can have at most 50", items.len()),
        ));
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for item in &items {
        let t = item.params();
        let key = t.req_str("Key")?;
        let value = t.str("Value")?.unwrap_or("");
        if key.chars().count() > 128 || value.chars().count() > 256 {
            return Err(invalid(format!(
                "Tag '{key}' is too long: keys have at most 128 characters and values at most 256"
            )));
        }
        if key.to_ascii_lowercase().starts_with("aws:") {
            return Err(invalid(format!(
                "Tag key '{key}' cannot start with 'aws:': that prefix is reserved"
            )));
        }
        if !seen.insert(key.to_string()) {
            return Err(ElbError::new(
                "DuplicateTagKeys",
                400,
                format!("Tag key '{key}' is given more than once"),
            ));
        }
        out.push(Tag {
            key: key.to_string(),
            value: value.to_string(),
        });
    }
    Ok(out)
}

// ---------------------------------------------------------------- target groups

/// `Matcher.HttpCode` for an ALB: codes 200-499, as one (`200`), a list
/// (`200,202`) or ranges (`200-299`), combinable (`200,300-399`).
pub fn http_code(s: &str) -> R<()> {
    let bad = |why: &str| invalid(format!("Invalid HttpCode '{s}': {why}"));
    if s.is_empty() {
        return Err(bad("it must not be empty"));
    }
    for part in s.split(',') {
        let code = |c: &str| -> R<u16> {
            let n: u16 = c
                .trim()
                .parse()
                .map_err(|_| bad(&format!("'{c}' is not an HTTP status code")))?;
            if !(200..=499).contains(&n) {
                return Err(bad(&format!(
                    "'{n}' is outside 200-499, the codes an Application Load Balancer health check accepts"
                )));
            }
            Ok(n)
        };
        match part.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi) = (code(lo)?, code(hi)?);
                if lo > hi {
                    return Err(bad(&format!("range '{part}' ends before it starts")));
                }
            }
            None => {
                code(part)?;
            }
        }
    }
    Ok(())
}

/// `HealthCheckPort`: `traffic-port` or 1-65535.
fn health_check_port(p: &Params<'_>) -> R<Option<String>> {
    match p.str("HealthCheckPort")? {
        None => Ok(None),
        Some("traffic-port") => Ok(Some("traffic-port".into())),
        Some(s) => match s.parse::<u32>() {
            Ok(n) if (1..=65535).contains(&n) => Ok(Some(n.to_string())),
            _ => Err(invalid(format!(
                "Health check port '{s}' must be 'traffic-port' or a port number between 1 and 65535"
            ))),
        },
    }
}

fn health_check_protocol(p: &Params<'_>) -> R<Option<String>> {
    match p.str("HealthCheckProtocol")? {
        None => Ok(None),
        Some("HTTP") => Ok(Some("HTTP".into())),
        Some("HTTPS") => Err(unsupported(
            "Health check protocol 'HTTPS' is not supported: berth's health checker speaks HTTP only",
        )),
        Some(s @ ("TCP" | "TLS" | "UDP" | "TCP_UDP" | "GENEVE")) => Err(unsupported(format!(
            "Health check protocol '{s}' is not supported for an application load balancer's target group: use HTTP"
        ))),
        Some(s) => Err(invalid(format!(
            "Health check protocol '{s}' is not valid: use HTTP"
        ))),
    }
}

fn health_check_path(p: &Params<'_>) -> R<Option<String>> {
    match p.str("HealthCheckPath")? {
        None => Ok(None),
        Some(s) if s.is_empty() || s.len() > 1024 => Err(invalid(format!(
            "Health check path '{s}' must be between 1 and 1024 characters long"
        ))),
        Some(s) if !s.starts_with('/') => Err(invalid(format!(
            "Health check path '{s}' must begin with a '/' character"
        ))),
        Some(s) if s.chars().any(|c| c.is_control() || c == ' ') => Err(invalid(format!(
            "Health check path '{s}' contains a space or control character"
        ))),
        Some(s) => Ok(Some(s.to_string())),
    }
}

fn matcher(p: &Params<'_>) -> R<Option<Matcher>> {
    let Some(m) = p.sub("Matcher")? else {
        return Ok(None);
    };
    let m = m.params();
    if m.str("GrpcCode")?.is_some() {
        return Err(unsupported(
            "Matcher.GrpcCode is for GRPC target groups; berth's target groups speak HTTP/1.1: use Matcher.HttpCode",
        ));
    }
    let code = m.req_str("HttpCode")?;
    http_code(code)?;
    Ok(Some(Matcher {
        http_code: Some(code.to_string()),
        grpc_code: None,
    }))
}

fn int_u32(p: &Params<'_>, name: &str, min: i64, max: i64) -> R<Option<u32>> {
    Ok(p.int(name, min, max)?.map(|n| n as u32))
}

/// The health-check members of CreateTargetGroup and ModifyTargetGroup.
fn health_patch(p: &Params<'_>) -> R<TargetGroupPatch> {
    let enabled = p.bool("HealthCheckEnabled")?;
    if enabled == Some(false) {
        return Err(invalid(
            "Health checks cannot be disabled for target groups with target type 'instance' or 'ip'",
        ));
    }
    Ok(TargetGroupPatch {
        health_check_protocol: health_check_protocol(p)?,
        health_check_port: health_check_port(p)?,
        health_check_path: health_check_path(p)?,
        health_check_enabled: enabled,
        health_check_interval_seconds: int_u32(p, "HealthCheckIntervalSeconds", 5, 300)?,
        health_check_timeout_seconds: int_u32(p, "HealthCheckTimeoutSeconds", 2, 120)?,
        healthy_threshold_count: int_u32(p, "HealthyThresholdCount", 2, 10)?,
        unhealthy_threshold_count: int_u32(p, "UnhealthyThresholdCount", 2, 10)?,
        matcher: matcher(p)?,
    })
}

/// The combination rules that hold after defaults or a patch are applied.
pub fn check_health_combination(tg: &TargetGroup) -> R<()> {
    if tg.health_check_timeout_seconds >= tg.health_check_interval_seconds {
        return Err(invalid(format!(
            "Health check timeout '{}' must be smaller than the interval '{}'",
            tg.health_check_timeout_seconds, tg.health_check_interval_seconds
        )));
    }
    Ok(())
}

/// CreateTargetGroup's members → a `TargetGroup` with ALB's defaults (the ARN is
/// filled in by the caller).
pub fn new_target_group(p: &Params<'_>) -> R<TargetGroup> {
    let name = p.req_str("Name")?;
    target_group_name(name)?;
    let target_type = p.str("TargetType")?.unwrap_or("instance");
    match target_type {
        "instance" | "ip" => {}
        "lambda" | "alb" => {
            return Err(invalid(format!(
                "Target type '{target_type}' is not supported: berth's target groups hold 'instance' or 'ip' targets"
            )))
        }
        other => {
            return Err(invalid(format!(
                "Target type '{other}' is not valid: use 'instance' or 'ip'"
            )))
        }
    }
    let protocol = match p.str("Protocol")? {
        None => {
            return Err(invalid(format!(
                "A protocol must be specified for target groups with target type '{target_type}'"
            )))
        }
        Some("HTTP") => "HTTP",
        Some("HTTPS") => {
            return Err(unsupported(
                "Protocol 'HTTPS' is not supported: berth's load balancer proxies HTTP to its targets",
            ))
        }
        Some(s @ ("TCP" | "TLS" | "UDP" | "TCP_UDP" | "GENEVE" | "QUIC" | "TCP_QUIC")) => {
            return Err(unsupported(format!(
                "Protocol '{s}' is for network and gateway load balancers; berth serves application load balancers: use HTTP"
            )))
        }
        Some(s) => return Err(invalid(format!("Protocol '{s}' is not valid: use HTTP"))),
    };
    let port = p.int("Port", 1, 65535)?.ok_or_else(|| {
        invalid(format!(
            "A port must be specified for target groups with target type '{target_type}'"
        ))
    })? as u16;
    match p.str("ProtocolVersion")? {
        None | Some("HTTP1") => {}
        Some(s @ ("HTTP2" | "GRPC")) => {
            return Err(unsupported(format!(
                "Protocol version '{s}' is not supported: berth's load balancer speaks HTTP/1.1 to targets (HTTP1)"
            )))
        }
        Some(s) => {
            return Err(invalid(format!(
                "Protocol version '{s}' is not valid: use HTTP1"
            )))
        }
    }
    match p.str("IpAddressType")? {
        None | Some("ipv4") => {}
        Some(s) => {
            return Err(invalid(format!(
                "IP address type '{s}' is not supported: berth's target groups are 'ipv4'"
            )))
        }
    }
    let vpc_id = p.str("VpcId")?.filter(|s| !s.is_empty()).map(String::from);
    let patch = health_patch(p)?;
    let mut tg = TargetGroup {
        target_group_arn: String::new(),
        target_group_name: name.to_string(),
        protocol: protocol.into(),
        port,
        vpc_id,
        health_check_protocol: "HTTP".into(),
        health_check_port: "traffic-port".into(),
        health_check_enabled: true,
        health_check_interval_seconds: 30,
        health_check_timeout_seconds: 5,
        healthy_threshold_count: 5,
        unhealthy_threshold_count: 2,
        health_check_path: "/".into(),
        matcher: Matcher {
            http_code: Some("200".into()),
            grpc_code: None,
        },
        load_balancer_arns: vec![],
        target_type: target_type.into(),
        protocol_version: Some("HTTP1".into()),
        ip_address_type: Some("ipv4".into()),
    };
    patch.apply_to(&mut tg);
    // The default timeout (5 s) gives way to a shorter interval (5 s allows 4 s), so
    // `--health-check-interval-seconds 5` alone is accepted.
    if patch.health_check_timeout_seconds.is_none()
        && tg.health_check_timeout_seconds >= tg.health_check_interval_seconds
    {
        tg.health_check_timeout_seconds = tg.health_check_interval_seconds - 1;
    }
    check_health_combination(&tg)?;
    Ok(tg)
}

/// ModifyTargetGroup's members → a patch, checked against the group it changes.
pub fn target_group_patch(p: &Params<'_>, current: &TargetGroup) -> R<TargetGroupPatch> {
    let patch = health_patch(p)?;
    let mut after = current.clone();
    patch.apply_to(&mut after);
    check_health_combination(&after)?;
    Ok(patch)
}

/// Every attribute of a new target group with ALB's defaults.
pub fn default_attributes() -> Vec<Attribute> {
    [
        ("deregistration_delay.timeout_seconds", "300"),
        ("stickiness.enabled", "false"),
        ("stickiness.type", "lb_cookie"),
        ("stickiness.lb_cookie.duration_seconds", "86400"),
        ("stickiness.app_cookie.cookie_name", ""),
        ("stickiness.app_cookie.duration_seconds", "86400"),
        ("load_balancing.algorithm.type", "round_robin"),
        ("load_balancing.algorithm.anomaly_mitigation", "off"),
        ("slow_start.duration_seconds", "0"),
        (
            "load_balancing.cross_zone.enabled",
            "use_load_balancer_configuration",
        ),
        (
            "target_group_health.unhealthy_state_routing.minimum_healthy_targets.count",
            "1",
        ),
        (
            "target_group_health.unhealthy_state_routing.minimum_healthy_targets.percentage",
            "off",
        ),
        (
            "target_group_health.dns_failover.minimum_healthy_targets.count",
            "1",
        ),
        (
            "target_group_health.dns_failover.minimum_healthy_targets.percentage",
            "off",
        ),
    ]
    .into_iter()
    .map(|(k, v)| Attribute {
        key: k.into(),
        value: v.into(),
    })
    .collect()
}

fn attr_int(key: &str, value: &str, ok: impl Fn(i64) -> bool, range: &str) -> R<()> {
    match value.parse::<i64>() {
        Ok(n) if ok(n) => Ok(()),
        _ => Err(invalid(format!(
            "Attribute '{key}' has the value '{value}'; it must be {range}"
        ))),
    }
}

fn attr_one_of(key: &str, value: &str, allowed: &[&str]) -> R<()> {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(invalid(format!(
            "Attribute '{key}' has the value '{value}'; it must be one of: {}",
            allowed.join(", ")
        )))
    }
}

/// `Attributes.member.N.Key/Value`, each pair passed to `check` (which refuses unknown
/// keys and bad values). Later duplicates of a key win, as ALB does.
fn attributes(p: &Params<'_>, check: impl Fn(&str, &str) -> R<()>) -> R<Vec<Attribute>> {
    let items = p.struct_list("Attributes")?.unwrap_or_default();
    if items.is_empty() {
        return Err(invalid("At least one attribute must be specified"));
    }
    let mut out: Vec<Attribute> = Vec::new();
    for item in &items {
        let a = item.params();
        let key = a.req_str("Key")?;
        let value = a.str("Value")?.unwrap_or("");
        check(key, value)?;
        out.retain(|x| x.key != key);
        out.push(Attribute {
            key: key.to_string(),
            value: value.to_string(),
        });
    }
    Ok(out)
}

/// `Attributes.member.N.Key/Value` of ModifyTargetGroupAttributes: every key known
/// and every value in range (§10.2).
pub fn target_group_attributes(p: &Params<'_>) -> R<Vec<Attribute>> {
    attributes(p, target_group_attribute)
}

fn target_group_attribute(key: &str, value: &str) -> R<()> {
    {
        match key {
            "deregistration_delay.timeout_seconds" => {
                attr_int(key, value, |n| (0..=3600).contains(&n), "between 0 and 3600 seconds")?
            }
            "slow_start.duration_seconds" => attr_int(
                key,
                value,
                |n| n == 0 || (30..=900).contains(&n),
                "0 (off) or between 30 and 900 seconds",
            )?,
            "stickiness.enabled" => attr_one_of(key, value, &["true", "false"])?,
            "stickiness.type" => attr_one_of(key, value, &["lb_cookie", "app_cookie"])?,
            "stickiness.lb_cookie.duration_seconds" | "stickiness.app_cookie.duration_seconds" => {
                attr_int(key, value, |n| (1..=604_800).contains(&n), "between 1 and 604800 seconds")?
            }
            "stickiness.app_cookie.cookie_name" => {
                let upper = value.to_ascii_uppercase();
                if ["AWSALB", "AWSALBAPP", "AWSALBTG"]
                    .iter()
                    .any(|p| upper.starts_with(p))
                {
                    return Err(invalid(format!(
                        "Cookie name '{value}' is not allowed: the prefixes AWSALB, AWSALBAPP and AWSALBTG are reserved"
                    )));
                }
                if value.len() > 256
                    || !value
                        .bytes()
                        .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
                {
                    return Err(invalid(format!(
                        "Cookie name '{value}' is not a valid cookie name"
                    )));
                }
            }
            "load_balancing.algorithm.type" => match value {
                "round_robin" | "least_outstanding_requests" => {}
                "weighted_random" => {
                    return Err(invalid(
                        "Load balancing algorithm 'weighted_random' is not implemented by berth: use round_robin or least_outstanding_requests",
                    ))
                }
                _ => attr_one_of(key, value, &["round_robin", "least_outstanding_requests"])?,
            },
            "load_balancing.algorithm.anomaly_mitigation" => match value {
                "off" => {}
                "on" => {
                    return Err(invalid(
                        "Anomaly mitigation works with the 'weighted_random' algorithm only, which berth does not implement",
                    ))
                }
                _ => attr_one_of(key, value, &["off"])?,
            },
            "load_balancing.cross_zone.enabled" => attr_one_of(
                key,
                value,
                &["true", "false", "use_load_balancer_configuration"],
            )?,
            "target_group_health.unhealthy_state_routing.minimum_healthy_targets.count"
            | "target_group_health.dns_failover.minimum_healthy_targets.count" => {
                if !(value == "off" && key.contains("dns_failover")) {
                    attr_int(key, value, |n| (1..=1000).contains(&n), "a number of targets of 1 or more")?
                }
            }
            "target_group_health.unhealthy_state_routing.minimum_healthy_targets.percentage"
            | "target_group_health.dns_failover.minimum_healthy_targets.percentage" => {
                if value != "off" {
                    attr_int(key, value, |n| (1..=100).contains(&n), "'off' or a percentage between 1 and 100")?
                }
            }
            other => {
                return Err(invalid(format!(
                    "Target group attribute key '{other}' is not recognized"
                )))
            }
        }
    }
    Ok(())
}

/// `Attributes.member.N.Key/Value` of ModifyLoadBalancerAttributes: every key one of an
/// application load balancer's, every value in range. Logs to S3 are refused: berth is
/// self-hosted and has no S3 to write them to. (Terraform drops a key whose refusal
/// says "attribute key '…' is not recognized" and tries again without it.)
pub fn load_balancer_attributes(p: &Params<'_>) -> R<Vec<Attribute>> {
    attributes(p, load_balancer_attribute)
}

fn load_balancer_attribute(key: &str, value: &str) -> R<()> {
    match key {
        "idle_timeout.timeout_seconds" => attr_int(
            key,
            value,
            |n| (1..=4000).contains(&n),
            "between 1 and 4000 seconds",
        ),
        "client_keep_alive.seconds" => attr_int(
            key,
            value,
            |n| (60..=604_800).contains(&n),
            "between 60 and 604800 seconds",
        ),
        "access_logs.s3.enabled" | "connection_logs.s3.enabled" => {
            attr_one_of(key, value, &["true", "false"])?;
            if value == "true" {
                let what = key.split('.').next().unwrap_or(key).replace('_', " ");
                return Err(ElbError::kind(
                    ErrorKind::InvalidConfigurationRequest,
                    format!(
                        "Attribute '{key}' cannot be 'true': berth is self-hosted and has no S3 to write {what} to"
                    ),
                ));
            }
            Ok(())
        }
        "deletion_protection.enabled"
        | "routing.http2.enabled"
        | "routing.http.drop_invalid_header_fields.enabled"
        | "routing.http.x_amzn_tls_version_and_cipher_suite.enabled"
        | "routing.http.xff_client_port.enabled"
        | "routing.http.preserve_host_header.enabled"
        | "waf.fail_open.enabled" => attr_one_of(key, value, &["true", "false"]),
        "routing.http.xff_header_processing.mode" => {
            attr_one_of(key, value, &["append", "preserve", "remove"])
        }
        "routing.http.desync_mitigation_mode" => {
            attr_one_of(key, value, &["monitor", "defensive", "strictest"])
        }
        "access_logs.s3.bucket" | "access_logs.s3.prefix" => Ok(()),
        other => Err(invalid(format!(
            "Load balancer attribute key '{other}' is not recognized"
        ))),
    }
}

// ---------------------------------------------------------------- targets

/// `Targets.member.N.Id/Port/AvailabilityZone`, required and non-empty. Ports default
/// to the group's; `ip` targets must be IP addresses.
pub fn targets(p: &Params<'_>, target_type: &str, default_port: u16) -> R<Vec<TargetDescription>> {
    let items = p.struct_list("Targets")?.unwrap_or_default();
    if items.is_empty() {
        return Err(invalid("At least one target must be specified"));
    }
    let mut out: Vec<TargetDescription> = Vec::new();
    for item in &items {
        let t = item.params();
        let id = t.req_str("Id")?;
        let port = t
            .int("Port", 1, 65535)?
            .map(|n| n as u16)
            .unwrap_or(default_port);
        if target_type == "ip" && id.parse::<IpAddr>().is_err() {
            return Err(ElbError::kind(
                ErrorKind::InvalidTarget,
                format!("The IP address '{id}' is not a valid IPv4 or IPv6 address"),
            ));
        }
        let az = t.str("AvailabilityZone")?.filter(|s| !s.is_empty());
        if !out.iter().any(|x| x.id == id && x.port == Some(port)) {
            out.push(TargetDescription {
                id: id.to_string(),
                port: Some(port),
                availability_zone: az.map(String::from),
            });
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------- actions

/// What validating actions needs to know about target groups.
pub trait Lookup {
    /// The group's target type and the load balancers it is already used by, or
    /// `None` when it does not exist.
    fn target_group(&self, arn: &str) -> Option<(String, Vec<String>)>;
}

const CONTENT_TYPES: [&str; 5] = [
    "text/plain",
    "text/css",
    "text/html",
    "application/javascript",
    "application/json",
];

fn forward_action(a: &Params<'_>, lookup: &dyn Lookup, load_balancer: &str) -> R<Action> {
    let single = a.str("TargetGroupArn")?.filter(|s| !s.is_empty());
    let cfg = a.sub("ForwardConfig")?;
    let mut tuples: Vec<TargetGroupTuple> = Vec::new();
    let mut stickiness = TargetGroupStickinessConfig {
        enabled: Some(false),
        duration_seconds: None,
    };
    if let Some(cfg) = &cfg {
        let c = cfg.params();
        for item in c.struct_list("TargetGroups")?.unwrap_or_default() {
            let t = item.params();
            let arn = t.req_str("TargetGroupArn")?;
            let weight = t.int("Weight", 0, 999)?.unwrap_or(1) as u32;
            if tuples.iter().any(|x| x.target_group_arn == arn) {
                return Err(invalid(format!(
                    "Target group '{arn}' is given more than once in {}",
                    cfg.path()
                )));
            }
            tuples.push(TargetGroupTuple {
                target_group_arn: arn.to_string(),
                weight: Some(weight),
            });
        }
        if let Some(s) = c.sub("TargetGroupStickinessConfig")? {
            let s = s.params();
            let enabled = s.bool("Enabled")?.unwrap_or(false);
            let duration = s.int("DurationSeconds", 1, 604_800)?.map(|n| n as u32);
            if enabled && duration.is_none() {
                return Err(invalid(
                    "TargetGroupStickinessConfig.DurationSeconds is required when target group stickiness is enabled",
                ));
            }
            stickiness = TargetGroupStickinessConfig {
                enabled: Some(enabled),
                duration_seconds: duration,
            };
        }
    }
    match (&single, tuples.len()) {
        (None, 0) => {
            return Err(invalid(
                "A forward action needs a TargetGroupArn or ForwardConfig.TargetGroups",
            ))
        }
        (Some(arn), 0) => tuples.push(TargetGroupTuple {
            target_group_arn: arn.to_string(),
            weight: Some(1),
        }),
        (Some(arn), 1) if tuples[0].target_group_arn == *arn => {}
        (Some(_), _) => {
            return Err(invalid(
                "TargetGroupArn and ForwardConfig.TargetGroups name different target groups: give the groups in ForwardConfig only",
            ))
        }
        (None, n) if n > 5 => {
            return Err(invalid(format!(
                "A forward action can have at most 5 target groups, not {n}"
            )))
        }
        (None, _) => {}
    }
    let mut too_many_lbs = Vec::new();
    for t in &tuples {
        match lookup.target_group(&t.target_group_arn) {
            None => {
                return Err(ElbError::kind(
                    ErrorKind::TargetGroupNotFound,
                    format!("Target group '{}' not found", t.target_group_arn),
                ))
            }
            Some((_, lbs)) => {
                if !load_balancer.is_empty() && lbs.iter().any(|l| l != load_balancer) {
                    too_many_lbs.push(t.target_group_arn.clone());
                }
            }
        }
    }
    if !too_many_lbs.is_empty() {
        return Err(ElbError::kind(
            ErrorKind::TargetGroupAssociationLimit,
            format!(
                "The following target groups cannot be associated with more than one load balancer: {}",
                too_many_lbs.join(", ")
            ),
        ));
    }
    let single = (tuples.len() == 1).then(|| tuples[0].target_group_arn.clone());
    Ok(Action {
        action_type: "forward".into(),
        target_group_arn: single,
        order: None,
        forward_config: Some(ForwardActionConfig {
            target_groups: tuples,
            target_group_stickiness_config: Some(stickiness),
        }),
        fixed_response_config: None,
        redirect_config: None,
    })
}

fn fixed_response_action(a: &Params<'_>) -> R<Action> {
    let cfg = a.sub("FixedResponseConfig")?.ok_or_else(|| {
        invalid("A fixed-response action needs FixedResponseConfig with a StatusCode")
    })?;
    let c = cfg.params();
    let status = c.req_str("StatusCode")?;
    let b = status.as_bytes();
    if b.len() != 3 || !matches!(b[0], b'2' | b'4' | b'5') || !b[1..].iter().all(u8::is_ascii_digit)
    {
        return Err(invalid(format!(
            "Fixed response status code '{status}' must be a 2XX, 4XX or 5XX code"
        )));
    }
    let content_type = match c.str("ContentType")? {
        None | Some("") => None,
        Some(t) if CONTENT_TYPES.contains(&t) => Some(t.to_string()),
        Some(t) => {
            return Err(invalid(format!(
                "Content type '{t}' is not valid: use one of {}",
                CONTENT_TYPES.join(", ")
            )))
        }
    };
    let body = c.str("MessageBody")?.map(String::from);
    if let Some(b) = &body {
        if b.len() > 1024 {
            return Err(invalid(format!(
                "Fixed response message body is {} bytes long; the limit is 1024",
                b.len()
            )));
        }
    }
    Ok(Action {
        action_type: "fixed-response".into(),
        fixed_response_config: Some(FixedResponseActionConfig {
            status_code: status.to_string(),
            content_type,
            message_body: body,
        }),
        ..Default::default()
    })
}

/// `listener`: the protocol and port of the listener the action runs on, when known,
/// to recognise a redirect to the same URL.
fn redirect_action(a: &Params<'_>, listener: Option<(&str, u16)>) -> R<Action> {
    let cfg = a
        .sub("RedirectConfig")?
        .ok_or_else(|| invalid("A redirect action needs RedirectConfig with a StatusCode"))?;
    let c = cfg.params();
    let status = c.req_str("StatusCode")?;
    if !matches!(status, "HTTP_301" | "HTTP_302") {
        return Err(invalid(format!(
            "Redirect status code '{status}' must be HTTP_301 or HTTP_302"
        )));
    }
    let protocol = c.str("Protocol")?.unwrap_or("#{protocol}");
    if !matches!(protocol, "HTTP" | "HTTPS" | "#{protocol}") {
        return Err(invalid(format!(
            "Redirect protocol '{protocol}' must be HTTP, HTTPS or #{{protocol}}"
        )));
    }
    let port = c.str("Port")?.unwrap_or("#{port}");
    if port != "#{port}" && !matches!(port.parse::<u32>(), Ok(1..=65535)) {
        return Err(invalid(format!(
            "Redirect port '{port}' must be between 1 and 65535 or #{{port}}"
        )));
    }
    let host = c.str("Host")?.unwrap_or("#{host}");
    let path = c.str("Path")?.unwrap_or("/#{path}");
    let query = c.str("Query")?.unwrap_or("#{query}");
    for (what, v) in [("host", host), ("path", path), ("query", query)] {
        if v.len() > 128 || (what != "query" && v.is_empty()) {
            return Err(invalid(format!(
                "Redirect {what} '{v}' must be between {} and 128 characters long",
                if what == "query" { 0 } else { 1 }
            )));
        }
    }
    if !path.starts_with('/') {
        return Err(invalid(format!(
            "Redirect path '{path}' must begin with a '/'"
        )));
    }
    if query.starts_with('?') {
        return Err(invalid(format!(
            "Redirect query '{query}' must not begin with '?': it is added for you"
        )));
    }
    let same_protocol = protocol == "#{protocol}"
        || listener.is_some_and(|(p, _)| p.eq_ignore_ascii_case(protocol));
    let same_port = port == "#{port}" || listener.is_some_and(|(_, lp)| port == lp.to_string());
    if same_protocol && same_port && host == "#{host}" && path == "/#{path}" && query == "#{query}"
    {
        return Err(bad_action(
            "The redirect configuration is not valid because it creates a loop: change the protocol, port, host, path or query",
        ));
    }
    Ok(Action {
        action_type: "redirect".into(),
        redirect_config: Some(RedirectActionConfig {
            status_code: status.to_string(),
            protocol: Some(protocol.to_string()),
            host: Some(host.to_string()),
            port: Some(port.to_string()),
            path: Some(path.to_string()),
            query: Some(query.to_string()),
        }),
        ..Default::default()
    })
}

/// `name` (`Actions` or `DefaultActions`) → validated, normalised actions: exactly one
/// terminal action (forward, fixed-response or redirect); forward gets its
/// `ForwardConfig` filled in. `load_balancer` is the ARN the listener belongs to
/// (for the one-load-balancer-per-target-group rule), `listener` its protocol/port.
pub fn actions(
    p: &Params<'_>,
    name: &str,
    lookup: &dyn Lookup,
    load_balancer: &str,
    listener: Option<(&str, u16)>,
) -> R<Vec<Action>> {
    let items = p.struct_list(name)?.unwrap_or_default();
    if items.is_empty() {
        return Err(invalid(format!(
            "At least one action must be specified in {name}"
        )));
    }
    let mut out = Vec::new();
    let mut orders = BTreeSet::new();
    for item in &items {
        let a = item.params();
        let ty = a.req_str("Type")?;
        let mut action = match ty {
            "forward" => forward_action(&a, lookup, load_balancer)?,
            "fixed-response" => fixed_response_action(&a)?,
            "redirect" => redirect_action(&a, listener)?,
            "authenticate-oidc" | "authenticate-cognito" | "jwt-validation" => {
                return Err(bad_action(format!(
                    "Action type '{ty}' requires an HTTPS listener, and berth has no HTTPS listeners (no certificate store) yet"
                )))
            }
            other => {
                return Err(invalid(format!(
                    "Action type '{other}' is not valid: use forward, fixed-response or redirect"
                )))
            }
        };
        if let Some(order) = a.int("Order", 1, 50_000)? {
            if !orders.insert(order) {
                return Err(bad_action(format!(
                    "Action order '{order}' is given to more than one action"
                )));
            }
            action.order = Some(order as u32);
        }
        out.push(action);
    }
    if out.len() > 1 {
        return Err(bad_action(format!(
            "{name} has {} actions; a rule or listener has exactly one forward, redirect or fixed-response action (authenticate actions need HTTPS)",
            out.len()
        )));
    }
    Ok(out)
}

// ---------------------------------------------------------------- conditions

fn path_pattern(v: &str) -> R<()> {
    if v.is_empty() || v.chars().count() > 128 {
        return Err(invalid(format!(
            "Path pattern '{v}' must be between 1 and 128 characters long"
        )));
    }
    if let Some(c) = v
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "_-.$/~\"'@:+&*?".contains(*c)))
    {
        return Err(invalid(format!(
            "Path pattern '{v}' contains '{c}'; allowed are A-Z, a-z, 0-9, _ - . $ / ~ \" ' @ : + & * ?"
        )));
    }
    Ok(())
}

fn host_header(v: &str) -> R<()> {
    if v.is_empty() || v.chars().count() > 128 {
        return Err(invalid(format!(
            "Host header '{v}' must be between 1 and 128 characters long"
        )));
    }
    if let Some(c) = v
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-.*?".contains(*c)))
    {
        return Err(invalid(format!(
            "Host header '{v}' contains '{c}'; allowed are A-Z, a-z, 0-9, - . * ?"
        )));
    }
    let Some((_, tld)) = v.rsplit_once('.') else {
        return Err(invalid(format!(
            "Host header '{v}' must contain at least one '.'"
        )));
    };
    if tld.is_empty()
        || !tld
            .chars()
            .all(|c| c.is_ascii_alphabetic() || c == '*' || c == '?')
    {
        return Err(invalid(format!(
            "Host header '{v}' must have only letters after its last '.'"
        )));
    }
    Ok(())
}

fn method(v: &str) -> R<()> {
    if v.is_empty()
        || v.len() > 40
        || !v
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_')
    {
        return Err(invalid(format!(
            "HTTP request method '{v}' must be 1-40 characters of A-Z, '-' or '_'"
        )));
    }
    Ok(())
}

fn cidr(v: &str) -> R<()> {
    let bad = || {
        invalid(format!(
            "Source IP '{v}' is not a valid CIDR block (such as 10.0.0.0/8)"
        ))
    };
    let (ip, len) = v.split_once('/').ok_or_else(bad)?;
    let ip: IpAddr = ip.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    if len > if ip.is_ipv4() { 32 } else { 128 } {
        return Err(bad());
    }
    Ok(())
}

fn header_value(what: &str, v: &str) -> R<()> {
    if v.is_empty() || v.chars().count() > 128 {
        return Err(invalid(format!(
            "{what} '{v}' must be between 1 and 128 characters long"
        )));
    }
    Ok(())
}

/// Values of a condition from either the legacy `Values` or the field's `*Config.Values`
/// (not both).
fn config_values(c: &Params<'_>, field: &str, config: &str) -> R<Vec<String>> {
    let legacy = c.str_list("Values")?;
    let cfg = match c.sub(config)? {
        Some(s) => Some(s.params().str_list("Values")?.unwrap_or_default()),
        None => None,
    };
    let values = match (legacy, cfg) {
        (Some(_), Some(_)) => {
            return Err(invalid(format!(
                "A '{field}' condition takes Values or {config}, not both"
            )))
        }
        (Some(v), None) | (None, Some(v)) => v,
        (None, None) => vec![],
    };
    if values.is_empty() {
        return Err(invalid(format!(
            "A '{field}' condition needs at least one value ({config}.Values)"
        )));
    }
    Ok(values)
}

/// `Conditions.member.N` → validated conditions, normalised as ALB echoes them
/// (path-pattern and host-header carry both `Values` and their `*Config`).
pub fn conditions(p: &Params<'_>) -> R<Vec<RuleCondition>> {
    let items = p.struct_list("Conditions")?.unwrap_or_default();
    if items.is_empty() {
        return Err(invalid("A rule must have at least one condition"));
    }
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    let mut total = 0usize;
    for item in &items {
        let c = item.params();
        let field = c.req_str("Field")?;
        if matches!(
            field,
            "path-pattern" | "host-header" | "http-request-method" | "source-ip"
        ) && !seen.insert(field.to_string())
        {
            return Err(invalid(format!(
                "A rule can have only one '{field}' condition"
            )));
        }
        let mut cond = RuleCondition {
            field: field.to_string(),
            ..Default::default()
        };
        match field {
            "path-pattern" => {
                let v = config_values(&c, field, "PathPatternConfig")?;
                v.iter().try_for_each(|x| path_pattern(x))?;
                total += v.len();
                cond.values = v.clone();
                cond.path_pattern_config = Some(Values { values: v });
            }
            "host-header" => {
                let v = config_values(&c, field, "HostHeaderConfig")?;
                v.iter().try_for_each(|x| host_header(x))?;
                total += v.len();
                cond.values = v.clone();
                cond.host_header_config = Some(Values { values: v });
            }
            "http-request-method" => {
                let v = config_values(&c, field, "HttpRequestMethodConfig")?;
                v.iter().try_for_each(|x| method(x))?;
                total += v.len();
                cond.http_request_method_config = Some(Values { values: v });
            }
            "source-ip" => {
                let v = config_values(&c, field, "SourceIpConfig")?;
                v.iter().try_for_each(|x| cidr(x))?;
                total += v.len();
                cond.source_ip_config = Some(Values { values: v });
            }
            "http-header" => {
                let cfg = c.sub("HttpHeaderConfig")?.ok_or_else(|| {
                    invalid("An 'http-header' condition needs HttpHeaderConfig with HttpHeaderName and Values")
                })?;
                let h = cfg.params();
                let name = h.req_str("HttpHeaderName")?;
                if name.len() > 40
                    || !name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
                {
                    return Err(invalid(format!(
                        "HTTP header name '{name}' must be 1-40 characters of a valid header name"
                    )));
                }
                if name.eq_ignore_ascii_case("host") {
                    return Err(invalid(
                        "Use a 'host-header' condition to match the Host header",
                    ));
                }
                let v = h.str_list("Values")?.unwrap_or_default();
                if v.is_empty() {
                    return Err(invalid(format!(
                        "The 'http-header' condition on '{name}' needs at least one value"
                    )));
                }
                v.iter().try_for_each(|x| header_value("HTTP header value", x))?;
                total += v.len();
                cond.http_header_config = Some(HttpHeaderConfig {
                    http_header_name: name.to_string(),
                    values: v,
                });
            }
            "query-string" => {
                let cfg = c.sub("QueryStringConfig")?.ok_or_else(|| {
                    invalid("A 'query-string' condition needs QueryStringConfig.Values")
                })?;
                let items = cfg.params().struct_list("Values")?.unwrap_or_default();
                if items.is_empty() {
                    return Err(invalid(
                        "A 'query-string' condition needs at least one key/value pair",
                    ));
                }
                let mut kvs = Vec::new();
                for kv in &items {
                    let q = kv.params();
                    let key = q.str("Key")?.map(String::from);
                    if let Some(k) = &key {
                        header_value("Query string key", k)?;
                    }
                    let value = q.req_str("Value")?;
                    header_value("Query string value", value)?;
                    kvs.push(QueryStringKeyValue {
                        key,
                        value: value.to_string(),
                    });
                }
                total += kvs.len();
                cond.query_string_config = Some(QueryStringConfig { values: kvs });
            }
            other => {
                return Err(invalid(format!(
                    "Condition field '{other}' is not valid: use path-pattern, host-header, http-header, query-string, http-request-method or source-ip"
                )))
            }
        }
        out.push(cond);
    }
    if total > 5 {
        return Err(invalid(format!(
            "A rule can have at most 5 condition values in total, not {total}"
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::query::{decode_form, to_tree};
    use serde_json::{Map, Value};

    fn tree(body: &str) -> Map<String, Value> {
        to_tree(&decode_form(body.as_bytes()).unwrap()).unwrap()
    }

    struct Groups(Vec<(&'static str, Vec<String>)>);
    impl Lookup for Groups {
        fn target_group(&self, arn: &str) -> Option<(String, Vec<String>)> {
            self.0
                .iter()
                .find(|(a, _)| *a == arn)
                .map(|(_, lbs)| ("ip".into(), lbs.clone()))
        }
    }

    fn groups() -> Groups {
        Groups(vec![
            ("tg1", vec![]),
            ("tg2", vec!["lb1".into()]),
            ("tg3", vec!["lb2".into()]),
        ])
    }

    #[test]
    fn names() {
        assert!(load_balancer_name("stage01").is_ok());
        assert!(load_balancer_name(&"a".repeat(32)).is_ok());
        for bad in ["", "-a", "a-", "a_b", "internal-x", &"a".repeat(33)] {
            let e = load_balancer_name(bad).unwrap_err();
            assert_eq!(e.code, "ValidationError");
            assert!(e.message.contains(&format!("'{bad}'")), "{}", e.message);
        }
        assert!(target_group_name("auth").is_ok());
        assert!(target_group_name("internal-ok").is_ok());
        assert!(target_group_name("a.b").is_err());
    }

    #[test]
    fn http_codes() {
        for ok in ["200", "200,202", "200-299", "200,300-399", "499"] {
            http_code(ok).unwrap();
        }
        for bad in ["", "199", "500", "abc", "300-200", "200-", "200,,201"] {
            let e = http_code(bad).unwrap_err();
            assert!(
                e.message.contains(&format!("'{bad}'")),
                "{bad}: {}",
                e.message
            );
        }
    }

    #[test]
    fn target_group_defaults_as_alb() {
        let t = tree("Name=auth&Protocol=HTTP&Port=80&VpcId=vpc-local&HealthCheckPath=%2F&HealthCheckIntervalSeconds=5&HealthyThresholdCount=2&UnhealthyThresholdCount=2");
        let tg = new_target_group(&Params::new(&t)).unwrap();
        // Interval 5 without a timeout: the default timeout gives way.
        assert_eq!(tg.health_check_interval_seconds, 5);
        assert_eq!(tg.health_check_timeout_seconds, 4);
        assert_eq!(tg.vpc_id.as_deref(), Some("vpc-local"));
        let t = tree("Name=auth&Protocol=HTTP&Port=80&HealthCheckIntervalSeconds=5&HealthCheckTimeoutSeconds=5");
        let e = new_target_group(&Params::new(&t)).unwrap_err();
        assert_eq!(
            e.message,
            "Health check timeout '5' must be smaller than the interval '5'"
        );
        let t = tree("Name=auth&Protocol=HTTP&Port=80");
        let tg = new_target_group(&Params::new(&t)).unwrap();
        assert_eq!(tg.health_check_interval_seconds, 30);
        assert_eq!(tg.health_check_timeout_seconds, 5);
        assert_eq!(tg.healthy_threshold_count, 5);
        assert_eq!(tg.unhealthy_threshold_count, 2);
        assert_eq!(tg.health_check_path, "/");
        assert_eq!(tg.health_check_port, "traffic-port");
        assert_eq!(tg.matcher.http_code.as_deref(), Some("200"));
        assert_eq!(tg.target_type, "instance");
        assert!(tg.health_check_enabled);
        assert_eq!(tg.vpc_id, None);
    }

    #[test]
    fn target_group_refusals() {
        let cases = [
            ("Name=a&Protocol=HTTPS&Port=80", "UnsupportedProtocol", "HTTPS"),
            ("Name=a&Protocol=TCP&Port=80", "UnsupportedProtocol", "TCP"),
            ("Name=a&Protocol=FOO&Port=80", "ValidationError", "FOO"),
            ("Name=a&Protocol=HTTP", "ValidationError", "port"),
            ("Name=a&Protocol=HTTP&Port=80&TargetType=lambda", "ValidationError", "lambda"),
            ("Name=a&Protocol=HTTP&Port=0", "ValidationError", "'0'"),
            ("Name=a&Protocol=HTTP&Port=80&HealthCheckIntervalSeconds=301", "ValidationError", "'301'"),
            ("Name=a&Protocol=HTTP&Port=80&HealthCheckTimeoutSeconds=1", "ValidationError", "'1'"),
            ("Name=a&Protocol=HTTP&Port=80&HealthyThresholdCount=11", "ValidationError", "'11'"),
            ("Name=a&Protocol=HTTP&Port=80&UnhealthyThresholdCount=1", "ValidationError", "'1'"),
            ("Name=a&Protocol=HTTP&Port=80&HealthCheckPath=health", "ValidationError", "'health'"),
            ("Name=a&Protocol=HTTP&Port=80&HealthCheckPort=70000", "ValidationError", "'70000'"),
            ("Name=a&Protocol=HTTP&Port=80&Matcher.HttpCode=600", "ValidationError", "'600'"),
            ("Name=a&Protocol=HTTP&Port=80&HealthCheckProtocol=HTTPS", "UnsupportedProtocol", "HTTPS"),
            ("Name=a&Protocol=HTTP&Port=80&HealthCheckEnabled=false", "ValidationError", "disabled"),
            ("Name=a&Protocol=HTTP&Port=80&HealthCheckIntervalSeconds=10&HealthCheckTimeoutSeconds=10", "ValidationError", "'10'"),
        ];
        for (body, code, needle) in cases {
            let t = tree(body);
            let e = new_target_group(&Params::new(&t)).unwrap_err();
            assert_eq!(e.code, code, "{body}: {e:?}");
            assert!(e.message.contains(needle), "{body}: {}", e.message);
        }
    }

    #[test]
    fn target_group_patch_checks_the_result() {
        let t = tree("Name=auth&Protocol=HTTP&Port=80");
        let tg = new_target_group(&Params::new(&t)).unwrap();
        let t = tree("HealthCheckTimeoutSeconds=40");
        let e = target_group_patch(&Params::new(&t), &tg).unwrap_err();
        assert!(e.message.contains("'40'") && e.message.contains("'30'"));
        let t = tree(
            "HealthCheckIntervalSeconds=60&HealthCheckTimeoutSeconds=40&Matcher.HttpCode=200-399",
        );
        let p = target_group_patch(&Params::new(&t), &tg).unwrap();
        assert_eq!(p.health_check_timeout_seconds, Some(40));
        assert_eq!(p.matcher.unwrap().http_code.as_deref(), Some("200-399"));
    }

    #[test]
    fn attributes() {
        let t = tree("Attributes.member.1.Key=deregistration_delay.timeout_seconds&Attributes.member.1.Value=30&Attributes.member.2.Key=load_balancing.algorithm.type&Attributes.member.2.Value=least_outstanding_requests");
        let a = target_group_attributes(&Params::new(&t)).unwrap();
        assert_eq!(a.len(), 2);
        let merged = berth_model::elb::merge_attributes(&default_attributes(), &a);
        assert_eq!(merged.len(), default_attributes().len());
        let s = berth_model::elb::TargetGroupSettings::from_attributes(&merged);
        assert_eq!(s.deregistration_delay_secs, 30);
        assert_eq!(s.algorithm, "least_outstanding_requests");
        for (k, v, needle) in [
            ("deregistration_delay.timeout_seconds", "3601", "3601"),
            ("slow_start.duration_seconds", "10", "'10'"),
            (
                "load_balancing.algorithm.type",
                "weighted_random",
                "weighted_random",
            ),
            ("no.such.key", "1", "no.such.key"),
            ("stickiness.type", "source_ip", "source_ip"),
            ("stickiness.app_cookie.cookie_name", "AWSALBX", "AWSALBX"),
        ] {
            let t = tree(&format!(
                "Attributes.member.1.Key={k}&Attributes.member.1.Value={v}"
            ));
            let e = target_group_attributes(&Params::new(&t)).unwrap_err();
            assert_eq!(e.code, "ValidationError");
            assert!(e.message.contains(needle), "{k}={v}: {}", e.message);
        }
        for (k, v) in [
            ("slow_start.duration_seconds", "0"),
            ("slow_start.duration_seconds", "30"),
            ("stickiness.enabled", "true"),
            ("stickiness.lb_cookie.duration_seconds", "604800"),
        ] {
            let t = tree(&format!(
                "Attributes.member.1.Key={k}&Attributes.member.1.Value={v}"
            ));
            target_group_attributes(&Params::new(&t)).unwrap();
        }
    }

    #[test]
    fn load_balancer_attributes_are_checked() {
        let t = tree("Attributes.member.1.Key=idle_timeout.timeout_seconds&Attributes.member.1.Value=5&Attributes.member.2.Key=deletion_protection.enabled&Attributes.member.2.Value=true&Attributes.member.3.Key=idle_timeout.timeout_seconds&Attributes.member.3.Value=7");
        let a = load_balancer_attributes(&Params::new(&t)).unwrap();
        assert_eq!(a.len(), 2, "the later duplicate wins: {a:?}");
        let s = berth_model::elb::LoadBalancerSettings::from_attributes(&a);
        assert_eq!(s.idle_timeout_secs, 7);
        assert!(s.deletion_protection);
        for (k, v, code) in [
            ("no.such.key", "1", "ValidationError"),
            ("idle_timeout.timeout_seconds", "0", "ValidationError"),
            ("idle_timeout.timeout_seconds", "4001", "ValidationError"),
            ("idle_timeout.timeout_seconds", "ten", "ValidationError"),
            ("client_keep_alive.seconds", "59", "ValidationError"),
            ("client_keep_alive.seconds", "604801", "ValidationError"),
            ("routing.http2.enabled", "yes", "ValidationError"),
            (
                "routing.http.xff_header_processing.mode",
                "drop",
                "ValidationError",
            ),
            (
                "routing.http.desync_mitigation_mode",
                "lax",
                "ValidationError",
            ),
            ("access_logs.s3.enabled", "maybe", "ValidationError"),
            (
                "access_logs.s3.enabled",
                "true",
                "InvalidConfigurationRequest",
            ),
            (
                "connection_logs.s3.enabled",
                "true",
                "InvalidConfigurationRequest",
            ),
        ] {
            let t = tree(&format!(
                "Attributes.member.1.Key={k}&Attributes.member.1.Value={v}"
            ));
            let e = load_balancer_attributes(&Params::new(&t)).unwrap_err();
            assert_eq!(e.code, code, "{k}={v}: {e:?}");
            assert!(e.message.contains(k), "{k}={v}: {}", e.message);
            if code == "ValidationError" && k != "no.such.key" {
                assert!(
                    e.message.contains(&format!("'{v}'")),
                    "{k}={v}: {}",
                    e.message
                );
            }
        }
        for (k, v) in [
            ("idle_timeout.timeout_seconds", "1"),
            ("idle_timeout.timeout_seconds", "4000"),
            ("client_keep_alive.seconds", "60"),
            ("routing.http.xff_header_processing.mode", "remove"),
            ("routing.http.desync_mitigation_mode", "strictest"),
            ("access_logs.s3.enabled", "false"),
            ("access_logs.s3.bucket", "logs"),
        ] {
            let t = tree(&format!(
                "Attributes.member.1.Key={k}&Attributes.member.1.Value={v}"
            ));
            load_balancer_attributes(&Params::new(&t)).unwrap();
        }
    }

    #[test]
    fn forward_is_normalised() {
        let t =
            tree("DefaultActions.member.1.Type=forward&DefaultActions.member.1.TargetGroupArn=tg1");
        let a = actions(
            &Params::new(&t),
            "DefaultActions",
            &groups(),
            "lb1",
            Some(("HTTP", 80)),
        )
        .unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].target_group_arn.as_deref(), Some("tg1"));
        let fc = a[0].forward_config.as_ref().unwrap();
        assert_eq!(
            fc.target_groups,
            vec![TargetGroupTuple {
                target_group_arn: "tg1".into(),
                weight: Some(1)
            }]
        );
        assert_eq!(
            fc.target_group_stickiness_config.as_ref().unwrap().enabled,
            Some(false)
        );

        let t = tree("Actions.member.1.Type=forward&Actions.member.1.ForwardConfig.TargetGroups.member.1.TargetGroupArn=tg1&Actions.member.1.ForwardConfig.TargetGroups.member.1.Weight=3&Actions.member.1.ForwardConfig.TargetGroups.member.2.TargetGroupArn=tg2&Actions.member.1.ForwardConfig.TargetGroups.member.2.Weight=0");
        let a = actions(&Params::new(&t), "Actions", &groups(), "lb1", None).unwrap();
        assert_eq!(a[0].target_group_arn, None);
        assert_eq!(
            a[0].forward_targets(),
            vec![("tg1".into(), 3), ("tg2".into(), 0)]
        );
    }

    #[test]
    fn action_refusals() {
        let cases = [
            ("Actions.member.1.Type=forward&Actions.member.1.TargetGroupArn=nope", "TargetGroupNotFound", "nope"),
            ("Actions.member.1.Type=forward&Actions.member.1.TargetGroupArn=tg3", "TargetGroupAssociationLimit", "tg3"),
            ("Actions.member.1.Type=forward", "ValidationError", "TargetGroupArn"),
            ("Actions.member.1.Type=forward&Actions.member.1.ForwardConfig.TargetGroups.member.1.TargetGroupArn=tg1&Actions.member.1.ForwardConfig.TargetGroups.member.1.Weight=1000", "ValidationError", "'1000'"),
            ("Actions.member.1.Type=authenticate-oidc", "InvalidLoadBalancerAction", "HTTPS"),
            ("Actions.member.1.Type=bogus", "ValidationError", "bogus"),
            ("Actions.member.1.Type=fixed-response&Actions.member.1.FixedResponseConfig.StatusCode=302", "ValidationError", "'302'"),
            ("Actions.member.1.Type=fixed-response&Actions.member.1.FixedResponseConfig.StatusCode=200&Actions.member.1.FixedResponseConfig.ContentType=text%2Fxml", "ValidationError", "text/xml"),
            ("Actions.member.1.Type=redirect&Actions.member.1.RedirectConfig.StatusCode=HTTP_307", "ValidationError", "HTTP_307"),
            ("Actions.member.1.Type=redirect&Actions.member.1.RedirectConfig.StatusCode=HTTP_301", "InvalidLoadBalancerAction", "loop"),
            ("Actions.member.1.Type=redirect&Actions.member.1.RedirectConfig.StatusCode=HTTP_301&Actions.member.1.RedirectConfig.Protocol=HTTP&Actions.member.1.RedirectConfig.Port=80", "InvalidLoadBalancerAction", "loop"),
            ("Actions.member.1.Type=fixed-response&Actions.member.1.FixedResponseConfig.StatusCode=200&Actions.member.2.Type=forward&Actions.member.2.TargetGroupArn=tg1", "InvalidLoadBalancerAction", "exactly one"),
            ("Actions=", "ValidationError", "At least one action"),
        ];
        for (body, code, needle) in cases {
            let t = tree(body);
            let e = actions(
                &Params::new(&t),
                "Actions",
                &groups(),
                "lb1",
                Some(("HTTP", 80)),
            )
            .unwrap_err();
            assert_eq!(e.code, code, "{body}: {e:?}");
            assert!(e.message.contains(needle), "{body}: {}", e.message);
        }
        let t = tree("Actions.member.1.Type=redirect&Actions.member.1.RedirectConfig.StatusCode=HTTP_302&Actions.member.1.RedirectConfig.Protocol=HTTPS&Actions.member.1.RedirectConfig.Port=443");
        let a = actions(
            &Params::new(&t),
            "Actions",
            &groups(),
            "lb1",
            Some(("HTTP", 80)),
        )
        .unwrap();
        let r = a[0].redirect_config.as_ref().unwrap();
        assert_eq!(
            (r.host.as_deref(), r.path.as_deref(), r.query.as_deref()),
            (Some("#{host}"), Some("/#{path}"), Some("#{query}"))
        );
    }

    #[test]
    fn conditions_are_validated_and_normalised() {
        let t = tree("Conditions.member.1.Field=path-pattern&Conditions.member.1.Values.member.1=%2Frandom%2F*&Conditions.member.2.Field=host-header&Conditions.member.2.HostHeaderConfig.Values.member.1=api.example.com");
        let c = conditions(&Params::new(&t)).unwrap();
        assert_eq!(c[0].values, vec!["/random/*"]);
        assert_eq!(
            c[0].path_pattern_config.as_ref().unwrap().values,
            vec!["/random/*"]
        );
        assert_eq!(c[1].values, vec!["api.example.com"]);
        assert_eq!(
            c[1].host_header_config.as_ref().unwrap().values,
            vec!["api.example.com"]
        );
        let cases = [
            ("Conditions.member.1.Field=path-pattern&Conditions.member.1.Values.member.1=%2Fa&Conditions.member.2.Field=path-pattern&Conditions.member.2.Values.member.1=%2Fb", "only one 'path-pattern'"),
            ("Conditions.member.1.Field=path-pattern&Conditions.member.1.Values.member.1=%2Fa%20b", "' '"),
            ("Conditions.member.1.Field=host-header&Conditions.member.1.Values.member.1=localhost", "'localhost'"),
            ("Conditions.member.1.Field=host-header&Conditions.member.1.Values.member.1=a.b1", "'a.b1'"),
            ("Conditions.member.1.Field=source-ip&Conditions.member.1.SourceIpConfig.Values.member.1=10.0.0.0%2F33", "'10.0.0.0/33'"),
            ("Conditions.member.1.Field=http-request-method&Conditions.member.1.HttpRequestMethodConfig.Values.member.1=get", "'get'"),
            ("Conditions.member.1.Field=cookie&Conditions.member.1.Values.member.1=x", "'cookie'"),
            ("Conditions.member.1.Field=path-pattern&Conditions.member.1.Values.member.1=%2Fa&Conditions.member.1.Values.member.2=%2Fb&Conditions.member.1.Values.member.3=%2Fc&Conditions.member.2.Field=host-header&Conditions.member.2.Values.member.1=a.b&Conditions.member.2.Values.member.2=c.d&Conditions.member.2.Values.member.3=e.f", "at most 5"),
            ("Conditions.member.1.Field=path-pattern", "at least one value"),
            ("Conditions=", "at least one condition"),
        ];
        for (body, needle) in cases {
            let t = tree(body);
            let e = conditions(&Params::new(&t)).unwrap_err();
            assert_eq!(e.code, "ValidationError");
            assert!(e.message.contains(needle), "{body}: {}", e.message);
        }
    }

    #[test]
    fn target_lists() {
        let t = tree(
            "Targets.member.1.Id=127.0.0.1&Targets.member.1.Port=9&Targets.member.2.Id=10.0.0.2",
        );
        let v = targets(&Params::new(&t), "ip", 80).unwrap();
        assert_eq!(v[0].port, Some(9));
        assert_eq!(v[1].port, Some(80));
        let t = tree("Targets.member.1.Id=not-an-ip");
        assert_eq!(
            targets(&Params::new(&t), "ip", 80).unwrap_err().code,
            "InvalidTarget"
        );
        let t = tree("Targets.member.1.Id=1.2.3.4&Targets.member.1.Port=0");
        assert!(targets(&Params::new(&t), "ip", 80)
            .unwrap_err()
            .message
            .contains("'0'"));
    }
}
