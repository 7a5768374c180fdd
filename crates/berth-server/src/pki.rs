//! The servers' PKI: the cluster CA and this server's own certificates, in
//! `<data-dir>/tls/` (never in the Raft log or a snapshot).
//!
//! - `ca.pem`: the CA bundle the cluster trusts (newest first); `ca.key`: the signing CA's
//!   key (0600). Every server holds both: the first creates them, a joining server receives
//!   them over the verified join.
//! - `server.pem`/`server.key`: this server's cluster-port certificate
//!   (`berth://server/<id>`, DNS name `server.berth.cluster`), renewed automatically when a
//!   third of its lifetime is left.
//! - `api.pem`/`api.key`: the API port's certificate from the cluster CA (unless the
//!   operator gives `--tls-cert`/`--tls-key`), re-issued at every start for the API's names.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{anyhow, Context};
use berth_tls::join::{JoinError, Joining, Material};
use berth_tls::{Ca, Issue, Role};

/// Certificate lifetimes.
#[derive(Debug, Clone)]
pub struct Lifetimes {
    /// Agents and `berth lb` edge nodes (renewed over their session).
    pub member: Duration,
    /// Servers' own cluster and API certificates.
    pub server: Duration,
}

impl Default for Lifetimes {
    fn default() -> Self {
        Lifetimes {
            member: Duration::from_secs(7 * 86_400),
            server: Duration::from_secs(90 * 86_400),
        }
    }
}

/// How a server without TLS material gets it: from an existing member.
#[derive(Debug, Clone)]
pub struct JoinPlan {
    pub via: String,
    pub token: String,
    pub pinned: Option<String>,
}

struct Current {
    bundle: String,
    ca: Arc<Ca>,
    own: Material,
    cluster: Arc<rustls::ServerConfig>,
    join: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

pub struct Pki {
    dir: PathBuf,
    node_id: u64,
    pub lifetimes: Lifetimes,
    current: RwLock<Current>,
}

fn configs(
    bundle: &str,
    own: &Material,
) -> anyhow::Result<(
    Arc<rustls::ServerConfig>,
    Arc<rustls::ServerConfig>,
    Arc<rustls::ClientConfig>,
)> {
    Ok((
        berth_tls::cluster_server_config(bundle, &own.cert, &own.key)?,
        berth_tls::join_server_config(&own.cert, &own.key)?,
        own.client_config()?,
    ))
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pki({})", self.dir.display())
    }
}

impl Pki {
    /// Loads this server's TLS material, or makes it: a new CA when this server starts a
    /// cluster (or is the first of an existing cluster to run a berth with TLS), or a join
    /// through `plan` (retried until the cluster answers; a refusal is final).
    pub async fn prepare(
        data_dir: &Path,
        node_id: u64,
        plan: Option<JoinPlan>,
        lifetimes: Lifetimes,
    ) -> anyhow::Result<Arc<Pki>> {
        let dir = data_dir.join("tls");
        let loaded = Material::load(&dir, "server")?;
        let ca_key = std::fs::read_to_string(dir.join("ca.key")).ok();
        let ca_cert = std::fs::read_to_string(dir.join("ca-signing.pem")).ok();
        let (own, ca) = match (loaded, ca_key, ca_cert) {
            (Some(own), Some(key), Some(cert)) => {
                let ca = Ca::load(&cert, &key).context("the cluster CA in the data dir")?;
                (own, ca)
            }
            (Some(_), _, _) | (None, Some(_), _) => {
                return Err(anyhow!(
                    "{} is incomplete (server.pem, server.key, ca.pem, ca-signing.pem and ca.key belong together); restore it from a backup or remove the server and add it again",
                    dir.display()
                ))
            }
            (None, None, _) => match plan {
                None => {
                    let ca = Ca::generate(&format!(
                        "berth cluster CA {}",
                        berth_store::now_secs() as u64
                    ))?;
                    std::fs::create_dir_all(&dir)?;
                    berth_tls::write_private(&dir.join("ca.key"), &ca.key_pem())?;
                    berth_tls::write_public(&dir.join("ca-signing.pem"), &ca.cert_pem)?;
                    let (cert, key) = ca.issue_with_key(&server_issue(node_id, &lifetimes))?;
                    let own = Material {
                        bundle: ca.cert_pem.clone(),
                        cert,
                        key,
                    };
                    own.save(&dir, "server")?;
                    tracing::info!(ca = %dir.join("ca.pem").display(), hash = %ca.hash()?, "created the cluster CA");
                    (own, ca)
                }
                Some(plan) => {
                    let (resp, key) = join_with_retries(&plan, node_id).await?;
                    let (Some(ca_cert), Some(ca_key)) = (resp.ca_cert, resp.ca_key) else {
                        return Err(anyhow!("{} did not send the cluster CA", plan.via));
                    };
                    let ca = Ca::load(&ca_cert, &ca_key)?;
                    std::fs::create_dir_all(&dir)?;
                    berth_tls::write_private(&dir.join("ca.key"), &ca_key)?;
                    berth_tls::write_public(&dir.join("ca-signing.pem"), &ca_cert)?;
                    let own = Material {
                        bundle: resp.ca_bundle,
                        cert: resp.cert,
                        key,
                    };
                    own.save(&dir, "server")?;
                    tracing::info!(via = plan.via, hash = %ca.hash()?, "joined: received this server's certificate and the cluster CA");
                    (own, ca)
                }
            },
        };
        let (cluster, join, client) = configs(&own.bundle, &own)?;
        let pki = Arc::new(Pki {
            dir,
            node_id,
            lifetimes,
            current: RwLock::new(Current {
                bundle: own.bundle.clone(),
                ca: Arc::new(ca),
                own,
                cluster,
                join,
                client,
            }),
        });
        pki.renew_own_if_due()?;
        Ok(pki)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Current> {
        self.current.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `<data-dir>/tls/ca.pem`: what clients (the AWS CLI's `ca_bundle`) trust.
    pub fn bundle_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    pub fn bundle(&self) -> String {
        self.read().bundle.clone()
    }

    /// The hash of the signing CA (what `--ca-cert-hash` pins).
    pub fn ca_hash(&self) -> String {
        self.read().ca.hash().unwrap_or_default()
    }

    pub fn ca_cert_pem(&self) -> String {
        self.read().ca.cert_pem.clone()
    }

    pub fn ca_key_pem(&self) -> String {
        self.read().ca.key_pem()
    }

    pub fn cluster_config(&self) -> Arc<rustls::ServerConfig> {
        self.read().cluster.clone()
    }

    pub fn join_config(&self) -> Arc<rustls::ServerConfig> {
        self.read().join.clone()
    }

    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        self.read().client.clone()
    }

    pub fn own_identity(&self) -> anyhow::Result<berth_tls::Identity> {
        self.read().own.identity()
    }

    /// Signs a member's certificate (agents and lb nodes: the member lifetime).
    pub fn issue(&self, csr: &str, role: Role, token: Option<&str>) -> anyhow::Result<String> {
        let lifetime = match role {
            Role::Server(_) => self.lifetimes.server,
            _ => self.lifetimes.member,
        };
        self.read().ca.issue(
            csr,
            &Issue {
                server_auth: matches!(role, Role::Server(_)),
                role,
                token,
                lifetime,
                sans: &[],
            },
        )
    }

    /// A certificate and key for the API port with these names and addresses.
    pub fn issue_api(&self, sans: &[String]) -> anyhow::Result<(String, String)> {
        self.read().ca.issue_with_key(&Issue {
            role: Role::Server(self.node_id),
            token: None,
            lifetime: self.lifetimes.server,
            sans,
            server_auth: true,
        })
    }

    /// Renews this server's cluster certificate when a third of its lifetime is left.
    pub fn renew_own_if_due(&self) -> anyhow::Result<bool> {
        let id = self.read().own.identity()?;
        if !id.due_for_renewal(berth_store::now_secs() as i64) {
            return Ok(false);
        }
        let (cert, key) = self
            .read()
            .ca
            .issue_with_key(&server_issue(self.node_id, &self.lifetimes))?;
        let bundle = self.bundle();
        let own = Material { bundle, cert, key };
        own.save(&self.dir, "server")?;
        let (cluster, join, client) = configs(&own.bundle, &own)?;
        let mut cur = self.current.write().unwrap_or_else(|p| p.into_inner());
        cur.own = own;
        cur.cluster = cluster;
        cur.join = join;
        cur.client = client;
        tracing::info!("renewed this server's cluster certificate");
        Ok(true)
    }

    /// Checks the own certificate every minute.
    pub fn spawn_renewal(self: &Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let pki = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(renew_check_interval(&pki.lifetimes));
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if let Err(e) = pki.renew_own_if_due() {
                            tracing::warn!(error = %format!("{e:#}"), "renewing this server's certificate failed; retrying");
                        }
                    }
                    _ = async { let _ = shutdown.wait_for(|s| *s).await; } => return,
                }
            }
        });
    }
}

/// How often a holder checks whether its certificate is due: often enough for short test
/// lifetimes, once a minute at most.
pub fn renew_check_interval(l: &Lifetimes) -> Duration {
    (l.member.min(l.server) / 20).clamp(Duration::from_millis(500), Duration::from_secs(60))
}

fn server_issue<'a>(node_id: u64, l: &Lifetimes) -> Issue<'a> {
    Issue {
        role: Role::Server(node_id),
        token: None,
        lifetime: l.server,
        sans: &[],
        server_auth: true,
    }
}

async fn join_with_retries(
    plan: &JoinPlan,
    node_id: u64,
) -> anyhow::Result<(berth_tls::join::JoinResponse, String)> {
    let mut delay = Duration::from_millis(200);
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        match berth_tls::join::join(
            &plan.via,
            &plan.token,
            plan.pinned.as_deref(),
            Joining::Server { node_id },
        )
        .await
        {
            Ok(r) => return Ok(r),
            Err(JoinError::Refused(m)) => {
                return Err(anyhow!("joining through {}: {m}", plan.via));
            }
            Err(JoinError::Retry(m)) => {
                tracing::warn!(via = plan.via, attempt, error = %m, "cannot get a certificate from the cluster yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}
