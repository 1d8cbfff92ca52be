use which::which;

/// bpf-linker is not a Cargo dependency, so Cargo cannot notice when it is rebuilt; rebuilding
/// when the linker binary changes keeps stale objects from surviving a linker upgrade.
fn main() {
    let bpf_linker = which("bpf-linker").expect(
        "bpf-linker not found on PATH: run `cargo xtask setup` (it builds bpf-linker 0.13 for LLVM 22)",
    );
    println!("cargo:rerun-if-changed={}", bpf_linker.to_str().unwrap());
}
