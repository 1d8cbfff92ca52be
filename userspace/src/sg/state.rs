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
    MAX_POD_GROUPS, Pod, PodName, PodUsage, Timeouts, map_names,
    nat::FRAG_TIMEOUT_NS,
    pressure,
    sg::{
        CT6_GUARD_CREATED, CT6_GUARD_LIMIT, CT6_GUARD_LIMIT_OUT, Ct6, FragKey6, FragVal6, Flow6, PROTO_TCP, PROTO_UDP, ct6_flags,
        guard_limit, is_unanswered, lru_evicts_from, map_names as sg_names,
    },
};
use serde::Serialize;

use super::{CompileInput, Compiled, SecurityGroups, SgError, SgMaps, compile};
use crate::{
    error::DataplaneError,
    maps::{self, ignore_missing, map_err, open_hash, open_map, usage::Freed},
    pins::Pins,

    util::{boottime_ns, proto_name},
};


/// The `[security_groups]` table of a config, checked by compiling it without pods (every rule
/// field is validated there, with the group, direction and index in the message).
pub fn parse_groups(raw: &BTreeMap<String, toml::Value>, node_prefix: Ipv6Net) -> Result<SecurityGroups, SgError> {
    let mut groups = SecurityGroups::new();
    for (name, v) in raw {
        let g = v
            .clone()
            .try_into()
            .map_err(|e: toml::de::Error| SgError::Config(format!("[security_groups.{name}]: {}", e.message())))?;
        groups.insert(name.clone(), g);
    }
    compile(&CompileInput {
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
) -> Result<ApplyReport, SgError> {
    let previous = group_ids(pins)?;
    let by_id: BTreeMap<u32, String> = previous.iter().map(|(n, id)| (*id, n.clone())).collect();
    let registered = maps::pods::list_pods(pins)?;
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
        specs.push(super::PodGroups { name: e.name.clone(), ifindex: e.pod.ifindex, ipv6: Ipv6Addr::from(e.pod.ipv6), groups: names });
    }
    let compiled: Compiled = compile(&CompileInput {
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
    let generation = maps.write(&compiled)?;
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
        let by_pod = super::cut_flows_by_pod(&mut ct6, &compiled)?;
        credit_flows6(pins, &by_pod)?;
        by_pod.values().sum::<u64>() as usize
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
    let doomed: Vec<(Flow6, Ct6)> = ct.iter().filter_map(Result::ok).filter(|(k, _)| k.pod_addr == a).collect();
    let keys: Vec<Flow6> = doomed.iter().map(|(k, _)| *k).collect();
    remove_flows(pins, &mut ct, &doomed)?;
    let mut fr: HashMap<MapData, FragKey6, FragVal6> = open_hash(pins, sg_names::FRAG6)?;
    let fkeys: Vec<FragKey6> = fr.keys().filter_map(Result::ok).filter(|k| k.src == a || k.dst == a).collect();
    for k in &fkeys {
        ignore_missing(fr.remove(k)).map_err(map_err(sg_names::FRAG6))?;
    }
    Ok(keys.len() + fkeys.len())
}

/// One `ct6` entry as read by a pass.
type Entry6 = (Flow6, Ct6);

/// Deletes `flows` from `ct6` and credits each pod's `pod_freed.flows6` with what was really
/// deleted (an entry gone meanwhile was evicted or expired by someone else: not ours to credit).
fn remove_flows(pins: &Pins, ct: &mut HashMap<MapData, Flow6, Ct6>, flows: &[(Flow6, Ct6)]) -> Result<usize, DataplaneError> {
    let mut by_pod: BTreeMap<u32, u64> = BTreeMap::new();
    for (k, v) in flows {
        match ct.remove(k) {
            Ok(()) => *by_pod.entry(v.pod_id).or_insert(0) += 1,
            Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(map_err(sg_names::CT6)(e)),
        }
    }
    credit_flows6(pins, &by_pod)?;
    Ok(by_pod.values().sum::<u64>() as usize)
}

/// Adds to `pod_freed.flows6` through [`Freed`], the one writer of that map (the
/// daemon serializes its passes). A pod whose tallies are gone was removed: crediting it would
/// hand its successor under the same id room it never had.
pub fn credit_flows6(pins: &Pins, by_pod: &BTreeMap<u32, u64>) -> Result<(), DataplaneError> {
    let mut freed = Freed::default();
    for (&id, &n) in by_pod {
        freed.flows6(id, n);
    }
    freed.credit(pins)
}

/// Pod id → `ct6` entries it is charged for now (`pod_usage - pod_freed`).
fn charged_flows6(pins: &Pins) -> Result<BTreeMap<u32, u64>, DataplaneError> {
    let usage: HashMap<MapData, u32, PodUsage> = open_hash(pins, map_names::POD_USAGE)?;
    let freed: HashMap<MapData, u32, PodUsage> = open_hash(pins, map_names::POD_FREED)?;
    Ok(usage
        .iter()
        .filter_map(Result::ok)
        .map(|(id, u)| (id, PodUsage::held(&u, &freed.get(&id, 0).unwrap_or_default()).flows6))
        .collect())
}

/// Entries a pod was charged for (`held`, read before the pass counted) that the pass did not
/// see: the LRU evicted them. Read in this order an entry created during the count is seen but
/// not yet charged, and a hash walk disturbed by concurrent deletes may see an entry twice,
/// never miss one that stayed (the programs change existing `ct6` entries in place, so none
/// moves in its bucket during the walk): both only lower the credit, so a pod is never credited
/// for an entry it still holds.
pub const fn eviction_credit(held: u64, seen: u64) -> u64 {
    held.saturating_sub(seen)
}

/// Idle timeout of an IPv6 flow: inbound-created and never assured is `unanswered`; TCP that
/// saw FIN or RST is transitory.
pub fn ct6_timeout_ns(flow: &Flow6, ct: &Ct6, t: &Timeouts, unanswered_secs: u32) -> u64 {
    let base = ct6_base_timeout(flow, ct, t);
    let secs = if is_unanswered(ct) { unanswered_secs.min(base) } else { base };
    secs as u64 * 1_000_000_000
}

fn ct6_base_timeout(flow: &Flow6, ct: &Ct6, t: &Timeouts) -> u32 {
    match flow.proto {
        PROTO_TCP if ct.flags & (ct6_flags::TCP_FIN | ct6_flags::TCP_RST) != 0 => t.tcp_transitory,
        PROTO_TCP => t.tcp_established,
        PROTO_UDP => t.udp,
        _ => t.icmp,
    }
}

/// Which flows give way when `ct6` is above its high-water mark (Linux conntrack's early drop):
/// up to `n` of `flows`, unanswered inbound ones first, then the pod's own flows that were never
/// assured, the longest idle first in each class. Assured flows never: a flood of unanswered
/// entries must not cost an established connection its state.
pub fn early_drop_victims(flows: &[(Flow6, Ct6)], n: usize) -> Vec<(Flow6, Ct6)> {
    let mut c: Vec<&(Flow6, Ct6)> = flows.iter().filter(|(_, v)| v.flags & ct6_flags::ASSURED == 0).collect();
    c.sort_by_key(|(_, v)| (!is_unanswered(v), v.last_seen_ns));
    c.into_iter().take(n).copied().collect()
}

/// Whether the GC expires this flow at `now`: the one rule of [`gc`] and [`gc_preview`].
pub fn ct6_expired(flow: &Flow6, ct: &Ct6, now: u64, t: &Timeouts, unanswered_secs: u32) -> bool {
    now > ct.last_seen_ns && now - ct.last_seen_ns > ct6_timeout_ns(flow, ct, t, unanswered_secs)
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

pub fn gc_preview(pins: &Pins, t: &Timeouts, unanswered_secs: u32, now: u64) -> Result<Gc6Preview, DataplaneError> {
    let mut r = Gc6Preview::default();
    let ct: HashMap<MapData, Flow6, Ct6> = open_hash(pins, sg_names::CT6)?;
    for (k, v) in ct.iter().filter_map(Result::ok) {
        r.flows_seen += 1;
        r.flows_would_expire += usize::from(ct6_expired(&k, &v, now, t, unanswered_secs));
    }
    let fr: HashMap<MapData, FragKey6, FragVal6> = open_hash(pins, sg_names::FRAG6)?;
    r.frags_would_expire = fr.iter().filter_map(Result::ok).filter(|(_, v)| frag6_expired(v, now)).count();
    Ok(r)
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Gc6Report {
    pub flows_seen: usize,
    pub flows_expired: usize,
    /// Of `flows_expired`: inbound-created flows never assured (`[timeouts] unanswered`).
    pub unanswered_expired: usize,
    /// Unassured flows deleted because `ct6` was above its high-water mark.
    pub early_dropped: usize,
    /// Entries pods were charged for that the pass did not find (evicted by the LRU), credited
    /// to `pod_freed`.
    pub evicted_credited: usize,
    /// Entries left after the pass, and the mark above which new inbound flows are refused.
    pub flows_left: usize,
    pub high_water: u64,
    /// The pass found `ct6` at or above the mark (new inbound flows refused until a pass
    /// frees room).
    pub pressure: bool,
    pub frags_expired: usize,
}

/// The node-wide `ct6` guard: what the programs have created so far, and the limit written.
pub fn read_guard(pins: &Pins) -> Result<(u64, u64), DataplaneError> {
    let a: Array<MapData, u64> = Array::try_from(open_map(pins, sg_names::CT6_GUARD)?).map_err(map_err(sg_names::CT6_GUARD))?;
    let created = a.get(&CT6_GUARD_CREATED, 0).map_err(map_err(sg_names::CT6_GUARD))?;
    let limit = a.get(&CT6_GUARD_LIMIT, 0).map_err(map_err(sg_names::CT6_GUARD))?;
    Ok((created, limit))
}

/// Expires `ct6` and `frag6` entries (CLOCK_BOOTTIME `now`, like the programs' stamps); above
/// the high-water mark, drops unassured flows early down to the low-water mark; then writes the
/// guard for new inbound flows until the next pass. Every deletion credits `pod_freed`.
pub fn gc(pins: &Pins, t: &Timeouts, unanswered_secs: u32, now: u64) -> Result<Gc6Report, DataplaneError> {
    let mut r = Gc6Report::default();
    // Read before counting: flows created while the pass counts are charged twice, never missed.
    let (created, _) = read_guard(pins)?;
    let charged_before = charged_flows6(pins)?;
    let mut ct: HashMap<MapData, Flow6, Ct6> = open_hash(pins, sg_names::CT6)?;
    let mut seen: BTreeMap<u32, u64> = BTreeMap::new();
    let (dead, live): (Vec<Entry6>, Vec<Entry6>) = ct
        .iter()
        .filter_map(Result::ok)
        .inspect(|(_, v)| {
            r.flows_seen += 1;
            *seen.entry(v.pod_id).or_insert(0) += 1;
        })
        .partition(|(k, v)| ct6_expired(k, v, now, t, unanswered_secs));
    // What the LRU evicted nobody deleted: without this credit a pod would stay charged for it.
    let evicted: BTreeMap<u32, u64> = charged_before
        .iter()
        .map(|(&id, &held)| (id, eviction_credit(held, seen.get(&id).copied().unwrap_or(0))))
        .filter(|&(_, n)| n > 0)
        .collect();
    r.evicted_credited = evicted.values().sum::<u64>() as usize;
    credit_flows6(pins, &evicted)?;
    r.unanswered_expired = dead.iter().filter(|(_, v)| is_unanswered(v)).count();
    r.flows_expired = remove_flows(pins, &mut ct, &dead)?;
    let ncpus = aya::util::nr_cpus().map(|n| n as u64).unwrap_or(1);
    let max = u64::from(maps::map_max_entries(pins, sg_names::CT6).unwrap_or(podgate_common::sg::CT6_DEFAULT_ENTRIES));
    r.high_water = pressure::high_water(max, ncpus);
    let mut used = r.flows_seen.saturating_sub(r.flows_expired) as u64;
    if used >= r.high_water {
        r.pressure = true;
        let want = used - pressure::low_water(max, ncpus);
        let victims = early_drop_victims(&live, want as usize);
        r.early_dropped = remove_flows(pins, &mut ct, &victims)?;
        used -= r.early_dropped as u64;
    }
    r.flows_left = used as usize;
    let mut guard: Array<MapData, u64> =
        Array::try_from(open_map(pins, sg_names::CT6_GUARD)?).map_err(map_err(sg_names::CT6_GUARD))?;
    guard
        .set(CT6_GUARD_LIMIT, guard_limit(created, used, r.high_water), 0)
        .map_err(map_err(sg_names::CT6_GUARD))?;
    guard
        .set(CT6_GUARD_LIMIT_OUT, guard_limit(created, used, lru_evicts_from(max, ncpus)), 0)
        .map_err(map_err(sg_names::CT6_GUARD))?;
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
    let now = boottime_ns();
    let ct: HashMap<MapData, Flow6, Ct6> = open_hash(pins, sg_names::CT6)?;
    let mut rows: Vec<Flow6Row> = ct
        .iter()
        .filter_map(Result::ok)
        .map(|(k, v)| Flow6Row {
            proto: match k.proto {
                58 => "icmpv6".into(),
                p => proto_name(p),
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

#[cfg(test)]
mod tests {
    use super::*;
    use podgate_common::sg::{DIR_EGRESS, DIR_INGRESS};

    fn flow(port: u16, proto: u8) -> Flow6 {
        Flow6 { pod_port: port, proto, ..Default::default() }
    }

    fn ct(origin: u8, flags: u8, last_seen_ns: u64) -> Ct6 {
        Ct6 { origin, flags, last_seen_ns, ..Default::default() }
    }

    #[test]
    fn unanswered_inbound_flows_expire_fast() {
        let t = Timeouts::default();
        let s = 1_000_000_000;
        let syn = ct(DIR_INGRESS, ct6_flags::SEEN_REPLY, 0);
        assert_eq!(ct6_timeout_ns(&flow(80, PROTO_TCP), &syn, &t, 30), 30 * s, "SYN answered by a SYN-ACK only");
        let est = ct(DIR_INGRESS, ct6_flags::SEEN_REPLY | ct6_flags::ASSURED, 0);
        assert_eq!(ct6_timeout_ns(&flow(80, PROTO_TCP), &est, &t, 30), u64::from(t.tcp_established) * s);
        let out = ct(DIR_EGRESS, 0, 0);
        assert_eq!(ct6_timeout_ns(&flow(80, PROTO_TCP), &out, &t, 30), u64::from(t.tcp_established) * s, "the pod's own SYN keeps its timeout");
        let rst = ct(DIR_INGRESS, ct6_flags::TCP_RST, 0);
        assert_eq!(ct6_timeout_ns(&flow(80, PROTO_TCP), &rst, &t, 1000), u64::from(t.tcp_transitory) * s, "never longer than the protocol's own");
        assert_eq!(ct6_timeout_ns(&flow(53, PROTO_UDP), &ct(DIR_INGRESS, 0, 0), &t, 30), 30 * s);
    }

    #[test]
    fn evictions_are_credited_never_more_than_missing() {
        assert_eq!(eviction_credit(10, 7), 3, "three charged entries are gone");
        assert_eq!(eviction_credit(10, 12), 0, "created during the count: nothing to credit");
        assert_eq!(eviction_credit(0, 0), 0);
    }

    #[test]
    fn early_drop_takes_unanswered_first_and_never_assured() {
        let assured = ct6_flags::SEEN_REPLY | ct6_flags::ASSURED;
        let flows = vec![
            (flow(1, PROTO_TCP), ct(DIR_EGRESS, assured, 1)),      // idle established, oldest
            (flow(2, PROTO_TCP), ct(DIR_INGRESS, assured, 2)),     // established inbound
            (flow(3, PROTO_TCP), ct(DIR_EGRESS, 0, 3)),            // pod's unanswered SYN
            (flow(4, PROTO_TCP), ct(DIR_INGRESS, ct6_flags::SEEN_REPLY, 9)), // flood, recent
            (flow(5, PROTO_TCP), ct(DIR_INGRESS, 0, 5)),           // flood, older
        ];
        let ports = |v: Vec<(Flow6, Ct6)>| v.iter().map(|(f, _)| f.pod_port).collect::<Vec<_>>();
        assert_eq!(ports(early_drop_victims(&flows, 1)), vec![5]);
        assert_eq!(ports(early_drop_victims(&flows, 2)), vec![5, 4]);
        assert_eq!(ports(early_drop_victims(&flows, 3)), vec![5, 4, 3]);
        assert_eq!(ports(early_drop_victims(&flows, 100)), vec![5, 4, 3], "assured flows never give way");
        assert!(early_drop_victims(&flows, 0).is_empty());
    }
}
