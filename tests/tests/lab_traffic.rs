//! Traffic through the lab without podgate: IPv6 works end to end, IPv4 from pods must not
//! (the node does not masquerade and the internet drops sources it cannot route back to).

use std::net::IpAddr;

use podgate_tests::lab::{self, Family, NODE_V4};

#[test]
fn lab_ipv6_pods_reach_the_internet() {
    let lab = lab::test_lab("v6", 3);
    lab.on_all_pods(|pod| {
        let want = IpAddr::V6(pod.ipv6);
        for probe in [
            lab.http(pod.index, Family::V6),
            lab.udp_echo(pod.index, Family::V6),
        ] {
            assert!(probe.ok, "{probe:?}");
            assert_eq!(
                probe.seen,
                Some(want),
                "endpoint saw the wrong source: {probe:?}"
            );
        }
        let ping = lab.ping(pod.index, Family::V6);
        assert!(ping.ok, "{ping:?}");
        // And one router hop further.
        let far = lab.http_to(pod.index, Family::V6.far());
        assert!(far.ok && far.seen == Some(want), "{far:?}");
    });
    // The endpoint's own log agrees: one HTTP and one UDP request per pod, from its /128.
    let seen = lab.endpoint_seen();
    for pod in lab.pods() {
        for (proto, want) in [("tcp", 2), ("udp", 1)] {
            let n = seen
                .iter()
                .filter(|(p, a)| p == proto && *a == IpAddr::V6(pod.ipv6))
                .count();
            assert_eq!(n, want, "{proto} from {}: {seen:?}", pod.name);
        }
    }
}

#[test]
fn lab_ipv4_from_pods_does_not_reach_the_internet_without_podgate() {
    let lab = lab::test_lab("v4", 2);
    // The endpoint itself answers IPv4 (from the node's address), so a failure below is the
    // missing translation and not a broken endpoint.
    let out = lab
        .exec_in(
            &lab.node_ns(),
            &["curl", "-sS", "--max-time", "3", "http://198.51.100.1/"],
        )
        .unwrap();
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        body.starts_with(&format!("seen {NODE_V4} ")),
        "node to endpoint: {body:?}"
    );

    lab.on_all_pods(|pod| {
        // The same clients do work from this pod (over IPv6), so the failures below are IPv4's.
        for probe in [
            lab.udp_echo(pod.index, Family::V6),
            lab.ping(pod.index, Family::V6),
        ] {
            assert!(probe.ok, "{probe:?}");
        }
        for probe in [
            lab.http(pod.index, Family::V4),
            lab.udp_echo(pod.index, Family::V4),
            lab.ping(pod.index, Family::V4),
            lab.http_to(pod.index, Family::V4.far()),
        ] {
            assert!(
                !probe.ok,
                "IPv4 from {} got through untranslated: {probe:?}",
                pod.name
            );
        }
    });
    let seen = lab.endpoint_seen();
    assert!(
        seen.iter()
            .filter(|(_, a)| a.is_ipv4())
            .all(|(_, a)| *a == IpAddr::V4(NODE_V4)),
        "the endpoint saw an IPv4 source other than the node's: {seen:?}"
    );
    assert!(
        !seen
            .iter()
            .any(|(_, a)| matches!(a, IpAddr::V4(v4) if v4.octets()[..2] == [169, 254]))
    );
}

#[test]
fn lab_iperf3_runs_over_ipv6() {
    let lab = lab::test_lab("iperf", 1);
    let run = lab.iperf3(0, Family::V6, 1);
    assert!(run.ok, "{run:?}");
}
