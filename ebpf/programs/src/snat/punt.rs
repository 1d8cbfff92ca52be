//! Inbound fragments ahead of their first fragment: a program cannot hold a packet, so the orphan
//! frame is copied to the daemon through the `frag4_punt` ring buffer, and the first fragment's
//! translation tells the daemon to run it through again (podgate_common::frag describes the
//! protocol).

use core::ffi::c_void;

use aya_ebpf::{
    helpers::generated::{bpf_ringbuf_output, bpf_skb_load_bytes, bpf_xdp_load_bytes},
    programs::{TcContext, XdpContext},
};
use podgate_common::{
    NodeConfig,
    frag::{FRAG_PUNT_ETH, FRAG_PUNT_MAX, PUNT_ORPHAN, PUNT_RELEASE, PuntHdr, frame_len, punt_alive},
    nat::FragKey4,
    node_flags,
    stats::Counter,
};

use super::{ip::Ip4, now_ns};
use crate::{
    maps::{FRAG4_PENDING, FRAG4_PUNT, FRAG4_PUNT_ALIVE, FRAG4_PUNT_BUF},
    verdict::{Verdict, count},
};

/// Copies the first `m + 1` bytes of the packet (`m` < `FRAG_PUNT_ETH + FRAG_PUNT_MAX`) with
/// the program type's load-bytes helper, which also reads what TC has not pulled into the
/// linear area.
pub trait LoadBytes {
    fn load_frame(&self, to: *mut u8, m: u64) -> i64;
}

impl LoadBytes for TcContext {
    #[inline(always)]
    fn load_frame(&self, to: *mut u8, m: u64) -> i64 {
        skb_load_frame(self.skb.skb as *mut c_void, to, m)
    }
}

impl LoadBytes for XdpContext {
    #[inline(always)]
    fn load_frame(&self, to: *mut u8, m: u64) -> i64 {
        xdp_load_frame(self.ctx as *mut c_void, to, m)
    }
}

// The helpers want a length the verifier sees within [1, room]. Inlined, the compiler spilled
// the checked length and reloaded an unchecked copy for the call, which Linux 6.1's verifier
// refused ("R4 unbounded memory access"); and a check on `m` turns into one on `m + 1`, whose
// wrap-around leaves a lower bound of 0. So: a BPF function of its own, a length that cannot
// wrap (a zero-extended 32-bit value plus one is at least 1), and a stack round trip so that the
// upper-bound check applies to the very value passed to the helper.
macro_rules! load_frame_fn {
    ($name:ident, $helper:path, $ctx:ty) => {
        #[inline(never)]
        fn $name(ctx: *mut c_void, to: *mut u8, m: u64) -> i64 {
            let mut slot: u64 = (m as u32) as u64 + 1;
            // SAFETY: a local of this frame.
            let len = unsafe {
                core::ptr::write_volatile(&mut slot, slot);
                core::ptr::read_volatile(&slot)
            };
            if len > (FRAG_PUNT_ETH + FRAG_PUNT_MAX) as u64 {
                return -1;
            }
            // SAFETY: `len` is 1..=FRAG_PUNT_ETH + FRAG_PUNT_MAX, the room at `to`.
            unsafe { $helper(ctx as $ctx, 0, to as *mut c_void, len as u32) }
        }
    };
}
load_frame_fn!(skb_load_frame, bpf_skb_load_bytes, *const c_void);
load_frame_fn!(xdp_load_frame, bpf_xdp_load_bytes, *mut aya_ebpf::bindings::xdp_md);

/// A non-first fragment whose first fragment has not been seen: punted to the daemon when it
/// runs (flag and liveness deadline), else dropped as an orphan as before.
#[inline(always)]
pub fn orphan<C: LoadBytes>(ctx: &C, node: &NodeConfig, ip: &Ip4, k: &FragKey4) -> Result<Verdict, Counter> {
    if node.flags & node_flags::FRAG_PUNT == 0 {
        return Ok(Verdict::Drop(Counter::DropFragOrphan));
    }
    let now = now_ns();
    // A dead daemon reads nothing: without this deadline its ring would fill with orphans that
    // wait for nobody, and every fragment would cost a copy before being dropped anyway.
    let alive = FRAG4_PUNT_ALIVE.get(0).copied().unwrap_or(0);
    if !punt_alive(alive, now) {
        return Ok(Verdict::Drop(Counter::DropFragOrphan));
    }
    // The frame as received, Ethernet header included, so that the daemon can hand it to the
    // program again exactly as the uplink did (it must be addressed to the uplink's MAC).
    let Some(len) = frame_len(ip.tot_len as usize) else {
        return Ok(Verdict::Drop(Counter::DropFragOrphan));
    };
    let buf = FRAG4_PUNT_BUF.get_ptr_mut(0).ok_or(Counter::DropInternalError)?;
    // `m` takes a round trip through map memory so that the compiler cannot carry what it knows
    // of `len` into `load_frame` and fold away the bounds the verifier needs to see there.
    // SAFETY: per-CPU scratch value, ours until the program ends.
    let m = unsafe {
        core::ptr::write_volatile(&mut (*buf).hdr.len, (len - 1) as u32);
        core::ptr::read_volatile(&(*buf).hdr.len)
    };
    if m as usize >= FRAG_PUNT_ETH + FRAG_PUNT_MAX {
        return Err(Counter::DropInternalError);
    }
    // From here on the length the verifier has bounds for, for the ring buffer's size too.
    let len = m + 1;
    // SAFETY: as above.
    let rc = ctx.load_frame(unsafe { (*buf).data.as_mut_ptr() }, m as u64);
    if rc != 0 {
        return Err(Counter::DropMalformed);
    }
    // SAFETY: as above.
    unsafe {
        (*buf).hdr = PuntHdr {
            kind: PUNT_ORPHAN,
            len,
            key: *k,
            new_addr: [0; 4],
            time_ns: now,
        };
    }
    // Before the record, so that a first fragment racing on another CPU always finds either the
    // key here or (seen by the daemon when it reads the record) its own `frag4` entry. A failed
    // insert only loses the release record: the daemon also rechecks `frag4` for what it holds.
    let _ = FRAG4_PENDING.insert(k, &now, 0);
    // SAFETY: the header and `len` frame bytes of the scratch value, bounded by its size.
    let rc = unsafe {
        bpf_ringbuf_output(
            &FRAG4_PUNT as *const _ as *mut c_void,
            buf as *mut c_void,
            size_of::<PuntHdr>() as u64 + len as u64,
            0,
        )
    };
    if rc != 0 {
        // The pending key stays: at worst one release record nobody needs.
        return Ok(Verdict::Drop(Counter::DropFragPuntFull));
    }
    Ok(Verdict::Drop(Counter::FragPunted))
}

/// The first fragment of `k` was translated to `new_addr`: when orphans of it were punted, tell
/// the daemon to run them through again.
#[inline(always)]
pub fn release(node: &NodeConfig, k: &FragKey4, new_addr: [u8; 4]) {
    if node.flags & node_flags::FRAG_PUNT == 0 || FRAG4_PENDING.get_ptr(k).is_none() {
        return;
    }
    let _ = FRAG4_PENDING.remove(k);
    let hdr = PuntHdr {
        kind: PUNT_RELEASE,
        len: 0,
        key: *k,
        new_addr,
        time_ns: now_ns(),
    };
    // A full ring loses only this record: the daemon rechecks `frag4` for every orphan it holds.
    if FRAG4_PUNT.output(&hdr, 0).is_ok() {
        count(Counter::FragPuntReleased);
    }
}
