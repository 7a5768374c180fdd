//! The agent process: identity and resources of this machine, the engine, the session.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use berth_model::agent::{Hello, InstanceResources, AGENT_PROTOCOL_VERSION};
use berth_model::Attribute;

use crate::engine::{Engine, EngineConfig};
use crate::network::Network;
use crate::ports::{PortAllocator, PortState};
use crate::runtime::{PullPolicy, RegistryAuth, Runtime};
use crate::session::{self, SessionConfig};
use crate::state::{AgentState, StateFile};

/// ECS's default reserved ports, plus berth's own API and cluster ports.
pub const DEFAULT_RESERVED_PORTS: [u16; 7] = [22, 2375, 2376, 51678, 51679, 7700, 7701];

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub servers: Vec<String>,
    pub cluster: String,
    pub join_token: String,
    pub data_dir: PathBuf,
    /// Mutual TLS with the cluster (`None`: plain, benchmarks only).
    pub tls: Option<crate::session::TlsSetup>,
    pub attributes: Vec<(String, String)>,
    pub availability_zone: Option<String>,
    /// The address other machines reach this one on (reported with the instance).
    pub host_ip: String,
    pub hostname: String,
    pub pull_policy: PullPolicy,
    pub registry_credentials: BTreeMap<String, RegistryAuth>,
    pub stop_timeout: Duration,
    pub dynamic_ports: (u16, u16),
    pub reserved_ports: Vec<u16>,
    /// Memory kept back for the system (MiB), not offered to tasks.
    pub reserved_memory_mib: i64,
    pub runtime_version: String,
}

/// CPU units (1024 per core) and memory (MiB) of this machine.
pub fn machine_resources() -> (i64, i64) {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as i64;
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<i64>().ok())
        })
        .unwrap_or(0);
    (cores * 1024, mem_kib / 1024)
}

pub fn cpu_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "x86_64",
        "aarch64" => "arm64",
        other => other,
    }
}

pub fn hello(cfg: &AgentConfig, instance_id: &str) -> Hello {
    let (cpu, memory) = machine_resources();
    let mut attrs: BTreeMap<String, String> = BTreeMap::new();
    attrs.insert("ecs.os-type".into(), "linux".into());
    attrs.insert("ecs.os-family".into(), "LINUX".into());
    attrs.insert("ecs.cpu-architecture".into(), cpu_architecture().into());
    attrs.insert("ecs.instance-type".into(), cfg.hostname.clone());
    attrs.insert("ecs.capability.external".into(), String::new());
    if let Some(az) = &cfg.availability_zone {
        attrs.insert("ecs.availability-zone".into(), az.clone());
    }
    for cap in [
        "com.amazonaws.ecs.capability.docker-remote-api.1.17",
        "com.amazonaws.ecs.capability.docker-remote-api.1.18",
        "com.amazonaws.ecs.capability.docker-remote-api.1.19",
        "com.amazonaws.ecs.capability.docker-remote-api.1.21",
        "com.amazonaws.ecs.capability.docker-remote-api.1.24",
        "com.amazonaws.ecs.capability.docker-remote-api.1.29",
        "com.amazonaws.ecs.capability.privileged-container",
        "ecs.capability.container-health-check",
        "ecs.capability.container-ordering",
        "ecs.capability.task-eni",
    ] {
        attrs.insert(cap.into(), String::new());
    }
    for (k, v) in &cfg.attributes {
        attrs.insert(k.clone(), v.clone());
    }
    Hello {
        protocol_version: AGENT_PROTOCOL_VERSION,
        join_token: cfg.join_token.clone(),
        cluster: cfg.cluster.clone(),
        instance_id: instance_id.to_string(),
        hostname: cfg.hostname.clone(),
        host_ip: cfg.host_ip.clone(),
        resources: InstanceResources {
            cpu,
            memory: (memory - cfg.reserved_memory_mib).max(0),
            ports: cfg.reserved_ports.clone(),
            ports_udp: Vec::new(),
        },
        attributes: attrs
            .into_iter()
            .map(|(name, value)| Attribute {
                name,
                value: (!value.is_empty()).then_some(value),
                target_type: None,
                target_id: None,
            })
            .collect(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        runtime_version: cfg.runtime_version.clone(),
    }
}

/// A running agent.
pub struct Running {
    pub engine: Arc<Engine>,
    pub instance_id: String,
    /// The container instance ARN once registered (None while disconnected).
    pub registered: tokio::sync::watch::Receiver<Option<String>>,
    pub session: tokio::task::JoinHandle<Result<(), session::Fatal>>,
}

/// Loads (or creates) the agent's state, adopts what the runtime runs, and starts the
/// session with the servers.
pub async fn start(
    cfg: AgentConfig,
    runtime: Arc<dyn Runtime>,
    network: Arc<dyn Network>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Running> {
    std::fs::create_dir_all(&cfg.data_dir)
        .map_err(|e| anyhow::anyhow!("create data dir {}: {e}", cfg.data_dir.display()))?;
    let file = StateFile::new(&cfg.data_dir);
    let state = match file.load()? {
        Some(st) if st.cluster != cfg.cluster => anyhow::bail!(
            "this agent's data dir {} belongs to cluster {:?}, not {:?}: use another --data-dir or the same --cluster",
            cfg.data_dir.display(),
            st.cluster,
            cfg.cluster
        ),
        Some(st) => st,
        None => {
            let st = AgentState::new(&cfg.cluster);
            file.save(&st)
                .map_err(|e| anyhow::anyhow!("write {}: {e}", file.path().display()))?;
            st
        }
    };
    let instance_id = state.instance_id.clone();
    let mut ports = PortAllocator::new(
        cfg.dynamic_ports.0..=cfg.dynamic_ports.1,
        &cfg.reserved_ports,
    );
    if let Ok(ps) = serde_json::from_value::<PortState>(state.ports.clone()) {
        ports.restore(ps);
    }
    let engine = Engine::new(
        EngineConfig {
            data_dir: cfg.data_dir.clone(),
            pull_policy: cfg.pull_policy,
            registry_credentials: cfg.registry_credentials.clone(),
            stop_timeout: cfg.stop_timeout,
        },
        runtime,
        network,
        state,
        ports,
    );
    engine.recover().await?;
    tokio::spawn(engine.clone().watch_runtime());
    {
        // Safety net for missed exit events.
        let engine = engine.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tokio::select! {
                    _ = tick.tick() => engine.poll_containers().await,
                    _ = async { let _ = shutdown.wait_for(|s| *s).await; } => return,
                }
            }
        });
    }
    let (reg_tx, reg_rx) = tokio::sync::watch::channel(None);
    let hello = hello(&cfg, &instance_id);
    let session = tokio::spawn(session::run(
        engine.clone(),
        SessionConfig {
            servers: cfg.servers.clone(),
            hello,
            tls: cfg.tls.clone(),
        },
        reg_tx,
        shutdown,
    ));
    Ok(Running {
        engine,
        instance_id,
        registered: reg_rx,
        session,
    })
}
