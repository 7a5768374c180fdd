//! berth's built-in HTTP load balancer: listeners, rules, target groups, health
//! checks and draining. It knows nothing of the store: its owner (a `berth server`
//! or a `berth lb` edge node) builds a [`RoutingConfig`] from the replicated state
//! and hands it over whole with [`Lb::apply`]; the proxy swaps its routing table at
//! once (no per-request lock). Health is checked here, per load balancer node, as
//! ALB nodes do; the owner can watch the results ([`Lb::health`]).
//!
//! INTERFACE CONTRACT (used by berth-server and the `berth` binary): keep these
//! public names and signatures.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use berth_model::elb::{Rule, TargetGroupRecord, TargetHealth};

/// Everything the proxy needs, built whole from the replicated state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoutingConfig {
    pub listeners: Vec<ListenerConfig>,
    /// By target group ARN.
    pub target_groups: HashMap<String, TargetGroupConfig>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListenerConfig {
    pub listener_arn: String,
    pub port: u16,
    /// The listener's rules in any order, including the default rule
    /// (`IsDefault`, priority "default", whose actions are the listener's
    /// `DefaultActions`). The proxy evaluates them lowest priority first, default last.
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct TargetGroupConfig {
    pub record: TargetGroupRecord,
    pub targets: Vec<TargetConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TargetConfig {
    pub id: String,
    pub port: u16,
    /// Where to connect (the target's address and traffic port).
    pub addr: SocketAddr,
    /// Deregistered: no new requests; requests in flight finish.
    pub draining: bool,
}

/// The identity of a target inside a target group: (target group ARN, id, port).
pub type TargetKey = (String, String, u16);

#[derive(Debug, Clone)]
pub struct LbOptions {
    /// The address listeners bind on (their port comes from each listener).
    pub bind: IpAddr,
    /// Run health checks (true for every node that routes traffic).
    pub health_checks: bool,
    /// ALB's `idle_timeout.timeout_seconds` (60 s): client and target connections idle
    /// longer are closed.
    pub idle_timeout: Duration,
    /// No response headers from the target within this → 504.
    pub request_timeout: Duration,
    /// Connecting to a target takes longer than this → try another target / 502/504.
    pub connect_timeout: Duration,
}

impl Default for LbOptions {
    fn default() -> Self {
        LbOptions {
            bind: IpAddr::from([0, 0, 0, 0]),
            health_checks: true,
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// A listener that could not be opened (port taken, permission).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerError {
    pub listener_arn: String,
    pub port: u16,
    pub message: String,
}

/// The load balancer node. Cheap to share (`Arc`).
pub struct Lb {
    _opts: LbOptions,
}

impl Lb {
    pub fn new(opts: LbOptions) -> Arc<Lb> {
        Arc::new(Lb { _opts: opts })
    }

    /// Replace the whole routing configuration: opens listeners that are new, closes
    /// removed ones (in-flight requests finish), swaps the routing table, starts and
    /// stops health checkers (a target keeps its health state across calls while it
    /// stays in its group). Returns the listeners that could not be opened; they are
    /// retried on the next call.
    pub async fn apply(&self, _cfg: RoutingConfig) -> Vec<ListenerError> {
        unimplemented!("berth-lb: apply")
    }

    /// The current health of every target this node checks; changes on every transition.
    pub fn health(&self) -> tokio::sync::watch::Receiver<HashMap<TargetKey, TargetHealth>> {
        unimplemented!("berth-lb: health")
    }

    /// The local addresses of the open listeners, by listener ARN.
    pub fn listening(&self) -> HashMap<String, SocketAddr> {
        unimplemented!("berth-lb: listening")
    }

    /// Stop every listener and health checker.
    pub async fn shutdown(&self) {}
}
