//! Load balancer drains: a target deregistered from its group stays `draining` until
//! its deregistration delay is over (or every load balancer node reported it idle,
//! which the store decides on its own); then an `ElbSweep` removes it and tells the
//! task it belonged to to stop.

use std::time::Duration;

use berth_store::{Command, Replica};

use berth_store::now_secs;

use crate::{Reconciler, IDLE_REQUEUE};

/// Proposes an `ElbSweep` whenever the earliest drain deadline has passed.
pub struct DrainSweeper;

#[async_trait::async_trait]
impl Reconciler for DrainSweeper {
    fn name(&self) -> &'static str {
        "drains"
    }

    fn reset(&mut self) {}

    async fn pass(&mut self, replica: &dyn Replica) -> Result<Duration, String> {
        let Some(due) = replica
            .reader()
            .next_drain_deadline()
            .map_err(|e| e.to_string())?
        else {
            return Ok(IDLE_REQUEUE);
        };
        let now = now_secs();
        if due > now {
            return Ok(Duration::from_secs_f64(due - now).min(IDLE_REQUEUE));
        }
        if let Err(e) = replica.propose(Command::ElbSweep { at: now }).await {
            tracing::debug!(error = %e.message, "ElbSweep failed; retrying");
        }
        Ok(IDLE_REQUEUE)
    }
}
