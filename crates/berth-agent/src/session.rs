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
    /// Mutual TLS (`None`: plain gRPC, for benchmarks' simulated clusters only).
    pub tls: Option<TlsSetup>,
}

/// How the agent gets and keeps its certificate: `<data-dir>/tls/` holds it once it joined
/// with the token; it is renewed over the cluster port when a third of its lifetime is left.
#[derive(Debug, Clone)]
pub struct TlsSetup {
    pub dir: std::path::PathBuf,
    pub token: String,
    /// `--ca-cert-hash`, normalized.
    pub pinned: Option<String>,
}

type Creds = Arc<std::sync::RwLock<Option<berth_tls::join::Material>>>;

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The agent's certificate, joining through `addr` with the token when it has none (or it
/// expired while the machine was off).
async fn ensure_creds(
    tls: &TlsSetup,
    creds: &Creds,
    addr: &str,
    hello: &Hello,
) -> Result<berth_tls::join::Material, SessionEnd> {
    let current = creds.read().unwrap_or_else(|p| p.into_inner()).clone();
    let current = match current {
        Some(m) => Some(m),
        None => berth_tls::join::Material::load(&tls.dir, "agent").map_err(|e| {
            SessionEnd::Fatal(Fatal {
                code: "BadTlsFiles".into(),
                message: format!("{e:#}"),
            })
        })?,
    };
    if let Some(m) = current {
        let expired = m
            .identity()
            .map(|i| i.not_after <= now_unix())
            .unwrap_or(true);
        if !expired {
            *creds.write().unwrap_or_else(|p| p.into_inner()) = Some(m.clone());
            return Ok(m);
        }
        tracing::warn!(dir = %tls.dir.display(), "this machine's certificate has expired; joining again with the join token");
    }
    let mut hello = hello.clone();
    hello.join_token = String::new();
    let joining = berth_tls::join::Joining::Agent {
        hello: serde_json::to_value(&hello).unwrap_or_default(),
    };
    let (resp, key) = berth_tls::join::join(addr, &tls.token, tls.pinned.as_deref(), joining)
        .await
        .map_err(|e| match e {
            berth_tls::join::JoinError::Refused(m) => SessionEnd::Fatal(Fatal {
                code: "AccessDenied".into(),
                message: m,
            }),
            berth_tls::join::JoinError::Retry(m) => {
                SessionEnd::Retry(format!("join through {addr}: {m}"))
            }
        })?;
    let m = berth_tls::join::Material {
        bundle: resp.ca_bundle,
        cert: resp.cert,
        key,
    };
    m.save(&tls.dir, "agent").map_err(|e| {
        SessionEnd::Fatal(Fatal {
            code: "BadTlsFiles".into(),
            message: format!("{e:#}"),
        })
    })?;
    tracing::info!(server = addr, ca = %tls.dir.join("ca.pem").display(), "joined the cluster: got this machine's certificate");
    *creds.write().unwrap_or_else(|p| p.into_inner()) = Some(m.clone());
    Ok(m)
}

/// Renews the certificate when it is due, through any server, for as long as the agent runs.
async fn renew_loop(
    tls: TlsSetup,
    creds: Creds,
    servers: Arc<std::sync::Mutex<Vec<String>>>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut i = 0usize;
    loop {
        let current = creds.read().unwrap_or_else(|p| p.into_inner()).clone();
        let wait = match current.as_ref().and_then(|m| m.identity().ok()) {
            Some(id) => id.check_interval(now_unix()),
            None => Duration::from_secs(1),
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => return,
        }
        // The certificate now (a reconnect may have joined anew meanwhile).
        let Some(m) = creds.read().unwrap_or_else(|p| p.into_inner()).clone() else {
            continue;
        };
        let Ok(id) = m.identity() else { continue };
        if !id.due_for_renewal(now_unix()) || id.not_after <= now_unix() {
            continue;
        }
        let list = servers.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if list.is_empty() {
            continue;
        }
        let addr = &list[i % list.len()];
        match berth_tls::join::renew(addr, &m).await {
            Ok(new) => match new.save(&tls.dir, "agent") {
                Ok(()) => {
                    tracing::info!(server = addr, "renewed this machine's certificate");
                    *creds.write().unwrap_or_else(|p| p.into_inner()) = Some(new);
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "could not save the renewed certificate")
                }
            },
            Err(e) => {
                tracing::warn!(server = addr, error = %format!("{e:#}"), "renewing this machine's certificate failed; trying again");
                i += 1;
            }
        }
    }
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
    let creds: Creds = Default::default();
    let shared_servers = Arc::new(std::sync::Mutex::new(servers.clone()));
    if let Some(tls) = &cfg.tls {
        tokio::spawn(renew_loop(
            tls.clone(),
            creds.clone(),
            shared_servers.clone(),
            shutdown.clone(),
        ));
    }
    let mut idx = 0usize;
    let mut backoff = Duration::from_millis(250);
    let mut first_fail_logged = false;
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        let addr = servers[idx % servers.len()].clone();
        let session = async {
            let material = match &cfg.tls {
                Some(tls) => Some(ensure_creds(tls, &creds, &addr, &cfg.hello).await?),
                None => None,
            };
            one_session(
                &engine,
                &addr,
                &cfg.hello,
                material.as_ref(),
                &registered,
                &mut servers,
            )
            .await
        };
        let res = tokio::select! {
            r = session => r,
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
        *shared_servers.lock().unwrap_or_else(|p| p.into_inner()) = servers.clone();
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
    material: Option<&berth_tls::join::Material>,
    registered: &tokio::sync::watch::Sender<Option<String>>,
    servers: &mut Vec<String>,
) -> Result<Duration, SessionEnd> {
    if let Some(m) = material {
        let ch = m.channel(addr).map_err(|e| {
            SessionEnd::Fatal(Fatal {
                code: "BadServerAddress".into(),
                message: format!("{addr}: {e:#}"),
            })
        })?;
        let mut hello = hello.clone();
        // The certificate is the credential now; the token is not sent again.
        hello.join_token = String::new();
        return session_on(engine, addr, &hello, ch, registered, servers).await;
    }
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
    session_on(engine, addr, hello, channel, registered, servers).await
}

async fn session_on(
    engine: &Arc<Engine>,
    addr: &str,
    hello: &Hello,
    channel: tonic::transport::Channel,
    registered: &tokio::sync::watch::Sender<Option<String>>,
    servers: &mut Vec<String>,
) -> Result<Duration, SessionEnd> {
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
