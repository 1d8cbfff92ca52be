//! XDP attachment, and the choice of the uplink's reverse path (XDP or TC).

use aya::programs::{Xdp, tc::TcAttachType, xdp::XdpMode};
use aya_obj::programs::XdpAttachType;

use super::{
    foreign::{ForeignError, Hook},
    hooks::check_hooks,
    links::{pin_link, readopt, remove_link},
    load::{UPLINK_TC, UPLINK_XDP, prog_err},
    tc::attach_tc,
};
use crate::{
    config::{NodeSettings, ReversePath, XdpMode as CfgXdpMode},
    error::DataplaneError,
    netif,
    pins::Pins,
};

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
