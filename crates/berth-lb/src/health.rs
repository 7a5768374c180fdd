//! Target health verdicts, as an ALB node reaches them: a pure state machine
//! ([`HealthMachine`]) fed with probe outcomes; the shell that probes is
//! [`crate::checker`].

use berth_model::elb::TargetHealth;

/// How a target may be routed to, as its verdict says (an atomic in [`crate::target::TargetState`]).
/// How the proxy treats a target's health when choosing (read lock-free per request).
pub(crate) const ROUTE_INITIAL: u8 = 0;
pub(crate) const ROUTE_HEALTHY: u8 = 1;
pub(crate) const ROUTE_UNHEALTHY: u8 = 2;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::CheckSpec;
    use berth_model::elb::TargetGroup;
    use std::net::SocketAddr;

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
