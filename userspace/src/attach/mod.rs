//! Loading and adopting the object, tc (tcx / netlink) and XDP attachment, pinned links, and the
//! other tools' programs found on podgate's hooks.

pub mod foreign;
mod hooks;
mod links;
mod load;
mod tc;
mod xdp;

pub use hooks::{hooks_for, scan_foreign};
pub(crate) use hooks::check_hooks;
pub use links::{detach_interface, list_links, reset};
pub(crate) use links::{detach_pin, link_ifname};
pub use load::{POD_EGRESS, POD_INGRESS, UPLINK_TC, UPLINK_XDP, install, install_sized, size_mismatches};
pub use tc::attach_tc;
pub use xdp::{attach_uplink, attach_xdp};
