//! Layer-2 bypass, neighbour-discovery exfiltration and TTL expiry through the running daemon,
//! with crafted frames from inside a pod (scapy, `/usr/bin/python3`) and real sockets.

mod common;

use std::{thread, time::Duration};

use common::{counter, podgate_cli, start_daemon};
use podgate_lab::Lab;

const PROBE: &str = include_str!("l2ndp/probe.py");

/// pod0 may send UDP to the internet on port 5555 only (and nothing else, ICMPv6 included).
const GROUPS: &str = r#"
[security_groups.limited]
egress = [{ proto = "udp", ports = "5555", cidr = "2001:db8:ffff::/64" }]
"#;

struct Probe<'a> {
    lab: &'a Lab,
    py: String,
}

impl Probe<'_> {
    fn run(&self, ns: &str, args: &[&str]) -> String {
        let mut argv = vec!["/usr/bin/python3", self.py.as_str()];
        argv.extend_from_slice(args);
        let o = self.lab.exec_in_for(ns, &argv, Duration::from_secs(30)).expect("probe");
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(o.status.success(), "probe {args:?}: {out} {}", String::from_utf8_lossy(&o.stderr));
        out
    }

    /// Sends the crafted frames (interface in the pod, kind) from pod0, in order, while the
    /// internet listens; what arrived (lines "got PROTO SRC pgmark-KIND"). Each batch ends with a
    /// control frame that must arrive, so a frame missing before it was dropped, not missed.
    fn arrivals(&self, tag: &str, frames: &[(&str, &str)]) -> String {
        let inet = self.lab.internet_ns();
        let log = format!("listen-{tag}.log");
        let _l = self
            .lab
            .spawn_logged(&inet, &["/usr/bin/python3", "-u", &self.py, "listen", "30", "5555", "6666"], &log)
            .expect("listener");
        let path = self.lab.state_dir().join(&log);
        for _ in 0..200 {
            if std::fs::read_to_string(&path).unwrap_or_default().contains("ready") {
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let pod = self.lab.pod(0);
        let (v6, v4) = (pod.ipv6.to_string(), pod.ipv4.to_string());
        for iface in ["eth0", "v4if0"] {
            let kinds: Vec<&str> = frames.iter().filter(|(i, _)| *i == iface).map(|(_, k)| *k).collect();
            if kinds.is_empty() {
                continue;
            }
            let host = if iface == "eth0" { &pod.veth } else { &pod.veth_v4 };
            let o = self.lab.exec_in(&self.lab.node_ns(), &["ip", "-o", "link", "show", host]).unwrap();
            let link = String::from_utf8_lossy(&o.stdout).into_owned();
            let mac = link.split_whitespace().skip_while(|w| *w != "link/ether").nth(1).unwrap_or_else(|| panic!("no MAC for {host}: {link}")).to_string();
            let mut args = vec!["send", iface, mac.as_str(), v6.as_str(), v4.as_str()];
            args.extend(kinds);
            self.run(self.lab.pod_ns(0), &args);
        }
        let last = format!("pgmark-{}", frames.last().unwrap().1);
        for _ in 0..100 {
            if std::fs::read_to_string(&path).unwrap_or_default().contains(&last) {
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let seen = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(seen.contains(&last), "the control frame {last} did not arrive: {seen}");
        seen
    }
}

fn setup(tag: &str) -> (Lab, common::RemoveOnDrop) {
    let lab = common::lab("l", tag, 1);
    let cfg = std::fs::read_to_string(lab.config_path()).unwrap();
    let cfg = cfg.replacen("veth_v4 = \"v4pod0\"\n", "veth_v4 = \"v4pod0\"\nsecurity_groups = [\"limited\"]\n", 1);
    std::fs::write(lab.config_path(), format!("{cfg}\n{GROUPS}")).unwrap();
    let py = lab.state_dir().join("l2ndp.py");
    std::fs::write(&py, PROBE).unwrap();
    (lab, common::RemoveOnDrop(py))
}

#[test]
fn double_tagged_frames_do_not_bypass_the_pod_veth() {
    let (lab, py) = setup("l2");
    let _d = start_daemon(&lab, "podgate.log");
    let p = Probe { lab: &lab, py: py.0.to_str().unwrap().to_string() };
    let tagged = [
        ("eth0", "qq-v6-spoof"),
        ("eth0", "adq-v6-spoof"),
        ("eth0", "qq-v6-denied"),
        ("eth0", "v6-allowed"),
        ("v4if0", "qq-v4-spoof"),
        ("v4if0", "adq-v4-spoof"),
        ("v4if0", "v4-allowed"),
    ];
    let before = counter(&lab, "drop_vlan_tagged");
    let seen = p.arrivals("tagged", &tagged);
    for (_, kind) in tagged.iter().filter(|(_, k)| k.contains('q')) {
        assert!(!seen.contains(&format!("pgmark-{kind}")), "{kind} reached the internet: {seen}");
    }
    assert!(seen.contains("pgmark-v6-allowed"), "the allowed untagged datagram did not arrive: {seen}");
    assert!(counter(&lab, "drop_vlan_tagged") >= before + 5, "tagged drops not counted: {}", podgate_cli(&lab, &["stats"]));
    // The same traffic untagged: spoofed and denied do not arrive, the allowed one does.
    let plain = [("eth0", "v6-spoof"), ("eth0", "v6-denied"), ("eth0", "v6-allowed")];
    let seen = p.arrivals("plain", &plain);
    assert!(!seen.contains("pgmark-v6-spoof") && !seen.contains("pgmark-v6-denied"), "{seen}");
}

#[test]
fn forged_ndp_does_not_leave_and_real_ndp_works() {
    let (lab, py) = setup("nd");
    let _d = start_daemon(&lab, "podgate.log");
    let p = Probe { lab: &lab, py: py.0.to_str().unwrap().to_string() };
    let before = counter(&lab, "drop_sg6_egress");
    let forged = [("eth0", "ns-global"), ("eth0", "na-global"), ("eth0", "mld-global"), ("eth0", "v6-allowed")];
    let seen = p.arrivals("forged", &forged);
    for (_, kind) in &forged[..3] {
        assert!(!seen.contains(&format!("pgmark-{kind}")), "{kind} reached the internet: {seen}");
    }
    assert!(counter(&lab, "drop_sg6_egress") >= before + 3, "forged NDP not denied by the group");
    // Real NDP: with its neighbour cache flushed, the pod resolves its gateway again and its
    // allowed datagram (a real socket) gets through.
    let pod_ns = lab.pod_ns(0).to_string();
    lab.exec_in(&pod_ns, &["ip", "-6", "neigh", "flush", "dev", "eth0"]).unwrap();
    let ndp_before = counter(&lab, "sg6_ndp_pass");
    let inet = lab.internet_ns();
    let _l = lab.spawn_logged(&inet, &["/usr/bin/python3", "-u", &p.py, "listen", "6", "5555"], "real.log").unwrap();
    thread::sleep(Duration::from_millis(500));
    lab.exec_in(&pod_ns, &["/usr/bin/python3", "-c", "import socket; s=socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.sendto(b'pgmark-real-ndp', ('2001:db8:ffff::1', 5555))"]).unwrap();
    thread::sleep(Duration::from_secs(2));
    let seen = std::fs::read_to_string(lab.state_dir().join("real.log")).unwrap_or_default();
    assert!(seen.contains("pgmark-real-ndp"), "the pod's datagram after resolving its gateway did not arrive: {seen}");
    let neigh = String::from_utf8_lossy(&lab.exec_in(&pod_ns, &["ip", "-6", "neigh", "show", "dev", "eth0"]).unwrap().stdout).into_owned();
    assert!(neigh.contains("fe80::1") && !neigh.contains("FAILED"), "gateway not resolved: {neigh}");
    assert!(counter(&lab, "sg6_ndp_pass") > ndp_before, "no NDP passed");
}

#[test]
fn ttl_1_from_a_pod_gets_time_exceeded_from_its_gateway() {
    let (lab, py) = setup("tt");
    let _d = start_daemon(&lab, "podgate.log");
    let p = Probe { lab: &lab, py: py.0.to_str().unwrap().to_string() };
    let pod_ns = lab.pod_ns(0).to_string();
    let out = p.run(&pod_ns, &["ttl", "4", "198.51.100.1", "7", "1"]);
    // ICMP origin 2 (SO_EE_ORIGIN_ICMP), 11/0, from the gateway the pod routes through.
    assert!(out.contains("error origin=2 type=11 code=0 from=169.254.172.1"), "TTL 1: {out}");
    assert!(counter(&lab, "drop_ttl_expired") >= 1);
    let mappings: serde_json::Value = serde_json::from_str(&podgate_cli(&lab, &["nat", "list", "--json"])).unwrap();
    assert!(mappings.as_array().unwrap().is_empty(), "a mapping from an expired packet: {mappings}");
    // TTL 2 toward the far endpoint still crosses the node, translated, and dies at the internet
    // router, whose 11/0 to the node is translated back: the pod hears that router.
    let out = p.run(&pod_ns, &["ttl", "4", "203.0.113.10", "7", "2"]);
    assert!(out.contains("error origin=2 type=11 code=0 from=198.51.100.1"), "TTL 2: {out}");
    // IPv6 is not translated: the node answers hop limit 1 itself, and the pod hears it (ICMPv6
    // origin 3, time exceeded 3/0) through the tracked flow.
    let out = p.run(&pod_ns, &["ttl", "6", "2001:db8:ffff::1", "5555", "1"]);
    assert!(out.contains("error origin=3 type=3 code=0"), "hop limit 1: {out}");
    eprintln!("IPv6 hop limit 1 answered: {out}");
}
