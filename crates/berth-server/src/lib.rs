#![forbid(unsafe_code)]
//! berth-server: a server node. The Raft network and node (forwarding to the leader,
//! read index), the agent session service, the load balancer runtime and the feed to
//! `berth lb` edge nodes, and the API port, which hands AWS requests to `berth-api`.
//! The reconcilers (`berth-control`) run against this node through the store's
//! `Replica` trait.

pub mod agent_service;
pub mod cluster_port;
pub mod http;
pub mod lb_runtime;
pub mod network;
pub mod node;
pub mod pki;
pub mod sessions;

pub use berth_api::{ApiConfig, AuthMode};
pub use node::{NodeConfig, ServerNode};
