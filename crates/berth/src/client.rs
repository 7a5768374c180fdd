//! A small signed client of berth's API for the `berth` CLI's own commands (`berth logs`),
//! configured the way the AWS CLI is: `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`
//! (+ `AWS_SESSION_TOKEN`), `AWS_ENDPOINT_URL_ECS`/`AWS_ENDPOINT_URL`, `AWS_DEFAULT_REGION`,
//! or a profile in `~/.aws/config` and `~/.aws/credentials` (`--profile`, `AWS_PROFILE`, else
//! the `berth` profile `berth dev` writes, else `default`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value;

pub struct Client {
    host: String,
    /// HTTPS: the roots the server is verified with (`AWS_CA_BUNDLE`, the profile's
    /// `ca_bundle`, else the system's).
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    path_prefix: String,
    access_key: String,
    secret: String,
    session_token: Option<String>,
    region: String,
}

/// `[section]` → key → value, for the AWS CLI's ini files.
fn read_ini(path: &PathBuf) -> HashMap<String, HashMap<String, String>> {
    let mut out: HashMap<String, HashMap<String, String>> = HashMap::new();
    let Ok(text) = std::fs::read_to_string(path) else {
        return out;
    };
    let mut section = String::new();
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with('#') || l.starts_with(';') || l.is_empty() {
            continue;
        }
        if let Some(s) = l.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = s.trim().trim_start_matches("profile ").trim().to_string();
            continue;
        }
        if let Some((k, v)) = l.split_once('=') {
            out.entry(section.clone())
                .or_default()
                .insert(k.trim().to_string(), v.trim().to_string());
        }
    }
    out
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Client {
    pub fn from_env(profile: Option<&str>, endpoint: Option<&str>) -> anyhow::Result<Client> {
        let home = env("HOME").map(PathBuf::from).unwrap_or_default();
        let creds = read_ini(
            &env("AWS_SHARED_CREDENTIALS_FILE")
                .map(PathBuf::from)
                .unwrap_or_else(|| home.join(".aws/credentials")),
        );
        let config = read_ini(
            &env("AWS_CONFIG_FILE")
                .map(PathBuf::from)
                .unwrap_or_else(|| home.join(".aws/config")),
        );
        let profile = profile
            .map(str::to_string)
            .or_else(|| env("AWS_PROFILE"))
            .unwrap_or_else(|| {
                if env("AWS_ACCESS_KEY_ID").is_none() && creds.contains_key("berth") {
                    "berth".into()
                } else {
                    "default".into()
                }
            });
        let p_creds = creds.get(&profile).cloned().unwrap_or_default();
        let p_conf = config.get(&profile).cloned().unwrap_or_default();
        let pick = |env_name: &str, key: &str| env(env_name).or_else(|| p_creds.get(key).cloned());
        let access_key = pick("AWS_ACCESS_KEY_ID", "aws_access_key_id");
        let secret = pick("AWS_SECRET_ACCESS_KEY", "aws_secret_access_key");
        let (Some(access_key), Some(secret)) = (access_key, secret) else {
            bail!("no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or use a profile (--profile; `berth dev` writes the profile `berth`)");
        };
        let endpoint = endpoint
            .map(str::to_string)
            .or_else(|| env("BERTH_ENDPOINT"))
            .or_else(|| env("AWS_ENDPOINT_URL_ECS"))
            .or_else(|| env("AWS_ENDPOINT_URL"))
            .or_else(|| p_conf.get("endpoint_url").cloned())
            .unwrap_or_else(|| "https://127.0.0.1:7700".into());
        let (rest, https) = match (endpoint.strip_prefix("https://"), endpoint.strip_prefix("http://")) {
            (Some(r), _) => (r, true),
            (None, Some(r)) => (r, false),
            _ => bail!("endpoint {endpoint:?} must start with https:// (or http:// for a server run with --api-insecure-http)"),
        };
        let tls = if https {
            let bundle_path = env("AWS_CA_BUNDLE")
                .or_else(|| p_conf.get("ca_bundle").cloned())
                .unwrap_or_else(|| "/etc/ssl/certs/ca-certificates.crt".into());
            let pem = std::fs::read_to_string(&bundle_path).with_context(|| {
                format!(
                    "read the CA bundle {bundle_path} (AWS_CA_BUNDLE or the profile's ca_bundle)"
                )
            })?;
            let mut cfg = rustls::ClientConfig::builder_with_provider(berth_tls::provider())
                .with_safe_default_protocol_versions()?
                .with_root_certificates(
                    berth_tls::roots(&pem).with_context(|| format!("CA bundle {bundle_path}"))?,
                )
                .with_no_client_auth();
            cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
            Some(std::sync::Arc::new(cfg))
        } else {
            None
        };
        let (host, path_prefix) = match rest.split_once('/') {
            Some((h, p)) => (h.to_string(), format!("/{}", p.trim_end_matches('/'))),
            None => (rest.to_string(), String::new()),
        };
        let region = env("AWS_DEFAULT_REGION")
            .or_else(|| env("AWS_REGION"))
            .or_else(|| p_conf.get("region").cloned())
            .unwrap_or_else(|| "us-east-1".into());
        Ok(Client {
            host,
            tls,
            path_prefix,
            access_key,
            secret,
            session_token: env("AWS_SESSION_TOKEN")
                .or_else(|| p_creds.get("aws_session_token").cloned()),
            region,
        })
    }

    /// One signed ECS JSON 1.1 call; an error answer becomes `Err` with ECS's message.
    pub async fn call(&self, op: &str, body: &Value) -> anyhow::Result<Value> {
        let body = serde_json::to_vec(body)?;
        let path = if self.path_prefix.is_empty() {
            "/".to_string()
        } else {
            format!("{}/", self.path_prefix)
        };
        let mut headers = vec![
            (
                "Content-Type".to_string(),
                "application/x-amz-json-1.1".to_string(),
            ),
            ("Host".to_string(), self.host.clone()),
            (
                "X-Amz-Target".to_string(),
                format!("AmazonEC2ContainerServiceV20141113.{op}"),
            ),
        ];
        if let Some(t) = &self.session_token {
            headers.push(("X-Amz-Security-Token".to_string(), t.clone()));
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let extra = berth_api::sigv4::sign(
            "POST",
            &path,
            "",
            &headers,
            &body,
            &self.access_key,
            &self.secret,
            &self.region,
            "ecs",
            now,
        );
        let mut b = Request::post(path.as_str());
        for (k, v) in headers.iter().chain(extra.iter()) {
            b = b.header(k.as_str(), v.as_str());
        }
        let req = b.body(Full::new(Bytes::from(body)))?;
        let stream = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::net::TcpStream::connect(&self.host),
        )
        .await
        .map_err(|_| anyhow::anyhow!("connect {}: timed out", self.host))?
        .with_context(|| format!("connect {}", self.host))?;
        let mut sender = match &self.tls {
            None => {
                let (sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                sender
            }
            Some(cfg) => {
                let name = self
                    .host
                    .rsplit_once(':')
                    .map(|(h, _)| h)
                    .unwrap_or(&self.host);
                let name = name.trim_start_matches('[').trim_end_matches(']');
                let server_name = rustls::pki_types::ServerName::try_from(name.to_string())
                    .with_context(|| format!("endpoint host {name}"))?;
                let tls = tokio_rustls::TlsConnector::from(cfg.clone())
                    .connect(server_name, stream)
                    .await
                    .with_context(|| format!("TLS with {} (is AWS_CA_BUNDLE or the profile's ca_bundle the cluster's CA?)", self.host))?;
                let (sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                sender
            }
        };
        let resp = tokio::time::timeout(Duration::from_secs(30), sender.send_request(req))
            .await
            .map_err(|_| anyhow::anyhow!("{op}: no answer from {} within 30 s", self.host))??;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await?.to_bytes();
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status != 200 {
            let kind = v["__type"].as_str().unwrap_or("Error");
            let msg = v["message"].as_str().unwrap_or("");
            bail!("{kind}: {msg}");
        }
        Ok(v)
    }
}
