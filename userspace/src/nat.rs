//! Userspace side of the IPv4 SNAT state: listing, per-pod flush, and the garbage collector that
//! expires flows and mappings by their last-seen time (the programs never arm timers).

use std::{net::Ipv4Addr, time::Instant};

use aya::maps::{HashMap, MapData};
use podgate_common::{
    Pod, Timeouts, map_names,
    nat::{self as nat_rules, Claim4, Ct4, Endpoint4, FragKey4, FragVal4, Flow4, Mapping4, map_names as nat_maps},
};
use serde::Serialize;

use crate::{
    dataplane::{DataplaneError, ignore_missing, map_err, open_hash},
    pins::Pins,
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
    let mut ct: HashMap<MapData, Flow4, Ct4> = open_hash(pins, nat_maps::CT4)?;
    let keys: Vec<Flow4> = ct.keys().filter_map(Result::ok).filter(|k| k.pod_addr == a).collect();
    for k in keys {
        ignore_missing(ct.remove(&k)).map_err(map_err(nat_maps::CT4))?;
        n += 1;
    }
    let mut m: HashMap<MapData, Endpoint4, Mapping4> = open_hash(pins, nat_maps::NAT4_MAP)?;
    let keys: Vec<Endpoint4> = m.keys().filter_map(Result::ok).filter(|k| k.addr == a).collect();
    for k in keys {
        ignore_missing(m.remove(&k)).map_err(map_err(nat_maps::NAT4_MAP))?;
        n += 1;
    }
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
    pub duration_us: u64,
}

/// One garbage-collection pass at time `now` (CLOCK_BOOTTIME ns), in the order the shared crate
/// documents (`podgate_common::nat::mapping_expired`): expired flows first, with the port claims
/// only they used; then mappings that no live flow holds and that sat idle for their protocol's
/// timeout, with every claim still pointing at them and the owning pod's quota count; then
/// stale fragment records.
pub fn gc(pins: &Pins, t: &Timeouts, now: u64) -> Result<GcReport, DataplaneError> {
    use std::collections::{HashMap as Map, HashSet};
    let start = Instant::now();
    let mut r = GcReport::default();

    let mut ct: HashMap<MapData, Flow4, Ct4> = open_hash(pins, nat_maps::CT4)?;
    let mut live_flows: Map<Endpoint4, u32> = Map::new();
    // (endpoint, remote, ext port) still used by a live flow: its claim must stay.
    let mut live_claims: HashSet<(Endpoint4, [u8; 4], u16)> = HashSet::new();
    let mut dead = Vec::new();
    for item in ct.iter() {
        let Ok((k, v)) = item else { continue };
        r.flows_seen += 1;
        let ep = Endpoint4 { addr: k.pod_addr, port: k.pod_port, proto: k.proto, _pad: 0 };
        if nat_rules::ct_expired(&k, &v, now, t) {
            dead.push((k, v, ep));
        } else {
            *live_flows.entry(ep).or_default() += 1;
            live_claims.insert((ep, k.remote_addr, v.ext_port));
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
    for item in maps.iter() {
        let Ok((k, v)) = item else { continue };
        r.mappings_seen += 1;
        let live = live_flows.get(&k).copied().unwrap_or(0);
        if nat_rules::mapping_expired(&k, &v, live, now, t) {
            expired.push((k, v));
        }
    }
    if !expired.is_empty() {
        let gone: HashSet<Endpoint4> = expired.iter().map(|(k, _)| *k).collect();
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
