//! The lab with podgate running and socket probes, shared by the lab conformance and fault tests.
#![allow(dead_code)]

pub mod frag;

use std::{
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use podgate_lab::{ChildGuard, INTERNET_V4, Lab, LabSpec, NODE_V4, sweep_orphans};

pub const PODGATE: &str = env!("CARGO_BIN_EXE_podgate");

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
elif cmd == "udp-many":
    # udp-many BASE COUNT DST: COUNT sockets on ports BASE, BASE+2, ...; one datagram each;
    # prints how many were answered.
    base, count, d = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    ok = 0
    for i in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", base + 2 * i))
        s.settimeout(0.5)
        s.sendto(b"many", hp(d))
        try:
            s.recvfrom(2048)
            ok += 1
        except socket.timeout:
            pass
        s.close()
    print("answered", ok, flush=True)
elif cmd == "udp-flood":
    # udp-flood BASE COUNT DST: like udp-many, but every datagram leaves before any answer is
    # awaited (a flood of new flows); prints how many were answered within a second.
    import resource, select
    base, count, d = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    resource.setrlimit(resource.RLIMIT_NOFILE, (count + 64, count + 64))
    socks = []
    for i in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", base + 2 * i))
        s.setblocking(False)
        s.sendto(b"flood", hp(d))
        socks.append(s)
    pending, ok, end = set(socks), 0, time.time() + 1.0
    while pending and time.time() < end:
        r, _, _ = select.select(list(pending)[:1000], [], [], 0.1)
        for s in r:
            try:
                s.recvfrom(2048)
                ok += 1
            except OSError:
                pass
            pending.discard(s)
    for s in socks:
        s.close()
    print("answered", ok, flush=True)
elif cmd == "udp-ephemeral":
    # udp-ephemeral COUNT DST: COUNT sockets on ports the kernel picks, all open at once, one
    # datagram each; prints how many got their own answer (the echo names the port it saw) and
    # the ports that did not.
    import resource, select
    count, d = int(sys.argv[2]), sys.argv[3]
    resource.setrlimit(resource.RLIMIT_NOFILE, (count + 64, count + 64))
    socks = {}
    for i in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", 0))
        s.setblocking(False)
        socks[s] = s.getsockname()[1]
    # The echo server is one thread that logs every datagram: under load it drops some, so a
    # socket still unanswered asks again (5 rounds). A reply taken by a pod's mapping is lost
    # every time.
    pending, ok = set(socks), 0
    for round in range(5):
        for s in list(pending):
            s.sendto(b"node", hp(d))
            time.sleep(0.002)
        end = time.time() + 1.0
        while pending and time.time() < end:
            r, _, _ = select.select(list(pending)[:1000], [], [], 0.1)
            for s in r:
                try:
                    data = s.recvfrom(2048)[0].decode(errors="replace").split()
                except OSError:
                    continue
                if len(data) >= 3 and data[2] == str(socks[s]) and s in pending:
                    ok += 1
                    pending.discard(s)
    print("answered", ok, flush=True)
    print("lost", ",".join(str(socks[s]) for s in pending), flush=True)
    for s in socks:
        s.close()
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

pub struct Node {
    pub lab: Lab,
    py: PathBuf,
    pub daemon: Option<ChildGuard>,
}

impl Node {
    /// A lab with `pods` pods and podgate running with the lab's config plus `extra` lines
    /// (inserted under `[node]`, or whole sections at the end).
    pub fn up(tag: &str, pods: usize, node_extra: &str, tail: &str) -> Node {
        sweep_orphans();
        let lab = Lab::up(LabSpec::new(format!("c{}-{tag}", std::process::id()), pods)).expect("lab up");
        let py = lab.state_dir().join("conformance.py");
        std::fs::write(&py, PY).unwrap();
        let cfg = std::fs::read_to_string(lab.config_path()).unwrap();
        // A key given in `node_extra` replaces the lab's own line for it.
        let keys: Vec<String> = node_extra.lines().filter_map(|l| l.split_once(" =").map(|(k, _)| format!("{k} ="))).collect();
        let cfg: String = cfg.lines().filter(|l| !keys.iter().any(|k| l.starts_with(k.as_str()))).map(|l| format!("{l}\n")).collect();
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
        Node { lab, py, daemon: Some(daemon) }
    }

    /// Stops the daemon (SIGTERM: the dataplane stays attached).
    pub fn stop_daemon(&mut self) {
        if let Some(d) = self.daemon.take() {
            d.stop();
        }
    }

    /// Starts the daemon again with the same config; `Err(log)` when it exits instead of
    /// reaching "podgate: running" within 30 s.
    pub fn start_daemon(&mut self) -> Result<(), String> {
        self.stop_daemon();
        let path = self.lab.state_dir().join("conformance.toml");
        let ran = |n: &Node| n.log("podgate.log").matches("podgate: running").count();
        let before = ran(self);
        let mut d = self
            .lab
            .spawn_logged(&self.lab.node_ns(), &[PODGATE, "run", "--config", path.to_str().unwrap()], "podgate.log")
            .expect("start podgate");
        let deadline = Instant::now() + Duration::from_secs(30);
        while ran(self) == before {
            if d.exited().is_some() || Instant::now() >= deadline {
                return Err(self.log("podgate.log"));
            }
            thread::sleep(Duration::from_millis(50));
        }
        self.daemon = Some(d);
        Ok(())
    }

    /// Runs the probe script in `ns`; its stdout.
    pub fn py(&self, ns: &str, args: &[&str]) -> String {
        let mut argv = vec!["python3", self.py.to_str().unwrap()];
        argv.extend_from_slice(args);
        let o = self.lab.exec_in_for(ns, &argv, Duration::from_secs(40)).expect("probe");
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(o.status.success(), "probe {args:?} failed: {out} {}", String::from_utf8_lossy(&o.stderr));
        out
    }

    /// Starts the probe script in the background, output to `<state>/<log>`.
    pub fn spawn_py(&self, ns: &str, log: &str, args: &[&str]) -> ChildGuard {
        let mut argv = vec!["python3", "-u", self.py.to_str().unwrap()];
        argv.extend_from_slice(args);
        self.lab.spawn_logged(ns, &argv, log).expect("spawn probe")
    }

    pub fn log(&self, log: &str) -> String {
        std::fs::read_to_string(self.lab.state_dir().join(log)).unwrap_or_default()
    }

    /// Waits until `<state>/<log>` contains `what` (10 s at most); whether it did.
    pub fn wait_log(&self, log: &str, what: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.log(log).contains(what) {
                return true;
            }
            thread::sleep(Duration::from_millis(50));
        }
        false
    }

    pub fn cli(&self, args: &[&str]) -> String {
        let root = self.lab.pin_root();
        let mut argv = vec![PODGATE, "--pin-root", root.to_str().unwrap()];
        argv.extend_from_slice(args);
        let o = self.lab.exec_in(&self.lab.node_ns(), &argv).unwrap();
        assert!(o.status.success(), "podgate {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    pub fn gc_advance(&self, secs: u64) -> String {
        self.cli(&["gc", "--advance", &secs.to_string(), "--delete-live"])
    }

    /// Flows (`ct list --json`) of one pod source port.
    pub fn flows(&self, pod_port: u16) -> Vec<serde_json::Value> {
        let v: serde_json::Value = serde_json::from_str(&self.cli(&["ct", "list", "--json"])).unwrap();
        v.as_array().unwrap().iter().filter(|r| r["pod_port"] == pod_port).cloned().collect()
    }

    pub fn mapping(&self, proto: &str, pod_port: u16) -> Option<serde_json::Value> {
        let v: serde_json::Value = serde_json::from_str(&self.cli(&["nat", "list", "--json"])).unwrap();
        v.as_array().unwrap().iter().find(|r| r["pod_port"] == pod_port && r["proto"] == proto).cloned()
    }
}

pub fn inet() -> String {
    format!("{INTERNET_V4}:7")
}

/// The external port the endpoint saw, from a `reply DST seen ADDR PORT ...` line.
pub fn seen_port(out: &str, dst: &str) -> u16 {
    let line = out
        .lines()
        .find(|l| l.starts_with(&format!("reply {dst} ")))
        .unwrap_or_else(|| panic!("no answer from {dst}: {out}"));
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(f[3], NODE_V4.to_string(), "endpoint saw {line}");
    f[4].parse().unwrap()
}

