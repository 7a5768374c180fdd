//! berth's agent: owns one machine. It is told the tasks that should run here and reconciles
//! containerd and the network towards them, reporting every transition back to the servers.
//!
//! Every real system sits behind a seam: [`runtime::Runtime`] (containerd),
//! [`network::Network`] (network namespaces and CNI). The reconcile loop only talks to those
//! traits, so its decisions are tested against in-memory doubles.

pub mod agent;
pub mod cni;
pub mod containerd;
pub mod engine;
pub mod health;
pub mod image;
pub mod logdriver;
pub mod logs;
pub mod netns;
pub mod network;
pub mod ports;
pub mod runtime;
pub mod session;
pub mod spec;
pub mod state;
pub mod taskspec;

/// Position of a task status in ECS's lifecycle order (unknown words sort first).
pub fn state_rank(s: &str) -> usize {
    berth_model::task_status_rank(s).unwrap_or(0)
}
