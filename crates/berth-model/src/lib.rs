//! The ECS data model of berth: wire shapes, ARNs, validation and
//! pagination. Pure: no I/O, no clocks, no randomness.
#![forbid(unsafe_code)]

pub mod agent;
pub mod arn;
pub mod cql;
pub mod elb;
pub mod error;
pub mod paging;
pub mod service;
pub mod task;
pub mod taskdef;
pub mod token;
pub mod types;
pub mod validate;

pub use arn::{cluster_name_from, is_arn, parse_arn, ArnContext, ParsedArn, ResourceArn};
pub use error::{ApiError, ErrorKind};
pub use paging::{check_max_results, decode_opt_token, decode_token, encode_token, page};
pub use service::*;
pub use task::*;
pub use taskdef::{
    normalize_cpu, normalize_memory, parse_task_definition_ref, validate_register, TaskDefRef,
    TaskDefinitionSpec,
};
pub use types::*;
pub use validate::{
    is_valid_name, merge_tags, remove_tags, validate_cluster_name, validate_container_name,
    validate_family, validate_service_name, validate_tag_keys, validate_tags,
};
