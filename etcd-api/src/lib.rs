//! etcd's v3 API as Rust types and gRPC stubs: the client that `kvs-bench`
//! uses to measure etcd, and the server traits for an etcd-compatible port.
//!
//! Generated at build time from the vendored `proto/` folder (etcd's own
//! files, Apache-2.0, see `proto/LICENSE`) by `build.rs`.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

pub mod authpb {
    tonic::include_proto!("authpb");
}

pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}

pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}
