//! IPv6 security-group cost: one pod in 5 groups of 60 ingress rules each, compiled and written
//! with podgate's own `sg::compile` / `sg::write_in`, measured through `pod_egress` (what is delivered
//! to the pod) next to `noop_tc`.

use anyhow::{Context as _, Result};
use aya::maps::{Array, HashMap};
use etherparse::PacketBuilder;
use podgate::sg::{self, CompileInput, PodGroups, SecurityGroups};
use podgate_common::{ABI_VERSION, NodeConfig, Pod, stats::Counter};
use serde_json::json;

use super::{Case, MicroOpts, repeat_case, single_case};
use crate::Harness;

const GROUPS: u16 = 5;
const RULES: u16 = 60;
/// Loopback: test_run wants an existing device and a pod's veth needs no more here.
const POD_IFINDEX: u32 = 1;
const POD: &str = "2001:db8:0:1:1::a";
const REMOTE: &str = "2001:db8:ff::1";

fn a(s: &str) -> [u8; 16] {
    s.parse::<std::net::Ipv6Addr>().expect("address").octets()
}

fn tcp_syn(sport: u16, dport: u16) -> Vec<u8> {
    let mut p = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0xee], [2, 0, 0, 0, 0, 0xa])
        .ipv6(a(REMOTE), a(POD), 64)
        .tcp(sport, dport, 1000, 64000)
        .syn()
        .write(&mut p, &[])
        .expect("packet");
    p
}

/// The port of rule `i` of group `g`: even rules allow TCP from anywhere, odd ones UDP from one
/// /64 each, so most rules share the LPM entry of ::/0 and the lookup has ranges to search.
fn port(g: u16, i: u16) -> u16 {
    10_000 + g * 64 + i
}

fn groups() -> Result<SecurityGroups> {
    let mut v = serde_json::Map::new();
    for g in 0..GROUPS {
        let rules: Vec<serde_json::Value> = (0..RULES)
            .map(|i| {
                let p = port(g, i).to_string();
                if i % 2 == 0 {
                    json!({ "proto": "tcp", "ports": p, "cidr": "::/0" })
                } else {
                    json!({ "proto": "udp", "ports": p, "cidr": format!("2001:db8:99:{i:x}::/64") })
                }
            })
            .collect();
        v.insert(format!("g{g}"), json!({ "ingress": rules }));
    }
    serde_json::from_value(serde_json::Value::Object(v)).context("security groups")
}

pub fn cases(o: &MicroOpts) -> Result<Vec<Case>> {
    let mut h = Harness::new()?;
    let names: Vec<String> = (0..GROUPS).map(|g| format!("g{g}")).collect();
    let groups = groups()?;
    let pods = vec![PodGroups { name: "pod".into(), ifindex: POD_IFINDEX, ipv6: POD.parse()?, groups: names }];
    let compiled = sg::compile(&CompileInput {
        groups: &groups,
        pods: &pods,
        node_prefix: "2001:db8:0:1:1::/80".parse()?,
        max_groups_per_pod: 16,
        previous_ids: None,
    })?;
    let node = NodeConfig { abi_version: ABI_VERSION, pod_prefix: a("2001:db8:0:1:1::"), ..Default::default() };
    Array::<_, NodeConfig>::try_from(h.ebpf.map_mut("node").context("node")?)?.set(0, node, 0)?;
    let (g, count) = compiled.pod_record_groups("pod").context("pod groups")?;
    let pod = Pod { id: 7, ifindex: POD_IFINDEX, ifindex_v4: POD_IFINDEX, ipv6: a(POD), group_count: count, groups: g, ..Default::default() };
    HashMap::<_, u32, Pod>::try_from(h.ebpf.map_mut("pods").context("pods")?)?.insert(POD_IFINDEX, pod, 0)?;
    HashMap::<_, [u8; 16], u32>::try_from(h.ebpf.map_mut("pods_v6").context("pods_v6")?)?.insert(a(POD), POD_IFINDEX, 0)?;
    sg::write_in(&mut h.ebpf, &compiled)?;
    let label = format!("{GROUPS} groups × {RULES} rules");

    // A port no rule opens: every group is looked up and searched, then the drop (no state).
    let deny = tcp_syn(30_000, 9);
    let mut out = vec![repeat_case(&mut h, &format!("v6 deny through {label}"), "pod_egress", "noop_tc", &deny, POD_IFINDEX, Counter::DropSg6Ingress, o)?];
    // Allowed by the last rule of the last group, each packet a new flow (a repeated packet would
    // be a tracked flow from its second run on).
    let last = port(GROUPS - 1, RULES - 2);
    let n = o.singles.min(40_000);
    let frames: Vec<Vec<u8>> = (0..n).map(|i| tcp_syn(20_000 + i as u16, last)).collect();
    out.push(single_case(&mut h, &format!("v6 allow, new flow through {label}, single runs"), "pod_egress", "noop_tc", &frames, POD_IFINDEX, Counter::Sg6Allowed, o.rounds)?);
    // Then the same packets once more: tracked flows, single runs, for the comparison.
    out.push(single_case(&mut h, "v6 allow, tracked flow (ct6 hit), single runs", "pod_egress", "noop_tc", &frames, POD_IFINDEX, Counter::Sg6Tracked, o.rounds)?);
    out.push(repeat_case(&mut h, "v6 allow, tracked flow (ct6 hit)", "pod_egress", "noop_tc", &frames[0], POD_IFINDEX, Counter::Sg6Tracked, o)?);
    Ok(out)
}
