//! The one atomic the programs need: counting up a tally another CPU may count at once
//! (`pod_usage`, `ct6_guard`).

/// `*p += 1` as one atomic instruction (no fetch: the old value is not needed, which keeps the
/// instruction within what every supported kernel verifies).
#[inline(always)]
pub fn add_one(p: *mut u64) {
    // SAFETY: `p` is an aligned u64 in map memory, valid for the program run.
    unsafe {
        core::arch::asm!("lock *(u64 *)({p} + 0) += {v}", p = in(reg) p, v = in(reg) 1u64, options(nostack));
    }
}
