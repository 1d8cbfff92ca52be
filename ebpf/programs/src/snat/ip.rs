//! IPv4 header parsing and the rewrites every translation shares.

use podgate_common::{csum, stats::Counter};

use crate::packet::{ETH_HLEN, Packet, ptr_at, ptr_at_mut};

/// Offsets inside the IPv4 header.
pub const IP_CSUM: usize = 10;
/// "Don't fragment" in the flags/offset word.
pub const IP_DF: u16 = 0x4000;
pub const IP_SRC: usize = 12;
pub const IP_DST: usize = 16;

/// More-fragments flag and the offset mask of the flags/offset word.
const IP_MF: u16 = 0x2000;
const IP_OFFSET: u16 = 0x1fff;

/// The fields of an IPv4 header the translation needs. `l4` is the offset of the transport
/// header from the start of the frame: IHL*4 (options included, at most 60 bytes).
#[derive(Clone, Copy)]
pub struct Ip4 {
    pub l3: usize,
    pub l4: usize,
    pub proto: u8,
    pub ttl: u8,
    /// Total length from the header.
    pub tot_len: u16,
    pub id: u16,
    pub frag: u16,
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

impl Ip4 {
    /// A fragment that is not the first one: no transport header inside.
    #[inline(always)]
    pub fn is_later_fragment(&self) -> bool {
        self.frag & IP_OFFSET != 0
    }

    /// The first fragment of a fragmented datagram.
    #[inline(always)]
    pub fn is_first_fragment(&self) -> bool {
        self.frag & IP_MF != 0 && self.frag & IP_OFFSET == 0
    }
}

/// Parses the IPv4 header at `l3`. Anything that is not a well-formed IPv4 header within the
/// packet is `DropMalformed`.
#[inline(always)]
pub fn parse(ctx: &impl Packet, l3: usize) -> Result<Ip4, Counter> {
    let h: *const [u8; 20] = ptr_at(ctx, l3)?;
    // SAFETY: bounds checked by ptr_at.
    let b = unsafe { *h };
    if b[0] >> 4 != 4 {
        return Err(Counter::DropMalformed);
    }
    let ihl = ((b[0] & 0x0f) as usize) << 2;
    let tot_len = u16::from_be_bytes([b[2], b[3]]) as usize;
    if ihl < 20 || tot_len < ihl {
        return Err(Counter::DropMalformed);
    }
    // The options must be inside the packet too (REQ-3b: skipped, never misread as L4).
    if ctx.start() + l3 + ihl > ctx.end() {
        return Err(Counter::DropMalformed);
    }
    Ok(Ip4 {
        l3,
        l4: l3 + ihl,
        proto: b[9],
        ttl: b[8],
        tot_len: tot_len as u16,
        id: u16::from_be_bytes([b[4], b[5]]),
        frag: u16::from_be_bytes([b[6], b[7]]),
        src: [b[12], b[13], b[14], b[15]],
        dst: [b[16], b[17], b[18], b[19]],
    })
}

/// Parses the frame's IPv4 header (right after Ethernet). A datagram longer than the packet
/// (truncated, or a lying total length) is `DropMalformed`: the stack would discard it, so it
/// must not create state. (An embedded header legitimately describes more than the quote.)
#[inline(always)]
pub fn parse_outer(ctx: &impl Packet) -> Result<Ip4, Counter> {
    let ip = parse(ctx, ETH_HLEN)?;
    if ETH_HLEN + ip.tot_len as usize > ctx.total_len() {
        return Err(Counter::DropMalformed);
    }
    Ok(ip)
}

/// Writes a new address at `l3 + field` (IP_SRC or IP_DST) and fixes the IPv4 header checksum.
/// The L4 checksum is the caller's business.
#[inline(always)]
pub fn set_addr(
    ctx: &impl Packet,
    l3: usize,
    field: usize,
    old: [u8; 4],
    new: [u8; 4],
) -> Result<(), Counter> {
    let a: *mut [u8; 4] = ptr_at_mut(ctx, l3 + field)?;
    let c: *mut [u8; 2] = ptr_at_mut(ctx, l3 + IP_CSUM)?;
    // SAFETY: bounds checked by ptr_at_mut.
    unsafe {
        *a = new;
        *c = csum::update32(u16::from_be_bytes(*c), old, new).to_be_bytes();
    }
    Ok(())
}

/// Writes a big-endian u16 at `off`.
#[inline(always)]
pub fn set_u16(ctx: &impl Packet, off: usize, v: u16) -> Result<(), Counter> {
    let p: *mut [u8; 2] = ptr_at_mut(ctx, off)?;
    // SAFETY: bounds checked by ptr_at_mut.
    unsafe { *p = v.to_be_bytes() };
    Ok(())
}

#[inline(always)]
pub fn get_u16(ctx: &impl Packet, off: usize) -> Result<u16, Counter> {
    let p: *const [u8; 2] = ptr_at(ctx, off)?;
    // SAFETY: bounds checked by ptr_at.
    Ok(u16::from_be_bytes(unsafe { *p }))
}

/// The byte at `off`, which must be followed by at least one more (ICMP type and code): a 1-byte
/// bounds check compiles to `ptr >= end`, which the verifier does not turn into a valid range.
#[inline(always)]
pub fn get_u8(ctx: &impl Packet, off: usize) -> Result<u8, Counter> {
    let p: *const [u8; 2] = ptr_at(ctx, off)?;
    // SAFETY: bounds checked by ptr_at.
    Ok(unsafe { (*p)[0] })
}
