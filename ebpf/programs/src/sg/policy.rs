//! The rule lookup: one LPM lookup per group of the pod, then a bounded binary search over the
//! entry's ranges (podgate_common::sg explains the layout).

use aya_ebpf::maps::lpm_trie::Key;
use podgate_common::{
    MAX_POD_GROUPS, Pod,
    sg::{SG_KEY_FIXED_BITS, SG_RANGES_PER_GEN, SgKey, find_range},
};

use crate::maps::{SG_GEN, SG_RANGES, SG_RULES};

/// The id of a rule of one of the pod's groups that allows `key` toward/from `remote`.
#[inline(always)]
pub fn lookup(pod: &Pod, dir: u8, remote: &[u8; 16], key: u32) -> Option<u32> {
    let generation = SG_GEN.get(0).copied().unwrap_or(0) & 1;
    let half = generation * SG_RANGES_PER_GEN;
    let n = pod.group_count as usize;
    let mut i = 0;
    while i < MAX_POD_GROUPS {
        if i >= n {
            break;
        }
        let k = Key::new(SG_KEY_FIXED_BITS + 128, SgKey::new(pod.groups[i], generation as u8, dir, *remote));
        if let Some(e) = SG_RULES.get(&k) {
            let count = if e.count > SG_RANGES_PER_GEN { SG_RANGES_PER_GEN } else { e.count };
            let base = half + e.base;
            if let Some(rule) = find_range(count, key, |j| SG_RANGES.get(base + j).copied(), super::opaque) {
                return Some(rule);
            }
        }
        i += 1;
    }
    None
}
