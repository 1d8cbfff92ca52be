use aya_ebpf::programs::{TcContext, XdpContext};
use podgate_common::stats::Counter;

use crate::verdict::Verdict;

pub fn uplink_v4_xdp(_ctx: &XdpContext) -> Result<Verdict, Counter> {
    Ok(Verdict::Pass(Counter::NotOurs))
}

pub fn uplink_v4_tc(_ctx: &TcContext) -> Result<Verdict, Counter> {
    Ok(Verdict::Pass(Counter::NotOurs))
}
