//! Security-group rules through the real programs: every rule kind in both directions, the AWS
//! defaults, and a pod with 1000 rules.
mod sg_common;

use podgate::sg::{Direction, RuleRef};
use podgate_common::{event_kind, sg::DIR_INGRESS, stats::Counter};
use sg_common::*;

const KINDS: &str = r#"
    { proto = "tcp", ports = "443", cidr = "::/0" },
    { proto = "udp", ports = "8000-8080", cidr = "2001:db8:aa::/48" },
    { proto = "icmpv6", icmp_type = 128, cidr = "::/0" },
    { proto = 47, cidr = "2001:db8:ff::/64" },
    { proto = "any", group = "db" },
    { proto = "tcp", ports = "9000", cidr = "node" },
"#;

fn kinds_fixture(dir: &str) -> Fx {
    Fx::new(&format!("[security_groups.web]\n{dir} = [{KINDS}]\n[security_groups.db]\n"), &["web"])
}

/// Runs every rule kind in one direction; `to_pod`: ingress rules (the remote is the source).
fn rule_kinds(to_pod: bool) {
    let mut fx = kinds_fixture(if to_pod { "ingress" } else { "egress" });
    let ok = Counter::Sg6Allowed;
    let no = if to_pod { Counter::DropSg6Ingress } else { Counter::DropSg6Egress };
    // (remote, pod) → (src, dst) in the packet's direction.
    let ends = |remote: &'static str| if to_pod { (remote, POD) } else { (POD, remote) };
    let t = |remote, port: u16, sport: u16| {
        let (s, d) = ends(remote);
        tcp(s, d, sport, port, true)
    };
    let u = |remote, port: u16, sport: u16| {
        let (s, d) = ends(remote);
        udp(s, d, sport, port)
    };

    // Protocol + single port, any remote.
    fx.check(to_pod, &t(REMOTE, 443, 40001), true, ok, "tcp/443 from ::/0");
    fx.check(to_pod, &t(REMOTE, 444, 40002), false, no, "tcp/444 not allowed");
    fx.check(to_pod, &u(REMOTE, 443, 40003), false, no, "udp/443 is not tcp/443");
    // Port range + CIDR.
    fx.check(to_pod, &u("2001:db8:aa::5", 8000, 40004), true, ok, "udp/8000 in range");
    fx.check(to_pod, &u("2001:db8:aa:ff::5", 8080, 40005), true, ok, "udp/8080 in range");
    fx.check(to_pod, &u("2001:db8:aa::5", 8081, 40006), false, no, "udp/8081 out of range");
    fx.check(to_pod, &u("2001:db8:ab::5", 8000, 40007), false, no, "udp/8000 outside the /48");
    // ICMPv6 type.
    let (s, d) = ends(REMOTE);
    fx.check(to_pod, &echo_request(s, d, 11), true, ok, "echo request allowed by type");
    fx.check(to_pod, &icmp(s, d, 139, 0, [0; 4], b"node info"), false, no, "other ICMPv6 type");
    // Protocol number + CIDR.
    let (s, d) = ends("2001:db8:ff::9");
    fx.check(to_pod, &raw(s, d, 47, &[0; 8]), true, ok, "GRE from the /64");
    let (s, d) = ends("2001:db8:fe::9");
    fx.check(to_pod, &raw(s, d, 47, &[0; 8]), false, no, "GRE from elsewhere");
    // Another group: its pods' /128s, any protocol.
    fx.check(to_pod, &u(DB_POD, 5353, 40008), true, ok, "udp from a db pod");
    fx.check(to_pod, &t(DB_POD, 1, 40009), true, ok, "tcp from a db pod");
    fx.check(to_pod, &u(OTHER_POD, 5353, 40010), false, no, "udp from a pod outside db");
    // The node's /80.
    fx.check(to_pod, &t(OTHER_POD, 9000, 40011), true, ok, "tcp/9000 from the node /80");
    fx.check(to_pod, &t(REMOTE, 9000, 40012), false, no, "tcp/9000 from outside the node");
    // A more specific prefix still carries the wider rules (longest-prefix match returns only it).
    fx.check(to_pod, &t("2001:db8:ff::9", 443, 40013), true, ok, "tcp/443 from inside the GRE /64");
    fx.check(to_pod, &t("2001:db8:ff::9", 444, 40014), false, no, "tcp/444 from inside the GRE /64");

    // Allowed flows are tracked, with the rule that allowed them.
    let ct = fx.ct();
    assert_eq!(ct.len(), 9, "{ct:?}");
    let dir = if to_pod { Direction::Ingress } else { Direction::Egress };
    let (flow, entry) = ct.iter().find(|(f, _)| (f.remote_port == 443 || f.pod_port == 443) && f.remote_addr == a(REMOTE)).unwrap();
    assert_eq!(flow.pod_addr, a(POD));
    assert_eq!(flow.remote_addr, a(REMOTE));
    assert_eq!(entry.origin == DIR_INGRESS, to_pod);
    assert_eq!((entry.pod_id, entry.pod_ifindex), (POD_ID, POD_IFINDEX));
    assert_eq!(fx.compiled.rules[entry.rule as usize], RuleRef { group: "web".into(), dir, index: 0 });
    let dbflow = ct.iter().find(|(f, _)| f.remote_addr == a(DB_POD) && f.proto == 17).unwrap();
    assert_eq!(fx.compiled.rules[dbflow.1.rule as usize].index, 4);

    // Every drop was reported with its 5-tuple.
    let ev = fx.events();
    assert_eq!(ev.len(), 9);
    let e = ev.iter().find(|e| e.dport == 444).expect("event of tcp/444");
    assert_eq!((e.kind, e.reason, e.pod_id, e.proto, e.sport), (event_kind::DROP, no as u32, POD_ID, 6, 40002));
}

#[test]
fn ingress_rule_kinds() {
    rule_kinds(true);
}

#[test]
fn egress_rule_kinds() {
    rule_kinds(false);
}

/// Rules of one direction say nothing about the other.
#[test]
fn directions_are_separate() {
    let mut fx = kinds_fixture("ingress");
    fx.check(false, &tcp(POD, REMOTE, 40000, 443, true), false, Counter::DropSg6Egress, "egress has no rules");
    let mut fx = kinds_fixture("egress");
    fx.check(true, &tcp(REMOTE, POD, 40000, 443, true), false, Counter::DropSg6Ingress, "ingress has no rules");
}

/// AWS defaults for a pod without groups: nothing unsolicited in, everything out.
#[test]
fn pod_without_groups() {
    let mut fx = Fx::new("[security_groups.web]\ningress = [{ proto = \"any\", cidr = \"::/0\" }]", &[]);
    fx.check(true, &tcp(REMOTE, POD, 40000, 80, true), false, Counter::DropSg6Ingress, "unsolicited in");
    fx.check(true, &udp(REMOTE, POD, 40000, 53), false, Counter::DropSg6Ingress, "unsolicited udp in");
    fx.check(false, &tcp(POD, REMOTE, 40001, 22, true), true, Counter::Sg6Allowed, "anything out");
    assert_eq!(fx.ct().len(), 1);
    fx.check(true, &tcp(REMOTE, POD, 22, 40001, false), true, Counter::Sg6Tracked, "its reply");
}

/// A veth without a pod record is never passed.
#[test]
fn unknown_pod_is_dropped() {
    let mut fx = Fx::new("", &[]);
    let pkt = tcp(POD, REMOTE, 1, 2, true);
    fx.check(false, &pkt, true, Counter::Sg6Allowed, "known pod");
    let mut m: aya::maps::HashMap<_, u32, podgate_common::Pod> =
        aya::maps::HashMap::try_from(fx.h.ebpf.map_mut("pods").unwrap()).unwrap();
    m.remove(&POD_IFINDEX).unwrap();
    fx.check(false, &pkt, false, Counter::DropUnknownPod, "no pod record");
    fx.check(true, &pkt, false, Counter::DropUnknownPod, "no pod record, inbound");
}

/// 16 groups of 63 rules (1008 for the pod): every rule still matches, what no rule allows is
/// denied, and the cost of a miss through all 16 groups is printed.
#[test]
fn pod_with_1000_rules() {
    let mut toml = String::new();
    let mut names = Vec::new();
    for g in 0..16u16 {
        names.push(format!("g{g}"));
        toml.push_str(&format!("[security_groups.g{g}]\ningress = [\n"));
        for i in 0..63u16 {
            let port = 10000 + g * 64 + i;
            if i % 2 == 0 {
                toml.push_str(&format!("{{ proto = \"tcp\", ports = \"{port}\", cidr = \"::/0\" }},\n"));
            } else {
                toml.push_str(&format!("{{ proto = \"udp\", ports = \"{port}\", cidr = \"2001:db8:99:{i:x}::/64\" }},\n"));
            }
        }
        toml.push_str("]\n");
    }
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut fx = Fx::new(&toml, &refs);
    assert_eq!(fx.compiled.rules.len(), 1008);
    let (ok, no) = (Counter::Sg6Allowed, Counter::DropSg6Ingress);
    for g in 0..16u16 {
        for i in 0..63u16 {
            let port = 10000 + g * 64 + i;
            let sport = 20000 + g * 64 + i;
            if i % 2 == 0 {
                fx.check(true, &tcp(REMOTE, POD, sport, port, true), true, ok, &format!("tcp/{port}"));
                fx.check(true, &udp(REMOTE, POD, sport, port), false, no, &format!("udp/{port}"));
            } else {
                let inside = format!("2001:db8:99:{i:x}::7");
                let inside: &'static str = Box::leak(inside.into_boxed_str());
                fx.check(true, &udp(inside, POD, sport, port), true, ok, &format!("udp/{port} from {inside}"));
                fx.check(true, &udp("2001:db8:98::7", POD, sport, port), false, no, &format!("udp/{port} from outside"));
            }
        }
        // The unused port of each group.
        let port = 10000 + g * 64 + 63;
        fx.check(true, &tcp(REMOTE, POD, 30000, port, true), false, no, &format!("tcp/{port} unused"));
    }
    let miss = tcp(REMOTE, POD, 30001, 9, true);
    let ns = fx.h.bench("pod_egress", &miss, POD_IFINDEX, 20000).unwrap();
    let hit = tcp(REMOTE, POD, 30002, 10000 + 15 * 64 + 62, true);
    let _ = fx.pod_receives(&hit);
    let tracked = fx.h.bench("pod_egress", &hit, POD_IFINDEX, 20000).unwrap();
    // The same miss for a pod with only the first group, for scale.
    let first_group = toml.split("[security_groups.g1]").next().unwrap().to_owned();
    let mut small = Fx::new(&first_group, &["g0"]);
    let one = small.h.bench("pod_egress", &miss, POD_IFINDEX, 20000).unwrap();
    eprintln!(
        "1008 rules: a miss through 16 groups {ns:.0} ns/packet (1 group of 63 rules: {one:.0}), a tracked flow {tracked:.0} ns/packet"
    );
}
