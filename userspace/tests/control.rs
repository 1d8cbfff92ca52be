//! The daemon's control socket in the namespace lab: the CLI answered by the daemon, a runtime
//! pod given a security group through the socket and held to it by real connections, an unknown
//! group refused with nothing registered, the read verbs on the pins while the daemon is dead,
//! the stale socket replaced at the next start, the groups kept across the restart; and
//! `config check --json`.

mod common;

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::{
        fs::{FileTypeExt as _, PermissionsExt as _},
        net::UnixStream,
    },
    path::PathBuf,
    process::{Command, Output},
    thread,
    time::Duration,
};

use common::{PODGATE, connects6, listen6, start_daemon};
use podgate_lab::Lab;

const GROUPS: &str = r#"
[security_groups.web]
ingress = [{ proto = "tcp", ports = "80", cidr = "::/0" }]

[security_groups.db]
ingress = [{ proto = "tcp", ports = "5432", group = "web" }]
"#;

/// A podgate verb in the lab's node namespace with the lab's pin root (and so its socket).
fn cli(lab: &Lab, args: &[&str]) -> Output {
    let root = lab.pin_root();
    let mut argv = vec![PODGATE, "--pin-root", root.to_str().unwrap()];
    argv.extend_from_slice(args);
    lab.exec_in(&lab.node_ns(), &argv).unwrap()
}

fn ok_json(lab: &Lab, args: &[&str]) -> serde_json::Value {
    let o = cli(lab, args);
    assert!(o.status.success(), "podgate {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("podgate {args:?}: {e}: {}", String::from_utf8_lossy(&o.stdout)))
}

/// The socket a daemon on this lab's pin root listens on by default.
fn socket_of(lab: &Lab) -> PathBuf {
    podgate::control::default_socket(&lab.pin_root())
}

fn pod<'a>(list: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    list.as_array().unwrap().iter().find(|p| p["name"] == name)
}

#[test]
fn control_socket_runtime_pod_groups_sigkill_and_restart() {
    let lab = common::lab("k", "ctl", 3);
    // pod0 comes from the config; pod1 is registered at runtime through the socket.
    let cfg = std::fs::read_to_string(lab.config_path()).unwrap();
    let pod1_at = cfg.match_indices("[[pods]]").nth(1).unwrap().0;
    std::fs::write(lab.config_path(), format!("{}\n{GROUPS}", &cfg[..pod1_at])).unwrap();
    let socket = socket_of(&lab);
    // Removed by the last daemon's clean exit; this covers a test failing before it.
    let _cleanup = common::RemoveOnDrop(socket.clone());
    let daemon = start_daemon(&lab, "podgate-1.log");

    // The socket is there, private, and the daemon answers on it.
    let meta = std::fs::metadata(&socket).unwrap_or_else(|e| panic!("{}: {e}", socket.display()));
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let st = ok_json(&lab, &["status", "--json"]);
    assert_eq!(st["answered_by"], "daemon", "{st}");
    assert_eq!(st["daemon"]["pid"], daemon.pid(), "{st}");
    let text = String::from_utf8_lossy(&cli(&lab, &["status"]).stdout).into_owned();
    assert!(text.contains("answered by: daemon"), "{text}");

    // The wire protocol itself: one JSON line each way, versioned.
    let raw = |line: &str| -> serde_json::Value {
        let mut s = UnixStream::connect(&socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(format!("{line}\n").as_bytes()).unwrap();
        let mut answer = String::new();
        BufReader::new(s).read_line(&mut answer).unwrap();
        serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {answer:?}"))
    };
    let v = raw(r#"{"version":1,"request":{"verb":"pod_list"}}"#);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["result"][0]["name"], "pod0", "{v}");
    let v = raw(r#"{"version":2,"request":{"verb":"pod_list"}}"#);
    assert!(v["ok"] == false && v["error"].as_str().unwrap().contains("version 2"), "{v}");
    // A client that means another pin root is refused rather than answered about this one.
    let o = lab
        .exec_in(&lab.node_ns(), &[PODGATE, "--pin-root", "/sys/fs/bpf/podgate-elsewhere", "--socket", socket.to_str().unwrap(), "pod", "list"])
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("this daemon serves pin root"), "{}", String::from_utf8_lossy(&o.stderr));

    let p = lab.pod(1).clone();
    let (ipv6, ipv4) = (p.ipv6.to_string(), p.ipv4.to_string());
    let add = |groups: &[&str]| {
        let mut args = vec!["pod", "add", "--name", "late", "--ipv6", &ipv6, "--ipv4", &ipv4, "--veth", &p.veth, "--veth-v4", &p.veth_v4];
        for g in groups {
            args.extend_from_slice(&["--security-group", g]);
        }
        cli(&lab, &args)
    };
    let links_before = st["links"].as_array().unwrap().len();

    // An unknown group: a clear error, and nothing registered or attached.
    let o = add(&["web", "nosuch"]);
    assert!(!o.status.success(), "an unknown group was accepted");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("nosuch") && err.contains("nothing was applied"), "{err}");
    assert!(pod(&ok_json(&lab, &["pod", "list", "--json"]), "late").is_none());
    let st = ok_json(&lab, &["status", "--json"]);
    assert_eq!(st["links"].as_array().unwrap().len(), links_before, "{st}");

    // With a known group: registered with it, and the group's rules hold for real connections.
    let o = add(&["web"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let list = ok_json(&lab, &["pod", "list", "--json"]);
    let late = pod(&list, "late").unwrap_or_else(|| panic!("{list}"));
    assert_eq!(late["security_groups"], serde_json::json!(["web"]), "{list}");
    let sg = ok_json(&lab, &["sg", "list", "--json"]);
    let web = sg.as_array().unwrap().iter().find(|g| g["name"] == "web").unwrap();
    assert_eq!(web["pods"], serde_json::json!(["late"]), "{sg}");

    let inet = lab.internet_ns();
    let _l80 = listen6(&lab, lab.pod_ns(1), 80);
    let _l81 = listen6(&lab, lab.pod_ns(1), 81);
    thread::sleep(Duration::from_millis(300));
    // Without its group the pod would admit nothing unsolicited; with it, tcp/80 only.
    assert!(connects6(&lab, &inet, &ipv6, 80), "internet → late tcp/80 must pass (group web)");
    assert!(!connects6(&lab, &inet, &ipv6, 81), "internet → late tcp/81 must be denied");

    // SIGKILL: the socket file stays behind, nobody answers on it; the read verbs fall back
    // to the pins and say so, with the same answers.
    let list_before = ok_json(&lab, &["pod", "list", "--json"]);
    let nat_before = ok_json(&lab, &["nat", "list", "--json"]);
    unsafe { libc::kill(daemon.pid() as i32, libc::SIGKILL) };
    drop(daemon);
    assert!(std::fs::symlink_metadata(&socket).is_ok(), "the killed daemon's socket file should still be there");
    let st = ok_json(&lab, &["status", "--json"]);
    assert_eq!(st["answered_by"], "pins", "{st}");
    assert!(st["daemon"].is_null(), "{st}");
    let text = String::from_utf8_lossy(&cli(&lab, &["status"]).stdout).into_owned();
    assert!(text.contains("answered by: pinned maps"), "{text}");
    assert_eq!(ok_json(&lab, &["pod", "list", "--json"]), list_before);
    assert_eq!(ok_json(&lab, &["nat", "list", "--json"]), nat_before);
    for verb in [&["sg", "list", "--json"][..], &["ct", "list", "--json"], &["stats", "--json"]] {
        ok_json(&lab, verb);
    }
    // The dataplane still enforces the group with no daemon at all.
    assert!(connects6(&lab, &inet, &ipv6, 80), "tcp/80 must still pass with the daemon dead");
    assert!(!connects6(&lab, &inet, &ipv6, 81), "tcp/81 must still be denied with the daemon dead");
    // Groups are the daemon's: without it, a pod add naming one fails and registers nothing.
    let o = cli(
        &lab,
        &["pod", "add", "--name", "other", "--ipv6", "2001:db8:0:1::77", "--ipv4", "169.254.172.77", "--veth", &p.veth, "--security-group", "web"],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("need the podgate daemon") && err.contains(socket.to_str().unwrap()), "{err}");
    assert!(pod(&ok_json(&lab, &["pod", "list", "--json"]), "other").is_none());
    // Other mutations fall back to the pins, and say so.
    let p2 = lab.pod(2).clone();
    let (v6, v4) = (p2.ipv6.to_string(), p2.ipv4.to_string());
    let o = cli(&lab, &["pod", "add", "--name", "plain", "--ipv6", &v6, "--ipv4", &v4, "--veth", &p2.veth, "--veth-v4", &p2.veth_v4]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let note = String::from_utf8_lossy(&o.stderr);
    assert!(note.contains("applied to the pinned maps directly"), "{note}");
    assert_eq!(pod(&ok_json(&lab, &["pod", "list", "--json"]), "plain").map(|p| &p["security_groups"]), Some(&serde_json::json!([])));

    // The next start finds the stale socket, sees nothing answers, and replaces it; the runtime
    // pod and its group survive the restart.
    let daemon2 = start_daemon(&lab, "podgate-2.log");
    let log = std::fs::read_to_string(lab.state_dir().join("podgate-2.log")).unwrap();
    assert!(log.contains("replacing a stale control socket"), "{log}");
    let st = ok_json(&lab, &["status", "--json"]);
    assert_eq!(st["answered_by"], "daemon", "{st}");
    assert_eq!(st["daemon"]["pid"], daemon2.pid(), "{st}");
    let list = ok_json(&lab, &["pod", "list", "--json"]);
    assert_eq!(pod(&list, "late").map(|p| &p["security_groups"]), Some(&serde_json::json!(["web"])), "{list}");
    assert!(pod(&list, "plain").is_some(), "{list}");
    assert!(connects6(&lab, &inet, &ipv6, 80), "tcp/80 must pass after the restart");
    assert!(!connects6(&lab, &inet, &ipv6, 81), "tcp/81 must be denied after the restart");

    // `sg apply` through the daemon also teaches it new groups: the runtime pod can then be
    // given one, and its rules hold at once.
    let api = lab.state_dir().join("with-api.toml");
    let text = std::fs::read_to_string(lab.config_path()).unwrap();
    std::fs::write(&api, format!("{text}\n[security_groups.api]\ningress = [{{ proto = \"tcp\", ports = \"81\", cidr = \"::/0\" }}]\n")).unwrap();
    let o = cli(&lab, &["sg", "apply", "--config", api.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = add(&["web", "api"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let list = ok_json(&lab, &["pod", "list", "--json"]);
    assert_eq!(pod(&list, "late").map(|p| &p["security_groups"]), Some(&serde_json::json!(["web", "api"])), "{list}");
    assert!(connects6(&lab, &inet, &ipv6, 81), "tcp/81 must pass once the pod is in group api");

    // A second daemon on the same pin root is refused while the first answers.
    let o = lab
        .exec_in(&lab.node_ns(), &[PODGATE, "run", "--config", lab.config_path().to_str().unwrap()])
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("another podgate daemon answers"), "{err}");

    // Deleting through the daemon; then a clean exit removes the socket.
    let o = cli(&lab, &["pod", "del", "late"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(o.stderr.is_empty(), "the daemon answered, no note expected: {}", String::from_utf8_lossy(&o.stderr));
    assert!(pod(&ok_json(&lab, &["pod", "list", "--json"]), "late").is_none());
    drop(daemon2);
    assert!(!socket.exists(), "a daemon stopped with SIGTERM must remove {}", socket.display());
}

#[test]
fn config_check_json_good_and_bad() {
    let dir = std::env::temp_dir().join(format!("podgate-cfgjson-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = format!(
        "[node]\nuplink = \"eni\"\nipv4 = \"198.51.100.2\"\npod_prefix = \"2001:db8:0:1::/80\"\n\n\
         [[pods]]\nname = \"a\"\nipv6 = \"2001:db8:0:1::a\"\nipv4 = \"169.254.172.10\"\nveth = \"vetha\"\nsecurity_groups = [\"web\"]\n{GROUPS}"
    );
    let check = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        let o = Command::new(PODGATE).args(["config", "check", "--json", path.to_str().unwrap()]).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("{name}: {e}: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)));
        (o.status.success(), v)
    };
    let (ok, v) = check("good.toml", &good);
    assert!(ok, "{v}");
    assert_eq!(v["ok"], true);
    assert_eq!(v["uplink"], "eni");
    assert_eq!(v["pod_prefix"], "2001:db8:0:1::/80");
    assert_eq!(v["pods"][0]["security_groups"], serde_json::json!(["web"]));
    assert_eq!(v["security_groups"], serde_json::json!(["db", "web"]));
    assert_eq!(v["socket"], "/run/podgate/podgate.sock");

    let cases = [
        (good.replace("::/80", "::/64"), "node.pod_prefix", Some("2001:db8:0:1::/64")),
        (good.replace("[node]", "[node]\nbogus_key = 1"), "bogus_key", None),
        (good.replace("ipv4 = \"169.254.172.10\"", "ipv4 = \"192.0.2.10\""), "pods[0].ipv4", Some("192.0.2.10")),
        (good.replace("ports = \"5432\"", "ports = \"99999\""), "security_groups.db.ingress[0].ports", Some("99999")),
        (format!("{good}\n[daemon]\nsocket = \"relative.sock\"\n"), "daemon.socket", Some("relative.sock")),
    ];
    for (i, (text, field, value)) in cases.iter().enumerate() {
        let (ok, v) = check(&format!("bad{i}.toml"), text);
        assert!(!ok, "case {i} accepted: {v}");
        assert_eq!(v["ok"], false, "{v}");
        assert_eq!(v["field"], *field, "case {i}: {v}");
        match value {
            Some(val) => assert_eq!(v["value"], *val, "case {i}: {v}"),
            None => assert!(v["value"].is_null(), "case {i}: {v}"),
        }
        let leaf = field.rsplit('.').next().unwrap();
        assert!(v["error"].as_str().unwrap().contains(leaf), "case {i}: {v}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
