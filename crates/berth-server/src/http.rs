//! The API port: hyper HTTP/1.1 and HTTP/2. AWS API requests go to `berth_api::handle`;
//! the server's own pages are answered here: `/healthz` and `/status` (unauthenticated
//! GETs), and the `berth lb` edge feed (`/berth/lb/config`, `/berth/lb/report`,
//! authorized by the cluster's join token).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use berth_api::{error_response, respond};
use berth_model::token::TokenKind;
use berth_model::{ApiError, ErrorKind};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
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

/// Serves the API on `listener` until `shutdown` turns true, then lets open requests finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    ctx: Arc<Front>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
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
                let conn = builder.serve_connection(TokioIo::new(stream), svc).into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, %peer, "connection ended with an error");
                    }
                });
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
            "/berth/lb/config" => lb_config(&ctx, &req, &rid, &peer).await,
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
    if req.method() == Method::POST && req.uri().path() == "/berth/lb/report" {
        return lb_report(&ctx, req, &rid, &peer).await;
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

/// Whether the request carries a join token that admits a `berth lb` edge node
/// (`Authorization: Bearer <token>`): an lb token, or the servers' own `--join-token`.
/// Checked on every request, so a revoked or expired token stops working at once.
fn join_token_ok(ctx: &Front, req: &Request<Incoming>, peer: &str) -> bool {
    let given = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    match berth_store::tokens::check_presented(
        &ctx.node.reader,
        ctx.node.agent_settings.join_token.as_deref(),
        given,
        TokenKind::Lb,
        berth_store::now_secs(),
        None,
    ) {
        Ok(_) => true,
        Err(refusal) => {
            tracing::warn!(peer, reason = %refusal, "load balancer feed refused");
            false
        }
    }
}

fn no_join_token(rid: &str) -> Response<Full<Bytes>> {
    respond(
        403,
        "application/json",
        br#"{"message":"berth lb needs a join token of kind lb (berth token create --kind lb) or the servers' --join-token"}"#.to_vec(),
        rid,
    )
}

/// `GET /berth/lb/config?after=REV`, for `berth lb` edge nodes: the whole ELB state as
/// JSON, long-polled (answers when it changed after REV, or after 25 s). Authorized by
/// the cluster's join token.
async fn lb_config(
    ctx: &Front,
    req: &Request<Incoming>,
    rid: &str,
    peer: &str,
) -> Response<Full<Bytes>> {
    if !join_token_ok(ctx, req, peer) {
        return no_join_token(rid);
    }
    let after = req.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("after="))
            .and_then(|v| v.parse::<u64>().ok())
    });
    match crate::lb_runtime::long_poll(&ctx.node, after, std::time::Duration::from_secs(25)).await {
        Ok(s) => respond(
            200,
            "application/json",
            serde_json::to_vec(&s).unwrap_or_default(),
            rid,
        ),
        Err(e) => error_response(&ApiError::server(e), rid),
    }
}

/// `POST /berth/lb/report` from `berth lb` edge nodes: `{"node", "idle": [DrainIdle]}`,
/// written as an `ElbDrainReport` (see `lb_runtime`). Authorized by the join token.
async fn lb_report(
    ctx: &Front,
    req: Request<Incoming>,
    rid: &str,
    peer: &str,
) -> Response<Full<Bytes>> {
    #[derive(serde::Deserialize)]
    struct Report {
        node: String,
        idle: Vec<berth_model::elb::DrainIdle>,
    }
    if !join_token_ok(ctx, &req, peer) {
        return no_join_token(rid);
    }
    let bytes = match http_body_util::Limited::new(req.into_body(), 4 << 20)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return error_response(
                &ApiError::new(ErrorKind::SerializationException, e.to_string()),
                rid,
            )
        }
    };
    let report: Report = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => {
            return error_response(
                &ApiError::new(
                    ErrorKind::SerializationException,
                    format!("A drain report must be {{\"node\": …, \"idle\": [...]}}: {e}"),
                ),
                rid,
            )
        }
    };
    let name_ok = report.node.starts_with("edge-")
        && report.node.len() <= 200
        && report
            .node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !name_ok {
        return error_response(
            &ApiError::new(
                ErrorKind::InvalidParameterException,
                format!(
                    "A drain report's node must be named edge-…, not '{}'",
                    report.node
                ),
            ),
            rid,
        );
    }
    let cmd = berth_store::Command::ElbDrainReport {
        node: report.node,
        idle: report.idle,
        at: berth_store::now_secs(),
    };
    match ctx.node.write(cmd).await {
        Ok(_) => respond(200, "application/json", b"{}".to_vec(), rid),
        Err(e) => error_response(&e, rid),
    }
}
