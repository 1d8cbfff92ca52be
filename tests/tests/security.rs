//! Hostile pods and hostile remotes against the SNAT programs (BPF_PROG_TEST_RUN).
mod snat_common;
use etherparse::{Icmpv4Type, icmpv4::DestUnreachableHeader};
use podgate_common::stats::Counter;
use snat_common::*;

fn inbound(env: &mut Env, frame: &[u8]) -> Option<Parsed> {
    let o = env.reverse_xdp(frame);
    if o.verdict != XDP_PASS {
        return None;
    }
    let p = parse_checked(&o.packet);
    (p.ip.destination != NODE_IP).then_some(p)
}

/// Pod A may only use its own address: another pod's, the node's, a remote's, or one from the
/// node-local range that is not its own are all dropped before any state exists.
#[test]
fn a_pod_cannot_spoof_ipv4() {
    let mut env = Env::new();
    let a = env.pod_a;
    for src in [POD_B, NODE_IP, REMOTE1, [169, 254, 172, 200], [0, 0, 0, 0], [255, 255, 255, 255]] {
        assert_eq!(env.egress(a, &udp(src, 5000, REMOTE1, 53, b"x")).verdict, TC_ACT_SHOT, "{src:?}");
        assert_eq!(env.egress(a, &tcp(src, 5000, REMOTE1, 80, "S", b"")).verdict, TC_ACT_SHOT, "{src:?}");
    }
    assert_eq!(env.counter(Counter::DropSpoofV4), 12);
    assert!(env.mappings().is_empty() && env.claims().is_empty() && env.ct_count() == 0);
    // Fragments too: a later fragment with a spoofed source is not translated.
    let (_, rest) = fragments(&udp(POD_B, 5000, REMOTE1, 53, &[1; 48]), 24, 7);
    assert_eq!(env.egress(a, &rest).verdict, TC_ACT_SHOT);
}

/// Pod B talked to REMOTE2 only; pod A holds a mapping toward REMOTE1. REMOTE2 sending to A's
/// external port must not reach A (nor B through A's port).
#[test]
fn a_remote_cannot_use_another_pods_mapping() {
    let mut env = Env::new();
    let (a, b) = (env.pod_a, env.pod_b);
    let ea = snat_ok(&mut env, a, &udp(POD_A, 6000, REMOTE1, 53, b"a")).1;
    let eb = snat_ok(&mut env, b, &udp(POD_B, 6000, REMOTE2, 53, b"b")).1;
    assert!(inbound(&mut env, &udp(REMOTE2, 53, NODE_IP, ea, b"to A")).is_none(), "REMOTE2 reached A");
    assert!(inbound(&mut env, &udp(REMOTE1, 53, NODE_IP, eb, b"to B")).is_none(), "REMOTE1 reached B");
    assert_eq!(inbound(&mut env, &udp(REMOTE2, 53, NODE_IP, eb, b"ok")).unwrap().ip.destination, POD_B);
    // Same for TCP: a SYN from REMOTE2 to A's TCP port.
    let ta = snat_ok(&mut env, a, &tcp(POD_A, 6001, REMOTE1, 80, "S", b"")).1;
    assert!(inbound(&mut env, &tcp(REMOTE2, 80, NODE_IP, ta, "S", b"")).is_none());
}

/// Unsolicited inbound to the pods' IPv4: packets addressed to a pod's node-local address
/// arriving on the uplink are never translated or delivered by podgate (the stack has no
/// route back either), and packets to the node address without a mapping go to the node only.
#[test]
fn unsolicited_inbound_never_reaches_a_pod() {
    let mut env = Env::new();
    let o = env.reverse_xdp(&udp(REMOTE1, 53, POD_A, 5000, b"direct"));
    assert_eq!(o.verdict, XDP_PASS);
    assert_eq!(parse_checked(&o.packet).ip.destination, POD_A, "not rewritten: left to the stack, which does not route 169.254/16 in from outside");
    for port in [1u16, 80, 32768, 40000, 65535] {
        assert!(inbound(&mut env, &udp(REMOTE1, 53, NODE_IP, port, b"x")).is_none());
        assert!(inbound(&mut env, &tcp(REMOTE1, 80, NODE_IP, port, "S", b"")).is_none());
        assert!(inbound(&mut env, &echo_reply(REMOTE1, NODE_IP, port, 1)).is_none());
    }
    assert!(env.mappings().is_empty() && env.ct_count() == 0);
}

/// A forged ICMP error cannot touch a flow it is not about: wrong remote in the quote, wrong
/// port, a quote whose source is not the node, a bad checksum; none is translated and the live
/// flow's state is unchanged.
#[test]
fn a_forged_icmp_error_cannot_rewrite_an_unrelated_flow() {
    let mut env = Env::new();
    let a = env.pod_a;
    let out = env.egress(a, &udp(POD_A, 7000, REMOTE1, 53, b"q")).packet;
    let ext = ports(&parse_checked(&out)).0;
    let f = flow(POD_A, 7000, REMOTE1, 53, UDP);
    let (m0, c0) = (env.mapping(ep(POD_A, 7000, UDP)).unwrap(), env.ct(f).unwrap());
    let ty = Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 68 });
    let forged = [
        udp(NODE_IP, ext, REMOTE2, 53, b"q"),         // the pod never talked to REMOTE2
        udp(NODE_IP, ext ^ 2, REMOTE1, 53, b"q"),     // not the flow's port
        udp(REMOTE2, ext, REMOTE1, 53, b"q"),         // quoted source is not the node
        tcp(NODE_IP, ext, REMOTE1, 53, "S", b""),     // another protocol
    ];
    for q in &forged {
        assert!(inbound(&mut env, &icmp_error(ROUTER, ty.clone(), q, 28)).is_none(), "forged error translated");
    }
    let mut bad = icmp_error(ROUTER, ty.clone(), &out, 28);
    bad[14 + 20 + 6] ^= 0xff; // the MTU field, checksum left as it was
    assert!(inbound(&mut env, &bad).is_none(), "error with a bad checksum translated");
    assert_eq!(env.mapping(ep(POD_A, 7000, UDP)), Some(m0));
    assert_eq!(env.ct(f), Some(c0));
    // The genuine one still works.
    assert!(inbound(&mut env, &icmp_error(ROUTER, ty, &out, 28)).is_some());
}

/// One pod exhausting its quota leaves another pod's new flows untouched.
#[test]
fn a_pod_cannot_exhaust_another_pods_quota() {
    let mut env = Env::with(Config { pod_quota: 4, ..Default::default() });
    let (a, b) = (env.pod_a, env.pod_b);
    let mut refused = 0;
    for i in 0..50u16 {
        // Refused: dropped, or answered with ICMP 3/13 (RFC 5508 REQ-8); never translated.
        if env.egress(a, &udp(POD_A, 10000 + i, REMOTE1, 53, b"x")).verdict != TC_ACT_OK {
            refused += 1;
        }
    }
    assert_eq!((refused, env.usage(a).mappings), (46, 4));
    for i in 0..4u16 {
        snat_ok(&mut env, b, &udp(POD_B, 10000 + i, REMOTE1, 53, b"x"));
    }
    assert_eq!(env.usage(b).mappings, 4);
}
