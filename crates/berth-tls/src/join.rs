//! Joining a cluster, as every new machine does it: discover the CA and verify it (by
//! `--ca-cert-hash`, or by the MAC only a holder of the token's hash can make), then present
//! the token with a CSR over TLS verified by that CA, and get back a certificate. The token
//! is never sent to a server that has not proven it belongs to the cluster.

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use berth_proto::raft::join_client::JoinClient;
use berth_proto::raft::{Payload, Reply};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiscoverRequest {
    pub token_id: String,
    /// Hex, chosen by the client.
    pub nonce: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiscoverResponse {
    /// The CA certificates the cluster trusts (PEM).
    pub ca_bundle: String,
    /// [`crate::discovery_mac`] over the nonce and the bundle.
    pub mac: String,
}

/// What is joining.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Joining {
    /// An agent: its Hello (registered as the container instance before the cert is issued).
    Agent { hello: serde_json::Value },
    /// A `berth lb` edge node.
    Lb { name: String },
    /// A server, by node id.
    Server { node_id: u64 },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinRequest {
    pub token: String,
    pub csr: String,
    pub joining: Joining,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinResponse {
    pub cert: String,
    pub ca_bundle: String,
    /// Servers only: the CA's signing certificate and key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_key: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RenewRequest {
    pub csr: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RenewResponse {
    pub cert: String,
    pub ca_bundle: String,
}

/// Error texts on the cluster port start with a code; `AccessDenied` is final (a new token
/// or a new data dir is needed), anything else may be retried.
pub const ACCESS_DENIED: &str = "AccessDenied";

/// A refusal or failure from the cluster.
#[derive(Debug)]
pub enum JoinError {
    /// The cluster said no; retrying will not help.
    Refused(String),
    /// A server could not be reached or answered oddly; try again or another one.
    Retry(String),
}

impl std::fmt::Display for JoinError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JoinError::Refused(m) => write!(f, "{m}"),
            JoinError::Retry(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for JoinError {}

/// The JSON payload of a Reply, or its error.
pub fn decode_reply<T: serde::de::DeserializeOwned>(reply: Reply) -> Result<T, JoinError> {
    if !reply.error.is_empty() {
        return Err(if let Some(m) = reply.error.strip_prefix(ACCESS_DENIED) {
            JoinError::Refused(m.trim_start_matches(':').trim().to_string())
        } else {
            JoinError::Retry(reply.error)
        });
    }
    serde_json::from_slice(&reply.data)
        .map_err(|e| JoinError::Retry(format!("undecodable answer: {e}")))
}

pub fn payload<T: Serialize>(v: &T) -> Payload {
    Payload {
        data: serde_json::to_vec(v).unwrap_or_default(),
    }
}

fn status_err(addr: &str, s: tonic::Status) -> JoinError {
    if s.code() == tonic::Code::PermissionDenied || s.code() == tonic::Code::Unauthenticated {
        JoinError::Refused(format!("{addr}: {}", s.message()))
    } else {
        JoinError::Retry(format!("{addr}: {}: {}", s.code(), s.message()))
    }
}

/// Finds out which CA the server at `addr` belongs to and checks it: the bundle must contain
/// the CA with hash `pinned` if given, and carry a MAC made with the token's hash. Returns the
/// bundle (PEM).
pub async fn discover(addr: &str, token: &str, pinned: Option<&str>) -> Result<String, JoinError> {
    use rand::RngCore;
    let cfg = crate::discovery_client_config().map_err(|e| JoinError::Retry(e.to_string()))?;
    let ch = crate::channel(addr, cfg, Duration::from_secs(5))
        .map_err(|e| JoinError::Retry(e.to_string()))?;
    let (token_id, key) = crate::token_key(token);
    let mut nonce = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut nonce);
    let req = DiscoverRequest {
        token_id: token_id.clone(),
        nonce: hex::encode(nonce),
    };
    let reply = tokio::time::timeout(
        Duration::from_secs(15),
        JoinClient::new(ch).discover(payload(&req)),
    )
    .await
    .map_err(|_| JoinError::Retry(format!("{addr}: no answer within 15 s")))?
    .map_err(|s| status_err(addr, s))?
    .into_inner();
    let d: DiscoverResponse = decode_reply(reply)?;
    let hashes = crate::bundle_hashes(&d.ca_bundle)
        .map_err(|e| JoinError::Refused(format!("{addr} sent an unreadable CA bundle: {e}")))?;
    if let Some(p) = pinned {
        if !hashes.iter().any(|h| h == p) {
            return Err(JoinError::Refused(format!(
                "the server at {addr} is not the cluster you pinned: its CA is {}, --ca-cert-hash is {p}; the token was not sent",
                hashes.join(", ")
            )));
        }
    }
    // Pinned, the CA is known good; otherwise only a server that knows the token's hash
    // could have made the MAC.
    let want = crate::discovery_mac(&key, &nonce, &d.ca_bundle);
    if pinned.is_none() && !crate::same(want.as_bytes(), d.mac.as_bytes()) {
        return Err(JoinError::Refused(format!(
            "the server at {addr} could not prove it knows join token {token_id} (wrong token, or not a server of this cluster); the token was not sent"
        )));
    }
    Ok(d.ca_bundle)
}

/// Joins through `addr`: discovery, then the token and a CSR over TLS verified by the
/// discovered CA. Returns the response and the key the cert is for.
pub async fn join(
    addr: &str,
    token: &str,
    pinned: Option<&str>,
    joining: Joining,
) -> Result<(JoinResponse, String), JoinError> {
    let bundle = discover(addr, token, pinned).await?;
    let kc = crate::new_key_and_csr().map_err(|e| JoinError::Retry(e.to_string()))?;
    let cfg = crate::join_client_config(&bundle).map_err(|e| JoinError::Retry(e.to_string()))?;
    let ch = crate::channel(addr, cfg, Duration::from_secs(5))
        .map_err(|e| JoinError::Retry(e.to_string()))?;
    let req = JoinRequest {
        token: token.to_string(),
        csr: kc.csr_pem,
        joining,
    };
    let reply = tokio::time::timeout(
        Duration::from_secs(30),
        JoinClient::new(ch).join(payload(&req)),
    )
    .await
    .map_err(|_| JoinError::Retry(format!("{addr}: no answer within 30 s")))?
    .map_err(|s| status_err(addr, s))?
    .into_inner();
    let resp: JoinResponse = decode_reply(reply)?;
    Ok((resp, kc.key_pem))
}

/// Where a member keeps its TLS material: `<dir>/ca.pem`, `<dir>/<name>.pem`, `<dir>/<name>.key`.
#[derive(Debug, Clone)]
pub struct Material {
    pub bundle: String,
    pub cert: String,
    pub key: String,
}

impl Material {
    pub fn load(dir: &std::path::Path, name: &str) -> anyhow::Result<Option<Material>> {
        let read = |f: &str| std::fs::read_to_string(dir.join(f));
        match (
            read("ca.pem"),
            read(&format!("{name}.pem")),
            read(&format!("{name}.key")),
        ) {
            (Ok(bundle), Ok(cert), Ok(key)) => Ok(Some(Material { bundle, cert, key })),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e))
                if e.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(None)
            }
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                Err(anyhow!("read TLS files in {}: {e}", dir.display()))
            }
        }
    }

    pub fn save(&self, dir: &std::path::Path, name: &str) -> anyhow::Result<()> {
        // Key first: a cert without its key on disk would be useless after a crash.
        crate::write_private(&dir.join(format!("{name}.key")), &self.key)?;
        crate::write_public(&dir.join(format!("{name}.pem")), &self.cert)?;
        crate::write_public(&dir.join("ca.pem"), &self.bundle)?;
        Ok(())
    }

    pub fn identity(&self) -> anyhow::Result<crate::Identity> {
        crate::identity_of(&crate::certs_of(&self.cert)?[0])
    }

    pub fn client_config(&self) -> anyhow::Result<std::sync::Arc<rustls::ClientConfig>> {
        crate::member_client_config(&self.bundle, &self.cert, &self.key)
    }

    /// A member channel to `addr` with this material.
    pub fn channel(&self, addr: &str) -> anyhow::Result<tonic::transport::Channel> {
        crate::channel(addr, self.client_config()?, Duration::from_secs(3))
    }
}

/// Asks `addr` for a new certificate for this member's identity (a fresh key). The old
/// certificate authenticates the request.
pub async fn renew(addr: &str, current: &Material) -> anyhow::Result<Material> {
    use berth_proto::raft::certs_client::CertsClient;
    let kc = crate::new_key_and_csr()?;
    let ch = current.channel(addr)?;
    let reply = tokio::time::timeout(
        Duration::from_secs(15),
        CertsClient::new(ch).renew(payload(&RenewRequest { csr: kc.csr_pem })),
    )
    .await
    .map_err(|_| anyhow!("{addr}: no answer within 15 s"))?
    .map_err(|s| anyhow!("{addr}: {}: {}", s.code(), s.message()))?
    .into_inner();
    let r: RenewResponse = decode_reply(reply).map_err(|e| anyhow!("{e}"))?;
    let m = Material {
        bundle: r.ca_bundle,
        cert: r.cert,
        key: kc.key_pem,
    };
    let id = m.identity().context("the renewed certificate")?;
    let old = current.identity()?;
    if id.role != old.role {
        bail!(
            "{addr} renewed the certificate for {} instead of {}",
            id.role,
            old.role
        );
    }
    Ok(m)
}
