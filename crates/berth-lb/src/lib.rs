//! berth's built-in HTTP load balancer: listeners, rules, target groups, health
//! checks and draining. It knows nothing of the store: its owner (a `berth server`
//! or a `berth lb` edge node) builds a [`RoutingConfig`] from the replicated state
//! and hands it over whole with [`Lb::apply`]; the proxy swaps its routing table at
//! once (no per-request lock). Health is checked here, per load balancer node, as
//! ALB nodes do; the owner can watch the results ([`Lb::health`]).
//!
//! INTERFACE CONTRACT (used by berth-server and the `berth` binary): keep these
//! public names and signatures.
#![forbid(unsafe_code)]

pub mod balancer;
pub mod checker;
pub mod health;
pub mod matching;
pub mod pool;
pub mod proxy;
pub mod target;

pub use target::TargetKey;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use berth_model::elb::{Rule, TargetGroupRecord, TargetHealth};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::balancer::{Algorithm, GroupTable, ListenerTable};
use crate::checker::{CheckSpec, HealthHub};
use crate::health::ROUTE_HEALTHY;
use crate::health::{health_check_disabled, HealthMachine};
use crate::proxy::{ListenerShared, Timeouts};
use crate::target::TargetState;

/// Everything the proxy needs, built whole from the replicated state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoutingConfig {
    pub listeners: Vec<ListenerConfig>,
    /// By target group ARN.
    pub target_groups: HashMap<String, TargetGroupConfig>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListenerConfig {
    pub listener_arn: String,
    pub port: u16,
    /// The listener's rules in any order, including the default rule
    /// (`IsDefault`, priority "default", whose actions are the listener's
    /// `DefaultActions`). The proxy evaluates them lowest priority first, default last.
    pub rules: Vec<Rule>,
    /// Client connections idle this long are closed (the listener's load balancer's
    /// `idle_timeout.timeout_seconds`); `None`: [`LbOptions::idle_timeout`]. A change
    /// applies to the open listener and its open connections, without closing them.
    pub idle_timeout: Option<Duration>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct TargetGroupConfig {
    pub record: TargetGroupRecord,
    pub targets: Vec<TargetConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TargetConfig {
    pub id: String,
    pub port: u16,
    /// Where to connect (the target's address and traffic port).
    pub addr: SocketAddr,
    /// Deregistered: no new requests; requests in flight finish.
    pub draining: bool,
    /// Tells registrations apart: a target registered again under the same key (a new
    /// task on a reused host port) is a new target, with fresh health and counters.
    pub registration: u64,
}

#[derive(Debug, Clone)]
pub struct LbOptions {
    /// The address listeners bind on (their port comes from each listener).
    pub bind: IpAddr,
    /// Run health checks (true for every node that routes traffic).
    pub health_checks: bool,
    /// ALB's `idle_timeout.timeout_seconds` (60 s): client and target connections idle
    /// longer are closed. A listener's own [`ListenerConfig::idle_timeout`] overrides
    /// it for its client connections.
    pub idle_timeout: Duration,
    /// No response headers from the target within this → 504.
    pub request_timeout: Duration,
    /// Connecting to a target takes longer than this → try another target / 502/504.
    pub connect_timeout: Duration,
}

impl Default for LbOptions {
    fn default() -> Self {
        LbOptions {
            bind: IpAddr::from([0, 0, 0, 0]),
            health_checks: true,
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// A listener that could not be opened (port taken, permission).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerError {
    pub listener_arn: String,
    pub port: u16,
    pub message: String,
}

/// Per-target counters, for `berth` to report and for benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TargetStats {
    /// Deregistered: gets no new requests.
    pub draining: bool,
    /// Requests whose response (body included) or upgraded connection is still open.
    /// Read after `draining`: a draining target with nothing in flight gets no request
    /// from this node any more.
    pub in_flight: usize,
    /// Requests that got a response from the target.
    pub requests: u64,
    /// Idle keep-alive connections pooled to the target.
    pub idle_connections: usize,
}

struct ListenerHandle {
    port: u16,
    local: SocketAddr,
    shared: Arc<ListenerShared>,
    /// Tells the listener's connections to finish what is in flight and close.
    stop: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

impl ListenerHandle {
    /// Stops accepting and tells the listener's connections to finish and close. The
    /// socket is dropped with the accept task, which happens soon but not before this
    /// returns: use [`ListenerHandle::close_now`] when the port must be free afterwards.
    fn close(self) {
        self.accept.abort();
        let _ = self.stop.send(true);
    }

    /// [`ListenerHandle::close`], returning once the listening socket is closed (the
    /// aborted accept task has been dropped), so its port can be bound again at once.
    async fn close_now(self) {
        self.accept.abort();
        let _ = self.stop.send(true);
        // An aborted task's future (which owns the socket) is dropped before its
        // `JoinHandle` resolves.
        let _ = self.accept.await;
    }
}

struct Checker {
    spec: CheckSpec,
    task: JoinHandle<()>,
}

/// Stops the target's checker (if any) so that it can no longer publish, then runs
/// `then` (which publishes the target's new health) under the same lock.
fn stop_checker(
    checkers: &mut HashMap<TargetKey, Checker>,
    state: &TargetState,
    then: impl FnOnce(&HealthMachine),
) {
    let m = state.hc.lock().unwrap_or_else(|e| e.into_inner());
    state.checker_gen.fetch_add(1, Ordering::Relaxed);
    if let Some(c) = checkers.remove(&state.key) {
        c.task.abort();
    }
    then(&m);
}

#[derive(Default)]
struct ApplyState {
    listeners: HashMap<String, ListenerHandle>,
    targets: HashMap<TargetKey, Arc<TargetState>>,
    cursors: HashMap<String, Arc<AtomicUsize>>,
    checkers: HashMap<TargetKey, Checker>,
    sweeper: Option<JoinHandle<()>>,
}

/// The load balancer node. Cheap to share (`Arc`).
pub struct Lb {
    opts: LbOptions,
    hub: Arc<HealthHub>,
    state: tokio::sync::Mutex<ApplyState>,
    /// Snapshots for the synchronous readers (`listening`, `stats`).
    listening: std::sync::Mutex<HashMap<String, SocketAddr>>,
    targets: Arc<std::sync::Mutex<HashMap<TargetKey, Arc<TargetState>>>>,
}

impl Lb {
    pub fn new(opts: LbOptions) -> Arc<Lb> {
        Arc::new(Lb {
            opts,
            hub: Arc::new(HealthHub::new()),
            state: tokio::sync::Mutex::new(ApplyState::default()),
            listening: Default::default(),
            targets: Default::default(),
        })
    }

    fn timeouts(&self) -> Timeouts {
        Timeouts {
            idle: self.opts.idle_timeout,
            request: self.opts.request_timeout,
            connect: self.opts.connect_timeout,
        }
    }

    /// Replace the whole routing configuration: opens listeners that are new, closes
    /// removed ones (in-flight requests finish; a new listener on a removed one's port
    /// takes over its open socket and connections instead, so the port never closes),
    /// swaps the routing table, starts and stops health checkers (a target keeps its
    /// health state across calls while it stays in its group). Returns the listeners
    /// that could not be opened; they are retried on the next call.
    pub async fn apply(&self, cfg: RoutingConfig) -> Vec<ListenerError> {
        let mut st = self.state.lock().await;
        let st = &mut *st;

        // 1. Targets: reuse the state of every target that stays (same key and address).
        let mut targets: HashMap<TargetKey, Arc<TargetState>> = HashMap::new();
        let mut groups: HashMap<String, Arc<GroupTable>> = HashMap::new();
        let mut cursors = HashMap::new();
        for (arn, tg) in &cfg.target_groups {
            let mut members = Vec::with_capacity(tg.targets.len());
            for t in &tg.targets {
                let key: TargetKey = (arn.clone(), t.id.clone(), t.port);
                if let Some(existing) = targets.get(&key) {
                    // Listed twice: keep one.
                    let _ = existing;
                    continue;
                }
                let state = match st.targets.get(&key) {
                    Some(s) if s.addr == t.addr && s.registration == t.registration => s.clone(),
                    _ => {
                        let route = if self.opts.health_checks {
                            health::ROUTE_INITIAL
                        } else {
                            ROUTE_HEALTHY
                        };
                        TargetState::new(key.clone(), t.addr, t.registration, route)
                    }
                };
                let was_draining = state.draining.swap(t.draining, Ordering::SeqCst);
                if was_draining && !t.draining {
                    // Registered again after a deregistration: health starts over.
                    *state.hc.lock().unwrap_or_else(|e| e.into_inner()) = HealthMachine::new();
                    if self.opts.health_checks {
                        state.route.store(health::ROUTE_INITIAL, Ordering::Relaxed);
                    }
                }
                members.push(state.clone());
                targets.insert(key, state);
            }
            let cursor = st.cursors.get(arn).cloned().unwrap_or_default();
            cursors.insert(arn.clone(), cursor.clone());
            groups.insert(
                arn.clone(),
                Arc::new(GroupTable {
                    arn: arn.clone(),
                    algorithm: Algorithm::parse(&tg.record.settings().algorithm),
                    targets: members,
                    cursor,
                }),
            );
        }

        // 2. Health checkers.
        for (key, old) in &st.targets {
            if targets.get(key).is_none_or(|new| !Arc::ptr_eq(new, old)) {
                stop_checker(&mut st.checkers, old, |_| {
                    if !targets.contains_key(key) {
                        self.hub.remove(key)
                    }
                });
            }
        }
        if self.opts.health_checks {
            for (arn, tg) in &cfg.target_groups {
                for t in &tg.targets {
                    let key: TargetKey = (arn.clone(), t.id.clone(), t.port);
                    let Some(state) = targets.get(&key) else {
                        continue;
                    };
                    let spec = CheckSpec::from_group(&tg.record.target_group, state.addr);
                    match (state.is_draining(), spec) {
                        (true, _) => stop_checker(&mut st.checkers, state, |_| {
                            self.hub.set(&key, &TargetHealth::draining())
                        }),
                        (false, None) => stop_checker(&mut st.checkers, state, |_| {
                            state.route.store(ROUTE_HEALTHY, Ordering::Relaxed);
                            self.hub.set(&key, &health_check_disabled());
                        }),
                        (false, Some(spec)) => {
                            let keep = st
                                .checkers
                                .get(&key)
                                .is_some_and(|c| c.spec == spec && !c.task.is_finished());
                            if !keep {
                                stop_checker(&mut st.checkers, state, |m| {
                                    state.route.store(m.route_class(), Ordering::Relaxed);
                                    self.hub.set(&key, &m.health);
                                });
                                let generation = state.checker_gen.load(Ordering::Relaxed);
                                let task = tokio::spawn(checker::run_checker(
                                    state.clone(),
                                    spec.clone(),
                                    self.hub.clone(),
                                    generation,
                                ));
                                st.checkers.insert(key.clone(), Checker { spec, task });
                            }
                        }
                    }
                }
            }
        }
        st.targets = targets;
        st.cursors = cursors;

        // 3. Listeners. Those that stay (same ARN and port) get the new table below. A
        //    removed (or moved) listener whose port a new listener wants is taken over
        //    by it: the open socket, its accept loop and its connections carry on with
        //    the new listener's table, so the port never stops accepting (closing and
        //    binding again would race the socket's close: EADDRINUSE). The other removed
        //    ones are closed, their sockets closed before any new bind.
        let wanted: HashMap<&str, &ListenerConfig> = cfg
            .listeners
            .iter()
            .map(|l| (l.listener_arn.as_str(), l))
            .collect();
        let gone: Vec<String> = st
            .listeners
            .iter()
            .filter(|(arn, h)| wanted.get(arn.as_str()).is_none_or(|l| l.port != h.port))
            .map(|(arn, _)| arn.clone())
            .collect();
        let mut gone: Vec<(String, ListenerHandle)> = gone
            .into_iter()
            .filter_map(|arn| st.listeners.remove(&arn).map(|h| (arn, h)))
            .collect();
        for l in &cfg.listeners {
            if l.port == 0 || st.listeners.contains_key(&l.listener_arn) {
                continue;
            }
            if let Some(i) = gone.iter().position(|(_, h)| h.port == l.port) {
                let (old, h) = gone.swap_remove(i);
                tracing::info!(listener = %l.listener_arn, replaces = %old, local = %h.local, "listener taken over");
                st.listeners.insert(l.listener_arn.clone(), h);
            }
        }
        for (_, h) in gone {
            h.close_now().await;
        }
        let mut errors = vec![];
        for l in &cfg.listeners {
            let table = ListenerTable::build(&l.rules, &groups);
            let client_idle = l.idle_timeout.unwrap_or(self.opts.idle_timeout);
            if let Some(h) = st.listeners.get(&l.listener_arn) {
                h.shared.swap(table);
                h.shared.set_client_idle(client_idle);
                continue;
            }
            match TcpListener::bind(SocketAddr::new(self.opts.bind, l.port)).await {
                Ok(sock) => {
                    let local = sock
                        .local_addr()
                        .unwrap_or(SocketAddr::new(self.opts.bind, l.port));
                    let shared = Arc::new(ListenerShared::new(
                        local.port(),
                        table,
                        self.timeouts(),
                        client_idle,
                    ));
                    let (stop, stop_rx) = watch::channel(false);
                    let accept = tokio::spawn(proxy::accept_loop(sock, shared.clone(), stop_rx));
                    tracing::info!(listener = %l.listener_arn, %local, "listener open");
                    st.listeners.insert(
                        l.listener_arn.clone(),
                        ListenerHandle {
                            port: l.port,
                            local,
                            shared,
                            stop,
                            accept,
                        },
                    );
                }
                Err(e) => {
                    tracing::warn!(listener = %l.listener_arn, port = l.port, error = %e, "listener bind failed");
                    errors.push(ListenerError {
                        listener_arn: l.listener_arn.clone(),
                        port: l.port,
                        message: format!("cannot listen on {}:{}: {e}", self.opts.bind, l.port),
                    });
                }
            }
        }

        // 4. Close pooled target connections idle for longer than the idle timeout.
        if st.sweeper.is_none() {
            st.sweeper = Some(tokio::spawn(sweep_pools(
                self.targets.clone(),
                self.opts.idle_timeout,
            )));
        }

        *self.listening.lock().unwrap_or_else(|e| e.into_inner()) = st
            .listeners
            .iter()
            .map(|(arn, h)| (arn.clone(), h.local))
            .collect();
        *self.targets.lock().unwrap_or_else(|e| e.into_inner()) = st.targets.clone();
        errors
    }

    /// The current health of every target this node checks; changes on every transition.
    pub fn health(&self) -> tokio::sync::watch::Receiver<HashMap<TargetKey, TargetHealth>> {
        self.hub.tx.subscribe()
    }

    /// The local addresses of the open listeners, by listener ARN.
    pub fn listening(&self) -> HashMap<String, SocketAddr> {
        self.listening
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// In-flight and served counts of every target in the current configuration.
    pub fn stats(&self) -> HashMap<TargetKey, TargetStats> {
        self.targets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, t)| {
                (
                    k.clone(),
                    TargetStats {
                        draining: t.is_draining(),
                        in_flight: t.in_flight(),
                        requests: t.served(),
                        idle_connections: t.pool.idle_count(),
                    },
                )
            })
            .collect()
    }

    /// Stop every listener and health checker.
    pub async fn shutdown(&self) {
        let mut st = self.state.lock().await;
        for (_, h) in st.listeners.drain() {
            h.close_now().await;
        }
        for (_, c) in st.checkers.drain() {
            c.task.abort();
        }
        if let Some(s) = st.sweeper.take() {
            s.abort();
        }
        st.targets.clear();
        self.listening
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.targets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

impl Drop for Lb {
    fn drop(&mut self) {
        // Dropped without `shutdown`: still stop every task this node started.
        if let Ok(mut st) = self.state.try_lock() {
            for (_, h) in st.listeners.drain() {
                h.close();
            }
            for (_, c) in st.checkers.drain() {
                c.task.abort();
            }
            if let Some(s) = st.sweeper.take() {
                s.abort();
            }
        }
    }
}

async fn sweep_pools(
    targets: Arc<std::sync::Mutex<HashMap<TargetKey, Arc<TargetState>>>>,
    idle: Duration,
) {
    let period = (idle / 2).clamp(Duration::from_millis(100), Duration::from_secs(10));
    loop {
        tokio::time::sleep(period).await;
        let list: Vec<Arc<TargetState>> = targets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for t in list {
            t.pool.prune(idle);
        }
    }
}
