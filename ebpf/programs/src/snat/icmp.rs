//! ICMP errors about translated packets (RFC 5508 §4-5, RFC 5382 REQ-9/10).
//!
//! An error embeds the packet it is about. Inbound, that is a packet as it left the node (source
//! = node address, external port): the embedded source, its port, the embedded checksums and the
//! outer destination go back to the pod's values. Outbound (a pod answering an inbound packet
//! with an error), the embedded destination and port and the outer source become the node's.
//! Type, code and the rest (the next-hop MTU of 3/4 included) stay untouched. No mapping or flow
//! is refreshed or ended by an error (RFC 4787 REQ-12, RFC 5508 REQ-6, RFC 7857 §7.1).

use podgate_common::{
    NodeConfig, csum,
    nat::{Flow4, PROTO_ICMP, PROTO_TCP, PROTO_UDP},
    stats::Counter,
};

use super::{
    Ctx, fwd,
    ip::{self, IP_CSUM, IP_DST, IP_SRC, Ip4},
    reverse::owner,
};
use crate::{maps::CT4, packet::ptr_at, verdict::Verdict};

const ICMP_HLEN: usize = 8;

/// The embedded packet of an ICMP error and where its translated fields sit.
struct Embedded {
    ip: Ip4,
    /// The first 8 bytes of the embedded transport header (ports, or ICMP type/code/id).
    head: [u8; 8],
    /// Offset of the embedded transport checksum (may lie beyond what the router quoted).
    l4_csum_off: usize,
}

/// Parses the embedded header; its options are skipped by its own IHL (RFC 5508 REQ-3b) and the
/// first 8 bytes of its transport header must be there (RFC 792).
#[inline(always)]
fn embedded(ctx: &impl Ctx, outer: &Ip4) -> Result<Embedded, Counter> {
    let inner = ip::parse(ctx, outer.l4 + ICMP_HLEN)?;
    let head: *const [u8; 8] = ptr_at(ctx, inner.l4)?;
    // Inside the ICMP message, not only inside the frame: everything rewritten is covered by
    // its checksum, and bytes after the datagram are padding.
    if inner.l4 + 8 > outer.l3 + outer.tot_len as usize {
        return Err(Counter::DropMalformed);
    }
    // SAFETY: bounds checked by ptr_at.
    let head = unsafe { *head };
    let l4_csum_off = match inner.proto {
        PROTO_TCP => inner.l4 + 16,
        PROTO_UDP => inner.l4 + 6,
        PROTO_ICMP => inner.l4 + 2,
        _ => return Err(Counter::DropIcmpNoMapping),
    };
    Ok(Embedded {
        ip: inner,
        head,
        l4_csum_off,
    })
}

/// Rewrites one address (`field` of the embedded header) and the port at `port_off`, fixing the
/// embedded IPv4 checksum, the embedded transport checksum when it was quoted (never verified:
/// REQ-3c) and, for every change inside the ICMP message, the ICMP checksum.
#[inline(always)]
fn rewrite_embedded(
    ctx: &impl Ctx,
    outer: &Ip4,
    e: &Embedded,
    field: usize,
    old: [u8; 4],
    new: [u8; 4],
    port_off: usize,
    old_port: u16,
    new_port: u16,
) -> Result<(), Counter> {
    let icmp_csum_off = outer.l4 + 2;
    let mut ic = ip::get_u16(ctx, icmp_csum_off)?;

    let old_ipc = ip::get_u16(ctx, e.ip.l3 + IP_CSUM)?;
    ip::set_addr(ctx, e.ip.l3, field, old, new)?;
    let new_ipc = ip::get_u16(ctx, e.ip.l3 + IP_CSUM)?;
    ic = csum::update32(ic, old, new);
    ic = csum::update16(ic, old_ipc, new_ipc);

    ip::set_u16(ctx, port_off, new_port)?;
    ic = csum::update16(ic, old_port, new_port);

    // Only inside the quoted datagram: changing bytes after it (Ethernet padding, a trailer)
    // would break the ICMP checksum.
    let in_quote = e.l4_csum_off + 2 <= outer.l3 + outer.tot_len as usize;
    if let Ok(c) = ip::get_u16(ctx, e.l4_csum_off)
        && in_quote
    {
        let n = match e.ip.proto {
            // No pseudo-header in ICMP.
            PROTO_ICMP => csum::update16(c, old_port, new_port),
            PROTO_UDP => csum::udp_fix(
                c,
                csum::update16(csum::update32(c, old, new), old_port, new_port),
            ),
            _ => csum::update16(csum::update32(c, old, new), old_port, new_port),
        };
        ip::set_u16(ctx, e.l4_csum_off, n)?;
        ic = csum::update16(ic, c, n);
    }
    ip::set_u16(ctx, icmp_csum_off, ic)
}

/// The longest ICMP error whose checksum is verified (one step per 16-bit word); a longer one
/// is dropped as unverifiable. RFC 1812 §4.3.2.3 keeps errors within 576 bytes; 1480 is a
/// whole 1500-byte datagram.
const ICMP_MAX_LEN: usize = 1480;

/// Whether the ICMP message at `ip.l4` (to the end of the datagram) sums to 0xffff. Router
/// quotes are not trusted: a corrupted error must not rewrite a live flow's state at the pod
/// (RFC 5508 REQ-3).
#[inline(always)]
fn checksum_ok<C: Ctx>(ctx: &C, ip: &Ip4) -> Result<bool, Counter> {
    let hlen = ip.l4 - ip.l3;
    let tot = ip.tot_len as usize;
    if tot < hlen + ICMP_HLEN {
        return Err(Counter::DropMalformed);
    }
    let len = tot - hlen;
    if len > ICMP_MAX_LEN {
        return Ok(false);
    }
    Ok(csum::fold(ctx.sum16(ip.l4, len)?) == 0xffff)
}

/// An error from outside about a packet the node sent for a pod.
#[inline(always)]
pub fn error_in<C: Ctx>(ctx: &C, node: &NodeConfig, ip: &Ip4) -> Result<Verdict, Counter> {
    let e = match embedded(ctx, ip) {
        Ok(e) => e,
        Err(Counter::DropIcmpNoMapping) => return Ok(Verdict::Drop(Counter::DropIcmpNoMapping)),
        Err(c) => return Err(c),
    };
    if e.ip.src != node.ipv4 {
        return Ok(Verdict::Drop(Counter::DropIcmpNoMapping));
    }
    // Read from the copy: a second packet read at the same variable offset gets its bounds check
    // merged away by LLVM, and the verifier then rejects it.
    let (port_off, ext) = match e.ip.proto {
        // Only an echo request of ours can be the subject of an error we translate.
        PROTO_ICMP if e.head[0] != 8 => return Ok(Verdict::Drop(Counter::DropIcmpNoMapping)),
        PROTO_ICMP => (e.ip.l4 + 4, u16::from_be_bytes([e.head[4], e.head[5]])),
        _ => (e.ip.l4, u16::from_be_bytes([e.head[0], e.head[1]])),
    };
    let Some(ep) = owner(e.ip.proto, ext, e.ip.dst) else {
        return Ok(Verdict::Drop(Counter::DropIcmpNoMapping));
    };
    if !checksum_ok(ctx, ip)? {
        return Ok(Verdict::Drop(Counter::DropIcmpBadChecksum));
    }
    // RFC 5508 REQ-3a: a valid ICMP checksum over a quote whose IPv4 header does not sum means
    // the quote was corrupted before the checksum was made; its addresses cannot be trusted.
    if csum::fold(ctx.sum16(e.ip.l3, e.ip.l4 - e.ip.l3)?) != 0xffff {
        return Ok(Verdict::Drop(Counter::DropIcmpBadChecksum));
    }
    rewrite_embedded(
        ctx, ip, &e, IP_SRC, node.ipv4, ep.addr, port_off, ext, ep.port,
    )?;
    ip::set_addr(ctx, ip.l3, IP_DST, ip.dst, ep.addr)?;
    fwd::forward(ctx, node, ip, ip.src, ep.addr, Counter::IcmpErrorTranslated)
}

/// An error from a pod about a packet it received through the NAT (RFC 5508 REQ-5): TCP and
/// UDP flows only (an error about an ICMP query reply has no use outside).
#[inline(always)]
pub fn error_out<C: Ctx>(ctx: &C, node: &NodeConfig, ip: &Ip4) -> Result<Verdict, Counter> {
    let e = match embedded(ctx, ip) {
        Ok(e) => e,
        Err(Counter::DropIcmpNoMapping) => return Ok(Verdict::Drop(Counter::DropIcmpNoMapping)),
        Err(c) => return Err(c),
    };
    if e.ip.dst != ip.src || e.ip.proto == PROTO_ICMP {
        return Ok(Verdict::Drop(Counter::DropIcmpNoMapping));
    }
    let remote_port = u16::from_be_bytes([e.head[0], e.head[1]]);
    let pod_port = u16::from_be_bytes([e.head[2], e.head[3]]);
    let flow = Flow4 {
        pod_addr: e.ip.dst,
        remote_addr: e.ip.src,
        pod_port,
        remote_port,
        proto: e.ip.proto,
        _pad: [0; 3],
    };
    let Some(ct) = CT4.get_ptr(&flow) else {
        return Ok(Verdict::Drop(Counter::DropIcmpNoMapping));
    };
    // SAFETY: map value pointer.
    let ext = unsafe { (*ct).ext_port };
    rewrite_embedded(
        ctx,
        ip,
        &e,
        IP_DST,
        e.ip.dst,
        node.ipv4,
        e.ip.l4 + 2,
        pod_port,
        ext,
    )?;
    ip::set_addr(ctx, ip.l3, IP_SRC, ip.src, node.ipv4)?;
    fwd::forward(
        ctx,
        node,
        ip,
        node.ipv4,
        ip.dst,
        Counter::IcmpErrorTranslated,
    )
}
