#![forbid(unsafe_code)]
//! berth-api: the AWS APIs on the API port.
//!
//! * [`protocol`]: what every AWS service shares on the wire — SigV4 verification, the
//!   awsJson protocol (`X-Amz-Target`, JSON bodies, `__type` errors) and the Query
//!   protocol (form bodies in, XML out).
//! * one folder per AWS service: [`ecs`], [`elbv2`]. Each decodes and validates a
//!   request, proposes a command or reads the store, and encodes the answer.
//!
//! The API reaches the cluster only through the [`Cluster`] trait (propose a command,
//! read linearizably, relay a call to an agent), so nothing here knows Raft, sled or
//! gRPC, and the handlers run against any implementation of it.
//!
//! Adding a service: a folder here, and one line: an awsJson service's
//! [`JsonService`] (its `X-Amz-Target` prefix, signing name and operation table) in
//! [`JSON_SERVICES`]; a Query-protocol service's in [`handle`] (today every form body is
//! ELBv2's; the next Query service is told apart by its SigV4 scope or the form's
//! `Version`).

pub mod context;
pub mod ecs;
pub mod elbv2;
pub mod protocol;

use berth_model::{ApiError, ErrorKind};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};

pub use berth_store::Replica;
pub use context::{ApiConfig, AuthMode, Cluster, Ctx};
pub use protocol::json::JsonService;
pub use protocol::sigv4;
pub use protocol::{error_response, respond};

/// Every awsJson service berth answers, by target prefix.
pub const JSON_SERVICES: &[JsonService] = &[ecs::SERVICE];

/// Answers one AWS API request: picks the service by the request (an awsJson
/// `X-Amz-Target` prefix, or a Query-protocol form body), checks that the SigV4
/// credential scope names that service, and dispatches to its handler.
pub async fn handle(
    ctx: &Ctx,
    req: Request<Incoming>,
    rid: &str,
    peer: &str,
) -> Response<Full<Bytes>> {
    if protocol::query::is_query_request(req.headers()) {
        return elbv2::serve(ctx, req, rid, peer).await;
    }
    let started = std::time::Instant::now();
    let (parts, body) = req.into_parts();
    let target = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let service = JSON_SERVICES
        .iter()
        .find(|s| target.starts_with(s.target_prefix));
    let op = service
        .and_then(|s| target.strip_prefix(s.target_prefix))
        .unwrap_or(&target)
        .to_string();
    let result = async {
        let body = protocol::read_body(ctx, &parts, body).await?;
        let Some(service) = service else {
            let msg = if target.is_empty() {
                "Missing X-Amz-Target header: this endpoint speaks the ECS JSON 1.1 protocol (X-Amz-Target: AmazonEC2ContainerServiceV20141113.<Operation>) and, for ELBv2, the Query protocol (Content-Type: application/x-www-form-urlencoded, Action=<Operation>).".to_string()
            } else {
                format!("Unknown operation target '{target}'.")
            };
            return Err(ApiError::new(ErrorKind::UnknownOperationException, msg));
        };
        protocol::verify_signature(ctx, &parts, &body, service.signing_name)?;
        (service.dispatch)(ctx, &op, &body).await
    }
    .await;
    let resp = match result {
        Ok(v) => protocol::json::ok(&v, rid),
        Err(e) => {
            if e.kind == ErrorKind::ServerException {
                tracing::error!(op = %op, peer, request_id = %rid, error = %e.message, "request failed");
            }
            error_response(&e, rid)
        }
    };
    tracing::debug!(op = %op, status = resp.status().as_u16(), elapsed_ms = started.elapsed().as_secs_f64() * 1e3, "api");
    resp
}

#[cfg(test)]
mod tests;
