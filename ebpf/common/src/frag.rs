//! The slow path for inbound IPv4 fragments that arrive before their first fragment (RFC 4787
//! REQ-14): XDP and TC cannot hold a packet, so the programs copy such an orphan into the
//! `frag4_punt` ring buffer and the daemon keeps it until the first fragment has been translated,
//! then runs it through `uplink_xdp` again as a live frame (`BPF_F_TEST_XDP_LIVE_FRAMES`): now
//! translated by its `frag4` entry, it enters the node's stack as if just received on the uplink.
//! Every fragment of a datagram so takes the same path, which conntrack's defragmentation in
//! PREROUTING (any node running kube-proxy) needs: it holds the first fragment until the others
//! arrive there too.
//!
//! How the programs and the daemon share the work:
//! - An inbound non-first fragment with no `frag4` entry is punted when `node_flags::FRAG_PUNT`
//!   is set and `frag4_punt_alive[0]` (a `CLOCK_BOOTTIME` deadline in ns, refreshed by the daemon)
//!   lies in the future; otherwise it is dropped as `drop_frag_orphan`, as without a daemon.
//!   Punting inserts the key into `frag4_pending`, then writes a [`PuntHdr`] of kind
//!   [`PUNT_ORPHAN`] followed by the whole frame as received (Ethernet header, IPv4 packet of at
//!   most [`FRAG_PUNT_MAX`] bytes, no trailing padding) into the ring, and drops the original
//!   (`frag_punted`). A full ring is `drop_frag_punt_full` (the pending key stays: at worst one
//!   release record nobody needs).
//! - When a first fragment is translated and creates its `frag4` entry while `frag4_pending`
//!   holds its key, the programs write a [`PuntHdr`] of kind [`PUNT_RELEASE`] (no data; `new_addr`
//!   is the pod's address) and delete the pending key (`frag_punt_released`). A first fragment
//!   for the node itself does the same with its pass entry (`new_addr` =
//!   [`FRAG_PASS`](crate::nat::FRAG_PASS)): the daemon's re-run then passes the orphans to the
//!   stack untouched (`frag_passed`).
//! - Pending key first, record second: a first fragment racing the orphan on another CPU either
//!   sees the key (release record, possibly ahead of the orphan's record) or created `frag4`
//!   before the orphan was punted. Either way the daemon looks `frag4` up when an orphan record
//!   arrives, so no order of the two records loses the fragment.

use crate::nat::FragKey4;

pub mod map_names {
    /// Ring buffer of [`PuntHdr`](super::PuntHdr) records.
    pub const FRAG4_PUNT: &str = "frag4_punt";
    /// `FragKey4` → boot time (ns) of the last orphan punted for that datagram.
    pub const FRAG4_PENDING: &str = "frag4_pending";
    /// One `u64`: punting is on while `bpf_ktime_get_boot_ns()` is below it.
    pub const FRAG4_PUNT_ALIVE: &str = "frag4_punt_alive";
}

/// Largest IPv4 packet (header included) the programs punt; larger orphans are
/// `drop_frag_orphan`. The Internet's 1500-byte MTU plus room for a tunnel's slack.
pub const FRAG_PUNT_MAX: usize = 1520;
/// The Ethernet header in front of the IPv4 packet in a record.
pub const FRAG_PUNT_ETH: usize = 14;
/// Size of the `frag4_punt` ring buffer: about 650 full-size orphans.
pub const FRAG_PUNT_RING_BYTES: usize = 1 << 20;
/// Entries of `frag4_pending`.
pub const FRAG_PENDING_MAX: usize = 4096;

/// An orphan fragment: `len` bytes of IPv4 packet follow the header.
pub const PUNT_ORPHAN: u32 = 1;
/// The first fragment of `key` was translated toward `new_addr`.
pub const PUNT_RELEASE: u32 = 2;

/// The head of every `frag4_punt` record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PuntHdr {
    /// [`PUNT_ORPHAN`] or [`PUNT_RELEASE`].
    pub kind: u32,
    /// Bytes of frame after this header (orphans); 0 for releases.
    pub len: u32,
    /// The datagram (`frag4` key, `dir` = 1).
    pub key: FragKey4,
    /// Releases: the address the first fragment was translated to (the pod's IPv4).
    pub new_addr: [u8; 4],
    /// `bpf_ktime_get_boot_ns()` when the record was written.
    pub time_ns: u64,
}

/// A whole orphan record as the programs build it in their per-CPU scratch map: only
/// `size_of::<PuntHdr>() + hdr.len` bytes of it go into the ring.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PuntBuf {
    pub hdr: PuntHdr,
    /// The frame; rounded up to whole words.
    pub data: [u8; FRAG_PUNT_ETH + FRAG_PUNT_MAX + 2],
}

/// The frame bytes an orphan record carries for an IPv4 packet of `ip_len` bytes, or `None` when
/// the packet is too big to punt. One comparison only: the verifier must see the result within
/// `[FRAG_PUNT_ETH, FRAG_PUNT_ETH + FRAG_PUNT_MAX]`, and a second test folded into it by the
/// compiler (`ip_len == 0`) would lose it the lower bound.
#[inline(always)]
pub fn frame_len(ip_len: usize) -> Option<usize> {
    if ip_len > FRAG_PUNT_MAX {
        return None;
    }
    Some(FRAG_PUNT_ETH + ip_len)
}

/// Whether the daemon's deadline `alive_until` (boot ns) still holds at `now`.
#[inline(always)]
pub fn punt_alive(alive_until: u64, now: u64) -> bool {
    now < alive_until
}

#[cfg(feature = "user")]
mod pod_impls {
    // SAFETY: #[repr(C)], Copy, no implicit padding.
    unsafe impl aya::Pod for super::PuntHdr {}
}

const _: () = {
    assert!(core::mem::size_of::<PuntHdr>() == 32);
    assert!(core::mem::size_of::<PuntBuf>().is_multiple_of(8));
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_len_bounds() {
        assert_eq!(frame_len(0), Some(14));
        assert_eq!(frame_len(20), Some(34));
        assert_eq!(frame_len(FRAG_PUNT_MAX), Some(14 + FRAG_PUNT_MAX));
        assert_eq!(frame_len(FRAG_PUNT_MAX + 1), None);
        assert!(14 + FRAG_PUNT_MAX <= core::mem::size_of::<PuntBuf>() - core::mem::size_of::<PuntHdr>());
    }

    #[test]
    fn alive_is_strictly_before_the_deadline() {
        assert!(punt_alive(10, 9));
        assert!(!punt_alive(10, 10));
        // A never-written map entry (0) means no daemon.
        assert!(!punt_alive(0, 1));
    }
}
