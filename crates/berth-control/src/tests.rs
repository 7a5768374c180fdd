//! The reconcilers against an in-memory store (`MemoryReplica`), with the service made
//! through the real ECS handlers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use berth_model::agent::{Hello, InstanceResources, AGENT_PROTOCOL_VERSION};
use berth_model::ArnContext;
use berth_store::memory::MemoryReplica;
use berth_store::{now_secs, Command, Replica, Response};
use serde_json::json;

use crate::instances::{InstanceSettings, InstanceWatcher};
use crate::services::{ServiceReconciler, ServiceSettings};
use crate::Reconciler;

fn arn() -> ArnContext {
    ArnContext::new("us-east-1", "123456789012")
}

async fn ecs(replica: &Arc<MemoryReplica>, op: &str, body: serde_json::Value) -> serde_json::Value {
    let ctx = berth_api::Ctx {
        cluster: replica.clone(),
        cfg: berth_api::ApiConfig {
            ctx: arn(),
            auth: berth_api::AuthMode::None,
            keys: Arc::new(Default::default()),
            body_limit: 1 << 20,
        },
    };
    berth_api::ecs::dispatch(&ctx, op, body.to_string().as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{op}: {e:?}"))
}

async fn register_instance(replica: &MemoryReplica, id: &str, at: f64) {
    let hello = Hello {
        protocol_version: AGENT_PROTOCOL_VERSION,
        join_token: "t".into(),
        cluster: "default".into(),
        instance_id: id.into(),
        hostname: id.into(),
        host_ip: "10.0.0.1".into(),
        resources: InstanceResources {
            cpu: 4096,
            memory: 4096,
            ports: vec![],
            ports_udp: vec![],
        },
        attributes: vec![],
        agent_version: "0".into(),
        runtime_version: "0".into(),
    };
    let r = replica
        .propose(Command::RegisterContainerInstance {
            ctx: arn(),
            hello,
            at,
            token: None,
        })
        .await
        .unwrap();
    assert!(!matches!(r, Response::Error { .. }), "{r:?}");
}

/// A cluster with one instance last heard from at `seen`, and a service of `count` tasks.
async fn service_on_one_instance(count: u32, seen: f64) -> Arc<MemoryReplica> {
    let replica = Arc::new(MemoryReplica::new());
    ecs(&replica, "CreateCluster", json!({})).await;
    register_instance(&replica, "i-1", seen).await;
    ecs(
        &replica,
        "RegisterTaskDefinition",
        json!({"family": "web", "containerDefinitions": [{"name": "a", "image": "busybox", "memory": 64}]}),
    )
    .await;
    ecs(
        &replica,
        "CreateService",
        json!({"serviceName": "web", "taskDefinition": "web", "desiredCount": count}),
    )
    .await;
    replica
}

fn live_tasks(replica: &MemoryReplica) -> Vec<String> {
    replica
        .reader()
        .tasks("default")
        .unwrap()
        .into_iter()
        .filter(|t| t.task.last_status() != "STOPPED")
        .map(|t| t.instance_id)
        .collect()
}

#[tokio::test]
async fn the_service_reconciler_starts_the_desired_tasks_once() {
    let replica = service_on_one_instance(3, now_secs()).await;
    let mut r = ServiceReconciler::new(ServiceSettings::new(arn()));
    r.pass(&*replica).await.unwrap();
    assert_eq!(live_tasks(&replica), ["i-1", "i-1", "i-1"]);
    // A second pass over the same state has nothing to add.
    r.pass(&*replica).await.unwrap();
    assert_eq!(live_tasks(&replica).len(), 3);
}

#[tokio::test]
async fn a_quiet_agent_is_disconnected_and_its_tasks_stopped_once_it_is_lost() {
    let replica = service_on_one_instance(2, now_secs() - 120.0).await;
    ServiceReconciler::new(ServiceSettings::new(arn()))
        .pass(&*replica)
        .await
        .unwrap();
    assert_eq!(live_tasks(&replica).len(), 2);
    let mut w = InstanceWatcher::new(InstanceSettings {
        heartbeat_timeout: Duration::from_secs(15),
        // Lost as soon as it is disconnected (the grace period counts from then).
        lost_after: Duration::ZERO,
    });
    let connected = |r: &MemoryReplica| {
        r.reader().container_instances("default").unwrap()[0]
            .instance
            .agent_connected
    };
    assert_eq!(connected(&replica), Some(true));
    w.pass(&*replica).await.unwrap();
    assert_eq!(connected(&replica), Some(false), "missed heartbeat");
    assert_eq!(
        live_tasks(&replica).len(),
        2,
        "disconnected is not lost yet"
    );
    w.pass(&*replica).await.unwrap();
    assert!(
        live_tasks(&replica).is_empty(),
        "lost: its tasks are stopped"
    );
}

/// Counts its passes.
struct Counter(Arc<AtomicUsize>, Arc<AtomicUsize>);

#[async_trait::async_trait]
impl Reconciler for Counter {
    fn name(&self) -> &'static str {
        "counter"
    }
    fn reset(&mut self) {
        self.1.fetch_add(1, Ordering::SeqCst);
    }
    async fn pass(&mut self, _: &dyn Replica) -> Result<Duration, String> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(Duration::from_secs(3600))
    }
}

#[tokio::test]
async fn the_loop_runs_a_reconciler_on_changes_and_only_while_leading() {
    let replica = Arc::new(MemoryReplica::new());
    replica.set_leader(false);
    let (passes, resets) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(crate::run(
        replica.clone() as Arc<dyn Replica>,
        Counter(passes.clone(), resets.clone()),
        stop_rx,
    ));
    // A follower: changes wake it, but it only drops its caches.
    ecs(&replica, "CreateCluster", json!({})).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while resets.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a follower did not reset"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(passes.load(Ordering::SeqCst), 0);
    // The leader: it passes (on the follower's short requeue, or a change) …
    replica.set_leader(true);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while passes.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no pass as the leader"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // … and then asks for one hour: only a change runs it again.
    let first = passes.load(Ordering::SeqCst);
    ecs(&replica, "CreateCluster", json!({"clusterName": "b"})).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while passes.load(Ordering::SeqCst) == first {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no pass after a change"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the loop ends on shutdown")
        .unwrap();
}
