//! The checked-in generated code and descriptor must match what the build generates from
//! `proto/`. Run with `TGB_BLESS=1` after changing a `.proto` file to update them.

use std::path::PathBuf;

fn check(file: &str, built: &[u8]) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("generated")
        .join(file);
    if std::env::var_os("TGB_BLESS").is_some() {
        std::fs::write(&path, built).unwrap();
        return;
    }
    let checked_in = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run TGB_BLESS=1 cargo test -p tgb-proto",
            path.display()
        )
    });
    assert!(
        checked_in == built,
        "{} drifted from proto/: run TGB_BLESS=1 cargo test -p tgb-proto and commit",
        path.display()
    );
}

#[test]
fn generated_rust_matches_checked_in() {
    check("tgbridge.v1.rs", tgb_proto::GENERATED_SOURCE.as_bytes());
}

#[test]
fn descriptor_matches_checked_in() {
    check("descriptor.bin", tgb_proto::DESCRIPTOR);
}
