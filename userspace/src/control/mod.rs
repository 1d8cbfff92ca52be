//! The control API: one [`Request`] per CLI verb and one function, [`execute`], that carries it
//! out. The daemon runs it for requests arriving on its Unix socket (holding one lock for every
//! mutation); the CLI and the CNI plugin run the very same function against the pinned maps when
//! no daemon answers, so the two paths cannot drift apart.
//!
//! Wire format: one JSON object per line each way.
//! ```text
//! → {"version":1,"pin_root":"/sys/fs/bpf/podgate","request":{"verb":"pod_list"}}
//! ← {"version":1,"ok":true,"result":[…]}
//! ← {"version":1,"ok":false,"error":"unknown security group \"x\": …","invalid":true}
//! ```
//! `pin_root` is optional: when given, a daemon serving another pin root refuses the request
//! instead of answering about the wrong dataplane.

use std::{
    collections::BTreeMap,
    io::{self, BufRead as _, BufReader, Write as _},
    net::{Ipv4Addr, Ipv6Addr},
    os::unix::{
        fs::{DirBuilderExt as _, FileTypeExt as _, MetadataExt as _, PermissionsExt as _},
        net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard},
    time::{Duration, SystemTime},
};

use ipnet::{Ipv4Net, Ipv6Net};
use podgate_common::node_flags;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use thiserror::Error;

use crate::{
    config::{ConfigError, DEFAULT_PIN_ROOT, DEFAULT_SOCKET, NodeSettings, RawPod, validate_pod},
    attach::{self, foreign::{self, Hook}},
    error::DataplaneError,
    maps::{self, pods::{PodEntry, list_pods}, usage},
    pins::Pins,
    pods,
    sg::{self, SecurityGroups, SgError},
    snat,
    util::boottime_ns,
};

/// Bumped whenever a request or a result changes shape.
pub const PROTOCOL_VERSION: u32 = 1;
/// A request line longer than this is refused (an `sg apply` carries a whole config file).
pub const MAX_LINE: usize = 4 << 20;
/// How long a client waits for an answer: attaching a pod's programs takes a moment.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// Everything the CLI can ask. Tagged by `verb` on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verb", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Status,
    PodList,
    PodAdd(PodAdd),
    PodDel { name: String },
    SgList,
    /// `config` is the text of a podgate.toml: its `[security_groups]` and its pods' group lists.
    SgApply {
        config: String,
        #[serde(default)]
        cut: bool,
    },
    NatList(NatFilter),
    CtList(CtFilter),
    CtFlush { pod: String },
    Stats {
        #[serde(default)]
        all: bool,
    },
    /// One GC pass at now + `advance_secs`. It deletes what expires (with `advance_secs`, live
    /// state idle for less than its timeout too) unless `dry_run`, which only reports.
    Gc {
        #[serde(default)]
        advance_secs: u64,
        #[serde(default)]
        dry_run: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodAdd {
    pub name: String,
    pub ipv6: String,
    pub ipv4: String,
    pub veth: String,
    #[serde(default)]
    pub veth_v4: Option<String>,
    /// Names of the daemon's `[security_groups.NAME]`: only a daemon can resolve them.
    #[serde(default)]
    pub security_groups: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CtFilter {
    #[serde(default)]
    pub ipv6: bool,
    #[serde(default)]
    pub pod: Option<String>,
    #[serde(default)]
    pub proto: Option<String>,
    #[serde(default)]
    pub dst: Option<String>,
    /// At most this many rows (the first in the listing's order).
    #[serde(default)]
    pub limit: Option<usize>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatFilter {
    #[serde(default)]
    pub pod: Option<String>,
    #[serde(default)]
    pub proto: Option<String>,
    #[serde(default)]
    pub limit: Option<usize>,
}

impl ControlError {
    /// Whether the request was bad (so a CNI runtime gets "invalid configuration").
    pub fn is_invalid_input(&self) -> bool {
        match self {
            ControlError::Config(_) | ControlError::UnknownGroup { .. } | ControlError::Invalid(_) => true,
            ControlError::Daemon { invalid, .. } => *invalid,
            _ => false,
        }
    }
}

impl Request {
    /// Whether it changes the dataplane (the daemon serializes these).
    pub fn mutates(&self) -> bool {
        matches!(
            self,
            Request::PodAdd(_)
                | Request::PodDel { .. }
                | Request::SgApply { .. }
                | Request::CtFlush { .. }
                | Request::Gc { dry_run: false, .. }
        )
    }

    /// Whether it can only be served by a daemon (it names the daemon's security groups).
    pub fn needs_daemon(&self) -> bool {
        matches!(self, Request::PodAdd(p) if !p.security_groups.is_empty())
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope {
    pub version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin_root: Option<PathBuf>,
    pub request: Request,
}

#[derive(Debug, Error)]
pub enum ControlError {
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error(transparent)]
    Sg(#[from] SgError),
    #[error(transparent)]
    Gc(#[from] crate::snat::gc::GcError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Invalid(String),
    #[error("encoding the result: {0}")]
    Encode(String),
    #[error(
        "security groups {groups:?} need the podgate daemon (the group definitions are in its config); \
         no daemon answers on {socket}"
    )]
    NeedsDaemon { groups: Vec<String>, socket: PathBuf },
    #[error("unknown security group {name:?}: the daemon's config defines {known:?}; nothing was applied")]
    UnknownGroup { name: String, known: Vec<String> },
    #[error("control socket {path}")]
    Socket {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("another podgate daemon answers on {path}: stop it first (one daemon per pin root)")]
    SocketInUse { path: PathBuf },
    #[error("{path} exists and is not a socket: not replacing it")]
    NotASocket { path: PathBuf },
    /// The daemon refused or failed the request. `invalid`: the request itself was bad (an
    /// address, a group name), as opposed to the dataplane failing it.
    #[error("the daemon on {socket}: {message}")]
    Daemon { socket: PathBuf, message: String, invalid: bool },
    #[error("the daemon on {socket} answered something that is not podgate's control protocol: {detail}")]
    Protocol { socket: PathBuf, detail: String },
}

/// The socket a daemon on `pin_root` listens on unless configured otherwise: the well-known path
/// for the default pin root, and one per pin root otherwise, so that several dataplanes on one
/// host (the test labs) never answer for each other.
pub fn default_socket(pin_root: &Path) -> PathBuf {
    let root = pin_root.to_string_lossy();
    let root = root.trim_end_matches('/');
    if root == DEFAULT_PIN_ROOT {
        return PathBuf::from(DEFAULT_SOCKET);
    }
    let dir = Path::new(DEFAULT_SOCKET).parent().expect("DEFAULT_SOCKET has a directory");
    let flat: String = root
        .trim_start_matches('/')
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '-' })
        .collect();
    let p = dir.join(format!("{flat}.sock"));
    if p.as_os_str().len() <= 100 {
        return p;
    }
    // FNV-1a: stable across builds, unlike std's hasher.
    let h = root.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
    dir.join(format!("podgate-{h:016x}.sock"))
}

fn same_root(a: &Path, b: &Path) -> bool {
    a.to_string_lossy().trim_end_matches('/') == b.to_string_lossy().trim_end_matches('/')
}

// ---------------------------------------------------------------------------------------------
// The daemon's side of the state.

/// What the daemon knows beyond the pinned maps: the security-group definitions of its config.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub node: NodeSettings,
    pub groups: SecurityGroups,
    /// Pod name → group names of the config file's pods.
    pub assign: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DaemonInfo {
    pub pid: u32,
    pub version: &'static str,
    pub protocol: u32,
    pub socket: PathBuf,
    pub config: PathBuf,
    /// Unix seconds.
    pub started: u64,
}

/// A running daemon: its identity and its config behind the one mutation lock.
pub struct Daemon {
    pub info: DaemonInfo,
    config: Mutex<DaemonConfig>,
}

impl Daemon {
    pub fn new(info: DaemonInfo, config: DaemonConfig) -> Self {
        Daemon { info, config: Mutex::new(config) }
    }

    /// The mutation lock: held by every request that changes the dataplane and by GC passes.
    pub fn lock(&self) -> MutexGuard<'_, DaemonConfig> {
        // A panic in one request must not wedge every later one; the config itself stays valid
        // because it is only replaced whole.
        self.config.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Where a request is executed: always on the pins, with a daemon's config when it runs there.
pub struct Context<'a> {
    pub pins: &'a Pins,
    pub daemon: Option<&'a Daemon>,
    /// The socket clients use, for messages about requests that need the daemon.
    pub socket: &'a Path,
}

// ---------------------------------------------------------------------------------------------
// Results. Both paths serialize these to JSON; the CLI renders tables from that JSON.

#[derive(Debug, Serialize)]
pub struct Status {
    pub pin_root: String,
    pub installed: bool,
    pub abi_version: u32,
    pub node_ipv4: Option<Ipv4Addr>,
    pub pod_prefix: Option<String>,
    pub uplink_ifindex: u32,
    pub snat_ports: Option<String>,
    pub pods: usize,
    pub mappings: usize,
    pub flows: usize,
    pub links: Vec<String>,
    /// "xdp" or "tc": where replies are reverse-translated (tc when another tool holds XDP).
    pub reverse_path: Option<&'static str>,
    pub flags: Vec<&'static str>,
    /// Other tools' programs on the hooks podgate is attached to.
    pub foreign_programs: Vec<String>,
    /// "daemon" or "pins".
    pub answered_by: &'static str,
    pub daemon: Option<DaemonStatus>,
}

#[derive(Debug, Serialize)]
pub struct DaemonStatus {
    #[serde(flatten)]
    pub info: DaemonInfo,
    pub uptime_secs: u64,
    pub security_groups: Vec<String>,
    /// Where the daemon's `node.ipv4` and `node.pod_prefix` came from (`node_source`).
    pub node_sources: crate::node_source::NodeSources,
}

#[derive(Debug, Serialize)]
pub struct PodRow {
    pub id: u32,
    pub name: String,
    pub ipv6: Ipv6Addr,
    pub ipv4: Ipv4Addr,
    pub ifindex: u32,
    pub ifindex_v4: u32,
    /// What the pod holds now (`pod_usage − pod_freed`, one count per pod).
    pub mappings: u64,
    pub flows4: u64,
    pub quota: u32,
    /// Group ids as in the pod record.
    pub groups: Vec<u32>,
    /// The same groups by name.
    pub security_groups: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct SgRow {
    pub id: u32,
    pub name: String,
    pub pods: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct StatRow {
    pub counter: &'static str,
    pub kind: &'static str,
    pub value: u64,
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn to_value<T: Serialize>(v: T) -> Result<Value, ControlError> {
    serde_json::to_value(v).map_err(|e| ControlError::Encode(e.to_string()))
}

// ---------------------------------------------------------------------------------------------
// The one execution function.

/// Carries out `req` on the pinned dataplane and returns its result as JSON.
pub fn execute(ctx: &Context<'_>, req: &Request) -> Result<Value, ControlError> {
    // Held for the whole mutation, so a GC pass or another request never sees it half-done.
    let mut guard = match (ctx.daemon, req.mutates()) {
        (Some(d), true) => Some(d.lock()),
        _ => None,
    };
    let pins = ctx.pins;
    match req {
        Request::Status => status(ctx),
        Request::PodList => to_value(pod_rows(pins)?),
        Request::PodAdd(p) => pod_add(ctx, guard.as_deref(), p),
        Request::PodDel { name } => {
            let e = pods::remove_pod(pins, name)?;
            // Rules naming a group must stop matching the removed pod's address at once: a pod
            // that gets the address next is not a member.
            if let Some(cfg) = guard.as_deref() {
                reapply(pins, cfg, None)?;
            }
            Ok(json!({"name": e.name, "id": e.pod.id}))
        }
        Request::SgList => to_value(sg_rows(pins)?),
        Request::SgApply { config, cut } => {
            let cfg = crate::config::Config::parse(config)?;
            let node = maps::read_node(pins)?;
            let prefix = Ipv6Net::new(Ipv6Addr::from(node.pod_prefix), 80).map_err(|e| ControlError::Invalid(e.to_string()))?;
            let assign: BTreeMap<String, Vec<String>> =
                cfg.pods.iter().map(|p| (p.name.clone(), p.security_groups.clone())).collect();
            let r = sg::apply(pins, &cfg.security_groups, &assign, prefix, cfg.node.max_groups_per_pod as usize, *cut)?;
            // From now on the daemon resolves `pod add --security-group` against these groups.
            if let Some(d) = guard.as_deref_mut() {
                d.groups = cfg.security_groups;
                d.assign = assign;
                d.node.max_groups_per_pod = cfg.node.max_groups_per_pod;
            }
            to_value(r)
        }
        Request::NatList(f) => {
            let node = maps::read_node(pins)?;
            let pod = f.pod.as_deref().map(|n| find_pod(pins, n)).transpose()?;
            let mut rows: Vec<_> = snat::mapping_rows(pins, Ipv4Addr::from(node.ipv4))?
                .into_iter()
                .filter(|r| pod.as_ref().is_none_or(|p| r.pod_addr.octets() == p.pod.ipv4))
                .filter(|r| f.proto.as_deref().is_none_or(|p| r.proto == p))
                .collect();
            rows.truncate(f.limit.unwrap_or(usize::MAX));
            to_value(rows)
        }
        Request::CtList(f) => ct_list(pins, f),
        Request::CtFlush { pod } => {
            let e = find_pod(pins, pod)?;
            let n = snat::flush_pod(pins, Ipv4Addr::from(e.pod.ipv4))?;
            let n6 = sg::flush_pod(pins, Ipv6Addr::from(e.pod.ipv6))?;
            Ok(json!({"pod": pod, "ipv4": Ipv4Addr::from(e.pod.ipv4), "entries": n + n6}))
        }
        Request::Stats { all } => {
            let rows: Vec<StatRow> = maps::read_stats(pins)?
                .into_iter()
                .filter(|(_, v)| *all || *v > 0)
                .map(|(c, v)| StatRow { counter: c.name(), kind: if c.is_drop() { "drop" } else { "verdict" }, value: v })
                .collect();
            to_value(rows)
        }
        Request::Gc { advance_secs, dry_run } => {
            let node = maps::read_node(pins)?;
            let now = boottime_ns() + advance_secs.saturating_mul(1_000_000_000);
            // Only the daemon knows `[timeouts] unanswered` (it is not in the kernel's node entry).
            // A deleting pass already holds the daemon's lock (it mutates): locking it again
            // would deadlock the control socket.
            let unanswered = match (guard.as_deref(), ctx.daemon) {
                (Some(cfg), _) => cfg.node.unanswered_secs,
                (None, Some(d)) => d.lock().node.unanswered_secs,
                (None, None) => crate::config::DEFAULT_UNANSWERED_SECS,
            };
            // IPv4 counters stay at the top level; the IPv6 pass is nested under "ipv6".
            let mut out = if *dry_run {
                let mut out = to_value(snat::gc_preview(pins, &node.timeouts, unanswered, now)?)?;
                out["ipv6"] = to_value(sg::gc_preview(pins, &node.timeouts, unanswered, now)?)?;
                out
            } else {
                let mut out = to_value(snat::gc(pins, &node.timeouts, unanswered, now)?)?;
                out["ipv6"] = to_value(sg::gc(pins, &node.timeouts, unanswered, now)?)?;
                out
            };
            out["dry_run"] = json!(dry_run);
            out["deleted"] = json!(!dry_run);
            out["advance_secs"] = json!(advance_secs);
            Ok(out)
        }
    }
}

fn status(ctx: &Context<'_>) -> Result<Value, ControlError> {
    let pins = ctx.pins;
    let mut s = Status {
        pin_root: pins.root().display().to_string(),
        installed: pins.exists(),
        abi_version: 0,
        node_ipv4: None,
        pod_prefix: None,
        uplink_ifindex: 0,
        snat_ports: None,
        pods: 0,
        mappings: 0,
        flows: 0,
        links: Vec::new(),
        reverse_path: None,
        flags: Vec::new(),
        foreign_programs: Vec::new(),
        answered_by: if ctx.daemon.is_some() { "daemon" } else { "pins" },
        daemon: ctx.daemon.map(|d| {
            // One guard: a second `lock()` in the same expression would wait on the first.
            let cfg = d.lock();
            DaemonStatus {
            info: d.info.clone(),
            uptime_secs: unix_now().saturating_sub(d.info.started),
            security_groups: cfg.groups.keys().cloned().collect(),
            node_sources: cfg.node.sources,
        }}),
    };
    if s.installed {
        let n = maps::read_node(pins)?;
        s.abi_version = n.abi_version;
        s.node_ipv4 = Some(Ipv4Addr::from(n.ipv4));
        s.pod_prefix = Some(format!("{}/80", Ipv6Addr::from(n.pod_prefix)));
        s.uplink_ifindex = n.uplink_ifindex;
        s.snat_ports = Some(format!("{}-{}", n.port_min, n.port_max));
        s.pods = list_pods(pins)?.len();
        s.mappings = snat::mappings(pins)?.len();
        s.flows = snat::flows(pins)?.len();
        s.links = attach::list_links(pins)?
            .iter()
            .filter_map(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()))
            .collect();
        for (bit, name) in [
            (node_flags::FIB_REDIRECT, "fib_redirect"),
            (node_flags::FILTER_EIF, "filter_endpoint_independent"),
            (node_flags::FLOW_EVENTS, "flow_events"),
            (node_flags::TC_NETLINK, "tc_netlink"),
            (node_flags::UDP_NO_PARITY, "udp_no_parity"),
            (node_flags::BPF_LOG, "bpf_log"),
            (node_flags::FRAG_PUNT, "frag_punt"),
            (node_flags::FOREIGN_COEXIST, "foreign_coexist"),
        ] {
            if n.flags & bit != 0 {
                s.flags.push(name);
            }
        }
        let mut hooks = Vec::new();
        for l in &s.links {
            let Some((ifname, prog)) = Pins::parse_link_name(l) else { continue };
            let prog = prog.trim_end_matches(crate::pins::NETLINK_SUFFIX).to_string();
            let hook = match prog.as_str() {
                attach::UPLINK_XDP => {
                    s.reverse_path = Some("xdp");
                    Hook::Xdp
                }
                attach::UPLINK_TC => {
                    s.reverse_path = Some("tc");
                    Hook::TcIngress
                }
                attach::POD_EGRESS => Hook::TcEgress,
                _ => Hook::TcIngress,
            };
            hooks.push((ifname, hook));
        }
        // The uplink's XDP slot too: another tool holding it is why the reverse path can be tc.
        if let Some(uplink) = crate::netif::name_of(n.uplink_ifindex) {
            for hook in [Hook::Xdp, Hook::TcIngress] {
                if !hooks.contains(&(uplink.clone(), hook)) {
                    hooks.push((uplink.clone(), hook));
                }
            }
        }
        let ours = foreign::own_ids(pins);
        for (ifname, hook) in &hooks {
            // A veth deleted with its pod leaves only a stale pin: nothing to scan.
            if let Ok(found) = foreign::scan(ifname, *hook, &ours) {
                s.foreign_programs.extend(found.iter().map(ToString::to_string));
            }
        }
    }
    to_value(s)
}

pub fn pod_rows(pins: &Pins) -> Result<Vec<PodRow>, ControlError> {
    let names: BTreeMap<u32, String> = sg::group_ids(pins)?.into_iter().map(|(n, id)| (id, n)).collect();
    Ok(list_pods(pins)?
        .into_iter()
        .map(|e| {
            let held = usage::held(pins, e.pod.id).unwrap_or_default();
            let groups = e.pod.groups[..(e.pod.group_count as usize).min(e.pod.groups.len())].to_vec();
            PodRow {
                id: e.pod.id,
                ipv6: Ipv6Addr::from(e.pod.ipv6),
                ipv4: Ipv4Addr::from(e.pod.ipv4),
                ifindex: e.pod.ifindex,
                ifindex_v4: e.pod.ifindex_v4,
                mappings: held.mappings,
                flows4: held.flows4,
                quota: e.pod.quota,
                security_groups: groups.iter().map(|id| names.get(id).cloned().unwrap_or_else(|| format!("#{id}"))).collect(),
                groups,
                name: e.name,
            }
        })
        .collect())
}

fn sg_rows(pins: &Pins) -> Result<Vec<SgRow>, ControlError> {
    let ids = sg::group_ids(pins)?;
    let pods = list_pods(pins)?;
    Ok(ids
        .iter()
        .map(|(name, id)| SgRow {
            id: *id,
            name: name.clone(),
            pods: pods
                .iter()
                .filter(|p| p.pod.groups[..(p.pod.group_count as usize).min(p.pod.groups.len())].contains(id))
                .map(|p| p.name.clone())
                .collect(),
        })
        .collect())
}

fn find_pod(pins: &Pins, name: &str) -> Result<PodEntry, ControlError> {
    list_pods(pins)?
        .into_iter()
        .find(|p| p.name == name)
        .ok_or_else(|| DataplaneError::UnknownPod { name: name.into() }.into())
}

/// Recompiles the daemon's groups for every registered pod (config pods from the config, the
/// others keeping their recorded groups, except `skip`, whose record is authoritative).
fn reapply(pins: &Pins, cfg: &DaemonConfig, skip: Option<&str>) -> Result<sg::ApplyReport, ControlError> {
    let mut assign = cfg.assign.clone();
    if let Some(name) = skip {
        assign.remove(name);
    }
    Ok(sg::apply(pins, &cfg.groups, &assign, cfg.node.pod_prefix, cfg.node.max_groups_per_pod as usize, false)?)
}

fn pod_add(ctx: &Context<'_>, cfg: Option<&DaemonConfig>, p: &PodAdd) -> Result<Value, ControlError> {
    let pins = ctx.pins;
    let node = maps::read_node(pins)?;
    let prefix = Ipv6Net::new(Ipv6Addr::from(node.pod_prefix), 80).map_err(|e| ControlError::Invalid(e.to_string()))?;
    let v4net = Ipv4Net::new(Ipv4Addr::from(node.pod_ipv4_net), node.pod_ipv4_prefix_len as u8)
        .map_err(|e| ControlError::Invalid(e.to_string()))?;
    let raw = RawPod {
        name: p.name.clone(),
        ipv6: p.ipv6.clone(),
        ipv4: p.ipv4.clone(),
        veth: p.veth.clone(),
        veth_v4: p.veth_v4.clone(),
        security_groups: p.security_groups.clone(),
    };
    let spec = validate_pod(prefix, v4net, &raw, "pod")?;

    // Every group is resolved before anything is written: an unknown name changes nothing.
    let mut names: Vec<String> = Vec::new();
    for g in &spec.security_groups {
        if !names.contains(g) {
            names.push(g.clone());
        }
    }
    let ids: Vec<u32> = if names.is_empty() {
        Vec::new()
    } else {
        let cfg = cfg.ok_or_else(|| ControlError::NeedsDaemon { groups: names.clone(), socket: ctx.socket.to_owned() })?;
        if let Some(unknown) = names.iter().find(|n| !cfg.groups.contains_key(*n)) {
            return Err(ControlError::UnknownGroup { name: unknown.clone(), known: cfg.groups.keys().cloned().collect() });
        }
        if names.len() > cfg.node.max_groups_per_pod as usize {
            return Err(ControlError::Invalid(format!(
                "pod.security_groups = {names:?}: at most {} groups per pod (node.max_groups_per_pod)",
                cfg.node.max_groups_per_pod
            )));
        }
        let pinned = sg::group_ids(pins)?;
        names
            .iter()
            .map(|n| {
                pinned.get(n).copied().ok_or_else(|| {
                    ControlError::Invalid(format!("security group {n:?} is configured but not in the dataplane yet"))
                })
            })
            .collect::<Result<_, _>>()?
    };

    let existed = list_pods(pins)?.iter().any(|e| e.name == spec.name);
    // The pod record carries its group ids from the first packet on, so it is never briefly
    // without its groups (which would mean "send anything").
    let result = pods::add_pod(pins, node.pod_quota, &spec, &ids)
        .map_err(ControlError::from)
        .and_then(|pod| match cfg {
            // Rules that name one of its groups must now match its address too.
            Some(cfg) => reapply(pins, cfg, Some(&spec.name)).map(|_| pod),
            None => Ok(pod),
        });
    match result {
        Ok(pod) => Ok(json!({
            "name": spec.name,
            "id": pod.id,
            "ipv6": spec.ipv6,
            "ipv4": spec.ipv4,
            "security_groups": names,
        })),
        Err(e) => {
            // All or nothing: a pod that was not there before is not left half-registered.
            if !existed {
                let _ = pods::remove_pod(pins, &spec.name);
            }
            Err(e)
        }
    }
}

fn ct_list(pins: &Pins, f: &CtFilter) -> Result<Value, ControlError> {
    let pod = f.pod.as_deref().map(|n| find_pod(pins, n)).transpose()?;
    if f.ipv6 {
        let dst: Option<Ipv6Addr> = f
            .dst
            .as_deref()
            .map(|d| d.parse().map_err(|_| ControlError::Invalid(format!("--dst {d}: not an IPv6 address"))))
            .transpose()?;
        let rows: Vec<_> = sg::flow_rows(pins)?
            .into_iter()
            .filter(|r| pod.as_ref().is_none_or(|p| r.pod_addr.octets() == p.pod.ipv6))
            .filter(|r| f.proto.as_deref().is_none_or(|p| r.proto == p))
            .filter(|r| dst.is_none_or(|d| r.remote_addr == d))
            .take(f.limit.unwrap_or(usize::MAX))
            .collect();
        return to_value(rows);
    }
    let dst: Option<Ipv4Addr> = f
        .dst
        .as_deref()
        .map(|d| {
            d.parse()
                .map_err(|_| ControlError::Invalid(format!("--dst {d}: not an IPv4 address (use --ipv6 for IPv6 flows)")))
        })
        .transpose()?;
    let rows: Vec<_> = snat::flow_rows(pins)?
        .into_iter()
        .filter(|r| pod.as_ref().is_none_or(|p| r.pod_addr.octets() == p.pod.ipv4))
        .filter(|r| f.proto.as_deref().is_none_or(|p| r.proto == p))
        .filter(|r| dst.is_none_or(|d| r.remote_addr == d))
        .take(f.limit.unwrap_or(usize::MAX))
        .collect();
    to_value(rows)
}

// ---------------------------------------------------------------------------------------------
// The daemon's socket.

/// The bound control socket. Dropping it removes the socket file, unless another daemon has
/// replaced it meanwhile.
pub struct ControlSocket {
    path: PathBuf,
    ino: (u64, u64),
    listener: Option<UnixListener>,
}

impl ControlSocket {
    /// Binds `path`: its directory is created 0700 when missing, the socket is 0600. A socket
    /// file left by a daemon that died is replaced, but only once nothing answers on it.
    pub fn bind(path: &Path) -> Result<ControlSocket, ControlError> {
        let err = |source| ControlError::Socket { path: path.to_owned(), source };
        if let Some(dir) = path.parent()
            && !dir.exists()
        {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(err)?;
        }
        match std::fs::symlink_metadata(path) {
            Ok(m) if !m.file_type().is_socket() => return Err(ControlError::NotASocket { path: path.to_owned() }),
            Ok(_) => match UnixStream::connect(path) {
                Ok(_) => return Err(ControlError::SocketInUse { path: path.to_owned() }),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    tracing::info!(socket = %path.display(), "replacing a stale control socket (nothing answers on it)");
                    std::fs::remove_file(path).map_err(err)?;
                }
                Err(e) => return Err(err(e)),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
        let listener = UnixListener::bind(path).map_err(err)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
        let m = std::fs::metadata(path).map_err(err)?;
        listener.set_nonblocking(true).map_err(err)?;
        Ok(ControlSocket { path: path.to_owned(), ino: (m.dev(), m.ino()), listener: Some(listener) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The listener, for the daemon's runtime (once).
    pub fn take_listener(&mut self) -> Option<UnixListener> {
        self.listener.take()
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        if let Ok(m) = std::fs::symlink_metadata(&self.path)
            && (m.dev(), m.ino()) == self.ino
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// One request line in, one response line out (without the newline). Never fails: errors are
/// answers.
pub fn handle_line(pins: &Pins, daemon: &Daemon, line: &str) -> String {
    // Errors: (message, whether the request was at fault).
    let answer = (|| {
        let v: Value = serde_json::from_str(line).map_err(|e| (format!("not a JSON request: {e}"), true))?;
        // The version is checked before the shape, so that a client of another version gets this
        // message rather than a parse error about some field.
        match v.get("version").and_then(Value::as_u64) {
            Some(n) if n == PROTOCOL_VERSION as u64 => {}
            Some(n) => {
                return Err((
                    format!(
                        "protocol version {n} is not supported: this daemon (podgate {}) speaks version {PROTOCOL_VERSION}",
                        env!("CARGO_PKG_VERSION")
                    ),
                    true,
                ));
            }
            None => {
                return Err((format!("the request has no \"version\" (this daemon speaks version {PROTOCOL_VERSION})"), true));
            }
        }
        let env: Envelope = serde_json::from_value(v).map_err(|e| (format!("bad request: {e}"), true))?;
        if let Some(root) = &env.pin_root
            && !same_root(root, pins.root())
        {
            return Err((
                format!(
                    "this daemon serves pin root {}, not {} (use the socket of that pin root's daemon)",
                    pins.root().display(),
                    root.display()
                ),
                true,
            ));
        }
        let ctx = Context { pins, daemon: Some(daemon), socket: &daemon.info.socket };
        execute(&ctx, &env.request).map_err(|e| (error_chain(&e), e.is_invalid_input()))
    })();
    let resp = match answer {
        Ok(result) => json!({"version": PROTOCOL_VERSION, "ok": true, "result": result}),
        Err((error, invalid)) => json!({"version": PROTOCOL_VERSION, "ok": false, "error": error, "invalid": invalid}),
    };
    resp.to_string()
}

pub use crate::util::error_chain;

/// Serves the control socket until the task is dropped. Requests run on blocking threads (map
/// syscalls and netlink), several connections at once; mutations queue on the daemon's lock.
pub async fn serve(listener: UnixListener, pins: Pins, daemon: std::sync::Arc<Daemon>) -> io::Result<()> {
    let listener = tokio::net::UnixListener::from_std(listener)?;
    loop {
        let sock = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("control socket accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let pins = pins.clone();
        let daemon = daemon.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(sock, pins, daemon).await {
                tracing::debug!("control connection: {e}");
            }
        });
    }
}

async fn connection(sock: tokio::net::UnixStream, pins: Pins, daemon: std::sync::Arc<Daemon>) -> io::Result<()> {
    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
    let (rd, mut wr) = sock.into_split();
    let mut rd = tokio::io::BufReader::new(rd);
    loop {
        let mut buf = Vec::new();
        let n = (&mut rd).take(MAX_LINE as u64 + 1).read_until(b'\n', &mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        let resp = if buf.len() > MAX_LINE {
            json!({"version": PROTOCOL_VERSION, "ok": false, "error": format!("request longer than {MAX_LINE} bytes")})
                .to_string()
        } else {
            let line = String::from_utf8_lossy(&buf).trim().to_string();
            if line.is_empty() {
                continue;
            }
            let (pins, daemon) = (pins.clone(), daemon.clone());
            tokio::task::spawn_blocking(move || handle_line(&pins, &daemon, &line))
                .await
                .map_err(io::Error::other)?
        };
        wr.write_all(resp.as_bytes()).await?;
        wr.write_all(b"\n").await?;
        if buf.len() > MAX_LINE {
            return Ok(());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The client side.

/// Which path answered a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answered {
    Daemon,
    Pins,
}

/// Sends one request to the daemon on `socket`. `Ok(None)`: no daemon answers there (no socket
/// file, or nothing listening on it).
pub fn call(socket: &Path, pin_root: Option<&Path>, req: &Request) -> Result<Option<Value>, ControlError> {
    let err = |source| ControlError::Socket { path: socket.to_owned(), source };
    let mut stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused) => return Ok(None),
        Err(e) => return Err(err(e)),
    };
    stream.set_read_timeout(Some(CLIENT_TIMEOUT)).map_err(err)?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT)).map_err(err)?;
    let env = Envelope { version: PROTOCOL_VERSION, pin_root: pin_root.map(Path::to_owned), request: req.clone() };
    let mut line = serde_json::to_string(&env).map_err(|e| ControlError::Encode(e.to_string()))?;
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(err)?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).map_err(err)?;
    parse_answer(socket, &answer).map(Some)
}

fn parse_answer(socket: &Path, answer: &str) -> Result<Value, ControlError> {
    let protocol = |detail: String| ControlError::Protocol { socket: socket.to_owned(), detail };
    if answer.is_empty() {
        return Err(protocol("it closed the connection without an answer".into()));
    }
    let mut v: Value = serde_json::from_str(answer).map_err(|e| protocol(e.to_string()))?;
    match v.get("version").and_then(Value::as_u64) {
        Some(n) if n == PROTOCOL_VERSION as u64 => {}
        other => {
            return Err(protocol(format!(
                "it speaks protocol version {}, this podgate {PROTOCOL_VERSION}",
                other.map(|n| n.to_string()).unwrap_or_else(|| "(none)".into())
            )));
        }
    }
    match v.get("ok").and_then(Value::as_bool) {
        Some(true) => Ok(v["result"].take()),
        Some(false) => Err(ControlError::Daemon {
            socket: socket.to_owned(),
            message: v["error"].as_str().unwrap_or("(no message)").to_string(),
            invalid: v["invalid"] == true,
        }),
        None => Err(protocol("no \"ok\" field".into())),
    }
}

/// The CLI's and the CNI plugin's way to run a request: through the daemon when one answers on
/// `socket`, else on the pinned maps directly (except what only the daemon can do).
pub fn dispatch(socket: &Path, pins: &Pins, explicit_root: Option<&Path>, req: &Request) -> Result<(Value, Answered), ControlError> {
    if let Some(v) = call(socket, explicit_root, req)? {
        return Ok((v, Answered::Daemon));
    }
    if req.needs_daemon() {
        let groups = match req {
            Request::PodAdd(p) => p.security_groups.clone(),
            _ => Vec::new(),
        };
        return Err(ControlError::NeedsDaemon { groups, socket: socket.to_owned() });
    }
    let ctx = Context { pins, daemon: None, socket };
    Ok((execute(&ctx, req)?, Answered::Pins))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_with_a_verb_tag() {
        let r = Request::PodAdd(PodAdd {
            name: "a".into(),
            ipv6: "2001:db8:0:1::a".into(),
            ipv4: "169.254.172.10".into(),
            veth: "v".into(),
            veth_v4: None,
            security_groups: vec!["web".into()],
        });
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["verb"], "pod_add");
        assert_eq!(serde_json::from_value::<Request>(v).unwrap(), r);
        let s: Request = serde_json::from_str(r#"{"verb":"stats"}"#).unwrap();
        assert_eq!(s, Request::Stats { all: false });
        assert!(serde_json::from_str::<Request>(r#"{"verb":"pod_del","name":"a","bogus":1}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"verb":"launch"}"#).is_err());
        // Clients that predate `dry_run` keep their meaning: a real pass.
        let g: Request = serde_json::from_str(r#"{"verb":"gc","advance_secs":5}"#).unwrap();
        assert_eq!(g, Request::Gc { advance_secs: 5, dry_run: false });
    }

    #[test]
    fn mutations_and_daemon_only_requests() {
        assert!(!Request::PodList.mutates());
        assert!(Request::PodDel { name: "a".into() }.mutates());
        assert!(Request::Gc { advance_secs: 0, dry_run: false }.mutates());
        assert!(!Request::Gc { advance_secs: 600, dry_run: true }.mutates());
        let mut p = PodAdd {
            name: "a".into(),
            ipv6: String::new(),
            ipv4: String::new(),
            veth: String::new(),
            veth_v4: None,
            security_groups: vec![],
        };
        assert!(!Request::PodAdd(p.clone()).needs_daemon());
        p.security_groups.push("web".into());
        assert!(Request::PodAdd(p).needs_daemon());
    }

    #[test]
    fn socket_per_pin_root() {
        assert_eq!(default_socket(Path::new(DEFAULT_PIN_ROOT)), PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(default_socket(Path::new("/sys/fs/bpf/podgate/")), PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(default_socket(Path::new("/sys/fs/bpf/pg-lab1")), PathBuf::from("/run/podgate/sys-fs-bpf-pg-lab1.sock"));
        let long = format!("/sys/fs/bpf/{}", "x".repeat(120));
        let s = default_socket(Path::new(&long));
        assert!(s.as_os_str().len() < 108 && s.starts_with("/run/podgate"), "{s:?}");
        assert_ne!(s, default_socket(Path::new(&format!("{long}y"))));
    }

    fn daemon() -> Daemon {
        let cfg = crate::config::Config::parse("[node]\nuplink = \"lo\"\nipv4 = \"198.51.100.2\"\npod_prefix = \"2001:db8:0:1::/80\"\n").unwrap();
        Daemon::new(
            DaemonInfo {
                pid: 1,
                version: "test",
                protocol: PROTOCOL_VERSION,
                socket: "/nonexistent.sock".into(),
                config: "/nonexistent.toml".into(),
                started: 0,
            },
            DaemonConfig { node: cfg.node, groups: cfg.security_groups, assign: BTreeMap::new() },
        )
    }

    fn answer(line: &str) -> Value {
        let pins = Pins::new("/nonexistent/podgate-test-pins");
        serde_json::from_str(&handle_line(&pins, &daemon(), line)).unwrap()
    }

    #[test]
    fn version_mismatch_is_a_clear_error() {
        let v = answer(r#"{"version":99,"request":{"verb":"launch_rockets"}}"#);
        assert_eq!(v["ok"], false);
        let e = v["error"].as_str().unwrap();
        assert!(e.contains("version 99") && e.contains(&format!("version {PROTOCOL_VERSION}")), "{e}");
        let v = answer(r#"{"request":{"verb":"status"}}"#);
        assert!(v["error"].as_str().unwrap().contains("no \"version\""), "{v}");
        let v = answer("not json");
        assert!(v["error"].as_str().unwrap().contains("not a JSON request"), "{v}");
    }

    #[test]
    fn a_daemon_refuses_requests_for_another_pin_root() {
        let v = answer(r#"{"version":1,"pin_root":"/sys/fs/bpf/other","request":{"verb":"pod_list"}}"#);
        assert_eq!(v["ok"], false);
        assert!(v["error"].as_str().unwrap().contains("/sys/fs/bpf/other"), "{v}");
        // The same root (trailing slash aside) is served: here the pins are missing, which is
        // what the answer says.
        let v = answer(r#"{"version":1,"pin_root":"/nonexistent/podgate-test-pins/","request":{"verb":"pod_list"}}"#);
        assert!(v["error"].as_str().unwrap().contains("no podgate state"), "{v}");
        let v = answer(r#"{"version":1,"request":{"verb":"status"}}"#);
        assert_eq!(v["ok"], true, "{v}");
        assert_eq!(v["result"]["answered_by"], "daemon");
        assert_eq!(v["result"]["installed"], false);
    }

    #[test]
    fn answers_are_checked() {
        let s = Path::new("/x.sock");
        assert_eq!(parse_answer(s, r#"{"version":1,"ok":true,"result":[1]}"#).unwrap(), json!([1]));
        let e = parse_answer(s, r#"{"version":1,"ok":false,"error":"boom"}"#).unwrap_err().to_string();
        assert!(e.contains("boom") && e.contains("/x.sock"), "{e}");
        let e = parse_answer(s, r#"{"version":2,"ok":true,"result":null}"#).unwrap_err().to_string();
        assert!(e.contains("version 2"), "{e}");
        assert!(parse_answer(s, "").is_err());
    }

    #[test]
    fn a_stale_socket_is_replaced_and_a_live_one_is_not() {
        let dir = std::env::temp_dir().join(format!("podgate-ctl-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("sub/ctl.sock");
        let mut first = ControlSocket::bind(&path).unwrap();
        let mode = std::fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        // Listening: a second daemon is refused.
        assert!(matches!(ControlSocket::bind(&path), Err(ControlError::SocketInUse { .. })));
        // The process dies without removing the file: the listener goes, the file stays.
        drop(first.take_listener());
        std::mem::forget(first);
        assert!(path.exists());
        let second = ControlSocket::bind(&path).expect("stale socket replaced");
        drop(second);
        assert!(!path.exists(), "a clean shutdown removes the socket");
        std::fs::write(&path, "not a socket").unwrap();
        assert!(matches!(ControlSocket::bind(&path), Err(ControlError::NotASocket { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
