//! IPv4 SNAT: pod → node address on the pod veth, reverse translation at the uplink.
//!
//! Both directions are written once, generic over [`Ctx`], so that the TC and XDP programs share
//! every parsing and translation step; only the L4 checksum update and the redirect differ (TC
//! must let the kernel fix `CHECKSUM_PARTIAL`/`COMPLETE` skbs, XDP has raw bytes only).
pub mod egress;
mod fwd;
mod icmp;
mod ip;
pub mod reverse;

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::bpf_ktime_get_boot_ns,
    programs::{TcContext, XdpContext},
};
use podgate_common::{csum, stats::Counter};

use crate::packet::{Packet, ptr_at_mut};

/// A program context that can rewrite packets.
pub trait Ctx: Packet {
    /// Whether `fwd::forward` may redirect from this program type.
    const REDIRECTS: bool;
    /// The raw context for helpers such as `bpf_fib_lookup`.
    fn raw(&self) -> *mut c_void;
    /// The checksum at `csum_off` after a pseudo-header address changed from `old` to `new`.
    /// The address bytes themselves are written by the caller.
    fn l4_csum_addr(&self, csum_off: usize, old: [u8; 4], new: [u8; 4], udp: bool) -> Result<(), Counter>;
    /// The checksum at `csum_off` after a covered 16-bit word changed.
    fn l4_csum_port(&self, csum_off: usize, old: u16, new: u16, udp: bool) -> Result<(), Counter>;
    /// Redirect to `ifindex` (TC calls the helper now; XDP returns XDP_REDIRECT via the verdict).
    fn redirect(&self, ifindex: u32);
    /// Redirects out of `ifindex` letting the kernel resolve the next hop's MAC (the FIB had no
    /// neighbour entry yet). Only TC has the helper; XDP answers `false` and the packet goes to
    /// the stack instead.
    fn redirect_neigh(&self, ifindex: u32) -> bool;
    /// The interface the packet arrived on.
    fn ifindex(&self) -> u32;
    /// Makes the whole packet directly readable (TC: pulls it into the linear area; XDP: it
    /// already is). Invalidates earlier packet pointers, never offsets.
    fn pull_all(&self);
}

impl Ctx for TcContext {
    const REDIRECTS: bool = true;

    #[inline(always)]
    fn pull_all(&self) {
        // A failure leaves the data short; the bounds checks then count it as malformed.
        let _ = self.pull_data(self.len());
    }

    #[inline(always)]
    fn raw(&self) -> *mut c_void {
        self.skb.skb as *mut c_void
    }

    #[inline(always)]
    fn l4_csum_addr(&self, csum_off: usize, old: [u8; 4], new: [u8; 4], udp: bool) -> Result<(), Counter> {
        let mut flags = BPF_F_PSEUDO_HDR as u64 | 4;
        if udp {
            flags |= BPF_F_MARK_MANGLED_0 as u64;
        }
        self.l4_csum_replace(csum_off, u32::from_ne_bytes(old) as u64, u32::from_ne_bytes(new) as u64, flags)
            .map_err(|_| Counter::DropInternalError)
    }

    #[inline(always)]
    fn l4_csum_port(&self, csum_off: usize, old: u16, new: u16, udp: bool) -> Result<(), Counter> {
        let mut flags = 2u64;
        if udp {
            flags |= BPF_F_MARK_MANGLED_0 as u64;
        }
        let o = u16::from_ne_bytes(old.to_be_bytes()) as u64;
        let n = u16::from_ne_bytes(new.to_be_bytes()) as u64;
        self.l4_csum_replace(csum_off, o, n, flags).map_err(|_| Counter::DropInternalError)
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: the context pointer is valid for the program's lifetime.
        unsafe { (*self.skb.skb).ifindex }
    }

    #[inline(always)]
    fn redirect(&self, ifindex: u32) {
        // SAFETY: plain helper call; the TC verdict then returns TC_ACT_REDIRECT.
        unsafe { aya_ebpf::helpers::bpf_redirect(ifindex, 0) };
    }

    #[inline(always)]
    fn redirect_neigh(&self, ifindex: u32) -> bool {
        // SAFETY: plain helper call; without parameters the kernel looks the next hop up itself.
        let rc = unsafe { aya_ebpf::helpers::generated::bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) };
        rc == aya_ebpf::bindings::TC_ACT_REDIRECT as i64
    }
}

impl Ctx for XdpContext {
    const REDIRECTS: bool = false;

    #[inline(always)]
    fn pull_all(&self) {}

    #[inline(always)]
    fn raw(&self) -> *mut c_void {
        self.ctx as *mut c_void
    }

    #[inline(always)]
    fn l4_csum_addr(&self, csum_off: usize, old: [u8; 4], new: [u8; 4], udp: bool) -> Result<(), Counter> {
        let p: *mut [u8; 2] = ptr_at_mut(self, csum_off)?;
        // SAFETY: bounds checked by ptr_at_mut.
        let hc = u16::from_be_bytes(unsafe { *p });
        let mut v = csum::update32(hc, old, new);
        if udp {
            v = csum::udp_fix(hc, v);
        }
        unsafe { *p = v.to_be_bytes() };
        Ok(())
    }

    #[inline(always)]
    fn l4_csum_port(&self, csum_off: usize, old: u16, new: u16, udp: bool) -> Result<(), Counter> {
        let p: *mut [u8; 2] = ptr_at_mut(self, csum_off)?;
        // SAFETY: bounds checked by ptr_at_mut.
        let hc = u16::from_be_bytes(unsafe { *p });
        let mut v = csum::update16(hc, old, new);
        if udp {
            v = csum::udp_fix(hc, v);
        }
        unsafe { *p = v.to_be_bytes() };
        Ok(())
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: the context pointer is valid for the program's lifetime.
        unsafe { (*self.ctx).ingress_ifindex }
    }

    #[inline(always)]
    fn redirect(&self, _ifindex: u32) {}

    #[inline(always)]
    fn redirect_neigh(&self, _ifindex: u32) -> bool {
        false
    }
}

/// `CLOCK_BOOTTIME` in ns: the clock `podgate_common::nat::CLOCK` documents for the daemon's GC.
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: plain helper call.
    unsafe { bpf_ktime_get_boot_ns() }
}

/// Whether `addr` lies in `net/len` (all network order).
#[inline(always)]
pub fn in_prefix(addr: [u8; 4], net: [u8; 4], len: u32) -> bool {
    if len == 0 {
        return true;
    }
    let len = if len > 32 { 32 } else { len };
    let mask = u32::MAX << (32 - len);
    (u32::from_be_bytes(addr) & mask) == (u32::from_be_bytes(net) & mask)
}
