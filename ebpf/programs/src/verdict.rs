//! Verdicts, counters and events: every program ends here, so nothing is passed or dropped
//! without being counted.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, xdp_action},
    programs::{TcContext, XdpContext},
};
use podgate_common::{Event, event_kind, stats::Counter};

use crate::maps::{EVENTS, STATS};

/// What a program decided. The counter says why.
#[derive(Clone, Copy)]
pub enum Verdict {
    Pass(Counter),
    /// The packet was redirected with `bpf_redirect` (TC) or must be (XDP: ifindex).
    Redirect(Counter, u32),
    Drop(Counter),
}

#[inline(always)]
pub fn count(c: Counter) {
    if let Some(slot) = STATS.get_ptr_mut(c as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *slot += 1 };
    }
}

/// Report a drop to `podgate monitor`; a full ring buffer loses the event, never the verdict.
#[inline(always)]
pub fn emit_drop(reason: Counter, ev: &Event) {
    if let Some(mut entry) = EVENTS.reserve(0) {
        let mut e = *ev;
        e.kind = event_kind::DROP;
        e.reason = reason as u32;
        entry.write(e);
        entry.submit(0);
    }
}

#[inline(always)]
pub fn tc_verdict(_ctx: &TcContext, v: Result<Verdict, Counter>) -> i32 {
    match v {
        Ok(Verdict::Pass(c)) => {
            count(c);
            TC_ACT_OK
        }
        Ok(Verdict::Redirect(c, _)) => {
            count(c);
            TC_ACT_REDIRECT
        }
        Ok(Verdict::Drop(c)) | Err(c) => {
            count(c);
            TC_ACT_SHOT
        }
    }
}

#[inline(always)]
pub fn xdp_verdict(_ctx: &XdpContext, v: Result<Verdict, Counter>) -> u32 {
    match v {
        Ok(Verdict::Pass(c)) => {
            count(c);
            xdp_action::XDP_PASS
        }
        Ok(Verdict::Redirect(c, ifindex)) => {
            count(c);
            // SAFETY: plain helper call.
            unsafe { aya_ebpf::helpers::bpf_redirect(ifindex, 0) as u32 }
        }
        Ok(Verdict::Drop(c)) | Err(c) => {
            count(c);
            xdp_action::XDP_DROP
        }
    }
}
