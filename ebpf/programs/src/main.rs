//! podgate's kernel side: thin entry points that dispatch on the address family and turn every
//! error into an explicit, counted verdict.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![cfg_attr(not(target_arch = "bpf"), allow(dead_code, unused_imports))]

#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod packet;
#[cfg(target_arch = "bpf")]
mod sg;
#[cfg(target_arch = "bpf")]
mod snat;
#[cfg(target_arch = "bpf")]
mod verdict;

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{
        bindings::{TC_ACT_OK, __sk_buff, xdp_action, xdp_md},
        macros::{classifier, xdp},
        programs::{TcContext, XdpContext},
    };
    use podgate_common::stats::Counter;

    use crate::{
        packet::{EtherType, ether_type},
        sg, snat,
        verdict::{Verdict, dropped, pod_id, report_drop_bare, report_drop_v4, tc_verdict, xdp_verdict},
    };

    /// TC ingress of a pod's host-side veth: everything the pod sends.
    #[classifier]
    pub fn pod_ingress(ctx: TcContext) -> i32 {
        match ether_type(&ctx) {
            Ok(EtherType::Ipv4) => pod_ingress_v4(ctx.skb.skb),
            Ok(EtherType::Ipv6) => pod_ingress_v6(ctx.skb.skb),
            Ok(EtherType::Arp) => tc_verdict(&ctx, Ok(Verdict::Pass(Counter::LocalPass))),
            Ok(EtherType::Other) => tc_verdict(&ctx, Ok(Verdict::Pass(Counter::NotOurs))),
            Err(c) => {
                report_drop_bare(c, 0, 0, true);
                tc_verdict(&ctx, Err(c))
            }
        }
    }

    // The families run in their own BPF functions: their stack frames then do not add up, which
    // leaves room for the frame of the rule lookup's bpf_loop callback (512 bytes in all).
    #[inline(never)]
    fn pod_ingress_v4(skb: *mut __sk_buff) -> i32 {
        let ctx = TcContext::new(skb);
        let v = snat::egress::pod_v4(&ctx);
        if let Some(c) = dropped(&v) {
            // SAFETY: reading the skb's ifindex field.
            report_drop_v4(&ctx, c, pod_id(unsafe { (*skb).ifindex }));
        }
        tc_verdict(&ctx, v)
    }

    #[inline(never)]
    fn pod_ingress_v6(skb: *mut __sk_buff) -> i32 {
        let ctx = TcContext::new(skb);
        let v = sg::pod_egress_v6(&ctx);
        report_v6(&v);
        tc_verdict(&ctx, v)
    }

    /// TC egress of a pod's host-side veth: everything delivered to the pod.
    #[classifier]
    pub fn pod_egress(ctx: TcContext) -> i32 {
        match ether_type(&ctx) {
            Ok(EtherType::Ipv6) => pod_egress_v6(ctx.skb.skb),
            // IPv4 toward the pod was already reverse-translated at the uplink.
            Ok(_) => tc_verdict(&ctx, Ok(Verdict::Pass(Counter::NotOurs))),
            Err(c) => {
                report_drop_bare(c, 0, 0, true);
                tc_verdict(&ctx, Err(c))
            }
        }
    }

    #[inline(never)]
    fn pod_egress_v6(skb: *mut __sk_buff) -> i32 {
        let ctx = TcContext::new(skb);
        let v = sg::pod_ingress_v6(&ctx);
        report_v6(&v);
        tc_verdict(&ctx, v)
    }

    /// XDP on the uplink: reverse NAT of IPv4 replies, early drop of denied IPv6.
    #[xdp]
    pub fn uplink_xdp(ctx: XdpContext) -> u32 {
        match ether_type(&ctx) {
            Ok(EtherType::Ipv4) => uplink_xdp_v4(ctx.ctx),
            Ok(EtherType::Ipv6) => uplink_xdp_v6(ctx.ctx),
            Ok(_) => xdp_verdict(&ctx, Ok(Verdict::Pass(Counter::NotOurs))),
            Err(c) => {
                report_drop_bare(c, 0, 0, true);
                xdp_verdict(&ctx, Err(c))
            }
        }
    }

    #[inline(never)]
    fn uplink_xdp_v4(md: *mut xdp_md) -> u32 {
        let ctx = XdpContext::new(md);
        let v = snat::reverse::uplink_v4_xdp(&ctx);
        if let Some(c) = dropped(&v) {
            report_drop_v4(&ctx, c, 0);
        }
        xdp_verdict(&ctx, v)
    }

    #[inline(never)]
    fn uplink_xdp_v6(md: *mut xdp_md) -> u32 {
        let ctx = XdpContext::new(md);
        let v = sg::uplink_v6_xdp(&ctx);
        report_v6(&v);
        xdp_verdict(&ctx, v)
    }

    /// The security-group code reports its denials itself (with the rule and 5-tuple it
    /// parsed); errors out of it get a bare event here. Both may log.
    #[inline(always)]
    fn report_v6(v: &Result<Verdict, Counter>) {
        match v {
            Err(c) => report_drop_bare(*c, 6, 0, true),
            Ok(Verdict::Drop(c)) => report_drop_bare(*c, 6, 0, false),
            _ => {}
        }
    }

    /// TC ingress on the uplink: the same reverse path where XDP is not wanted.
    #[classifier]
    pub fn uplink_tc(ctx: TcContext) -> i32 {
        let v = try_uplink_tc(&ctx);
        if let Some(c) = dropped(&v) {
            report_drop_v4(&ctx, c, 0);
        }
        tc_verdict(&ctx, v)
    }

    fn try_uplink_tc(ctx: &TcContext) -> Result<Verdict, Counter> {
        match ether_type(ctx)? {
            EtherType::Ipv4 => snat::reverse::uplink_v4_tc(ctx),
            _ => Ok(Verdict::Pass(Counter::NotOurs)),
        }
    }

    /// The same program type as `pod_ingress` doing nothing: the floor for benchmarks.
    #[classifier]
    pub fn noop_tc(_ctx: TcContext) -> i32 {
        TC_ACT_OK
    }

    /// The XDP floor for benchmarks.
    #[xdp]
    pub fn noop_xdp(_ctx: XdpContext) -> u32 {
        xdp_action::XDP_PASS
    }
}

#[cfg(all(target_arch = "bpf", not(test)))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {
    panic!("podgate-ebpf only builds for bpfel-unknown-none; build the userspace crate instead");
}
