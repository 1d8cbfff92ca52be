//! When the NAT maps count as full (`nat4_pressure`).
//!
//! ct4, nat4_map and nat4_claim are LRU hashes: an insert into a full one succeeds by evicting
//! some other entry, and a live flow's entry is as likely a victim as a dead one. The daemon
//! therefore watches their occupancy after every GC pass and, above a high-water mark, tells the
//! programs to refuse new flows (`drop_map_full`) until a later pass brings the occupancy under
//! a low-water mark. Eviction stays possible between two passes, as the last resort.

/// Free nodes each CPU pulls from the LRU's global free list at a time (the kernel's
/// `LOCAL_FREE_TARGET`, kernel/bpf/bpf_lru_list.c). When the global list holds fewer, the kernel
/// evicts to make up the difference: an LRU map starts evicting up to this many entries per CPU
/// (plus one batch) before it is full.
pub const LRU_LOCAL_FREE: u64 = 128;

/// The occupancy at which new flows are refused: 90 % of `max_entries`, or lower where the
/// kernel's per-CPU free lists would start evicting earlier.
pub const fn high_water(max_entries: u64, ncpus: u64) -> u64 {
    let pct = max_entries / 10 * 9;
    let lru = max_entries.saturating_sub(LRU_LOCAL_FREE * (ncpus + 1));
    if pct < lru { pct } else { lru }
}

/// The occupancy under which new flows are accepted again: a tenth of the map below the
/// high-water mark, so that the state does not flip on every pass.
pub const fn low_water(max_entries: u64, ncpus: u64) -> u64 {
    high_water(max_entries, ncpus).saturating_sub(max_entries / 10)
}

/// The next pressure state of one map from its occupancy (hysteresis between the marks).
pub const fn under_pressure(was: bool, used: u64, max_entries: u64, ncpus: u64) -> bool {
    if was {
        used >= low_water(max_entries, ncpus)
    } else {
        used >= high_water(max_entries, ncpus)
    }
}

/// The smallest map size the daemon accepts on `ncpus` CPUs: the high-water mark must leave
/// room for at least half of the map.
pub const fn min_entries(ncpus: u64) -> u64 {
    2 * LRU_LOCAL_FREE * (ncpus + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn marks_for_a_large_map() {
        assert_eq!(high_water(1_048_576, 2), 943_713);
        assert_eq!(low_water(1_048_576, 2), 943_713 - 104_857);
    }

    #[test]
    fn small_maps_leave_room_for_the_per_cpu_free_lists() {
        // 1024 entries on 2 CPUs: the kernel may evict from 1024 - 3 × 128 = 640 entries on.
        assert_eq!(high_water(1024, 2), 640);
        assert!(high_water(min_entries(2), 2) >= min_entries(2) / 2);
    }

    #[test]
    fn hysteresis() {
        let (max, n) = (100_000, 2);
        let (hi, lo) = (high_water(max, n), low_water(max, n));
        assert!(!under_pressure(false, hi - 1, max, n));
        assert!(under_pressure(false, hi, max, n));
        assert!(under_pressure(true, lo, max, n), "stays on between the marks");
        assert!(!under_pressure(true, lo - 1, max, n));
    }

    proptest! {
        #[test]
        fn marks_are_ordered_and_inside_the_map(max in 0u64..1 << 24, ncpus in 1u64..512) {
            let (hi, lo) = (high_water(max, ncpus), low_water(max, ncpus));
            prop_assert!(lo <= hi && hi <= max);
            prop_assert!(hi + LRU_LOCAL_FREE * (ncpus + 1) <= max || hi == 0);
        }
    }
}
