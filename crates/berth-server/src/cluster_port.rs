//! The cluster port (`--raft-addr`): one gRPC server for the Raft RPCs and the
//! server-to-server calls ([`crate::node`]), the agents' sessions
//! ([`crate::agent_service`]), the `berth lb` feed, certificate renewal, and joins.
//!
//! It is mutual TLS: a connection must present a certificate from the cluster CA, or the
//! handshake fails before a byte of gRPC is read. The only exception is a connection that
//! offers ALPN `berth-join/1`: it needs no certificate, and only the join service answers
//! it. What a certificate's holder may call is checked per service, from its identity
//! ([`berth_tls::Role`]): Raft and the cluster calls take server certs, sessions agent
//! certs (for their own instance only), the feed lb certs.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use berth_model::token::TokenKind;
use berth_proto::raft::certs_server::{Certs, CertsServer};
use berth_proto::raft::cluster_server::ClusterServer;
use berth_proto::raft::join_server::{Join, JoinServer};
use berth_proto::raft::lb_feed_server::{LbFeed, LbFeedServer};
use berth_proto::raft::raft_server::RaftServer;
use berth_proto::raft::{Payload, Reply};
use berth_store::{now_secs, Command, Response};
use berth_tls::join::{
    DiscoverRequest, DiscoverResponse, JoinRequest, JoinResponse, Joining, RenewRequest,
    RenewResponse, ACCESS_DENIED,
};
use berth_tls::{Identity, Role};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::{Request, Status};

use crate::node::{GrpcService, NodeConfig, ServerNode};

/// Who is on the other end of a cluster-port connection.
#[derive(Debug, Clone)]
pub enum Peer {
    /// No TLS at all (`berth bench` plain mode only).
    Plain,
    /// A machine joining (ALPN `berth-join/1`, no certificate).
    Joining,
    /// A certificate from the cluster CA.
    Member(Identity),
}

/// A connection's peer, as tonic hands it to every request (`extensions().get::<PeerInfo>()`).
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub addr: SocketAddr,
    pub peer: Peer,
}

impl PeerInfo {
    pub fn of<T>(req: &Request<T>) -> Option<&PeerInfo> {
        req.extensions().get::<PeerInfo>()
    }
}

/// An accepted connection with its peer.
pub struct PeerStream<S> {
    inner: S,
    info: PeerInfo,
}

impl<S> tonic::transport::server::Connected for PeerStream<S> {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PeerStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PeerStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

type Conn = Box<dyn IoStream>;
pub trait IoStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> IoStream for T {}

/// Why a member's certificate no longer admits it, if it does not: its instance was
/// deregistered, or the token it joined with was revoked.
pub fn refusal(node: &ServerNode, id: &Identity) -> Option<String> {
    if let Some(t) = &id.token {
        let revoked = node
            .reader
            .join_token(t)
            .ok()
            .flatten()
            .is_some_and(|t| t.revoked_at.is_some());
        // Servers are not cut off by the token they joined with (the servers' own token
        // admits them all); they leave the cluster by membership.
        if revoked && !matches!(id.role, Role::Server(_)) {
            return Some(format!("join token {t} was revoked"));
        }
    }
    if let Role::Agent { cluster, instance } = &id.role {
        let rec = node
            .reader
            .container_instance(cluster, instance)
            .ok()
            .flatten();
        if rec.is_some_and(|r| r.status() == "INACTIVE") {
            return Some(berth_store::tasks::deregistered_message(cluster, instance));
        }
    }
    None
}

async fn accept_one(
    node: &ServerNode,
    tcp: tokio::net::TcpStream,
    addr: SocketAddr,
) -> Result<PeerStream<Conn>, String> {
    let _ = tcp.set_nodelay(true);
    let Some(pki) = node.pki.clone() else {
        return Ok(PeerStream {
            inner: Box::new(tcp),
            info: PeerInfo {
                addr,
                peer: Peer::Plain,
            },
        });
    };
    let acceptor = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
    let start = acceptor
        .await
        .map_err(|e| format!("not a TLS client hello: {e}"))?;
    let joining = start
        .client_hello()
        .alpn()
        .is_some_and(|mut a| a.any(|p| p == berth_tls::JOIN_ALPN));
    let cfg = if joining {
        pki.join_config()
    } else {
        pki.cluster_config()
    };
    let tls = start
        .into_stream(cfg)
        .await
        .map_err(|e| format!("TLS handshake failed: {e}"))?;
    let peer = if joining {
        Peer::Joining
    } else {
        let der = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or("no client certificate")?;
        // Whether the holder is still admitted (its instance registered, its token not
        // revoked) is checked by each service, so the refusal reaches it as a clear
        // AccessDenied rather than a dropped handshake.
        Peer::Member(berth_tls::identity_of(der).map_err(|e| e.to_string())?)
    };
    Ok(PeerStream {
        inner: Box::new(tls),
        info: PeerInfo { addr, peer },
    })
}

/// Which holders may call a service.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Allow {
    /// Raft: servers in this node's membership.
    RaftPeers,
    /// Server-to-server calls.
    Servers,
    Agents,
    Lbs,
    /// Certificate renewal: any member.
    Members,
    /// The join service: joining connections only.
    Joining,
}

impl Allow {
    fn holders(self) -> &'static str {
        match self {
            Allow::RaftPeers => "the servers in this server's Raft membership",
            Allow::Servers => "servers",
            Allow::Agents => "agents",
            Allow::Lbs => "berth lb nodes",
            Allow::Members => "the cluster's members",
            Allow::Joining => "machines joining the cluster",
        }
    }
}

fn interceptor(
    node: Arc<ServerNode>,
    allow: Allow,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |req: Request<()>| {
        let Some(info) = PeerInfo::of(&req) else {
            return Err(Status::permission_denied("unknown peer"));
        };
        let ok = match (&info.peer, allow) {
            (Peer::Plain, _) => true,
            (Peer::Joining, Allow::Joining) => true,
            (Peer::Joining, _) => false,
            (Peer::Member(_), Allow::Joining) => false,
            (Peer::Member(_), Allow::Members) => true,
            (Peer::Member(id), Allow::RaftPeers) => match id.role {
                Role::Server(n) => node.may_send_raft(n),
                _ => false,
            },
            (Peer::Member(id), Allow::Servers) => matches!(id.role, Role::Server(_)),
            (Peer::Member(id), Allow::Agents) => matches!(id.role, Role::Agent { .. }),
            (Peer::Member(id), Allow::Lbs) => matches!(id.role, Role::Lb(_)),
        };
        if ok {
            Ok(req)
        } else {
            let who = match &info.peer {
                Peer::Member(id) => id.role.to_string(),
                Peer::Joining => "a joining machine".into(),
                Peer::Plain => "?".into(),
            };
            tracing::warn!(peer = %info.addr, who, service = ?allow, "cluster port: call refused for this certificate's role");
            Err(Status::permission_denied(format!(
                "{who} may not call this service (it is for {})",
                allow.holders()
            )))
        }
    }
}

impl ServerNode {
    /// Opens the store, starts openraft and serves the cluster port. Does not bootstrap
    /// or join.
    pub async fn start(
        cfg: NodeConfig,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> anyhow::Result<Arc<Self>> {
        let node = ServerNode::open(&cfg).await?;
        let listener = tokio::net::TcpListener::bind(cfg.raft_listen)
            .await
            .map_err(|e| anyhow::anyhow!("bind raft address {}: {e}", cfg.raft_listen))?;
        if let Some(pki) = &node.pki {
            pki.spawn_renewal(shutdown.clone());
        }
        let (conns_tx, conns_rx) =
            tokio::sync::mpsc::channel::<std::io::Result<PeerStream<Conn>>>(256);
        {
            let node = node.clone();
            let mut shutdown = shutdown.clone();
            tokio::spawn(async move {
                loop {
                    let (tcp, addr) = tokio::select! {
                        a = listener.accept() => match a {
                            Ok(x) => x,
                            Err(e) => {
                                tracing::warn!(error = %e, "cluster port: accept failed");
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                continue;
                            }
                        },
                        _ = async { let _ = shutdown.wait_for(|s| *s).await; } => return,
                    };
                    let node = node.clone();
                    let tx = conns_tx.clone();
                    tokio::spawn(async move {
                        match tokio::time::timeout(
                            Duration::from_secs(10),
                            accept_one(&node, tcp, addr),
                        )
                        .await
                        {
                            Ok(Ok(conn)) => {
                                let _ = tx.send(Ok(conn)).await;
                            }
                            Ok(Err(why)) => {
                                tracing::warn!(peer = %addr, reason = why, "cluster port: connection refused")
                            }
                            Err(_) => {
                                tracing::warn!(peer = %addr, "cluster port: connection refused: no TLS handshake within 10 s")
                            }
                        }
                    });
                }
            });
        }
        let incoming = tokio_stream::wrappers::ReceiverStream::new(conns_rx);
        let svc = GrpcService { node: node.clone() };
        let agent_svc = crate::agent_service::service(node.clone());
        let edge = Edge { node: node.clone() };
        let n = node.clone();
        let mut shutdown = shutdown;
        tokio::spawn(async move {
            let res = tonic::transport::Server::builder()
                .add_service(tonic::service::interceptor::InterceptedService::new(
                    RaftServer::new(svc.clone())
                        .max_decoding_message_size(64 << 20)
                        .max_encoding_message_size(64 << 20),
                    interceptor(n.clone(), Allow::RaftPeers),
                ))
                .add_service(tonic::service::interceptor::InterceptedService::new(
                    agent_svc,
                    interceptor(n.clone(), Allow::Agents),
                ))
                .add_service(tonic::service::interceptor::InterceptedService::new(
                    ClusterServer::new(svc)
                        .max_decoding_message_size(64 << 20)
                        .max_encoding_message_size(64 << 20),
                    interceptor(n.clone(), Allow::Servers),
                ))
                .add_service(tonic::service::interceptor::InterceptedService::new(
                    JoinServer::new(edge.clone()),
                    interceptor(n.clone(), Allow::Joining),
                ))
                .add_service(tonic::service::interceptor::InterceptedService::new(
                    CertsServer::new(edge.clone()),
                    interceptor(n.clone(), Allow::Members),
                ))
                .add_service(tonic::service::interceptor::InterceptedService::new(
                    LbFeedServer::new(edge),
                    interceptor(n.clone(), Allow::Lbs),
                ))
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = shutdown.wait_for(|s| *s).await;
                })
                .await;
            if let Err(e) = res {
                tracing::error!(error = %e, "raft gRPC server stopped");
            }
        });
        Ok(node)
    }
}

/// The join, renewal and lb-feed services.
#[derive(Clone)]
struct Edge {
    node: Arc<ServerNode>,
}

fn ok_json<T: serde::Serialize>(v: &T) -> Result<tonic::Response<Reply>, Status> {
    Ok(tonic::Response::new(Reply {
        data: serde_json::to_vec(v).map_err(|e| Status::internal(e.to_string()))?,
        ..Default::default()
    }))
}

fn fail(code: &str, message: impl std::fmt::Display) -> Result<tonic::Response<Reply>, Status> {
    Ok(tonic::Response::new(Reply {
        error: format!("{code}: {message}"),
        ..Default::default()
    }))
}

fn denied(
    peer: &str,
    what: &str,
    message: impl std::fmt::Display,
) -> Result<tonic::Response<Reply>, Status> {
    match what {
        "agent join" => tracing::warn!(peer, what, reason = %message, "agent refused"),
        "lb join" | "lb feed" => tracing::warn!(peer, what, reason = %message, "lb node refused"),
        "server join" => tracing::warn!(peer, what, reason = %message, "server refused"),
        _ => tracing::warn!(peer, what, reason = %message, "cluster port: refused"),
    }
    fail(ACCESS_DENIED, message)
}

fn decode<T: serde::de::DeserializeOwned>(p: &Payload) -> Result<T, Status> {
    serde_json::from_slice(&p.data)
        .map_err(|e| Status::invalid_argument(format!("bad request: {e}")))
}

fn peer_addr<T>(req: &Request<T>) -> String {
    PeerInfo::of(req)
        .map(|p| p.addr.to_string())
        .unwrap_or_else(|| "?".into())
}

impl Edge {
    fn pki(&self) -> Result<&Arc<crate::pki::Pki>, Status> {
        self.node
            .pki
            .as_ref()
            .ok_or_else(|| Status::failed_precondition("this server runs without TLS"))
    }

    /// The token's stored hash, the key of the discovery MAC.
    fn token_hash(&self, id: &str) -> Option<String> {
        if id == berth_model::token::LEGACY_TOKEN_ID {
            return self
                .node
                .agent_settings
                .join_token
                .as_deref()
                .filter(|t| !t.is_empty())
                .map(berth_store::tokens::hash_secret);
        }
        self.node
            .reader
            .join_token(id)
            .ok()
            .flatten()
            .map(|t| t.secret_sha256)
    }

    async fn use_token(&self, id: &str, kind: TokenKind) -> Result<(), String> {
        match self
            .node
            .write(Command::UseJoinToken {
                id: id.to_string(),
                kind,
                at: now_secs(),
            })
            .await
        {
            Ok(Response::Error { error }) => Err(error.message),
            Ok(_) => Ok(()),
            Err(e) => Err(format!(
                "the cluster could not record the join: {}",
                e.message
            )),
        }
    }

    async fn join_agent(
        &self,
        peer: &str,
        token: &str,
        hello: serde_json::Value,
        csr: &str,
    ) -> Result<tonic::Response<Reply>, Status> {
        let mut hello: berth_model::agent::Hello = serde_json::from_value(hello)
            .map_err(|e| Status::invalid_argument(format!("bad Hello: {e}")))?;
        if hello.cluster.is_empty() || hello.instance_id.is_empty() {
            return fail(
                "InvalidParameter",
                "an agent joins with its cluster and instance id",
            );
        }
        let node = &self.node;
        let token_id = match crate::agent_service::agent_token(
            node,
            &hello.cluster,
            &hello.instance_id,
            token,
        ) {
            Ok(id) => id,
            Err(why) => return denied(peer, "agent join", why),
        };
        hello.join_token = String::new();
        let resp = node
            .write(Command::RegisterContainerInstance {
                ctx: node.agent_settings.ctx.clone(),
                hello: hello.clone(),
                at: now_secs(),
                token: Some(token_id.clone()),
            })
            .await;
        match resp {
            Ok(Response::ContainerInstance { .. }) => {}
            Ok(Response::Error { error })
                if error.kind == berth_model::ErrorKind::AccessDeniedException =>
            {
                return denied(peer, "agent join", error.message)
            }
            Ok(Response::Error { error }) => return fail("RegisterFailed", error.message),
            Ok(other) => return fail("RegisterFailed", format!("unexpected {other:?}")),
            Err(e) => return fail("Unavailable", e.message),
        }
        let pki = self.pki()?;
        let role = Role::Agent {
            cluster: hello.cluster.clone(),
            instance: hello.instance_id.clone(),
        };
        let cert = pki
            .issue(csr, role, Some(&token_id))
            .map_err(|e| Status::invalid_argument(format!("{e:#}")))?;
        tracing::info!(
            peer,
            cluster = hello.cluster,
            instance_id = hello.instance_id,
            token = token_id,
            "agent joined: issued its certificate"
        );
        ok_json(&JoinResponse {
            cert,
            ca_bundle: pki.bundle(),
            ca_cert: None,
            ca_key: None,
        })
    }
}

#[tonic::async_trait]
impl Join for Edge {
    async fn discover(&self, req: Request<Payload>) -> Result<tonic::Response<Reply>, Status> {
        let peer = peer_addr(&req);
        let d: DiscoverRequest = decode(req.get_ref())?;
        let nonce =
            hex::decode(&d.nonce).map_err(|_| Status::invalid_argument("the nonce must be hex"))?;
        let Some(key) = self.token_hash(&d.token_id) else {
            return denied(
                &peer,
                "discovery",
                format!("join token {} is not known to this cluster", d.token_id),
            );
        };
        let bundle = self.pki()?.bundle();
        ok_json(&DiscoverResponse {
            mac: berth_tls::discovery_mac(&key, &nonce, &bundle),
            ca_bundle: bundle,
        })
    }

    async fn join(&self, req: Request<Payload>) -> Result<tonic::Response<Reply>, Status> {
        let peer = peer_addr(&req);
        let j: JoinRequest = decode(req.get_ref())?;
        let node = &self.node;
        let check = |kind| {
            berth_store::tokens::check_presented(
                &node.reader,
                node.agent_settings.join_token.as_deref(),
                &j.token,
                kind,
                now_secs(),
                None,
            )
        };
        match j.joining {
            Joining::Agent { hello } => self.join_agent(&peer, &j.token, hello, &j.csr).await,
            Joining::Lb { name } => {
                let ok_name = !name.is_empty()
                    && name.len() <= 200
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
                if !ok_name {
                    return fail("InvalidParameter", format!("an lb node's name must be letters, digits, '-', '_' or '.', not '{name}'"));
                }
                let id = match check(TokenKind::Lb) {
                    Ok(id) => id,
                    Err(r) => return denied(&peer, "lb join", r),
                };
                if let Err(e) = self.use_token(&id, TokenKind::Lb).await {
                    return denied(&peer, "lb join", e);
                }
                let pki = self.pki()?;
                let cert = pki
                    .issue(&j.csr, Role::Lb(name.clone()), Some(&id))
                    .map_err(|e| Status::invalid_argument(format!("{e:#}")))?;
                tracing::info!(
                    peer,
                    name,
                    token = id,
                    "lb node joined: issued its certificate"
                );
                ok_json(&JoinResponse {
                    cert,
                    ca_bundle: pki.bundle(),
                    ca_cert: None,
                    ca_key: None,
                })
            }
            Joining::Server { node_id } => {
                let id = match check(TokenKind::Server) {
                    Ok(id) => id,
                    Err(r) => return denied(&peer, "server join", r),
                };
                if let Err(e) = self.use_token(&id, TokenKind::Server).await {
                    return denied(&peer, "server join", e);
                }
                let pki = self.pki()?;
                let cert = pki
                    .issue(&j.csr, Role::Server(node_id), Some(&id))
                    .map_err(|e| Status::invalid_argument(format!("{e:#}")))?;
                tracing::info!(
                    peer,
                    node_id,
                    token = id,
                    "server joined: issued its certificate and sent the CA"
                );
                ok_json(&JoinResponse {
                    cert,
                    ca_bundle: pki.bundle(),
                    ca_cert: Some(pki.ca_cert_pem()),
                    ca_key: Some(pki.ca_key_pem()),
                })
            }
        }
    }
}

#[tonic::async_trait]
impl Certs for Edge {
    async fn renew(&self, req: Request<Payload>) -> Result<tonic::Response<Reply>, Status> {
        let peer = peer_addr(&req);
        let Some(PeerInfo {
            peer: Peer::Member(id),
            ..
        }) = PeerInfo::of(&req).cloned()
        else {
            return Err(Status::permission_denied(
                "renewal needs a member certificate",
            ));
        };
        let r: RenewRequest = decode(req.get_ref())?;
        if let Some(why) = refusal(&self.node, &id) {
            return denied(&peer, "renewal", why);
        }
        let pki = self.pki()?;
        let cert = pki
            .issue(&r.csr, id.role.clone(), id.token.as_deref())
            .map_err(|e| Status::invalid_argument(format!("{e:#}")))?;
        tracing::info!(peer, who = %id.role, "renewed a certificate");
        ok_json(&RenewResponse {
            cert,
            ca_bundle: pki.bundle(),
        })
    }
}

/// `berth lb` edge nodes' feed: what `GET /berth/lb/config` and `POST /berth/lb/report`
/// were on the API port before the cluster port was mutual TLS.
#[tonic::async_trait]
impl LbFeed for Edge {
    async fn config(&self, req: Request<Payload>) -> Result<tonic::Response<Reply>, Status> {
        if let Some(r) = self.still_admitted(&req) {
            return r;
        }
        let after: Option<u64> = decode(req.get_ref())?;
        match crate::lb_runtime::long_poll(&self.node, after, Duration::from_secs(25)).await {
            Ok(s) => ok_json(&s),
            Err(e) => fail("Unavailable", e),
        }
    }

    async fn report(&self, req: Request<Payload>) -> Result<tonic::Response<Reply>, Status> {
        #[derive(serde::Deserialize)]
        struct Report {
            node: String,
            idle: Vec<berth_model::elb::DrainIdle>,
        }
        if let Some(r) = self.still_admitted(&req) {
            return r;
        }
        let report: Report = decode(req.get_ref())?;
        let name_ok = report.node.starts_with("edge-")
            && report.node.len() <= 200
            && report
                .node
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !name_ok {
            return fail(
                "InvalidParameter",
                format!(
                    "A drain report's node must be named edge-…, not '{}'",
                    report.node
                ),
            );
        }
        let cmd = Command::ElbDrainReport {
            node: report.node,
            idle: report.idle,
            at: now_secs(),
        };
        match self.node.write(cmd).await {
            Ok(_) => ok_json(&serde_json::json!({})),
            Err(e) => fail("Unavailable", e.message),
        }
    }
}

impl Edge {
    /// A long-lived connection outlives a revocation: check on every call too.
    fn still_admitted<T>(
        &self,
        req: &Request<T>,
    ) -> Option<Result<tonic::Response<Reply>, Status>> {
        if let Some(PeerInfo {
            peer: Peer::Member(id),
            addr,
        }) = PeerInfo::of(req)
        {
            if let Some(why) = refusal(&self.node, id) {
                return Some(denied(&addr.to_string(), "lb feed", why));
            }
        }
        None
    }
}
