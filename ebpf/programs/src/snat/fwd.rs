//! The fast path: FIB lookup and redirect, with plain pass to the stack as the fallback.

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup},
    helpers::bpf_fib_lookup as fib_lookup,
};
use podgate_common::{NodeConfig, csum, node_flags, stats::Counter};

use super::{
    Ctx,
    ip::{IP_CSUM, Ip4},
};
use crate::{
    packet::ptr_at_mut,
    verdict::{Verdict, count},
};

const AF_INET: u8 = 2;

/// Sends a translated packet on: with `FIB_REDIRECT`, straight to the next hop's interface with
/// its MACs set and the TTL decremented (as the stack would); otherwise, or whenever the FIB has
/// no complete answer (no neighbour yet, local destination, TTL about to expire), to the stack,
/// which then does the same job or sends the right ICMP error. `done` counts the translation.
#[inline(always)]
pub fn forward<C: Ctx>(ctx: &C, node: &NodeConfig, ip: &Ip4, src: [u8; 4], dst: [u8; 4], done: Counter) -> Result<Verdict, Counter> {
    // XDP_REDIRECT into a veth is dropped unless the peer end runs XDP or GRO, which is the pod's
    // business, not ours: from XDP the translated packet goes to the stack, which forwards it.
    if !C::REDIRECTS || node.flags & node_flags::FIB_REDIRECT == 0 || ip.ttl <= 1 {
        return Ok(Verdict::Pass(done));
    }
    // SAFETY: a plain C struct; all-zero is a valid request.
    let mut p: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    p.family = AF_INET;
    p.l4_protocol = ip.proto;
    p.ifindex = ctx.ifindex();
    // The lookup answers FRAG_NEEDED for a packet too big for the next hop; the stack then
    // fragments it or sends 3/4 (RFC 4787 REQ-13), which a redirect would not (the device would
    // just drop it).
    p.__bindgen_anon_1.tot_len = ctx.fib_tot_len(ip.tot_len);
    p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(src);
    p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(dst);
    // SAFETY: p lives on the stack for the call; the size is the struct's.
    let rc = unsafe { fib_lookup(ctx.raw(), &mut p, core::mem::size_of::<bpf_fib_lookup>() as i32, 0) };
    // The stack cannot take this packet over: its source is now the node's own address, which
    // the input route check rejects on a pod veth. Without a neighbour entry (the first packet
    // toward a new next hop), let the kernel resolve it.
    let no_neigh = rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64;
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 && !no_neigh {
        return Ok(Verdict::Pass(done));
    }
    // TTL and protocol share a 16-bit word of the header checksum.
    let ttlw: *mut [u8; 2] = ptr_at_mut(ctx, ip.l3 + 8)?;
    let c: *mut [u8; 2] = ptr_at_mut(ctx, ip.l3 + IP_CSUM)?;
    let eth: *mut [u8; 12] = ptr_at_mut(ctx, 0)?;
    // SAFETY: bounds checked by ptr_at_mut.
    unsafe {
        let old = u16::from_be_bytes(*ttlw);
        let new = old - 0x100;
        *ttlw = new.to_be_bytes();
        *c = csum::update16(u16::from_be_bytes(*c), old, new).to_be_bytes();
    }
    if no_neigh {
        if ctx.redirect_neigh(p.ifindex) {
            count(done);
            return Ok(Verdict::Redirect(Counter::FibRedirectNeigh, p.ifindex));
        }
        // XDP: undo the TTL step, the stack will take it.
        // SAFETY: as above.
        unsafe {
            let old = u16::from_be_bytes(*ttlw);
            let new = old + 0x100;
            *ttlw = new.to_be_bytes();
            *c = csum::update16(u16::from_be_bytes(*c), old, new).to_be_bytes();
        }
        return Ok(Verdict::Pass(done));
    }
    // SAFETY: bounds checked by ptr_at_mut.
    unsafe {
        let mut macs = [0u8; 12];
        macs[..6].copy_from_slice(&p.dmac);
        macs[6..].copy_from_slice(&p.smac);
        *eth = macs;
    }
    count(done);
    ctx.redirect(p.ifindex);
    Ok(Verdict::Redirect(Counter::FibRedirect, p.ifindex))
}
