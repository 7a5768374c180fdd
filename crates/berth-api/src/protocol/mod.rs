//! What every AWS service on the API port shares: reading a request body within the
//! limit, SigV4 verification, and the two wire protocols ([`json`] for awsJson 1.0/1.1,
//! [`query`] + [`xml`] for the Query protocol).

pub mod json;
pub mod query;
pub mod sigv4;
pub mod xml;

use std::time::{SystemTime, UNIX_EPOCH};

use berth_model::{ApiError, ErrorKind};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Response, StatusCode};

use crate::context::{AuthMode, Ctx};

pub use json::error_response;

/// A response with `body`, its content type and the request id header.
pub fn respond(status: u16, content_type: &str, body: Vec<u8>, rid: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = r.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_str(content_type).unwrap_or(HeaderValue::from_static(json::JSON_11)),
    );
    if let Ok(v) = HeaderValue::from_str(rid) {
        h.insert("x-amzn-RequestId", v);
    }
    r
}

/// Reads a POST body: an unsigned request (when signatures are required) is refused
/// before its body is read, and a body over the limit before or while it is read.
pub async fn read_body(
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
pub fn verify_signature(
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
