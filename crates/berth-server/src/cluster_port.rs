//! The cluster port (`--raft-addr`): one gRPC server for the Raft RPCs and the
//! server-to-server calls ([`crate::node`]), and the agents' sessions
//! ([`crate::agent_service`]).

use std::sync::Arc;

use berth_proto::raft::cluster_server::ClusterServer;
use berth_proto::raft::raft_server::RaftServer;

use crate::node::{GrpcService, NodeConfig, ServerNode};

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
        // Raft and forwarding are small request/response messages: without TCP_NODELAY on the
        // accepted side, Nagle plus delayed ACKs add ~40 ms to every round trip.
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let svc = GrpcService { node: node.clone() };
        let agent_svc = crate::agent_service::service(node.clone());
        let mut shutdown = shutdown;
        tokio::spawn(async move {
            let res = tonic::transport::Server::builder()
                .add_service(
                    RaftServer::new(svc.clone())
                        .max_decoding_message_size(64 << 20)
                        .max_encoding_message_size(64 << 20),
                )
                .add_service(agent_svc)
                .add_service(
                    ClusterServer::new(svc)
                        .max_decoding_message_size(64 << 20)
                        .max_encoding_message_size(64 << 20),
                )
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
