//! Pod → outside through `pod_ingress` (BPF_PROG_TEST_RUN fixtures).
mod snat_common;
use podgate_common::stats::Counter;
use snat_common::*;

#[test]
fn new_tcp_flow_is_translated_and_tracked() {
    let mut env = Env::new();
    let a = env.pod_a;
    let (p, ext) = snat_ok(&mut env, a, &tcp(POD_A, 40000, REMOTE1, 443, "S", b""));
    assert_eq!(p.ip.destination, REMOTE1);
    assert_eq!(ports(&p).1, 443);
    assert!((PORT_MIN..=PORT_MAX).contains(&ext));
    let m = env.mapping(ep(POD_A, 40000, TCP)).expect("mapping");
    assert_eq!(m.ext_port, ext);
    assert_eq!(m.pod_ifindex, a);
    assert_eq!(env.claim(REMOTE1, ext, TCP), Some(ep(POD_A, 40000, TCP)));
    let ct = env.ct(flow(POD_A, 40000, REMOTE1, 443, TCP)).expect("ct");
    assert_eq!(ct.ext_port, ext);
    assert_eq!(ct.state, podgate_common::tcp::TcpState::SynOut as u8);
    assert!(ct.last_seen_ns > 0 && ct.packets_out == 1);
    assert_eq!(env.usage(a).mappings, 1);
    assert_eq!(env.counter(Counter::SnatNewMapping), 1);
    assert_eq!(env.counter(Counter::SnatOut), 1);
}

#[test]
fn established_flow_reuses_its_port_and_refreshes() {
    let mut env = Env::new();
    let a = env.pod_a;
    let (_, ext) = snat_ok(&mut env, a, &tcp(POD_A, 40001, REMOTE1, 80, "S", b""));
    let e = ep(POD_A, 40001, TCP);
    let mut m = env.mapping(e).unwrap();
    m.last_seen_ns = 1;
    env.set_mapping(e, m);
    let (p, ext2) = snat_ok(
        &mut env,
        a,
        &tcp(POD_A, 40001, REMOTE1, 80, "A", b"GET / HTTP/1.0\r\n\r\n"),
    );
    assert_eq!(ext, ext2);
    assert_eq!(p.payload, b"GET / HTTP/1.0\r\n\r\n");
    assert!(
        env.mapping(e).unwrap().last_seen_ns > 1,
        "outbound refreshes the mapping"
    );
    assert_eq!(
        env.ct(flow(POD_A, 40001, REMOTE1, 80, TCP))
            .unwrap()
            .packets_out,
        2
    );
    assert_eq!(env.counter(Counter::SnatNewMapping), 1);
    assert_eq!(env.counter(Counter::SnatNewFlow), 1);
    assert_eq!(env.usage(a).mappings, 1);
}

#[test]
fn udp_and_icmp_echo_are_translated() {
    let mut env = Env::new();
    let a = env.pod_a;
    let (p, ext) = snat_ok(&mut env, a, &udp(POD_A, 5001, REMOTE1, 53, b"query"));
    assert_eq!(ports(&p).1, 53);
    assert_eq!(ext % 2, 1, "odd stays odd");
    assert_eq!(env.mapping(ep(POD_A, 5001, UDP)).unwrap().ext_port, ext);
    let (_, id) = snat_ok(&mut env, a, &echo_request(POD_A, REMOTE1, 0x1234, 1));
    assert_eq!(env.mapping(ep(POD_A, 0x1234, ICMP)).unwrap().ext_port, id);
    assert!(env.ct(flow(POD_A, 0x1234, REMOTE1, 0, ICMP)).is_some());
    assert_eq!(env.usage(a).mappings, 2);
}

#[test]
fn udp_without_checksum_keeps_zero() {
    let mut env = Env::new();
    let a = env.pod_a;
    let mut f = udp(POD_A, 5002, REMOTE1, 53, b"nocsum");
    f[14 + 20 + 6] = 0;
    f[14 + 20 + 7] = 0;
    let (p, _) = snat_ok(&mut env, a, &f);
    let Some(etherparse::TransportHeader::Udp(u)) = p.transport else {
        panic!()
    };
    assert_eq!(u.checksum, 0);
}

#[test]
fn endpoint_independent_mapping_across_destinations() {
    let mut env = Env::new();
    let a = env.pod_a;
    let (_, e1) = snat_ok(&mut env, a, &udp(POD_A, 6000, REMOTE1, 3478, b"x"));
    let (_, e2) = snat_ok(&mut env, a, &udp(POD_A, 6000, REMOTE2, 3479, b"x"));
    let (_, e3) = snat_ok(&mut env, a, &tcp(POD_A, 6000, REMOTE2, 80, "S", b""));
    assert_eq!(e1, e2, "same endpoint, same external port (RFC 4787 REQ-1)");
    assert_eq!(env.claim(REMOTE2, e1, UDP), Some(ep(POD_A, 6000, UDP)));
    assert_eq!(env.ct_count(), 3);
    // Protocol-dependent: the TCP endpoint has its own mapping (RFC 7857 §5).
    assert_eq!(env.mapping(ep(POD_A, 6000, TCP)).unwrap().ext_port, e3);
    assert_eq!(env.mappings().len(), 2);
}

#[test]
fn port_range_and_parity_are_preserved() {
    let mut env = Env::new();
    let a = env.pod_a;
    for (i, sport) in [53u16, 500, 1023, 1024, 40001, 65534]
        .into_iter()
        .enumerate()
    {
        let (_, ext) = snat_ok(
            &mut env,
            a,
            &udp(POD_A, sport, REMOTE1, 9000 + i as u16, b"x"),
        );
        if sport < 1024 {
            assert!((512..1024).contains(&ext), "{sport} -> {ext}");
        } else {
            assert!(ext >= PORT_MIN, "{sport} -> {ext}");
        }
        assert_eq!(ext % 2, sport % 2, "{sport} -> {ext}");
    }
}

#[test]
fn tcp_and_icmp_use_the_whole_range_udp_keeps_parity() {
    // A two-port range: two even TCP source ports (Linux's connect() picks even ports first)
    // both get a port; UDP from an even port finds only the even one.
    let mut env = Env::with(Config {
        port_min: 40000,
        port_max: 40001,
        ..Default::default()
    });
    let a = env.pod_a;
    let (_, t1) = snat_ok(&mut env, a, &tcp(POD_A, 3000, REMOTE1, 80, "S", b""));
    let (_, t2) = snat_ok(&mut env, a, &tcp(POD_A, 3002, REMOTE1, 80, "S", b""));
    assert_eq!([t1.min(t2), t1.max(t2)], [40000, 40001], "TCP parity is not kept (RFC 5382)");
    let (_, i1) = snat_ok(&mut env, a, &echo_request(POD_A, REMOTE1, 0x1000, 1));
    let (_, i2) = snat_ok(&mut env, a, &echo_request(POD_A, REMOTE1, 0x1002, 1));
    assert_eq!([i1.min(i2), i1.max(i2)], [40000, 40001], "ICMP ids: no parity (RFC 5508)");
    let (_, u1) = snat_ok(&mut env, a, &udp(POD_A, 3000, REMOTE1, 53, b"x"));
    assert_eq!(u1, 40000);
    let f = udp(POD_A, 3002, REMOTE1, 53, b"x");
    assert_unreach_13(&env.egress(a, &f), &f);
    assert_eq!(env.counter(Counter::DropPortExhausted), 1);
    assert!(env.mapping(ep(POD_A, 3002, UDP)).is_none());
}

#[test]
fn udp_parity_can_be_switched_off() {
    let mut env = Env::with(Config {
        flags: podgate_common::node_flags::UDP_NO_PARITY,
        port_min: 40000,
        port_max: 40001,
        ..Default::default()
    });
    let a = env.pod_a;
    let (_, u1) = snat_ok(&mut env, a, &udp(POD_A, 3000, REMOTE1, 53, b"x"));
    let (_, u2) = snat_ok(&mut env, a, &udp(POD_A, 3002, REMOTE1, 53, b"x"));
    assert_eq!([u1.min(u2), u1.max(u2)], [40000, 40001]);
}

#[test]
fn port_overlapping_two_pods_different_remotes() {
    // A two-port range: both pods must end up on the one even port, toward different remotes.
    let mut env = Env::with(Config {
        port_min: 40000,
        port_max: 40001,
        ..Default::default()
    });
    let (a, b) = (env.pod_a, env.pod_b);
    let (_, ea) = snat_ok(&mut env, a, &udp(POD_A, 2000, REMOTE1, 53, b"x"));
    let (_, eb) = snat_ok(&mut env, b, &udp(POD_B, 2000, REMOTE2, 53, b"x"));
    assert_eq!((ea, eb), (40000, 40000));
    assert_eq!(env.claim(REMOTE1, 40000, UDP), Some(ep(POD_A, 2000, UDP)));
    assert_eq!(env.claim(REMOTE2, 40000, UDP), Some(ep(POD_B, 2000, UDP)));
    // Same remote: no overloading (RFC 4787 REQ-3). The odd port is the only other candidate
    // and parity is kept, so pod B toward REMOTE1 (even source port) is exhausted.
    let f = udp(POD_B, 2002, REMOTE1, 53, b"x");
    assert_unreach_13(&env.egress(b, &f), &f);
    assert_eq!(env.counter(Counter::DropPortExhausted), 1);
}

#[test]
fn exhaustion_drops_and_keeps_existing_flows() {
    let mut env = Env::with(Config {
        port_min: 41000,
        port_max: 41001,
        ..Default::default()
    });
    let a = env.pod_a;
    let (_, e1) = snat_ok(&mut env, a, &tcp(POD_A, 3000, REMOTE1, 80, "S", b""));
    let (_, e2) = snat_ok(&mut env, a, &tcp(POD_A, 3001, REMOTE1, 80, "S", b""));
    assert_ne!(e1, e2);
    let f = tcp(POD_A, 3002, REMOTE1, 80, "S", b"");
    assert_unreach_13(&env.egress(a, &f), &f);
    assert_eq!(env.counter(Counter::DropPortExhausted), 1);
    assert_eq!(env.counter(Counter::IcmpUnreachSent), 1);
    assert!(env.mapping(ep(POD_A, 3002, TCP)).is_none());
    assert_eq!(env.usage(a).mappings, 2);
    // Existing flows are untouched.
    let (_, again) = snat_ok(&mut env, a, &tcp(POD_A, 3000, REMOTE1, 80, "A", b""));
    assert_eq!(again, e1);
}

#[test]
fn pod_quota_node_default_and_per_pod() {
    let mut env = Env::with(Config {
        pod_quota: 2,
        ..Default::default()
    });
    let (a, b) = (env.pod_a, env.pod_b);
    snat_ok(&mut env, a, &udp(POD_A, 7000, REMOTE1, 53, b"x"));
    snat_ok(&mut env, a, &udp(POD_A, 7002, REMOTE1, 53, b"x"));
    // A new flow of an existing mapping is not a new mapping: allowed at the quota.
    snat_ok(&mut env, a, &udp(POD_A, 7000, REMOTE2, 53, b"x"));
    let f = udp(POD_A, 7004, REMOTE1, 53, b"x");
    assert_unreach_13(&env.egress(a, &f), &f);
    assert_eq!(env.counter(Counter::DropPodQuota), 1);
    assert_eq!(env.usage(a).mappings, 2);
    // Another pod is not affected by A's quota; a per-pod quota overrides the node's.
    env.add_pod(b, POD_B, 1);
    snat_ok(&mut env, b, &udp(POD_B, 7000, REMOTE1, 53, b"x"));
    let f = udp(POD_B, 7002, REMOTE1, 53, b"x");
    assert_unreach_13(&env.egress(b, &f), &f);
    assert_eq!(env.counter(Counter::DropPodQuota), 2);
}

#[test]
fn unreachable_13_quotes_ipv4_options() {
    let mut env = Env::with(Config {
        pod_quota: 1,
        ..Default::default()
    });
    let a = env.pod_a;
    snat_ok(&mut env, a, &udp(POD_A, 7000, REMOTE1, 53, b"x"));
    let plain = tcp(POD_A, 7002, REMOTE1, 80, "S", b"");
    let (mut hdr, rest) = etherparse::Ipv4Header::from_slice(&plain[14..]).unwrap();
    hdr.options = (&[0x01u8, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x00][..])
        .try_into()
        .unwrap();
    let f = raw_frame(hdr, rest);
    assert_unreach_13(&env.egress(a, &f), &f);
}

#[test]
fn spoofed_source_is_dropped() {
    let mut env = Env::new();
    let a = env.pod_a;
    let out = env.egress(a, &udp(POD_B, 5000, REMOTE1, 53, b"x"));
    assert_eq!(out.verdict, TC_ACT_SHOT);
    assert_eq!(env.counter(Counter::DropSpoofV4), 1);
    let out = env.egress(a, &udp([198, 51, 100, 77], 5000, REMOTE1, 53, b"x"));
    assert_eq!(out.verdict, TC_ACT_SHOT);
    assert_eq!(env.counter(Counter::DropSpoofV4), 2);
    assert!(env.mappings().is_empty() && env.claims().is_empty() && env.ct_count() == 0);
}

#[test]
fn unknown_interface_is_dropped() {
    let mut env = Env::new();
    let up = env.uplink;
    let out = env.egress(up, &udp(POD_A, 5000, REMOTE1, 53, b"x"));
    assert_eq!(out.verdict, TC_ACT_SHOT);
    assert_eq!(env.counter(Counter::DropUnknownPod), 1);
}

#[test]
fn node_local_range_is_not_translated() {
    let mut env = Env::new();
    let a = env.pod_a;
    for dst in [GATEWAY, POD_B, [169, 254, 175, 254]] {
        let f = udp(POD_A, 5000, dst, 53, b"x");
        let out = env.egress(a, &f);
        assert_eq!(out.verdict, TC_ACT_OK);
        assert_eq!(out.packet, f, "untouched");
    }
    assert_eq!(env.counter(Counter::LocalPass), 3);
    // Just outside the /22 is translated.
    let (p, _) = snat_ok(&mut env, a, &udp(POD_A, 5000, [169, 254, 176, 1], 53, b"x"));
    assert_eq!(p.ip.destination, [169, 254, 176, 1]);
    assert!(env.mappings().len() == 1);
}

#[test]
fn ipv4_options_are_skipped() {
    let mut env = Env::new();
    let a = env.pod_a;
    // Router alert (4 bytes) + NOPs + end: IHL 8 (32 bytes of header).
    let opts: &[u8] = &[
        0x94, 0x04, 0x00, 0x00, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x00,
    ];
    let plain = udp(POD_A, 5004, REMOTE1, 53, b"with options");
    let (mut hdr, rest) = etherparse::Ipv4Header::from_slice(&plain[14..]).unwrap();
    hdr.options = opts.try_into().unwrap();
    let f = raw_frame(hdr, rest);
    let (p, ext) = snat_ok(&mut env, a, &f);
    assert_eq!(p.ip.options.as_slice(), opts);
    assert_eq!(ports(&p).1, 53);
    assert_eq!(p.payload, b"with options");
    assert_eq!(env.mapping(ep(POD_A, 5004, UDP)).unwrap().ext_port, ext);
}

#[test]
fn truncated_and_malformed_headers_are_dropped() {
    let mut env = Env::new();
    let a = env.pod_a;
    let good = tcp(POD_A, 5005, REMOTE1, 80, "S", b"");
    // TCP header cut short.
    let out = env.egress(a, &good[..14 + 20 + 12]);
    assert_eq!(out.verdict, TC_ACT_SHOT);
    // (An IPv4 header cut short cannot go through TC test_run: the kernel rejects such an skb
    // with EINVAL. The XDP fixture in snat_reverse covers it.)
    // IHL below 5.
    let mut bad = good.clone();
    bad[14] = 0x44;
    assert_eq!(env.egress(a, &bad).verdict, TC_ACT_SHOT);
    // IHL claiming options beyond the packet.
    let mut bad = good[..14 + 20 + 8].to_vec();
    bad[14] = 0x4f;
    assert_eq!(env.egress(a, &bad).verdict, TC_ACT_SHOT);
    // Wrong IP version under an IPv4 EtherType.
    let mut bad = good.clone();
    bad[14] = 0x65;
    assert_eq!(env.egress(a, &bad).verdict, TC_ACT_SHOT);
    assert_eq!(env.counter(Counter::DropMalformed), 4);
    assert!(env.mappings().is_empty() && env.claims().is_empty() && env.ct_count() == 0);
}

#[test]
fn unsupported_protocols_and_icmp_types_are_dropped() {
    let mut env = Env::new();
    let a = env.pod_a;
    let f = echo_reply(POD_A, REMOTE1, 7, 1);
    assert_eq!(env.egress(a, &f).verdict, TC_ACT_SHOT);
    let plain = udp(POD_A, 1, REMOTE1, 2, b"gre?");
    let (mut hdr, rest) = etherparse::Ipv4Header::from_slice(&plain[14..]).unwrap();
    hdr.protocol = etherparse::IpNumber(47);
    assert_eq!(env.egress(a, &raw_frame(hdr, rest)).verdict, TC_ACT_SHOT);
    assert_eq!(env.counter(Counter::DropUnsupportedProto), 2);
}

#[test]
fn fragments_outbound_in_and_out_of_order() {
    let mut env = Env::new();
    let a = env.pod_a;
    let big = udp(POD_A, 5006, REMOTE1, 9999, &[0xab; 64]);
    let (first, rest) = fragments(&big, 32, 0x4242);
    // Later fragment first: translated without state (only the address changes).
    let out = env.egress(a, &rest);
    assert_eq!(out.verdict, TC_ACT_OK);
    let p = parse_checked(&out.packet);
    assert_eq!(p.ip.source, NODE_IP);
    assert_eq!(
        &out.packet[14 + 20..],
        &rest[14 + 20..],
        "payload untouched"
    );
    // Then the first fragment: full translation.
    let out = env.egress(a, &first);
    assert_eq!(out.verdict, TC_ACT_OK);
    let p = parse_checked(&out.packet);
    assert_eq!(p.ip.source, NODE_IP);
    let ext = env.mapping(ep(POD_A, 5006, UDP)).unwrap().ext_port;
    assert_eq!(u16::from_be_bytes([out.packet[34], out.packet[35]]), ext);
    assert_eq!(env.counter(Counter::FragTranslated), 1);
    // The UDP checksum covers the reassembled datagram: reassemble and check it.
    let mut dgram = out.packet[34..].to_vec();
    dgram.extend_from_slice(&rest[14 + 20..]);
    let (u, payload) = etherparse::UdpHeader::from_slice(&dgram).unwrap();
    let mut ip = p.ip.clone();
    ip.more_fragments = false;
    assert_eq!(
        u.checksum,
        u.calc_checksum_ipv4(&ip, payload).unwrap(),
        "reassembled UDP checksum"
    );
}

#[test]
fn tcp_state_follows_outbound_flags() {
    use podgate_common::tcp::TcpState;
    let mut env = Env::new();
    let a = env.pod_a;
    let f = flow(POD_A, 5007, REMOTE1, 80, TCP);
    snat_ok(&mut env, a, &tcp(POD_A, 5007, REMOTE1, 80, "S", b""));
    assert_eq!(env.ct(f).unwrap().state, TcpState::SynOut as u8);
    let e = ep(POD_A, 5007, TCP);
    let mut m = env.mapping(e).unwrap();
    m.last_seen_ns = 1;
    env.set_mapping(e, m);
    snat_ok(&mut env, a, &tcp(POD_A, 5007, REMOTE1, 80, "R", b""));
    assert_eq!(env.ct(f).unwrap().state, TcpState::Rst as u8);
    assert_eq!(
        env.mapping(e).unwrap().last_seen_ns,
        1,
        "an outbound RST does not refresh (RFC 7857 §7.1)"
    );
}

#[test]
fn hairpin_with_address_dependent_filtering() {
    let mut env = Env::new();
    let (a, b) = (env.pod_a, env.pod_b);
    let (_, ext_b) = snat_ok(&mut env, b, &udp(POD_B, 6000, REMOTE1, 3478, b"stun"));
    // A → B's external port: B never sent to the node's address, so the hairpin is filtered.
    let out = env.egress(a, &udp(POD_A, 6100, NODE_IP, ext_b, b"hello B"));
    assert_eq!(out.verdict, TC_ACT_SHOT);
    assert_eq!(env.counter(Counter::DropNoMapping), 1);
    let ext_a = env
        .mapping(ep(POD_A, 6100, UDP))
        .expect("A's mapping made on the way")
        .ext_port;
    // B → A's external port opens B toward the node's address and reaches A, from B's external
    // address and port (RFC 4787 REQ-9a).
    let out = env.egress(b, &udp(POD_B, 6000, NODE_IP, ext_a, b"hello A"));
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    let p = parse_checked(&out.packet);
    assert_eq!((p.ip.source, p.ip.destination), (NODE_IP, POD_A));
    assert_eq!(ports(&p), (ext_b, 6100));
    assert_eq!(p.payload, b"hello A");
    // Now A → B gets through.
    let out = env.egress(a, &udp(POD_A, 6100, NODE_IP, ext_b, b"hello B"));
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    let p = parse_checked(&out.packet);
    assert_eq!((p.ip.source, p.ip.destination), (NODE_IP, POD_B));
    assert_eq!(ports(&p), (ext_a, 6000));
    assert_eq!(env.counter(Counter::SnatHairpin), 2);
}

#[test]
fn hairpin_tcp_with_endpoint_independent_filtering() {
    let mut env = Env::with(Config {
        flags: podgate_common::node_flags::FILTER_EIF,
        ..Default::default()
    });
    let (a, b) = (env.pod_a, env.pod_b);
    let (_, ext_b) = snat_ok(&mut env, b, &tcp(POD_B, 8080, REMOTE1, 80, "S", b""));
    let out = env.egress(a, &tcp(POD_A, 45000, NODE_IP, ext_b, "S", b""));
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    let p = parse_checked(&out.packet);
    assert_eq!((p.ip.source, p.ip.destination), (NODE_IP, POD_B));
    let ext_a = env.mapping(ep(POD_A, 45000, TCP)).unwrap().ext_port;
    assert_eq!(ports(&p), (ext_a, 8080));
    // B's side of the flow is tracked as inbound.
    let ct = env
        .ct(flow(POD_B, 8080, NODE_IP, ext_a, TCP))
        .expect("B's flow");
    assert_eq!(ct.state, podgate_common::tcp::TcpState::SynIn as u8);
}

#[test]
fn node_services_on_the_node_address_are_not_translated() {
    let mut env = Env::new();
    let a = env.pod_a;
    for f in [
        tcp(POD_A, 45001, NODE_IP, 22, "S", b""),
        udp(POD_A, 45001, NODE_IP, 8080, b"x"),
        echo_request(POD_A, NODE_IP, 5, 1),
    ] {
        let out = env.egress(a, &f);
        assert_eq!(out.verdict, TC_ACT_OK);
        assert_eq!(out.packet, f);
    }
    assert_eq!(env.counter(Counter::LocalPass), 3);
    assert!(env.mappings().is_empty());
}
