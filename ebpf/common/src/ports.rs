//! External port choice (RFC 6056-style randomization, range classes, UDP parity).
//!
//! The eBPF side draws a random number per attempt and asks [`candidate`] for the port to try;
//! the atomic claim in `nat4_claim` decides whether it is free. Keeping this pure lets the host
//! tests cover range and parity for every input.

/// Ports below 1024 map into this range (RFC 4787 REQ-3a). It stays above the well-known service
/// ports (22, 53, 80, 443, ...) that the node itself may listen on, so that a pod's mapping never
/// captures replies meant for a node service.
pub const PRIV_PORT_MIN: u16 = 512;
pub const PRIV_PORT_MAX: u16 = 1023;

/// The inclusive range an internal source port maps into: privileged ports stay privileged, the
/// others use the configured range. An empty or inverted configured range is treated as the
/// single port `port_min` so that callers never divide by zero.
#[inline(always)]
pub const fn range_for(src_port: u16, port_min: u16, port_max: u16) -> (u16, u16) {
    if src_port < 1024 {
        (PRIV_PORT_MIN, PRIV_PORT_MAX)
    } else if port_max < port_min {
        (port_min, port_min)
    } else {
        (port_min, port_max)
    }
}

/// Whether a new mapping keeps the parity of its internal port. Only RFC 4787 REQ-4 (UDP, for
/// RTP/RTCP pairs) asks for it, and RFC 7857 §8 lets even that be switched off; RFC 5382 (TCP)
/// and RFC 5508 (ICMP identifiers) do not. Keeping it for TCP halves the pool that Linux's
/// even-first `connect()` port choice draws on. The answer depends only on the protocol and the
/// configuration, never on how full the pool is (RFC 4787 REQ-11).
#[inline(always)]
pub const fn keeps_parity(proto: u8, node_flags: u32) -> bool {
    proto == crate::nat::PROTO_UDP && node_flags & crate::node_flags::UDP_NO_PARITY == 0
}

/// The external port to try for `src_port`, from a random number: uniform in the range, with the
/// parity of `src_port` when `parity` is asked for and the range allows it.
#[inline(always)]
pub const fn candidate(src_port: u16, rand: u32, port_min: u16, port_max: u16, parity: bool) -> u16 {
    let (lo, hi) = range_for(src_port, port_min, port_max);
    let span = (hi - lo) as u32 + 1;
    let p = lo as u32 + rand % span;
    let p = if !parity || (p ^ src_port as u32) & 1 == 0 {
        p
    } else if p < hi as u32 {
        p + 1
    } else if p > lo as u32 {
        p - 1
    } else {
        // A one-port range cannot keep parity; the range wins.
        p
    };
    p as u16
}

/// The port after `p` in `lo..=hi` (with the same parity when `parity`), wrapping around; `p`
/// itself when the range holds no other such port.
#[inline(always)]
pub const fn next_port(p: u16, lo: u16, hi: u16, parity: bool) -> u16 {
    let step = if parity { 2 } else { 1 };
    if (p as u32) + step <= hi as u32 {
        return p + step as u16;
    }
    // Wrap to the lowest port (of p's parity).
    let first = if !parity || (lo ^ p) & 1 == 0 { lo } else { lo.saturating_add(1) };
    if first > hi { p } else { first }
}

/// Whether `port` is one the NAT hands out (either range): a pod sending to the node's address
/// on such a port is hairpinning toward another pod's mapping, not talking to a node service.
#[inline(always)]
pub const fn is_snat_port(port: u16, port_min: u16, port_max: u16) -> bool {
    (port >= PRIV_PORT_MIN && port <= PRIV_PORT_MAX) || (port >= port_min && port <= port_max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nat::{PROTO_ICMP, PROTO_TCP, PROTO_UDP};
    use crate::node_flags::UDP_NO_PARITY;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn stays_in_range_and_keeps_parity_when_asked(src in any::<u16>(), rand in any::<u32>(),
                                                      min in 1024u16..65535, len in 1u16..4000,
                                                      parity in any::<bool>()) {
            let max = min.saturating_add(len);
            let p = candidate(src, rand, min, max, parity);
            if src < 1024 {
                prop_assert!((PRIV_PORT_MIN..=PRIV_PORT_MAX).contains(&p));
            } else {
                prop_assert!((min..=max).contains(&p), "{p} not in {min}..={max}");
            }
            if parity {
                prop_assert_eq!(p & 1, src & 1);
            }
        }

        #[test]
        fn without_parity_the_draw_is_the_port(src in 1024u16.., rand in any::<u32>(),
                                               min in 1024u16..60000, len in 1u16..5000) {
            // No nudging: every port of the range is drawn with the same weight.
            let max = min.saturating_add(len);
            let span = (max - min) as u32 + 1;
            prop_assert_eq!(candidate(src, rand, min, max, false) as u32, min as u32 + rand % span);
        }

        #[test]
        fn inverted_range_is_clamped(src in 1024u16.., rand in any::<u32>(), parity in any::<bool>()) {
            prop_assert_eq!(candidate(src, rand, 40000, 30000, parity), 40000);
        }
    }

    #[test]
    fn parity_is_udp_only_and_configurable() {
        assert!(keeps_parity(PROTO_UDP, 0));
        assert!(!keeps_parity(PROTO_UDP, UDP_NO_PARITY));
        assert!(!keeps_parity(PROTO_TCP, 0));
        assert!(!keeps_parity(PROTO_ICMP, 0));
        assert!(!keeps_parity(PROTO_TCP, UDP_NO_PARITY));
    }

    #[test]
    fn even_sources_reach_every_port_without_parity() {
        // The collapse this fixes: Linux hands out even source ports first, so with parity kept
        // TCP connections from even ports only ever reached half the range.
        let mut seen = [false; 16];
        for r in 0..256u32 {
            let p = candidate(40000, r.wrapping_mul(2654435761), 40000, 40015, false);
            seen[(p - 40000) as usize] = true;
        }
        assert!(seen.iter().all(|s| *s), "{seen:?}");
    }

    #[test]
    fn spreads_over_the_range() {
        // Every even port of a small range is reachable: the choice is not a fixed sequence.
        let mut seen = [false; 16];
        for r in 0..64u32 {
            let p = candidate(40000, r.wrapping_mul(2654435761), 40000, 40015, true);
            seen[(p - 40000) as usize] = true;
        }
        for (i, s) in seen.iter().enumerate() {
            assert_eq!(*s, i % 2 == 0, "port {}", 40000 + i);
        }
    }

    fn walk(lo: u16, hi: u16, start: u16, parity: bool) -> std::collections::BTreeSet<u16> {
        let mut seen = std::collections::BTreeSet::new();
        let mut p = start;
        loop {
            p = next_port(p, lo, hi, parity);
            assert!((lo..=hi).contains(&p), "{p}");
            if parity {
                assert_eq!(p % 2, start % 2, "{p}");
            }
            if !seen.insert(p) {
                break;
            }
        }
        seen
    }

    #[test]
    fn walking_visits_every_port_of_one_parity_once() {
        for (lo, hi, start) in [(41000u16, 41063u16, 41010u16), (41000, 41063, 41011), (512, 1023, 1023), (40000, 40000, 40000)] {
            let want = (lo..=hi).filter(|q| q % 2 == start % 2).count();
            assert_eq!(walk(lo, hi, start, true).len(), want, "{lo}-{hi} from {start}");
        }
    }

    #[test]
    fn walking_without_parity_visits_every_port_once() {
        for (lo, hi, start) in [(41000u16, 41063u16, 41010u16), (512, 1023, 1023), (1024, 65535, 65535), (40000, 40000, 40000)] {
            assert_eq!(walk(lo, hi, start, false).len(), (hi - lo) as usize + 1, "{lo}-{hi} from {start}");
        }
    }

    #[test]
    fn snat_ports() {
        assert!(is_snat_port(40000, 32768, 65535));
        assert!(is_snat_port(600, 32768, 65535));
        assert!(!is_snat_port(22, 32768, 65535));
        assert!(!is_snat_port(8080, 32768, 65535));
        assert!(!is_snat_port(32767, 32768, 65535));
    }

    proptest! {
        #[test]
        fn candidates_are_snat_ports(src in any::<u16>(), rand in any::<u32>(), min in 1024u16..60000,
                                     len in 0u16..5000, parity in any::<bool>()) {
            let max = min.saturating_add(len);
            prop_assert!(is_snat_port(candidate(src, rand, min, max, parity), min, max));
        }
    }

    #[test]
    fn privileged_stay_privileged() {
        for parity in [true, false] {
            assert!(candidate(53, 12345, 32768, 65535, parity) < 1024);
            assert!(candidate(500, 0, 32768, 65535, parity) >= PRIV_PORT_MIN);
            assert!(candidate(1024, 0, 32768, 65535, parity) >= 32768);
        }
    }
}
