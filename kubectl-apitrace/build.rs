//! Compiles the demo's gRPC service (`proto/demo.proto`) with protox, as
//! `apitrace-proto` compiles its own: no `protoc` anywhere.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const PROTO: &str = "proto/demo.proto";
    println!("cargo:rerun-if-changed={PROTO}");
    let descriptors = protox::compile([PROTO], ["proto"])?;
    tonic_prost_build::configure()
        // The demo's pods bring their own sockets (created in their namespaces).
        .build_transport(false)
        .emit_rerun_if_changed(false)
        .compile_fds(descriptors)?;
    Ok(())
}
