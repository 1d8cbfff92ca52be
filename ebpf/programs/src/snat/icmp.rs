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

const VERIFY_CSUM: bool = false;

/// The longest ICMP error whose checksum is verified; a longer one is dropped unverified.
/// RFC 1812 §4.3.2.3 keeps errors within 576 bytes; 1480 is a full 1500-byte datagram.
const ICMP_MAX_LEN: usize = 1480;

/// Whether the ICMP message at `ip.l4` (to the end of the datagram) sums to 0xffff. Router
/// quotes are not trusted: a corrupted error could rewrite a live flow's state at the pod
/// (RFC 5508 REQ-3).
#[inline(always)]
fn checksum_ok(ctx: &impl crate::packet::Packet, ip: &Ip4) -> Result<bool, Counter> {
    if ip.tot_len < ip.l4 - ip.l3 + ICMP_HLEN {
        return Err(Counter::DropMalformed);
    }
    let len = ip.tot_len - (ip.l4 - ip.l3);
    if len > ICMP_MAX_LEN {
        return Ok(false);
    }
    let mut sum: u32 = 0;
    let mut i = 0;
    while i < ICMP_MAX_LEN / 2 {
        if 2 * i + 1 >= len {
            break;
        }
        let p: *const [u8; 2] = ptr_at(ctx, ip.l4 + 2 * i)?;
        // SAFETY: bounds checked by ptr_at.
        sum += u16::from_be_bytes(unsafe { *p }) as u32;
        i += 1;
    }
    if len & 1 == 1 {
        // The odd last byte, padded with zero. Read as the second of a pair: a one-byte bounds
        // check does not give the verifier a usable range.
        let p: *const [u8; 2] = ptr_at(ctx, ip.l4 + len - 2)?;
        // SAFETY: bounds checked by ptr_at.
        sum += (unsafe { (*p)[1] } as u32) << 8;
    }
    Ok(csum::fold(sum) == 0xffff)
}

#[inline(always)]
pub fn error_in<C: Ctx>(ctx: &C, node: &NodeConfig, ip: &Ip4) -> Result<Verdict, Counter> {
    // The embedded header's options are skipped by its own IHL (RFC 5508 REQ-3b).
    let inner = ip::parse(ctx, ip.l4 + ICMP_HLEN)?;
    // The first 8 bytes of the embedded transport header must be there (RFC 792).
    let _: *const [u8; 8] = ptr_at(ctx, inner.l4)?;
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

    if VERIFY_CSUM {
        ctx.pull_all();
        if !checksum_ok(ctx, ip)? {
            return Ok(Verdict::Drop(Counter::DropIcmpBadChecksum));
        }
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
    if let Ok(c) = ip::get_u16(ctx, l4_csum_off) {
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
