//! `berth dev`: a single-node cluster in one process, with an access key and an AWS CLI
//! profile so `aws --profile berth ecs ...` works at once.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use berth_model::ArnContext;
use clap::Args;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::awsprofile;
use crate::config::ServerConfig;

#[derive(Args, Debug, Clone)]
pub struct DevArgs {
    /// Where the store and the dev access key live (default: ~/.berth/dev, or ./.berth without HOME).
    #[arg(long, env = "BERTH_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// ECS API address.
    #[arg(long, env = "BERTH_API_ADDR", default_value = "127.0.0.1:7700")]
    api_addr: String,
    /// Raft gRPC address (used only by this node).
    #[arg(long, env = "BERTH_RAFT_ADDR", default_value = "127.0.0.1:7701")]
    raft_addr: String,
    #[arg(long, env = "BERTH_REGION", default_value = "us-east-1")]
    region: String,
    /// Do not write the `berth` AWS CLI profile.
    #[arg(long)]
    no_profile: bool,
    /// Name of the AWS CLI profile to write.
    #[arg(long, default_value = "berth")]
    profile: String,
    /// Run without the built-in agent (no containers on this machine).
    #[arg(long)]
    no_agent: bool,
    #[command(flatten)]
    machine: crate::agentcmd::MachineArgs,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DevKey {
    access_key_id: String,
    secret_access_key: String,
}

fn default_data_dir() -> PathBuf {
    match std::env::var_os("HOME") {
        Some(h) if !h.is_empty() => Path::new(&h).join(".berth").join("dev"),
        _ => PathBuf::from(".berth"),
    }
}

fn random_string(len: usize, alphabet: &[u8]) -> String {
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| alphabet[rng.gen_range(0..alphabet.len())] as char)
        .collect()
}

/// Loads the dev key, creating it (0600, temp + fsync + rename) on first start.
fn load_or_create_key(dir: &Path) -> anyhow::Result<(DevKey, bool)> {
    let path = dir.join("dev-credentials.json");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let key: DevKey =
            serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
        return Ok((key, false));
    }
    let key = DevKey {
        access_key_id: format!(
            "BERTH{}",
            random_string(15, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")
        ),
        secret_access_key: random_string(
            40,
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
        ),
    };
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let tmp = dir.join(".dev-credentials.json.tmp");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(serde_json::to_string_pretty(&key)?.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    Ok((key, true))
}

pub async fn run(args: DevArgs, started: Instant) -> anyhow::Result<()> {
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    let (key, created) = load_or_create_key(&data_dir)?;
    let cfg = ServerConfig {
        node_id: 1,
        data_dir: data_dir.join("server"),
        api_addr: args.api_addr.clone(),
        raft_addr: args.raft_addr.clone(),
        region: args.region.clone(),
        access_keys: vec![format!("{}:{}", key.access_key_id, key.secret_access_key)],
        // The load balancer's listeners open on the API's address: loopback by default,
        // like everything else `berth dev` serves.
        lb_bind: args
            .api_addr
            .parse::<std::net::SocketAddr>()
            .map(|a| a.ip().to_string())
            .unwrap_or_else(|_| "127.0.0.1".into()),
        ..Default::default()
    };
    let valid = cfg.validate().map_err(|errs| {
        anyhow::anyhow!("invalid dev configuration:\n  - {}", errs.join("\n  - "))
    })?;
    let arn = ArnContext::new(valid.cfg.region.clone(), valid.cfg.account_id.clone());
    let running = crate::start_server(valid, started).await?;
    berth_api::ecs::ensure_cluster(running.node.as_ref(), &arn, "default")
        .await
        .map_err(|e| anyhow::anyhow!("create the default cluster: {}", e.message))?;
    // The built-in agent: this machine is the cluster's one container instance.
    let (agent_stop, agent_stop_rx) = tokio::sync::watch::channel(false);
    let agent_line = if args.no_agent {
        "  agent:             off (--no-agent)\n".to_string()
    } else if !args.machine.containerd_socket.exists() {
        tracing::warn!(socket = %args.machine.containerd_socket.display(), "containerd is not running: berth dev starts without an agent, so tasks cannot run here (install and start containerd: apt-get install containerd runc containernetworking-plugins)");
        format!(
            "  agent:             NOT STARTED: no containerd at {}\n",
            args.machine.containerd_socket.display()
        )
    } else {
        let token = running
            .node
            .agent_settings
            .join_token
            .clone()
            .unwrap_or_default();
        let agent = crate::agentcmd::start_agent(
            vec![running.node.advertise.clone()],
            "default".into(),
            token,
            running.node.pki.as_ref().map(|p| p.ca_hash()),
            data_dir.join("agent"),
            &args.machine,
            agent_stop_rx,
        )
        .await
        .context("start the built-in agent")?;
        // Wait (briefly) until it is registered so the first run-task finds an instance.
        let mut reg = agent.registered.clone();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            reg.wait_for(|r| r.is_some()),
        )
        .await;
        let arn = reg
            .borrow()
            .clone()
            .unwrap_or_else(|| "registering…".into());
        format!("  container instance: {arn}\n")
    };
    let ready_ms = started.elapsed().as_secs_f64() * 1e3;
    let endpoint = format!("{}://{}", running.api_scheme, running.api_addr);
    let ca_bundle = running
        .node
        .pki
        .as_ref()
        .map(|p| p.bundle_path().display().to_string())
        .filter(|_| running.api_scheme == "https");

    let mut out = String::new();
    out.push_str(&format!("berth dev is ready in {ready_ms:.0} ms\n"));
    out.push_str(&format!("  API endpoint:      {endpoint}\n"));
    out.push_str(&format!("  data dir:          {}\n", data_dir.display()));
    if let Some(b) = &ca_bundle {
        out.push_str(&format!(
            "  CA bundle:         {b}  (the profile's ca_bundle; elsewhere: AWS_CA_BUNDLE={b})\n"
        ));
    }
    out.push_str(&agent_line);
    out.push_str(&format!(
        "  access key id:     {}{}\n",
        key.access_key_id,
        if created { " (new)" } else { "" }
    ));
    out.push_str(&format!("  secret access key: {}\n", key.secret_access_key));
    if args.no_profile {
        out.push_str(&format!(
            "  try: AWS_ACCESS_KEY_ID={} AWS_SECRET_ACCESS_KEY=... aws --region {} --endpoint-url {endpoint}{} ecs list-clusters\n",
            key.access_key_id, args.region,
            ca_bundle.as_ref().map(|b| format!(" --ca-bundle {b}")).unwrap_or_default()
        ));
    } else {
        let paths = awsprofile::write_profile(&awsprofile::Profile {
            name: &args.profile,
            region: &args.region,
            access_key_id: &key.access_key_id,
            secret_access_key: &key.secret_access_key,
            endpoint_url: &endpoint,
            ca_bundle: ca_bundle.as_deref(),
        })
        .context("write the AWS CLI profile (use --no-profile to skip)")?;
        out.push_str(&format!(
            "  AWS CLI profile '{}' written to {} and {}\n  try: aws --profile {} ecs list-clusters\n",
            args.profile,
            paths.config.display(),
            paths.credentials.display(),
            args.profile
        ));
    }
    print!("{out}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let res = running.wait_for_signal().await;
    let _ = agent_stop.send(true);
    res
}
