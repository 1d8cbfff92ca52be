//! Stateful behaviour: replies, related ICMPv6 errors, NDP/MLD, anti-spoofing, live rule changes
//! with and without cutting flows, and the early drop at the uplink.
mod sg_common;

use podgate::sg;
use podgate_common::{
    event_kind,
    sg::{DIR_EGRESS, DIR_INGRESS, ct6_flags},
    stats::Counter,
};
use sg_common::*;

const WEB: &str = r#"
[security_groups.web]
ingress = [{ proto = "tcp", ports = "80", cidr = "::/0" }, { proto = "icmpv6", icmp_type = 128, cidr = "::/0" }]
egress = [{ proto = "tcp", ports = "443", cidr = "::/0" }, { proto = "udp", ports = "53", cidr = "2001:db8:ff::/64" }]
"#;

#[test]
fn replies_pass_both_ways_without_rules() {
    let mut fx = Fx::new(WEB, &["web"]);
    // The pod opens tcp/443: its reply comes in although no ingress rule allows port 40000.
    fx.check(false, &tcp(POD, REMOTE, 40000, 443, true), true, Counter::Sg6Allowed, "pod opens tcp/443");
    fx.check(true, &tcp(REMOTE, POD, 443, 40000, false), true, Counter::Sg6Tracked, "reply in");
    fx.check(false, &tcp(POD, REMOTE, 40000, 443, false), true, Counter::Sg6Tracked, "more out");
    // Same remote, another port pair: not the flow.
    fx.check(true, &tcp(REMOTE, POD, 443, 40001, false), false, Counter::DropSg6Ingress, "not the flow");
    // The remote opens tcp/80: the pod answers although no egress rule allows port 80 outward.
    fx.check(true, &tcp(REMOTE, POD, 50000, 80, true), true, Counter::Sg6Allowed, "remote opens tcp/80");
    fx.check(false, &tcp(POD, REMOTE, 80, 50000, false), true, Counter::Sg6Tracked, "pod answers");
    // ICMPv6 echo: request in by rule, reply out by state.
    fx.check(true, &echo_request(REMOTE, POD, 77), true, Counter::Sg6Allowed, "ping in");
    fx.check(false, &echo_reply(POD, REMOTE, 77), true, Counter::Sg6Tracked, "pong out");
    fx.check(false, &echo_reply(POD, REMOTE, 78), false, Counter::DropSg6Egress, "pong of no ping");
    // UDP toward the allowed /64.
    fx.check(false, &udp(POD, "2001:db8:ff::53", 5000, 53), true, Counter::Sg6Allowed, "dns query");
    fx.check(true, &udp("2001:db8:ff::53", POD, 53, 5000), true, Counter::Sg6Tracked, "dns answer");

    let ct = fx.ct();
    assert_eq!(ct.len(), 4, "{ct:?}");
    let (_, out) = ct.iter().find(|(f, _)| f.remote_port == 443).unwrap();
    assert_eq!(out.origin, DIR_EGRESS);
    assert_eq!((out.packets_out, out.packets_in), (2, 1));
    assert_ne!(out.flags & ct6_flags::SEEN_REPLY, 0);
    assert!(out.last_seen_ns >= out.created_ns && out.created_ns > 0);
    let (_, inb) = ct.iter().find(|(f, _)| f.pod_port == 80).unwrap();
    assert_eq!(inb.origin, DIR_INGRESS);
    assert_eq!((inb.packets_out, inb.packets_in), (1, 1));
}

#[test]
fn tcp_fin_and_rst_are_recorded() {
    let mut fx = Fx::new(WEB, &["web"]);
    fx.check(false, &tcp(POD, REMOTE, 40000, 443, true), true, Counter::Sg6Allowed, "open");
    let mut rst = tcp(REMOTE, POD, 443, 40000, false);
    rst[14 + 40 + 13] |= 0x04; // RST; the checksum does not matter to the filter
    fx.check(true, &rst, true, Counter::Sg6Tracked, "rst in");
    let ct = fx.ct();
    assert_ne!(ct[0].1.flags & ct6_flags::TCP_RST, 0);
    assert_eq!(ct[0].1.flags & ct6_flags::TCP_FIN, 0);
}

/// A Packet Too Big for a tracked flow reaches the pod (PMTU discovery works); one quoting an
/// untracked flow does not.
#[test]
fn related_icmpv6_error() {
    let mut fx = Fx::new(WEB, &["web"]);
    let sent = tcp(POD, REMOTE, 40000, 443, true);
    fx.check(false, &sent, true, Counter::Sg6Allowed, "open");
    let router = "2001:db8:77::1";
    let mtu = 1280u32.to_be_bytes();
    let ptb = icmp(router, POD, 2, 0, mtu, &sent[14..]);
    fx.check(true, &ptb, true, Counter::Sg6Tracked, "PTB for the flow");
    let other = tcp(POD, REMOTE, 40009, 443, true);
    let ptb = icmp(router, POD, 2, 0, mtu, &other[14..]);
    fx.check(true, &ptb, false, Counter::DropSg6Ingress, "PTB for no flow");
    // A quote of another pod's tracked flow does not reach this pod.
    let theirs = podgate_common::sg::Flow6::of_packet(6, a(OTHER_POD), a(REMOTE), true, 40000, 443, 0).unwrap();
    let mut ct6: aya::maps::HashMap<_, podgate_common::sg::Flow6, podgate_common::sg::Ct6> =
        aya::maps::HashMap::try_from(fx.h.ebpf.map_mut("ct6").unwrap()).unwrap();
    ct6.insert(theirs, podgate_common::sg::Ct6 { origin: DIR_EGRESS, ..Default::default() }, 0).unwrap();
    let spoofed = tcp(OTHER_POD, REMOTE, 40000, 443, true);
    fx.check(true, &icmp(router, POD, 2, 0, mtu, &spoofed[14..]), false, Counter::DropSg6Ingress, "quote of another pod");
    // The pod's own error about an inbound tracked flow goes out.
    fx.check(true, &tcp(REMOTE, POD, 50000, 80, true), true, Counter::Sg6Allowed, "inbound flow");
    let inbound = tcp(REMOTE, POD, 50000, 80, true);
    fx.check(false, &icmp(POD, REMOTE, 1, 4, [0; 4], &inbound[14..]), true, Counter::Sg6Tracked, "unreachable out");
    fx.check(false, &icmp(POD, REMOTE, 1, 4, [0; 4], &other[14..]), false, Counter::DropSg6Egress, "unreachable for no flow");
}

/// NDP and MLD valid on the pod's link (NDP with hop limit 255, MLD with 1, link-scoped
/// addresses) pass in both directions whatever the rules (here: a pod denying all ingress).
#[test]
fn ndp_and_mld_always_pass() {
    let mut fx = Fx::new("[security_groups.closed]\n", &["closed"]);
    let ll = "fe80::a";
    let router = "fe80::1";
    for (t, what) in [(135u8, "NS"), (136, "NA"), (133, "RS"), (134, "RA"), (137, "redirect"), (130, "MLD query"), (131, "MLD report"), (132, "MLD done"), (143, "MLDv2 report")] {
        let hl = if (133..=137).contains(&t) { 255 } else { 1 };
        fx.check(true, &hop_limit(icmp(router, ll, t, 0, [0; 4], &[0; 24]), hl), true, Counter::Sg6NdpPass, &format!("{what} in"));
        fx.check(false, &hop_limit(icmp(ll, "ff02::1:ff00:1", t, 0, [0; 4], &[0; 24]), hl), true, Counter::Sg6NdpPass, &format!("{what} out"));
    }
    // DAD: from the unspecified address.
    fx.check(false, &hop_limit(icmp("::", "ff02::1:ff00:a", 135, 0, [0; 4], &[0; 24]), 255), true, Counter::Sg6NdpPass, "DAD NS");
    // Other ICMPv6 is still filtered, and no state was created by NDP.
    fx.check(true, &echo_request(router, ll, 1), false, Counter::DropSg6Ingress, "echo is not NDP");
    assert!(fx.ct().is_empty());
}

#[test]
fn spoofed_sources_are_dropped() {
    let mut fx = Fx::new("", &[]);
    for src in [OTHER_POD, REMOTE, "2001:db8:0:1:1::a:0", "fec0::a"] {
        fx.check(false, &tcp(src, REMOTE, 40000, 443, true), false, Counter::DropSpoofV6, src);
    }
    let ev = fx.events();
    assert_eq!(ev.len(), 4);
    assert!(ev.iter().all(|e| e.kind == event_kind::DROP && e.reason == Counter::DropSpoofV6 as u32 && e.pod_id == POD_ID));
    assert_eq!(ev[0].src, a(OTHER_POD));
    // Its own /128 and link-local are fine (a pod without groups may send anything).
    fx.check(false, &tcp(POD, REMOTE, 40000, 443, true), true, Counter::Sg6Allowed, "own /128");
    fx.check(false, &udp("fe80::a", "fe80::1", 546, 547), true, Counter::Sg6Allowed, "link-local");
    assert_eq!(fx.ct().len(), 2, "spoofed packets created no state");
}

/// A rule removed in the middle of a flow: the tracked flow keeps passing (AWS behaviour), new
/// flows are denied; `cut_flows` then ends the flows the new rules would not open.
#[test]
fn rule_change_mid_flow_and_cut() {
    let mut fx = Fx::new(WEB, &["web"]);
    fx.check(false, &tcp(POD, REMOTE, 40000, 443, true), true, Counter::Sg6Allowed, "open 443");
    fx.check(true, &tcp(REMOTE, POD, 50000, 80, true), true, Counter::Sg6Allowed, "open 80");
    fx.check(false, &udp(POD, "2001:db8:ff::53", 5000, 53), true, Counter::Sg6Allowed, "open dns");

    // New rules: tcp/443 out and tcp/80 in are gone; dns stays.
    let narrowed = r#"
        [security_groups.web]
        egress = [{ proto = "udp", ports = "53", cidr = "2001:db8:ff::/64" }]
    "#;
    assert_eq!(fx.reapply(narrowed), 0, "second apply switches to generation 0");
    fx.check(true, &tcp(REMOTE, POD, 443, 40000, false), true, Counter::Sg6Tracked, "443 survives");
    fx.check(false, &tcp(POD, REMOTE, 40000, 443, false), true, Counter::Sg6Tracked, "443 survives out");
    fx.check(false, &tcp(POD, REMOTE, 80, 50000, false), true, Counter::Sg6Tracked, "80 survives");
    fx.check(false, &tcp(POD, REMOTE, 40001, 443, true), false, Counter::DropSg6Egress, "new 443 denied");
    fx.check(true, &tcp(REMOTE, POD, 50001, 80, true), false, Counter::DropSg6Ingress, "new 80 denied");
    assert_eq!(fx.ct().len(), 3);

    let cut = sg::cut_flows_in(&mut fx.h.ebpf, &fx.compiled).unwrap();
    assert_eq!(cut, 2);
    let ct = fx.ct();
    assert_eq!(ct.len(), 1);
    assert_eq!(ct[0].0.remote_port, 53, "dns is still allowed and stays");
    fx.check(true, &tcp(REMOTE, POD, 443, 40000, false), false, Counter::DropSg6Ingress, "443 cut");
    fx.check(false, &tcp(POD, REMOTE, 80, 50000, false), false, Counter::DropSg6Egress, "80 cut");
    fx.check(true, &udp("2001:db8:ff::53", POD, 53, 5000), true, Counter::Sg6Tracked, "dns lives");

    // A third set: generation 1 again, and what the first set left there is gone.
    let third = r#"
        [security_groups.web]
        egress = [{ proto = "tcp", ports = "443", cidr = "2001:db8:ff::/64" }]
    "#;
    assert_eq!(fx.reapply(third), 1);
    fx.check(false, &tcp(POD, REMOTE, 40002, 443, true), true, Counter::Sg6Allowed, "443 allowed again");
    fx.check(true, &tcp(REMOTE, POD, 50002, 80, true), false, Counter::DropSg6Ingress, "the first set's 80 is gone");
    let rules: aya::maps::LpmTrie<_, podgate_common::sg::SgKey, podgate_common::sg::SgEntry> =
        aya::maps::LpmTrie::try_from(fx.h.ebpf.map("sg_rules").unwrap()).unwrap();
    let gens: Vec<u8> = rules.keys().map(|k| k.unwrap().data().generation).collect();
    assert_eq!(gens.iter().filter(|&&g| g == 1).count(), fx.compiled.entries.len());
    assert_eq!(gens.iter().filter(|&&g| g == 0).count(), 1, "the previous set (one entry) stays until the next apply");
}

/// The uplink drops early what the ingress rules deny, passes the rest, and creates no state.
#[test]
fn uplink_early_drop() {
    let mut fx = Fx::new(WEB, &["web"]);
    let before = fx.counter(Counter::DropSg6Ingress);
    fx.check_xdp(&tcp(REMOTE, POD, 50000, 22, true), false, "tcp/22 denied at the uplink");
    assert_eq!(fx.counter(Counter::DropSg6Ingress), before + 1);
    assert_eq!(fx.events().len(), 1);
    fx.check_xdp(&tcp(REMOTE, POD, 50000, 80, true), true, "tcp/80 allowed");
    assert!(fx.ct().is_empty(), "the uplink does not create flows");
    // A tracked reply passes.
    fx.check(false, &tcp(POD, REMOTE, 40000, 443, true), true, Counter::Sg6Allowed, "open 443");
    fx.check_xdp(&tcp(REMOTE, POD, 443, 40000, false), true, "reply of a tracked flow");
    // Outside the node's /80, or an address no pod has: not ours.
    let before = fx.counter(Counter::NotOurs);
    fx.check_xdp(&tcp(REMOTE, "2001:db8:0:2::1", 1, 22, true), true, "outside the /80");
    fx.check_xdp(&tcp(REMOTE, OTHER_POD, 1, 22, true), true, "no such pod");
    assert_eq!(fx.counter(Counter::NotOurs), before + 2);
    // NDP passes; extension-header evasions are dropped here too.
    fx.check_xdp(&hop_limit(icmp("fe80::1", POD, 135, 0, [0; 4], &[0; 24]), 255), true, "NS");
    let hidden = with_ext(REMOTE, POD, &[Ext::HopByHop], 6, &tcp_segment(REMOTE, POD, 50000, 22));
    fx.check_xdp(&hidden, false, "tcp/22 behind hop-by-hop");
}
