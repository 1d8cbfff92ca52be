//! Userspace side of the IPv4 SNAT state: listing, per-pod flush, and the garbage collector that
//! expires flows and mappings by their last-seen time (the programs never arm timers).

use std::{net::Ipv4Addr, time::Instant};

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

pub fn mappings(pins: &Pins) -> Result<Vec<(Endpoint4, Mapping4)>, DataplaneError> {
    let m: HashMap<MapData, Endpoint4, Mapping4> = open_hash(pins, nat_maps::NAT4_MAP)?;
    m.iter().collect::<Result<Vec<_>, _>>().map_err(map_err(nat_maps::NAT4_MAP))
}

pub fn flows(pins: &Pins) -> Result<Vec<(Flow4, Ct4)>, DataplaneError> {
    let m: HashMap<MapData, Flow4, Ct4> = open_hash(pins, nat_maps::CT4)?;
    m.iter().collect::<Result<Vec<_>, _>>().map_err(map_err(nat_maps::CT4))
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

/// One garbage-collection pass at time `now` (CLOCK_BOOTTIME ns), in the order the shared crate
/// documents (`podgate_common::nat::mapping_expired`): expired flows first, with the port claims
/// only they used; then mappings that no live flow holds and that sat idle for their protocol's
/// timeout, with every claim still pointing at them and the owning pod's quota count; then
/// stale fragment records.
pub fn gc(pins: &Pins, t: &Timeouts, unanswered_secs: u32, now: u64) -> Result<GcReport, DataplaneError> {
    use std::collections::{HashMap as Map, HashSet};
    let start = Instant::now();
    let mut r = GcReport::default();

    let mut ct: HashMap<MapData, Flow4, Ct4> = open_hash(pins, nat_maps::CT4)?;
    let mut live_flows: Map<Endpoint4, u32> = Map::new();
    // (endpoint, remote, ext port) still used by a live flow: its claim must stay.
    let mut live_claims: HashSet<(Endpoint4, [u8; 4], u16)> = HashSet::new();
    let mut dead = Vec::new();
    let mut live = Vec::new();
    for item in ct.iter() {
        let Ok((k, v)) = item else { continue };
        r.flows_seen += 1;
        let ep = Endpoint4 { addr: k.pod_addr, port: k.pod_port, proto: k.proto, _pad: 0 };
        if nat_rules::ct_expired(&k, &v, now, t, unanswered_secs) {
            dead.push((k, v, ep));
        } else {
            *live_flows.entry(ep).or_default() += 1;
            live_claims.insert((ep, k.remote_addr, v.ext_port));
            live.push((ep, k.remote_addr, v.ext_port, v.pod_ifindex, v.last_seen_ns));
        }
    }
    let mut claims: HashMap<MapData, Claim4, Endpoint4> = open_hash(pins, nat_maps::NAT4_CLAIM)?;
    // Every entry this pass deletes is credited to its pod (`pod_freed`), once per deletion that
    // succeeded (an entry the LRU took meanwhile was never ours to credit).
    let ids = PodIds::read(pins)?;
    let mut freed = Freed::default();
    for (k, v, ep) in &dead {
        match ct.remove(k) {
            Ok(()) => {
                if let Some(id) = ids.by_ipv4.get(&k.pod_addr) {
                    freed.flow4(*id);
                }
            }
            Err(e) => ignore_missing(Err(e)).map_err(map_err(nat_maps::CT4))?,
        }
        if live_claims.contains(&(*ep, k.remote_addr, v.ext_port)) {
            continue;
        }
        let claim = Claim4 { remote: k.remote_addr, ext_port: v.ext_port, proto: k.proto, _pad: 0 };
        if claims.get(&claim, 0).is_ok_and(|owner| owner == *ep) {
            ignore_missing(claims.remove(&claim)).map_err(map_err(nat_maps::NAT4_CLAIM))?;
            r.claims_removed += 1;
        }
    }
    r.flows_expired = dead.len();

    let mut maps: HashMap<MapData, Endpoint4, Mapping4> = open_hash(pins, nat_maps::NAT4_MAP)?;
    let mut expired = Vec::new();
    let mut mapped: HashSet<Endpoint4> = HashSet::new();
    for item in maps.iter() {
        let Ok((k, v)) = item else { continue };
        r.mappings_seen += 1;
        let live = live_flows.get(&k).copied().unwrap_or(0);
        if nat_rules::mapping_expired(&k, &v, live, now, t) {
            expired.push((k, v));
        } else {
            mapped.insert(k);
        }
    }
    let gone: HashSet<Endpoint4> = expired.iter().map(|(k, _)| *k).collect();
    if !expired.is_empty() {
        // Every claim of a dead mapping goes with it (its 0.0.0.0 claim in EIF mode included),
        // or the port would stay reserved for nobody.
        let stale: Vec<Claim4> = claims
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, owner)| gone.contains(owner))
            .map(|(k, _)| k)
            .collect();
        for k in &stale {
            ignore_missing(claims.remove(k)).map_err(map_err(nat_maps::NAT4_CLAIM))?;
        }
        r.claims_removed += stale.len();
        for (k, _) in &expired {
            match maps.remove(k) {
                Ok(()) => {
                    if let Some(id) = ids.by_ipv4.get(&k.addr) {
                        freed.mapping(*id);
                    }
                }
                Err(e) => ignore_missing(Err(e)).map_err(map_err(nat_maps::NAT4_MAP))?,
            }
        }
        r.mappings_expired = expired.len();
    }

    let dead_eps: HashSet<Endpoint4> = dead.iter().map(|(_, _, ep)| *ep).filter(|ep| !gone.contains(ep)).collect();
    freed.credit(pins)?;
    repair_evictions(pins, &mut r, &mut maps, &mut claims, mapped, &live, dead_eps, now)?;

    let mut frags: HashMap<MapData, FragKey4, FragVal4> = open_hash(pins, nat_maps::FRAG4)?;
    let stale: Vec<FragKey4> = frags
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, v)| nat_rules::frag_expired(v, now))
        .map(|(k, _)| k)
        .collect();
    for k in &stale {
        ignore_missing(frags.remove(k)).map_err(map_err(nat_maps::FRAG4))?;
    }
    r.frags_expired = stale.len();
    r.duration_us = start.elapsed().as_micros() as u64;
    Ok(r)
}

/// Finds what the LRU evicted and repairs it (the second half of [`gc`]). The GC never removes a
/// mapping a live flow holds, nor a claim a live flow or mapping uses: any such hole is an
/// eviction. A live flow gets its mapping and claim back (so replies and the endpoint's next
/// flows keep its port); claims whose mapping is gone with no flow left are removed, or their
/// port would stay reserved for nobody. A mapping lost for good (its endpoint has no live flow:
/// only dead flows this pass, or orphan claims) gives the owning pod its quota back, once: the
/// pass removes every trace of it.
#[allow(clippy::too_many_arguments)]
fn repair_evictions(
    pins: &Pins,
    r: &mut GcReport,
    maps: &mut HashMap<MapData, Endpoint4, Mapping4>,
    claims: &mut HashMap<MapData, Claim4, Endpoint4>,
    mut mapped: std::collections::HashSet<Endpoint4>,
    live: &[(Endpoint4, [u8; 4], u16, u32, u64)],
    dead_eps: std::collections::HashSet<Endpoint4>,
    now: u64,
) -> Result<(), DataplaneError> {
    use std::collections::HashSet;
    const BPF_NOEXIST: u64 = 1;
    let eif = crate::dataplane::read_node(pins).is_ok_and(|n| n.flags & podgate_common::node_flags::FILTER_EIF != 0);
    let ncpus = aya::util::nr_cpus().map(|n| n as u64).unwrap_or(1);
    let room = crate::dataplane::map_max_entries(pins, nat_maps::NAT4_MAP)
        .map(|max| podgate_common::pressure::high_water(u64::from(max), ncpus) as usize)
        .unwrap_or(0);
    let live_eps: HashSet<Endpoint4> = live.iter().map(|l| l.0).collect();
    let mut live_ports: HashSet<(Endpoint4, u16)> = HashSet::new();
    for &(ep, remote, ext, pod_ifindex, last_seen_ns) in live {
        live_ports.insert((ep, ext));
        if !mapped.contains(&ep) && mapped.len() >= room {
            r.evicted_mappings_pending += 1;
        } else if !mapped.contains(&ep) {
            let m = Mapping4 { ext_port: ext, _pad: 0, pod_ifindex, created_ns: now, last_seen_ns };
            // NOEXIST: the pod may have opened a new mapping meanwhile; it wins.
            if maps.insert(ep, m, BPF_NOEXIST).is_ok() {
                r.evicted_mappings_restored += 1;
            }
            mapped.insert(ep);
        }
        let k = Claim4 { remote: if eif { [0; 4] } else { remote }, ext_port: ext, proto: ep.proto, _pad: 0 };
        if claims.get(&k, 0).is_err() && claims.insert(k, ep, BPF_NOEXIST).is_ok() {
            r.evicted_claims_restored += 1;
        }
    }
    let mut orphans = Vec::new();
    for item in claims.iter() {
        let Ok((k, owner)) = item else { continue };
        r.claims_seen += 1;
        if !mapped.contains(&owner) && !live_ports.contains(&(owner, k.ext_port)) {
            orphans.push((k, owner));
        }
    }
    // Endpoints whose flows all ended this pass while their mapping was already gone.
    let mut lost: HashSet<Endpoint4> = dead_eps
        .into_iter()
        .filter(|ep| !mapped.contains(ep) && !live_eps.contains(ep) && maps.get(ep, 0).is_err())
        .collect();
    for (k, owner) in orphans {
        // The programs claim a port just before they insert its mapping: one made since this
        // pass read nat4_map is not an orphan.
        if maps.get(&owner, 0).is_ok() {
            continue;
        }
        ignore_missing(claims.remove(&k)).map_err(map_err(nat_maps::NAT4_CLAIM))?;
        r.orphan_claims_removed += 1;
        r.claims_seen -= 1;
        lost.insert(owner);
    }
    if !lost.is_empty() {
        // A mapping the LRU evicted and that no flow brings back: the programs counted it when
        // they created it, nobody deleted it through the daemon; credit it now. (A restored one
        // is the same mapping again: still counted once, nothing to credit.)
        let ids = PodIds::read(pins)?;
        let mut freed = Freed::default();
        for ep in &lost {
            if let Some(id) = ids.by_ipv4.get(&ep.addr) {
                freed.mapping(*id);
            }
        }
        freed.credit(pins)?;
    }
    r.evicted_mappings_lost = lost.len();
    Ok(())
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
