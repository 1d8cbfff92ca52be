//! Userspace side of the IPv4 SNAT state: listing, per-pod flush, and the garbage collector that
//! expires flows and mappings by their last-seen time (the programs never arm timers).

use std::{net::Ipv4Addr, time::Instant};

use aya::maps::{HashMap, MapData, MapError};
use podgate_common::{
    Pod, Timeouts, map_names,
    nat::{Claim4, Ct4, Endpoint4, Flow4, Mapping4, map_names as nat_maps},
};
use serde::Serialize;

use crate::{
    dataplane::{DataplaneError, ignore_missing, open_map},
    pins::Pins,
};

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> DataplaneError {
    move |source| DataplaneError::Map { name: name.into(), source }
}

fn typed<K: aya::Pod, V: aya::Pod>(pins: &Pins, name: &'static str) -> Result<HashMap<MapData, K, V>, DataplaneError> {
    HashMap::try_from(open_map(pins, name)?).map_err(map_err(name))
}

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
    let m: HashMap<MapData, Endpoint4, Mapping4> = typed(pins, nat_maps::NAT4_MAP)?;
    m.iter().collect::<Result<Vec<_>, _>>().map_err(map_err(nat_maps::NAT4_MAP))
}

pub fn flows(pins: &Pins) -> Result<Vec<(Flow4, Ct4)>, DataplaneError> {
    let m: HashMap<MapData, Flow4, Ct4> = typed(pins, nat_maps::CT4)?;
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
                expiry::tcp_state_name(v.state).to_string()
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
    let mut ct: HashMap<MapData, Flow4, Ct4> = typed(pins, nat_maps::CT4)?;
    let keys: Vec<Flow4> = ct.keys().filter_map(Result::ok).filter(|k| k.pod_addr == a).collect();
    for k in keys {
        ignore_missing(ct.remove(&k)).map_err(map_err(nat_maps::CT4))?;
        n += 1;
    }
    let mut m: HashMap<MapData, Endpoint4, Mapping4> = typed(pins, nat_maps::NAT4_MAP)?;
    let keys: Vec<Endpoint4> = m.keys().filter_map(Result::ok).filter(|k| k.addr == a).collect();
    for k in keys {
        ignore_missing(m.remove(&k)).map_err(map_err(nat_maps::NAT4_MAP))?;
        n += 1;
    }
    let mut c: HashMap<MapData, Claim4, Endpoint4> = typed(pins, nat_maps::NAT4_CLAIM)?;
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
    pub duration_us: u64,
}

/// One garbage-collection pass at time `now` (CLOCK_BOOTTIME ns).
///
/// A flow expires by its protocol/state timeout. A mapping expires only when no flow uses it any
/// more and it has been idle for its protocol's timeout; its port claims go with it, and the
/// owning pod's quota count is given back.
pub fn gc(pins: &Pins, t: &Timeouts, now: u64) -> Result<GcReport, DataplaneError> {
    let start = Instant::now();
    let mut r = GcReport::default();
    let mut ct: HashMap<MapData, Flow4, Ct4> = typed(pins, nat_maps::CT4)?;
    let mut live = std::collections::HashSet::new();
    let mut dead = Vec::new();
    for item in ct.iter() {
        let Ok((k, v)) = item else { continue };
        r.flows_seen += 1;
        if expiry::flow_expired(k.proto, &v, now, t) {
            dead.push(k);
        } else {
            live.insert((k.proto, k.pod_addr, k.pod_port));
        }
    }
    for k in &dead {
        ignore_missing(ct.remove(k)).map_err(map_err(nat_maps::CT4))?;
    }
    r.flows_expired = dead.len();

    let mut maps: HashMap<MapData, Endpoint4, Mapping4> = typed(pins, nat_maps::NAT4_MAP)?;
    let mut expired = Vec::new();
    for item in maps.iter() {
        let Ok((k, v)) = item else { continue };
        r.mappings_seen += 1;
        if !live.contains(&(k.proto, k.addr, k.port))
            && expiry::mapping_expired(k.proto, &v, now, t)
        {
            expired.push((k, v));
        }
    }
    if expired.is_empty() {
        r.duration_us = start.elapsed().as_micros() as u64;
        return Ok(r);
    }
    let gone: std::collections::HashSet<Endpoint4> = expired.iter().map(|(k, _)| *k).collect();
    let mut claims: HashMap<MapData, Claim4, Endpoint4> = typed(pins, nat_maps::NAT4_CLAIM)?;
    let claim_keys: Vec<Claim4> = claims
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, v)| gone.contains(v))
        .map(|(k, _)| k)
        .collect();
    for k in &claim_keys {
        ignore_missing(claims.remove(k)).map_err(map_err(nat_maps::NAT4_CLAIM))?;
    }
    r.claims_removed = claim_keys.len();
    let mut pods: HashMap<MapData, u32, Pod> = typed(pins, map_names::PODS)?;
    for (k, v) in &expired {
        ignore_missing(maps.remove(k)).map_err(map_err(nat_maps::NAT4_MAP))?;
        // The programs count a pod's mappings in the entry of the veth its IPv4 arrives on.
        if let Ok(mut pod) = pods.get(&v.pod_ifindex, 0) {
            pod.mappings = pod.mappings.saturating_sub(1);
            // BPF_EXIST: never resurrect a pod deleted meanwhile.
            let _ = pods.insert(v.pod_ifindex, pod, 2);
        }
    }
    r.mappings_expired = expired.len();
    r.duration_us = start.elapsed().as_micros() as u64;
    Ok(r)
}

/// Expiry decisions. TEMPORARY until the shared crate's TCP state machine lands.
mod expiry {
    use podgate_common::{Timeouts, nat::{Ct4, Mapping4, PROTO_ICMP, PROTO_TCP}};

    const NS: u64 = 1_000_000_000;

    fn proto_timeout(proto: u8, t: &Timeouts) -> u64 {
        match proto {
            PROTO_TCP => t.tcp_established as u64,
            PROTO_ICMP => t.icmp as u64,
            _ => t.udp as u64,
        }
    }

    pub fn flow_expired(proto: u8, v: &Ct4, now: u64, t: &Timeouts) -> bool {
        now.saturating_sub(v.last_seen_ns) > proto_timeout(proto, t) * NS
    }

    pub fn mapping_expired(proto: u8, v: &Mapping4, now: u64, t: &Timeouts) -> bool {
        now.saturating_sub(v.last_seen_ns) > proto_timeout(proto, t) * NS
    }

    pub fn tcp_state_name(s: u8) -> &'static str {
        match s {
            0 => "closed",
            _ => "?",
        }
    }
}
