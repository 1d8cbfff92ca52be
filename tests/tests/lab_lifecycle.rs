//! The lab comes up complete and goes down without a trace, also when its owner "crashed".

use std::{fs, path::Path};

use podgate_tests::lab::{self, Lab, LabSpec, ProcId};

/// Everything of lab `name` that could be left behind.
fn leftovers(name: &str, procs: &[ProcId]) -> Vec<String> {
    let mut left: Vec<String> = lab::netns_list()
        .into_iter()
        .filter(|ns| ns.starts_with(&format!("pgl-{name}-")))
        .map(|ns| format!("netns {ns}"))
        .collect();
    if lab::state_dir(name).exists() {
        left.push(format!("state {}", lab::state_dir(name).display()));
    }
    if lab::pin_root(name).exists() {
        left.push(format!("pins {}", lab::pin_root(name).display()));
    }
    left.extend(
        procs
            .iter()
            .filter(|p| p.alive())
            .map(|p| format!("process {}", p.pid)),
    );
    left
}

/// Pretends podgate pinned something, so `down` has pins to remove.
fn fake_pins(lab: &Lab) {
    let dir = lab.pin_root().join("maps");
    fs::create_dir_all(&dir).expect("mkdir in bpffs");
}

#[test]
fn lab_up_is_complete_and_down_leaves_nothing() {
    let lab = lab::test_lab("updown", 2);
    let name = lab.name().to_string();
    let mut expected = vec![lab.node_ns(), lab.internet_ns()];
    expected.extend(lab.pods().iter().map(|p| p.ns.clone()));
    let all = lab::netns_list();
    for ns in &expected {
        assert!(all.contains(ns), "netns {ns} missing after up");
    }
    let procs = lab.processes();
    assert_eq!(
        procs.len(),
        3,
        "two endpoints and iperf3 recorded: {procs:?}"
    );
    assert!(procs.iter().all(|p| p.alive()));
    assert!(lab.config_path().exists());
    // Nothing of the lab in the root namespace.
    let root_links = std::process::Command::new("ip")
        .args(["-br", "link"])
        .output()
        .unwrap();
    let root_links = String::from_utf8_lossy(&root_links.stdout);
    for ifname in ["eni", "vethpod0", "v4pod0", "v4if0"] {
        assert!(
            !root_links
                .lines()
                .any(|l| l.split(['@', ' ']).next() == Some(ifname)),
            "{ifname} in the root netns"
        );
    }
    fake_pins(&lab);

    let report = lab.down().expect("down");
    assert!(
        report.removed.iter().any(|r| r.starts_with("pins ")),
        "{report}"
    );
    assert_eq!(leftovers(&name, &procs), Vec::<String>::new());
}

#[test]
fn lab_dropping_the_lab_takes_it_down() {
    let (name, procs) = {
        let lab = lab::test_lab("drop", 1);
        fake_pins(&lab);
        (lab.name().to_string(), lab.processes())
    };
    assert_eq!(leftovers(&name, &procs), Vec::<String>::new());
}

#[test]
fn lab_down_by_name_cleans_a_crashed_run() {
    let lab = lab::test_lab("crash", 2);
    let name = lab.name().to_string();
    // A process the test started, recorded, and one nobody recorded (as a crashed daemon
    // started by hand would be): both must go, or the namespace would outlive `ip netns del`.
    let recorded = lab.spawn_in(&lab.node_ns(), &["sleep", "300"]).unwrap();
    let mut unrecorded = lab::ns_command(lab.pod_ns(1), &["sleep", "301"])
        .spawn()
        .unwrap();
    let mut procs = lab.processes();
    assert_eq!(procs.len(), 4);
    procs.push(ProcId::of(unrecorded.id()).unwrap());
    fake_pins(&lab);
    // The owner "crashes": no Drop runs for the lab or its guard.
    std::mem::forget(recorded);
    std::mem::forget(lab);
    assert!(
        Path::new("/run/netns")
            .join(format!("pgl-{name}-node"))
            .exists()
    );

    let report = lab::down(&name).expect("down by name");
    assert!(
        report.removed.iter().any(|r| r.contains("found in")),
        "{report}"
    );
    assert_eq!(leftovers(&name, &procs), Vec::<String>::new());
    // `down` already reaped it (it is our child); this only keeps the handle honest.
    let _ = unrecorded.wait();
    // Idempotent: a second down finds nothing and is no error.
    assert!(lab::down(&name).unwrap().removed.is_empty());
}

#[test]
fn lab_a_second_lab_of_the_same_name_is_refused_and_harms_nothing() {
    let lab = lab::test_lab("twice", 1);
    let err = Lab::up(LabSpec::new(lab.name(), 1))
        .err()
        .expect("second up must fail");
    assert!(format!("{err:#}").contains("exists"), "{err:#}");
    // The first lab is intact.
    let p = lab.http(0, lab::Family::V6);
    assert!(p.ok, "lab broken by the refused second up: {p:?}");
}

#[test]
fn lab_the_written_config_follows_the_contract() {
    let lab = lab::test_lab("config", 3);
    let text = fs::read_to_string(lab.config_path()).unwrap();
    let cfg: toml::Table = text.parse().expect("valid TOML");
    let node = cfg["node"].as_table().unwrap();
    assert_eq!(node["uplink"].as_str(), Some("eni"));
    assert_eq!(node["ipv4"].as_str(), Some("198.51.100.2"));
    assert_eq!(node["pod_prefix"].as_str(), Some("2001:db8:0:1::/80"));
    assert_eq!(node["pod_ipv4_cidr"].as_str(), Some("169.254.172.0/22"));
    assert_eq!(node["snat_ports"].as_str(), Some(podgate_lab::SNAT_PORTS));
    assert_eq!(
        node["pin_root"].as_str(),
        Some(lab.pin_root().to_str().unwrap())
    );
    let pods = cfg["pods"].as_array().unwrap();
    assert_eq!(pods.len(), 3);
    for (p, want) in pods.iter().zip(lab.pods()) {
        assert_eq!(p["name"].as_str(), Some(want.name.as_str()));
        assert_eq!(p["ipv6"].as_str(), Some(want.ipv6.to_string().as_str()));
        assert_eq!(p["ipv4"].as_str(), Some(want.ipv4.to_string().as_str()));
        // The veths named must exist in the node namespace.
        for key in ["veth", "veth_v4"] {
            let ifname = p[key].as_str().unwrap();
            let out = lab
                .exec_in(&lab.node_ns(), &["ip", "link", "show", "dev", ifname])
                .unwrap();
            assert!(
                out.status.success(),
                "{key} {ifname} missing in the node netns"
            );
        }
    }
}

/// A test process killed with SIGKILL leaves its lab (and its setsid'd servers) behind; the next
/// test run's sweep removes it because its recorded owner is gone.
#[test]
fn lab_of_a_killed_test_process_is_swept() {
    use std::{
        io::{BufRead as _, BufReader},
        process::{Command, Stdio},
        sync::mpsc,
        time::Duration,
    };
    const CHILD: &str = "PODGATE_LAB_TEST_CHILD";
    if let Ok(name) = std::env::var(CHILD) {
        let lab = Lab::up(LabSpec::new(name, 1)).expect("lab up in child");
        println!("READY {}", lab.name());
        std::thread::sleep(Duration::from_secs(60));
        return;
    }
    let name = lab::test_lab_name("killed");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "lab_of_a_killed_test_process_is_swept",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, &name)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("READY ") {
                let _ = tx.send(());
            }
        }
    });
    let ready = rx.recv_timeout(Duration::from_secs(30));
    child.kill().unwrap(); // SIGKILL: no destructor runs
    child.wait().unwrap();
    ready.expect("child lab never came up");
    let procs = lab::processes(&name);
    assert_eq!(procs.len(), 3, "servers recorded by the child");
    assert!(
        procs.iter().all(|p| p.alive()),
        "servers outlive their killed owner"
    );
    assert!(lab::netns_list().contains(&format!("pgl-{name}-node")));

    lab::sweep_orphans();
    assert_eq!(leftovers(&name, &procs), Vec::<String>::new());
}

#[test]
fn lab_status_describes_a_running_lab_and_a_missing_one() {
    let lab = lab::test_lab("status", 1);
    let text = lab::status(lab.name()).unwrap();
    for want in [
        lab.node_ns(),
        lab.internet_ns(),
        lab.far_ns(),
        lab.pod_ns(0).to_string(),
        "198.51.100.2/24".to_string(),
        "169.254.172.10/32".to_string(),
        "2001:db8:0:1::a/128".to_string(),
        "iperf3".to_string(),
        "pins: none".to_string(),
    ] {
        assert!(text.contains(&want), "status lacks {want:?}:\n{text}");
    }
    assert!(!text.contains("gone"), "{text}");
    let name = lab.name().to_string();
    drop(lab);
    assert_eq!(lab::status(&name).unwrap(), format!("lab {name}: not up\n"));
}
