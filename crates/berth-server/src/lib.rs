#![forbid(unsafe_code)]
//! berth-server: the Raft network and node, the ECS API front door, and authentication.

pub mod agent_service;
pub mod api;
pub mod controller;
pub mod ecs;
pub mod ecs_services;
pub mod ecs_tasks;
pub mod elbv2;
pub mod elbv2_query;
pub mod elbv2_validate;
pub mod elbv2_xml;
pub mod lb_runtime;
pub mod network;
pub mod node;
pub mod sigv4;

pub use api::{ApiConfig, AuthMode};
pub use node::{NodeConfig, ServerNode};
