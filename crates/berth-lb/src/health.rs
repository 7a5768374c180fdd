//! Target health checks, as an ALB node runs them: the verdicts are a pure state
//! machine ([`HealthMachine`]); the shell ([`run_checker`]) probes a target with
//! `GET HealthCheckPath` every interval and feeds the machine.

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

use crate::balancer::{TargetState, ROUTE_HEALTHY, ROUTE_INITIAL, ROUTE_UNHEALTHY};
use crate::TargetKey;

/// The result of one probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// The target answered with a code outside the matcher.
    CodeMismatch(u16),
    /// No response within `HealthCheckTimeoutSeconds`.
    Timeout,
    /// Refused, reset, or not HTTP.
    Failed,
}

impl Outcome {
    fn unhealthy(self) -> TargetHealth {
        match self {
            Outcome::CodeMismatch(c) => TargetHealth::new(
                "unhealthy",
                Some("Target.ResponseCodeMismatch"),
                Some(&format!("Health checks failed with these codes: [{c}]")),
            ),
            Outcome::Timeout => TargetHealth::new(
                "unhealthy",
                Some("Target.Timeout"),
                Some("Request timed out"),
            ),
            _ => TargetHealth::new(
                "unhealthy",
                Some("Target.FailedHealthChecks"),
                Some("Health checks failed"),
            ),
        }
    }
}

/// `initial` while checks start.
pub fn initial_checking() -> TargetHealth {
    TargetHealth::new(
        "initial",
        Some("Elb.InitialHealthChecking"),
        Some("Initial health checking in progress"),
    )
}

pub fn health_check_disabled() -> TargetHealth {
    TargetHealth::new(
        "unavailable",
        Some("Target.HealthCheckDisabled"),
        Some("Health checks are disabled"),
    )
}

/// One target's health verdict: pure, driven by probe outcomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthMachine {
    pub health: TargetHealth,
    /// Consecutive successes / failures (one of them is always 0).
    pub successes: u32,
    pub failures: u32,
}

impl Default for HealthMachine {
    fn default() -> Self {
        Self::new()
    }
}

impl HealthMachine {
    /// A newly registered target: `initial` / `Elb.RegistrationInProgress`.
    pub fn new() -> HealthMachine {
        HealthMachine {
            health: TargetHealth::initial(),
            successes: 0,
            failures: 0,
        }
    }

    /// Checks have started: `initial` moves to `Elb.InitialHealthChecking`.
    /// Returns whether the health changed.
    pub fn start(&mut self) -> bool {
        if self.health.state == "initial" && self.health != initial_checking() {
            self.health = initial_checking();
            return true;
        }
        false
    }

    /// Feeds one probe outcome; returns whether the health changed.
    /// `healthy_threshold` consecutive successes make a target healthy (from initial
    /// or unhealthy); `unhealthy_threshold` consecutive failures make it unhealthy
    /// (from initial or healthy), with the reason of the latest failure. Anything in
    /// between resets the other counter and keeps the state.
    pub fn observe(
        &mut self,
        o: Outcome,
        healthy_threshold: u32,
        unhealthy_threshold: u32,
    ) -> bool {
        let before = self.health.clone();
        match o {
            Outcome::Success => {
                self.failures = 0;
                self.successes = self.successes.saturating_add(1);
                if self.successes >= healthy_threshold.max(1) {
                    self.health = TargetHealth::healthy();
                }
            }
            _ => {
                self.successes = 0;
                self.failures = self.failures.saturating_add(1);
                if self.failures >= unhealthy_threshold.max(1) {
                    self.health = o.unhealthy();
                }
            }
        }
        if self.health.state == "initial" {
            self.start();
        }
        self.health != before
    }

    /// How the proxy treats this verdict.
    pub fn route_class(&self) -> u8 {
        match self.health.state.as_str() {
            "healthy" | "unavailable" => ROUTE_HEALTHY,
            "unhealthy" => ROUTE_UNHEALTHY,
            _ => ROUTE_INITIAL,
        }
    }
}

/// `Matcher.HttpCode`: "200", "200,202", "200-299", or a mix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeMatcher(Vec<(u16, u16)>);

impl CodeMatcher {
    pub fn parse(s: Option<&str>) -> CodeMatcher {
        let mut v = vec![];
        for part in s.unwrap_or("200").split(',') {
            let part = part.trim();
            let range = match part.split_once('-') {
                Some((a, b)) => a.trim().parse().ok().zip(b.trim().parse().ok()),
                None => part.parse().ok().map(|c| (c, c)),
            };
            if let Some((a, b)) = range {
                if a <= b {
                    v.push((a, b));
                }
            }
        }
        if v.is_empty() {
            v.push((200, 200));
        }
        CodeMatcher(v)
    }
    pub fn matches(&self, code: u16) -> bool {
        self.0.iter().any(|(a, b)| (*a..=*b).contains(&code))
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_to_healthy_after_threshold() {
        let mut m = HealthMachine::new();
        assert_eq!(
            m.health.reason.as_deref(),
            Some("Elb.RegistrationInProgress")
        );
        assert!(m.start());
        assert_eq!(
            m.health.reason.as_deref(),
            Some("Elb.InitialHealthChecking")
        );
        assert_eq!(m.route_class(), ROUTE_INITIAL);
        for _ in 0..4 {
            assert!(!m.observe(Outcome::Success, 5, 2));
        }
        assert!(m.observe(Outcome::Success, 5, 2));
        assert_eq!(m.health, TargetHealth::healthy());
        assert_eq!(m.route_class(), ROUTE_HEALTHY);
    }

    #[test]
    fn healthy_to_unhealthy_with_reasons() {
        let mut m = HealthMachine::new();
        m.observe(Outcome::Success, 1, 3);
        assert_eq!(m.health.state, "healthy");
        assert!(!m.observe(Outcome::Timeout, 1, 3));
        assert!(!m.observe(Outcome::Failed, 1, 3));
        assert!(m.observe(Outcome::CodeMismatch(503), 1, 3));
        assert_eq!(m.health.state, "unhealthy");
        assert_eq!(
            m.health.reason.as_deref(),
            Some("Target.ResponseCodeMismatch")
        );
        assert_eq!(
            m.health.description.as_deref(),
            Some("Health checks failed with these codes: [503]")
        );
        assert_eq!(m.route_class(), ROUTE_UNHEALTHY);
        assert!(m.observe(Outcome::Timeout, 1, 3));
        assert_eq!(m.health.reason.as_deref(), Some("Target.Timeout"));
        assert_eq!(m.health.description.as_deref(), Some("Request timed out"));
        assert!(m.observe(Outcome::Failed, 1, 3));
        assert_eq!(
            m.health.reason.as_deref(),
            Some("Target.FailedHealthChecks")
        );
    }

    #[test]
    fn initial_to_unhealthy_and_flapping_resets_counters() {
        let mut m = HealthMachine::new();
        m.start();
        assert!(!m.observe(Outcome::Failed, 3, 2));
        assert!(m.observe(Outcome::Failed, 3, 2));
        assert_eq!(m.health.state, "unhealthy");
        // Flapping: success, failure, success… never reaches 3 in a row.
        for _ in 0..5 {
            m.observe(Outcome::Success, 3, 2);
            m.observe(Outcome::Success, 3, 2);
            m.observe(Outcome::CodeMismatch(500), 3, 2);
        }
        assert_eq!(m.health.state, "unhealthy");
        assert_eq!(m.failures, 1);
        m.observe(Outcome::Success, 3, 2);
        m.observe(Outcome::Success, 3, 2);
        assert_eq!(m.health.state, "unhealthy");
        assert!(m.observe(Outcome::Success, 3, 2));
        assert_eq!(m.health.state, "healthy");
        // One failure below the threshold keeps it healthy.
        assert!(!m.observe(Outcome::Failed, 3, 2));
        assert_eq!(m.health.state, "healthy");
        m.observe(Outcome::Success, 3, 2);
        assert!(!m.observe(Outcome::Failed, 3, 2));
        assert_eq!(m.health.state, "healthy");
    }

    #[test]
    fn matcher_codes() {
        let m = CodeMatcher::parse(Some("200,202, 300-399"));
        assert!(m.matches(200) && m.matches(202) && m.matches(301) && m.matches(399));
        assert!(!m.matches(201) && !m.matches(400));
        assert!(CodeMatcher::parse(None).matches(200));
        assert!(!CodeMatcher::parse(None).matches(204));
        assert_eq!(CodeMatcher::parse(Some("junk")), CodeMatcher::parse(None));
    }

    #[test]
    fn spec_from_group() {
        let tg = TargetGroup {
            health_check_enabled: true,
            health_check_port: "traffic-port".into(),
            health_check_path: "/health".into(),
            health_check_interval_seconds: 10,
            health_check_timeout_seconds: 5,
            healthy_threshold_count: 3,
            unhealthy_threshold_count: 2,
            ..Default::default()
        };
        let a: SocketAddr = "10.0.0.5:32768".parse().unwrap();
        let s = CheckSpec::from_group(&tg, a).unwrap();
        assert_eq!(s.addr, a);
        let tg2 = TargetGroup {
            health_check_port: "8081".into(),
            ..tg.clone()
        };
        assert_eq!(CheckSpec::from_group(&tg2, a).unwrap().addr.port(), 8081);
        let tg3 = TargetGroup {
            health_check_enabled: false,
            ..tg
        };
        assert!(CheckSpec::from_group(&tg3, a).is_none());
    }
}
