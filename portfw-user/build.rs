//! Builds the kernel program for the bpf target and leaves it in OUT_DIR for
//! `include_bytes_aligned!`.
use std::{env, fs, path::Path};

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};
use portfw_lab::toolchain;

fn main() -> anyhow::Result<()> {
    let manifest_dir = env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let root_dir = Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("portfw-user has no parent directory"))?
        .join("portfw-ebpf");
    let root_dir = root_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", root_dir.display()))?;

    // The pinned nightly when it is installed, else plain `nightly`: the same choice that
    // `cargo xtask setup` checked. With neither, `nightly` fails with the hint below.
    let chosen = toolchain::ebpf_toolchain();
    let toolchain = match chosen.as_deref() {
        Some(name) => Toolchain::Custom(name),
        None => Toolchain::Nightly,
    };

    aya_build::build_ebpf(
        [Package {
            name: "portfw-ebpf",
            root_dir,
            ..Default::default()
        }],
        toolchain,
    )
    .context(
        "building the eBPF program failed; run `cargo xtask setup` to install the nightly \
         toolchain with rust-src and bpf-linker",
    )?;

    // With AYA_BUILD_SKIP (host-only checks such as clippy on a machine without the bpf
    // toolchain) nothing is built: leave an empty object, which the loader refuses clearly.
    let object = Path::new(&env::var("OUT_DIR").context("OUT_DIR not set")?).join("portfw");
    if !object.exists() {
        fs::write(&object, b"").with_context(|| format!("writing {}", object.display()))?;
    }
    Ok(())
}
