//! Userspace side of the IPv4 SNAT state: listing, per-pod flush, and the garbage collector that
//! expires flows and mappings by their last-seen time (the programs never arm timers).

use std::net::Ipv4Addr;

use aya::maps::{HashMap, MapData};
use podgate_common::{
    Timeouts,
    nat::{self as nat_rules, Claim4, Ct4, Endpoint4, FragKey4, FragVal4, Flow4, Mapping4, map_names as nat_maps},
};
use serde::Serialize;

use crate::{
    dataplane::{DataplaneError, ignore_missing, map_err, open_hash},
    pins::Pins,
    usage::{Freed, PodIds},
};

/// Nanoseconds of CLOCK_BOOTTIME, the clock of `bpf_ktime_get_boot_ns` that stamps entries.
pub fn boottime_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub fn proto_name(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        n => n.to_string(),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct MappingRow {
    pub proto: String,
    pub pod_addr: Ipv4Addr,
    pub pod_port: u16,
    pub ext_addr: Ipv4Addr,
    pub ext_port: u16,
    pub pod_ifindex: u32,
    pub idle_secs: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FlowRow {
    pub proto: String,
    pub pod_addr: Ipv4Addr,
    pub pod_port: u16,
    pub ext_port: u16,
    pub remote_addr: Ipv4Addr,
    pub remote_port: u16,
    pub state: String,
    pub idle_secs: u64,
    pub packets_out: u64,
    pub packets_in: u64,
}

/// Every mapping, read in batches (`BPF_MAP_LOOKUP_BATCH`).
pub fn mappings(pins: &Pins) -> Result<Vec<(Endpoint4, Mapping4)>, DataplaneError> {
    batched(pins, nat_maps::NAT4_MAP)
}

/// Every flow, read in batches.
pub fn flows(pins: &Pins) -> Result<Vec<(Flow4, Ct4)>, DataplaneError> {
    batched(pins, nat_maps::CT4)
}

fn batched<K: aya::Pod, V: aya::Pod>(pins: &Pins, name: &str) -> Result<Vec<(K, V)>, DataplaneError> {
    let path = pins.map(name);
    if !path.exists() {
        return Err(DataplaneError::NotInstalled { root: pins.root().to_owned() });
    }
    Ok(crate::maps::batch::BatchMap::<K, V>::from_pin(&path)?.entries()?)
}

pub fn mapping_rows(pins: &Pins, ext_addr: Ipv4Addr) -> Result<Vec<MappingRow>, DataplaneError> {
    let now = boottime_ns();
    let mut rows: Vec<MappingRow> = mappings(pins)?
        .into_iter()
        .map(|(k, v)| MappingRow {
            proto: proto_name(k.proto),
            pod_addr: Ipv4Addr::from(k.addr),
            pod_port: k.port,
            ext_addr,
            ext_port: v.ext_port,
            pod_ifindex: v.pod_ifindex,
            idle_secs: now.saturating_sub(v.last_seen_ns) / 1_000_000_000,
        })
        .collect();
    rows.sort_by(|a, b| (a.pod_addr, &a.proto, a.pod_port).cmp(&(b.pod_addr, &b.proto, b.pod_port)));
    Ok(rows)
}

pub fn flow_rows(pins: &Pins) -> Result<Vec<FlowRow>, DataplaneError> {
    let now = boottime_ns();
    let mut rows: Vec<FlowRow> = flows(pins)?
        .into_iter()
        .map(|(k, v)| FlowRow {
            proto: proto_name(k.proto),
            pod_addr: Ipv4Addr::from(k.pod_addr),
            pod_port: k.pod_port,
            ext_port: v.ext_port,
            remote_addr: Ipv4Addr::from(k.remote_addr),
            remote_port: k.remote_port,
            state: if k.proto == podgate_common::nat::PROTO_TCP {
                podgate_common::tcp::TcpState::from_u8(v.state).name().to_string()
            } else {
                "-".into()
            },
            idle_secs: now.saturating_sub(v.last_seen_ns) / 1_000_000_000,
            packets_out: v.packets_out,
            packets_in: v.packets_in,
        })
        .collect();
    rows.sort_by(|a, b| {
        (a.pod_addr, &a.proto, a.pod_port, a.remote_addr, a.remote_port)
            .cmp(&(b.pod_addr, &b.proto, b.pod_port, b.remote_addr, b.remote_port))
    });
    Ok(rows)
}

/// Removes all conntrack, mapping and claim entries of one pod address.
pub fn flush_pod(pins: &Pins, addr: Ipv4Addr) -> Result<usize, DataplaneError> {
    let a = addr.octets();
    let mut n = 0;
    // Credited to the pod (`pod_freed`) when it is still registered (`ct flush`); `pod del`
    // removes its tallies afterwards.
    let id = PodIds::read(pins)?.by_ipv4.get(&a).copied();
    let mut freed = Freed::default();
    let mut ct: HashMap<MapData, Flow4, Ct4> = open_hash(pins, nat_maps::CT4)?;
    let keys: Vec<Flow4> = ct.keys().filter_map(Result::ok).filter(|k| k.pod_addr == a).collect();
    for k in keys {
        if ct.remove(&k).is_ok() {
            id.inspect(|id| freed.flow4(*id));
        }
        n += 1;
    }
    let mut m: HashMap<MapData, Endpoint4, Mapping4> = open_hash(pins, nat_maps::NAT4_MAP)?;
    let keys: Vec<Endpoint4> = m.keys().filter_map(Result::ok).filter(|k| k.addr == a).collect();
    for k in keys {
        if m.remove(&k).is_ok() {
            id.inspect(|id| freed.mapping(*id));
        }
        n += 1;
    }
    freed.credit(pins)?;
    let mut c: HashMap<MapData, Claim4, Endpoint4> = open_hash(pins, nat_maps::NAT4_CLAIM)?;
    let keys: Vec<Claim4> = c
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, v)| v.addr == a)
        .map(|(k, _)| k)
        .collect();
    for k in keys {
        ignore_missing(c.remove(&k)).map_err(map_err(nat_maps::NAT4_CLAIM))?;
        n += 1;
    }
    Ok(n)
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct GcReport {
    pub flows_seen: usize,
    pub flows_expired: usize,
    pub mappings_seen: usize,
    pub mappings_expired: usize,
    pub claims_removed: usize,
    pub frags_expired: usize,
    /// Claims left after the pass (its occupancy).
    pub claims_seen: usize,
    /// LRU evictions found and repaired: a live flow's mapping (put back from the flow), a live
    /// flow's claim (put back), and mappings lost with no flow left, whose claims (orphans, the
    /// port otherwise reserved for nobody) are removed and whose pod gets its quota back.
    pub evicted_mappings_restored: usize,
    pub evicted_claims_restored: usize,
    pub evicted_mappings_lost: usize,
    pub orphan_claims_removed: usize,
    /// Live flows whose evicted mapping was not put back because nat4_map sits above its
    /// high-water mark (putting it back would only evict another): found again next pass.
    pub evicted_mappings_pending: usize,
    pub duration_us: u64,
}

impl GcReport {
    pub fn evictions(&self) -> usize {
        self.evicted_mappings_restored + self.evicted_claims_restored + self.evicted_mappings_lost
    }
}

/// What [`gc`] at `now` would expire, read without changing anything (`podgate gc --dry-run`).
/// It applies the same rules as the pass (`podgate_common::nat::ct_expired`, `mapping_expired`,
/// `frag_expired`); eviction repair is not previewed (it only ever puts entries back).
#[derive(Debug, Default, Clone, Serialize)]
pub struct GcPreview {
    pub flows_seen: usize,
    pub flows_would_expire: usize,
    pub mappings_seen: usize,
    pub mappings_would_expire: usize,
    pub frags_would_expire: usize,
}

pub fn gc_preview(pins: &Pins, t: &Timeouts, unanswered_secs: u32, now: u64) -> Result<GcPreview, DataplaneError> {
    use std::collections::HashMap as Map;
    let mut r = GcPreview::default();
    let ct: HashMap<MapData, Flow4, Ct4> = open_hash(pins, nat_maps::CT4)?;
    let mut live_flows: Map<Endpoint4, u32> = Map::new();
    for (k, v) in ct.iter().filter_map(Result::ok) {
        r.flows_seen += 1;
        if nat_rules::ct_expired(&k, &v, now, t, unanswered_secs) {
            r.flows_would_expire += 1;
        } else {
            let ep = Endpoint4 { addr: k.pod_addr, port: k.pod_port, proto: k.proto, _pad: 0 };
            *live_flows.entry(ep).or_default() += 1;
        }
    }
    let maps: HashMap<MapData, Endpoint4, Mapping4> = open_hash(pins, nat_maps::NAT4_MAP)?;
    for (k, v) in maps.iter().filter_map(Result::ok) {
        r.mappings_seen += 1;
        let live = live_flows.get(&k).copied().unwrap_or(0);
        r.mappings_would_expire += usize::from(nat_rules::mapping_expired(&k, &v, live, now, t));
    }
    let frags: HashMap<MapData, FragKey4, FragVal4> = open_hash(pins, nat_maps::FRAG4)?;
    r.frags_would_expire = frags.iter().filter_map(Result::ok).filter(|(_, v)| nat_rules::frag_expired(v, now)).count();
    Ok(r)
}

/// One garbage-collection pass at time `now` (CLOCK_BOOTTIME ns) over the pinned maps, with
/// batched reads and deletions (`crate::snat::gc`).
pub fn gc(pins: &Pins, t: &Timeouts, unanswered_secs: u32, now: u64) -> Result<GcReport, crate::snat::gc::GcError> {
    crate::snat::gc::pass(&crate::snat::gc::KernelNat::open(pins)?, t, unanswered_secs, now)
}

/// [`gc`] with its writes (eviction repair, crediting) under `lock`, the daemon's mutation lock;
/// the walks and the deletions of unchanged expired entries run without it.
pub fn gc_locked<'a>(
    pins: &'a Pins,
    t: &Timeouts,
    unanswered_secs: u32,
    now: u64,
    lock: &'a dyn Fn() -> Box<dyn crate::snat::gc::Held + 'a>,
) -> Result<GcReport, crate::snat::gc::GcError> {
    crate::snat::gc::pass(&crate::snat::gc::KernelNat::open(pins)?.with_lock(lock), t, unanswered_secs, now)
}

/// Occupancy of the three LRU maps after a GC pass: `(name, entries, max_entries)`.
pub fn occupancy(pins: &Pins, r: &GcReport) -> Vec<(&'static str, u64, u64)> {
    [
        (nat_maps::CT4, r.flows_seen - r.flows_expired),
        (nat_maps::NAT4_MAP, r.mappings_seen - r.mappings_expired + r.evicted_mappings_restored),
        (nat_maps::NAT4_CLAIM, r.claims_seen),
    ]
    .into_iter()
    .filter_map(|(name, used)| Some((name, used as u64, u64::from(crate::dataplane::map_max_entries(pins, name)?))))
    .collect()
}

/// Decides from a pass's occupancy whether the programs must refuse new flows
/// (`podgate_common::pressure`), writes the answer to `nat4_pressure` and returns whether every
/// new flow is refused.
pub fn update_pressure(pins: &Pins, r: &GcReport, was: bool) -> Result<bool, DataplaneError> {
    use aya::maps::Array;
    let ncpus = aya::util::nr_cpus().map(|n| n as u64).unwrap_or(1);
    let occ = occupancy(pins, r);
    let on = occ.iter().any(|&(_, used, max)| podgate_common::pressure::under_pressure(was, used, max, ncpus));
    let level = pressure_level(&occ, on, ncpus);
    let mut a: Array<MapData, u32> = Array::try_from(crate::dataplane::open_map(pins, nat_maps::NAT4_PRESSURE)?)
        .map_err(map_err(nat_maps::NAT4_PRESSURE))?;
    a.set(0, level, 0).map_err(map_err(nat_maps::NAT4_PRESSURE))?;
    Ok(on)
}

/// The `nat4_pressure` value (`podgate_common::nat::pressure_level`): `FULL` when every new flow
/// must be refused (`on`, a map above its high-water mark), else `INBOUND` from `ct4`'s
/// low-water mark on, so that flows a remote opens are refused a tenth of the map before the
/// pods' own ones are.
pub fn pressure_level(occupancy: &[(&'static str, u64, u64)], on: bool, ncpus: u64) -> u32 {
    use podgate_common::nat::pressure_level as level;
    if on {
        return level::FULL;
    }
    let inbound = occupancy
        .iter()
        .any(|&(name, used, max)| name == nat_maps::CT4 && used >= podgate_common::pressure::low_water(max, ncpus));
    if inbound { level::INBOUND } else { level::NONE }
}

#[cfg(test)]
mod tests {
    use super::*;
    use podgate_common::{nat::pressure_level as level, pressure};

    #[test]
    fn inbound_flows_are_refused_before_the_pods_own() {
        let (max, n) = (16_384, 2);
        let occ = |ct4: u64| [(nat_maps::CT4, ct4, max), (nat_maps::NAT4_MAP, 10, max), (nat_maps::NAT4_CLAIM, 10, max)];
        assert_eq!(pressure_level(&occ(pressure::low_water(max, n) - 1), false, n), level::NONE);
        assert_eq!(pressure_level(&occ(pressure::low_water(max, n)), false, n), level::INBOUND);
        assert_eq!(pressure_level(&occ(pressure::high_water(max, n)), true, n), level::FULL);
        // A full mapping table refuses everything; it alone never refuses inbound flows first.
        let maps_full = [(nat_maps::CT4, 10, max), (nat_maps::NAT4_MAP, max, max)];
        assert_eq!(pressure_level(&maps_full, false, n), level::NONE);
        assert_eq!(pressure_level(&maps_full, true, n), level::FULL);
    }
}
