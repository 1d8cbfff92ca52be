//! Inbound IPv4 fragments through the real daemon (RFC 4787 REQ-14): a pod's UDP socket gets a
//! datagram sent as fragments in order and last-fragment-first; without the daemon's slow path
//! (switched off, or the daemon SIGKILLed) the out-of-order datagram is lost and counted. The
//! node's own fragmented datagrams (no pod mapping) reach the node's sockets the same way.

mod labnode;

use std::{thread, time::Duration};

use labnode::{
    Node,
    frag::{Order, deliver, deliver_to_node},
};
use podgate_lab::NODE_V4;

fn counter(n: &Node, name: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(&n.cli(&["stats", "--json", "--all"])).unwrap();
    v.as_array().unwrap().iter().find(|r| r["counter"] == name).and_then(|r| r["value"].as_u64()).unwrap_or(0)
}

fn metric(n: &Node, line_start: &str) -> Option<u64> {
    let o = n.lab.exec_in(&n.lab.node_ns(), &["curl", "-sS", "--max-time", "2", "http://127.0.0.1:9542/metrics"]).unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    text.lines().find_map(|l| l.strip_prefix(line_start)).and_then(|v| v.trim().parse().ok())
}

#[test]
fn fragments_reach_the_pod_in_order_and_last_first() {
    let n = Node::up("frag", 1, "", "");
    let sent = deliver(&n, 0, 44000, 3000, Order::InOrder, 0x3101).unwrap();
    assert_eq!(sent, 3);
    assert_eq!(counter(&n, "frag_punted"), 0, "in order, nothing is an orphan");
    let sent = deliver(&n, 0, 44002, 3000, Order::Reverse, 0x3102).unwrap();
    assert_eq!(sent, 3);
    assert_eq!(counter(&n, "frag_punted"), 2, "the two fragments ahead of the first");
    assert_eq!(counter(&n, "frag_punt_released"), 1);
    assert_eq!(counter(&n, "drop_frag_orphan"), 0);
    // In order, the program translated the two later fragments; last first, the daemon handed
    // them back to it once the first had come.
    assert_eq!(counter(&n, "frag_translated"), 4);
    // The daemon's side: both sent on, nothing left.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while metric(&n, "podgate_frag_punt_total{outcome=\"released\"} ") != Some(2) {
        assert!(std::time::Instant::now() < deadline, "metrics: released never 2");
        thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(metric(&n, "podgate_frag_punt_held "), Some(0));
    // Larger datagrams: 6 fragments, 5 of them ahead of the first.
    deliver(&n, 0, 44004, 8000, Order::Reverse, 0x3103).unwrap();
    assert_eq!(counter(&n, "frag_punted"), 7);
    assert_eq!(counter(&n, "frag_translated"), 9);
}

#[test]
fn without_the_slow_path_the_out_of_order_datagram_is_lost() {
    let n = Node::up("nofrag", 1, "", "\n[daemon]\nfrag_punt = false\n");
    let e = deliver(&n, 0, 44010, 3000, Order::Reverse, 0x3201).unwrap_err();
    assert!(e.contains("never reached"), "{e}");
    assert_eq!(counter(&n, "drop_frag_orphan"), 2);
    assert_eq!(counter(&n, "frag_punted"), 0);
    deliver(&n, 0, 44012, 3000, Order::InOrder, 0x3202).expect("in order still works");
    // The node's own datagrams alike: in order they pass, last first their orphans are dropped
    // (not left to the node's reassembly: `reverse::later_fragment` says why).
    deliver_to_node(&n, 40014, 3000, Order::InOrder, 0x3203).expect("node, in order");
    let e = deliver_to_node(&n, 40016, 3000, Order::Reverse, 0x3204).unwrap_err();
    assert!(e.contains("never reached"), "{e}");
    assert_eq!(counter(&n, "drop_frag_orphan"), 4);
}

/// A datagram sent last fragment first, now that the daemon is gone: lost, its two early
/// fragments counted as plain orphans, nothing punted into a ring nobody reads.
fn orphans_dropped_without_daemon(n: &Node, sport: u16) {
    let before = counter(n, "frag_punted");
    let e = deliver(n, 0, sport, 3000, Order::Reverse, sport).unwrap_err();
    assert!(e.contains("never reached"), "{e}");
    assert_eq!(counter(n, "frag_punted"), before, "punted without a daemon");
    assert_eq!(counter(n, "drop_frag_orphan"), 2);
}

#[test]
fn a_killed_daemon_stops_punting_within_seconds() {
    let mut n = Node::up("fragkill", 1, "", "");
    deliver(&n, 0, 44020, 3000, Order::Reverse, 0x3301).unwrap();
    let d = n.daemon.take().unwrap();
    // SAFETY: the daemon is our child.
    unsafe { libc::kill(d.pid() as i32, libc::SIGKILL) };
    drop(d);
    thread::sleep(podgate::daemon::frag_punt::ALIVE_AHEAD + Duration::from_secs(1));
    orphans_dropped_without_daemon(&n, 44022);
}

/// Kubernetes nodes usually load conntrack (kube-proxy), whose defragmentation in PREROUTING
/// gathers every forwarded fragment: all of a datagram's fragments must meet there.
#[test]
fn fragments_reach_the_pod_with_conntrack_on_the_node() {
    let n = Node::up("fragct", 1, "", "");
    let o = n
        .lab
        .exec_in(&n.lab.node_ns(), &["iptables", "-A", "FORWARD", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP"])
        .unwrap();
    assert!(o.status.success(), "iptables: {}", String::from_utf8_lossy(&o.stderr));
    deliver(&n, 0, 44030, 3000, Order::InOrder, 0x3401).expect("in order");
    deliver(&n, 0, 44032, 3000, Order::Reverse, 0x3402).expect("last first");
    assert_eq!(counter(&n, "frag_punted"), 2);
}

#[test]
fn a_stopped_daemon_stops_punting_at_once() {
    let mut n = Node::up("fragstop", 1, "", "");
    deliver(&n, 0, 44040, 3000, Order::Reverse, 0x3501).unwrap();
    // SIGTERM: the daemon clears its deadline on the way out, no grace period.
    n.daemon.take().unwrap().stop();
    orphans_dropped_without_daemon(&n, 44042);
}

/// With `reverse_path = "tc"` the orphans are punted by `uplink_tc`; the daemon still runs them
/// through `uplink_xdp` (loaded, not attached), which shares the translation.
#[test]
fn fragments_reach_the_pod_on_the_tc_reverse_path() {
    let n = Node::up("fragtc", 1, "reverse_path = \"tc\"\n", "");
    let status = n.cli(&["status", "--json"]);
    assert!(status.contains("eni:uplink_tc") && !status.contains("eni:uplink_xdp"), "{status}");
    deliver(&n, 0, 44050, 3000, Order::Reverse, 0x3601).expect("last first");
    deliver(&n, 0, 44052, 3000, Order::InOrder, 0x3602).expect("in order");
    assert_eq!(counter(&n, "frag_punted"), 2);
    assert_eq!(counter(&n, "frag_translated"), 4);
    deliver_to_node(&n, 40054, 3000, Order::Reverse, 0x3603).expect("node, last first");
    // Each released fragment counts twice: in the daemon's run of `uplink_xdp`, then in
    // `uplink_tc` as the live frame enters the stack on the uplink.
    assert_eq!(counter(&n, "frag_passed"), 4);
    deliver_to_node(&n, 40056, 3000, Order::InOrder, 0x3604).expect("node, in order");
    assert_eq!(counter(&n, "frag_passed"), 6);
    assert_eq!(counter(&n, "frag_translated"), 4, "a node fragment was translated");
}

/// Issue 3: fragmented datagrams for the node itself (its resolver's large answer, `ping -s
/// 3000`) lost every fragment after the first as an orphan.
#[test]
fn the_nodes_own_fragments_reach_the_node() {
    let n = Node::up("fragnode", 1, "", "");
    assert_eq!(deliver_to_node(&n, 40050, 3000, Order::InOrder, 0x3701), Ok(3));
    assert_eq!(counter(&n, "frag_passed"), 2);
    assert_eq!(counter(&n, "frag_punted"), 0);
    deliver_to_node(&n, 40052, 3000, Order::Reverse, 0x3702).expect("last first");
    assert_eq!(counter(&n, "frag_punted"), 2);
    assert_eq!(counter(&n, "frag_punt_released"), 1);
    // The daemon ran the two held fragments through the program again: passed, not translated.
    assert_eq!(counter(&n, "frag_passed"), 4);
    let ping = ["ping", "-q", "-n", "-c", "3", "-i", "0.2", "-W", "2", "-s", "3000", &NODE_V4.to_string()];
    let o = n.lab.exec_in(&n.lab.internet_ns(), &ping.iter().map(|s| s.as_ref()).collect::<Vec<&str>>()).unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && out.contains(" 0% packet loss"), "ping -s 3000 to the node: {out}");
    assert_eq!(counter(&n, "frag_passed"), 4 + 3 * 2, "each echo request is 3 fragments");
    assert_eq!(counter(&n, "frag_translated"), 0);
    assert_eq!(counter(&n, "drop_frag_orphan"), 0);
    // A pod's datagram still reaches the pod, not the node.
    deliver(&n, 0, 44060, 3000, Order::Reverse, 0x3703).expect("pod, last first");
    assert_eq!(counter(&n, "frag_translated"), 2);
}
