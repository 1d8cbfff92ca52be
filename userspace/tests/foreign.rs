//! Another tool's programs on podgate's hooks (issue 7: "coexist or refuse, per a flag — never
//! silently replace it"). The "other tool" is this test: it loads the no-op programs of the eBPF
//! object privately (nothing pinned) inside the lab's node namespace and attaches them to the
//! uplink's XDP slot, a pod veth's tcx chain and a clsact filter on another pod veth.

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    thread,
    time::{Duration, Instant},
};

mod common;

use aya::{
    Ebpf, EbpfLoader,
    programs::{
        SchedClassifier, Xdp,
        tc::{self, NlOptions, TcAttachOptions, TcAttachType},
        xdp::XdpMode,
    },
};
use common::{PODGATE, podgate_cli};
use podgate_lab::{ChildGuard, Family, Lab, NODE_V4, UPLINK};

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

/// What the "other tool" attached, with the ids and tags a refusal must name.
struct Other {
    _ebpf: Ebpf,
    xdp_id: u32,
    xdp_tag: String,
    tcx_id: u32,
    nl_id: u32,
    /// The veth carrying the tcx program and the one carrying the clsact filter.
    tcx_veth: String,
    nl_veth: String,
    tcx: bool,
}

const OTHER_PRIORITY: u16 = 100;

/// Must be called inside the node namespace; the programs stay attached while the value lives
/// (aya detaches them when it drops) and vanish with the namespace in any case.
/// `tcx`: the program on the first pod veth is a tcx link; otherwise a clsact filter too.
fn attach_other_tool(lab: &Lab, tcx: bool) -> Other {
    let mut loader = EbpfLoader::new();
    // Only the no-op programs run: keep the unused maps small.
    for m in ["nat4_map", "nat4_claim", "ct4", "ct6"] {
        loader.map_max_entries(m, 1024);
    }
    let mut ebpf = loader.load(podgate::EBPF_OBJECT).expect("load the object");
    let xdp: &mut Xdp = ebpf.program_mut("noop_xdp").unwrap().try_into().unwrap();
    xdp.load().unwrap();
    xdp.attach(UPLINK, XdpMode::Skb).expect("attach the other XDP program");
    let info = xdp.info().unwrap();
    let (xdp_id, xdp_tag) = (info.id(), format!("{:016x}", info.tag()));
    let tc_prog: &mut SchedClassifier = ebpf.program_mut("noop_tc").unwrap().try_into().unwrap();
    tc_prog.load().unwrap();
    let tcx_veth = lab.pod(0).veth.clone();
    let nl_veth = lab.pod(0).veth_v4.clone();
    let clsact = |p: &mut SchedClassifier, dev: &str| {
        let _ = tc::qdisc_add_clsact(dev);
        p.attach_with_options(
            dev,
            TcAttachType::Ingress,
            TcAttachOptions::Netlink(NlOptions { priority: OTHER_PRIORITY, ..Default::default() }),
        )
        .expect("clsact filter");
    };
    if tcx {
        tc_prog.attach(&tcx_veth, TcAttachType::Ingress).expect("tcx attach");
    } else {
        clsact(tc_prog, &tcx_veth);
    }
    clsact(tc_prog, &nl_veth);
    let id = tc_prog.info().unwrap().id();
    Other { _ebpf: ebpf, xdp_id, xdp_tag, tcx_id: id, nl_id: id, tcx_veth, nl_veth, tcx }
}

/// `ip`/`tc` output in the node namespace: an independent view of what is attached.
fn shell(lab: &Lab, argv: &[&str]) -> String {
    let o = lab.exec_in(&lab.node_ns(), argv).unwrap();
    assert!(o.status.success(), "{argv:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The ids of the tcx programs on a hook, in run order (the test thread is in the node ns).
fn tcx_ids(ifname: &str, dir: TcAttachType) -> Vec<(u32, String)> {
    SchedClassifier::query_tcx(ifname, dir)
        .unwrap()
        .1
        .iter()
        .map(|p| (p.id(), p.name_as_str().unwrap_or("").to_string()))
        .collect()
}

/// The other tool's three programs are all still where it put them.
fn assert_other_intact(lab: &Lab, o: &Other, when: &str) {
    let link = shell(lab, &["ip", "-d", "link", "show", "dev", UPLINK]);
    assert!(link.contains(&format!("id {}", o.xdp_id)), "{when}: the other XDP program is gone: {link}");
    if o.tcx {
        assert!(
            tcx_ids(&o.tcx_veth, TcAttachType::Ingress).iter().any(|(id, _)| *id == o.tcx_id),
            "{when}: the other tcx program is gone"
        );
    }
    let filter_devs = if o.tcx { vec![&o.nl_veth] } else { vec![&o.nl_veth, &o.tcx_veth] };
    for dev in filter_devs {
        let f = shell(lab, &["tc", "filter", "show", "dev", dev, "ingress"]);
        assert!(
            f.contains(&format!("pref {OTHER_PRIORITY}")) && f.contains(&format!("id {}", o.nl_id)),
            "{when}: the other clsact filter on {dev} is gone: {f}"
        );
    }
}

fn write_config(lab: &Lab, extra_node_keys: &str) -> String {
    let text = std::fs::read_to_string(lab.config_path()).unwrap();
    let text = text.replacen("[node]\n", &format!("[node]\n{extra_node_keys}"), 1);
    let path = lab.state_dir().join("foreign.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

fn start(lab: &Lab, args: &[&str], log: &str) -> ChildGuard {
    let mut argv = vec![PODGATE, "run"];
    argv.extend_from_slice(args);
    let d = lab.spawn_logged(&lab.node_ns(), &argv, log).expect("start podgate");
    let log = lab.state_dir().join(log);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("podgate: running") {
        assert!(Instant::now() < deadline, "podgate did not start: {}", std::fs::read_to_string(&log).unwrap_or_default());
        thread::sleep(Duration::from_millis(50));
    }
    d
}

#[test]
fn refuse_names_the_other_programs_and_attaches_nothing() {
    let lab = common::lab("f", "refuse", 1);
    let _ns = InNetns::enter(&lab.node_ns());
    let other = attach_other_tool(&lab, true);
    let cfg = lab.config_path();
    // The default is refuse.
    let o = lab
        .exec_in_for(&lab.node_ns(), &[PODGATE, "run", "--config", cfg.to_str().unwrap()], Duration::from_secs(60))
        .unwrap();
    assert!(!o.status.success(), "podgate started beside another tool's programs");
    let err = String::from_utf8_lossy(&o.stderr);
    for want in [
        format!("{UPLINK} XDP: program id {} name \"noop_xdp\" tag {}", other.xdp_id, other.xdp_tag),
        format!("{} tc ingress: program id {} name \"noop_tc\"", other.tcx_veth, other.tcx_id),
        "(tcx link)".to_string(),
        format!("{} tc ingress: program id {} name \"noop_tc\"", other.nl_veth, other.nl_id),
        format!("(clsact filter pref {OTHER_PRIORITY}"),
        "--foreign-programs coexist".to_string(),
    ] {
        assert!(err.contains(&want), "missing {want:?} in: {err}");
    }
    // Nothing of podgate anywhere: no pins, no program on any hook but the other tool's.
    assert!(!lab.pin_root().join("links").exists(), "links were pinned");
    assert_eq!(tcx_ids(&other.tcx_veth, TcAttachType::Ingress), vec![(other.tcx_id, "noop_tc".into())]);
    assert!(tcx_ids(&other.tcx_veth, TcAttachType::Egress).is_empty());
    assert!(tcx_ids(&other.nl_veth, TcAttachType::Ingress).is_empty());
    assert!(tcx_ids(UPLINK, TcAttachType::Ingress).is_empty());
    assert_other_intact(&lab, &other, "after the refusal");

    // The same with the key in the file instead of the default.
    let cfg = write_config(&lab, "foreign_programs = \"refuse\"\n");
    let o = lab.exec_in_for(&lab.node_ns(), &[PODGATE, "run", "--config", &cfg], Duration::from_secs(60)).unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("noop_xdp"));
    assert!(!lab.pin_root().join("links").exists());
}

/// Coexisting with tcx (auto) or with clsact filters (`tc_attach = "netlink"`) for podgate's own
/// programs: podgate works through the NAT and the other programs survive it and `reset`.
fn coexist(tag: &str, extra: &str) {
    let lab = common::lab("f", tag, 1);
    let _ns = InNetns::enter(&lab.node_ns());
    let netlink = extra.contains("netlink");
    // A clsact filter cannot go in front of a tcx program (see the test below).
    let other = attach_other_tool(&lab, !netlink);
    let cfg = write_config(&lab, extra);
    let d = start(&lab, &["--config", &cfg, "--foreign-programs", "coexist"], "podgate.log");
    let log = std::fs::read_to_string(lab.state_dir().join("podgate.log")).unwrap();
    assert!(log.contains("reverse NAT runs on TC ingress instead of XDP"), "{log}");
    assert!(log.contains("in front of another tool's programs"), "{log}");

    let st: serde_json::Value = serde_json::from_str(&podgate_cli(&lab, &["status", "--json"])).unwrap();
    assert_eq!(st["reverse_path"], "tc", "{st}");
    assert!(st["flags"].as_array().unwrap().iter().any(|f| f == "foreign_coexist"), "{st}");
    let foreign: Vec<String> =
        st["foreign_programs"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    assert!(foreign.iter().any(|f| f.contains(&format!("XDP: program id {}", other.xdp_id))), "{foreign:?}");
    assert!(foreign.iter().any(|f| f.starts_with(&other.tcx_veth) && f.contains(&format!("id {}", other.tcx_id))), "{foreign:?}");
    assert!(foreign.iter().any(|f| f.starts_with(&other.nl_veth) && f.contains(&format!("id {}", other.nl_id))), "{foreign:?}");

    // Real sockets through the NAT: the reverse path runs on TC behind the other XDP program.
    for p in [lab.http(0, Family::V4), lab.udp_echo(0, Family::V4)] {
        assert!(p.ok, "{p:?}");
        assert_eq!(p.seen, Some(std::net::IpAddr::V4(NODE_V4)), "{p:?}");
    }
    assert!(lab.ping(0, Family::V6).ok, "IPv6 through the pod veth");
    assert_other_intact(&lab, &other, "with podgate running");
    if netlink {
        // podgate's filter sits in front of the other one on the same clsact qdisc.
        for dev in [&other.nl_veth, &other.tcx_veth] {
            let f = shell(&lab, &["tc", "filter", "show", "dev", dev, "ingress"]);
            assert!(f.contains(&format!("pref {} bpf", OTHER_PRIORITY - 1)) && f.contains("pod_ingress"), "{dev}: {f}");
        }
    } else {
        // tcx: podgate first, the other program after it in the same chain.
        let chain = tcx_ids(&other.tcx_veth, TcAttachType::Ingress);
        assert_eq!(chain.len(), 2, "{chain:?}");
        assert_eq!(chain[0].1, "pod_ingress", "{chain:?}");
        assert_eq!(chain[1].0, other.tcx_id, "{chain:?}");
    }

    drop(d);
    assert_other_intact(&lab, &other, "after the daemon exited");
    // A restart adopts podgate's own pinned links (never mistaken for another tool's).
    let d = start(&lab, &["--config", &cfg, "--foreign-programs", "coexist"], "podgate2.log");
    let p = lab.http(0, Family::V4);
    assert!(p.ok, "after the restart: {p:?}");
    drop(d);
    assert_other_intact(&lab, &other, "after the restarted daemon exited");
    let out = podgate_cli(&lab, &["reset"]);
    assert!(out.contains("detached"), "{out}");
    assert_other_intact(&lab, &other, "after podgate reset");
    // podgate's own are gone, and only those.
    let left: Vec<(u32, String)> = if other.tcx { vec![(other.tcx_id, "noop_tc".into())] } else { vec![] };
    assert_eq!(tcx_ids(&other.tcx_veth, TcAttachType::Ingress), left);
    assert!(tcx_ids(UPLINK, TcAttachType::Ingress).is_empty());
    for dev in [&other.tcx_veth, &other.nl_veth, &UPLINK.to_string()] {
        let f = shell(&lab, &["tc", "filter", "show", "dev", dev, "ingress"]);
        assert!(!f.contains("pod_ingress") && !f.contains("uplink_tc"), "{dev}: {f}");
    }
}

#[test]
fn coexist_beside_tcx_clsact_and_xdp_programs() {
    coexist("tcx", "");
}

#[test]
fn coexist_with_netlink_filters_of_our_own() {
    coexist("nl", "tc_attach = \"netlink\"\n");
}

#[test]
fn netlink_filters_behind_another_tools_tcx_program_are_refused_even_in_coexist() {
    let lab = common::lab("f", "behind", 1);
    let _ns = InNetns::enter(&lab.node_ns());
    let other = attach_other_tool(&lab, true);
    let cfg = write_config(&lab, "tc_attach = \"netlink\"\nforeign_programs = \"coexist\"\n");
    let o = lab.exec_in_for(&lab.node_ns(), &[PODGATE, "run", "--config", &cfg], Duration::from_secs(60)).unwrap();
    assert!(!o.status.success(), "podgate started behind a tcx program");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("behind another tool's tcx") && err.contains(&format!("program id {}", other.tcx_id)), "{err}");
    assert!(!lab.pin_root().join("links").exists(), "links were pinned");
    assert_other_intact(&lab, &other, "after the refusal");
}
