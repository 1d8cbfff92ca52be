//! Inbound fragments ahead of their first fragment (RFC 4787 REQ-14): the programs' half of the
//! slow path through the daemon. An orphan is dropped and its exact bytes go into `frag4_punt`;
//! the first fragment is translated as always and releases it. The daemon's half is tested in
//! userspace (frag_punt unit tests) and end to end in userspace/tests/frag_lab.rs.
mod snat_common;
use podgate_common::{
    frag::{FRAG_PENDING_MAX, FRAG_PUNT_MAX, PUNT_ORPHAN, PUNT_RELEASE},
    nat::{FRAG_PASS, FragKey4, is_frag_pass},
    stats::Counter,
};
use podgate_tests::punt::{Record, boottime_ns, env_with_punt, pending, records, set_alive};
use snat_common::*;

fn open(env: &mut Env, sport: u16) -> u16 {
    let a = env.pod_a;
    snat_ok(env, a, &udp(POD_A, sport, REMOTE1, 9000, b"q")).1
}

fn key(id: u16) -> FragKey4 {
    FragKey4 { src: REMOTE1, dst: NODE_IP, id, proto: UDP, dir: 1 }
}

#[test]
fn orphan_is_punted_with_its_exact_bytes_and_released_by_its_first_fragment() {
    for path in [Path::Xdp, Path::Tc] {
        let mut env = env_with_punt();
        let ext = open(&mut env, 5500);
        let reply = udp(REMOTE1, 9000, NODE_IP, ext, &[0x5a; 80]);
        let (first, rest) = fragments(&reply, 40, 0x1111);
        let t0 = boottime_ns();

        let (pass, _) = run(&mut env, path, &rest);
        assert!(!pass, "{path:?}: the orphan itself must not go on");
        assert_eq!(env.counter(Counter::FragPunted), 1, "{path:?}");
        assert_eq!(env.counter(Counter::DropFragOrphan), 0, "{path:?}");
        let recs = records(&mut env);
        let [Record::Orphan(h, data)] = recs.as_slice() else { panic!("{path:?}: records {recs:?}") };
        assert_eq!(h.kind, PUNT_ORPHAN);
        assert_eq!(h.key, key(0x1111));
        assert_eq!(data.as_slice(), &rest[..], "{path:?}: the ring must hold the frame exactly");
        assert!(h.time_ns >= t0 && h.time_ns <= boottime_ns(), "{path:?}: time {} not boot time", h.time_ns);
        assert_eq!(pending(&env), vec![key(0x1111)]);

        // The first fragment: translated as without punting, and a release for the daemon.
        let (pass, o1) = run(&mut env, path, &first);
        assert!(pass, "{path:?}");
        let p1 = parse_checked(&o1);
        let (u, _) = etherparse::UdpHeader::from_slice(&o1[34..]).unwrap();
        assert_eq!((p1.ip.destination, u.source_port, u.destination_port), (POD_A, 9000, 5500));
        let recs = records(&mut env);
        let [Record::Release(h)] = recs.as_slice() else { panic!("{path:?}: records {recs:?}") };
        assert_eq!((h.kind, h.key, h.new_addr), (PUNT_RELEASE, key(0x1111), POD_A));
        assert!(pending(&env).is_empty(), "{path:?}: pending key not deleted");
        assert_eq!(env.counter(Counter::FragPuntReleased), 1);

        // A late copy of the orphan now follows the first fragment in the programs.
        let (pass, o2) = run(&mut env, path, &rest);
        assert!(pass);
        assert_eq!(parse_checked(&o2).ip.destination, POD_A);
        assert!(records(&mut env).is_empty());
        // Another datagram's first fragment releases nothing.
        let (f, _) = fragments(&reply, 40, 0x2222);
        assert!(run(&mut env, path, &f).0);
        assert!(records(&mut env).is_empty());
        assert_eq!(env.counter(Counter::FragPuntReleased), 1);
    }
}

#[test]
fn every_orphan_of_a_datagram_is_punted_and_one_release_frees_them() {
    let mut env = env_with_punt();
    let ext = open(&mut env, 5501);
    let reply = udp(REMOTE1, 9000, NODE_IP, ext, &[0x33; 120]);
    // Three fragments of 48 + 48 + 32 bytes of UDP, sent last first.
    let (first, tail) = fragments(&reply, 48, 0x4444);
    let (h, p) = etherparse::Ipv4Header::from_slice(&tail[14..]).unwrap();
    let mut h2 = h.clone();
    h2.more_fragments = true;
    let mut h3 = h.clone();
    h3.fragment_offset = etherparse::IpFragOffset::try_new(12).unwrap();
    let (mid, last) = (raw_frame(h2, &p[..48]), raw_frame(h3, &p[48..]));
    for f in [&last, &mid] {
        assert!(!run(&mut env, Path::Xdp, f).0);
    }
    let recs = records(&mut env);
    assert_eq!(recs.len(), 2);
    assert!(matches!(&recs[0], Record::Orphan(_, d) if d == &last));
    assert!(matches!(&recs[1], Record::Orphan(_, d) if d == &mid));
    assert!(run(&mut env, Path::Xdp, &first).0);
    let recs = records(&mut env);
    assert!(matches!(recs.as_slice(), [Record::Release(h)] if h.key == key(0x4444) && h.new_addr == POD_A), "{recs:?}");
    assert_eq!(env.counter(Counter::FragPunted), 2);
}

#[test]
fn without_the_flag_orphans_are_dropped_as_before() {
    for path in [Path::Xdp, Path::Tc] {
        let mut env = Env::new();
        // A live deadline alone does not switch punting on.
        set_alive(&mut env, u64::MAX);
        let ext = open(&mut env, 5502);
        let (first, rest) = fragments(&udp(REMOTE1, 9000, NODE_IP, ext, &[1; 80]), 40, 0x5555);
        assert!(!run(&mut env, path, &rest).0);
        assert_eq!(env.counter(Counter::DropFragOrphan), 1, "{path:?}");
        assert_eq!(env.counter(Counter::FragPunted), 0);
        assert!(run(&mut env, path, &first).0);
        assert!(records(&mut env).is_empty(), "{path:?}: nothing may reach the ring");
        assert!(pending(&env).is_empty());
    }
}

#[test]
fn with_the_daemon_gone_orphans_are_dropped() {
    let mut env = env_with_punt();
    let ext = open(&mut env, 5503);
    let (_, rest) = fragments(&udp(REMOTE1, 9000, NODE_IP, ext, &[1; 80]), 40, 0x6666);
    // The deadline the daemon stopped refreshing has passed (or was never written).
    for until in [boottime_ns() - 1, 0] {
        set_alive(&mut env, until);
        assert!(!run(&mut env, Path::Xdp, &rest).0);
    }
    assert_eq!(env.counter(Counter::DropFragOrphan), 2);
    assert_eq!(env.counter(Counter::FragPunted), 0);
    assert!(records(&mut env).is_empty());
    assert!(pending(&env).is_empty());
    set_alive(&mut env, boottime_ns() + 10_000_000_000);
    assert!(!run(&mut env, Path::Xdp, &rest).0);
    assert_eq!(env.counter(Counter::FragPunted), 1, "alive again: punted");
}

#[test]
fn orphans_up_to_the_cap_are_punted_larger_ones_dropped() {
    for path in [Path::Xdp, Path::Tc] {
        let mut env = env_with_punt();
        let ext = open(&mut env, 5504);
        // The later fragment's IPv4 length is 20 + (8 + payload) - 40.
        let at_cap = FRAG_PUNT_MAX - 20 + 40 - 8;
        let (_, fits) = fragments(&udp(REMOTE1, 9000, NODE_IP, ext, &vec![7; at_cap]), 40, 0x7001);
        let (_, big) = fragments(&udp(REMOTE1, 9000, NODE_IP, ext, &vec![7; at_cap + 1]), 40, 0x7002);
        assert_eq!(fits.len() - 14, FRAG_PUNT_MAX);
        assert!(!run(&mut env, path, &fits).0);
        assert!(!run(&mut env, path, &big).0);
        assert_eq!(env.counter(Counter::FragPunted), 1, "{path:?}");
        assert_eq!(env.counter(Counter::DropFragOrphan), 1, "{path:?}");
        let recs = records(&mut env);
        assert!(matches!(recs.as_slice(), [Record::Orphan(_, d)] if d == &fits), "{path:?}");
    }
}

/// REQ-14a with punting on: a flood fills at most the ring (then counted drops) and the pending
/// map's fixed size; the live flow keeps working and no NAT state appears.
#[test]
fn orphan_flood_is_bounded_and_harmless() {
    let mut env = env_with_punt();
    let ext = open(&mut env, 5505);
    let reply = udp(REMOTE1, 9000, NODE_IP, ext, &[0x5a; 80]);
    const N: u32 = 20_000;
    for id in 0..N {
        let (_, rest) = fragments(&reply, 40, id as u16);
        let (mut h, payload) = etherparse::Ipv4Header::from_slice(&rest[14..]).unwrap();
        // Another source per 65,536 ids, so the keys never repeat.
        h.source = [198, 51, 100, 100 + (id >> 16) as u8];
        assert!(!run(&mut env, Path::Xdp, &raw_frame(h, payload)).0, "orphan {id} passed");
    }
    let (punted, full) = (env.counter(Counter::FragPunted), env.counter(Counter::DropFragPuntFull));
    assert_eq!(punted + full, N as u64, "every orphan counted once");
    assert!(full > 0, "a 1 MiB ring cannot take {N} records: the bound was never reached");
    let held = pending(&env).len();
    assert!(held <= FRAG_PENDING_MAX, "frag4_pending unbounded: {held}");
    // Traffic of the live flow: unfragmented, and fragments in order.
    let a = run(&mut env, Path::Xdp, &udp(REMOTE1, 9000, NODE_IP, ext, b"plain"));
    assert!(a.0 && parse_checked(&a.1).ip.destination == POD_A);
    let (f1, f2) = fragments(&reply, 40, 0xbeef);
    assert!(run(&mut env, Path::Xdp, &f1).0 && run(&mut env, Path::Xdp, &f2).0);
    assert_eq!(env.mappings().len(), 1);
    assert_eq!(env.ct_count(), 1);
    // What the ring took is exactly what was counted as punted; drained, it takes orphans again.
    let recs = records(&mut env);
    let orphans = recs.iter().filter(|r| matches!(r, Record::Orphan(..))).count();
    assert_eq!(orphans as u64, punted);
    let (_, rest) = fragments(&reply, 40, 0xbef0);
    assert!(!run(&mut env, Path::Xdp, &rest).0);
    assert_eq!(env.counter(Counter::FragPunted), punted + 1);
    eprintln!("flood of {N}: {punted} punted, {full} ring-full drops, {held} pending keys");
}

/// Datagrams for the node itself, fragmented: UDP to a port no pod owns (the node's resolver)
/// and an echo request (`ping -s 3000`).
fn node_datagrams(id: u16) -> Vec<(&'static str, Vec<u8>, Vec<u8>)> {
    let dns = udp(REMOTE1, 53, NODE_IP, 40_053, &[0x44; 120]);
    let mut ping = echo_request(REMOTE1, NODE_IP, 0x0777, 1);
    // The echo payload is what makes a ping big; etherparse fixes the lengths and checksum.
    let (h, p) = etherparse::Ipv4Header::from_slice(&ping[14..]).unwrap();
    let mut icmp = p.to_vec();
    icmp.extend_from_slice(&[0x61; 100]);
    let (mut ih, _) = etherparse::Icmpv4Header::from_slice(&icmp).unwrap();
    ih.update_checksum(&icmp[8..]);
    icmp[..8].copy_from_slice(&ih.to_bytes());
    ping = raw_frame(h, &icmp);
    let mut out = Vec::new();
    for (what, d) in [("udp", dns), ("ping", ping)] {
        let (a, b) = fragments(&d, 48, id);
        out.push((what, a, b));
    }
    out
}

fn node_key(id: u16, proto: u8) -> FragKey4 {
    FragKey4 { src: REMOTE1, dst: NODE_IP, id, proto, dir: 1 }
}

/// The bug of issue 3: the node's own fragmented datagrams lost their later fragments as
/// orphans. In order, every fragment goes to the stack as received; a pod's datagram at the
/// same time is still translated.
#[test]
fn node_fragments_in_order_pass_untouched() {
    for path in [Path::Xdp, Path::Tc] {
        for punting in [true, false] {
            let mut env = if punting { env_with_punt() } else { Env::new() };
            let ext = open(&mut env, 5510);
            let mut passed = 0;
            for (i, (what, first, rest)) in node_datagrams(0x3100).into_iter().enumerate() {
                for f in [&first, &rest] {
                    let (pass, out) = run(&mut env, path, f);
                    assert!(pass, "{path:?} punting={punting} {what}: fragment not passed");
                    assert_eq!(&out, f, "{path:?} {what}: a node fragment was rewritten");
                }
                passed += 1;
                let proto = if i == 0 { UDP } else { ICMP };
                let v = env.frag(node_key(0x3100, proto)).expect("no frag4 entry for the node's datagram");
                assert!(is_frag_pass(&v), "{path:?} {what}: entry {v:?}");
                assert_eq!(env.counter(Counter::FragPassed), passed, "{path:?} {what}");
            }
            assert_eq!(env.counter(Counter::DropFragOrphan) + env.counter(Counter::FragPunted), 0);
            assert!(records(&mut env).is_empty(), "{path:?}: nothing to release");
            // A pod's reply, fragmented, at the same time.
            let (f1, f2) = fragments(&udp(REMOTE1, 9000, NODE_IP, ext, &[0x5a; 80]), 40, 0x3101);
            for f in [&f1, &f2] {
                let (pass, out) = run(&mut env, path, f);
                assert!(pass);
                assert_eq!(parse_checked(&out).ip.destination, POD_A, "{path:?}");
            }
            assert_eq!(env.counter(Counter::FragTranslated), 1, "{path:?}");
        }
    }
}

/// Last fragment first, with the slow path on: the orphan is punted, the first fragment passes
/// and releases it with the pass address, and the daemon's re-run passes it unchanged.
#[test]
fn node_fragments_last_first_are_released_to_the_stack() {
    for path in [Path::Xdp, Path::Tc] {
        let mut env = env_with_punt();
        open(&mut env, 5511);
        for (i, (what, first, rest)) in node_datagrams(0x3200).into_iter().enumerate() {
            let proto = if i == 0 { UDP } else { ICMP };
            let k = node_key(0x3200, proto);
            assert!(!run(&mut env, path, &rest).0, "{path:?} {what}: orphan went on");
            let recs = records(&mut env);
            assert!(matches!(recs.as_slice(), [Record::Orphan(h, d)] if h.key == k && d == &rest), "{recs:?}");
            let (pass, out) = run(&mut env, path, &first);
            assert!(pass && out == first, "{path:?} {what}: first fragment");
            let recs = records(&mut env);
            let [Record::Release(h)] = recs.as_slice() else { panic!("{path:?} {what}: records {recs:?}") };
            assert_eq!((h.key, h.new_addr), (k, FRAG_PASS));
            assert!(pending(&env).is_empty());
            // The daemon runs the held frame again: to the stack, as received.
            let (pass, out) = run(&mut env, path, &rest);
            assert!(pass, "{path:?} {what}: released orphan dropped");
            assert_eq!(out, rest, "{path:?} {what}: released orphan rewritten");
        }
        assert_eq!(env.counter(Counter::FragPunted), 2);
        assert_eq!(env.counter(Counter::FragPuntReleased), 2);
        assert_eq!(env.counter(Counter::FragPassed), 2);
        assert_eq!(env.counter(Counter::FragTranslated), 0);
    }
}

/// Without the daemon an orphan stays dropped even when it is the node's (the choice
/// `reverse::later_fragment` explains); the node's datagrams in order are unaffected.
#[test]
fn without_the_daemon_node_orphans_are_still_dropped() {
    let mut env = Env::new();
    let (_, first, rest) = node_datagrams(0x3300).remove(0);
    assert!(!run(&mut env, Path::Xdp, &rest).0);
    assert_eq!(env.counter(Counter::DropFragOrphan), 1);
    assert!(run(&mut env, Path::Xdp, &first).0);
    assert!(run(&mut env, Path::Xdp, &rest).0, "a retransmitted last fragment follows its first");
}

/// A forged first fragment toward a node port, with the key of a pod's datagram in flight, must
/// not send the rest of that datagram to the node's sockets.
#[test]
fn a_node_first_fragment_never_takes_over_a_pods_datagram() {
    for path in [Path::Xdp, Path::Tc] {
        let mut env = env_with_punt();
        let ext = open(&mut env, 5512);
        let (f1, f2) = fragments(&udp(REMOTE1, 9000, NODE_IP, ext, &[0x5a; 80]), 40, 0x3400);
        assert!(run(&mut env, path, &f1).0);
        let (forged, _) = fragments(&udp(REMOTE1, 9000, NODE_IP, 40_053, &[0x66; 80]), 40, 0x3400);
        let (pass, out) = run(&mut env, path, &forged);
        assert!(pass && out == forged, "{path:?}: the forged first fragment is the node's to judge");
        assert_eq!(env.frag(key(0x3400)).map(|v| v.new_addr), Some(POD_A), "{path:?}");
        let (pass, out) = run(&mut env, path, &f2);
        assert!(pass);
        assert_eq!(parse_checked(&out).ip.destination, POD_A, "{path:?}: the pod's fragment went to the node");
        assert_eq!(env.counter(Counter::FragPassed), 0);
    }
}

/// Found by `cargo xtask fuzz` (1M runs): a first fragment for the node too short to hold an
/// ICMP header (4 bytes of payload) left a pass entry, i.e. state from a packet that does not
/// parse. It still goes to the stack (the kernel decides), without an entry.
#[test]
fn a_tiny_first_fragment_for_the_node_leaves_no_state() {
    for path in [Path::Xdp, Path::Tc] {
        let mut env = env_with_punt();
        let ping = echo_request(REMOTE1, NODE_IP, 0x0778, 1);
        let (mut h, p) = etherparse::Ipv4Header::from_slice(&ping[14..]).unwrap();
        h.identification = 0x3300;
        h.more_fragments = true;
        h.dont_fragment = false;
        let tiny = raw_frame(h, &p[..4]);
        let (pass, out) = run(&mut env, path, &tiny);
        assert!(pass, "{path:?}: the kernel decides about the node's own packets");
        assert_eq!(out, tiny, "{path:?}");
        assert!(env.frag(node_key(0x3300, ICMP)).is_none(), "{path:?}: a tiny first fragment created a frag4 entry");
    }
}
