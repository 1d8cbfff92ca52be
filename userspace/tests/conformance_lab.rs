//! The conformance checks that need real sockets, the daemon and its timers (namespace lab).
//! Each prints one row of the table `cargo xtask conformance` shows; the exact-packet checks are
//! in tests/tests/conformance_pkt.rs. Long timers are checked with `podgate gc --advance SECS`
//! (one GC pass as if that much time had passed) against the default timeouts, and short
//! configured ones in real time.

use std::{
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use podgate_lab::{
    ChildGuard, FAR_V4, INTERNET_V4, Lab, LabSpec, NODE_V4,
    conformance::{all, check},
    sweep_orphans,
};

const PODGATE: &str = env!("CARGO_BIN_EXE_podgate");

/// Socket probes run inside the lab namespaces. Every line printed names what it saw.
const PY: &str = r#"
import os, socket, sys, time

def hp(s):
    h, p = s.rsplit(":", 1)
    return h, int(p)

cmd = sys.argv[1]
if cmd == "udp":
    # udp SPORT WAIT LISTEN DST...: one datagram to each DST (waiting WAIT s for an answer),
    # then print whatever arrives for LISTEN s.
    sport, wait, listen = int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", sport))
    for d in sys.argv[5:]:
        s.sendto(b"conformance", hp(d))
        s.settimeout(wait)
        try:
            data, src = s.recvfrom(2048)
            print("reply", d, data.decode(errors="replace").strip(), flush=True)
        except socket.timeout:
            print("noreply", d, flush=True)
    end = time.time() + listen
    while time.time() < end:
        s.settimeout(max(0.05, end - time.time()))
        try:
            data, src = s.recvfrom(2048)
            print("got", "%s:%d" % src, data.decode(errors="replace"), flush=True)
        except socket.timeout:
            pass
elif cmd == "udp-repeat":
    # udp-repeat SPORT COUNT INTERVAL DST: COUNT datagrams, INTERVAL s apart, answers printed.
    sport, count, interval, d = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", sport))
    s.settimeout(1)
    for i in range(count):
        s.sendto(b"refresh", hp(d))
        try:
            print("reply", s.recvfrom(2048)[0].decode(errors="replace").strip(), flush=True)
        except socket.timeout:
            print("noreply", flush=True)
        time.sleep(interval)
elif cmd == "send":
    # send SPORT DST DATA
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(sys.argv[2])))
    s.sendto(sys.argv[4].encode(), hp(sys.argv[3]))
elif cmd == "http":
    # http SPORT DST: GET / from a fixed source port; prints the endpoint's "seen" line.
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(sys.argv[2])))
    s.settimeout(3)
    s.connect(hp(sys.argv[3]))
    s.sendall(b"GET / HTTP/1.0\r\n\r\n")
    data = b""
    while True:
        b = s.recv(4096)
        if not b:
            break
        data += b
    print([l for l in data.decode().splitlines() if l.startswith("seen ")][0], flush=True)
elif cmd == "tcp-echo-server":
    # tcp-echo-server PORT: answers every line with "seen ADDR PORT".
    import threading
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", int(sys.argv[2])))
    srv.listen(16)
    def serve(c, a):
        f = c.makefile("rb")
        for line in f:
            c.sendall(("seen %s %d\n" % a).encode())
    while True:
        c, a = srv.accept()
        threading.Thread(target=serve, args=(c, a), daemon=True).start()
elif cmd == "tcp-hold":
    # tcp-hold SPORT DST FILE RST: one exchange, wait for FILE to exist (30 s at most), another
    # exchange; then close, with an RST when RST is 1.
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(sys.argv[2])))
    s.settimeout(3)
    s.connect(hp(sys.argv[3]))
    f = s.makefile("rb")
    s.sendall(b"one\n")
    print("first", f.readline().decode().strip(), flush=True)
    end = time.time() + 30
    while not os.path.exists(sys.argv[4]) and time.time() < end:
        time.sleep(0.05)
    try:
        s.sendall(b"two\n")
        print("second", f.readline().decode().strip(), flush=True)
    except Exception as e:
        print("second-failed", e, flush=True)
    if sys.argv[5] == "1":
        import struct
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    print("closed", flush=True)
elif cmd == "syn":
    # syn DST TIMEOUT: how an unsolicited connection attempt is answered.
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(float(sys.argv[3]))
    t0 = time.time()
    try:
        s.connect(hp(sys.argv[2]))
        print("connected %.2f" % (time.time() - t0), flush=True)
    except socket.timeout:
        print("timeout %.2f" % (time.time() - t0), flush=True)
    except OSError as e:
        print("answered %.2f %s" % (time.time() - t0, e), flush=True)
"#;

struct Node {
    lab: Lab,
    py: PathBuf,
    _daemon: ChildGuard,
}

impl Node {
    /// A lab with `pods` pods and podgate running with the lab's config plus `extra` lines
    /// (inserted under `[node]`, or whole sections at the end).
    fn up(tag: &str, pods: usize, node_extra: &str, tail: &str) -> Node {
        sweep_orphans();
        let lab = Lab::up(LabSpec::new(format!("c{}-{tag}", std::process::id()), pods)).expect("lab up");
        let py = lab.state_dir().join("conformance.py");
        std::fs::write(&py, PY).unwrap();
        let cfg = std::fs::read_to_string(lab.config_path()).unwrap();
        let cfg = cfg.replacen("[node]\n", &format!("[node]\n{node_extra}"), 1) + tail;
        let path = lab.state_dir().join("conformance.toml");
        std::fs::write(&path, cfg).unwrap();
        let daemon = lab
            .spawn_logged(&lab.node_ns(), &[PODGATE, "run", "--config", path.to_str().unwrap()], "podgate.log")
            .expect("start podgate");
        let want = 1 + 3 * pods;
        let links = lab.pin_root().join("links");
        let log = lab.state_dir().join("podgate.log");
        let deadline = Instant::now() + Duration::from_secs(30);
        while links.read_dir().map(|d| d.count()).unwrap_or(0) < want
            || !std::fs::read_to_string(&log).unwrap_or_default().contains("podgate: running")
        {
            assert!(Instant::now() < deadline, "podgate did not start: {}", std::fs::read_to_string(&log).unwrap_or_default());
            thread::sleep(Duration::from_millis(50));
        }
        Node { lab, py, _daemon: daemon }
    }

    /// Runs the probe script in `ns`; its stdout.
    fn py(&self, ns: &str, args: &[&str]) -> String {
        let mut argv = vec!["python3", self.py.to_str().unwrap()];
        argv.extend_from_slice(args);
        let o = self.lab.exec_in_for(ns, &argv, Duration::from_secs(40)).expect("probe");
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(o.status.success(), "probe {args:?} failed: {out} {}", String::from_utf8_lossy(&o.stderr));
        out
    }

    /// Starts the probe script in the background, output to `<state>/<log>`.
    fn spawn_py(&self, ns: &str, log: &str, args: &[&str]) -> ChildGuard {
        let mut argv = vec!["python3", "-u", self.py.to_str().unwrap()];
        argv.extend_from_slice(args);
        self.lab.spawn_logged(ns, &argv, log).expect("spawn probe")
    }

    fn log(&self, log: &str) -> String {
        std::fs::read_to_string(self.lab.state_dir().join(log)).unwrap_or_default()
    }

    /// Waits until `<state>/<log>` contains `what` (10 s at most); whether it did.
    fn wait_log(&self, log: &str, what: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.log(log).contains(what) {
                return true;
            }
            thread::sleep(Duration::from_millis(50));
        }
        false
    }

    fn cli(&self, args: &[&str]) -> String {
        let root = self.lab.pin_root();
        let mut argv = vec![PODGATE, "--pin-root", root.to_str().unwrap()];
        argv.extend_from_slice(args);
        let o = self.lab.exec_in(&self.lab.node_ns(), &argv).unwrap();
        assert!(o.status.success(), "podgate {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn gc_advance(&self, secs: u64) -> String {
        self.cli(&["gc", "--advance", &secs.to_string()])
    }

    /// Flows (`ct list --json`) of one pod source port.
    fn flows(&self, pod_port: u16) -> Vec<serde_json::Value> {
        let v: serde_json::Value = serde_json::from_str(&self.cli(&["ct", "list", "--json"])).unwrap();
        v.as_array().unwrap().iter().filter(|r| r["pod_port"] == pod_port).cloned().collect()
    }

    fn mapping(&self, proto: &str, pod_port: u16) -> Option<serde_json::Value> {
        let v: serde_json::Value = serde_json::from_str(&self.cli(&["nat", "list", "--json"])).unwrap();
        v.as_array().unwrap().iter().find(|r| r["pod_port"] == pod_port && r["proto"] == proto).cloned()
    }
}

fn inet() -> String {
    format!("{INTERNET_V4}:7")
}

/// The external port the endpoint saw, from a `reply DST seen ADDR PORT ...` line.
fn seen_port(out: &str, dst: &str) -> u16 {
    let line = out
        .lines()
        .find(|l| l.starts_with(&format!("reply {dst} ")))
        .unwrap_or_else(|| panic!("no answer from {dst}: {out}"));
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(f[3], NODE_V4.to_string(), "endpoint saw {line}");
    f[4].parse().unwrap()
}

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

    r.push(("4787 REQ-4", check("4787 REQ-4", "port parity kept", || {
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
            n.py(&n.lab.internet_ns(), &["send", "7", &dst, data]);
            assert!(n.wait_log("timer.log", data, Duration::from_secs(3)), "reply {data} not delivered: {}", n.log("timer.log"));
            said.push(format!("reply after {}-{} s idle delivered", advance + idle, advance + idle + 1));
        }
        n.gc_advance(302);
        assert!(n.mapping("udp", 41900).is_none(), "mapping outlived its 300 s timeout");
        n.py(&n.lab.internet_ns(), &["send", "7", &dst, "after-expiry"]);
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
        for port in [ext.as_str(), "40001"] {
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
    all(&[("4787 REQ-13", ok)]);
}
