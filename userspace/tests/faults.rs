//! Faults in the namespace lab: exhaustion and recovery, a pod veth vanishing under live flows,
//! another XDP program owner on the uplink. (SIGKILL of the daemon under load: snat_lab.rs and
//! daemon.rs; a pin root off bpffs: daemon.rs.)

mod labnode;

use std::{thread, time::Duration};

use labnode::{Node, PODGATE, inet};

fn answered(out: &str) -> usize {
    out.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{out}"))
}

fn stat(n: &Node, name: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(&n.cli(&["stats", "--json"])).unwrap();
    v.as_array().unwrap().iter().find(|r| r["counter"] == name).and_then(|r| r["value"].as_u64()).unwrap_or(0)
}

#[test]
fn port_pool_and_quota_exhaust_then_recover_after_gc() {
    // 64 ports (32 even), a quota of 40 mappings per pod, UDP mappings idle out after 2 s.
    let n = Node::up(
        "exh",
        2,
        "pod_quota = 40\nsnat_ports = \"40000-40063\"\n",
        "\n[timeouts]\nudp = 2\n\n[daemon]\ngc_interval = 1\n",
    );
    let (p0, p1) = (n.lab.pod_ns(0).to_string(), n.lab.pod_ns(1).to_string());

    // Pod 0: 34 even source ports toward one remote; only 32 even external ports exist.
    let out = n.py(&p0, &["udp-many", "42000", "34", &inet()]);
    assert_eq!(answered(&out), 32, "pool of 32 even ports: {out}");
    assert!(stat(&n, "drop_port_exhausted") >= 2, "exhaustion not counted");
    // Existing mappings still work (one of the first sockets again).
    let again = n.py(&p0, &["udp", "42000", "1", "0", &inet()]);
    assert!(again.contains("reply"), "existing mapping broken under exhaustion: {again}");
    // Pod 1 uses odd ports: unaffected by pod 0 filling the even ones.
    let odd = n.py(&p1, &["udp-many", "43001", "5", &inet()]);
    assert_eq!(answered(&odd), 5, "{odd}");
    // Quota: pod 1 may hold 40 mappings; the odd ports run out at 32 anyway, so use pod 1's
    // remaining quota against the odd pool: 27 more succeed (5 + 27 = 32), then exhaustion.
    let more = n.py(&p1, &["udp-many", "44001", "30", &inet()]);
    assert_eq!(answered(&more), 27, "{more}");

    // Recovery: idle mappings expire (2 s timeout, GC every second) and the pool is free again.
    thread::sleep(Duration::from_secs(5));
    let v: serde_json::Value = serde_json::from_str(&n.cli(&["nat", "list", "--json"])).unwrap();
    assert!(v.as_array().unwrap().is_empty(), "mappings left after expiry: {v}");
    let out = n.py(&p0, &["udp-many", "45000", "32", &inet()]);
    assert_eq!(answered(&out), 32, "pool did not recover after GC: {out}");
}

#[test]
fn pod_quota_exhaustion_spares_other_pods_and_recovers() {
    let n = Node::up("quota", 2, "pod_quota = 3\n", "\n[timeouts]\nudp = 2\n\n[daemon]\ngc_interval = 1\n");
    let (p0, p1) = (n.lab.pod_ns(0).to_string(), n.lab.pod_ns(1).to_string());
    assert_eq!(answered(&n.py(&p0, &["udp-many", "42000", "6", &inet()])), 3);
    assert!(stat(&n, "drop_pod_quota") >= 3, "quota drops not counted");
    assert_eq!(answered(&n.py(&p1, &["udp-many", "42000", "3", &inet()])), 3, "another pod paid for pod 0's quota");
    thread::sleep(Duration::from_secs(5));
    assert_eq!(answered(&n.py(&p0, &["udp-many", "46000", "3", &inet()])), 3, "quota not given back after GC");
}

#[test]
fn pod_veth_deleted_under_live_flows_then_pod_del_frees_its_state() {
    let n = Node::up("veth", 2, "", "");
    let p0 = n.lab.pod_ns(0).to_string();
    assert!(n.py(&p0, &["udp", "42000", "2", "0", &inet()]).contains("reply"));
    let pod0 = n.lab.pod(0);
    let ip4 = pod0.ipv4.to_string();
    let rows = |n: &Node, cmd: &str| -> usize {
        let v: serde_json::Value = serde_json::from_str(&n.cli(&[cmd, "list", "--json"])).unwrap();
        v.as_array().unwrap().iter().filter(|r| r["pod_addr"] == ip4).count()
    };
    assert!(rows(&n, "nat") >= 1 && rows(&n, "ct") >= 1);
    // The veths vanish (the pod's netns died, or someone deleted them) while flows exist.
    for dev in [&pod0.veth, &pod0.veth_v4] {
        let o = n.lab.exec_in(&n.lab.node_ns(), &["ip", "link", "del", dev]).unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    thread::sleep(Duration::from_millis(300));
    // The daemon is still alive and the other pod still works.
    let d = n.daemon.as_ref().map(|d| d.id()).unwrap();
    assert!(d.alive(), "daemon died when a pod veth vanished: {}", n.log("podgate.log"));
    assert!(n.py(n.lab.pod_ns(1), &["udp", "42000", "2", "0", &inet()]).contains("reply"));
    // `pod del` works and frees the pod's mappings and flows.
    n.cli(&["pod", "del", &pod0.name]);
    let list = n.cli(&["pod", "list", "--json"]);
    assert!(!list.contains(&format!("\"{}\"", pod0.name)), "{list}");
    assert_eq!(rows(&n, "nat"), 0, "mappings of the deleted pod left");
    assert_eq!(rows(&n, "ct"), 0, "flows of the deleted pod left");
}

#[test]
fn a_second_xdp_owner_on_the_uplink_is_refused_not_replaced() {
    let n = Node::up("xdp2", 1, "", "");
    let before = n.lab.exec_in(&n.lab.node_ns(), &["ip", "-d", "link", "show", "eni"]).unwrap();
    let before = String::from_utf8_lossy(&before.stdout).into_owned();
    assert!(before.contains("xdp"), "podgate's XDP program not attached: {before}");
    // Another instance (another pin root, so another owner) tries to take the same uplink.
    let cfg = std::fs::read_to_string(n.lab.state_dir().join("conformance.toml")).unwrap();
    let root = n.lab.pin_root();
    let other = root.with_file_name(format!("{}-other", root.file_name().unwrap().to_string_lossy()));
    let other_cfg = cfg
        .replace(root.to_str().unwrap(), other.to_str().unwrap())
        .split("[[pods]]")
        .next()
        .unwrap()
        .to_string()
        + "\n[daemon]\nmetrics = \"off\"\n";
    let path = n.lab.state_dir().join("other.toml");
    std::fs::write(&path, other_cfg).unwrap();
    let o = n
        .lab
        .exec_in_for(&n.lab.node_ns(), &[PODGATE, "run", "--config", path.to_str().unwrap()], Duration::from_secs(20))
        .unwrap();
    let _ = std::fs::remove_dir_all(&other);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "a second XDP owner was accepted: {err}");
    assert!(err.to_lowercase().contains("xdp") || err.contains("uplink_xdp"), "error does not say what failed: {err}");
    let after = n.lab.exec_in(&n.lab.node_ns(), &["ip", "-d", "link", "show", "eni"]).unwrap();
    let after = String::from_utf8_lossy(&after.stdout).into_owned();
    let prog_id = |s: &str| s.split_whitespace().skip_while(|w| *w != "prog/xdp").nth(1).map(str::to_string);
    assert_eq!(prog_id(&before), prog_id(&after), "the uplink's XDP program changed:\n{before}\n{after}");
    assert!(n.py(n.lab.pod_ns(0), &["udp", "42000", "2", "0", &inet()]).contains("reply"), "podgate broken by the attempt");
}

#[test]
fn the_snat_address_follows_the_uplink_when_not_configured() {
    let mut n = Node::up("addr", 1, "", "\n[daemon]\ngc_interval = 1\n");
    // Restart the daemon without `node.ipv4`: the address comes from the uplink.
    drop(n.daemon.take());
    thread::sleep(Duration::from_millis(300));
    let cfg = std::fs::read_to_string(n.lab.state_dir().join("conformance.toml")).unwrap();
    let cfg: String = cfg.lines().filter(|l| !l.starts_with("ipv4 = \"198.51.100.2\"")).map(|l| format!("{l}\n")).collect();
    let path = n.lab.state_dir().join("noaddr.toml");
    std::fs::write(&path, &cfg).unwrap();
    let _d = n.lab.spawn_logged(&n.lab.node_ns(), &[PODGATE, "run", "--config", path.to_str().unwrap()], "podgate-2.log").unwrap();
    assert!(n.wait_log("podgate-2.log", "podgate: running", Duration::from_secs(30)), "{}", n.log("podgate-2.log"));
    let p0 = n.lab.pod_ns(0).to_string();
    let seen = |n: &Node, sport: &str| n.py(&p0, &["udp", sport, "2", "0", &inet()]);
    assert!(seen(&n, "42000").contains("seen 198.51.100.2 "), "before the change");
    for argv in [["ip", "addr", "del", "198.51.100.2/24", "dev", "eni"], ["ip", "addr", "add", "198.51.100.3/24", "dev", "eni"]] {
        let o = n.lab.exec_in(&n.lab.node_ns(), &argv).unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert!(n.wait_log("podgate-2.log", "uplink address changed", Duration::from_secs(5)), "{}", n.log("podgate-2.log"));
    let out = seen(&n, "42002");
    assert!(out.contains("seen 198.51.100.3 "), "after the change: {out}");
    let st: serde_json::Value = serde_json::from_str(&n.cli(&["status", "--json"])).unwrap();
    assert!(st.to_string().contains("198.51.100.3"), "{st}");
}

/// The daemon's Prometheus text, fetched inside the node namespace.
fn metrics(n: &Node) -> String {
    let o = n
        .lab
        .exec_in(&n.lab.node_ns(), &["python3", "-c", "import urllib.request as u; print(u.urlopen('http://127.0.0.1:9542/metrics', timeout=5).read().decode())"])
        .unwrap();
    assert!(o.status.success(), "metrics: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.parse().ok()))
        .unwrap_or_else(|| panic!("no metric {name}"))
}

#[test]
fn nat_maps_full_refuse_new_flows_then_recover() {
    // Maps as small as the daemon allows here, a flood of 1.5 times what they hold, UDP idle
    // timeout 10 s, GC every second.
    let ncpus = aya::util::nr_cpus().unwrap() as u64;
    let size = podgate_common::pressure::min_entries(ncpus).max(1024);
    let mut n = Node::up(
        "full",
        2,
        "",
        &format!("\n[timeouts]\nudp = 10\n\n[daemon]\ngc_interval = 1\n\n[limits]\nnat_mappings = {size}\nconntrack = {size}\n"),
    );
    let (p0, p1) = (n.lab.pod_ns(0).to_string(), n.lab.pod_ns(1).to_string());
    let each = (size * 3 / 4).to_string();
    let a0 = answered(&n.py(&p0, &["udp-flood", "42000", &each, &inet()]));
    let a1 = answered(&n.py(&p1, &["udp-flood", "42000", &each, &inet()]));
    assert!(a0 + a1 > 0, "the flood got no answers at all");
    assert!(n.wait_log("podgate.log", "refusing new flows", Duration::from_secs(5)), "no pressure: {}", n.log("podgate.log"));

    // The daemon is up and says so; new flows are refused and counted; the pinned state is
    // listed; a flow of the flood still works.
    assert!(n.daemon.as_mut().unwrap().exited().is_none(), "the daemon died: {}", n.log("podgate.log"));
    let m = metrics(&n);
    assert_eq!(metric(&m, "podgate_map_pressure"), 1.0, "{m}");
    assert!(m.contains("podgate_lru_evictions_total{kind=\"mapping_restored\"}"), "{m}");
    let before = stat(&n, "drop_map_full");
    assert_eq!(answered(&n.py(&p0, &["udp-many", "46000", "3", &inet()])), 0, "a new flow got through under pressure");
    assert!(stat(&n, "drop_map_full") >= before + 3, "refusals not counted");
    let flows: serde_json::Value = serde_json::from_str(&n.cli(&["ct", "list", "--json"])).unwrap();
    let flows = flows.as_array().unwrap();
    assert!(!flows.is_empty() && flows.len() as u64 <= size, "{} flows listed", flows.len());
    let maps: serde_json::Value = serde_json::from_str(&n.cli(&["nat", "list", "--json"])).unwrap();
    let kept = maps.as_array().unwrap().iter().find(|r| r["pod_addr"] == n.lab.pod(0).ipv4.to_string() && r["proto"] == "udp").cloned();
    let kept = kept.unwrap_or_else(|| panic!("no mapping of pod 0 listed: {maps}"));
    let port = kept["pod_port"].as_u64().unwrap().to_string();
    let again = n.py(&p0, &["udp", &port, "2", "0", &inet()]);
    assert!(again.contains("reply"), "an existing flow broke under pressure: {again}");
    eprintln!("evictions: {}", m.lines().filter(|l| l.starts_with("podgate_lru_evict")).collect::<Vec<_>>().join("; "));

    // Recovering: the flood's flows idle out, the GC frees the maps, new flows work again.
    assert!(n.wait_log("podgate.log", "new flows accepted again", Duration::from_secs(20)), "{}", n.log("podgate.log"));
    assert_eq!(metric(&metrics(&n), "podgate_map_pressure"), 0.0);
    assert_eq!(answered(&n.py(&p1, &["udp-many", "47000", "10", &inet()])), 10, "no recovery after GC");
    assert!(n.daemon.as_mut().unwrap().exited().is_none());
}

/// The state a dry run must leave alone: (proto, pod address, pod port, external port) of every
/// mapping and (proto, pod port, remote, external port) of every flow.
fn nat_state(n: &Node) -> (Vec<String>, Vec<String>) {
    let rows = |cmd: &str, keys: &[&str]| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(&n.cli(&[cmd, "list", "--json"])).unwrap();
        let mut r: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|r| keys.iter().map(|k| r[*k].to_string()).collect::<Vec<_>>().join(" "))
            .collect();
        r.sort();
        r
    };
    (
        rows("nat", &["proto", "pod_addr", "pod_port", "ext_port"]),
        rows("ct", &["proto", "pod_addr", "pod_port", "remote_addr", "remote_port", "ext_port"]),
    )
}

#[test]
fn gc_dry_run_changes_nothing_through_the_daemon_or_the_pins() {
    let mut n = Node::up("gcdry", 1, "", "");
    let p0 = n.lab.pod_ns(0).to_string();
    assert_eq!(answered(&n.py(&p0, &["udp-many", "42000", "6", &inet()])), 6);
    let before = nat_state(&n);
    assert!(before.0.len() >= 6 && before.1.len() >= 6, "no state to preview: {before:?}");
    // A day ahead every one of them would expire; the preview says so and deletes nothing.
    let preview = |n: &Node| -> serde_json::Value {
        serde_json::from_str(&n.cli(&["gc", "--dry-run", "--advance", "86400"])).unwrap()
    };
    let v = preview(&n);
    assert_eq!(v["dry_run"], true, "{v}");
    assert_eq!(v["deleted"], false, "{v}");
    assert!(v["mappings_would_expire"].as_u64() >= Some(6), "{v}");
    assert!(v["flows_would_expire"].as_u64() >= Some(6), "{v}");
    assert_eq!(nat_state(&n), before, "a dry run through the daemon changed the state");
    assert!(n.py(&p0, &["udp", "42000", "2", "0", &inet()]).contains("reply"), "mapping broken by the preview");
    // `--advance` alone would delete live state: refused, nothing changed.
    let root = n.lab.pin_root();
    let o = n
        .lab
        .exec_in(&n.lab.node_ns(), &[PODGATE, "--pin-root", root.to_str().unwrap(), "gc", "--advance", "86400"])
        .unwrap();
    assert!(!o.status.success(), "gc --advance without --dry-run/--delete-live was accepted");
    assert!(String::from_utf8_lossy(&o.stderr).contains("--dry-run"), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(nat_state(&n), before, "a refused gc --advance changed the state");

    // The same through the pinned maps, with the daemon stopped.
    let before = nat_state(&n);
    n.daemon.take().unwrap().stop();
    let v = preview(&n);
    assert!(v["mappings_would_expire"].as_u64() >= Some(6), "{v}");
    assert_eq!(nat_state(&n), before, "a dry run on the pins changed the state");
    // The explicit deleting form still expires them (the lab's long-timer tests rely on it).
    let v: serde_json::Value =
        serde_json::from_str(&n.cli(&["gc", "--advance", "86400", "--delete-live"])).unwrap();
    assert_eq!(v["deleted"], true, "{v}");
    assert!(nat_state(&n).0.is_empty(), "--delete-live left mappings");
}

/// Mappings (`nat list`) of one pod address.
fn mappings_of(n: &Node, ipv4: &str) -> usize {
    let v: serde_json::Value = serde_json::from_str(&n.cli(&["nat", "list", "--json"])).unwrap();
    v.as_array().unwrap().iter().filter(|r| r["pod_addr"] == ipv4).count()
}

#[test]
fn interfaces_recreated_while_the_daemon_was_down_are_attached_afresh() {
    let mut n = Node::up("recreate", 2, "", "");
    let (p0, p1) = (n.lab.pod_ns(0).to_string(), n.lab.pod_ns(1).to_string());
    let (a0, a1) = (n.lab.pod(0).ipv4.to_string(), n.lab.pod(1).ipv4.to_string());
    assert!(n.py(&p0, &["udp", "42000", "2", "0", &inet()]).contains("reply"));
    assert!(n.py(&p1, &["udp", "42000", "2", "0", &inet()]).contains("reply"));
    assert!(mappings_of(&n, &a0) >= 1 && mappings_of(&n, &a1) >= 1);

    // A pod's veths replaced while podgate is down: its pinned links are severed.
    n.stop_daemon();
    n.lab.recreate_pod_veths(0).expect("recreate pod 0's veths");
    n.start_daemon().unwrap_or_else(|log| panic!("podgate did not start after pod 0's veths were recreated:\n{log}"));
    let log = n.log("podgate.log");
    let veth = &n.lab.pod(0).veth;
    assert!(
        log.contains("pinned link severed") && log.contains(&format!("attached afresh to {veth}")),
        "the log does not say what was re-attached:\n{log}"
    );
    assert!(log.contains("host interfaces are gone"), "the log does not name the flushed pod:\n{log}");
    // Pod 0's state pointed at the old interfaces: flushed. Pod 1 kept its mapping.
    assert_eq!(mappings_of(&n, &a0), 0, "mappings of the pod whose veths vanished were kept");
    assert!(mappings_of(&n, &a1) >= 1, "another pod's mappings were flushed");
    assert!(n.py(&p0, &["udp", "42000", "2", "0", &inet()]).contains("reply"), "pod 0 broken after re-attach");
    assert!(n.py(&p1, &["udp", "42000", "2", "0", &inet()]).contains("reply"), "pod 1 broken after re-attach");
    let six = n.lab.exec_in(&p0, &["ping", "-6", "-c", "1", "-W", "2", &podgate_lab::INTERNET_V6.to_string()]).unwrap();
    assert!(six.status.success(), "pod 0's IPv6 broken after re-attach: {}", String::from_utf8_lossy(&six.stdout));

    // The uplink replaced: the XDP link is severed.
    n.stop_daemon();
    n.lab.recreate_uplink().expect("recreate the uplink");
    n.start_daemon().unwrap_or_else(|log| panic!("podgate did not start after the uplink was recreated:\n{log}"));
    let log = n.log("podgate.log");
    assert!(log.contains("attached afresh to eni"), "the log does not say the uplink was re-attached:\n{log}");
    let link = n.lab.exec_in(&n.lab.node_ns(), &["ip", "-d", "link", "show", "eni"]).unwrap();
    assert!(String::from_utf8_lossy(&link.stdout).contains("prog/xdp"), "no XDP program on the new uplink");
    assert!(n.py(&p0, &["udp", "42001", "2", "0", &inet()]).contains("reply"), "SNAT broken after the uplink came back");
    assert!(n.py(&p1, &["udp", "42001", "2", "0", &inet()]).contains("reply"), "SNAT broken after the uplink came back");
}

fn reserved_ports(n: &Node) -> String {
    let o = n.lab.exec_in(&n.lab.node_ns(), &["cat", "/proc/sys/net/ipv4/ip_local_reserved_ports"]).unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[test]
fn node_sockets_never_get_a_port_a_pod_mapping_holds() {
    // The node namespace keeps the stock ip_local_port_range (32768-60999); podgate runs with
    // the default snat_ports. (Merging with the operator's entries: reserved_ports unit tests.)
    let mut n = Node::up("ports", 1, "", "");
    let ns = n.lab.node_ns();
    let o = n.lab.exec_in(&ns, &["sysctl", "-n", "net.ipv4.ip_local_port_range"]).unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).split_whitespace().collect::<Vec<_>>(), ["32768", "60999"]);
    let reserved = reserved_ports(&n);
    assert!(reserved.contains("49152-65535"), "podgate's range not reserved: {reserved:?}");
    // A pod holds 600 mappings toward the remote, then the node opens 600 sockets to it.
    let p0 = n.lab.pod_ns(0).to_string();
    assert_eq!(answered(&n.py(&p0, &["udp-many", "20000", "600", &inet()])), 600);
    let out = n.py(&ns, &["udp-ephemeral", "600", &inet()]);
    assert_eq!(answered(&out), 600, "node sockets lost their replies (to the pod?): {out}");
    // `reset --purge` gives back exactly what podgate added.
    n.stop_daemon();
    let root = n.lab.pin_root();
    let o = n.lab.exec_in(&ns, &[PODGATE, "--pin-root", root.to_str().unwrap(), "reset", "--purge"]).unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(reserved_ports(&n), "", "the reservation was not given back");
    // A range that would leave the node (nearly) no automatic ports: refused, naming both
    // ranges and the fix, and nothing reserved.
    let path = n.lab.state_dir().join("conformance.toml");
    let cfg = std::fs::read_to_string(&path).unwrap();
    let wide = cfg.replace(&format!("snat_ports = \"{}\"", podgate_lab::SNAT_PORTS), "snat_ports = \"32768-65535\"");
    assert_ne!(wide, cfg, "no snat_ports line in the lab config");
    std::fs::write(&path, wide).unwrap();
    let log = n.start_daemon().expect_err("podgate started with a range covering the node's whole ephemeral range");
    assert!(
        log.contains("32768-65535") && log.contains("32768-60999") && log.contains("ip_local_port_range"),
        "the refusal does not name both ranges and the fix:\n{log}"
    );
    assert_eq!(reserved_ports(&n), "", "a refused start left a reservation");
}
