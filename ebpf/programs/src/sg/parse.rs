//! What the security groups look at in an IPv6 packet: addresses, the real upper layer behind the
//! extension headers, its ports or ICMPv6 type.

use podgate_common::{
    sg::{
        PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP,
        exthdr::{Bytes, MAX_CHAIN_BYTES},
    },
    stats::Counter,
};

use core::{ffi::c_void, mem::MaybeUninit};

use aya_ebpf::{
    helpers::generated::bpf_xdp_load_bytes,
    programs::{TcContext, XdpContext},
};

use crate::packet::{ETH_HLEN, Packet, ptr_at};

/// Bytes a TC program pulls into the linear area so that the whole walk is readable.
pub const PULL_LEN: usize = ETH_HLEN + 40 + MAX_CHAIN_BYTES + 48 + 48;

/// `N` packet bytes at an offset known only at run time.
pub trait Load: Packet {
    fn load<const N: usize>(&self, off: usize) -> Option<[u8; N]>;
}

impl Load for TcContext {
    #[inline(always)]
    fn load<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        let p: *const [u8; N] = ptr_at(self, off).ok()?;
        // SAFETY: ptr_at checked the bounds; [u8; N] has alignment 1.
        Some(unsafe { *p })
    }
}

/// XDP copies with the helper: in uplink_xdp, LLVM spills a walk offset before its bounds check
/// and reloads it after, and 6.1's verifier then rejects the direct access (6.18 links the two).

impl Load for XdpContext {
    #[inline(always)]
    fn load<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        let mut a = MaybeUninit::<[u8; N]>::uninit();
        // SAFETY: the helper writes at most N bytes into `a`, and all of them when it returns 0.
        unsafe {
            let r = bpf_xdp_load_bytes(self.ctx, off as u32, a.as_mut_ptr() as *mut c_void, N as u32);
            if r == 0 { Some(a.assume_init()) } else { None }
        }
    }
}

/// Packet bytes at offsets computed at run time.
pub struct Buf<'a, C: Load>(pub &'a C);

impl<C: Load> Bytes for Buf<'_, C> {
    #[inline(always)]
    fn read<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        self.0.load::<N>(off)
    }

    #[inline(always)]
    fn opaque(&self, v: u32) -> Option<u32> {
        super::opaque(v)
    }
}

/// The IPv6 header fields the filters need.
pub struct Header {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// End of the IPv6 payload, as an offset from the frame start: bytes beyond it (Ethernet
    /// padding) are never parsed as headers, because the receiver would not see them either.
    pub end: usize,
}

/// `pkt_len`: the full frame length (for TC the skb length, which may exceed the linear part).
#[inline(always)]
pub fn header<C: Packet>(ctx: &C, pkt_len: usize) -> Result<Header, Counter> {
    let h: *const [u8; 8] = ptr_at(ctx, ETH_HLEN)?;
    // SAFETY: bounds checked by ptr_at.
    let h = unsafe { *h };
    if h[0] >> 4 != 6 {
        return Err(Counter::DropMalformed);
    }
    let plen = u16::from_be_bytes([h[4], h[5]]) as usize;
    let end = ETH_HLEN + 40 + plen;
    // A zero payload length announces a jumbogram; podgate does not carry those.
    if plen == 0 || end > pkt_len {
        return Err(Counter::DropMalformed);
    }
    let src: *const [u8; 16] = ptr_at(ctx, ETH_HLEN + 8)?;
    let dst: *const [u8; 16] = ptr_at(ctx, ETH_HLEN + 24)?;
    // SAFETY: bounds checked by ptr_at.
    Ok(Header { src: unsafe { *src }, dst: unsafe { *dst }, end })
}

/// Upper-layer fields. For ICMPv6, `sport` carries the echo identifier.
#[derive(Clone, Copy, Default)]
pub struct L4 {
    pub sport: u16,
    pub dport: u16,
    pub icmp_type: u8,
    pub icmp_code: u8,
    pub tcp_flags: u8,
}

/// `off`: where the upper-layer header starts; the walk has checked that its filtered part lies
/// before `end`.
#[inline(always)]
pub fn l4<B: Bytes + ?Sized>(b: &B, proto: u8, off: usize) -> Result<L4, Counter> {
    let mut l = L4::default();
    match proto {
        PROTO_TCP | PROTO_UDP | PROTO_SCTP => {
            let p = b.read::<4>(off).ok_or(Counter::DropMalformed)?;
            l.sport = u16::from_be_bytes([p[0], p[1]]);
            l.dport = u16::from_be_bytes([p[2], p[3]]);
            if proto == PROTO_TCP {
                l.tcp_flags = b.read::<1>(off + 13).ok_or(Counter::DropMalformed)?[0];
            }
        }
        PROTO_ICMPV6 => {
            let p = b.read::<8>(off).ok_or(Counter::DropMalformed)?;
            l.icmp_type = p[0];
            l.icmp_code = p[1];
            l.sport = u16::from_be_bytes([p[4], p[5]]);
        }
        _ => {}
    }
    Ok(l)
}

/// The invoking packet inside an ICMPv6 error at `off` (the error's body): its addresses, next
/// header and first 8 upper-layer bytes. Extension headers inside the quote are not walked, so
/// such errors fall back to the rules.
pub struct Inner {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub proto: u8,
    pub l4: L4,
}

#[inline(always)]
pub fn inner<B: Bytes + ?Sized>(b: &B, off: usize, end: usize) -> Option<Inner> {
    if off + 48 > end {
        return None;
    }
    let nh = b.read::<1>(off + 6)?[0];
    if !matches!(nh, PROTO_TCP | PROTO_UDP | PROTO_SCTP | PROTO_ICMPV6) {
        return None;
    }
    let src = b.read::<16>(off + 8)?;
    let dst = b.read::<16>(off + 24)?;
    let p = b.read::<8>(off + 40)?;
    let mut l = L4::default();
    if nh == PROTO_ICMPV6 {
        l.icmp_type = p[0];
        l.icmp_code = p[1];
        l.sport = u16::from_be_bytes([p[4], p[5]]);
    } else {
        l.sport = u16::from_be_bytes([p[0], p[1]]);
        l.dport = u16::from_be_bytes([p[2], p[3]]);
    }
    Some(Inner { src, dst, proto: nh, l4: l })
}
