//! IPv6 security groups. Not built yet: IPv6 passes and is counted as such.
use aya_ebpf::programs::{TcContext, XdpContext};
use podgate_common::stats::Counter;

use crate::verdict::Verdict;

pub fn pod_egress_v6(_ctx: &TcContext) -> Result<Verdict, Counter> {
    Ok(Verdict::Pass(Counter::NotOurs))
}

pub fn pod_ingress_v6(_ctx: &TcContext) -> Result<Verdict, Counter> {
    Ok(Verdict::Pass(Counter::NotOurs))
}

pub fn uplink_v6_xdp(_ctx: &XdpContext) -> Result<Verdict, Counter> {
    Ok(Verdict::Pass(Counter::NotOurs))
}
