//! Regression fixtures for SNAT bugs found by the conformance suite and the fuzzer.
mod snat_common;
use etherparse::{Icmpv4Type, icmpv4::DestUnreachableHeader};
use podgate_common::stats::Counter;
use snat_common::*;

/// Found by the fuzzer: an ICMP error quoting only IP + 8 bytes of a TCP segment, followed by
/// bytes that are not part of the datagram (Ethernet padding, a trailer). The embedded TCP
/// checksum offset then fell into those bytes; "fixing" it there broke the ICMP checksum.
#[test]
fn icmp_error_with_trailing_bytes_keeps_a_valid_checksum() {
    for xdp in [true, false] {
        let mut env = Env::new();
        let a = env.pod_a;
        let out = env.egress(a, &tcp(POD_A, 40100, REMOTE1, 80, "S", b"")).packet;
        let mut err = icmp_error(ROUTER, Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Host), &out, 28);
        let trailer = [0xa5u8; 24];
        err.extend_from_slice(&trailer);
        let o = if xdp { env.reverse_xdp(&err) } else { env.reverse_tc(&err) };
        assert!(o.verdict == XDP_PASS || (!xdp && o.verdict == TC_ACT_OK), "verdict {}", o.verdict);
        let n = o.packet.len();
        assert_eq!(&o.packet[n - 24..], &trailer, "bytes after the datagram changed");
        let p = parse_checked(&o.packet[..n - 24]);
        assert_eq!(p.ip.destination, POD_A);
    }
}

/// Found by the fuzzer: an IPv4 total length beyond the end of the packet (truncated or lying)
/// created a mapping and a flow although the stack discards such a datagram.
#[test]
fn datagram_longer_than_the_packet_creates_no_state() {
    let mut env = Env::new();
    let a = env.pod_a;
    let mut f = udp(POD_A, 5000, REMOTE1, 53, b"payload");
    let tot = u16::from_be_bytes([f[16], f[17]]) + 2;
    f[16..18].copy_from_slice(&tot.to_be_bytes());
    f[24] = 0;
    f[25] = 0;
    let c = podgate_common::csum::checksum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    assert_eq!(env.egress(a, &f).verdict, TC_ACT_SHOT);
    assert_eq!(env.counter(Counter::DropMalformed), 1);
    assert!(env.mappings().is_empty() && env.claims().is_empty() && env.ct_count() == 0);
    // The same on the uplink: a reply with a lying length is not translated.
    let ext = snat_ok(&mut env, a, &udp(POD_A, 5001, REMOTE1, 53, b"q")).1;
    let mut r = udp(REMOTE1, 53, NODE_IP, ext, b"reply");
    let tot = u16::from_be_bytes([r[16], r[17]]) + 4;
    r[16..18].copy_from_slice(&tot.to_be_bytes());
    assert_eq!(env.reverse_xdp(&r).verdict, XDP_DROP);
    // Ethernet padding after a short datagram is fine.
    let mut padded = udp(REMOTE1, 53, NODE_IP, ext, b"r");
    padded.resize(60, 0);
    assert_eq!(env.reverse_xdp(&padded).verdict, XDP_PASS);
}

/// Found by the fuzzer: a total length that ends inside the transport header, with the rest of
/// the header in the frame's padding, was translated (and tracked) from the padding bytes.
#[test]
fn transport_header_past_the_total_length_is_malformed() {
    let mut env = Env::new();
    let a = env.pod_a;
    let mut f = udp(POD_A, 5000, REMOTE1, 53, b"");
    f[16..18].copy_from_slice(&22u16.to_be_bytes());
    f[24] = 0;
    f[25] = 0;
    let c = podgate_common::csum::checksum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    assert_eq!(env.egress(a, &f).verdict, TC_ACT_SHOT);
    assert!(env.mappings().is_empty() && env.ct_count() == 0);
}

/// Found by the fuzzer: an ICMP error whose total length ends right after the embedded IPv4
/// header, the embedded ports lying in padding: rewriting them broke the ICMP checksum.
#[test]
fn icmp_error_quoting_no_transport_bytes_is_dropped() {
    let mut env = Env::new();
    let a = env.pod_a;
    let out = env.egress(a, &udp(POD_A, 40100, REMOTE1, 53, b"")).packet;
    let mut err = icmp_error(ROUTER, Icmpv4Type::TimeExceeded(etherparse::icmpv4::TimeExceededCode::TtlExceededInTransit), &out, 20);
    // The quoted UDP header follows as padding, outside the datagram.
    err.extend_from_slice(&out[34..42]);
    let o = env.reverse_xdp(&err);
    assert_eq!(o.verdict, XDP_DROP);
    assert_eq!(o.packet, err, "nothing rewritten");
}

/// Found by the conformance suite (RFC 5382 REQ-4): an unsolicited SYN to a port of the SNAT
/// range was handed to the node's stack, which answered with an RST at once. It is dropped now;
/// SYN-ACKs (the node's own connections) and ports outside the range still go to the stack.
#[test]
fn unsolicited_syn_into_the_snat_range_is_dropped_silently() {
    let mut env = Env::new();
    let a = env.pod_a;
    let ext = snat_ok(&mut env, a, &tcp(POD_A, 40000, REMOTE1, 80, "S", b"")).1;
    for port in [ext, 40001, PORT_MIN, PORT_MAX] {
        assert_eq!(env.reverse_xdp(&tcp(REMOTE2, 80, NODE_IP, port, "S", b"")).verdict, XDP_DROP, "{port}");
        assert_eq!(env.reverse_tc(&tcp(REMOTE2, 80, NODE_IP, port, "S", b"")).verdict, TC_ACT_SHOT, "{port}");
    }
    assert_eq!(env.counter(Counter::DropNoMapping), 8);
    for (port, flags) in [(40001, "SA"), (22, "S"), (PORT_MIN - 1, "S")] {
        let f = tcp(REMOTE2, 80, NODE_IP, port, flags, b"");
        let o = env.reverse_xdp(&f);
        assert_eq!((o.verdict, o.packet), (XDP_PASS, f), "{port} {flags}");
    }
}
