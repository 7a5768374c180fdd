//! Join tokens (a berth extension on the ECS endpoint, like GetTaskLogs; `berth token`
//! calls them): CreateJoinToken, ListJoinTokens, RevokeJoinToken. The secret of a new
//! token is in CreateJoinToken's answer only; the cluster keeps its SHA-256.

use berth_model::token::{JoinToken, TokenKind, LEGACY_TOKEN_ID, TOKEN_ID_LEN, TOKEN_SECRET_LEN};
use berth_model::ApiError;
use berth_store::Response;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::common::{required, store_err, to_value, unexpected};
use crate::context::Ctx;

/// The longest a token may live: ten years.
const MAX_TTL_SECONDS: f64 = 10.0 * 365.0 * 86400.0;

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub(super) struct CreateJoinTokenRequest {
    kind: Option<String>,
    ttl_seconds: Option<f64>,
    max_uses: Option<i64>,
    description: Option<String>,
}

/// A token as the API shows it (never its secret or hash).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TokenView<'a> {
    id: &'a str,
    kind: &'a str,
    description: &'a str,
    created_at: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_uses: Option<u32>,
    uses: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    revoked_at: Option<f64>,
}

fn view(t: &JoinToken) -> TokenView<'_> {
    TokenView {
        id: &t.id,
        kind: t.kind.as_str(),
        description: &t.description,
        created_at: t.created_at,
        expires_at: t.expires_at,
        max_uses: t.max_uses,
        uses: t.uses,
        revoked_at: t.revoked_at,
    }
}

/// `n` random lowercase letters and digits.
fn random_chars(n: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(n);
    while out.len() < n {
        for (i, b) in uuid::Uuid::new_v4().into_bytes().into_iter().enumerate() {
            // Bytes 6 and 8 carry the UUID's version and variant bits; 252 = 7 * 36:
            // rejecting the rest keeps every character equally likely.
            if i != 6 && i != 8 && b < 252 && out.len() < n {
                out.push(ALPHABET[(b % 36) as usize] as char);
            }
        }
    }
    out
}

pub(super) async fn create_join_token(
    ctx: &Ctx,
    req: CreateJoinTokenRequest,
) -> Result<Value, ApiError> {
    let kind = TokenKind::parse(required(&req.kind, "kind")?).map_err(ApiError::invalid)?;
    if let Some(t) = req.ttl_seconds {
        if !(1.0..=MAX_TTL_SECONDS).contains(&t) {
            return Err(ApiError::invalid(format!(
                "ttlSeconds must be between 1 and {MAX_TTL_SECONDS}, not {t}."
            )));
        }
    }
    let max_uses = match req.max_uses {
        None => None,
        Some(n) if (1..=1_000_000).contains(&n) => Some(n as u32),
        Some(n) => {
            return Err(ApiError::invalid(format!(
                "maxUses must be between 1 and 1000000, not {n}."
            )))
        }
    };
    let description = req.description.unwrap_or_default();
    if description.chars().count() > 256 || description.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "description must be at most 256 characters, without control characters.",
        ));
    }
    let now = ctx.now();
    let (id, secret) = (random_chars(TOKEN_ID_LEN), random_chars(TOKEN_SECRET_LEN));
    let token = JoinToken {
        id: id.clone(),
        kind,
        description,
        secret_sha256: berth_store::tokens::hash_secret(&secret),
        created_at: now,
        expires_at: req.ttl_seconds.map(|t| now + t),
        max_uses,
        uses: 0,
        revoked_at: None,
    };
    match ctx
        .propose(berth_store::Command::CreateJoinToken { token })
        .await?
    {
        Response::JoinToken { token } => Ok(json!({
            "token": format!("{id}.{secret}"),
            "joinToken": to_value(&view(&token))?,
        })),
        other => Err(unexpected(other)),
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub(super) struct ListJoinTokensRequest {}

pub(super) async fn list_join_tokens(
    ctx: &Ctx,
    _req: ListJoinTokensRequest,
) -> Result<Value, ApiError> {
    ctx.cluster.read_barrier().await?;
    let mut tokens = ctx.reader().join_tokens().map_err(store_err)?;
    if !tokens.iter().any(|t| t.id == LEGACY_TOKEN_ID) {
        // The servers' own token (`--join-token`) is stored only once it is revoked.
        tokens.insert(
            0,
            JoinToken {
                id: LEGACY_TOKEN_ID.into(),
                kind: TokenKind::Agent,
                description: "the servers' --join-token (<data-dir>/join-token)".into(),
                secret_sha256: String::new(),
                created_at: 0.0,
                expires_at: None,
                max_uses: None,
                uses: 0,
                revoked_at: None,
            },
        );
    }
    let views: Vec<TokenView> = tokens.iter().map(view).collect();
    Ok(json!({ "joinTokens": to_value(&views)? }))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub(super) struct RevokeJoinTokenRequest {
    id: Option<String>,
}

pub(super) async fn revoke_join_token(
    ctx: &Ctx,
    req: RevokeJoinTokenRequest,
) -> Result<Value, ApiError> {
    let id = required(&req.id, "id")?;
    // A whole token pasted instead of its id: use the id, never log the secret.
    let id = id.split_once('.').map(|(i, _)| i).unwrap_or(id);
    match ctx
        .propose(berth_store::Command::RevokeJoinToken {
            id: id.to_string(),
            at: ctx.now(),
        })
        .await?
    {
        Response::JoinToken { token } => Ok(json!({ "joinToken": to_value(&view(&token))? })),
        other => Err(unexpected(other)),
    }
}
