//! IPv4 SNAT: pod → node address on the pod veth, reverse translation at the uplink.
//!
//! Both directions are written once, generic over [`Ctx`], so that the TC and XDP programs share
//! every parsing and translation step; only the L4 checksum update and the redirect differ (TC
//! must let the kernel fix `CHECKSUM_PARTIAL`/`COMPLETE` skbs, XDP has raw bytes only).
pub mod egress;
mod fwd;
mod icmp;
mod ip;
mod punt;
pub mod reverse;
mod unreach;
pub mod usage;

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
    fn l4_csum_addr(
        &self,
        csum_off: usize,
        old: [u8; 4],
        new: [u8; 4],
        udp: bool,
    ) -> Result<(), Counter>;
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
    /// The one's-complement sum (unfolded, at most 17 bits) of the 16-bit words of `len` bytes
    /// at `off`, an odd last byte padded with zero. Reads through the load-bytes helper inside
    /// `bpf_loop`, so the length costs the verifier nothing and non-linear skbs work too.
    fn sum16(&self, off: usize, len: usize) -> Result<u32, Counter>;
    /// The `tot_len` to give `bpf_fib_lookup` for its MTU check.
    fn fib_tot_len(&self, ip_tot_len: u16) -> u16;
}

/// State of a `sum16` walk, on the caller's stack for `bpf_loop`.
#[repr(C)]
struct Sum {
    ctx: *mut c_void,
    off: u32,
    sum: u32,
    err: u32,
}

/// One 16-bit word per `bpf_loop` step through `$load`; 1 stops on a failed read.
macro_rules! sum_step {
    ($name:ident, $load:path, $ctx:ty) => {
        #[inline(never)]
        extern "C" fn $name(i: u64, c: *mut c_void) -> i64 {
            // SAFETY: `c` is the caller's `Sum`, alive for the whole `bpf_loop` call.
            let s = unsafe { &mut *(c as *mut Sum) };
            let mut w = [0u8; 2];
            // SAFETY: plain helper call into a 2-byte stack buffer.
            let rc = unsafe { $load(s.ctx as $ctx, s.off + 2 * i as u32, w.as_mut_ptr() as *mut c_void, 2) };
            if rc != 0 {
                s.err = 1;
                return 1;
            }
            let v = s.sum + u16::from_be_bytes(w) as u32;
            s.sum = (v & 0xffff) + (v >> 16);
            0
        }
    };
}

sum_step!(sum_step_skb, aya_ebpf::helpers::generated::bpf_skb_load_bytes, *const c_void);
sum_step!(sum_step_xdp, aya_ebpf::helpers::generated::bpf_xdp_load_bytes, *mut aya_ebpf::bindings::xdp_md);

/// `sum16` for either program type: the words in `bpf_loop`, then the odd byte.
macro_rules! sum16_impl {
    ($self:ident, $raw:expr, $step:ident, $load:path, $ctx:ty, $off:ident, $len:ident) => {{
        let mut s = Sum { ctx: $raw, off: $off as u32, sum: 0, err: 0 };
        // SAFETY: `s` outlives the call; the callback is a static function of this program.
        unsafe {
            aya_ebpf::helpers::generated::bpf_loop(($len / 2) as u32, $step as *mut c_void, &mut s as *mut Sum as *mut c_void, 0);
        }
        if s.err != 0 {
            return Err(Counter::DropMalformed);
        }
        if $len & 1 == 1 {
            let mut b = [0u8; 1];
            // SAFETY: plain helper call into a 1-byte stack buffer.
            let rc = unsafe { $load($raw as $ctx, ($off + $len - 1) as u32, b.as_mut_ptr() as *mut c_void, 1) };
            if rc != 0 {
                return Err(Counter::DropMalformed);
            }
            s.sum += (b[0] as u32) << 8;
        }
        Ok(s.sum)
    }};
}

impl Ctx for TcContext {
    const REDIRECTS: bool = true;

    #[inline(always)]
    fn sum16(&self, off: usize, len: usize) -> Result<u32, Counter> {
        sum16_impl!(self, self.skb.skb as *mut c_void, sum_step_skb, aya_ebpf::helpers::generated::bpf_skb_load_bytes, *const c_void, off, len)
    }

    #[inline(always)]
    fn raw(&self) -> *mut c_void {
        self.skb.skb as *mut c_void
    }

    #[inline(always)]
    fn l4_csum_addr(
        &self,
        csum_off: usize,
        old: [u8; 4],
        new: [u8; 4],
        udp: bool,
    ) -> Result<(), Counter> {
        let mut flags = BPF_F_PSEUDO_HDR as u64 | 4;
        if udp {
            flags |= BPF_F_MARK_MANGLED_0 as u64;
        }
        self.l4_csum_replace(
            csum_off,
            u32::from_ne_bytes(old) as u64,
            u32::from_ne_bytes(new) as u64,
            flags,
        )
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
        self.l4_csum_replace(csum_off, o, n, flags)
            .map_err(|_| Counter::DropInternalError)
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: the context pointer is valid for the program's lifetime.
        unsafe { (*self.skb.skb).ifindex }
    }

    #[inline(always)]
    fn fib_tot_len(&self, _ip_tot_len: u16) -> u16 {
        // 0: the kernel checks the skb itself, GSO-aware (a TSO super-packet is no MTU problem).
        0
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
    fn sum16(&self, off: usize, len: usize) -> Result<u32, Counter> {
        sum16_impl!(self, self.ctx as *mut c_void, sum_step_xdp, aya_ebpf::helpers::generated::bpf_xdp_load_bytes, *mut aya_ebpf::bindings::xdp_md, off, len)
    }

    #[inline(always)]
    fn raw(&self) -> *mut c_void {
        self.ctx as *mut c_void
    }

    #[inline(always)]
    fn l4_csum_addr(
        &self,
        csum_off: usize,
        old: [u8; 4],
        new: [u8; 4],
        udp: bool,
    ) -> Result<(), Counter> {
        update_csum_at(self, csum_off, udp, |hc| csum::update32(hc, old, new))
    }

    #[inline(always)]
    fn l4_csum_port(&self, csum_off: usize, old: u16, new: u16, udp: bool) -> Result<(), Counter> {
        update_csum_at(self, csum_off, udp, |hc| csum::update16(hc, old, new))
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: the context pointer is valid for the program's lifetime.
        unsafe { (*self.ctx).ingress_ifindex }
    }

    #[inline(always)]
    fn fib_tot_len(&self, ip_tot_len: u16) -> u16 {
        ip_tot_len
    }

    #[inline(always)]
    fn redirect(&self, _ifindex: u32) {}

    #[inline(always)]
    fn redirect_neigh(&self, _ifindex: u32) -> bool {
        false
    }
}

/// Rewrites the checksum field at `off` with `f(old field)`, keeping UDP's "no checksum" rule.
#[inline(always)]
fn update_csum_at(
    ctx: &impl Packet,
    off: usize,
    udp: bool,
    f: impl FnOnce(u16) -> u16,
) -> Result<(), Counter> {
    let p: *mut [u8; 2] = ptr_at_mut(ctx, off)?;
    // SAFETY: bounds checked by ptr_at_mut.
    let hc = u16::from_be_bytes(unsafe { *p });
    let v = if udp { csum::udp_fix(hc, f(hc)) } else { f(hc) };
    unsafe { *p = v.to_be_bytes() };
    Ok(())
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
