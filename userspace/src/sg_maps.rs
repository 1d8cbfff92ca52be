//! Security groups on the pinned dataplane: compiling the configured groups against the
//! registered pods, writing pod records and rules, cutting flows, listing, flushing, and the
//! conntrack GC of `ct6`/`frag6`.

use std::{
    collections::{BTreeMap, HashSet},
    net::Ipv6Addr,
};

use aya::maps::{Array, HashMap, LpmTrie, MapData};
use ipnet::Ipv6Net;
use podgate_common::{
    MAX_POD_GROUPS, Pod, PodName, Timeouts, map_names,
    nat::FRAG_TIMEOUT_NS,
    sg::{Ct6, FragKey6, FragVal6, Flow6, PROTO_TCP, PROTO_UDP, ct6_flags, map_names as sg_names},
};
use serde::Serialize;

use crate::{
    dataplane::{self, DataplaneError, ignore_missing, map_err, open_hash, open_map},
    pins::Pins,
    sg::{self, CompileInput, Compiled, SecurityGroups, SgError, SgMaps},
};

pub const MAP_NAMES: &[&str] = &[
    sg_names::SG_RULES,
    sg_names::SG_RANGES,
    sg_names::SG_GEN,
    sg_names::CT6,
    sg_names::FRAG6,
    sg_names::SG_SCRATCH,
    sg_names::SG_NAMES,
];

#[derive(Debug, thiserror::Error)]
pub enum SgStateError {
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error(transparent)]
    Sg(#[from] SgError),
    #[error("security_groups: {0}")]
    Config(String),
}

/// The `[security_groups]` table of a config, checked by compiling it without pods (every rule
/// field is validated there, with the group, direction and index in the message).
pub fn parse_groups(raw: &BTreeMap<String, toml::Value>, node_prefix: Ipv6Net) -> Result<SecurityGroups, SgStateError> {
    let mut groups = SecurityGroups::new();
    for (name, v) in raw {
        let g = v
            .clone()
            .try_into()
            .map_err(|e: toml::de::Error| SgStateError::Config(format!("[security_groups.{name}]: {}", e.message())))?;
        groups.insert(name.clone(), g);
    }
    sg::compile(&CompileInput {
        groups: &groups,
        pods: &[],
        node_prefix,
        max_groups_per_pod: MAX_POD_GROUPS,
        previous_ids: None,
    })?;
    Ok(groups)
}

fn name_of(n: &PodName) -> String {
    String::from_utf8_lossy(&n.name[..(n.len as usize).min(n.name.len())]).into_owned()
}

fn to_name(s: &str) -> PodName {
    let mut n = PodName::default();
    let b = s.as_bytes();
    let len = b.len().min(n.name.len());
    n.name[..len].copy_from_slice(&b[..len]);
    n.len = len as u32;
    n
}

/// Group name → id as pinned.
pub fn group_ids(pins: &Pins) -> Result<BTreeMap<String, u32>, DataplaneError> {
    let m: HashMap<MapData, u32, PodName> = open_hash(pins, sg_names::SG_NAMES)?;
    Ok(m.iter().filter_map(Result::ok).map(|(id, n)| (name_of(&n), id)).collect())
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct ApplyReport {
    pub generation: u32,
    pub groups: usize,
    pub rule_entries: usize,
    pub pods: usize,
    pub flows_cut: usize,
}

/// Compiles `groups` for every registered pod and switches the dataplane to it. A pod's groups
/// come from `assign` (pod name → group names; the config file's pods) or, for pods registered
/// at runtime, stay what they were. Order: pod records, rules (generation switch), names, then
/// (with `cut`) the tracked flows the new rules would not open. Established flows survive
/// otherwise, as in AWS.
pub fn apply(
    pins: &Pins,
    groups: &SecurityGroups,
    assign: &BTreeMap<String, Vec<String>>,
    node_prefix: Ipv6Net,
    max_groups_per_pod: usize,
    cut: bool,
) -> Result<ApplyReport, SgStateError> {
    let previous = group_ids(pins)?;
    let by_id: BTreeMap<u32, String> = previous.iter().map(|(n, id)| (*id, n.clone())).collect();
    let registered = dataplane::list_pods(pins)?;
    let mut specs = Vec::new();
    for e in &registered {
        let names: Vec<String> = match assign.get(&e.name) {
            Some(g) => g.clone(),
            None => e.pod.groups[..(e.pod.group_count as usize).min(MAX_POD_GROUPS)]
                .iter()
                .filter_map(|id| by_id.get(id).cloned())
                .filter(|n| groups.contains_key(n))
                .collect(),
        };
        specs.push(sg::PodSpec { name: e.name.clone(), ifindex: e.pod.ifindex, ipv6: Ipv6Addr::from(e.pod.ipv6), groups: names });
    }
    let compiled: Compiled = sg::compile(&CompileInput {
        groups,
        pods: &specs,
        node_prefix,
        max_groups_per_pod,
        previous_ids: Some(&previous),
    })?;

    // Pod records first: the kernel reads a pod's group ids on every packet.
    let mut pods: HashMap<MapData, u32, Pod> = open_hash(pins, map_names::PODS)?;
    for e in &registered {
        let Some((ids, count)) = compiled.pod_record_groups(&e.name) else { continue };
        for idx in &e.ifindexes {
            if let Ok(mut rec) = pods.get(idx, 0) {
                rec.groups = ids;
                rec.group_count = count;
                // BPF_EXIST: a pod deleted meanwhile stays deleted.
                let _ = pods.insert(*idx, rec, 2);
            }
        }
    }
    let mut maps = SgMaps {
        rules: LpmTrie::try_from(open_map(pins, sg_names::SG_RULES)?).map_err(map_err(sg_names::SG_RULES))?,
        ranges: Array::try_from(open_map(pins, sg_names::SG_RANGES)?).map_err(map_err(sg_names::SG_RANGES))?,
        generation: Array::try_from(open_map(pins, sg_names::SG_GEN)?).map_err(map_err(sg_names::SG_GEN))?,
    };
    let generation = maps.apply(&compiled)?;
    let mut names: HashMap<MapData, u32, PodName> = open_hash(pins, sg_names::SG_NAMES)?;
    let live: HashSet<u32> = compiled.group_ids.values().copied().collect();
    for (name, id) in &compiled.group_ids {
        names.insert(*id, to_name(name), 0).map_err(map_err(sg_names::SG_NAMES))?;
    }
    for id in by_id.keys().filter(|id| !live.contains(id)) {
        ignore_missing(names.remove(id)).map_err(map_err(sg_names::SG_NAMES))?;
    }
    let flows_cut = if cut {
        let mut ct6: HashMap<MapData, Flow6, Ct6> = open_hash(pins, sg_names::CT6)?;
        sg::cut_flows(&mut ct6, &compiled)?
    } else {
        0
    };
    Ok(ApplyReport {
        generation,
        groups: compiled.group_ids.len(),
        rule_entries: compiled.entries.len(),
        pods: registered.len(),
        flows_cut,
    })
}

/// Forgets one pod's IPv6 flows and fragment records.
pub fn flush_pod(pins: &Pins, addr: Ipv6Addr) -> Result<usize, DataplaneError> {
    let a = addr.octets();
    let mut ct: HashMap<MapData, Flow6, Ct6> = open_hash(pins, sg_names::CT6)?;
    let keys: Vec<Flow6> = ct.keys().filter_map(Result::ok).filter(|k| k.pod_addr == a).collect();
    for k in &keys {
        ignore_missing(ct.remove(k)).map_err(map_err(sg_names::CT6))?;
    }
    let mut fr: HashMap<MapData, FragKey6, FragVal6> = open_hash(pins, sg_names::FRAG6)?;
    let fkeys: Vec<FragKey6> = fr.keys().filter_map(Result::ok).filter(|k| k.src == a || k.dst == a).collect();
    for k in &fkeys {
        ignore_missing(fr.remove(k)).map_err(map_err(sg_names::FRAG6))?;
    }
    Ok(keys.len() + fkeys.len())
}

/// Idle timeout of an IPv6 flow: TCP that saw FIN or RST is transitory.
pub fn ct6_timeout_ns(flow: &Flow6, ct: &Ct6, t: &Timeouts) -> u64 {
    let secs = match flow.proto {
        PROTO_TCP if ct.flags & (ct6_flags::TCP_FIN | ct6_flags::TCP_RST) != 0 => t.tcp_transitory,
        PROTO_TCP => t.tcp_established,
        PROTO_UDP => t.udp,
        _ => t.icmp,
    };
    secs as u64 * 1_000_000_000
}

/// Whether the GC expires this flow at `now`: the one rule of [`gc`] and [`gc_preview`].
pub fn ct6_expired(flow: &Flow6, ct: &Ct6, now: u64, t: &Timeouts) -> bool {
    now > ct.last_seen_ns && now - ct.last_seen_ns > ct6_timeout_ns(flow, ct, t)
}

fn frag6_expired(v: &FragVal6, now: u64) -> bool {
    now > v.seen_ns && now - v.seen_ns > FRAG_TIMEOUT_NS
}

/// What [`gc`] at `now` would remove, read without changing anything (`podgate gc --dry-run`).
#[derive(Debug, Default, Clone, Serialize)]
pub struct Gc6Preview {
    pub flows_seen: usize,
    pub flows_would_expire: usize,
    pub frags_would_expire: usize,
}

pub fn gc_preview(pins: &Pins, t: &Timeouts, now: u64) -> Result<Gc6Preview, DataplaneError> {
    let mut r = Gc6Preview::default();
    let ct: HashMap<MapData, Flow6, Ct6> = open_hash(pins, sg_names::CT6)?;
    for (k, v) in ct.iter().filter_map(Result::ok) {
        r.flows_seen += 1;
        r.flows_would_expire += usize::from(ct6_expired(&k, &v, now, t));
    }
    let fr: HashMap<MapData, FragKey6, FragVal6> = open_hash(pins, sg_names::FRAG6)?;
    r.frags_would_expire = fr.iter().filter_map(Result::ok).filter(|(_, v)| frag6_expired(v, now)).count();
    Ok(r)
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Gc6Report {
    pub flows_seen: usize,
    pub flows_expired: usize,
    pub frags_expired: usize,
}

/// Expires `ct6` and `frag6` entries (CLOCK_BOOTTIME `now`, like the programs' stamps).
pub fn gc(pins: &Pins, t: &Timeouts, now: u64) -> Result<Gc6Report, DataplaneError> {
    let mut r = Gc6Report::default();
    let mut ct: HashMap<MapData, Flow6, Ct6> = open_hash(pins, sg_names::CT6)?;
    let dead: Vec<Flow6> = ct
        .iter()
        .filter_map(Result::ok)
        .inspect(|_| r.flows_seen += 1)
        .filter(|(k, v)| ct6_expired(k, v, now, t))
        .map(|(k, _)| k)
        .collect();
    for k in &dead {
        ignore_missing(ct.remove(k)).map_err(map_err(sg_names::CT6))?;
    }
    r.flows_expired = dead.len();
    let mut fr: HashMap<MapData, FragKey6, FragVal6> = open_hash(pins, sg_names::FRAG6)?;
    let stale: Vec<FragKey6> = fr
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, v)| frag6_expired(v, now))
        .map(|(k, _)| k)
        .collect();
    for k in &stale {
        ignore_missing(fr.remove(k)).map_err(map_err(sg_names::FRAG6))?;
    }
    r.frags_expired = stale.len();
    Ok(r)
}

#[derive(Debug, Clone, Serialize)]
pub struct Flow6Row {
    pub proto: String,
    pub pod_addr: Ipv6Addr,
    pub pod_port: u16,
    pub remote_addr: Ipv6Addr,
    pub remote_port: u16,
    pub origin: &'static str,
    pub rule: Option<u32>,
    pub idle_secs: u64,
    pub packets_out: u64,
    pub packets_in: u64,
}

pub fn flow_rows(pins: &Pins) -> Result<Vec<Flow6Row>, DataplaneError> {
    let now = crate::nat::boottime_ns();
    let ct: HashMap<MapData, Flow6, Ct6> = open_hash(pins, sg_names::CT6)?;
    let mut rows: Vec<Flow6Row> = ct
        .iter()
        .filter_map(Result::ok)
        .map(|(k, v)| Flow6Row {
            proto: match k.proto {
                58 => "icmpv6".into(),
                p => crate::nat::proto_name(p),
            },
            pod_addr: Ipv6Addr::from(k.pod_addr),
            pod_port: k.pod_port,
            remote_addr: Ipv6Addr::from(k.remote_addr),
            remote_port: k.remote_port,
            origin: if v.origin == podgate_common::sg::DIR_EGRESS { "pod" } else { "remote" },
            rule: (v.rule != podgate_common::sg::NO_RULE).then_some(v.rule),
            idle_secs: now.saturating_sub(v.last_seen_ns) / 1_000_000_000,
            packets_out: v.packets_out,
            packets_in: v.packets_in,
        })
        .collect();
    rows.sort_by(|a, b| (a.pod_addr, &a.proto, a.pod_port, a.remote_addr).cmp(&(b.pod_addr, &b.proto, b.pod_port, b.remote_addr)));
    Ok(rows)
}
