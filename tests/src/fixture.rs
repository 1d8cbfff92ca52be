//! Shared fixtures of the SNAT packet tests: a private network namespace with the interfaces the
//! programs need, the node and pod map entries, packet builders (etherparse) and output checks
//! that recompute every checksum. Shared by tests/tests/snat_*.rs and the benchmark binary.
use std::process::Command;

use aya::maps::{Array, HashMap, PerCpuArray};
use etherparse::{
    EtherType, Ethernet2Header, IpNumber, Ipv4Header, NetHeaders, PacketBuilder, PacketHeaders,
    TransportHeader,
};
use podgate_common::{
    ABI_VERSION, NodeConfig, Pod, PodUsage, Timeouts,
    nat::{Claim4, Ct4, Endpoint4, Flow4, FragKey4, FragVal4, Mapping4},
    stats::Counter,
};
use crate::{Harness, RunOutput, TC_ACT_OK, TC_ACT_REDIRECT};

pub const NODE_IP: [u8; 4] = [192, 0, 2, 10];
pub const POD_A: [u8; 4] = [169, 254, 172, 10];
pub const POD_B: [u8; 4] = [169, 254, 172, 11];
pub const GATEWAY: [u8; 4] = [169, 254, 172, 1];
pub const REMOTE1: [u8; 4] = [198, 51, 100, 1];
pub const REMOTE2: [u8; 4] = [198, 51, 100, 2];
pub const ROUTER: [u8; 4] = [203, 0, 113, 1];
pub const POD_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x0a];
pub const HOST_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x01];
pub const PORT_MIN: u16 = 32768;
pub const PORT_MAX: u16 = 65535;

/// One test's world: its own network namespace (veth interfaces for the two pods and the
/// uplink, since BPF_PROG_TEST_RUN wants existing ifindexes) and its own copy of the programs.
pub struct Env {
    pub h: Harness,
    pub pod_a: u32,
    pub pod_b: u32,
    pub uplink: u32,
}

pub struct Config {
    pub flags: u32,
    pub port_min: u16,
    pub port_max: u16,
    pub pod_quota: u32,
    /// Maps created smaller than in the object: `(name, max_entries)`.
    pub max_entries: Vec<(&'static str, u32)>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            flags: 0,
            port_min: PORT_MIN,
            port_max: PORT_MAX,
            pod_quota: 0,
            max_entries: Vec::new(),
        }
    }
}

pub fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().expect("run ip");
    assert!(st.success(), "ip {args:?} failed");
}

pub fn ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: a valid C string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert!(i != 0, "no interface {name}");
    i
}

impl Env {
    pub fn new() -> Self {
        Self::with(Config::default())
    }

    /// Moves the calling test thread into a fresh network namespace (it vanishes with the
    /// thread; nothing is created in the host's namespace) and fills the maps.
    pub fn with(cfg: Config) -> Self {
        // SAFETY: affects only the calling thread; each test runs on its own thread.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "unshare(CLONE_NEWNET): {}",
            std::io::Error::last_os_error()
        );
        // veth pairs: this kernel has no dummy driver.
        ip(&["link", "add", "pga", "type", "veth", "peer", "name", "pgb"]);
        ip(&[
            "link", "add", "pgup", "type", "veth", "peer", "name", "pgnet",
        ]);
        for n in ["pga", "pgb", "pgup", "pgnet"] {
            ip(&["link", "set", n, "up"]);
        }
        let mut env = Self {
            h: Harness::with_max_entries(&cfg.max_entries).expect("load programs"),
            pod_a: ifindex("pga"),
            pod_b: ifindex("pgb"),
            uplink: ifindex("pgup"),
        };
        let node = NodeConfig {
            abi_version: ABI_VERSION,
            flags: cfg.flags,
            ipv4: NODE_IP,
            uplink_ifindex: env.uplink,
            pod_prefix: [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            pod_ipv4_net: [169, 254, 172, 0],
            pod_ipv4_prefix_len: 22,
            port_min: cfg.port_min,
            port_max: cfg.port_max,
            pod_quota: cfg.pod_quota,
            timeouts: Timeouts::default(),
            // Unbounded: the SNAT fixtures bound mappings with pod_quota.
            pod_flows: 0,
        };
        let mut a: Array<_, NodeConfig> =
            Array::try_from(env.h.ebpf.map_mut("node").unwrap()).unwrap();
        a.set(0, node, 0).unwrap();
        let (pa, pb) = (env.pod_a, env.pod_b);
        env.add_pod(pa, POD_A, 0);
        env.add_pod(pb, POD_B, 0);
        env
    }

    /// Routes and neighbours for the FIB fast path, inside the test's namespace: the internet
    /// behind a gateway on the uplink, pod A's address on its veth.
    pub fn with_fib() -> Self {
        let env = Self::with(Config {
            flags: podgate_common::node_flags::FIB_REDIRECT,
            ..Default::default()
        });
        ip(&["addr", "add", "192.0.2.10/24", "dev", "pgup"]);
        ip(&[
            "route",
            "add",
            "198.51.100.0/24",
            "via",
            "192.0.2.1",
            "dev",
            "pgup",
        ]);
        ip(&[
            "neigh",
            "add",
            "192.0.2.1",
            "lladdr",
            "02:00:00:00:00:fe",
            "dev",
            "pgup",
            "nud",
            "permanent",
        ]);
        ip(&["addr", "add", "169.254.172.1/32", "dev", "pga"]);
        ip(&["route", "add", "169.254.172.10/32", "dev", "pga"]);
        ip(&[
            "neigh",
            "add",
            "169.254.172.10",
            "lladdr",
            "02:00:00:00:00:0a",
            "dev",
            "pga",
            "nud",
            "permanent",
        ]);
        let st = Command::new("sysctl")
            .args(["-qw", "net.ipv4.conf.all.forwarding=1"])
            .status()
            .expect("sysctl");
        assert!(st.success());
        for n in ["pga", "pgup"] {
            let st = Command::new("sysctl")
                .args(["-qw", &format!("net.ipv4.conf.{n}.forwarding=1")])
                .status()
                .expect("sysctl");
            assert!(st.success());
        }
        env
    }

    pub fn set_mtu(&self, name: &str, mtu: u32) {
        ip(&["link", "set", name, "mtu", &mtu.to_string()]);
    }

    pub fn mac(name: &str) -> [u8; 6] {
        // Not /sys/class/net: sysfs shows the namespace it was mounted in, not this thread's.
        let out = Command::new("ip")
            .args(["-br", "link", "show", name])
            .output()
            .expect("ip");
        let s = String::from_utf8(out.stdout).unwrap();
        let mac = s.split_whitespace().nth(2).expect("mac column");
        let v: Vec<u8> = mac
            .split(':')
            .map(|h| u8::from_str_radix(h, 16).unwrap())
            .collect();
        v.try_into().unwrap()
    }

    pub fn add_pod(&mut self, ifindex: u32, addr: [u8; 4], quota: u32) {
        let pod = Pod {
            id: ifindex,
            ifindex,
            ifindex_v4: ifindex,
            ipv4: addr,
            quota,
            ..Default::default()
        };
        let mut pods: HashMap<_, u32, Pod> =
            HashMap::try_from(self.h.ebpf.map_mut("pods").unwrap()).unwrap();
        pods.insert(ifindex, pod, 0).unwrap();
        let mut v4: HashMap<_, [u8; 4], u32> =
            HashMap::try_from(self.h.ebpf.map_mut("pods_v4").unwrap()).unwrap();
        v4.insert(addr, ifindex, 0).unwrap();
        // As `pod add` does: the pod's tallies start at zero.
        for name in ["pod_usage", "pod_freed"] {
            let mut u: HashMap<_, u32, PodUsage> =
                HashMap::try_from(self.h.ebpf.map_mut(name).unwrap()).unwrap();
            u.insert(ifindex, PodUsage::default(), 0).unwrap();
        }
    }

    /// What the programs created for pod `id` (`pod_usage`).
    pub fn usage(&self, id: u32) -> PodUsage {
        let u: HashMap<_, u32, PodUsage> =
            HashMap::try_from(self.h.ebpf.map("pod_usage").unwrap()).unwrap();
        u.get(&id, 0).unwrap()
    }

    /// What pod `id` holds: `pod_usage − pod_freed` (the count the quota uses).
    pub fn held(&self, id: u32) -> PodUsage {
        let f: HashMap<_, u32, PodUsage> =
            HashMap::try_from(self.h.ebpf.map("pod_freed").unwrap()).unwrap();
        PodUsage::held(&self.usage(id), &f.get(&id, 0).unwrap())
    }

    /// Sets what the daemon freed for pod `id` (`pod_freed`).
    pub fn set_freed(&mut self, id: u32, f: PodUsage) {
        let mut u: HashMap<_, u32, PodUsage> =
            HashMap::try_from(self.h.ebpf.map_mut("pod_freed").unwrap()).unwrap();
        u.insert(id, f, 0).unwrap();
    }

    /// Changes the node's SNAT port range, as a config reload would.
    pub fn set_ports(&mut self, port_min: u16, port_max: u16) {
        let mut a: Array<_, NodeConfig> =
            Array::try_from(self.h.ebpf.map_mut("node").unwrap()).unwrap();
        let mut n = a.get(&0, 0).unwrap();
        n.port_min = port_min;
        n.port_max = port_max;
        a.set(0, n, 0).unwrap();
    }

    pub fn pod(&self, ifindex: u32) -> Pod {
        let pods: HashMap<_, u32, Pod> =
            HashMap::try_from(self.h.ebpf.map("pods").unwrap()).unwrap();
        pods.get(&ifindex, 0).unwrap()
    }

    /// Pod A (or B) sends a frame: TC ingress of its veth.
    pub fn egress(&mut self, ifindex: u32, frame: &[u8]) -> RunOutput {
        self.h
            .run_tc("pod_ingress", frame, ifindex)
            .map_err(|e| format!("{e:#}"))
            .expect("test_run pod_ingress")
    }

    pub fn reverse_xdp(&mut self, frame: &[u8]) -> RunOutput {
        let up = self.uplink;
        self.h
            .run_xdp("uplink_xdp", frame, up)
            .expect("test_run uplink_xdp")
    }

    pub fn reverse_tc(&mut self, frame: &[u8]) -> RunOutput {
        let up = self.uplink;
        self.h
            .run_tc("uplink_tc", frame, up)
            .expect("test_run uplink_tc")
    }

    /// The sum over CPUs of one counter.
    pub fn counter(&self, c: Counter) -> u64 {
        let a: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.h.ebpf.map("stats").unwrap()).unwrap();
        a.get(&(c as u32), 0).unwrap().iter().sum()
    }

    pub fn mapping(&self, ep: Endpoint4) -> Option<Mapping4> {
        let m: HashMap<_, Endpoint4, Mapping4> =
            HashMap::try_from(self.h.ebpf.map("nat4_map").unwrap()).unwrap();
        m.get(&ep, 0).ok()
    }

    pub fn mappings(&self) -> Vec<(Endpoint4, Mapping4)> {
        let m: HashMap<_, Endpoint4, Mapping4> =
            HashMap::try_from(self.h.ebpf.map("nat4_map").unwrap()).unwrap();
        m.iter().map(|r| r.unwrap()).collect()
    }

    pub fn claim(&self, remote: [u8; 4], ext_port: u16, proto: u8) -> Option<Endpoint4> {
        let m: HashMap<_, Claim4, Endpoint4> =
            HashMap::try_from(self.h.ebpf.map("nat4_claim").unwrap()).unwrap();
        m.get(
            &Claim4 {
                remote,
                ext_port,
                proto,
                _pad: 0,
            },
            0,
        )
        .ok()
    }

    pub fn claims(&self) -> Vec<(Claim4, Endpoint4)> {
        let m: HashMap<_, Claim4, Endpoint4> =
            HashMap::try_from(self.h.ebpf.map("nat4_claim").unwrap()).unwrap();
        m.iter().map(|r| r.unwrap()).collect()
    }

    pub fn ct(&self, f: Flow4) -> Option<Ct4> {
        let m: HashMap<_, Flow4, Ct4> = HashMap::try_from(self.h.ebpf.map("ct4").unwrap()).unwrap();
        m.get(&f, 0).ok()
    }

    pub fn ct_count(&self) -> usize {
        let m: HashMap<_, Flow4, Ct4> = HashMap::try_from(self.h.ebpf.map("ct4").unwrap()).unwrap();
        m.keys().count()
    }

    pub fn frag(&self, k: FragKey4) -> Option<FragVal4> {
        let m: HashMap<_, FragKey4, FragVal4> =
            HashMap::try_from(self.h.ebpf.map("frag4").unwrap()).unwrap();
        m.get(&k, 0).ok()
    }

    /// Sets a mapping's last-seen time, to see whether a packet refreshes it.
    pub fn set_mapping(&mut self, ep: Endpoint4, m: Mapping4) {
        let mut map: HashMap<_, Endpoint4, Mapping4> =
            HashMap::try_from(self.h.ebpf.map_mut("nat4_map").unwrap()).unwrap();
        map.insert(ep, m, 0).unwrap();
    }
}

/// The uplink program a reply goes through.
#[derive(Clone, Copy, Debug)]
pub enum Path {
    Xdp,
    Tc,
}

/// Runs an inbound frame through `path`'s uplink program: whether it passed, and the output.
pub fn run(env: &mut Env, path: Path, frame: &[u8]) -> (bool, Vec<u8>) {
    match path {
        Path::Xdp => {
            let o = env.reverse_xdp(frame);
            assert!(
                o.verdict == crate::XDP_PASS || o.verdict == crate::XDP_DROP,
                "xdp verdict {}",
                o.verdict
            );
            (o.verdict == crate::XDP_PASS, o.packet)
        }
        Path::Tc => {
            let o = env.reverse_tc(frame);
            assert!(
                o.verdict == TC_ACT_OK || o.verdict == crate::TC_ACT_SHOT,
                "tc verdict {}",
                o.verdict
            );
            (o.verdict == TC_ACT_OK, o.packet)
        }
    }
}

pub fn ep(addr: [u8; 4], port: u16, proto: u8) -> Endpoint4 {
    Endpoint4 {
        addr,
        port,
        proto,
        _pad: 0,
    }
}

pub fn flow(pod: [u8; 4], pod_port: u16, remote: [u8; 4], remote_port: u16, proto: u8) -> Flow4 {
    Flow4 {
        pod_addr: pod,
        remote_addr: remote,
        pod_port,
        remote_port,
        proto,
        _pad: [0; 3],
    }
}

// ---- packet builders ----

fn eth_from(src: [u8; 4]) -> ([u8; 6], [u8; 6]) {
    if src[0] == 169 {
        (POD_MAC, HOST_MAC)
    } else {
        ([2, 0, 0, 0, 0, 0xee], [2, 0, 0, 0, 0, 0xff])
    }
}

pub fn tcp(
    src: [u8; 4],
    sport: u16,
    dst: [u8; 4],
    dport: u16,
    flags: &str,
    payload: &[u8],
) -> Vec<u8> {
    let (s, d) = eth_from(src);
    let mut b = PacketBuilder::ethernet2(s, d)
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 1000, 64000);
    for f in flags.chars() {
        b = match f {
            'S' => b.syn(),
            'A' => b.ack(2000),
            'F' => b.fin(),
            'R' => b.rst(),
            _ => panic!("flag {f}"),
        };
    }
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

pub fn udp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, payload: &[u8]) -> Vec<u8> {
    let (s, d) = eth_from(src);
    let mut v = Vec::new();
    PacketBuilder::ethernet2(s, d)
        .ipv4(src, dst, 64)
        .udp(sport, dport)
        .write(&mut v, payload)
        .unwrap();
    v
}

pub fn echo_request(src: [u8; 4], dst: [u8; 4], id: u16, seq: u16) -> Vec<u8> {
    let (s, d) = eth_from(src);
    let mut v = Vec::new();
    PacketBuilder::ethernet2(s, d)
        .ipv4(src, dst, 64)
        .icmpv4_echo_request(id, seq)
        .write(&mut v, b"ping")
        .unwrap();
    v
}

pub fn echo_reply(src: [u8; 4], dst: [u8; 4], id: u16, seq: u16) -> Vec<u8> {
    let (s, d) = eth_from(src);
    let mut v = Vec::new();
    PacketBuilder::ethernet2(s, d)
        .ipv4(src, dst, 64)
        .icmpv4_echo_reply(id, seq)
        .write(&mut v, b"ping")
        .unwrap();
    v
}

/// An ICMP error from `from` to the node, quoting `quoted` (the IP packet it is about, cut to
/// `quote_len` bytes as a router would).
pub fn icmp_error(
    from: [u8; 4],
    ty: etherparse::Icmpv4Type,
    quoted_frame: &[u8],
    quote_len: usize,
) -> Vec<u8> {
    icmp_error_to(from, NODE_IP, ty, quoted_frame, quote_len)
}

pub fn icmp_error_to(
    from: [u8; 4],
    to: [u8; 4],
    ty: etherparse::Icmpv4Type,
    quoted_frame: &[u8],
    quote_len: usize,
) -> Vec<u8> {
    let ip = &quoted_frame[14..];
    let q = &ip[..quote_len.min(ip.len())];
    let (s, d) = eth_from(from);
    let mut v = Vec::new();
    PacketBuilder::ethernet2(s, d)
        .ipv4(from, to, 64)
        .icmpv4(ty)
        .write(&mut v, q)
        .unwrap();
    v
}

/// A raw frame from an IPv4 header (any options, fragment fields) and its payload.
pub fn raw_frame(mut hdr: Ipv4Header, payload: &[u8]) -> Vec<u8> {
    hdr.total_len = (hdr.header_len() + payload.len()) as u16;
    hdr.header_checksum = hdr.calc_header_checksum();
    let (s, d) = eth_from(hdr.source);
    let mut v = Vec::new();
    Ethernet2Header {
        source: s,
        destination: d,
        ether_type: EtherType::IPV4,
    }
    .write(&mut v)
    .unwrap();
    hdr.write(&mut v).unwrap();
    v.extend_from_slice(payload);
    v
}

/// Splits a frame's IP payload into two fragments at `at` (a multiple of 8).
pub fn fragments(frame: &[u8], at: usize, id: u16) -> (Vec<u8>, Vec<u8>) {
    assert_eq!(at % 8, 0);
    let (hdr, rest) = Ipv4Header::from_slice(&frame[14..]).unwrap();
    let mut h1 = hdr.clone();
    h1.identification = id;
    h1.dont_fragment = false;
    h1.more_fragments = true;
    let mut h2 = h1.clone();
    h2.more_fragments = false;
    h2.fragment_offset = etherparse::IpFragOffset::try_new((at / 8) as u16).unwrap();
    (raw_frame(h1, &rest[..at]), raw_frame(h2, &rest[at..]))
}

// ---- output checks ----

/// The parsed output packet, with its IPv4 and transport checksums verified by recomputation.
pub struct Parsed {
    pub ip: Ipv4Header,
    pub transport: Option<TransportHeader>,
    pub payload: Vec<u8>,
}

pub fn parse_checked(frame: &[u8]) -> Parsed {
    let p = PacketHeaders::from_ethernet_slice(frame).expect("output parses");
    let Some(NetHeaders::Ipv4(ip, _)) = p.net.clone() else {
        panic!("not IPv4")
    };
    assert_eq!(
        ip.header_checksum,
        ip.calc_header_checksum(),
        "IPv4 header checksum"
    );
    let payload = p.payload.slice().to_vec();
    let fragmented = ip.more_fragments || ip.fragment_offset.value() != 0;
    match &p.transport {
        Some(TransportHeader::Tcp(t)) => {
            assert_eq!(
                t.checksum,
                t.calc_checksum_ipv4(&ip, &payload).unwrap(),
                "TCP checksum"
            );
        }
        Some(TransportHeader::Udp(u)) if u.checksum != 0 && !fragmented => {
            assert_eq!(
                u.checksum,
                u.calc_checksum_ipv4(&ip, &payload).unwrap(),
                "UDP checksum"
            );
        }
        Some(TransportHeader::Icmpv4(i)) => {
            assert_eq!(
                i.checksum,
                i.icmp_type.calc_checksum(&payload),
                "ICMP checksum"
            );
        }
        _ => {}
    }
    Parsed {
        ip,
        transport: p.transport,
        payload,
    }
}

pub fn ports(p: &Parsed) -> (u16, u16) {
    match p.transport.as_ref().expect("transport") {
        TransportHeader::Tcp(t) => (t.source_port, t.destination_port),
        TransportHeader::Udp(u) => (u.source_port, u.destination_port),
        TransportHeader::Icmpv4(i) => match i.icmp_type {
            etherparse::Icmpv4Type::EchoRequest(e) | etherparse::Icmpv4Type::EchoReply(e) => {
                (e.id, 0)
            }
            ref t => panic!("not echo: {t:?}"),
        },
        t => panic!("unexpected {t:?}"),
    }
}

/// The packet a pod sends through SNAT: asserts it was translated and passed, returns the
/// output and its external port.
pub fn snat_ok(env: &mut Env, ifindex: u32, frame: &[u8]) -> (Parsed, u16) {
    let out = env.egress(ifindex, frame);
    assert_eq!(out.verdict, TC_ACT_OK, "egress verdict");
    let p = parse_checked(&out.packet);
    assert_eq!(p.ip.source, NODE_IP, "translated source");
    let ext = ports(&p).0;
    (p, ext)
}

pub const TCP: u8 = IpNumber::TCP.0;
pub const UDP: u8 = IpNumber::UDP.0;
pub const ICMP: u8 = IpNumber::ICMP.0;

/// Asserts that `out` is the ICMP 3/13 the programs send back to a pod for `orig` (RFC 5508
/// REQ-8): from the pods' gateway to the pod, MACs swapped, quoting the IPv4 header and 8 bytes.
pub fn assert_unreach_13(out: &RunOutput, orig: &[u8]) {
    assert_eq!(
        out.verdict, TC_ACT_REDIRECT,
        "3/13 goes back out of the pod's veth"
    );
    let p = parse_checked(&out.packet);
    assert_eq!(
        (p.ip.source, p.ip.destination),
        (GATEWAY, [orig[26], orig[27], orig[28], orig[29]])
    );
    assert_eq!(&out.packet[0..6], &orig[6..12]);
    assert_eq!(&out.packet[6..12], &orig[0..6]);
    let Some(TransportHeader::Icmpv4(i)) = &p.transport else {
        panic!("not ICMP")
    };
    assert_eq!(
        i.icmp_type,
        etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::FilterProhibited
        )
    );
    let ihl = ((orig[14] & 0x0f) as usize) * 4;
    assert_eq!(
        p.payload,
        &orig[14..14 + ihl + 8],
        "quote: IPv4 header and 8 bytes"
    );
}
