//! podgate's userspace: configuration, loading and pinning, map access, garbage collection.
//! The `podgate` binary (src/main.rs and src/cli/) is a thin layer over this library.
//!
//! Import floors, bottom up (a module only uses those below it): `pins`, `netif`, `util`,
//! `attach::foreign` → `error` → `maps` → `config`, `sg`, `snat` → `node`, `attach` → `pods` →
//! `control`, `daemon` → `cli` (the binary).

pub mod attach;
pub mod cni;
pub mod config;
pub mod control;
pub mod daemon;
pub mod error;
pub mod maps;
pub mod netif;
pub mod node;
pub mod pins;
pub mod pods;
pub mod reserved_ports;
pub mod sg;
pub mod snat;
pub mod util;

/// The eBPF object built by `build.rs` (BTF included).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/podgate"));
