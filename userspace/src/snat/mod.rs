//! Userspace side of the IPv4 SNAT state (mirrors `ebpf/programs/src/snat`): listing and
//! per-pod flush, the GC with its eviction repair, and map pressure.

pub mod gc;
mod list;
mod preview;
mod pressure;
mod report;

use podgate_common::Timeouts;

pub use list::{FlowRow, MappingRow, flow_rows, flows, flush_pod, mapping_rows, mappings};
pub use preview::gc_preview;
pub use pressure::{occupancy, pressure_level, update_pressure};
pub use report::{GcPreview, GcReport};

use crate::pins::Pins;

/// One garbage-collection pass at time `now` (CLOCK_BOOTTIME ns) over the pinned maps, with
/// batched reads and deletions (`crate::snat::gc`).
pub fn gc(pins: &Pins, t: &Timeouts, unanswered_secs: u32, now: u64) -> Result<GcReport, gc::GcError> {
    gc::pass(&gc::KernelNat::open(pins)?, t, unanswered_secs, now)
}

/// [`gc`] with its writes (eviction repair, crediting) under `lock`, the daemon's mutation lock;
/// the walks and the deletions of unchanged expired entries run without it.
pub fn gc_locked<'a>(
    pins: &'a Pins,
    t: &Timeouts,
    unanswered_secs: u32,
    now: u64,
    lock: &'a dyn Fn() -> Box<dyn gc::Held + 'a>,
) -> Result<GcReport, gc::GcError> {
    gc::pass(&gc::KernelNat::open(pins)?.with_lock(lock), t, unanswered_secs, now)
}
