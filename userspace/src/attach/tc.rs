//! TC attachment: tcx links where the kernel has them (6.6+), clsact filters through netlink before.

use aya::programs::{
    LinkOrder, ProgramError, SchedClassifier,
    tc::{NlOptions, TcAttachOptions, TcAttachType},
};
use podgate_common::node_flags;

use super::{
    foreign::{self, Foreign, Hook},
    hooks::check_hooks,
    links::{detach_pin, pin_link, readopt, remove_netlink_filter},
    load::{prog_err, repin},
};
use crate::{error::DataplaneError, maps::read_node, netif, pins::Pins};

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
