//! Generated gRPC code for berth's server-to-server protocol (`proto/raft.proto`).
#![allow(clippy::all)]

pub mod raft {
    tonic::include_proto!("berth.raft.v1");
}
