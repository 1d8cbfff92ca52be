//! ICMP errors about translated packets (RFC 5508 §4, RFC 5382 REQ-9/10).
//!
//! The error embeds the packet as it left the node (source = node address, external port). The
//! embedded source, its port, the embedded checksums and the outer destination go back to the
//! pod's values; type, code and the rest (the next-hop MTU of 3/4 included) stay untouched. No
//! mapping or flow is refreshed or ended by an error (RFC 4787 REQ-12, RFC 5508 REQ-6).

use podgate_common::{
    NodeConfig, csum,
    nat::{PROTO_ICMP, PROTO_TCP, PROTO_UDP},
    stats::Counter,
};

use super::{
    Ctx, fwd,
    ip::{self, IP_CSUM, IP_DST, IP_SRC, Ip4},
    reverse::owner,
};
use crate::{packet::ptr_at, verdict::Verdict};

const ICMP_HLEN: usize = 8;

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
    if ip.tot_len < hlen + ICMP_HLEN {
        return Err(Counter::DropMalformed);
    }
    let len = ip.tot_len - hlen;
    if len > ICMP_MAX_LEN {
        return Ok(false);
    }
    Ok(csum::fold(ctx.sum16(ip.l4, len)?) == 0xffff)
}

#[inline(always)]
pub fn error_in<C: Ctx>(ctx: &C, node: &NodeConfig, ip: &Ip4) -> Result<Verdict, Counter> {
    // The embedded header's options are skipped by its own IHL (RFC 5508 REQ-3b).
    let inner = ip::parse(ctx, ip.l4 + ICMP_HLEN)?;
    // The first 8 bytes of the embedded transport header must be there (RFC 792), inside the
    // ICMP message: everything rewritten below is covered by its checksum.
    let _: *const [u8; 8] = ptr_at(ctx, inner.l4)?;
    if inner.l4 + 8 > ip.l3 + ip.tot_len {
        return Err(Counter::DropMalformed);
    }
    if inner.src != node.ipv4 {
        return Ok(Verdict::Drop(Counter::DropIcmpNoMapping));
    }
    let (port_off, l4_csum_off) = match inner.proto {
        PROTO_TCP => (inner.l4, inner.l4 + 16),
        PROTO_UDP => (inner.l4, inner.l4 + 6),
        PROTO_ICMP => {
            // Only an echo request of ours can be the subject of an error we translate.
            if ip::get_u8(ctx, inner.l4)? != 8 {
                return Ok(Verdict::Drop(Counter::DropIcmpNoMapping));
            }
            (inner.l4 + 4, inner.l4 + 2)
        }
        _ => return Ok(Verdict::Drop(Counter::DropIcmpNoMapping)),
    };
    let ext = ip::get_u16(ctx, port_off)?;
    let Some(ep) = owner(inner.proto, ext, inner.dst) else {
        return Ok(Verdict::Drop(Counter::DropIcmpNoMapping));
    };

    if !checksum_ok(ctx, ip)? {
        return Ok(Verdict::Drop(Counter::DropIcmpBadChecksum));
    }

    // Every change inside the ICMP message is folded into its checksum as it is made.
    let icmp_csum_off = ip.l4 + 2;
    let mut ic = ip::get_u16(ctx, icmp_csum_off)?;

    let old_ipc = ip::get_u16(ctx, inner.l3 + IP_CSUM)?;
    ip::set_addr(ctx, inner.l3, IP_SRC, node.ipv4, ep.addr)?;
    let new_ipc = ip::get_u16(ctx, inner.l3 + IP_CSUM)?;
    ic = csum::update32(ic, node.ipv4, ep.addr);
    ic = csum::update16(ic, old_ipc, new_ipc);

    ip::set_u16(ctx, port_off, ep.port)?;
    ic = csum::update16(ic, ext, ep.port);

    // The embedded transport checksum is fixed when the router quoted it (a TCP one usually is
    // not: only 8 bytes are guaranteed). It is never verified (REQ-3c).
    // Only inside the quoted datagram: bytes after it (Ethernet padding, trailers) are not part
    // of the ICMP message, and changing them would break its checksum.
    let in_quote = l4_csum_off + 2 <= ip.l3 + ip.tot_len;
    if let Ok(c) = ip::get_u16(ctx, l4_csum_off)
        && in_quote
    {
        let new = match inner.proto {
            PROTO_ICMP => csum::update16(c, ext, ep.port),
            PROTO_UDP => csum::udp_fix(c, csum::update16(csum::update32(c, node.ipv4, ep.addr), ext, ep.port)),
            _ => csum::update16(csum::update32(c, node.ipv4, ep.addr), ext, ep.port),
        };
        ip::set_u16(ctx, l4_csum_off, new)?;
        ic = csum::update16(ic, c, new);
    }
    ip::set_u16(ctx, icmp_csum_off, ic)?;

    // The outer header has no pseudo-header in the ICMP checksum.
    ip::set_addr(ctx, ip.l3, IP_DST, ip.dst, ep.addr)?;
    fwd::forward(ctx, node, ip, ip.src, ep.addr, Counter::IcmpErrorTranslated)
}
