//! `podgate monitor --json` and eBPF log lines with real traffic in the namespace lab: a pod's
//! HTTP request is a new SNAT flow, an unsolicited SYN from the internet to the SNAT range is a
//! drop at the uplink.

use std::{
    thread,
    time::{Duration, Instant},
};

mod common;

use common::PODGATE;
use podgate_lab::{Family, INTERNET_V4, NODE_V4};

fn read(lab: &podgate_lab::Lab, log: &str) -> String {
    std::fs::read_to_string(lab.state_dir().join(log)).unwrap_or_default()
}

#[test]
fn monitor_shows_a_new_flow_and_a_drop_from_real_traffic() {
    let lab = common::lab("ev", "monitor", 1);
    let cfg = lab.config_path();
    let d = lab
        .spawn_logged(
            &lab.node_ns(),
            &[PODGATE, "run", "--config", cfg.to_str().unwrap(), "--flow-events", "--bpf-log", "debug"],
            "podgate.log",
        )
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !read(&lab, "podgate.log").contains("podgate: running") {
        assert!(Instant::now() < deadline, "podgate did not start: {}", read(&lab, "podgate.log"));
        thread::sleep(Duration::from_millis(50));
    }
    let root = lab.pin_root();
    let _mon = lab
        .spawn_logged(
            &lab.node_ns(),
            &[PODGATE, "--pin-root", root.to_str().unwrap(), "monitor", "--json", "--seconds", "60"],
            "monitor.log",
        )
        .unwrap();

    let p = lab.http(0, Family::V4);
    assert!(p.ok, "{p:?}");
    // Unsolicited: nothing maps this port; one SYN (and its retries) within a second.
    let url = format!("http://{NODE_V4}:50000/");
    let _ = lab.exec_in_for(&lab.internet_ns(), &["curl", "-s", "--max-time", "1", &url], Duration::from_secs(5));

    let pod_v4 = lab.pod(0).ipv4.to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    let (flow, dropped) = loop {
        let lines: Vec<serde_json::Value> =
            read(&lab, "monitor.log").lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        let flow = lines.iter().find(|e| {
            e["kind"] == "new_flow"
                && e["proto"] == "tcp"
                && e["src"].as_str().is_some_and(|s| s.starts_with(&format!("{pod_v4}:")))
                && e["dst"] == format!("{INTERNET_V4}:80")
        });
        let drop = lines.iter().find(|e| {
            e["kind"] == "drop" && e["reason"] == "drop_no_mapping" && e["dst"] == format!("{NODE_V4}:50000")
        });
        if let (Some(f), Some(d)) = (flow, drop) {
            break (f.clone(), d.clone());
        }
        assert!(Instant::now() < deadline, "monitor output: {}", read(&lab, "monitor.log"));
        thread::sleep(Duration::from_millis(100));
    };
    assert!(flow["pod_id"].as_u64().unwrap() > 0, "{flow}");
    let ext = flow["ext_port"].as_u64().expect("a new SNAT flow names its external port");
    assert!((32768..=65535).contains(&ext), "{flow}");
    assert_eq!(dropped["pod_id"], 0, "{dropped}");
    assert!(dropped["src"].as_str().unwrap().starts_with(&format!("{INTERNET_V4}:")), "{dropped}");

    // --bpf-log debug: the same drop as a log line of the daemon, from the programs.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !read(&lab, "podgate.log").contains("drop drop_no_mapping") {
        assert!(Instant::now() < deadline, "no eBPF log line: {}", read(&lab, "podgate.log"));
        thread::sleep(Duration::from_millis(100));
    }
    let log = read(&lab, "podgate.log");
    let line = log.lines().find(|l| l.contains("drop drop_no_mapping")).unwrap();
    assert!(line.contains("podgate::bpf") && line.contains(&INTERNET_V4.to_string()), "{line}");
    drop(d);
}
