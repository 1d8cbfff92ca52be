//! TTL expiry at the NAT (RFC 5508 REQ-10, §7.2): a pod's IPv4 packet whose TTL ends at this hop
//! is answered with ICMP 11/0 from the pods' gateway, to the pod, before any translation.
mod snat_common;
use etherparse::{Icmpv4Type, TransportHeader, icmpv4::TimeExceededCode};
use podgate_common::stats::Counter;
use snat_common::*;

fn with_ttl(f: &[u8], ttl: u8) -> Vec<u8> {
    let (mut h, rest) = etherparse::Ipv4Header::from_slice(&f[14..]).unwrap();
    h.time_to_live = ttl;
    let mut v = raw_frame(h, rest);
    v[6..12].copy_from_slice(&f[6..12]);
    v[0..6].copy_from_slice(&f[0..6]);
    v
}

fn assert_time_exceeded(out: &RunOutput, orig: &[u8]) {
    assert_eq!(out.verdict, TC_ACT_REDIRECT, "11/0 goes back out of the pod's veth");
    let p = parse_checked(&out.packet);
    assert_eq!((p.ip.source, p.ip.destination), (GATEWAY, [orig[26], orig[27], orig[28], orig[29]]), "from the gateway to the pod");
    assert_eq!(&out.packet[0..6], &orig[6..12]);
    assert_eq!(&out.packet[6..12], &orig[0..6]);
    let Some(TransportHeader::Icmpv4(i)) = &p.transport else { panic!("not ICMP") };
    assert_eq!(i.icmp_type, Icmpv4Type::TimeExceeded(TimeExceededCode::TtlExceededInTransit));
    let ihl = ((orig[14] & 0x0f) as usize) * 4;
    assert_eq!(p.payload, &orig[14..14 + ihl + 8], "quote: the original IPv4 header (untranslated) and 8 bytes");
}

#[test]
fn ttl_1_and_0_get_time_exceeded_from_the_gateway() {
    let mut env = Env::new();
    let a = env.pod_a;
    for ttl in [1u8, 0] {
        for f in [udp(POD_A, 5600, REMOTE1, 53, b"traceroute"), tcp(POD_A, 5601, REMOTE1, 80, "S", b""), echo_request(POD_A, REMOTE1, 77, 1)] {
            let f = with_ttl(&f, ttl);
            assert_time_exceeded(&env.egress(a, &f), &f);
        }
    }
    assert_eq!(env.counter(Counter::DropTtlExpired), 6);
    assert_eq!(env.counter(Counter::IcmpUnreachSent), 6);
    // No mapping, no flow, no claim: the packet never left.
    assert!(env.mappings().is_empty() && env.claims().is_empty() && env.ct_count() == 0);
    // A drop event per expired packet, naming the pod.
    let ev = env.h.events();
    assert_eq!(ev.iter().filter(|e| e.reason == Counter::DropTtlExpired as u32).count(), 6, "{ev:?}");
}

#[test]
fn ttl_2_is_still_translated() {
    let mut env = Env::new();
    let a = env.pod_a;
    let f = with_ttl(&udp(POD_A, 5602, REMOTE1, 53, b"hop 2"), 2);
    let out = env.egress(a, &f);
    assert!(out.verdict == TC_ACT_OK || out.verdict == TC_ACT_REDIRECT, "verdict {}", out.verdict);
    let p = parse_checked(&out.packet);
    assert_eq!(p.ip.source, NODE_IP);
    assert_eq!(env.counter(Counter::DropTtlExpired), 0);
}

/// No ICMP error about an ICMP error, nor about a later fragment (RFC 1812 §4.3.2.7): those are
/// only dropped, and a mapping the pod already holds is not touched.
#[test]
fn expired_errors_and_later_fragments_are_dropped_silently() {
    let mut env = Env::new();
    let a = env.pod_a;
    let (_, ext) = snat_ok(&mut env, a, &udp(POD_A, 5700, REMOTE1, 53, b"x"));
    let m0 = env.mapping(ep(POD_A, 5700, UDP)).unwrap();
    let quoted = udp(REMOTE1, 53, POD_A, 5700, b"x");
    let err = with_ttl(&icmp_error_to(POD_A, REMOTE1, Icmpv4Type::DestinationUnreachable(etherparse::icmpv4::DestUnreachableHeader::Port), &quoted, 28), 1);
    assert_eq!(env.egress(a, &err).verdict, TC_ACT_SHOT);
    let (_, rest) = fragments(&udp(POD_A, 5701, REMOTE1, 53, &[1; 48]), 24, 9);
    let rest = with_ttl(&rest, 1);
    assert_eq!(env.egress(a, &rest).verdict, TC_ACT_SHOT);
    assert_eq!(env.counter(Counter::DropTtlExpired), 2);
    assert_eq!(env.counter(Counter::IcmpUnreachSent), 0);
    assert_eq!(env.mapping(ep(POD_A, 5700, UDP)).unwrap(), m0);
    let _ = ext;
}
