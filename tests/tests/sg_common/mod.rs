//! Fixture for the security-group packet tests: one pod behind ifindex 1 (loopback stands in for
//! its veth), rules compiled from TOML and written with the real `podgate::sg::apply`.
#![allow(dead_code)]

use std::net::Ipv6Addr;

use aya::maps::{Array, HashMap, PerCpuArray};
use etherparse::{
    EtherType, Ethernet2Header, IpNumber, Ipv6FlowLabel, Ipv6Header,
    Ipv6RawExtHeader, PacketBuilder, TcpHeader,
};
use podgate::sg::{self, CompileInput, Compiled, PodGroups, SecurityGroups};
use podgate_common::{
    Event, NodeConfig, Pod,
    sg::{Ct6, Flow6, FragKey6, FragVal6},
    stats::Counter,
};
use podgate_tests::{Harness, RunOutput, TC_ACT_OK, TC_ACT_SHOT, XDP_DROP, XDP_PASS};

pub const POD_IFINDEX: u32 = 1;
pub const POD_ID: u32 = 7;
pub const NODE_PREFIX: &str = "2001:db8:0:1:1::/80";
pub const POD: &str = "2001:db8:0:1:1::a";
/// Another pod on the node, member of group `db` in the fixtures.
pub const DB_POD: &str = "2001:db8:0:1:1::b";
/// Another pod on the node, in no group.
pub const OTHER_POD: &str = "2001:db8:0:1:1::c";
pub const REMOTE: &str = "2001:db8:ff::1";

pub fn a(s: &str) -> [u8; 16] {
    s.parse::<Ipv6Addr>().unwrap().octets()
}

pub struct Fx {
    pub h: Harness,
    pub compiled: Compiled,
    pub pods: Vec<PodGroups>,
}

pub fn parse_groups(toml_text: &str) -> SecurityGroups {
    #[derive(serde::Deserialize)]
    struct Doc {
        #[serde(default)]
        security_groups: SecurityGroups,
    }
    toml::from_str::<Doc>(toml_text).expect("fixture TOML").security_groups
}

/// Moves the calling test thread into a fresh network namespace that forwards IPv6 and has a
/// default route, so that the programs' FIB lookups (NDP toward a global address: does it stay
/// on the node?) answer as on a node, whatever the host's own namespace looks like (on a host
/// with IPv6 forwarding off every lookup would say "stays here", and NDP would pass). Nothing is
/// created in the host's namespace; the namespace vanishes with the thread.
fn routed_netns() {
    // SAFETY: affects only the calling thread; each test runs on its own thread.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
    let run = |argv: &[&str]| {
        let st = std::process::Command::new(argv[0]).args(&argv[1..]).status().expect("run");
        assert!(st.success(), "{argv:?} failed");
    };
    run(&["ip", "link", "set", "lo", "up"]);
    run(&["ip", "link", "add", "pgsg0", "type", "veth", "peer", "name", "pgsg1"]);
    run(&["ip", "link", "set", "pgsg0", "up"]);
    run(&["ip", "link", "set", "pgsg1", "up"]);
    run(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    run(&["sysctl", "-qw", "net.ipv6.conf.lo.forwarding=1"]);
    run(&["ip", "-6", "route", "add", "default", "dev", "pgsg0"]);
}

impl Fx {
    /// The pod under test (ifindex 1, address `POD`) gets `pod_groups`; `DB_POD` is in `db`.
    pub fn new(groups_toml: &str, pod_groups: &[&str]) -> Self {
        let groups = parse_groups(groups_toml);
        let mut pods = vec![PodGroups {
            name: "pod".into(),
            ifindex: POD_IFINDEX,
            ipv6: POD.parse().unwrap(),
            groups: pod_groups.iter().map(|s| s.to_string()).collect(),
        }];
        if groups.contains_key("db") {
            pods.push(PodGroups { name: "db".into(), ifindex: 99, ipv6: DB_POD.parse().unwrap(), groups: vec!["db".into()] });
        }
        let compiled = compile(&groups, &pods, None);
        routed_netns();
        let mut fx = Fx { h: Harness::new().expect("load programs"), compiled, pods };
        let node = NodeConfig {
            abi_version: podgate_common::ABI_VERSION,
            pod_prefix: a("2001:db8:0:1:1::"),
            ..Default::default()
        };
        let mut m: Array<_, NodeConfig> = Array::try_from(fx.h.ebpf.map_mut("node").unwrap()).unwrap();
        m.set(0, node, 0).unwrap();
        fx.write_pod();
        sg::write_in(&mut fx.h.ebpf, &fx.compiled).expect("apply");
        fx
    }

    fn write_pod(&mut self) {
        let (groups, group_count) = self.compiled.pod_record_groups("pod").unwrap();
        let pod = Pod {
            id: POD_ID,
            ifindex: POD_IFINDEX,
            ifindex_v4: POD_IFINDEX,
            ipv6: a(POD),
            group_count,
            groups,
            ..Default::default()
        };
        let mut m: HashMap<_, u32, Pod> = HashMap::try_from(self.h.ebpf.map_mut("pods").unwrap()).unwrap();
        m.insert(POD_IFINDEX, pod, 0).unwrap();
        let mut m: HashMap<_, [u8; 16], u32> = HashMap::try_from(self.h.ebpf.map_mut("pods_v6").unwrap()).unwrap();
        m.insert(a(POD), POD_IFINDEX, 0).unwrap();
    }

    /// Recompiles with new groups (ids kept) and applies: the live rule change.
    pub fn reapply(&mut self, groups_toml: &str) -> u32 {
        let groups = parse_groups(groups_toml);
        self.compiled = compile(&groups, &self.pods, Some(&self.compiled.group_ids));
        self.write_pod();
        sg::write_in(&mut self.h.ebpf, &self.compiled).expect("apply")
    }

    /// What the pod sends: TC ingress of its veth.
    pub fn pod_sends(&mut self, pkt: &[u8]) -> RunOutput {
        self.h.run_tc("pod_ingress", pkt, POD_IFINDEX).unwrap()
    }

    /// What is delivered to the pod: TC egress of its veth.
    pub fn pod_receives(&mut self, pkt: &[u8]) -> RunOutput {
        self.h.run_tc("pod_egress", pkt, POD_IFINDEX).unwrap()
    }

    pub fn uplink(&mut self, pkt: &[u8]) -> RunOutput {
        self.h.run_xdp("uplink_xdp", pkt, 1).unwrap()
    }

    pub fn counter(&self, c: Counter) -> u64 {
        let m: PerCpuArray<_, u64> = PerCpuArray::try_from(self.h.ebpf.map("stats").unwrap()).unwrap();
        m.get(&(c as u32), 0).unwrap().iter().sum()
    }

    pub fn ct(&self) -> Vec<(Flow6, Ct6)> {
        let m: HashMap<_, Flow6, Ct6> = HashMap::try_from(self.h.ebpf.map("ct6").unwrap()).unwrap();
        m.iter().map(Result::unwrap).collect()
    }

    pub fn frag6(&self) -> Vec<(FragKey6, FragVal6)> {
        let m: HashMap<_, FragKey6, FragVal6> = HashMap::try_from(self.h.ebpf.map("frag6").unwrap()).unwrap();
        m.iter().map(Result::unwrap).collect()
    }

    pub fn events(&mut self) -> Vec<Event> {
        self.h.events()
    }

    /// Non-zero counters, for failure messages.
    pub fn counters(&self) -> String {
        Counter::ALL
            .iter()
            .filter_map(|&c| {
                let v = self.counter(c);
                (v != 0).then(|| format!("{}={v}", c.name()))
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Asserts a TC pass that left the packet untouched, counted under `c`.
    pub fn expect_pass(&self, out: &RunOutput, pkt: &[u8], c: Counter, before: u64, what: &str) {
        assert_eq!(out.verdict, TC_ACT_OK, "{what}: expected pass; counters: {}", self.counters());
        assert_eq!(out.packet, pkt, "{what}: packet changed");
        assert_eq!(self.counter(c), before + 1, "{what}: counter {}; counters: {}", c.name(), self.counters());
    }

    pub fn expect_drop(&self, out: &RunOutput, c: Counter, before: u64, what: &str) {
        assert_eq!(out.verdict, TC_ACT_SHOT, "{what}: expected drop; counters: {}", self.counters());
        assert_eq!(self.counter(c), before + 1, "{what}: counter {}; counters: {}", c.name(), self.counters());
    }

    /// Sends `pkt` through the given direction and checks pass/drop with its counter.
    pub fn check(&mut self, to_pod: bool, pkt: &[u8], pass: bool, c: Counter, what: &str) {
        let before = self.counter(c);
        let out = if to_pod { self.pod_receives(pkt) } else { self.pod_sends(pkt) };
        if pass {
            self.expect_pass(&out, pkt, c, before, what);
        } else {
            self.expect_drop(&out, c, before, what);
        }
    }

    pub fn check_xdp(&mut self, pkt: &[u8], pass: bool, what: &str) {
        let out = self.uplink(pkt);
        assert_eq!(out.verdict, if pass { XDP_PASS } else { XDP_DROP }, "{what}");
        assert_eq!(out.packet, pkt, "{what}: packet changed");
    }
}

pub fn compile(groups: &SecurityGroups, pods: &[PodGroups], prev: Option<&std::collections::BTreeMap<String, u32>>) -> Compiled {
    sg::compile(&CompileInput {
        groups,
        pods,
        node_prefix: NODE_PREFIX.parse().unwrap(),
        max_groups_per_pod: 16,
        previous_ids: prev,
    })
    .expect("compile")
}

const MAC_POD: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
const MAC_NODE: [u8; 6] = [2, 0, 0, 0, 0, 1];

fn builder(src: &str, dst: &str) -> etherparse::PacketBuilderStep<etherparse::IpHeaders> {
    PacketBuilder::ethernet2(MAC_POD, MAC_NODE).ipv6(a(src), a(dst), 64)
}

pub fn tcp(src: &str, dst: &str, sport: u16, dport: u16, syn: bool) -> Vec<u8> {
    let b = builder(src, dst).tcp(sport, dport, 1000, 64000);
    let b = if syn { b.syn() } else { b.ack(1) };
    let mut p = Vec::new();
    b.write(&mut p, b"payload").unwrap();
    p
}

pub fn udp(src: &str, dst: &str, sport: u16, dport: u16) -> Vec<u8> {
    let mut p = Vec::new();
    builder(src, dst).udp(sport, dport).write(&mut p, b"datagram").unwrap();
    p
}

pub fn icmp(src: &str, dst: &str, icmp_type: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    builder(src, dst).icmpv6_raw(icmp_type, code, rest).write(&mut p, body).unwrap();
    p
}

pub fn echo_request(src: &str, dst: &str, id: u16) -> Vec<u8> {
    let mut p = Vec::new();
    builder(src, dst).icmpv6_echo_request(id, 1).write(&mut p, b"ping").unwrap();
    p
}

pub fn echo_reply(src: &str, dst: &str, id: u16) -> Vec<u8> {
    let mut p = Vec::new();
    builder(src, dst).icmpv6_echo_reply(id, 1).write(&mut p, b"ping").unwrap();
    p
}

/// A raw packet of any protocol number.
pub fn raw(src: &str, dst: &str, proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    Ethernet2Header { source: MAC_POD, destination: MAC_NODE, ether_type: EtherType::IPV6 }.write(&mut p).unwrap();
    Ipv6Header {
        traffic_class: 0,
        flow_label: Ipv6FlowLabel::ZERO,
        payload_length: payload.len() as u16,
        next_header: IpNumber(proto),
        hop_limit: 64,
        source: a(src),
        destination: a(dst),
    }
    .write(&mut p)
    .unwrap();
    p.extend_from_slice(payload);
    p
}

/// Extension headers for `with_ext`.
#[derive(Clone, Copy, Debug)]
pub enum Ext {
    HopByHop,
    DestOpts,
    Routing(u8),
    /// Offset in 8-byte units.
    Fragment { offset: u16, more: bool, id: u32 },
}

impl Ext {
    fn number(self) -> u8 {
        match self {
            Ext::HopByHop => 0,
            Ext::DestOpts => 60,
            Ext::Routing(_) => 43,
            Ext::Fragment { .. } => 44,
        }
    }
}

/// IPv6 with `chain` before an upper-layer payload `upper` of protocol `proto`.
pub fn with_ext(src: &str, dst: &str, chain: &[Ext], proto: u8, upper: &[u8]) -> Vec<u8> {
    let mut exts = Vec::new();
    for (i, e) in chain.iter().enumerate() {
        let next = chain.get(i + 1).map(|n| n.number()).unwrap_or(proto);
        match *e {
            Ext::HopByHop | Ext::DestOpts => {
                // PadN option filling the 6 bytes.
                Ipv6RawExtHeader::new_raw(IpNumber(next), &[1, 4, 0, 0, 0, 0]).unwrap().write(&mut exts).unwrap()
            }
            Ext::Routing(t) => {
                Ipv6RawExtHeader::new_raw(IpNumber(next), &[t, 0, 0, 0, 0, 0]).unwrap().write(&mut exts).unwrap()
            }
            Ext::Fragment { offset, more, id } => {
                // etherparse 0.16 puts the offset's low bits and the M flag in the wrong bits of
                // byte 3 (JulianSchmid/etherparse#150, fixed in 0.20), so the header is laid out
                // here per RFC 8200 §4.5: offset in the top 13 bits of a big-endian word, M last.
                assert!(offset <= 0x1fff);
                let word = (offset << 3) | more as u16;
                exts.extend_from_slice(&[next, 0]);
                exts.extend_from_slice(&word.to_be_bytes());
                exts.extend_from_slice(&id.to_be_bytes());
            }
        }
    }
    exts.extend_from_slice(upper);
    let first = chain.first().map(|e| e.number()).unwrap_or(proto);
    raw(src, dst, first, &exts)
}

/// A TCP SYN header (20 bytes) and a little payload, checksummed for `src`/`dst`.
pub fn tcp_segment(src: &str, dst: &str, sport: u16, dport: u16) -> Vec<u8> {
    let mut t = TcpHeader::new(sport, dport, 1, 64000);
    t.syn = true;
    let payload = [0u8; 16];
    t.checksum = t.calc_checksum_ipv6_raw(a(src), a(dst), &payload).unwrap();
    let mut v = t.to_bytes().to_vec();
    v.extend_from_slice(&payload);
    v
}

/// `pkt` with its IPv6 hop limit set to `hl` (not covered by any checksum).
pub fn hop_limit(mut pkt: Vec<u8>, hl: u8) -> Vec<u8> {
    pkt[14 + 7] = hl;
    pkt
}

/// `pkt` with VLAN tags (TPID, TCI) inserted after the MAC addresses, outermost first.
pub fn tagged(pkt: &[u8], tags: &[(u16, u16)]) -> Vec<u8> {
    let mut v = pkt[..12].to_vec();
    for &(tpid, tci) in tags {
        v.extend_from_slice(&tpid.to_be_bytes());
        v.extend_from_slice(&tci.to_be_bytes());
    }
    v.extend_from_slice(&pkt[12..]);
    v
}
