//! The load balancer inside a server (and inside `berth lb` edge nodes): it follows
//! the replicated ELB state and hands the proxy (`berth-lb`) a whole new routing
//! configuration whenever that state changes. On the Raft leader it also writes the
//! health its own checker sees back to the store (transitions only), which is what
//! DescribeTargetHealth shows and what the service controller acts on.
//!
//! Every load balancer node checks health on its own (as ALB nodes do), so a node keeps
//! routing around dead targets while the cluster has no leader.
//!
//! Every node that serves listeners also reports in (`ElbDrainReport`, at least every
//! `LB_NODE_REPORT_SECS`) with the draining targets it will send nothing more: when
//! every active node says so, the target's task stops before the deregistration delay
//! is over (ALB completes a deregistration early when nothing is in flight).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use berth_lb::{Lb, ListenerConfig, RoutingConfig, TargetConfig, TargetGroupConfig};
use berth_model::elb::{
    DrainIdle, Listener, LoadBalancerRecord, Rule, RuleRecord, TargetGroupRecord,
    TargetHealthUpdate, TargetRecord,
};
use berth_store::{Change, Command, StateReader};
use serde::{Deserialize, Serialize};

use crate::node::ServerNode;

/// Everything a load balancer node needs, in the model's (serde) types. Also the body
/// of `GET /berth/lb/config`, which `berth lb` edge nodes long-poll.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LbSnapshot {
    pub revision: u64,
    /// With their attributes (the idle timeout of their listeners). Absent from the
    /// snapshots of servers older than load balancer attributes: their listeners then
    /// keep the node's `--lb-idle-timeout`.
    #[serde(default)]
    pub load_balancers: Vec<LoadBalancerRecord>,
    pub listeners: Vec<Listener>,
    pub rules: Vec<RuleRecord>,
    pub target_groups: Vec<TargetGroupRecord>,
    pub targets: Vec<TargetRecord>,
}

/// Reads the whole ELB state at the reader's current revision.
pub fn snapshot(reader: &StateReader) -> Result<LbSnapshot, String> {
    let revision = reader.revision();
    let load_balancers = reader
        .elb_load_balancer_records()
        .map_err(|e| e.to_string())?;
    let listeners = reader.elb_listeners(None).map_err(|e| e.to_string())?;
    let mut rules = Vec::new();
    for l in &listeners {
        for r in reader
            .elb_rules(&l.listener_arn)
            .map_err(|e| e.to_string())?
        {
            rules.push(RuleRecord {
                listener_arn: l.listener_arn.clone(),
                rule: r,
            });
        }
    }
    let target_groups = reader.elb_target_groups().map_err(|e| e.to_string())?;
    let targets = reader.elb_all_targets().map_err(|e| e.to_string())?;
    Ok(LbSnapshot {
        revision,
        load_balancers,
        listeners,
        rules,
        target_groups,
        targets,
    })
}

/// The proxy's configuration from a snapshot. Target groups that no listener uses are
/// left out (ALB neither checks nor routes them: their targets are `unused`), but for
/// their draining targets. Listeners get their load balancer's idle timeout.
pub fn routing_config(s: &LbSnapshot) -> RoutingConfig {
    let idle_of: HashMap<&str, Duration> = s
        .load_balancers
        .iter()
        .map(|r| {
            (
                r.load_balancer.load_balancer_arn.as_str(),
                Duration::from_secs(u64::from(r.settings().idle_timeout_secs)),
            )
        })
        .collect();
    let mut rules_of: HashMap<&str, Vec<Rule>> = HashMap::new();
    for r in &s.rules {
        rules_of
            .entry(r.listener_arn.as_str())
            .or_default()
            .push(r.rule.clone());
    }
    let mut listeners = Vec::new();
    for l in &s.listeners {
        let mut rules = rules_of.remove(l.listener_arn.as_str()).unwrap_or_default();
        if !rules.iter().any(|r| r.is_default) {
            rules.push(Rule {
                rule_arn: format!("{}/default", l.listener_arn),
                priority: "default".into(),
                conditions: vec![],
                actions: l.default_actions.clone(),
                is_default: true,
            });
        }
        listeners.push(ListenerConfig {
            listener_arn: l.listener_arn.clone(),
            port: l.port,
            rules,
            idle_timeout: idle_of.get(l.load_balancer_arn.as_str()).copied(),
        });
    }
    let mut used = std::collections::HashSet::new();
    for l in &listeners {
        for r in &l.rules {
            for a in &r.actions {
                for (tg, _) in a.forward_targets() {
                    used.insert(tg);
                }
            }
        }
    }
    // Groups no listener forwards to are left out (not checked, not routed), except
    // for their draining targets: requests sent while the group was on a listener may
    // still run, and the proxy must keep counting them (see `idle_draining`).
    let draining_in: std::collections::HashSet<&str> = s
        .targets
        .iter()
        .filter(|t| t.draining())
        .map(|t| t.target_group_arn.as_str())
        .collect();
    let mut target_groups: HashMap<String, TargetGroupConfig> = HashMap::new();
    for tg in &s.target_groups {
        let arn = &tg.target_group.target_group_arn;
        if !used.contains(arn.as_str()) && !draining_in.contains(arn.as_str()) {
            continue;
        }
        target_groups.insert(
            arn.clone(),
            TargetGroupConfig {
                record: tg.clone(),
                targets: vec![],
            },
        );
    }
    for t in &s.targets {
        let Some(g) = target_groups.get_mut(&t.target_group_arn) else {
            continue;
        };
        if !t.draining() && !used.contains(t.target_group_arn.as_str()) {
            continue;
        }
        let Ok(ip) = t.address.parse::<IpAddr>() else {
            continue;
        };
        g.targets.push(TargetConfig {
            id: t.id.clone(),
            port: t.port,
            addr: SocketAddr::new(ip, t.port),
            draining: t.draining(),
            registration: t.registered_at.to_bits(),
        });
    }
    RoutingConfig {
        listeners,
        target_groups,
    }
}

/// Whether any change after `after` touched the ELB state (`None`: can't tell, compacted).
pub fn elb_changed_since(reader: &StateReader, after: u64) -> Option<bool> {
    match reader.changes_since(after) {
        Ok(Ok(revs)) => Some(
            revs.iter()
                .any(|r| r.changes.iter().any(|c| matches!(c, Change::Elb))),
        ),
        _ => None,
    }
}

/// Applies a configuration, logging listeners that could not be opened once per
/// distinct error.
pub async fn apply_logged(lb: &Lb, cfg: RoutingConfig, reported: &mut HashMap<String, String>) {
    let errors = lb.apply(cfg).await;
    let mut now: HashMap<String, String> = HashMap::new();
    for e in errors {
        if reported.get(&e.listener_arn) != Some(&e.message) {
            tracing::warn!(listener = %e.listener_arn, port = e.port, error = %e.message, "load balancer listener could not be opened; retrying on the next change");
        }
        now.insert(e.listener_arn, e.message);
    }
    *reported = now;
}

/// Follows the local store: rebuilds the routing configuration on every ELB change
/// (and every 10 s, which retries listeners that could not be opened). Publishes each
/// snapshot once the proxy runs it, for [`report_drains`].
pub async fn follow_local(
    node: Arc<ServerNode>,
    lb: Arc<Lb>,
    serve: bool,
    applied_tx: tokio::sync::watch::Sender<Option<Arc<LbSnapshot>>>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut applied = node.reader.subscribe();
    let mut last: Option<u64> = None;
    let mut reported = HashMap::new();
    if serve {
        let cmd = Command::ElbDrainReport {
            node: server_node_name(&node),
            idle: vec![],
            at: berth_store::now_secs(),
        };
        if tokio::time::timeout(REGISTER_WAIT, node.write(cmd))
            .await
            .is_err()
        {
            tracing::warn!("load balancer: could not make this node known to the cluster (no leader?); serving anyway");
        }
    }
    let mut retry = tokio::time::interval(Duration::from_secs(10));
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut force = false;
        tokio::select! {
            r = applied.changed() => { if r.is_err() { break; } }
            _ = retry.tick() => { force = true; }
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => break,
        }
        let rev = node.reader.revision();
        let changed = match last {
            None => true,
            Some(l) if l == rev => false,
            Some(l) => elb_changed_since(&node.reader, l).unwrap_or(true),
        };
        if !changed && (!force || reported.is_empty()) {
            last = Some(rev);
            continue;
        }
        match snapshot(&node.reader) {
            Ok(s) => {
                last = Some(s.revision);
                let mut cfg = routing_config(&s);
                if !serve {
                    // Health checks only (the leader's view feeds deployments).
                    cfg.listeners.clear();
                }
                apply_logged(&lb, cfg, &mut reported).await;
                applied_tx.send_replace(Some(Arc::new(s)));
            }
            Err(e) => tracing::warn!(error = %e, "load balancer: reading the ELB state failed"),
        }
    }
    lb.shutdown().await;
}

/// What a load balancer node reports about a snapshot the proxy already runs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DrainView {
    /// The draining targets of the snapshot to which this node will send nothing more:
    /// draining in its routing table with no request in flight (none can start: see
    /// `berth_lb::TargetStats`), or not in it at all.
    pub idle: Vec<DrainIdle>,
    /// The node serves listeners or still has requests in flight: the cluster must
    /// keep hearing from it.
    pub serving: bool,
}

pub fn drain_view(s: &LbSnapshot, lb: &Lb) -> DrainView {
    let stats = lb.stats();
    let idle = s
        .targets
        .iter()
        .filter_map(|t| {
            let until = t.drain_until?;
            let key = (t.target_group_arn.clone(), t.id.clone(), t.port);
            let idle = stats
                .get(&key)
                .is_none_or(|st| st.draining && st.in_flight == 0);
            idle.then(|| DrainIdle {
                target_group_arn: t.target_group_arn.clone(),
                id: t.id.clone(),
                port: t.port,
                drain_until: until,
            })
        })
        .collect();
    let serving = !s.listeners.is_empty() || stats.values().any(|st| st.in_flight > 0);
    DrainView { idle, serving }
}

/// When a load balancer node reports in: at once when a draining target went idle, and
/// every `LB_NODE_REPORT_SECS` while it serves (so the cluster knows whose word a drain
/// waits for).
#[derive(Debug, Default)]
pub struct DrainReporter {
    reported: std::collections::HashSet<(String, String, u16, u64)>,
    last: Option<tokio::time::Instant>,
}

fn idle_key(d: &DrainIdle) -> (String, String, u16, u64) {
    (
        d.target_group_arn.clone(),
        d.id.clone(),
        d.port,
        d.drain_until.to_bits(),
    )
}

impl DrainReporter {
    /// Whether to report `v` now.
    pub fn due(&self, v: &DrainView) -> bool {
        if !v.serving {
            return false;
        }
        let every = Duration::from_secs(berth_store::elb::LB_NODE_REPORT_SECS);
        self.last.is_none_or(|l| l.elapsed() >= every)
            || v.idle.iter().any(|d| !self.reported.contains(&idle_key(d)))
    }
    /// `idle` was written.
    pub fn sent(&mut self, idle: &[DrainIdle]) {
        self.last = Some(tokio::time::Instant::now());
        self.reported = idle.iter().map(idle_key).collect();
    }
}

/// How often a node looks for draining targets that went idle.
pub const DRAIN_CHECK_EVERY: Duration = Duration::from_millis(250);

/// A node makes itself known (an empty report) before it first routes anything, so no
/// drain ends without its word; it waits at most this long (no leader: it serves anyway).
pub const REGISTER_WAIT: Duration = Duration::from_secs(5);

fn server_node_name(node: &ServerNode) -> String {
    format!("server-{}", node.id)
}

/// A node's report loop: every `DRAIN_CHECK_EVERY` and on each applied snapshot, sends
/// the node's idle draining targets with `send` when [`DrainReporter`] says so (`send`
/// answers whether they were written). Ends when the snapshot channel closes.
pub async fn drain_report_loop<F, Fut>(
    lb: Arc<Lb>,
    mut applied: tokio::sync::watch::Receiver<Option<Arc<LbSnapshot>>>,
    mut send: F,
) where
    F: FnMut(Vec<DrainIdle>) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut reporter = DrainReporter::default();
    let mut tick = tokio::time::interval(DRAIN_CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = applied.changed() => { if r.is_err() { return; } }
            _ = tick.tick() => {}
        }
        let Some(s) = applied.borrow_and_update().clone() else {
            continue;
        };
        let v = drain_view(&s, &lb);
        if reporter.due(&v) && send(v.idle.clone()).await {
            reporter.sent(&v.idle);
        }
    }
}

/// A server's own reports (as `server-{id}`), while it serves listeners.
pub async fn report_drains(
    node: Arc<ServerNode>,
    lb: Arc<Lb>,
    applied: tokio::sync::watch::Receiver<Option<Arc<LbSnapshot>>>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let name = server_node_name(&node);
    let reports = drain_report_loop(lb, applied, |idle| {
        let node = node.clone();
        let cmd = Command::ElbDrainReport {
            node: name.clone(),
            idle,
            at: berth_store::now_secs(),
        };
        async move {
            match node.write(cmd).await {
                Ok(_) => true,
                Err(e) => {
                    tracing::debug!(error = %e.message, "drain report failed; retrying");
                    false
                }
            }
        }
    });
    tokio::select! {
        _ = reports => {}
        _ = async { let _ = shutdown.wait_for(|s| *s).await; } => {}
    }
}

/// On the leader: writes the local checker's health transitions to the store, batched.
pub async fn report_health(
    node: Arc<ServerNode>,
    lb: Arc<Lb>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut health = lb.health();
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = health.changed() => { if r.is_err() { return; } }
            _ = tick.tick() => {}
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => return,
        }
        if !node.is_leader() {
            continue;
        }
        // Coalesce a burst of transitions into one entry.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let seen = health.borrow_and_update().clone();
        let Ok(targets) = node.reader.elb_all_targets() else {
            continue;
        };
        let mut updates = Vec::new();
        for t in targets {
            if t.draining() {
                continue;
            }
            let key = (t.target_group_arn.clone(), t.id.clone(), t.port);
            if let Some(h) = seen.get(&key) {
                // Written: state changes, and the reasons of `initial`. Not written: a
                // new checker's `initial` over a settled verdict (a restarted server
                // that just became leader must not make every task unhealthy for the
                // deployments), and an unhealthy target's reason moving between codes
                // (each write wakes the controller for every load-balanced service).
                let settled = matches!(t.health.state.as_str(), "healthy" | "unhealthy");
                let changed = if h.state == "initial" {
                    !settled && *h != t.health
                } else {
                    h.state != t.health.state
                };
                if changed {
                    updates.push(TargetHealthUpdate {
                        target_group_arn: t.target_group_arn,
                        id: t.id,
                        port: t.port,
                        health: h.clone(),
                    });
                }
            }
        }
        if updates.is_empty() {
            continue;
        }
        if let Err(e) = node.write(Command::SetTargetHealth { updates }).await {
            tracing::debug!(error = %e.message, "writing target health failed; retrying");
        }
    }
}

/// Starts the server's load balancer: the proxy following the store, and the health
/// reporter (active while this server leads).
///
/// With `serve` false (`--lb-bind none`) no listener opens, but the health checks still
/// run: whichever server leads must report target health for deployments to proceed.
pub fn start(
    node: Arc<ServerNode>,
    opts: berth_lb::LbOptions,
    serve: bool,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Arc<Lb> {
    let lb = Lb::new(opts);
    let (applied_tx, applied_rx) = tokio::sync::watch::channel(None);
    tokio::spawn(follow_local(
        node.clone(),
        lb.clone(),
        serve,
        applied_tx,
        shutdown.clone(),
    ));
    if serve {
        tokio::spawn(report_drains(
            node.clone(),
            lb.clone(),
            applied_rx,
            shutdown.clone(),
        ));
    }
    tokio::spawn(report_health(node, lb.clone(), shutdown));
    lb
}

/// `GET /berth/lb/config?after=REV`: answers at once when the ELB state changed after
/// REV (or REV is absent or compacted), else waits up to `wait` for a change and then
/// answers with the current state anyway.
pub async fn long_poll(
    node: &ServerNode,
    after: Option<u64>,
    wait: Duration,
) -> Result<LbSnapshot, String> {
    if let Some(after) = after {
        let mut applied = node.reader.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        // Each revision's changes are read once: the cursor follows what was scanned.
        let mut cursor = after;
        loop {
            let now = node.reader.revision();
            if now < after {
                // This server lags behind what the caller has seen: wait for it.
            } else {
                match elb_changed_since(&node.reader, cursor) {
                    Some(false) => cursor = now,
                    _ => break,
                }
            }
            tokio::select! {
                r = applied.changed() => { if r.is_err() { break; } }
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
    }
    snapshot(&node.reader)
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_model::elb::{Action, TargetGroup, TargetHealth};

    fn tg(arn: &str) -> TargetGroupRecord {
        TargetGroupRecord {
            target_group: TargetGroup {
                target_group_arn: arn.into(),
                ..Default::default()
            },
            attributes: vec![],
        }
    }

    fn target(tg: &str, port: u16, drain_until: Option<f64>) -> TargetRecord {
        TargetRecord {
            target_group_arn: tg.into(),
            id: "i1".into(),
            port,
            address: "10.0.0.7".into(),
            drain_until,
            health: TargetHealth::healthy(),
            ..Default::default()
        }
    }

    fn snapshot_with_unused_group() -> LbSnapshot {
        LbSnapshot {
            revision: 7,
            load_balancers: vec![],
            listeners: vec![Listener {
                listener_arn: "l1".into(),
                load_balancer_arn: "lb".into(),
                port: 8080,
                protocol: "HTTP".into(),
                default_actions: vec![Action {
                    action_type: "forward".into(),
                    target_group_arn: Some("used".into()),
                    ..Default::default()
                }],
            }],
            rules: vec![],
            target_groups: vec![tg("used"), tg("unused"), tg("idle")],
            targets: vec![
                target("used", 1, None),
                target("used", 2, Some(500.0)),
                target("unused", 3, None),
                target("unused", 4, Some(500.0)),
                target("idle", 5, None),
            ],
        }
    }

    #[test]
    fn a_group_off_every_listener_keeps_only_its_draining_targets_in_the_proxy() {
        let cfg = routing_config(&snapshot_with_unused_group());
        let ports = |arn: &str| -> Vec<(u16, bool)> {
            let mut v: Vec<_> = cfg.target_groups[arn]
                .targets
                .iter()
                .map(|t| (t.port, t.draining))
                .collect();
            v.sort();
            v
        };
        assert_eq!(ports("used"), vec![(1, false), (2, true)]);
        // requests sent while it was on a listener may still run: counted, not checked
        assert_eq!(ports("unused"), vec![(4, true)]);
        assert!(!cfg.target_groups.contains_key("idle"));
        assert_eq!(cfg.listeners.len(), 1);
    }

    #[test]
    fn listeners_get_their_load_balancers_idle_timeout() {
        let mut s = snapshot_with_unused_group();
        // Without a record of its load balancer (an older server's snapshot): the node's.
        assert_eq!(routing_config(&s).listeners[0].idle_timeout, None);
        let lb = |arn: &str| {
            LoadBalancerRecord::new(berth_model::elb::LoadBalancer {
                load_balancer_arn: arn.into(),
                ..Default::default()
            })
        };
        s.load_balancers = vec![lb("lb"), lb("other")];
        assert_eq!(
            routing_config(&s).listeners[0].idle_timeout,
            Some(Duration::from_secs(60)),
            "ALB's default"
        );
        s.load_balancers[0].attributes = berth_model::elb::merge_attributes(
            &s.load_balancers[0].attributes,
            &[berth_model::elb::Attribute {
                key: "idle_timeout.timeout_seconds".into(),
                value: "5".into(),
            }],
        );
        assert_eq!(
            routing_config(&s).listeners[0].idle_timeout,
            Some(Duration::from_secs(5))
        );
        // The snapshot still reads without load balancers (older servers' JSON).
        let mut v = serde_json::to_value(&s).unwrap();
        v.as_object_mut().unwrap().remove("loadBalancers");
        let back: LbSnapshot = serde_json::from_value(v).unwrap();
        assert!(back.load_balancers.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_reports_new_idle_targets_at_once_and_otherwise_every_20_s() {
        let idle = |until: f64| DrainIdle {
            target_group_arn: "used".into(),
            id: "i1".into(),
            port: 2,
            drain_until: until,
        };
        let mut r = DrainReporter::default();
        let quiet = DrainView {
            idle: vec![],
            serving: false,
        };
        assert!(!r.due(&quiet), "a node that serves nothing says nothing");
        let serving = DrainView {
            idle: vec![],
            serving: true,
        };
        assert!(r.due(&serving), "the first report goes at once");
        r.sent(&serving.idle);
        assert!(!r.due(&serving));
        let one = DrainView {
            idle: vec![idle(500.0)],
            serving: true,
        };
        assert!(r.due(&one), "a target that went idle is reported at once");
        r.sent(&one.idle);
        assert!(!r.due(&one));
        // the same target drained again (another deadline) is news
        let again = DrainView {
            idle: vec![idle(900.0)],
            serving: true,
        };
        assert!(r.due(&again));
        tokio::time::advance(Duration::from_secs(berth_store::elb::LB_NODE_REPORT_SECS)).await;
        assert!(r.due(&one), "the heartbeat");
    }
}
