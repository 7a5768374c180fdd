//! `berth agent`, `berth image import`, and the log driver the containerd shim runs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use berth_agent::agent::{AgentConfig, DEFAULT_RESERVED_PORTS};
use berth_agent::cni::{Cni, CniConfig};
use berth_agent::containerd::{Containerd, ContainerdOptions};
use berth_agent::runtime::{PullPolicy, RegistryAuth};
use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct AgentArgs {
    /// Cluster address (HOST:PORT of a server's cluster port, 7701 by default); repeatable or
    /// comma-separated. The agent learns the other servers once connected.
    #[arg(
        long = "server",
        env = "BERTH_SERVERS",
        value_delimiter = ',',
        required = true
    )]
    pub servers: Vec<String>,
    /// The cluster to join.
    #[arg(long, env = "BERTH_CLUSTER", default_value = "default")]
    pub cluster: String,
    /// A join token: `berth token create --kind agent`, or the servers' own
    /// (`cat <server data dir>/join-token`). Presented once, to get this machine's certificate.
    #[arg(long, env = "BERTH_JOIN_TOKEN")]
    pub join_token: String,
    /// The cluster CA's hash the first server printed (sha256:…): the agent shows its token
    /// only to servers of that CA. Without it the servers must prove they know the token.
    #[arg(long, env = "BERTH_CA_CERT_HASH")]
    pub ca_cert_hash: Option<String>,
    /// The agent's own state, task files and container logs.
    #[arg(
        long,
        env = "BERTH_AGENT_DATA_DIR",
        default_value = "/var/lib/berth-agent"
    )]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub machine: MachineArgs,
}

/// Settings of the machine side, shared with `berth dev`'s built-in agent.
#[derive(Args, Debug, Clone)]
pub struct MachineArgs {
    /// Custom attribute KEY=VALUE for placement constraints; repeatable.
    #[arg(long = "attribute", value_parser = parse_kv)]
    pub attributes: Vec<(String, String)>,
    /// Published as the attribute ecs.availability-zone (a rack, room or site).
    #[arg(long, env = "BERTH_AVAILABILITY_ZONE")]
    pub availability_zone: Option<String>,
    /// The address other machines reach this one on (default: the address that routes to
    /// the first server).
    #[arg(long, env = "BERTH_HOST_IP")]
    pub host_ip: Option<String>,
    /// Name reported for this machine (default: the hostname).
    #[arg(long, env = "BERTH_HOSTNAME")]
    pub hostname: Option<String>,
    #[arg(
        long,
        env = "BERTH_CONTAINERD_SOCKET",
        default_value = "/run/containerd/containerd.sock"
    )]
    pub containerd_socket: PathBuf,
    /// containerd namespace for berth's containers and images.
    #[arg(long, env = "BERTH_CONTAINERD_NAMESPACE", default_value = "berth")]
    pub namespace: String,
    /// Linux bridge the task networks hang off.
    #[arg(long, default_value = "berth0")]
    pub cni_bridge: String,
    /// Address range of the task networks on this machine.
    #[arg(long, default_value = "172.30.0.0/16")]
    pub cni_subnet: String,
    #[arg(long, default_value = "/usr/lib/cni")]
    pub cni_plugin_dir: PathBuf,
    /// Dynamic host port range FIRST-LAST.
    #[arg(long, default_value = "49153-65535", value_parser = parse_range)]
    pub dynamic_ports: (u16, u16),
    /// Ports never given to tasks (default: 22,2375,2376,51678,51679,7700,7701).
    #[arg(long, value_delimiter = ',')]
    pub reserved_ports: Vec<u16>,
    /// default | always | once | prefer-cached (as ECS_IMAGE_PULL_BEHAVIOR).
    #[arg(long, env = "BERTH_PULL_BEHAVIOR", default_value = "default")]
    pub pull_behavior: PullPolicy,
    /// Registry spoken to over plain HTTP (HOST:PORT); loopback registries always are.
    #[arg(long = "insecure-registry")]
    pub insecure_registries: Vec<String>,
    /// Credentials for repositoryCredentials.credentialsParameter: NAME=USER:PASSWORD;
    /// repeatable.
    #[arg(long = "registry-credential", value_parser = parse_credential)]
    pub registry_credentials: Vec<(String, RegistryAuth)>,
    /// Grace between the stop signal and SIGKILL when a container has no stopTimeout.
    #[arg(long, default_value = "30s")]
    pub stop_timeout: String,
    /// Memory (MiB) kept back from tasks for the system.
    #[arg(long, default_value_t = 0)]
    pub reserved_memory: i64,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("'{s}' must be KEY=VALUE")),
    }
}

fn parse_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("'{s}' must be FIRST-LAST, like 49153-65535"))?;
    let a: u16 = a
        .trim()
        .parse()
        .map_err(|_| format!("'{a}' is not a port"))?;
    let b: u16 = b
        .trim()
        .parse()
        .map_err(|_| format!("'{b}' is not a port"))?;
    if a == 0 || a > b {
        return Err(format!(
            "'{s}': the first port must be between 1 and the last"
        ));
    }
    Ok((a, b))
}

fn parse_credential(s: &str) -> Result<(String, RegistryAuth), String> {
    let (name, up) = s
        .split_once('=')
        .ok_or_else(|| "a registry credential must be NAME=USER:PASSWORD".to_string())?;
    let (u, p) = up
        .split_once(':')
        .ok_or_else(|| format!("registry credential {name}: must be NAME=USER:PASSWORD"))?;
    Ok((
        name.to_string(),
        RegistryAuth {
            username: u.to_string(),
            password: p.to_string(),
        },
    ))
}

/// The local address that routes towards `server` (what other machines reach us on).
fn route_ip(server: &str) -> Option<String> {
    use std::net::ToSocketAddrs;
    let addr = server
        .trim_start_matches("http://")
        .to_socket_addrs()
        .ok()?
        .next()?;
    let sock = std::net::UdpSocket::bind(if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    })
    .ok()?;
    sock.connect(addr).ok()?;
    Some(sock.local_addr().ok()?.ip().to_string())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

pub async fn connect_runtime(m: &MachineArgs) -> anyhow::Result<Containerd> {
    let opts = ContainerdOptions {
        insecure_registries: m.insecure_registries.clone(),
        log_driver: std::env::current_exe()
            .context("locate the berth binary for the log driver")?,
        ..Default::default()
    };
    Containerd::connect(&m.containerd_socket, &m.namespace, opts)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot use containerd at {}: {e} (is containerd running? `systemctl start containerd`)",
                m.containerd_socket.display()
            )
        })
}

/// Starts the agent with these settings; returns once it runs.
pub async fn start_agent(
    servers: Vec<String>,
    cluster: String,
    join_token: String,
    ca_cert_hash: Option<String>,
    data_dir: PathBuf,
    m: &MachineArgs,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<berth_agent::agent::Running> {
    let pinned = ca_cert_hash
        .as_deref()
        .map(berth_tls::parse_ca_hash)
        .transpose()?;
    let tls = Some(berth_agent::session::TlsSetup {
        dir: data_dir.join("tls"),
        token: join_token.clone(),
        pinned,
    });
    let stop_timeout = crate::config::parse_duration(&m.stop_timeout)
        .map_err(|e| anyhow::anyhow!("--stop-timeout: {e}"))?;
    let runtime = connect_runtime(m).await?;
    let runtime_version = "containerd".to_string();
    let mut cni_cfg = CniConfig::with_data_dir(&data_dir);
    cni_cfg.plugin_dir = m.cni_plugin_dir.clone();
    cni_cfg.bridge = m.cni_bridge.clone();
    cni_cfg.subnet = m.cni_subnet.clone();
    let network = Cni::new(cni_cfg);
    let host_ip = m
        .host_ip
        .clone()
        .or_else(|| servers.first().and_then(|s| route_ip(s)))
        .unwrap_or_else(|| "127.0.0.1".into());
    let cfg = AgentConfig {
        servers,
        cluster,
        join_token,
        tls,
        data_dir,
        attributes: m.attributes.clone(),
        availability_zone: m.availability_zone.clone(),
        host_ip,
        hostname: m.hostname.clone().unwrap_or_else(hostname),
        pull_policy: m.pull_behavior,
        registry_credentials: m
            .registry_credentials
            .iter()
            .cloned()
            .collect::<BTreeMap<_, _>>(),
        stop_timeout,
        dynamic_ports: m.dynamic_ports,
        reserved_ports: if m.reserved_ports.is_empty() {
            DEFAULT_RESERVED_PORTS.to_vec()
        } else {
            m.reserved_ports.clone()
        },
        reserved_memory_mib: m.reserved_memory,
        runtime_version,
    };
    berth_agent::agent::start(cfg, Arc::new(runtime), Arc::new(network), shutdown).await
}

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let running = start_agent(
        args.servers.clone(),
        args.cluster.clone(),
        args.join_token.clone(),
        args.ca_cert_hash.clone(),
        args.data_dir.clone(),
        &args.machine,
        shutdown_rx,
    )
    .await?;
    tracing::info!(
        instance_id = running.instance_id,
        cluster = args.cluster,
        servers = ?args.servers,
        "berth agent started"
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("install SIGTERM handler")?;
    let mut session = running.session;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: agent stopping (containers keep running)"),
        _ = term.recv() => tracing::info!("SIGTERM: agent stopping (containers keep running)"),
        r = &mut session => {
            return match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(f)) => Err(anyhow::anyhow!("the cluster refused this agent: {f}")),
                Err(e) => Err(anyhow::anyhow!("agent session failed: {e}")),
            };
        }
    }
    let _ = shutdown_tx.send(true);
    running.engine.persist().await;
    Ok(())
}

#[derive(Args, Debug, Clone)]
pub struct ImportArgs {
    /// OCI image layout or docker-save archive (.tar).
    pub archive: PathBuf,
    #[arg(
        long,
        env = "BERTH_CONTAINERD_SOCKET",
        default_value = "/run/containerd/containerd.sock"
    )]
    pub containerd_socket: PathBuf,
    #[arg(long, env = "BERTH_CONTAINERD_NAMESPACE", default_value = "berth")]
    pub namespace: String,
}

pub async fn import(args: ImportArgs) -> anyhow::Result<()> {
    let opts = ContainerdOptions::default();
    let rt = Containerd::connect(&args.containerd_socket, &args.namespace, opts)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot use containerd at {}: {e}",
                args.containerd_socket.display()
            )
        })?;
    eprintln!("importing {} …", args.archive.display());
    let images = rt
        .import_archive(&args.archive)
        .await
        .map_err(|e| anyhow::anyhow!("import {}: {e}", args.archive.display()))?;
    if images.is_empty() {
        anyhow::bail!("{} holds no named image", args.archive.display());
    }
    for i in images {
        println!("{}\t{}", i.name, i.digest);
    }
    Ok(())
}

#[derive(Args, Debug, Clone)]
pub struct LogsArgs {
    /// Task id or ARN.
    pub task: String,
    /// Keep printing new output.
    #[arg(short, long)]
    pub follow: bool,
    /// Only this container (default: every container of the task).
    #[arg(long)]
    pub container: Option<String>,
    /// Only the last N lines of each container.
    #[arg(long)]
    pub tail: Option<usize>,
    /// Read the files of the agent with this data dir on this machine instead of asking
    /// the cluster.
    #[arg(long, env = "BERTH_AGENT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The task's cluster.
    #[arg(long, env = "BERTH_CLUSTER", default_value = "default")]
    pub cluster: String,
    /// AWS CLI profile with the endpoint and credentials (default: $AWS_PROFILE, else
    /// `berth`, else `default`).
    #[arg(long)]
    pub profile: Option<String>,
    /// The API endpoint (default: $AWS_ENDPOINT_URL_ECS, $AWS_ENDPOINT_URL, the profile's
    /// endpoint_url, else https://127.0.0.1:7700).
    #[arg(long)]
    pub endpoint_url: Option<String>,
}

/// `berth logs` through the cluster: the server relays reads to the task's agent; `-f`
/// polls with the continuation token until the task has stopped and its output is drained.
pub async fn logs_via_api(args: LogsArgs) -> anyhow::Result<()> {
    use std::io::Write;
    let client =
        crate::client::Client::from_env(args.profile.as_deref(), args.endpoint_url.as_deref())?;
    let mut token: Option<String> = None;
    let mut many: Option<bool> = None;
    let mut partial: std::collections::HashMap<String, String> = Default::default();
    loop {
        let mut body = serde_json::json!({"cluster": args.cluster, "task": args.task});
        if let Some(c) = &args.container {
            body["container"] = c.clone().into();
        }
        match &token {
            Some(t) => body["nextToken"] = t.clone().into(),
            None => {
                if let Some(n) = args.tail {
                    body["tail"] = n.into();
                }
            }
        }
        let v = client.call("GetTaskLogs", &body).await?;
        let logs = v["logs"].as_array().cloned().unwrap_or_default();
        let prefix = *many.get_or_insert(logs.len() > 1);
        let mut got = false;
        let mut out = std::io::stdout().lock();
        for l in &logs {
            let name = l["container"].as_str().unwrap_or_default().to_string();
            let data = l["data"].as_str().unwrap_or_default();
            if data.is_empty() {
                continue;
            }
            got = true;
            if !prefix {
                out.write_all(data.as_bytes())?;
                continue;
            }
            // Whole lines only, each with its container's name.
            let buf = partial.entry(name.clone()).or_default();
            buf.push_str(data);
            while let Some(i) = buf.find('\n') {
                let line: String = buf.drain(..=i).collect();
                write!(out, "[{name}] {line}")?;
            }
        }
        out.flush()?;
        drop(out);
        token = v["nextToken"].as_str().map(str::to_string);
        if !args.follow {
            break;
        }
        if !got && v["lastStatus"].as_str() == Some("STOPPED") {
            break;
        }
        if !got {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }
    for (name, rest) in partial {
        if !rest.is_empty() {
            println!("[{name}] {rest}");
        }
    }
    Ok(())
}

/// Prints a task's container output from an agent's data dir on this machine.
pub fn logs(args: LogsArgs) -> anyhow::Result<()> {
    let id = args
        .task
        .rsplit('/')
        .next()
        .unwrap_or(&args.task)
        .to_string();
    let data_dir = args.data_dir.clone().unwrap_or_default();
    let dir = data_dir.join("logs").join(&id);
    if !dir.is_dir() {
        anyhow::bail!(
            "no logs of task {id} under {}: is this the data dir of the agent that runs it? (without --data-dir, `berth logs` asks the cluster)",
            data_dir.display()
        );
    }
    let mut files: Vec<(String, PathBuf)> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            name.strip_suffix(".log").map(|n| (n.to_string(), e.path()))
        })
        .filter(|(n, _)| args.container.as_deref().map(|c| c == n).unwrap_or(true))
        .collect();
    files.sort();
    if files.is_empty() {
        anyhow::bail!(
            "task {id} has no container named {:?}",
            args.container.unwrap_or_default()
        );
    }
    if files.len() == 1 {
        let (_, path) = &files[0];
        return berth_agent::logdriver::read_logs(
            path,
            args.follow,
            args.tail,
            std::io::stdout().lock(),
        )
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()));
    }
    // Several containers: each line prefixed with its container's name.
    let mut handles = Vec::new();
    for (name, path) in files {
        let (follow, tail) = (args.follow, args.tail);
        handles.push(std::thread::spawn(move || {
            let out = Prefixed {
                prefix: format!("[{name}] "),
                buf: Vec::new(),
            };
            berth_agent::logdriver::read_logs(&path, follow, tail, out)
        }));
    }
    for h in handles {
        if let Ok(Err(e)) = h.join() {
            return Err(anyhow::anyhow!("{e}"));
        }
    }
    Ok(())
}

/// Writes whole lines to stdout with a prefix.
struct Prefixed {
    prefix: String,
    buf: Vec<u8>,
}

impl std::io::Write for Prefixed {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        while let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=i).collect();
            let mut out = std::io::stdout().lock();
            out.write_all(self.prefix.as_bytes())?;
            out.write_all(&line)?;
            out.flush()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
