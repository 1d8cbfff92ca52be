//! IPv6 security groups in the namespace lab, with real sockets: egress and ingress rules, the
//! default deny inbound, pod to pod by group, and every drop counted.

mod common;

use std::{thread, time::Duration};

use common::{connects6 as connects, counter, listen6 as listen, podgate_cli, start_daemon};

const INET6: &str = "2001:db8:ffff::1";

const GROUPS: &str = r#"
[security_groups.client]
egress = [
  { proto = "tcp", ports = "443", cidr = "2001:db8:ffff::/64" },
  { proto = "tcp", ports = "80", group = "web" },
]

[security_groups.web]
ingress = [{ proto = "tcp", ports = "80", cidr = "::/0" }]
"#;

#[test]
fn security_groups_with_real_sockets() {
    let lab = common::lab("g", "sg", 2);
    // pod0 is a client allowed out on tcp/443 only (and to the web group on tcp/80); pod1 is a
    // web server open on tcp/80.
    let cfg = std::fs::read_to_string(lab.config_path()).unwrap();
    let cfg = cfg.replacen("veth_v4 = \"v4pod0\"\n", "veth_v4 = \"v4pod0\"\nsecurity_groups = [\"client\"]\n", 1);
    let cfg = cfg.replacen("veth_v4 = \"v4pod1\"\n", "veth_v4 = \"v4pod1\"\nsecurity_groups = [\"web\"]\n", 1);
    std::fs::write(lab.config_path(), format!("{cfg}\n{GROUPS}")).unwrap();
    let _d = start_daemon(&lab, "podgate.log");
    let inet = lab.internet_ns();
    let _l443 = listen(&lab, &inet, 443);
    let _l22 = listen(&lab, &inet, 22);
    let pod1 = lab.pod(1).ipv6.to_string();
    let pod0 = lab.pod(0).ipv6.to_string();
    let _w80 = listen(&lab, lab.pod_ns(1), 80);
    let _w81 = listen(&lab, lab.pod_ns(1), 81);
    let _c80 = listen(&lab, lab.pod_ns(0), 80);
    thread::sleep(Duration::from_millis(300));

    // Egress rules of pod0.
    assert!(connects(&lab, lab.pod_ns(0), INET6, 443), "pod0 → internet tcp/443 must pass");
    let before = counter(&lab, "drop_sg6_egress");
    assert!(!connects(&lab, lab.pod_ns(0), INET6, 22), "pod0 → internet tcp/22 must be denied");
    assert!(counter(&lab, "drop_sg6_egress") > before, "the denied SYN was not counted");

    // Ingress rules of pod1; the internet reaches it on tcp/80 only.
    assert!(connects(&lab, &inet, &pod1, 80), "internet → pod1 tcp/80 must pass");
    let before = counter(&lab, "drop_sg6_ingress");
    assert!(!connects(&lab, &inet, &pod1, 81), "internet → pod1 tcp/81 must be denied");
    assert!(counter(&lab, "drop_sg6_ingress") > before, "the denied SYN was not counted");

    // Pod to pod on the node follows the rules: pod0 (client) → pod1 (web) on 80 passes, the
    // reverse direction hits pod0's default deny inbound.
    assert!(connects(&lab, lab.pod_ns(0), &pod1, 80), "pod0 → pod1 tcp/80 (group rule) must pass");
    assert!(!connects(&lab, lab.pod_ns(1), &pod0, 80), "pod1 → pod0 must be denied (no ingress rule)");
    // Unsolicited inbound to a pod without ingress rules.
    assert!(!connects(&lab, &inet, &pod0, 80), "internet → pod0 must be denied");

    let flows = podgate_cli(&lab, &["ct", "list", "--ipv6", "--json"]);
    assert!(flows.contains(&pod1) && flows.contains("\"remote\""), "{flows}");
    let groups = podgate_cli(&lab, &["sg", "list", "--json"]);
    assert!(groups.contains("\"client\"") && groups.contains("\"pod1\""), "{groups}");

    // A live change: pod1 no longer admits tcp/80. The tracked flow rule is AWS's: new
    // connections are refused at once.
    let changed = std::fs::read_to_string(lab.config_path()).unwrap().replace("ports = \"80\", cidr = \"::/0\"", "ports = \"8080\", cidr = \"::/0\"");
    let path = lab.state_dir().join("changed.toml");
    std::fs::write(&path, changed).unwrap();
    podgate_cli(&lab, &["sg", "apply", "--config", path.to_str().unwrap(), "--cut"]);
    assert!(!connects(&lab, &inet, &pod1, 80), "tcp/80 to pod1 must be denied after the change");
}
