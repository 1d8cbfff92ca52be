//! Outside → pod: replies to the node's IPv4 are translated back to the pod that owns the
//! external port; everything else for the node is left to the stack.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    programs::{TcContext, XdpContext},
};
use podgate_common::{
    NodeConfig,
    nat::{
        Claim4, Ct4, Endpoint4, FRAG_PASS, Flow4, FragKey4, FragVal4, PROTO_ICMP, PROTO_TCP,
        PROTO_UDP, ct4_flags, frag_pass_may_replace, is_frag_pass,
    },
    stats::Counter,
    tcp::{self, Dir, TcpState},
};

use super::{
    Ctx,
    egress::{self, ICMP_DEST_UNREACH, ICMP_PARAM_PROBLEM, ICMP_TIME_EXCEEDED, l4, rewrite},
    fwd, icmp,
    ip::{self, IP_DST, Ip4},
    now_ns,
    punt::{self, LoadBytes},
    usage::{self, Kind},
};
use crate::{
    maps::{CT4, FRAG4, NAT4_CLAIM, NAT4_MAP, NODE, PODS},
    verdict::{Verdict, count},
};

const ICMP_ECHO_REPLY: u8 = 0;

pub fn uplink_v4_xdp(ctx: &XdpContext) -> Result<Verdict, Counter> {
    reverse(ctx)
}

pub fn uplink_v4_tc(ctx: &TcContext) -> Result<Verdict, Counter> {
    egress::pull(ctx);
    reverse(ctx)
}

/// The pod endpoint that owns `ext_port` toward `remote`: the address-dependent claim first,
/// then the endpoint-independent one.
#[inline(always)]
pub fn owner(proto: u8, ext_port: u16, remote: [u8; 4]) -> Option<Endpoint4> {
    let k = Claim4 {
        remote,
        ext_port,
        proto,
        _pad: 0,
    };
    if let Some(ep) = NAT4_CLAIM.get_ptr(&k) {
        // SAFETY: map value pointer.
        return Some(unsafe { *ep });
    }
    let k = Claim4 {
        remote: [0; 4],
        ext_port,
        proto,
        _pad: 0,
    };
    NAT4_CLAIM.get_ptr(&k).map(|ep| unsafe { *ep })
}

#[inline(always)]
fn reverse<C: Ctx + LoadBytes>(ctx: &C) -> Result<Verdict, Counter> {
    let node = *NODE.get(0).ok_or(Counter::DropInternalError)?;
    let ip = ip::parse_outer(ctx)?;
    if ip.dst != node.ipv4 {
        return Ok(Verdict::Pass(Counter::NotOurs));
    }
    if ip.is_later_fragment() {
        return later_fragment(ctx, &node, &ip);
    }
    match ip.proto {
        PROTO_TCP | PROTO_UDP => {}
        PROTO_ICMP => match ip::get_u8(ctx, ip.l4)? {
            ICMP_ECHO_REPLY => {}
            ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAM_PROBLEM => {
                return icmp::error_in(ctx, &node, &ip);
            }
            // Echo requests and the rest are for the node itself.
            _ => return for_node(&node, &ip),
        },
        _ => return for_node(&node, &ip),
    }
    let l = l4(ctx, &ip, false)?;
    // Inbound, the NAT's port is the destination (ICMP: the identifier, in `sport`).
    let (ext, remote_port) = if ip.proto == PROTO_ICMP {
        (l.sport, 0)
    } else {
        (l.dport, l.sport)
    };
    let Some(ep) = owner(ip.proto, ext, ip.src) else {
        // An unsolicited connection attempt to a port of the SNAT range: the range belongs to
        // the NAT, and the node's stack would answer it with an RST at once. Drop it silently
        // instead (RFC 5382 REQ-4/4a); SYN-ACKs for the node's own connections are not SYN-only.
        if ip.proto == PROTO_TCP
            && l.tcp_flags & (tcp::flags::SYN | tcp::flags::ACK | tcp::flags::RST) == tcp::flags::SYN
            && ext >= node.port_min
            && ext <= node.port_max
        {
            return Ok(Verdict::Drop(Counter::DropNoMapping));
        }
        // No mapping: possibly the node's own traffic.
        return for_node(&node, &ip);
    };
    track_in(&ip, &ep, ext, remote_port, l.tcp_flags)?;
    rewrite(ctx, &ip, &l, IP_DST, ip.dst, ep.addr, ext, ep.port)?;
    if ip.is_first_fragment() {
        let k = frag_key_in(&ip);
        let v = FragVal4 {
            new_addr: ep.addr,
            ifindex: 0,
            seen_ns: now_ns(),
        };
        // Losing this entry only costs the later fragments (counted as orphans there).
        let _ = FRAG4.insert(&k, &v, 0);
        punt::release(&node, &k, ep.addr);
    }
    fwd::forward(ctx, &node, &ip, ip.src, ep.addr, Counter::RevNat)
}

/// A datagram (or its first fragment) for the node itself goes to the stack. A first fragment
/// leaves a pass entry so that the rest of the datagram follows it there instead of waiting as
/// orphans, and releases the orphans the daemon already holds (they pass when run again). The
/// kernel reassembles them for the node; only its first fragment's ports decided this, exactly
/// as for a pod's datagram.
#[inline(always)]
fn for_node(node: &NodeConfig, ip: &Ip4) -> Result<Verdict, Counter> {
    // A first fragment too short to hold even an ICMP/UDP header (RFC 1858's tiny fragment) is
    // left to the kernel without state: a packet that does not parse creates no entry.
    let l4_bytes = (ip.tot_len as usize).saturating_sub(ip.l4 - ip.l3);
    if ip.is_first_fragment() && l4_bytes >= 8 {
        let k = frag_key_in(ip);
        let now = now_ns();
        // SAFETY: map value pointer, read once.
        let old = FRAG4.get_ptr(&k).map(|v| unsafe { *v });
        if frag_pass_may_replace(old.as_ref(), now) {
            let v = FragVal4 {
                new_addr: FRAG_PASS,
                ifindex: 0,
                seen_ns: now,
            };
            // Losing it costs the later fragments only (orphans, as before this entry existed).
            let _ = FRAG4.insert(&k, &v, 0);
            punt::release(node, &k, FRAG_PASS);
        }
    }
    Ok(Verdict::Pass(Counter::NotOurs))
}

/// Updates (or recreates) the flow's conntrack from an inbound packet that arrived on external
/// port `ext`. The mapping itself is not refreshed: only outbound traffic keeps it alive (RFC
/// 4787 REQ-6, RFC 7857 §7.1).
///
/// A flow this packet would create is refused (and the packet dropped: without the entry the
/// pod's answer could not leave through the port the remote wrote to) when the pod already
/// holds 7/8 of `[limits] pod_flows` (`DropNat4PodFlows`), or while `nat4_pressure` says `ct4`
/// is near full (`DropMapFull`): a flood from outside is refused before the pods' own flows.
#[inline(always)]
pub(super) fn track_in(ip: &Ip4, ep: &Endpoint4, ext: u16, remote_port: u16, tcp_flags: u8) -> Result<(), Counter> {
    let now = now_ns();
    let flow = Flow4 {
        pod_addr: ep.addr,
        remote_addr: ip.src,
        pod_port: ep.port,
        remote_port,
        proto: ip.proto,
        _pad: [0; 3],
    };
    if let Some(ct) = CT4.get_ptr_mut(&flow) {
        // SAFETY: map value pointer; benign races on plain fields.
        unsafe { refresh_in(ct, ip.proto, tcp_flags, now) };
        return Ok(());
    }
    // A claim without a flow: an endpoint-independent-filtering inbound from a new remote, a
    // remote answering from another port, or a flow the LRU evicted under pressure (counted: the
    // GC should have had room).
    let Some(m) = NAT4_MAP.get_ptr(ep) else {
        count(Counter::LruEvictionSuspected);
        return Ok(());
    };
    // SAFETY: map value pointer.
    let m = unsafe { *m };
    match usage::admit_inbound(m.pod_ifindex) {
        usage::ADMIT => {}
        usage::REFUSE_POD_FLOWS => return Err(Counter::DropNat4PodFlows),
        _ => return Err(Counter::DropMapFull),
    }
    let state = if ip.proto == PROTO_TCP {
        tcp::next(TcpState::None, Dir::In, tcp_flags) as u8
    } else {
        0
    };
    let ct = Ct4 {
        // The port the packet arrived on, which the claim resolved to this endpoint: the
        // mapping's port may belong to another pod toward this remote (a per-flow port, RFC 4787
        // REQ-3), and the pod's answers must leave from the port the remote wrote to.
        ext_port: ext,
        state,
        flags: ct4_flags::INBOUND,
        pod_ifindex: m.pod_ifindex,
        created_ns: now,
        last_seen_ns: now,
        state_ns: now,
        packets_out: 0,
        packets_in: 1,
    };
    if CT4.insert(&flow, &ct, BPF_NOEXIST as u64).is_ok() {
        // SAFETY: map value pointer.
        if let Some(pod) = PODS.get_ptr(&m.pod_ifindex) {
            usage::charge(unsafe { (*pod).id }, Kind::Flow4);
        }
        return Ok(());
    }
    // Another CPU created it first: count this packet in theirs.
    if let Some(ct) = CT4.get_ptr_mut(&flow) {
        // SAFETY: as above.
        unsafe { refresh_in(ct, ip.proto, tcp_flags, now) };
    }
    Ok(())
}

/// An inbound packet of an existing flow: TCP state, last seen, packet count.
#[inline(always)]
unsafe fn refresh_in(ct: *mut Ct4, proto: u8, tcp_flags: u8, now: u64) {
    // SAFETY: the caller passes a map value pointer; benign races on plain fields.
    unsafe {
        if proto == PROTO_TCP {
            let s = tcp::next(TcpState::from_u8((*ct).state), Dir::In, tcp_flags);
            if s as u8 != (*ct).state {
                (*ct).state = s as u8;
                (*ct).state_ns = now;
            }
        }
        (*ct).last_seen_ns = now;
        (*ct).packets_in += 1;
    }
}

/// The `frag4` key of an inbound datagram's fragments.
#[inline(always)]
fn frag_key_in(ip: &Ip4) -> FragKey4 {
    FragKey4 {
        src: ip.src,
        dst: ip.dst,
        id: ip.id,
        proto: ip.proto,
        dir: 1,
    }
}

/// A non-first fragment for the node's address: it follows its first fragment's translation, or
/// to the stack when that was for the node itself; when the first has not been seen it goes to
/// the daemon, which holds it until then (`punt`), or is dropped without a daemon. Every piece
/// of state involved is bounded (LRU maps, a fixed ring, the daemon's byte cap), so a flood of
/// orphans costs nothing else.
///
/// Why an orphan is dropped rather than left to the kernel's own reassembly when the daemon is
/// off or dead, although that would save the node's own out-of-order datagrams: it may belong to
/// a pod's datagram, and in the node's reassembly queue a forged first fragment toward a node
/// port would complete it into a datagram for a node socket. It would also let an orphan flood
/// (REQ-14a) fill the node's reassembly memory (`ipfrag_high_thresh`), which its own fragmented
/// traffic shares; dropped, a flood costs nothing.
#[inline(always)]
fn later_fragment<C: Ctx + LoadBytes>(ctx: &C, node: &NodeConfig, ip: &Ip4) -> Result<Verdict, Counter> {
    let k = frag_key_in(ip);
    let Some(v) = FRAG4.get_ptr(&k) else {
        return punt::orphan(ctx, node, ip, &k);
    };
    // SAFETY: map value pointer.
    let v = unsafe { *v };
    if is_frag_pass(&v) {
        return Ok(Verdict::Pass(Counter::FragPassed));
    }
    let new = v.new_addr;
    ip::set_addr(ctx, ip.l3, IP_DST, ip.dst, new)?;
    fwd::forward(ctx, node, ip, ip.src, new, Counter::FragTranslated)
}
