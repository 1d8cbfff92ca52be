//! The daemon and CLI on a real node in the namespace lab: install, BTF pins, pods, restart after
//! SIGKILL with the state adopted, metrics, config errors, the pin-root trap.

use std::{
    path::Path,
    process::{Command, Output},
    thread,
    time::{Duration, Instant},
};

mod common;

use common::PODGATE;
use podgate_lab::{Lab, ns_command};

fn lab(tag: &str, pods: usize) -> Lab {
    common::lab("d", tag, pods)
}

fn podgate_in(ns: &str, args: &[&str]) -> Output {
    let mut argv = vec![PODGATE];
    argv.extend_from_slice(args);
    ns_command(ns, &argv).output().expect("run podgate")
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "podgate failed: {}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Waits until `podgate status --json` reports at least `links` attachments.
fn wait_links(lab: &Lab, root: &str, links: usize) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = podgate_in(&lab.node_ns(), &["--pin-root", root, "status", "--json"]);
        if o.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            if v["links"].as_array().is_some_and(|l| l.len() >= links) {
                return v;
            }
        }
        assert!(Instant::now() < deadline, "daemon did not attach {links} links in 30 s");
        thread::sleep(Duration::from_millis(100));
    }
}

fn start_daemon(lab: &Lab, log: &str) -> podgate_lab::ChildGuard {
    common::start_daemon(lab, log)
}

#[test]
fn daemon_installs_pins_with_btf_and_survives_sigkill() {
    let lab = lab("kill", 2);
    let root = lab.pin_root();
    let root_s = root.to_str().unwrap();
    let daemon = start_daemon(&lab, "podgate-1.log");
    // uplink + 2 pods × (veth in, veth out, v4 veth in)
    let st = wait_links(&lab, root_s, 7);
    assert_eq!(st["pods"], 2, "{st}");
    assert_eq!(st["abi_version"], podgate_common::ABI_VERSION, "{st}");

    // BTF: bpftool prints field names, not hex.
    let dump = Command::new("bpftool")
        .args(["map", "dump", "pinned"])
        .arg(root.join("node"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&dump.stdout);
    assert!(text.contains("\"abi_version\"") && text.contains("\"pod_prefix\""), "{text}");
    let progs = String::from_utf8_lossy(&Command::new("bpftool").args(["prog", "show"]).output().unwrap().stdout).into_owned();
    for p in ["pod_ingress", "pod_egress", "uplink_xdp"] {
        assert!(progs.contains(p), "bpftool prog show lacks {p}");
    }

    let before = ok(&podgate_in(&lab.node_ns(), &["--pin-root", root_s, "pod", "list", "--json"]));
    // SIGKILL: no chance to clean up. The links stay pinned and attached.
    let pid = daemon.pid();
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    thread::sleep(Duration::from_millis(300));
    let st = wait_links(&lab, root_s, 7);
    assert_eq!(st["pods"], 2);

    // A new daemon adopts the pinned maps instead of creating new ones.
    let _daemon2 = start_daemon(&lab, "podgate-2.log");
    let deadline = Instant::now() + Duration::from_secs(30);
    let log = lab.state_dir().join("podgate-2.log");
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("podgate: running") {
            assert!(text.contains("adopted pinned maps"), "{text}");
            break;
        }
        assert!(Instant::now() < deadline, "second daemon did not start: {text}");
        thread::sleep(Duration::from_millis(100));
    }
    let after = ok(&podgate_in(&lab.node_ns(), &["--pin-root", root_s, "pod", "list", "--json"]));
    assert_eq!(before, after, "pods changed across the restart");
    let st = wait_links(&lab, root_s, 7);
    assert_eq!(st["links"].as_array().unwrap().len(), 7, "links were duplicated: {st}");
}

#[test]
fn pods_added_and_removed_at_runtime() {
    let lab = lab("pods", 2);
    let root = lab.pin_root();
    let root_s = root.to_str().unwrap();
    // A config with only the uplink: the pods come from the CLI.
    let cfg_text = std::fs::read_to_string(lab.config_path()).unwrap();
    let node_only = cfg_text.split("[[pods]]").next().unwrap().to_string();
    let cfg = lab.state_dir().join("node-only.toml");
    std::fs::write(&cfg, node_only).unwrap();
    let _d = lab
        .spawn_logged(&lab.node_ns(), &[PODGATE, "run", "--config", cfg.to_str().unwrap()], "podgate.log")
        .unwrap();
    wait_links(&lab, root_s, 1);
    let p = lab.pod(1);
    let ipv6 = p.ipv6.to_string();
    let ipv4 = p.ipv4.to_string();
    ok(&podgate_in(
        &lab.node_ns(),
        &["--pin-root", root_s, "pod", "add", "--name", "late", "--ipv6", &ipv6, "--ipv4", &ipv4, "--veth", &p.veth, "--veth-v4", &p.veth_v4],
    ));
    let list = ok(&podgate_in(&lab.node_ns(), &["--pin-root", root_s, "pod", "list", "--json"]));
    assert!(list.contains("\"late\"") && list.contains(&ipv6), "{list}");
    wait_links(&lab, root_s, 4);
    // The same address twice is refused and changes nothing.
    let dup = podgate_in(
        &lab.node_ns(),
        &["--pin-root", root_s, "pod", "add", "--name", "dup", "--ipv6", &ipv6, "--ipv4", "169.254.172.99", "--veth", &lab.pod(0).veth],
    );
    assert!(!dup.status.success());
    let err = String::from_utf8_lossy(&dup.stderr);
    assert!(err.contains("late") && err.contains(&ipv6), "{err}");
    assert_eq!(list, ok(&podgate_in(&lab.node_ns(), &["--pin-root", root_s, "pod", "list", "--json"])));
    ok(&podgate_in(&lab.node_ns(), &["--pin-root", root_s, "pod", "del", "late"]));
    let list = ok(&podgate_in(&lab.node_ns(), &["--pin-root", root_s, "pod", "list", "--json"]));
    assert!(!list.contains("\"late\""), "{list}");
    let st = wait_links(&lab, root_s, 1);
    assert_eq!(st["links"].as_array().unwrap().len(), 1, "pod links left behind: {st}");
}

#[test]
fn metrics_are_served_and_parse() {
    let lab = lab("metrics", 1);
    let root = lab.pin_root();
    let _d = start_daemon(&lab, "podgate.log");
    wait_links(&lab, root.to_str().unwrap(), 4);
    let deadline = Instant::now() + Duration::from_secs(15);
    let body = loop {
        let o = lab
            .exec_in(&lab.node_ns(), &["curl", "-sS", "--max-time", "2", "http://127.0.0.1:9542/metrics"])
            .unwrap();
        if o.status.success() {
            break String::from_utf8_lossy(&o.stdout).into_owned();
        }
        assert!(Instant::now() < deadline, "metrics endpoint never answered");
        thread::sleep(Duration::from_millis(200));
    };
    let mut samples = 0;
    for line in body.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (name, value) = line.rsplit_once(' ').expect("sample line");
        value.parse::<f64>().unwrap_or_else(|_| panic!("bad value in {line:?}"));
        assert!(name.starts_with("podgate_"), "{line}");
        samples += 1;
    }
    assert!(samples > 10, "{body}");
    for want in ["podgate_packets_total{kind=\"drop\",reason=\"drop_spoof_v4\"}", "podgate_map_entries{map=\"ct4\"}", "podgate_pod_mappings{pod=\"pod0\"}", "podgate_gc_runs_total"] {
        assert!(body.contains(want), "missing {want} in\n{body}");
    }
}

#[test]
fn bad_config_is_refused_naming_the_field_and_nothing_is_applied() {
    let lab = lab("badcfg", 1);
    let good = std::fs::read_to_string(lab.config_path()).unwrap();
    let cases = [
        (good.replace("[node]", "[node]\nbogus_key = 1"), "bogus_key"),
        (good.replace("2001:db8:0:1::/80", "2001:db8:0:1::/64"), "node.pod_prefix"),
        (good.replace("veth = \"vethpod0\"", "veth = \"nosuchif0\""), "pods[0].veth"),
        (good.replace("ipv6 = \"2001:db8:0:1::a\"", "ipv6 = \"2001:db8:9::a\""), "pods[0].ipv6"),
    ];
    for (i, (text, field)) in cases.iter().enumerate() {
        let path = lab.state_dir().join(format!("bad{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let o = podgate_in(&lab.node_ns(), &["run", "--config", path.to_str().unwrap()]);
        assert!(!o.status.success(), "case {i} accepted");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(field), "case {i}: error does not name {field}: {err}");
        assert!(!lab.pin_root().join("node").exists(), "case {i} left pinned state behind");
        if *field != "pods[0].veth" {
            // config check gives the same verdict without the kernel.
            let c = Command::new(PODGATE).args(["config", "check", path.to_str().unwrap()]).output().unwrap();
            assert!(!c.status.success() && String::from_utf8_lossy(&c.stderr).contains(field));
        }
    }
    let c = Command::new(PODGATE).args(["config", "check", lab.config_path().to_str().unwrap()]).output().unwrap();
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
}

#[test]
fn a_pin_root_off_bpffs_is_refused_with_the_netns_hint() {
    let dir = std::env::temp_dir().join(format!("podgate-notbpffs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[node]\nuplink = \"lo\"\nipv4 = \"198.51.100.2\"\npod_prefix = \"2001:db8:0:1::/80\"\npin_root = \"{}\"\n",
            dir.join("pins").display()
        ),
    )
    .unwrap();
    let o = Command::new(PODGATE).args(["run", "--config", cfg.to_str().unwrap()]).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("not on a bpffs") && err.contains("nsenter --net"), "{err}");
    assert!(!Path::new(&dir).exists());
}
