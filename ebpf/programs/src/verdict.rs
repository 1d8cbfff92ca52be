//! Verdicts, counters and events: every program ends here, so nothing is passed or dropped
//! without being counted.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC, xdp_action},
    programs::{TcContext, XdpContext},
};
use podgate_common::{Event, event_kind, nat::Flow4, node_flags, stats::Counter};

use crate::{
    maps::{EVENTS, NODE, PODS, STATS},
    packet::{ETH_HLEN, Packet, ptr_at},
};

/// What a program decided. The counter says why.
#[derive(Clone, Copy)]
pub enum Verdict {
    Pass(Counter),
    /// The packet was redirected with `bpf_redirect` (TC) or must be (XDP: ifindex).
    Redirect(Counter, u32),
    Drop(Counter),
    /// The packet was dropped for the first counter and answered with an ICMP error to the
    /// sender, redirected to `ifindex`. Its drop event was written before the answer replaced it.
    Answered(Counter, u32),
}

/// A verdict packed into one register, the way a family function (`pod_ingress_v4` ...) hands it
/// back to its program's entry point. The entry point reports and logs drops: a log call stacked
/// on the family function's 400-byte frame would exceed Linux 6.1's 512 bytes (it rounds every
/// frame, the log code's memcpy included, up to 32).
/// Layout: bits 0-7 the counter, 8-15 the kind, 32-63 the ifindex of a redirect.
#[inline(always)]
pub fn pack(v: Result<Verdict, Counter>) -> u64 {
    let (kind, c, ifindex) = match v {
        Ok(Verdict::Pass(c)) => (0u64, c, 0u32),
        Ok(Verdict::Redirect(c, i)) => (1, c, i),
        Ok(Verdict::Drop(c)) => (2, c, 0),
        Err(c) => (3, c, 0),
        Ok(Verdict::Answered(c, i)) => (4, c, i),
    };
    (c as u64) | (kind << 8) | ((ifindex as u64) << 32)
}

/// Whether a packed verdict owes the operator a report (a drop, or a drop answered with ICMP).
#[inline(always)]
pub fn reports(x: u64) -> bool {
    (x >> 8) & 0xff >= 2
}

#[inline(always)]
pub fn unpack(x: u64) -> Result<Verdict, Counter> {
    // SAFETY: the low byte came from a `Counter` in `pack` (all discriminants are below 64).
    let c = unsafe { core::mem::transmute::<u32, Counter>((x & 0xff) as u32) };
    let ifindex = (x >> 32) as u32;
    match (x >> 8) & 0xff {
        0 => Ok(Verdict::Pass(c)),
        1 => Ok(Verdict::Redirect(c, ifindex)),
        2 => Ok(Verdict::Drop(c)),
        4 => Ok(Verdict::Answered(c, ifindex)),
        _ => Err(c),
    }
}

#[inline(always)]
pub fn count(c: Counter) {
    if let Some(slot) = STATS.get_ptr_mut(c as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *slot += 1 };
    }
}

/// Reserves an event and fills the fields every kind has; the rest start zeroed (no address, no
/// ports, no rule). `None`: the ring is full, and the event is lost (never the verdict).
#[inline(always)]
fn event(kind: u32, reason: Counter, pod_id: u32, family: u8) -> Option<aya_ebpf::maps::ring_buf::RingBufEntry<Event>> {
    let mut entry = EVENTS.reserve(0)?;
    let e = entry.as_mut_ptr();
    // SAFETY: `e` points at a reserved, writable `Event`; every field is plain data.
    unsafe {
        (*e).kind = kind;
        (*e).reason = reason as u32;
        (*e).pod_id = pod_id;
        (*e).rule = u32::MAX;
        (*e).family = family;
        (*e).proto = 0;
        (*e).ext_port = 0;
        (*e).sport = 0;
        (*e).dport = 0;
        (*e).src = [0; 16];
        (*e).dst = [0; 16];
    }
    Some(entry)
}

/// `emit_drop_v4` for the pod's IPv4 (pod_ingress); the pod is the one behind the veth. Inlined:
/// a function of its own would add a frame (two on 6.1, with its memset) on top of the
/// 400-byte family frame, past the 512-byte limit.
#[inline(always)]
pub fn emit_drop_tc(skb: *mut aya_ebpf::bindings::__sk_buff, reason: u32) {
    // SAFETY: `reason` came from a `Counter` in the caller.
    let reason = unsafe { core::mem::transmute::<u32, Counter>(reason) };
    // SAFETY: reading the skb's ifindex field.
    let pod = pod_id(unsafe { (*skb).ifindex });
    emit_drop_v4(&TcContext::new(skb), reason, pod);
}

/// Reports a dropped IPv4 packet (or one that never parsed as such) to `podgate monitor`. The
/// header is read again here rather than carried out of every path, so each path can stay a
/// plain `Err(counter)`.
#[inline(always)]
pub fn emit_drop_v4<C: Packet>(ctx: &C, reason: Counter, pod_id: u32) {
    let Some(mut entry) = event(event_kind::DROP, reason, pod_id, 4) else {
        return;
    };
    let e = entry.as_mut_ptr();
    if let Ok(h) = ptr_at::<[u8; 20]>(ctx, ETH_HLEN) {
        // SAFETY: `h` is bounds-checked; `e` as in `event`.
        unsafe {
            let h = *h;
            (*e).proto = h[9];
            (*e).src = v4([h[12], h[13], h[14], h[15]]);
            (*e).dst = v4([h[16], h[17], h[18], h[19]]);
            let later_fragment = u16::from_be_bytes([h[6], h[7]]) & 0x1fff != 0;
            if (h[9] == 6 || h[9] == 17) && !later_fragment {
                let l4 = ETH_HLEN + ((h[0] & 0x0f) as usize) * 4;
                if let Ok(p) = ptr_at::<[u8; 4]>(ctx, l4) {
                    let p = *p;
                    (*e).sport = u16::from_be_bytes([p[0], p[1]]);
                    (*e).dport = u16::from_be_bytes([p[2], p[3]]);
                }
            }
        }
    }
    entry.submit(0);
}

/// Reports a drop that has no parsed packet to show (an IPv6 path failing before its own
/// event was written): the reason and the pod still tell the operator where to look.
#[inline(always)]
pub fn emit_drop_bare(reason: Counter, family: u8, pod_id: u32) {
    if let Some(entry) = event(event_kind::DROP, reason, pod_id, family) {
        entry.submit(0);
    }
}

/// Reports a new SNAT flow (`node_flags::FLOW_EVENTS`): the pod's 5-tuple and the node's port.
#[inline(always)]
pub fn emit_new_flow4(pod_id: u32, f: &Flow4, ext_port: u16) {
    let Some(mut entry) = event(event_kind::NEW_FLOW, Counter::SnatNewFlow, pod_id, 4) else {
        return;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: as in `event`.
    unsafe {
        (*e).proto = f.proto;
        (*e).ext_port = ext_port;
        (*e).sport = f.pod_port;
        (*e).dport = f.remote_port;
        (*e).src = v4(f.pod_addr);
        (*e).dst = v4(f.remote_addr);
    }
    entry.submit(0);
}

/// The node's flags; 0 when the node entry is missing (nothing configured, nothing optional on).
#[inline(always)]
pub fn node_flags() -> u32 {
    NODE.get(0).map_or(0, |n| n.flags)
}

/// The id of the pod behind a veth, 0 when it is none of ours.
#[inline(always)]
pub fn pod_id(ifindex: u32) -> u32 {
    // SAFETY: plain data read.
    unsafe { PODS.get(ifindex) }.map_or(0, |p| p.id)
}

/// Everything a dropped IPv4 packet owes the operator, from a program's entry point: the event
/// for `podgate monitor` (unless written already: `Answered`) and, when asked for, a log line.
/// Passing packets pay one comparison.
#[inline(always)]
pub fn report_v4<C: Packet>(ctx: &C, v: &Result<Verdict, Counter>, ifindex: Option<u32>) {
    match v {
        Ok(Verdict::Drop(c)) | Err(c) => report_drop_v4(ctx, *c, ifindex.map_or(0, pod_id)),
        Ok(Verdict::Answered(c, _)) => report_drop_bare(*c, 4, 0, false),
        _ => {}
    }
}

#[inline(always)]
fn report_drop_v4<C: Packet>(ctx: &C, reason: Counter, pod_id: u32) {
    emit_drop_v4(ctx, reason, pod_id);
    if node_flags() & node_flags::BPF_LOG != 0 {
        let (src, dst) = match ptr_at::<[u8; 20]>(ctx, ETH_HLEN) {
            // SAFETY: bounds checked by ptr_at.
            Ok(h) => unsafe { (u32::from_be_bytes([(*h)[12], (*h)[13], (*h)[14], (*h)[15]]), u32::from_be_bytes([(*h)[16], (*h)[17], (*h)[18], (*h)[19]])) },
            Err(_) => (0, 0),
        };
        log_drop(reason as u32, src, dst);
    }
}

/// The IPv6 (or unparsed) counterpart of `report_drop_v4` for drops that wrote no event yet.
#[inline(always)]
pub fn report_drop_bare(reason: Counter, family: u8, pod_id: u32, event: bool) {
    if event {
        emit_drop_bare(reason, family, pod_id);
    }
    if node_flags() & node_flags::BPF_LOG != 0 {
        log_drop_bare(reason as u32, family as u32);
    }
}

/// One operator log line per IPv4 drop, when `node_flags::BPF_LOG` is set: reasons an operator
/// can act on (internal errors, full maps, exhausted ports or quota) at warn, the others at
/// debug. Not inlined, so that the formatting code is verified once per program; its frame stays
/// within 64 bytes because it sits on top of the 400-byte frames of the per-family functions and
/// Linux 6.1 rounds each frame up to 32 bytes within its 512-byte limit.
#[inline(never)]
fn log_drop(reason: u32, src: u32, dst: u32) {
    let name = reason_name(reason);
    let src = core::net::Ipv4Addr::from_bits(src);
    let dst = core::net::Ipv4Addr::from_bits(dst);
    if actionable(reason) {
        aya_log_ebpf::warn!(&(), "drop {}: {} -> {}", name, src, dst);
    } else {
        aya_log_ebpf::debug!(&(), "drop {}: {} -> {}", name, src, dst);
    }
}

/// `log_drop` for a drop without an IPv4 header to show (IPv6 paths write theirs to `monitor`).
#[inline(never)]
fn log_drop_bare(reason: u32, family: u32) {
    let name = reason_name(reason);
    if actionable(reason) {
        aya_log_ebpf::warn!(&(), "drop {}: ipv{} packet", name, family);
    } else {
        aya_log_ebpf::debug!(&(), "drop {}: ipv{} packet", name, family);
    }
}

#[inline(always)]
fn reason_name(reason: u32) -> &'static str {
    match Counter::from_index(reason) {
        Some(c) => c.name(),
        None => "unknown",
    }
}

#[inline(always)]
fn actionable(reason: u32) -> bool {
    reason == Counter::DropInternalError as u32
        || reason == Counter::DropMapFull as u32
        || reason == Counter::DropPortExhausted as u32
        || reason == Counter::DropPodQuota as u32
}

/// An IPv4 address in an event's 16-byte field (the first four bytes).
#[inline(always)]
fn v4(a: [u8; 4]) -> [u8; 16] {
    [a[0], a[1], a[2], a[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
}

#[inline(always)]
pub fn tc_verdict(_ctx: &TcContext, v: Result<Verdict, Counter>) -> i32 {
    match v {
        Ok(Verdict::Pass(c)) => {
            count(c);
            // Beside another tool's programs (foreign_programs = "coexist") a pass hands the
            // packet on to the next one (TCX_NEXT, or the next clsact filter) instead of ending
            // the chain; alone, both mean the same.
            if node_flags() & node_flags::FOREIGN_COEXIST != 0 {
                TC_ACT_UNSPEC
            } else {
                TC_ACT_OK
            }
        }
        Ok(Verdict::Redirect(c, _)) => {
            count(c);
            TC_ACT_REDIRECT
        }
        Ok(Verdict::Answered(why, _)) => {
            count(why);
            count(Counter::IcmpUnreachSent);
            TC_ACT_REDIRECT
        }
        Ok(Verdict::Drop(c)) | Err(c) => {
            count(c);
            TC_ACT_SHOT
        }
    }
}

#[inline(always)]
pub fn xdp_verdict(_ctx: &XdpContext, v: Result<Verdict, Counter>) -> u32 {
    match v {
        Ok(Verdict::Pass(c)) => {
            count(c);
            xdp_action::XDP_PASS
        }
        Ok(Verdict::Redirect(c, ifindex)) => {
            count(c);
            // SAFETY: plain helper call.
            unsafe { aya_ebpf::helpers::bpf_redirect(ifindex, 0) as u32 }
        }
        Ok(Verdict::Answered(why, ifindex)) => {
            count(why);
            count(Counter::IcmpUnreachSent);
            // SAFETY: plain helper call.
            unsafe { aya_ebpf::helpers::bpf_redirect(ifindex, 0) as u32 }
        }
        Ok(Verdict::Drop(c)) | Err(c) => {
            count(c);
            xdp_action::XDP_DROP
        }
    }
}
