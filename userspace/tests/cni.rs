//! The chained CNI plugin exactly as a runtime drives it: Debian's reference `ptp` plugin with
//! `host-local` IPAM creates the pod's veth and addresses, then `podgate cni` registers the pod
//! from prevResult; CHECK, DEL, DEL of an unknown container and malformed input follow.

use std::{
    io::Write as _,
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use podgate_lab::{Lab, LabSpec, ns_command, sweep_orphans};

mod common;

const PODGATE: &str = env!("CARGO_BIN_EXE_podgate");
const CNI_PATH: &str = "/usr/lib/cni";

/// A network namespace for the container, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(name: String) -> Self {
        let st = Command::new("ip").args(["netns", "add", &name]).status().unwrap();
        assert!(st.success(), "ip netns add {name}");
        Self(name)
    }
    fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Runs a CNI plugin in the node namespace (where the host side of the pod lives).
fn cni(lab: &Lab, plugin: &str, command: &str, container: &str, netns: &str, args: &str, stdin: &str) -> Output {
    let mut cmd = ns_command(&lab.node_ns(), &[plugin]);
    cmd.env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_ARGS", args)
        .env("CNI_PATH", CNI_PATH)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{plugin} {command} did not finish in 30 s");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The reference ptp plugin with host-local IPAM for both families, addresses from the node's
/// /80 and the node-local IPv4 range (away from the lab's own pods).
fn ptp_conf(lab: &Lab) -> serde_json::Value {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "podgate-test",
        "type": "ptp",
        "ipMasq": false,
        "ipam": {
            "type": "host-local",
            "dataDir": lab.state_dir().join("ipam"),
            "ranges": [
                [{"subnet": "2001:db8:0:1::/80", "rangeStart": "2001:db8:0:1::100", "rangeEnd": "2001:db8:0:1::1ff"}],
                [{"subnet": "169.254.172.0/22", "rangeStart": "169.254.173.10", "rangeEnd": "169.254.173.250", "gateway": "169.254.172.1"}]
            ]
        }
    })
}

fn pod_list(lab: &Lab) -> Vec<serde_json::Value> {
    let o = ns_command(&lab.node_ns(), &[PODGATE, "--pin-root", lab.pin_root().to_str().unwrap(), "pod", "list", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap().as_array().unwrap().clone()
}

fn pod_names(lab: &Lab) -> Vec<String> {
    pod_list(lab).iter().map(|p| p["name"].as_str().unwrap().to_string()).collect()
}

#[test]
fn cni_add_check_del_with_the_reference_plugins() {
    assert!(
        std::path::Path::new(&format!("{CNI_PATH}/ptp")).exists(),
        "the reference CNI plugins are missing: `cargo xtask setup` installs containernetworking-plugins"
    );
    sweep_orphans();
    let lab = Lab::up(LabSpec::new(format!("c{}-cni", std::process::id()), 1)).unwrap();
    let root = lab.pin_root();
    let cfg = lab.config_path();
    let _daemon = lab
        .spawn_logged(&lab.node_ns(), &[PODGATE, "run", "--config", cfg.to_str().unwrap()], "podgate.log")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !root.join("links").read_dir().map(|mut d| d.next().is_some()).unwrap_or(false) {
        assert!(Instant::now() < deadline, "daemon did not start");
        thread::sleep(Duration::from_millis(100));
    }
    let netns = Netns::new(format!("pgc-{}", std::process::id()));
    let container = "0123456789abcdef0123456789abcdef";
    let k8s = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0";
    let ptp_conf = ptp_conf(&lab);
    let out = cni(&lab, &format!("{CNI_PATH}/ptp"), "ADD", container, &netns.path(), k8s, &ptp_conf.to_string());
    assert!(out.status.success(), "ptp ADD: {} {}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let prev: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let chained = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "podgate-test",
        "type": "podgate",
        "pin_root": root,
        "prevResult": prev,
    });

    // ADD registers the pod before returning, and passes prevResult on.
    let out = cni(&lab, PODGATE, "ADD", container, &netns.path(), k8s, &chained.to_string());
    assert!(out.status.success(), "podgate ADD: {}", String::from_utf8_lossy(&out.stdout));
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["ips"], prev["ips"]);
    let name = "shop/web-0@0123456789ab".to_string();
    assert!(pod_names(&lab).contains(&name), "{:?}", pod_names(&lab));

    let out = cni(&lab, PODGATE, "CHECK", container, &netns.path(), k8s, &chained.to_string());
    assert!(out.status.success(), "CHECK: {}", String::from_utf8_lossy(&out.stdout));

    // Malformed input: an error object, exit 1, nothing registered.
    let out = cni(&lab, PODGATE, "ADD", "ffffffffffff", &netns.path(), "", "{\"cniVersion\": \"1.0.0\", ");
    assert!(!out.status.success());
    let err: serde_json::Value = serde_json::from_slice(&out.stdout).expect("error JSON on stdout");
    assert_eq!(err["code"], 6, "{err}");
    assert!(err["msg"].as_str().unwrap().contains("decode"));
    assert!(pod_names(&lab).contains(&name), "{:?}", pod_names(&lab));

    // A chained ADD without prevResult is a config error (code 7), also with nothing registered.
    let no_prev = serde_json::json!({"cniVersion": "1.0.0", "name": "x", "type": "podgate", "pin_root": root});
    let out = cni(&lab, PODGATE, "ADD", "eeeeeeeeeeee", &netns.path(), "", &no_prev.to_string());
    let err: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!out.status.success() && err["code"] == 7, "{err}");
    assert_eq!(pod_names(&lab).len(), 2);

    // DEL of a container podgate never saw succeeds (spec: DEL is idempotent).
    let out = cni(&lab, PODGATE, "DEL", "aaaaaaaaaaaa", &netns.path(), "", &chained.to_string());
    assert!(out.status.success(), "DEL unknown: {}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(pod_names(&lab).len(), 2);

    // DEL removes the pod and its links.
    let out = cni(&lab, PODGATE, "DEL", container, &netns.path(), k8s, &chained.to_string());
    assert!(out.status.success(), "DEL: {}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(pod_names(&lab), vec!["pod0".to_string()]);
    let links: Vec<_> = root.join("links").read_dir().unwrap().filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
    assert_eq!(links.len(), 4, "only the uplink and pod0 should stay attached: {links:?}");
    let out = cni(&lab, &format!("{CNI_PATH}/ptp"), "DEL", container, &netns.path(), k8s, &ptp_conf.to_string());
    assert!(out.status.success(), "ptp DEL: {}", String::from_utf8_lossy(&out.stderr));

    let out = cni(&lab, PODGATE, "VERSION", "", "", "", "");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["supportedVersions"].as_array().unwrap().iter().any(|s| s == "1.0.0"));

    // Run by a person: what it is, exit 0, no JSON decode error.
    let out = Command::new(PODGATE).args(["cni", "--help"]).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("CNI protocol versions supported"), "{out:?}");
    let out = Command::new(PODGATE).arg("cni").env_remove("CNI_COMMAND").stdin(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("STATUS"), "{out:?}");
}

/// Security groups from the conflist (`securityGroups`) and from CNI_ARGS
/// (`PODGATE_SECURITY_GROUPS`), resolved by the daemon over its socket and written into the pod
/// record the programs read; an unknown group registers nothing; without a daemon, groups are
/// refused while DEL still works on the pins.
#[test]
fn cni_add_with_security_groups_through_the_daemon() {
    let lab = common::lab("c", "cnisg", 1);
    let root = lab.pin_root();
    let cfg = std::fs::read_to_string(lab.config_path()).unwrap();
    let groups = "\n[security_groups.web]\ningress = [{ proto = \"tcp\", ports = \"80\", cidr = \"::/0\" }]\n\
                  \n[security_groups.db]\ningress = [{ proto = \"tcp\", ports = \"5432\", group = \"web\" }]\n";
    std::fs::write(lab.config_path(), format!("{cfg}{groups}")).unwrap();
    let daemon = common::start_daemon(&lab, "podgate.log");
    // The daemon is SIGKILLed below and leaves its socket file.
    let _socket = common::RemoveOnDrop(podgate::control::default_socket(&root));
    let netns = Netns::new(format!("pgs-{}", std::process::id()));
    let container = "5123456789abcdef0123456789abcdef";
    let k8s = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=db-0;PODGATE_SECURITY_GROUPS=db";
    let ptp_conf = ptp_conf(&lab);
    let out = cni(&lab, &format!("{CNI_PATH}/ptp"), "ADD", container, &netns.path(), k8s, &ptp_conf.to_string());
    assert!(out.status.success(), "ptp ADD: {} {}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let prev: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let chained = |groups: &[&str]| {
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "podgate-test",
            "type": "podgate",
            "pin_root": root,
            "securityGroups": groups,
            "prevResult": prev,
        })
        .to_string()
    };

    // An unknown group: CNI config error, nothing registered.
    let out = cni(&lab, PODGATE, "ADD", "eeeeeeeeeeee", &netns.path(), "PODGATE_SECURITY_GROUPS=nosuch", &chained(&["web"]));
    assert!(!out.status.success());
    let err: serde_json::Value = serde_json::from_slice(&out.stdout).expect("error JSON on stdout");
    assert!(err["code"] == 7 && err["msg"].as_str().unwrap().contains("nosuch"), "{err}");
    assert_eq!(pod_list(&lab).len(), 1, "{:?}", pod_list(&lab));

    // The network's group plus the pod's own from CNI_ARGS.
    let out = cni(&lab, PODGATE, "ADD", container, &netns.path(), k8s, &chained(&["web"]));
    assert!(out.status.success(), "podgate ADD: {}", String::from_utf8_lossy(&out.stdout));
    let name = "shop/db-0@5123456789ab";
    let pods = pod_list(&lab);
    let pod = pods.iter().find(|p| p["name"] == name).unwrap_or_else(|| panic!("{pods:?}"));
    assert_eq!(pod["security_groups"], serde_json::json!(["web", "db"]), "{pod}");
    // The record the programs read carries the ids the dataplane gave those groups.
    let sg = ns_command(&lab.node_ns(), &[PODGATE, "--pin-root", root.to_str().unwrap(), "sg", "list", "--json"]).output().unwrap();
    let sg: serde_json::Value = serde_json::from_slice(&sg.stdout).unwrap();
    let id = |g: &str| sg.as_array().unwrap().iter().find(|r| r["name"] == g).unwrap()["id"].clone();
    assert_eq!(pod["groups"], serde_json::json!([id("web"), id("db")]), "{pod} {sg}");

    let out = cni(&lab, PODGATE, "CHECK", container, &netns.path(), k8s, &chained(&["web"]));
    assert!(out.status.success(), "CHECK: {}", String::from_utf8_lossy(&out.stdout));
    // CHECK compares the groups too.
    let out = cni(&lab, PODGATE, "CHECK", container, &netns.path(), "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=db-0", &chained(&["web"]));
    assert!(!out.status.success(), "CHECK with other groups passed: {}", String::from_utf8_lossy(&out.stdout));

    // CNI 1.1 STATUS: ready while the daemon answers.
    let status_conf = serde_json::json!({"cniVersion": "1.1.0", "name": "podgate-test", "type": "podgate", "pin_root": root}).to_string();
    let out = cni(&lab, PODGATE, "STATUS", "", "", "", &status_conf);
    assert!(out.status.success(), "STATUS with a daemon: {}", String::from_utf8_lossy(&out.stdout));
    // CNI 1.1 GC: a pod whose attachment is still valid stays, one whose is not goes; the lab's
    // hand-made pod0 is never collected.
    let gc = |valid: serde_json::Value| {
        serde_json::json!({"cniVersion": "1.1.0", "name": "podgate-test", "type": "podgate", "pin_root": root,
                           "cni.dev/valid-attachments": valid})
        .to_string()
    };
    let out = cni(&lab, PODGATE, "GC", "", "", "", &gc(serde_json::json!([{"containerID": container, "ifname": "eth0"}])));
    assert!(out.status.success(), "GC: {}", String::from_utf8_lossy(&out.stdout));
    assert!(pod_names(&lab).iter().any(|n| n == name), "GC removed a valid attachment: {:?}", pod_names(&lab));
    let out = cni(&lab, PODGATE, "GC", "", "", "", &gc(serde_json::json!([{"containerID": "0000aaaa0000", "ifname": "eth0"}])));
    assert!(out.status.success(), "GC: {}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(pod_names(&lab), vec!["pod0".to_string()], "GC left a stale attachment or took pod0");
    let out = cni(&lab, PODGATE, "ADD", container, &netns.path(), k8s, &chained(&["web"]));
    assert!(out.status.success(), "podgate ADD after GC: {}", String::from_utf8_lossy(&out.stdout));

    // Without a daemon: groups cannot be resolved (nothing registered); DEL works on the pins.
    unsafe { libc::kill(daemon.pid() as i32, libc::SIGKILL) };
    drop(daemon);
    let out = cni(&lab, PODGATE, "ADD", "dddddddddddd", &netns.path(), "", &chained(&["web"]));
    assert!(!out.status.success());
    let err: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(err["msg"].as_str().unwrap().contains("need the podgate daemon"), "{err}");
    assert_eq!(pod_list(&lab).len(), 2);
    let out = cni(&lab, PODGATE, "STATUS", "", "", "", &status_conf);
    assert!(!out.status.success(), "STATUS without a daemon passed");
    let err: serde_json::Value = serde_json::from_slice(&out.stdout).expect("error JSON on stdout");
    assert_eq!(err["code"], 50, "{err}");
    let out = cni(&lab, PODGATE, "DEL", container, &netns.path(), k8s, &chained(&["web"]));
    assert!(out.status.success(), "DEL: {}", String::from_utf8_lossy(&out.stdout));
    assert!(!pod_list(&lab).iter().any(|p| p["name"] == name));
    let out = cni(&lab, &format!("{CNI_PATH}/ptp"), "DEL", container, &netns.path(), k8s, &ptp_conf.to_string());
    assert!(out.status.success(), "ptp DEL: {}", String::from_utf8_lossy(&out.stderr));
}
