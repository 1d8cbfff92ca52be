//! Outside → pod through `uplink_xdp` and `uplink_tc`: replies, ICMP errors, fragments.
mod snat_common;
use etherparse::{Icmpv4Type, TransportHeader, icmpv4::DestUnreachableHeader};
use podgate_common::{nat::FragKey4, stats::Counter, tcp::TcpState};
use snat_common::*;

/// Pod A opens a flow; returns the external port.
fn open(env: &mut Env, frame: &[u8]) -> u16 {
    let a = env.pod_a;
    snat_ok(env, a, frame).1
}

/// Marks the mapping as last seen at t=1 so a refresh would show.
fn age_mapping(env: &mut Env, e: podgate_common::nat::Endpoint4) {
    let mut m = env.mapping(e).unwrap();
    m.last_seen_ns = 1;
    env.set_mapping(e, m);
}

#[test]
fn tcp_reply_through_xdp_and_tc() {
    for path in [Path::Xdp, Path::Tc] {
        let mut env = Env::new();
        let ext = open(&mut env, &tcp(POD_A, 40000, REMOTE1, 443, "S", b""));
        let e = ep(POD_A, 40000, TCP);
        age_mapping(&mut env, e);
        let (pass, out) = run(
            &mut env,
            path,
            &tcp(REMOTE1, 443, NODE_IP, ext, "SA", b"hello"),
        );
        assert!(pass, "{path:?}");
        let p = parse_checked(&out);
        assert_eq!(p.ip.destination, POD_A);
        assert_eq!(p.ip.source, REMOTE1);
        assert_eq!(ports(&p), (443, 40000));
        assert_eq!(p.payload, b"hello");
        let ct = env.ct(flow(POD_A, 40000, REMOTE1, 443, TCP)).unwrap();
        assert_eq!(ct.state, TcpState::Established as u8);
        assert_eq!(ct.packets_in, 1);
        assert_eq!(
            env.mapping(e).unwrap().last_seen_ns,
            1,
            "inbound never refreshes the mapping"
        );
        assert_eq!(env.counter(Counter::RevNat), 1);
    }
}

#[test]
fn udp_and_echo_replies_through_xdp_and_tc() {
    for path in [Path::Xdp, Path::Tc] {
        let mut env = Env::new();
        let ext = open(&mut env, &udp(POD_A, 5353, REMOTE1, 53, b"q"));
        let (pass, out) = run(&mut env, path, &udp(REMOTE1, 53, NODE_IP, ext, b"answer"));
        assert!(pass);
        let p = parse_checked(&out);
        assert_eq!((p.ip.destination, ports(&p)), (POD_A, (53, 5353)));
        let id = open(&mut env, &echo_request(POD_A, REMOTE1, 0x77, 3));
        let (pass, out) = run(&mut env, path, &echo_reply(REMOTE1, NODE_IP, id, 3));
        assert!(pass);
        let p = parse_checked(&out);
        assert_eq!((p.ip.destination, ports(&p).0), (POD_A, 0x77));
        assert_eq!(
            env.ct(flow(POD_A, 0x77, REMOTE1, 0, ICMP))
                .unwrap()
                .packets_in,
            1
        );
        assert_eq!(env.counter(Counter::RevNat), 2, "{path:?}");
    }
}

#[test]
fn udp_reply_without_checksum() {
    let mut env = Env::new();
    let ext = open(&mut env, &udp(POD_A, 5355, REMOTE1, 53, b"q"));
    let mut f = udp(REMOTE1, 53, NODE_IP, ext, b"a");
    f[40] = 0;
    f[41] = 0;
    for path in [Path::Xdp, Path::Tc] {
        let (pass, out) = run(&mut env, path, &f);
        assert!(pass);
        let p = parse_checked(&out);
        let Some(TransportHeader::Udp(u)) = p.transport else {
            panic!()
        };
        assert_eq!(u.checksum, 0);
        assert_eq!(u.destination_port, 5355);
    }
}

#[test]
fn no_mapping_passes_to_the_stack_untouched() {
    let mut env = Env::new();
    let ext = open(&mut env, &udp(POD_A, 5000, REMOTE1, 53, b"q"));
    let frames = [
        // Unknown port.
        tcp(REMOTE1, 443, NODE_IP, 22, "S", b""),
        // Known port, other remote: address-dependent filtering.
        udp(REMOTE2, 53, NODE_IP, ext, b"a"),
        // Known port, other protocol.
        tcp(REMOTE1, 53, NODE_IP, ext, "SA", b""),
        // A ping of the node itself.
        echo_request(REMOTE1, NODE_IP, ext, 1),
        // Not for the node at all.
        udp(REMOTE1, 53, [192, 0, 2, 99], ext, b"a"),
    ];
    for f in &frames {
        for path in [Path::Xdp, Path::Tc] {
            let (pass, out) = run(&mut env, path, f);
            assert!(pass);
            assert_eq!(&out, f);
        }
    }
    assert_eq!(env.counter(Counter::NotOurs), 10);
    assert_eq!(env.counter(Counter::RevNat), 0);
}

#[test]
fn endpoint_independent_filtering_mode() {
    let mut env = Env::with(Config {
        flags: podgate_common::node_flags::FILTER_EIF,
        ..Default::default()
    });
    let ext = open(&mut env, &udp(POD_A, 5000, REMOTE1, 3478, b"q"));
    assert_eq!(env.claim([0; 4], ext, UDP), Some(ep(POD_A, 5000, UDP)));
    let (pass, out) = run(
        &mut env,
        Path::Xdp,
        &udp(REMOTE2, 9999, NODE_IP, ext, b"hi"),
    );
    assert!(pass);
    let p = parse_checked(&out);
    assert_eq!((p.ip.destination, ports(&p)), (POD_A, (9999, 5000)));
    let ct = env
        .ct(flow(POD_A, 5000, REMOTE2, 9999, UDP))
        .expect("flow created by inbound");
    assert_eq!((ct.packets_in, ct.packets_out), (1, 0));
}

/// The embedded packet of a translated ICMP error, parsed and checked.
fn inner(p: &Parsed) -> (etherparse::Ipv4Header, Vec<u8>) {
    let (h, rest) = etherparse::Ipv4Header::from_slice(&p.payload).expect("embedded IPv4");
    assert_eq!(
        h.header_checksum,
        h.calc_header_checksum(),
        "embedded IPv4 checksum"
    );
    (h, rest.to_vec())
}

fn icmp_type(p: &Parsed) -> Icmpv4Type {
    let Some(TransportHeader::Icmpv4(i)) = &p.transport else {
        panic!("not icmp")
    };
    i.icmp_type.clone()
}

#[test]
fn icmp_errors_are_translated_with_their_inner_packet() {
    for path in [Path::Xdp, Path::Tc] {
        let mut env = Env::new();
        let a = env.pod_a;
        // TCP flow; 3/4 quoting the full header and payload, MTU kept, inner TCP checksum valid.
        let syn = tcp(POD_A, 40100, REMOTE1, 443, "S", b"0123456789");
        let out = env.egress(a, &syn).packet;
        let ext = parse_checked(&out)
            .transport
            .map(|t| t.tcp().unwrap().source_port)
            .unwrap();
        let ct_before = env.ct(flow(POD_A, 40100, REMOTE1, 443, TCP)).unwrap();
        let m_before = env.mapping(ep(POD_A, 40100, TCP)).unwrap();
        let err = icmp_error(
            ROUTER,
            Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
                next_hop_mtu: 1280,
            }),
            &out,
            1000,
        );
        let (pass, o) = run(&mut env, path, &err);
        assert!(pass);
        let p = parse_checked(&o);
        assert_eq!((p.ip.source, p.ip.destination), (ROUTER, POD_A));
        assert_eq!(
            icmp_type(&p),
            Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
                next_hop_mtu: 1280
            })
        );
        let (ih, rest) = inner(&p);
        assert_eq!((ih.source, ih.destination), (POD_A, REMOTE1));
        let (th, payload) = etherparse::TcpHeader::from_slice(&rest).unwrap();
        assert_eq!((th.source_port, th.destination_port), (40100, 443));
        assert_eq!(
            th.checksum,
            th.calc_checksum_ipv4(&ih, payload).unwrap(),
            "embedded TCP checksum"
        );
        // Errors never refresh or end anything.
        assert_eq!(
            env.ct(flow(POD_A, 40100, REMOTE1, 443, TCP)).unwrap(),
            ct_before
        );
        assert_eq!(env.mapping(ep(POD_A, 40100, TCP)).unwrap(), m_before);

        // 3/1 about the same flow quoting only IP + 8 bytes (the TCP checksum is not there).
        let err = icmp_error(
            ROUTER,
            Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Host),
            &out,
            28,
        );
        let (pass, o) = run(&mut env, path, &err);
        assert!(pass);
        let p = parse_checked(&o);
        assert_eq!(
            icmp_type(&p),
            Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Host)
        );
        let (ih, rest) = inner(&p);
        assert_eq!(ih.source, POD_A);
        assert_eq!(rest.len(), 8);
        assert_eq!(u16::from_be_bytes([rest[0], rest[1]]), 40100);
        let _ = ext;

        // 3/3 for a UDP flow, quoting the whole datagram: the inner UDP checksum verifies.
        let out = env
            .egress(a, &udp(POD_A, 5400, REMOTE1, 9, b"discard me"))
            .packet;
        let err = icmp_error(
            REMOTE1,
            Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port),
            &out,
            1000,
        );
        let (pass, o) = run(&mut env, path, &err);
        assert!(pass);
        let p = parse_checked(&o);
        assert_eq!(p.ip.destination, POD_A);
        let (ih, rest) = inner(&p);
        let (uh, payload) = etherparse::UdpHeader::from_slice(&rest).unwrap();
        assert_eq!((uh.source_port, uh.destination_port), (5400, 9));
        assert_eq!(
            uh.checksum,
            uh.calc_checksum_ipv4(&ih, payload).unwrap(),
            "embedded UDP checksum"
        );

        // 11/0 for an echo request: the identifier and the inner ICMP checksum go back.
        let out = env.egress(a, &echo_request(POD_A, REMOTE1, 0x4d, 9)).packet;
        let err = icmp_error(
            ROUTER,
            Icmpv4Type::TimeExceeded(etherparse::icmpv4::TimeExceededCode::TtlExceededInTransit),
            &out,
            1000,
        );
        let (pass, o) = run(&mut env, path, &err);
        assert!(pass);
        let p = parse_checked(&o);
        let (_, rest) = inner(&p);
        let (ich, payload) = etherparse::Icmpv4Header::from_slice(&rest).unwrap();
        assert_eq!(
            ich.icmp_type,
            Icmpv4Type::EchoRequest(etherparse::IcmpEchoHeader { id: 0x4d, seq: 9 })
        );
        assert_eq!(
            ich.checksum,
            ich.icmp_type.calc_checksum(payload),
            "embedded ICMP checksum"
        );
        assert_eq!(env.counter(Counter::IcmpErrorTranslated), 4, "{path:?}");
    }
}

#[test]
fn icmp_error_with_embedded_options() {
    let mut env = Env::new();
    let a = env.pod_a;
    let plain = udp(POD_A, 5402, REMOTE1, 9, b"opts");
    let (mut hdr, rest) = etherparse::Ipv4Header::from_slice(&plain[14..]).unwrap();
    hdr.options = (&[0x01u8, 0x01, 0x01, 0x00][..]).try_into().unwrap();
    let out = env.egress(a, &raw_frame(hdr, rest)).packet;
    let err = icmp_error(
        REMOTE1,
        Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port),
        &out,
        1000,
    );
    let (pass, o) = run(&mut env, Path::Xdp, &err);
    assert!(pass);
    let p = parse_checked(&o);
    let (ih, rest) = inner(&p);
    assert_eq!(ih.header_len(), 24);
    let (uh, payload) = etherparse::UdpHeader::from_slice(&rest).unwrap();
    assert_eq!(uh.source_port, 5402);
    assert_eq!(uh.checksum, uh.calc_checksum_ipv4(&ih, payload).unwrap());
}

#[test]
fn icmp_error_without_mapping_is_dropped() {
    let mut env = Env::new();
    // A packet that never went through the NAT.
    let fake = udp(NODE_IP, 45000, REMOTE1, 53, b"x");
    let err = icmp_error(
        ROUTER,
        Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Host),
        &fake,
        28,
    );
    for path in [Path::Xdp, Path::Tc] {
        let (pass, _) = run(&mut env, path, &err);
        assert!(!pass);
    }
    // One about a packet with another source than the node.
    let other = udp(REMOTE2, 45000, REMOTE1, 53, b"x");
    let err = icmp_error(
        ROUTER,
        Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Host),
        &other,
        28,
    );
    assert!(!run(&mut env, Path::Xdp, &err).0);
    assert_eq!(env.counter(Counter::DropIcmpNoMapping), 3);
    // Embedded header cut short.
    let ext = open(&mut env, &udp(POD_A, 5401, REMOTE1, 53, b"q"));
    let out = udp(NODE_IP, ext, REMOTE1, 53, b"q");
    let err = icmp_error(
        ROUTER,
        Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Host),
        &out,
        24,
    );
    assert!(!run(&mut env, Path::Xdp, &err).0);
    assert_eq!(env.counter(Counter::DropMalformed), 1);
}

#[test]
fn inbound_fragments_first_then_rest_and_rest_first() {
    for path in [Path::Xdp, Path::Tc] {
        let mut env = Env::new();
        let ext = open(&mut env, &udp(POD_A, 5500, REMOTE1, 9000, b"q"));
        let reply = udp(REMOTE1, 9000, NODE_IP, ext, &[0x5a; 80]);
        let (first, rest) = fragments(&reply, 40, 0x1111);
        // Rest first: orphan, dropped and counted.
        let (pass, _) = run(&mut env, path, &rest);
        assert!(!pass);
        assert_eq!(env.counter(Counter::DropFragOrphan), 1);
        // Then in order.
        let (pass, o1) = run(&mut env, path, &first);
        assert!(pass);
        let p1 = parse_checked(&o1);
        assert_eq!(p1.ip.destination, POD_A);
        let k = FragKey4 {
            src: REMOTE1,
            dst: NODE_IP,
            id: 0x1111,
            proto: UDP,
            dir: 1,
        };
        assert_eq!(env.frag(k).expect("frag4 entry").new_addr, POD_A);
        let (pass, o2) = run(&mut env, path, &rest);
        assert!(pass);
        let p2 = parse_checked(&o2);
        assert_eq!(p2.ip.destination, POD_A);
        assert_eq!(&o2[34..], &rest[34..]);
        assert_eq!(env.counter(Counter::FragTranslated), 1);
        // The reassembled datagram carries a valid UDP checksum for the pod.
        let mut dgram = o1[34..].to_vec();
        dgram.extend_from_slice(&o2[34..]);
        let (u, payload) = etherparse::UdpHeader::from_slice(&dgram).unwrap();
        assert_eq!(u.destination_port, 5500);
        let mut ip = p1.ip.clone();
        ip.more_fragments = false;
        assert_eq!(
            u.checksum,
            u.calc_checksum_ipv4(&ip, payload).unwrap(),
            "{path:?}"
        );
    }
}

#[test]
fn truncated_ipv4_header_on_the_uplink_is_dropped() {
    let mut env = Env::new();
    let f = udp(REMOTE1, 53, NODE_IP, 40000, b"x");
    let o = env.reverse_xdp(&f[..14 + 12]);
    assert_eq!(o.verdict, XDP_DROP);
    let ext = open(&mut env, &tcp(POD_A, 40002, REMOTE1, 80, "S", b""));
    let t = tcp(REMOTE1, 80, NODE_IP, ext, "SA", b"");
    assert_eq!(env.reverse_xdp(&t[..14 + 20 + 10]).verdict, XDP_DROP);
    assert_eq!(env.counter(Counter::DropMalformed), 2);
}

#[test]
fn tcp_state_machine_across_both_directions() {
    let mut env = Env::new();
    let a = env.pod_a;
    let f = flow(POD_A, 40200, REMOTE1, 80, TCP);
    let ext = open(&mut env, &tcp(POD_A, 40200, REMOTE1, 80, "S", b""));
    run(
        &mut env,
        Path::Xdp,
        &tcp(REMOTE1, 80, NODE_IP, ext, "SA", b""),
    );
    assert_eq!(env.ct(f).unwrap().state, TcpState::Established as u8);
    snat_ok(&mut env, a, &tcp(POD_A, 40200, REMOTE1, 80, "FA", b""));
    assert_eq!(env.ct(f).unwrap().state, TcpState::FinOut as u8);
    run(
        &mut env,
        Path::Xdp,
        &tcp(REMOTE1, 80, NODE_IP, ext, "FA", b""),
    );
    assert_eq!(env.ct(f).unwrap().state, TcpState::FinBoth as u8);
    // An RST is translated and keeps the session (RFC 7857 §2.2).
    let (pass, o) = run(
        &mut env,
        Path::Xdp,
        &tcp(REMOTE1, 80, NODE_IP, ext, "R", b""),
    );
    assert!(pass);
    assert_eq!(parse_checked(&o).ip.destination, POD_A);
    assert_eq!(env.ct(f).unwrap().state, TcpState::Rst as u8);
    assert!(env.mapping(ep(POD_A, 40200, TCP)).is_some());
}

#[test]
fn fib_fast_path_redirects_both_ways() {
    let mut env = Env::with_fib();
    let a = env.pod_a;
    let up = env.uplink;
    let out = env.egress(a, &udp(POD_A, 5600, REMOTE1, 53, b"fast"));
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    let p = parse_checked(&out.packet);
    assert_eq!(p.ip.source, NODE_IP);
    assert_eq!(p.ip.time_to_live, 63);
    assert_eq!(&out.packet[0..6], &[2, 0, 0, 0, 0, 0xfe], "gateway MAC");
    assert_eq!(&out.packet[6..12], &Env::mac("pgup"), "uplink MAC");
    let ext = ports(&p).0;
    // XDP translates and hands the packet to the stack: an XDP_REDIRECT into a veth would be
    // dropped unless the pod's end runs XDP or GRO. The TTL is the stack's to decrement.
    let o = env.reverse_xdp(&udp(REMOTE1, 53, NODE_IP, ext, b"back"));
    assert_eq!(o.verdict, XDP_PASS);
    let p = parse_checked(&o.packet);
    assert_eq!((p.ip.destination, p.ip.time_to_live), (POD_A, 64));
    // TC redirects straight to the pod's veth with the MACs of that hop.
    let o = env.reverse_tc(&udp(REMOTE1, 53, NODE_IP, ext, b"back"));
    assert_eq!(o.verdict, TC_ACT_REDIRECT);
    let p = parse_checked(&o.packet);
    assert_eq!((p.ip.destination, p.ip.time_to_live), (POD_A, 63));
    assert_eq!(&o.packet[0..6], &POD_MAC);
    assert_eq!(&o.packet[6..12], &Env::mac("pga"));
    assert_eq!(env.counter(Counter::FibRedirect), 2);
    let _ = up;
    // TTL 1 ends here: the pod hears 11/0 from its gateway (RFC 5508 REQ-10; tests/tests/ttl.rs).
    let mut f = udp(POD_A, 5600, REMOTE1, 53, b"ttl");
    f[22] = 1;
    let (mut h, rest) = etherparse::Ipv4Header::from_slice(&f[14..]).unwrap();
    h.time_to_live = 1;
    let out = env.egress(a, &raw_frame(h, rest));
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    // Too big for the uplink's MTU with DF: the pod gets 3/4 with the MTU, from the node, before
    // any translation (RFC 4787 REQ-13).
    env.set_mtu("pgup", 1280);
    let big = udp(POD_A, 5600, REMOTE1, 53, &[7u8; 1300]);
    let out = env.egress(a, &big);
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    let err = parse_checked(&out.packet);
    assert_eq!(err.ip.destination, POD_A);
    let icmp = &out.packet[14 + 20..];
    assert_eq!((icmp[0], icmp[1]), (3, 4), "fragmentation needed");
    assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), 1280, "next-hop MTU");
    assert_eq!(env.counter(Counter::DropFragNeeded), 1);
    // Without DF the stack may fragment it: translated and handed over.
    let (mut h, rest) = etherparse::Ipv4Header::from_slice(&big[14..]).unwrap();
    h.dont_fragment = false;
    let out = env.egress(a, &raw_frame(h, rest));
    assert_eq!(out.verdict, TC_ACT_OK);
    assert_eq!(parse_checked(&out.packet).ip.source, NODE_IP);
    let out = env.egress(a, &udp(POD_A, 5600, REMOTE1, 53, &[7u8; 1200]));
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    // The same toward the pod on the TC reverse path.
    env.set_mtu("pga", 1280);
    let o = env.reverse_tc(&udp(REMOTE1, 53, NODE_IP, ext, &[8u8; 1300]));
    assert_eq!(o.verdict, TC_ACT_OK);
    assert_eq!(parse_checked(&o.packet).ip.destination, POD_A);
    let o = env.reverse_tc(&udp(REMOTE1, 53, NODE_IP, ext, &[8u8; 1200]));
    assert_eq!(o.verdict, TC_ACT_REDIRECT);
}

#[test]
fn icmp_error_from_a_pod_is_translated_outbound() {
    let mut env = Env::new();
    let a = env.pod_a;
    let ext = open(&mut env, &udp(POD_A, 5700, REMOTE1, 53, b"q"));
    let (pass, delivered) = run(
        &mut env,
        Path::Xdp,
        &udp(REMOTE1, 53, NODE_IP, ext, b"late answer"),
    );
    assert!(pass);
    let ct_before = env.ct(flow(POD_A, 5700, REMOTE1, 53, UDP)).unwrap();
    let m_before = env.mapping(ep(POD_A, 5700, UDP)).unwrap();
    // The pod's socket is gone: its stack answers 3/3 about the packet it received.
    let err = icmp_error_to(
        POD_A,
        REMOTE1,
        Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port),
        &delivered,
        1000,
    );
    let out = env.egress(a, &err);
    assert_eq!(out.verdict, TC_ACT_OK);
    let p = parse_checked(&out.packet);
    assert_eq!((p.ip.source, p.ip.destination), (NODE_IP, REMOTE1));
    assert_eq!(
        icmp_type(&p),
        Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port)
    );
    let (ih, rest) = inner(&p);
    assert_eq!((ih.source, ih.destination), (REMOTE1, NODE_IP));
    let (uh, payload) = etherparse::UdpHeader::from_slice(&rest).unwrap();
    assert_eq!((uh.source_port, uh.destination_port), (53, ext));
    assert_eq!(
        uh.checksum,
        uh.calc_checksum_ipv4(&ih, payload).unwrap(),
        "embedded UDP checksum"
    );
    // Nothing refreshed (RFC 7857 §7.1).
    assert_eq!(
        env.ct(flow(POD_A, 5700, REMOTE1, 53, UDP)).unwrap(),
        ct_before
    );
    assert_eq!(env.mapping(ep(POD_A, 5700, UDP)).unwrap(), m_before);
    assert_eq!(env.counter(Counter::IcmpErrorTranslated), 1);
    // About a flow that does not exist: dropped.
    let stray = udp(REMOTE2, 53, POD_A, 5700, b"x");
    let err = icmp_error_to(
        POD_A,
        REMOTE2,
        Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port),
        &stray,
        1000,
    );
    assert_eq!(env.egress(a, &err).verdict, TC_ACT_SHOT);
    assert_eq!(env.counter(Counter::DropIcmpNoMapping), 1);
}

/// RFC 4787 REQ-3 under port overlapping: pod A holds (REMOTE1, P); pod B's mapping has P too
/// (its first remote was REMOTE2), so B's flow to REMOTE1 gets its own port Q. When REMOTE1
/// answers Q from another source port, the new flow must keep Q, the port it arrived on: with
/// the mapping's P, B's answers would leave as node:P, which REMOTE1 associates with pod A.
#[test]
fn inbound_flow_on_a_per_flow_port_keeps_the_arrival_port() {
    for path in [Path::Xdp, Path::Tc] {
        // One port only, so that both mappings get it; widened below for B's per-flow port.
        let mut env = Env::with(Config {
            port_min: 40000,
            port_max: 40000,
            ..Default::default()
        });
        let (a, b) = (env.pod_a, env.pod_b);
        // TCP keeps no parity: every port of the range is a candidate.
        let (_, p) = snat_ok(&mut env, a, &tcp(POD_A, 5000, REMOTE1, 80, "S", b""));
        let (_, pb) = snat_ok(&mut env, b, &tcp(POD_B, 5000, REMOTE2, 80, "S", b""));
        assert_eq!((p, pb), (40000, 40000), "both mappings share the port");
        env.set_ports(40000, 40001);
        let (_, q) = snat_ok(&mut env, b, &tcp(POD_B, 5000, REMOTE1, 80, "S", b""));
        assert_eq!(q, 40001, "B's flow to REMOTE1 gets its own port");
        assert_eq!(env.claim(REMOTE1, q, TCP), Some(ep(POD_B, 5000, TCP)));
        // REMOTE1 answers Q from another source port (EIM: the same mapping).
        let (pass, out) = run(&mut env, path, &tcp(REMOTE1, 8080, NODE_IP, q, "S", b""));
        assert!(pass, "{path:?}");
        let p_in = parse_checked(&out);
        assert_eq!((p_in.ip.destination, ports(&p_in)), (POD_B, (8080, 5000)));
        let ct = env
            .ct(flow(POD_B, 5000, REMOTE1, 8080, TCP))
            .expect("flow created by inbound");
        assert_eq!(ct.ext_port, q, "{path:?}: the flow keeps the port the packet arrived on");
        // B's answer leaves from Q, never from P (REMOTE1 would hand P's traffic to pod A).
        let (_, out_port) = snat_ok(&mut env, b, &tcp(POD_B, 5000, REMOTE1, 8080, "SA", b""));
        assert_eq!(out_port, q, "{path:?}");
        // And REMOTE1's packets to P still reach pod A only.
        let (pass, out) = run(&mut env, path, &tcp(REMOTE1, 80, NODE_IP, p, "SA", b""));
        assert!(pass);
        assert_eq!(parse_checked(&out).ip.destination, POD_A);
    }
}

/// The same for UDP, where the port keeps its parity: the code that keeps the arrival port is
/// protocol-independent, and the TCP test above alone would not show a UDP-only regression.
#[test]
fn inbound_udp_flow_on_a_per_flow_port_keeps_the_arrival_port() {
    for path in [Path::Xdp, Path::Tc] {
        let mut env = Env::with(Config {
            port_min: 40000,
            port_max: 40000,
            ..Default::default()
        });
        let (a, b) = (env.pod_a, env.pod_b);
        let (_, p) = snat_ok(&mut env, a, &udp(POD_A, 5000, REMOTE1, 53, b"q"));
        let (_, pb) = snat_ok(&mut env, b, &udp(POD_B, 5000, REMOTE2, 53, b"q"));
        assert_eq!((p, pb), (40000, 40000), "both mappings share the port");
        // 40001 is odd: an even source port's per-flow port is the next even one.
        env.set_ports(40000, 40002);
        let (_, q) = snat_ok(&mut env, b, &udp(POD_B, 5000, REMOTE1, 53, b"q"));
        assert_eq!(q, 40002, "B's flow to REMOTE1 gets its own port");
        assert_eq!(env.claim(REMOTE1, q, UDP), Some(ep(POD_B, 5000, UDP)));
        let (pass, out) = run(&mut env, path, &udp(REMOTE1, 5353, NODE_IP, q, b"in"));
        assert!(pass, "{path:?}");
        let p_in = parse_checked(&out);
        assert_eq!((p_in.ip.destination, ports(&p_in)), (POD_B, (5353, 5000)));
        let ct = env
            .ct(flow(POD_B, 5000, REMOTE1, 5353, UDP))
            .expect("flow created by inbound");
        assert_eq!(ct.ext_port, q, "{path:?}: the flow keeps the port the packet arrived on");
        let (_, out_port) = snat_ok(&mut env, b, &udp(POD_B, 5000, REMOTE1, 5353, b"a"));
        assert_eq!(out_port, q, "{path:?}");
        let (pass, out) = run(&mut env, path, &udp(REMOTE1, 53, NODE_IP, p, b"a"));
        assert!(pass);
        assert_eq!(parse_checked(&out).ip.destination, POD_A);
    }
}

/// `pod_usage` counts once per created entry: a mapping and its flows, and a flow an inbound
/// packet created, are charged to the pod (by `Pod::id`), and packets of existing flows add
/// nothing.
#[test]
fn pod_usage_counts_created_mappings_and_flows() {
    let mut env = Env::new();
    let a = env.pod_a;
    let ext = open(&mut env, &udp(POD_A, 5000, REMOTE1, 53, b"q"));
    open(&mut env, &udp(POD_A, 5000, REMOTE2, 53, b"q"));
    open(&mut env, &udp(POD_A, 5000, REMOTE1, 53, b"again"));
    let u = env.usage(a);
    assert_eq!((u.mappings, u.flows4), (1, 2));
    // EIM: REMOTE1 from another port reaches the mapping (address-dependent filtering).
    let (pass, _) = run(&mut env, Path::Xdp, &udp(REMOTE1, 5353, NODE_IP, ext, b"a"));
    assert!(pass);
    let (pass, _) = run(&mut env, Path::Tc, &udp(REMOTE1, 5353, NODE_IP, ext, b"a"));
    assert!(pass);
    let u = env.usage(a);
    assert_eq!((u.mappings, u.flows4), (1, 3), "the inbound-created flow is charged once");
    assert_eq!(env.usage(env.pod_b), podgate_common::PodUsage::default());
}

/// The mapping quota reads held = usage − freed: what the daemon freed makes room again.
#[test]
fn mapping_quota_counts_usage_minus_freed() {
    let mut env = Env::with(Config { pod_quota: 2, ..Default::default() });
    let a = env.pod_a;
    open(&mut env, &udp(POD_A, 5000, REMOTE1, 53, b"q"));
    open(&mut env, &udp(POD_A, 5002, REMOTE1, 53, b"q"));
    let out = env.egress(a, &udp(POD_A, 5004, REMOTE1, 53, b"q"));
    assert_ne!(out.verdict, TC_ACT_OK);
    assert_eq!(env.counter(Counter::DropPodQuota), 1);
    env.set_freed(a, podgate_common::PodUsage { mappings: 1, flows4: 1, flows6: 0 });
    open(&mut env, &udp(POD_A, 5004, REMOTE1, 53, b"q"));
    assert_eq!(env.usage(a).mappings, 3);
}

fn set_node(env: &mut Env, f: impl FnOnce(&mut podgate_common::NodeConfig)) {
    let mut a: aya::maps::Array<_, podgate_common::NodeConfig> =
        aya::maps::Array::try_from(env.h.ebpf.map_mut("node").unwrap()).unwrap();
    let mut n = a.get(&0, 0).unwrap();
    f(&mut n);
    a.set(0, n, 0).unwrap();
}

fn set_pressure(env: &mut Env, level: u32) {
    let mut a: aya::maps::Array<_, u32> =
        aya::maps::Array::try_from(env.h.ebpf.map_mut("nat4_pressure").unwrap()).unwrap();
    a.set(0, level, 0).unwrap();
}

/// Inbound-created flows stop at 7/8 of `pod_flows` (the packet dropped and counted), while the
/// pod's own new flows and the flows it holds go on; an answer marks the flow; the `INBOUND`
/// pressure level refuses flows a remote opens but not the pod's, `FULL` refuses both.
#[test]
fn inbound_created_flows_are_bounded_per_pod_and_refused_first() {
    use podgate_common::nat::{ct4_flags, pressure_level};
    let mut env = Env::new();
    set_node(&mut env, |n| n.pod_flows = 8);
    let a = env.pod_a;
    let ext = open(&mut env, &udp(POD_A, 5000, REMOTE1, 53, b"q"));
    for sport in 6000..6006 {
        let (pass, _) = run(&mut env, Path::Xdp, &udp(REMOTE1, sport, NODE_IP, ext, b"in"));
        assert!(pass, "inbound flow {sport} refused below the bound");
    }
    assert_eq!(env.usage(a).flows4, 7);
    let (pass, _) = run(&mut env, Path::Tc, &udp(REMOTE1, 6100, NODE_IP, ext, b"in"));
    assert!(!pass, "an eighth inbound flow got in");
    assert_eq!(env.counter(Counter::DropNat4PodFlows), 1);
    assert!(env.ct(flow(POD_A, 5000, REMOTE1, 6100, UDP)).is_none());
    let (pass, _) = run(&mut env, Path::Xdp, &udp(REMOTE1, 6000, NODE_IP, ext, b"again"));
    assert!(pass, "a tracked flow is never refused");
    open(&mut env, &udp(POD_A, 5000, REMOTE2, 53, b"own"));
    assert_eq!(env.usage(a).flows4, 8, "the pod's own flow uses the reserve");

    let f = flow(POD_A, 5000, REMOTE1, 6000, UDP);
    assert_eq!(env.ct(f).unwrap().flags, ct4_flags::INBOUND);
    snat_ok(&mut env, a, &udp(POD_A, 5000, REMOTE1, 6000, b"answer"));
    assert_eq!(env.ct(f).unwrap().flags, ct4_flags::INBOUND | ct4_flags::ANSWERED);

    env.set_freed(a, podgate_common::PodUsage { mappings: 0, flows4: 100, flows6: 0 });
    set_pressure(&mut env, pressure_level::INBOUND);
    let (pass, _) = run(&mut env, Path::Xdp, &udp(REMOTE1, 6200, NODE_IP, ext, b"in"));
    assert!(!pass, "an inbound flow got in under INBOUND pressure");
    assert_eq!(env.counter(Counter::DropMapFull), 1);
    open(&mut env, &udp(POD_A, 5002, REMOTE1, 53, b"own"));
    set_pressure(&mut env, pressure_level::FULL);
    let out = env.egress(a, &udp(POD_A, 5004, REMOTE1, 53, b"q"));
    assert_ne!(out.verdict, TC_ACT_OK, "a new outbound flow got in under FULL pressure");
    assert_eq!(env.counter(Counter::DropMapFull), 2);
}
