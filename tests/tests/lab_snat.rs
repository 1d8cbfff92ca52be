//! Issue 3's lab acceptance for podgate's SNAT: podgate runs in the lab's node namespace and
//! pods' IPv4 reaches the internet as the node's IPv4.
//!
//! Ignored (and counted as such) until `podgate run` exists in this tree; then remove the
//! `#[ignore]`s. Run them now with `cargo test -p podgate-tests --test lab_snat -- --ignored`;
//! `PODGATE_BIN` overrides the binary (default: target/debug/podgate, build it first with
//! `cargo build -p podgate`).

use std::{net::IpAddr, path::PathBuf, time::Duration};

use podgate_tests::lab::{self, ChildGuard, Family, Lab, NODE_V4};

fn podgate_bin() -> PathBuf {
    std::env::var_os("PODGATE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/podgate")
        })
}

/// A lab with podgate running on its node; panics (the test fails) if podgate cannot run.
fn lab_with_podgate(tag: &str, pods: usize) -> (Lab, ChildGuard) {
    let bin = podgate_bin();
    assert!(
        lab::podgate_has_daemon(&bin),
        "{} has no `run --config` (build it: cargo build -p podgate)",
        bin.display()
    );
    let lab = lab::test_lab(tag, pods);
    let daemon = lab
        .start_podgate(&bin, Duration::from_secs(20))
        .expect("podgate up");
    (lab, daemon)
}

#[test]
#[ignore = "needs `podgate run` (issue 3)"]
fn lab_snat_pods_reach_ipv4_as_the_node() {
    let (lab, _daemon) = lab_with_podgate("snat", 3);
    let node = IpAddr::V4(NODE_V4);
    lab.on_all_pods(|pod| {
        for target in [Family::V4.endpoint(), Family::V4.far()] {
            for probe in [
                lab.http_to(pod.index, target),
                lab.udp_echo_to(pod.index, target),
            ] {
                assert!(probe.ok, "{probe:?}\npodgate log:\n{}", lab.podgate_log());
                assert_eq!(probe.seen, Some(node), "{probe:?}");
            }
            let ping = lab.ping_to(pod.index, target);
            assert!(ping.ok, "{ping:?}");
        }
    });
    let seen = lab.endpoint_seen();
    assert_eq!(seen.len(), 3 * 2 * 2, "{seen:?}");
    assert!(
        seen.iter().all(|(_, a)| *a == node),
        "the endpoints saw: {seen:?}"
    );
}

#[test]
#[ignore = "needs `podgate run` (issue 3)"]
fn lab_snat_iperf3_runs_10s_through_the_nat() {
    let (lab, _daemon) = lab_with_podgate("snatperf", 1);
    let run = lab.iperf3(0, Family::V4, 10);
    assert!(run.ok, "{run:?}\npodgate log:\n{}", lab.podgate_log());
}

#[test]
#[ignore = "needs `podgate run` (issue 3)"]
fn lab_snat_pmtu_discovery_works_through_podgate() {
    let (lab, _daemon) = lab_with_podgate("snatpmtu", 1);
    lab.set_path_mtu(1280).unwrap();
    let up = lab.upload(0, Family::V4.far(), 2_000_000);
    assert!(
        up.ok,
        "upload with path MTU 1280: {up:?}\npodgate log:\n{}",
        lab.podgate_log()
    );
    assert_eq!(up.seen, Some(IpAddr::V4(NODE_V4)));
}
