//! Typed access to the pinned maps; `batch` is the one module that issues raw bpf(2) map commands.

pub mod batch;
