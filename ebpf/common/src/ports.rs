//! External port choice (RFC 6056-style randomization, range and parity preservation).
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

/// The external port to try for `src_port`, from a random number: uniform in the range, with the
/// parity of `src_port` when the range allows it (RFC 4787 REQ-4).
#[inline(always)]
pub const fn candidate(src_port: u16, rand: u32, port_min: u16, port_max: u16) -> u16 {
    let (lo, hi) = range_for(src_port, port_min, port_max);
    let span = (hi - lo) as u32 + 1;
    let p = lo as u32 + rand % span;
    let p = if (p ^ src_port as u32) & 1 == 0 {
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

/// The port after `p` in `lo..=hi` with the same parity, wrapping around; `p` itself when the
/// range holds no other such port.
#[inline(always)]
pub const fn next_same_parity(p: u16, lo: u16, hi: u16) -> u16 {
    if (p as u32) + 2 <= hi as u32 {
        return p + 2;
    }
    // Wrap to the lowest port of p's parity.
    let first = if (lo ^ p) & 1 == 0 { lo } else { lo.saturating_add(1) };
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
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn stays_in_range_and_keeps_parity(src in any::<u16>(), rand in any::<u32>(),
                                           min in 1024u16..65535, len in 1u16..4000) {
            let max = min.saturating_add(len);
            let p = candidate(src, rand, min, max);
            if src < 1024 {
                prop_assert!((PRIV_PORT_MIN..=PRIV_PORT_MAX).contains(&p));
            } else {
                prop_assert!((min..=max).contains(&p), "{p} not in {min}..={max}");
            }
            prop_assert_eq!(p & 1, src & 1);
        }

        #[test]
        fn inverted_range_is_clamped(src in 1024u16.., rand in any::<u32>()) {
            prop_assert_eq!(candidate(src, rand, 40000, 30000), 40000);
        }
    }

    #[test]
    fn spreads_over_the_range() {
        // Every even port of a small range is reachable: the choice is not a fixed sequence.
        let mut seen = [false; 16];
        for r in 0..64u32 {
            let p = candidate(40000, r.wrapping_mul(2654435761), 40000, 40015);
            seen[(p - 40000) as usize] = true;
        }
        for (i, s) in seen.iter().enumerate() {
            assert_eq!(*s, i % 2 == 0, "port {}", 40000 + i);
        }
    }

    #[test]
    fn walking_visits_every_port_of_one_parity_once() {
        for (lo, hi, start) in [(41000u16, 41063u16, 41010u16), (41000, 41063, 41011), (512, 1023, 1023), (40000, 40000, 40000)] {
            let mut seen = std::collections::BTreeSet::new();
            let mut p = start;
            loop {
                p = next_same_parity(p, lo, hi);
                assert!((lo..=hi).contains(&p) && p % 2 == start % 2, "{p}");
                if !seen.insert(p) {
                    break;
                }
            }
            let want = (lo..=hi).filter(|q| q % 2 == start % 2).count();
            assert_eq!(seen.len(), want, "{lo}-{hi} from {start}");
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
        fn candidates_are_snat_ports(src in any::<u16>(), rand in any::<u32>(), min in 1024u16..60000, len in 0u16..5000) {
            let max = min.saturating_add(len);
            prop_assert!(is_snat_port(candidate(src, rand, min, max), min, max));
        }
    }

    #[test]
    fn privileged_stay_privileged() {
        assert!(candidate(53, 12345, 32768, 65535) < 1024);
        assert!(candidate(500, 0, 32768, 65535) >= PRIV_PORT_MIN);
        assert!(candidate(1024, 0, 32768, 65535) >= 32768);
    }
}
