//! ICMP errors back to a pod, built in the dropped packet's own skb: 3/13 (communication
//! administratively prohibited) when its packet could not get a mapping (RFC 5508 REQ-8), 3/4
//! (fragmentation needed, with the next-hop MTU) when it has DF set and is too big for the uplink
//! (RFC 4787 REQ-13), 11/0 (TTL exceeded in transit) when its TTL ends at this hop (RFC 5508
//! REQ-10, §7.2). The stack cannot send them once the source is translated: it would address
//! them to the node. Their source is the pods' gateway, the hop the pod routes through. The skb
//! keeps 28 bytes of room after Ethernet for a new IPv4 + ICMP header, the original IPv4 header
//! (options included) and 8 bytes of its transport header stay in place as the quote, the rest is
//! cut, and the skb goes back out of the pod's veth.

use aya_ebpf::{
    bindings::{TC_ACT_REDIRECT, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC},
    helpers::bpf_skb_change_tail,
    programs::TcContext,
};
use podgate_common::{NodeConfig, csum, stats::Counter};

use super::ip::Ip4;
use crate::packet::{ETH_HLEN, ptr_at, ptr_at_mut};

const NEW_HDRS: usize = 20 + 8;
/// Longest ICMP message: header + IPv4 header with options + 8 bytes.
const MAX_ICMP: usize = 8 + 60 + 8;

/// The node's address on the pod side: the first address of the pod range (the pods' default
/// gateway, 169.254.172.1 in EKS).
#[inline(always)]
fn gateway(node: &NodeConfig) -> [u8; 4] {
    let mut g = node.pod_ipv4_net;
    g[3] |= 1;
    g
}

pub const CODE_FRAG_NEEDED: u8 = 4;
pub const CODE_ADMIN_PROHIBITED: u8 = 13;

/// Turns the packet into a `ty`/`code` error (`mtu`: the next-hop MTU of a 3/4, else 0) and
/// redirects it to the pod. On any failure the caller just drops (the error is best effort; the
/// drop is what matters).
#[inline(always)]
pub fn send(ctx: &TcContext, node: &NodeConfig, ip: &Ip4, ty: u8, code: u8, mtu: u16) -> Result<u32, Counter> {
    let quote = (ip.l4 - ETH_HLEN) + 8;
    let icmp_len = 8 + quote;
    let total = ETH_HLEN + 20 + icmp_len;
    // MACs swap: the error goes back where the packet came from.
    let eth: *const [u8; 12] = ptr_at(ctx, 0)?;
    // SAFETY: bounds checked by ptr_at.
    let eth = unsafe { *eth };
    // RFC 5508 §7.7: the error keeps the DS field (diffserv class) of the packet that caused it,
    // so it is queued like the pod's traffic; the ECN bits are not carried over (RFC 3168 §5).
    let ds = super::ip::get_u8(ctx, ip.l3 + 1)? & 0xfc;
    ctx.adjust_room(NEW_HDRS as i32, BPF_ADJ_ROOM_MAC, 0)
        .map_err(|_| Counter::DropInternalError)?;
    // SAFETY: plain helper call on our skb.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, total as u32, 0) } != 0 {
        return Err(Counter::DropInternalError);
    }
    if ctx.data_end() - ctx.data() < total {
        let _ = ctx.pull_data(total as u32);
    }

    let e: *mut [u8; 14] = ptr_at_mut(ctx, 0)?;
    let mut ne = [0u8; 14];
    ne[..6].copy_from_slice(&eth[6..12]);
    ne[6..12].copy_from_slice(&eth[..6]);
    ne[12] = 0x08;
    ne[13] = 0x00;

    let tot_len = (20 + icmp_len) as u16;
    let src = gateway(node);
    let mut h = [0u8; 20];
    h[0] = 0x45;
    h[1] = ds;
    h[2..4].copy_from_slice(&tot_len.to_be_bytes());
    h[8] = 64;
    h[9] = 1;
    h[12..16].copy_from_slice(&src);
    h[16..20].copy_from_slice(&ip.src);
    let mut s = 0u32;
    let mut i = 0;
    while i < 20 {
        s += u16::from_be_bytes([h[i], h[i + 1]]) as u32;
        i += 2;
    }
    let c = !csum::fold(s);
    h[10..12].copy_from_slice(&c.to_be_bytes());

    let hp: *mut [u8; 20] = ptr_at_mut(ctx, ETH_HLEN)?;
    let icmp: *mut [u8; 8] = ptr_at_mut(ctx, ETH_HLEN + 20)?;
    // SAFETY: bounds checked by ptr_at_mut.
    unsafe {
        *e = ne;
        *hp = h;
        let m = mtu.to_be_bytes();
        *icmp = [ty, code, 0, 0, 0, 0, m[0], m[1]];
    }

    // ICMP checksum over header + quote, word by word within the bounds.
    let base = ETH_HLEN + 20;
    let mut s = 0u32;
    let mut off = 0;
    while off < MAX_ICMP {
        if off + 2 > icmp_len {
            break;
        }
        let w: *const [u8; 2] = ptr_at(ctx, base + off)?;
        s += u16::from_be_bytes(unsafe { *w }) as u32;
        off += 2;
    }
    // The quote has an even length (IHL*4 + 8), so no odd byte is left.
    let c: *mut [u8; 2] = ptr_at_mut(ctx, base + 2)?;
    unsafe { *c = (!csum::fold(s)).to_be_bytes() };

    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: plain helper call; out of the pod's host veth means into the pod.
    let rc = unsafe { aya_ebpf::helpers::bpf_redirect(ifindex, 0) };
    if rc != TC_ACT_REDIRECT as i64 {
        return Err(Counter::DropInternalError);
    }
    Ok(ifindex)
}
