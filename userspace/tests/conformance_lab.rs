//! The conformance checks that need real sockets, the daemon and its timers (namespace lab).
//! Each prints one row of the table `cargo xtask conformance` shows; the exact-packet checks are
//! in tests/tests/conformance_pkt.rs. Long timers are checked with `podgate gc --advance SECS`
//! (one GC pass as if that much time had passed) against the default and configured timeouts,
//! and short configured ones also in real time.

mod labnode;

use std::{thread, time::Duration};

use labnode::{Node, inet, seen_port};
use podgate_lab::{
    FAR_V4, INTERNET_V4, NODE_V4,
    conformance::{all, check},
};

#[test]
fn udp_and_icmp_with_default_config() {
    let n = Node::up("udp", 2, "", "");
    let (p0, p1) = (n.lab.pod_ns(0).to_string(), n.lab.pod_ns(1).to_string());
    let far = format!("{FAR_V4}:7");
    let mut r = vec![];

    r.push(("4787 REQ-1", check("4787 REQ-1", "UDP endpoint-independent mapping (real sockets)", || {
        let out = n.py(&p0, &["udp", "41500", "2", "0", &inet(), &far]);
        let (a, b) = (seen_port(&out, &inet()), seen_port(&out, &far));
        assert_eq!(a, b, "{out}");
        format!("pod :41500 seen as {NODE_V4}:{a} by {INTERNET_V4} and {FAR_V4}")
    })));

    r.push(("4787 REQ-3", check("4787 REQ-3", "no port overloading: two pods, same port, same destination", || {
        let a = seen_port(&n.py(&p0, &["udp", "41234", "2", "0", &inet()]), &inet());
        let b = seen_port(&n.py(&p1, &["udp", "41234", "2", "0", &inet()]), &inet());
        assert_ne!(a, b);
        format!("pod0 :41234 → {a}, pod1 :41234 → {b}")
    })));

    r.push(("4787 REQ-3a", check("4787 REQ-3a", "port range kept (<1024 stays <1024)", || {
        let mut seen = vec![];
        for sport in [53u16, 500, 1023, 1024, 40001] {
            let p = seen_port(&n.py(&p0, &["udp", &sport.to_string(), "2", "0", &inet()]), &inet());
            assert_eq!(sport < 1024, p < 1024, "{sport} → {p}");
            seen.push(format!("{sport}→{p}"));
        }
        seen.join(", ")
    })));

    r.push(("4787 REQ-4", check("4787 REQ-4", "UDP port parity kept", || {
        let mut seen = vec![];
        for sport in [41010u16, 41011, 41012, 41013, 700, 701] {
            let p = seen_port(&n.py(&p0, &["udp", &sport.to_string(), "2", "0", &inet()]), &inet());
            assert_eq!(sport % 2, p % 2, "{sport} → {p}");
            seen.push(format!("{sport}→{p}"));
        }
        seen.join(", ")
    })));

    r.push(("4787 REQ-8", check("4787 REQ-8", "filtering: address-dependent by default", || {
        let _l = n.spawn_py(&p0, "adf.log", &["udp", "41700", "2", "6", &inet()]);
        assert!(n.wait_log("adf.log", "reply ", Duration::from_secs(5)), "{}", n.log("adf.log"));
        let ext = seen_port(&n.log("adf.log"), &inet());
        let dst = format!("{NODE_V4}:{ext}");
        n.py(&n.lab.internet_ns(), &["send", "4000", &dst, "same-address-other-port"]);
        n.py(&n.lab.far_ns(), &["send", "4000", &dst, "other-address"]);
        thread::sleep(Duration::from_millis(500));
        let log = n.log("adf.log");
        assert!(log.contains("same-address-other-port"), "a new port of the contacted address was filtered: {log}");
        assert!(!log.contains("other-address"), "an address never contacted got through: {log}");
        format!("{INTERNET_V4}:4000 (contacted address, new port) delivered; {FAR_V4}:4000 (never contacted) dropped")
    })));

    r.push(("4787 REQ-9", check("4787 REQ-9", "hairpinning: pod to another pod's external address:port", || {
        // Both pods learn their external ports, then each sends to the other's: with
        // address-dependent filtering the second of the two must get through.
        let x1 = seen_port(&n.py(&p1, &["udp", "41801", "2", "0", &inet()]), &inet());
        let out0 = n.py(&p0, &["udp", "41800", "1", "0", &inet(), &format!("{NODE_V4}:{x1}")]);
        let x0 = seen_port(&out0, &inet());
        let _l = n.spawn_py(&p0, "hairpin.log", &["udp", "41800", "0", "4"]);
        thread::sleep(Duration::from_millis(300));
        n.py(&p1, &["udp", "41801", "1", "0", &format!("{NODE_V4}:{x0}")]);
        thread::sleep(Duration::from_millis(500));
        let log = n.log("hairpin.log");
        assert!(log.contains("got "), "pod1 → {NODE_V4}:{x0} never reached pod0 (pod0 had sent to {NODE_V4}:{x1}): {log}");
        format!("pod1 → {NODE_V4}:{x0} delivered to pod0: {}", log.trim())
    })));
    // 9a is only meaningful once hairpinned packets arrive: checked on the same delivery.
    r.push(("4787 REQ-9a", check("4787 REQ-9a", "hairpinned source is the external address:port", || {
        let log = n.log("hairpin.log");
        let line = log.lines().find(|l| l.starts_with("got ")).unwrap_or_else(|| panic!("nothing hairpinned arrived: {log}"));
        let src = line.split_whitespace().nth(1).unwrap();
        assert!(src.starts_with(&format!("{NODE_V4}:")), "pod0 saw the internal source {src}");
        format!("pod0 saw {src}")
    })));

    r.push(("5508 REQ-1", check("5508 REQ-1", "ICMP echo from pods and its replies", || {
        let o = n.lab.exec_in(&p0, &["ping", "-c", "2", "-i", "0.2", "-W", "1", "-n", &FAR_V4.to_string()]).unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
        let m = n.mapping("icmp", 0).is_some() || serde_json::from_str::<serde_json::Value>(&n.cli(&["nat", "list", "--json"])).unwrap()
            .as_array().unwrap().iter().any(|r| r["proto"] == "icmp");
        assert!(m, "no ICMP mapping");
        "ping pod0 → 203.0.113.10: 2/2 replies, through an ICMP mapping".to_string()
    })));

    // Timers last: `gc --advance` expires everything idle for longer than that.
    r.push(("4787 REQ-5", check("4787 REQ-5/5c", "UDP mapping lives ≥ 120 s and by default ≥ 300 s idle", || {
        let _l = n.spawn_py(&p0, "timer.log", &["udp", "41900", "2", "20", &inet()]);
        assert!(n.wait_log("timer.log", "reply ", Duration::from_secs(5)), "{}", n.log("timer.log"));
        let ext = seen_port(&n.log("timer.log"), &inet());
        let dst = format!("{NODE_V4}:{ext}");
        let idle = n.mapping("udp", 41900).expect("mapping")["idle_secs"].as_u64().unwrap();
        let mut said = vec![];
        for (advance, data) in [(118 - idle, "after-119"), (298 - idle, "after-299")] {
            n.gc_advance(advance);
            n.py(&n.lab.internet_ns(), &["send", "4001", &dst, data]);
            assert!(n.wait_log("timer.log", data, Duration::from_secs(3)), "reply {data} not delivered: {}", n.log("timer.log"));
            said.push(format!("reply after {}-{} s idle delivered", advance + idle, advance + idle + 1));
        }
        n.gc_advance(302);
        assert!(n.mapping("udp", 41900).is_none(), "mapping outlived its 300 s timeout");
        n.py(&n.lab.internet_ns(), &["send", "4001", &dst, "after-expiry"]);
        thread::sleep(Duration::from_millis(500));
        assert!(!n.log("timer.log").contains("after-expiry"), "delivered after expiry");
        said.push("gone at 302 s".into());
        said.join("; ")
    })));

    r.push(("5508 REQ-2", check("5508 REQ-2", "ICMP query session lives ≥ 60 s", || {
        let o = n.lab.exec_in(&p1, &["ping", "-c", "1", "-W", "1", "-n", &INTERNET_V4.to_string()]).unwrap();
        assert!(o.status.success());
        let v: serde_json::Value = serde_json::from_str(&n.cli(&["nat", "list", "--json"])).unwrap();
        let row = v.as_array().unwrap().iter().find(|r| r["proto"] == "icmp" && r["pod_addr"] == n.lab.pod(1).ipv4.to_string()).cloned().expect("icmp mapping");
        let id = row["pod_port"].as_u64().unwrap() as u16;
        let idle = row["idle_secs"].as_u64().unwrap();
        n.gc_advance(58 - idle);
        assert!(n.mapping("icmp", id).is_some(), "ICMP mapping gone before 60 s");
        n.gc_advance(62);
        assert!(n.mapping("icmp", id).is_none(), "ICMP mapping never expires");
        format!("id {id}: kept at 58-59 s idle, gone at 62 s (translation with a mapping: 5508 REQ-1a row)")
    })));
    all(&r);
}

#[test]
fn tcp_with_default_config() {
    let n = Node::up("tcp", 1, "", "");
    let p0 = n.lab.pod_ns(0).to_string();
    let _srv = n.spawn_py(&n.lab.internet_ns(), "echo-srv.log", &["tcp-echo-server", "7007"]);
    let mut r = vec![];

    r.push(("5382 REQ-1", check("5382 REQ-1", "TCP endpoint-independent mapping (real sockets)", || {
        let a = n.py(&p0, &["http", "42000", &format!("{INTERNET_V4}:80")]);
        let b = n.py(&p0, &["http", "42000", &format!("{FAR_V4}:80")]);
        let port = |s: &str| s.split_whitespace().nth(2).unwrap().parse::<u16>().unwrap();
        assert!(a.contains(&NODE_V4.to_string()) && b.contains(&NODE_V4.to_string()), "{a} {b}");
        assert_eq!(port(&a), port(&b), "{a} / {b}");
        format!("pod :42000 seen as {NODE_V4}:{} by both endpoints", port(&a))
    })));

    r.push(("5382 REQ-4", check("5382 REQ-4", "unsolicited inbound SYN: no answer for ≥ 6 s", || {
        // To the external port of a live TCP mapping (from a remote it never talked to) and to
        // an unused port of the SNAT range.
        let a = n.py(&p0, &["http", "42010", &format!("{INTERNET_V4}:80")]);
        let ext = a.split_whitespace().nth(2).unwrap().to_string();
        let mut said = vec![];
        for port in [ext.as_str(), "50001"] {
            let out = n.py(&n.lab.far_ns(), &["syn", &format!("{NODE_V4}:{port}"), "7"]);
            let secs: f64 = out.split_whitespace().nth(1).unwrap().parse().unwrap();
            assert!(!out.starts_with("connected"), "unsolicited SYN to :{port} was accepted: {out}");
            assert!(out.starts_with("timeout") || secs >= 6.0, "unsolicited SYN to :{port} answered after {secs:.2} s: {out}");
            said.push(format!(":{port} {}", out.trim()));
        }
        said.join("; ")
    })));

    r.push(("5382 REQ-5", check("5382 REQ-5", "TCP established ≥ 7440 s idle, transitory ≥ 240 s", || {
        let go = n.lab.state_dir().join("go-est");
        let _c = n.spawn_py(&p0, "est.log", &["tcp-hold", "42020", &format!("{INTERNET_V4}:7007"), go.to_str().unwrap(), "0"]);
        assert!(n.wait_log("est.log", "first seen", Duration::from_secs(5)), "{}", n.log("est.log"));
        // A half-open attempt toward a host that never answers: SYN-sent (transitory).
        let _syn = n.spawn_py(&p0, "halfopen.log", &["syn", "203.0.113.99:80", "3"]);
        assert!(n.wait_log("halfopen.log", "timeout", Duration::from_secs(6)), "{}", n.log("halfopen.log"));
        let half: Vec<_> = serde_json::from_str::<serde_json::Value>(&n.cli(&["ct", "list", "--json"])).unwrap()
            .as_array().unwrap().iter().filter(|r| r["remote_addr"] == "203.0.113.99").cloned().collect();
        assert_eq!(half.len(), 1, "{half:?}");
        assert_eq!(half[0]["state"], "syn_out");
        let hp = half[0]["pod_port"].as_u64().unwrap() as u16;
        let idle = half[0]["idle_secs"].as_u64().unwrap();
        n.gc_advance(238 - idle);
        assert_eq!(n.flows(hp).len(), 1, "half-open session gone before 240 s");
        n.gc_advance(242);
        assert!(n.flows(hp).is_empty(), "half-open session outlived 240 s");
        let est = n.flows(42020);
        assert_eq!(est[0]["state"], "established", "{est:?}");
        let idle = est[0]["idle_secs"].as_u64().unwrap();
        n.gc_advance(7438 - idle);
        std::fs::write(&go, "").unwrap();
        assert!(n.wait_log("est.log", "second seen", Duration::from_secs(5)), "connection broken after 7439 s idle: {}", n.log("est.log"));
        n.gc_advance(7442);
        // The exchange above refreshed it; from now: gone at 7442 s.
        assert!(n.flows(42020).is_empty(), "established flow outlived 7440 s");
        "SYN-sent kept at 238-239 s, gone at 242 s; established connection still works after 7438-7439 s idle, gone at 7442 s".to_string()
    })));

    r.push(("7857 §2.2 timer", check("7857 §2.2 timer", "after an RST the session is kept 4 min", || {
        let go = n.lab.state_dir().join("go-rst");
        std::fs::write(&go, "").unwrap();
        let _c = n.spawn_py(&p0, "rst.log", &["tcp-hold", "42030", &format!("{INTERNET_V4}:7007"), go.to_str().unwrap(), "1"]);
        assert!(n.wait_log("rst.log", "closed", Duration::from_secs(5)), "{}", n.log("rst.log"));
        thread::sleep(Duration::from_millis(200));
        let f = n.flows(42030);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0]["state"], "rst", "{f:?}");
        let idle = f[0]["idle_secs"].as_u64().unwrap();
        n.gc_advance(238 - idle);
        assert_eq!(n.flows(42030).len(), 1, "reset session deleted before 4 min");
        n.gc_advance(242);
        assert!(n.flows(42030).is_empty(), "reset session never expires");
        "state rst after the pod's RST; kept at 238-239 s, gone at 242 s".to_string()
    })));
    all(&r);
}

/// Configured TCP and ICMP timeouts take effect in the daemon's GC: every value here is below
/// its default (and below the RFC minimum, which a MAY/SHOULD-configurable timer allows the
/// operator), so an entry that outlives it proves the configured value was not used.
#[test]
fn configured_tcp_and_icmp_timeouts() {
    let n = Node::up("tmo", 1, "", "\n[timeouts]\ntcp_established = 900\ntcp_transitory = 50\nicmp = 20\n");
    let p0 = n.lab.pod_ns(0).to_string();
    let _srv = n.spawn_py(&n.lab.internet_ns(), "echo-srv.log", &["tcp-echo-server", "7007"]);
    // The server says nothing when ready; the connection below comes too soon without this.
    let listening = (0..100).any(|_| {
        let o = n.lab.exec_in(&n.lab.internet_ns(), &["ss", "-Htln", "sport = :7007"]).unwrap();
        !o.stdout.is_empty() || {
            thread::sleep(Duration::from_millis(50));
            false
        }
    });
    assert!(listening, "echo server not listening after 5 s: {}", n.log("echo-srv.log"));
    let mut r = vec![];

    r.push(("5508 REQ-2a", check("5508 REQ-2a", "[timeouts] icmp = 20: the ICMP query session expires at 20 s", || {
        let o = n.lab.exec_in(&p0, &["ping", "-c", "1", "-W", "1", "-n", &INTERNET_V4.to_string()]).unwrap();
        assert!(o.status.success());
        let v: serde_json::Value = serde_json::from_str(&n.cli(&["nat", "list", "--json"])).unwrap();
        let row = v.as_array().unwrap().iter().find(|r| r["proto"] == "icmp").cloned().expect("icmp mapping");
        let id = row["pod_port"].as_u64().unwrap() as u16;
        let idle = row["idle_secs"].as_u64().unwrap();
        n.gc_advance(18 - idle);
        assert!(n.mapping("icmp", id).is_some(), "ICMP mapping gone before the configured 20 s");
        n.gc_advance(22);
        assert!(n.mapping("icmp", id).is_none(), "ICMP mapping outlived the configured 20 s");
        format!("id {id}: kept at 18-19 s idle, gone at 22 s (default 60 s: the 5508 REQ-2 row)")
    })));

    r.push(("5382 REQ-5a", check("5382 REQ-5a", "[timeouts] tcp_transitory = 50, tcp_established = 900 take effect", || {
        let go = n.lab.state_dir().join("go-est");
        let _c = n.spawn_py(&p0, "est.log", &["tcp-hold", "42020", &format!("{INTERNET_V4}:7007"), go.to_str().unwrap(), "0"]);
        assert!(n.wait_log("est.log", "first seen", Duration::from_secs(5)), "{}", n.log("est.log"));
        let _syn = n.spawn_py(&p0, "halfopen.log", &["syn", "203.0.113.99:80", "3"]);
        assert!(n.wait_log("halfopen.log", "timeout", Duration::from_secs(6)), "{}", n.log("halfopen.log"));
        let half: Vec<_> = serde_json::from_str::<serde_json::Value>(&n.cli(&["ct", "list", "--json"])).unwrap()
            .as_array().unwrap().iter().filter(|r| r["remote_addr"] == "203.0.113.99").cloned().collect();
        assert_eq!(half.len(), 1, "{half:?}");
        assert_eq!(half[0]["state"], "syn_out");
        let hp = half[0]["pod_port"].as_u64().unwrap() as u16;
        let idle = half[0]["idle_secs"].as_u64().unwrap();
        n.gc_advance(48 - idle);
        assert_eq!(n.flows(hp).len(), 1, "half-open session gone before the configured 50 s");
        n.gc_advance(52);
        assert!(n.flows(hp).is_empty(), "half-open session outlived the configured 50 s");
        let est = n.flows(42020);
        assert_eq!(est[0]["state"], "established", "{est:?}");
        let idle = est[0]["idle_secs"].as_u64().unwrap();
        n.gc_advance(898 - idle);
        std::fs::write(&go, "").unwrap();
        assert!(n.wait_log("est.log", "second seen", Duration::from_secs(5)), "connection broken after 899 s idle: {}", n.log("est.log"));
        n.gc_advance(902);
        assert!(n.flows(42020).is_empty(), "established flow outlived the configured 900 s");
        "SYN-sent kept at 48-49 s, gone at 52 s; established still works after 898-899 s idle, gone at 902 s (defaults: the 5382 REQ-5 row)".to_string()
    })));
    all(&r);
}

#[test]
fn endpoint_independent_filtering_and_outbound_refresh() {
    // EIF configured; UDP timeout 3 s with a GC pass every second, to watch refresh in real time.
    let n = Node::up("eif", 2, "filtering = \"endpoint-independent\"\n", "\n[timeouts]\nudp = 3\n\n[daemon]\ngc_interval = 1\n");
    let p0 = n.lab.pod_ns(0).to_string();
    let mut r = vec![];

    r.push(("4787 REQ-8 EIF", check("4787 REQ-8 EIF", "filtering: endpoint-independent when configured", || {
        let _l = n.spawn_py(&p0, "eif.log", &["udp", "43000", "2", "2", &inet()]);
        assert!(n.wait_log("eif.log", "reply ", Duration::from_secs(5)), "{}", n.log("eif.log"));
        let ext = seen_port(&n.log("eif.log"), &inet());
        n.py(&n.lab.far_ns(), &["send", "4000", &format!("{NODE_V4}:{ext}"), "other-address"]);
        assert!(n.wait_log("eif.log", "other-address", Duration::from_secs(2)), "EIF: an unknown remote was filtered: {}", n.log("eif.log"));
        format!("{FAR_V4} (never contacted) reached the pod through {NODE_V4}:{ext}")
    })));

    r.push(("4787 REQ-6", check("4787 REQ-6", "outbound packets refresh the mapping", || {
        // 8 datagrams 1 s apart: 7 s > the 3 s timeout, the mapping must never change.
        let out = n.py(&p0, &["udp-repeat", "43100", "8", "1", &inet()]);
        let ports: Vec<&str> = out.lines().filter(|l| l.starts_with("reply")).map(|l| l.split_whitespace().nth(3).unwrap()).collect();
        assert_eq!(ports.len(), 8, "{out}");
        assert!(ports.iter().all(|p| *p == ports[0]), "mapping changed while refreshed: {ports:?}");
        assert!(n.mapping("udp", 43100).is_some(), "mapping gone right after the last refresh");
        // Control: idle, the same mapping does expire.
        thread::sleep(Duration::from_secs(6));
        assert!(n.mapping("udp", 43100).is_none(), "mapping never expires (the refresh check proves nothing)");
        format!("8 sends over 8 s, timeout 3 s: one port {} throughout; expired 6 s after the last", ports[0])
    })));
    all(&r);
}

#[test]
fn df_packet_too_big_for_the_uplink() {
    let n = Node::up("df", 1, "", "");
    let ok = check("4787 REQ-13", "DF=1 too big for the outside: ICMP 3/4 with the MTU to the pod", || {
        // The uplink (both ends) drops to 1280; the pod's veth keeps 1500.
        for (ns, dev) in [(n.lab.node_ns(), "eni"), (n.lab.internet_ns(), "node")] {
            let o = n.lab.exec_in(&ns, &["ip", "link", "set", dev, "mtu", "1280"]).unwrap();
            assert!(o.status.success());
        }
        let o = n
            .lab
            .exec_in(n.lab.pod_ns(0), &["ping", "-c", "2", "-W", "1", "-M", "do", "-s", "1400", "-n", &INTERNET_V4.to_string()])
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        assert!(text.contains("mtu = 1280") || text.contains("mtu=1280") || text.contains("Frag needed"), "no fragmentation-needed reached the pod: {text}");
        let route = n.lab.exec_in(n.lab.pod_ns(0), &["ip", "route", "get", &INTERNET_V4.to_string()]).unwrap();
        let route = String::from_utf8_lossy(&route.stdout).into_owned();
        assert!(route.contains("mtu 1280"), "pod did not learn the MTU: {route}");
        format!("pod learned mtu 1280: {}", route.trim())
    });
    let ok_a = check("4787 REQ-13a", "DF=0 too big for the outside: fragmented, and the far end reassembles it", || {
        // The far end's reassembly counter (per namespace) proves the datagram left in fragments.
        let reasm = |ns: &str| -> u64 {
            let o = n.lab.exec_in(ns, &["cat", "/proc/net/snmp"]).unwrap();
            let t = String::from_utf8_lossy(&o.stdout).into_owned();
            let mut ip = t.lines().filter(|l| l.starts_with("Ip:"));
            let (names, values) = (ip.next().unwrap(), ip.next().unwrap());
            let i = names.split_whitespace().position(|w| w == "ReasmOKs").expect("ReasmOKs");
            values.split_whitespace().nth(i).unwrap().parse().unwrap()
        };
        let inet_ns = n.lab.internet_ns();
        let before = reasm(&inet_ns);
        let o = n
            .lab
            .exec_in(n.lab.pod_ns(0), &["ping", "-c", "2", "-W", "2", "-M", "dont", "-s", "1400", "-n", &INTERNET_V4.to_string()])
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(o.status.success() && text.contains("2 received"), "1428-byte DF=0 echo over a 1280 uplink: {text}");
        let got = reasm(&inet_ns) - before;
        assert!(got >= 2, "the far end reassembled {got} datagrams, not the 2 requests: {text}");
        format!("2/2 replies to 1428-byte DF=0 echoes over mtu 1280; the far end reassembled {got} datagrams (the order of the fragments the node sent is not checked)")
    });
    all(&[("4787 REQ-13", ok), ("4787 REQ-13a", ok_a)]);
}

#[test]
fn fragments_out_of_order_with_real_sockets() {
    use labnode::frag::{Order, deliver};
    let n = Node::up("frag", 1, "", "");
    let ok = check("4787 REQ-14 lab", "inbound fragments in and out of order reach a pod's UDP socket (daemon slow path)", || {
        let mut said = vec![];
        let cases = [(Order::InOrder, false, 44100u16), (Order::Reverse, false, 44102), (Order::InOrder, true, 44104), (Order::Reverse, true, 44106)];
        for (order, conntrack, sport) in cases {
            if conntrack {
                // As on a node running kube-proxy: defragmentation in PREROUTING.
                let o = n
                    .lab
                    .exec_in(&n.lab.node_ns(), &["iptables", "-A", "FORWARD", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP"])
                    .unwrap();
                assert!(o.status.success(), "iptables: {}", String::from_utf8_lossy(&o.stderr));
            }
            let frags = deliver(&n, 0, sport, 3000, order, sport).unwrap_or_else(|e| panic!("{order:?}, conntrack {conntrack}: {e}"));
            said.push(format!("{frags} fragments {order:?}{}", if conntrack { " with conntrack" } else { "" }));
        }
        format!("3000-byte UDP datagrams delivered whole: {}", said.join(", "))
    });
    all(&[("4787 REQ-14 lab", ok)]);
}
