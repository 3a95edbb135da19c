//! Compiles etcd's .proto files (vendored in `proto/`) into Rust with protox,
//! a protobuf compiler written in Rust, so no crate of the workspace needs a
//! system `protoc` or the protobuf headers. protox carries the well-known
//! types (`google/protobuf/descriptor.proto` and friends) itself.

const PROTO_ROOT: &str = "proto";

/// The services kvs speaks or will speak; their imports come along.
const SERVICES: &[&str] = &[
    "etcd/api/etcdserverpb/rpc.proto",
    "etcd/server/etcdserver/api/v3election/v3electionpb/v3election.proto",
    "etcd/server/etcdserver/api/v3lock/v3lockpb/v3lock.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    let descriptors = protox::compile(SERVICES, [PROTO_ROOT])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
