//! The routing table (one immutable snapshot per `apply`), per-target state that
//! outlives snapshots, and the choices made per request: which rule, which target
//! group (by weight), which target (round robin or least outstanding requests,
//! healthy first, failing open).
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use berth_model::elb::{Action, RedirectActionConfig, Rule};
use bytes::Bytes;
use hyper::header::HeaderValue;
use hyper::StatusCode;
use rand::Rng;

use crate::matching::{priority_key, Condition, RequestView};
use crate::target::TargetState;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    RoundRobin,
    LeastOutstandingRequests,
}

impl Algorithm {
    pub fn parse(s: &str) -> Algorithm {
        match s {
            "least_outstanding_requests" => Algorithm::LeastOutstandingRequests,
            // weighted_random without anomaly mitigation behaves like an even spread.
            _ => Algorithm::RoundRobin,
        }
    }
}

/// A target group in one routing table.
#[derive(Debug)]
pub struct GroupTable {
    pub arn: String,
    pub algorithm: Algorithm,
    pub targets: Vec<Arc<TargetState>>,
    /// Shared across tables for the same group so round robin stays even over swaps.
    pub cursor: Arc<AtomicUsize>,
}

impl GroupTable {
    /// Picks a target for a new request, skipping `exclude` (targets that already
    /// refused this request). Draining targets never get new requests. Among the rest
    /// only healthy ones (or health-check-disabled ones) are used; when there are none,
    /// ALB fails open and so do we: every non-draining target is a candidate, initial
    /// and unhealthy alike.
    pub fn choose(&self, exclude: &[Arc<TargetState>]) -> Option<&Arc<TargetState>> {
        let eligible =
            |t: &Arc<TargetState>| !t.is_draining() && !exclude.iter().any(|e| Arc::ptr_eq(e, t));
        let healthy = self
            .targets
            .iter()
            .filter(|t| eligible(t) && t.routable_healthy())
            .count();
        let (n, only_healthy) = if healthy > 0 {
            (healthy, true)
        } else {
            (self.targets.iter().filter(|t| eligible(t)).count(), false)
        };
        if n == 0 {
            return None;
        }
        let candidates = || {
            self.targets
                .iter()
                .filter(move |t| eligible(t) && (!only_healthy || t.routable_healthy()))
        };
        let start = self.cursor.fetch_add(1, Ordering::Relaxed) % n;
        match self.algorithm {
            Algorithm::RoundRobin => candidates().nth(start),
            Algorithm::LeastOutstandingRequests => {
                // Ties go to the next one in round-robin order, so an idle group
                // still spreads evenly.
                let mut best: Option<(&Arc<TargetState>, usize)> = None;
                for t in candidates().skip(start).chain(candidates().take(start)) {
                    let f = t.in_flight();
                    if best.is_none_or(|(_, b)| f < b) {
                        best = Some((t, f));
                    }
                }
                best.map(|(t, _)| t)
            }
        }
    }
}

/// A redirect with its templates already defaulted (ALB keeps the original
/// part for every field left out).
#[derive(Debug, Clone)]
pub struct RedirectTemplate {
    pub status: StatusCode,
    pub protocol: String,
    pub host: String,
    pub port: String,
    pub path: String,
    pub query: String,
}

impl RedirectTemplate {
    pub fn from_config(c: &RedirectActionConfig) -> RedirectTemplate {
        let status = match c.status_code.as_str() {
            "HTTP_301" => StatusCode::MOVED_PERMANENTLY,
            _ => StatusCode::FOUND,
        };
        RedirectTemplate {
            status,
            protocol: c.protocol.clone().unwrap_or_else(|| "#{protocol}".into()),
            host: c.host.clone().unwrap_or_else(|| "#{host}".into()),
            port: c.port.clone().unwrap_or_else(|| "#{port}".into()),
            path: c.path.clone().unwrap_or_else(|| "/#{path}".into()),
            query: c.query.clone().unwrap_or_else(|| "#{query}".into()),
        }
    }

    /// The `Location` for a request: `protocol://host[:port]/path[?query]`, with the
    /// port left out when it is the protocol's default (as ALB does). `path` is the
    /// original path; `#{path}` expands to it without its leading `/`.
    pub fn location(&self, host: &str, port: u16, path: &str, query: Option<&str>) -> String {
        let port_s = port.to_string();
        let path_nos = path.strip_prefix('/').unwrap_or(path);
        let q = query.unwrap_or("");
        let expand = |t: &str| -> String {
            t.replace("#{protocol}", "http")
                .replace("#{host}", host)
                .replace("#{port}", &port_s)
                .replace("#{path}", path_nos)
                .replace("#{query}", q)
        };
        let protocol = expand(&self.protocol).to_ascii_lowercase();
        let host = expand(&self.host);
        let port = expand(&self.port);
        let mut path = expand(&self.path);
        if !path.starts_with('/') {
            path.insert(0, '/');
        }
        let query = expand(&self.query);
        let default_port = match protocol.as_str() {
            "https" => "443",
            _ => "80",
        };
        let mut loc =
            String::with_capacity(protocol.len() + host.len() + path.len() + query.len() + 12);
        loc.push_str(&protocol);
        loc.push_str("://");
        loc.push_str(&host);
        if !port.is_empty() && port != default_port {
            loc.push(':');
            loc.push_str(&port);
        }
        loc.push_str(&path);
        if !query.is_empty() {
            loc.push('?');
            loc.push_str(&query);
        }
        loc
    }
}

#[derive(Debug)]
pub enum CompiledAction {
    /// (group, weight); weight-0 groups are dropped at compile time. Groups that do
    /// not exist in the configuration are dropped too (no targets → 503).
    Forward {
        groups: Vec<(Arc<GroupTable>, u32)>,
        total: u32,
    },
    Fixed {
        status: StatusCode,
        content_type: HeaderValue,
        body: Bytes,
    },
    Redirect(RedirectTemplate),
    /// No terminal action this proxy understands: 503.
    Unavailable,
}

impl CompiledAction {
    pub fn compile(
        actions: &[Action],
        groups: &std::collections::HashMap<String, Arc<GroupTable>>,
    ) -> CompiledAction {
        let mut sorted: Vec<&Action> = actions.iter().collect();
        sorted.sort_by_key(|a| a.order.unwrap_or(u32::MAX));
        for a in sorted {
            match a.action_type.as_str() {
                "forward" => {
                    let groups: Vec<(Arc<GroupTable>, u32)> = a
                        .forward_targets()
                        .into_iter()
                        .filter(|(_, w)| *w > 0)
                        .filter_map(|(arn, w)| groups.get(&arn).map(|g| (g.clone(), w)))
                        .collect();
                    let total = groups.iter().map(|(_, w)| *w).sum();
                    return CompiledAction::Forward { groups, total };
                }
                "fixed-response" => {
                    let Some(f) = &a.fixed_response_config else {
                        continue;
                    };
                    let status = f
                        .status_code
                        .parse::<u16>()
                        .ok()
                        .and_then(|s| StatusCode::from_u16(s).ok())
                        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                    let content_type = f
                        .content_type
                        .as_deref()
                        .and_then(|c| HeaderValue::from_str(c).ok())
                        .unwrap_or(HeaderValue::from_static("text/plain"));
                    let body = Bytes::from(f.message_body.clone().unwrap_or_default());
                    return CompiledAction::Fixed {
                        status,
                        content_type,
                        body,
                    };
                }
                "redirect" => {
                    let Some(r) = &a.redirect_config else {
                        continue;
                    };
                    return CompiledAction::Redirect(RedirectTemplate::from_config(r));
                }
                _ => continue,
            }
        }
        CompiledAction::Unavailable
    }
}

/// Picks a target group by weight (weight-0 groups were dropped at compile time).
pub fn pick_weighted<'a, R: Rng + ?Sized>(
    groups: &'a [(Arc<GroupTable>, u32)],
    total: u32,
    rng: &mut R,
) -> Option<&'a Arc<GroupTable>> {
    match groups {
        [] => None,
        [(g, _)] => Some(g),
        _ if total == 0 => None,
        _ => {
            let mut x = rng.gen_range(0..total);
            for (g, w) in groups {
                if x < *w {
                    return Some(g);
                }
                x -= w;
            }
            groups.last().map(|(g, _)| g)
        }
    }
}

#[derive(Debug)]
pub struct CompiledRule {
    pub priority: u64,
    pub conditions: Vec<Condition>,
    pub action: CompiledAction,
}

/// One listener's rules, lowest priority number first, the default rule last.
#[derive(Debug, Default)]
pub struct ListenerTable {
    pub rules: Vec<CompiledRule>,
}

impl ListenerTable {
    pub fn build(
        rules: &[Rule],
        groups: &std::collections::HashMap<String, Arc<GroupTable>>,
    ) -> ListenerTable {
        let mut compiled: Vec<CompiledRule> = rules
            .iter()
            .map(|r| CompiledRule {
                priority: priority_key(&r.priority, r.is_default),
                conditions: if r.is_default {
                    vec![]
                } else {
                    r.conditions.iter().map(Condition::compile).collect()
                },
                action: CompiledAction::compile(&r.actions, groups),
            })
            .collect();
        compiled.sort_by_key(|r| r.priority);
        ListenerTable { rules: compiled }
    }

    /// The first rule whose conditions all match.
    pub fn route(&self, r: &RequestView<'_>) -> Option<&CompiledRule> {
        self.rules
            .iter()
            .find(|rule| rule.conditions.iter().all(|c| c.matches(r)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::ROUTE_HEALTHY;
    use crate::health::{ROUTE_INITIAL, ROUTE_UNHEALTHY};
    use crate::target::InFlight;
    use berth_model::elb::{
        FixedResponseActionConfig, ForwardActionConfig, RuleCondition, TargetGroupTuple,
    };
    use hyper::header::HeaderMap;
    use rand::SeedableRng;
    use std::collections::HashMap;
    use std::net::SocketAddr;

    fn target(n: u16) -> Arc<TargetState> {
        TargetState::new(
            ("tg".into(), format!("t{n}"), n),
            SocketAddr::from(([127, 0, 0, 1], n)),
            0,
            ROUTE_HEALTHY,
        )
    }

    fn group(arn: &str, n: u16, algo: Algorithm) -> Arc<GroupTable> {
        Arc::new(GroupTable {
            arn: arn.into(),
            algorithm: algo,
            targets: (1..=n).map(target).collect(),
            cursor: Arc::new(AtomicUsize::new(0)),
        })
    }

    fn fixed(code: &str) -> Action {
        Action {
            action_type: "fixed-response".into(),
            fixed_response_config: Some(FixedResponseActionConfig {
                status_code: code.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn rule(prio: &str, path: Option<&str>, code: &str) -> Rule {
        Rule {
            rule_arn: format!("r{prio}"),
            priority: prio.into(),
            conditions: path
                .map(|p| {
                    vec![RuleCondition {
                        field: "path-pattern".into(),
                        values: vec![p.into()],
                        ..Default::default()
                    }]
                })
                .unwrap_or_default(),
            actions: vec![fixed(code)],
            is_default: prio == "default",
        }
    }

    fn status_for(t: &ListenerTable, path: &str) -> u16 {
        let h = HeaderMap::new();
        let v = RequestView {
            method: "GET",
            path,
            query: None,
            host: "x.example.com",
            headers: &h,
            source_ip: "10.0.0.1".parse().unwrap(),
        };
        match &t.route(&v).unwrap().action {
            CompiledAction::Fixed { status, .. } => status.as_u16(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rules_in_priority_order_default_last() {
        let rules = vec![
            rule("default", None, "404"),
            rule("10", Some("/api/*"), "210"),
            rule("2", Some("/api/v2/*"), "202"),
            rule("100", Some("*"), "299"),
        ];
        let t = ListenerTable::build(&rules, &HashMap::new());
        assert_eq!(status_for(&t, "/api/v2/x"), 202);
        assert_eq!(status_for(&t, "/api/v1/x"), 210);
        assert_eq!(status_for(&t, "/other"), 299);
        let t = ListenerTable::build(&rules[..2], &HashMap::new());
        assert_eq!(status_for(&t, "/other"), 404);
    }

    #[test]
    fn weighted_forward() {
        let a = group("a", 1, Algorithm::RoundRobin);
        let b = group("b", 1, Algorithm::RoundRobin);
        let c = group("c", 1, Algorithm::RoundRobin);
        let mut gm = HashMap::new();
        for g in [&a, &b, &c] {
            gm.insert(g.arn.clone(), g.clone());
        }
        let action = Action {
            action_type: "forward".into(),
            forward_config: Some(ForwardActionConfig {
                target_groups: vec![
                    TargetGroupTuple {
                        target_group_arn: "a".into(),
                        weight: Some(80),
                    },
                    TargetGroupTuple {
                        target_group_arn: "b".into(),
                        weight: Some(20),
                    },
                    TargetGroupTuple {
                        target_group_arn: "c".into(),
                        weight: Some(0),
                    },
                    TargetGroupTuple {
                        target_group_arn: "missing".into(),
                        weight: Some(5),
                    },
                ],
                ..Default::default()
            }),
            ..Default::default()
        };
        let CompiledAction::Forward { groups, total } = CompiledAction::compile(&[action], &gm)
        else {
            panic!()
        };
        assert_eq!(total, 100);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut counts: HashMap<String, u32> = HashMap::new();
        for _ in 0..10_000 {
            let g = pick_weighted(&groups, total, &mut rng).unwrap();
            *counts.entry(g.arn.clone()).or_default() += 1;
        }
        assert_eq!(counts.get("c"), None, "weight 0 never chosen");
        let a_n = counts["a"];
        assert!((7_600..8_400).contains(&a_n), "a got {a_n}");
        // Only weight-0 groups: no group.
        let zero = [(c.clone(), 0)];
        assert!(pick_weighted(&zero[..0], 0, &mut rng).is_none());
    }

    #[test]
    fn round_robin_is_even_and_skips_draining() {
        let g = group("g", 3, Algorithm::RoundRobin);
        let mut counts = HashMap::new();
        for _ in 0..300 {
            let t = g.choose(&[]).unwrap();
            *counts.entry(t.key.2).or_insert(0) += 1;
        }
        assert_eq!(counts.values().copied().collect::<Vec<_>>(), vec![100; 3]);
        g.targets[1].draining.store(true, Ordering::Relaxed);
        for _ in 0..50 {
            assert_ne!(g.choose(&[]).unwrap().key.2, 2);
        }
        for t in &g.targets {
            t.draining.store(true, Ordering::Relaxed);
        }
        assert!(g.choose(&[]).is_none());
    }

    #[test]
    fn least_outstanding_picks_idle_target() {
        let g = group("g", 3, Algorithm::LeastOutstandingRequests);
        let _busy1 = InFlight::start(&g.targets[0]);
        let _busy2 = InFlight::start(&g.targets[0]);
        let _busy3 = InFlight::start(&g.targets[2]);
        for _ in 0..10 {
            assert_eq!(g.choose(&[]).unwrap().key.2, 2);
        }
        drop(_busy3);
        // t2 and t3 idle now: both used (ties spread round-robin).
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10 {
            seen.insert(g.choose(&[]).unwrap().key.2);
        }
        assert_eq!(seen, [2u16, 3].into_iter().collect());
    }

    #[test]
    fn healthy_first_then_fail_open() {
        let g = group("g", 3, Algorithm::RoundRobin);
        g.targets[0].route.store(ROUTE_INITIAL, Ordering::Relaxed);
        g.targets[1].route.store(ROUTE_UNHEALTHY, Ordering::Relaxed);
        for _ in 0..20 {
            assert_eq!(g.choose(&[]).unwrap().key.2, 3);
        }
        // Excluding the only healthy target (it refused) falls open to the others.
        let ex = vec![g.targets[2].clone()];
        let t = g.choose(&ex).unwrap();
        assert_ne!(t.key.2, 3);
        // Nobody healthy: everyone gets traffic.
        g.targets[2].route.store(ROUTE_UNHEALTHY, Ordering::Relaxed);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..30 {
            seen.insert(g.choose(&[]).unwrap().key.2);
        }
        assert_eq!(seen.len(), 3);
    }

    #[test]
    fn redirect_placeholders() {
        let t = RedirectTemplate::from_config(&RedirectActionConfig {
            status_code: "HTTP_301".into(),
            protocol: Some("HTTPS".into()),
            port: Some("443".into()),
            ..Default::default()
        });
        assert_eq!(t.status, StatusCode::MOVED_PERMANENTLY);
        assert_eq!(
            t.location("example.com", 80, "/a/b", Some("x=1")),
            "https://example.com/a/b?x=1"
        );
        // Defaults keep everything.
        let t = RedirectTemplate::from_config(&RedirectActionConfig {
            status_code: "HTTP_302".into(),
            ..Default::default()
        });
        assert_eq!(t.status, StatusCode::FOUND);
        assert_eq!(t.location("h.io", 8080, "/p", None), "http://h.io:8080/p");
        let t = RedirectTemplate::from_config(&RedirectActionConfig {
            status_code: "HTTP_302".into(),
            host: Some("new.#{host}".into()),
            path: Some("/v2/#{path}".into()),
            query: Some("#{query}&from=#{port}".into()),
            ..Default::default()
        });
        assert_eq!(
            t.location("h.io", 80, "/p/q", Some("a=b")),
            "http://new.h.io/v2/p/q?a=b&from=80"
        );
    }
}
