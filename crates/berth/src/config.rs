//! Server configuration: one struct, read from a TOML file, then environment (`BERTH_…`),
//! then flags; validated once, reporting every mistake together.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServerConfig {
    pub node_id: u64,
    pub data_dir: PathBuf,
    pub api_addr: String,
    pub raft_addr: String,
    /// Address peers use to reach this server's Raft port (default: raft-addr).
    pub advertise_raft_addr: Option<String>,
    pub join: Option<String>,
    pub region: String,
    pub account_id: String,
    /// "AKID:SECRET" entries.
    pub access_keys: Vec<String>,
    pub auth: String,
    pub fsync: bool,
    pub body_limit: usize,
    pub cache_capacity_mb: u64,
    pub snapshot_every: u64,
    pub heartbeat_ms: u64,
    pub election_timeout_ms: u64,
    /// Token agents present to join. Absent: generated once into `<data-dir>/join-token`.
    pub join_token: Option<String>,
    /// An agent silent for this long is marked disconnected (e.g. "15s", "500ms", "2m").
    pub agent_heartbeat_timeout: String,
    /// A disconnected agent's tasks are marked STOPPED (and services replace them) this
    /// long after it was last heard from.
    pub agent_lost_after: String,
    /// A RUNNING service task without a container health check counts as healthy for
    /// deployments after this long (ECS: 40s).
    pub task_healthy_after: String,
    /// The address the built-in load balancer's listeners bind on ("0.0.0.0" by default;
    /// "none" runs no load balancer on this server).
    pub lb_bind: String,
    /// Load balancer idle timeout for client and target connections (ALB: 60s).
    pub lb_idle_timeout: String,
    /// With `join` (first start): the SHA-256 of the cluster CA to expect (`sha256:…`, as the
    /// first server prints). Without it the joining server verifies the cluster by its token.
    pub ca_cert_hash: Option<String>,
    /// Serve the API over plain HTTP (default: HTTPS).
    pub api_insecure_http: bool,
    /// The API's certificate chain and key (PEM), instead of one from the cluster CA;
    /// reloaded on SIGHUP.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Extra DNS names or addresses for the API certificate from the cluster CA.
    pub api_san: Vec<String>,
    /// Lifetime of agent and lb certificates (renewed at two thirds, e.g. "7d", "12h").
    pub cert_lifetime: String,
    /// `berth bench` only: the cluster port without TLS, to measure what TLS costs.
    #[serde(skip)]
    pub bench_plain_cluster_port: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            node_id: 1,
            data_dir: PathBuf::from("/var/lib/berth"),
            api_addr: "127.0.0.1:7700".into(),
            raft_addr: "127.0.0.1:7701".into(),
            advertise_raft_addr: None,
            join: None,
            region: "us-east-1".into(),
            account_id: "123456789012".into(),
            access_keys: vec![],
            auth: "sigv4".into(),
            fsync: true,
            body_limit: 1 << 20,
            cache_capacity_mb: 32,
            snapshot_every: 5000,
            heartbeat_ms: 250,
            election_timeout_ms: 1000,
            join_token: None,
            agent_heartbeat_timeout: "15s".into(),
            agent_lost_after: "30s".into(),
            task_healthy_after: "40s".into(),
            lb_bind: "0.0.0.0".into(),
            lb_idle_timeout: "60s".into(),
            ca_cert_hash: None,
            api_insecure_http: false,
            tls_cert: None,
            tls_key: None,
            api_san: vec![],
            cert_lifetime: "7d".into(),
            bench_plain_cluster_port: false,
        }
    }
}

/// A validated configuration, ready to start a server.
#[derive(Debug, Clone)]
pub struct Valid {
    pub cfg: ServerConfig,
    pub api_addr: SocketAddr,
    pub raft_addr: SocketAddr,
    pub keys: HashMap<String, String>,
    pub agent_heartbeat_timeout: std::time::Duration,
    pub agent_lost_after: std::time::Duration,
    pub task_healthy_after: std::time::Duration,
    /// `None`: no load balancer on this server.
    pub lb_bind: Option<std::net::IpAddr>,
    pub lb_idle_timeout: std::time::Duration,
    pub ca_cert_hash: Option<String>,
    pub cert_lifetime: std::time::Duration,
}

/// "15s", "500ms", "2m", "1h" or plain seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (like 15s, 500ms, 2m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86_400.0,
        _ => {
            return Err(format!(
                "'{s}' has an unknown unit '{unit}' (use ms, s, m or h)"
            ))
        }
    };
    Ok(std::time::Duration::from_secs_f64(secs))
}

impl ServerConfig {
    pub fn from_file(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Checks everything and reports every problem, not just the first.
    pub fn validate(self) -> Result<Valid, Vec<String>> {
        let mut errs = Vec::new();
        if self.node_id == 0 {
            errs.push("node-id must be a positive integer (0 is reserved)".to_string());
        }
        let api_addr = self
            .api_addr
            .parse::<SocketAddr>()
            .map_err(|e| errs.push(format!("api-addr '{}': {e}", self.api_addr)))
            .ok();
        let raft_addr = self
            .raft_addr
            .parse::<SocketAddr>()
            .map_err(|e| errs.push(format!("raft-addr '{}': {e}", self.raft_addr)))
            .ok();
        if let (Some(a), Some(r)) = (api_addr, raft_addr) {
            if a == r {
                errs.push(format!(
                    "api-addr and raft-addr are both {a}; they must differ"
                ));
            }
        }
        if let Some(r) = raft_addr {
            if r.ip().is_unspecified() && self.advertise_raft_addr.is_none() {
                errs.push(format!(
                    "raft-addr {r} listens on every interface; set advertise-raft-addr to the address other servers reach this one at"
                ));
            }
        }
        if let Some(j) = &self.join {
            if !j.contains(':') {
                errs.push(format!(
                    "join '{j}' must be HOST:PORT of a member's raft address"
                ));
            }
        }
        if self.region.is_empty()
            || !self
                .region
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            errs.push(format!(
                "region '{}' must be letters, digits and hyphens, like us-east-1",
                self.region
            ));
        }
        if self.account_id.len() != 12 || !self.account_id.chars().all(|c| c.is_ascii_digit()) {
            errs.push(format!(
                "account-id '{}' must be exactly 12 digits",
                self.account_id
            ));
        }
        let mut keys = HashMap::new();
        for k in &self.access_keys {
            match k.split_once(':') {
                Some((id, secret)) if !id.is_empty() && !secret.is_empty() => {
                    keys.insert(id.to_string(), secret.to_string());
                }
                _ => errs.push(format!(
                    "access key '{}' must be ACCESS_KEY_ID:SECRET",
                    redact(k)
                )),
            }
        }
        match self.auth.as_str() {
            "sigv4" => {
                if keys.is_empty() {
                    errs.push("auth is sigv4 but no access key is configured: pass --access-key AKID:SECRET (or BERTH_ACCESS_KEYS, or access-keys in the config file)".into());
                }
            }
            "none" => {}
            other => errs.push(format!("auth '{other}' must be sigv4 or none")),
        }
        if self.body_limit < 1024 {
            errs.push(format!(
                "body-limit {} is too small (at least 1024 bytes)",
                self.body_limit
            ));
        }
        if self.snapshot_every < 10 {
            errs.push(format!(
                "snapshot-every {} is too small (at least 10)",
                self.snapshot_every
            ));
        }
        if self.heartbeat_ms == 0 || self.election_timeout_ms < 3 * self.heartbeat_ms {
            errs.push(format!(
                "election-timeout-ms ({}) must be at least 3 x heartbeat-ms ({})",
                self.election_timeout_ms, self.heartbeat_ms
            ));
        }
        let agent_heartbeat_timeout = match parse_duration(&self.agent_heartbeat_timeout) {
            Ok(d) if d >= std::time::Duration::from_secs(1) => d,
            Ok(_) => {
                errs.push(format!(
                    "agent-heartbeat-timeout {} is too short (at least 1s)",
                    self.agent_heartbeat_timeout
                ));
                std::time::Duration::from_secs(15)
            }
            Err(e) => {
                errs.push(format!("agent-heartbeat-timeout: {e}"));
                std::time::Duration::from_secs(15)
            }
        };
        let mut duration = |name: &str, v: &str, fallback: u64| match parse_duration(v) {
            Ok(d) => d,
            Err(e) => {
                errs.push(format!("{name}: {e}"));
                std::time::Duration::from_secs(fallback)
            }
        };
        let agent_lost_after = duration("agent-lost-after", &self.agent_lost_after, 30);
        let task_healthy_after = duration("task-healthy-after", &self.task_healthy_after, 40);
        let lb_idle_timeout = duration("lb-idle-timeout", &self.lb_idle_timeout, 60);
        let lb_bind = match self.lb_bind.as_str() {
            "none" | "off" | "" => None,
            v => match v.parse::<std::net::IpAddr>() {
                Ok(ip) => Some(ip),
                Err(_) => {
                    errs.push(format!(
                        "lb-bind '{v}' is not an IP address (or \"none\" for no load balancer)"
                    ));
                    None
                }
            },
        };
        if let Some(t) = &self.join_token {
            if t.len() < 16 {
                errs.push("join-token must be at least 16 characters".to_string());
            }
        }
        let ca_cert_hash = match &self.ca_cert_hash {
            Some(h) if self.join.is_none() => {
                errs.push(format!(
                    "ca-cert-hash {h} is for joining a cluster; it needs join"
                ));
                None
            }
            Some(h) => berth_tls::parse_ca_hash(h)
                .map_err(|e| errs.push(e.to_string().replace("--ca-cert-hash", "ca-cert-hash")))
                .ok(),
            None => None,
        };
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            errs.push("tls-cert and tls-key go together: give both, or neither for a certificate from the cluster CA".into());
        }
        if self.bench_plain_cluster_port && !self.api_insecure_http {
            errs.push(
                "the plain cluster port (a benchmark's comparison) goes with api-insecure-http"
                    .into(),
            );
        }
        if self.api_insecure_http && self.tls_cert.is_some() {
            errs.push("api-insecure-http and tls-cert contradict each other".into());
        }
        let cert_lifetime = match parse_duration(&self.cert_lifetime) {
            Ok(d) if d >= std::time::Duration::from_secs(10) => d,
            Ok(_) => {
                errs.push(format!(
                    "cert-lifetime {} is too short (at least 10s)",
                    self.cert_lifetime
                ));
                std::time::Duration::from_secs(7 * 86_400)
            }
            Err(e) => {
                errs.push(format!("cert-lifetime: {e}"));
                std::time::Duration::from_secs(7 * 86_400)
            }
        };
        if errs.is_empty() {
            Ok(Valid {
                ca_cert_hash,
                cert_lifetime,
                agent_heartbeat_timeout,
                agent_lost_after,
                task_healthy_after,
                lb_bind,
                lb_idle_timeout,
                api_addr: api_addr.unwrap_or_else(unreachable_addr),
                raft_addr: raft_addr.unwrap_or_else(unreachable_addr),
                keys,
                cfg: self,
            })
        } else {
            Err(errs)
        }
    }
}

fn unreachable_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn redact(k: &str) -> String {
    match k.split_once(':') {
        Some((id, _)) => format!("{id}:****"),
        None => k.chars().take(4).collect::<String>() + "…",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_every_mistake_at_once() {
        let cfg = ServerConfig {
            node_id: 0,
            api_addr: "nope".into(),
            account_id: "12".into(),
            access_keys: vec!["broken".into()],
            ..Default::default()
        };
        let errs = cfg.validate().unwrap_err();
        assert!(errs.iter().any(|e| e.contains("node-id")), "{errs:?}");
        assert!(
            errs.iter().any(|e| e.contains("api-addr 'nope'")),
            "{errs:?}"
        );
        assert!(
            errs.iter().any(|e| e.contains("account-id '12'")),
            "{errs:?}"
        );
        assert!(errs.iter().any(|e| e.contains("brok")), "{errs:?}");
        assert!(
            !errs.iter().any(|e| e.contains("broken")),
            "secrets must not be echoed: {errs:?}"
        );
    }

    #[test]
    fn a_file_with_an_unknown_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.toml");
        std::fs::write(&p, "node-id = 2\nnode_idd = 3\n").unwrap();
        let e = ServerConfig::from_file(&p).unwrap_err();
        assert!(e.contains("node_idd"), "{e}");
    }

    #[test]
    fn defaults_with_a_key_are_valid() {
        let cfg = ServerConfig {
            access_keys: vec!["AKID:secret".into()],
            ..Default::default()
        };
        let v = cfg.validate().unwrap();
        assert_eq!(v.keys.get("AKID").map(String::as_str), Some("secret"));
    }
}
