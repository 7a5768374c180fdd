//! The awsJson protocol (1.0 and 1.1): a JSON body decoded into the operation's typed
//! request, a JSON answer, and errors as `{"__type", "message"}` with `x-amzn-ErrorType`.

use berth_model::ApiError;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::HeaderValue;
use hyper::Response;
use serde::de::DeserializeOwned;

use super::respond;

pub const JSON_11: &str = "application/x-amz-json-1.1";

/// An awsJson service: the `X-Amz-Target` prefix that names it and its SigV4 signing name.
#[derive(Clone, Copy)]
pub struct JsonService {
    pub name: &'static str,
    pub target_prefix: &'static str,
    pub signing_name: &'static str,
    /// Answers one operation (the target without its prefix) with the body's JSON.
    pub dispatch: Dispatch,
}

/// A service's operation table: `(ctx, operation, body)` → the answer's JSON.
pub type Dispatch = for<'a> fn(
    &'a crate::context::Ctx,
    &'a str,
    &'a [u8],
) -> std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<serde_json::Value, ApiError>> + Send + 'a>,
>;

/// Decodes a request body into `T`; an empty body is `{}`. A bad field is named by its
/// path in the message.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body: &[u8] = if body.iter().all(|b| b.is_ascii_whitespace()) {
        b"{}"
    } else {
        body
    };
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() || path == "." {
            ApiError::serialization(format!("The request body is not valid JSON: {inner}"))
        } else {
            ApiError::serialization(format!("Invalid value for '{path}': {inner}"))
        }
    })
}

/// A 200 answer with `v` as its JSON body.
pub fn ok(v: &serde_json::Value, rid: &str) -> Response<Full<Bytes>> {
    respond(200, JSON_11, serde_json::to_vec(v).unwrap_or_default(), rid)
}

/// An error as awsJson sends it.
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
