//! The engine's decisions against in-memory doubles of the runtime and the network: the
//! lifecycle, essential exits, dependsOn, stop escalation, failures, and adoption after a
//! restart. (The real containerd and CNI are exercised in `containerd.rs`, `cni.rs` and
//! the end-to-end tests.)

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use berth_agent::engine::{Engine, EngineConfig, OOM_REASON};
use berth_agent::network::{Network, NetworkError, NetworkMode, PortForward, TaskNetwork};
use berth_agent::ports::PortAllocator;
use berth_agent::runtime::*;
use berth_agent::state::{AgentState, StateFile};
use berth_model::agent::DesiredTask;
use berth_model::{ContainerDefinition, ContainerDependency, PortMapping, TaskDefinition};
use tokio::sync::mpsc;

#[derive(Default)]
struct Fake {
    containers: HashMap<String, (ContainerSpec, ContainerState)>,
    calls: Vec<String>,
    /// Ids whose process ignores SIGTERM.
    stubborn: Vec<String>,
    missing_images: Vec<String>,
    events: Option<mpsc::Sender<RuntimeEvent>>,
}

#[derive(Clone, Default)]
struct FakeRuntime(Arc<Mutex<Fake>>);

impl FakeRuntime {
    fn exit(&self, id: &str, code: i32, oom: bool) {
        let tx = {
            let mut f = self.0.lock().unwrap();
            if let Some(c) = f.containers.get_mut(id) {
                c.1 = ContainerState::Stopped {
                    exit_code: code,
                    exited_at_ms: 1,
                    oom_killed: oom,
                };
            }
            f.events.clone()
        };
        if let Some(tx) = tx {
            if oom {
                let _ = tx.try_send(RuntimeEvent::Oom { id: id.into() });
            }
            let _ = tx.try_send(RuntimeEvent::Exited {
                id: id.into(),
                exit_code: code,
                exited_at_ms: 1,
            });
        }
    }
    fn calls(&self, prefix: &str) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .calls
            .iter()
            .filter(|c| c.starts_with(prefix))
            .cloned()
            .collect()
    }
}

#[async_trait]
impl Runtime for FakeRuntime {
    async fn ensure_image(
        &self,
        reference: &str,
        _auth: Option<&RegistryAuth>,
        _policy: PullPolicy,
    ) -> Result<ImageInfo, RuntimeError> {
        let f = self.0.lock().unwrap();
        if f.missing_images.iter().any(|m| m == reference) {
            return Err(RuntimeError::ImageNotFound(format!(
                "{reference}: not found"
            )));
        }
        Ok(ImageInfo {
            name: reference.into(),
            digest: "sha256:abc".into(),
            cmd: vec!["serve".into()],
            ..Default::default()
        })
    }
    async fn create(&self, spec: &ContainerSpec) -> Result<(), RuntimeError> {
        let mut f = self.0.lock().unwrap();
        f.calls.push(format!("create {}", spec.id));
        f.containers
            .entry(spec.id.clone())
            .or_insert((spec.clone(), ContainerState::Created));
        Ok(())
    }
    async fn start(&self, id: &str) -> Result<u32, RuntimeError> {
        let mut f = self.0.lock().unwrap();
        f.calls.push(format!("start {id}"));
        let c = f
            .containers
            .get_mut(id)
            .ok_or_else(|| RuntimeError::NotFound(id.into()))?;
        c.1 = ContainerState::Running { pid: 42 };
        Ok(42)
    }
    async fn kill(&self, id: &str, signal: i32) -> Result<(), RuntimeError> {
        let stop = {
            let mut f = self.0.lock().unwrap();
            f.calls.push(format!("kill {id} {signal}"));
            let running = matches!(
                f.containers.get(id),
                Some((_, ContainerState::Running { .. }))
            );
            running && (signal == libc::SIGKILL || !f.stubborn.iter().any(|s| s == id))
        };
        if stop {
            self.exit(id, 128 + signal, false);
        }
        Ok(())
    }
    async fn state(&self, id: &str) -> Result<Option<ContainerState>, RuntimeError> {
        Ok(self
            .0
            .lock()
            .unwrap()
            .containers
            .get(id)
            .map(|c| c.1.clone()))
    }
    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let mut f = self.0.lock().unwrap();
        f.calls.push(format!("remove {id}"));
        f.containers.remove(id);
        Ok(())
    }
    async fn list(&self) -> Result<Vec<ExistingContainer>, RuntimeError> {
        Ok(self
            .0
            .lock()
            .unwrap()
            .containers
            .iter()
            .map(|(id, (spec, st))| ExistingContainer {
                id: id.clone(),
                labels: spec.labels.clone(),
                state: Some(st.clone()),
            })
            .collect())
    }
    async fn exec(
        &self,
        _id: &str,
        _argv: Vec<String>,
        _timeout: Duration,
    ) -> Result<ExecOutcome, RuntimeError> {
        Ok(ExecOutcome::Exited(0))
    }
    async fn events(&self) -> Result<mpsc::Receiver<RuntimeEvent>, RuntimeError> {
        let (tx, rx) = mpsc::channel(64);
        self.0.lock().unwrap().events = Some(tx);
        Ok(rx)
    }
}

#[derive(Default)]
struct FakeNetwork {
    torn_down: Mutex<Vec<String>>,
}

#[async_trait]
impl Network for FakeNetwork {
    async fn setup(
        &self,
        task_id: &str,
        mode: NetworkMode,
        forwards: &[PortForward],
    ) -> Result<TaskNetwork, NetworkError> {
        Ok(TaskNetwork {
            mode,
            netns: (mode != NetworkMode::Host).then(|| format!("/run/netns/{task_id}").into()),
            ipv4: Some("172.30.0.9".into()),
            gateway: Some("172.30.0.1".into()),
            forwards: forwards.to_vec(),
        })
    }
    async fn teardown(&self, task_id: &str, _net: &TaskNetwork) -> Result<(), NetworkError> {
        self.torn_down.lock().unwrap().push(task_id.into());
        Ok(())
    }
}

const ARN: &str = "arn:aws:ecs:us-east-1:123456789012:task/c/0123456789abcdef0123456789abcdef";
const TID: &str = "0123456789abcdef0123456789abcdef";

fn cdef(name: &str) -> ContainerDefinition {
    ContainerDefinition {
        name: Some(name.into()),
        image: Some("img:1".into()),
        memory: Some(64),
        ..Default::default()
    }
}

fn desired(defs: Vec<ContainerDefinition>) -> DesiredTask {
    DesiredTask {
        task_arn: ARN.into(),
        cluster: "c".into(),
        task_definition: TaskDefinition {
            family: "web".into(),
            revision: 1,
            network_mode: Some("bridge".into()),
            container_definitions: defs,
            ..Default::default()
        },
        overrides: Default::default(),
        desired_status: "RUNNING".into(),
        last_status: "PROVISIONING".into(),
        started_by: None,
        stopped_reason: None,
        reported_seq: 0,
    }
}

struct Setup {
    engine: Arc<Engine>,
    rt: FakeRuntime,
    net: Arc<FakeNetwork>,
    dir: tempfile::TempDir,
}

fn engine_with(rt: FakeRuntime, dir: tempfile::TempDir, state: AgentState) -> Setup {
    let net = Arc::new(FakeNetwork::default());
    let engine = Engine::new(
        EngineConfig {
            data_dir: dir.path().to_path_buf(),
            pull_policy: PullPolicy::Default,
            registry_credentials: BTreeMap::new(),
            stop_timeout: Duration::from_millis(300),
        },
        Arc::new(rt.clone()),
        net.clone(),
        state,
        PortAllocator::new(50000..=50010, &[50001]).with_probe(|_, _| true),
    );
    Setup {
        engine,
        rt,
        net,
        dir,
    }
}

async fn setup() -> Setup {
    let s = engine_with(
        FakeRuntime::default(),
        tempfile::tempdir().unwrap(),
        AgentState::new("c"),
    );
    tokio::spawn(s.engine.clone().watch_runtime());
    s
}

async fn wait_status(e: &Engine, want: &str) -> berth_agent::state::LocalTask {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(t) = e.snapshot().tasks.get(ARN) {
            if t.status == want {
                return t.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "task never reached {want}: {:?}",
            e.snapshot().tasks.get(ARN).map(|t| &t.status)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn cid(name: &str) -> String {
    format!("berth-{TID}-{name}")
}

#[tokio::test]
async fn a_task_runs_with_dynamic_ports_and_stops_on_request() {
    let s = setup().await;
    let mut web = cdef("web");
    web.port_mappings = Some(vec![PortMapping {
        container_port: Some(80),
        host_port: Some(0),
        ..Default::default()
    }]);
    let mut side = cdef("side");
    side.port_mappings = Some(vec![PortMapping {
        container_port: Some(8081),
        ..Default::default()
    }]);
    s.engine
        .apply_desired(true, vec![desired(vec![web, side])])
        .await;
    let t = wait_status(&s.engine, "RUNNING").await;
    let ports: Vec<u16> = t.containers.values().map(|c| c.bindings[0].0).collect();
    assert_eq!(ports.len(), 2);
    assert_ne!(ports[0], ports[1]);
    assert!(ports
        .iter()
        .all(|p| (50000..=50010).contains(p) && *p != 50001));
    assert!(t.started_at.is_some() && t.pull_started_at.is_some());
    let r = t.report();
    assert_eq!(r.last_status, "RUNNING");
    assert!(r.seq > 0);

    let mut d = desired(vec![cdef("web"), cdef("side")]);
    d.desired_status = "STOPPED".into();
    d.stopped_reason = Some("done".into());
    s.engine.apply_desired(false, vec![d]).await;
    let t = wait_status(&s.engine, "STOPPED").await;
    assert_eq!(t.stopped_reason.as_deref(), Some("done"));
    assert!(t
        .containers
        .values()
        .all(|c| c.exit_code == Some(128 + libc::SIGTERM)));
    assert!(s.rt.calls("remove").len() == 2);
    assert_eq!(s.net.torn_down.lock().unwrap().as_slice(), [TID]);
    // The saved state agrees with memory.
    let saved = StateFile::new(s.dir.path()).load().unwrap().unwrap();
    assert_eq!(saved.tasks[ARN].status, "STOPPED");
}

#[tokio::test]
async fn essential_exit_stops_the_task_non_essential_does_not() {
    let s = setup().await;
    let mut helper = cdef("helper");
    helper.essential = Some(false);
    s.engine
        .apply_desired(true, vec![desired(vec![cdef("web"), helper])])
        .await;
    wait_status(&s.engine, "RUNNING").await;
    s.rt.exit(&cid("helper"), 0, false);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = s.engine.snapshot().tasks[ARN].clone();
    assert_eq!(t.status, "RUNNING");
    assert_eq!(t.containers["helper"].status, "STOPPED");
    s.rt.exit(&cid("web"), 137, true);
    let t = wait_status(&s.engine, "STOPPED").await;
    assert_eq!(t.stop_code.as_deref(), Some("EssentialContainerExited"));
    assert_eq!(
        t.stopped_reason.as_deref(),
        Some("Essential container in task exited")
    );
    assert_eq!(t.containers["web"].exit_code, Some(137));
    assert_eq!(t.containers["web"].reason.as_deref(), Some(OOM_REASON));
}

#[tokio::test]
async fn stop_escalates_to_sigkill_after_stop_timeout() {
    let s = setup().await;
    s.rt.0.lock().unwrap().stubborn.push(cid("web"));
    s.engine
        .apply_desired(true, vec![desired(vec![cdef("web")])])
        .await;
    wait_status(&s.engine, "RUNNING").await;
    let mut d = desired(vec![cdef("web")]);
    d.desired_status = "STOPPED".into();
    let begun = Instant::now();
    s.engine.apply_desired(false, vec![d]).await;
    let t = wait_status(&s.engine, "STOPPED").await;
    assert!(begun.elapsed() >= Duration::from_millis(300));
    assert_eq!(
        s.rt.calls("kill"),
        [
            format!("kill {} {}", cid("web"), libc::SIGTERM),
            format!("kill {} {}", cid("web"), libc::SIGKILL)
        ]
    );
    assert_eq!(t.containers["web"].exit_code, Some(128 + libc::SIGKILL));
}

/// A task whose `web` waits for `init` (non-essential) to exit 0; returns once `init`
/// has been started.
async fn start_init_then_web(s: &Setup) {
    let mut init = cdef("init");
    init.essential = Some(false);
    let mut web = cdef("web");
    web.depends_on = Some(vec![ContainerDependency {
        container_name: "init".into(),
        condition: "SUCCESS".into(),
    }]);
    s.engine
        .apply_desired(true, vec![desired(vec![init, web])])
        .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.rt.calls("start").is_empty() {
        assert!(Instant::now() < deadline, "init never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn depends_on_success_orders_starts_and_failure_stops_the_task() {
    let s = setup().await;
    start_init_then_web(&s).await;
    assert_eq!(s.rt.calls("start"), [format!("start {}", cid("init"))]);
    s.rt.exit(&cid("init"), 0, false);
    wait_status(&s.engine, "RUNNING").await;
    assert_eq!(s.rt.calls("start").len(), 2);

    // A failed SUCCESS dependency: the task fails to start.
    let s = setup().await;
    start_init_then_web(&s).await;
    s.rt.exit(&cid("init"), 2, false);
    let t = wait_status(&s.engine, "STOPPED").await;
    assert_eq!(t.stop_code.as_deref(), Some("TaskFailedToStart"));
    assert!(t.stopped_reason.unwrap().contains("exited with code 2"));
}

#[tokio::test]
async fn a_missing_image_fails_the_task_with_a_pull_error() {
    let s = setup().await;
    s.rt.0.lock().unwrap().missing_images.push("img:1".into());
    s.engine
        .apply_desired(true, vec![desired(vec![cdef("web")])])
        .await;
    let t = wait_status(&s.engine, "STOPPED").await;
    assert_eq!(t.stop_code.as_deref(), Some("TaskFailedToStart"));
    assert!(t
        .stopped_reason
        .as_deref()
        .unwrap()
        .starts_with("CannotPullContainerError"));
    assert!(t.containers["web"]
        .reason
        .as_deref()
        .unwrap()
        .contains("img:1"));
    // Its ports went back.
    assert!(t.host_ports.is_empty());
    assert!(s.rt.calls("create").is_empty());
}

#[tokio::test]
async fn static_host_port_conflict_fails_with_a_reason_naming_the_port() {
    let s = setup().await;
    let mut a = cdef("web");
    a.port_mappings = Some(vec![PortMapping {
        container_port: Some(80),
        host_port: Some(50005),
        ..Default::default()
    }]);
    s.engine
        .apply_desired(true, vec![desired(vec![a.clone()])])
        .await;
    wait_status(&s.engine, "RUNNING").await;
    let mut second = desired(vec![a]);
    second.task_arn = ARN.replace("0123", "9999");
    s.engine.apply_desired(false, vec![second.clone()]).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let t = s.engine.snapshot().tasks.get(&second.task_arn).cloned();
        if let Some(t) = t.filter(|t| t.status == "STOPPED") {
            assert!(t.stopped_reason.unwrap().contains("50005"));
            break;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn restart_adopts_running_containers_and_reports_vanished_ones() {
    let s = setup().await;
    s.engine
        .apply_desired(true, vec![desired(vec![cdef("web")])])
        .await;
    wait_status(&s.engine, "RUNNING").await;
    let creates = s.rt.calls("create").len();
    let starts = s.rt.calls("start").len();
    // "kill -9": drop the engine, keep the runtime and the data dir.
    let saved = StateFile::new(s.dir.path()).load().unwrap().unwrap();
    let s2 = engine_with(s.rt.clone(), s.dir, saved.clone());
    s2.engine.recover().await.unwrap();
    tokio::spawn(s2.engine.clone().watch_runtime());
    s2.engine
        .apply_desired(true, vec![desired(vec![cdef("web")])])
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        s.rt.calls("create").len(),
        creates,
        "no container recreated"
    );
    assert_eq!(s.rt.calls("start").len(), starts, "no container restarted");
    assert_eq!(s2.engine.snapshot().tasks[ARN].status, "RUNNING");
    // The container dies while the agent is down: reported after the restart.
    s.rt.0.lock().unwrap().containers.remove(&cid("web"));
    let saved = StateFile::new(s2.dir.path()).load().unwrap().unwrap();
    let s3 = engine_with(s.rt.clone(), s2.dir, saved);
    s3.engine.recover().await.unwrap();
    let t = wait_status(&s3.engine, "STOPPED").await;
    assert_eq!(t.stop_code.as_deref(), Some("EssentialContainerExited"));
    assert!(t.stopped_reason.unwrap().contains("vanished"));
    assert!(t.containers["web"]
        .reason
        .as_deref()
        .unwrap()
        .starts_with("ContainerVanished"));
}

#[tokio::test]
async fn a_full_desired_set_without_a_task_stops_it() {
    let s = setup().await;
    s.engine
        .apply_desired(true, vec![desired(vec![cdef("web")])])
        .await;
    wait_status(&s.engine, "RUNNING").await;
    s.engine.apply_desired(true, vec![]).await;
    let t = wait_status(&s.engine, "STOPPED").await;
    assert!(t.stopped_reason.unwrap().contains("no longer assigned"));
}
