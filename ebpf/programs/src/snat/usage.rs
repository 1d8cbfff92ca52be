//! Per-pod tallies in `pod_usage` (what the programs created; `podgate_common::PodUsage`).
//! Only atomic adds touch them here, so no increment is lost to another CPU, and the daemon's
//! deletions go to `pod_freed` instead: nobody read-modify-writes another writer's field.

use aya_ebpf::bindings::BPF_NOEXIST;
use podgate_common::PodUsage;

use crate::maps::{POD_FREED, POD_USAGE};

/// Which tally an entry counts in.
#[derive(Clone, Copy)]
pub enum Kind {
    Mapping,
    Flow4,
}

/// Adds one entry of `kind` to pod `id`. A pod registered before these maps existed has no
/// entry yet: it gets a zeroed one (`BPF_NOEXIST`, so a racing CPU's adds are never reset).
#[inline(always)]
pub fn charge(id: u32, kind: Kind) {
    let mut p = POD_USAGE.get_ptr_mut(&id);
    if p.is_none() {
        let _ = POD_USAGE.insert(&id, &PodUsage::default(), BPF_NOEXIST as u64);
        p = POD_USAGE.get_ptr_mut(&id);
    }
    let Some(u) = p else { return };
    // SAFETY: map value pointer; only the field's address is taken.
    let f = unsafe {
        match kind {
            Kind::Mapping => &raw mut (*u).mappings,
            Kind::Flow4 => &raw mut (*u).flows4,
        }
    };
    atomic_add(f);
}

/// What pod `id` holds now of `kind`: created minus freed.
#[inline(always)]
pub fn held(id: u32, kind: Kind) -> u64 {
    let zero = PodUsage::default();
    // SAFETY: map value pointers, read once (a torn read of a racing add only errs by one).
    let u = POD_USAGE.get_ptr(&id).map(|p| unsafe { *p }).unwrap_or(zero);
    let f = POD_FREED.get_ptr(&id).map(|p| unsafe { *p }).unwrap_or(zero);
    let h = PodUsage::held(&u, &f);
    match kind {
        Kind::Mapping => h.mappings,
        Kind::Flow4 => h.flows4,
    }
}

/// `*p += 1` as one atomic instruction (no fetch: the old value is not needed, which keeps the
/// instruction within what every supported kernel verifies).
#[inline(always)]
fn atomic_add(p: *mut u64) {
    // SAFETY: `p` is an aligned u64 in map memory, valid for the program run.
    unsafe {
        core::arch::asm!("lock *(u64 *)({p} + 0) += {v}", p = in(reg) p, v = in(reg) 1u64, options(nostack));
    }
}
