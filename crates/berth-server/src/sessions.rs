//! The agent sessions a server holds: who may join and how agents are watched
//! ([`AgentSettings`]), the registry of open sessions that requests for an agent go
//! through ([`Hub`]: its logs), and the fan-out of the store's changes to them
//! ([`Watchers`]): one task per server reads each new revision's changes once and hands
//! every session only the changes of its own instance. The session protocol itself is
//! [`crate::agent_service`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_model::agent::{LogsRequest, LogsResponse, ServerMessage};
use berth_model::ArnContext;
use berth_proto::agent::Frame;
use berth_store::{Change, StateReader};
use tokio::sync::mpsc;
use tonic::Status;

/// How agents are admitted and watched.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// Agents must present this token. `None`: every agent is refused.
    pub join_token: Option<String>,
    pub ctx: ArnContext,
    /// How often agents heartbeat (told to them in `Welcome`).
    pub heartbeat_interval: Duration,
    /// An agent silent for this long is disconnected (`agentConnected=false`).
    pub heartbeat_timeout: Duration,
    /// A disconnected instance's tasks are marked STOPPED this long after it was last
    /// heard from (services then replace them elsewhere; the agent, if it comes back,
    /// stops them).
    pub lost_after: Duration,
}

impl AgentSettings {
    pub fn new(ctx: ArnContext) -> Self {
        AgentSettings {
            join_token: None,
            ctx,
            heartbeat_interval: Duration::from_secs(5),
            heartbeat_timeout: Duration::from_secs(15),
            lost_after: Duration::from_secs(30),
        }
    }
}

/// A session: its number (to unregister only itself) and its outbound stream.
pub(crate) type SessionEntry = (u64, mpsc::Sender<Result<Frame, Status>>);

/// The agent sessions this server holds, so requests for an agent (its logs) can reach it.
#[derive(Default)]
pub struct Hub {
    sessions: std::sync::Mutex<std::collections::HashMap<(String, String), SessionEntry>>,
    waiters: std::sync::Mutex<
        std::collections::HashMap<String, tokio::sync::oneshot::Sender<LogsResponse>>,
    >,
    pub(crate) next: std::sync::atomic::AtomicU64,
    /// The desired-state watches of the sessions, fed by one fan-out task.
    pub(crate) watchers: Arc<Watchers>,
}

/// How long a logs request waits for the agent.
pub const LOGS_TIMEOUT: Duration = Duration::from_secs(10);

impl Hub {
    pub(crate) fn register(
        &self,
        cluster: &str,
        instance: &str,
        tx: mpsc::Sender<Result<Frame, Status>>,
    ) -> u64 {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.sessions
            .lock()
            .unwrap()
            .insert((cluster.to_string(), instance.to_string()), (id, tx));
        id
    }

    pub(crate) fn unregister(&self, cluster: &str, instance: &str, id: u64) {
        let mut s = self.sessions.lock().unwrap();
        let key = (cluster.to_string(), instance.to_string());
        if s.get(&key).map(|(i, _)| *i) == Some(id) {
            s.remove(&key);
        }
    }

    pub(crate) fn answer(&self, resp: LogsResponse) {
        if let Some(tx) = self.waiters.lock().unwrap().remove(&resp.request_id) {
            let _ = tx.send(resp);
        }
    }

    /// Asks the agent of this instance, if its session is on this server (`None` if not).
    pub async fn logs(
        &self,
        cluster: &str,
        instance: &str,
        req: LogsRequest,
    ) -> Option<Result<LogsResponse, String>> {
        let tx = self
            .sessions
            .lock()
            .unwrap()
            .get(&(cluster.to_string(), instance.to_string()))
            .map(|(_, tx)| tx.clone())?;
        let (wtx, wrx) = tokio::sync::oneshot::channel();
        let rid = req.request_id.clone();
        self.waiters.lock().unwrap().insert(rid.clone(), wtx);
        if !send(&tx, &ServerMessage::Logs(req)).await {
            self.waiters.lock().unwrap().remove(&rid);
            return Some(Err("the agent's session just ended".into()));
        }
        let res = match tokio::time::timeout(LOGS_TIMEOUT, wrx).await {
            Ok(Ok(r)) => Ok(r),
            _ => Err(format!("the agent did not answer within {LOGS_TIMEOUT:?}")),
        };
        self.waiters.lock().unwrap().remove(&rid);
        Some(res)
    }
}

/// What the store's changes mean for one session: the changes of its own instance, each
/// with the revision that made it.
#[derive(Debug, Default)]
pub(crate) struct Notice {
    /// The revision this notice brings the session up to.
    pub(crate) revision: u64,
    /// Tasks of the session's instance that changed.
    pub(crate) tasks: Vec<(u64, String)>,
    /// The revision at which the instance record itself last changed, if it did.
    pub(crate) instance: Option<u64>,
}

/// Notices queued per session before it counts as lagging (and is resynced).
pub(crate) const NOTICES_QUEUED: usize = 64;

pub(crate) struct Watch {
    id: u64,
    /// Changes at or before this revision were applied before the session registered (it
    /// reads its full set afterwards, so it has them).
    from: u64,
    tx: mpsc::Sender<Notice>,
    /// Set when a notice could not be queued: the session must re-read its full set.
    lagged: Arc<AtomicBool>,
}

#[derive(Default)]
pub(crate) struct WatchState {
    sessions: HashMap<(String, String), Watch>,
    /// The revision the fan-out has routed up to; `None` while no fan-out task runs.
    pos: Option<u64>,
}

/// The sessions' watches of the store, and the one task that feeds them (started with the
/// first session, ended when the last is gone).
#[derive(Default)]
pub struct Watchers {
    state: Mutex<WatchState>,
}

impl Watchers {
    /// Watches the changes of (cluster, instance) from now on. Register before reading the
    /// full set: nothing applied after registration is missed.
    pub(crate) fn watch(
        self: &Arc<Self>,
        reader: &StateReader,
        cluster: &str,
        instance: &str,
        id: u64,
    ) -> (mpsc::Receiver<Notice>, Arc<AtomicBool>) {
        let (tx, rx) = mpsc::channel(NOTICES_QUEUED);
        let lagged = Arc::new(AtomicBool::new(false));
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let from = match st.pos {
            Some(p) => p,
            None => {
                let p = reader.revision();
                st.pos = Some(p);
                tokio::spawn(fan_out(self.clone(), reader.clone(), p));
                p
            }
        };
        st.sessions.insert(
            (cluster.to_string(), instance.to_string()),
            Watch {
                id,
                from,
                tx,
                lagged: lagged.clone(),
            },
        );
        (rx, lagged)
    }

    fn unwatch(&self, cluster: &str, instance: &str, id: u64) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let key = (cluster.to_string(), instance.to_string());
        if st.sessions.get(&key).map(|w| w.id) == Some(id) {
            st.sessions.remove(&key);
        }
    }
}

/// Ends a session's watch however the session ends.
pub(crate) struct WatchGuard<'a> {
    pub(crate) watchers: &'a Watchers,
    pub(crate) cluster: &'a str,
    pub(crate) instance: &'a str,
    pub(crate) id: u64,
}

impl Drop for WatchGuard<'_> {
    fn drop(&mut self) {
        self.watchers.unwatch(self.cluster, self.instance, self.id);
    }
}

/// The fan-out: reads every new revision's changes once and queues each session the
/// changes of its instance. Ends when no session is left (or the store is gone).
pub(crate) async fn fan_out(w: Arc<Watchers>, reader: StateReader, mut pos: u64) {
    let mut applied = reader.subscribe();
    loop {
        if applied.changed().await.is_err() {
            let mut st = w.state.lock().unwrap_or_else(|p| p.into_inner());
            st.pos = None;
            // Dropping the senders ends the sessions' watches.
            st.sessions.clear();
            return;
        }
        let current = *applied.borrow_and_update();
        if current <= pos {
            continue;
        }
        let changes = reader.changes_since(pos);
        let mut st = w.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.sessions.is_empty() {
            st.pos = None;
            return;
        }
        let revs = match changes {
            Ok(Ok(revs)) => revs,
            other => {
                match other {
                    Ok(Err(compacted)) => {
                        tracing::warn!(%compacted, "the agent sessions' watch fell behind the store; resending every agent its full set")
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the store's changes; resending every agent its full set")
                    }
                    Ok(Ok(_)) => {}
                }
                for s in st.sessions.values() {
                    s.lagged.store(true, Ordering::SeqCst);
                    let _ = s.tx.try_send(Notice {
                        revision: current,
                        ..Default::default()
                    });
                }
                pos = current;
                st.pos = Some(pos);
                continue;
            }
        };
        let upto = revs
            .last()
            .map(|r| r.revision)
            .unwrap_or(current)
            .max(current);
        let mut out: HashMap<(String, String), Notice> = HashMap::new();
        for rc in revs {
            for ch in rc.changes {
                let (key, task) = match ch {
                    Change::Task {
                        cluster,
                        id,
                        instance_id,
                    } => ((cluster, instance_id), Some(id)),
                    Change::ContainerInstance { cluster, id } => ((cluster, id), None),
                    _ => continue,
                };
                match st.sessions.get(&key) {
                    Some(s) if rc.revision > s.from => {}
                    _ => continue,
                }
                let n = out.entry(key).or_default();
                match task {
                    Some(id) => n.tasks.push((rc.revision, id)),
                    None => n.instance = Some(rc.revision),
                }
            }
        }
        for (key, mut n) in out {
            n.revision = upto;
            if let Some(s) = st.sessions.get(&key) {
                if s.tx.try_send(n).is_err() {
                    // Full (or the session is ending): it re-reads everything instead.
                    s.lagged.store(true, Ordering::SeqCst);
                }
            }
        }
        pos = upto;
        st.pos = Some(pos);
    }
}

pub(crate) async fn send(tx: &mpsc::Sender<Result<Frame, Status>>, msg: &ServerMessage) -> bool {
    let data = match serde_json::to_vec(msg) {
        Ok(d) => d,
        Err(_) => return false,
    };
    tx.send(Ok(Frame { data })).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_model::agent::InstanceResources;
    use berth_model::agent::{Hello, AGENT_PROTOCOL_VERSION};
    use berth_model::{Cluster, Container, Reservation};
    use berth_store::Command;
    use berth_store::{NewTask, StateMachine, StoreOptions, TypeConfig};
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

    struct Store {
        sm: StateMachine,
        reader: StateReader,
        index: u64,
        _dir: tempfile::TempDir,
    }

    fn ctx() -> ArnContext {
        ArnContext::new("us-east-1", "123456789012")
    }

    impl Store {
        async fn new() -> Store {
            let dir = tempfile::tempdir().unwrap();
            let opened = berth_store::open(
                dir.path(),
                &StoreOptions {
                    fsync: false,
                    cache_capacity: 1 << 20,
                },
            )
            .unwrap();
            let mut s = Store {
                sm: opened.state_machine,
                reader: opened.reader,
                index: 0,
                _dir: dir,
            };
            s.apply(Command::CreateCluster {
                cluster: Cluster {
                    cluster_arn: Some(ctx().cluster("c")),
                    cluster_name: Some("c".into()),
                    status: Some("ACTIVE".into()),
                    ..Default::default()
                },
                tags: vec![],
            })
            .await;
            for id in ["i1", "i2"] {
                s.apply(Command::RegisterContainerInstance {
                    ctx: ctx(),
                    hello: hello(id),
                    at: 100.0,
                    token: None,
                })
                .await;
            }
            s
        }

        async fn apply(&mut self, cmd: Command) -> u64 {
            self.index += 1;
            let entry: Entry<TypeConfig> = Entry {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), self.index),
                payload: EntryPayload::Normal(berth_store::Request::new(cmd)),
            };
            self.sm.apply(vec![entry]).await.unwrap();
            self.index
        }

        async fn run(&mut self, task: &str, instance: &str) -> u64 {
            self.apply(Command::RunTasks {
                ctx: ctx(),
                cluster: "c".into(),
                tasks: vec![NewTask {
                    task_id: task.into(),
                    task_definition_arn: ctx().task_definition("web", 1),
                    family: "web".into(),
                    revision: 1,
                    instance_id: instance.into(),
                    group: "family:web".into(),
                    containers: vec![Container {
                        name: Some("app".into()),
                        image: Some("busybox".into()),
                        ..Default::default()
                    }],
                    reservation: Reservation {
                        cpu: 1,
                        memory: 1,
                        ports: vec![],
                        ports_udp: vec![],
                    },
                    launch_type: "EC2".into(),
                    ..Default::default()
                }],
                client_token: None,
                at: 101.0,
            })
            .await
        }
    }

    fn hello(id: &str) -> Hello {
        Hello {
            protocol_version: AGENT_PROTOCOL_VERSION,
            join_token: "t".into(),
            cluster: "c".into(),
            instance_id: id.into(),
            hostname: id.into(),
            host_ip: "10.0.0.1".into(),
            resources: InstanceResources {
                cpu: 4096,
                memory: 4096,
                ports: vec![],
                ports_udp: vec![],
            },
            attributes: vec![],
            agent_version: "0".into(),
            runtime_version: "0".into(),
        }
    }

    async fn next(rx: &mut mpsc::Receiver<Notice>) -> Notice {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a notice within 5 s")
            .expect("the fan-out is running")
    }

    async fn settle(w: &Watchers, revision: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while w.state.lock().unwrap().pos < Some(revision) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the fan-out is stuck"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test]
    async fn each_session_gets_only_its_instances_changes_once_per_revision() {
        let mut s = Store::new().await;
        let w = Arc::new(Watchers::default());
        let (mut rx1, lag1) = w.watch(&s.reader, "c", "i1", 1);
        let (mut rx2, _) = w.watch(&s.reader, "c", "i2", 2);
        let r1 = s.run("t1", "i1").await;
        let n = next(&mut rx1).await;
        assert_eq!(n.tasks, vec![(r1, "t1".to_string())]);
        assert_eq!(n.revision, r1);
        let r2 = s.run("t2", "i2").await;
        let n = next(&mut rx2).await;
        assert_eq!(n.tasks, vec![(r2, "t2".to_string())]);
        assert!(rx1.try_recv().is_err(), "i1 hears nothing of i2's task");
        // The instance record changing (a heartbeat) is flagged with its revision.
        let r3 = s
            .apply(Command::SetAgentConnected {
                cluster: "c".into(),
                instance_id: "i1".into(),
                connected: true,
                at: 102.0,
            })
            .await;
        let n = next(&mut rx1).await;
        assert_eq!((n.instance, n.tasks.len()), (Some(r3), 0));
        assert!(!lag1.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_session_registered_later_gets_nothing_from_before_and_a_full_queue_lags() {
        let mut s = Store::new().await;
        let w = Arc::new(Watchers::default());
        let (mut rx1, lag1) = w.watch(&s.reader, "c", "i1", 1);
        s.run("t1", "i1").await;
        next(&mut rx1).await;
        // i2's session registers after t1: it is told only what comes later.
        let (mut rx2, _) = w.watch(&s.reader, "c", "i2", 2);
        let r = s.run("t2", "i2").await;
        assert_eq!(next(&mut rx2).await.tasks, vec![(r, "t2".to_string())]);
        // i1 stops reading: once its queue is full it is marked to resync.
        for k in 0..NOTICES_QUEUED + 2 {
            let r = s.run(&format!("u{k}"), "i1").await;
            // One notice per revision: let the fan-out route each before the next.
            settle(&w, r).await;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !lag1.load(Ordering::SeqCst) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "never marked lagged"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Another session replacing it (same instance, new id) is not unwatched by the old.
        let (_rx1b, _) = w.watch(&s.reader, "c", "i1", 3);
        w.unwatch("c", "i1", 1);
        assert_eq!(w.state.lock().unwrap().sessions.len(), 2);
        // With no session left, the fan-out ends at the next revision.
        w.unwatch("c", "i1", 3);
        w.unwatch("c", "i2", 2);
        s.run("t9", "i2").await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while w.state.lock().unwrap().pos.is_some() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the fan-out kept running"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
