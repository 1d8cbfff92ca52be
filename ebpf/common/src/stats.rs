//! Counters in the per-CPU `stats` array: one slot per verdict and drop reason.
//!
//! The index is the enum discriminant; userspace sums the per-CPU values and prints `name()`.
//! Add new counters at the end only (indices are part of the pinned-map ABI).

macro_rules! counters {
    ($($variant:ident = $idx:literal => $name:literal,)*) => {
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Counter {
            $($variant = $idx,)*
        }

        impl Counter {
            pub const ALL: &'static [Counter] = &[$(Counter::$variant,)*];

            pub const fn name(self) -> &'static str {
                match self {
                    $(Counter::$variant => $name,)*
                }
            }

            pub fn from_index(idx: u32) -> Option<Counter> {
                match idx {
                    $($idx => Some(Counter::$variant),)*
                    _ => None,
                }
            }

            /// Counters whose name starts with `drop_` are drop reasons.
            pub fn is_drop(self) -> bool {
                let n = self.name().as_bytes();
                n.len() > 5 && n[0] == b'd' && n[1] == b'r' && n[2] == b'o' && n[3] == b'p' && n[4] == b'_'
            }
        }
    };
}

counters! {
    // Verdicts.
    Pass = 0 => "pass",
    SnatOut = 1 => "snat_out",
    SnatNewMapping = 2 => "snat_new_mapping",
    SnatNewFlow = 3 => "snat_new_flow",
    RevNat = 4 => "rev_nat",
    IcmpErrorTranslated = 5 => "icmp_error_translated",
    FragTranslated = 6 => "frag_translated",
    FibRedirect = 7 => "fib_redirect",
    LocalPass = 8 => "local_pass",
    NotOurs = 9 => "not_ours",
    Sg6Allowed = 10 => "sg6_allowed",
    Sg6Tracked = 11 => "sg6_tracked",
    Sg6NdpPass = 12 => "sg6_ndp_pass",
    LruEvictionSuspected = 13 => "lru_eviction_suspected",
    IcmpUnreachSent = 14 => "icmp_unreach_sent",
    // A later fragment of a datagram for the node itself (its first fragment was not ours).
    FragPassed = 29 => "frag_passed",
    FibRedirectNeigh = 30 => "fib_redirect_neigh",
    // Drop reasons.
    DropMalformed = 32 => "drop_malformed",
    DropSpoofV4 = 33 => "drop_spoof_v4",
    DropSpoofV6 = 34 => "drop_spoof_v6",
    DropPortExhausted = 35 => "drop_port_exhausted",
    DropPodQuota = 36 => "drop_pod_quota",
    DropNoMapping = 37 => "drop_no_mapping",
    DropIcmpNoMapping = 38 => "drop_icmp_no_mapping",
    DropIcmpBadChecksum = 39 => "drop_icmp_bad_checksum",
    DropFragOrphan = 40 => "drop_frag_orphan",
    DropUnsupportedProto = 41 => "drop_unsupported_proto",
    DropMapFull = 42 => "drop_map_full",
    DropNatConflict = 43 => "drop_nat_conflict",
    DropPodLocalLeak = 44 => "drop_pod_local_leak",
    DropSg6Ingress = 45 => "drop_sg6_ingress",
    DropSg6Egress = 46 => "drop_sg6_egress",
    DropExtHdrChain = 47 => "drop_exthdr_chain",
    DropRoutingType0 = 48 => "drop_routing_type0",
    DropTinyFragment = 49 => "drop_tiny_fragment",
    DropInternalError = 50 => "drop_internal_error",
    DropUnknownPod = 51 => "drop_unknown_pod",
    // Added by the SNAT work (verdict).
    SnatHairpin = 52 => "snat_hairpin",
    // IPv6 security groups.
    // A non-first fragment that would overwrite the headers its first fragment was judged on.
    DropFragOverlap = 53 => "drop_frag_overlap",
    // A DF packet too big for the uplink; the pod gets 3/4 with the MTU.
    DropFragNeeded = 54 => "drop_frag_needed",
    // Inbound fragments ahead of their first fragment, handed to the daemon (`frag` module).
    FragPunted = 55 => "frag_punted",
    // The `frag4_punt` ring was full: the orphan is dropped.
    DropFragPuntFull = 56 => "drop_frag_punt_full",
    // A first fragment released punted orphans (one record per datagram).
    FragPuntReleased = 57 => "frag_punt_released",
    // Layer 2 on a pod veth (both hooks): only untagged IPv4, IPv6 and ARP pass. A frame whose
    // tag the veth already pulled into the skb (`vlan_present`), or a tag still in the frame
    // (0x8100/0x88a8/0x9100: the stack would strip a VID-0 stack after tc and deliver the inner
    // packet unfiltered), or any other EtherType.
    DropVlanTagged = 58 => "drop_vlan_tagged",
    DropEtherType = 59 => "drop_ethertype",
    // A pod's IPv4 packet whose TTL ends at the NAT (answered with 11/0 from the gateway unless
    // it is a later fragment or an ICMP error).
    DropTtlExpired = 60 => "drop_ttl_expired",
    // A new flow of a pod already holding its `[limits] pod_flows` in `ct6` (inbound
    // unanswered flows are refused earlier, at `sg::pod_flow_admits`'s reserve).
    DropSg6PodFlows = 61 => "drop_sg6_pod_flows",
    // A new flow while `ct6` is above its mark (`ct6_guard`: the high-water mark for inbound
    // flows, where the LRU would evict for the pod's own): refused rather than inserted,
    // because the LRU would evict a live flow to make room.
    DropSg6CtPressure = 62 => "drop_sg6_ct_pressure",
    // An inbound packet that would create a `ct4` flow for a pod already holding 7/8 of its
    // `[limits] pod_flows` IPv4 flows: dropped, because the flow's entry is what carries the
    // pod's answer back out through the port the remote wrote to.
    DropNat4PodFlows = 63 => "drop_nat4_pod_flows",
}

/// Size of the `stats` array.
pub const COUNTER_SLOTS: u32 = 64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_round_trip_and_fit() {
        for &c in Counter::ALL {
            assert_eq!(Counter::from_index(c as u32), Some(c));
            assert!((c as u32) < COUNTER_SLOTS);
        }
        assert!(Counter::DropMalformed.is_drop());
        assert!(!Counter::SnatOut.is_drop());
    }
}
