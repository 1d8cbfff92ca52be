//! Per-pod tallies (`pod_usage`, `pod_freed`; `podgate_common::PodUsage`): the programs add what
//! they create to `pod_usage`, the daemon adds what it deletes to `pod_freed`, and what a pod
//! holds is the difference. Userspace never writes `pod_usage` after creating it, so no
//! increment of the datapath can be lost to a read-modify-write here.

use std::collections::HashMap as Map;

use aya::maps::{HashMap, MapData};
use podgate_common::{Pod, PodUsage, map_names};

use crate::{
    error::DataplaneError,
    maps::{ignore_missing, map_err, open_hash},
    pins::Pins,
};

/// Creates a pod's tallies; existing ones (a pod re-registered, a daemon restarted) are kept.
/// A pod without them (registered by a daemon older than these maps) starts from what it holds
/// now, counted in `nat4_map` and `ct4`: the programs charge nothing until the entry exists, so
/// the count is exact from then on, and an upgrade does not reset the quota.
pub fn init(pins: &Pins, id: u32, ipv4: [u8; 4]) -> Result<(), DataplaneError> {
    let mut freed: HashMap<MapData, u32, PodUsage> = open_hash(pins, map_names::POD_FREED)?;
    if freed.get(&id, 0).is_err() {
        // BPF_NOEXIST; a failure that left no entry is an error.
        if let Err(e) = freed.insert(id, PodUsage::default(), 1)
            && freed.get(&id, 0).is_err()
        {
            return Err(map_err(map_names::POD_FREED)(e));
        }
    }
    let mut usage: HashMap<MapData, u32, PodUsage> = open_hash(pins, map_names::POD_USAGE)?;
    if usage.get(&id, 0).is_ok() {
        return Ok(());
    }
    let f = freed.get(&id, 0).unwrap_or_default();
    let now = current(pins, ipv4)?;
    let seed = PodUsage {
        mappings: f.mappings + now.mappings,
        flows4: f.flows4 + now.flows4,
        flows6: f.flows6 + now.flows6,
    };
    if let Err(e) = usage.insert(id, seed, 1)
        && usage.get(&id, 0).is_err()
    {
        return Err(map_err(map_names::POD_USAGE)(e));
    }
    Ok(())
}

/// The IPv4 NAT state a pod holds, counted in the maps (what a recount finds).
pub fn current(pins: &Pins, ipv4: [u8; 4]) -> Result<PodUsage, DataplaneError> {
    use podgate_common::nat::{Ct4, Endpoint4, Flow4, Mapping4, map_names as nat_maps};
    let m: HashMap<MapData, Endpoint4, Mapping4> = open_hash(pins, nat_maps::NAT4_MAP)?;
    let ct: HashMap<MapData, Flow4, Ct4> = open_hash(pins, nat_maps::CT4)?;
    Ok(PodUsage {
        mappings: m.keys().filter_map(Result::ok).filter(|k| k.addr == ipv4).count() as u64,
        flows4: ct.keys().filter_map(Result::ok).filter(|k| k.pod_addr == ipv4).count() as u64,
        flows6: 0,
    })
}

/// Deletes a pod's tallies (after its state is gone).
pub fn remove(pins: &Pins, id: u32) -> Result<(), DataplaneError> {
    for name in [map_names::POD_USAGE, map_names::POD_FREED] {
        let mut m: HashMap<MapData, u32, PodUsage> = open_hash(pins, name)?;
        ignore_missing(m.remove(&id)).map_err(map_err(name))?;
    }
    Ok(())
}

/// What pod `id` holds now: created minus freed (zero without entries).
pub fn held(pins: &Pins, id: u32) -> Result<PodUsage, DataplaneError> {
    let u: HashMap<MapData, u32, PodUsage> = open_hash(pins, map_names::POD_USAGE)?;
    let f: HashMap<MapData, u32, PodUsage> = open_hash(pins, map_names::POD_FREED)?;
    let u = u.get(&id, 0).unwrap_or_default();
    let f = f.get(&id, 0).unwrap_or_default();
    Ok(PodUsage::held(&u, &f))
}

/// Deletions to credit, by pod id.
#[derive(Debug, Default)]
pub struct Freed(pub Map<u32, PodUsage>);

impl Freed {
    pub fn mapping(&mut self, id: u32) {
        self.0.entry(id).or_default().mappings += 1;
    }
    pub fn flow4(&mut self, id: u32) {
        self.0.entry(id).or_default().flows4 += 1;
    }
    pub fn flows6(&mut self, id: u32, n: u64) {
        self.0.entry(id).or_default().flows6 += n;
    }

    /// Adds the deletions to `pod_freed`. Only the daemon writes that map; a pod without an
    /// entry (removed meanwhile) is skipped (`BPF_EXIST`).
    pub fn credit(&self, pins: &Pins) -> Result<(), DataplaneError> {
        if self.0.is_empty() {
            return Ok(());
        }
        let mut m: HashMap<MapData, u32, PodUsage> = open_hash(pins, map_names::POD_FREED)?;
        for (id, d) in &self.0 {
            let Ok(mut f) = m.get(id, 0) else { continue };
            f.mappings += d.mappings;
            f.flows4 += d.flows4;
            f.flows6 += d.flows6;
            let _ = m.insert(*id, f, 2);
        }
        Ok(())
    }
}

/// `Pod::id` by the ifindex of each veth and by IPv4 address, for crediting deletions.
#[derive(Debug, Default)]
pub struct PodIds {
    pub by_ifindex: Map<u32, u32>,
    pub by_ipv4: Map<[u8; 4], u32>,
}

impl PodIds {
    pub fn read(pins: &Pins) -> Result<Self, DataplaneError> {
        let pods: HashMap<MapData, u32, Pod> = open_hash(pins, map_names::PODS)?;
        let mut s = Self::default();
        for (ifindex, pod) in pods.iter().filter_map(Result::ok) {
            s.by_ifindex.insert(ifindex, pod.id);
            s.by_ipv4.insert(pod.ipv4, pod.id);
        }
        Ok(s)
    }
}
