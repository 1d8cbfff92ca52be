//! Userspace side of the IPv4 SNAT state (mirrors `ebpf/programs/src/snat`): the GC here; listing,
//! flush and pressure still in `crate::nat`.

pub mod gc;
