//! ECS operations: decode and validate, propose or read, encode. Nothing else.
//! One file per resource group, as the ECS API reference groups them.

pub mod clusters;
mod common;
pub mod container_instances;
pub mod join_tokens;
pub mod services;
pub mod tags;
pub mod task_definitions;
pub mod tasks;

use berth_model::{ApiError, ErrorKind};
use serde_json::Value;

use crate::context::Ctx;
use crate::protocol::json::parse;
use crate::protocol::json::JsonService;

/// ECS: awsJson 1.1, `X-Amz-Target: AmazonEC2ContainerServiceV20141113.<Operation>`.
pub const SERVICE: JsonService = JsonService {
    name: "ecs",
    target_prefix: "AmazonEC2ContainerServiceV20141113.",
    signing_name: "ecs",
    dispatch: |ctx, op, body| Box::pin(dispatch(ctx, op, body)),
};

pub async fn dispatch(ctx: &Ctx, op: &str, body: &[u8]) -> Result<Value, ApiError> {
    match op {
        "CreateCluster" => clusters::create_cluster(ctx, parse(body)?).await,
        "DescribeClusters" => clusters::describe_clusters(ctx, parse(body)?).await,
        "ListClusters" => clusters::list_clusters(ctx, parse(body)?).await,
        "DeleteCluster" => clusters::delete_cluster(ctx, parse(body)?).await,
        "UpdateCluster" => clusters::update_cluster(ctx, parse(body)?).await,
        "RegisterTaskDefinition" => {
            task_definitions::register_task_definition(ctx, parse(body)?).await
        }
        "DescribeTaskDefinition" => {
            task_definitions::describe_task_definition(ctx, parse(body)?).await
        }
        "ListTaskDefinitions" => task_definitions::list_task_definitions(ctx, parse(body)?).await,
        "ListTaskDefinitionFamilies" => {
            task_definitions::list_task_definition_families(ctx, parse(body)?).await
        }
        "DeregisterTaskDefinition" => {
            task_definitions::deregister_task_definition(ctx, parse(body)?).await
        }
        "DeleteTaskDefinitions" => {
            task_definitions::delete_task_definitions(ctx, parse(body)?).await
        }
        "TagResource" => tags::tag_resource(ctx, parse(body)?).await,
        "UntagResource" => tags::untag_resource(ctx, parse(body)?).await,
        "GetTaskLogs" => tasks::get_task_logs(ctx, parse(body)?).await,
        "CreateJoinToken" => join_tokens::create_join_token(ctx, parse(body)?).await,
        "ListJoinTokens" => join_tokens::list_join_tokens(ctx, parse(body)?).await,
        "RevokeJoinToken" => join_tokens::revoke_join_token(ctx, parse(body)?).await,
        "ListTagsForResource" => tags::list_tags_for_resource(ctx, parse(body)?).await,
        "DescribeContainerInstances" => {
            container_instances::describe_container_instances(ctx, parse(body)?).await
        }
        "ListContainerInstances" => {
            container_instances::list_container_instances(ctx, parse(body)?).await
        }
        "DeregisterContainerInstance" => {
            container_instances::deregister_container_instance(ctx, parse(body)?).await
        }
        "UpdateContainerInstancesState" => {
            container_instances::update_container_instances_state(ctx, parse(body)?).await
        }
        "PutAttributes" => container_instances::put_attributes(ctx, parse(body)?).await,
        "DeleteAttributes" => container_instances::delete_attributes(ctx, parse(body)?).await,
        "ListAttributes" => container_instances::list_attributes(ctx, parse(body)?).await,
        "RunTask" => tasks::run_task(ctx, parse(body)?).await,
        "StartTask" => tasks::start_task(ctx, parse(body)?).await,
        "StopTask" => tasks::stop_task(ctx, parse(body)?).await,
        "DescribeTasks" => tasks::describe_tasks(ctx, parse(body)?).await,
        "ListTasks" => tasks::list_tasks(ctx, parse(body)?).await,
        "CreateService" => services::create_service(ctx, parse(body)?).await,
        "UpdateService" => services::update_service(ctx, parse(body)?).await,
        "DeleteService" => services::delete_service(ctx, parse(body)?).await,
        "DescribeServices" => services::describe_services(ctx, parse(body)?).await,
        "ListServices" => services::list_services(ctx, parse(body)?).await,
        "ListServiceDeployments" => services::list_service_deployments(ctx, parse(body)?).await,
        "DescribeServiceDeployments" => {
            services::describe_service_deployments(ctx, parse(body)?).await
        }
        other => Err(ApiError::new(
            ErrorKind::UnknownOperationException,
            format!("Operation '{other}' is not supported by this berth server."),
        )),
    }
}

pub use clusters::ensure_cluster;
