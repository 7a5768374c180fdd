//! openraft's network over tonic gRPC. openraft messages travel as JSON payloads; the remote
//! side's `Result` is sent back whole so a remote Raft error stays a remote Raft error.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_proto::raft::cluster_client::ClusterClient;
use berth_proto::raft::raft_client::RaftClient;
use berth_proto::raft::{Payload, Reply};
use berth_store::{Node, NodeId, TypeConfig};
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use tonic::transport::{Channel, Endpoint};

/// Largest gRPC message between servers.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;
/// AppendEntries requests larger than this are split (openraft retries with fewer entries).
const MAX_APPEND_BYTES: usize = 48 << 20;

/// One lazily connected channel per peer address, shared by Raft replication and forwarding:
/// mutual TLS with this server's certificate, or plain (benchmarks only).
#[derive(Clone, Default)]
pub struct Channels {
    inner: Arc<Mutex<HashMap<String, Channel>>>,
    pki: Option<Arc<crate::pki::Pki>>,
}

impl Channels {
    pub fn new(pki: Option<Arc<crate::pki::Pki>>) -> Channels {
        Channels {
            inner: Default::default(),
            pki,
        }
    }

    pub fn get(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(addr) {
            return Ok(c.clone());
        }
        let ch = match &self.pki {
            Some(pki) => {
                let pki = pki.clone();
                match berth_tls::channel_with(
                    addr,
                    move || pki.client_config(),
                    Duration::from_millis(500),
                ) {
                    Ok(c) => c,
                    // Only an unparsable address fails here; let tonic say so.
                    Err(_) => Endpoint::from_shared(format!("http://{addr}"))?.connect_lazy(),
                }
            }
            None => Endpoint::from_shared(format!("http://{addr}"))?
                .connect_timeout(Duration::from_millis(500))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .connect_lazy(),
        };
        map.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    pub fn raft(&self, addr: &str) -> Result<RaftClient<Channel>, tonic::transport::Error> {
        Ok(RaftClient::new(self.get(addr)?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    pub fn cluster(&self, addr: &str) -> Result<ClusterClient<Channel>, tonic::transport::Error> {
        Ok(ClusterClient::new(self.get(addr)?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }
}

#[derive(Clone)]
pub struct NetworkFactory {
    pub channels: Channels,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerConn;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> Self::Network {
        PeerConn {
            target,
            addr: node.addr.clone(),
            channels: self.channels.clone(),
        }
    }
}

pub struct PeerConn {
    target: NodeId,
    addr: String,
    channels: Channels,
}

/// A transport failure: connection-level ones make openraft back off (Unreachable).
fn transport_err<E: std::error::Error>(status: &tonic::Status) -> RPCError<NodeId, Node, E> {
    let ioerr = std::io::Error::other(format!("{}: {}", status.code(), status.message()));
    match status.code() {
        // Only a peer we cannot connect to is unreachable (openraft backs off); a slow
        // answer is retried at once.
        tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(&ioerr)),
        _ => RPCError::Network(NetworkError::new(&ioerr)),
    }
}

fn net_err<E: std::error::Error, X: std::error::Error + 'static>(
    e: &X,
) -> RPCError<NodeId, Node, E> {
    RPCError::Network(NetworkError::new(e))
}

impl PeerConn {
    async fn call<Resp, E>(
        &self,
        which: &'static str,
        data: Vec<u8>,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, Node, E>>
    where
        Resp: serde::de::DeserializeOwned,
        E: std::error::Error + serde::de::DeserializeOwned,
    {
        let mut client = self.channels.raft(&self.addr).map_err(|e| net_err(&e))?;
        let mut request = tonic::Request::new(Payload { data });
        request.set_timeout(option.hard_ttl());
        let fut = async {
            match which {
                "append" => client.append_entries(request).await,
                "vote" => client.vote(request).await,
                _ => client.install_snapshot(request).await,
            }
        };
        let reply: Reply = match tokio::time::timeout(option.hard_ttl(), fut).await {
            Err(_) => {
                let e = std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("{which} to {} timed out", self.addr),
                );
                return Err(RPCError::Network(NetworkError::new(&e)));
            }
            Ok(Err(status)) => return Err(transport_err(&status)),
            Ok(Ok(r)) => r.into_inner(),
        };
        let result: Result<Resp, E> =
            serde_json::from_slice(&reply.data).map_err(|e| net_err(&e))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerConn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        let data = serde_json::to_vec(&rpc).map_err(|e| net_err(&e))?;
        if data.len() > MAX_APPEND_BYTES && rpc.entries.len() > 1 {
            // Ask openraft to send fewer entries per request instead of failing forever.
            let hint = (rpc.entries.len() as u64 / 2).max(1);
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(hint),
            ));
        }
        self.call("append", data, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let data = serde_json::to_vec(&rpc).map_err(|e| net_err(&e))?;
        self.call("snapshot", data, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        let data = serde_json::to_vec(&rpc).map_err(|e| net_err(&e))?;
        self.call("vote", data, &option).await
    }
}
