//! An inbound flood through one mapping into `ct4`, through the running daemon with real sockets
//! (issue 11, item 4): pod 0 talks UDP to the internet endpoint, then that endpoint's address
//! sends from 20,000 source ports to pod 0's external port. Every datagram passes the
//! address-dependent filter (the remote is the one pod 0 wrote to) and would create a `ct4`
//! entry: more than the whole table (`[limits] conntrack = 16384`). The pod's bound
//! (`[limits] pod_flows = 2000`, inbound flows refused from 7/8 of it) must stop the flood, pod
//! 1 must still open new flows, pod 0's own flow must still work, the refusals must be counted
//! (`drop_nat4_pod_flows`), and the never-answered entries must expire after
//! `[timeouts] unanswered = 5`.

mod labnode;

use std::{
    net::Ipv4Addr,
    thread,
    time::{Duration, Instant},
};

use labnode::{Node, inet, seen_port};
use podgate_lab::{INTERNET_V4, NODE_V4};

const POD_FLOWS: u64 = 2000;
const FLOOD: u32 = 20_000;

/// Sends one datagram from each of COUNT source ports (BASE, BASE+1, ...) to DST:PORT, in at most
/// LIMIT seconds.
const FLOOD_PY: &str = r#"
import socket, sys, time
dst, port, base, count, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
end, sent = time.time() + limit, 0
for i in range(count):
    if time.time() > end:
        break
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((sys.argv[6], base + i))
    s.sendto(b"flood", (dst, port))
    s.close()
    sent += 1
print("sent", sent, flush=True)
"#;

fn answered(out: &str) -> usize {
    out.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{out}"))
}

fn stat(n: &Node, name: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(&n.cli(&["stats", "--json"])).unwrap();
    v.as_array().unwrap().iter().find(|r| r["counter"] == name).and_then(|r| r["value"].as_u64())
}

/// `ct4` entries of the pod at `addr`, and its held `flows4` from `pod list`.
fn pod_flows(n: &Node, addr: Ipv4Addr) -> (u64, u64) {
    let ct: serde_json::Value = serde_json::from_str(&n.cli(&["ct", "list", "--json"])).unwrap();
    let listed = ct.as_array().unwrap().iter().filter(|r| r["pod_addr"] == addr.to_string()).count() as u64;
    let pods: serde_json::Value = serde_json::from_str(&n.cli(&["pod", "list", "--json"])).unwrap();
    let held = pods.as_array().unwrap().iter().find(|r| r["ipv4"] == addr.to_string()).and_then(|r| r["flows4"].as_u64());
    (listed, held.unwrap_or_else(|| panic!("pod {addr} not listed: {pods}")))
}

#[test]
fn inbound_flood_through_one_mapping_is_bounded_per_pod() {
    let mut n = Node::up(
        "ct4fl",
        2,
        "",
        &format!("\n[limits]\nconntrack = 16384\npod_flows = {POD_FLOWS}\n\n[timeouts]\nunanswered = 5\n\n[daemon]\ngc_interval = 1\n"),
    );
    let (p0, p1) = (n.lab.pod_ns(0).to_string(), n.lab.pod_ns(1).to_string());
    let pod0 = n.lab.pod(0).ipv4;
    let out = n.py(&p0, &["udp", "41000", "2", "0", &inet()]);
    let ext = seen_port(&out, &inet());

    let script = n.lab.state_dir().join("ct4flood.py");
    std::fs::write(&script, FLOOD_PY).unwrap();
    let started = Instant::now();
    let o = n
        .lab
        .exec_in_for(
            &n.lab.internet_ns(),
            &["/usr/bin/python3", script.to_str().unwrap(), &NODE_V4.to_string(), &ext.to_string(), "20000", &FLOOD.to_string(), "60", &INTERNET_V4.to_string()],
            Duration::from_secs(90),
        )
        .expect("flood");
    let sent = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "flood: {sent} {}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(sent.trim(), format!("sent {FLOOD}"), "the flood was cut short");
    eprintln!("flood of {FLOOD} datagrams in {:?}", started.elapsed());

    // The pod holds at most its bound; everything past 7/8 of it was refused and counted.
    let (listed, held) = pod_flows(&n, pod0);
    // A racing insert on another CPU may pass the check once each.
    let ncpus = aya::util::nr_cpus().unwrap() as u64;
    assert!(held <= POD_FLOWS - POD_FLOWS / 8 + ncpus, "pod 0 holds {held} IPv4 flows ({listed} listed)");
    assert!(listed <= POD_FLOWS, "{listed} ct4 entries of pod 0");
    // Another pod still opens new IPv4 flows, and the flooded pod's own flow still works.
    assert_eq!(answered(&n.py(&p1, &["udp-many", "46000", "10", &inet()])), 10, "pod 1's new flows refused during the flood");
    let again = n.py(&p0, &["udp", "41000", "2", "0", &inet()]);
    assert_eq!(seen_port(&again, &inet()), ext, "pod 0's own flow changed port: {again}");
    let refused = stat(&n, "drop_nat4_pod_flows").expect("no drop_nat4_pod_flows counter");
    assert!(refused >= u64::from(FLOOD) - POD_FLOWS, "only {refused} refusals counted");
    assert!(n.daemon.as_mut().unwrap().exited().is_none(), "the daemon died: {}", n.log("podgate.log"));

    // The pod never answered the flood: its entries expire after `unanswered` (5 s), long before
    // UDP's 300 s, and are credited back; pod 0's own (answered) flow stays.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (listed, held) = loop {
        let (listed, held) = pod_flows(&n, pod0);
        if listed <= 2 || Instant::now() > deadline {
            break (listed, held);
        }
        thread::sleep(Duration::from_millis(500));
    };
    assert!(listed <= 2, "{listed} unanswered ct4 entries left after 20 s");
    assert_eq!(held, listed, "pod 0 charged {held} for {listed} flows");
    assert!(!n.flows(41000).is_empty(), "pod 0's own flow expired with the flood");
    let again = n.py(&p0, &["udp", "41000", "2", "0", &inet()]);
    assert_eq!(seen_port(&again, &inet()), ext, "{again}");
}
