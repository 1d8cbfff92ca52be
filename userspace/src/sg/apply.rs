//! Writing a compilation into the maps, and cutting tracked flows the new rules no longer allow.

use std::{borrow::BorrowMut, net::Ipv6Addr};

use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, MapData, lpm_trie::Key},
};
use podgate_common::sg::{
    Ct6, DIR_EGRESS, Flow6, ICMPV6_ECHO_REQUEST, PROTO_ICMPV6, SG_RANGES_PER_GEN, SgEntry, SgKey,
    SgRange, map_names, match_key,
};

use super::{Compiled, SgError, config::Direction};

/// Handles on the rule maps (from a loaded object or from pins).
pub struct SgMaps<T> {
    pub rules: LpmTrie<T, SgKey, SgEntry>,
    pub ranges: Array<T, SgRange>,
    pub generation: Array<T, u32>,
}

fn map_err(map: &'static str, op: &'static str) -> impl FnOnce(aya::maps::MapError) -> SgError {
    move |source| SgError::Map { map, op, source }
}

impl<'a> SgMaps<&'a mut MapData> {
    /// Borrows the three rule maps of a loaded object.
    pub fn from_ebpf(ebpf: &'a mut Ebpf) -> Result<Self, SgError> {
        let (mut rules, mut ranges, mut generation) = (None, None, None);
        for (name, map) in ebpf.maps_mut() {
            match name {
                map_names::SG_RULES => rules = Some(map),
                map_names::SG_RANGES => ranges = Some(map),
                map_names::SG_GEN => generation = Some(map),
                _ => {}
            }
        }
        let missing = |m: &'static str| SgError::MissingMap(m);
        Ok(Self {
            rules: LpmTrie::try_from(rules.ok_or(missing(map_names::SG_RULES))?)
                .map_err(map_err(map_names::SG_RULES, "open"))?,
            ranges: Array::try_from(ranges.ok_or(missing(map_names::SG_RANGES))?)
                .map_err(map_err(map_names::SG_RANGES, "open"))?,
            generation: Array::try_from(generation.ok_or(missing(map_names::SG_GEN))?)
                .map_err(map_err(map_names::SG_GEN, "open"))?,
        })
    }
}

impl<T: BorrowMut<MapData>> SgMaps<T> {
    /// The live generation.
    pub fn live_generation(&self) -> Result<u32, SgError> {
        Ok(self.generation.get(&0, 0).map_err(map_err(map_names::SG_GEN, "read"))? & 1)
    }

    /// Writes `c` as the new rule set and returns its generation.
    ///
    /// Order, so that a packet never sees half of a rule set: (1) delete what is left of the
    /// generation that is not live (the set before the previous apply), (2) write the new ranges
    /// into that generation's half of `sg_ranges`, (3) insert its `sg_rules` entries, (4) flip
    /// `sg_gen` — one array write, the switch. The previous set stays in the maps until the next
    /// apply, so a packet that read the old generation just before the flip still finds its
    /// entries. A failure before (4) leaves the live set untouched; apply again to retry.
    pub fn write(&mut self, c: &Compiled) -> Result<u32, SgError> {
        let live = self.live_generation()?;
        let next = live ^ 1;
        let stale: Vec<Key<SgKey>> = self
            .rules
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.data().generation as u32 == next)
            .collect();
        for k in &stale {
            self.rules.remove(k).map_err(map_err(map_names::SG_RULES, "delete stale entry"))?;
        }
        let half = next * SG_RANGES_PER_GEN;
        for (i, r) in c.ranges.iter().enumerate() {
            self.ranges
                .set(half + i as u32, r, 0)
                .map_err(map_err(map_names::SG_RANGES, "write"))?;
        }
        for (k, e) in &c.entries {
            let key = Key::new(
                k.prefix_len(),
                SgKey::new(k.group, next as u8, k.dir, k.remote.network().octets()),
            );
            self.rules.insert(&key, e, 0).map_err(map_err(map_names::SG_RULES, "insert"))?;
        }
        self.generation.set(0, next, 0).map_err(map_err(map_names::SG_GEN, "switch"))?;
        Ok(next)
    }
}

/// Writes `c` into the rule maps of a loaded object; returns the new generation.
pub fn write_in(ebpf: &mut Ebpf, c: &Compiled) -> Result<u32, SgError> {
    SgMaps::from_ebpf(ebpf)?.write(c)
}

/// The key of the packet that opened a tracked flow, and its direction.
fn opening(flow: &Flow6, ct: &Ct6) -> (Direction, u32) {
    let dir = if ct.origin == DIR_EGRESS { Direction::Egress } else { Direction::Ingress };
    let key = if flow.proto == PROTO_ICMPV6 {
        match_key(PROTO_ICMPV6, 0, ICMPV6_ECHO_REQUEST, 0)
    } else {
        let dport = if dir == Direction::Egress { flow.remote_port } else { flow.pod_port };
        match_key(flow.proto, dport, 0, 0)
    };
    (dir, key)
}

/// Deletes the `ct6` entries whose opening packet `c` no longer allows (`sg apply --cut`), and
/// those of pods `c` does not know. Without this, established flows keep passing after a rule
/// change, as in AWS. Returns how many were cut.
pub fn cut_flows<T: BorrowMut<MapData>>(ct6: &mut HashMap<T, Flow6, Ct6>, c: &Compiled) -> Result<usize, SgError> {
    Ok(cut_flows_by_pod(ct6, c)?.values().sum::<u64>() as usize)
}

/// [`cut_flows`], returning how many flows each pod (`Pod::id`) lost, for `pod_freed`.
pub fn cut_flows_by_pod<T: BorrowMut<MapData>>(
    ct6: &mut HashMap<T, Flow6, Ct6>,
    c: &Compiled,
) -> Result<std::collections::BTreeMap<u32, u64>, SgError> {
    let mut doomed = Vec::new();
    for item in ct6.iter() {
        let (flow, ct) = item.map_err(map_err(map_names::CT6, "iterate"))?;
        let keep = c.pod_groups_by_ifindex.get(&ct.pod_ifindex).is_some_and(|groups| {
            let (dir, key) = opening(&flow, &ct);
            c.allows(groups, dir, Ipv6Addr::from(flow.remote_addr), key)
        });
        if !keep {
            doomed.push((flow, ct.pod_id));
        }
    }
    let mut by_pod = std::collections::BTreeMap::new();
    for (f, pod_id) in &doomed {
        match ct6.remove(f) {
            Ok(()) => *by_pod.entry(*pod_id).or_insert(0) += 1,
            // Expired or evicted meanwhile: nothing of ours to credit.
            Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(map_err(map_names::CT6, "delete")(e)),
        }
    }
    Ok(by_pod)
}

/// `cut_flows` on the `ct6` map of a loaded object.
pub fn cut_flows_in(ebpf: &mut Ebpf, c: &Compiled) -> Result<usize, SgError> {
    let map = ebpf.map_mut(map_names::CT6).ok_or(SgError::MissingMap(map_names::CT6))?;
    let mut ct6: HashMap<_, Flow6, Ct6> = HashMap::try_from(map).map_err(map_err(map_names::CT6, "open"))?;
    cut_flows(&mut ct6, c)
}
