//! From groups and pods to the exact `sg_rules` / `sg_ranges` entries.
//!
//! For each (group, direction), every rule becomes one or more (remote prefix, key interval)
//! items. Because the LPM trie answers with the most specific prefix only, the entry of a prefix
//! holds the intervals of every item whose prefix contains it. The intervals are merged into a
//! sorted, disjoint list (the lowest rule id wins where rules overlap), and identical lists share
//! one run of `sg_ranges`.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::Ipv6Addr,
};

use ipnet::Ipv6Net;
use podgate_common::{
    MAX_POD_GROUPS,
    sg::{SG_KEY_FIXED_BITS, SG_RANGES_PER_GEN, SG_RULES_MAX, SgEntry, SgRange, find_range},
};

use super::{
    SgError,
    config::{Direction, Rule, SecurityGroups, validate_rule},
};

/// A pod as the compiler needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodGroups {
    pub name: String,
    /// The `pods` key of its IPv6 veth (what `ct6` entries record).
    pub ifindex: u32,
    pub ipv6: Ipv6Addr,
    /// Security-group names, in the order the pod lists them.
    pub groups: Vec<String>,
}

/// Everything `compile` needs.
#[derive(Clone, Debug)]
pub struct CompileInput<'a> {
    pub groups: &'a SecurityGroups,
    pub pods: &'a [PodGroups],
    /// The node's /80 (the `node` keyword).
    pub node_prefix: Ipv6Net,
    /// Groups a pod may have (5 by default, at most `MAX_POD_GROUPS`).
    pub max_groups_per_pod: usize,
    /// Ids of the previous compilation: kept, so that pod records stay valid across an apply.
    pub previous_ids: Option<&'a BTreeMap<String, u32>>,
}

/// Where a rule id comes from, for `podgate monitor` and `sg list`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleRef {
    pub group: String,
    pub dir: Direction,
    pub index: usize,
}

/// One `sg_rules` entry without its generation: apply adds it, and the generation's base to
/// `SgEntry::base`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleKey {
    pub group: u32,
    pub dir: u8,
    pub remote: Ipv6Net,
}

impl RuleKey {
    /// LPM prefix length of the key.
    pub fn prefix_len(&self) -> u32 {
        SG_KEY_FIXED_BITS + self.remote.prefix_len() as u32
    }
}

/// The map contents of one rule set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compiled {
    /// Group name → id written in `Pod::groups`.
    pub group_ids: BTreeMap<String, u32>,
    /// Pod name → its group ids in order (`Pod::groups[..group_count]`).
    pub pod_groups: BTreeMap<String, Vec<u32>>,
    /// Pod veth ifindex → group ids (for `cut_flows`).
    pub pod_groups_by_ifindex: BTreeMap<u32, Vec<u32>>,
    pub entries: BTreeMap<RuleKey, SgEntry>,
    /// `sg_ranges` of one generation, from index 0.
    pub ranges: Vec<SgRange>,
    /// Rule id → where it was written.
    pub rules: Vec<RuleRef>,
}

/// Compiles `input` into map entries, or says which group, rule or pod is wrong.
pub fn compile(input: &CompileInput<'_>) -> Result<Compiled, SgError> {
    let max_groups = input.max_groups_per_pod.min(MAX_POD_GROUPS);
    let mut out = Compiled { group_ids: assign_ids(input.groups, input.previous_ids), ..Default::default() };

    let mut members: BTreeMap<String, Vec<Ipv6Addr>> = BTreeMap::new();
    for pod in input.pods {
        if pod.groups.len() > max_groups {
            return Err(SgError::TooManyGroups { pod: pod.name.clone(), count: pod.groups.len(), max: max_groups });
        }
        let mut ids = Vec::with_capacity(pod.groups.len());
        for g in &pod.groups {
            let id = *out
                .group_ids
                .get(g)
                .ok_or_else(|| SgError::UnknownPodGroup { pod: pod.name.clone(), group: g.clone() })?;
            if !ids.contains(&id) {
                ids.push(id);
            }
            members.entry(g.clone()).or_default().push(pod.ipv6);
        }
        out.pod_groups.insert(pod.name.clone(), ids.clone());
        out.pod_groups_by_ifindex.insert(pod.ifindex, ids);
    }

    let mut shared: HashMap<Vec<SgRange>, u32> = HashMap::new();
    for (name, cfg) in input.groups {
        let gid = out.group_ids[name];
        for dir in Direction::BOTH {
            let list = match dir {
                Direction::Ingress => &cfg.ingress,
                Direction::Egress => &cfg.egress,
            };
            // (prefix, lo, hi, rule id)
            let mut items: Vec<(Ipv6Net, u32, u32, u32)> = Vec::new();
            for (index, rc) in list.iter().enumerate() {
                let rule = validate_rule(name, dir, index, rc, input.groups)?;
                let id = out.rules.len() as u32;
                out.rules.push(RuleRef { group: name.clone(), dir, index });
                let (lo, hi) = rule.key_range();
                for p in prefixes(&rule, input.node_prefix, &members) {
                    items.push((p, lo, hi, id));
                }
            }
            let prefixes: BTreeSet<Ipv6Net> = items.iter().map(|i| i.0).collect();
            for p in prefixes {
                let covering: Vec<(u32, u32, u32)> =
                    items.iter().filter(|i| i.0.contains(&p)).map(|i| (i.1, i.2, i.3)).collect();
                let ranges = merge(&covering);
                let base = match shared.get(&ranges) {
                    Some(&b) => b,
                    None => {
                        let b = out.ranges.len() as u32;
                        out.ranges.extend_from_slice(&ranges);
                        if out.ranges.len() > SG_RANGES_PER_GEN as usize {
                            return Err(SgError::Capacity { what: "sg_ranges", need: out.ranges.len(), max: SG_RANGES_PER_GEN as usize });
                        }
                        shared.insert(ranges.clone(), b);
                        b
                    }
                };
                out.entries.insert(
                    RuleKey { group: gid, dir: dir.abi(), remote: p },
                    SgEntry { base, count: ranges.len() as u32 },
                );
            }
        }
    }
    let per_gen = (SG_RULES_MAX / 2) as usize;
    if out.entries.len() > per_gen {
        return Err(SgError::Capacity { what: "sg_rules", need: out.entries.len(), max: per_gen });
    }
    Ok(out)
}

/// Keeps previous ids and gives new groups the lowest free ids from 1 (0 stays unused, so that an
/// unset `Pod::groups` slot never names a group).
fn assign_ids(groups: &SecurityGroups, previous: Option<&BTreeMap<String, u32>>) -> BTreeMap<String, u32> {
    let mut ids = BTreeMap::new();
    let mut used = BTreeSet::new();
    if let Some(prev) = previous {
        for (name, &id) in prev {
            if groups.contains_key(name) {
                ids.insert(name.clone(), id);
                used.insert(id);
            }
        }
    }
    let mut next = 1u32;
    for name in groups.keys() {
        if ids.contains_key(name) {
            continue;
        }
        while used.contains(&next) {
            next += 1;
        }
        ids.insert(name.clone(), next);
        used.insert(next);
    }
    ids
}

fn prefixes(rule: &Rule, node: Ipv6Net, members: &BTreeMap<String, Vec<Ipv6Addr>>) -> Vec<Ipv6Net> {
    use super::config::Remote;
    match &rule.remote {
        Remote::Cidr(n) => vec![n.trunc()],
        Remote::Node => vec![node.trunc()],
        Remote::Group(g) => members.get(g).map(|m| m.iter().map(|&a| Ipv6Net::from(a)).collect()).unwrap_or_default(),
    }
}

/// Disjoint, sorted intervals covering the union of `items` (lo, hi, rule); where they overlap the
/// lowest rule id is reported. A sweep over the interval ends: O(n log n).
pub fn merge(items: &[(u32, u32, u32)]) -> Vec<SgRange> {
    // Events at each boundary: intervals start at lo and stop after hi.
    let mut events: Vec<(u64, bool, u32)> = Vec::with_capacity(items.len() * 2);
    for &(lo, hi, rule) in items {
        events.push((lo as u64, true, rule));
        events.push((hi as u64 + 1, false, rule));
    }
    events.sort_unstable();
    let mut active: BTreeMap<u32, usize> = BTreeMap::new();
    let mut out: Vec<SgRange> = Vec::new();
    let mut i = 0;
    while i < events.len() {
        let at = events[i].0;
        while i < events.len() && events[i].0 == at {
            let (_, start, rule) = events[i];
            if start {
                *active.entry(rule).or_default() += 1;
            } else if let Some(n) = active.get_mut(&rule) {
                *n -= 1;
                if *n == 0 {
                    active.remove(&rule);
                }
            }
            i += 1;
        }
        let Some(&rule) = active.keys().next() else { continue };
        let Some(next) = events.get(i).map(|e| e.0) else { break };
        let (lo, hi) = (at as u32, (next - 1) as u32);
        match out.last_mut() {
            Some(last) if last.rule == rule && last.hi as u64 + 1 == at => last.hi = hi,
            _ => out.push(SgRange { lo, hi, rule }),
        }
    }
    out
}

impl Compiled {
    /// What the programs compute for a packet of a pod with `group_ids`: the LPM lookup per group
    /// simulated over `entries`, then the same binary search. Used by `cut_flows` and the tests.
    pub fn lookup(&self, group_ids: &[u32], dir: Direction, remote: Ipv6Addr, key: u32) -> Option<u32> {
        for &g in group_ids.iter().take(MAX_POD_GROUPS) {
            let lo = RuleKey { group: g, dir: dir.abi(), remote: Ipv6Net::new(Ipv6Addr::UNSPECIFIED, 0).unwrap() };
            let best = self
                .entries
                .range(lo..)
                .take_while(|(k, _)| k.group == g && k.dir == dir.abi())
                .filter(|(k, _)| k.remote.contains(&remote))
                .max_by_key(|(k, _)| k.remote.prefix_len());
            if let Some((_, e)) = best {
                let base = e.base as usize;
                if let Some(r) = find_range(e.count, key, |j| self.ranges.get(base + j as usize).copied(), Some) {
                    return Some(r);
                }
            }
        }
        None
    }

    /// Whether a pod with `group_ids` may open a flow in `dir`: the AWS default for a pod without
    /// groups (everything out, nothing in), else the rules.
    pub fn allows(&self, group_ids: &[u32], dir: Direction, remote: Ipv6Addr, key: u32) -> bool {
        if group_ids.is_empty() {
            return dir == Direction::Egress;
        }
        self.lookup(group_ids, dir, remote, key).is_some()
    }

    /// `Pod::groups` and `Pod::group_count` for a pod of this compilation.
    pub fn pod_record_groups(&self, pod: &str) -> Option<([u32; MAX_POD_GROUPS], u32)> {
        let ids = self.pod_groups.get(pod)?;
        let mut a = [0u32; MAX_POD_GROUPS];
        a[..ids.len()].copy_from_slice(ids);
        Some((a, ids.len() as u32))
    }
}

#[cfg(test)]
mod tests {
    use podgate_common::sg::{PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, match_key};
    use proptest::prelude::*;

    use super::*;
    use crate::sg::config::{GroupConfig, NameOrNumber, RuleConfig};

    fn node() -> Ipv6Net {
        "2001:db8:0:1:1::/80".parse().unwrap()
    }

    fn rule(proto: &str, ports: Option<&str>, cidr: Option<&str>, group: Option<&str>) -> RuleConfig {
        RuleConfig {
            proto: Some(NameOrNumber::Name(proto.into())),
            ports: ports.map(|p| NameOrNumber::Name(p.into())),
            cidr: cidr.map(Into::into),
            group: group.map(Into::into),
            ..Default::default()
        }
    }

    fn input<'a>(groups: &'a SecurityGroups, pods: &'a [PodGroups]) -> CompileInput<'a> {
        CompileInput { groups, pods, node_prefix: node(), max_groups_per_pod: 16, previous_ids: None }
    }

    fn pod(name: &str, ifindex: u32, addr: &str, groups: &[&str]) -> PodGroups {
        PodGroups { name: name.into(), ifindex, ipv6: addr.parse().unwrap(), groups: groups.iter().map(|s| s.to_string()).collect() }
    }

    #[test]
    fn merge_prefers_low_ids_and_joins_neighbours() {
        let r = merge(&[(10, 20, 1), (15, 30, 0), (31, 40, 0), (50, 50, 2)]);
        assert_eq!(
            r,
            vec![
                SgRange { lo: 10, hi: 14, rule: 1 },
                SgRange { lo: 15, hi: 40, rule: 0 },
                SgRange { lo: 50, hi: 50, rule: 2 },
            ]
        );
        assert_eq!(merge(&[(0, u32::MAX, 3)]), vec![SgRange { lo: 0, hi: u32::MAX, rule: 3 }]);
    }

    #[test]
    fn specific_prefix_inherits_wider_rules() {
        let mut groups = SecurityGroups::new();
        groups.insert(
            "web".into(),
            GroupConfig {
                ingress: vec![
                    rule("tcp", Some("443"), Some("::/0"), None),
                    rule("tcp", Some("22"), Some("2001:db8:ff::/48"), None),
                    rule("udp", Some("53"), Some("node"), None),
                    rule("any", None, None, Some("db")),
                ],
                egress: vec![],
            },
        );
        groups.insert("db".into(), GroupConfig::default());
        let pods = [pod("a", 10, "2001:db8:0:1:1::a", &["web"]), pod("b", 11, "2001:db8:0:1:1::b", &["db"])];
        let c = compile(&input(&groups, &pods)).unwrap();
        let web = c.group_ids["web"];
        let inside: Ipv6Addr = "2001:db8:ff::9".parse().unwrap();
        let outside: Ipv6Addr = "2001:db8:ee::9".parse().unwrap();
        let db: Ipv6Addr = "2001:db8:0:1:1::b".parse().unwrap();
        let other_pod: Ipv6Addr = "2001:db8:0:1:1::c".parse().unwrap();
        let tcp = |p| match_key(PROTO_TCP, p, 0, 0);
        assert_eq!(c.lookup(&[web], Direction::Ingress, inside, tcp(443)), Some(0));
        assert_eq!(c.lookup(&[web], Direction::Ingress, inside, tcp(22)), Some(1));
        assert_eq!(c.lookup(&[web], Direction::Ingress, outside, tcp(22)), None);
        assert_eq!(c.lookup(&[web], Direction::Ingress, other_pod, match_key(PROTO_UDP, 53, 0, 0)), Some(2));
        assert_eq!(c.lookup(&[web], Direction::Ingress, db, match_key(PROTO_ICMPV6, 0, 128, 0)), Some(3));
        assert_eq!(c.lookup(&[web], Direction::Ingress, other_pod, match_key(PROTO_ICMPV6, 0, 128, 0)), None);
        assert_eq!(c.lookup(&[web], Direction::Egress, inside, tcp(443)), None);
        // The /48 entry carries the ::/0 rule too, in its own run of ranges.
        assert_eq!(c.entries.len(), 4); // ::/0, the /48, the node /80, pod b
        assert_eq!(c.pod_groups["a"], vec![web]);
        assert_eq!(c.pod_record_groups("b").unwrap().1, 1);
    }

    #[test]
    fn pod_errors_and_stable_ids() {
        let mut groups = SecurityGroups::new();
        groups.insert("b".into(), GroupConfig::default());
        let pods = [pod("p", 1, "2001:db8::1", &["missing"])];
        assert!(matches!(compile(&input(&groups, &pods)), Err(SgError::UnknownPodGroup { .. })));
        let many: Vec<&str> = vec!["b"; 6];
        let pods = [pod("p", 1, "2001:db8::1", &many)];
        let mut i = input(&groups, &pods);
        i.max_groups_per_pod = 5;
        assert!(matches!(compile(&i), Err(SgError::TooManyGroups { count: 6, max: 5, .. })));

        let first = compile(&input(&groups, &[])).unwrap();
        groups.insert("a".into(), GroupConfig::default());
        let mut i = input(&groups, &[]);
        i.previous_ids = Some(&first.group_ids);
        let second = compile(&i).unwrap();
        assert_eq!(second.group_ids["b"], first.group_ids["b"]);
        assert_ne!(second.group_ids["a"], second.group_ids["b"]);
    }

    /// Random groups, rules and pods: the compiled lookup allows exactly what a naive "does any
    /// rule of any of the pod's groups match" check allows, and names a rule that does match.
    mod oracle {
        use super::*;

        #[derive(Clone, Debug)]
        struct R {
            proto: u8, // 0 any, 6, 17, 58, 47
            ports: Option<(u16, u16)>,
            icmp: Option<(u8, Option<u8>)>,
            remote: u8, // 0..6 cidr from a pool, 6 node, 7.. group
            pick: u8,
        }

        const CIDRS: [&str; 6] = ["::/0", "2001:db8::/32", "2001:db8:0:1::/64", "2001:db8:0:1:1::/80", "2001:db8:0:1:1::5/128", "2001:db8:ab::/48"];

        fn r() -> impl Strategy<Value = R> {
            (prop_oneof![Just(0u8), Just(6), Just(17), Just(58), Just(47)], 0u16..40, 0u16..20, any::<bool>(), 127u8..131, proptest::option::of(0u8..3), 0u8..10, any::<u8>())
                .prop_map(|(proto, lo, span, has, t, code, remote, pick)| R {
                    proto,
                    ports: (has && matches!(proto, 6 | 17)).then_some((lo, lo + span)),
                    icmp: (has && proto == 58).then_some((t, code)),
                    remote,
                    pick,
                })
        }

        fn to_config(rr: &R, group_names: &[String]) -> RuleConfig {
            let mut c = RuleConfig {
                proto: Some(if rr.proto == 0 { NameOrNumber::Name("any".into()) } else { NameOrNumber::Number(rr.proto as i64) }),
                ports: rr.ports.map(|(lo, hi)| NameOrNumber::Name(format!("{lo}-{hi}"))),
                icmp_type: rr.icmp.map(|i| i.0),
                icmp_code: rr.icmp.and_then(|i| i.1),
                ..Default::default()
            };
            match rr.remote {
                0..6 => c.cidr = Some(CIDRS[rr.remote as usize].into()),
                6 => c.cidr = Some("node".into()),
                _ => c.group = Some(group_names[rr.pick as usize % group_names.len()].clone()),
            }
            c
        }

        fn addr(i: u8) -> Ipv6Addr {
            match i % 6 {
                0 => format!("2001:db8:0:1:1::{}", i % 8).parse().unwrap(),
                1 => "2001:db8:0:1:2::1".parse().unwrap(),
                2 => "2001:db8:ab::77".parse().unwrap(),
                3 => "2001:db9::1".parse().unwrap(),
                4 => "2001:db8:0:1:1::5".parse().unwrap(),
                _ => format!("2001:db8:0:2::{i}").parse().unwrap(),
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(200))]
            #[test]
            fn compiled_equals_naive(
                groups in proptest::collection::vec((proptest::collection::vec(r(), 0..8), proptest::collection::vec(r(), 0..8)), 1..5),
                pods in proptest::collection::vec((0u8..8, proptest::collection::vec(0u8..5, 0..4)), 1..6),
                packets in proptest::collection::vec((0u8..255, prop_oneof![Just(6u8), Just(17), Just(58), Just(47)], 0u16..64, 126u8..132, 0u8..4, any::<bool>()), 1..40),
            ) {
                let names: Vec<String> = (0..groups.len()).map(|i| format!("g{i}")).collect();
                let mut cfg = SecurityGroups::new();
                for (i, (ing, eg)) in groups.iter().enumerate() {
                    cfg.insert(names[i].clone(), GroupConfig {
                        ingress: ing.iter().map(|r| to_config(r, &names)).collect(),
                        egress: eg.iter().map(|r| to_config(r, &names)).collect(),
                    });
                }
                let pod_specs: Vec<PodGroups> = pods.iter().enumerate().map(|(i, (a, gs))| PodGroups {
                    name: format!("p{i}"),
                    ifindex: i as u32 + 1,
                    ipv6: format!("2001:db8:0:1:1::{}", a).parse().unwrap(),
                    groups: gs.iter().map(|g| names[*g as usize % names.len()].clone()).collect(),
                }).collect();
                let c = compile(&input(&cfg, &pod_specs)).unwrap();
                let mut members: BTreeMap<String, Vec<Ipv6Addr>> = BTreeMap::new();
                for p in &pod_specs {
                    for g in &p.groups { members.entry(g.clone()).or_default().push(p.ipv6); }
                }
                let validated: BTreeMap<(String, Direction), Vec<Rule>> = cfg.iter().flat_map(|(n, g)| {
                    let cfg = &cfg;
                    Direction::BOTH.into_iter().map(move |d| {
                        let list = if d == Direction::Ingress { &g.ingress } else { &g.egress };
                        ((n.clone(), d), list.iter().enumerate().map(|(i, r)| validate_rule(n, d, i, r, cfg).unwrap()).collect())
                    })
                }).collect();
                for p in &pod_specs {
                    let ids = &c.pod_groups[&p.name];
                    for &(a, proto, port, t, code, ingress) in &packets {
                        let dir = if ingress { Direction::Ingress } else { Direction::Egress };
                        let remote = addr(a);
                        let key = match_key(proto, port, t, code);
                        let naive = p.groups.iter().any(|g| validated[&(g.clone(), dir)].iter().any(|r| {
                            let (lo, hi) = r.key_range();
                            lo <= key && key <= hi && r.covers(remote, node(), &members)
                        }));
                        let got = c.lookup(ids, dir, remote, key);
                        prop_assert_eq!(got.is_some(), naive, "pod {} {} {} key {:#x}", p.name, dir, remote, key);
                        if let Some(id) = got {
                            let rr = &c.rules[id as usize];
                            prop_assert!(p.groups.contains(&rr.group) && rr.dir == dir);
                            let rule = &validated[&(rr.group.clone(), dir)][rr.index];
                            let (lo, hi) = rule.key_range();
                            prop_assert!(lo <= key && key <= hi && rule.covers(remote, node(), &members));
                        }
                    }
                }
            }
        }
    }
}
