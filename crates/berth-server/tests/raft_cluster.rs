//! Real openraft nodes over real gRPC on loopback, in one process: snapshots and log purging,
//! snapshot install on a late joiner, writes through a follower, and the revision watch.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use berth_model::{validate_register, ArnContext, RegisterTaskDefinitionRequest};
use berth_server::{NodeConfig, ServerNode};
use berth_store::{Change, Command, Response};

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn register(family: &str) -> Command {
    let req: RegisterTaskDefinitionRequest = serde_json::from_value(serde_json::json!({
        "family": family,
        "containerDefinitions": [{"name": "app", "image": "busybox", "memory": 64}]
    }))
    .unwrap();
    Command::RegisterTaskDefinition {
        ctx: ArnContext::new("us-east-1", "123456789012"),
        spec: validate_register(req).unwrap(),
        registered_at: 1.0,
        registered_by: "test".into(),
    }
}

async fn start(
    id: u64,
    dir: &std::path::Path,
    snapshot_every: u64,
) -> (Arc<ServerNode>, tokio::sync::watch::Sender<bool>) {
    let mut cfg = NodeConfig::new(id, dir.to_path_buf(), free_addr());
    cfg.snapshot_every = snapshot_every;
    cfg.logs_kept_after_snapshot = 0;
    let (tx, rx) = tokio::sync::watch::channel(false);
    (ServerNode::start(cfg, rx).await.unwrap(), tx)
}

async fn until<F: Fn() -> bool>(what: &str, f: F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_purge_the_log_and_bring_a_late_joiner_up_to_date() {
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let (n1, _s1) = start(1, d1.path(), 20).await;
    n1.bootstrap_or_join(None).await.unwrap();
    until("node 1 to lead", || n1.is_leader()).await;

    for i in 1..=120u32 {
        match n1.write(register("snap")).await.unwrap() {
            Response::TaskDefinition {
                task_definition, ..
            } => assert_eq!(task_definition.revision, i),
            other => panic!("{other:?}"),
        }
    }
    until("a snapshot and a purged log", || {
        let m = n1.raft.metrics().borrow().clone();
        m.snapshot.is_some() && m.purged.is_some_and(|p| p.index > 0)
    })
    .await;

    // Node 2 joins after the log was purged: it can only catch up through a snapshot.
    let (n2, _s2) = start(2, d2.path(), 20).await;
    n2.bootstrap_or_join(Some(n1.advertise.clone()))
        .await
        .unwrap();
    until("node 2 to become a voter", || {
        n1.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == 2)
    })
    .await;
    n2.read_barrier().await.unwrap();
    let td = n2
        .reader
        .task_definition("snap", 120)
        .unwrap()
        .expect("revision 120 on the joiner");
    assert_eq!(td.revision, 120);
    assert!(
        n2.reader.task_definition("snap", 1).unwrap().is_some(),
        "revision 1 came with the snapshot"
    );

    // A write through the follower is forwarded to the leader and visible on both.
    match n2.write(register("snap")).await.unwrap() {
        Response::TaskDefinition {
            task_definition, ..
        } => assert_eq!(task_definition.revision, 121),
        other => panic!("{other:?}"),
    }
    n1.read_barrier().await.unwrap();
    assert!(n1.reader.task_definition("snap", 121).unwrap().is_some());

    // The watch reports the last write's change after an earlier revision.
    let rev = n2.reader.revision();
    let changes = n2.reader.changes_since(rev - 1).unwrap().unwrap();
    assert!(
        changes
            .iter()
            .any(|rc| rc.changes.contains(&Change::TaskDefinition {
                family: "snap".into(),
                revision: 121
            })),
        "{changes:?}"
    );
}
