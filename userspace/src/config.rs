//! `podgate.toml`: parsing and validation. Every error names the field and the value, and a file
//! that fails validation changes nothing (validation happens before anything touches the kernel).

use std::{
    collections::{BTreeMap, HashSet},
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    str::FromStr,
};

use ipnet::{Ipv4Net, Ipv6Net};
use podgate_common::Timeouts;
use serde::Deserialize;
use thiserror::Error;

pub use crate::util::parse_port_range;

pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/podgate";
pub const DEFAULT_POD_IPV4_CIDR: &str = "169.254.172.0/22";
pub const DEFAULT_SNAT_PORTS: &str = "49152-65535";
pub const DEFAULT_POD_QUOTA: u32 = 16384;
pub const MAX_GROUPS_LIMIT: u32 = 16;
pub const DEFAULT_METRICS: &str = "127.0.0.1:9542";
/// The control socket of a daemon on the default pin root (other pin roots get their own, see
/// `control::default_socket`).
pub const DEFAULT_SOCKET: &str = "/run/podgate/podgate.sock";

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    SecurityGroups(String),
    /// A bad security-group rule: the message is the rule compiler's, the field its path.
    #[error("{message}")]
    SecurityGroupRule { field: String, value: String, message: String },
    #[error("{field} = {value:?}: {reason}")]
    Invalid {
        field: String,
        value: String,
        reason: String,
    },
}

impl ConfigError {
    /// The field (as a path like `pods[0].ipv6` or `security_groups.web.ingress[0].ports`) and
    /// the value the error is about, when it is about one: `config check --json` reports them.
    pub fn field_value(&self) -> Option<(String, Option<String>)> {
        match self {
            ConfigError::Invalid { field, value, .. } | ConfigError::SecurityGroupRule { field, value, .. } => {
                Some((field.clone(), Some(value.clone())))
            }
            // toml names an unknown key only in its message.
            ConfigError::Parse { message, .. } => {
                let rest = message.split("unknown field `").nth(1)?;
                Some((rest.split('`').next()?.to_string(), None))
            }
            ConfigError::Read { .. } | ConfigError::SecurityGroups(_) => None,
        }
    }
}

fn invalid(field: impl Into<String>, value: impl ToString, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// The file as written; `Config::validate` turns it into a `Config`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub node: RawNode,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    #[serde(default)]
    pub pods: Vec<RawPod>,
    #[serde(default)]
    pub security_groups: BTreeMap<String, toml::Value>,
    #[serde(default)]
    pub daemon: RawDaemon,
    #[serde(default)]
    pub limits: RawLimits,
}

/// `[limits]`: sizes of the NAT maps (entries). They take effect when the maps are created: a
/// running node keeps its pinned maps until `podgate reset`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// `nat4_map`: pod endpoints with an external port.
    pub nat_mappings: Option<u32>,
    /// `ct4` and `nat4_claim`: flows, and the per-remote port claims they hold.
    pub conntrack: Option<u32>,
    /// `ct6`: IPv6 flows of every pod (security-group state).
    pub conntrack6: Option<u32>,
    /// Flows one pod may hold in each family's table (default: an eighth of the smaller one).
    pub pod_flows: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    pub uplink: String,
    pub ipv4: Option<String>,
    pub pod_prefix: String,
    pub pod_ipv4_cidr: Option<String>,
    pub snat_ports: Option<String>,
    pub pin_root: Option<String>,
    /// "xdp" (default) or "tc": where reverse NAT runs on the uplink.
    pub reverse_path: Option<String>,
    /// "auto" (default: driver mode, generic where the driver has none), "native", "generic".
    pub xdp_mode: Option<String>,
    /// "auto" (default: tcx links, netlink where the kernel has no tcx) or "netlink".
    pub tc_attach: Option<String>,
    /// "redirect" (default: FIB lookup + bpf_redirect) or "stack".
    pub forwarding: Option<String>,
    /// "address-dependent" (default) or "endpoint-independent".
    pub filtering: Option<String>,
    pub pod_quota: Option<u32>,
    pub udp_port_parity: Option<bool>,
    pub max_groups_per_pod: Option<u32>,
    /// "refuse" (default) or "coexist": what to do about another tool's tc/XDP programs on the
    /// interfaces podgate attaches to.
    pub foreign_programs: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub udp: Option<u32>,
    pub tcp_established: Option<u32>,
    pub tcp_transitory: Option<u32>,
    pub icmp: Option<u32>,
    /// Inbound-created flows whose handshake never completed (the GC only; not in the kernel).
    pub unanswered: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDaemon {
    /// Seconds between conntrack/NAT garbage-collection passes.
    pub gc_interval: Option<u64>,
    /// Prometheus endpoint, "ADDR:PORT" (default loopback) or "off".
    pub metrics: Option<String>,
    /// The control socket (default: derived from the pin root, see `control::default_socket`).
    pub socket: Option<String>,
    /// Hold inbound fragments that arrive before their first fragment (default true).
    pub frag_punt: Option<bool>,
    /// New-flow events for `podgate monitor` (default off: one ring-buffer write per new flow).
    pub flow_events: Option<bool>,
    /// eBPF-side log lines (aya-log) forwarded into the daemon's log: "off" (default), "error",
    /// "warn", "info", "debug" or "trace".
    pub bpf_log: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPod {
    pub name: String,
    pub ipv6: String,
    pub ipv4: String,
    pub veth: String,
    pub veth_v4: Option<String>,
    #[serde(default)]
    pub security_groups: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReversePath {
    Xdp,
    Tc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpMode {
    Auto,
    Native,
    Generic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcAttach {
    Auto,
    Netlink,
}

/// What to do about another tool's programs on a hook podgate uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForeignPrograms {
    /// Start nothing and name the other program.
    Refuse,
    /// Attach beside it (tc) or fall back to the TC reverse path (XDP); never replace it.
    Coexist,
}

impl FromStr for ForeignPrograms {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "refuse" => Ok(Self::Refuse),
            "coexist" => Ok(Self::Coexist),
            _ => Err("expected \"refuse\" or \"coexist\"".into()),
        }
    }
}

/// The most verbose eBPF log level forwarded; `None` is off.
pub fn parse_bpf_log(s: &str) -> Result<Option<tracing::Level>, String> {
    Ok(Some(match s {
        "off" => return Ok(None),
        "error" => tracing::Level::ERROR,
        "warn" => tracing::Level::WARN,
        "info" => tracing::Level::INFO,
        "debug" => tracing::Level::DEBUG,
        "trace" => tracing::Level::TRACE,
        _ => return Err("expected \"off\", \"error\", \"warn\", \"info\", \"debug\" or \"trace\"".into()),
    }))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarding {
    Redirect,
    Stack,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filtering {
    AddressDependent,
    EndpointIndependent,
}

#[derive(Debug, Clone)]
pub struct NodeSettings {
    pub uplink: String,
    /// `None`: the uplink's first IPv4, read when the dataplane starts.
    pub ipv4: Option<Ipv4Addr>,
    pub pod_prefix: Ipv6Net,
    pub pod_ipv4_cidr: Ipv4Net,
    pub port_min: u16,
    pub port_max: u16,
    pub pin_root: PathBuf,
    pub reverse_path: ReversePath,
    pub xdp_mode: XdpMode,
    pub tc_attach: TcAttach,
    pub forwarding: Forwarding,
    pub filtering: Filtering,
    pub pod_quota: u32,
    /// UDP mappings keep the internal port's parity (RFC 4787 REQ-4); TCP and ICMP never do.
    pub udp_port_parity: bool,
    pub max_groups_per_pod: u32,
    pub timeouts: Timeouts,
    /// `[timeouts] unanswered`: idle timeout of inbound-created flows never assured
    /// (`podgate_common::sg::is_unanswered`). Only the daemon's GC applies it, so it stays out of
    /// the kernel's `NodeConfig`.
    pub unanswered_secs: u32,
    pub gc_interval_secs: u64,
    pub metrics: Option<std::net::SocketAddr>,
    pub foreign_programs: ForeignPrograms,
    pub flow_events: bool,
    pub bpf_log: Option<tracing::Level>,
    /// `[daemon] socket`; `None`: derived from the pin root.
    pub socket: Option<PathBuf>,
    /// `daemon.frag_punt`: the daemon holds orphan fragments (`frag_punt` module).
    pub frag_punt: bool,
    pub limits: Limits,
}

/// Validated `[limits]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub nat_mappings: u32,
    pub conntrack: u32,
    pub conntrack6: u32,
    /// Flows one pod may hold in `ct4` and in `ct6` (each); written to `NodeConfig::pod_flows`.
    pub pod_flows: u32,
}

/// The sizes compiled into the object (ebpf/programs/src/maps.rs).
pub const DEFAULT_MAP_ENTRIES: u32 = 1 << 20;
/// 16M entries: about 2 GiB of conntrack, far beyond one node address's ports.
pub const MAX_MAP_ENTRIES: u32 = 1 << 24;
/// `[timeouts] unanswered` default: Linux conntrack's timeout of an unreplied UDP flow (30 s,
/// half its SYN_RECV 60 s): a real client completes its handshake within an RTT, and the pod's
/// SYN-ACK retransmissions (1, 3, 7, 15 s) still fit; a spoofed flood's entries last no longer.
pub const DEFAULT_UNANSWERED_SECS: u32 = 30;

/// `[limits] pod_flows` default: an eighth of the smaller conntrack table, so that a pod whose
/// open port is flooded leaves seven eighths to the others (32768 with the default `ct6`); far
/// more concurrent flows than one busy pod opens.
pub const fn default_pod_flows(conntrack: u32, conntrack6: u32) -> u32 {
    let t = if conntrack < conntrack6 { conntrack } else { conntrack6 };
    t / 8
}

impl Default for Limits {
    fn default() -> Self {
        let ct6 = podgate_common::sg::CT6_DEFAULT_ENTRIES;
        Self {
            nat_mappings: DEFAULT_MAP_ENTRIES,
            conntrack: DEFAULT_MAP_ENTRIES,
            conntrack6: ct6,
            pod_flows: default_pod_flows(DEFAULT_MAP_ENTRIES, ct6),
        }
    }
}

impl Limits {
    /// `(map name, max_entries)` for the loader.
    pub fn map_sizes(&self) -> [(&'static str, u32); 4] {
        use podgate_common::{nat::map_names as nat, sg::map_names as sg};
        [
            (nat::NAT4_MAP, self.nat_mappings),
            (nat::CT4, self.conntrack),
            (nat::NAT4_CLAIM, self.conntrack),
            (sg::CT6, self.conntrack6),
        ]
    }
}

fn validate_limits(l: &RawLimits) -> Result<Limits, ConfigError> {
    // LRU maps keep per-CPU free lists (podgate_common::pressure): a map smaller than this
    // would start evicting before the daemon could refuse new flows.
    let ncpus = aya::util::nr_cpus().map(|n| n as u64).unwrap_or(1);
    let min = podgate_common::pressure::min_entries(ncpus);
    let d = Limits::default();
    let conntrack = l.conntrack.unwrap_or(d.conntrack);
    let conntrack6 = l.conntrack6.unwrap_or(d.conntrack6);
    let out = Limits {
        nat_mappings: l.nat_mappings.unwrap_or(d.nat_mappings),
        conntrack,
        conntrack6,
        pod_flows: l.pod_flows.unwrap_or(default_pod_flows(conntrack, conntrack6)),
    };
    for (field, v) in [
        ("limits.nat_mappings", out.nat_mappings),
        ("limits.conntrack", out.conntrack),
        ("limits.conntrack6", out.conntrack6),
    ] {
        if (v as u64) < min || v > MAX_MAP_ENTRIES {
            return Err(invalid(field, v, format!("must be {min} to {MAX_MAP_ENTRIES} entries on this machine ({ncpus} CPUs)")));
        }
    }
    // 0 would mean "unbounded" to the programs; above the smaller table it bounds nothing.
    let smaller = conntrack.min(conntrack6);
    if out.pod_flows == 0 || out.pod_flows > smaller {
        return Err(invalid("limits.pod_flows", out.pod_flows, format!("must be 1 to {smaller} (the smaller of limits.conntrack and limits.conntrack6)")));
    }
    Ok(out)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSpec {
    pub name: String,
    pub ipv6: Ipv6Addr,
    pub ipv4: Ipv4Addr,
    pub veth: String,
    pub veth_v4: Option<String>,
    pub security_groups: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub node: NodeSettings,
    pub pods: Vec<PodSpec>,
    /// Security groups, validated by the rule compiler.
    pub security_groups: crate::sg::SecurityGroups,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<input>"),
            message: e.to_string().trim_end().to_string(),
        })?;
        Self::validate(raw)
    }

    pub fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
        let mut node = validate_node(&raw.node, &raw.timeouts, &raw.daemon)?;
        node.limits = validate_limits(&raw.limits)?;
        let mut pods = Vec::with_capacity(raw.pods.len());
        for (i, p) in raw.pods.iter().enumerate() {
            pods.push(validate_pod(node.pod_prefix, node.pod_ipv4_cidr, p, &format!("pods[{i}]"))?);
        }
        check_unique(&pods)?;
        for (i, p) in pods.iter().enumerate() {
            if p.security_groups.len() as u32 > node.max_groups_per_pod {
                return Err(invalid(
                    format!("pods[{i}].security_groups"),
                    p.security_groups.join(","),
                    format!("at most {} groups per pod", node.max_groups_per_pod),
                ));
            }
            for g in &p.security_groups {
                if !raw.security_groups.contains_key(g) {
                    return Err(invalid(
                        format!("pods[{i}].security_groups"),
                        g,
                        "no [security_groups.<name>] table with this name",
                    ));
                }
            }
        }
        let security_groups = crate::sg::parse_groups(&raw.security_groups, node.pod_prefix)
            .map_err(|e| match &e {
                crate::sg::SgError::Rule { group, dir, index, field, value, .. } => {
                    ConfigError::SecurityGroupRule {
                        field: format!("security_groups.{group}.{dir}[{index}].{field}"),
                        value: value.clone(),
                        message: e.to_string(),
                    }
                }
                _ => ConfigError::SecurityGroups(e.to_string()),
            })?;
        Ok(Config {
            node,
            pods,
            security_groups,
        })
    }
}

fn validate_node(n: &RawNode, t: &RawTimeouts, d: &RawDaemon) -> Result<NodeSettings, ConfigError> {
    if n.uplink.is_empty() || n.uplink.len() > 15 {
        return Err(invalid("node.uplink", &n.uplink, "not an interface name (1 to 15 characters)"));
    }
    let ipv4 = n
        .ipv4
        .as_deref()
        .map(|s| Ipv4Addr::from_str(s).map_err(|_| invalid("node.ipv4", s, "not an IPv4 address")))
        .transpose()?;
    let pod_prefix = Ipv6Net::from_str(&n.pod_prefix)
        .map_err(|_| invalid("node.pod_prefix", &n.pod_prefix, "not an IPv6 prefix"))?;
    if pod_prefix.prefix_len() != 80 {
        return Err(invalid(
            "node.pod_prefix",
            &n.pod_prefix,
            "must be the node's delegated /80",
        ));
    }
    if pod_prefix.network() != pod_prefix.addr() {
        return Err(invalid("node.pod_prefix", &n.pod_prefix, "host bits are set"));
    }
    let cidr_s = n.pod_ipv4_cidr.as_deref().unwrap_or(DEFAULT_POD_IPV4_CIDR);
    let pod_ipv4_cidr = Ipv4Net::from_str(cidr_s)
        .map_err(|_| invalid("node.pod_ipv4_cidr", cidr_s, "not an IPv4 prefix"))?;
    if pod_ipv4_cidr.network() != pod_ipv4_cidr.addr() {
        return Err(invalid("node.pod_ipv4_cidr", cidr_s, "host bits are set"));
    }
    if let Some(ip) = ipv4
        && pod_ipv4_cidr.contains(&ip)
    {
        return Err(invalid(
            "node.ipv4",
            ip,
            format!("inside node.pod_ipv4_cidr {pod_ipv4_cidr}: it would never leave the node"),
        ));
    }
    let ports_s = n.snat_ports.as_deref().unwrap_or(DEFAULT_SNAT_PORTS);
    let (port_min, port_max) = parse_port_range(ports_s)
        .ok_or_else(|| invalid("node.snat_ports", ports_s, "expected \"LOW-HIGH\" with 1024 <= LOW <= HIGH <= 65535"))?;
    if port_min < 1024 || port_max - port_min < 63 {
        return Err(invalid(
            "node.snat_ports",
            ports_s,
            "the range must start at 1024 or above (ports below 1024 map below 1024 by themselves) and hold at least 64 ports",
        ));
    }
    let pin_root = PathBuf::from(n.pin_root.as_deref().unwrap_or(DEFAULT_PIN_ROOT));
    if !pin_root.is_absolute() {
        return Err(invalid("node.pin_root", pin_root.display(), "must be an absolute path on a bpffs"));
    }
    let reverse_path = match n.reverse_path.as_deref().unwrap_or("xdp") {
        "xdp" => ReversePath::Xdp,
        "tc" => ReversePath::Tc,
        other => return Err(invalid("node.reverse_path", other, "expected \"xdp\" or \"tc\"")),
    };
    let xdp_mode = match n.xdp_mode.as_deref().unwrap_or("auto") {
        "auto" => XdpMode::Auto,
        "native" => XdpMode::Native,
        "generic" => XdpMode::Generic,
        other => {
            return Err(invalid("node.xdp_mode", other, "expected \"auto\", \"native\" or \"generic\""));
        }
    };
    let tc_attach = match n.tc_attach.as_deref().unwrap_or("auto") {
        "auto" => TcAttach::Auto,
        "netlink" => TcAttach::Netlink,
        other => return Err(invalid("node.tc_attach", other, "expected \"auto\" or \"netlink\"")),
    };
    let forwarding = match n.forwarding.as_deref().unwrap_or("redirect") {
        "redirect" => Forwarding::Redirect,
        "stack" => Forwarding::Stack,
        other => return Err(invalid("node.forwarding", other, "expected \"redirect\" or \"stack\"")),
    };
    let filtering = match n.filtering.as_deref().unwrap_or("address-dependent") {
        "address-dependent" => Filtering::AddressDependent,
        "endpoint-independent" => Filtering::EndpointIndependent,
        other => {
            return Err(invalid(
                "node.filtering",
                other,
                "expected \"address-dependent\" or \"endpoint-independent\"",
            ));
        }
    };
    let pod_quota = n.pod_quota.unwrap_or(DEFAULT_POD_QUOTA);
    if pod_quota == 0 {
        return Err(invalid("node.pod_quota", pod_quota, "must be at least 1"));
    }
    let max_groups_per_pod = n.max_groups_per_pod.unwrap_or(5);
    if !(1..=MAX_GROUPS_LIMIT).contains(&max_groups_per_pod) {
        return Err(invalid(
            "node.max_groups_per_pod",
            max_groups_per_pod,
            format!("must be 1 to {MAX_GROUPS_LIMIT}"),
        ));
    }
    let d_t = Timeouts::default();
    let timeouts = Timeouts {
        udp: t.udp.unwrap_or(d_t.udp),
        tcp_established: t.tcp_established.unwrap_or(d_t.tcp_established),
        tcp_transitory: t.tcp_transitory.unwrap_or(d_t.tcp_transitory),
        icmp: t.icmp.unwrap_or(d_t.icmp),
    };
    let unanswered_secs = t.unanswered.unwrap_or(DEFAULT_UNANSWERED_SECS);
    if unanswered_secs == 0 {
        return Err(invalid("timeouts.unanswered", unanswered_secs, "must be at least 1 second"));
    }
    for (field, v) in [
        ("timeouts.udp", timeouts.udp),
        ("timeouts.tcp_established", timeouts.tcp_established),
        ("timeouts.tcp_transitory", timeouts.tcp_transitory),
        ("timeouts.icmp", timeouts.icmp),
    ] {
        if v == 0 {
            return Err(invalid(field, v, "must be at least 1 second"));
        }
    }
    let gc_interval_secs = d.gc_interval.unwrap_or(10);
    if gc_interval_secs == 0 {
        return Err(invalid("daemon.gc_interval", gc_interval_secs, "must be at least 1 second"));
    }
    let metrics = match d.metrics.as_deref().unwrap_or(DEFAULT_METRICS) {
        "off" => None,
        s => Some(std::net::SocketAddr::from_str(s).map_err(|_| {
            invalid("daemon.metrics", s, "expected ADDR:PORT (e.g. \"127.0.0.1:9542\") or \"off\"")
        })?),
    };
    let foreign_s = n.foreign_programs.as_deref().unwrap_or("refuse");
    let foreign_programs = ForeignPrograms::from_str(foreign_s)
        .map_err(|why| invalid("node.foreign_programs", foreign_s, why))?;
    let bpf_log_s = d.bpf_log.as_deref().unwrap_or("off");
    let bpf_log = parse_bpf_log(bpf_log_s).map_err(|why| invalid("daemon.bpf_log", bpf_log_s, why))?;
    let socket = d
        .socket
        .as_deref()
        .map(|s| {
            let p = PathBuf::from(s);
            if !p.is_absolute() {
                return Err(invalid("daemon.socket", s, "must be an absolute path"));
            }
            // sun_path holds 108 bytes including the terminating NUL.
            if s.len() > 107 {
                return Err(invalid("daemon.socket", s, "longer than a Unix socket path may be (107 bytes)"));
            }
            Ok(p)
        })
        .transpose()?;
    Ok(NodeSettings {
        metrics,
        socket,
        frag_punt: d.frag_punt.unwrap_or(true),
        foreign_programs,
        flow_events: d.flow_events.unwrap_or(false),
        bpf_log,
        uplink: n.uplink.clone(),
        ipv4,
        pod_prefix,
        pod_ipv4_cidr,
        port_min,
        port_max,
        pin_root,
        reverse_path,
        xdp_mode,
        tc_attach,
        forwarding,
        filtering,
        pod_quota,
        udp_port_parity: n.udp_port_parity.unwrap_or(true),
        max_groups_per_pod,
        timeouts,
        unanswered_secs,
        gc_interval_secs,
        limits: Limits::default(),
    })
}

/// Validates one pod against the node's prefixes; `field` is its path for messages (`pods[2]`).
pub fn validate_pod(
    pod_prefix: Ipv6Net,
    pod_ipv4_cidr: Ipv4Net,
    p: &RawPod,
    field: &str,
) -> Result<PodSpec, ConfigError> {
    if p.name.is_empty() {
        return Err(invalid(format!("{field}.name"), &p.name, "must not be empty"));
    }
    let ipv6 = Ipv6Addr::from_str(&p.ipv6)
        .map_err(|_| invalid(format!("{field}.ipv6"), &p.ipv6, "not an IPv6 address"))?;
    if !pod_prefix.contains(&ipv6) {
        return Err(invalid(
            format!("{field}.ipv6"),
            &p.ipv6,
            format!("outside the node's pod prefix {pod_prefix}"),
        ));
    }
    if ipv6 == pod_prefix.network() {
        return Err(invalid(format!("{field}.ipv6"), &p.ipv6, "is the prefix's subnet-router anycast address"));
    }
    let ipv4 = Ipv4Addr::from_str(&p.ipv4)
        .map_err(|_| invalid(format!("{field}.ipv4"), &p.ipv4, "not an IPv4 address"))?;
    if !pod_ipv4_cidr.contains(&ipv4)
        || ipv4 == pod_ipv4_cidr.network()
        || ipv4 == pod_ipv4_cidr.broadcast()
    {
        return Err(invalid(
            format!("{field}.ipv4"),
            &p.ipv4,
            format!("not a host address of node.pod_ipv4_cidr {pod_ipv4_cidr}"),
        ));
    }
    for (f, v) in [("veth", Some(&p.veth)), ("veth_v4", p.veth_v4.as_ref())] {
        if let Some(v) = v
            && (v.is_empty() || v.len() > 15)
        {
            return Err(invalid(format!("{field}.{f}"), v, "not an interface name (1 to 15 characters)"));
        }
    }
    if p.veth_v4.as_deref() == Some(p.veth.as_str()) {
        return Err(invalid(format!("{field}.veth_v4"), &p.veth, "same as veth: leave veth_v4 out for a single-veth pod"));
    }
    Ok(PodSpec {
        name: p.name.clone(),
        ipv6,
        ipv4,
        veth: p.veth.clone(),
        veth_v4: p.veth_v4.clone(),
        security_groups: p.security_groups.clone(),
    })
}

/// Names, addresses and interfaces must each belong to one pod only.
pub fn check_unique(pods: &[PodSpec]) -> Result<(), ConfigError> {
    let mut names = HashSet::new();
    let mut v6 = HashSet::new();
    let mut v4 = HashSet::new();
    let mut ifs = HashSet::new();
    for (i, p) in pods.iter().enumerate() {
        if !names.insert(p.name.as_str()) {
            return Err(invalid(format!("pods[{i}].name"), &p.name, "duplicate pod name"));
        }
        if !v6.insert(p.ipv6) {
            return Err(invalid(format!("pods[{i}].ipv6"), p.ipv6, "address used by another pod"));
        }
        if !v4.insert(p.ipv4) {
            return Err(invalid(format!("pods[{i}].ipv4"), p.ipv4, "address used by another pod"));
        }
        for (f, v) in [("veth", Some(&p.veth)), ("veth_v4", p.veth_v4.as_ref())] {
            if let Some(v) = v
                && !ifs.insert(v.as_str())
            {
                return Err(invalid(format!("pods[{i}].{f}"), v, "interface used by another pod"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[node]
uplink = "eni"
ipv4 = "198.51.100.2"
pod_prefix = "2001:db8:0:1::/80"

[[pods]]
name = "a"
ipv6 = "2001:db8:0:1::a"
ipv4 = "169.254.172.10"
veth = "vetha"
veth_v4 = "v4a"
"#;

    fn err(text: &str) -> String {
        Config::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn good_config_and_defaults() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.node.port_min, 49152);
        assert_eq!(c.node.port_max, 65535);
        assert_eq!(c.node.pod_ipv4_cidr.to_string(), "169.254.172.0/22");
        assert_eq!(c.node.pin_root, PathBuf::from(DEFAULT_PIN_ROOT));
        assert_eq!(c.node.timeouts, Timeouts::default());
        assert_eq!(c.pods.len(), 1);
        assert_eq!(c.pods[0].veth_v4.as_deref(), Some("v4a"));
    }

    #[test]
    fn udp_port_parity_defaults_on_and_sets_the_node_flag_when_off() {
        use podgate_common::node_flags::UDP_NO_PARITY;
        let ip = Ipv4Addr::new(198, 51, 100, 2);
        let on = Config::parse(GOOD).unwrap().node;
        assert!(on.udp_port_parity);
        assert_eq!(crate::node::node_config(&on, ip, 1).flags & UDP_NO_PARITY, 0);
        let off = Config::parse(&GOOD.replace("pod_prefix", "udp_port_parity = false\npod_prefix")).unwrap().node;
        assert!(!off.udp_port_parity);
        assert_ne!(crate::node::node_config(&off, ip, 1).flags & UDP_NO_PARITY, 0);
        let e = err(&GOOD.replace("pod_prefix", "udp_port_parity = \"yes\"\npod_prefix"));
        assert!(e.contains("udp_port_parity"), "{e}");
    }

    #[test]
    fn limits_size_the_nat_maps() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.node.limits, Limits::default());
        let c = Config::parse(&format!("{GOOD}\n[limits]\nnat_mappings = 4096\nconntrack = 8192\n")).unwrap();
        assert_eq!(c.node.limits, Limits { nat_mappings: 4096, conntrack: 8192, conntrack6: 262144, pod_flows: 1024 });
        assert_eq!(c.node.limits.map_sizes(), [("nat4_map", 4096), ("ct4", 8192), ("nat4_claim", 8192), ("ct6", 262144)]);
        let e = err(&format!("{GOOD}\n[limits]\nconntrack = 10\n"));
        assert!(e.contains("limits.conntrack"), "{e}");
        let e = err(&format!("{GOOD}\n[limits]\nnat_mappings = 4294967295\n"));
        assert!(e.contains("limits.nat_mappings"), "{e}");
    }

    #[test]
    fn ct6_size_pod_flows_and_unanswered() {
        let d = Config::parse(GOOD).unwrap().node;
        assert_eq!((d.limits.conntrack6, d.limits.pod_flows), (262144, 32768), "an eighth of ct6");
        assert_eq!(d.unanswered_secs, 30);
        let c = Config::parse(&format!("{GOOD}\n[timeouts]\nunanswered = 5\n[limits]\nconntrack6 = 4096\n")).unwrap().node;
        assert_eq!((c.limits.conntrack6, c.limits.pod_flows, c.unanswered_secs), (4096, 512, 5));
        assert_eq!(c.limits.map_sizes()[3], ("ct6", 4096));
        let c = Config::parse(&format!("{GOOD}\n[limits]\nconntrack6 = 4096\npod_flows = 100\n")).unwrap().node;
        assert_eq!(crate::node::node_config(&c, Ipv4Addr::new(198, 51, 100, 2), 1).pod_flows, 100);
        for (text, field) in [
            ("[limits]\nconntrack6 = 10\n", "limits.conntrack6"),
            ("[limits]\nconntrack6 = 4096\npod_flows = 4097\n", "limits.pod_flows"),
            ("[limits]\npod_flows = 0\n", "limits.pod_flows"),
            ("[timeouts]\nunanswered = 0\n", "timeouts.unanswered"),
        ] {
            let e = err(&format!("{GOOD}\n{text}"));
            assert!(e.contains(field), "{e}");
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let e = err(&GOOD.replace("uplink = \"eni\"", "uplink = \"eni\"\nuplnk = 1"));
        assert!(e.contains("uplnk"), "{e}");
    }

    #[test]
    fn prefix_must_be_80() {
        let e = err(&GOOD.replace("::/80", "::/64"));
        assert!(e.contains("node.pod_prefix") && e.contains("/80"), "{e}");
    }

    #[test]
    fn pod_outside_prefix() {
        let e = err(&GOOD.replace("2001:db8:0:1::a", "2001:db8:0:2::a"));
        assert!(e.contains("pods[0].ipv6") && e.contains("outside"), "{e}");
    }

    #[test]
    fn pod_ipv4_outside_range() {
        let e = err(&GOOD.replace("169.254.172.10", "192.0.2.10"));
        assert!(e.contains("pods[0].ipv4"), "{e}");
    }

    #[test]
    fn duplicate_address() {
        let twice = format!(
            "{GOOD}\n[[pods]]\nname = \"b\"\nipv6 = \"2001:db8:0:1::a\"\nipv4 = \"169.254.172.11\"\nveth = \"vethb\"\n"
        );
        let e = err(&twice);
        assert!(e.contains("pods[1].ipv6") && e.contains("another pod"), "{e}");
    }

    #[test]
    fn bad_port_range() {
        let e = err(&GOOD.replace("pod_prefix", "snat_ports = \"70000-80000\"\npod_prefix"));
        assert!(e.contains("node.snat_ports"), "{e}");
        let e = err(&GOOD.replace("pod_prefix", "snat_ports = \"100-2000\"\npod_prefix"));
        assert!(e.contains("node.snat_ports"), "{e}");
    }

    #[test]
    fn unknown_group_reference() {
        let e = err(&GOOD.replace("veth_v4 = \"v4a\"", "veth_v4 = \"v4a\"\nsecurity_groups = [\"web\"]"));
        assert!(e.contains("security_groups") && e.contains("web"), "{e}");
    }

    #[test]
    fn security_group_rule_errors_name_the_rule() {
        let text = format!(
            "{GOOD}\n[security_groups.web]\ningress = [{{ proto = \"tcp\", ports = \"99999\", cidr = \"::/0\" }}]\n"
        );
        let e = err(&text);
        assert!(e.contains("web") && e.contains("ports") && e.contains("99999"), "{e}");
        let text = format!("{GOOD}\n[security_groups.web]\ningress = [{{ prot = \"tcp\" }}]\n");
        let e = err(&text);
        assert!(e.contains("security_groups.web") && e.contains("prot"), "{e}");
        let ok = format!(
            "{GOOD}\n[security_groups.web]\ningress = [{{ proto = \"tcp\", ports = \"443\", cidr = \"::/0\" }}]\n"
        );
        assert_eq!(Config::parse(&ok).unwrap().security_groups.len(), 1);
    }

    /// The README's example is the documentation of every key: it must stay a valid config.
    #[test]
    fn readme_example_is_valid() {
        let readme = include_str!("../../README.md");
        let start = readme.find("```toml\n").expect("README has a toml example") + 8;
        let end = start + readme[start..].find("```").unwrap();
        let c = Config::parse(&readme[start..end]).unwrap_or_else(|e| panic!("README example: {e}"));
        assert_eq!(c.pods[0].security_groups, vec!["web".to_string()]);
        assert!(c.node.metrics.is_some());
    }

    #[test]
    fn foreign_programs_flow_events_and_bpf_log() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.node.foreign_programs, ForeignPrograms::Refuse, "refuse is the default");
        assert!(!c.node.flow_events && c.node.bpf_log.is_none(), "both cost something: off by default");
        let text = GOOD.replace("uplink = \"eni\"", "uplink = \"eni\"\nforeign_programs = \"coexist\"");
        let text = format!("{text}\n[daemon]\nflow_events = true\nbpf_log = \"warn\"\n");
        let c = Config::parse(&text).unwrap();
        assert_eq!(c.node.foreign_programs, ForeignPrograms::Coexist);
        assert!(c.node.flow_events);
        assert_eq!(c.node.bpf_log, Some(tracing::Level::WARN));
        let e = err(&GOOD.replace("uplink = \"eni\"", "uplink = \"eni\"\nforeign_programs = \"replace\""));
        assert!(e.contains("node.foreign_programs") && e.contains("replace"), "{e}");
        let e = err(&format!("{GOOD}\n[daemon]\nbpf_log = \"loud\"\n"));
        assert!(e.contains("daemon.bpf_log") && e.contains("loud"), "{e}");
    }

    #[test]
    fn port_range_parser() {
        assert_eq!(parse_port_range("1024-2047"), Some((1024, 2047)));
        assert_eq!(parse_port_range("443"), Some((443, 443)));
        assert_eq!(parse_port_range("9-1"), None);
        assert_eq!(parse_port_range("x"), None);
    }
}
