//! podgate's userspace: configuration, loading and pinning, map access, and the CLI verbs.

pub mod sg;

/// The eBPF object built by `build.rs` (BTF included).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/podgate"));
