//! A bounded walk of the IPv6 extension-header chain to the real upper-layer header.
//!
//! Filtering on the first next-header value alone would let a denied TCP port through behind a
//! hop-by-hop or destination-options header, so every rule matches what this walk finds. What it
//! cannot parse within its bounds is an error (a counted drop), never a pass.

use crate::stats::Counter;

/// Extension headers walked before giving up (RFC 7045 leaves the limit to the implementation;
/// real traffic carries one or two).
pub const MAX_EXT_HEADERS: usize = 6;
/// The walk never looks further than this into the packet: it keeps offsets small for the
/// verifier and bounds the work an attacker can ask for.
pub const MAX_CHAIN_BYTES: usize = 512;

pub const NH_HOP_BY_HOP: u8 = 0;
pub const NH_ROUTING: u8 = 43;
pub const NH_FRAGMENT: u8 = 44;
pub const NH_AH: u8 = 51;
pub const NH_DEST_OPTS: u8 = 60;

/// Bytes readable at an offset: a packet for the programs, a slice on the host.
pub trait Bytes {
    /// `N` bytes at `off`, or `None` past the end.
    fn read<const N: usize>(&self, off: usize) -> Option<[u8; N]>;

    /// The identity. The programs use it to forget what the verifier knows about a value, so
    /// that the walk's paths converge instead of multiplying (see `find_range`).
    #[inline(always)]
    fn opaque(&self, v: u32) -> Option<u32> {
        Some(v)
    }
}

impl Bytes for [u8] {
    fn read<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        let s = self.get(off..off.checked_add(N)?)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Some(a)
    }
}

/// Where the packet stands in fragmentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frag {
    /// Not fragmented (or an atomic fragment, RFC 6946).
    None,
    /// Offset 0, more fragments follow. `hdr_end`: bytes of the fragmentable part covered by the
    /// headers up to and including the upper-layer header.
    First { id: u32, hdr_end: u16 },
    /// Offset (in bytes) > 0: no upper-layer header in this packet.
    NonFirst { id: u32, offset: u16 },
}

/// The upper layer of an IPv6 packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Upper {
    pub proto: u8,
    /// Offset of the upper-layer header from the start of the buffer (meaningless for
    /// `Frag::NonFirst`).
    pub off: usize,
    pub frag: Frag,
}

/// Bytes of the upper-layer header that must be present to filter it: TCP's fixed header, UDP's,
/// and the ICMPv6 header with its identifier (or the first word of an error's body).
pub const fn upper_header_len(proto: u8) -> usize {
    match proto {
        6 => 20,
        17 => 8,
        58 => 8,
        132 => 12,
        _ => 0,
    }
}

/// Walks the chain of the IPv6 header at `ip_off`. `end` is where the IPv6 payload ends (the
/// caller takes the smaller of the buffer end and the payload length, so that bytes in the
/// Ethernet padding are never read as headers).
#[inline(always)]
pub fn walk<B: Bytes + ?Sized>(b: &B, ip_off: usize, end: usize) -> Result<Upper, Counter> {
    let mut off = (ip_off + 40) as u32;
    let nh0 = b.read::<1>(ip_off + 6).ok_or(Counter::DropMalformed)?;
    let mut nh = nh0[0];
    // Start of the fragmentable part once a first fragment's header was seen, else 0.
    let mut frag_part = 0u32;
    let mut frag_id = 0u32;
    let mut i = 0;
    while i <= MAX_EXT_HEADERS {
        off = b.opaque(off).ok_or(Counter::DropInternalError)?;
        frag_part = b.opaque(frag_part).ok_or(Counter::DropInternalError)?;
        if off as usize > ip_off + MAX_CHAIN_BYTES || frag_part > off {
            return Err(Counter::DropExtHdrChain);
        }
        let o = off as usize;
        // A missing header is a tiny first fragment (RFC 7112) once a fragment header was seen.
        let short = if frag_part != 0 { Counter::DropTinyFragment } else { Counter::DropExtHdrChain };
        let len = match nh {
            NH_HOP_BY_HOP | NH_DEST_OPTS | NH_ROUTING | NH_AH => {
                if nh == NH_HOP_BY_HOP && i != 0 {
                    // RFC 8200 §4.1: only right after the IPv6 header.
                    return Err(Counter::DropExtHdrChain);
                }
                let h = read_within::<4, B>(b, o, end).ok_or(short)?;
                if nh == NH_ROUTING && h[2] == 0 {
                    return Err(Counter::DropRoutingType0);
                }
                let len = if nh == NH_AH { (h[1] as u32 + 2) * 4 } else { (h[1] as u32 + 1) * 8 };
                nh = h[0];
                len
            }
            NH_FRAGMENT => {
                if frag_part != 0 {
                    return Err(Counter::DropExtHdrChain);
                }
                let h = read_within::<8, B>(b, o, end).ok_or(short)?;
                let off_flags = u16::from_be_bytes([h[2], h[3]]);
                let offset = off_flags & 0xfff8;
                let more = off_flags & 1 != 0;
                let id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                nh = h[0];
                if offset != 0 {
                    return Ok(Upper { proto: nh, off: o + 8, frag: Frag::NonFirst { id, offset } });
                }
                if more {
                    frag_part = off + 8;
                    frag_id = id;
                }
                8
            }
            _ => {
                let need = upper_header_len(nh);
                if o + need > end || b.read::<1>(o + need.saturating_sub(1)).is_none() {
                    return Err(if frag_part == 0 { Counter::DropMalformed } else { short });
                }
                let frag = if frag_part != 0 {
                    Frag::First { id: frag_id, hdr_end: (o + need - frag_part as usize) as u16 }
                } else {
                    Frag::None
                };
                return Ok(Upper { proto: nh, off: o, frag });
            }
        };
        // A header running past the payload: the rest of the chain is not here.
        if o + len as usize > end {
            return Err(short);
        }
        off += len;
        i += 1;
    }
    Err(Counter::DropExtHdrChain)
}

#[inline(always)]
fn read_within<const N: usize, B: Bytes + ?Sized>(b: &B, off: usize, end: usize) -> Option<[u8; N]> {
    if off + N > end {
        return None;
    }
    b.read::<N>(off)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    /// An IPv6 header followed by `chain` (next header, raw bytes after its first byte).
    fn packet(first: u8, chain: &[(u8, Vec<u8>)], upper: &[u8]) -> Vec<u8> {
        let mut p = std::vec![0u8; 40];
        p[0] = 0x60;
        p[6] = first;
        for (nh, rest) in chain {
            p.push(*nh);
            p.extend_from_slice(rest);
        }
        p.extend_from_slice(upper);
        let plen = (p.len() - 40) as u16;
        p[4..6].copy_from_slice(&plen.to_be_bytes());
        p
    }

    fn opts(len8: u8) -> Vec<u8> {
        let mut v = std::vec![len8];
        v.extend(std::iter::repeat_n(0u8, 6 + len8 as usize * 8));
        v
    }

    fn frag(offset: u16, more: bool, id: u32) -> Vec<u8> {
        let mut v = std::vec![0u8];
        v.extend_from_slice(&(offset | more as u16).to_be_bytes());
        v.extend_from_slice(&id.to_be_bytes());
        v
    }

    fn walk_all(p: &[u8]) -> Result<Upper, Counter> {
        walk(p, 0, p.len())
    }

    const TCP: [u8; 20] = [0x30, 0x39, 0, 22, 0, 0, 0, 0, 0, 0, 0, 0, 0x50, 2, 0, 0, 0, 0, 0, 0];

    #[test]
    fn plain_and_behind_options() {
        let p = packet(6, &[], &TCP);
        assert_eq!(walk_all(&p), Ok(Upper { proto: 6, off: 40, frag: Frag::None }));
        let p = packet(0, &[(60, opts(0)), (6, opts(1))], &TCP);
        assert_eq!(walk_all(&p), Ok(Upper { proto: 6, off: 40 + 8 + 16, frag: Frag::None }));
    }

    #[test]
    fn routing_type0_and_misplaced_hop_by_hop() {
        let mut rh = std::vec![0u8, 0, 1, 0, 0, 0, 0];
        let p = packet(43, &[(6, rh.clone())], &TCP);
        assert_eq!(walk_all(&p), Err(Counter::DropRoutingType0));
        rh[1] = 2; // type 2 (mobile IPv6) is walked through
        assert_eq!(walk_all(&packet(43, &[(6, rh)], &TCP)).unwrap().proto, 6);
        let p = packet(60, &[(0, opts(0)), (6, opts(0))], &TCP);
        assert_eq!(walk_all(&p), Err(Counter::DropExtHdrChain));
    }

    #[test]
    fn chain_too_long() {
        let chain: Vec<(u8, Vec<u8>)> = (0..7).map(|i| (if i == 6 { 6 } else { 60 }, opts(0))).collect();
        assert_eq!(walk_all(&packet(60, &chain, &TCP)), Err(Counter::DropExtHdrChain));
        let chain: Vec<(u8, Vec<u8>)> = (0..6).map(|i| (if i == 5 { 6 } else { 60 }, opts(0))).collect();
        assert_eq!(walk_all(&packet(60, &chain, &TCP)).unwrap().proto, 6);
        // An options header claiming more bytes than the payload holds.
        let p = packet(60, &[(6, opts(3))], &[]);
        assert_eq!(walk(&p[..], 0, p.len() - 1), Err(Counter::DropExtHdrChain));
        let p = packet(44, &[(60, frag(0, true, 1)), (6, opts(3))], &[]);
        assert_eq!(walk(&p[..], 0, p.len() - 1), Err(Counter::DropTinyFragment));
    }

    #[test]
    fn fragments() {
        let p = packet(44, &[(6, frag(0, true, 7))], &TCP);
        assert_eq!(walk_all(&p), Ok(Upper { proto: 6, off: 48, frag: Frag::First { id: 7, hdr_end: 20 } }));
        // Tiny first fragment: the TCP header is cut.
        let p = packet(44, &[(6, frag(0, true, 7))], &TCP[..8]);
        assert_eq!(walk_all(&p), Err(Counter::DropTinyFragment));
        // The chain continues past the first fragment: the options header is then missing.
        let p = packet(44, &[(60, frag(0, true, 7))], &[]);
        assert_eq!(walk_all(&p), Err(Counter::DropTinyFragment));
        let p = packet(44, &[(6, frag(16, false, 7))], &TCP[..8]);
        assert_eq!(walk_all(&p).unwrap().frag, Frag::NonFirst { id: 7, offset: 16 });
        // Atomic fragment: a whole packet.
        let p = packet(44, &[(6, frag(0, false, 7))], &TCP);
        assert_eq!(walk_all(&p).unwrap().frag, Frag::None);
        // Two fragment headers.
        let p = packet(44, &[(44, frag(0, true, 7)), (6, frag(0, true, 8))], &TCP);
        assert_eq!(walk_all(&p), Err(Counter::DropExtHdrChain));
    }

    #[test]
    fn padding_is_not_a_header() {
        // The TCP header lies beyond the payload length (e.g. in Ethernet padding).
        let mut p = packet(6, &[], &[]);
        p.extend_from_slice(&TCP);
        assert_eq!(walk(&p[..], 0, 40), Err(Counter::DropMalformed));
        let mut p = packet(44, &[(6, frag(0, true, 9))], &[]);
        let end = p.len();
        p.extend_from_slice(&TCP);
        assert_eq!(walk(&p[..], 0, end), Err(Counter::DropTinyFragment));
    }

    proptest::proptest! {
        /// Garbage never panics and whatever is found lies within the buffer.
        #[test]
        fn garbage_is_bounded(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 40..600)) {
            if let Ok(u) = walk(&bytes[..], 0, bytes.len())
                && !matches!(u.frag, Frag::NonFirst { .. })
            {
                proptest::prop_assert!(u.off + upper_header_len(u.proto) <= bytes.len());
            }
        }
    }
}
