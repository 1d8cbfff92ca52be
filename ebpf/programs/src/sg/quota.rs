//! Admission of new `ct6` entries: the pod's share (`[limits] pod_flows` against
//! `pod_usage - pod_freed`) and the node-wide guard (`ct6_guard`), and the tallies a new entry
//! adds to. Only on the path that creates a flow: packets of a tracked flow never come here.
use podgate_common::sg::{CT6_GUARD_CREATED, CT6_GUARD_LIMIT, CT6_GUARD_LIMIT_OUT, guard_refuses, pod_flow_admits};

use crate::maps::{CT6_GUARD, NODE, POD_FREED, POD_USAGE};

/// 0: admitted; 1: the pod is at its bound; 2: the node-wide guard refuses the flow (inbound
/// ones from the high-water mark on, outbound ones only where the LRU would evict).
/// A pod without a `pod_usage` entry (only between the steps of `pod add`, which writes it
/// before the pod record) is not bounded.
#[inline(never)]
pub fn admit(pod_id: u32, inbound: bool) -> u32 {
    let bound = NODE.get(0).map_or(0, |n| n.pod_flows);
    if bound != 0 {
        // SAFETY: plain data; a racing add makes `held` at most one per CPU stale.
        if let Some(u) = unsafe { POD_USAGE.get(&pod_id) } {
            let freed = unsafe { POD_FREED.get(&pod_id) }.map_or(0, |f| f.flows6);
            if !pod_flow_admits(u.flows6.saturating_sub(freed), bound, inbound) {
                return 1;
            }
        }
    }
    let created = CT6_GUARD.get(CT6_GUARD_CREATED).copied().unwrap_or(0);
    let slot = if inbound { CT6_GUARD_LIMIT } else { CT6_GUARD_LIMIT_OUT };
    let limit = CT6_GUARD.get(slot).copied().unwrap_or(0);
    if guard_refuses(created, limit) {
        return 2;
    }
    0
}

/// Counts one new `ct6` entry for the pod and for the node.
#[inline(never)]
pub fn count(pod_id: u32) {
    if let Some(u) = POD_USAGE.get_ptr_mut(&pod_id) {
        // SAFETY: map value pointer.
        crate::atomic::add_one(unsafe { &raw mut (*u).flows6 });
    }
    if let Some(c) = CT6_GUARD.get_ptr_mut(CT6_GUARD_CREATED) {
        crate::atomic::add_one(c);
    }
}
