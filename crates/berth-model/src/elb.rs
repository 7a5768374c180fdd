//! ELBv2 (Application Load Balancer) shapes: load balancers, target groups,
//! listeners, rules, targets and their health, in the ELBv2 wire names
//! (PascalCase). The same types are stored (as JSON) and rendered (as XML by the
//! server's query-protocol front end) and read by the proxy (`berth-lb`).
//!
//! Pure: no I/O, no clocks.
use serde::{Deserialize, Serialize};

/// ALB's default for `deregistration_delay.timeout_seconds`.
pub const DEFAULT_DEREGISTRATION_DELAY_SECS: u32 = 300;

/// `arn:aws:elasticloadbalancing:{region}:{account}:loadbalancer/app/{name}/{id}`
pub fn load_balancer_arn(region: &str, account: &str, name: &str, id: &str) -> String {
    format!("arn:aws:elasticloadbalancing:{region}:{account}:loadbalancer/app/{name}/{id}")
}

/// `arn:aws:elasticloadbalancing:{region}:{account}:targetgroup/{name}/{id}`
pub fn target_group_arn(region: &str, account: &str, name: &str, id: &str) -> String {
    format!("arn:aws:elasticloadbalancing:{region}:{account}:targetgroup/{name}/{id}")
}

/// `…:listener/app/{lb-name}/{lb-id}/{id}`
pub fn listener_arn(load_balancer_arn: &str, id: &str) -> String {
    format!(
        "{}/{id}",
        load_balancer_arn.replacen(":loadbalancer/", ":listener/", 1)
    )
}

/// `…:listener-rule/app/{lb-name}/{lb-id}/{listener-id}/{id}`
pub fn rule_arn(listener_arn: &str, id: &str) -> String {
    format!(
        "{}/{id}",
        listener_arn.replacen(":listener/", ":listener-rule/", 1)
    )
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct LoadBalancerState {
    /// active | provisioning | active_impaired | failed
    pub code: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AvailabilityZone {
    pub zone_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subnet_id: Option<String>,
}

/// The `LoadBalancer` shape.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct LoadBalancer {
    pub load_balancer_arn: String,
    /// `{name}-{id}.{region}.elb.berth.local` (informational; berth serves on the
    /// addresses of its servers and `berth lb` nodes).
    #[serde(rename = "DNSName")]
    pub dns_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canonical_hosted_zone_id: Option<String>,
    /// Epoch seconds; rendered as ISO 8601 on the wire.
    pub created_time: f64,
    pub load_balancer_name: String,
    /// internet-facing | internal
    pub scheme: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vpc_id: Option<String>,
    pub state: LoadBalancerState,
    /// application (the only type berth serves)
    #[serde(rename = "Type")]
    pub lb_type: String,
    #[serde(default)]
    pub availability_zones: Vec<AvailabilityZone>,
    #[serde(default)]
    pub security_groups: Vec<String>,
    /// ipv4 | dualstack
    pub ip_address_type: String,
}

/// ALB's default for `idle_timeout.timeout_seconds`.
pub const DEFAULT_IDLE_TIMEOUT_SECS: u32 = 60;

/// Every attribute of an application load balancer with ALB's defaults, in the order
/// DescribeLoadBalancerAttributes lists them.
pub fn default_load_balancer_attributes() -> Vec<Attribute> {
    [
        ("idle_timeout.timeout_seconds", "60"),
        ("deletion_protection.enabled", "false"),
        ("routing.http2.enabled", "true"),
        ("routing.http.drop_invalid_header_fields.enabled", "false"),
        (
            "routing.http.x_amzn_tls_version_and_cipher_suite.enabled",
            "false",
        ),
        ("routing.http.xff_client_port.enabled", "false"),
        ("routing.http.xff_header_processing.mode", "append"),
        ("routing.http.preserve_host_header.enabled", "false"),
        ("routing.http.desync_mitigation_mode", "defensive"),
        ("waf.fail_open.enabled", "false"),
        ("access_logs.s3.enabled", "false"),
        ("access_logs.s3.bucket", ""),
        ("access_logs.s3.prefix", ""),
        ("client_keep_alive.seconds", "3600"),
        ("connection_logs.s3.enabled", "false"),
    ]
    .into_iter()
    .map(|(k, v)| Attribute {
        key: k.into(),
        value: v.into(),
    })
    .collect()
}

/// A load balancer as stored: the wire shape plus its attributes. The load balancer's
/// members are flattened into the record, so records written before load balancers had
/// attributes (a bare `LoadBalancer`) still read, with no attributes: readers call
/// [`LoadBalancerRecord::fill_defaults`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerRecord {
    #[serde(flatten)]
    pub load_balancer: LoadBalancer,
    /// Every attribute with its current value.
    #[serde(default)]
    pub attributes: Vec<Attribute>,
}

impl LoadBalancerRecord {
    /// A new load balancer with every attribute at ALB's default.
    pub fn new(load_balancer: LoadBalancer) -> Self {
        LoadBalancerRecord {
            load_balancer,
            attributes: default_load_balancer_attributes(),
        }
    }

    /// Adds the default of every attribute the record lacks (records stored before
    /// load balancers had attributes, or before an attribute was known).
    pub fn fill_defaults(&mut self) {
        for d in default_load_balancer_attributes() {
            if !self.attributes.iter().any(|a| a.key == d.key) {
                self.attributes.push(d);
            }
        }
    }

    pub fn settings(&self) -> LoadBalancerSettings {
        LoadBalancerSettings::from_attributes(&self.attributes)
    }
}

/// The load balancer attributes berth acts on, parsed from the stored key/value list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadBalancerSettings {
    /// Client connections of the load balancer's listeners idle this long are closed.
    pub idle_timeout_secs: u32,
    /// DeleteLoadBalancer is refused while set.
    pub deletion_protection: bool,
}

impl Default for LoadBalancerSettings {
    fn default() -> Self {
        LoadBalancerSettings {
            idle_timeout_secs: DEFAULT_IDLE_TIMEOUT_SECS,
            deletion_protection: false,
        }
    }
}

impl LoadBalancerSettings {
    /// Reads the attributes berth understands; unparsable ones keep defaults (the API
    /// validates values before they are stored).
    pub fn from_attributes(attrs: &[Attribute]) -> Self {
        let mut s = LoadBalancerSettings::default();
        for a in attrs {
            match a.key.as_str() {
                "idle_timeout.timeout_seconds" => {
                    if let Ok(v) = a.value.parse::<u32>() {
                        if v > 0 {
                            s.idle_timeout_secs = v;
                        }
                    }
                }
                "deletion_protection.enabled" => s.deletion_protection = a.value == "true",
                _ => {}
            }
        }
        s
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Matcher {
    /// "200", "200,202", "200-299"
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_code: Option<String>,
}

/// The `TargetGroup` shape.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TargetGroup {
    pub target_group_arn: String,
    pub target_group_name: String,
    /// HTTP (berth proxies HTTP only)
    pub protocol: String,
    pub port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vpc_id: Option<String>,
    pub health_check_protocol: String,
    /// a port number or `traffic-port`
    pub health_check_port: String,
    pub health_check_enabled: bool,
    pub health_check_interval_seconds: u32,
    pub health_check_timeout_seconds: u32,
    pub healthy_threshold_count: u32,
    pub unhealthy_threshold_count: u32,
    pub health_check_path: String,
    pub matcher: Matcher,
    #[serde(default)]
    pub load_balancer_arns: Vec<String>,
    /// instance | ip
    pub target_type: String,
    /// HTTP1 | HTTP2 | GRPC
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<String>,
    /// ipv4 | ipv6
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_address_type: Option<String>,
}

/// `{Key, Value}` of target group (and load balancer) attributes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Attribute {
    pub key: String,
    pub value: String,
}

/// Merges `changes` into `current` by key (order of `current` kept, new keys
/// appended): how ModifyTargetGroupAttributes and ModifyLoadBalancerAttributes apply.
pub fn merge_attributes(current: &[Attribute], changes: &[Attribute]) -> Vec<Attribute> {
    let mut out = current.to_vec();
    for c in changes {
        match out.iter_mut().find(|a| a.key == c.key) {
            Some(a) => a.value = c.value.clone(),
            None => out.push(c.clone()),
        }
    }
    out
}

/// The target group attributes berth acts on, parsed from the stored key/value list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetGroupSettings {
    pub deregistration_delay_secs: u32,
    /// `round_robin` | `least_outstanding_requests`
    pub algorithm: String,
    pub slow_start_secs: u32,
}

impl Default for TargetGroupSettings {
    fn default() -> Self {
        TargetGroupSettings {
            deregistration_delay_secs: DEFAULT_DEREGISTRATION_DELAY_SECS,
            algorithm: "round_robin".into(),
            slow_start_secs: 0,
        }
    }
}

impl TargetGroupSettings {
    /// Reads the attributes berth understands; unknown or unparsable ones keep defaults
    /// (the API validates values before they are stored).
    pub fn from_attributes(attrs: &[Attribute]) -> Self {
        let mut s = TargetGroupSettings::default();
        for a in attrs {
            match a.key.as_str() {
                "deregistration_delay.timeout_seconds" => {
                    if let Ok(v) = a.value.parse() {
                        s.deregistration_delay_secs = v;
                    }
                }
                "load_balancing.algorithm.type" => s.algorithm = a.value.clone(),
                "slow_start.duration_seconds" => {
                    if let Ok(v) = a.value.parse() {
                        s.slow_start_secs = v;
                    }
                }
                _ => {}
            }
        }
        s
    }
}

/// A target group as stored: the wire shape plus its attributes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetGroupRecord {
    pub target_group: TargetGroup,
    /// Every attribute with its current value (defaults filled in at creation).
    pub attributes: Vec<Attribute>,
}

impl TargetGroupRecord {
    pub fn settings(&self) -> TargetGroupSettings {
        TargetGroupSettings::from_attributes(&self.attributes)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Values {
    #[serde(default)]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HttpHeaderConfig {
    pub http_header_name: String,
    #[serde(default)]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct QueryStringKeyValue {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub value: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct QueryStringConfig {
    #[serde(default)]
    pub values: Vec<QueryStringKeyValue>,
}

/// `RuleCondition`. The API normalises legacy `Values` into the matching `*Config`
/// (path-pattern, host-header) and keeps both, as ELBv2 echoes them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RuleCondition {
    /// path-pattern | host-header | http-header | query-string | http-request-method | source-ip
    pub field: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_header_config: Option<Values>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_pattern_config: Option<Values>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_header_config: Option<HttpHeaderConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_string_config: Option<QueryStringConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_request_method_config: Option<Values>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_ip_config: Option<Values>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TargetGroupTuple {
    pub target_group_arn: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TargetGroupStickinessConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ForwardActionConfig {
    #[serde(default)]
    pub target_groups: Vec<TargetGroupTuple>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_group_stickiness_config: Option<TargetGroupStickinessConfig>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct FixedResponseActionConfig {
    /// "200", "404", "503" …
    pub status_code: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_body: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RedirectActionConfig {
    /// HTTP_301 | HTTP_302
    pub status_code: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
}

/// `Action`. For `forward` the API always fills `ForwardConfig` (a lone
/// `TargetGroupArn` becomes one tuple of weight 1) and keeps `TargetGroupArn` when
/// there is exactly one target group, as ELBv2 echoes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Action {
    /// forward | fixed-response | redirect
    #[serde(rename = "Type")]
    pub action_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_group_arn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forward_config: Option<ForwardActionConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fixed_response_config: Option<FixedResponseActionConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect_config: Option<RedirectActionConfig>,
}

impl Action {
    /// The weighted target groups of a forward action (empty for other types).
    pub fn forward_targets(&self) -> Vec<(String, u32)> {
        if self.action_type != "forward" {
            return vec![];
        }
        if let Some(fc) = &self.forward_config {
            if !fc.target_groups.is_empty() {
                return fc
                    .target_groups
                    .iter()
                    .map(|t| (t.target_group_arn.clone(), t.weight.unwrap_or(1)))
                    .collect();
            }
        }
        self.target_group_arn
            .iter()
            .map(|a| (a.clone(), 1))
            .collect()
    }
}

/// The `Listener` shape.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Listener {
    pub listener_arn: String,
    pub load_balancer_arn: String,
    pub port: u16,
    /// HTTP (HTTPS is refused: berth has no certificate store yet)
    pub protocol: String,
    #[serde(default)]
    pub default_actions: Vec<Action>,
}

/// The `Rule` shape. `Priority` is a string on the wire: "1".."50000" or "default".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Rule {
    pub rule_arn: String,
    pub priority: String,
    #[serde(default)]
    pub conditions: Vec<RuleCondition>,
    #[serde(default)]
    pub actions: Vec<Action>,
    pub is_default: bool,
}

/// A stored rule: the wire shape plus the listener it belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleRecord {
    pub listener_arn: String,
    pub rule: Rule,
}

/// `TargetDescription`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TargetDescription {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub availability_zone: Option<String>,
}

/// `TargetHealth`: State is initial | healthy | unhealthy | unused | draining |
/// unavailable; Reason is one of ALB's codes (`Elb.RegistrationInProgress`,
/// `Elb.InitialHealthChecking`, `Target.ResponseCodeMismatch`, `Target.Timeout`,
/// `Target.FailedHealthChecks`, `Target.NotRegistered`, `Target.NotInUse`,
/// `Target.DeregistrationInProgress`, `Target.HealthCheckDisabled`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TargetHealth {
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl TargetHealth {
    pub fn new(state: &str, reason: Option<&str>, description: Option<&str>) -> Self {
        TargetHealth {
            state: state.into(),
            reason: reason.map(Into::into),
            description: description.map(Into::into),
        }
    }
    /// A freshly registered target.
    pub fn initial() -> Self {
        TargetHealth::new(
            "initial",
            Some("Elb.RegistrationInProgress"),
            Some("Target registration is in progress"),
        )
    }
    pub fn healthy() -> Self {
        TargetHealth::new("healthy", None, None)
    }
    pub fn draining() -> Self {
        TargetHealth::new(
            "draining",
            Some("Target.DeregistrationInProgress"),
            Some("Target deregistration is in progress"),
        )
    }
}

/// The task a target was registered for by a service (ECS's wiring).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetTask {
    pub cluster: String,
    pub task_id: String,
    pub service_name: String,
}

/// One registered target of a target group, as stored. Key: (target group ARN, id, port).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetRecord {
    pub target_group_arn: String,
    /// Instance id (`instance` target type; for berth: the container instance id) or IP.
    pub id: String,
    pub port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub availability_zone: Option<String>,
    /// The IP address the load balancer connects to (an instance's host IP, or `id`
    /// itself for `ip` targets). Resolved when the target is registered.
    pub address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<TargetTask>,
    pub registered_at: f64,
    /// Set when deregistered: the target drains (no new requests) until then and is
    /// removed after.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_until: Option<f64>,
    /// As last reported by the leader's health checker (or `initial`/`draining`).
    pub health: TargetHealth,
    /// While draining: the load balancer nodes that reported it idle (no request in
    /// flight, and none can start). Once every active node has, its task may stop
    /// before `drain_until`, as ALB ends a deregistration early.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub idle_on: Vec<String>,
}

impl TargetRecord {
    pub fn draining(&self) -> bool {
        self.drain_until.is_some()
    }
    pub fn description(&self) -> TargetDescription {
        TargetDescription {
            id: self.id.clone(),
            port: Some(self.port),
            availability_zone: self.availability_zone.clone(),
        }
    }
}

/// ModifyTargetGroup's changes: each `Some` replaces the stored value (the API has
/// validated the values and their combination).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TargetGroupPatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check_protocol: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check_port: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check_enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check_interval_seconds: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check_timeout_seconds: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthy_threshold_count: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unhealthy_threshold_count: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matcher: Option<Matcher>,
}

impl TargetGroupPatch {
    /// Applies the patch to `tg`.
    pub fn apply_to(&self, tg: &mut TargetGroup) {
        if let Some(v) = &self.health_check_protocol {
            tg.health_check_protocol = v.clone();
        }
        if let Some(v) = &self.health_check_port {
            tg.health_check_port = v.clone();
        }
        if let Some(v) = &self.health_check_path {
            tg.health_check_path = v.clone();
        }
        if let Some(v) = self.health_check_enabled {
            tg.health_check_enabled = v;
        }
        if let Some(v) = self.health_check_interval_seconds {
            tg.health_check_interval_seconds = v;
        }
        if let Some(v) = self.health_check_timeout_seconds {
            tg.health_check_timeout_seconds = v;
        }
        if let Some(v) = self.healthy_threshold_count {
            tg.healthy_threshold_count = v;
        }
        if let Some(v) = self.unhealthy_threshold_count {
            tg.unhealthy_threshold_count = v;
        }
        if let Some(v) = &self.matcher {
            tg.matcher = v.clone();
        }
    }
}

/// A draining target that a load balancer node found idle, named with its drain
/// deadline so a report about an earlier drain of the same target is told apart.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrainIdle {
    pub target_group_arn: String,
    pub id: String,
    pub port: u16,
    pub drain_until: f64,
}

/// A health verdict from the leader's health checker for one target.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetHealthUpdate {
    pub target_group_arn: String,
    pub id: String,
    pub port: u16,
    pub health: TargetHealth,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lb() -> LoadBalancer {
        LoadBalancer {
            load_balancer_arn: load_balancer_arn("r", "1", "web", "abc"),
            load_balancer_name: "web".into(),
            scheme: "internet-facing".into(),
            lb_type: "application".into(),
            ip_address_type: "ipv4".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_load_balancer_stored_before_attributes_reads_with_the_defaults() {
        let old = serde_json::to_vec(&lb()).unwrap();
        let mut rec: LoadBalancerRecord = serde_json::from_slice(&old).unwrap();
        assert_eq!(rec.load_balancer, lb());
        assert!(rec.attributes.is_empty());
        rec.fill_defaults();
        assert_eq!(rec.attributes, default_load_balancer_attributes());
        assert_eq!(rec.settings(), LoadBalancerSettings::default());
    }

    #[test]
    fn a_record_round_trips_and_still_reads_as_a_load_balancer() {
        let mut rec = LoadBalancerRecord::new(lb());
        rec.attributes = merge_attributes(
            &rec.attributes,
            &[
                Attribute {
                    key: "idle_timeout.timeout_seconds".into(),
                    value: "5".into(),
                },
                Attribute {
                    key: "deletion_protection.enabled".into(),
                    value: "true".into(),
                },
            ],
        );
        let bytes = serde_json::to_vec(&rec).unwrap();
        let back: LoadBalancerRecord = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, rec);
        let bare: LoadBalancer = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(bare, lb());
        assert_eq!(
            back.settings(),
            LoadBalancerSettings {
                idle_timeout_secs: 5,
                deletion_protection: true
            }
        );
        assert_eq!(
            back.attributes.len(),
            default_load_balancer_attributes().len()
        );
    }
}
