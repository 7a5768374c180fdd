//! What the benchmarks share: free loopback ports, `berth` child processes killed on
//! drop, signed ECS requests over keep-alive connections, waiting for a cluster to
//! answer and elect, and the figures (percentiles, milliseconds, RSS).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::process::{Child, Command};

pub(crate) const ACCESS_KEY: &str = "BENCH";
pub(crate) const SECRET: &str = "benchsecret";
pub(crate) const REGION: &str = "us-east-1";
pub(crate) const TARGET_PREFIX: &str = "AmazonEC2ContainerServiceV20141113.";
pub(crate) const AMZ_JSON: &str = "application/x-amz-json-1.1";
/// How long a cluster may take to come up (all voters, leader known).
pub(crate) const STARTUP_DEADLINE: Duration = Duration::from_secs(30);
/// A single request that takes longer than this counts as an error.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Nearest-rank percentile (`p` in 0..=100) of an ascending slice; zero for
/// an empty one.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let n = sorted.len();
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub(crate) fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    // Hold all listeners until every port is chosen, so they are distinct.
    let ls: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .context("bind 127.0.0.1:0 to pick a free port")?;
    ls.iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect::<Result<_, std::io::Error>>()
        .map_err(Into::into)
}

pub(crate) fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A child server process.
pub(crate) struct Proc {
    pub(crate) name: String,
    pub(crate) child: Child,
    /// Where clients talk to it (berth API / etcd client URL).
    pub(crate) api: SocketAddr,
    /// Raft port (berth) / peer port (etcd).
    pub(crate) peer: SocketAddr,
    pub(crate) data: PathBuf,
    pub(crate) log: PathBuf,
    pub(crate) spawned: Instant,
}

impl Proc {
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The last lines of its log, for error messages.
    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(15);
        format!(
            "--- last lines of {} ---\n{}",
            self.log.display(),
            lines[from..].join("\n")
        )
    }

    /// Err if the process has exited.
    pub(crate) fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(st) = self.child.try_wait()? {
            bail!("{} exited early ({st})\n{}", self.name, self.log_tail());
        }
        Ok(())
    }

    /// SIGTERM, wait up to 20 s, then SIGKILL.
    pub(crate) async fn stop(&mut self) -> anyhow::Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        let mut termed = false;
        if let Some(pid) = self.pid() {
            termed = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
        }
        if termed
            && tokio::time::timeout(Duration::from_secs(20), self.child.wait())
                .await
                .is_ok()
        {
            return Ok(());
        }
        self.child.start_kill().ok();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        Ok(())
    }
}

pub(crate) fn open_log(path: &Path) -> anyhow::Result<(Stdio, Stdio)> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("open log {}", path.display()))?;
    let g = f.try_clone()?;
    Ok((Stdio::from(f), Stdio::from(g)))
}

/// The servers' shared join token in benchmarks (servers joining one another share it).
pub(crate) const BENCH_JOIN_TOKEN: &str = "bench-join-token-0123456789";

#[allow(clippy::too_many_arguments)]
pub(crate) fn spawn_berth(
    exe: &Path,
    id: u64,
    data: &Path,
    log: &Path,
    api: SocketAddr,
    raft: SocketAddr,
    join: Option<SocketAddr>,
    fsync: bool,
    extra: &[String],
) -> anyhow::Result<Proc> {
    let (out, err) = open_log(log)?;
    let mut cmd = Command::new(exe);
    cmd.arg("server")
        .arg("--node-id")
        .arg(id.to_string())
        .arg("--data-dir")
        .arg(data)
        .arg("--api-addr")
        .arg(api.to_string())
        .arg("--raft-addr")
        .arg(raft.to_string())
        .arg("--access-key")
        .arg(format!("{ACCESS_KEY}:{SECRET}"))
        .arg("--fsync")
        .arg(fsync.to_string())
        // The load clients speak plain HTTP (as to etcd): what is measured is the write path
        // behind the API, over the cluster port's mutual TLS unless `extra` turns it off.
        .arg("--api-insecure-http");
    if !extra.iter().any(|a| a == "--join-token") {
        cmd.arg("--join-token").arg(BENCH_JOIN_TOKEN);
    }
    if let Some(j) = join {
        cmd.arg("--join").arg(j.to_string());
    }
    cmd.args(extra);
    // The children must not pick up a config meant for someone else.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("BERTH_") {
            cmd.env_remove(&k);
        }
    }
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true);
    let spawned = Instant::now();
    let child = cmd
        .spawn()
        .with_context(|| format!("start {} server", exe.display()))?;
    Ok(Proc {
        name: format!("berth node {id}"),
        child,
        api,
        peer: raft,
        data: data.to_path_buf(),
        log: log.to_path_buf(),
        spawned,
    })
}

pub(crate) fn rss_mib(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// The filesystem type of the mount holding `path`, from /proc/self/mounts.
pub(crate) fn fs_type(path: &Path) -> Option<String> {
    let path = path.canonicalize().ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, mnt, ty) = (f.next()?, f.next()?, f.next()?);
            let mnt = mnt.replace("\\040", " ");
            path.starts_with(&mnt).then(|| (mnt.len(), ty.to_string()))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, ty)| ty)
}

pub(crate) fn on_path(bin: &str) -> bool {
    if bin.contains('/') {
        return Path::new(bin).is_file();
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        .unwrap_or(false)
}

// ------------------------------------------------------------------ HTTP

pub(crate) type Conn = SendRequest<Full<Bytes>>;

pub(crate) async fn connect(addr: SocketAddr) -> Result<Conn, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake {addr}: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Sends `req` on `conn` (connecting first if needed); drops the connection
/// on any transport error so the next call reconnects.
pub(crate) async fn send(
    conn: &mut Option<Conn>,
    addr: SocketAddr,
    req: Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<(u16, Bytes), String> {
    let fut = async {
        if conn.is_none() {
            *conn = Some(connect(addr).await?);
        }
        let s = conn.as_mut().expect("connected above");
        s.ready().await.map_err(|e| format!("connection: {e}"))?;
        let resp = s
            .send_request(req)
            .await
            .map_err(|e| format!("send: {e}"))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("read body: {e}"))?
            .to_bytes();
        Ok::<_, String>((status, body))
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(x)) => Ok(x),
        Ok(Err(e)) => {
            *conn = None;
            Err(e)
        }
        Err(_) => {
            *conn = None;
            Err(format!("timeout after {} s", timeout.as_secs()))
        }
    }
}

/// One GET on a fresh connection.
pub(crate) async fn get(addr: SocketAddr, path: &str) -> Result<(u16, Bytes), String> {
    let req = Request::get(path)
        .header("host", addr.to_string())
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let mut c = None;
    send(&mut c, addr, req, Duration::from_secs(2)).await
}

pub(crate) fn now_epoch() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A SigV4-signed ECS JSON 1.1 request.
pub(crate) fn ecs_request(addr: SocketAddr, op: &str, body: &[u8]) -> Request<Full<Bytes>> {
    let host = addr.to_string();
    let target = format!("{TARGET_PREFIX}{op}");
    let headers = vec![
        ("Content-Type".to_string(), AMZ_JSON.to_string()),
        ("Host".to_string(), host),
        ("X-Amz-Target".to_string(), target),
    ];
    let extra = berth_api::sigv4::sign(
        "POST",
        "/",
        "",
        &headers,
        body,
        ACCESS_KEY,
        SECRET,
        REGION,
        "ecs",
        now_epoch(),
    );
    let mut b = Request::post("/");
    for (k, v) in headers.iter().chain(extra.iter()) {
        b = b.header(k.as_str(), v.as_str());
    }
    b.body(Full::new(Bytes::copy_from_slice(body)))
        .expect("valid request")
}

/// Polls `GET /healthz` until status "ok"; returns the time since spawn.
pub(crate) async fn wait_berth_healthy(
    p: &mut Proc,
    deadline: Instant,
) -> anyhow::Result<Duration> {
    loop {
        p.check_alive()?;
        if let Ok((200, body)) = get(p.api, "/healthz").await {
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            if v["status"] == "ok" {
                return Ok(p.spawned.elapsed());
            }
        }
        if Instant::now() > deadline {
            bail!(
                "{} did not answer GET /healthz with status ok within {} s\n{}",
                p.name,
                STARTUP_DEADLINE.as_secs(),
                p.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The voter sets of an openraft RaftMetrics JSON, and whether a leader is known.
pub(crate) fn voters_of(status: &Value) -> (Vec<BTreeSet<u64>>, bool) {
    let configs = status["membership_config"]["membership"]["configs"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    c.as_array()
                        .map(|ids| ids.iter().filter_map(Value::as_u64).collect())
                        .unwrap_or_default()
                })
                .collect()
        })
        .unwrap_or_default();
    (configs, !status["current_leader"].is_null())
}

/// Waits until every node reports one (non-joint) config holding all ids as
/// voters, a known leader, and healthz ok.
pub(crate) async fn wait_berth_voters(ps: &mut [Proc], deadline: Instant) -> anyhow::Result<()> {
    let want: BTreeSet<u64> = (1..=ps.len() as u64).collect();
    let mut last = String::new();
    loop {
        let mut ready = true;
        for p in ps.iter_mut() {
            p.check_alive()?;
            let st = match get(p.api, "/status").await {
                Ok((200, b)) => serde_json::from_slice::<Value>(&b).unwrap_or(Value::Null),
                _ => {
                    ready = false;
                    continue;
                }
            };
            let (configs, leader) = voters_of(&st);
            let health_ok = matches!(get(p.api, "/healthz").await,
                Ok((200, b)) if serde_json::from_slice::<Value>(&b).map(|v| v["status"] == "ok").unwrap_or(false));
            if !(leader && health_ok && configs.len() == 1 && configs[0] == want) {
                ready = false;
                last = format!(
                    "{}: voters {configs:?}, leader known {leader}, healthz ok {health_ok}",
                    p.name
                );
            }
        }
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            let tails: Vec<String> = ps.iter().map(|p| p.log_tail()).collect();
            bail!(
                "{} nodes did not all become voters with a leader within {} s (last seen: {last})\n{}",
                ps.len(),
                STARTUP_DEADLINE.as_secs(),
                tails.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
