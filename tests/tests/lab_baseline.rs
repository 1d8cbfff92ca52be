//! The lab in `iptables` mode (the VPC CNI's `SNAT --random-fully`, done by the kernel): pods'
//! IPv4 reaches both endpoints as the node's IPv4, and PMTU discovery works through the NAT.
//! This is the bar podgate's translation is held to in the same lab, and it shows that the
//! lab's IPv4 path is complete except for the translation itself.

use std::{net::IpAddr, time::Duration};

use podgate_tests::lab::{self, Family, Lab, LabSpec, Mode, NODE_V4};

fn baseline(tag: &str, pods: usize) -> Lab {
    lab::sweep_orphans();
    Lab::up(LabSpec::new(lab::test_lab_name(tag), pods).with_mode(Mode::Iptables)).expect("lab up")
}

#[test]
fn lab_iptables_baseline_translates_pod_ipv4_to_the_node() {
    let lab = baseline("ipt", 3);
    let node = IpAddr::V4(NODE_V4);
    for pod in lab.pods() {
        for target in [Family::V4.endpoint(), Family::V4.far()] {
            for probe in [
                lab.http_to(pod.index, target),
                lab.udp_echo_to(pod.index, target),
            ] {
                assert!(probe.ok, "{probe:?}");
                assert_eq!(probe.seen, Some(node), "{probe:?}");
            }
            let ping = lab.ping_to(pod.index, target);
            assert!(ping.ok, "{ping:?}");
        }
    }
    let seen = lab.endpoint_seen();
    assert_eq!(seen.len(), 3 * 2 * 2);
    assert!(seen.iter().all(|(_, a)| *a == node), "{seen:?}");
}

#[test]
fn lab_pmtu_discovery_works_through_the_kernel_nat() {
    let lab = baseline("pmtu", 1);
    lab.set_path_mtu(1280).unwrap();
    for fam in [Family::V4, Family::V6] {
        let up = lab.upload(0, fam.far(), 2_000_000);
        assert!(up.ok, "{fam} upload with path MTU 1280: {up:?}");
    }
    // The pod learned the path MTU from the (translated) ICMP error.
    let route = lab
        .exec_in(lab.pod_ns(0), &["ip", "route", "get", "203.0.113.10"])
        .unwrap();
    let route = String::from_utf8_lossy(&route.stdout);
    assert!(route.contains("mtu 1280"), "{route}");
}

/// The negative control of the test above: with the ICMP errors dropped on the way, the same
/// upload stalls (a PMTU black hole), so the upload check really depends on PMTU discovery.
#[test]
fn lab_pmtu_black_hole_is_detected() {
    let lab = baseline("blackhole", 1);
    lab.set_path_mtu(1280).unwrap();
    let drop_icmp = [
        "iptables",
        "-A",
        "OUTPUT",
        "-p",
        "icmp",
        "--icmp-type",
        "fragmentation-needed",
        "-j",
        "DROP",
    ];
    let out = lab.exec_in(&lab.internet_ns(), &drop_icmp).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let up = lab.upload_within(0, Family::V4.far(), 2_000_000, Duration::from_secs(4));
    assert!(
        !up.ok,
        "upload finished although PMTU discovery was impossible: {up:?}"
    );
}
