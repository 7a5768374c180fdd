//! The agent's side of the session: dial a server, say Hello, apply desired tasks, send
//! heartbeats and reports, and on any failure reconnect — to the next known server — with
//! capped, jittered backoff (250 ms → 10 s). Reports the server has not acknowledged are sent
//! again on the next connection; the per-task sequence makes that harmless.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use berth_model::agent::{AgentMessage, Hello, ServerMessage};
use berth_proto::agent::agent_session_client::AgentSessionClient;
use berth_proto::agent::Frame;
use rand::Rng;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::engine::Engine;

/// Why a session ended for good (the agent should exit rather than retry).
#[derive(Debug, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Fatal {
    pub code: String,
    pub message: String,
}

pub struct SessionConfig {
    pub servers: Vec<String>,
    pub hello: Hello,
}

/// Runs sessions forever; returns only on a fatal refusal (bad token, version) or when
/// `shutdown` fires.
pub async fn run(
    engine: Arc<Engine>,
    cfg: SessionConfig,
    registered: tokio::sync::watch::Sender<Option<String>>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), Fatal> {
    let mut servers = cfg.servers.clone();
    let mut idx = 0usize;
    let mut backoff = Duration::from_millis(250);
    let mut first_fail_logged = false;
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        let addr = servers[idx % servers.len()].clone();
        let res = tokio::select! {
            r = one_session(&engine, &addr, &cfg.hello, &registered, &mut servers) => r,
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => return Ok(()),
        };
        match res {
            Ok(connected_for) => {
                if connected_for > Duration::from_secs(10) {
                    backoff = Duration::from_millis(250);
                }
                tracing::warn!(server = addr, "session with the server ended; reconnecting");
                first_fail_logged = false;
            }
            Err(SessionEnd::Fatal(f)) => return Err(f),
            Err(SessionEnd::Retry(e)) => {
                if !first_fail_logged {
                    tracing::warn!(
                        server = addr,
                        error = e,
                        "cannot reach the server; retrying (other servers too)"
                    );
                    first_fail_logged = true;
                } else {
                    tracing::debug!(server = addr, error = e, "still cannot reach the server");
                }
            }
        }
        let _ = registered.send(None);
        idx += 1;
        let jitter = rand::thread_rng().gen_range(0.8..1.2);
        tokio::select! {
            _ = tokio::time::sleep(backoff.mul_f64(jitter)) => {}
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => return Ok(()),
        }
        backoff = (backoff * 3 / 2).min(Duration::from_secs(10));
    }
}

enum SessionEnd {
    Fatal(Fatal),
    Retry(String),
}

fn frame(msg: &AgentMessage) -> Frame {
    Frame {
        data: serde_json::to_vec(msg).unwrap_or_default(),
    }
}

async fn one_session(
    engine: &Arc<Engine>,
    addr: &str,
    hello: &Hello,
    registered: &tokio::sync::watch::Sender<Option<String>>,
    servers: &mut Vec<String>,
) -> Result<Duration, SessionEnd> {
    let url = if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let endpoint = tonic::transport::Endpoint::from_shared(url)
        .map_err(|e| {
            SessionEnd::Fatal(Fatal {
                code: "BadServerAddress".into(),
                message: format!("{addr}: {e}"),
            })
        })?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10));
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| SessionEnd::Retry(format!("connect {addr}: {e}")))?;
    let mut client = AgentSessionClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(16 << 20);
    let (tx, rx) = mpsc::channel::<Frame>(256);
    tx.send(frame(&AgentMessage::Hello(Box::new(hello.clone()))))
        .await
        .map_err(|_| SessionEnd::Retry("session closed".into()))?;
    let mut inbound = client
        .session(ReceiverStream::new(rx))
        .await
        .map_err(|e| SessionEnd::Retry(format!("open session on {addr}: {e}")))?
        .into_inner();
    let started = std::time::Instant::now();
    let mut heartbeat = tokio::time::interval(Duration::from_secs(5));
    let mut sent: HashMap<String, u64> = HashMap::new();
    let mut welcomed = false;
    let mut synced = false;
    loop {
        tokio::select! {
            msg = inbound.message() => {
                let f = match msg {
                    Ok(Some(f)) => f,
                    Ok(None) => return Ok(started.elapsed()),
                    Err(e) => return if welcomed { Ok(started.elapsed()) } else { Err(SessionEnd::Retry(e.to_string())) },
                };
                let msg: ServerMessage = match serde_json::from_slice(&f.data) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "undecodable message from the server");
                        continue;
                    }
                };
                match msg {
                    ServerMessage::Welcome { container_instance_arn, servers: list, heartbeat_interval_ms } => {
                        welcomed = true;
                        tracing::info!(server = addr, container_instance = container_instance_arn, "registered with the cluster");
                        engine.with_state(|st| st.container_instance_arn = Some(container_instance_arn.clone()));
                        let _ = registered.send(Some(container_instance_arn));
                        for s in list {
                            if !servers.contains(&s) {
                                servers.push(s);
                            }
                        }
                        heartbeat = tokio::time::interval(Duration::from_millis(heartbeat_interval_ms.max(200)));
                    }
                    ServerMessage::Desired { full, tasks, .. } => {
                        engine.apply_desired(full, tasks).await;
                        if full {
                            synced = true;
                            // Resend everything the server does not have yet.
                            sent.clear();
                            engine.reports_ready.notify_one();
                        }
                    }
                    ServerMessage::Ack { task_arn, seq } => engine.ack(&task_arn, seq).await,
                    ServerMessage::Logs(req) => {
                        let tx = tx.clone();
                        let dir = engine.cfg.data_dir.clone();
                        tokio::spawn(async move {
                            let resp = tokio::task::spawn_blocking(move || crate::logs::serve(&dir, &req)).await;
                            if let Ok(resp) = resp {
                                let _ = tx.send(frame(&AgentMessage::Logs(resp))).await;
                            }
                        });
                    }
                    ServerMessage::Error { code, message } => {
                        let fatal = matches!(code.as_str(), "AccessDenied" | "UnsupportedVersion" | "BadMessage");
                        if fatal {
                            return Err(SessionEnd::Fatal(Fatal { code, message }));
                        }
                        tracing::warn!(code, message, "the server ended the session");
                        if code == "InstanceDeregistered" {
                            return Err(SessionEnd::Fatal(Fatal { code, message }));
                        }
                        return Err(SessionEnd::Retry(format!("{code}: {message}")));
                    }
                }
            }
            _ = heartbeat.tick() => {
                if tx.send(frame(&AgentMessage::Heartbeat)).await.is_err() {
                    return Ok(started.elapsed());
                }
            }
            _ = engine.reports_ready.notified(), if synced => {
                let reports = engine.pending_reports(&sent);
                if reports.is_empty() {
                    continue;
                }
                for r in &reports {
                    sent.insert(r.task_arn.clone(), r.seq);
                }
                if tx.send(frame(&AgentMessage::Report { reports })).await.is_err() {
                    return Ok(started.elapsed());
                }
            }
        }
    }
}
