//! The API front door: hyper HTTP/1.1, AWS JSON 1.1 framing, SigV4, and dispatch to the ECS
//! handlers (ELBv2's Query-protocol requests go to `elbv2`). Health and status pages are unauthenticated GETs.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use berth_model::{ApiError, ArnContext, ErrorKind};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

use crate::node::ServerNode;
use crate::sigv4;

pub const ECS_TARGET_PREFIX: &str = "AmazonEC2ContainerServiceV20141113.";
const JSON_11: &str = "application/x-amz-json-1.1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Every request must carry a valid SigV4 signature from a known access key.
    SigV4,
    /// Accept any request (local experiments only; `berth server` warns loudly).
    None,
}

#[derive(Clone)]
pub struct ApiConfig {
    pub ctx: ArnContext,
    pub auth: AuthMode,
    /// access key id -> secret
    pub keys: Arc<HashMap<String, String>>,
    /// Largest request body accepted, in bytes.
    pub body_limit: usize,
}

/// What a handler needs: the node (writes, reads), the ARN context, the caller.
pub struct Ctx {
    pub node: Arc<ServerNode>,
    pub cfg: ApiConfig,
}

impl Ctx {
    pub fn now(&self) -> f64 {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        // Millisecond precision, as ECS sends.
        (d.as_millis() as f64) / 1000.0
    }
}

/// Serves the API on `listener` until `shutdown` turns true, then lets open requests finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    ctx: Arc<Ctx>,
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

pub(crate) fn respond(
    status: u16,
    content_type: &str,
    body: Vec<u8>,
    rid: &str,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = r.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_str(content_type).unwrap_or(HeaderValue::from_static(JSON_11)),
    );
    if let Ok(v) = HeaderValue::from_str(rid) {
        h.insert("x-amzn-RequestId", v);
    }
    r
}

pub fn error_response(e: &ApiError, rid: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({"__type": e.kind.as_str(), "message": e.message});
    let mut r = respond(
        e.kind.http_status(),
        JSON_11,
        body.to_string().into_bytes(),
        rid,
    );
    if let Ok(v) = HeaderValue::from_str(e.kind.as_str()) {
        r.headers_mut().insert("x-amzn-ErrorType", v);
    }
    r
}

async fn handle(ctx: Arc<Ctx>, req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
    let rid = request_id();
    let started = std::time::Instant::now();
    if req.method() == Method::GET {
        return match req.uri().path() {
            "/healthz" => health(&ctx, &rid),
            "/berth/lb/config" => lb_config(&ctx, &req, &rid).await,
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
        return lb_report(&ctx, req, &rid).await;
    }
    if crate::elbv2::is_query_request(req.headers()) {
        return crate::elbv2::serve(&ctx, req, &rid).await;
    }
    let (result, op) = handle_post(&ctx, req).await;
    let resp = match result {
        Ok(v) => respond(
            200,
            JSON_11,
            serde_json::to_vec(&v).unwrap_or_default(),
            &rid,
        ),
        Err(e) => {
            if e.kind == ErrorKind::ServerException {
                tracing::error!(op = %op, %peer, request_id = %rid, error = %e.message, "request failed");
            }
            error_response(&e, &rid)
        }
    };
    tracing::debug!(op = %op, status = resp.status().as_u16(), elapsed_ms = started.elapsed().as_secs_f64() * 1e3, "api");
    resp
}

fn health(ctx: &Ctx, rid: &str) -> Response<Full<Bytes>> {
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

/// Whether the request carries the cluster's join token (`Authorization: Bearer <token>`),
/// as agents and `berth lb` edge nodes do.
fn join_token_ok(ctx: &Ctx, req: &Request<Incoming>) -> bool {
    let given = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    match &ctx.node.agent_settings.join_token {
        Some(t) => {
            let (a, b) = (t.as_bytes(), given.as_bytes());
            a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
        }
        None => true,
    }
}

fn no_join_token(rid: &str) -> Response<Full<Bytes>> {
    respond(
        403,
        "application/json",
        br#"{"message":"berth lb needs the cluster's join token (--join-token)"}"#.to_vec(),
        rid,
    )
}

/// `GET /berth/lb/config?after=REV`, for `berth lb` edge nodes: the whole ELB state as
/// JSON, long-polled (answers when it changed after REV, or after 25 s). Authorized by
/// the cluster's join token.
async fn lb_config(ctx: &Ctx, req: &Request<Incoming>, rid: &str) -> Response<Full<Bytes>> {
    if !join_token_ok(ctx, req) {
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
async fn lb_report(ctx: &Ctx, req: Request<Incoming>, rid: &str) -> Response<Full<Bytes>> {
    #[derive(serde::Deserialize)]
    struct Report {
        node: String,
        idle: Vec<berth_model::elb::DrainIdle>,
    }
    if !join_token_ok(ctx, &req) {
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
        at: crate::controller::now_secs(),
    };
    match ctx.node.write(cmd).await {
        Ok(_) => respond(200, "application/json", b"{}".to_vec(), rid),
        Err(e) => error_response(&e, rid),
    }
}

async fn handle_post(
    ctx: &Ctx,
    req: Request<Incoming>,
) -> (Result<serde_json::Value, ApiError>, String) {
    let (parts, body) = req.into_parts();
    let target = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let op = target
        .strip_prefix(ECS_TARGET_PREFIX)
        .unwrap_or(&target)
        .to_string();

    let body = match read_body(ctx, &parts, body).await {
        Ok(b) => b,
        Err(e) => return (Err(e), op),
    };

    if !target.starts_with(ECS_TARGET_PREFIX) {
        let msg = if target.is_empty() {
            "Missing X-Amz-Target header: this endpoint speaks the ECS JSON 1.1 protocol (X-Amz-Target: AmazonEC2ContainerServiceV20141113.<Operation>) and, for ELBv2, the Query protocol (Content-Type: application/x-www-form-urlencoded, Action=<Operation>).".to_string()
        } else {
            format!("Unknown operation target '{target}'.")
        };
        return (
            Err(ApiError::new(ErrorKind::UnknownOperationException, msg)),
            op,
        );
    }

    if let Err(e) = verify_signature(ctx, &parts, &body, "ecs") {
        return (Err(e), op);
    }

    (crate::ecs::dispatch(ctx, &op, &body).await, op)
}

/// Reads a POST body: an unsigned request (when signatures are required) is refused
/// before its body is read, and a body over the limit before or while it is read.
pub(crate) async fn read_body(
    ctx: &Ctx,
    parts: &hyper::http::request::Parts,
    body: Incoming,
) -> Result<Bytes, ApiError> {
    // An unsigned request is refused before its body is read: no buffering for strangers.
    if ctx.cfg.auth == AuthMode::SigV4 && !parts.headers.contains_key(hyper::header::AUTHORIZATION)
    {
        return Err(ApiError::new(
            ErrorKind::MissingAuthenticationTokenException,
            "Missing Authentication Token",
        ));
    }

    // Bodies over the limit are refused before they are read.
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(n) = declared {
        if n > ctx.cfg.body_limit {
            return Err(too_large(n, ctx.cfg.body_limit));
        }
    }
    match Limited::new(body, ctx.cfg.body_limit).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                return Err(too_large(
                    declared.unwrap_or(ctx.cfg.body_limit + 1),
                    ctx.cfg.body_limit,
                ));
            }
            Err(ApiError::serialization(format!(
                "Could not read the request body: {e}"
            )))
        }
    }
}

/// Checks the request's SigV4 signature for `service` (the credential-scope service:
/// `ecs`, `elasticloadbalancing`), unless the server runs with `--auth none`.
pub(crate) fn verify_signature(
    ctx: &Ctx,
    parts: &hyper::http::request::Parts,
    body: &[u8],
    service: &str,
) -> Result<(), ApiError> {
    if ctx.cfg.auth != AuthMode::SigV4 {
        return Ok(());
    }
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let signed = sigv4::SignedRequest {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query().unwrap_or(""),
        headers: &headers,
        body,
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let keys = ctx.cfg.keys.clone();
    sigv4::verify(&signed, service, now, &|k| keys.get(k).cloned()).map_err(|f| {
        let kind = match f.error_type() {
            "MissingAuthenticationTokenException" => ErrorKind::MissingAuthenticationTokenException,
            "IncompleteSignatureException" => ErrorKind::IncompleteSignatureException,
            "UnrecognizedClientException" => ErrorKind::UnrecognizedClientException,
            _ => ErrorKind::InvalidSignatureException,
        };
        ApiError::new(kind, f.message())
    })?;
    Ok(())
}

fn too_large(n: usize, limit: usize) -> ApiError {
    ApiError::client(format!(
        "Request body of {n} bytes is larger than the limit of {limit} bytes."
    ))
}
