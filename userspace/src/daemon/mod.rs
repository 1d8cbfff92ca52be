//! What only the running daemon does: the fragment slow path, the metrics page, eBPF log relay.

pub mod bpf_log;
pub mod frag_punt;
pub mod metrics;
