//! Compiles our own minimal protos under `proto/` (see `proto/README.md`) into Rust.
//!
//! `protox` parses them in pure Rust, so the build needs no network and no system `protoc`;
//! `tonic-prost-build` then generates the messages and gRPC stubs into `$OUT_DIR`, where
//! `src/proto.rs` includes them.

use std::{error::Error, path::PathBuf};

use protox::prost::Message as _;

/// The import root: every file is named by its upstream import path below it.
const INCLUDE: &str = "proto";

/// BuildKit's control API: we only call it (client stubs).
const CLIENT_PROTOS: &[&str] = &[
    "proto/github.com/moby/buildkit/api/services/control/control.proto",
    "proto/google/rpc/status.proto",
];

/// Session services that the daemon calls back over the session: we only serve them (server stubs).
/// Their descriptor set is also written out, to list the served method paths in the session header.
const SERVER_PROTOS: &[&str] = &[
    "proto/grpc/health/v1/health.proto",
    "proto/github.com/moby/buildkit/session/filesync/filesync.proto",
    "proto/github.com/moby/buildkit/session/auth/auth.proto",
    "proto/github.com/containerd/containerd/api/services/content/v1/content.proto",
    "proto/github.com/moby/buildkit/session/secrets/secrets.proto",
    "proto/github.com/moby/buildkit/session/sshforward/ssh.proto",
];

/// Read by `src/proto.rs` as `FILE_DESCRIPTOR_SET`.
const DESCRIPTOR_FILE: &str = "buildopt_descriptor.bin";

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed={INCLUDE}");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?);

    let client = protox::compile(CLIENT_PROTOS, [INCLUDE])?;
    tonic_prost_build::configure()
        .build_server(false)
        .compile_fds(client)?;

    let mut server = protox::compile(SERVER_PROTOS, [INCLUDE])?;
    // Clients are generated too, but only the session's in-memory tests use them (they play the daemon).
    tonic_prost_build::configure()
        // File chunks are read into buffers that are sent without copying.
        .bytes(".fsutil.types.Packet.data")
        .compile_fds(server.clone())?;

    // Only names are needed at run time; drop comments and spans to keep the blob small.
    for file in &mut server.file {
        file.source_code_info = None;
    }
    std::fs::write(out.join(DESCRIPTOR_FILE), server.encode_to_vec())?;
    Ok(())
}
