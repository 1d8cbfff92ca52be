//! An inbound SYN flood against `ct6`, through the running daemon with real sockets (issue 11,
//! item 3): a small table (`[limits] conntrack6 = 4096`) and per-pod bound
//! (`[limits] pod_flows = 3000`), a pod holding 20 idle established connections to a server in
//! another namespace, then 20,000 spoofed SYNs from 7 sources to the allowed tcp/80 of that pod
//! and of a second one. The 20 connections must still carry data both ways — the server speaks
//! first, so an evicted entry would show as its packet dropped by default-deny — a third pod's
//! new outbound connections must work during the flood, and the counters must show what the
//! per-pod bound and the node-wide guard refused.

mod common;

use std::{
    thread,
    time::{Duration, Instant},
};

use common::{connects6 as connects, counter, listen6 as listen, podgate_cli, start_daemon};

const PY: &str = "/usr/bin/python3";
const SERVER_PORT: u16 = 9000;
const FLOOD_SYNS: u32 = 20_000;
const FLOOD_SOURCES: u32 = 7;
const IDLE_CONNS: u32 = 20;

const GROUPS: &str = r#"
[security_groups.web]
ingress = [{ proto = "tcp", ports = "80", cidr = "::/0" }]
egress = [{ proto = "tcp", ports = "9000", cidr = "2001:db8:fffe::/64" }]

[limits]
conntrack6 = 4096
pod_flows = 3000

[timeouts]
unanswered = 5

[daemon]
gc_interval = 2
"#;

/// Echo server: answers the client's first line, then, once the trigger file exists, speaks
/// first ("push") and echoes the client's answer.
const SERVER: &str = r#"
import os, socket, sys, threading, time
port, trigger = int(sys.argv[1]), sys.argv[2]
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", port))
s.listen(64)
def serve(c):
    c.settimeout(180)
    f = c.makefile("rwb", buffering=0)
    f.write(b"echo " + f.readline())
    deadline = time.time() + 170
    while not os.path.exists(trigger) and time.time() < deadline:
        time.sleep(0.1)
    f.write(b"push\n")
    f.write(b"echo " + f.readline())
    time.sleep(5)
    c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// The pod's side: opens the connections, then waits (idle) for the trigger and checks that
/// each connection still carries the server's push in and the pod's answer out.
const CLIENT: &str = r#"
import os, socket, sys, time
server, port, n, trigger = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
conns = []
for i in range(n):
    c = socket.create_connection((server, port), timeout=5)
    f = c.makefile("rwb", buffering=0)
    f.write(b"hello %d\n" % i)
    assert f.readline() == b"echo hello %d\n" % i
    conns.append((c, f))
print("ready", flush=True)
deadline = time.time() + 170
while not os.path.exists(trigger) and time.time() < deadline:
    time.sleep(0.1)
ok = 0
for i, (c, f) in enumerate(conns):
    try:
        c.settimeout(3)
        got = f.readline()
        if got != b"push\n":
            print("conn", i, "got", got, flush=True)
            continue
        f.write(b"bye %d\n" % i)
        if f.readline() == b"echo bye %d\n" % i:
            ok += 1
    except Exception as e:
        print("conn", i, "error", e, flush=True)
print("ok", ok, flush=True)
"#;

/// Spoofed SYNs through a raw socket (header included), bounded in count and time and paced to
/// at most ~4000 per second: `count` split evenly over the targets, one target after the other.
const FLOOD: &str = r#"
import socket, struct, sys, time
dport, count, nsrc, limit = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
targets = sys.argv[5:]
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
def csum(b):
    if len(b) % 2:
        b += b"\0"
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while t >> 16:
        t = (t & 0xffff) + (t >> 16)
    return ~t & 0xffff
start, sent, per = time.time(), 0, count // len(targets)
for dst in targets:
    d = socket.inet_pton(socket.AF_INET6, dst)
    for i in range(per):
        if time.time() - start > limit:
            break
        src = socket.inet_pton(socket.AF_INET6, "2001:db8:ee::%x" % (1 + i % nsrc))
        sport = 1024 + (i // nsrc) % 60000
        tcp = struct.pack("!HHIIBBHHH", sport, dport, 1000 + i, 0, 5 << 4, 0x02, 65535, 0, 0)
        c = csum(src + d + struct.pack("!I3xB", len(tcp), 6) + tcp)
        tcp = tcp[:16] + struct.pack("!H", c) + tcp[18:]
        ip = struct.pack("!IHBB", 6 << 28, len(tcp), 6, 64) + src + d
        try:
            s.sendto(ip + tcp, (dst, 0))
            sent += 1
        except OSError:
            time.sleep(0.01)
        if sent % 200 == 0:
            time.sleep(0.05)
print("sent", sent, flush=True)
"#;

/// A pod's own burst of new outbound flows: one UDP datagram to each of `count` ports.
const BURST: &str = r#"
import socket, sys, time
dst, count = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
sent = 0
for i in range(count):
    try:
        s.sendto(b"x", (dst, 20000 + i))
        sent += 1
    except OSError:
        time.sleep(0.01)
print("sent", sent, flush=True)
"#;

fn wait_for(path: &std::path::Path, what: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let s = std::fs::read_to_string(path).unwrap_or_default();
        if s.contains(what) {
            return s;
        }
        assert!(Instant::now() < deadline, "no {what:?} in {} within {limit:?}: {s}", path.display());
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn inbound_syn_flood_evicts_no_established_flow() {
    let lab = common::lab("f", "ct6", 3);
    let cfg = std::fs::read_to_string(lab.config_path()).unwrap();
    let cfg = cfg.replacen("veth_v4 = \"v4pod0\"\n", "veth_v4 = \"v4pod0\"\nsecurity_groups = [\"web\"]\n", 1);
    let cfg = cfg.replacen("veth_v4 = \"v4pod1\"\n", "veth_v4 = \"v4pod1\"\nsecurity_groups = [\"web\"]\n", 1);
    std::fs::write(lab.config_path(), format!("{cfg}\n{GROUPS}")).unwrap();
    let dir = lab.state_dir();
    for (name, text) in [("server.py", SERVER), ("client.py", CLIENT), ("flood.py", FLOOD), ("burst.py", BURST)] {
        std::fs::write(dir.join(name), text).unwrap();
    }
    let script = |n: &str| dir.join(n).to_str().unwrap().to_string();
    let trigger = dir.join("trigger");
    let _ = std::fs::remove_file(&trigger);
    let _d = start_daemon(&lab, "podgate.log");
    let far = lab.far_ns();
    let far6 = podgate_lab::Family::V6.far().to_string();
    let pod0 = lab.pod(0).ipv6.to_string();
    let pod1 = lab.pod(1).ipv6.to_string();
    let port = SERVER_PORT.to_string();
    let _srv = lab.spawn_logged(&far, &[PY, &script("server.py"), &port, trigger.to_str().unwrap()], "server.log").unwrap();
    let _other = listen(&lab, &far, 9001);
    let _w0 = listen(&lab, lab.pod_ns(0), 80);
    let _w1 = listen(&lab, lab.pod_ns(1), 80);
    thread::sleep(Duration::from_millis(500));
    let n = IDLE_CONNS.to_string();
    let _cli = lab
        .spawn_logged(lab.pod_ns(0), &[PY, &script("client.py"), &far6, &port, &n, trigger.to_str().unwrap()], "client.log")
        .unwrap();
    wait_for(&dir.join("client.log"), "ready", Duration::from_secs(30));

    let (pod_before, guard_before) = (counter(&lab, "drop_sg6_pod_flows"), counter(&lab, "drop_sg6_ct_pressure"));
    let flood = lab
        .spawn_logged(
            &lab.internet_ns(),
            &[PY, &script("flood.py"), "80", &FLOOD_SYNS.to_string(), &FLOOD_SOURCES.to_string(), "60", &pod0, &pod1],
            "flood.log",
        )
        .unwrap();
    // While the flood runs: a third pod's new outbound connections.
    let mut other_ok = 0;
    for _ in 0..3 {
        thread::sleep(Duration::from_millis(700));
        other_ok += connects(&lab, lab.pod_ns(2), &far6, 9001) as u32;
    }
    let flood_log = wait_for(&dir.join("flood.log"), "sent", Duration::from_secs(90));
    drop(flood);
    // With ct6 at its high-water mark, a pod's own burst of new flows (up to its pod_flows,
    // more than the table has left) must not make the LRU evict either.
    let burst = lab
        .exec_in_for(lab.pod_ns(2), &[PY, &script("burst.py"), &far6, "3500"], Duration::from_secs(60))
        .unwrap();
    let burst_log = String::from_utf8_lossy(&burst.stdout).into_owned();
    // Right after the flood, before its entries expire (`unanswered` = 5 s plus a GC pass), and
    // the server speaks first: an idle flow evicted during the flood cannot be recreated by it.
    std::fs::write(&trigger, b"go").unwrap();
    let client = wait_for(&dir.join("client.log"), "ok ", Duration::from_secs(90));
    let pod_refused = counter(&lab, "drop_sg6_pod_flows") - pod_before;
    let guard_refused = counter(&lab, "drop_sg6_ct_pressure") - guard_before;
    let stats = podgate_cli(&lab, &["stats"]);
    let log = std::fs::read_to_string(dir.join("podgate.log")).unwrap_or_default();
    let ctx = format!("flood: {flood_log}\nburst: {burst_log}\nclient: {client}\nstats:\n{stats}\ndaemon log tail:\n{}", log.lines().rev().take(15).collect::<Vec<_>>().join("\n"));

    eprintln!("{ctx}\nrefused: pod_flows {pod_refused}, guard {guard_refused}");
    assert!(client.contains(&format!("ok {IDLE_CONNS}")), "every idle established connection must still carry data both ways\n{ctx}");
    assert_eq!(other_ok, 3, "another pod's new outbound connections must work during the flood\n{ctx}");
    assert!(pod_refused > 0, "pod0's bound (pod_flows) must have refused part of its flood\n{ctx}");
    assert!(guard_refused > 0, "the node-wide guard must have refused part of pod1's flood\n{ctx}");
    let held = ct6_rows(&lab).len();
    assert!(held <= 4096, "ct6 holds {held} entries\n{ctx}");

    // The GC expires the unanswered flood (`[timeouts] unanswered`), and every entry it and the
    // early drop deleted was credited to `pod_freed`: each pod is charged exactly what it holds.
    let deadline = Instant::now() + Duration::from_secs(40);
    while ct6_rows(&lab).iter().any(|r| r["remote_addr"].as_str().unwrap_or("").starts_with("2001:db8:ee::")) {
        assert!(Instant::now() < deadline, "the flood's unanswered entries did not expire within 40 s\n{ctx}");
        thread::sleep(Duration::from_millis(500));
    }
    let pods: serde_json::Value = serde_json::from_str(&podgate_cli(&lab, &["pod", "list", "--json"])).unwrap();
    for p in pods.as_array().unwrap() {
        let (id, addr) = (p["id"].as_u64().unwrap() as u32, p["ipv6"].as_str().unwrap().to_string());
        let holds = ct6_rows(&lab).iter().filter(|r| r["pod_addr"] == addr.as_str()).count() as u64;
        assert_eq!(charged6(&lab, id), holds, "pod {} is charged for {} ct6 entries\n{ctx}", p["name"], charged6(&lab, id));
    }
    // `ct flush` credits what it deletes too.
    podgate_cli(&lab, &["ct", "flush", "--pod", "pod2"]);
    let id2 = pods.as_array().unwrap().iter().find(|p| p["name"] == "pod2").unwrap()["id"].as_u64().unwrap() as u32;
    assert_eq!(charged6(&lab, id2), 0, "pod2 after ct flush");
    assert!(connects(&lab, lab.pod_ns(2), &far6, 9001), "pod2 connects again after the flush");
}

fn ct6_rows(lab: &podgate_lab::Lab) -> Vec<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(&podgate_cli(lab, &["ct", "list", "--ipv6", "--json"])).unwrap();
    v.as_array().cloned().unwrap_or_default()
}

/// `pod_usage.flows6 - pod_freed.flows6` of pod `id`, read from the pins.
fn charged6(lab: &podgate_lab::Lab, id: u32) -> u64 {
    use aya::maps::{HashMap, Map, MapData};
    use podgate_common::PodUsage;
    let read = |name: &str| {
        let m = MapData::from_pin(lab.pin_root().join(name)).unwrap();
        let h: HashMap<_, u32, PodUsage> = HashMap::try_from(Map::HashMap(m)).unwrap();
        h.get(&id, 0).unwrap()
    };
    PodUsage::held(&read("pod_usage"), &read("pod_freed")).flows6
}
