//! Internet checksum arithmetic (RFC 1071, incremental updates per RFC 1624).
//!
//! Checksums are handled as `u16` values in host order of the big-endian field (read the two
//! bytes with `u16::from_be_bytes`). The eBPF programs use these where no kernel helper applies
//! (XDP, and the headers embedded in ICMP errors), so they must stay loop-free and tiny.

/// Folds a 32-bit one's-complement accumulator to 16 bits.
#[inline(always)]
pub const fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// RFC 1624 eqn. 3: the checksum field `hc` after one 16-bit word of the covered data changed
/// from `old` to `new`: HC' = ~(~HC + ~m + m').
#[inline(always)]
pub const fn update16(hc: u16, old: u16, new: u16) -> u16 {
    !fold(!hc as u32 + !old as u32 + new as u32)
}

/// The same for a 32-bit quantity (an IPv4 address), given as its four bytes.
#[inline(always)]
pub const fn update32(hc: u16, old: [u8; 4], new: [u8; 4]) -> u16 {
    let o1 = u16::from_be_bytes([old[0], old[1]]);
    let o2 = u16::from_be_bytes([old[2], old[3]]);
    let n1 = u16::from_be_bytes([new[0], new[1]]);
    let n2 = u16::from_be_bytes([new[2], new[3]]);
    !fold(!hc as u32 + !o1 as u32 + !o2 as u32 + n1 as u32 + n2 as u32)
}

/// UDP rules on top of an update: a field of 0 means "no checksum" and stays 0; a computed 0 is
/// sent as 0xffff (RFC 768). `before` is the field before the update, `updated` the result.
#[inline(always)]
pub const fn udp_fix(before: u16, updated: u16) -> u16 {
    if before == 0 {
        0
    } else if updated == 0 {
        0xffff
    } else {
        updated
    }
}

/// Full checksum of `data` (host side: tests and userspace; the eBPF programs only ever update).
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum_words(data, 0))
}

/// One's-complement sum of `data` as big-endian words added to `acc` (odd length zero-padded).
pub fn sum_words(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc = fold(acc + u16::from_be_bytes([c[0], c[1]]) as u32) as u32;
    }
    if let [b] = chunks.remainder() {
        acc = fold(acc + u16::from_be_bytes([*b, 0]) as u32) as u32;
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn with_field(data: &[u8], off: usize) -> Vec<u8> {
        let mut d = data.to_vec();
        d[off] = 0;
        d[off + 1] = 0;
        let c = checksum(&d);
        d[off..off + 2].copy_from_slice(&c.to_be_bytes());
        d
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3 example bytes: sum 0xddf2, checksum 0x220d.
        let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&d), 0x220d);
    }

    proptest! {
        /// Changing a 16-bit word and updating incrementally equals recomputing from scratch.
        #[test]
        fn update16_equals_recompute(mut data in proptest::collection::vec(any::<u8>(), 4..64),
                                     word in any::<prop::sample::Index>(), new in any::<u16>()) {
            let n = data.len() / 2;
            data.truncate(n * 2);
            let d = with_field(&data, 0);
            let w = 1 + word.index(n - 1);
            let old = u16::from_be_bytes([d[2 * w], d[2 * w + 1]]);
            let hc = u16::from_be_bytes([d[0], d[1]]);
            let mut d2 = d.clone();
            d2[2 * w..2 * w + 2].copy_from_slice(&new.to_be_bytes());
            let inc = update16(hc, old, new);
            let full = with_field(&d2, 0);
            // 0x0000 and 0xffff are the same one's-complement number; the recomputation never
            // yields 0xffff for nonzero data, the incremental form may (RFC 1624 §3).
            let fullc = u16::from_be_bytes([full[0], full[1]]);
            prop_assert!(inc == fullc || (inc == 0xffff && fullc == 0) || (inc == 0 && fullc == 0xffff),
                         "inc {inc:#x} full {fullc:#x}");
            // And the packet verifies: the sum over everything including the field is 0xffff.
            d2[0..2].copy_from_slice(&inc.to_be_bytes());
            prop_assert_eq!(fold(sum_words(&d2, 0)), 0xffff);
        }

        #[test]
        fn update32_equals_two_update16(hc in any::<u16>(), old in any::<[u8; 4]>(), new in any::<[u8; 4]>()) {
            let a = update32(hc, old, new);
            let b = update16(update16(hc, u16::from_be_bytes([old[0], old[1]]), u16::from_be_bytes([new[0], new[1]])),
                             u16::from_be_bytes([old[2], old[3]]), u16::from_be_bytes([new[2], new[3]]));
            prop_assert_eq!(fold(!a as u32), fold(!b as u32));
        }

        #[test]
        fn address_rewrite_keeps_packet_valid(mut data in proptest::collection::vec(any::<u8>(), 20..40),
                                              new in any::<[u8; 4]>()) {
            data.truncate(data.len() / 2 * 2);
            let d = with_field(&data, 10);
            let old = [d[12], d[13], d[14], d[15]];
            let hc = u16::from_be_bytes([d[10], d[11]]);
            let mut d2 = d.clone();
            d2[12..16].copy_from_slice(&new);
            d2[10..12].copy_from_slice(&update32(hc, old, new).to_be_bytes());
            prop_assert_eq!(fold(sum_words(&d2, 0)), 0xffff);
        }
    }

    #[test]
    fn udp_zero_stays_zero() {
        assert_eq!(udp_fix(0, update16(0, 1, 2)), 0);
        // A result of 0 is transmitted as all ones.
        assert_eq!(udp_fix(0x1234, 0), 0xffff);
        assert_eq!(udp_fix(0x1234, 0x4321), 0x4321);
    }
}
