//! What the lab tests of the `podgate` binary share: a lab per test, the daemon started in its
//! node namespace, and the CLI against the lab's pins.
#![allow(dead_code)]

use std::{
    thread,
    time::{Duration, Instant},
};

use podgate_lab::{ChildGuard, Lab, LabSpec, sweep_orphans};

pub const PODGATE: &str = env!("CARGO_BIN_EXE_podgate");

/// A lab named after the test binary's process and `tag`, so parallel tests never collide.
pub fn lab(prefix: &str, tag: &str, pods: usize) -> Lab {
    sweep_orphans();
    Lab::up(LabSpec::new(format!("{prefix}{}-{tag}", std::process::id()), pods)).expect("lab up")
}

/// Starts `podgate run` with the lab's config and waits until it says it is running.
pub fn start_daemon(lab: &Lab, log: &str) -> ChildGuard {
    let cfg = lab.config_path();
    let d = lab
        .spawn_logged(&lab.node_ns(), &[PODGATE, "run", "--config", cfg.to_str().unwrap()], log)
        .expect("start podgate");
    let log = lab.state_dir().join(log);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("podgate: running") {
        assert!(
            Instant::now() < deadline,
            "podgate did not start in 30 s: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        thread::sleep(Duration::from_millis(50));
    }
    d
}

/// Runs a podgate verb against the lab's pins in its node namespace; panics when it fails.
pub fn podgate_cli(lab: &Lab, args: &[&str]) -> String {
    let root = lab.pin_root();
    let mut argv = vec![PODGATE, "--pin-root", root.to_str().unwrap()];
    argv.extend_from_slice(args);
    let o = lab.exec_in(&lab.node_ns(), &argv).unwrap();
    assert!(o.status.success(), "podgate {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// One counter's value from `podgate stats`.
pub fn counter(lab: &Lab, name: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(&podgate_cli(lab, &["stats", "--json", "--all"])).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .find(|r| r["counter"] == name)
        .map(|r| r["value"].as_u64().unwrap())
        .unwrap_or(0)
}

/// A TCP listener answering "ok" on `port` (IPv6) inside `ns`.
pub fn listen6(lab: &Lab, ns: &str, port: u16) -> ChildGuard {
    let spec = format!("TCP6-LISTEN:{port},reuseaddr,fork");
    lab.spawn_in(ns, &["socat", &spec, "SYSTEM:echo ok"]).expect("socat listener")
}

/// Whether a TCP connection from `ns` to [addr]:port gets the listener's answer within 2 s.
pub fn connects6(lab: &Lab, ns: &str, addr: &str, port: u16) -> bool {
    let target = format!("TCP6:[{addr}]:{port},connect-timeout=2");
    let o = lab
        .exec_in_for(ns, &["socat", "-T", "2", "-u", &target, "-"], Duration::from_secs(10))
        .unwrap();
    String::from_utf8_lossy(&o.stdout).trim() == "ok"
}

/// Removes a file when dropped: the control socket a test leaves behind by killing its daemon.
pub struct RemoveOnDrop(pub std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
