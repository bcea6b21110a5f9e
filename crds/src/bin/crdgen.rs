//! Writes the CRD manifests generated from the Rust types.
//!
//! Usage: `cargo run -p vworkspace-crds --bin crdgen -- [DIR]` (default: the
//! crate's `manifests/`); `--check` fails when the files in DIR are stale.

use anyhow::Context;

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut check = false;
    let mut dir = None;
    for arg in std::env::args_os().skip(1) {
        if arg == "--check" {
            check = true;
        } else if dir.is_none() {
            dir = Some(std::path::PathBuf::from(arg));
        } else {
            anyhow::bail!("usage: crdgen [--check] [DIR]");
        }
    }
    let dir = dir.unwrap_or_else(vworkspace_crds::manifests::committed_dir);
    if check {
        vworkspace_crds::manifests::check(&dir)?;
        println!("{} is up to date", dir.display());
    } else {
        for path in vworkspace_crds::manifests::write(&dir)
            .with_context(|| format!("writing manifests to {}", dir.display()))?
        {
            println!("wrote {}", path.display());
        }
    }
    Ok(())
}
