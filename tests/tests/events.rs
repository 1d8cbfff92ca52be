//! Drop and new-flow events in the `events` ring buffer, and the aya-log lines behind
//! `node_flags::BPF_LOG`, read straight from a private copy of the programs (test_run).
mod sg_common;
mod snat_common;

use std::sync::{Arc, Mutex};

use podgate_common::{Event, event_kind, nat::PROTO_UDP, node_flags, stats::Counter};
use snat_common::{Config, Env, NODE_IP, POD_A, REMOTE1, snat_ok, udp};

fn events(env: &mut Env) -> Vec<Event> {
    env.h.events()
}

fn v4(e: &[u8; 16]) -> [u8; 4] {
    [e[0], e[1], e[2], e[3]]
}

#[test]
fn snat_drop_is_reported_with_pod_and_five_tuple() {
    let mut env = Env::new();
    let a = env.pod_a;
    let spoofed = [169, 254, 172, 99];
    let out = env.egress(a, &udp(spoofed, 5000, REMOTE1, 53, b"x"));
    assert_eq!(out.verdict, podgate_tests::TC_ACT_SHOT);
    let ev = events(&mut env);
    assert_eq!(ev.len(), 1, "one drop, one event: {ev:?}");
    let e = ev[0];
    assert_eq!(e.kind, event_kind::DROP);
    assert_eq!(e.reason, Counter::DropSpoofV4 as u32);
    assert_eq!(e.pod_id, env.pod(a).id);
    assert_eq!((e.family, e.proto), (4, PROTO_UDP));
    assert_eq!((v4(&e.src), e.sport), (spoofed, 5000));
    assert_eq!((v4(&e.dst), e.dport), (REMOTE1, 53));
}

#[test]
fn uplink_drop_of_unsolicited_inbound_is_reported() {
    let mut env = Env::new();
    // A SYN to a port of the SNAT range that nothing maps: dropped, at XDP and at TC alike.
    let frame = snat_common::tcp(REMOTE1, 443, NODE_IP, 40001, "S", b"");
    assert_eq!(env.reverse_xdp(&frame).verdict, podgate_tests::XDP_DROP);
    assert_eq!(env.reverse_tc(&frame).verdict, podgate_tests::TC_ACT_SHOT);
    let ev = events(&mut env);
    assert_eq!(ev.len(), 2, "{ev:?}");
    for e in ev {
        assert_eq!((e.kind, e.reason), (event_kind::DROP, Counter::DropNoMapping as u32));
        assert_eq!((v4(&e.src), e.sport, v4(&e.dst), e.dport), (REMOTE1, 443, NODE_IP, 40001));
        assert_eq!(e.proto, snat_common::TCP);
        assert_eq!(e.pod_id, 0);
    }
}

#[test]
fn new_snat_flow_event_only_when_asked_for() {
    let mut env = Env::new();
    let a = env.pod_a;
    snat_ok(&mut env, a, &udp(POD_A, 5000, REMOTE1, 53, b"x"));
    assert!(events(&mut env).is_empty(), "FLOW_EVENTS off: no new-flow event");

    let mut env = Env::with(Config { flags: node_flags::FLOW_EVENTS, ..Default::default() });
    let a = env.pod_a;
    let (_, ext) = snat_ok(&mut env, a, &udp(POD_A, 5000, REMOTE1, 53, b"x"));
    // The second packet of the flow is not new.
    snat_ok(&mut env, a, &udp(POD_A, 5000, REMOTE1, 53, b"y"));
    let ev = events(&mut env);
    assert_eq!(ev.len(), 1, "{ev:?}");
    let e = ev[0];
    assert_eq!(e.kind, event_kind::NEW_FLOW);
    assert_eq!(e.pod_id, env.pod(a).id);
    assert_eq!((e.family, e.proto, e.ext_port), (4, PROTO_UDP, ext));
    assert_eq!((v4(&e.src), e.sport, v4(&e.dst), e.dport), (POD_A, 5000, REMOTE1, 53));
}

#[test]
fn new_security_group_flow_event_only_when_asked_for() {
    use sg_common::{Fx, POD, POD_ID, REMOTE, a};
    let groups = "[security_groups.web]\negress = [{ proto = \"udp\", ports = \"53\", cidr = \"2001:db8:ff::/48\" }]\n";
    for flow_events in [false, true] {
        let mut fx = Fx::new(groups, &["web"]);
        if flow_events {
            let mut m: aya::maps::Array<_, podgate_common::NodeConfig> =
                aya::maps::Array::try_from(fx.h.ebpf.map_mut("node").unwrap()).unwrap();
            let mut n = m.get(&0, 0).unwrap();
            n.flags |= node_flags::FLOW_EVENTS;
            m.set(0, n, 0).unwrap();
        }
        let pkt = sg_common::udp(POD, REMOTE, 5353, 53);
        assert_eq!(fx.pod_sends(&pkt).verdict, podgate_tests::TC_ACT_OK);
        assert_eq!(fx.pod_sends(&pkt).verdict, podgate_tests::TC_ACT_OK);
        let ev = fx.events();
        if !flow_events {
            assert!(ev.is_empty(), "{ev:?}");
            continue;
        }
        assert_eq!(ev.len(), 1, "only the first packet is a new flow: {ev:?}");
        let e = ev[0];
        assert_eq!((e.kind, e.pod_id, e.family, e.proto), (event_kind::NEW_FLOW, POD_ID, 6, PROTO_UDP));
        assert_eq!((e.src, e.sport, e.dst, e.dport), (a(POD), 5353, a(REMOTE), 53));
        assert_ne!(e.rule, u32::MAX, "the allowing rule is named");
    }
}

/// Collects what `aya_log::EbpfLogger` forwards.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<String>>>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, r: &log::Record) {
        self.0.lock().unwrap().push(format!("{} {}", r.level(), r.args()));
    }
    fn flush(&self) {}
}

/// The log lines one unsolicited SYN from the internet makes at the uplink (XDP).
fn log_lines(flags: u32) -> Vec<String> {
    let mut env = Env::with(Config { flags, ..Default::default() });
    let cap = Capture::default();
    let mut logger = aya_log::EbpfLogger::init_with_logger(&mut env.h.ebpf, cap.clone()).expect("AYA_LOGS map");
    env.reverse_xdp(&snat_common::tcp(REMOTE1, 443, NODE_IP, 40001, "S", b""));
    logger.flush();
    let lines = cap.0.lock().unwrap().clone();
    lines
}

#[test]
fn bpf_log_lines_only_when_the_flag_is_set() {
    let on = log_lines(node_flags::BPF_LOG);
    assert_eq!(on.len(), 1, "{on:?}");
    assert!(
        on[0].contains("drop_no_mapping") && on[0].contains("198.51.100.1") && on[0].contains("192.0.2.10"),
        "{on:?}"
    );
    assert!(on[0].starts_with("DEBUG"), "an unsolicited SYN is not an operator's problem: {on:?}");
    let off = log_lines(0);
    assert!(off.is_empty(), "{off:?}");
}

#[test]
fn a_drop_answered_with_icmp_is_reported_once_with_its_five_tuple() {
    let mut env = Env::with(Config { pod_quota: 1, flags: node_flags::BPF_LOG, ..Default::default() });
    let cap = Capture::default();
    let mut logger = aya_log::EbpfLogger::init_with_logger(&mut env.h.ebpf, cap.clone()).expect("AYA_LOGS map");
    let a = env.pod_a;
    snat_ok(&mut env, a, &udp(POD_A, 5000, REMOTE1, 53, b"x"));
    // A second socket is a second mapping: over the quota, answered with ICMP 3/13.
    let out = env.egress(a, &udp(POD_A, 5001, REMOTE1, 53, b"y"));
    assert_eq!(out.verdict, podgate_tests::TC_ACT_REDIRECT);
    assert_eq!(env.counter(Counter::DropPodQuota), 1);
    assert_eq!(env.counter(Counter::IcmpUnreachSent), 1);
    let ev = events(&mut env);
    assert_eq!(ev.len(), 1, "one drop, one event: {ev:?}");
    let e = ev[0];
    assert_eq!((e.kind, e.reason, e.pod_id), (event_kind::DROP, Counter::DropPodQuota as u32, env.pod(a).id));
    assert_eq!((v4(&e.src), e.sport, v4(&e.dst), e.dport), (POD_A, 5001, REMOTE1, 53), "the pod's packet, not the ICMP answer");
    // No log lines from the pod's own traffic (pod_ingress): see ebpf/programs/src/main.rs.
    logger.flush();
    assert!(cap.0.lock().unwrap().is_empty());
}
