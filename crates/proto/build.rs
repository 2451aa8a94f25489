//! Compiles `proto/tgbridge/v1/*.proto` with protox (no system protoc) and prost-build.
//! The output goes to OUT_DIR; `tests/generated.rs` fails when the checked-in copy under
//! `generated/` drifts from it (regenerate with `TGB_BLESS=1 cargo test -p tgb-proto`).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The manifest dir of this build, not of the build script's own compilation.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let dir = root.join("tgbridge/v1");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "proto"))
        .collect();
    files.sort();
    println!("cargo:rerun-if-changed={}", dir.display());
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let fds = protox::compile(&files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    prost_build::Config::new()
        .btree_map(["."])
        .compile_fds(fds)?;
    Ok(())
}
