//! Per-pod tallies in `pod_usage` (what the programs created; `podgate_common::PodUsage`).
//! Only atomic adds touch them here, so no increment is lost to another CPU, and the daemon's
//! deletions go to `pod_freed` instead: nobody read-modify-writes another writer's field.

use podgate_common::{PodUsage, nat::pressure_level, sg::pod_flow_admits};

use crate::maps::{NAT4_PRESSURE, NODE, PODS, POD_FREED, POD_USAGE};

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
    crate::atomic::add_one(f);
}

/// What pod `id` holds now of `kind`: created minus freed. Reads the two fields only (no
/// struct copies: `pod_ingress` is close to the 512-byte stack limit of Linux 6.1).
#[inline(never)]
pub fn held(id: u32, kind: Kind) -> u64 {
    held_inline(id, kind)
}

#[inline(always)]
fn held_inline(id: u32, kind: Kind) -> u64 {
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

/// [`admit_inbound`]: the flow may be created.
pub const ADMIT: u8 = 0;
/// [`admit_inbound`]: the pod holds 7/8 of `[limits] pod_flows` IPv4 flows already.
pub const REFUSE_POD_FLOWS: u8 = 1;
/// [`admit_inbound`]: `nat4_pressure` refuses inbound-created flows.
pub const REFUSE_PRESSURE: u8 = 2;

/// Whether a remote may create one more `ct4` flow toward the pod on `pod_ifindex`: not while
/// `nat4_pressure` is set (any level), and only while the pod holds less than 7/8 of
/// `[limits] pod_flows` IPv4 flows (the reserve `sg::pod_flow_admits` keeps for ct6 too; the
/// pod's own flows are not bounded by it here, only by its mappings' quota and the maps). One
/// BPF function without calls of its own: on `pod_ingress`'s hairpin path a deeper call chain
/// would pass 6.1's 512-byte stack limit.
#[inline(never)]
pub fn admit_inbound(pod_ifindex: u32) -> u8 {
    if NAT4_PRESSURE.get(0).is_some_and(|p| *p != pressure_level::NONE) {
        return REFUSE_PRESSURE;
    }
    let bound = NODE.get(0).map_or(0, |n| n.pod_flows);
    if bound == 0 {
        return ADMIT;
    }
    // SAFETY: map value pointer.
    let Some(id) = PODS.get_ptr(&pod_ifindex).map(|p| unsafe { (*p).id }) else { return ADMIT };
    if pod_flow_admits(held_inline(id, Kind::Flow4), bound, true) { ADMIT } else { REFUSE_POD_FLOWS }
}
