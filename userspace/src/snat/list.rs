//! Listing the IPv4 SNAT state (mappings, flows) and flushing one pod's entries.

use std::net::Ipv4Addr;

use aya::maps::{HashMap, MapData};
use podgate_common::nat::{Claim4, Ct4, Endpoint4, Flow4, Mapping4, map_names as nat_maps};
use serde::Serialize;

use crate::{
    error::DataplaneError,
    maps::{ignore_missing, map_err, open_hash, usage::{Freed, PodIds}},
    pins::Pins,
    util::{boottime_ns, proto_name},
};

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
