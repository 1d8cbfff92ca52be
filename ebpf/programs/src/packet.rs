//! Bounds-checked access to packet bytes, shared by the TC and XDP programs.

use aya_ebpf::programs::{TcContext, XdpContext};
use podgate_common::stats::Counter;

/// Direct packet access for both program types.
pub trait Packet {
    fn start(&self) -> usize;
    fn end(&self) -> usize;
    /// The whole packet's length, including what TC has not pulled into the linear area.
    fn total_len(&self) -> usize;
}

impl Packet for TcContext {
    #[inline(always)]
    fn total_len(&self) -> usize {
        self.len() as usize
    }
    #[inline(always)]
    fn start(&self) -> usize {
        self.data()
    }
    #[inline(always)]
    fn end(&self) -> usize {
        self.data_end()
    }
}

impl Packet for XdpContext {
    #[inline(always)]
    fn total_len(&self) -> usize {
        self.data_end() - self.data()
    }
    #[inline(always)]
    fn start(&self) -> usize {
        self.data()
    }
    #[inline(always)]
    fn end(&self) -> usize {
        self.data_end()
    }
}

/// A pointer to a `T` at `offset`, or `DropMalformed` when the packet is too short: a truncated
/// header is never passed on by default.
#[inline(always)]
pub fn ptr_at<T>(ctx: &impl Packet, offset: usize) -> Result<*const T, Counter> {
    let start = ctx.start();
    let end = ctx.end();
    if start + offset + core::mem::size_of::<T>() > end {
        return Err(Counter::DropMalformed);
    }
    Ok((start + offset) as *const T)
}

#[inline(always)]
pub fn ptr_at_mut<T>(ctx: &impl Packet, offset: usize) -> Result<*mut T, Counter> {
    ptr_at::<T>(ctx, offset).map(|p| p as *mut T)
}

pub const ETH_HLEN: usize = 14;

pub enum EtherType {
    Ipv4,
    Ipv6,
    Arp,
    Other,
}

/// What a pod veth admits: an untagged IPv4, IPv6 or ARP frame. Anything else is dropped (never
/// passed as "not ours"): the stack strips VLAN-0 tags after tc and hands the inner packet to
/// ip_rcv/ipv6_rcv, so a tagged frame would skip every check of the family programs. One load and
/// one branch ahead of the EtherType for the frames that pass.
#[inline(always)]
pub fn pod_ether_type(ctx: &TcContext) -> Result<EtherType, Counter> {
    // SAFETY: reading a field of the program's own context.
    if unsafe { (*ctx.skb.skb).vlan_present } != 0 {
        return Err(Counter::DropVlanTagged);
    }
    match ether_type(ctx)? {
        EtherType::Other => {
            let p: *const [u8; 2] = ptr_at(ctx, 12)?;
            // SAFETY: ptr_at checked the bounds.
            let et = u16::from_be_bytes(unsafe { *p });
            Err(if is_vlan_tpid(et) { Counter::DropVlanTagged } else { Counter::DropEtherType })
        }
        t => Ok(t),
    }
}

/// 802.1Q, 802.1ad and the pre-standard QinQ tag protocol identifiers.
#[inline(always)]
pub const fn is_vlan_tpid(et: u16) -> bool {
    matches!(et, 0x8100 | 0x88a8 | 0x9100)
}

/// The EtherType of an untagged Ethernet frame.
#[inline(always)]
pub fn ether_type(ctx: &impl Packet) -> Result<EtherType, Counter> {
    let p: *const [u8; 2] = ptr_at(ctx, 12)?;
    // SAFETY: ptr_at checked the bounds.
    let et = u16::from_be_bytes(unsafe { *p });
    Ok(match et {
        0x0800 => EtherType::Ipv4,
        0x86dd => EtherType::Ipv6,
        0x0806 => EtherType::Arp,
        _ => EtherType::Other,
    })
}
