use std::env;

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

/// Builds the eBPF object that `src/lib.rs` embeds.
///
/// The default toolchain is Debian's `rustc-web`, registered with rustup as `podgate-debian` by
/// `cargo xtask setup`: it ships a prebuilt `core` for bpfel-unknown-none, so it needs no
/// `-Zbuild-std`. `RUSTC_BOOTSTRAP=aya_ebpf,podgate` unlocks unstable features for aya-ebpf and
/// the programs' binary crate alone (a global `1` would make aya-build ask for build-std); the
/// programs need `asm_experimental_arch` for the atomic add `core` lacks on BPF. `PODGATE_BPF_TOOLCHAIN=nightly` selects
/// the upstream route (rustup nightly with rust-src).
fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=PODGATE_BPF_TOOLCHAIN");
    let toolchain = env::var("PODGATE_BPF_TOOLCHAIN").unwrap_or_else(|_| "podgate-debian".into());
    if toolchain != "nightly" && !toolchain.starts_with("nightly-") {
        // SAFETY: build scripts are single-threaded at this point.
        unsafe { env::set_var("RUSTC_BOOTSTRAP", "aya_ebpf,podgate") };
    }
    let metadata = cargo_metadata_root()?;
    let root_dir = format!("{metadata}/ebpf/programs");
    aya_build::build_ebpf(
        [Package {
            name: "podgate-ebpf",
            root_dir: &root_dir,
            ..Default::default()
        }],
        Toolchain::Custom(&toolchain),
    )
    .with_context(|| {
        format!(
            "building the eBPF programs with toolchain `{toolchain}` failed; \
             run `cargo xtask setup` to install the toolchain"
        )
    })?;
    // The common crate is shared with the eBPF side: rebuild when its ABI changes.
    println!("cargo:rerun-if-changed={metadata}/ebpf/common");
    Ok(())
}

fn cargo_metadata_root() -> anyhow::Result<String> {
    let manifest = env::var("CARGO_MANIFEST_DIR").map_err(|_| anyhow!("CARGO_MANIFEST_DIR unset"))?;
    let root = std::path::Path::new(&manifest)
        .parent()
        .ok_or_else(|| anyhow!("userspace crate has no parent directory"))?;
    Ok(root.display().to_string())
}
