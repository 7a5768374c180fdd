//! Container health checks as ECS (and Docker) define them: a command run inside the
//! container every `interval`, failing after `timeout`; `retries` consecutive failures make
//! the container UNHEALTHY, one success makes it HEALTHY; failures during `startPeriod` don't
//! count. The state machine is pure; the agent drives it with exec results.

use std::time::Duration;

use berth_model::HealthCheck;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    pub argv: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub retries: u32,
    pub start_period: Duration,
}

impl HealthConfig {
    /// ECS defaults: interval 30 s, timeout 5 s, retries 3, no start period. `CMD-SHELL x`
    /// runs `/bin/sh -c x`; `CMD a b` runs `a b`. `None` for `NONE` or an empty command.
    pub fn from_ecs(hc: &HealthCheck) -> Option<HealthConfig> {
        let (kind, rest) = hc.command.split_first()?;
        let argv = match kind.as_str() {
            "CMD-SHELL" => vec!["/bin/sh".into(), "-c".into(), rest.join(" ")],
            "CMD" => rest.to_vec(),
            "NONE" => return None,
            // A bare command (no CMD prefix) is taken as CMD, as Docker does.
            _ => hc.command.clone(),
        };
        if argv.is_empty() {
            return None;
        }
        Some(HealthConfig {
            argv,
            interval: Duration::from_secs(hc.interval.unwrap_or(30).max(1) as u64),
            timeout: Duration::from_secs(hc.timeout.unwrap_or(5).max(1) as u64),
            retries: hc.retries.unwrap_or(3).max(1) as u32,
            start_period: Duration::from_secs(hc.start_period.unwrap_or(0).max(0) as u64),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Unknown,
    Healthy,
    Unhealthy,
}

impl Health {
    pub fn as_ecs(self) -> &'static str {
        match self {
            Health::Unknown => "UNKNOWN",
            Health::Healthy => "HEALTHY",
            Health::Unhealthy => "UNHEALTHY",
        }
    }
}

/// Consecutive-failure counting.
#[derive(Debug, Clone)]
pub struct HealthState {
    pub status: Health,
    failures: u32,
    retries: u32,
    start_period: Duration,
}

impl HealthState {
    pub fn new(cfg: &HealthConfig) -> Self {
        HealthState {
            status: Health::Unknown,
            failures: 0,
            retries: cfg.retries,
            start_period: cfg.start_period,
        }
    }

    /// Records one probe result, `since_start` after the container started. Returns the new
    /// status if it changed.
    pub fn record(&mut self, ok: bool, since_start: Duration) -> Option<Health> {
        let before = self.status;
        if ok {
            self.failures = 0;
            self.status = Health::Healthy;
        } else if since_start >= self.start_period || self.status == Health::Healthy {
            // Docker: failures inside the start period don't count unless the container
            // has already been healthy once.
            self.failures += 1;
            if self.failures >= self.retries {
                self.status = Health::Unhealthy;
            }
        }
        (self.status != before).then_some(self.status)
    }
}

/// Task health from its essential containers' health (only those with a health check):
/// UNHEALTHY beats UNKNOWN beats HEALTHY; no checked container → UNKNOWN.
pub fn task_health<'a>(essential_checked: impl IntoIterator<Item = &'a str>) -> &'static str {
    let mut any = false;
    let mut unknown = false;
    for h in essential_checked {
        any = true;
        match h {
            "UNHEALTHY" => return "UNHEALTHY",
            "HEALTHY" => {}
            _ => unknown = true,
        }
    }
    if !any || unknown {
        "UNKNOWN"
    } else {
        "HEALTHY"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(retries: u32, start: u64) -> HealthConfig {
        HealthConfig {
            argv: vec!["true".into()],
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            retries,
            start_period: Duration::from_secs(start),
        }
    }

    #[test]
    fn parses_ecs_forms_with_defaults() {
        let hc = HealthCheck {
            command: vec![
                "CMD-SHELL".into(),
                "curl -f http://localhost/ || exit 1".into(),
            ],
            ..Default::default()
        };
        let c = HealthConfig::from_ecs(&hc).unwrap();
        assert_eq!(
            c.argv,
            ["/bin/sh", "-c", "curl -f http://localhost/ || exit 1"]
        );
        assert_eq!(c.interval, Duration::from_secs(30));
        assert_eq!(c.timeout, Duration::from_secs(5));
        assert_eq!(c.retries, 3);
        let hc = HealthCheck {
            command: vec!["CMD".into(), "test".into(), "-f".into(), "/ok".into()],
            interval: Some(5),
            retries: Some(2),
            start_period: Some(10),
            timeout: Some(2),
        };
        let c = HealthConfig::from_ecs(&hc).unwrap();
        assert_eq!(c.argv, ["test", "-f", "/ok"]);
        assert_eq!((c.retries, c.start_period), (2, Duration::from_secs(10)));
        assert!(HealthConfig::from_ecs(&HealthCheck {
            command: vec!["NONE".into()],
            ..Default::default()
        })
        .is_none());
    }

    #[test]
    fn retries_consecutive_failures_make_unhealthy_and_one_success_heals() {
        let mut s = HealthState::new(&cfg(2, 0));
        let t = Duration::from_secs(100);
        assert_eq!(s.record(true, t), Some(Health::Healthy));
        assert_eq!(s.record(false, t), None);
        assert_eq!(s.record(false, t), Some(Health::Unhealthy));
        assert_eq!(s.record(false, t), None);
        assert_eq!(s.record(true, t), Some(Health::Healthy));
    }

    #[test]
    fn failures_in_start_period_do_not_count() {
        let mut s = HealthState::new(&cfg(1, 30));
        assert_eq!(s.record(false, Duration::from_secs(5)), None);
        assert_eq!(s.status, Health::Unknown);
        assert_eq!(
            s.record(false, Duration::from_secs(31)),
            Some(Health::Unhealthy)
        );
    }

    #[test]
    fn task_health_priority() {
        assert_eq!(task_health([]), "UNKNOWN");
        assert_eq!(task_health(["HEALTHY", "HEALTHY"]), "HEALTHY");
        assert_eq!(task_health(["HEALTHY", "UNKNOWN"]), "UNKNOWN");
        assert_eq!(task_health(["UNKNOWN", "UNHEALTHY"]), "UNHEALTHY");
    }
}
