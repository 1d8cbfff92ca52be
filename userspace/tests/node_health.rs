//! A node agent under a supervisor (issue 17): the daemon notices its programs detached behind
//! its back and attaches them again (`/readyz`, `podgate_reattach_total`, `status`'s exit code),
//! and a daemon meeting pins of another map ABI starts clean instead of crash-looping.

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    process::Output,
    thread,
    time::{Duration, Instant},
};

mod common;

use aya::{
    EbpfLoader,
    maps::{Array, Map, MapData},
    programs::{SchedClassifier, tc::TcAttachType},
};
use common::PODGATE;
use podgate_lab::Lab;

/// The test thread inside a network namespace until dropped (setns affects this thread only).
struct InNetns {
    home: File,
}

impl InNetns {
    fn enter(ns: &str) -> Self {
        let home = File::open("/proc/thread-self/ns/net").unwrap();
        let target = File::open(format!("/run/netns/{ns}")).unwrap();
        // SAFETY: setns on this thread with a valid namespace fd.
        let rc = unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
        Self { home }
    }
}

impl Drop for InNetns {
    fn drop(&mut self) {
        // SAFETY: as in `enter`.
        unsafe { libc::setns(self.home.as_raw_fd(), libc::CLONE_NEWNET) };
    }
}

fn cli(lab: &Lab, args: &[&str]) -> Output {
    let root = lab.pin_root();
    let mut argv = vec![PODGATE, "--pin-root", root.to_str().unwrap()];
    argv.extend_from_slice(args);
    lab.exec_in(&lab.node_ns(), &argv).unwrap()
}

/// (HTTP status line, body) of a GET on the daemon's metrics listener.
fn get(lab: &Lab, path: &str) -> (u16, String) {
    let url = format!("http://127.0.0.1:9542{path}");
    let o = lab
        .exec_in(&lab.node_ns(), &["curl", "-sS", "--max-time", "2", "-o", "-", "-w", "\n%{http_code}", &url])
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// Polls `path` until it answers `code`; returns the body.
fn wait_http(lab: &Lab, path: &str, code: u16, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let (c, body) = get(lab, path);
        if c == code {
            return body;
        }
        assert!(Instant::now() < deadline, "{path} still answers {c} after {limit:?} (want {code}): {body}");
        thread::sleep(Duration::from_millis(100));
    }
}

fn metric(lab: &Lab, name: &str) -> f64 {
    let (c, body) = get(lab, "/metrics");
    assert_eq!(c, 200, "{body}");
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {name} in\n{body}"))
        .parse()
        .unwrap()
}

/// The daemon's log without its colour escapes (`found=1` is written `found\x1b[0m\x1b[2m=...`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\x1b' {
            for d in it.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn links(lab: &Lab) -> usize {
    let o = cli(lab, &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["links"].as_array().map_or(0, |l| l.len())
}

#[test]
fn detached_behind_the_daemons_back_readyz_fails_then_the_daemon_reattaches() {
    let lab = common::lab("h", "detach", 1);
    // Nothing installed: nothing attached, and the exit status says so.
    let o = cli(&lab, &["status"]);
    assert_eq!(o.status.code(), Some(3), "status without podgate: {o:?}");

    let _d = common::start_daemon(&lab, "podgate.log");
    wait_http(&lab, "/readyz", 200, Duration::from_secs(15));
    assert_eq!(get(&lab, "/healthz").0, 200);
    assert_eq!(metric(&lab, "podgate_reattach_total"), 0.0);
    assert_eq!(links(&lab), 4, "uplink + the pod's veth in/out + its v4 veth in");

    // Another tool takes the pod veth's egress hook (foreign_programs = "refuse": podgate will
    // not attach beside it), then every podgate link is detached behind the daemon's back.
    let veth = lab.pod(0).veth.clone();
    let other = {
        let _in = InNetns::enter(&lab.node_ns());
        let mut loader = EbpfLoader::new();
        for m in ["nat4_map", "nat4_claim", "ct4", "ct6"] {
            loader.map_max_entries(m, 1024);
        }
        let mut ebpf = loader.load(podgate::EBPF_OBJECT).expect("load the object");
        let p: &mut SchedClassifier = ebpf.program_mut("noop_tc").unwrap().try_into().unwrap();
        p.load().unwrap();
        p.attach(&veth, TcAttachType::Egress).expect("the other tool's tcx program");
        ebpf
    };
    let o = cli(&lab, &["reset"]);
    assert!(o.status.success(), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("detached 4"), "{o:?}");

    // The daemon puts back what it can, and /readyz names what it cannot.
    let body = wait_http(&lab, "/readyz", 503, Duration::from_secs(10));
    assert!(body.contains(&veth) && body.contains("pod_egress"), "{body}");
    assert!(!body.contains("pod_ingress") && !body.contains("uplink"), "only the taken hook is missing: {body}");
    assert_eq!(metric(&lab, "podgate_attached"), 0.0);
    assert_eq!(metric(&lab, "podgate_reattach_total"), 3.0, "uplink and both ingress hooks are back");
    assert!(metric(&lab, "podgate_reattach_errors_total") >= 1.0);
    assert_eq!(get(&lab, "/healthz").0, 200, "the daemon itself is alive");

    // The other tool goes away: the next check attaches the last one.
    drop(other);
    wait_http(&lab, "/readyz", 200, Duration::from_secs(10));
    assert_eq!(metric(&lab, "podgate_reattach_total"), 4.0);
    assert_eq!(metric(&lab, "podgate_attached"), 1.0);
    assert_eq!(links(&lab), 4);
    let o = cli(&lab, &["status"]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let log = std::fs::read_to_string(lab.state_dir().join("podgate.log")).unwrap();
    assert!(log.contains("attached it again") && log.contains(&veth), "{log}");
}

#[test]
fn pins_of_an_older_map_abi_start_clean_with_a_log_line_and_a_metric() {
    let lab = common::lab("h", "abi", 1);
    let d = common::start_daemon(&lab, "podgate-1.log");
    wait_http(&lab, "/readyz", 200, Duration::from_secs(15));
    drop(d);

    // What an older podgate would have left: its `node` entry says ABI 1.
    let path = lab.pin_root().join(podgate_common::map_names::NODE);
    let mut node: Array<MapData, podgate_common::NodeConfig> =
        Array::try_from(Map::from_map_data(MapData::from_pin(&path).unwrap()).unwrap()).unwrap();
    let mut v = node.get(&0, 0).unwrap();
    assert_eq!(v.abi_version, podgate_common::ABI_VERSION);
    v.abi_version = 1;
    node.set(0, v, 0).unwrap();
    drop(node);

    let _d = common::start_daemon(&lab, "podgate-2.log");
    let log = strip_ansi(&std::fs::read_to_string(lab.state_dir().join("podgate-2.log")).unwrap());
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("starting clean")).collect();
    assert_eq!(lines.len(), 1, "one clear line: {log}");
    assert!(lines[0].contains("found=1") && lines[0].contains(&format!("ours={}", podgate_common::ABI_VERSION)), "{}", lines[0]);
    assert!(log.contains("created new pinned maps"), "{log}");
    wait_http(&lab, "/readyz", 200, Duration::from_secs(15));
    assert_eq!(metric(&lab, "podgate_abi_reset_total"), 1.0);
    let o = cli(&lab, &["status", "--json"]);
    assert!(o.status.success(), "{o:?}");
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(st["abi_version"], podgate_common::ABI_VERSION, "{st}");
    assert_eq!(st["pods"], 1, "the config's pod registered again: {st}");
    assert_eq!(st["links"].as_array().unwrap().len(), 4, "{st}");
}
