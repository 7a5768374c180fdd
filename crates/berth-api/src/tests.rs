//! The handlers against an in-memory [`crate::Cluster`] (the store's `MemoryReplica`, which
//! applies each command at once): what a caller sees, and that refused input changes
//! nothing.

use std::sync::Arc;

use berth_model::{ArnContext, ErrorKind};
use berth_store::memory::MemoryReplica;
use serde_json::{json, Value};

use crate::protocol::query::{decode_form, to_tree, Params};
use crate::{ApiConfig, AuthMode, Ctx};

fn ctx() -> Ctx {
    Ctx {
        cluster: Arc::new(MemoryReplica::new()),
        cfg: ApiConfig {
            ctx: ArnContext::new("us-east-1", "123456789012"),
            auth: AuthMode::None,
            keys: Arc::new(Default::default()),
            body_limit: 1 << 20,
        },
    }
}

async fn ecs(ctx: &Ctx, op: &str, body: Value) -> Result<Value, berth_model::ApiError> {
    crate::ecs::dispatch(ctx, op, body.to_string().as_bytes()).await
}

async fn elbv2(ctx: &Ctx, form: &str) -> Result<Value, crate::elbv2::ElbError> {
    let tree = to_tree(&decode_form(form.as_bytes())?)?;
    let p = Params::new(&tree);
    let action = p.req_str("Action")?.to_string();
    crate::elbv2::dispatch(ctx, &action, &p).await
}

#[tokio::test]
async fn a_cluster_is_created_described_listed_and_deleted() {
    let ctx = ctx();
    let created = ecs(&ctx, "CreateCluster", json!({"clusterName": "web"}))
        .await
        .unwrap();
    let arn = "arn:aws:ecs:us-east-1:123456789012:cluster/web";
    assert_eq!(created["cluster"]["clusterArn"], arn);
    assert_eq!(created["cluster"]["status"], "ACTIVE");

    let listed = ecs(&ctx, "ListClusters", json!({})).await.unwrap();
    assert_eq!(listed["clusterArns"], json!([arn]));

    ecs(&ctx, "DeleteCluster", json!({"cluster": "web"}))
        .await
        .unwrap();
    let d = ecs(&ctx, "DescribeClusters", json!({"clusters": ["web"]}))
        .await
        .unwrap();
    assert_eq!(d["clusters"][0]["status"], "INACTIVE");
}

#[tokio::test]
async fn a_refused_request_names_the_bad_value_and_changes_nothing() {
    let ctx = ctx();
    let before = ctx.reader().revision();
    let e = ecs(
        &ctx,
        "RegisterTaskDefinition",
        json!({"family": "no spaces allowed", "containerDefinitions": [{"name": "a", "image": "busybox"}]}),
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind, ErrorKind::ClientException);
    assert!(e.message.contains("no spaces allowed"), "{}", e.message);
    let e = ecs(&ctx, "CreateCluster", json!({"clusterName": 7}))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::SerializationException);
    assert!(e.message.contains("clusterName"), "{}", e.message);
    assert_eq!(ctx.reader().revision(), before, "nothing was written");
    assert!(ctx.reader().clusters().unwrap().is_empty());
}

#[tokio::test]
async fn run_task_without_instances_is_refused_and_starts_nothing() {
    let ctx = ctx();
    ecs(&ctx, "CreateCluster", json!({})).await.unwrap();
    ecs(
        &ctx,
        "RegisterTaskDefinition",
        json!({"family": "sleep", "containerDefinitions": [{"name": "a", "image": "busybox", "memory": 64}]}),
    )
    .await
    .unwrap();
    let before = ctx.reader().revision();
    let e = ecs(
        &ctx,
        "RunTask",
        json!({"taskDefinition": "sleep", "count": 2}),
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidParameterException);
    assert!(
        e.message.contains("No Container Instances"),
        "{}",
        e.message
    );
    assert_eq!(ctx.reader().revision(), before);
    assert!(ctx.reader().tasks("default").unwrap().is_empty());
    // A task's logs are relayed through the cluster: an unknown task is refused first.
    let e = ecs(
        &ctx,
        "GetTaskLogs",
        json!({"task": "0123456789abcdef0123456789abcdef"}),
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidParameterException);
}

#[tokio::test]
async fn elbv2_target_groups_through_the_query_protocol() {
    let ctx = ctx();
    let created = elbv2(
        &ctx,
        "Action=CreateTargetGroup&Version=2015-12-01&Name=web&Protocol=HTTP&Port=80&VpcId=vpc-1",
    )
    .await
    .unwrap();
    let tg = &created["TargetGroups"][0];
    assert_eq!(tg["TargetGroupName"], "web");
    assert_eq!(tg["HealthCheckIntervalSeconds"], 30);
    let described = elbv2(
        &ctx,
        "Action=DescribeTargetGroups&Version=2015-12-01&Names.member.1=web",
    )
    .await
    .unwrap();
    assert_eq!(
        described["TargetGroups"][0]["TargetGroupArn"],
        tg["TargetGroupArn"]
    );
    let e = elbv2(
        &ctx,
        "Action=DescribeTargetGroups&Version=2015-12-01&Names.member.1=nope",
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, "TargetGroupNotFound");
}
