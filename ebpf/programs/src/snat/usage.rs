//! Per-pod tallies in `pod_usage` (what the programs created; `podgate_common::PodUsage`).
//! Only atomic adds touch them here, so no increment is lost to another CPU, and the daemon's
//! deletions go to `pod_freed` instead: nobody read-modify-writes another writer's field.

use podgate_common::PodUsage;

use crate::maps::{POD_FREED, POD_USAGE};

/// Which tally an entry counts in.
#[derive(Clone, Copy)]
pub enum Kind {
    Mapping,
    Flow4,
}

/// Adds one entry of `kind` to pod `id`. The daemon creates the pod's entry with its `pods`
/// entries (and for every registered pod when it starts); none, nothing is charged. A BPF
/// function of its own, like [`held`]: its map keys stay off `pod_ingress`'s large frame (6.1
/// refuses a call chain over 512 bytes of stack).
#[inline(never)]
pub fn charge(id: u32, kind: Kind) {
    let Some(u) = POD_USAGE.get_ptr_mut(&id) else { return };
    // SAFETY: map value pointer; only the field's address is taken.
    let f = unsafe {
        match kind {
            Kind::Mapping => &raw mut (*u).mappings,
            Kind::Flow4 => &raw mut (*u).flows4,
        }
    };
    atomic_add(f);
}

/// What pod `id` holds now of `kind`: created minus freed. Reads the two fields only (no
/// struct copies: `pod_ingress` is close to the 512-byte stack limit of Linux 6.1).
#[inline(never)]
pub fn held(id: u32, kind: Kind) -> u64 {
    // SAFETY: map value pointers, one field read each (a racing add errs by one at most).
    let read = |p: *const PodUsage| unsafe {
        match kind {
            Kind::Mapping => (*p).mappings,
            Kind::Flow4 => (*p).flows4,
        }
    };
    let u = POD_USAGE.get_ptr(&id).map(read).unwrap_or(0);
    let f = POD_FREED.get_ptr(&id).map(read).unwrap_or(0);
    u.saturating_sub(f)
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
