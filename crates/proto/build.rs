//! Compiles `proto/` with protox, a protobuf compiler written in Rust, so that no
//! `protoc` has to be installed to build the CLI on any platform.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const PROTO: &str = "proto/apitrace/v1/apitrace.proto";
    println!("cargo:rerun-if-changed={PROTO}");
    let descriptors = protox::compile([PROTO], ["proto"])?;
    let grpc = std::env::var_os("CARGO_FEATURE_GRPC").is_some();
    tonic_prost_build::configure()
        .build_server(grpc)
        .build_client(grpc)
        // Clients bring their own channel (a port-forward, a namespace-bound socket).
        .build_transport(false)
        .emit_rerun_if_changed(false)
        .compile_fds(descriptors)?;
    Ok(())
}
