//! Compiles `proto/easel/v1/*.proto` with protox (pure Rust, no system `protoc`) and generates the
//! prost messages plus tonic client and server, and a file descriptor set for server reflection.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/easel/v1/easel.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("easel_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
