//! Types and service traits generated from `proto/dispatch/v1/dispatch.proto`.
#![allow(clippy::all, clippy::pedantic, missing_docs)]

tonic::include_proto!("dispatch.v1");

/// The encoded descriptors, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("dispatch_descriptor");
