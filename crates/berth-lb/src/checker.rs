//! The health-check shell: probes a target with `GET HealthCheckPath` every interval,
//! feeds the verdicts ([`crate::health::HealthMachine`]) and publishes them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use berth_model::elb::{TargetGroup, TargetHealth};
use bytes::Bytes;
use http_body_util::Empty;
use hyper::header::{CONNECTION, HOST, USER_AGENT};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::health::{CodeMatcher, HealthMachine, Outcome};
use crate::target::{TargetKey, TargetState};

/// Everything a checker needs; a change restarts the checker (the verdict is kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckSpec {
    pub addr: SocketAddr,
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    pub matcher: CodeMatcher,
}

impl CheckSpec {
    /// `None` when health checks are disabled for the group.
    pub fn from_group(tg: &TargetGroup, target_addr: SocketAddr) -> Option<CheckSpec> {
        if !tg.health_check_enabled {
            return None;
        }
        let port = match tg.health_check_port.trim() {
            "" | "traffic-port" => target_addr.port(),
            p => p.parse().unwrap_or(target_addr.port()),
        };
        let path = if tg.health_check_path.starts_with('/') {
            tg.health_check_path.clone()
        } else {
            "/".to_string()
        };
        let secs =
            |s: u32, default: u64| Duration::from_secs(if s == 0 { default } else { s as u64 });
        Some(CheckSpec {
            addr: SocketAddr::new(target_addr.ip(), port),
            path,
            interval: secs(tg.health_check_interval_seconds, 30),
            timeout: secs(tg.health_check_timeout_seconds, 6),
            healthy_threshold: if tg.healthy_threshold_count == 0 {
                5
            } else {
                tg.healthy_threshold_count
            },
            unhealthy_threshold: if tg.unhealthy_threshold_count == 0 {
                2
            } else {
                tg.unhealthy_threshold_count
            },
            matcher: CodeMatcher::parse(tg.matcher.http_code.as_deref()),
        })
    }
}

/// Publishes every target's health on a watch channel.
pub(crate) struct HealthHub {
    pub(crate) tx: watch::Sender<HashMap<TargetKey, TargetHealth>>,
}

impl HealthHub {
    pub(crate) fn new() -> HealthHub {
        HealthHub {
            tx: watch::Sender::new(HashMap::new()),
        }
    }
    pub(crate) fn set(&self, key: &TargetKey, h: &TargetHealth) {
        self.tx.send_if_modified(|m| {
            if m.get(key) == Some(h) {
                return false;
            }
            m.insert(key.clone(), h.clone());
            true
        });
    }
    pub(crate) fn remove(&self, key: &TargetKey) {
        self.tx.send_if_modified(|m| m.remove(key).is_some());
    }
}

/// One probe: a new connection, `GET path` with ALB's headers, `Connection: close`,
/// the whole exchange bounded by the check timeout.
pub async fn probe(spec: &CheckSpec) -> Outcome {
    let host = spec.addr.to_string();
    let exchange = async {
        let tcp = TcpStream::connect(spec.addr)
            .await
            .map_err(|_| Outcome::Failed)?;
        let _ = tcp.set_nodelay(true);
        let (mut send, conn) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tcp))
                .await
                .map_err(|_| Outcome::Failed)?;
        let drive = tokio::spawn(conn);
        let _abort = AbortOnDrop(drive);
        let req = Request::get(spec.path.as_str())
            .header(HOST, host.as_str())
            .header(USER_AGENT, "ELB-HealthChecker/2.0")
            .header(CONNECTION, "close")
            .body(Empty::new())
            .map_err(|_| Outcome::Failed)?;
        let resp = send.send_request(req).await.map_err(|_| Outcome::Failed)?;
        Ok::<u16, Outcome>(resp.status().as_u16())
    };
    match tokio::time::timeout(spec.timeout, exchange).await {
        Err(_) => Outcome::Timeout,
        Ok(Err(o)) => o,
        Ok(Ok(code)) if spec.matcher.matches(code) => Outcome::Success,
        Ok(Ok(code)) => Outcome::CodeMismatch(code),
    }
}

pub(crate) struct AbortOnDrop<T>(pub(crate) tokio::task::JoinHandle<T>);
impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Checks one target until aborted. The first probe runs at once rather than after
/// one interval, so a freshly started task reaches `healthy` (and gets traffic) after
/// `HealthyThresholdCount - 1` intervals instead of `HealthyThresholdCount`.
pub(crate) async fn run_checker(
    target: Arc<TargetState>,
    spec: CheckSpec,
    hub: Arc<HealthHub>,
    generation: u64,
) {
    // Called with `target.hc` held, which `apply` also holds to bump the generation.
    let publish = |m: &HealthMachine| {
        if target.checker_gen.load(Ordering::Relaxed) != generation {
            return;
        }
        target.route.store(m.route_class(), Ordering::Relaxed);
        hub.set(&target.key, &m.health);
    };
    {
        let mut m = target.hc.lock().unwrap_or_else(|e| e.into_inner());
        m.start();
        publish(&m);
    }
    let mut ticker = tokio::time::interval(spec.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let outcome = probe(&spec).await;
        let mut m = target.hc.lock().unwrap_or_else(|e| e.into_inner());
        if m.observe(outcome, spec.healthy_threshold, spec.unhealthy_threshold) {
            tracing::debug!(target = ?target.key, health = ?m.health, "target health changed");
            publish(&m);
        }
    }
}
