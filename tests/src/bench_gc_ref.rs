//! The per-key GC walk podgate used before batched map commands (aya iterators: one
//! `get_next_key` and one lookup per entry), kept only as the bench's reference row.

#![allow(clippy::all)]

use std::time::Instant;

use aya::maps::{HashMap, MapData, MapError};
use podgate::{snat::GcReport, pins::Pins};
use podgate_common::{
    Pod, Timeouts, map_names,
    nat::{self as nat_rules, Claim4, Ct4, Endpoint4, FragKey4, FragVal4, Flow4, Mapping4, map_names as nat_maps},
};

type DataplaneError = anyhow::Error;

fn open_hash<K: aya::Pod, V: aya::Pod>(pins: &Pins, name: &str) -> anyhow::Result<HashMap<MapData, K, V>> {
    Ok(HashMap::try_from(podgate::maps::open_map(pins, name)?)?)
}

fn map_err(_: &str) -> impl Fn(MapError) -> anyhow::Error {
    |e| anyhow::Error::new(e)
}

fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        other => other,
    }
}

/// One garbage-collection pass at time `now` (CLOCK_BOOTTIME ns), in the order the shared crate
/// documents (`podgate_common::nat::mapping_expired`): expired flows first, with the port claims
/// only they used; then mappings that no live flow holds and that sat idle for their protocol's
/// timeout, with every claim still pointing at them and the owning pod's quota count; then
/// stale fragment records.
pub fn reference_gc(pins: &Pins, t: &Timeouts, unanswered_secs: u32, now: u64) -> Result<GcReport, DataplaneError> {
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
    for (k, v, ep) in &dead {
        ignore_missing(ct.remove(k)).map_err(map_err(nat_maps::CT4))?;
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
        let mut pods: HashMap<MapData, u32, Pod> = open_hash(pins, map_names::PODS)?;
        for (k, v) in &expired {
            ignore_missing(maps.remove(k)).map_err(map_err(nat_maps::NAT4_MAP))?;
            // The programs count a pod's mappings in the entry of the veth its IPv4 arrives on.
            // This read-modify-write can lose a concurrent increment (the count then errs low by
            // one until the pod's next GC); the kernel side never under-checks by more.
            if let Ok(mut pod) = pods.get(&v.pod_ifindex, 0) {
                pod.mappings = pod.mappings.saturating_sub(1);
                // BPF_EXIST: never resurrect a pod deleted meanwhile.
                let _ = pods.insert(v.pod_ifindex, pod, 2);
            }
        }
        r.mappings_expired = expired.len();
    }

    let dead_eps: HashSet<Endpoint4> = dead.iter().map(|(_, _, ep)| *ep).filter(|ep| !gone.contains(ep)).collect();
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
    let eif = read_node(pins).is_ok_and(|n| n.flags & podgate_common::node_flags::FILTER_EIF != 0);
    let ncpus = aya::util::nr_cpus().map(|n| n as u64).unwrap_or(1);
    let room = podgate::maps::map_max_entries(pins, nat_maps::NAT4_MAP)
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
        let v4: HashMap<MapData, [u8; 4], u32> = open_hash(pins, map_names::PODS_V4)?;
        let mut pods: HashMap<MapData, u32, Pod> = open_hash(pins, map_names::PODS)?;
        for ep in &lost {
            if let Ok(ifindex) = v4.get(&ep.addr, 0)
                && let Ok(mut pod) = pods.get(&ifindex, 0)
            {
                pod.mappings = pod.mappings.saturating_sub(1);
                let _ = pods.insert(ifindex, pod, 2);
            }
        }
    }
    r.evicted_mappings_lost = lost.len();
    Ok(())
}


fn read_node(pins: &Pins) -> anyhow::Result<podgate_common::NodeConfig> {
    Ok(podgate::maps::read_node(pins)?)
}
