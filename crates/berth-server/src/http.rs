//! The API port: HTTPS (HTTP/1.1 and HTTP/2 over rustls) unless `--api-insecure-http`.
//! AWS API requests go to `berth_api::handle`; the server's own pages are answered here:
//! `/healthz` and `/status` (unauthenticated GETs). The `berth lb` edge feed is on the
//! cluster port (mutual TLS, lb certificates).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use berth_api::{error_response, respond};
use berth_model::{ApiError, ErrorKind};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

use crate::node::ServerNode;

/// What the API port serves: the AWS APIs (`api`) and this node's own pages.
pub struct Front {
    pub node: Arc<ServerNode>,
    pub api: berth_api::Ctx,
}

/// The API port's TLS configuration; replaced whole when the operator's certificate is
/// reloaded (SIGHUP), used by every connection accepted after that.
pub struct ApiTls {
    cfg: std::sync::RwLock<Arc<rustls::ServerConfig>>,
}

impl ApiTls {
    pub fn new(cfg: Arc<rustls::ServerConfig>) -> Arc<ApiTls> {
        Arc::new(ApiTls {
            cfg: std::sync::RwLock::new(cfg),
        })
    }

    pub fn set(&self, cfg: Arc<rustls::ServerConfig>) {
        *self.cfg.write().unwrap_or_else(|p| p.into_inner()) = cfg;
    }

    fn get(&self) -> Arc<rustls::ServerConfig> {
        self.cfg.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Serves the API on `listener` until `shutdown` turns true, then lets open requests finish.
/// With `tls`, HTTPS only; without, plain HTTP.
pub async fn serve(
    listener: tokio::net::TcpListener,
    ctx: Arc<Front>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    tls: Option<Arc<ApiTls>>,
) -> anyhow::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let ctx = ctx.clone();
                let svc = hyper::service::service_fn(move |req| {
                    let ctx = ctx.clone();
                    async move { Ok::<_, Infallible>(handle(ctx, req, peer).await) }
                });
                match &tls {
                    None => {
                        let conn = builder.serve_connection(TokioIo::new(stream), svc).into_owned();
                        let conn = graceful.watch(conn);
                        tokio::spawn(async move {
                            if let Err(e) = conn.await {
                                tracing::debug!(error = %e, %peer, "connection ended with an error");
                            }
                        });
                    }
                    Some(tls) => {
                        let acceptor = tokio_rustls::TlsAcceptor::from(tls.get());
                        let builder = builder.clone();
                        let watcher = graceful.watcher();
                        tokio::spawn(async move {
                            let stream = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                                Ok(Ok(s)) => s,
                                Ok(Err(e)) => {
                                    tracing::debug!(error = %e, %peer, "API: TLS handshake failed");
                                    return;
                                }
                                Err(_) => return,
                            };
                            let conn = builder.serve_connection(TokioIo::new(stream), svc).into_owned();
                            if let Err(e) = watcher.watch(conn).await {
                                tracing::debug!(error = %e, %peer, "connection ended with an error");
                            }
                        });
                    }
                }
            }
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => break,
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(Duration::from_secs(10)) => tracing::warn!("open API connections did not finish within 10 s"),
    }
    Ok(())
}

fn request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

async fn handle(
    ctx: Arc<Front>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let peer = peer.to_string();
    let rid = request_id();
    if req.method() == Method::GET {
        return match req.uri().path() {
            "/healthz" => health(&ctx, &rid),
            "/status" => respond(
                200,
                "application/json",
                serde_json::to_vec(&ctx.node.metrics_json()).unwrap_or_default(),
                &rid,
            ),
            _ => error_response(
                &ApiError::new(
                    ErrorKind::UnknownOperationException,
                    format!("No route for GET {}", req.uri().path()),
                ),
                &rid,
            ),
        };
    }
    berth_api::handle(&ctx.api, req, &rid, &peer).await
}

fn health(ctx: &Front, rid: &str) -> Response<Full<Bytes>> {
    let leader = ctx.node.leader();
    let body = serde_json::json!({
        "status": if leader.is_some() { "ok" } else { "no-leader" },
        "nodeId": ctx.node.id,
        "leaderId": leader.as_ref().map(|l| l.id),
        "isLeader": ctx.node.is_leader(),
        "lastApplied": ctx.node.reader.revision(),
    });
    respond(
        if leader.is_some() { 200 } else { 503 },
        "application/json",
        body.to_string().into_bytes(),
        rid,
    )
}
