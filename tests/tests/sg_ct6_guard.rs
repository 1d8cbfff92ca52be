//! `ct6` under an inbound flood: the assured bit, the node-wide guard (`ct6_guard`) that refuses
//! new inbound flows while an outbound one still gets in, and the per-pod bound (`pod_flows`)
//! that refuses inbound flows first. The daemon side (early drop, guard limit, `pod_freed`) is
//! tried through the running daemon in userspace/tests/ct6_flood_lab.rs.
mod sg_common;

use aya::maps::{Array, HashMap};
use podgate_common::{
    NodeConfig, PodUsage,
    sg::{CT6_GUARD_CREATED, CT6_GUARD_LIMIT, CT6_GUARD_LIMIT_OUT, ct6_flags},
    stats::Counter,
};
use sg_common::*;

const WEB: &str = r#"
[security_groups.web]
ingress = [{ proto = "tcp", ports = "80", cidr = "::/0" }]
egress = [{ proto = "tcp", ports = "443", cidr = "::/0" }]
"#;

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

fn seg(src: &str, dst: &str, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut p = tcp(src, dst, sport, dport, flags & SYN != 0);
    p[14 + 40 + 13] = flags; // the filter does not check the checksum
    p
}

/// A pod registered the way `pod add` does it: with its `pod_usage` / `pod_freed` entries.
fn fx(pod_flows: u32) -> Fx {
    let mut fx = Fx::new(WEB, &["web"]);
    for m in ["pod_usage", "pod_freed"] {
        let mut u: HashMap<_, u32, PodUsage> = HashMap::try_from(fx.h.ebpf.map_mut(m).unwrap()).unwrap();
        u.insert(POD_ID, PodUsage::default(), 0).unwrap();
    }
    let mut n: Array<_, NodeConfig> = Array::try_from(fx.h.ebpf.map_mut("node").unwrap()).unwrap();
    let mut node = n.get(&0, 0).unwrap();
    node.pod_flows = pod_flows;
    n.set(0, node, 0).unwrap();
    fx
}

fn usage(fx: &Fx, m: &str) -> PodUsage {
    let u: HashMap<_, u32, PodUsage> = HashMap::try_from(fx.h.ebpf.map(m).unwrap()).unwrap();
    u.get(&POD_ID, 0).unwrap()
}

fn guard(fx: &Fx) -> (u64, u64) {
    let g: Array<_, u64> = Array::try_from(fx.h.ebpf.map("ct6_guard").unwrap()).unwrap();
    (g.get(&CT6_GUARD_CREATED, 0).unwrap(), g.get(&CT6_GUARD_LIMIT, 0).unwrap())
}

fn set_limit(fx: &mut Fx, slot: u32, limit: u64) {
    let mut g: Array<_, u64> = Array::try_from(fx.h.ebpf.map_mut("ct6_guard").unwrap()).unwrap();
    g.set(slot, limit, 0).unwrap();
}

fn set_freed(fx: &mut Fx, flows6: u64) {
    let mut u: HashMap<_, u32, PodUsage> = HashMap::try_from(fx.h.ebpf.map_mut("pod_freed").unwrap()).unwrap();
    u.insert(POD_ID, PodUsage { flows6, ..Default::default() }, 0).unwrap();
}

#[test]
fn assured_only_after_the_handshake_completes() {
    let mut fx = fx(0);
    // The pod connects: SYN out, SYN-ACK in, ACK out.
    fx.check(false, &seg(POD, REMOTE, 40000, 443, SYN), true, Counter::Sg6Allowed, "syn out");
    fx.check(true, &seg(REMOTE, POD, 443, 40000, SYN | ACK), true, Counter::Sg6Tracked, "syn-ack in");
    let flags = |fx: &Fx, port: u16| fx.ct().into_iter().find(|(f, _)| f.pod_port == port).unwrap().1.flags;
    assert_eq!(flags(&fx, 40000) & ct6_flags::ASSURED, 0, "a reply alone does not assure");
    assert_ne!(flags(&fx, 40000) & ct6_flags::SEEN_REPLY, 0);
    fx.check(false, &seg(POD, REMOTE, 40000, 443, ACK), true, Counter::Sg6Tracked, "ack out");
    assert_ne!(flags(&fx, 40000) & ct6_flags::ASSURED, 0, "handshake complete");
    // A flood SYN to the open port: the pod answers, the spoofed source never does.
    fx.check(true, &seg(REMOTE, POD, 50000, 80, SYN), true, Counter::Sg6Allowed, "flood syn in");
    fx.check(false, &seg(POD, REMOTE, 80, 50000, SYN | ACK), true, Counter::Sg6Tracked, "pod's syn-ack");
    fx.check(true, &seg(REMOTE, POD, 50000, 80, SYN), true, Counter::Sg6Tracked, "the same syn again");
    assert_eq!(flags(&fx, 80) & ct6_flags::ASSURED, 0, "a retransmitted SYN is no handshake");
    fx.check(true, &seg(REMOTE, POD, 50000, 80, ACK), true, Counter::Sg6Tracked, "real client's ack");
    assert_ne!(flags(&fx, 80) & ct6_flags::ASSURED, 0);
    // Both entries were counted once, for the pod and for the node.
    assert_eq!(usage(&fx, "pod_usage").flows6, 2);
    assert_eq!(guard(&fx).0, 2);
}

#[test]
fn pressure_guard_refuses_new_inbound_flows_but_not_outbound_ones() {
    let mut fx = fx(0);
    fx.check(false, &seg(POD, REMOTE, 40000, 443, SYN), true, Counter::Sg6Allowed, "outbound before");
    fx.check(true, &seg(REMOTE, POD, 50000, 80, SYN), true, Counter::Sg6Allowed, "inbound before");
    assert_eq!(guard(&fx), (2, 0), "no limit until the daemon writes one");
    // The daemon found ct6 above its high-water mark: no room left for inbound flows.
    set_limit(&mut fx, CT6_GUARD_LIMIT, 2);
    set_limit(&mut fx, CT6_GUARD_LIMIT_OUT, 4);
    fx.check(true, &seg(REMOTE, POD, 50001, 80, SYN), false, Counter::DropSg6CtPressure, "inbound refused");
    fx.check(false, &seg(POD, REMOTE, 40001, 443, SYN), true, Counter::Sg6Allowed, "outbound still gets in");
    // Tracked flows are untouched by the guard, in both directions.
    fx.check(true, &seg(REMOTE, POD, 443, 40000, SYN | ACK), true, Counter::Sg6Tracked, "reply of a tracked flow");
    fx.check(true, &seg(REMOTE, POD, 50000, 80, ACK), true, Counter::Sg6Tracked, "tracked inbound flow");
    assert_eq!(fx.ct().len(), 3, "the refused SYN left no entry");
    assert_eq!(guard(&fx).0, 3);
    // A pass that freed room raises the limit.
    set_limit(&mut fx, CT6_GUARD_LIMIT, 4);
    fx.check(true, &seg(REMOTE, POD, 50001, 80, SYN), true, Counter::Sg6Allowed, "inbound again");
    fx.check(true, &seg(REMOTE, POD, 50002, 80, SYN), false, Counter::DropSg6CtPressure, "until the room is used");
    // Where the LRU would evict, the pod's own new flows are refused too; tracked ones pass.
    fx.check(false, &seg(POD, REMOTE, 40002, 443, SYN), false, Counter::DropSg6CtPressure, "outbound at the LRU's mark");
    fx.check(false, &seg(POD, REMOTE, 40001, 443, ACK), true, Counter::Sg6Tracked, "tracked outbound flow");
}

#[test]
fn pod_flows_bound_refuses_inbound_first_and_counts_freed() {
    // Bound 8: inbound flows stop at 7 (an eighth kept for the pod's own), outbound at 8.
    let mut fx = fx(8);
    for port in 0..7 {
        fx.check(true, &seg(REMOTE, POD, 50000 + port, 80, SYN), true, Counter::Sg6Allowed, "inbound under the bound");
    }
    fx.check(true, &seg(REMOTE, POD, 50007, 80, SYN), false, Counter::DropSg6PodFlows, "inbound at 7/8");
    fx.check(false, &seg(POD, REMOTE, 40000, 443, SYN), true, Counter::Sg6Allowed, "the pod's own flow");
    fx.check(false, &seg(POD, REMOTE, 40001, 443, SYN), false, Counter::DropSg6PodFlows, "hard maximum");
    assert_eq!(usage(&fx, "pod_usage").flows6, 8);
    assert_eq!(fx.ct().len(), 8);
    // Tracked flows keep passing at the bound.
    fx.check(false, &seg(POD, REMOTE, 80, 50000, SYN | ACK), true, Counter::Sg6Tracked, "tracked at the bound");
    // What the daemon deleted (`pod_freed`) makes room again.
    set_freed(&mut fx, 2);
    fx.check(true, &seg(REMOTE, POD, 50007, 80, SYN), true, Counter::Sg6Allowed, "room after freeing");
}
