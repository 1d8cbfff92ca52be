//! Pod records: registering a pod in the maps and on its veths, listing, and removing it with
//! all of its NAT, conntrack and usage state.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use aya::{maps::{HashMap, MapData}, programs::tc::TcAttachType};
use podgate_common::{MAX_POD_GROUPS, Pod, PodName, map_names};

use crate::{
    attach::{POD_EGRESS, POD_INGRESS, attach_tc, check_hooks, detach_pin, link_ifname, list_links, foreign::Hook},
    config::PodSpec,
    error::DataplaneError,
    maps::{ignore_missing, map_err, open_hash, pods::{PodEntry, list_pods}, pods_map, usage},
    netif,
    pins::Pins,
};

/// Registers a pod: maps first (so its first packet finds it), then the programs on its veths.
/// A pod already registered under the same name is updated in place (its NAT state is kept).
pub fn add_pod(pins: &Pins, quota: u32, spec: &PodSpec, groups: &[u32]) -> Result<Pod, DataplaneError> {
    let ifindex = netif::ifindex(&spec.veth)?;
    let ifindex_v4 = match &spec.veth_v4 {
        Some(v) => netif::ifindex(v)?,
        None => ifindex,
    };
    // Refused before any map entry is written; `attach_tc` logs the order when coexisting.
    let mut hooks = vec![(spec.veth.as_str(), Hook::TcIngress), (spec.veth.as_str(), Hook::TcEgress)];
    if let Some(v4) = &spec.veth_v4 {
        hooks.push((v4.as_str(), Hook::TcIngress));
    }
    check_hooks(pins, &hooks)?;
    let existing = list_pods(pins)?;
    let mut id = None;
    for e in &existing {
        if e.name == spec.name {
            id = Some(e.pod.id);
            continue;
        }
        let clash = if e.pod.ipv6 == spec.ipv6.octets() {
            Some(format!("both use {}", spec.ipv6))
        } else if e.pod.ipv4 == spec.ipv4.octets() {
            Some(format!("both use {}", spec.ipv4))
        } else if e.ifindexes.contains(&ifindex) || e.ifindexes.contains(&ifindex_v4) {
            Some("both use the same host interface".to_string())
        } else {
            None
        };
        if let Some(what) = clash {
            return Err(DataplaneError::PodConflict { name: spec.name.clone(), other: e.name.clone(), what });
        }
    }
    let id = match id {
        Some(id) => id,
        None => (1..=4096u32)
            .find(|i| !existing.iter().any(|e| e.pod.id == *i))
            .ok_or(DataplaneError::PodIdsExhausted)?,
    };
    let mut g = [0u32; MAX_POD_GROUPS];
    for (slot, v) in g.iter_mut().zip(groups) {
        *slot = *v;
    }
    let pod = Pod {
        id,
        ifindex,
        ifindex_v4,
        ipv4: spec.ipv4.octets(),
        ipv6: spec.ipv6.octets(),
        // Unused since `pod_usage`/`pod_freed` (kept in the layout: no ABI bump).
        mappings: 0,
        quota,
        group_count: groups.len().min(MAX_POD_GROUPS) as u32,
        groups: g,
    };
    let mut name = PodName::default();
    let bytes = spec.name.as_bytes();
    let n = bytes.len().min(name.name.len());
    name.name[..n].copy_from_slice(&bytes[..n]);
    name.len = n as u32;
    let mut names: HashMap<MapData, u32, PodName> =
        open_hash(pins, map_names::POD_NAMES)?;
    names.insert(id, name, 0).map_err(map_err(map_names::POD_NAMES))?;
    // Its tallies before its `pods` entries: the programs charge a pod as soon as they find it.
    usage::init(pins, id, spec.ipv4.octets())?;
    let mut pods = pods_map(pins)?;
    pods.insert(ifindex, pod, 0).map_err(map_err(map_names::PODS))?;
    pods.insert(ifindex_v4, pod, 0).map_err(map_err(map_names::PODS))?;
    let mut v4: HashMap<MapData, [u8; 4], u32> =
        open_hash(pins, map_names::PODS_V4)?;
    v4.insert(pod.ipv4, ifindex_v4, 0).map_err(map_err(map_names::PODS_V4))?;
    let mut v6: HashMap<MapData, [u8; 16], u32> =
        open_hash(pins, map_names::PODS_V6)?;
    v6.insert(pod.ipv6, ifindex, 0).map_err(map_err(map_names::PODS_V6))?;

    let v4if = spec.veth_v4.as_deref().unwrap_or(&spec.veth);
    netif::set_accept_local(v4if).map_err(|source| DataplaneError::Io {
        path: PathBuf::from(format!("/proc/sys/net/ipv4/conf/{v4if}/accept_local")),
        source,
    })?;
    attach_tc(pins, &spec.veth, POD_INGRESS, TcAttachType::Ingress)?;
    attach_tc(pins, &spec.veth, POD_EGRESS, TcAttachType::Egress)?;
    if let Some(v4if) = &spec.veth_v4 {
        attach_tc(pins, v4if, POD_INGRESS, TcAttachType::Ingress)?;
    }
    Ok(pod)
}

/// Pods whose host interfaces are gone (deleted, or deleted and created again under the same
/// name, which gives a new ifindex): they are removed as on `pod del` (their flows and mappings
/// flushed, their stale links unpinned), because every entry they have points at an interface
/// that no longer exists. The caller registers again those it still knows (the config's pods).
pub fn remove_vanished_pods(pins: &Pins) -> Result<Vec<PodEntry>, DataplaneError> {
    let mut gone = Vec::new();
    for e in list_pods(pins)? {
        if e.ifindexes.iter().any(|&i| netif::name_of(i).is_none()) {
            gone.push(remove_pod(pins, &e.name)?);
        }
    }
    Ok(gone)
}

/// Unregisters a pod: programs off its veths, then its map entries and its NAT/conntrack state.
pub fn remove_pod(pins: &Pins, name: &str) -> Result<PodEntry, DataplaneError> {
    let entry = list_pods(pins)?
        .into_iter()
        .find(|e| e.name == name)
        .ok_or_else(|| DataplaneError::UnknownPod { name: name.into() })?;
    for links in list_links(pins)? {
        let Some(ifname) = link_ifname(&links) else { continue };
        // A veth deleted before its pod took its links with it; only the stale pin is left.
        let ours_or_stale = match netif::ifindex(&ifname) {
            Ok(idx) => entry.ifindexes.contains(&idx),
            Err(_) => true,
        };
        if ours_or_stale {
            detach_pin(&links)?;
        }
    }
    let mut pods = pods_map(pins)?;
    for idx in &entry.ifindexes {
        ignore_missing(pods.remove(idx)).map_err(map_err(map_names::PODS))?;
    }
    let mut v4: HashMap<MapData, [u8; 4], u32> =
        open_hash(pins, map_names::PODS_V4)?;
    ignore_missing(v4.remove(&entry.pod.ipv4)).map_err(map_err(map_names::PODS_V4))?;
    let mut v6: HashMap<MapData, [u8; 16], u32> =
        open_hash(pins, map_names::PODS_V6)?;
    ignore_missing(v6.remove(&entry.pod.ipv6)).map_err(map_err(map_names::PODS_V6))?;
    let mut names: HashMap<MapData, u32, PodName> =
        open_hash(pins, map_names::POD_NAMES)?;
    ignore_missing(names.remove(&entry.pod.id)).map_err(map_err(map_names::POD_NAMES))?;
    crate::snat::flush_pod(pins, Ipv4Addr::from(entry.pod.ipv4))?;
    crate::sg::flush_pod(pins, Ipv6Addr::from(entry.pod.ipv6))?;
    // Last: the flushes above credit the pod's deletions while its tallies still exist.
    usage::remove(pins, entry.pod.id)?;
    Ok(entry)
}
