//! IPv6 security groups: anti-spoofing and stateful allow rules per pod, enforced on the pod's
//! veth; an early drop of denied inbound traffic at the uplink XDP.
//!
//! Order of checks for one packet: anti-spoofing (pod egress) → extension-header walk (failures
//! are counted drops) → non-first fragments follow their first fragment → NDP/MLD valid on the
//! pod's link pass (`ndp_on_link`; other NDP/MLD is ordinary ICMPv6) → ICMPv6 errors quoting a
//! tracked flow pass → a tracked flow passes → `::` may not open flows → the rules of the pod's
//! groups decide, and an allowed flow becomes tracked.
mod parse;
pub mod policy;
mod quota;

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_FWD_DISABLED, BPF_FIB_LKUP_RET_NOT_FWDED, __sk_buff, bpf_fib_lookup, xdp_md},
    helpers::bpf_fib_lookup as fib_lookup,
    programs::{TcContext, XdpContext},
};
use podgate_common::{
    Pod, event_kind, node_flags,
    sg::{
        Ct6, DIR_EGRESS, DIR_INGRESS, Flow6, FragKey6, FragVal6, NO_RULE, PROTO_ICMPV6,
        ct6_flags, ct6_next_flags, exthdr::{self, Frag}, in_prefix80, is_icmp_error,
        is_linklocal_or_unspecified, match_key, ndp_link_bits, ndp_peer_lookup_needed,
        ndp_type_on_link,
    },
    stats::Counter,
};

use crate::{
    maps::{CT6, EVENTS, FRAG6, NODE, PODS, PODS_V6, SG_SCRATCH},
    packet::{ETH_HLEN, Packet, ptr_at},
    verdict::Verdict,
};
use parse::{Buf, Header, L4, Load};

const BPF_NOEXIST: u64 = 1;

/// What the pod sends (TC ingress of its host veth).
#[inline(always)]
pub fn pod_egress_v6(ctx: &TcContext, ndp: u32) -> Result<Verdict, Counter> {
    pull(ctx);
    let pod = pod_of(ctx)?;
    let h = parse::header(ctx, ctx.len() as usize)?;
    if h.src != pod.ipv6 && !is_linklocal_or_unspecified(&h.src) {
        return deny(Counter::DropSpoofV6, pod.id, &h, 0, &L4::default(), NO_RULE);
    }
    judge(ctx, pod, &h, DIR_EGRESS, true, ndp)
}

/// What is delivered to the pod (TC egress of its host veth): the enforcement point.
#[inline(always)]
pub fn pod_ingress_v6(ctx: &TcContext, ndp: u32) -> Result<Verdict, Counter> {
    pull(ctx);
    let pod = pod_of(ctx)?;
    let h = parse::header(ctx, ctx.len() as usize)?;
    judge(ctx, pod, &h, DIR_INGRESS, true, ndp)
}

/// Inbound IPv6 at the uplink: drops early what the pod's ingress rules would drop anyway, and
/// passes the rest to the stack without creating state (the veth creates it).
#[inline(always)]
pub fn uplink_v6_xdp(ctx: &XdpContext, ndp: u32) -> Result<Verdict, Counter> {
    let h = parse::header(ctx, ctx.end() - ctx.start())?;
    let node = NODE.get(0).ok_or(Counter::DropInternalError)?;
    if !in_prefix80(&h.dst, &node.pod_prefix) {
        return Ok(Verdict::Pass(Counter::NotOurs));
    }
    // SAFETY: the values are plain data; a concurrent update is at worst read torn, and the veth
    // enforcement point decides again.
    let Some(&ifindex) = (unsafe { PODS_V6.get(&h.dst) }) else {
        return Ok(Verdict::Pass(Counter::NotOurs));
    };
    let Some(pod) = (unsafe { PODS.get(ifindex) }) else {
        return Ok(Verdict::Pass(Counter::NotOurs));
    };
    judge(ctx, pod, &h, DIR_INGRESS, false, ndp)
}

/// `v`, with everything the verifier knows about it forgotten: a round trip through map memory.
/// Bounded loops whose paths carry slightly different offsets would otherwise be verified once
/// per combination of paths; after this, their states compare equal and get pruned.
#[inline(always)]
pub fn opaque(v: u32) -> Option<u32> {
    let p = SG_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: a per-CPU slot, used only between these two accesses.
    unsafe {
        core::ptr::write_volatile(p, v);
        Some(core::ptr::read_volatile(p))
    }
}

/// Makes the headers that the walk may read linear (GSO and paged skbs).
#[inline(always)]
fn pull(ctx: &TcContext) {
    let len = ctx.len() as usize;
    let want = if len < parse::PULL_LEN { len } else { parse::PULL_LEN };
    if ctx.data_end() - ctx.data() < want {
        // A failed pull leaves the packet short; the bounds checks then drop it as malformed.
        let _ = ctx.pull_data(want as u32);
    }
}

#[inline(always)]
fn pod_of(ctx: &TcContext) -> Result<&'static Pod, Counter> {
    // SAFETY: reading the skb's ifindex field.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: see uplink_v6_xdp.
    unsafe { PODS.get(ifindex) }.ok_or(Counter::DropUnknownPod)
}

/// The verdict for a packet of `pod`. `enforce`: the veth programs, which create and refresh
/// state; the uplink only reads it. `ndp`: the packet's `ndp_link_bits`, from the entry point.
#[inline(always)]
fn judge<C: Load>(
    ctx: &C,
    pod: &Pod,
    h: &Header,
    dir: u8,
    enforce: bool,
    ndp: u32,
) -> Result<Verdict, Counter> {
    let egress = dir == DIR_EGRESS;
    let (pod_addr, remote) = if egress { (h.src, h.dst) } else { (h.dst, h.src) };
    let denied = if egress { Counter::DropSg6Egress } else { Counter::DropSg6Ingress };
    let pass = |c: Counter| Ok(Verdict::Pass(if enforce { c } else { Counter::Pass }));
    let buf = Buf(ctx);
    let mut up = match exthdr::walk(&buf, ETH_HLEN, h.end) {
        Ok(u) => u,
        Err(c) => return deny(c, pod.id, h, 0, &L4::default(), NO_RULE),
    };
    // Every path out of the walk leaves with its own offset bounds; forget them so that the rest
    // is verified once per kind of packet, not once per header chain.
    up.off = opaque(up.off as u32).ok_or(Counter::DropInternalError)? as usize;
    if up.off > ETH_HLEN + 40 + exthdr::MAX_CHAIN_BYTES + 8 {
        return Err(Counter::DropExtHdrChain);
    }
    if let Frag::NonFirst { id, offset } = up.frag {
        let key = FragKey6 { src: h.src, dst: h.dst, id, dir, _pad: [0; 3] };
        // SAFETY: plain data.
        let Some(rec) = (unsafe { FRAG6.get(&key) }) else {
            if !enforce {
                // The first fragment may still be on its way to the veth, which decides.
                return Ok(Verdict::Pass(Counter::Pass));
            }
            return deny(Counter::DropFragOrphan, pod.id, h, up.proto, &L4::default(), NO_RULE);
        };
        let l = L4 { sport: rec.sport, dport: rec.dport, ..L4::default() };
        if offset < rec.hdr_end {
            return deny(Counter::DropFragOverlap, pod.id, h, rec.proto, &l, NO_RULE);
        }
        if rec.allow == 0 {
            return deny(denied, pod.id, h, rec.proto, &l, NO_RULE);
        }
        return pass(Counter::Sg6Allowed);
    }
    let l4 = parse::l4(&buf, up.proto, up.off)?;
    if up.proto == PROTO_ICMPV6 {
        if ndp_type_on_link(l4.icmp_type, ndp) {
            return pass(Counter::Sg6NdpPass);
        }
        if is_icmp_error(l4.icmp_type) && related(&buf, up.off + 8, h.end, egress, &pod_addr) {
            return pass(Counter::Sg6Tracked);
        }
    }
    let flow = Flow6::of_packet(up.proto, pod_addr, remote, egress, l4.sport, l4.dport, l4.icmp_type);
    if let Some(f) = &flow {
        if let Some(ct) = CT6.get_ptr_mut(f) {
            if enforce {
                // SAFETY: an LRU value; racing updates only lose a count or a timestamp.
                unsafe { refresh(&mut *ct, egress, l4.tcp_flags) };
                record_first_fragment(&up.frag, h, dir, up.proto, &l4, true);
            }
            return pass(Counter::Sg6Tracked);
        }
    }
    // `::` is a source only for DAD and early MLD reports, which passed above: from it, nothing
    // else may open a flow (no flow can be tracked for it, so this costs only new packets).
    if egress && h.src == [0u8; 16] {
        return deny(Counter::DropSpoofV6, pod.id, h, up.proto, &l4, NO_RULE);
    }
    let key = match_key(up.proto, l4.dport, l4.icmp_type, l4.icmp_code);
    let rule = if pod.group_count == 0 {
        // AWS defaults: a pod without groups may send anything and receive nothing unsolicited.
        if egress { Some(NO_RULE) } else { None }
    } else {
        policy::lookup(pod, dir, &remote, key)
    };
    if enforce {
        record_first_fragment(&up.frag, h, dir, up.proto, &l4, rule.is_some());
    }
    let Some(rule) = rule else {
        return deny(denied, pod.id, h, up.proto, &l4, NO_RULE);
    };
    if enforce {
        if let Some(f) = &flow {
            // SAFETY: plain helper call.
            let now = unsafe { aya_ebpf::helpers::generated::bpf_ktime_get_boot_ns() };
            let mut ct = Ct6 {
                origin: dir,
                flags: 0,
                _pad: 0,
                rule,
                pod_ifindex: pod.ifindex,
                pod_id: pod.id,
                created_ns: now,
                last_seen_ns: now,
                packets_out: 0,
                packets_in: 0,
            };
            refresh(&mut ct, egress, l4.tcp_flags);
            ct.flags &= !ct6_flags::SEEN_REPLY;
            // In a BPF function of its own: its few locals stay out of this deep frame.
            let refused = quota::admit(pod.id, !egress);
            if refused != 0 {
                let c = if refused == 1 { Counter::DropSg6PodFlows } else { Counter::DropSg6CtPressure };
                return deny(c, pod.id, h, up.proto, &l4, rule);
            }
            // NOEXIST: two CPUs opening the same flow must count it once.
            if CT6.insert(f, ct, BPF_NOEXIST).is_err() {
                if CT6.get_ptr(f).is_none() {
                    return deny(Counter::DropMapFull, pod.id, h, up.proto, &l4, rule);
                }
            } else {
                quota::count(pod.id);
            }
            if NODE.get(0).is_some_and(|n| n.flags & node_flags::FLOW_EVENTS != 0) {
                event6(event_kind::NEW_FLOW, Counter::Sg6Allowed, pod.id, h, up.proto, &l4, rule);
            }
        }
    }
    pass(Counter::Sg6Allowed)
}

/// Whether the packet may be NDP or MLD: ICMPv6 right after the IPv6 header, or behind a
/// hop-by-hop header as MLD is (NDP/MLD behind other headers meet the rules). One byte and two
/// compares for all other packets, ahead of `ndp_bits_tc`/`ndp_bits_xdp`.
#[inline(always)]
pub fn ndp_candidate(ctx: &impl Packet) -> bool {
    match ptr_at::<u8>(ctx, ETH_HLEN + 6) {
        // SAFETY: ptr_at checked the bounds.
        Ok(nh) => matches!(unsafe { *nh }, PROTO_ICMPV6 | 0),
        Err(_) => false,
    }
}

/// The `ndp_link_bits` of what a pod veth carries (`egress`: the pod sent it), with a FIB lookup
/// for the node's own addresses when they can matter. Called by the entry point before the IPv6
/// function: there its frame does not add to the IPv6 path's, which has no room left (Linux 6.1:
/// 512 bytes for the chain through the rule lookup's callback).
#[inline(never)]
pub fn ndp_bits_tc(skb: *mut __sk_buff, egress: bool) -> u32 {
    let ctx = TcContext::new(skb);
    // SAFETY: reading the skb's ifindex field; the pod as in uplink_v6_xdp.
    let ifindex = unsafe { (*skb).ifindex };
    let Some(pod) = (unsafe { PODS.get(ifindex) }) else {
        return 0;
    };
    let Ok(ip) = ptr_at::<[u8; 40]>(&ctx, ETH_HLEN) else {
        return 0;
    };
    // SAFETY: bounds checked by ptr_at; the 16-byte ranges lie inside the 40 bytes.
    let (hl, src, dst) = unsafe { ((*ip)[7], &*((ip as *const u8).add(8) as *const [u8; 16]), &*((ip as *const u8).add(24) as *const [u8; 16])) };
    let bits = ndp_link_bits(hl, src, dst, &pod.ipv6, egress, false);
    if bits != 0 || !ndp_peer_lookup_needed(hl, src, dst, egress) {
        return bits;
    }
    let peer = if egress { dst } else { src };
    ndp_link_bits(hl, src, dst, &pod.ipv6, egress, node_address(skb, ifindex, peer))
}

/// Whether `a` is one of the node's own addresses: the FIB has a local (not forwarded) route
/// for it. An interface that does not forward IPv6 counts too: from it nothing can be routed on,
/// and toward it only the node itself sends.
#[inline(always)]
fn node_address(skb: *mut __sk_buff, ifindex: u32, a: &[u8; 16]) -> bool {
    // SAFETY: a plain C struct; all-zero is a valid request.
    let mut p: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    p.family = AF_INET6;
    p.ifindex = ifindex;
    let mut w = [0u32; 4];
    let mut i = 0;
    while i < 4 {
        w[i] = u32::from_ne_bytes([a[4 * i], a[4 * i + 1], a[4 * i + 2], a[4 * i + 3]]);
        i += 1;
    }
    p.__bindgen_anon_4.ipv6_dst = w;
    // SAFETY: p lives on the stack for the call; the size is the struct's.
    let rc = unsafe { fib_lookup(skb as *mut c_void, &mut p, core::mem::size_of::<bpf_fib_lookup>() as i32, 0) };
    rc == BPF_FIB_LKUP_RET_NOT_FWDED as i64 || rc == BPF_FIB_LKUP_RET_FWD_DISABLED as i64
}

const AF_INET6: u8 = 10;

/// `ndp_bits_tc` for the uplink, where everything is on its way to a pod: the pod is the one the
/// destination names (`uplink_v6_xdp` looks it up by that address), so its own address is `dst`.
#[inline(never)]
pub fn ndp_bits_xdp(md: *mut xdp_md) -> u32 {
    let ctx = XdpContext::new(md);
    let Some(ip) = ctx.load::<40>(ETH_HLEN) else {
        return 0;
    };
    // SAFETY: the 16-byte ranges lie inside the 40 bytes.
    let (src, dst) = unsafe { (&*(ip.as_ptr().add(8) as *const [u8; 16]), &*(ip.as_ptr().add(24) as *const [u8; 16])) };
    ndp_link_bits(ip[7], src, dst, dst, false, false)
}

#[inline(always)]
fn refresh(ct: &mut Ct6, egress: bool, tcp_flags: u8) {
    // SAFETY: plain helper call.
    ct.last_seen_ns = unsafe { aya_ebpf::helpers::generated::bpf_ktime_get_boot_ns() };
    if egress {
        ct.packets_out += 1;
    } else {
        ct.packets_in += 1;
    }
    ct.flags = ct6_next_flags(ct.flags, (ct.origin == DIR_EGRESS) == egress, tcp_flags);
}

/// Whether the packet quoted in an ICMPv6 error belongs to a tracked flow of this pod. An error
/// delivered to the pod quotes what the pod sent, and the other way round.
#[inline(always)]
fn related<C: Load>(b: &Buf<C>, off: usize, end: usize, egress: bool, pod_addr: &[u8; 16]) -> bool {
    let Some(i) = parse::inner(b, off, end) else {
        return false;
    };
    let (inner_pod, inner_remote) = if egress { (i.dst, i.src) } else { (i.src, i.dst) };
    if inner_pod != *pod_addr {
        return false;
    }
    let Some(f) = Flow6::of_packet(
        i.proto,
        inner_pod,
        inner_remote,
        !egress,
        i.l4.sport,
        i.l4.dport,
        i.l4.icmp_type,
    ) else {
        return false;
    };
    CT6.get_ptr(&f).is_some()
}

#[inline(always)]
fn record_first_fragment(frag: &Frag, h: &Header, dir: u8, proto: u8, l4: &L4, allow: bool) {
    if let Frag::First { id, hdr_end } = *frag {
        let key = FragKey6 { src: h.src, dst: h.dst, id, dir, _pad: [0; 3] };
        let val = FragVal6 {
            allow: allow as u8,
            proto,
            hdr_end,
            sport: l4.sport,
            dport: l4.dport,
            // SAFETY: plain helper call.
            seen_ns: unsafe { aya_ebpf::helpers::generated::bpf_ktime_get_boot_ns() },
        };
        // Full map: the LRU evicts an old datagram's record; its tail then drops as orphan.
        let _ = FRAG6.insert(&key, &val, 0);
    }
}

/// Counts the drop and reports it.
#[inline(always)]
fn deny(reason: Counter, pod_id: u32, h: &Header, proto: u8, l4: &L4, rule: u32) -> Result<Verdict, Counter> {
    event6(event_kind::DROP, reason, pod_id, h, proto, l4, rule);
    Ok(Verdict::Drop(reason))
}

/// Writes an event straight into the ring buffer: an `Event` on the stack would not leave room
/// for the rule lookup's callback frame (512 bytes for the whole call chain, rounded per frame
/// on 6.1). A full ring loses the event, never the verdict.
#[inline(always)]
fn event6(kind: u32, reason: Counter, pod_id: u32, h: &Header, proto: u8, l4: &L4, rule: u32) {
    if let Some(mut entry) = EVENTS.reserve(0) {
        let e = entry.as_mut_ptr();
        // SAFETY: `e` points at a reserved, writable `Event`; every field is plain data.
        unsafe {
            (*e).kind = kind;
            (*e).reason = reason as u32;
            (*e).pod_id = pod_id;
            (*e).rule = rule;
            (*e).family = 6;
            (*e).proto = proto;
            (*e).ext_port = 0;
            (*e).sport = l4.sport;
            (*e).dport = l4.dport;
            (*e).src = h.src;
            (*e).dst = h.dst;
        }
        entry.submit(0);
    }
}
