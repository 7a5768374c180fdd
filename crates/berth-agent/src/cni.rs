//! [`Network`] on the distribution's CNI plugins, executed directly per the CNI spec
//! (1.0.0, or 0.4.0 with older plugins): one named network namespace per task
//! (`<netns_dir>/berth-<task id>`), then
//!
//! | mode   | chain                                                            |
//! |--------|------------------------------------------------------------------|
//! | bridge | `loopback`, then list `berth`: `bridge` (+ `host-local`), `portmap` |
//! | awsvpc | `loopback`, then list `berth`: `bridge` (+ `host-local`)            |
//! | none   | `loopback`                                                       |
//! | host   | nothing: the task shares the agent's namespace                    |
//!
//! Both lists share the network name `berth`, so bridge and awsvpc tasks draw addresses from
//! one host-local pool (kept under the agent's data dir: two agents on one machine, each in
//! its own network namespace, never share IPAM state).
//!
//! The final ADD result of each task is cached (temp file + fsync + rename) in the cache dir,
//! so DEL gets the same `prevResult` after an agent restart.
//!
//! Reaching a bridge-mode task through `127.0.0.1:<hostPort>` needs three things, all done
//! by `portmap` with `snat: true` (checked by `tests/cni.rs`): a DNAT rule in nat OUTPUT
//! (`CNI-HOSTPORT-DNAT`, for locally generated traffic to local addresses), a mark on
//! packets from 127.0.0.1 (`CNI-HOSTPORT-SETMARK`) that `CNI-HOSTPORT-MASQ` masquerades in
//! POSTROUTING (otherwise the reply would go to the task's own loopback), and
//! `net.ipv4.conf.<bridge>.route_localnet=1` (otherwise the kernel drops a 127/8 source
//! routed out of a non-loopback interface). The agent itself only has to make sure
//! `net.ipv4.ip_forward=1` for traffic from other machines; it sets `route_localnet` on the
//! bridge too after ADD, in case the plugin could not.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::sync::OnceCell;

use crate::netns;
use crate::network::{Network, NetworkError, NetworkMode, PortForward, Protocol, TaskNetwork};

/// The CNI network (list) name shared by bridge and awsvpc tasks.
pub const NETWORK_NAME: &str = "berth";
/// Prefix of the namespace name: `berth-<task id>`.
pub const NETNS_PREFIX: &str = "berth-";
const IFNAME: &str = "eth0";
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CniConfig {
    /// Where the plugin binaries are (`CNI_PATH`).
    pub plugin_dir: PathBuf,
    /// Where named namespaces are mounted (as `ip netns`).
    pub netns_dir: PathBuf,
    /// host-local's `dataDir`: address leases.
    pub ipam_dir: PathBuf,
    /// Cached ADD results, one file per task.
    pub cache_dir: PathBuf,
    /// Linux bridge the tasks' veths attach to; its address is the tasks' gateway.
    pub bridge: String,
    /// The tasks' IPv4 subnet.
    pub subnet: String,
}

impl Default for CniConfig {
    fn default() -> Self {
        CniConfig::with_data_dir(Path::new("/var/lib/berth/agent"))
    }
}

impl CniConfig {
    /// Defaults, with IPAM state and the result cache under the agent's `data_dir`
    /// (`<data_dir>/cni/ipam`, `<data_dir>/cni/cache`).
    pub fn with_data_dir(data_dir: &Path) -> Self {
        CniConfig {
            plugin_dir: PathBuf::from("/usr/lib/cni"),
            netns_dir: PathBuf::from(netns::DEFAULT_NETNS_DIR),
            ipam_dir: data_dir.join("cni").join("ipam"),
            cache_dir: data_dir.join("cni").join("cache"),
            bridge: "berth0".into(),
            subnet: "172.30.0.0/16".into(),
        }
    }
}

/// What is cached per task: enough to run DEL exactly as ADD ran.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CachedAdd {
    cni_version: String,
    network: TaskNetwork,
    /// The final result of the `berth` list's ADD (absent for none mode).
    result: Option<Value>,
}

pub struct Cni {
    cfg: CniConfig,
    version: OnceCell<String>,
    host_ready: OnceCell<()>,
    /// Namespaces created by `prepare` in this process and not yet set up: fresh, so
    /// `setup` needs no cleanup of an interrupted ADD in them.
    prepared: std::sync::Mutex<std::collections::HashSet<String>>,
}

fn other(what: impl std::fmt::Display) -> NetworkError {
    NetworkError::Other(what.to_string())
}

fn ns_err(what: impl std::fmt::Display) -> NetworkError {
    NetworkError::Namespace(what.to_string())
}

/// Task ids name files and CNI container ids: keep to what CNI allows.
fn check_task_id(task_id: &str) -> Result<(), NetworkError> {
    let ok = !task_id.is_empty()
        && task_id.len() <= 200
        && task_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !task_id.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(other(format!(
            "task id {task_id:?} cannot name a network namespace (letters, digits, '-', '_', '.' only)"
        )))
    }
}

/// Pick the CNI spec version from a plugin's VERSION output.
pub fn choose_version(version_output: &str) -> Option<String> {
    let v: Value = serde_json::from_str(version_output).ok()?;
    let supported: Vec<&str> = v
        .get("supportedVersions")?
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    ["1.0.0", "0.4.0"]
        .into_iter()
        .find(|want| supported.contains(want))
        .map(str::to_string)
}

/// The plugin's error JSON `{code, msg, details}` as one message; raw output otherwise.
pub fn plugin_error_message(stdout: &[u8], stderr: &[u8], status: &str) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(stdout) {
        if let Some(msg) = v.get("msg").and_then(Value::as_str) {
            let mut m = msg.to_string();
            if let Some(d) = v
                .get("details")
                .and_then(Value::as_str)
                .filter(|d| !d.is_empty())
            {
                m.push_str(": ");
                m.push_str(d);
            }
            if let Some(code) = v.get("code").and_then(Value::as_u64) {
                m.push_str(&format!(" (code {code})"));
            }
            return m;
        }
    }
    let text = String::from_utf8_lossy(if stdout.is_empty() { stderr } else { stdout });
    let text = text.trim();
    if text.is_empty() {
        format!("plugin {status} without output")
    } else {
        format!("{text} ({status})")
    }
}

/// The first IPv4 address (without prefix) and its gateway from an ADD result
/// (1.0.0 and 0.4.0 results have the same `ips` shape).
pub fn ipv4_of_result(result: &Value) -> (Option<String>, Option<String>) {
    let ips = result.get("ips").and_then(Value::as_array);
    for ip in ips.into_iter().flatten() {
        let Some(addr) = ip.get("address").and_then(Value::as_str) else {
            continue;
        };
        let bare = addr.split('/').next().unwrap_or(addr);
        if bare.parse::<std::net::Ipv4Addr>().is_ok() {
            let gw = ip
                .get("gateway")
                .and_then(Value::as_str)
                .map(str::to_string);
            return (Some(bare.to_string()), gw);
        }
    }
    (None, None)
}

impl Cni {
    pub fn new(cfg: CniConfig) -> Self {
        Cni {
            cfg,
            version: OnceCell::new(),
            host_ready: OnceCell::new(),
            prepared: Default::default(),
        }
    }

    pub fn config(&self) -> &CniConfig {
        &self.cfg
    }

    /// `<netns_dir>/berth-<task id>`.
    pub fn netns_path(&self, task_id: &str) -> PathBuf {
        self.cfg.netns_dir.join(format!("{NETNS_PREFIX}{task_id}"))
    }

    fn cache_path(&self, task_id: &str) -> PathBuf {
        self.cfg.cache_dir.join(format!("{task_id}.json"))
    }

    /// The spec version to speak, from `bridge`'s VERSION answer (once per process).
    pub async fn cni_version(&self) -> Result<String, NetworkError> {
        self.version
            .get_or_try_init(|| async {
                let out = self
                    .exec(
                        "bridge",
                        "VERSION",
                        "",
                        None,
                        &json!({"cniVersion": "1.0.0"}),
                    )
                    .await?;
                let text = String::from_utf8_lossy(&out);
                choose_version(&text).ok_or_else(|| NetworkError::Plugin {
                    plugin: "bridge".into(),
                    command: "VERSION".into(),
                    message: format!("supports neither CNI 1.0.0 nor 0.4.0: {}", text.trim()),
                })
            })
            .await
            .cloned()
    }

    /// `net.ipv4.ip_forward=1` in the agent's namespace (the "host" for the tasks).
    async fn ensure_host(&self) -> Result<(), NetworkError> {
        self.host_ready
            .get_or_try_init(|| async {
                set_sysctl("net/ipv4/ip_forward", "1").await?;
                Ok::<(), NetworkError>(())
            })
            .await?;
        Ok(())
    }

    /// Execute one plugin. Returns stdout on success.
    async fn exec(
        &self,
        plugin: &str,
        command: &str,
        container_id: &str,
        netns: Option<&Path>,
        config: &Value,
    ) -> Result<Vec<u8>, NetworkError> {
        let fail = |message: String| NetworkError::Plugin {
            plugin: plugin.to_string(),
            command: command.to_string(),
            message,
        };
        let bin = self.cfg.plugin_dir.join(plugin);
        if !bin.is_file() {
            return Err(fail(format!("plugin binary {} not found", bin.display())));
        }
        let stdin = serde_json::to_vec(config).map_err(|e| fail(e.to_string()))?;
        let mut cmd = tokio::process::Command::new(&bin);
        cmd.env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container_id)
            .env(
                "CNI_NETNS",
                netns.map(|p| p.as_os_str().to_owned()).unwrap_or_default(),
            )
            .env("CNI_IFNAME", IFNAME)
            .env("CNI_PATH", &self.cfg.plugin_dir)
            .env_remove("CNI_ARGS")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if std::env::var_os("PATH").is_none() {
            // bridge and portmap run `iptables` from PATH.
            cmd.env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            );
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| fail(format!("cannot start {}: {e}", bin.display())))?;
        if let Some(mut si) = child.stdin.take() {
            match si.write_all(&stdin).await {
                Ok(()) => {}
                // The plugin may exit without reading all of stdin (VERSION does at times);
                // its exit status and output tell what happened.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                Err(e) => return Err(fail(format!("writing config to the plugin: {e}"))),
            }
        }
        let out = tokio::time::timeout(PLUGIN_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| fail(format!("no answer within {PLUGIN_TIMEOUT:?}")))?
            .map_err(|e| fail(e.to_string()))?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(fail(plugin_error_message(
                &out.stdout,
                &out.stderr,
                &out.status.to_string(),
            )))
        }
    }

    fn loopback_conf(&self, version: &str) -> Value {
        json!({"cniVersion": version, "name": "berth-loopback", "type": "loopback"})
    }

    /// The plugins of the `berth` list for `mode`, each without name/version/prevResult.
    fn list_plugins(&self, mode: NetworkMode, forwards: &[PortForward]) -> Vec<Value> {
        let mut plugins = vec![json!({
            "type": "bridge",
            "bridge": self.cfg.bridge,
            "isGateway": true,
            "ipMasq": true,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": self.cfg.subnet}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": self.cfg.ipam_dir,
            },
        })];
        if mode == NetworkMode::Bridge {
            let mappings: Vec<Value> = forwards
                .iter()
                .map(|f| {
                    json!({
                        "hostPort": f.host_port,
                        "containerPort": f.container_port,
                        "protocol": match f.protocol { Protocol::Tcp => "tcp", Protocol::Udp => "udp" },
                    })
                })
                .collect();
            plugins.push(json!({
                "type": "portmap",
                "capabilities": {"portMappings": true},
                "snat": true,
                "runtimeConfig": {"portMappings": mappings},
            }));
        }
        plugins
    }

    /// A list member's stdin: its config plus the list's name and version, and prevResult.
    fn member_conf(plugin: &Value, version: &str, prev: Option<&Value>) -> Value {
        let mut conf = plugin.clone();
        if let Value::Object(m) = &mut conf {
            m.insert("name".into(), json!(NETWORK_NAME));
            m.insert("cniVersion".into(), json!(version));
            if let Some(p) = prev {
                m.insert("prevResult".into(), p.clone());
            }
        }
        conf
    }

    async fn add_chain(
        &self,
        task_id: &str,
        ns: &Path,
        mode: NetworkMode,
        forwards: &[PortForward],
        version: &str,
    ) -> Result<Option<Value>, NetworkError> {
        self.exec(
            "loopback",
            "ADD",
            task_id,
            Some(ns),
            &self.loopback_conf(version),
        )
        .await?;
        if mode == NetworkMode::None {
            return Ok(None);
        }
        let mut prev: Option<Value> = None;
        for plugin in self.list_plugins(mode, forwards) {
            let name = plugin["type"].as_str().unwrap_or_default().to_string();
            let conf = Self::member_conf(&plugin, version, prev.as_ref());
            let out = self.exec(&name, "ADD", task_id, Some(ns), &conf).await?;
            let result: Value = serde_json::from_slice(&out).map_err(|e| NetworkError::Plugin {
                plugin: name.clone(),
                command: "ADD".into(),
                message: format!(
                    "result is not JSON ({e}): {}",
                    String::from_utf8_lossy(&out)
                ),
            })?;
            prev = Some(result);
        }
        Ok(prev)
    }

    /// DEL in reverse order with the cached final result as prevResult. Every plugin is
    /// tried; the first error is returned.
    async fn del_chain(
        &self,
        task_id: &str,
        ns: &Path,
        mode: NetworkMode,
        forwards: &[PortForward],
        version: &str,
        prev: Option<&Value>,
    ) -> Result<(), NetworkError> {
        let mut first_err = None;
        if matches!(mode, NetworkMode::Bridge | NetworkMode::Awsvpc) {
            for plugin in self.list_plugins(mode, forwards).iter().rev() {
                let name = plugin["type"].as_str().unwrap_or_default();
                let conf = Self::member_conf(plugin, version, prev);
                if let Err(e) = self.exec(name, "DEL", task_id, Some(ns), &conf).await {
                    tracing::warn!(task_id, error = %e, "CNI DEL failed");
                    first_err.get_or_insert(e);
                }
            }
        }
        // loopback has nothing to undo once the namespace is gone; while it exists, its DEL
        // only sets lo down. Run it for symmetry, ignoring the outcome.
        if netns::is_netns(ns) {
            let _ = self
                .exec(
                    "loopback",
                    "DEL",
                    task_id,
                    Some(ns),
                    &self.loopback_conf(version),
                )
                .await;
        }
        first_err.map_or(Ok(()), Err)
    }

    fn read_cache(&self, task_id: &str) -> Option<CachedAdd> {
        let bytes = std::fs::read(self.cache_path(task_id)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn write_cache(&self, task_id: &str, entry: &CachedAdd) -> Result<(), NetworkError> {
        let path = self.cache_path(task_id);
        let bytes = serde_json::to_vec_pretty(entry).map_err(other)?;
        write_atomic(&path, &bytes)
            .map_err(|e| other(format!("writing CNI result cache {}: {e}", path.display())))
    }

    fn remove_cache(&self, task_id: &str) {
        let _ = std::fs::remove_file(self.cache_path(task_id));
    }

    async fn setup_inner(
        &self,
        task_id: &str,
        mode: NetworkMode,
        forwards: &[PortForward],
        ns: &Path,
    ) -> Result<TaskNetwork, NetworkError> {
        let version = self.cni_version().await?;
        if mode != NetworkMode::None {
            self.ensure_host().await?;
        }
        let result = self
            .add_chain(task_id, ns, mode, forwards, &version)
            .await?;
        let (ipv4, gateway) = result.as_ref().map(ipv4_of_result).unwrap_or((None, None));
        if mode != NetworkMode::None && ipv4.is_none() {
            return Err(other(format!(
                "CNI ADD for task {task_id} returned no IPv4 address: {}",
                result.unwrap_or_default()
            )));
        }
        if mode == NetworkMode::Bridge {
            // portmap sets this itself with snat; belt and braces for 127.0.0.1:<hostPort>.
            let key = format!("net/ipv4/conf/{}/route_localnet", self.cfg.bridge);
            if let Err(e) = set_sysctl(&key, "1").await {
                tracing::warn!(error = %e, "cannot set route_localnet on the bridge");
            }
        }
        let network = TaskNetwork {
            mode,
            netns: Some(ns.to_path_buf()),
            ipv4,
            gateway,
            forwards: if mode == NetworkMode::Bridge {
                forwards.to_vec()
            } else {
                Vec::new()
            },
        };
        self.write_cache(
            task_id,
            &CachedAdd {
                cni_version: version,
                network: network.clone(),
                result,
            },
        )?;
        Ok(network)
    }
}

/// Write `/proc/sys/<key>` if it does not already hold `value`.
async fn set_sysctl(key: &str, value: &str) -> Result<(), NetworkError> {
    let path = Path::new("/proc/sys").join(key);
    let current = tokio::fs::read_to_string(&path).await.unwrap_or_default();
    if current.trim() == value {
        return Ok(());
    }
    tokio::fs::write(&path, value).await.map_err(|e| {
        other(format!(
            "cannot set {} = {value}: {e}",
            key.replace('/', ".")
        ))
    })
}

/// temp file + fsync + rename (+ fsync of the directory).
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("json.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[async_trait]
impl Network for Cni {
    async fn prepare(
        &self,
        task_id: &str,
        mode: NetworkMode,
    ) -> Result<Option<PathBuf>, NetworkError> {
        check_task_id(task_id)?;
        if mode == NetworkMode::Host {
            return Ok(None);
        }
        let ns = self.netns_path(task_id);
        if self.read_cache(task_id).is_some() || netns::is_netns(&ns) {
            // Set up before (or being recovered): `setup` sorts it out in place.
            return Ok(Some(ns));
        }
        let dir = self.cfg.netns_dir.clone();
        let name = format!("{NETNS_PREFIX}{task_id}");
        tokio::task::spawn_blocking(move || netns::create(&dir, &name))
            .await
            .map_err(ns_err)?
            .map_err(|e| ns_err(format!("creating namespace for task {task_id}: {e}")))?;
        self.prepared.lock().unwrap().insert(task_id.to_string());
        Ok(Some(ns))
    }

    async fn setup(
        &self,
        task_id: &str,
        mode: NetworkMode,
        forwards: &[PortForward],
    ) -> Result<TaskNetwork, NetworkError> {
        check_task_id(task_id)?;
        if mode == NetworkMode::Host {
            return Ok(TaskNetwork {
                mode,
                netns: None,
                ipv4: None,
                gateway: None,
                forwards: Vec::new(),
            });
        }
        let ns = self.netns_path(task_id);
        // Idempotent: an intact earlier setup of the same shape is returned as it was.
        if let Some(cached) = self.read_cache(task_id) {
            let same = cached.network.mode == mode
                && (mode != NetworkMode::Bridge || cached.network.forwards == forwards);
            if same && netns::is_netns(&ns) {
                return Ok(cached.network);
            }
            let net = cached.network.clone();
            self.teardown(task_id, &net).await?;
        } else if netns::is_netns(&ns) {
            let fresh = self.prepared.lock().unwrap().remove(task_id);
            if !fresh {
                // A namespace without a cached result: the agent stopped between creating
                // it and caching the result. Undo whatever ADD may have done; keep the
                // namespace itself, containers may already have been created in it.
                let version = self.cni_version().await?;
                let _ = self
                    .del_chain(task_id, &ns, mode, forwards, &version, None)
                    .await;
            }
        }
        let dir = self.cfg.netns_dir.clone();
        let name = format!("{NETNS_PREFIX}{task_id}");
        tokio::task::spawn_blocking(move || netns::create(&dir, &name))
            .await
            .map_err(ns_err)?
            .map_err(|e| ns_err(format!("creating namespace for task {task_id}: {e}")))?;
        match self.setup_inner(task_id, mode, forwards, &ns).await {
            Ok(net) => Ok(net),
            Err(e) => {
                // Leave nothing half set up: undo what may have been done, keep the error.
                let version = self
                    .version
                    .get()
                    .cloned()
                    .unwrap_or_else(|| "1.0.0".into());
                let _ = self
                    .del_chain(task_id, &ns, mode, forwards, &version, None)
                    .await;
                let p = ns.clone();
                let _ = tokio::task::spawn_blocking(move || netns::remove(&p)).await;
                self.remove_cache(task_id);
                Err(e)
            }
        }
    }

    async fn teardown(&self, task_id: &str, net: &TaskNetwork) -> Result<(), NetworkError> {
        check_task_id(task_id)?;
        if net.mode == NetworkMode::Host {
            return Ok(());
        }
        let ns = net
            .netns
            .clone()
            .unwrap_or_else(|| self.netns_path(task_id));
        let cached = self.read_cache(task_id);
        let (version, prev, forwards) = match &cached {
            Some(c) => (
                c.cni_version.clone(),
                c.result.clone(),
                c.network.forwards.clone(),
            ),
            None => (self.cni_version().await?, None, net.forwards.clone()),
        };
        // DEL first, while the namespace still exists: bridge finds the addresses to
        // un-masquerade on the veth inside it.
        self.del_chain(task_id, &ns, net.mode, &forwards, &version, prev.as_ref())
            .await?;
        let p = ns.clone();
        tokio::task::spawn_blocking(move || netns::remove(&p))
            .await
            .map_err(ns_err)?
            .map_err(|e| ns_err(format!("removing namespace of task {task_id}: {e}")))?;
        self.remove_cache(task_id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_choice() {
        assert_eq!(
            choose_version(
                r#"{"cniVersion":"1.0.0","supportedVersions":["0.1.0","0.4.0","1.0.0"]}"#
            ),
            Some("1.0.0".into())
        );
        assert_eq!(
            choose_version(r#"{"supportedVersions":["0.3.1","0.4.0"]}"#),
            Some("0.4.0".into())
        );
        assert_eq!(choose_version(r#"{"supportedVersions":["0.3.1"]}"#), None);
        assert_eq!(choose_version("garbage"), None);
    }

    #[test]
    fn error_json_is_parsed() {
        let m = plugin_error_message(
            br#"{"cniVersion":"1.0.0","code":11,"msg":"failed to allocate","details":"no IP addresses available"}"#,
            b"",
            "exit status: 1",
        );
        assert_eq!(m, "failed to allocate: no IP addresses available (code 11)");
        assert_eq!(
            plugin_error_message(b"", b"boom\n", "exit status: 2"),
            "boom (exit status: 2)"
        );
    }

    #[test]
    fn result_address() {
        let r = json!({"cniVersion":"1.0.0","ips":[
            {"address":"fd00::5/64"},
            {"interface":2,"address":"172.30.0.5/16","gateway":"172.30.0.1"}]});
        assert_eq!(
            ipv4_of_result(&r),
            (Some("172.30.0.5".into()), Some("172.30.0.1".into()))
        );
    }

    #[test]
    fn chains_per_mode() {
        let cni = Cni::new(CniConfig::with_data_dir(Path::new("/d")));
        let fwd = [PortForward {
            host_port: 49153,
            container_port: 80,
            protocol: Protocol::Tcp,
        }];
        let bridge = cni.list_plugins(NetworkMode::Bridge, &fwd);
        assert_eq!(bridge.len(), 2);
        assert_eq!(bridge[0]["ipam"]["dataDir"], "/d/cni/ipam");
        assert_eq!(
            bridge[1]["runtimeConfig"]["portMappings"][0],
            json!({"hostPort":49153,"containerPort":80,"protocol":"tcp"})
        );
        assert_eq!(cni.list_plugins(NetworkMode::Awsvpc, &fwd).len(), 1);
        let m = Cni::member_conf(&bridge[1], "1.0.0", Some(&json!({"ips":[]})));
        assert_eq!(m["name"], NETWORK_NAME);
        assert_eq!(m["cniVersion"], "1.0.0");
        assert!(m.get("prevResult").is_some());
        assert!(check_task_id("0a1b-2c_3.d").is_ok());
        assert!(check_task_id("../etc").is_err());
    }
}
