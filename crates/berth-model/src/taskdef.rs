//! RegisterTaskDefinition: validation (§7.3 of the reference), defaults,
//! and task-definition references.

use std::collections::{BTreeMap, HashMap, HashSet};

use once_cell::sync::Lazy;
use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::arn::{is_arn, split_prefix, ArnContext};
use crate::error::ApiError;
use crate::types::{
    ContainerDefinition, HealthCheck, PortMapping, RegisterTaskDefinitionRequest, Tag,
    TaskDefinition, TaskDefinitionPlacementConstraint, Volume,
};
use crate::validate::{is_valid_name, validate_family, validate_tags};

/// Containers per task definition (ECS quota, not adjustable).
pub const MAX_CONTAINERS: usize = 10;
/// Maximum serialized RegisterTaskDefinition request, bytes.
pub const MAX_TASK_DEFINITION_BYTES: usize = 65536;
/// Placement constraints per task definition.
pub const MAX_PLACEMENT_CONSTRAINTS: usize = 10;
/// Task-level CPU range, units (1024 = 1 vCPU).
pub const MIN_TASK_CPU: u64 = 128;
pub const MAX_TASK_CPU: u64 = 196608;
/// Docker's minimum memory limit, MiB.
pub const MIN_CONTAINER_MEMORY_MIB: i64 = 6;

pub const NETWORK_MODES: &[&str] = &["bridge", "host", "awsvpc", "none"];
pub const PROTOCOLS: &[&str] = &["tcp", "udp"];
pub const APP_PROTOCOLS: &[&str] = &["http", "http2", "grpc"];
pub const CONTAINER_CONDITIONS: &[&str] = &["START", "COMPLETE", "SUCCESS", "HEALTHY"];
pub const LOG_DRIVERS: &[&str] = &[
    "json-file",
    "syslog",
    "journald",
    "gelf",
    "fluentd",
    "awslogs",
    "splunk",
    "awsfirelens",
];
pub const ULIMIT_NAMES: &[&str] = &[
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];
pub const PID_MODES: &[&str] = &["host", "task"];
pub const IPC_MODES: &[&str] = &["host", "task", "none"];
pub const COMPATIBILITIES: &[&str] = &["EC2", "FARGATE", "EXTERNAL", "MANAGED_INSTANCES"];
pub const CPU_ARCHITECTURES: &[&str] = &["X86_64", "ARM64"];
pub const OS_FAMILIES: &[&str] = &[
    "WINDOWS_SERVER_2019_FULL",
    "WINDOWS_SERVER_2019_CORE",
    "WINDOWS_SERVER_2016_FULL",
    "WINDOWS_SERVER_2004_CORE",
    "WINDOWS_SERVER_2022_CORE",
    "WINDOWS_SERVER_2022_FULL",
    "WINDOWS_SERVER_2025_CORE",
    "WINDOWS_SERVER_2025_FULL",
    "WINDOWS_SERVER_20H2_CORE",
    "LINUX",
];
pub const VOLUME_SCOPES: &[&str] = &["task", "shared"];
pub const DEVICE_PERMISSIONS: &[&str] = &["read", "write", "mknod"];
pub const RESOURCE_TYPES: &[&str] = &["GPU", "InferenceAccelerator", "NeuronDevice"];
pub const VERSION_CONSISTENCY: &[&str] = &["enabled", "disabled"];
pub const ENVIRONMENT_FILE_TYPES: &[&str] = &["s3"];

/// Health-check defaults ECS echoes back.
pub const HEALTH_CHECK_DEFAULT_INTERVAL: i64 = 30;
pub const HEALTH_CHECK_DEFAULT_TIMEOUT: i64 = 5;
pub const HEALTH_CHECK_DEFAULT_RETRIES: i64 = 3;

static PORT_NAME_RE: Lazy<Regex> =
    Lazy::new(|| Regex::new(r"^[a-z0-9_][a-z0-9_-]{0,63}$").unwrap());
static VCPU_RE: Lazy<Regex> =
    Lazy::new(|| Regex::new(r"(?i)^([0-9]+(?:\.[0-9]+)?)\s*vcpus?$").unwrap());
static GB_RE: Lazy<Regex> =
    Lazy::new(|| Regex::new(r"(?i)^([0-9]+(?:\.[0-9]+)?)\s*(gb|gib)$").unwrap());
static MB_RE: Lazy<Regex> = Lazy::new(|| Regex::new(r"(?i)^([0-9]+)\s*(mb|mib)$").unwrap());

// ---------------------------------------------------------------- spec

/// Everything a registered revision holds except the server-assigned
/// fields (ARN, revision, status, registeredAt, registeredBy).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskDefinitionSpec {
    /// `task_definition_arn: None`, `revision: 0`, `status: None`.
    pub task_definition: TaskDefinition,
    pub tags: Vec<Tag>,
}

impl TaskDefinitionSpec {
    /// Fill the server-assigned fields: ARN, revision, `status: ACTIVE`,
    /// `registeredAt`, `registeredBy`.
    pub fn into_registered(
        self,
        ctx: &ArnContext,
        revision: u32,
        registered_at: f64,
        registered_by: &str,
    ) -> TaskDefinition {
        let mut td = self.task_definition;
        td.task_definition_arn = Some(ctx.task_definition(&td.family, revision));
        td.revision = revision;
        td.status = Some("ACTIVE".to_string());
        td.registered_at = Some(registered_at);
        td.registered_by = Some(registered_by.to_string());
        td
    }
}

// ---------------------------------------------------------------- refs

/// A `taskDefinition` parameter: `family` (latest ACTIVE), `family:rev`, or
/// an ARN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskDefRef {
    pub family: String,
    pub revision: Option<u32>,
}

fn parse_revision(r: &str) -> Result<u32, ApiError> {
    match r.parse::<u32>() {
        Ok(n) if n >= 1 && r.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
        _ => Err(ApiError::invalid(format!(
            "Invalid revision number. Number: {r}"
        ))),
    }
}

/// Parse `"family"`, `"family:3"` or
/// `"arn:aws:ecs:{region}:{account}:task-definition/family[:3]"`.
pub fn parse_task_definition_ref(s: &str) -> Result<TaskDefRef, ApiError> {
    if s.trim().is_empty() {
        return Err(ApiError::client(
            "TaskDefinition should not be null or empty.",
        ));
    }
    let body = if is_arn(s) {
        let (_, _, rest) = split_prefix(s)?;
        rest.strip_prefix("task-definition/").ok_or_else(|| {
            ApiError::invalid(format!("Invalid ARN '{s}': not a task definition ARN"))
        })?
    } else {
        s
    };
    let (family, revision) = match body.rsplit_once(':') {
        Some((f, r)) => (f, Some(parse_revision(r)?)),
        None => (body, None),
    };
    validate_family(family)?;
    Ok(TaskDefRef {
        family: family.to_string(),
        revision,
    })
}

// ---------------------------------------------------------------- cpu / memory

/// Parse a non-negative decimal `int[.frac]` and multiply by `unit`,
/// requiring an exact integer result.
fn scaled_decimal(num: &str, unit: u64) -> Option<u64> {
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.len() > 12 || frac.len() > 12 {
        return None;
    }
    let int: u128 = int.parse().ok()?;
    let (fnum, fden): (u128, u128) = if frac.is_empty() {
        (0, 1)
    } else {
        (frac.parse().ok()?, 10u128.pow(frac.len() as u32))
    };
    let total = int * unit as u128 * fden + fnum * unit as u128;
    // Exact division only (`is_multiple_of` is newer than the workspace MSRV).
    let quotient = total / fden;
    if quotient * fden != total {
        return None;
    }
    u64::try_from(quotient).ok()
}

/// Task-level `cpu`: `"1024"`, `"1 vCPU"`, `"0.5 vcpu"` → CPU units as an
/// integer string, 128..=196608.
pub fn normalize_cpu(s: &str) -> Result<String, ApiError> {
    let t = s.trim();
    let units = if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        if t.len() > 12 {
            None
        } else {
            t.parse::<u64>().ok()
        }
    } else {
        VCPU_RE
            .captures(t)
            .and_then(|c| scaled_decimal(&c[1], 1024))
    };
    match units {
        Some(u) if (MIN_TASK_CPU..=MAX_TASK_CPU).contains(&u) => Ok(u.to_string()),
        _ => Err(ApiError::client(format!(
            "Invalid 'cpu' setting for task: '{s}'. Supported values are between 128 CPU units (0.125 vCPUs) and 196608 CPU units (192 vCPUs), given as units (\"1024\") or vCPUs (\"1 vCPU\")."
        ))),
    }
}

/// Task-level `memory`: `"1024"`, `"1GB"`, `"2 gb"`, `"512 MiB"` → MiB as an
/// integer string (at least 6).
pub fn normalize_memory(s: &str) -> Result<String, ApiError> {
    let t = s.trim();
    let mib = if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        if t.len() > 12 {
            None
        } else {
            t.parse::<u64>().ok()
        }
    } else if let Some(c) = GB_RE.captures(t) {
        scaled_decimal(&c[1], 1024)
    } else if let Some(c) = MB_RE.captures(t) {
        c[1].parse::<u64>().ok()
    } else {
        None
    };
    match mib {
        Some(m) if m >= MIN_CONTAINER_MEMORY_MIB as u64 && m <= u32::MAX as u64 => {
            Ok(m.to_string())
        }
        _ => Err(ApiError::client(format!(
            "Invalid 'memory' setting for task: '{s}'. Give MiB (\"1024\") or GB (\"1GB\"); the minimum is 6 MiB."
        ))),
    }
}

// ---------------------------------------------------------------- helpers

fn invalid(msg: String) -> ApiError {
    ApiError::invalid(msg)
}

fn one_of(
    what: &str,
    value: &str,
    allowed: &[&str],
    container: Option<&str>,
) -> Result<(), ApiError> {
    if allowed.contains(&value) {
        return Ok(());
    }
    let place = match container {
        Some(c) => format!(" in container '{c}'"),
        None => String::new(),
    };
    Err(invalid(format!(
        "Invalid value '{value}' for {what}{place}. Valid values: {}.",
        allowed.join(", ")
    )))
}

fn in_range(what: &str, value: i64, lo: i64, hi: i64, container: &str) -> Result<(), ApiError> {
    if (lo..=hi).contains(&value) {
        Ok(())
    } else {
        Err(invalid(format!(
            "Invalid '{what}' setting for container '{container}': {value}. The value must be between {lo} and {hi}."
        )))
    }
}

fn non_negative(what: &str, value: Option<i64>, container: &str) -> Result<(), ApiError> {
    match value {
        Some(v) if v < 0 => Err(invalid(format!(
            "Invalid '{what}' setting for container '{container}': {v}. The value must be 0 or greater."
        ))),
        _ => Ok(()),
    }
}

fn blank(s: &Option<String>) -> bool {
    match s {
        None => true,
        Some(v) => v.trim().is_empty(),
    }
}

// ---------------------------------------------------------------- validation

/// Validate a RegisterTaskDefinition request (every rule of §7.3 plus the
/// per-field rules of §7.1/§7.2) and fill in the defaults ECS echoes back.
/// Errors are `ClientException` or `InvalidParameterException` and name the
/// offending value and the container it is in.
pub fn validate_register(
    req: RegisterTaskDefinitionRequest,
) -> Result<TaskDefinitionSpec, ApiError> {
    let size = serde_json::to_vec(&req).map(|v| v.len()).unwrap_or(0);
    if size > MAX_TASK_DEFINITION_BYTES {
        return Err(ApiError::client(format!(
            "Actual length: '{size}'. Max allowed length is '{MAX_TASK_DEFINITION_BYTES}' bytes."
        )));
    }
    validate_family(&req.family)?;

    let network_mode = req
        .network_mode
        .clone()
        .unwrap_or_else(|| "bridge".to_string());
    one_of("networkMode", &network_mode, NETWORK_MODES, None)?;
    if let Some(p) = &req.pid_mode {
        one_of("pidMode", p, PID_MODES, None)?;
    }
    if let Some(p) = &req.ipc_mode {
        one_of("ipcMode", p, IPC_MODES, None)?;
    }
    if let Some(rp) = &req.runtime_platform {
        if let Some(a) = &rp.cpu_architecture {
            one_of(
                "runtimePlatform.cpuArchitecture",
                a,
                CPU_ARCHITECTURES,
                None,
            )?;
        }
        if let Some(o) = &rp.operating_system_family {
            one_of(
                "runtimePlatform.operatingSystemFamily",
                o,
                OS_FAMILIES,
                None,
            )?;
        }
    }
    let requires = req.requires_compatibilities.clone().unwrap_or_default();
    for c in &requires {
        one_of("requiresCompatibilities", c, COMPATIBILITIES, None)?;
    }
    let task_cpu = req.cpu.as_deref().map(normalize_cpu).transpose()?;
    let task_memory = req.memory.as_deref().map(normalize_memory).transpose()?;
    let task_cpu_n: Option<i64> = task_cpu.as_deref().and_then(|v| v.parse().ok());
    let task_mem_n: Option<i64> = task_memory.as_deref().and_then(|v| v.parse().ok());

    let tags = req.tags.clone().unwrap_or_default();
    validate_tags(&tags)?;

    let volumes = req.volumes.clone().unwrap_or_default();
    let volume_names = check_volumes(&volumes)?;
    let placement = req.placement_constraints.clone().unwrap_or_default();
    check_placement(&placement)?;

    let defs = &req.container_definitions;
    if defs.is_empty() || defs.len() > MAX_CONTAINERS {
        return Err(invalid(format!(
            "Invalid number of containerDefinitions: {}. A task definition must have between 1 and {MAX_CONTAINERS} containers.",
            defs.len()
        )));
    }

    // Names first: every later rule refers to containers by name.
    let mut names: Vec<String> = Vec::with_capacity(defs.len());
    for (i, c) in defs.iter().enumerate() {
        let name = match c.name.as_deref() {
            Some(n) if !n.trim().is_empty() => n,
            _ => {
                return Err(ApiError::client(format!(
                    "Container.name should not be null or empty. (containerDefinitions[{i}])"
                )))
            }
        };
        if !is_valid_name(name) {
            return Err(invalid(format!(
                "Invalid container name '{name}'. Up to 255 letters (uppercase and lowercase), numbers, underscores, and hyphens are allowed."
            )));
        }
        if names.iter().any(|n| n == name) {
            return Err(ApiError::client(format!(
                "Duplicate container names are not allowed. Duplicate name: '{name}'."
            )));
        }
        names.push(name.to_string());
    }
    let by_name: HashMap<&str, &ContainerDefinition> =
        names.iter().map(String::as_str).zip(defs.iter()).collect();

    let ctx = TaskContext {
        network_mode: &network_mode,
        task_memory: task_mem_n,
        volume_names: &volume_names,
        by_name: &by_name,
    };
    let mut port_names: HashSet<String> = HashSet::new();
    let mut static_ports: HashMap<(i64, String), String> = HashMap::new();
    for (c, name) in defs.iter().zip(&names) {
        check_container(c, name, &ctx)?;
        for pm in c.port_mappings.iter().flatten() {
            if let Some(pn) = &pm.name {
                if !port_names.insert(pn.clone()) {
                    return Err(invalid(format!(
                        "Duplicate portMappings name '{pn}' in container '{name}'. Port mapping names must be unique within a task definition."
                    )));
                }
            }
            let host = effective_host_port(pm, &network_mode);
            if let Some(h) = host.filter(|h| *h > 0) {
                let proto = protocol_of(pm);
                if let Some(other) = static_ports.insert((h, proto.clone()), name.clone()) {
                    return Err(invalid(format!(
                        "Duplicate static hostPort {h}/{proto} in containers '{other}' and '{name}'. Static host ports must be unique within a task definition."
                    )));
                }
            }
        }
    }

    // At least one essential container.
    if defs.iter().all(|c| c.essential == Some(false)) {
        return Err(ApiError::client(format!(
            "Task definition must have at least one essential container; every container ('{}') has essential=false.",
            names.join("', '")
        )));
    }
    check_dependency_cycles(defs, &names)?;

    // Task-level sums.
    if let Some(tc) = task_cpu_n {
        let sum = defs
            .iter()
            .filter_map(|c| c.cpu)
            .fold(0i64, i64::saturating_add);
        if sum > tc {
            return Err(ApiError::client(format!(
                "Invalid 'cpu' setting: the containers' total cpu ({sum}) is greater than the task cpu ({tc})."
            )));
        }
    }
    if let Some(tm) = task_mem_n {
        let sum = defs
            .iter()
            .filter_map(|c| c.memory_reservation.or(c.memory))
            .fold(0i64, i64::saturating_add);
        if sum > tm {
            return Err(ApiError::client(format!(
                "Invalid 'memory' setting: the containers' total memory reservation ({sum} MiB) is greater than the task memory ({tm} MiB)."
            )));
        }
    }

    // Fargate.
    let fargate = requires.iter().any(|c| c == "FARGATE");
    if fargate {
        if network_mode != "awsvpc" {
            return Err(ApiError::client(format!(
                "Fargate only supports network mode 'awsvpc'. networkMode: '{network_mode}'."
            )));
        }
        let (Some(tc), Some(tm)) = (task_cpu_n, task_mem_n) else {
            return Err(ApiError::client(format!(
                "Fargate requires task-level 'cpu' and 'memory'. cpu: {:?}, memory: {:?}.",
                req.cpu, req.memory
            )));
        };
        if !fargate_size_ok(tc, tm) {
            return Err(ApiError::client(format!(
                "No Fargate configuration exists for given values: {tc} CPU, {tm} memory."
            )));
        }
    }

    // Fill defaults.
    let mut compatibilities = vec!["EC2".to_string(), "EXTERNAL".to_string()];
    if fargate {
        compatibilities.push("FARGATE".to_string());
    }
    let container_definitions = req
        .container_definitions
        .into_iter()
        .map(|c| fill_container_defaults(c, &network_mode))
        .collect();
    let task_definition = TaskDefinition {
        task_definition_arn: None,
        container_definitions,
        family: req.family,
        task_role_arn: req.task_role_arn,
        execution_role_arn: req.execution_role_arn,
        network_mode: Some(network_mode),
        revision: 0,
        volumes: Some(volumes),
        status: None,
        requires_attributes: None,
        placement_constraints: Some(placement),
        compatibilities: Some(compatibilities),
        runtime_platform: req.runtime_platform,
        requires_compatibilities: req.requires_compatibilities,
        cpu: task_cpu,
        memory: task_memory,
        inference_accelerators: req.inference_accelerators,
        pid_mode: req.pid_mode,
        ipc_mode: req.ipc_mode,
        proxy_configuration: req.proxy_configuration,
        registered_at: None,
        deregistered_at: None,
        delete_requested_at: None,
        registered_by: None,
        ephemeral_storage: req.ephemeral_storage,
        enable_fault_injection: req.enable_fault_injection,
        trusted_execution_configuration: req.trusted_execution_configuration,
    };
    Ok(TaskDefinitionSpec {
        task_definition,
        tags,
    })
}

struct TaskContext<'a> {
    network_mode: &'a str,
    task_memory: Option<i64>,
    volume_names: &'a HashSet<String>,
    by_name: &'a HashMap<&'a str, &'a ContainerDefinition>,
}

fn protocol_of(pm: &PortMapping) -> String {
    pm.protocol.as_deref().unwrap_or("tcp").to_ascii_lowercase()
}

/// The host port as it will be echoed: host/awsvpc copy the container port.
fn effective_host_port(pm: &PortMapping, network_mode: &str) -> Option<i64> {
    match (network_mode, pm.host_port) {
        ("host" | "awsvpc", None) => pm.container_port,
        (_, h) => h,
    }
}

fn fargate_size_ok(cpu: i64, mem: i64) -> bool {
    let (lo, hi, step) = match cpu {
        256 => return matches!(mem, 512 | 1024 | 2048),
        512 => (1024, 4096, 1024),
        1024 => (2048, 8192, 1024),
        2048 => (4096, 16384, 1024),
        4096 => (8192, 30720, 1024),
        8192 => (16384, 61440, 4096),
        16384 => (32768, 122880, 8192),
        _ => return false,
    };
    (lo..=hi).contains(&mem) && (mem - lo) % step == 0
}

fn check_volumes(volumes: &[Volume]) -> Result<HashSet<String>, ApiError> {
    let mut names = HashSet::new();
    for v in volumes {
        let name = match v.name.as_deref() {
            Some(n) if !n.is_empty() => n,
            _ => return Err(invalid("Volume name should not be null or empty.".into())),
        };
        if !is_valid_name(name) {
            return Err(invalid(format!(
                "Invalid volume name '{name}'. Up to 255 letters (uppercase and lowercase), numbers, underscores, and hyphens are allowed."
            )));
        }
        if !names.insert(name.to_string()) {
            return Err(invalid(format!(
                "Duplicate volume name '{name}'. Volume names must be unique within a task definition."
            )));
        }
        let variants = [
            v.host.is_some(),
            v.docker_volume_configuration.is_some(),
            v.efs_volume_configuration.is_some(),
            v.fsx_windows_file_server_volume_configuration.is_some(),
            v.s3files_volume_configuration.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if variants > 1 {
            return Err(invalid(format!(
                "Invalid volume '{name}': specify only one of host, dockerVolumeConfiguration, efsVolumeConfiguration, fsxWindowsFileServerVolumeConfiguration, s3filesVolumeConfiguration."
            )));
        }
        if let Some(d) = &v.docker_volume_configuration {
            if let Some(scope) = &d.scope {
                one_of(
                    &format!("dockerVolumeConfiguration.scope of volume '{name}'"),
                    scope,
                    VOLUME_SCOPES,
                    None,
                )?;
            }
            if d.autoprovision == Some(true) && d.scope.as_deref() != Some("shared") {
                return Err(invalid(format!(
                    "Invalid volume '{name}': autoprovision can only be true when scope is 'shared' (scope: '{}').",
                    d.scope.as_deref().unwrap_or("task")
                )));
            }
        }
    }
    Ok(names)
}

fn check_placement(pcs: &[TaskDefinitionPlacementConstraint]) -> Result<(), ApiError> {
    if pcs.len() > MAX_PLACEMENT_CONSTRAINTS {
        return Err(invalid(format!(
            "Too many placementConstraints: {}. At most {MAX_PLACEMENT_CONSTRAINTS} are allowed.",
            pcs.len()
        )));
    }
    for pc in pcs {
        let t = pc.r#type.as_deref().unwrap_or("");
        if t != "memberOf" {
            return Err(invalid(format!(
                "Invalid placementConstraints type '{t}'. Task definitions support only 'memberOf'."
            )));
        }
        let expr = pc.expression.as_deref().unwrap_or("");
        if expr.trim().is_empty() {
            return Err(invalid(
                "Invalid placementConstraints: a 'memberOf' constraint needs a non-empty expression ('')."
                    .into(),
            ));
        }
        let len = expr.chars().count();
        if len > 2000 {
            return Err(invalid(format!(
                "Invalid placementConstraints expression of {len} characters: at most 2000 are allowed. Expression: '{expr}'"
            )));
        }
    }
    Ok(())
}

fn check_secret(kind: &str, name: &str, value_from: &str, container: &str) -> Result<(), ApiError> {
    if name.trim().is_empty() {
        return Err(invalid(format!(
            "Invalid {kind} in container '{container}': name should not be null or empty (valueFrom '{value_from}')."
        )));
    }
    if value_from.trim().is_empty() {
        return Err(invalid(format!(
            "Invalid {kind} '{name}' in container '{container}': valueFrom should not be null or empty."
        )));
    }
    Ok(())
}

fn check_container(c: &ContainerDefinition, n: &str, ctx: &TaskContext) -> Result<(), ApiError> {
    let mode = ctx.network_mode;

    // image
    if blank(&c.image) {
        return Err(ApiError::client(format!(
            "Container.image should not be null or empty. Container: '{n}'."
        )));
    }
    let image = c.image.as_deref().unwrap_or_default();
    if image.chars().any(char::is_whitespace) {
        return Err(invalid(format!(
            "Invalid image '{image}' for container '{n}': image names cannot contain whitespace."
        )));
    }
    let repo = image.split('@').next().unwrap_or(image);
    if repo.chars().count() > 255 {
        return Err(invalid(format!(
            "Invalid image '{image}' for container '{n}': the name (before '@') is longer than 255 characters."
        )));
    }
    if let Some(v) = &c.version_consistency {
        one_of("versionConsistency", v, VERSION_CONSISTENCY, Some(n))?;
    }

    // cpu / memory
    non_negative("cpu", c.cpu, n)?;
    for (what, v) in [
        ("memory", c.memory),
        ("memoryReservation", c.memory_reservation),
    ] {
        if let Some(m) = v {
            if m < MIN_CONTAINER_MEMORY_MIB {
                return Err(ApiError::client(format!(
                    "Invalid '{what}' setting for container '{n}': {m}. The minimum is {MIN_CONTAINER_MEMORY_MIB} MiB."
                )));
            }
        }
    }
    if let (Some(m), Some(r)) = (c.memory, c.memory_reservation) {
        if m <= r {
            return Err(ApiError::client(format!(
                "Invalid 'memory' setting for container '{n}': memory ({m}) must be greater than memoryReservation ({r})."
            )));
        }
    }
    match ctx.task_memory {
        None if c.memory.is_none() && c.memory_reservation.is_none() => {
            return Err(ApiError::client(format!(
                "Invalid 'memory' setting for container '{n}'. At least one of 'memory' or 'memoryReservation' must be specified when the task does not set 'memory'."
            )));
        }
        Some(tm) => {
            if let Some(m) = c.memory.filter(|m| *m > tm) {
                return Err(ApiError::client(format!(
                    "Invalid 'memory' setting for container '{n}': {m} is greater than the task memory ({tm})."
                )));
            }
        }
        None => {}
    }

    check_ports(c, n, mode)?;

    // links
    if let Some(links) = c.links.as_ref().filter(|l| !l.is_empty()) {
        if mode != "bridge" {
            return Err(ApiError::client(format!(
                "Invalid 'links' setting for container '{n}': links are supported only when networkMode=bridge (networkMode is '{mode}')."
            )));
        }
        for l in links {
            let target = l.split(':').next().unwrap_or_default();
            if target == n || !ctx.by_name.contains_key(target) {
                return Err(invalid(format!(
                    "Invalid link '{l}' in container '{n}': '{target}' is not another container in this task definition."
                )));
            }
        }
    }

    // hostname / extraHosts
    if mode == "awsvpc" {
        if let Some(h) = &c.hostname {
            return Err(ApiError::client(format!(
                "Invalid 'hostname' setting for container '{n}': '{h}' is not supported when networkMode=awsvpc."
            )));
        }
        if let Some(eh) = c.extra_hosts.as_ref().filter(|e| !e.is_empty()) {
            return Err(ApiError::client(format!(
                "Invalid 'extraHosts' setting for container '{n}': '{}' is not supported when networkMode=awsvpc.",
                eh[0].hostname
            )));
        }
    }
    for h in c.extra_hosts.iter().flatten() {
        if h.hostname.trim().is_empty() || h.ip_address.trim().is_empty() {
            return Err(invalid(format!(
                "Invalid extraHosts entry in container '{n}': hostname ('{}') and ipAddress ('{}') are both required.",
                h.hostname, h.ip_address
            )));
        }
    }

    // environment, secrets
    for kv in c.environment.iter().flatten() {
        match kv.name.as_deref() {
            Some(k) if !k.is_empty() && !k.contains('=') && !k.contains('\0') => {}
            other => {
                return Err(invalid(format!(
                    "Invalid environment variable name '{}' in container '{n}' (value '{}'): names must be non-empty and cannot contain '='.",
                    other.unwrap_or_default(),
                    kv.value.as_deref().unwrap_or_default()
                )))
            }
        }
    }
    if let Some(files) = &c.environment_files {
        if files.len() > 10 {
            return Err(invalid(format!(
                "Too many environmentFiles in container '{n}': {}. At most 10 are allowed.",
                files.len()
            )));
        }
        for f in files {
            one_of(
                "environmentFiles.type",
                &f.r#type,
                ENVIRONMENT_FILE_TYPES,
                Some(n),
            )?;
            if f.value.trim().is_empty() {
                return Err(invalid(format!(
                    "Invalid environmentFiles entry in container '{n}': value should not be null or empty."
                )));
            }
        }
    }
    for s in c.secrets.iter().flatten() {
        check_secret("secret", &s.name, &s.value_from, n)?;
    }

    // ulimits
    let mut ulimit_names = HashSet::new();
    for u in c.ulimits.iter().flatten() {
        one_of("ulimits.name", &u.name, ULIMIT_NAMES, Some(n))?;
        if u.soft_limit > u.hard_limit {
            return Err(invalid(format!(
                "Invalid ulimit '{}' in container '{n}': softLimit ({}) is greater than hardLimit ({}).",
                u.name, u.soft_limit, u.hard_limit
            )));
        }
        if !ulimit_names.insert(u.name.as_str()) {
            return Err(invalid(format!(
                "Duplicate ulimit '{}' in container '{n}'.",
                u.name
            )));
        }
    }

    // logging
    if let Some(lc) = &c.log_configuration {
        one_of(
            "logConfiguration.logDriver",
            &lc.log_driver,
            LOG_DRIVERS,
            Some(n),
        )?;
        for s in lc.secret_options.iter().flatten() {
            check_secret(
                "logConfiguration.secretOptions entry",
                &s.name,
                &s.value_from,
                n,
            )?;
        }
    }

    if let Some(hc) = &c.health_check {
        check_health(hc, n)?;
    }

    // dependsOn
    for d in c.depends_on.iter().flatten() {
        one_of(
            "dependsOn.condition",
            &d.condition,
            CONTAINER_CONDITIONS,
            Some(n),
        )?;
        let t = d.container_name.as_str();
        if t == n {
            return Err(invalid(format!(
                "Invalid dependsOn in container '{n}': a container cannot depend on itself ('{t}')."
            )));
        }
        let Some(target) = ctx.by_name.get(t) else {
            return Err(invalid(format!(
                "Invalid dependsOn in container '{n}': container '{t}' does not exist in this task definition."
            )));
        };
        let target_essential = target.essential != Some(false);
        if matches!(d.condition.as_str(), "COMPLETE" | "SUCCESS") && target_essential {
            return Err(invalid(format!(
                "Invalid dependsOn in container '{n}': condition {} cannot be used on essential container '{t}'.",
                d.condition
            )));
        }
        if d.condition == "HEALTHY" && target.health_check.is_none() {
            return Err(invalid(format!(
                "Invalid dependsOn in container '{n}': condition HEALTHY requires container '{t}' to have a healthCheck."
            )));
        }
    }

    // volumes
    for mp in c.mount_points.iter().flatten() {
        let sv = mp.source_volume.as_deref().unwrap_or_default();
        if !ctx.volume_names.contains(sv) {
            return Err(invalid(format!(
                "Invalid mountPoints in container '{n}': sourceVolume '{sv}' is not a volume of this task definition."
            )));
        }
        if blank(&mp.container_path) {
            return Err(invalid(format!(
                "Invalid mountPoints in container '{n}': containerPath for sourceVolume '{sv}' should not be null or empty."
            )));
        }
    }
    for vf in c.volumes_from.iter().flatten() {
        let sc = vf.source_container.as_deref().unwrap_or_default();
        if sc == n || !ctx.by_name.contains_key(sc) {
            return Err(invalid(format!(
                "Invalid volumesFrom in container '{n}': sourceContainer '{sc}' is not another container in this task definition."
            )));
        }
    }

    // linuxParameters
    if let Some(lp) = &c.linux_parameters {
        for d in lp.devices.iter().flatten() {
            if d.host_path.trim().is_empty() {
                return Err(invalid(format!(
                    "Invalid device in container '{n}': hostPath should not be null or empty."
                )));
            }
            for p in d.permissions.iter().flatten() {
                one_of("devices.permissions", p, DEVICE_PERMISSIONS, Some(n))?;
            }
        }
        for t in lp.tmpfs.iter().flatten() {
            if t.container_path.trim().is_empty() {
                return Err(invalid(format!(
                    "Invalid tmpfs in container '{n}': containerPath should not be null or empty (size {}).",
                    t.size
                )));
            }
            if t.size <= 0 {
                return Err(invalid(format!(
                    "Invalid tmpfs '{}' in container '{n}': size {} must be greater than 0.",
                    t.container_path, t.size
                )));
            }
        }
        non_negative("sharedMemorySize", lp.shared_memory_size, n)?;
        non_negative("maxSwap", lp.max_swap, n)?;
        if let Some(s) = lp.swappiness {
            in_range("swappiness", s, 0, 100, n)?;
        }
    }

    for r in c.resource_requirements.iter().flatten() {
        one_of(
            "resourceRequirements.type",
            &r.r#type,
            RESOURCE_TYPES,
            Some(n),
        )?;
        let v = r.value.as_deref().unwrap_or_default();
        if r.r#type == "GPU" && !v.parse::<u32>().is_ok_and(|g| g > 0) {
            return Err(invalid(format!(
                "Invalid GPU resourceRequirements value '{v}' in container '{n}': must be a positive integer."
            )));
        }
    }

    if let Some(rp) = &c.restart_policy {
        if rp.enabled.is_none() {
            return Err(invalid(format!(
                "Invalid restartPolicy in container '{n}': 'enabled' is required."
            )));
        }
        if let Some(codes) = rp.ignored_exit_codes.as_ref().filter(|c| c.len() > 50) {
            return Err(invalid(format!(
                "Invalid restartPolicy in container '{n}': {} ignoredExitCodes, at most 50 are allowed.",
                codes.len()
            )));
        }
        if let Some(p) = rp.restart_attempt_period {
            in_range("restartPolicy.restartAttemptPeriod", p, 60, 1800, n)?;
        }
    }
    non_negative("startTimeout", c.start_timeout, n)?;
    non_negative("stopTimeout", c.stop_timeout, n)?;
    for sc in c.system_controls.iter().flatten() {
        if blank(&sc.namespace) {
            return Err(invalid(format!(
                "Invalid systemControls in container '{n}': namespace should not be null or empty (value '{}').",
                sc.value.as_deref().unwrap_or_default()
            )));
        }
    }
    Ok(())
}

fn check_ports(c: &ContainerDefinition, n: &str, mode: &str) -> Result<(), ApiError> {
    let pms = c.port_mappings.as_deref().unwrap_or_default();
    if mode == "none" && !pms.is_empty() {
        return Err(ApiError::client(format!(
            "Invalid 'portMappings' setting for container '{n}': port mappings (containerPort {}) are not supported when networkMode=none.",
            pms[0]
                .container_port
                .map(|p| p.to_string())
                .unwrap_or_else(|| pms[0].container_port_range.clone().unwrap_or_default())
        )));
    }
    let mut protos: HashMap<i64, String> = HashMap::new();
    for pm in pms {
        let proto = protocol_of(pm);
        one_of("portMappings.protocol", &proto, PROTOCOLS, Some(n))?;
        if let Some(ap) = &pm.app_protocol {
            one_of("portMappings.appProtocol", ap, APP_PROTOCOLS, Some(n))?;
        }
        if let Some(pn) = &pm.name {
            if !PORT_NAME_RE.is_match(pn) {
                return Err(invalid(format!(
                    "Invalid portMappings name '{pn}' in container '{n}': up to 64 lowercase letters, numbers, underscores and hyphens, not starting with a hyphen."
                )));
            }
        }
        if let Some(h) = pm.host_port {
            if !(0..=65535).contains(&h) {
                return Err(invalid(format!(
                    "Invalid hostPort {h} in container '{n}': must be between 0 and 65535."
                )));
            }
        }
        if let Some(range) = &pm.container_port_range {
            check_port_range(range, pm, n, mode)?;
            continue;
        }
        let Some(cp) = pm.container_port else {
            return Err(invalid(format!(
                "Invalid portMappings in container '{n}': containerPort is required (hostPort {:?}).",
                pm.host_port
            )));
        };
        if !(1..=65535).contains(&cp) {
            return Err(invalid(format!(
                "Invalid containerPort {cp} in container '{n}': must be between 1 and 65535."
            )));
        }
        if let Some(h) = pm.host_port {
            if (mode == "host" || mode == "awsvpc") && h != cp {
                return Err(ApiError::client(format!(
                    "When networkMode={mode}, the host ports and container ports in port mappings must match. Container '{n}': containerPort {cp}, hostPort {h}."
                )));
            }
        }
        if let Some(prev) = protos.insert(cp, proto.clone()) {
            if prev != proto {
                return Err(invalid(format!(
                    "Invalid portMappings in container '{n}': containerPort {cp} is mapped for both {prev} and {proto}."
                )));
            }
        }
    }
    Ok(())
}

fn check_port_range(range: &str, pm: &PortMapping, n: &str, mode: &str) -> Result<(), ApiError> {
    if mode != "bridge" && mode != "awsvpc" {
        return Err(invalid(format!(
            "Invalid containerPortRange '{range}' in container '{n}': port ranges are supported only when networkMode is bridge or awsvpc (networkMode is '{mode}')."
        )));
    }
    if pm.container_port.is_some() || pm.host_port.is_some() {
        return Err(invalid(format!(
            "Invalid containerPortRange '{range}' in container '{n}': containerPort and hostPort must not be set together with containerPortRange."
        )));
    }
    let parsed = range
        .split_once('-')
        .and_then(|(a, b)| Some((a.trim().parse::<i64>().ok()?, b.trim().parse::<i64>().ok()?)));
    match parsed {
        Some((a, b)) if (1..=65535).contains(&a) && (1..=65535).contains(&b) && a < b => Ok(()),
        _ => Err(invalid(format!(
            "Invalid containerPortRange '{range}' in container '{n}': expected 'start-end' with 1 <= start < end <= 65535."
        ))),
    }
}

fn check_health(hc: &HealthCheck, n: &str) -> Result<(), ApiError> {
    let first = hc.command.first().map(String::as_str).unwrap_or_default();
    if first != "CMD" && first != "CMD-SHELL" {
        return Err(invalid(format!(
            "Invalid healthCheck command in container '{n}': the first element must be 'CMD' or 'CMD-SHELL', got '{first}'."
        )));
    }
    if hc.command.len() < 2 || hc.command[1..].iter().all(|s| s.trim().is_empty()) {
        return Err(invalid(format!(
            "Invalid healthCheck command in container '{n}': nothing to run after '{first}'."
        )));
    }
    if let Some(v) = hc.interval {
        in_range("healthCheck.interval", v, 5, 300, n)?;
    }
    if let Some(v) = hc.timeout {
        in_range("healthCheck.timeout", v, 2, 60, n)?;
    }
    if let Some(v) = hc.retries {
        in_range("healthCheck.retries", v, 1, 10, n)?;
    }
    if let Some(v) = hc.start_period {
        in_range("healthCheck.startPeriod", v, 0, 300, n)?;
    }
    Ok(())
}

fn check_dependency_cycles(defs: &[ContainerDefinition], names: &[String]) -> Result<(), ApiError> {
    let edges: BTreeMap<&str, Vec<&str>> = names
        .iter()
        .zip(defs)
        .map(|(n, c)| {
            (
                n.as_str(),
                c.depends_on
                    .iter()
                    .flatten()
                    .map(|d| d.container_name.as_str())
                    .collect(),
            )
        })
        .collect();
    // 0 = unvisited, 1 = on the stack, 2 = done
    fn visit<'a>(
        node: &'a str,
        edges: &BTreeMap<&'a str, Vec<&'a str>>,
        state: &mut HashMap<&'a str, u8>,
        stack: &mut Vec<&'a str>,
    ) -> Option<Vec<&'a str>> {
        match state.get(node).copied().unwrap_or(0) {
            2 => return None,
            1 => {
                let start = stack.iter().position(|s| *s == node).unwrap_or(0);
                let mut cycle = stack[start..].to_vec();
                cycle.push(node);
                return Some(cycle);
            }
            _ => {}
        }
        state.insert(node, 1);
        stack.push(node);
        for next in edges.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, edges, state, stack) {
                return Some(c);
            }
        }
        stack.pop();
        state.insert(node, 2);
        None
    }
    let mut state = HashMap::new();
    for n in names {
        let mut stack = Vec::new();
        if let Some(cycle) = visit(n, &edges, &mut state, &mut stack) {
            return Err(invalid(format!(
                "Invalid dependsOn: circular dependency between containers: {}.",
                cycle.join(" -> ")
            )));
        }
    }
    Ok(())
}

fn fill_container_defaults(mut c: ContainerDefinition, network_mode: &str) -> ContainerDefinition {
    c.essential.get_or_insert(true);
    c.environment.get_or_insert_with(Vec::new);
    c.mount_points.get_or_insert_with(Vec::new);
    c.volumes_from.get_or_insert_with(Vec::new);
    c.system_controls.get_or_insert_with(Vec::new);
    let pms = c.port_mappings.get_or_insert_with(Vec::new);
    for pm in pms.iter_mut() {
        pm.protocol = Some(protocol_of(pm));
        if pm.container_port_range.is_none() {
            pm.host_port = effective_host_port(pm, network_mode);
        }
    }
    if let Some(hc) = c.health_check.as_mut() {
        hc.interval.get_or_insert(HEALTH_CHECK_DEFAULT_INTERVAL);
        hc.timeout.get_or_insert(HEALTH_CHECK_DEFAULT_TIMEOUT);
        hc.retries.get_or_insert(HEALTH_CHECK_DEFAULT_RETRIES);
    }
    c
}

#[cfg(test)]
#[path = "taskdef_tests.rs"]
mod tests;
