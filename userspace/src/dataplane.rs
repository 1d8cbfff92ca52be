//! Loading, pinning, adopting and attaching. `install` loads the embedded object once, adopting
//! pinned maps (so a restarted or upgraded daemon keeps every mapping and flow) and re-pinning the
//! programs; everything else works from the pins, so CLI verbs and the daemon share one path.

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use aya::{
    EbpfLoader,
    maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray},
    pin::PinError as AyaPinError,
    programs::{
        Program, ProgramError, SchedClassifier, Xdp,
        links::{FdLink, LinkError, PinnedLink},
        tc::{NlOptions, TcAttachOptions, TcAttachType},
        xdp::XdpMode,
        LinkOrder,
    },
};
use aya_obj::programs::XdpAttachType;
use podgate_common::{
    ABI_VERSION, MAX_POD_GROUPS, NodeConfig, Pod, PodName, map_names, node_flags, stats,
};
use thiserror::Error;

use crate::{
    config::{Filtering, ForeignPrograms, Forwarding, NodeSettings, PodSpec, ReversePath, TcAttach, XdpMode as CfgXdpMode},
    foreign::{self, Foreign, ForeignError, Hook},
    netif::{self, NetifError},
    pins::{PinError, Pins},
};

/// Programs and where they go.
pub const POD_INGRESS: &str = "pod_ingress";
pub const POD_EGRESS: &str = "pod_egress";
pub const UPLINK_XDP: &str = "uplink_xdp";
pub const UPLINK_TC: &str = "uplink_tc";
const TC_PROGRAMS: &[&str] = &[POD_INGRESS, POD_EGRESS, UPLINK_TC];
const XDP_PROGRAMS: &[&str] = &[UPLINK_XDP];

#[derive(Debug, Error)]
pub enum DataplaneError {
    #[error(transparent)]
    Pins(#[from] PinError),
    #[error(transparent)]
    Netif(#[from] NetifError),
    #[error(transparent)]
    Foreign(#[from] ForeignError),
    #[error(
        "pinned state in {root} has map ABI version {found}, this podgate uses {ours}; \
         migration between these versions is not implemented: stop the old dataplane with \
         `podgate reset --pin-root {root}` (drops all flows) and start again"
    )]
    AbiMismatch { root: PathBuf, found: u32, ours: u32 },
    #[error("loading the eBPF object: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("program {name}")]
    Program {
        name: String,
        #[source]
        source: ProgramError,
    },
    #[error("map {name}")]
    Map {
        name: String,
        #[source]
        source: MapError,
    },
    #[error("pinning {path}")]
    Pin {
        path: PathBuf,
        #[source]
        source: AyaPinError,
    },
    #[error("link {path}")]
    Link {
        path: PathBuf,
        #[source]
        source: LinkError,
    },
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no podgate state under {root} (is the daemon started? `podgate run --config FILE`)")]
    NotInstalled { root: PathBuf },
    #[error("pod {name:?} is not registered")]
    UnknownPod { name: String },
    #[error("pod {name:?} conflicts with registered pod {other:?}: {what}")]
    PodConflict { name: String, other: String, what: String },
    #[error("no free pod id (4096 pods registered)")]
    PodIdsExhausted,
    #[error(transparent)]
    Batch(#[from] crate::maps::batch::BatchError),
}

pub(crate) fn map_err(name: &str) -> impl FnOnce(MapError) -> DataplaneError + '_ {
    move |source| DataplaneError::Map { name: name.into(), source }
}

/// Opens a pinned hash map (plain or LRU) with its key and value types.
pub(crate) fn open_hash<K: aya::Pod, V: aya::Pod>(pins: &Pins, name: &str) -> Result<HashMap<MapData, K, V>, DataplaneError> {
    HashMap::try_from(open_map(pins, name)?).map_err(map_err(name))
}

fn prog_err(name: &str) -> impl FnOnce(ProgramError) -> DataplaneError + '_ {
    move |source| DataplaneError::Program { name: name.into(), source }
}

/// Every map podgate pins (the names in the object and under the pin root).
pub fn all_map_names() -> Vec<&'static str> {
    use podgate_common::nat::map_names as nat;
    let mut v = vec![
        map_names::NODE,
        map_names::PODS,
        map_names::PODS_V4,
        map_names::PODS_V6,
        map_names::POD_NAMES,
        map_names::POD_USAGE,
        map_names::POD_FREED,
        map_names::STATS,
        map_names::EVENTS,
        nat::NAT4_MAP,
        nat::NAT4_CLAIM,
        nat::CT4,
        nat::FRAG4,
        podgate_common::frag::map_names::FRAG4_PUNT,
        podgate_common::frag::map_names::FRAG4_PENDING,
        podgate_common::frag::map_names::FRAG4_PUNT_ALIVE,
        nat::NAT4_PRESSURE,
    ];
    v.extend_from_slice(crate::sg_maps::MAP_NAMES);
    v
}

/// Loads the embedded object, adopting existing pins, and pins maps and programs. Returns the
/// names of the maps that were adopted (not created). `bpf_log_level` (aya-log numbering, 0 =
/// off) is fixed at load: a log point above it returns before formatting anything.
pub fn install(pins: &Pins, bpf_log_level: u8) -> Result<Vec<String>, DataplaneError> {
    install_sized(pins, &[], bpf_log_level)
}

/// Like [`install`], creating the maps in `sizes` (`(name, max_entries)`) with those sizes. A map
/// adopted from its pin keeps the size it was created with (see [`size_mismatches`]).
pub fn install_sized(pins: &Pins, sizes: &[(&str, u32)], bpf_log_level: u8) -> Result<Vec<String>, DataplaneError> {
    pins.prepare()?;
    check_abi(pins)?;
    let names = all_map_names();
    let adopted: Vec<String> = names
        .iter()
        .filter(|n| pins.map(n).exists())
        .map(|n| n.to_string())
        .collect();
    let paths: Vec<(&str, PathBuf)> = names.iter().map(|n| (*n, pins.map(n))).collect();
    let mut loader = EbpfLoader::new();
    loader.override_global(aya_log::LEVEL, &bpf_log_level, false);
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    for (name, n) in sizes {
        loader.map_max_entries(name, *n);
    }
    let mut ebpf = loader.load(crate::EBPF_OBJECT).map_err(DataplaneError::Load)?;
    for name in TC_PROGRAMS.iter().chain(XDP_PROGRAMS) {
        let prog = ebpf
            .program_mut(name)
            .ok_or_else(|| prog_err(name)(ProgramError::NotLoaded))?;
        // The kernel abandons a verification with EAGAIN when a signal is pending; like libbpf,
        // try again a few times before giving up.
        let mut tries = 0;
        loop {
            let r = match &mut *prog {
                Program::SchedClassifier(p) => p.load(),
                Program::Xdp(p) => p.load(),
                _ => Err(ProgramError::UnexpectedProgramType),
            };
            match r {
                Err(e) if tries < 4 && is_eagain(&e) => tries += 1,
                r => break r.map_err(prog_err(name))?,
            }
        }
        repin(pins.prog(name), |path| prog.pin(path))?;
    }
    Ok(adopted)
}

/// The pinned maps whose size differs from `sizes`: `(name, pinned, wanted)`.
pub fn size_mismatches(pins: &Pins, sizes: &[(&str, u32)]) -> Vec<(String, u32, u32)> {
    sizes
        .iter()
        .filter_map(|(name, want)| {
            let have = map_max_entries(pins, name)?;
            (have != *want).then(|| (name.to_string(), have, *want))
        })
        .collect()
}

/// `max_entries` of a pinned map.
pub fn map_max_entries(pins: &Pins, name: &str) -> Option<u32> {
    let path = pins.map(name);
    let data = MapData::from_pin(&path).ok()?;
    data.info().ok().map(|i| i.max_entries())
}

/// Replaces a program pin: links already attached keep the old program until `attach_*` updates
/// them, so nothing stops forwarding in between.
fn repin(
    path: PathBuf,
    pin: impl FnOnce(&Path) -> Result<(), AyaPinError>,
) -> Result<(), DataplaneError> {
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(DataplaneError::Io { path, source }),
    }
    pin(&path).map_err(|source| DataplaneError::Pin { path, source })
}

/// Refuses pinned maps written by a podgate with another map layout (`podgate run` starts clean
/// first, see `upgrade`; this guards every other installer).
fn check_abi(pins: &Pins) -> Result<(), DataplaneError> {
    let found = crate::upgrade::pinned_abi(pins)?;
    if !crate::upgrade::compatible(found) {
        return Err(DataplaneError::AbiMismatch {
            root: pins.root().to_owned(),
            found: found.unwrap_or_default(),
            ours: ABI_VERSION,
        });
    }
    Ok(())
}

/// Opens a pinned map by name.
pub fn open_map(pins: &Pins, name: &str) -> Result<Map, DataplaneError> {
    let path = pins.map(name);
    if !path.exists() {
        return Err(DataplaneError::NotInstalled { root: pins.root().to_owned() });
    }
    let data = MapData::from_pin(&path).map_err(map_err(name))?;
    Map::from_map_data(data).map_err(map_err(name))
}

pub fn node_map(pins: &Pins) -> Result<Array<MapData, NodeConfig>, DataplaneError> {
    Array::try_from(open_map(pins, map_names::NODE)?).map_err(map_err(map_names::NODE))
}

pub fn pods_map(pins: &Pins) -> Result<HashMap<MapData, u32, Pod>, DataplaneError> {
    open_hash(pins, map_names::PODS)
}

pub fn stats_map(pins: &Pins) -> Result<PerCpuArray<MapData, u64>, DataplaneError> {
    PerCpuArray::try_from(open_map(pins, map_names::STATS)?).map_err(map_err(map_names::STATS))
}

pub fn read_node(pins: &Pins) -> Result<NodeConfig, DataplaneError> {
    node_map(pins)?.get(&0, 0).map_err(map_err(map_names::NODE))
}

/// The `node` entry for these settings.
pub fn node_config(node: &NodeSettings, ipv4: Ipv4Addr, uplink_ifindex: u32) -> NodeConfig {
    let mut flags = 0;
    if node.forwarding == Forwarding::Redirect {
        flags |= node_flags::FIB_REDIRECT;
    }
    if node.filtering == Filtering::EndpointIndependent {
        flags |= node_flags::FILTER_EIF;
    }
    if node.tc_attach == TcAttach::Netlink {
        flags |= node_flags::TC_NETLINK;
    }
    if node.frag_punt {
        flags |= node_flags::FRAG_PUNT;
    }
    if !node.udp_port_parity {
        flags |= node_flags::UDP_NO_PARITY;
    }
    if node.flow_events {
        flags |= node_flags::FLOW_EVENTS;
    }
    if node.bpf_log.is_some() {
        flags |= node_flags::BPF_LOG;
    }
    if node.foreign_programs == ForeignPrograms::Coexist {
        flags |= node_flags::FOREIGN_COEXIST;
    }
    NodeConfig {
        abi_version: ABI_VERSION,
        flags,
        ipv4: ipv4.octets(),
        uplink_ifindex,
        pod_prefix: node.pod_prefix.network().octets(),
        pod_ipv4_net: node.pod_ipv4_cidr.network().octets(),
        pod_ipv4_prefix_len: node.pod_ipv4_cidr.prefix_len() as u32,
        port_min: node.port_min,
        port_max: node.port_max,
        pod_quota: node.pod_quota,
        timeouts: node.timeouts,
        pod_flows: node.limits.pod_flows,
    }
}

/// Writes the node entry: the uplink address is resolved now unless configured.
pub fn write_node(pins: &Pins, node: &NodeSettings) -> Result<NodeConfig, DataplaneError> {
    let uplink_ifindex = netif::ifindex(&node.uplink)?;
    let ipv4 = match node.ipv4 {
        Some(ip) => ip,
        None => netif::first_ipv4(&node.uplink)?,
    };
    let cfg = node_config(node, ipv4, uplink_ifindex);
    node_map(pins)?.set(0, cfg, 0).map_err(map_err(map_names::NODE))?;
    Ok(cfg)
}

/// Sets or clears one bit of the node entry's flags.
pub fn set_node_flag(pins: &Pins, flag: u32, on: bool) -> Result<(), DataplaneError> {
    let mut cfg = read_node(pins)?;
    if on {
        cfg.flags |= flag;
    } else {
        cfg.flags &= !flag;
    }
    node_map(pins)?.set(0, cfg, 0).map_err(map_err(map_names::NODE))
}

/// With `node.ipv4` not configured, the SNAT address follows the uplink: when its first IPv4
/// changed (DHCP, a re-attached ENI), the node entry is rewritten and the new address is
/// returned with the old one. Mappings hold only ports, so they carry over; connections already
/// made toward the old address end, new ones use the new one.
pub fn follow_uplink_ipv4(pins: &Pins, node: &NodeSettings) -> Result<Option<(Ipv4Addr, Ipv4Addr)>, DataplaneError> {
    if node.ipv4.is_some() {
        return Ok(None);
    }
    let now = netif::first_ipv4(&node.uplink)?;
    let mut cfg = read_node(pins)?;
    let old = Ipv4Addr::from(cfg.ipv4);
    if old == now {
        return Ok(None);
    }
    cfg.ipv4 = now.octets();
    node_map(pins)?.set(0, cfg, 0).map_err(map_err(map_names::NODE))?;
    Ok(Some((old, now)))
}

/// Attaches (or atomically re-points) a TC program on `ifname`. A pinned link from an earlier
/// run is updated in place with BPF_LINK_UPDATE, so traffic never sees the interface without a
/// program; otherwise a new tcx link is created and pinned. Kernels before 6.6 have no tcx: there
/// the program goes on a clsact qdisc through netlink instead (see `attach_tc_netlink`).
///
/// Another tool's programs on the hook are never touched: with `foreign_programs = "refuse"`
/// their presence is an error before anything is attached; with `"coexist"` podgate goes in front
/// of them (see `foreign::netlink_priority`) and its passes continue down the chain.
pub fn attach_tc(pins: &Pins, ifname: &str, prog: &str, dir: TcAttachType) -> Result<(), DataplaneError> {
    let hook = if dir == TcAttachType::Egress { Hook::TcEgress } else { Hook::TcIngress };
    let others = check_hooks(pins, &[(ifname, hook)])?;
    let mut p = SchedClassifier::from_pin(pins.prog(prog)).map_err(prog_err(prog))?;
    let link_path = pins.link(ifname, prog);
    let forced = read_node(pins)?.flags & node_flags::TC_NETLINK != 0;
    if !others.is_empty() {
        tracing::info!(
            interface = ifname,
            %hook,
            others = %others.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
            "podgate attaches {prog} in front of another tool's programs (foreign_programs = \"coexist\"): \
             anti-spoofing, NAT and security groups must see every packet before anything else can \
             pass or redirect it; packets podgate passes go on to them, the ones it translates and \
             redirects or drops do not"
        );
    }
    if forced || pins.netlink_link(ifname, prog).exists() {
        if link_path.exists() {
            // Switching from tcx to netlink: the old link goes once the filter is in.
            attach_tc_netlink(pins, &mut p, ifname, prog, dir, &others)?;
            return detach_pin(&link_path);
        }
        return attach_tc_netlink(pins, &mut p, ifname, prog, dir, &others);
    }
    let updated = readopt(&link_path, ifname, prog, |l| p.attach_to_link(l))?;
    let id = match updated {
        Some(id) => id,
        None => {
            netif::ifindex(ifname)?;
            match p.attach_with_options(ifname, dir, TcAttachOptions::TcxOrder(LinkOrder::first())) {
                Ok(id) => id,
                Err(e) if tcx_unsupported(&e) => return attach_tc_netlink(pins, &mut p, ifname, prog, dir, &others),
                Err(e) => return Err(prog_err(prog)(e)),
            }
        }
    };
    pin_link(p.take_link(id).map_err(prog_err(prog))?, link_path)
}

fn is_eagain(e: &ProgramError) -> bool {
    match e {
        ProgramError::LoadError { io_error, .. } => io_error.raw_os_error() == Some(libc::EAGAIN),
        ProgramError::SyscallError(aya::sys::SyscallError { io_error, .. }) => {
            io_error.raw_os_error() == Some(libc::EAGAIN)
        }
        _ => false,
    }
}

/// tcx arrived in Linux 6.6; before it, BPF_LINK_CREATE with a tcx attach type is EINVAL.
fn tcx_unsupported(e: &ProgramError) -> bool {
    matches!(e, ProgramError::SyscallError(aya::sys::SyscallError { call: "bpf_mprog_attach", io_error })
        if io_error.raw_os_error() == Some(libc::EINVAL))
}

/// The pre-6.6 path: a direct-action filter on the clsact qdisc. Netlink filters have no link
/// object to pin; they stay attached when podgate exits, and the program itself is pinned at
/// `<root>/links/<ifname>:<program>:netlink` so that status, detach and reset find them. Replacing
/// one is remove-then-add, so an upgrade leaves a moment without a program on that interface.
fn attach_tc_netlink(
    pins: &Pins,
    p: &mut SchedClassifier,
    ifname: &str,
    prog: &str,
    dir: TcAttachType,
    others: &[Foreign],
) -> Result<(), DataplaneError> {
    let tc_err = |source: aya::programs::tc::TcError| DataplaneError::Program {
        name: prog.into(),
        source: ProgramError::from(source),
    };
    // EEXIST: the qdisc is there already (ours or another tool's), which is what we need.
    if let Err(e) = aya::programs::tc::qdisc_add_clsact(ifname)
        && !matches!(&e, aya::programs::tc::TcError::NetlinkError(n) if n.raw_os_error() == Some(libc::EEXIST))
    {
        return Err(tc_err(e));
    }
    let pin = pins.netlink_link(ifname, prog);
    remove_netlink_filter(&pin, ifname, dir)?;
    let opts = NlOptions { priority: foreign::netlink_priority(others), ..NlOptions::default() };
    let id = p
        .attach_with_options(ifname, dir, TcAttachOptions::Netlink(opts))
        .map_err(prog_err(prog))?;
    // Dropping the link would detach the filter: it must outlive this process.
    std::mem::forget(p.take_link(id).map_err(prog_err(prog))?);
    repin(pin, |path| p.pin(path))
}

/// Removes podgate's filter recorded by the netlink pin `pin` (the program it runs): found by
/// program id, so a filter of another tool is never touched, whatever its name.
fn remove_netlink_filter(pin: &Path, ifname: &str, dir: TcAttachType) -> Result<(), DataplaneError> {
    let Ok(info) = aya::programs::ProgramInfo::from_pin(pin) else {
        return Ok(());
    };
    let Ok(ifindex) = netif::ifindex(ifname) else {
        // The interface is gone, and its filters with it.
        return Ok(());
    };
    let ingress = dir == TcAttachType::Ingress;
    let filters = foreign::filters_running(ifindex, ingress, info.id()).map_err(|source| DataplaneError::Io {
        path: pin.to_owned(),
        source,
    })?;
    for (priority, handle) in filters {
        let link = aya::programs::tc::SchedClassifierLink::attached(ifname, dir, priority, aya::programs::tc::TcHandle::from(handle), None)
            .map_err(|source| DataplaneError::Io { path: pin.to_owned(), source })?;
        match aya::programs::links::Link::detach(link) {
            Ok(()) => {}
            Err(_) if netif::ifindex(ifname).is_err() => {}
            Err(source) => return Err(DataplaneError::Program { name: pin.display().to_string(), source }),
        }
    }
    Ok(())
}

/// Detaches whatever a pin under `links/` stands for: a bpf link (tcx, XDP) or a netlink filter.
fn detach_pin(path: &Path) -> Result<(), DataplaneError> {
    let file = path.file_name().and_then(|f| f.to_str()).unwrap_or_default();
    if let Some((ifname, prog)) = Pins::parse_link_name(file)
        && let Some(prog) = prog.strip_suffix(crate::pins::NETLINK_SUFFIX)
    {
        let dir = if prog == POD_EGRESS { TcAttachType::Egress } else { TcAttachType::Ingress };
        remove_netlink_filter(path, &ifname, dir)?;
        return std::fs::remove_file(path).map_err(|source| DataplaneError::Io { path: path.to_owned(), source });
    }
    // Dropping the last fd of an unpinned link detaches it.
    drop(take_pinned_link(path)?);
    Ok(())
}

/// The XDP counterpart of `attach_tc`.
pub fn attach_xdp(pins: &Pins, ifname: &str, prog: &str, mode: CfgXdpMode) -> Result<(), DataplaneError> {
    let others = check_hooks(pins, &[(ifname, Hook::Xdp)])?;
    if !others.is_empty() {
        // One program per XDP slot without a dispatcher: attaching would replace theirs.
        return Err(ForeignError::Refused(others).into());
    }
    let mut p = Xdp::from_pin(pins.prog(prog), XdpAttachType::Interface).map_err(prog_err(prog))?;
    let link_path = pins.link(ifname, prog);
    let updated = readopt(&link_path, ifname, prog, |l| p.attach_to_link(l))?;
    let id = match updated {
        Some(id) => id,
        None => {
            netif::ifindex(ifname)?;
            match mode {
                CfgXdpMode::Native => p.attach(ifname, XdpMode::Driver),
                CfgXdpMode::Generic => p.attach(ifname, XdpMode::Skb),
                CfgXdpMode::Auto => p
                    .attach(ifname, XdpMode::Driver)
                    .or_else(|_| p.attach(ifname, XdpMode::Skb)),
            }
            .map_err(prog_err(prog))?
        }
    };
    pin_link(p.take_link(id).map_err(prog_err(prog))?, link_path)
}

/// BPF_LINK_UPDATE on a link whose interface was deleted: the kernel severed it (ENOLINK). An
/// interface of the same name created since is another device, with nothing attached.
fn link_severed(e: &ProgramError) -> bool {
    matches!(e, ProgramError::SyscallError(aya::sys::SyscallError { io_error, .. })
        if io_error.raw_os_error() == Some(libc::ENOLINK))
}

/// The severed link was already unpinned by `relink`; its fd closes with the failed update.
fn log_severed(ifname: &str, prog: &str) {
    tracing::warn!(
        interface = ifname,
        program = prog,
        "pinned link severed: {ifname} was deleted (and perhaps created again) while podgate was \
         down; the stale link was unpinned and {prog} is attached afresh to {ifname}"
    );
}

/// The link pinned at `path`, unpinned and typed for `attach_to_link` (which re-points it).
fn relink<L: TryFrom<FdLink, Error = LinkError>>(path: &Path) -> Result<L, DataplaneError> {
    L::try_from(take_pinned_link(path)?).map_err(|source| DataplaneError::Link { path: path.to_owned(), source })
}

/// Re-points the link pinned at `link_path` (if any) to the freshly loaded program with
/// `attach_to_link`. `None`: nothing was pinned, or the pinned link was severed (its interface
/// was deleted), logged; the caller then attaches afresh.
fn readopt<L, Id>(
    link_path: &Path,
    ifname: &str,
    prog: &str,
    attach_to_link: impl FnOnce(L) -> Result<Id, ProgramError>,
) -> Result<Option<Id>, DataplaneError>
where
    L: TryFrom<FdLink, Error = LinkError>,
{
    if !link_path.exists() {
        return Ok(None);
    }
    match attach_to_link(relink(link_path)?) {
        Ok(id) => Ok(Some(id)),
        Err(e) if link_severed(&e) => {
            log_severed(ifname, prog);
            Ok(None)
        }
        Err(e) => Err(prog_err(prog)(e)),
    }
}

/// Pins a link taken from its program, so that it outlives this process.
fn pin_link<L>(link: L, path: PathBuf) -> Result<(), DataplaneError>
where
    FdLink: TryFrom<L, Error = LinkError>,
{
    let fd = FdLink::try_from(link).map_err(|source| DataplaneError::Link { path: path.clone(), source })?;
    fd.pin(&path).map_err(|source| DataplaneError::Pin { path, source })?;
    Ok(())
}

/// Takes a pinned link out of bpffs, keeping it alive through the returned fd.
fn take_pinned_link(path: &Path) -> Result<FdLink, DataplaneError> {
    let pinned = PinnedLink::from_pin(path).map_err(|source| DataplaneError::Link {
        path: path.to_owned(),
        source,
    })?;
    pinned.unpin().map_err(|source| DataplaneError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Detaches every pinned link on `ifname`; returns how many.
pub fn detach_interface(pins: &Pins, ifname: &str) -> Result<usize, DataplaneError> {
    let mut n = 0;
    for path in list_links(pins)? {
        if link_ifname(&path).as_deref() == Some(ifname) {
            // Dropping the last fd of an unpinned link detaches it.
            detach_pin(&path)?;
            n += 1;
        }
    }
    Ok(n)
}

fn link_ifname(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    Pins::parse_link_name(file).map(|(ifname, _)| ifname)
}

pub fn list_links(pins: &Pins) -> Result<Vec<PathBuf>, DataplaneError> {
    let dir = pins.links_dir();
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(DataplaneError::Io { path: dir, source }),
    };
    let mut v: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    v.sort();
    Ok(v)
}

/// Attaches the uplink program chosen by the configuration, and removes the other one. Returns
/// the reverse path in use: TC when another tool holds the uplink's XDP slot and
/// `foreign_programs = "coexist"` (only one XDP program fits without a dispatcher, and podgate
/// does not replace theirs).
pub fn attach_uplink(pins: &Pins, node: &NodeSettings) -> Result<ReversePath, DataplaneError> {
    let mut path = node.reverse_path;
    if path == ReversePath::Xdp && !pins.link(&node.uplink, UPLINK_XDP).exists() {
        let others = check_hooks(pins, &[(&node.uplink, Hook::Xdp)])?;
        if !others.is_empty() {
            tracing::warn!(
                uplink = %node.uplink,
                others = %others.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
                "the uplink's XDP slot holds another tool's program, which podgate leaves in place \
                 (foreign_programs = \"coexist\"): reverse NAT runs on TC ingress instead of XDP"
            );
            path = ReversePath::Tc;
        }
    }
    match path {
        ReversePath::Xdp => {
            remove_link(pins, &node.uplink, UPLINK_TC)?;
            attach_xdp(pins, &node.uplink, UPLINK_XDP, node.xdp_mode)?;
        }
        ReversePath::Tc => {
            remove_link(pins, &node.uplink, UPLINK_XDP)?;
            attach_tc(pins, &node.uplink, UPLINK_TC, TcAttachType::Ingress)?;
        }
    }
    Ok(path)
}

/// The hooks of `node` and `pods` podgate attaches to.
pub fn hooks_for<'a>(node: &'a NodeSettings, pods: &'a [PodSpec]) -> Vec<(&'a str, Hook)> {
    let mut v = vec![(
        node.uplink.as_str(),
        if node.reverse_path == ReversePath::Xdp { Hook::Xdp } else { Hook::TcIngress },
    )];
    for p in pods {
        v.push((p.veth.as_str(), Hook::TcIngress));
        v.push((p.veth.as_str(), Hook::TcEgress));
        if let Some(v4) = &p.veth_v4 {
            v.push((v4.as_str(), Hook::TcIngress));
        }
    }
    v
}

/// Other tools' programs on `hooks`. With `mode` refuse, any is an error naming all of them.
/// `tc_netlink`: podgate's TC programs go on clsact filters, which the kernel runs only after the
/// whole tcx chain has said "next": behind another tool's tcx program podgate could be skipped,
/// so that is refused in either mode.
pub fn scan_foreign(
    pins: &Pins,
    hooks: &[(&str, Hook)],
    mode: ForeignPrograms,
    tc_netlink: bool,
) -> Result<Vec<Foreign>, DataplaneError> {
    let ours = foreign::own_ids(pins);
    let mut found = Vec::new();
    for (ifname, hook) in hooks {
        for f in foreign::scan(ifname, *hook, &ours)? {
            if !found.contains(&f) {
                found.push(f);
            }
        }
    }
    if mode == ForeignPrograms::Refuse && !found.is_empty() {
        return Err(ForeignError::Refused(found).into());
    }
    let ahead: Vec<Foreign> = found.iter().filter(|f| f.attach == foreign::Attach::Tcx).cloned().collect();
    if tc_netlink && !ahead.is_empty() {
        return Err(ForeignError::WouldRunBehind(ahead).into());
    }
    Ok(found)
}

/// `scan_foreign` in the mode recorded in the node entry (so `pod add` and the CNI plugin follow
/// the daemon's configuration).
fn check_hooks(pins: &Pins, hooks: &[(&str, Hook)]) -> Result<Vec<Foreign>, DataplaneError> {
    let flags = read_node(pins)?.flags;
    let mode = if flags & node_flags::FOREIGN_COEXIST != 0 {
        ForeignPrograms::Coexist
    } else {
        ForeignPrograms::Refuse
    };
    scan_foreign(pins, hooks, mode, flags & node_flags::TC_NETLINK != 0)
}

fn remove_link(pins: &Pins, ifname: &str, prog: &str) -> Result<(), DataplaneError> {
    for path in [pins.link(ifname, prog), pins.netlink_link(ifname, prog)] {
        if path.exists() {
            detach_pin(&path)?;
        }
    }
    Ok(())
}

/// A registered pod, as read back from the maps.
#[derive(Debug, Clone)]
pub struct PodEntry {
    pub name: String,
    pub pod: Pod,
    /// Every host-side ifindex keyed to this pod.
    pub ifindexes: Vec<u32>,
}

/// All registered pods, one entry per pod, ordered by id.
pub fn list_pods(pins: &Pins) -> Result<Vec<PodEntry>, DataplaneError> {
    let pods = pods_map(pins)?;
    let names: HashMap<MapData, u32, PodName> =
        open_hash(pins, map_names::POD_NAMES)?;
    let mut by_id: std::collections::BTreeMap<u32, PodEntry> = Default::default();
    for item in pods.iter() {
        let (ifindex, pod) = item.map_err(map_err(map_names::PODS))?;
        let e = by_id.entry(pod.id).or_insert_with(|| PodEntry {
            name: names
                .get(&pod.id, 0)
                .map(|n| String::from_utf8_lossy(&n.name[..(n.len as usize).min(n.name.len())]).into_owned())
                .unwrap_or_else(|_| format!("pod-{}", pod.id)),
            pod,
            ifindexes: Vec::new(),
        });
        e.ifindexes.push(ifindex);
    }
    Ok(by_id.into_values().collect())
}

/// Registers a pod: maps first (so its first packet finds it), then the programs on its veths.
/// A pod already registered under the same name is updated in place (its NAT state is kept).
pub fn add_pod(pins: &Pins, quota: u32, spec: &PodSpec, groups: &[u32]) -> Result<Pod, DataplaneError> {
    let ifindex = netif::ifindex(&spec.veth)?;
    let ifindex_v4 = match &spec.veth_v4 {
        Some(v) => netif::ifindex(v)?,
        None => ifindex,
    };
    // Refused before any map entry is written; `attach_tc` logs the order when coexisting.
    let mut hooks = vec![(spec.veth.as_str(), Hook::TcIngress), (spec.veth.as_str(), Hook::TcEgress)];
    if let Some(v4) = &spec.veth_v4 {
        hooks.push((v4.as_str(), Hook::TcIngress));
    }
    check_hooks(pins, &hooks)?;
    let existing = list_pods(pins)?;
    let mut id = None;
    for e in &existing {
        if e.name == spec.name {
            id = Some(e.pod.id);
            continue;
        }
        let clash = if e.pod.ipv6 == spec.ipv6.octets() {
            Some(format!("both use {}", spec.ipv6))
        } else if e.pod.ipv4 == spec.ipv4.octets() {
            Some(format!("both use {}", spec.ipv4))
        } else if e.ifindexes.contains(&ifindex) || e.ifindexes.contains(&ifindex_v4) {
            Some("both use the same host interface".to_string())
        } else {
            None
        };
        if let Some(what) = clash {
            return Err(DataplaneError::PodConflict { name: spec.name.clone(), other: e.name.clone(), what });
        }
    }
    let id = match id {
        Some(id) => id,
        None => (1..=4096u32)
            .find(|i| !existing.iter().any(|e| e.pod.id == *i))
            .ok_or(DataplaneError::PodIdsExhausted)?,
    };
    let mut g = [0u32; MAX_POD_GROUPS];
    for (slot, v) in g.iter_mut().zip(groups) {
        *slot = *v;
    }
    let pod = Pod {
        id,
        ifindex,
        ifindex_v4,
        ipv4: spec.ipv4.octets(),
        ipv6: spec.ipv6.octets(),
        // Unused since `pod_usage`/`pod_freed` (kept in the layout: no ABI bump).
        mappings: 0,
        quota,
        group_count: groups.len().min(MAX_POD_GROUPS) as u32,
        groups: g,
    };
    let mut name = PodName::default();
    let bytes = spec.name.as_bytes();
    let n = bytes.len().min(name.name.len());
    name.name[..n].copy_from_slice(&bytes[..n]);
    name.len = n as u32;
    let mut names: HashMap<MapData, u32, PodName> =
        open_hash(pins, map_names::POD_NAMES)?;
    names.insert(id, name, 0).map_err(map_err(map_names::POD_NAMES))?;
    // Its tallies before its `pods` entries: the programs charge a pod as soon as they find it.
    crate::usage::init(pins, id, spec.ipv4.octets())?;
    let mut pods = pods_map(pins)?;
    pods.insert(ifindex, pod, 0).map_err(map_err(map_names::PODS))?;
    pods.insert(ifindex_v4, pod, 0).map_err(map_err(map_names::PODS))?;
    let mut v4: HashMap<MapData, [u8; 4], u32> =
        open_hash(pins, map_names::PODS_V4)?;
    v4.insert(pod.ipv4, ifindex_v4, 0).map_err(map_err(map_names::PODS_V4))?;
    let mut v6: HashMap<MapData, [u8; 16], u32> =
        open_hash(pins, map_names::PODS_V6)?;
    v6.insert(pod.ipv6, ifindex, 0).map_err(map_err(map_names::PODS_V6))?;

    let v4if = spec.veth_v4.as_deref().unwrap_or(&spec.veth);
    netif::set_accept_local(v4if).map_err(|source| DataplaneError::Io {
        path: PathBuf::from(format!("/proc/sys/net/ipv4/conf/{v4if}/accept_local")),
        source,
    })?;
    attach_tc(pins, &spec.veth, POD_INGRESS, TcAttachType::Ingress)?;
    attach_tc(pins, &spec.veth, POD_EGRESS, TcAttachType::Egress)?;
    if let Some(v4if) = &spec.veth_v4 {
        attach_tc(pins, v4if, POD_INGRESS, TcAttachType::Ingress)?;
    }
    Ok(pod)
}

/// Pods whose host interfaces are gone (deleted, or deleted and created again under the same
/// name, which gives a new ifindex): they are removed as on `pod del` (their flows and mappings
/// flushed, their stale links unpinned), because every entry they have points at an interface
/// that no longer exists. The caller registers again those it still knows (the config's pods).
pub fn remove_vanished_pods(pins: &Pins) -> Result<Vec<PodEntry>, DataplaneError> {
    let mut gone = Vec::new();
    for e in list_pods(pins)? {
        if e.ifindexes.iter().any(|&i| netif::name_of(i).is_none()) {
            gone.push(remove_pod(pins, &e.name)?);
        }
    }
    Ok(gone)
}

/// Unregisters a pod: programs off its veths, then its map entries and its NAT/conntrack state.
pub fn remove_pod(pins: &Pins, name: &str) -> Result<PodEntry, DataplaneError> {
    let entry = list_pods(pins)?
        .into_iter()
        .find(|e| e.name == name)
        .ok_or_else(|| DataplaneError::UnknownPod { name: name.into() })?;
    for links in list_links(pins)? {
        let Some(ifname) = link_ifname(&links) else { continue };
        // A veth deleted before its pod took its links with it; only the stale pin is left.
        let ours_or_stale = match netif::ifindex(&ifname) {
            Ok(idx) => entry.ifindexes.contains(&idx),
            Err(_) => true,
        };
        if ours_or_stale {
            detach_pin(&links)?;
        }
    }
    let mut pods = pods_map(pins)?;
    for idx in &entry.ifindexes {
        ignore_missing(pods.remove(idx)).map_err(map_err(map_names::PODS))?;
    }
    let mut v4: HashMap<MapData, [u8; 4], u32> =
        open_hash(pins, map_names::PODS_V4)?;
    ignore_missing(v4.remove(&entry.pod.ipv4)).map_err(map_err(map_names::PODS_V4))?;
    let mut v6: HashMap<MapData, [u8; 16], u32> =
        open_hash(pins, map_names::PODS_V6)?;
    ignore_missing(v6.remove(&entry.pod.ipv6)).map_err(map_err(map_names::PODS_V6))?;
    let mut names: HashMap<MapData, u32, PodName> =
        open_hash(pins, map_names::POD_NAMES)?;
    ignore_missing(names.remove(&entry.pod.id)).map_err(map_err(map_names::POD_NAMES))?;
    crate::nat::flush_pod(pins, Ipv4Addr::from(entry.pod.ipv4))?;
    crate::sg_maps::flush_pod(pins, Ipv6Addr::from(entry.pod.ipv6))?;
    // Last: the flushes above credit the pod's deletions while its tallies still exist.
    crate::usage::remove(pins, entry.pod.id)?;
    Ok(entry)
}

pub fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        other => other,
    }
}

/// Sums the per-CPU counters: (counter, total).
pub fn read_stats(pins: &Pins) -> Result<Vec<(stats::Counter, u64)>, DataplaneError> {
    let m = stats_map(pins)?;
    let mut out = Vec::new();
    for &c in stats::Counter::ALL {
        let v = m.get(&(c as u32), 0).map_err(map_err(map_names::STATS))?;
        out.push((c, v.iter().sum()));
    }
    Ok(out)
}

/// Detaches every podgate link and, with `purge`, removes the whole pin root (all state).
pub fn reset(pins: &Pins, purge: bool) -> Result<usize, DataplaneError> {
    let mut n = 0;
    for path in list_links(pins)? {
        detach_pin(&path)?;
        n += 1;
    }
    if purge && pins.root().exists() {
        std::fs::remove_dir_all(pins.root()).map_err(|source| DataplaneError::Io {
            path: pins.root().to_owned(),
            source,
        })?;
    }
    Ok(n)
}
