//! SNAT end to end in the namespace lab: real sockets from pods through podgate to an IPv4
//! internet that only knows the node's address.

use std::{
    net::IpAddr,
    thread,
    time::{Duration, Instant},
};

mod common;

use common::{podgate_cli, start_daemon};
use podgate_lab::{ChildGuard, Family, Lab, NODE_V4};

fn lab(tag: &str, pods: usize) -> Lab {
    common::lab("s", tag, pods)
}

/// Starts the daemon; once it reports running, every pod's programs are attached.
fn podgate(lab: &Lab, log: &str) -> ChildGuard {
    let d = start_daemon(lab, log);
    let links = lab.pin_root().join("links").read_dir().map(|d| d.count()).unwrap_or(0);
    assert!(links >= 1 + 3 * lab.pods().len(), "only {links} attachments");
    d
}

#[test]
fn three_pods_reach_the_ipv4_endpoint_which_sees_only_the_node() {
    let lab = lab("three", 3);
    let _d = podgate(&lab, "podgate.log");
    // All pods at once, each with its three protocols.
    let probes: Vec<_> = thread::scope(|s| {
        let hs: Vec<_> = (0..3)
            .map(|i| {
                let lab = &lab;
                s.spawn(move || {
                    vec![lab.http(i, Family::V4), lab.udp_echo(i, Family::V4), lab.ping(i, Family::V4)]
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    for p in &probes {
        assert!(p.ok, "{p:?}");
        if p.kind != "ping" {
            assert_eq!(p.seen, Some(IpAddr::V4(NODE_V4)), "endpoint saw {:?}", p.seen);
        }
    }
    let seen = lab.endpoint_seen();
    assert_eq!(seen.len(), 6, "{seen:?}");
    assert!(seen.iter().all(|(_, a)| *a == IpAddr::V4(NODE_V4)), "a pod address leaked: {seen:?}");
    // One mapping per pod socket, all on the node's address, inside the configured range.
    let nat: serde_json::Value = serde_json::from_str(&podgate_cli(&lab, &["nat", "list", "--json"])).unwrap();
    let rows = nat.as_array().unwrap();
    assert!(rows.len() >= 9, "{nat}");
    for r in rows {
        assert_eq!(r["ext_addr"], NODE_V4.to_string());
        let port = r["ext_port"].as_u64().unwrap();
        if r["proto"] != "icmp" {
            assert!((32768..=65535).contains(&port), "{r}");
        }
    }
    let stats = podgate_cli(&lab, &["stats", "--json"]);
    assert!(stats.contains("\"rev_nat\""), "{stats}");
}

#[test]
fn iperf3_for_ten_seconds_through_snat() {
    let lab = lab("iperf", 1);
    let _d = podgate(&lab, "podgate.log");
    let out = lab
        .exec_in_for(
            lab.pod_ns(0),
            &["iperf3", "-c", "198.51.100.1", "-t", "10", "--connect-timeout", "3000", "--json"],
            Duration::from_secs(40),
        )
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("iperf3 JSON");
    assert!(out.status.success(), "iperf3 failed: {v}");
    let bytes = v["end"]["sum_received"]["bytes"].as_f64().unwrap();
    let secs = v["end"]["sum_received"]["seconds"].as_f64().unwrap();
    assert!(secs >= 9.5 && bytes > 1e6, "received {bytes} bytes in {secs} s");
}

#[test]
fn pmtu_discovery_works_through_podgate() {
    let lab = lab("pmtu", 1);
    let _d = podgate(&lab, "podgate.log");
    lab.set_path_mtu(1280).unwrap();
    let up = lab.upload(0, Family::V4.far(), 2_000_000);
    assert!(up.ok, "upload with path MTU 1280: {up:?}");
    // The pod itself learned the smaller MTU from the reverse-translated 3/4 error.
    let route = lab.exec_in(lab.pod_ns(0), &["ip", "route", "get", "203.0.113.10"]).unwrap();
    let route = String::from_utf8_lossy(&route.stdout);
    assert!(route.contains("mtu 1280"), "pod's route cache: {route}");
    let stats = podgate_cli(&lab, &["stats", "--json"]);
    assert!(stats.contains("icmp_error_translated"), "{stats}");
}

#[test]
fn a_tcp_transfer_survives_a_daemon_sigkill_and_restart() {
    let lab = lab("restart", 1);
    let d = podgate(&lab, "podgate-1.log");
    let iperf = lab
        .spawn_logged(
            lab.pod_ns(0),
            &["iperf3", "-c", "198.51.100.1", "-t", "6", "--connect-timeout", "3000", "--json", "--logfile",
              lab.state_dir().join("iperf.json").to_str().unwrap()],
            "iperf.out",
        )
        .unwrap();
    thread::sleep(Duration::from_secs(2));
    let before = podgate_cli(&lab, &["nat", "list", "--json"]);
    unsafe { libc::kill(d.pid() as i32, libc::SIGKILL) };
    thread::sleep(Duration::from_millis(500));
    let _d2 = podgate(&lab, "podgate-2.log");
    let after = podgate_cli(&lab, &["nat", "list", "--json"]);
    let ports = |s: &str| -> Vec<(String, u64)> {
        let v: serde_json::Value = serde_json::from_str(s).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| (format!("{}:{}", r["pod_addr"], r["pod_port"]), r["ext_port"].as_u64().unwrap()))
            .collect()
    };
    for m in ports(&before) {
        assert!(ports(&after).contains(&m), "mapping {m:?} lost across the restart");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut iperf = iperf;
    let status = loop {
        if let Some(st) = iperf.exited() {
            break st;
        }
        assert!(Instant::now() < deadline, "iperf3 hung");
        thread::sleep(Duration::from_millis(100));
    };
    let report = std::fs::read_to_string(lab.state_dir().join("iperf.json")).unwrap_or_default();
    assert!(status.success(), "iperf3 failed across the restart: {report}");
    let v: serde_json::Value = serde_json::from_str(&report).expect("iperf3 JSON");
    assert!(v["end"]["sum_received"]["seconds"].as_f64().unwrap() >= 5.5, "{report}");
}

/// Kernels before 6.6 have no tcx: the same dataplane on netlink clsact filters, with the TC
/// reverse path, survives a restart and is removed by `reset`.
#[test]
fn snat_on_netlink_tc_filters_and_the_tc_reverse_path() {
    let lab = lab("netlink", 1);
    let cfg = std::fs::read_to_string(lab.config_path()).unwrap();
    let cfg = cfg.replacen("[node]\n", "[node]\ntc_attach = \"netlink\"\nreverse_path = \"tc\"\n", 1);
    std::fs::write(lab.config_path(), cfg).unwrap();
    let d = podgate(&lab, "podgate-1.log");
    let filters = || {
        let o = lab.exec_in(&lab.node_ns(), &["tc", "filter", "show", "dev", "v4pod0", "ingress"]).unwrap();
        String::from_utf8_lossy(&o.stdout).lines().filter(|l| l.contains("pod_ingress")).count()
    };
    assert_eq!(filters(), 1, "expected one netlink filter on v4pod0");
    let status = podgate_cli(&lab, &["status", "--json"]);
    assert!(status.contains("v4pod0:pod_ingress:netlink") && status.contains("eni:uplink_tc:netlink"), "{status}");
    for probe in [lab.http(0, Family::V4), lab.ping(0, Family::V4)] {
        assert!(probe.ok, "{probe:?}");
    }
    drop(d);
    let _d2 = podgate(&lab, "podgate-2.log");
    assert_eq!(filters(), 1, "a restart must replace the filter, not add one");
    let probe = lab.udp_echo(0, Family::V4);
    assert!(probe.ok && probe.seen == Some(IpAddr::V4(NODE_V4)), "{probe:?}");
    podgate_cli(&lab, &["reset"]);
    assert_eq!(filters(), 0, "reset left a netlink filter behind");
}

/// `forwarding = "stack"`: translated packets go through the kernel's forwarding instead of a
/// FIB redirect; the pod veths must accept packets already carrying the node's address.
#[test]
fn snat_through_the_kernel_stack_forwarding() {
    let lab = lab("stack", 1);
    let cfg = std::fs::read_to_string(lab.config_path()).unwrap();
    std::fs::write(lab.config_path(), cfg.replacen("[node]\n", "[node]\nforwarding = \"stack\"\n", 1)).unwrap();
    let _d = podgate(&lab, "podgate.log");
    for probe in [lab.http(0, Family::V4), lab.udp_echo(0, Family::V4), lab.ping(0, Family::V4)] {
        assert!(probe.ok, "{probe:?}");
    }
    let stats = podgate_cli(&lab, &["stats", "--json"]);
    assert!(!stats.contains("\"fib_redirect\""), "stack mode must not redirect: {stats}");
}

/// The lab's `start_podgate` (used by `cargo xtask demo`) returns only when traffic is
/// translated: probes sent right away must work.
#[test]
fn lab_start_podgate_returns_when_traffic_is_translated() {
    let lab = lab("ready", 2);
    let _d = lab.start_podgate(std::path::Path::new(common::PODGATE), Duration::from_secs(30)).unwrap();
    let probes: Vec<_> = thread::scope(|s| {
        let hs: Vec<_> = (0..2).map(|i| { let lab = &lab; s.spawn(move || lab.http(i, Family::V4)) }).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for p in probes {
        assert!(p.ok && p.seen == Some(IpAddr::V4(NODE_V4)), "{p:?}");
    }
}

/// Issue 11 item 7: one count per pod (`pod_usage − pod_freed`), exact across a daemon restart.
/// The pod opens 6 UDP mappings; `pod list` shows 6 before and after a SIGKILL and restart (the
/// old per-veth `Pod::mappings` read 0 here), and `ct flush` brings it to 0.
#[test]
fn pod_mapping_count_is_exact_across_a_daemon_restart() {
    let lab = lab("usage", 1);
    let d = podgate(&lab, "podgate-1.log");
    let send = "import socket\nfor i in range(6):\n    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n    s.bind(('', 41000 + 2 * i))\n    s.sendto(b'x', ('198.51.100.1', 9))\n    s.close()\n";
    let o = lab.exec_in(lab.pod_ns(0), &["/usr/bin/python3", "-c", send]).unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let held = |lab: &Lab| -> (u64, usize) {
        let pods: serde_json::Value = serde_json::from_str(&podgate_cli(lab, &["pod", "list", "--json"])).unwrap();
        let nat: serde_json::Value = serde_json::from_str(&podgate_cli(lab, &["nat", "list", "--json"])).unwrap();
        let pod = &pods.as_array().unwrap()[0];
        (pod["mappings"].as_u64().unwrap(), nat.as_array().unwrap().len())
    };
    assert_eq!(held(&lab), (6, 6), "before the restart");
    unsafe { libc::kill(d.pid() as i32, libc::SIGKILL) };
    thread::sleep(Duration::from_millis(500));
    let _d2 = podgate(&lab, "podgate-2.log");
    assert_eq!(held(&lab), (6, 6), "after the restart");
    // The pod's state flushed: the count follows the deletions (`pod_freed`).
    podgate_cli(&lab, &["ct", "flush", "--pod", lab.pods()[0].name.as_str()]);
    assert_eq!(held(&lab), (0, 0), "after ct flush");
}
