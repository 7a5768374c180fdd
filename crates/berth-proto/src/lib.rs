//! Generated gRPC code: the server-to-server protocol (`proto/raft.proto`) and the
//! agent session (`proto/agent.proto`).
#![allow(clippy::all)]

pub mod raft {
    tonic::include_proto!("berth.raft.v1");
}

pub mod agent {
    tonic::include_proto!("berth.agent.v1");
}
