#![forbid(unsafe_code)]
//! berth-control: the reconcilers that run on the Raft leader only.
//!
//! * [`services`]: keeps every service's tasks and deployments where the pure
//!   `berth_scheduler::service::reconcile` says they should be.
//! * [`drains`]: ends load balancer deregistrations whose delay is over.
//! * [`instances`]: disconnects instances whose agent went quiet, stops the tasks of
//!   lost machines, purges old stopped tasks.
//!
//! Each is a [`Reconciler`]: one pass over the store at its current revision that
//! proposes commands (carrying the version they were computed from, so a stale one is
//! refused by the store rather than applied) and returns when it wants to look again.
//! [`run`] is the one loop around all of them: it wakes a reconciler on every applied
//! change or when its requeue is due, runs it only while this server leads, and drops
//! its caches when leadership is lost or a pass fails — so a new leader simply resumes
//! from the store.

pub mod drains;
pub mod instances;
pub mod services;

use std::sync::Arc;
use std::time::Duration;

use berth_store::{Command, Replica, Response};

/// How long a reconciler waits, at most, between passes when it asks for nothing else
/// (and after a failed pass).
pub const IDLE_REQUEUE: Duration = Duration::from_millis(500);

/// Bursts of changes (agent reports) are coalesced into one pass: a woken reconciler
/// waits this long before it reads the store.
pub const COALESCE: Duration = Duration::from_millis(50);

/// A leader-only control loop, as a pass over the store.
#[async_trait::async_trait]
pub trait Reconciler: Send {
    /// For logs.
    fn name(&self) -> &'static str;
    /// Whether an applied change wakes it (else it runs on its requeue only).
    fn wakes_on_change(&self) -> bool {
        true
    }
    /// Forget every cache: this server stopped leading, or a pass failed.
    fn reset(&mut self);
    /// One pass at the store's current revision. Returns when to run again at the
    /// latest (it also runs on every applied change).
    async fn pass(&mut self, replica: &dyn Replica) -> Result<Duration, String>;
}

/// Runs `reconciler` until `shutdown`, doing work only while this server leads.
pub async fn run<R: Reconciler>(
    replica: Arc<dyn Replica>,
    mut reconciler: R,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut applied = replica.reader().subscribe();
    let on_change = reconciler.wakes_on_change();
    let mut next = tokio::time::Instant::now() + IDLE_REQUEUE;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            r = applied.changed(), if on_change => { if r.is_err() { return; } }
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => return,
        }
        if *shutdown.borrow() {
            return;
        }
        if !replica.is_leader() {
            // A follower keeps nothing: a later term starts from the store.
            reconciler.reset();
            next = tokio::time::Instant::now() + IDLE_REQUEUE;
            continue;
        }
        if on_change {
            tokio::time::sleep(COALESCE).await;
        }
        let requeue = match reconciler.pass(&*replica).await {
            Ok(after) => after,
            Err(e) => {
                tracing::warn!(reconciler = reconciler.name(), error = %e, "pass failed");
                reconciler.reset();
                IDLE_REQUEUE
            }
        };
        next = tokio::time::Instant::now() + requeue;
    }
}

/// What the store said to a version-checked command.
#[derive(Debug)]
pub enum Proposed {
    /// Applied; the store's answer.
    Applied(Response),
    /// Refused because the record moved since the decision was computed (a user's
    /// update, or the same decision proposed twice across a leader change): recompute.
    Conflict,
}

/// Proposes a command computed from a version of the store.
pub async fn propose_checked(replica: &dyn Replica, cmd: Command) -> Result<Proposed, String> {
    match replica.propose(cmd).await {
        Ok(Response::Conflict) => Ok(Proposed::Conflict),
        Ok(Response::Error { error }) => Err(error.message),
        Ok(r) => Ok(Proposed::Applied(r)),
        Err(e) => Err(e.message),
    }
}

/// Every reconciler's settings.
#[derive(Debug, Clone)]
pub struct ControlSettings {
    pub services: services::ServiceSettings,
    pub instances: instances::InstanceSettings,
}

/// Starts every reconciler of a server; each ends on `shutdown`.
pub fn start(
    replica: Arc<dyn Replica>,
    settings: ControlSettings,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    tokio::spawn(run(
        replica.clone(),
        services::ServiceReconciler::new(settings.services),
        shutdown.clone(),
    ));
    tokio::spawn(run(
        replica.clone(),
        instances::InstanceWatcher::new(settings.instances),
        shutdown.clone(),
    ));
    tokio::spawn(run(replica, drains::DrainSweeper, shutdown));
}

#[cfg(test)]
mod tests;
