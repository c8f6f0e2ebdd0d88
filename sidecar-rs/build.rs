//! Generates the gRPC server (and a client, for the integration tests) from
//! `proto/dispatch/v1/dispatch.proto`, plus the encoded descriptor set that
//! server reflection serves. protoc comes from `protoc-bin-vendored` so a fresh
//! machine needs no system protobuf compiler.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);

    let proto_root = PathBuf::from("../proto");
    let proto = proto_root.join("dispatch/v1/dispatch.proto");
    println!("cargo:rerun-if-changed={}", proto.display());

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // JSON payloads stay `bytes::Bytes`: the upstream body is handed to
        // the brain without a copy.
        .bytes(".dispatch.v1.ToolCall.arguments")
        .bytes(".dispatch.v1.ToolResult.result")
        .file_descriptor_set_path(out_dir.join("dispatch_descriptor.bin"))
        .compile_protos(&[proto], &[proto_root])?;
    Ok(())
}
