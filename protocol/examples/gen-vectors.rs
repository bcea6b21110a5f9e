//! Writes `protocol/vectors/*.json` from fixed seeds and a fixed clock.
//!
//! `cargo run -p vworkspace-protocol --example gen-vectors`

#[path = "../tests/support/vectors.rs"]
mod vectors;

fn main() -> std::io::Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors");
    std::fs::create_dir_all(&dir)?;
    for (name, text) in vectors::all() {
        std::fs::write(dir.join(name), text)?;
        println!("wrote vectors/{name}");
    }
    Ok(())
}
