//! Container instances whose agent went quiet. Leader only, once a second (not on every
//! change: it looks at every instance, and agents' heartbeats are changes):
//!
//! * an instance not heard from within the heartbeat timeout is marked disconnected
//!   (`agentConnected=false`: its server may have died with the session);
//! * the tasks of an instance disconnected for longer than `lost_after` are marked
//!   STOPPED ([`lost_machine`]), so services replace them on other machines;
//! * tasks stopped longer ago than [`STOPPED_TASK_RETENTION`] are purged.

use std::time::{Duration, Instant};

use berth_model::ContainerInstanceRecord;
use berth_store::{now_secs, Command, Replica};

use crate::Reconciler;

/// How long a STOPPED task stays describable (as ECS promises).
pub const STOPPED_TASK_RETENTION: Duration = Duration::from_secs(3600);

/// How often stopped tasks are purged.
const PURGE_EVERY: Duration = Duration::from_secs(60);

/// The agent timeouts the watcher enforces.
#[derive(Debug, Clone)]
pub struct InstanceSettings {
    /// An agent silent for this long is disconnected.
    pub heartbeat_timeout: Duration,
    /// A disconnected instance's tasks are marked STOPPED this long after it was last
    /// heard from.
    pub lost_after: Duration,
}

pub struct InstanceWatcher {
    settings: InstanceSettings,
    last_purge: Instant,
}

impl InstanceWatcher {
    pub fn new(settings: InstanceSettings) -> Self {
        InstanceWatcher {
            settings,
            last_purge: Instant::now(),
        }
    }

    fn every(&self) -> Duration {
        Duration::from_secs(1).min(self.settings.heartbeat_timeout / 2)
    }
}

#[async_trait::async_trait]
impl Reconciler for InstanceWatcher {
    fn name(&self) -> &'static str {
        "instances"
    }

    fn wakes_on_change(&self) -> bool {
        false
    }

    fn reset(&mut self) {}

    async fn pass(&mut self, replica: &dyn Replica) -> Result<Duration, String> {
        let timeout = self.settings.heartbeat_timeout;
        let lost_after = self.settings.lost_after;
        let now = now_secs();
        let clusters = replica.reader().clusters().map_err(|e| e.to_string())?;
        let purge = self.last_purge.elapsed() >= PURGE_EVERY;
        if purge {
            self.last_purge = Instant::now();
        }
        for c in clusters {
            let name = c.cluster_name.clone().unwrap_or_default();
            if purge {
                let _ = replica
                    .propose(Command::PurgeStoppedTasks {
                        cluster: name.clone(),
                        before: now - STOPPED_TASK_RETENTION.as_secs_f64(),
                    })
                    .await;
            }
            let Ok(instances) = replica.reader().container_instances(&name) else {
                continue;
            };
            for ci in instances {
                let connected = ci.instance.agent_connected.unwrap_or(false);
                if !connected && ci.last_seen + lost_after.as_secs_f64() < now {
                    lost_machine(replica, &name, &ci, now).await;
                    continue;
                }
                if connected && ci.last_seen + timeout.as_secs_f64() < now {
                    let id = ci.instance.ec2_instance_id.clone().unwrap_or_default();
                    tracing::warn!(
                        cluster = name,
                        instance = id,
                        "agent missed its heartbeat deadline; marking it disconnected"
                    );
                    let _ = replica
                        .propose(Command::SetAgentConnected {
                            cluster: name.clone(),
                            instance_id: id,
                            connected: false,
                            at: now,
                        })
                        .await;
                }
            }
        }
        Ok(self.every())
    }
}

/// An instance whose agent has been gone past the grace period: its tasks that are not
/// STOPPED yet become STOPPED, so services replace them on other machines. The agent,
/// if it returns, no longer finds them in its desired set and stops them.
async fn lost_machine(
    replica: &dyn Replica,
    cluster: &str,
    ci: &ContainerInstanceRecord,
    now: f64,
) {
    let id = ci.id().to_string();
    let Ok(tasks) = replica.reader().tasks_on_instance(cluster, &id) else {
        return;
    };
    let live = tasks
        .iter()
        .filter(|t| t.task.last_status() != "STOPPED")
        .count();
    if live == 0 {
        return;
    }
    let since = (now - ci.last_seen).max(0.0).round() as u64;
    tracing::warn!(
        cluster,
        instance = id,
        tasks = live,
        "agent lost for {since}s; marking its tasks STOPPED"
    );
    let _ = replica
        .propose(Command::StopInstanceTasks {
            cluster: cluster.to_string(),
            instance_id: id.clone(),
            reason: format!(
                "Container instance {id} lost contact with the cluster: its agent has not been heard from for {since}s"
            ),
            stop_code: "TerminationNotice".into(),
            at: now,
        })
        .await;
}
