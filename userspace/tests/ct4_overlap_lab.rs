//! Cross-pod delivery through a per-flow port (issue 11, item 5; RFC 4787 REQ-3), through the
//! running daemon with real sockets. A 64-port `snat_ports` range (the smallest the daemon takes)
//! makes the overlap easy to find: pod A holds port X toward R (the internet endpoint); pod B
//! opens mappings toward another remote (the far endpoint) until one gets the same X, so that
//! mapping's flow to R gets a port of its own, Z. R then writes to Z from a
//! new source port, B answers, and R writes back to the port B's answer came from. Both of R's
//! datagrams must reach B, and none pod A: B's answers must leave from Z, not from its mapping's
//! X, which R associates with A.

mod labnode;

use std::{
    thread,
    time::{Duration, Instant},
};

use labnode::{Node, inet, seen_port};
use podgate_lab::{FAR_V4, NODE_V4};

/// Pod B: from SPORT, one datagram to DST (prints the echo's `reply` line), then for LISTEN s
/// prints every datagram and answers those starting with "for-b".
const B_PY: &str = r#"
import socket, sys, time
sport, dst, listen = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
h, p = dst.rsplit(":", 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", sport))
s.settimeout(2)
s.sendto(b"hello", (h, int(p)))
print("reply", dst, s.recvfrom(2048)[0].decode(errors="replace").strip(), flush=True)
end = time.time() + listen
while time.time() < end:
    s.settimeout(max(0.05, end - time.time()))
    try:
        data, src = s.recvfrom(2048)
    except socket.timeout:
        continue
    print("got", "%s:%d" % src, data.decode(errors="replace"), flush=True)
    if data.startswith(b"for-b"):
        s.sendto(b"ans " + data, src)
print("done", flush=True)
"#;

/// Pod B: from even source ports BASE, BASE+2, ... (parity is kept), one datagram each to DST
/// until the echo sees external port WANT; prints "found SPORT".
const FIND_PY: &str = r#"
import socket, sys
base, want, dst = int(sys.argv[1]), sys.argv[2], sys.argv[3]
h, p = dst.rsplit(":", 1)
for i in range(200):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", base + 2 * i))
    s.settimeout(1)
    s.sendto(b"find", (h, int(p)))
    try:
        seen = s.recvfrom(2048)[0].decode(errors="replace").split()
    except socket.timeout:
        continue
    finally:
        s.close()
    if seen[-1] == want or (len(seen) >= 3 and seen[2] == want):
        print("found", base + 2 * i, " ".join(seen), flush=True)
        sys.exit(0)
print("notfound", flush=True)
"#;

/// R: from port 6000, "for-b-1" to NODE:EXT; then "for-b-2" to the port the answer came from.
const R_PY: &str = r#"
import socket, sys
node, ext = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 6000))
s.settimeout(3)
s.sendto(b"for-b-1", (node, ext))
data, src = s.recvfrom(2048)
print("answer", src[0], src[1], data.decode(errors="replace"), flush=True)
s.sendto(b"for-b-2", src)
try:
    data, src = s.recvfrom(2048)
    print("answer", src[0], src[1], data.decode(errors="replace"), flush=True)
except socket.timeout:
    print("noanswer", flush=True)
"#;

fn wait_for(n: &Node, log: &str, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !n.log(log).contains(what) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    n.log(log)
}

#[test]
fn a_remote_writing_to_a_per_flow_port_never_reaches_the_other_pod() {
    let n = Node::up("ovl", 2, "snat_ports = \"40000-40063\"\n", "");
    let (pa, pb) = (n.lab.pod_ns(0).to_string(), n.lab.pod_ns(1).to_string());
    let far = format!("{FAR_V4}:7");
    let x = seen_port(&n.py(&pa, &["udp", "5000", "2", "0", &inet()]), &inet());
    // Pod B's mappings toward the far endpoint, until one gets X (at the latest when the other
    // 63 ports are taken toward that remote).
    let find = n.lab.state_dir().join("find.py");
    std::fs::write(&find, FIND_PY).unwrap();
    let o = n
        .lab
        .exec_in_for(&pb, &["/usr/bin/python3", find.to_str().unwrap(), "5000", &x.to_string(), &far], Duration::from_secs(120))
        .unwrap();
    let found = String::from_utf8_lossy(&o.stdout).into_owned();
    let bport: u16 = found
        .strip_prefix("found ")
        .and_then(|l| l.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no mapping of pod B got port {x}: {found} {}", String::from_utf8_lossy(&o.stderr)));
    eprintln!("overlap: pod B {bport} -> {found}");

    let _a = n.spawn_py(&pa, "a.log", &["udp", "5000", "1", "8", &inet()]);
    let b_py = n.lab.state_dir().join("b.py");
    std::fs::write(&b_py, B_PY).unwrap();
    let _b = n.lab.spawn_logged(&pb, &["/usr/bin/python3", "-u", b_py.to_str().unwrap(), &bport.to_string(), &inet(), "6"], "b.log").unwrap();
    let b = wait_for(&n, "b.log", "reply");
    let z = seen_port(&b, &inet());
    assert_ne!(z, x, "pod B's flow to R shares pod A's port: {b}");

    let r_py = n.lab.state_dir().join("r.py");
    std::fs::write(&r_py, R_PY).unwrap();
    let o = n
        .lab
        .exec_in_for(&n.lab.internet_ns(), &["/usr/bin/python3", r_py.to_str().unwrap(), &NODE_V4.to_string(), &z.to_string()], Duration::from_secs(20))
        .unwrap();
    let r = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "R: {r} {}", String::from_utf8_lossy(&o.stderr));
    assert!(r.contains(&format!("answer {NODE_V4} {z} ans for-b-1")), "B's answer did not leave from port {z} (A holds {x} toward R): {r}");
    assert!(r.contains(&format!("answer {NODE_V4} {z} ans for-b-2")), "R's second datagram did not reach B: {r}");

    let b = wait_for(&n, "b.log", "done");
    assert!(b.contains("for-b-1") && b.contains("for-b-2"), "pod B: {b}");
    let a = wait_for(&n, "a.log", "noreply_never_printed");
    assert!(!a.contains("for-b"), "pod A received what R sent to pod B: {a}");
}
