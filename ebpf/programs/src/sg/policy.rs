//! The rule lookup: one LPM lookup per group of the pod, then a bounded binary search over the
//! entry's ranges (podgate_common::sg explains the layout).
//!
//! The loop over the groups runs in a `bpf_loop` callback: the verifier checks its body on its
//! own instead of once per path into the lookup, which kept 6.1's verifier below its 1M limit.
//! The callback sees no packet, only the values copied into [`Lookup`].

use core::ffi::c_void;

use aya_ebpf::{helpers::generated::bpf_loop, maps::lpm_trie::Key};
use podgate_common::{
    MAX_POD_GROUPS, Pod,
    sg::{NO_RULE, SG_KEY_FIXED_BITS, SG_RANGES_PER_GEN, SgKey, find_range},
};

use crate::maps::{SG_GEN, SG_LOOKUP, SG_RANGES, SG_RULES};

/// The lookup's state, shared with the callback (`bpf_loop` passes only a stack pointer, and
/// the stack is full): the LPM key being probed, the pod's groups, and the result.
#[repr(C)]
pub struct GroupScan {
    lpm: Key<SgKey>,
    key: u32,
    /// The matching rule; valid when `found` is 1.
    rule: u32,
    found: u32,
    groups: [u32; MAX_POD_GROUPS],
}

/// The id of a rule of one of the pod's groups that allows `key` toward/from `remote`.
#[inline(always)]
pub fn lookup(pod: &Pod, dir: u8, remote: &[u8; 16], key: u32) -> Option<u32> {
    let s = SG_LOOKUP.get_ptr_mut(0)?;
    let generation = SG_GEN.get(0).copied().unwrap_or(0) & 1;
    // SAFETY: a per-CPU slot, used by one lookup at a time on this CPU.
    unsafe {
        (*s).lpm = Key::new(SG_KEY_FIXED_BITS + 128, SgKey::new(0, generation as u8, dir, *remote));
        (*s).key = key;
        (*s).rule = NO_RULE;
        (*s).found = 0;
        (*s).groups = pod.groups;
    }
    let n = if pod.group_count as usize > MAX_POD_GROUPS { MAX_POD_GROUPS as u32 } else { pod.group_count as u32 };
    // SAFETY: the callback takes no context; it works on the per-CPU slot.
    let r = unsafe { bpf_loop(n, group as *mut c_void, core::ptr::null_mut(), 0) };
    // SAFETY: as above.
    unsafe { if r < 0 || (*s).found == 0 { None } else { Some((*s).rule) } }
}

/// One group: 0 to go on with the next, 1 to stop (a match, or no state).
extern "C" fn group(i: u64, _ctx: *mut c_void) -> i64 {
    let Some(s) = SG_LOOKUP.get_ptr_mut(0) else {
        return 1;
    };
    let i = i as usize;
    if i >= MAX_POD_GROUPS {
        return 1;
    }
    // SAFETY: the per-CPU slot that `lookup` filled.
    let s = unsafe { &mut *s };
    s.lpm.data.group = s.groups[i].to_be_bytes();
    let generation = s.lpm.data.generation as u32;
    let Some(e) = SG_RULES.get(&s.lpm) else {
        return 0;
    };
    let count = if e.count > SG_RANGES_PER_GEN { SG_RANGES_PER_GEN } else { e.count };
    let base = generation * SG_RANGES_PER_GEN + e.base;
    match find_range(count, s.key, |j| SG_RANGES.get(base + j).copied(), super::opaque) {
        Some(rule) => {
            s.rule = rule;
            s.found = 1;
            1
        }
        None => 0,
    }
}
