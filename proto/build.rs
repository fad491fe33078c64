//! Generates the orch.v1 gRPC code from `orch/v1/*.proto` with protoc (Debian's
//! `protobuf-compiler`; `deploy/test.sh` installs it).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=orch/v1/orch.proto");
    tonic_prost_build::configure()
        .compile_protos(&["orch/v1/orch.proto"], &["."])
        .map_err(|e| format!("protoc failed on orch/v1/orch.proto (is protobuf-compiler installed?): {e}"))?;
    Ok(())
}
