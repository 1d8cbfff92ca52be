//! Layer-2 garbage on the pod veths and neighbour discovery off the pod's link
//! (BPF_PROG_TEST_RUN): a hostile pod with CAP_NET_RAW against both pod hooks.
mod sg_common;

use podgate_common::{event_kind, stats::Counter};
use podgate_tests::{TC_ACT_SHOT, XDP_DROP, XDP_PASS};
use sg_common::*;

/// A groups fixture whose pod may send nothing and receive nothing (no rule at all).
const CLOSED: &str = "[security_groups.closed]\n";

fn ipv4_udp(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut p = Vec::new();
    etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0xa], [2, 0, 0, 0, 0, 1])
        .ipv4(src, dst, 64)
        .udp(5000, 53)
        .write(&mut p, b"spoofed")
        .unwrap();
    p
}

fn arp() -> Vec<u8> {
    let mut p = vec![0xff; 6];
    p.extend_from_slice(&[2, 0, 0, 0, 0, 0xa, 0x08, 0x06]);
    p.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    p.extend_from_slice(&[2, 0, 0, 0, 0, 0xa, 169, 254, 172, 10, 0, 0, 0, 0, 0, 0, 169, 254, 172, 1]);
    p
}

/// The frames of the bypass: tag stacks the stack strips after tc (VID 0 priority tags),
/// single tags, other VIDs, and every TPID, around IPv6 with a spoofed source, IPv4 with a
/// spoofed source and an egress-denied UDP datagram.
fn tagged_frames() -> Vec<(String, Vec<u8>)> {
    let inner = [
        ("spoofed IPv6", udp("2001:db8:0:1:1::bad", REMOTE, 5000, 53)),
        ("denied UDP", udp(POD, REMOTE, 5000, 53)),
        ("spoofed IPv4", ipv4_udp([203, 0, 113, 66], [198, 51, 100, 1])),
    ];
    let stacks: &[&[(u16, u16)]] = &[
        &[(0x8100, 0), (0x8100, 0)],
        &[(0x88a8, 0), (0x8100, 0)],
        &[(0x9100, 0), (0x8100, 0)],
        &[(0x8100, 0)],
        &[(0x88a8, 0)],
        &[(0x8100, 0xe000)],
        &[(0x8100, 100)],
        &[(0x88a8, 7), (0x8100, 4094)],
        &[(0x8100, 0), (0x8100, 0), (0x8100, 0)],
    ];
    let mut v = Vec::new();
    for (what, p) in &inner {
        for s in stacks {
            v.push((format!("{what} under {s:x?}"), tagged(p, s)));
        }
    }
    // A tag and nothing after it, or half a tag.
    let bare = udp(POD, REMOTE, 5000, 53);
    for tpid in [0x8100u16, 0x88a8, 0x9100] {
        let mut f = bare[..12].to_vec();
        f.extend_from_slice(&tpid.to_be_bytes());
        v.push((format!("{tpid:#x} with no tag body"), f.clone()));
        f.push(0);
        v.push((format!("{tpid:#x} with a truncated tag"), f.clone()));
        f.extend_from_slice(&[0, 0x86]);
        v.push((format!("{tpid:#x} with a truncated inner type"), f));
    }
    v
}

#[test]
fn tagged_frames_never_pass_a_pod_veth() {
    for hook in ["pod_ingress", "pod_egress"] {
        let mut fx = Fx::new(CLOSED, &["closed"]);
        fx.events();
        let frames = tagged_frames();
        for (what, f) in &frames {
            let before = fx.counter(Counter::DropVlanTagged);
            let out = fx.h.run_tc(hook, f, POD_IFINDEX).unwrap();
            fx.expect_drop(&out, Counter::DropVlanTagged, before, &format!("{hook}: {what}"));
        }
        // Each drop is reported to `podgate monitor`, with the pod behind the veth.
        let ev: Vec<_> = fx.events().into_iter().filter(|e| e.kind == event_kind::DROP && e.reason == Counter::DropVlanTagged as u32).collect();
        assert_eq!(ev.len(), frames.len(), "{hook}: drop events");
        assert!(ev.iter().all(|e| e.pod_id == POD_ID), "{hook}: events name the pod: {ev:?}");
        assert!(fx.ct().is_empty() && fx.frag6().is_empty(), "{hook}: state from a tagged frame");
    }
}

#[test]
fn unknown_ethertypes_never_pass_a_pod_veth() {
    // LLDP, PPPoE discovery/session, MPLS, MACsec, 802.3 length fields, EAPOL, IPX, zero, a
    // jumbo-frame type, all-ones.
    let types = [0x88ccu16, 0x8863, 0x8864, 0x8847, 0x88e5, 0x0000, 0x002e, 0x05dc, 0x888e, 0x8137, 0x8870, 0xffff];
    for hook in ["pod_ingress", "pod_egress"] {
        let mut fx = Fx::new(CLOSED, &["closed"]);
        fx.events();
        for et in types {
            for inner in [udp(POD, REMOTE, 5000, 53), ipv4_udp([169, 254, 172, 10], [198, 51, 100, 1])] {
                let mut f = inner.clone();
                f[12..14].copy_from_slice(&et.to_be_bytes());
                let before = fx.counter(Counter::DropEtherType);
                let out = fx.h.run_tc(hook, &f, POD_IFINDEX).unwrap();
                fx.expect_drop(&out, Counter::DropEtherType, before, &format!("{hook}: EtherType {et:#06x}"));
            }
            // Nothing but the Ethernet header.
            let mut f = udp(POD, REMOTE, 5000, 53)[..14].to_vec();
            f[12..14].copy_from_slice(&et.to_be_bytes());
            let before = fx.counter(Counter::DropEtherType);
            let out = fx.h.run_tc(hook, &f, POD_IFINDEX).unwrap();
            fx.expect_drop(&out, Counter::DropEtherType, before, &format!("{hook}: bare EtherType {et:#06x}"));
        }
        let ev = fx.events();
        assert_eq!(ev.iter().filter(|e| e.reason == Counter::DropEtherType as u32 && e.pod_id == POD_ID).count(), 3 * types.len(), "{hook}: drop events");
    }
}

/// What a pod veth still admits: untagged IPv4, IPv6 (to the rules) and ARP.
#[test]
fn untagged_ipv4_ipv6_and_arp_still_reach_their_programs() {
    let mut fx = Fx::new("", &[]);
    let before = fx.counter(Counter::LocalPass);
    let out = fx.pod_sends(&arp());
    fx.expect_pass(&out, &arp(), Counter::LocalPass, before, "ARP from the pod");
    let before = fx.counter(Counter::NotOurs);
    let out = fx.pod_receives(&arp());
    fx.expect_pass(&out, &arp(), Counter::NotOurs, before, "ARP to the pod");
    // A pod without groups may send anything: the untagged datagram passes, the tagged one not.
    let p = udp(POD, REMOTE, 5000, 53);
    fx.check(false, &p, true, Counter::Sg6Allowed, "untagged IPv6");
    assert_eq!(fx.pod_sends(&tagged(&p, &[(0x8100, 0), (0x8100, 0)])).verdict, TC_ACT_SHOT);
    // IPv4 goes to the SNAT program (this fixture has no IPv4 pod: it says so, not "not ours").
    let before = fx.counter(Counter::DropVlanTagged) + fx.counter(Counter::DropEtherType);
    fx.pod_sends(&ipv4_udp([169, 254, 172, 10], [198, 51, 100, 1]));
    assert_eq!(fx.counter(Counter::DropVlanTagged) + fx.counter(Counter::DropEtherType), before);
}

/// The uplink is the node's NIC, where VLANs and other protocols belong to the node: tagged and
/// unknown frames go to the stack unchanged, and create no state (docs/hostile/l2ndp.md).
#[test]
fn uplink_leaves_tagged_frames_to_the_node() {
    let mut fx = Fx::new(CLOSED, &["closed"]);
    let p = tcp(REMOTE, POD, 50000, 22, true);
    fx.check_xdp(&p, false, "untagged SYN to a closed pod");
    for (what, f) in tagged_frames() {
        let out = fx.uplink(&f);
        assert!(out.verdict == XDP_PASS || out.verdict == XDP_DROP, "{what}: {}", out.verdict);
        assert_eq!(out.packet, f, "{what}: changed");
    }
    assert!(fx.ct().is_empty());
}

// ---- neighbour discovery ----

const GLOBAL: &str = "2001:db8:ffff::1";

/// An egress-denied pod cannot carry bytes out as NDP or MLD: toward a global address, with a
/// routed hop limit, or from a global source, these are ordinary ICMPv6 for the rules.
#[test]
fn ndp_off_the_link_is_ordinary_icmpv6() {
    let mut fx = Fx::new(CLOSED, &["closed"]);
    let ll = "fe80::a";
    let body = [0x42u8; 64];
    let ndp = [133u8, 134, 135, 136, 137];
    let mld = [130u8, 131, 132, 143];
    for t in ndp.into_iter().chain(mld) {
        let hl = if ndp.contains(&t) { 255 } else { 1 };
        for src in [ll, POD] {
            let f = hop_limit(icmp(src, GLOBAL, t, 0, [0; 4], &body), hl);
            fx.check(false, &f, false, Counter::DropSg6Egress, &format!("type {t} from {src} to a global address"));
        }
        // A routed hop limit, on otherwise link-local addresses.
        let f = hop_limit(icmp(ll, "ff02::1:ff00:1", t, 0, [0; 4], &body), 64);
        fx.check(false, &f, false, Counter::DropSg6Egress, &format!("type {t} with hop limit 64"));
        // From the Internet to the pod.
        let f = hop_limit(icmp(GLOBAL, POD, t, 0, [0; 4], &body), hl);
        fx.check(true, &f, false, Counter::DropSg6Ingress, &format!("type {t} from a global address"));
        fx.check_xdp(&f, false, &format!("type {t} from a global address at the uplink"));
        let f = hop_limit(icmp("fe80::1", POD, t, 0, [0; 4], &body), 64);
        fx.check(true, &f, false, Counter::DropSg6Ingress, &format!("type {t} to the pod, hop limit 64"));
    }
    // MLD from the pod's global address, NDP with MLD's hop limit.
    fx.check(false, &hop_limit(icmp(POD, "ff02::16", 143, 0, [0; 4], &body), 1), false, Counter::DropSg6Egress, "MLDv2 from a global source");
    fx.check(false, &hop_limit(icmp(ll, "ff02::1:ff00:1", 135, 0, [0; 4], &body), 1), false, Counter::DropSg6Egress, "NS with hop limit 1");
    // Other link-scoped groups are not NDP's.
    fx.check(false, &hop_limit(icmp(ll, "ff02::fb", 135, 0, [0; 4], &body), 255), false, Counter::DropSg6Egress, "NS to ff02::fb");
    assert!(fx.ct().is_empty());
}

/// What NDP and MLD need on the link keeps passing with no rule at all.
#[test]
fn ndp_on_the_link_passes_a_closed_pod() {
    let mut fx = Fx::new(CLOSED, &["closed"]);
    let (ll, gw) = ("fe80::a", "fe80::1");
    let out = [
        (ll, "ff02::1:ff00:1", 135u8, 255u8, "NS for the gateway"),
        (ll, gw, 135, 255, "NUD of the gateway"),
        (POD, "ff02::1:ff00:1", 135, 255, "NS from the pod's address"),
        ("::", "ff02::1:ff00:a", 135, 255, "DAD"),
        (ll, "ff02::2", 133, 255, "RS"),
        (POD, gw, 136, 255, "NA to the gateway"),
        (ll, "ff02::16", 143, 1, "MLDv2 report"),
        ("::", "ff02::16", 143, 1, "MLDv2 report before a link-local address"),
    ];
    for (s, d, t, hl, what) in out {
        fx.check(false, &hop_limit(icmp(s, d, t, 0, [0; 4], &[0; 24]), hl), true, Counter::Sg6NdpPass, what);
    }
    let inbound = [
        (gw, "ff02::1:ff00:a", 135u8, 255u8, "NS for the pod"),
        (gw, POD, 135, 255, "NUD of the pod"),
        (gw, ll, 136, 255, "NA from the gateway"),
        (gw, "ff02::1", 134, 255, "RA"),
        (gw, "ff02::1", 130, 1, "MLD query"),
    ];
    for (s, d, t, hl, what) in inbound {
        fx.check(true, &hop_limit(icmp(s, d, t, 0, [0; 4], &[0; 24]), hl), true, Counter::Sg6NdpPass, what);
    }
    assert!(fx.ct().is_empty());
}

/// `::` is a source for DAD and early MLD reports only: anything else from it is a spoof, even
/// for a pod allowed to send anything.
#[test]
fn the_unspecified_source_opens_nothing() {
    let mut fx = Fx::new("", &[]);
    fx.check(false, &udp("::", GLOBAL, 5000, 53), false, Counter::DropSpoofV6, "UDP from ::");
    fx.check(false, &tcp("::", GLOBAL, 5000, 80, true), false, Counter::DropSpoofV6, "SYN from ::");
    fx.check(false, &hop_limit(icmp("::", GLOBAL, 135, 0, [0; 4], &[0; 24]), 255), false, Counter::DropSpoofV6, "NS from :: to a global address");
    fx.check(false, &hop_limit(icmp("::", "ff02::1:ff00:a", 135, 0, [0; 4], &[0; 24]), 255), true, Counter::Sg6NdpPass, "DAD");
    assert!(fx.ct().is_empty());
    // The pod's own address still opens flows.
    fx.check(false, &udp(POD, GLOBAL, 5000, 53), true, Counter::Sg6Allowed, "UDP from the pod");
}
