//! The task engine: one driver per task walks it through the ECS lifecycle
//! (PROVISIONING → PENDING → RUNNING → STOPPING → DEPROVISIONING → STOPPED) against the
//! [`Runtime`] and [`Network`] seams, persisting the agent's state and queueing a report on
//! every transition. On start it adopts what containerd still runs.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_model::agent::{DesiredTask, TaskReport};
use berth_model::ContainerDefinition;
use tokio::sync::{mpsc, Notify};

use crate::health::{task_health, HealthConfig, HealthState};
use crate::network::{Network, NetworkMode, PortForward, Protocol};
use crate::ports::PortAllocator;
use crate::runtime::{
    ContainerState, ExecOutcome, NetNs, PullPolicy, RegistryAuth, Runtime, RuntimeError,
    RuntimeEvent, LABEL_TASK_ARN,
};
use crate::state::{AgentState, LocalTask, StateFile};
use crate::taskspec::{self, SpecContext};

pub const OOM_REASON: &str = "OutOfMemoryError: Container killed due to memory usage";

/// Engine settings (a subset of the agent's configuration).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub data_dir: PathBuf,
    pub pull_policy: PullPolicy,
    /// Named registry credentials (`repositoryCredentials.credentialsParameter` → auth).
    pub registry_credentials: BTreeMap<String, RegistryAuth>,
    /// Default grace between the stop signal and SIGKILL (ECS_CONTAINER_STOP_TIMEOUT).
    pub stop_timeout: Duration,
}

#[derive(Debug)]
enum Signal {
    Desired(Box<DesiredTask>),
    Exited {
        name: String,
        exit_code: i32,
        oom: bool,
    },
    Health {
        name: String,
        status: &'static str,
    },
}

pub struct Engine {
    pub cfg: EngineConfig,
    runtime: Arc<dyn Runtime>,
    network: Arc<dyn Network>,
    state: Mutex<AgentState>,
    state_file: StateFile,
    save_lock: Mutex<()>,
    ports: Mutex<PortAllocator>,
    drivers: Mutex<HashMap<String, mpsc::UnboundedSender<Signal>>>,
    /// Woken whenever a task has a report the server hasn't acknowledged.
    pub reports_ready: Notify,
    /// OOM kills seen on the event stream, until the exit arrives.
    ooms: Mutex<std::collections::HashSet<String>>,
    /// One pull per image reference at a time: tasks starting together share it.
    image_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn essential(def: &ContainerDefinition) -> bool {
    def.essential.unwrap_or(true)
}

/// Signal number for an image's STOPSIGNAL (`SIGTERM`, `TERM`, `15`); SIGTERM if unknown.
pub fn signal_number(s: Option<&str>) -> i32 {
    let Some(s) = s else { return libc::SIGTERM };
    if let Ok(n) = s.parse::<i32>() {
        return n;
    }
    let name = s.trim().to_ascii_uppercase();
    let name = if name.starts_with("SIG") {
        name
    } else {
        format!("SIG{name}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .map(|sig| sig as i32)
        .unwrap_or(libc::SIGTERM)
}

/// Why a task could not start; becomes its `stoppedReason` (stopCode TaskFailedToStart).
struct StartFailure {
    reason: String,
    container: Option<(String, String)>,
}

impl StartFailure {
    fn task(reason: impl Into<String>) -> Self {
        StartFailure {
            reason: reason.into(),
            container: None,
        }
    }
    fn container(name: &str, reason: impl Into<String>) -> Self {
        let reason = reason.into();
        StartFailure {
            reason: reason.clone(),
            container: Some((name.to_string(), reason)),
        }
    }
}

impl Engine {
    pub fn new(
        cfg: EngineConfig,
        runtime: Arc<dyn Runtime>,
        network: Arc<dyn Network>,
        state: AgentState,
        ports: PortAllocator,
    ) -> Arc<Self> {
        let state_file = StateFile::new(&cfg.data_dir);
        Arc::new(Engine {
            cfg,
            runtime,
            network,
            state: Mutex::new(state),
            state_file,
            save_lock: Mutex::new(()),
            ports: Mutex::new(ports),
            drivers: Mutex::new(HashMap::new()),
            reports_ready: Notify::new(),
            ooms: Mutex::new(Default::default()),
            image_locks: Mutex::new(HashMap::new()),
        })
    }

    pub fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.runtime
    }

    pub fn snapshot(&self) -> AgentState {
        self.state.lock().unwrap().clone()
    }

    pub fn with_state<T>(&self, f: impl FnOnce(&mut AgentState) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    /// Writes the current state durably. Saves are serialized and each writes the state as
    /// of its own moment, so a later save never loses to an earlier one.
    pub async fn persist(self: &Arc<Self>) {
        let me = self.clone();
        let res = tokio::task::spawn_blocking(move || {
            let _g = me.save_lock.lock().unwrap();
            let mut snap = me.state.lock().unwrap().clone();
            snap.ports =
                serde_json::to_value(me.ports.lock().unwrap().snapshot()).unwrap_or_default();
            me.state_file.save(&snap)
        })
        .await;
        match res {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "could not save the agent state"),
            Err(e) => tracing::error!(error = %e, "state save panicked"),
        }
    }

    /// Mutates a task, bumps its report sequence, persists, and wakes the reporter.
    async fn update(self: &Arc<Self>, arn: &str, f: impl FnOnce(&mut LocalTask)) {
        {
            let mut st = self.state.lock().unwrap();
            if let Some(t) = st.tasks.get_mut(arn) {
                f(t);
                t.seq += 1;
            }
        }
        self.persist().await;
        self.reports_ready.notify_one();
    }

    fn task(&self, arn: &str) -> Option<LocalTask> {
        self.state.lock().unwrap().tasks.get(arn).cloned()
    }

    /// Reports the server has not acknowledged yet (with seq above `sent`).
    pub fn pending_reports(&self, sent: &HashMap<String, u64>) -> Vec<TaskReport> {
        let st = self.state.lock().unwrap();
        st.tasks
            .values()
            .filter(|t| {
                t.seq > t.acked_seq && t.seq > sent.get(&t.desired.task_arn).copied().unwrap_or(0)
            })
            .map(|t| t.report())
            .collect()
    }

    /// The server committed this report; a finished task can then be forgotten.
    pub async fn ack(self: &Arc<Self>, arn: &str, seq: u64) {
        let forget = {
            let mut st = self.state.lock().unwrap();
            let Some(t) = st.tasks.get_mut(arn) else {
                return;
            };
            t.acked_seq = t.acked_seq.max(seq);
            let done = t.is_stopped() && t.cleaned && t.acked_seq >= t.seq;
            if done {
                st.tasks.remove(arn);
            }
            done
        };
        if forget {
            self.drivers.lock().unwrap().remove(arn);
            self.persist().await;
        }
    }

    // ------------------------------------------------------------------ desired state

    /// Applies the server's desired tasks. `full`: the complete set; anything running here
    /// that it does not list is stopped.
    pub async fn apply_desired(self: &Arc<Self>, full: bool, tasks: Vec<DesiredTask>) {
        let mut listed = std::collections::HashSet::new();
        for d in tasks {
            listed.insert(d.task_arn.clone());
            let known = self.task(&d.task_arn);
            match known {
                Some(_) => {
                    // The server's view of what it has (after a reconnect) may be behind ours.
                    self.with_state(|st| {
                        if let Some(t) = st.tasks.get_mut(&d.task_arn) {
                            t.acked_seq = t.acked_seq.max(d.reported_seq.min(t.seq));
                            t.desired.desired_status = d.desired_status.clone();
                            t.desired.stopped_reason = d.stopped_reason.clone();
                        }
                    });
                    let arn = d.task_arn.clone();
                    self.signal(&arn, Signal::Desired(Box::new(d)));
                }
                None if d.last_status == "STOPPED" => {}
                None if d.desired_status == "STOPPED" => {
                    // Stopped before this agent ever started it: just confirm.
                    let arn = d.task_arn.clone();
                    let mut t = LocalTask::new(d);
                    t.status = "STOPPED".into();
                    t.cleaned = true;
                    t.execution_stopped_at = Some(now_secs());
                    for c in t.containers.values_mut() {
                        c.status = "STOPPED".into();
                    }
                    self.with_state(|st| st.tasks.insert(arn.clone(), t));
                    self.update(&arn, |_| {}).await;
                }
                None => {
                    let arn = d.task_arn.clone();
                    tracing::info!(
                        task = arn,
                        family = d.task_definition.family,
                        "starting task"
                    );
                    self.with_state(|st| st.tasks.insert(arn.clone(), LocalTask::new(d)));
                    self.persist().await;
                    self.spawn_driver(arn);
                }
            }
        }
        if full {
            let orphans: Vec<String> = self.with_state(|st| {
                st.tasks
                    .iter()
                    .filter(|(arn, t)| !listed.contains(*arn) && !t.is_stopped())
                    .map(|(arn, _)| arn.clone())
                    .collect()
            });
            for arn in orphans {
                tracing::warn!(
                    task = arn,
                    "the server no longer assigns this task here; stopping it"
                );
                self.with_state(|st| {
                    if let Some(t) = st.tasks.get_mut(&arn) {
                        t.desired.desired_status = "STOPPED".into();
                        t.desired.stopped_reason =
                            Some("Task is no longer assigned to this container instance".into());
                    }
                });
                let d = self.task(&arn).map(|t| t.desired);
                if let Some(d) = d {
                    self.signal(&arn, Signal::Desired(Box::new(d)));
                }
            }
            self.remove_unknown_containers().await;
        }
    }

    fn signal(&self, arn: &str, s: Signal) {
        if let Some(tx) = self.drivers.lock().unwrap().get(arn) {
            let _ = tx.send(s);
        }
    }

    fn spawn_driver(self: &Arc<Self>, arn: String) {
        let (tx, rx) = mpsc::unbounded_channel();
        self.drivers.lock().unwrap().insert(arn.clone(), tx);
        let me = self.clone();
        tokio::spawn(async move { me.drive(arn, rx).await });
    }

    /// Containers in berth's namespace that belong to no task this agent knows (left by a
    /// lost state file): removed.
    async fn remove_unknown_containers(self: &Arc<Self>) {
        let Ok(list) = self.runtime.list().await else {
            return;
        };
        for c in list {
            let Some(arn) = c.labels.get(LABEL_TASK_ARN) else {
                continue;
            };
            if self.task(arn).is_none() {
                tracing::warn!(
                    container = c.id,
                    task = arn,
                    "removing a container of a task this agent does not manage"
                );
                let _ = self.runtime.kill(&c.id, libc::SIGKILL).await;
                let _ = self.runtime.remove(&c.id).await;
            }
        }
    }

    // ------------------------------------------------------------------ recovery

    /// After a restart: match the saved tasks with what containerd runs, record what changed
    /// while the agent was down, and resume a driver for every unfinished task.
    pub async fn recover(self: &Arc<Self>) -> anyhow::Result<()> {
        let list = self
            .runtime
            .list()
            .await
            .map_err(|e| anyhow::anyhow!("list containers: {e}"))?;
        let found: HashMap<String, Option<ContainerState>> =
            list.into_iter().map(|c| (c.id, c.state)).collect();
        let arns: Vec<String> = self.with_state(|st| st.tasks.keys().cloned().collect());
        for arn in arns {
            let Some(t) = self.task(&arn) else { continue };
            if t.is_stopped() && t.cleaned {
                continue;
            }
            let mut changed = false;
            let mut essential_gone = None;
            let defs = t.desired.task_definition.container_definitions.clone();
            let mut updates = Vec::new();
            for (name, c) in &t.containers {
                let Some(id) = c.runtime_id.clone().filter(|_| c.created) else {
                    continue;
                };
                if c.status == "STOPPED" {
                    continue;
                }
                let def = defs
                    .iter()
                    .find(|d| d.name.as_deref() == Some(name.as_str()));
                let ess = def.map(essential).unwrap_or(true);
                match found.get(&id) {
                    Some(Some(ContainerState::Running { .. })) => {
                        if c.started && c.status != "RUNNING" {
                            updates.push((name.clone(), "RUNNING".to_string(), None, None));
                            changed = true;
                        }
                    }
                    Some(Some(ContainerState::Created)) | Some(None) if !c.started => {}
                    Some(Some(ContainerState::Stopped {
                        exit_code,
                        oom_killed,
                        ..
                    })) if c.started => {
                        let reason = if *oom_killed {
                            Some(OOM_REASON.to_string())
                        } else {
                            None
                        };
                        updates.push((name.clone(), "STOPPED".into(), Some(*exit_code), reason));
                        changed = true;
                        if ess {
                            essential_gone.get_or_insert_with(|| {
                                "Essential container in task exited while the agent was down"
                                    .to_string()
                            });
                        }
                    }
                    _ => {
                        updates.push((
                            name.clone(),
                            "STOPPED".into(),
                            None,
                            Some("ContainerVanished: the container was gone from containerd when the agent restarted".into()),
                        ));
                        changed = true;
                        if ess {
                            essential_gone = Some("Task stopped because its essential container vanished while the agent was down".into());
                        }
                    }
                }
            }
            if changed {
                tracing::warn!(task = arn, "containers changed while the agent was down");
                self.update(&arn, |t| {
                    for (name, status, code, reason) in updates {
                        if let Some(c) = t.containers.get_mut(&name) {
                            c.status = status;
                            if code.is_some() {
                                c.exit_code = code;
                            }
                            if reason.is_some() {
                                c.reason = reason;
                            }
                        }
                    }
                    if let Some(r) = essential_gone {
                        if t.stop_code.is_none() {
                            t.stop_code = Some("EssentialContainerExited".into());
                            t.stopped_reason = Some(r);
                        }
                    }
                })
                .await;
            }
            // Ports of adopted tasks stay held.
            {
                let mut ports = self.ports.lock().unwrap();
                for (p, proto) in &t.host_ports {
                    ports.mark_held(*p, parse_proto(proto));
                }
            }
            self.spawn_driver(arn);
        }
        Ok(())
    }

    /// Routes runtime events to task drivers. Reconnects to the event stream when it ends
    /// (containerd restarted) and re-polls running containers so no exit is missed.
    pub async fn watch_runtime(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(200);
        loop {
            match self.runtime.events().await {
                Ok(mut rx) => {
                    backoff = Duration::from_millis(200);
                    // Anything that exited while we weren't subscribed.
                    self.poll_containers().await;
                    while let Some(ev) = rx.recv().await {
                        self.on_event(ev);
                    }
                    tracing::warn!("containerd event stream ended; resubscribing");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot subscribe to containerd events; retrying");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Safety net for missed events: every running container's state, compared.
    pub async fn poll_containers(self: &Arc<Self>) {
        let running: Vec<(String, String, String)> = self.with_state(|st| {
            st.tasks
                .values()
                .flat_map(|t| {
                    t.containers
                        .values()
                        .filter(|c| c.status == "RUNNING")
                        .filter_map(|c| {
                            c.runtime_id
                                .clone()
                                .map(|id| (t.desired.task_arn.clone(), c.name.clone(), id))
                        })
                })
                .collect()
        });
        for (arn, name, id) in running {
            match self.runtime.state(&id).await {
                Ok(Some(ContainerState::Stopped {
                    exit_code,
                    oom_killed,
                    ..
                })) => {
                    let oom = oom_killed || self.ooms.lock().unwrap().remove(&id);
                    self.signal(
                        &arn,
                        Signal::Exited {
                            name,
                            exit_code,
                            oom,
                        },
                    );
                }
                Ok(None) => self.signal(
                    &arn,
                    Signal::Exited {
                        name,
                        exit_code: 137,
                        oom: false,
                    },
                ),
                _ => {}
            }
        }
    }

    fn on_event(&self, ev: RuntimeEvent) {
        match ev {
            RuntimeEvent::Oom { id } => {
                self.ooms.lock().unwrap().insert(id);
            }
            RuntimeEvent::Exited { id, exit_code, .. } => {
                let target = self.with_state(|st| {
                    st.tasks.values().find_map(|t| {
                        t.containers
                            .values()
                            .find(|c| c.runtime_id.as_deref() == Some(id.as_str()))
                            .map(|c| (t.desired.task_arn.clone(), c.name.clone()))
                    })
                });
                if let Some((arn, name)) = target {
                    let oom = self.ooms.lock().unwrap().remove(&id);
                    self.signal(
                        &arn,
                        Signal::Exited {
                            name,
                            exit_code,
                            oom,
                        },
                    );
                }
            }
        }
    }

    // ------------------------------------------------------------------ the driver

    async fn drive(self: Arc<Self>, arn: String, mut rx: mpsc::UnboundedReceiver<Signal>) {
        let mut health_tasks: Vec<tokio::task::JoinHandle<()>> = Vec::new();
        let Some(t) = self.task(&arn) else { return };
        let stop_wanted =
            |t: &LocalTask| t.desired.desired_status == "STOPPED" || t.stop_code.is_some();
        if !t.is_stopped()
            && !stop_wanted(&t)
            && crate::state_rank(&t.status) < crate::state_rank("RUNNING")
        {
            if let Err(f) = self.start_task(&arn, &mut rx, &mut health_tasks).await {
                tracing::warn!(task = arn, reason = f.reason, "task failed to start");
                self.update(&arn, |t| {
                    if t.stop_code.is_none() {
                        t.stop_code = Some("TaskFailedToStart".into());
                        t.stopped_reason = Some(f.reason.clone());
                    }
                    if let Some((name, reason)) = &f.container {
                        if let Some(c) = t.containers.get_mut(name) {
                            c.reason = Some(reason.chars().take(1024).collect());
                        }
                    }
                })
                .await;
            }
        } else if let Some(t) = self.task(&arn) {
            // Adopted: resume health checks of running containers.
            if !stop_wanted(&t) && !t.is_stopped() {
                for c in t.containers.values().filter(|c| c.status == "RUNNING") {
                    if let Some(h) = self.spawn_health(&arn, &c.name) {
                        health_tasks.push(h);
                    }
                }
            }
        }
        // Monitor until a stop is wanted.
        loop {
            let Some(t) = self.task(&arn) else { return };
            if t.is_stopped() || stop_wanted(&t) {
                break;
            }
            match rx.recv().await {
                None => return,
                Some(s) => self.on_signal(&arn, s).await,
            }
        }
        for h in health_tasks {
            h.abort();
        }
        self.stop_task(&arn, &mut rx).await;
    }

    async fn on_signal(self: &Arc<Self>, arn: &str, s: Signal) {
        match s {
            Signal::Desired(d) => {
                self.with_state(|st| {
                    if let Some(t) = st.tasks.get_mut(arn) {
                        t.desired.desired_status = d.desired_status.clone();
                        t.desired.stopped_reason = d.stopped_reason.clone();
                    }
                });
            }
            Signal::Exited {
                name,
                exit_code,
                oom,
            } => {
                let Some(t) = self.task(arn) else { return };
                if t.containers.get(&name).map(|c| c.status.as_str()) == Some("STOPPED") {
                    return;
                }
                let ess = t
                    .desired
                    .task_definition
                    .container_definitions
                    .iter()
                    .find(|d| d.name.as_deref() == Some(name.as_str()))
                    .map(essential)
                    .unwrap_or(true);
                tracing::info!(
                    task = arn,
                    container = name,
                    exit_code,
                    oom,
                    essential = ess,
                    "container exited"
                );
                self.update(arn, |t| {
                    if let Some(c) = t.containers.get_mut(&name) {
                        c.status = "STOPPED".into();
                        c.exit_code = Some(exit_code);
                        if oom {
                            c.reason = Some(OOM_REASON.into());
                        }
                    }
                    if ess && t.stop_code.is_none() && t.desired.desired_status != "STOPPED" {
                        t.stop_code = Some("EssentialContainerExited".into());
                        t.stopped_reason = Some("Essential container in task exited".into());
                    }
                })
                .await;
            }
            Signal::Health { name, status } => {
                self.update(arn, |t| {
                    if let Some(c) = t.containers.get_mut(&name) {
                        c.health = Some(status.into());
                    }
                    t.health = Some(compute_task_health(t).into());
                })
                .await;
            }
        }
    }

    async fn start_task(
        self: &Arc<Self>,
        arn: &str,
        rx: &mut mpsc::UnboundedReceiver<Signal>,
        health_tasks: &mut Vec<tokio::task::JoinHandle<()>>,
    ) -> Result<(), StartFailure> {
        let t = self
            .task(arn)
            .ok_or_else(|| StartFailure::task("task vanished"))?;
        let task_id = t.task_id().to_string();
        let td = t.desired.task_definition.clone();
        let mode = NetworkMode::from_ecs(td.network_mode.as_deref());

        // PROVISIONING: ports and the namespace. The CNI plugins then run while the images
        // are made ready and the containers created in that namespace (they only start once
        // it is wired): the network costs no extra time on the way to RUNNING.
        let netns_path = match &t.network {
            Some(n) => n.netns.clone(),
            None => self
                .network
                .prepare(&task_id, mode)
                .await
                .map_err(|e| StartFailure::task(format!("ResourceInitializationError: {e}")))?,
        };
        let netns = match &netns_path {
            Some(p) => NetNs::Path(p.clone()),
            None => NetNs::Host,
        };
        let etc_files = match (&netns_path, mode) {
            (Some(_), NetworkMode::Bridge | NetworkMode::Awsvpc | NetworkMode::None) => {
                let dir = taskspec::task_dir(&self.cfg.data_dir, &task_id);
                std::fs::create_dir_all(&dir)
                    .map_err(|e| StartFailure::task(format!("create {}: {e}", dir.display())))?;
                let hosts = dir.join("hosts");
                let resolv = dir.join("resolv.conf");
                let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
                let ip = t.network.as_ref().and_then(|n| n.ipv4.clone());
                std::fs::write(&hosts, taskspec::hosts_file(&t.desired, ip.as_deref()))
                    .and_then(|_| {
                        std::fs::write(&resolv, taskspec::resolv_conf(&t.desired, &host_resolv))
                    })
                    .map_err(|e| StartFailure::task(format!("write task files: {e}")))?;
                Some((hosts, resolv))
            }
            _ => None,
        };
        let wire = async {
            if t.network.is_some() {
                return Ok(());
            }
            let (forwards, bindings, held) = self.plan_ports(&t, mode)?;
            let t0 = Instant::now();
            let res = self.network.setup(&task_id, mode, &forwards).await;
            tracing::debug!(
                task = arn,
                elapsed_ms = t0.elapsed().as_secs_f64() * 1e3,
                "network set up"
            );
            let net = match res {
                Ok(n) => n,
                Err(e) => {
                    self.release_ports(&held);
                    return Err(StartFailure::task(format!(
                        "ResourceInitializationError: {e}"
                    )));
                }
            };
            // The hosts file is bind-mounted: rewrite it in place with the task's address.
            if let (Some((hosts, _)), Some(ip)) = (&etc_files, &net.ipv4) {
                let _ = std::fs::write(hosts, taskspec::hosts_file(&t.desired, Some(ip)));
            }
            self.update(arn, |t| {
                t.network = Some(net);
                t.host_ports = held;
                for (name, b) in bindings {
                    if let Some(c) = t.containers.get_mut(&name) {
                        c.bindings = b;
                    }
                }
                if t.status == "PROVISIONING" {
                    t.status = "PENDING".into();
                }
            })
            .await;
            Ok(())
        };
        let prepare = self.prepare_containers(arn, &t, &task_id, &netns, &etc_files);
        let (wired, prepared) = tokio::join!(wire, prepare);
        wired?;
        prepared?;

        // Start containers as their dependencies allow.
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let t = self
                .task(arn)
                .ok_or_else(|| StartFailure::task("task vanished"))?;
            if t.desired.desired_status == "STOPPED" || t.stop_code.is_some() {
                return Ok(());
            }
            let mut all_started = true;
            let mut progressed = false;
            for def in &td.container_definitions {
                let name = def.name.clone().unwrap_or_default();
                let c = &t.containers[&name];
                if c.started {
                    continue;
                }
                all_started = false;
                match deps_state(&t, def) {
                    DepState::Ready => {}
                    DepState::Waiting => continue,
                    DepState::Never(why) => {
                        return Err(StartFailure::container(
                            &name,
                            format!("DependencyConditionNotMet: {why}"),
                        ));
                    }
                }
                let id = c.runtime_id.clone().unwrap_or_default();
                let t0 = Instant::now();
                self.runtime
                    .start(&id)
                    .await
                    .map_err(|e| StartFailure::container(&name, e.to_string()))?;
                tracing::info!(
                    task = arn,
                    container = name,
                    start_ms = t0.elapsed().as_secs_f64() * 1e3,
                    "container started"
                );
                self.update(arn, |t| {
                    if let Some(c) = t.containers.get_mut(&name) {
                        c.started = true;
                        c.status = "RUNNING".into();
                        if c.health.is_none() && def.health_check.is_some() {
                            c.health = Some("UNKNOWN".into());
                        }
                    }
                    t.health = Some(compute_task_health(t).into());
                })
                .await;
                if let Some(h) = self.spawn_health(arn, &name) {
                    health_tasks.push(h);
                }
                progressed = true;
            }
            if all_started {
                break;
            }
            if progressed {
                continue;
            }
            if Instant::now() > deadline {
                return Err(StartFailure::task(
                    "containers' dependencies were not met within 10 minutes",
                ));
            }
            // Wait for something to change (an exit, a health change, a stop).
            match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
                Ok(Some(s)) => self.on_signal(arn, s).await,
                Ok(None) => return Ok(()),
                Err(_) => {}
            }
        }
        self.update(arn, |t| {
            if t.status != "STOPPED" {
                t.status = "RUNNING".into();
                t.started_at.get_or_insert(now_secs());
            }
        })
        .await;
        tracing::info!(task = arn, "task running");
        Ok(())
    }

    /// PENDING: every image made ready (one pull per image at a time), then every container
    /// created, not started.
    async fn prepare_containers(
        self: &Arc<Self>,
        arn: &str,
        t: &LocalTask,
        task_id: &str,
        netns: &NetNs,
        etc_files: &Option<(PathBuf, PathBuf)>,
    ) -> Result<(), StartFailure> {
        let td = &t.desired.task_definition;
        if t.pull_started_at.is_none() {
            self.update(arn, |t| t.pull_started_at = Some(now_secs()))
                .await;
        }
        let mut images = HashMap::new();
        for def in &td.container_definitions {
            let name = def.name.clone().unwrap_or_default();
            let image = def.image.clone().unwrap_or_default();
            let auth = match def.repository_credentials.as_ref().map(|r| r.credentials_parameter.as_str()) {
                None | Some("") => None,
                Some(p) => Some(self.cfg.registry_credentials.get(p).cloned().ok_or_else(|| {
                    StartFailure::container(
                        &name,
                        format!("CannotPullContainerError: repository credentials {p:?} are not configured on this agent (start it with --registry-credential {p}=USER:PASSWORD)"),
                    )
                })?),
            };
            let lock = self
                .image_locks
                .lock()
                .unwrap()
                .entry(image.clone())
                .or_default()
                .clone();
            let guard = lock.lock().await;
            let t0 = Instant::now();
            let info = self
                .runtime
                .ensure_image(&image, auth.as_ref(), self.cfg.pull_policy)
                .await;
            drop(guard);
            tracing::debug!(
                task = arn,
                image,
                elapsed_ms = t0.elapsed().as_secs_f64() * 1e3,
                "image ready"
            );
            let info = info.map_err(|e| StartFailure::container(&name, e.to_string()))?;
            images.insert(name, info);
        }
        self.update(arn, |t| {
            t.pull_stopped_at.get_or_insert(now_secs());
            for (name, info) in &images {
                if let Some(c) = t.containers.get_mut(name) {
                    c.image_digest = Some(info.digest.clone()).filter(|d| !d.is_empty());
                }
            }
        })
        .await;
        let t = self
            .task(arn)
            .ok_or_else(|| StartFailure::task("task vanished"))?;
        for def in &td.container_definitions {
            let name = def.name.clone().unwrap_or_default();
            if t.containers.get(&name).map(|c| c.created).unwrap_or(false) {
                continue;
            }
            let cx = SpecContext {
                task: &t.desired,
                task_id,
                data_dir: &self.cfg.data_dir,
                netns: netns.clone(),
                etc_files: etc_files.clone(),
            };
            let spec = taskspec::container_spec(&cx, def, &images[&name])
                .map_err(|e| StartFailure::container(&name, e.0))?;
            for m in &spec.mounts {
                if m.source.starts_with(&self.cfg.data_dir) && !m.source.exists() {
                    let _ = std::fs::create_dir_all(&m.source);
                }
            }
            if let Some(parent) = spec.log_path.parent() {
                let _ = std::fs::create_dir_all(parent);
            }
            let t0 = Instant::now();
            self.runtime
                .create(&spec)
                .await
                .map_err(|e| StartFailure::container(&name, e.to_string()))?;
            tracing::debug!(
                task = arn,
                container = name,
                elapsed_ms = t0.elapsed().as_secs_f64() * 1e3,
                "container created"
            );
            let id = spec.id.clone();
            self.update(arn, |t| {
                if let Some(c) = t.containers.get_mut(&name) {
                    c.runtime_id = Some(id);
                    c.created = true;
                }
            })
            .await;
        }
        Ok(())
    }

    /// Host ports for the task's port mappings; the static ones are checked free.
    #[allow(clippy::type_complexity)]
    fn plan_ports(
        &self,
        t: &LocalTask,
        mode: NetworkMode,
    ) -> Result<
        (
            Vec<PortForward>,
            Vec<(String, Vec<(u16, u16, String)>)>,
            Vec<(u16, String)>,
        ),
        StartFailure,
    > {
        let mut forwards = Vec::new();
        let mut bindings = Vec::new();
        let mut held: Vec<(u16, String)> = Vec::new();
        if !matches!(mode, NetworkMode::Bridge | NetworkMode::Host) {
            return Ok((forwards, bindings, held));
        }
        let mut ports = self.ports.lock().unwrap();
        let fail = |ports: &mut PortAllocator, held: &[(u16, String)], msg: String| {
            for (p, proto) in held {
                ports.release(*p, parse_proto(proto));
            }
            StartFailure::task(msg)
        };
        for def in &t.desired.task_definition.container_definitions {
            let name = def.name.clone().unwrap_or_default();
            let mut b = Vec::new();
            for pm in def.port_mappings.iter().flatten() {
                let Some(cp) = pm.container_port.filter(|p| *p > 0 && *p <= 65535) else {
                    continue;
                };
                let proto_s = pm.protocol.clone().unwrap_or_else(|| "tcp".into());
                let proto = parse_proto(&proto_s);
                let want = match mode {
                    NetworkMode::Host => cp,
                    _ => pm.host_port.unwrap_or(0),
                };
                let host = if want > 0 {
                    if let Err(e) = ports.reserve_static(want as u16, proto) {
                        let msg = format!("CannotStartContainerError: host port {want}/{proto_s} for container {name}: {e}");
                        return Err(fail(&mut ports, &held, msg));
                    }
                    want as u16
                } else {
                    match ports.allocate(proto) {
                        Ok(p) => p,
                        Err(e) => {
                            return Err(fail(
                                &mut ports,
                                &held,
                                format!("ResourceInitializationError: {e}"),
                            ))
                        }
                    }
                };
                held.push((host, proto_s.clone()));
                if mode == NetworkMode::Bridge {
                    forwards.push(PortForward {
                        host_port: host,
                        container_port: cp as u16,
                        protocol: proto,
                    });
                }
                b.push((host, cp as u16, proto_s));
            }
            bindings.push((name, b));
        }
        Ok((forwards, bindings, held))
    }

    fn release_ports(&self, held: &[(u16, String)]) {
        let mut ports = self.ports.lock().unwrap();
        for (p, proto) in held {
            ports.release(*p, parse_proto(proto));
        }
    }

    fn spawn_health(
        self: &Arc<Self>,
        arn: &str,
        name: &str,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let t = self.task(arn)?;
        let def = t
            .desired
            .task_definition
            .container_definitions
            .iter()
            .find(|d| d.name.as_deref() == Some(name))?;
        let cfg = HealthConfig::from_ecs(def.health_check.as_ref()?)?;
        let id = t.containers.get(name)?.runtime_id.clone()?;
        let me = self.clone();
        let arn = arn.to_string();
        let name = name.to_string();
        Some(tokio::spawn(async move {
            let started = Instant::now();
            let mut st = HealthState::new(&cfg);
            loop {
                let ok = match me.runtime.exec(&id, cfg.argv.clone(), cfg.timeout).await {
                    Ok(ExecOutcome::Exited(code)) => code == 0,
                    Ok(ExecOutcome::TimedOut) => false,
                    // containerd itself is unreachable (restarting): no verdict on the
                    // container, try again next interval.
                    Err(RuntimeError::Unavailable(_)) => {
                        tokio::time::sleep(cfg.interval).await;
                        continue;
                    }
                    Err(_) => false,
                };
                if let Some(h) = st.record(ok, started.elapsed()) {
                    me.signal(
                        &arn,
                        Signal::Health {
                            name: name.clone(),
                            status: h.as_ecs(),
                        },
                    );
                }
                tokio::time::sleep(cfg.interval).await;
            }
        }))
    }

    async fn stop_task(self: &Arc<Self>, arn: &str, rx: &mut mpsc::UnboundedReceiver<Signal>) {
        let Some(t) = self.task(arn) else { return };
        if !t.is_stopped() {
            self.update(arn, |t| {
                if crate::state_rank(&t.status) < crate::state_rank("STOPPING") {
                    t.status = "STOPPING".into();
                }
                if t.stop_code.is_none() {
                    t.stopped_reason = t.desired.stopped_reason.clone();
                }
            })
            .await;
            // Stop signal, then SIGKILL after stopTimeout.
            let t = self.task(arn).unwrap_or(t);
            let mut waits = Vec::new();
            for def in &t.desired.task_definition.container_definitions {
                let name = def.name.clone().unwrap_or_default();
                let Some(c) = t.containers.get(&name) else {
                    continue;
                };
                if c.status != "RUNNING" {
                    continue;
                }
                let Some(id) = c.runtime_id.clone() else {
                    continue;
                };
                let timeout = def
                    .stop_timeout
                    .filter(|s| *s >= 0)
                    .map(|s| Duration::from_secs(s as u64))
                    .unwrap_or(self.cfg.stop_timeout);
                let _ = self.runtime.kill(&id, libc::SIGTERM).await;
                waits.push((name, id, Instant::now() + timeout));
            }
            for (name, id, kill_at) in waits {
                let mut killed = false;
                let hard_deadline = kill_at + Duration::from_secs(15);
                loop {
                    let t = self.task(arn);
                    if t.as_ref()
                        .and_then(|t| t.containers.get(&name))
                        .map(|c| c.status.as_str())
                        == Some("STOPPED")
                    {
                        break;
                    }
                    match self.runtime.state(&id).await {
                        Ok(Some(ContainerState::Stopped {
                            exit_code,
                            oom_killed,
                            ..
                        })) => {
                            self.on_signal(
                                arn,
                                Signal::Exited {
                                    name: name.clone(),
                                    exit_code,
                                    oom: oom_killed,
                                },
                            )
                            .await;
                            break;
                        }
                        Ok(None) => {
                            self.on_signal(
                                arn,
                                Signal::Exited {
                                    name: name.clone(),
                                    exit_code: 137,
                                    oom: false,
                                },
                            )
                            .await;
                            break;
                        }
                        _ => {}
                    }
                    let now = Instant::now();
                    if !killed && now >= kill_at {
                        tracing::info!(
                            task = arn,
                            container = name,
                            "stop timeout passed; sending SIGKILL"
                        );
                        let _ = self.runtime.kill(&id, libc::SIGKILL).await;
                        killed = true;
                    }
                    if now >= hard_deadline {
                        tracing::error!(
                            task = arn,
                            container = name,
                            "container did not stop after SIGKILL"
                        );
                        break;
                    }
                    let wait = if killed {
                        Duration::from_millis(200)
                    } else {
                        kill_at
                            .saturating_duration_since(now)
                            .min(Duration::from_millis(500))
                    };
                    if let Ok(Some(s)) = tokio::time::timeout(wait, rx.recv()).await {
                        self.on_signal(arn, s).await;
                    }
                }
            }
        }
        // DEPROVISIONING: containers, network, ports.
        self.update(arn, |t| {
            if !t.is_stopped() {
                t.status = "DEPROVISIONING".into();
            }
            t.execution_stopped_at.get_or_insert(now_secs());
            for c in t.containers.values_mut() {
                if c.status != "STOPPED" {
                    c.status = "STOPPED".into();
                }
            }
        })
        .await;
        let Some(t) = self.task(arn) else { return };
        for c in t.containers.values() {
            if let Some(id) = &c.runtime_id {
                if let Err(e) = self.runtime.remove(id).await {
                    tracing::warn!(container = id, error = %e, "could not remove container");
                }
            }
        }
        if let Some(net) = &t.network {
            if let Err(e) = self.network.teardown(t.task_id(), net).await {
                tracing::warn!(task = arn, error = %e, "network teardown failed");
            }
        }
        self.release_ports(&t.host_ports);
        let _ = std::fs::remove_dir_all(taskspec::task_dir(&self.cfg.data_dir, t.task_id()));
        self.update(arn, |t| {
            t.status = "STOPPED".into();
            t.cleaned = true;
            t.host_ports.clear();
        })
        .await;
        tracing::info!(task = arn, reason = ?t.stopped_reason, "task stopped");
    }
}

pub fn parse_proto(s: &str) -> Protocol {
    if s.eq_ignore_ascii_case("udp") {
        Protocol::Udp
    } else {
        Protocol::Tcp
    }
}

fn compute_task_health(t: &LocalTask) -> &'static str {
    let checked: Vec<&str> = t
        .desired
        .task_definition
        .container_definitions
        .iter()
        .filter(|d| essential(d) && d.health_check.is_some())
        .filter_map(|d| t.containers.get(d.name.as_deref()?))
        .map(|c| c.health.as_deref().unwrap_or("UNKNOWN"))
        .collect();
    task_health(checked)
}

enum DepState {
    Ready,
    Waiting,
    Never(String),
}

/// Whether a container's `dependsOn` conditions hold.
fn deps_state(t: &LocalTask, def: &ContainerDefinition) -> DepState {
    for dep in def.depends_on.iter().flatten() {
        let Some(c) = t.containers.get(&dep.container_name) else {
            return DepState::Never(format!("container {} does not exist", dep.container_name));
        };
        let ok = match dep.condition.as_str() {
            "START" => c.started,
            "COMPLETE" => c.status == "STOPPED",
            "SUCCESS" => {
                if c.status == "STOPPED" && c.exit_code != Some(0) {
                    return DepState::Never(format!(
                        "container {} exited with code {} and a SUCCESS dependency needs 0",
                        c.name,
                        c.exit_code
                            .map(|x| x.to_string())
                            .unwrap_or_else(|| "unknown".into())
                    ));
                }
                c.status == "STOPPED" && c.exit_code == Some(0)
            }
            "HEALTHY" => {
                if c.health.as_deref() == Some("UNHEALTHY") {
                    return DepState::Never(format!("container {} is UNHEALTHY", c.name));
                }
                c.health.as_deref() == Some("HEALTHY")
            }
            _ => c.started,
        };
        if !ok {
            return DepState::Waiting;
        }
    }
    DepState::Ready
}
