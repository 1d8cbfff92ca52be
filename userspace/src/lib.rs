//! podgate's userspace: configuration, loading and pinning, map access, garbage collection.
//! The `podgate` binary (src/main.rs and src/cli/) is a thin layer over this library.

pub mod bpf_log;
pub mod cni;
pub mod config;
pub mod control;
pub mod dataplane;
pub mod frag_punt;
pub mod health;
pub mod foreign;
pub mod maps;
pub mod metrics;
pub mod nat;
pub mod netif;
pub mod node_source;
pub mod pins;
pub mod reserved_ports;
pub mod sg_maps;
pub mod snat;
pub mod upgrade;
pub mod usage;

pub mod sg;

/// The eBPF object built by `build.rs` (BTF included).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/podgate"));
