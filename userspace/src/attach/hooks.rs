//! Which hooks podgate attaches to, and the other tools' programs found on them.

use podgate_common::node_flags;

use super::foreign::{self, Foreign, ForeignError, Hook};
use crate::{
    config::{ForeignPrograms, NodeSettings, PodSpec, ReversePath},
    error::DataplaneError,
    maps::read_node,
    pins::Pins,
};

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
pub(crate) fn check_hooks(pins: &Pins, hooks: &[(&str, Hook)]) -> Result<Vec<Foreign>, DataplaneError> {
    let flags = read_node(pins)?.flags;
    let mode = if flags & node_flags::FOREIGN_COEXIST != 0 {
        ForeignPrograms::Coexist
    } else {
        ForeignPrograms::Refuse
    };
    scan_foreign(pins, hooks, mode, flags & node_flags::TC_NETLINK != 0)
}
