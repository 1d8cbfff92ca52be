//! Pod → outside: anti-spoofing, mapping and flow creation, source rewrite.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_NOEXIST, TC_ACT_REDIRECT, bpf_check_mtu_ret::BPF_MTU_CHK_RET_FRAG_NEEDED},
    helpers::{bpf_get_prandom_u32, bpf_redirect_neigh, generated::{bpf_check_mtu, bpf_loop}},
    programs::TcContext,
};
use podgate_common::{
    NodeConfig, Pod, csum,
    nat::{Claim4, Ct4, Endpoint4, Flow4, Mapping4, PROTO_ICMP, PROTO_TCP, PROTO_UDP, ct4_flags, pressure_level},
    node_flags, ports,
    stats::Counter,
    tcp::{self, Dir, TcpState},
};

use super::{
    Ctx, fwd, icmp, in_prefix,
    ip::{self, IP_DST, IP_SRC, Ip4},
    now_ns, reverse, unreach,
    usage::{self, Kind},
};
use crate::{
    maps::{CT4, NAT4_CLAIM, NAT4_MAP, NAT4_PRESSURE, NODE, PODS, PODS_V4},
    packet::ptr_at,
    verdict::{Verdict, count, emit_drop_tc, emit_new_flow4},
};

/// Random candidates tried before a new mapping gives up (each one an atomic claim). With a
/// range half full, 16 tries miss a free port with probability 2^-16.
const PORT_TRIES: u32 = 16;

const ICMP_ECHO_REQUEST: u8 = 8;
/// Candidates walked in order once random probing failed: every port of the largest range.
const SCAN_PORTS: u32 = 65536;

/// The state of the sequential walk, on the caller's stack for `bpf_loop`.
#[repr(C)]
struct Scan {
    ep: Endpoint4,
    remote: [u8; 4],
    lo: u16,
    hi: u16,
    start: u16,
    cand: u16,
    parity: u32,
    found: u32,
}

/// One random try: 1 stops the loop (claimed), 0 goes on. A `bpf_loop` callback rather than an
/// unrolled loop: `claim_new` is inlined at several call sites, and on 6.1 the verifier walked
/// every copy of 16 tries (`pod_ingress` over its 400k-instruction budget).
#[inline(never)]
extern "C" fn try_step(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the caller's `Scan`, alive for the whole `bpf_loop` call.
    let s = unsafe { &mut *(ctx as *mut Scan) };
    // SAFETY: plain helper call.
    let r = unsafe { bpf_get_prandom_u32() };
    s.cand = ports::candidate(s.ep.port, r, s.lo, s.hi, s.parity != 0);
    let key = Claim4 { remote: s.remote, ext_port: s.cand, proto: s.ep.proto, _pad: 0 };
    if NAT4_CLAIM.insert(&key, &s.ep, BPF_NOEXIST as u64).is_ok() {
        s.found = 1;
        return 1;
    }
    0
}

/// One step of the walk: 1 stops the loop (claimed, or back at the start), 0 goes on.
#[inline(never)]
extern "C" fn scan_step(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the caller's `Scan`, alive for the whole `bpf_loop` call.
    let s = unsafe { &mut *(ctx as *mut Scan) };
    // The start itself is tried first: it may be the one free port left.
    let key = Claim4 { remote: s.remote, ext_port: s.cand, proto: s.ep.proto, _pad: 0 };
    if NAT4_CLAIM.insert(&key, &s.ep, BPF_NOEXIST as u64).is_ok() {
        s.found = 1;
        return 1;
    }
    s.cand = ports::next_port(s.cand, s.lo, s.hi, s.parity != 0);
    if s.cand == s.start {
        return 1;
    }
    0
}

pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAM_PROBLEM: u8 = 12;

/// Headers the programs read, pulled into the linear area up front: Ethernet, IPv4 with options,
/// a TCP header, and for ICMP errors the embedded IPv4 header with options and 20 bytes of L4.
const PULL_LEN: u32 = 14 + 60 + 8 + 60 + 20;

/// Makes sure the headers sit in the skb's linear data, where direct packet access sees them.
#[inline(always)]
pub fn pull(ctx: &TcContext) {
    let len = ctx.len();
    let want = if len < PULL_LEN { len } else { PULL_LEN };
    if ctx.data_end() - ctx.data() < want as usize {
        // A failure leaves the data short; the bounds checks then count it as malformed.
        let _ = ctx.pull_data(want);
    }
}

/// The transport fields a translation touches, for TCP, UDP and ICMP echo (identifier as port).
#[derive(Clone, Copy)]
pub struct L4 {
    /// Offset of the pod-side port (source outbound, destination inbound) or ICMP identifier.
    pub port_off: usize,
    pub csum_off: usize,
    /// Source and destination ports as on the wire (ICMP: identifier and 0).
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
}

/// Reads the transport header of a TCP/UDP packet or ICMP echo message. `outbound` selects the
/// port the NAT rewrites (source outbound, destination inbound) and, for ICMP, the echo type.
#[inline(always)]
pub fn l4(ctx: &impl crate::packet::Packet, ip: &Ip4, outbound: bool) -> Result<L4, Counter> {
    // The header must lie inside the datagram, not only inside the frame: bytes after the
    // IPv4 total length are padding the stack trims away.
    let room = ip.tot_len as usize - (ip.l4 - ip.l3);
    let need = if ip.proto == PROTO_TCP { 20 } else { 8 };
    if room < need {
        return Err(Counter::DropMalformed);
    }
    match ip.proto {
        PROTO_TCP => {
            let h: *const [u8; 20] = ptr_at(ctx, ip.l4)?;
            // SAFETY: bounds checked by ptr_at.
            let h = unsafe { *h };
            Ok(L4 {
                port_off: if outbound { ip.l4 } else { ip.l4 + 2 },
                csum_off: ip.l4 + 16,
                sport: u16::from_be_bytes([h[0], h[1]]),
                dport: u16::from_be_bytes([h[2], h[3]]),
                tcp_flags: h[13],
            })
        }
        PROTO_UDP => {
            let h: *const [u8; 8] = ptr_at(ctx, ip.l4)?;
            let h = unsafe { *h };
            Ok(L4 {
                port_off: if outbound { ip.l4 } else { ip.l4 + 2 },
                csum_off: ip.l4 + 6,
                sport: u16::from_be_bytes([h[0], h[1]]),
                dport: u16::from_be_bytes([h[2], h[3]]),
                tcp_flags: 0,
            })
        }
        PROTO_ICMP => {
            let h: *const [u8; 8] = ptr_at(ctx, ip.l4)?;
            let h = unsafe { *h };
            let want = if outbound { ICMP_ECHO_REQUEST } else { 0 };
            if h[0] != want || h[1] != 0 {
                return Err(Counter::DropUnsupportedProto);
            }
            Ok(L4 {
                port_off: ip.l4 + 4,
                csum_off: ip.l4 + 2,
                sport: u16::from_be_bytes([h[4], h[5]]),
                dport: 0,
                tcp_flags: 0,
            })
        }
        _ => Err(Counter::DropUnsupportedProto),
    }
}

/// Rewrites the pod-side address and port of a translated packet and every checksum covering
/// them. `field` is IP_SRC outbound, IP_DST inbound.
#[inline(always)]
pub fn rewrite<C: Ctx>(
    ctx: &C,
    ip: &Ip4,
    l: &L4,
    field: usize,
    old_addr: [u8; 4],
    new_addr: [u8; 4],
    old_port: u16,
    new_port: u16,
) -> Result<(), Counter> {
    ip::set_addr(ctx, ip.l3, field, old_addr, new_addr)?;
    if ip.proto == PROTO_ICMP {
        // No pseudo-header: only the identifier is covered.
        let c = ip::get_u16(ctx, l.csum_off)?;
        ip::set_u16(ctx, l.port_off, new_port)?;
        return ip::set_u16(ctx, l.csum_off, csum::update16(c, old_port, new_port));
    }
    let udp = ip.proto == PROTO_UDP;
    ip::set_u16(ctx, l.port_off, new_port)?;
    ctx.l4_csum_addr(l.csum_off, old_addr, new_addr, udp)?;
    ctx.l4_csum_port(l.csum_off, old_port, new_port, udp)
}

/// IPv4 sent by a pod (TC ingress of its IPv4 host veth).
#[inline(always)]
pub fn pod_v4(ctx: &TcContext) -> Result<Verdict, Counter> {
    pull(ctx);
    let ifindex = ctx.ifindex();
    let pod = PODS.get_ptr_mut(ifindex).ok_or(Counter::DropUnknownPod)?;
    let node = *NODE.get(0).ok_or(Counter::DropInternalError)?;
    let ip = ip::parse_outer(ctx)?;
    // SAFETY: map value pointer, valid for the program run.
    if ip.src != unsafe { (*pod).ipv4 } {
        return Ok(Verdict::Drop(Counter::DropSpoofV4));
    }
    if in_prefix(ip.dst, node.pod_ipv4_net, node.pod_ipv4_prefix_len) {
        return Ok(Verdict::Pass(Counter::LocalPass));
    }
    // Toward the node's own address: a node service, untranslated (translating would hand the
    // stack a packet from its own address, a martian), unless it is TCP/UDP to a port the NAT
    // hands out, which is hairpinning toward another pod's mapping (RFC 4787 REQ-9).
    let hairpin = ip.dst == node.ipv4;
    if hairpin && !hairpin_candidate(ctx, &ip, &node)? {
        return Ok(Verdict::Pass(Counter::LocalPass));
    }
    // The errors this hop owes the pod, answered here: after translation the stack would
    // address them to the node itself. One `unreach::send` for both (each copy is verified anew).
    let mut answer = None;
    if ip.ttl <= 1 {
        // TTL expired in transit (RFC 5508 REQ-10, §7.2): 11/0 from the gateway. Not for a later
        // fragment, nor about an ICMP error (RFC 1812 §4.3.2.7): those are only dropped.
        if ip.is_later_fragment() || (ip.proto == PROTO_ICMP && matches!(ip::get_u8(ctx, ip.l4)?, ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAM_PROBLEM)) {
            return Ok(Verdict::Drop(Counter::DropTtlExpired));
        }
        answer = Some((Counter::DropTtlExpired, ICMP_TIME_EXCEEDED, 0, 0));
    } else if !hairpin && ip.frag & ip::IP_DF != 0 {
        // Too big for the uplink with DF: the pod must hear 3/4 with the MTU (RFC 4787 REQ-13).
        let mut mtu: u32 = 0;
        // SAFETY: plain helper call on our skb; `mtu` is on the stack.
        let rc = unsafe { bpf_check_mtu(ctx.skb.skb as *mut _, node.uplink_ifindex, &mut mtu, 0, 0) };
        if rc == BPF_MTU_CHK_RET_FRAG_NEEDED as i64 {
            let mtu = if mtu > 0xffff { 0xffff } else { mtu as u16 };
            answer = Some((Counter::DropFragNeeded, ICMP_DEST_UNREACH, unreach::CODE_FRAG_NEEDED, mtu));
        }
    }
    if let Some((why, ty, code, mtu)) = answer {
        // The event goes out before the frame becomes the ICMP error. (Should the answer fail,
        // the drop is reported once more by the entry point.)
        emit_drop_tc(ctx.skb.skb, why as u32);
        return Ok(match unreach::send(ctx, &node, &ip, ty, code, mtu) {
            Ok(back) => Verdict::Answered(why, back),
            Err(_) => Verdict::Drop(why),
        });
    }
    if ip.is_later_fragment() {
        // Every translated datagram from a pod leaves with the node's address, whatever its
        // ports: a later fragment needs no state, so fragment order does not matter outbound.
        ip::set_addr(ctx, ip.l3, IP_SRC, ip.src, node.ipv4)?;
        return fwd::forward(ctx, &node, &ip, node.ipv4, ip.dst, Counter::FragTranslated);
    }
    if ip.proto == PROTO_ICMP {
        let ty = ip::get_u8(ctx, ip.l4)?;
        if ty == ICMP_DEST_UNREACH || ty == ICMP_TIME_EXCEEDED || ty == ICMP_PARAM_PROBLEM {
            return icmp::error_out(ctx, &node, &ip);
        }
    }
    let l = l4(ctx, &ip, true)?;
    let now = now_ns();
    let ep = Endpoint4 {
        addr: ip.src,
        port: l.sport,
        proto: ip.proto,
        _pad: 0,
    };
    let flow = Flow4 {
        pod_addr: ip.src,
        remote_addr: ip.dst,
        pod_port: l.sport,
        remote_port: l.dport,
        proto: ip.proto,
        _pad: [0; 3],
    };
    let ext = match CT4.get_ptr_mut(&flow) {
        Some(ct) => {
            // SAFETY: map value pointer; concurrent updates of these plain fields race benignly.
            unsafe {
                if ip.proto == PROTO_TCP {
                    let s = tcp::next(TcpState::from_u8((*ct).state), Dir::Out, l.tcp_flags);
                    if s as u8 != (*ct).state {
                        (*ct).state = s as u8;
                        (*ct).state_ns = now;
                    }
                }
                (*ct).last_seen_ns = now;
                (*ct).packets_out += 1;
                // The pod answered an inbound-created flow: it keeps its protocol's timeout.
                (*ct).flags |= ct4_flags::ANSWERED;
            }
            // Outbound packets refresh the mapping (RFC 4787 REQ-6), except an RST, which only
            // answers inbound traffic (RFC 7857 §7.1).
            if l.tcp_flags & tcp::flags::RST == 0 {
                match NAT4_MAP.get_ptr_mut(&ep) {
                    Some(m) => unsafe { (*m).last_seen_ns = now },
                    // The GC never removes a mapping a live flow holds: the LRU evicted it.
                    None => count(Counter::LruEvictionSuspected),
                }
            }
            unsafe { (*ct).ext_port }
        }
        None => match new_flow(ifindex, pod, &node, &ep, &flow, l.tcp_flags, now) {
            Ok(ext) => ext,
            Err(why @ (Counter::DropPortExhausted | Counter::DropPodQuota | Counter::DropMapFull)) => {
                // Dropped either way; the pod also learns why (RFC 5508 REQ-8).
                emit_drop_tc(ctx.skb.skb, why as u32);
                return Ok(match unreach::send(ctx, &node, &ip, ICMP_DEST_UNREACH, unreach::CODE_ADMIN_PROHIBITED, 0) {
                    Ok(back) => Verdict::Answered(why, back),
                    Err(_) => Verdict::Drop(why),
                });
            }
            Err(e) => return Err(e),
        },
    };
    rewrite(ctx, &ip, &l, IP_SRC, ip.src, node.ipv4, l.sport, ext)?;
    if hairpin {
        return hairpin_in(ctx, &node);
    }
    fwd::forward(ctx, &node, &ip, node.ipv4, ip.dst, Counter::SnatOut)
}

#[inline(always)]
fn hairpin_candidate(ctx: &TcContext, ip: &Ip4, node: &NodeConfig) -> Result<bool, Counter> {
    if ip.is_later_fragment() || (ip.proto != PROTO_TCP && ip.proto != PROTO_UDP) {
        return Ok(false);
    }
    let h: *const [u8; 4] = ptr_at(ctx, ip.l4)?;
    // SAFETY: bounds checked by ptr_at.
    let h = unsafe { *h };
    Ok(ports::is_snat_port(
        u16::from_be_bytes([h[2], h[3]]),
        node.port_min,
        node.port_max,
    ))
}

/// The second half of a hairpin: the packet, already translated as if it left the node, is
/// received back as if it came from outside, filtered like any inbound packet (its remote is the
/// node's address, so the sender appears by its external address and port, REQ-9a) and sent
/// straight to the target pod's veth.
#[inline(always)]
fn hairpin_in(ctx: &TcContext, node: &NodeConfig) -> Result<Verdict, Counter> {
    let ip = ip::parse_outer(ctx)?;
    let l = l4(ctx, &ip, false)?;
    let Some(ep) = reverse::owner(ip.proto, l.dport, node.ipv4) else {
        return Ok(Verdict::Drop(Counter::DropNoMapping));
    };
    reverse::track_in(&ip, &ep, l.dport, l.sport, l.tcp_flags)?;
    rewrite(ctx, &ip, &l, IP_DST, ip.dst, ep.addr, l.dport, ep.port)?;
    // SAFETY: map value read.
    let ifindex = unsafe {
        *PODS_V4
            .get_ptr(&ep.addr)
            .ok_or(Counter::DropInternalError)?
    };
    // The neighbour lookup fills in the MACs on the pod's veth.
    // SAFETY: plain helper call; no parameters means "look the destination up".
    let rc = unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) };
    if rc != TC_ACT_REDIRECT as i64 {
        return Err(Counter::DropInternalError);
    }
    Ok(Verdict::Redirect(Counter::SnatHairpin, ifindex))
}

/// The remote a claim is made for: the flow's remote (address-dependent filtering, port
/// overlapping) or 0.0.0.0 (endpoint-independent filtering).
#[inline(always)]
fn claim_remote(node: &NodeConfig, remote: [u8; 4]) -> [u8; 4] {
    if node.flags & node_flags::FILTER_EIF != 0 {
        [0; 4]
    } else {
        remote
    }
}

#[inline(always)]
fn new_flow(
    ifindex: u32,
    pod: *mut Pod,
    node: &NodeConfig,
    ep: &Endpoint4,
    flow: &Flow4,
    tcp_flags: u8,
    now: u64,
) -> Result<u16, Counter> {
    // Under map pressure a new flow is refused before it touches any map: an insert would make
    // the LRU evict a live flow, mapping or claim (RFC 7857 §3: existing flows come first).
    // `INBOUND` pressure refuses only flows a remote opens (`reverse::track_in`).
    if NAT4_PRESSURE.get(0).is_some_and(|p| *p == pressure_level::FULL) {
        return Err(Counter::DropMapFull);
    }
    let remote = claim_remote(node, flow.remote_addr);
    let ext = match NAT4_MAP.get_ptr_mut(ep) {
        Some(m) => {
            // SAFETY: map value pointer.
            let ext = unsafe {
                (*m).last_seen_ns = now;
                (*m).ext_port
            };
            claim_for_flow(ep, remote, ext, node)?
        }
        None => create_mapping(ifindex, pod, node, ep, remote, now)?,
    };
    let state = if ep.proto == PROTO_TCP {
        tcp::next(TcpState::None, Dir::Out, tcp_flags) as u8
    } else {
        0
    };
    let ct = Ct4 {
        ext_port: ext,
        state,
        flags: 0,
        pod_ifindex: ifindex,
        created_ns: now,
        last_seen_ns: now,
        state_ns: now,
        packets_out: 1,
        packets_in: 0,
    };
    // BPF_NOEXIST: a flow another CPU created meanwhile (its first packets on two queues) is
    // kept, not overwritten, and one flow is charged once.
    if CT4.insert(flow, &ct, BPF_NOEXIST as u64).is_err() {
        let theirs = CT4.get_ptr(flow).ok_or(Counter::DropMapFull)?;
        // SAFETY: map value pointer.
        let theirs = unsafe { (*theirs).ext_port };
        if theirs != ext && mapping_port(ep) != Some(ext) {
            // Our port was claimed for this one flow (`claim_new`): nobody else uses it.
            let _ = NAT4_CLAIM.remove(&Claim4 { remote, ext_port: ext, proto: ep.proto, _pad: 0 });
        }
        return Ok(theirs);
    }
    // SAFETY: map value pointer, valid for the program run.
    usage::charge(unsafe { (*pod).id }, Kind::Flow4);
    count(Counter::SnatNewFlow);
    if node.flags & node_flags::FLOW_EVENTS != 0 {
        // SAFETY: map value pointer, valid for the program run.
        emit_new_flow4(unsafe { (*pod).id }, flow, ext);
    }
    Ok(ext)
}

/// The endpoint's mapping port, if it has a mapping.
#[inline(always)]
fn mapping_port(ep: &Endpoint4) -> Option<u16> {
    // SAFETY: map value pointer.
    NAT4_MAP.get_ptr(ep).map(|m| unsafe { (*m).ext_port })
}

/// Makes sure the endpoint's external port is claimed toward `remote`. When another endpoint
/// already holds that port toward this remote (port overlapping made them meet), this one flow
/// gets its own port instead: endpoint independence yields only where the alternative would be
/// mis-delivery (RFC 4787 REQ-3).
#[inline(always)]
fn claim_for_flow(
    ep: &Endpoint4,
    remote: [u8; 4],
    ext: u16,
    node: &NodeConfig,
) -> Result<u16, Counter> {
    let key = Claim4 {
        remote,
        ext_port: ext,
        proto: ep.proto,
        _pad: 0,
    };
    if let Some(owner) = NAT4_CLAIM.get_ptr(&key) {
        // SAFETY: map value pointer.
        return if unsafe { *owner } == *ep {
            Ok(ext)
        } else {
            claim_new(ep, remote, node)
        };
    }
    if NAT4_CLAIM.insert(&key, ep, BPF_NOEXIST as u64).is_ok() {
        return Ok(ext);
    }
    match NAT4_CLAIM.get_ptr(&key) {
        Some(owner) if unsafe { *owner } == *ep => Ok(ext),
        _ => claim_new(ep, remote, node),
    }
}

/// Claims a fresh random port (range class kept, and parity for UDP) toward `remote`, atomically.
#[inline(always)]
fn claim_new(ep: &Endpoint4, remote: [u8; 4], node: &NodeConfig) -> Result<u16, Counter> {
    let parity = ports::keeps_parity(ep.proto, node.flags) as u32;
    // `range_for` of the range it returns is itself: the steps pass (lo, hi) as the range.
    let (lo, hi) = ports::range_for(ep.port, node.port_min, node.port_max);
    let mut s = Scan { ep: *ep, remote, lo, hi, start: 0, cand: 0, parity, found: 0 };
    // SAFETY: `s` outlives the call; the callback is a static function of this program.
    unsafe {
        bpf_loop(PORT_TRIES, try_step as *mut c_void, &mut s as *mut Scan as *mut c_void, 0);
    }
    if s.found != 0 {
        return Ok(s.cand);
    }
    // A nearly full pool defeats random probing while ports are still free: walk the range from
    // a random point instead (same parity rule), so exhaustion means the pool really is full
    // (RFC 4787 REQ-11: behaviour must not change under pool pressure). `bpf_loop` keeps the walk
    // out of the verifier's budget: its callback is verified once.
    // SAFETY: plain helper call.
    s.start = ports::candidate(ep.port, unsafe { bpf_get_prandom_u32() }, lo, hi, parity != 0);
    s.cand = s.start;
    // SAFETY: as above.
    unsafe {
        bpf_loop(SCAN_PORTS, scan_step as *mut c_void, &mut s as *mut Scan as *mut c_void, 0);
    }
    if s.found != 0 {
        return Ok(s.cand);
    }
    Err(Counter::DropPortExhausted)
}

#[inline(always)]
fn create_mapping(
    ifindex: u32,
    pod: *mut Pod,
    node: &NodeConfig,
    ep: &Endpoint4,
    remote: [u8; 4],
    now: u64,
) -> Result<u16, Counter> {
    // SAFETY: map value pointer.
    let (quota, id) = unsafe { ((*pod).quota, (*pod).id) };
    let quota = if quota != 0 { quota } else { node.pod_quota };
    // One count per pod (`Pod::id`, whichever veth), created minus freed. Checked before the
    // atomic add: concurrent CPUs may overshoot by at most one each.
    if quota != 0 && usage::held(id, Kind::Mapping) >= quota as u64 {
        return Err(Counter::DropPodQuota);
    }
    let ext = claim_new(ep, remote, node)?;
    let m = Mapping4 {
        ext_port: ext,
        _pad: 0,
        pod_ifindex: ifindex,
        created_ns: now,
        last_seen_ns: now,
    };
    if NAT4_MAP.insert(ep, &m, BPF_NOEXIST as u64).is_err() {
        // Another CPU mapped this endpoint first: give our claim back and use its port.
        let _ = NAT4_CLAIM.remove(&Claim4 {
            remote,
            ext_port: ext,
            proto: ep.proto,
            _pad: 0,
        });
        let theirs = NAT4_MAP.get_ptr(ep).ok_or(Counter::DropMapFull)?;
        // SAFETY: map value pointer.
        let ext = unsafe { (*theirs).ext_port };
        return claim_for_flow(ep, remote, ext, node);
    }
    usage::charge(id, Kind::Mapping);
    count(Counter::SnatNewMapping);
    Ok(ext)
}
