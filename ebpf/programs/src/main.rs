//! podgate's kernel side: thin entry points that dispatch on the address family and turn every
//! error into an explicit, counted verdict.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// `core` has no atomic read-modify-write for the BPF target; `atomic::add_one` emits the
// instruction (BPF_ATOMIC | BPF_ADD, the old XADD, verified since Linux 3.x) itself.
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]
#![cfg_attr(not(target_arch = "bpf"), allow(dead_code, unused_imports))]

#[cfg(target_arch = "bpf")]
mod atomic;
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
        packet::{EtherType, ether_type, pod_ether_type},
        sg, snat,
        verdict::{Verdict, emit_drop_bare, emit_drop_tc, pack, pod_id, report_drop_bare, report_v4, reports, tc_verdict, unpack, xdp_verdict},
    };

    /// TC ingress of a pod's host-side veth: everything the pod sends.
    #[classifier]
    pub fn pod_ingress(ctx: TcContext) -> i32 {
        match pod_ether_type(&ctx) {
            Ok(EtherType::Ipv4) => pod_ingress_v4(ctx.skb.skb),
            Ok(EtherType::Ipv6) => {
                let ndp = if sg::ndp_candidate(&ctx) { sg::ndp_bits_tc(ctx.skb.skb, true) } else { 0 };
                pod_ingress_v6(ctx.skb.skb, ndp)
            }
            Ok(EtherType::Arp) => tc_verdict(&ctx, Ok(Verdict::Pass(Counter::LocalPass))),
            // `pod_ether_type` admits nothing else.
            Ok(EtherType::Other) => tc_verdict(&ctx, Err(Counter::DropEtherType)),
            Err(c) => pod_l2_drop(ctx.skb.skb, c),
        }
    }

    /// A frame a pod veth does not admit (layer 2, or too short for an Ethernet header): counted,
    /// reported with the pod behind the veth, dropped.
    #[inline(never)]
    fn pod_l2_drop(skb: *mut __sk_buff, c: Counter) -> i32 {
        let ctx = TcContext::new(skb);
        // SAFETY: reading the skb's ifindex field.
        report_drop_bare(c, 0, pod_id(unsafe { (*skb).ifindex }), true);
        tc_verdict(&ctx, Err(c))
    }

    // The families run in their own BPF functions: their stack frames then do not add up, which
    // leaves room for the frame of the rule lookup's bpf_loop callback (512 bytes in all). They
    // hand the verdict back packed (`verdict::pack`), so that drops are reported and logged from
    // the entry point, where the log code's frames fit.
    //
    // The pod's own traffic (pod_ingress) gets drop events but no log lines: Linux 6.1's
    // verifier cannot afford the log code behind every exit of the SNAT path (it runs out of its
    // 1M instructions), and the 512-byte stack leaves no room for it inside the family frames.
    #[inline(never)]
    fn pod_ingress_v4(skb: *mut __sk_buff) -> i32 {
        let ctx = TcContext::new(skb);
        let v = snat::egress::pod_v4(&ctx);
        if let Ok(Verdict::Drop(c)) | Err(c) = v {
            emit_drop_tc(skb, c as u32);
        }
        tc_verdict(&ctx, v)
    }

    #[inline(never)]
    fn pod_ingress_v6(skb: *mut __sk_buff, ndp: u32) -> i32 {
        let ctx = TcContext::new(skb);
        let v = sg::pod_egress_v6(&ctx, ndp);
        if let Err(c) = v {
            emit_drop_bare(c, 6, 0);
        }
        tc_verdict(&ctx, v)
    }

    /// TC egress of a pod's host-side veth: everything delivered to the pod.
    #[classifier]
    pub fn pod_egress(ctx: TcContext) -> i32 {
        match pod_ether_type(&ctx) {
            Ok(EtherType::Ipv6) => {
                let ndp = if sg::ndp_candidate(&ctx) { sg::ndp_bits_tc(ctx.skb.skb, false) } else { 0 };
                let v = pod_egress_v6(ctx.skb.skb, ndp);
                if reports(v) {
                    report_v6(v);
                }
                tc_verdict(&ctx, unpack(v))
            }
            // IPv4 toward the pod was already reverse-translated at the uplink.
            Ok(EtherType::Ipv4 | EtherType::Arp) => tc_verdict(&ctx, Ok(Verdict::Pass(Counter::NotOurs))),
            Ok(EtherType::Other) => tc_verdict(&ctx, Err(Counter::DropEtherType)),
            Err(c) => pod_l2_drop(ctx.skb.skb, c),
        }
    }

    #[inline(never)]
    fn pod_egress_v6(skb: *mut __sk_buff, ndp: u32) -> u64 {
        pack(sg::pod_ingress_v6(&TcContext::new(skb), ndp))
    }

    /// XDP on the uplink: reverse NAT of IPv4 replies, early drop of denied IPv6.
    #[xdp]
    pub fn uplink_xdp(ctx: XdpContext) -> u32 {
        match ether_type(&ctx) {
            Ok(EtherType::Ipv4) => {
                let v = uplink_xdp_v4(ctx.ctx);
                if reports(v) {
                    report_v4_xdp(ctx.ctx, v);
                }
                xdp_verdict(&ctx, unpack(v))
            }
            Ok(EtherType::Ipv6) => {
                let ndp = if sg::ndp_candidate(&ctx) { sg::ndp_bits_xdp(ctx.ctx) } else { 0 };
                let v = uplink_xdp_v6(ctx.ctx, ndp);
                if reports(v) {
                    report_v6(v);
                }
                xdp_verdict(&ctx, unpack(v))
            }
            Ok(_) => xdp_verdict(&ctx, Ok(Verdict::Pass(Counter::NotOurs))),
            Err(c) => {
                report_drop_bare(c, 0, 0, true);
                xdp_verdict(&ctx, Err(c))
            }
        }
    }

    #[inline(never)]
    fn uplink_xdp_v4(md: *mut xdp_md) -> u64 {
        pack(snat::reverse::uplink_v4_xdp(&XdpContext::new(md)))
    }

    #[inline(never)]
    fn uplink_xdp_v6(md: *mut xdp_md, ndp: u32) -> u64 {
        pack(sg::uplink_v6_xdp(&XdpContext::new(md), ndp))
    }

    // Reporting runs in functions of its own, called from the entry points after the family
    // function returned: their frames (and the log code's) then never stack on the family's.

    #[inline(never)]
    fn report_v4_xdp(md: *mut xdp_md, v: u64) {
        report_v4(&XdpContext::new(md), &unpack(v), None);
    }

    /// The security-group code reports its denials itself (with the rule and 5-tuple it
    /// parsed); errors out of it get a bare event here. Both may log.
    #[inline(never)]
    fn report_v6(v: u64) {
        match unpack(v) {
            Err(c) => report_drop_bare(c, 6, 0, true),
            Ok(Verdict::Drop(c)) => report_drop_bare(c, 6, 0, false),
            _ => {}
        }
    }

    /// TC ingress on the uplink: the same reverse path where XDP is not wanted.
    #[classifier]
    pub fn uplink_tc(ctx: TcContext) -> i32 {
        let v = try_uplink_tc(&ctx);
        report_v4(&ctx, &v, None);
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
