//! The namespace lab: a podgate node, its pods and an "internet", built from `ip netns` and veth
//! pairs only, with nothing in the root network namespace.
//!
//! ```text
//!  pgl-<name>-podI                 pgl-<name>-node                      pgl-<name>-inet
//!  eth0  2001:db8:0:1::a+I/128 ── vethpodI  fe80::1                     198.51.100.1/24
//!        default via fe80::1                                            2001:db8:ffff::1/64
//!  v4if0 169.254.172.10+I/32 ──── v4podI                                HTTP :80, UDP echo :7,
//!        default via 169.254.172.1   (static neighbour)                 iperf3 :5201
//!                                  eni 198.51.100.2/24 ──────────────── node
//!                                      2001:db8:ffff::2/64              route to the pods' /80;
//!                                  forwarding v4+v6, no masquerade     no route to 169.254/16
//!                                                                       wan 203.0.113.1/24
//!                                                                           2001:db8:fffe::1/64
//!                                              pgl-<name>-far: wan 203.0.113.10, 2001:db8:fffe::10
//!                                              HTTP :80, UDP echo :7 (one router hop away; the
//!                                              `wan` MTU can be lowered for PMTU discovery tests)
//! ```
//!
//! Without podgate, IPv6 works end to end and IPv4 from pods does not: the internet knows only the
//! node's IPv4 and drops (rp_filter) any source it cannot route back to, like a VPC would.
//!
//! Everything a lab creates is written to `/run/podgate-lab/<name>/state` before it is created,
//! so [`down`] undoes a lab whose owner crashed; a [`Lab`] value downs its lab when dropped.

pub mod conformance;
mod daemon;
mod probe;
mod process;
mod state;
mod teardown;

use std::{
    fmt, fs,
    io::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

pub use daemon::podgate_has_daemon;
pub use probe::Probe;
pub use process::{ChildGuard, ProcId, output_with_deadline};
pub use state::STATE_ROOT;
pub use teardown::{DownReport, down, list, processes, status, sweep_orphans};

/// The node's uplink, as named in the node namespace and in the podgate config.
pub const UPLINK: &str = "eni";
/// The internet's side of the uplink.
pub const INTERNET_LINK: &str = "node";
pub const NODE_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
pub const INTERNET_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const NODE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 2);
pub const INTERNET_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1);
pub const POD_PREFIX: &str = "2001:db8:0:1::/80";
pub const POD_IPV4_CIDR: &str = "169.254.172.0/22";
/// The pods' IPv4 gateway (EKS style); the node answers for it through a static neighbour.
pub const POD_GW_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 172, 1);
/// The pods' IPv6 gateway, configured on every host-side pod veth.
pub const POD_GW_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
pub const SNAT_PORTS: &str = "49152-65535";
pub const HTTP_PORT: u16 = 80;
pub const UDP_ECHO_PORT: u16 = 7;
pub const IPERF_PORT: u16 = 5201;
pub const MAX_PODS: usize = 200;
/// The internet's link to the far endpoint, whose MTU [`Lab::set_path_mtu`] lowers.
pub const FAR_LINK: &str = "wan";
pub const FAR_GW_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
pub const FAR_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const FAR_GW_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xfffe, 0, 0, 0, 0, 1);
pub const FAR_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xfffe, 0, 0, 0, 0, 0x10);
const PIN_PREFIX: &str = "/sys/fs/bpf/podgate-lab-";
const ENDPOINT_PY: &str = include_str!("endpoint.py");
/// What the lab runs, with the Debian package that has it.
const REQUIRED_TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("ss", "iproute2"),
    ("nsenter", "util-linux"),
    ("sysctl", "procps"),
    ("python3", "python3"),
    ("iperf3", "iperf3"),
    ("curl", "curl"),
    ("socat", "socat"),
    ("ping", "iputils-ping"),
];

fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|d| {
            use std::os::unix::fs::PermissionsExt as _;
            fs::metadata(d.join(bin))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

#[derive(Debug, Clone)]
pub struct LabSpec {
    /// Lab name: 1–24 of `[A-Za-z0-9_-]`; namespaces are `pgl-<name>-{node,inet,far,podN}`.
    pub name: String,
    pub pods: usize,
    pub mode: Mode,
}

impl LabSpec {
    pub fn new(name: impl Into<String>, pods: usize) -> Self {
        Self {
            name: name.into(),
            pods,
            mode: Mode::Routed,
        }
    }

    pub fn with_mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }
}

/// How the node treats pods' IPv4 when podgate is not translating it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Plain forwarding, no NAT: pods' IPv4 gets nowhere (podgate's job).
    #[default]
    Routed,
    /// The VPC CNI's way, as a baseline: `iptables … -j SNAT --random-fully` to the node's IPv4.
    Iptables,
    /// nftables `masquerade` of the pods' IPv4 range out of the uplink (a benchmark baseline).
    Nftables,
}

impl std::str::FromStr for Mode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "routed" => Ok(Mode::Routed),
            "iptables" => Ok(Mode::Iptables),
            "nftables" => Ok(Mode::Nftables),
            _ => bail!("mode {s:?}: expected routed, iptables or nftables"),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Routed => "routed",
            Mode::Iptables => "iptables",
            Mode::Nftables => "nftables",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

impl Family {
    /// The internet endpoint's address in this family.
    pub fn endpoint(self) -> IpAddr {
        match self {
            Family::V4 => INTERNET_V4.into(),
            Family::V6 => INTERNET_V6.into(),
        }
    }

    /// The far endpoint's address (one router hop behind the internet namespace).
    pub fn far(self) -> IpAddr {
        match self {
            Family::V4 => FAR_V4.into(),
            Family::V6 => FAR_V6.into(),
        }
    }

    pub fn of(addr: IpAddr) -> Self {
        if addr.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
}

/// One pod of the lab, as written to the podgate config.
#[derive(Debug, Clone)]
pub struct Pod {
    pub index: usize,
    /// `podN`
    pub name: String,
    /// `pgl-<lab>-podN`
    pub ns: String,
    pub ipv6: Ipv6Addr,
    pub ipv4: Ipv4Addr,
    /// Host side (node namespace) of the pod's `eth0`.
    pub veth: String,
    /// Host side (node namespace) of the pod's `v4if0`.
    pub veth_v4: String,
}

impl Pod {
    fn new(lab: &str, index: usize) -> Self {
        let [a, b, c, d] = Ipv4Addr::new(169, 254, 172, 10).octets();
        Self {
            index,
            name: format!("pod{index}"),
            ns: format!("pgl-{lab}-pod{index}"),
            ipv6: Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, 0xa + index as u16),
            ipv4: Ipv4Addr::new(a, b, c, d + index as u8),
            veth: format!("vethpod{index}"),
            veth_v4: format!("v4pod{index}"),
        }
    }
}

/// A running lab. Dropping it takes the lab down (processes, namespaces, pins, state).
pub struct Lab {
    name: String,
    pods: Vec<Pod>,
    mode: Mode,
    servers: Vec<ChildGuard>,
    armed: bool,
}

pub fn node_ns_name(lab: &str) -> String {
    format!("pgl-{lab}-node")
}

pub fn internet_ns_name(lab: &str) -> String {
    format!("pgl-{lab}-inet")
}

pub fn far_ns_name(lab: &str) -> String {
    format!("pgl-{lab}-far")
}

/// The bpffs directory a lab's podgate pins to; `down` removes it.
pub fn pin_root(lab: &str) -> PathBuf {
    PathBuf::from(format!("{PIN_PREFIX}{lab}"))
}

pub fn state_dir(lab: &str) -> PathBuf {
    state::dir(lab)
}

pub fn config_path(lab: &str) -> PathBuf {
    state::dir(lab).join("podgate.toml")
}

/// `nsenter --net=/run/netns/<ns> -- argv…`: only the network namespace changes, the host's
/// mounts (and so its bpffs) stay, unlike `ip netns exec` which remounts /sys.
pub fn ns_command(ns: &str, argv: &[&str]) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{ns}"))
        .arg("--")
        .args(argv);
    cmd
}

fn validate_name(name: &str) -> Result<()> {
    ensure!(
        !name.is_empty()
            && name.len() <= 24
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "lab name {name:?}: use 1-24 characters from [A-Za-z0-9_-]"
    );
    Ok(())
}

/// Whether netns `ns` is one of lab `name`'s (exact shapes, so lab `a` never claims `a-pod0`'s).
fn belongs(name: &str, ns: &str) -> bool {
    let Some(rest) = ns.strip_prefix("pgl-").and_then(|r| r.strip_prefix(name)) else {
        return false;
    };
    match rest {
        "-node" | "-inet" | "-far" => true,
        _ => rest
            .strip_prefix("-pod")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())),
    }
}

/// Network namespaces known to `ip netns`.
pub fn netns_list() -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir("/run/netns")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn netns_exists(ns: &str) -> bool {
    Path::new("/run/netns").join(ns).exists()
}

/// Runs `cmd`, failing with its command line and stderr when it exits non-zero.
fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `ip -n <ns> -batch -` over `lines`: one process per namespace, stops at the first error.
/// The uplink veth, made from inside the node namespace with its peer put straight into `inet`.
fn uplink_node_cmds(inet: &str) -> Vec<String> {
    vec![
        format!("link add {UPLINK} type veth peer name {INTERNET_LINK} netns {inet}"),
        format!("link set {UPLINK} up"),
        format!("addr add {NODE_V4}/24 dev {UPLINK}"),
        format!("addr add {NODE_V6}/64 dev {UPLINK} nodad"),
        format!("route add default via {INTERNET_V4} dev {UPLINK}"),
        format!("route add default via {INTERNET_V6} dev {UPLINK}"),
    ]
}

/// The internet namespace's end of the uplink.
fn uplink_inet_cmds() -> Vec<String> {
    vec![
        format!("link set {INTERNET_LINK} up"),
        format!("addr add {INTERNET_V4}/24 dev {INTERNET_LINK}"),
        format!("addr add {INTERNET_V6}/64 dev {INTERNET_LINK} nodad"),
        format!("route add {POD_PREFIX} via {NODE_V6} dev {INTERNET_LINK}"),
    ]
}

/// A pod's two veth pairs, node side (run in the node namespace).
fn pod_node_cmds(p: &Pod) -> Vec<String> {
    let i = p.index;
    vec![
        format!("link add {} type veth peer name eth0 netns {}", p.veth, p.ns),
        format!(
            "link add {} address {} type veth peer name v4if0 address {} netns {}",
            p.veth_v4,
            mac(i, 1),
            mac(i, 2),
            p.ns
        ),
        format!("link set {} up", p.veth),
        format!("link set {} up", p.veth_v4),
        format!("addr add {POD_GW_V6}/64 dev {} nodad", p.veth),
        format!("route add {}/128 dev {}", p.ipv6, p.veth),
        format!("route add {}/32 dev {}", p.ipv4, p.veth_v4),
    ]
}

/// The pod namespace's side of its veths.
fn pod_ns_cmds(p: &Pod) -> Vec<String> {
    vec![
        "link set eth0 up".to_string(),
        "link set v4if0 up".to_string(),
        format!("addr add {}/128 dev eth0 nodad", p.ipv6),
        format!("route add default via {POD_GW_V6} dev eth0"),
        format!("addr add {}/32 dev v4if0", p.ipv4),
        format!("route add {POD_GW_V4} dev v4if0 scope link"),
        format!("route add default via {POD_GW_V4} dev v4if0"),
        // As the VPC CNI does: the gateway is the host veth, resolved statically.
        format!("neigh add {POD_GW_V4} lladdr {} dev v4if0 nud permanent", mac(p.index, 1)),
    ]
}

fn ip_batch(ns: &str, lines: &[String]) -> Result<()> {
    let mut child = Command::new("ip")
        .args(["-n", ns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("could not start `ip` (iproute2)")?;
    {
        let mut stdin = child.stdin.take().expect("piped");
        for l in lines {
            writeln!(stdin, "{l}")?;
        }
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        // ip reports the failing line as "Command failed -:N"; name the command itself.
        let line = err
            .rsplit_once("-:")
            .and_then(|(_, n)| n.trim().parse::<usize>().ok())
            .and_then(|n| lines.get(n.wrapping_sub(1)));
        bail!(
            "configuring netns {ns} failed at `ip {}`: {}",
            line.map_or("?", |l| l.as_str()),
            err.trim()
        );
    }
    Ok(())
}

fn sysctl(ns: &str, settings: &[&str]) -> Result<()> {
    let mut argv = vec!["sysctl", "-q", "-w"];
    argv.extend_from_slice(settings);
    run(&mut ns_command(ns, &argv)).map(|_| ())
}

/// Serializes `ip netns add/del` across processes: concurrent first-time `ip netns` calls race
/// on making /run/netns a shared mount.
struct NetnsLock {
    _file: fs::File,
}

impl NetnsLock {
    fn take() -> Result<Self> {
        fs::create_dir_all(STATE_ROOT)?;
        let f = fs::File::create(Path::new(STATE_ROOT).join(".netns.lock"))?;
        // SAFETY: flock on an fd we own; released when the file closes.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            bail!("flock: {}", std::io::Error::last_os_error());
        }
        Ok(Self { _file: f })
    }
}

impl Lab {
    /// Builds the lab. On any error, whatever was created is removed again.
    pub fn up(spec: LabSpec) -> Result<Lab> {
        validate_name(&spec.name)?;
        let mut tools = REQUIRED_TOOLS.to_vec();
        if spec.mode == Mode::Iptables {
            tools.push(("iptables", "iptables"));
        }
        // A missing client would make every probe "fail", which would pass the tests that
        // expect failure: refuse to build a lab that cannot really probe.
        let missing: Vec<String> = tools
            .iter()
            .filter(|(bin, _)| !on_path(bin))
            .map(|(bin, pkg)| format!("{bin} (Debian package {pkg})"))
            .collect();
        ensure!(
            missing.is_empty(),
            "the lab needs {}; `cargo xtask setup` installs them",
            missing.join(", ")
        );
        ensure!(
            (1..=MAX_PODS).contains(&spec.pods),
            "pods: {} (1-{MAX_PODS})",
            spec.pods
        );
        let dir = state::dir(&spec.name);
        fs::create_dir_all(STATE_ROOT)?;
        if let Err(e) = fs::create_dir(&dir) {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                bail!(
                    "lab {:?} exists ({}); take it down first: `cargo xtask lab down --name {}`",
                    spec.name,
                    dir.display(),
                    spec.name
                );
            }
            return Err(e).with_context(|| format!("creating {}", dir.display()));
        }
        let mut lab = Lab {
            name: spec.name.clone(),
            pods: (0..spec.pods).map(|i| Pod::new(&spec.name, i)).collect(),
            mode: spec.mode,
            servers: Vec::new(),
            armed: true,
        };
        // On error `lab` drops here, which takes down whatever was recorded.
        lab.build()
            .with_context(|| format!("lab {:?} up", spec.name))?;
        Ok(lab)
    }

    fn build(&mut self) -> Result<()> {
        let name = self.name.clone();
        let me = ProcId::of(std::process::id()).context("reading our own /proc entry")?;
        state::append(&name, &format!("pods {}", self.pods.len()))?;
        state::append(&name, &format!("mode {}", self.mode))?;
        state::append(&name, &format!("pin_root {}", pin_root(&name).display()))?;
        state::append(&name, &format!("owner {} {}", me.pid, me.start))?;

        let node = self.node_ns();
        let inet = self.internet_ns();
        let far = self.far_ns();
        let mut all = vec![node.clone(), inet.clone(), far.clone()];
        all.extend(self.pods.iter().map(|p| p.ns.clone()));
        {
            let _lock = NetnsLock::take()?;
            for ns in &all {
                ensure!(
                    !netns_exists(ns),
                    "netns {ns} exists already (a stale lab? `cargo xtask lab down --name {name}`)"
                );
                state::append(&name, &format!("netns {ns}"))?;
                run(Command::new("ip").args(["netns", "add", ns]))?;
            }
        }
        for ns in &all {
            // Before any link exists, so every interface inherits it: no DAD delay, no RAs.
            sysctl(
                ns,
                &[
                    "net.ipv6.conf.default.accept_dad=0",
                    "net.ipv6.conf.all.accept_dad=0",
                    "net.ipv6.conf.default.accept_ra=0",
                    "net.ipv6.conf.all.accept_ra=0",
                ],
            )?;
        }
        sysctl(
            &node,
            &["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"],
        )?;
        // Like a VPC: sources the internet cannot route back to (169.254.172.0/22) are dropped.
        sysctl(
            &inet,
            &[
                "net.ipv4.conf.all.rp_filter=1",
                "net.ipv4.conf.default.rp_filter=1",
                "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.forwarding=1",
            ],
        )?;

        // Links are created from inside the node namespace with the peer placed directly in
        // its namespace, so no interface ever exists in the root namespace, even briefly.
        let mut node_cmds = vec!["link set lo up".to_string()];
        node_cmds.extend(uplink_node_cmds(&inet));
        for p in &self.pods {
            node_cmds.extend(pod_node_cmds(p));
        }
        ip_batch(&node, &node_cmds)?;
        let mut inet_cmds = vec!["link set lo up".to_string()];
        inet_cmds.extend(uplink_inet_cmds());
        inet_cmds.extend([
            format!("link add {FAR_LINK} type veth peer name {FAR_LINK} netns {far}"),
            format!("link set {FAR_LINK} up"),
            format!("addr add {FAR_GW_V4}/24 dev {FAR_LINK}"),
            format!("addr add {FAR_GW_V6}/64 dev {FAR_LINK} nodad"),
        ]);
        ip_batch(&inet, &inet_cmds)?;
        ip_batch(
            &far,
            &[
                "link set lo up".to_string(),
                format!("link set {FAR_LINK} up"),
                format!("addr add {FAR_V4}/24 dev {FAR_LINK}"),
                format!("addr add {FAR_V6}/64 dev {FAR_LINK} nodad"),
                format!("route add default via {FAR_GW_V4} dev {FAR_LINK}"),
                format!("route add default via {FAR_GW_V6} dev {FAR_LINK}"),
            ],
        )?;
        if self.mode == Mode::Iptables {
            let pod_cidr = POD_IPV4_CIDR;
            let to = NODE_V4.to_string();
            run(&mut ns_command(
                &node,
                &[
                    "iptables",
                    "-t",
                    "nat",
                    "-A",
                    "POSTROUTING",
                    "-s",
                    pod_cidr,
                    "-o",
                    UPLINK,
                    "-j",
                    "SNAT",
                    "--to-source",
                    &to,
                    "--random-fully",
                ],
            ))?;
        }
        if self.mode == Mode::Nftables {
            let rules = format!(
                "table ip podgate_lab {{\n\
                 \tchain postrouting {{\n\
                 \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
                 \t\tip saddr {POD_IPV4_CIDR} oifname \"{UPLINK}\" masquerade\n\
                 \t}}\n\
                 }}\n"
            );
            let path = state::dir(&name).join("nat.nft");
            fs::write(&path, rules)?;
            run(&mut ns_command(&node, &["nft", "-f", &path.to_string_lossy()]))?;
        }
        for p in &self.pods {
            let mut cmds = vec!["link set lo up".to_string()];
            cmds.extend(pod_ns_cmds(p));
            ip_batch(&p.ns, &cmds)?;
        }

        let dir = state::dir(&name);
        let script = dir.join("endpoint.py");
        fs::write(&script, ENDPOINT_PY)?;
        let seen_log = dir.join("endpoint.log");
        fs::write(&seen_log, "")?;
        let (http, udp) = (HTTP_PORT.to_string(), UDP_ECHO_PORT.to_string());
        let script_s = script.to_string_lossy().into_owned();
        let seen_s = seen_log.to_string_lossy().into_owned();
        // Both endpoints log to one file (short O_APPEND lines), so one read sees everything.
        for ns in [&inet, &far] {
            let endpoint = self.spawn_logged(
                ns,
                &["python3", "-u", &script_s, &seen_s, &http, &udp],
                "endpoint.out",
            )?;
            self.servers.push(endpoint);
        }
        let iperf = self.spawn_logged(
            &inet,
            &["iperf3", "--server", "--port", &IPERF_PORT.to_string()],
            "iperf3.out",
        )?;
        self.servers.push(iperf);
        self.wait_listening(
            &inet,
            &[
                ("tcp", HTTP_PORT),
                ("udp", UDP_ECHO_PORT),
                ("tcp", IPERF_PORT),
            ],
        )?;
        self.wait_listening(&far, &[("tcp", HTTP_PORT), ("udp", UDP_ECHO_PORT)])?;

        fs::write(config_path(&name), self.config_toml())?;
        Ok(())
    }

    fn wait_listening(&mut self, ns: &str, socks: &[(&str, u16)]) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = self.exec_in(ns, &["ss", "-Hlnut"])?;
            let text = String::from_utf8_lossy(&out.stdout);
            let missing: Vec<_> = socks
                .iter()
                .filter(|(proto, port)| {
                    !text.lines().any(|l| {
                        let f: Vec<&str> = l.split_whitespace().collect();
                        f.first() == Some(proto)
                            && f.get(4).is_some_and(|a| a.ends_with(&format!(":{port}")))
                    })
                })
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            for s in &mut self.servers {
                if let Some(st) = s.exited() {
                    bail!(
                        "`{}` exited ({st}); see {}",
                        s.what(),
                        state::dir(&self.name).display()
                    );
                }
            }
            if Instant::now() >= deadline {
                bail!("servers in {ns} not listening after 10 s: {missing:?}");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The podgate configuration for this lab (issue 3's contract plus `pin_root`).
    pub fn config_toml(&self) -> String {
        let mut s = format!(
            "# Written by podgate-lab for lab \"{name}\". Run the daemon in the node namespace with\n\
             #   nsenter --net=/run/netns/{node} podgate run --config {cfg}\n\
             # (not `ip netns exec`: it remounts /sys and hides the host's bpffs).\n\
             [node]\n\
             uplink = \"{UPLINK}\"\n\
             ipv4 = \"{NODE_V4}\"\n\
             pod_prefix = \"{POD_PREFIX}\"\n\
             pod_ipv4_cidr = \"{POD_IPV4_CIDR}\"\n\
             snat_ports = \"{SNAT_PORTS}\"\n\
             pin_root = \"{pin}\"\n",
            name = self.name,
            node = self.node_ns(),
            cfg = self.config_path().display(),
            pin = self.pin_root().display(),
        );
        for p in &self.pods {
            s.push_str(&format!(
                "\n[[pods]]\nname = \"{}\"\nipv6 = \"{}\"\nipv4 = \"{}\"\nveth = \"{}\"\nveth_v4 = \"{}\"\n",
                p.name, p.ipv6, p.ipv4, p.veth, p.veth_v4
            ));
        }
        s
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn node_ns(&self) -> String {
        node_ns_name(&self.name)
    }

    pub fn internet_ns(&self) -> String {
        internet_ns_name(&self.name)
    }

    pub fn far_ns(&self) -> String {
        far_ns_name(&self.name)
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Lowers (or restores) the MTU of the internet's side of its link to the far endpoint, so
    /// pods sending large segments to the far endpoint need PMTU discovery: the internet
    /// namespace answers with ICMP fragmentation-needed / packet-too-big to the (translated)
    /// source. The far side keeps 1500 and so advertises MSS 1460; otherwise its small MSS would
    /// hide the path MTU. Large packets *from* the far endpoint are then dropped by the veth,
    /// so test with [`Lab::upload`].
    pub fn set_path_mtu(&self, mtu: u32) -> Result<()> {
        let m = mtu.to_string();
        run(Command::new("ip").args([
            "-n",
            &self.internet_ns(),
            "link",
            "set",
            FAR_LINK,
            "mtu",
            &m,
        ]))?;
        Ok(())
    }

    /// Deletes the node's uplink and creates it again with the same name and addresses (an ENI
    /// replaced, a lab rebuilt): the new interface has a new ifindex and nothing attached.
    pub fn recreate_uplink(&self) -> Result<()> {
        ip_batch(&self.node_ns(), &[format!("link del {UPLINK}")])?;
        ip_batch(&self.node_ns(), &uplink_node_cmds(&self.internet_ns()))?;
        ip_batch(&self.internet_ns(), &uplink_inet_cmds())
    }

    /// Deletes pod `i`'s two veth pairs and creates them again with the same names, addresses
    /// and MACs (a pod's veth replaced while podgate was down).
    pub fn recreate_pod_veths(&self, i: usize) -> Result<()> {
        let p = &self.pods[i];
        ip_batch(&self.node_ns(), &[format!("link del {}", p.veth), format!("link del {}", p.veth_v4)])?;
        ip_batch(&self.node_ns(), &pod_node_cmds(p))?;
        // The permanent gateway neighbour went with v4if0.
        ip_batch(&p.ns, &pod_ns_cmds(p))
    }

    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    pub fn pod(&self, i: usize) -> &Pod {
        &self.pods[i]
    }

    pub fn pod_ns(&self, i: usize) -> &str {
        &self.pods[i].ns
    }

    pub fn config_path(&self) -> PathBuf {
        config_path(&self.name)
    }

    pub fn pin_root(&self) -> PathBuf {
        pin_root(&self.name)
    }

    pub fn state_dir(&self) -> PathBuf {
        state::dir(&self.name)
    }

    /// Runs `argv` in netns `ns` and returns its output (any exit status); killed after 60 s.
    pub fn exec_in(&self, ns: &str, argv: &[&str]) -> Result<Output> {
        self.exec_in_for(ns, argv, Duration::from_secs(60))
    }

    /// Like [`Lab::exec_in`] with a deadline of `limit`.
    pub fn exec_in_for(&self, ns: &str, argv: &[&str], limit: Duration) -> Result<Output> {
        output_with_deadline(ns_command(ns, argv), limit)
    }

    /// Starts `argv` in the background in netns `ns`, output discarded. The process is recorded
    /// in the lab state (so `down` ends it after a crash) and ended when the guard drops.
    pub fn spawn_in(&self, ns: &str, argv: &[&str]) -> Result<ChildGuard> {
        self.record(process::spawn_in(ns, argv, None)?)
    }

    /// Like [`Lab::spawn_in`], with stdout and stderr appended to `<state dir>/<log>`.
    pub fn spawn_logged(&self, ns: &str, argv: &[&str], log: &str) -> Result<ChildGuard> {
        let path = state::dir(&self.name).join(log);
        self.record(process::spawn_in(ns, argv, Some(&path))?)
    }

    fn record(&self, g: ChildGuard) -> Result<ChildGuard> {
        let id = g.id();
        state::append(
            &self.name,
            &format!("proc {} {} {}", id.pid, id.start, g.what()),
        )?;
        Ok(g)
    }

    /// The background processes recorded for this lab (servers and `spawn_*` children).
    pub fn processes(&self) -> Vec<ProcId> {
        processes(&self.name)
    }

    /// What the internet endpoint saw: `(protocol, source address)` per request, in order.
    pub fn endpoint_seen(&self) -> Vec<(String, IpAddr)> {
        fs::read_to_string(state::dir(&self.name).join("endpoint.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let proto = f.next()?.to_string();
                Some((proto, f.next()?.parse().ok()?))
            })
            .collect()
    }

    /// Leaves the lab running (for `cargo xtask lab up`); `lab down` removes it later.
    pub fn detach(mut self) {
        self.armed = false;
        for s in self.servers.drain(..) {
            s.detach();
        }
        let _ = state::append(&self.name, "owner -");
    }

    /// Takes the lab down now, reporting what was removed.
    pub fn down(mut self) -> Result<DownReport> {
        self.armed = false;
        let stopped: Vec<String> = self
            .servers
            .iter()
            .map(|s| format!("process {} ({})", s.pid(), s.what()))
            .collect();
        self.servers.clear();
        let mut report = down(&self.name)?;
        report.removed.splice(0..0, stopped);
        Ok(report)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.armed {
            self.servers.clear();
            if let Err(e) = down(&self.name) {
                eprintln!("podgate-lab: taking down lab {:?}: {e:#}", self.name);
            }
        }
    }
}

fn mac(pod: usize, side: u8) -> String {
    format!("02:00:a9:fe:{:02x}:{side:02x}", pod)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_ownership_is_exact() {
        assert!(belongs("a", "pgl-a-node"));
        assert!(belongs("a", "pgl-a-inet"));
        assert!(belongs("a", "pgl-a-pod12"));
        assert!(!belongs("a", "pgl-a-pod0-node"));
        assert!(!belongs("a", "pgl-a-pod"));
        assert!(!belongs("a", "pgl-ab-node"));
        assert!(!belongs("a", "pgl-a-podx"));
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_name("demo").is_ok());
        assert!(validate_name("t-123_x").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("../etc").is_err());
        assert!(validate_name(&"x".repeat(25)).is_err());
    }

    #[test]
    fn pod_addresses_follow_the_plan() {
        let p = Pod::new("x", 2);
        assert_eq!(p.ipv6.to_string(), "2001:db8:0:1::c");
        assert_eq!(p.ipv4, Ipv4Addr::new(169, 254, 172, 12));
        assert_eq!(
            (p.veth.as_str(), p.veth_v4.as_str()),
            ("vethpod2", "v4pod2")
        );
        let last = Pod::new("x", MAX_PODS - 1);
        assert!(last.veth.len() <= 15);
    }
}
