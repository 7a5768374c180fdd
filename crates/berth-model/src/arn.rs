//! ECS ARNs in the long (current) format, §5 of the reference.

use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::validate::{is_valid_name, validate_cluster_name};

/// Region and account the server mints ARNs for. The partition is always `aws`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArnContext {
    pub region: String,
    pub account_id: String,
}

impl ArnContext {
    pub fn new(region: impl Into<String>, account_id: impl Into<String>) -> Self {
        ArnContext {
            region: region.into(),
            account_id: account_id.into(),
        }
    }

    fn prefix(&self) -> String {
        format!("arn:aws:ecs:{}:{}", self.region, self.account_id)
    }

    /// `arn:aws:ecs:{region}:{account}:cluster/{name}`
    pub fn cluster(&self, name: &str) -> String {
        format!("{}:cluster/{name}", self.prefix())
    }

    /// `arn:aws:ecs:{region}:{account}:task-definition/{family}:{revision}`
    pub fn task_definition(&self, family: &str, revision: u32) -> String {
        format!("{}:task-definition/{family}:{revision}", self.prefix())
    }

    /// `arn:aws:ecs:{region}:{account}:task/{cluster}/{id}`
    pub fn task(&self, cluster: &str, id: &str) -> String {
        format!("{}:task/{cluster}/{id}", self.prefix())
    }

    /// `arn:aws:ecs:{region}:{account}:container-instance/{cluster}/{id}`
    pub fn container_instance(&self, cluster: &str, id: &str) -> String {
        format!("{}:container-instance/{cluster}/{id}", self.prefix())
    }

    /// `arn:aws:ecs:{region}:{account}:service/{cluster}/{name}`
    pub fn service(&self, cluster: &str, name: &str) -> String {
        format!("{}:service/{cluster}/{name}", self.prefix())
    }

    /// `arn:aws:ecs:{region}:{account}:container/{cluster}/{task_id}/{container_id}`
    pub fn container(&self, cluster: &str, task_id: &str, container_id: &str) -> String {
        format!(
            "{}:container/{cluster}/{task_id}/{container_id}",
            self.prefix()
        )
    }

    /// Print a parsed resource back in this context's region/account.
    pub fn format(&self, resource: &ResourceArn) -> String {
        match resource {
            ResourceArn::Cluster { name } => self.cluster(name),
            ResourceArn::TaskDefinition { family, revision } => {
                self.task_definition(family, *revision)
            }
            ResourceArn::Task { cluster, id } => self.task(cluster, id),
            ResourceArn::ContainerInstance { cluster, id } => self.container_instance(cluster, id),
            ResourceArn::Service { cluster, name } => self.service(cluster, name),
        }
    }
}

/// The resource part of an ECS ARN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceArn {
    Cluster { name: String },
    TaskDefinition { family: String, revision: u32 },
    Task { cluster: String, id: String },
    ContainerInstance { cluster: String, id: String },
    Service { cluster: String, name: String },
}

impl ResourceArn {
    /// The cluster this resource lives in (task definitions live in none).
    pub fn cluster(&self) -> Option<&str> {
        match self {
            ResourceArn::Cluster { name } => Some(name),
            ResourceArn::TaskDefinition { .. } => None,
            ResourceArn::Task { cluster, .. }
            | ResourceArn::ContainerInstance { cluster, .. }
            | ResourceArn::Service { cluster, .. } => Some(cluster),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedArn {
    pub region: String,
    pub account_id: String,
    pub resource: ResourceArn,
}

impl ParsedArn {
    /// Print the ARN back (partition `aws`).
    pub fn to_arn(&self) -> String {
        ArnContext::new(self.region.clone(), self.account_id.clone()).format(&self.resource)
    }
}

fn bad(s: &str, why: &str) -> ApiError {
    ApiError::invalid(format!("Invalid ARN '{s}': {why}"))
}

/// Ids of tasks and container instances (32 hex in practice; older UUIDs
/// with dashes are accepted too).
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 255
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Splits `arn:aws:ecs:{region}:{account}:{resource}` and returns
/// (region, account, resource).
pub(crate) fn split_prefix(s: &str) -> Result<(&str, &str, &str), ApiError> {
    let mut parts = s.splitn(6, ':');
    let (Some("arn"), Some(partition), Some(service), Some(region), Some(account), Some(rest)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(bad(s, "expected arn:aws:ecs:{region}:{account}:{resource}"));
    };
    if partition != "aws" && !partition.starts_with("aws-") {
        return Err(bad(s, "unknown partition"));
    }
    if service != "ecs" {
        return Err(bad(s, "not an ECS ARN"));
    }
    if region.is_empty()
        || !region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(bad(s, "invalid region"));
    }
    if account.is_empty() || account.len() > 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(s, "invalid account id"));
    }
    Ok((region, account, rest))
}

/// Task-definition resource part `family:revision`, or `family` when
/// `revision_optional`.
pub(crate) fn split_family_revision(
    s: &str,
    whole: &str,
    revision_optional: bool,
) -> Result<(String, Option<u32>), ApiError> {
    let (family, rev) = match s.rsplit_once(':') {
        Some((f, r)) => (f, Some(r)),
        None => (s, None),
    };
    if !is_valid_name(family) {
        return Err(bad(whole, &format!("invalid family '{family}'")));
    }
    match rev {
        None if revision_optional => Ok((family.to_string(), None)),
        None => Err(bad(whole, "task definition ARNs need a revision")),
        Some(r) => match r.parse::<u32>() {
            Ok(n) if n >= 1 && r.bytes().all(|b| b.is_ascii_digit()) => {
                Ok((family.to_string(), Some(n)))
            }
            _ => Err(ApiError::invalid(format!(
                "Invalid revision number. Number: {r}"
            ))),
        },
    }
}

/// Parse a long-format ECS ARN for a cluster, task definition, task,
/// container instance or service. Anything else (including the old short
/// `service/{name}` and `task/{id}` forms) is an `InvalidParameterException`
/// naming the ARN.
pub fn parse_arn(s: &str) -> Result<ParsedArn, ApiError> {
    let (region, account, rest) = split_prefix(s)?;
    let (kind, path) = rest
        .split_once('/')
        .ok_or_else(|| bad(s, "missing resource type"))?;
    let segs: Vec<&str> = path.split('/').collect();
    let long_only = || {
        ApiError::invalid(format!(
            "Long arn format must be used for tagging operations. Invalid ARN: '{s}'"
        ))
    };
    let resource = match (kind, segs.as_slice()) {
        ("cluster", [name]) => {
            if !is_valid_name(name) {
                return Err(bad(s, &format!("invalid cluster name '{name}'")));
            }
            ResourceArn::Cluster {
                name: name.to_string(),
            }
        }
        ("task-definition", [fr]) => match split_family_revision(fr, s, false)? {
            (family, Some(revision)) => ResourceArn::TaskDefinition { family, revision },
            (_, None) => return Err(bad(s, "task definition ARNs need a revision")),
        },
        ("task" | "container-instance", [_id]) => return Err(long_only()),
        ("service", [_name]) => return Err(long_only()),
        ("task" | "container-instance", [cluster, id]) => {
            if !is_valid_name(cluster) {
                return Err(bad(s, &format!("invalid cluster name '{cluster}'")));
            }
            if !valid_id(id) {
                return Err(bad(s, &format!("invalid id '{id}'")));
            }
            let (cluster, id) = (cluster.to_string(), id.to_string());
            if kind == "task" {
                ResourceArn::Task { cluster, id }
            } else {
                ResourceArn::ContainerInstance { cluster, id }
            }
        }
        ("service", [cluster, name]) => {
            if !is_valid_name(cluster) {
                return Err(bad(s, &format!("invalid cluster name '{cluster}'")));
            }
            if !is_valid_name(name) {
                return Err(bad(s, &format!("invalid service name '{name}'")));
            }
            ResourceArn::Service {
                cluster: cluster.to_string(),
                name: name.to_string(),
            }
        }
        _ => return Err(bad(s, "unsupported resource")),
    };
    Ok(ParsedArn {
        region: region.to_string(),
        account_id: account.to_string(),
        resource,
    })
}

/// Whether `s` looks like an ARN (so callers know whether to parse it or
/// treat it as a short name/id).
pub fn is_arn(s: &str) -> bool {
    s.starts_with("arn:")
}

/// A `cluster` parameter: a short name or a cluster ARN. Returns the
/// validated name.
pub fn cluster_name_from(s: &str) -> Result<String, ApiError> {
    if is_arn(s) {
        match parse_arn(s)?.resource {
            ResourceArn::Cluster { name } => Ok(name),
            _ => Err(bad(s, "not a cluster ARN")),
        }
    } else {
        validate_cluster_name(s)?;
        Ok(s.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn ctx() -> ArnContext {
        ArnContext::new("us-east-1", "123456789012")
    }

    #[test]
    fn print_formats() {
        let c = ctx();
        assert_eq!(
            c.cluster("default"),
            "arn:aws:ecs:us-east-1:123456789012:cluster/default"
        );
        assert_eq!(
            c.task_definition("auth", 1),
            "arn:aws:ecs:us-east-1:123456789012:task-definition/auth:1"
        );
        assert_eq!(
            c.task("demo", "4d590253bb114126b7afa7b58eea9221"),
            "arn:aws:ecs:us-east-1:123456789012:task/demo/4d590253bb114126b7afa7b58eea9221"
        );
        assert_eq!(
            c.container_instance("demo", "abc"),
            "arn:aws:ecs:us-east-1:123456789012:container-instance/demo/abc"
        );
        assert_eq!(
            c.service("demo", "web"),
            "arn:aws:ecs:us-east-1:123456789012:service/demo/web"
        );
    }

    #[test]
    fn round_trip_every_kind() {
        let c = ctx();
        let resources = vec![
            ResourceArn::Cluster {
                name: "my_cluster-1".into(),
            },
            ResourceArn::TaskDefinition {
                family: "auth".into(),
                revision: 42,
            },
            ResourceArn::Task {
                cluster: "demo".into(),
                id: "4d590253bb114126b7afa7b58eea9221".into(),
            },
            ResourceArn::ContainerInstance {
                cluster: "demo".into(),
                id: "0123456789abcdef0123456789abcdef".into(),
            },
            ResourceArn::Service {
                cluster: "demo".into(),
                name: "web".into(),
            },
        ];
        for r in resources {
            let s = c.format(&r);
            let p = parse_arn(&s).unwrap();
            assert_eq!(p.resource, r);
            assert_eq!(p.region, "us-east-1");
            assert_eq!(p.account_id, "123456789012");
            assert_eq!(p.to_arn(), s);
        }
    }

    #[test]
    fn bad_arns_rejected() {
        let cases = [
            "",
            "arn",
            "cluster/default",
            "arn:aws:ecs:us-east-1:123456789012",
            "arn:aws:ec2:us-east-1:123456789012:cluster/default",
            "arn:gcp:ecs:us-east-1:123456789012:cluster/default",
            "arn:aws:ecs::123456789012:cluster/default",
            "arn:aws:ecs:us-east-1:abc:cluster/default",
            "arn:aws:ecs:us-east-1:123456789012:cluster/",
            "arn:aws:ecs:us-east-1:123456789012:cluster/a b",
            "arn:aws:ecs:us-east-1:123456789012:cluster/a/b",
            "arn:aws:ecs:us-east-1:123456789012:widget/x",
            "arn:aws:ecs:us-east-1:123456789012:task-definition/auth",
            "arn:aws:ecs:us-east-1:123456789012:task-definition/auth:0",
            "arn:aws:ecs:us-east-1:123456789012:task-definition/auth:x",
            "arn:aws:ecs:us-east-1:123456789012:task/demo/",
            "arn:aws:ecs:us-east-1:123456789012:task/demo/a/b",
            "arn:aws:ecs:us-east-1:123456789012:service/demo/",
            "arn:aws:ecs:us-east-1:123456789012:service/web",
            "arn:aws:ecs:us-east-1:123456789012:task/4d590253bb114126b7afa7b58eea9221",
        ];
        for s in cases {
            let e = parse_arn(s).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidParameterException, "{s}");
            assert!(
                e.message.contains(s) || e.message.contains("revision"),
                "{} does not name {s}",
                e.message
            );
        }
        let e = parse_arn("arn:aws:ecs:us-east-1:123456789012:service/web").unwrap_err();
        assert!(e.message.contains("Long arn format"));
    }

    #[test]
    fn cluster_names_from_name_or_arn() {
        assert_eq!(cluster_name_from("demo").unwrap(), "demo");
        assert_eq!(
            cluster_name_from("arn:aws:ecs:us-east-1:123456789012:cluster/demo").unwrap(),
            "demo"
        );
        assert!(cluster_name_from("a b").is_err());
        assert!(cluster_name_from("").is_err());
        let e =
            cluster_name_from("arn:aws:ecs:us-east-1:123456789012:service/demo/web").unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidParameterException);
        assert!(e.message.contains("service/demo/web"));
    }
}
