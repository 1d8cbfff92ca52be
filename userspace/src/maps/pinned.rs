//! The one table of pinned maps: every map of the object is pinned (its state survives a restart)
//! unless it is listed in `UNPINNED` with the reason; a test checks the object against both.

use podgate_common::{frag::map_names as frag, map_names as node, nat::map_names as nat, sg::map_names as sg};

/// Every map podgate pins under `<root>/maps/`, by the name it has in the object.
pub const PINNED: &[&str] = &[
    node::NODE,
    node::PODS,
    node::PODS_V4,
    node::PODS_V6,
    node::POD_NAMES,
    node::POD_USAGE,
    node::POD_FREED,
    node::STATS,
    node::EVENTS,
    nat::NAT4_MAP,
    nat::NAT4_CLAIM,
    nat::CT4,
    nat::FRAG4,
    frag::FRAG4_PUNT,
    frag::FRAG4_PENDING,
    frag::FRAG4_PUNT_ALIVE,
    nat::NAT4_PRESSURE,
    sg::SG_RULES,
    sg::SG_RANGES,
    sg::SG_GEN,
    sg::CT6,
    sg::CT6_GUARD,
    sg::FRAG6,
    sg::SG_SCRATCH,
    sg::SG_NAMES,
];

/// Maps of the object deliberately left unpinned, with why: each load gets a fresh one, and
/// nothing in them outlives one program run (or one loader).
pub const UNPINNED: &[(&str, &str)] = &[
    ("sg_lookup", "per-CPU scratch of the rule lookup's bpf_loop; nothing outlives one lookup"),
    ("frag4_punt_buf", "per-CPU room to assemble one orphan-fragment record; too big for the stack"),
    ("AYA_LOGS", "aya-log's ring buffer, read by the logger of the loading process (daemon::bpf_log)"),
];

/// [`PINNED`] as a vector (the loader's list of pin paths).
pub fn all_map_names() -> Vec<&'static str> {
    PINNED.to_vec()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The maps the embedded object defines (aya-obj parses the ELF without a kernel).
    fn object_maps() -> BTreeSet<String> {
        let obj = aya_obj::Object::parse(crate::EBPF_OBJECT).expect("the embedded eBPF object parses");
        obj.maps
            .keys()
            // Sections aya creates for globals and the log buffer are not maps podgate owns.
            .filter(|n| !n.starts_with('.'))
            .cloned()
            .collect()
    }

    #[test]
    fn every_map_of_the_object_is_pinned_or_deliberately_unpinned() {
        let listed: BTreeSet<String> =
            PINNED.iter().chain(UNPINNED.iter().map(|(n, _)| n)).map(|n| n.to_string()).collect();
        let missing: Vec<_> = object_maps().difference(&listed).cloned().collect();
        assert!(missing.is_empty(), "maps in the object that are neither in PINNED nor in UNPINNED: {missing:?}");
    }

    #[test]
    fn every_listed_map_exists_in_the_object() {
        let in_object = object_maps();
        for name in PINNED.iter().chain(UNPINNED.iter().map(|(n, _)| n)) {
            assert!(in_object.contains(*name), "{name} is listed but the object has no such map");
        }
        let unique: BTreeSet<_> = PINNED.iter().collect();
        assert_eq!(unique.len(), PINNED.len(), "a map is listed twice in PINNED");
    }
}
