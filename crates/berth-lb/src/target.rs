//! One registered target as the proxy and the checkers share it: its address, whether
//! it is routable (health) and draining, its in-flight count and its connection pool.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::health::{HealthMachine, ROUTE_HEALTHY};
use crate::pool::Pool;

/// The identity of a target inside a target group: (target group ARN, id, port).
pub type TargetKey = (String, String, u16);

/// One registered target. Kept (by [`TargetKey`]) across routing tables while the
/// target stays in its group, so its counters, health and pooled connections survive
/// an `apply`.
pub struct TargetState {
    pub key: TargetKey,
    pub addr: SocketAddr,
    pub registration: u64,
    pub(crate) draining: AtomicBool,
    pub(crate) route: AtomicU8,
    pub(crate) in_flight: AtomicUsize,
    pub(crate) served: AtomicU64,
    pub(crate) pool: Pool,
    pub(crate) hc: Mutex<HealthMachine>,
    /// Bumped (under `hc`) whenever `apply` stops or replaces this target's checker;
    /// a checker publishes only while its generation is current, so one that was
    /// being aborted mid-probe cannot overwrite `draining` or re-add a removed target.
    pub(crate) checker_gen: AtomicU64,
}

impl std::fmt::Debug for TargetState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetState")
            .field("key", &self.key)
            .field("addr", &self.addr)
            .field("draining", &self.is_draining())
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

impl TargetState {
    pub(crate) fn new(
        key: TargetKey,
        addr: SocketAddr,
        registration: u64,
        route: u8,
    ) -> Arc<TargetState> {
        Arc::new(TargetState {
            key,
            addr,
            registration,
            draining: AtomicBool::new(false),
            route: AtomicU8::new(route),
            in_flight: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            pool: Pool::default(),
            hc: Mutex::new(HealthMachine::new()),
            checker_gen: AtomicU64::new(0),
        })
    }
    /// Sequentially consistent with [`InFlight::start`]: a request that starts on a target
    /// while it turns draining either sees the flag (and goes elsewhere) or is counted
    /// before anyone who saw the flag reads `in_flight` (see `Lb::stats`).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }
    pub(crate) fn routable_healthy(&self) -> bool {
        self.route.load(Ordering::Relaxed) == ROUTE_HEALTHY
    }
}

/// Counts a request (and its whole response body, or upgraded connection) against
/// its target while alive.
pub(crate) struct InFlight(pub(crate) Arc<TargetState>);

impl InFlight {
    pub(crate) fn start(t: &Arc<TargetState>) -> InFlight {
        t.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(t.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
