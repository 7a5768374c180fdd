#![forbid(unsafe_code)]
//! berth's certificates: the cluster CA, who a certificate says its holder is, the rustls
//! configurations of the cluster port and the API, and the dialer every cluster client
//! (servers, agents, `berth lb` edge nodes) uses.
//!
//! - Every certificate berth issues names its holder in a SAN URI: `berth://server/<node id>`,
//!   `berth://agent/<cluster>/<instance id>` or `berth://lb/<name>`, and the join token it
//!   was issued under as `berth://token/<id>`. Servers' cluster certs also carry the DNS name
//!   [`SERVER_NAME`], which is what clients verify (not an address: servers move and NAT).
//! - A new machine verifies the cluster before it shows its token: by the CA's hash
//!   (`--ca-cert-hash sha256:…`, the SHA-256 of the CA's SubjectPublicKeyInfo, as kubeadm
//!   prints), or, without one, by a MAC over the CA that only a holder of the token's hash can
//!   compute (kubeadm's discovery-token signature). See [`discovery_mac`].
//! - On the cluster port, a connection offering ALPN [`JOIN_ALPN`] is a join: no client cert,
//!   and only the join service answers it. Every other connection must present a cert from
//!   the cluster CA or the handshake fails.

pub mod join;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use hmac::{Hmac, Mac};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use sha2::{Digest, Sha256};

/// The DNS name on every server's cluster certificate; cluster clients verify servers by it.
pub const SERVER_NAME: &str = "server.berth.cluster";
/// ALPN a joining machine offers: the cluster port then asks for no client certificate.
pub const JOIN_ALPN: &[u8] = b"berth-join/1";
/// ALPN of every other cluster-port connection (gRPC over HTTP/2).
pub const H2_ALPN: &[u8] = b"h2";

/// Lifetime of the CA: ten years (rotate with `berth ca rotate`).
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86_400);

/// The crypto provider berth uses everywhere (ring).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What a certificate's holder is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// A server, by Raft node id.
    Server(u64),
    /// A container instance's agent.
    Agent { cluster: String, instance: String },
    /// A `berth lb` edge node.
    Lb(String),
}

impl Role {
    pub fn uri(&self) -> String {
        match self {
            Role::Server(id) => format!("berth://server/{id}"),
            Role::Agent { cluster, instance } => format!("berth://agent/{cluster}/{instance}"),
            Role::Lb(name) => format!("berth://lb/{name}"),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Role::Server(_) => "server",
            Role::Agent { .. } => "agent",
            Role::Lb(_) => "lb",
        }
    }

    fn parse(uri: &str) -> Option<Role> {
        let rest = uri.strip_prefix("berth://")?;
        let (kind, name) = rest.split_once('/')?;
        match kind {
            "server" => name.parse().ok().map(Role::Server),
            "agent" => {
                let (cluster, instance) = name.split_once('/')?;
                Some(Role::Agent {
                    cluster: cluster.into(),
                    instance: instance.into(),
                })
            }
            "lb" => Some(Role::Lb(name.into())),
            _ => None,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Role::Server(id) => write!(f, "server {id}"),
            Role::Agent { cluster, instance } => write!(f, "agent {cluster}/{instance}"),
            Role::Lb(n) => write!(f, "lb {n}"),
        }
    }
}

/// Who a verified certificate says its holder is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub role: Role,
    /// The join token it was issued under (`legacy` for the servers' own token).
    pub token: Option<String>,
    /// Hex serial number.
    pub serial: String,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
}

impl Identity {
    /// Whether a third of its lifetime or less is left (time to renew).
    pub fn due_for_renewal(&self, now: i64) -> bool {
        let life = (self.not_after - self.not_before).max(1);
        now >= self.not_after - life / 3
    }

    /// How long a holder may wait before checking [`Identity::due_for_renewal`] again:
    /// a twentieth of the lifetime, and never past a quarter of what is left.
    pub fn check_interval(&self, now: i64) -> Duration {
        let life = (self.not_after - self.not_before).max(1) as f64;
        let left = (self.not_after - now).max(0) as f64;
        Duration::from_secs_f64((life / 20.0).min(left / 4.0).clamp(0.5, 60.0))
    }
}

/// Reads the berth identity out of a certificate (one already verified by the handshake).
pub fn identity_of(der: &[u8]) -> anyhow::Result<Identity> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| anyhow!("unreadable certificate: {e}"))?;
    let mut role = None;
    let mut token = None;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(uri) = name {
                if let Some(t) = uri.strip_prefix("berth://token/") {
                    token = Some(t.to_string());
                } else if let Some(r) = Role::parse(uri) {
                    role = Some(r);
                }
            }
        }
    }
    let role = role.ok_or_else(|| anyhow!("the certificate names no berth identity"))?;
    Ok(Identity {
        role,
        token,
        serial: hex::encode(cert.raw_serial()),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// `sha256:<hex>` of a certificate's SubjectPublicKeyInfo, as kubeadm's `--discovery-token-ca-cert-hash`.
pub fn ca_hash(der: &[u8]) -> anyhow::Result<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| anyhow!("unreadable CA certificate: {e}"))?;
    Ok(format!(
        "sha256:{}",
        hex::encode(Sha256::digest(cert.tbs_certificate.subject_pki.raw))
    ))
}

/// Normalizes a `--ca-cert-hash` (`sha256:<64 hex>`, case-insensitive) or names what is wrong.
pub fn parse_ca_hash(given: &str) -> anyhow::Result<String> {
    let hex_part = given.strip_prefix("sha256:").ok_or_else(|| {
        anyhow!("--ca-cert-hash must look like sha256:<64 hex digits>, not '{given}'")
    })?;
    if hex_part.len() != 64 || !hex_part.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("--ca-cert-hash must look like sha256:<64 hex digits>, not '{given}'");
    }
    Ok(format!("sha256:{}", hex_part.to_ascii_lowercase()))
}

/// The SHA-256 (hex) under which the servers store a join token's secret, and the token id:
/// `<id>.<secret>` tokens hash their secret; the servers' own (legacy) token hashes whole.
pub fn token_key(presented: &str) -> (String, String) {
    let shaped = |p: &str, n: usize| {
        p.len() == n
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    match presented.split_once('.') {
        Some((id, secret)) if shaped(id, 8) && shaped(secret, 32) => (
            id.to_string(),
            hex::encode(Sha256::digest(secret.as_bytes())),
        ),
        _ => (
            "legacy".to_string(),
            hex::encode(Sha256::digest(presented.as_bytes())),
        ),
    }
}

/// The MAC a server returns with its CA bundle in discovery: HMAC-SHA256 keyed with the
/// token's stored hash over the client's nonce and the bundle. A server that does not know
/// the token cannot make it, so a machine without `--ca-cert-hash` still never shows its
/// token to a stranger.
pub fn discovery_mac(token_hash_hex: &str, nonce: &[u8], bundle_pem: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(token_hash_hex.as_bytes()).expect("any key length");
    mac.update(&(nonce.len() as u32).to_be_bytes());
    mac.update(nonce);
    mac.update(bundle_pem.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Constant-time comparison.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The DER certificates in a PEM bundle.
pub fn certs_of(pem: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<_, _>>()
        .context("read PEM certificates")?;
    if certs.is_empty() {
        bail!("no certificate in the PEM text");
    }
    Ok(certs)
}

fn key_of(pem: &str) -> anyhow::Result<PrivateKeyDer<'static>> {
    rustls_pemfile::private_key(&mut pem.as_bytes())
        .context("read PEM private key")?
        .ok_or_else(|| anyhow!("no private key in the PEM text"))
}

/// The roots of a trust bundle (one or more CA certs, PEM).
pub fn roots(bundle_pem: &str) -> anyhow::Result<Arc<RootCertStore>> {
    let mut store = RootCertStore::empty();
    for c in certs_of(bundle_pem)? {
        store.add(c).context("add a CA certificate")?;
    }
    Ok(Arc::new(store))
}

/// The `sha256:` hashes of every CA in a bundle.
pub fn bundle_hashes(bundle_pem: &str) -> anyhow::Result<Vec<String>> {
    certs_of(bundle_pem)?.iter().map(|c| ca_hash(c)).collect()
}

/// A new key and a certificate signing request for it (the key never leaves the machine).
pub struct KeyAndCsr {
    pub key_pem: String,
    pub csr_pem: String,
}

pub fn new_key_and_csr() -> anyhow::Result<KeyAndCsr> {
    let key = KeyPair::generate()?;
    let params = CertificateParams::new(Vec::<String>::new())?;
    let csr = params.serialize_request(&key)?;
    Ok(KeyAndCsr {
        key_pem: key.serialize_pem(),
        csr_pem: csr.pem()?,
    })
}

/// The cluster CA: a certificate and its signing key.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
    pub cert_pem: String,
}

/// What a certificate is for.
pub struct Issue<'a> {
    pub role: Role,
    pub token: Option<&'a str>,
    pub lifetime: Duration,
    /// Extra DNS names or IP addresses (API certs, the server's addresses).
    pub sans: &'a [String],
    /// Whether it authenticates a server (serverAuth, and [`SERVER_NAME`] for servers).
    pub server_auth: bool,
}

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

impl Ca {
    /// A new CA. `name` goes into its subject (e.g. "berth cluster CA 2026-12-04").
    pub fn generate(name: &str) -> anyhow::Result<Ca> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn.push(DnType::OrganizationName, "berth");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = now() - time::Duration::hours(1);
        params.not_after = now() + CA_LIFETIME;
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        Ok(Ca {
            cert,
            key,
            cert_pem,
        })
    }

    /// A CA from its PEM certificate and key.
    pub fn load(cert_pem: &str, key_pem: &str) -> anyhow::Result<Ca> {
        let key = KeyPair::from_pem(key_pem).context("read the CA key")?;
        let params = CertificateParams::from_ca_cert_pem(cert_pem).context("read the CA cert")?;
        // Re-signing the parsed params gives a certificate object with the same subject and
        // key, which is all rcgen needs to issue; the original PEM is what we hand out.
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            cert,
            key,
            cert_pem: cert_pem.to_string(),
        })
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    pub fn hash(&self) -> anyhow::Result<String> {
        ca_hash(&certs_of(&self.cert_pem)?[0])
    }

    /// Signs a certificate for the key in `csr_pem`. Only the CSR's public key is used: what
    /// the certificate says comes from `what`, never from the request.
    pub fn issue(&self, csr_pem: &str, what: &Issue) -> anyhow::Result<String> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| anyhow!("unreadable certificate signing request: {e}"))?;
        let params = self.params(what)?;
        let csr = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        };
        Ok(csr.signed_by(&self.cert, &self.key)?.pem())
    }

    /// Issues a certificate and a fresh key (for this server's own use).
    pub fn issue_with_key(&self, what: &Issue) -> anyhow::Result<(String, String)> {
        let key = KeyPair::generate()?;
        let cert = self.params(what)?.signed_by(&key, &self.cert, &self.key)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    fn params(&self, what: &Issue) -> anyhow::Result<CertificateParams> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, what.role.to_string());
        dn.push(DnType::OrganizationName, "berth");
        params.distinguished_name = dn;
        let mut sans = vec![SanType::URI(what.role.uri().try_into()?)];
        if let Some(t) = what.token {
            sans.push(SanType::URI(format!("berth://token/{t}").try_into()?));
        }
        if matches!(what.role, Role::Server(_)) {
            sans.push(SanType::DnsName(SERVER_NAME.try_into()?));
        }
        for s in what.sans {
            match s.parse::<std::net::IpAddr>() {
                Ok(ip) => sans.push(SanType::IpAddress(ip)),
                Err(_) => sans.push(SanType::DnsName(s.as_str().try_into()?)),
            }
        }
        params.subject_alt_names = sans;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if what.server_auth {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        params.use_authority_key_identifier_extension = true;
        // A little slack before now for clocks that are behind (5 min, less for short
        // lifetimes so that renewing at two thirds still means something).
        let slack = what.lifetime.div_f64(10.0).min(Duration::from_secs(300));
        params.not_before = now() - slack;
        params.not_after = now() + what.lifetime;
        params.serial_number = Some(random_serial());
        Ok(params)
    }
}

fn random_serial() -> SerialNumber {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    b[0] &= 0x7f; // positive
    SerialNumber::from_slice(&b)
}

/// The cluster port's TLS for members (servers, agents, lb nodes): client certs from the
/// bundle required.
pub fn cluster_server_config(
    bundle_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> anyhow::Result<Arc<ServerConfig>> {
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots(bundle_pem)?, provider())
            .build()
            .context("client verifier")?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs_of(cert_pem)?, key_of(key_pem)?)
        .context("the server's certificate")?;
    cfg.alpn_protocols = vec![H2_ALPN.to_vec()];
    Ok(Arc::new(cfg))
}

/// The cluster port's TLS for joining machines: no client cert, the join service only.
pub fn join_server_config(cert_pem: &str, key_pem: &str) -> anyhow::Result<Arc<ServerConfig>> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs_of(cert_pem)?, key_of(key_pem)?)
        .context("the server's certificate")?;
    cfg.alpn_protocols = vec![JOIN_ALPN.to_vec()];
    Ok(Arc::new(cfg))
}

/// The API port's TLS (HTTP/2 and HTTP/1.1), no client certs.
pub fn api_server_config(chain_pem: &str, key_pem: &str) -> anyhow::Result<Arc<ServerConfig>> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs_of(chain_pem)?, key_of(key_pem)?)
        .context("the API certificate and key")?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A member's client TLS: its own cert, servers verified by the bundle and [`SERVER_NAME`].
pub fn member_client_config(
    bundle_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> anyhow::Result<Arc<ClientConfig>> {
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(bundle_pem)?)
        .with_client_auth_cert(certs_of(cert_pem)?, key_of(key_pem)?)
        .context("this machine's certificate")?;
    cfg.alpn_protocols = vec![H2_ALPN.to_vec()];
    Ok(Arc::new(cfg))
}

/// A joining machine's client TLS once it trusts the bundle: no client cert, ALPN join.
pub fn join_client_config(bundle_pem: &str) -> anyhow::Result<Arc<ClientConfig>> {
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(bundle_pem)?)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![JOIN_ALPN.to_vec()];
    Ok(Arc::new(cfg))
}

/// Discovery's client TLS: the server is not verified yet (its CA bundle comes back with a
/// MAC, or is checked against `--ca-cert-hash`); nothing secret is sent on this connection.
pub fn discovery_client_config() -> anyhow::Result<Arc<ClientConfig>> {
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Unverified(provider())))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![JOIN_ALPN.to_vec()];
    Ok(Arc::new(cfg))
}

#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A gRPC channel to a cluster port over TLS with `cfg` (connected on first use). The server is
/// verified by [`SERVER_NAME`], whatever address it is dialed at.
pub fn channel(
    addr: &str,
    cfg: Arc<ClientConfig>,
    connect_timeout: Duration,
) -> anyhow::Result<tonic::transport::Channel> {
    channel_with(addr, move || cfg.clone(), connect_timeout)
}

/// As [`channel`], taking the client config anew on every (re)connect, so a renewed
/// certificate is used from the next connection on.
pub fn channel_with(
    addr: &str,
    cfg: impl Fn() -> Arc<ClientConfig> + Send + Sync + 'static,
    connect_timeout: Duration,
) -> anyhow::Result<tonic::transport::Channel> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(connect_timeout)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20));
    let target = addr.to_string();
    let cfg = Arc::new(cfg);
    let connector = tower::service_fn(move |_uri: tonic::transport::Uri| {
        let cfg = cfg();
        let target = target.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(&target).await?;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from(SERVER_NAME).expect("valid name");
            let tls = tokio_rustls::TlsConnector::from(cfg)
                .connect(name, tcp)
                .await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    Ok(endpoint.connect_with_connector_lazy(connector))
}

/// Writes `text` to `path` atomically with mode 0600.
pub fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("write {}", tmp.display()))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))?;
    Ok(())
}

/// Writes a public file (a certificate, the CA bundle) atomically, mode 0644.
pub fn write_public(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    write_private(path, text)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certs_carry_the_role_and_token_not_what_the_csr_asks() {
        let ca = Ca::generate("test CA").unwrap();
        let kc = new_key_and_csr().unwrap();
        let role = Role::Agent {
            cluster: "c".into(),
            instance: "i-1".into(),
        };
        let pem = ca
            .issue(
                &kc.csr_pem,
                &Issue {
                    role: role.clone(),
                    token: Some("abcd1234"),
                    lifetime: Duration::from_secs(3600),
                    sans: &[],
                    server_auth: false,
                },
            )
            .unwrap();
        let id = identity_of(&certs_of(&pem).unwrap()[0]).unwrap();
        assert_eq!(id.role, role);
        assert_eq!(id.token.as_deref(), Some("abcd1234"));
        assert!(id.not_after - id.not_before >= 3600);
        assert!(!id.due_for_renewal(id.not_before + 600));
        assert!(id.due_for_renewal(id.not_after - 600));
        // The CA reloads from its files and keeps its hash.
        let again = Ca::load(&ca.cert_pem, &ca.key_pem()).unwrap();
        assert_eq!(again.hash().unwrap(), ca.hash().unwrap());
        assert!(ca.hash().unwrap().starts_with("sha256:"));
        assert_eq!(
            parse_ca_hash(
                &ca.hash()
                    .unwrap()
                    .to_uppercase()
                    .replace("SHA256", "sha256")
            )
            .unwrap(),
            ca.hash().unwrap()
        );
        assert!(parse_ca_hash("sha256:abc").is_err());
        assert!(parse_ca_hash("md5:00").is_err());
    }

    #[test]
    fn token_keys_match_the_stored_hashes() {
        let secret = "s3cr3ts3cr3ts3cr3ts3cr3ts3cr3tab";
        let (id, key) = token_key(&format!("abcd1234.{secret}"));
        assert_eq!(id, "abcd1234");
        assert_eq!(key, hex::encode(Sha256::digest(secret.as_bytes())));
        let (id, key) = token_key("berth-test-join-token");
        assert_eq!(id, "legacy");
        assert_eq!(key, hex::encode(Sha256::digest(b"berth-test-join-token")));
        let a = discovery_mac(&key, b"n1", "pem");
        assert_ne!(a, discovery_mac(&key, b"n2", "pem"));
        assert_ne!(a, discovery_mac("other", b"n1", "pem"));
    }
}
