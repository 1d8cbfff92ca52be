//! The conformance checks that need exact packets (BPF_PROG_TEST_RUN through the real programs).
//! Each prints one row of the table `cargo xtask conformance` shows; the ones that need real
//! sockets and timers are in userspace/tests/conformance_lab.rs.
mod snat_common;
use etherparse::{
    Icmpv4Type,
    icmpv4::{DestUnreachableHeader, TimeExceededCode},
};
use podgate_common::{nat::Endpoint4, node_flags, stats::Counter, tcp::TcpState};
use podgate_lab::conformance::{all, check, not_applicable};
use snat_common::*;

fn open(env: &mut Env, ifindex: u32, frame: &[u8]) -> u16 {
    snat_ok(env, ifindex, frame).1
}

/// Runs a reply through the uplink XDP program; `Some(output)` when it was translated to a pod.
fn inbound(env: &mut Env, frame: &[u8]) -> Option<Parsed> {
    let o = env.reverse_xdp(frame);
    assert!(o.verdict == XDP_PASS || o.verdict == XDP_DROP, "xdp verdict {}", o.verdict);
    if o.verdict != XDP_PASS {
        return None;
    }
    let p = parse_checked(&o.packet);
    (p.ip.destination != NODE_IP).then_some(p)
}

fn inbound_tc(env: &mut Env, frame: &[u8]) -> Option<Parsed> {
    let o = env.reverse_tc(frame);
    assert!(o.verdict == TC_ACT_OK || o.verdict == TC_ACT_SHOT, "tc verdict {}", o.verdict);
    if o.verdict != TC_ACT_OK {
        return None;
    }
    let p = parse_checked(&o.packet);
    (p.ip.destination != NODE_IP).then_some(p)
}

fn age(env: &mut Env, e: Endpoint4) {
    let mut m = env.mapping(e).expect("mapping");
    m.last_seen_ns = 1;
    env.set_mapping(e, m);
}

#[test]
fn rfc4787_req11_deterministic_under_pool_pressure() {
    let ok = check("4787 REQ-11", "mapping and filtering do not change under pool pressure", || {
        // 64 ports, 32 of each parity; measure at low load, fill 30 of the 32 even ports, measure
        // again.
        let mut env = Env::with(Config { port_min: 41000, port_max: 41063, ..Default::default() });
        let a = env.pod_a;
        let measure = |env: &mut Env, sport: u16| {
            let e1 = open(env, a, &udp(POD_A, sport, REMOTE1, 53, b"x"));
            let e2 = open(env, a, &udp(POD_A, sport, REMOTE2, 53, b"x"));
            assert_eq!(e1, e2, "endpoint-independent mapping lost (sport {sport})");
            assert_eq!(e1 % 2, sport % 2, "parity lost");
            assert!((41000..=41063).contains(&e1));
            // Address-dependent filtering: REMOTE2 (contacted) in, ROUTER (never contacted) not.
            assert!(inbound(env, &udp(REMOTE2, 9999, NODE_IP, e1, b"r")).is_some(), "contacted remote filtered");
            assert!(inbound(env, &udp(ROUTER, 53, NODE_IP, e1, b"r")).is_none(), "uncontacted remote let in");
        };
        measure(&mut env, 2000);
        for i in 1..30u16 {
            open(&mut env, a, &udp(POD_A, 2000 + 2 * i, REMOTE1, 53, b"fill"));
        }
        measure(&mut env, 2060);
        // The last free even port is still found; only a really full pool is exhausted.
        let last = open(&mut env, a, &udp(POD_A, 2062, REMOTE1, 53, b"last"));
        assert_eq!(last % 2, 0);
        // The 33rd is refused (dropped, or answered with 3/13: RFC 5508 REQ-8) and maps nothing.
        assert_ne!(env.egress(a, &udp(POD_A, 2064, REMOTE1, 53, b"full")).verdict, TC_ACT_OK);
        assert_eq!(env.counter(Counter::DropPortExhausted), 1);
        assert!(env.mapping(ep(POD_A, 2064, UDP)).is_none());
        "EIM, parity and address-dependent filtering identical at 1/32 and 31/32 of the even ports; \
         all 32 usable, the 33rd refused"
            .to_string()
    });
    all(&[("4787 REQ-11", ok)]);
}

/// ICMP errors about a live flow: none may touch the mapping or the flow, and the flow keeps
/// translating afterwards.
fn icmp_errors_keep_the_flow(proto: u8) -> String {
    let mut env = Env::new();
    let a = env.pod_a;
    let frame = if proto == TCP { tcp(POD_A, 40100, REMOTE1, 443, "S", b"") } else { udp(POD_A, 40100, REMOTE1, 443, b"q") };
    let out = env.egress(a, &frame).packet;
    let ext = ports(&parse_checked(&out)).0;
    let e = ep(POD_A, 40100, proto);
    let f = flow(POD_A, 40100, REMOTE1, 443, proto);
    let (m0, ct0) = (env.mapping(e).unwrap(), env.ct(f).unwrap());
    let errors = [
        Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Host),
        Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port),
        Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1280 }),
        Icmpv4Type::TimeExceeded(TimeExceededCode::TtlExceededInTransit),
    ];
    for ty in &errors {
        let p = inbound(&mut env, &icmp_error(ROUTER, ty.clone(), &out, 28)).expect("error translated");
        assert_eq!(p.ip.destination, POD_A);
        assert_eq!(env.mapping(e), Some(m0), "mapping changed by {ty:?}");
        assert_eq!(env.ct(f), Some(ct0), "flow changed by {ty:?}");
    }
    let reply = if proto == TCP { tcp(REMOTE1, 443, NODE_IP, ext, "SA", b"") } else { udp(REMOTE1, 443, NODE_IP, ext, b"r") };
    let p = inbound(&mut env, &reply).expect("flow still translates after the errors");
    assert_eq!(p.ip.destination, POD_A);
    format!("3/1, 3/3, 3/4, 11/0 translated; mapping and flow byte-identical; next reply delivered")
}

#[test]
fn rfc4787_req12_and_rfc5382_req10_icmp_never_ends_a_mapping() {
    let u = check("4787 REQ-12", "no ICMP message ends a UDP mapping", || icmp_errors_keep_the_flow(UDP));
    let t = check("5382 REQ-10", "no ICMP message ends a TCP mapping or connection", || icmp_errors_keep_the_flow(TCP));
    all(&[("4787 REQ-12", u), ("5382 REQ-10", t)]);
}

/// Outbound, fragments need no state. Inbound, a fragment ahead of its first fragment cannot be
/// held by XDP/TC: it goes to the daemon (`frag4_punt`), which runs it through the program again
/// once the first fragment has been translated (released). Here the test plays the daemon; the
/// real one, with real sockets, is the "4787 REQ-14 lab" row (conformance_lab).
#[test]
fn rfc4787_req14_fragments_out_of_order() {
    use podgate_tests::punt::{Record, env_with_punt, records};
    let ok = check("4787 REQ-14", "fragments accepted in and out of order, both directions", || {
        let mut env = env_with_punt();
        let a = env.pod_a;
        // Outbound, last fragment first.
        let big = udp(POD_A, 5006, REMOTE1, 9999, &[0xab; 64]);
        let (first, rest) = fragments(&big, 32, 0x4242);
        let o = env.egress(a, &rest);
        assert_eq!(o.verdict, TC_ACT_OK, "outbound later fragment first");
        assert_eq!(parse_checked(&o.packet).ip.source, NODE_IP);
        let o = env.egress(a, &first);
        assert_eq!(o.verdict, TC_ACT_OK);
        let ext = env.mapping(ep(POD_A, 5006, UDP)).unwrap().ext_port;
        // Inbound in order.
        let reply = udp(REMOTE1, 9999, NODE_IP, ext, &[0x5a; 80]);
        let (f1, f2) = fragments(&reply, 40, 0x1111);
        assert!(inbound(&mut env, &f1).is_some() && inbound(&mut env, &f2).is_some(), "inbound in order");
        // Inbound, last fragment first, on XDP and TC: the orphan goes to the daemon, the first
        // fragment is translated and releases it, and the orphan run through again reaches the
        // pod's address.
        for (id, xdp) in [(0x2222u16, true), (0x2223, false)] {
            let (f1, f2) = fragments(&reply, 40, id);
            let run = |env: &mut Env, f: &[u8]| if xdp { inbound(env, f) } else { inbound_tc(env, f) };
            assert!(run(&mut env, &f2).is_none(), "the orphan itself went on");
            let held = match records(&mut env).as_slice() {
                [Record::Orphan(_, frame)] => frame.clone(),
                r => panic!("orphan not handed to the daemon (xdp={xdp}): {r:?}"),
            };
            assert_eq!(held, f2, "the daemon must get the frame exactly");
            let p1 = run(&mut env, &f1).expect("inbound first fragment (after the last) not translated");
            assert_eq!(p1.ip.destination, POD_A);
            assert!(
                matches!(records(&mut env).as_slice(), [Record::Release(h)] if h.new_addr == POD_A),
                "no release for the held fragment (xdp={xdp})"
            );
            let p2 = inbound(&mut env, &held).expect("released fragment not translated");
            assert_eq!((p2.ip.destination, p2.payload.as_slice()), (POD_A, &f2[34..]));
        }
        format!(
            "outbound both orders; inbound in order, and last first on XDP and TC: punted ({}), released ({}), \
             then translated to the pod",
            env.counter(Counter::FragPunted),
            env.counter(Counter::FragPuntReleased)
        )
    });
    all(&[("4787 REQ-14", ok)]);
}

/// The flood of REQ-14a, without the daemon's slow path (orphans dropped at once) or with it
/// (orphans copied to a bounded ring, the rest counted as ring-full drops).
fn orphan_flood(punt: bool) -> String {
    let mut env = if punt { podgate_tests::punt::env_with_punt() } else { Env::new() };
    let a = env.pod_a;
    let ext = open(&mut env, a, &udp(POD_A, 5500, REMOTE1, 9000, b"q"));
    let reply = udp(REMOTE1, 9000, NODE_IP, ext, &[0x5a; 80]);
    // 20,000 orphan non-first fragments and 10,000 first fragments of unknown flows.
    for id in 0..20_000u32 {
        let (_, rest) = fragments(&reply, 40, id as u16);
        let mut rest = rest;
        // A different source per burst so the keys do not repeat.
        rest[14 + 12] = 198;
        rest[14 + 13] = 51;
        rest[14 + 14] = 100 + (id >> 16) as u8;
        let (h, payload) = etherparse::Ipv4Header::from_slice(&rest[14..]).unwrap();
        assert!(inbound(&mut env, &raw_frame(h, payload)).is_none(), "orphan passed translated");
    }
    let junk = udp(REMOTE2, 1, NODE_IP, 1, &[0; 80]);
    for id in 0..10_000u16 {
        let (first, _) = fragments(&junk, 40, id);
        assert!(inbound(&mut env, &first).is_none());
    }
    let orphans = env.counter(Counter::DropFragOrphan);
    let (punted, full) = (env.counter(Counter::FragPunted), env.counter(Counter::DropFragPuntFull));
    assert_eq!(orphans + punted + full, 20_000, "every orphan counted once: {orphans} + {punted} + {full}");
    if punt {
        assert!(full > 0, "the ring never filled: its bound was not reached");
    } else {
        assert_eq!(orphans, 20_000);
    }
    let frag_entries = {
        let m: aya::maps::HashMap<_, podgate_common::nat::FragKey4, podgate_common::nat::FragVal4> =
            aya::maps::HashMap::try_from(env.h.ebpf.map("frag4").unwrap()).unwrap();
        m.keys().count()
    };
    let pending = podgate_tests::punt::pending(&env).len();
    assert!(frag_entries <= 8192, "fragment state unbounded: {frag_entries}");
    assert!(pending <= podgate_common::frag::FRAG_PENDING_MAX, "pending state unbounded: {pending}");
    // Unfragmented and in-order fragmented traffic of the live flow still work.
    assert!(inbound(&mut env, &udp(REMOTE1, 9000, NODE_IP, ext, b"plain")).is_some());
    let (f1, f2) = fragments(&reply, 40, 0xbeef);
    assert!(inbound(&mut env, &f1).is_some() && inbound(&mut env, &f2).is_some(), "in-order fragments after the flood");
    assert_eq!(env.mappings().len(), 1);
    assert_eq!(env.ct_count(), 1);
    if punt {
        format!("with the daemon: {punted} to its 1 MiB ring, {full} ring-full drops, {pending} pending keys (≤ {})", podgate_common::frag::FRAG_PENDING_MAX)
    } else {
        format!("without: {orphans} orphans dropped")
    }
}

#[test]
fn rfc4787_req14a_orphan_fragment_flood_is_harmless() {
    let ok = check("4787 REQ-14a", "an orphan-fragment flood leaves other traffic and state unharmed", || {
        format!(
            "20,000 orphans + 10,000 unknown first fragments; {}; {}; frag4 ≤ 8192, no mapping or flow created, live flow unaffected",
            orphan_flood(false),
            orphan_flood(true)
        )
    });
    all(&[("4787 REQ-14a", ok)]);
}

#[test]
fn rfc5382_req2a_simultaneous_open() {
    let ok = check("5382 REQ-2a", "simultaneous open (SYN crossing SYN)", || {
        let mut env = Env::new();
        let a = env.pod_a;
        let f = flow(POD_A, 40300, REMOTE1, 5000, TCP);
        let ext = open(&mut env, a, &tcp(POD_A, 40300, REMOTE1, 5000, "S", b""));
        let p = inbound(&mut env, &tcp(REMOTE1, 5000, NODE_IP, ext, "S", b"")).expect("crossing SYN translated");
        assert_eq!((p.ip.destination, ports(&p)), (POD_A, (5000, 40300)));
        // Both sides answer SYN-ACK.
        open(&mut env, a, &tcp(POD_A, 40300, REMOTE1, 5000, "SA", b""));
        assert!(inbound(&mut env, &tcp(REMOTE1, 5000, NODE_IP, ext, "SA", b"")).is_some());
        assert_eq!(env.ct(f).unwrap().state, TcpState::Established as u8);
        format!("SYN out, SYN in at the same external tuple {ext}, SYN-ACK both ways: established")
    });
    all(&[("5382 REQ-2a", ok)]);
}

#[test]
fn rfc5508_req1a_icmp_identifier_is_endpoint_independent() {
    let ok = check("5508 REQ-1a", "ICMP query identifier mapped the same for every remote", || {
        let mut env = Env::new();
        let a = env.pod_a;
        let i1 = open(&mut env, a, &echo_request(POD_A, REMOTE1, 0x77, 1));
        let i2 = open(&mut env, a, &echo_request(POD_A, REMOTE2, 0x77, 2));
        assert_eq!(i1, i2);
        for r in [REMOTE1, REMOTE2] {
            let p = inbound(&mut env, &echo_reply(r, NODE_IP, i1, 1)).expect("reply translated");
            assert_eq!((p.ip.destination, ports(&p).0), (POD_A, 0x77));
        }
        format!("id 0x77 → {i1} toward both remotes; both replies delivered")
    });
    all(&[("5508 REQ-1a", ok)]);
}

#[test]
fn rfc5508_req3_bad_icmp_checksum_is_dropped() {
    let ok = check("5508 REQ-3", "ICMP error with a bad ICMP checksum silently dropped", || {
        let mut env = Env::new();
        let a = env.pod_a;
        let out = env.egress(a, &udp(POD_A, 5400, REMOTE1, 9, b"x")).packet;
        let good = icmp_error(REMOTE1, Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port), &out, 1000);
        assert!(inbound(&mut env, &good).is_some(), "the valid error is translated");
        let mut bad = good.clone();
        bad[14 + 20 + 2] ^= 0x5a;
        let x = inbound(&mut env, &bad);
        let t = inbound_tc(&mut env, &bad);
        assert!(x.is_none() && t.is_none(), "corrupted ICMP checksum: xdp translated={} tc translated={}", x.is_some(), t.is_some());
        format!("dropped on XDP and TC (drop_icmp_bad_checksum={})", env.counter(Counter::DropIcmpBadChecksum))
    });
    all(&[("5508 REQ-3", ok)]);
}

#[test]
fn rfc5508_req3a_bad_embedded_ip_checksum_is_dropped() {
    let ok = check("5508 REQ-3a", "ICMP error from outside with a valid ICMP checksum but a bad embedded IP header checksum dropped", || {
        let mut env = Env::new();
        let a = env.pod_a;
        let out = env.egress(a, &udp(POD_A, 5402, REMOTE1, 9, b"x")).packet;
        let e = ep(POD_A, 5402, UDP);
        let m0 = env.mapping(e).unwrap();
        let ty = Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port);
        // The quote's IPv4 checksum corrupted; the builder makes the ICMP checksum valid over it.
        let mut quoted = out.clone();
        quoted[14 + 10] ^= 0x5a;
        let bad = icmp_error(REMOTE1, ty.clone(), &quoted, 1000);
        let x = inbound(&mut env, &bad);
        let t = inbound_tc(&mut env, &bad);
        assert!(x.is_none() && t.is_none(), "bad embedded IP checksum: xdp translated={} tc translated={}", x.is_some(), t.is_some());
        assert_eq!(env.counter(Counter::DropIcmpBadChecksum), 2, "not counted as a bad checksum");
        assert_eq!(env.mapping(e), Some(m0));
        assert!(inbound(&mut env, &icmp_error(REMOTE1, ty, &out, 1000)).is_some(), "the intact error is translated");
        "dropped on XDP and TC, counted drop_icmp_bad_checksum; the same error with an intact quote translated".to_string()
    });
    all(&[("5508 REQ-3a", ok)]);
}

/// `frame` with the IPv4 DS/ECN byte set to `tos` (header checksum fixed).
fn with_tos(frame: &[u8], tos: u8) -> Vec<u8> {
    let (mut h, rest) = etherparse::Ipv4Header::from_slice(&frame[14..]).unwrap();
    h.dscp = etherparse::Ipv4Dscp::try_new(tos >> 2).unwrap();
    h.ecn = etherparse::Ipv4Ecn::try_new(tos & 3).unwrap();
    let mut v = raw_frame(h, rest);
    v[..12].copy_from_slice(&frame[..12]);
    v
}

#[test]
fn rfc5508_s7_7_generated_errors_keep_the_ds_field() {
    let ok = check("5508 §7.7", "podgate's own ICMP errors carry the DS field of the packet that caused them", || {
        let mut env = Env::with(Config { port_min: 41000, port_max: 41001, ..Default::default() });
        let a = env.pod_a;
        open(&mut env, a, &udp(POD_A, 3000, REMOTE1, 53, b"x"));
        // EF (DSCP 46) with ECT(1): the class is copied, the ECN bits are not.
        let full = env.egress(a, &with_tos(&udp(POD_A, 3002, REMOTE1, 53, b"x"), 0xb9));
        let mut ttl = udp(POD_A, 3004, REMOTE1, 53, b"x");
        ttl[14 + 8] = 1;
        let ttl = with_tos(&ttl, 0x29);
        let expired = env.egress(a, &ttl);
        let mut said = vec![];
        for (what, o, want) in [("3/13 (no port)", &full, 0xb8u8), ("11/0 (TTL 1)", &expired, 0x28)] {
            assert_ne!(o.verdict, TC_ACT_SHOT, "{what}: no error sent");
            let p = parse_checked(&o.packet);
            assert!(matches!(p.transport, Some(etherparse::TransportHeader::Icmpv4(_))), "{what}: not ICMP");
            let tos = o.packet[15];
            assert_eq!(tos, want, "{what}: DS/ECN byte {tos:#04x}, want {want:#04x}");
            said.push(format!("{what}: {tos:#04x}"));
        }
        format!("DS copied, ECN cleared: {}", said.join(", "))
    });
    all(&[("5508 §7.7", ok)]);
}

#[test]
fn rfc5508_req4_inbound_errors() {
    let ok = check("5508 REQ-4", "inbound ICMP error: dropped without mapping; else inner restored, type/code kept", || {
        let mut env = Env::new();
        let a = env.pod_a;
        let fake = udp(NODE_IP, 45000, REMOTE1, 53, b"x");
        let ty = Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 });
        assert!(inbound(&mut env, &icmp_error(ROUTER, ty.clone(), &fake, 28)).is_none(), "no mapping: must drop");
        assert_eq!(env.counter(Counter::DropIcmpNoMapping), 1);
        let out = env.egress(a, &udp(POD_A, 5401, REMOTE1, 53, b"query")).packet;
        let p = inbound(&mut env, &icmp_error(ROUTER, ty.clone(), &out, 1000)).expect("translated");
        assert_eq!((p.ip.source, p.ip.destination), (ROUTER, POD_A), "outer destination = embedded source after translation");
        let Some(etherparse::TransportHeader::Icmpv4(i)) = &p.transport else { panic!("not ICMP") };
        assert_eq!(i.icmp_type, ty, "type, code and MTU kept");
        let (ih, rest) = etherparse::Ipv4Header::from_slice(&p.payload).unwrap();
        assert_eq!(ih.header_checksum, ih.calc_header_checksum());
        assert_eq!((ih.source, ih.destination), (POD_A, REMOTE1));
        let (uh, pl) = etherparse::UdpHeader::from_slice(rest).unwrap();
        assert_eq!((uh.source_port, uh.checksum), (5401, uh.calc_checksum_ipv4(&ih, pl).unwrap()));
        "no mapping: dropped, counted; with mapping: inner IP/UDP restored with checksums, 3/4 MTU 1400 kept".to_string()
    });
    all(&[("5508 REQ-4", ok)]);
}

#[test]
fn rfc5508_req6_errors_about_queries_do_not_refresh() {
    let ok = check("5508 REQ-6", "an ICMP error about a query neither refreshes nor deletes its session", || {
        let mut env = Env::new();
        let a = env.pod_a;
        let out = env.egress(a, &echo_request(POD_A, REMOTE1, 0x4d, 9)).packet;
        let e = ep(POD_A, 0x4d, ICMP);
        age(&mut env, e);
        let f = flow(POD_A, 0x4d, REMOTE1, 0, ICMP);
        let (m0, c0) = (env.mapping(e).unwrap(), env.ct(f).unwrap());
        let err = icmp_error(ROUTER, Icmpv4Type::TimeExceeded(TimeExceededCode::TtlExceededInTransit), &out, 1000);
        assert!(inbound(&mut env, &err).is_some());
        assert_eq!(env.mapping(e), Some(m0));
        assert_eq!(env.ct(f), Some(c0));
        "11/0 about an echo request translated; mapping and session byte-identical".to_string()
    });
    all(&[("5508 REQ-6", ok)]);
}

#[test]
fn rfc5508_req8_unreachable_13_on_exhaustion() {
    let ok = check("5508 REQ-8", "no session possible: ICMP 3/13 to the sender, packet dropped", || {
        let mut env = Env::with(Config { port_min: 41000, port_max: 41001, ..Default::default() });
        let a = env.pod_a;
        open(&mut env, a, &udp(POD_A, 3000, REMOTE1, 53, b"x"));
        let o = env.egress(a, &udp(POD_A, 3002, REMOTE1, 53, b"x"));
        assert_eq!(env.counter(Counter::DropPortExhausted), 1, "not counted as exhaustion");
        assert!(env.mapping(ep(POD_A, 3002, UDP)).is_none());
        let icmp = (o.verdict != TC_ACT_SHOT)
            .then(|| etherparse::PacketHeaders::from_ethernet_slice(&o.packet).ok().and_then(|p| p.transport))
            .flatten();
        let got_13 = matches!(
            icmp,
            Some(etherparse::TransportHeader::Icmpv4(ref i))
                if i.icmp_type == Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FilterProhibited)
        );
        assert!(got_13, "exhaustion: verdict {} and no ICMP 3/13 toward the pod (counted drop only)", o.verdict);
        "3/13 sent to the pod".to_string()
    });
    all(&[("5508 REQ-8", ok)]);
}

#[test]
fn rfc7857_s2_2_rst_keeps_the_session() {
    let ok = check("7857 §2.2", "an RST is translated and the session kept (state rst, 4-min timer)", || {
        let mut env = Env::new();
        let a = env.pod_a;
        let f = flow(POD_A, 40400, REMOTE1, 80, TCP);
        let ext = open(&mut env, a, &tcp(POD_A, 40400, REMOTE1, 80, "S", b""));
        inbound(&mut env, &tcp(REMOTE1, 80, NODE_IP, ext, "SA", b"")).unwrap();
        let p = inbound(&mut env, &tcp(REMOTE1, 80, NODE_IP, ext, "R", b"")).expect("RST translated");
        assert_eq!(p.ip.destination, POD_A);
        assert_eq!(env.ct(f).unwrap().state, TcpState::Rst as u8);
        let t = podgate_common::Timeouts::default();
        assert!(podgate_common::nat::ct_timeout_ns(TCP, TcpState::Rst as u8, &t) >= 240_000_000_000);
        // Late packets of the session still translate, through the same external port.
        assert_eq!(open(&mut env, a, &tcp(POD_A, 40400, REMOTE1, 80, "A", b"late")), ext);
        assert!(inbound(&mut env, &tcp(REMOTE1, 80, NODE_IP, ext, "A", b"late")).is_some());
        "RST in translated; state rst (transitory 240 s); late packets both ways translated on the same port (timer: conformance_lab)".to_string()
    });
    all(&[("7857 §2.2", ok)]);
}

#[test]
fn rfc7857_s3_port_overlapping() {
    let ok = check("7857 §3", "one external port shared toward different remotes, kept apart by the 5-tuple", || {
        let mut env = Env::with(Config { port_min: 40000, port_max: 40001, ..Default::default() });
        let (a, b) = (env.pod_a, env.pod_b);
        let ea = open(&mut env, a, &udp(POD_A, 2000, REMOTE1, 53, b"x"));
        let eb = open(&mut env, b, &udp(POD_B, 2000, REMOTE2, 53, b"x"));
        assert_eq!((ea, eb), (40000, 40000));
        let pa = inbound(&mut env, &udp(REMOTE1, 53, NODE_IP, 40000, b"a")).unwrap();
        let pb = inbound(&mut env, &udp(REMOTE2, 53, NODE_IP, 40000, b"b")).unwrap();
        assert_eq!((pa.ip.destination, pb.ip.destination), (POD_A, POD_B));
        "pods A and B both on 40000 (to REMOTE1 / REMOTE2); replies reach the right pod".to_string()
    });
    all(&[("7857 §3", ok)]);
}

#[test]
fn rfc7857_s5_protocol_dependent_mapping() {
    let ok = check("7857 §5", "EIM mappings are protocol-dependent", || {
        let mut env = Env::new();
        let a = env.pod_a;
        let eu = open(&mut env, a, &udp(POD_A, 6000, REMOTE1, 53, b"x"));
        let et = open(&mut env, a, &tcp(POD_A, 6000, REMOTE1, 53, "S", b""));
        assert!(env.mapping(ep(POD_A, 6000, UDP)).is_some() && env.mapping(ep(POD_A, 6000, TCP)).is_some());
        assert_eq!(env.mappings().len(), 2);
        // A UDP packet to the TCP mapping's port finds no UDP owner unless the ports collide.
        if eu != et {
            assert!(inbound(&mut env, &udp(REMOTE1, 53, NODE_IP, et, b"x")).is_none(), "UDP reached the TCP mapping");
        }
        format!("same pod port: UDP → {eu}, TCP → {et}, two independent mappings")
    });
    all(&[("7857 §5", ok)]);
}

#[test]
fn rfc7857_s7_1_outbound_rst_and_errors_do_not_refresh() {
    let ok = check("7857 §7.1", "outbound RSTs and ICMP errors do not refresh a mapping", || {
        // Endpoint-independent filtering: an unsolicited inbound SYN reaches the pod, which
        // answers with RST; that answer must not keep the mapping alive.
        let mut env = Env::with(Config { flags: node_flags::FILTER_EIF, ..Default::default() });
        let a = env.pod_a;
        let ext = open(&mut env, a, &udp(POD_A, 7000, REMOTE1, 53, b"x"));
        let tcp_ext = open(&mut env, a, &tcp(POD_A, 7001, REMOTE1, 80, "S", b""));
        let (eu, et) = (ep(POD_A, 7000, UDP), ep(POD_A, 7001, TCP));
        age(&mut env, eu);
        age(&mut env, et);
        assert!(inbound(&mut env, &tcp(REMOTE2, 999, NODE_IP, tcp_ext, "S", b"")).is_some());
        let o = env.egress(a, &tcp(POD_A, 7001, REMOTE2, 999, "RA", b""));
        assert_eq!(o.verdict, TC_ACT_OK, "the RST itself is translated");
        assert_eq!(env.mapping(et).unwrap().last_seen_ns, 1, "outbound RST refreshed the TCP mapping");
        // An ICMP port unreachable from the pod about an unsolicited inbound datagram.
        let probe = udp(REMOTE2, 999, POD_A, 7000, b"probe");
        let mut err = Vec::new();
        etherparse::PacketBuilder::ethernet2(POD_MAC, HOST_MAC)
            .ipv4(POD_A, REMOTE2, 64)
            .icmpv4(Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port))
            .write(&mut err, &probe[14..])
            .unwrap();
        let o = env.egress(a, &err);
        assert_eq!(env.mapping(eu).unwrap().last_seen_ns, 1, "outbound ICMP error refreshed the UDP mapping");
        let _ = ext;
        format!(
            "RST out translated without refresh; outbound ICMP error verdict {} without refresh",
            if o.verdict == TC_ACT_SHOT { "drop (it quotes a packet of no flow)" } else { "pass" }
        )
    });
    all(&[("7857 §7.1", ok)]);
}

#[test]
fn rfc7857_s9_port_randomization() {
    let ok = check("7857 §9", "external ports are randomized (RFC 6056), range and parity kept", || {
        let runs: Vec<Vec<u16>> = (0..2)
            .map(|_| {
                let mut env = Env::new();
                let a = env.pod_a;
                (0..200u16).map(|i| open(&mut env, a, &udp(POD_A, 20000 + i, REMOTE1, 53, b"x"))).collect()
            })
            .collect();
        let ports = &runs[0];
        let mut sorted = ports.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 200, "ports repeat");
        let ascending = ports.windows(2).filter(|w| w[1] > w[0]).count();
        assert!((40..160).contains(&ascending), "{ascending}/199 steps ascending: sequential, not random");
        // Spread over the range: every eighth of it is used.
        let span = (PORT_MAX - PORT_MIN) as u32 + 1;
        let mut bins = [0u32; 8];
        for &p in ports {
            bins[((p - PORT_MIN) as u32 * 8 / span) as usize] += 1;
        }
        assert!(bins.iter().all(|&b| b >= 5), "clustered: {bins:?}");
        let same = runs[0].iter().zip(&runs[1]).filter(|(x, y)| x == y).count();
        assert!(same < 10, "two runs chose {same}/200 identical ports");
        for (i, p) in ports.iter().enumerate() {
            assert_eq!(p % 2, (20000 + i as u16) % 2);
        }
        format!("200 mappings: distinct, {ascending}/199 ascending steps, eighths {bins:?}, {same}/200 equal across runs")
    });
    all(&[("7857 §9", ok)]);
}

#[test]
fn not_applicable_rows() {
    not_applicable("4787 REQ-2", "paired address pooling", "one external IPv4 per node: every mapping uses it");
    not_applicable("7857 §4", "paired pooling across protocols", "one external IPv4 per node");
    not_applicable("4787 REQ-10", "UDP ALGs off by default", "podgate has no ALG");
    not_applicable("5382 REQ-6", "TCP ALGs off by default", "podgate has no ALG");
}
