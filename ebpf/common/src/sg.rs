//! IPv6 security groups: map ABI and the pure matching logic shared by the programs and the
//! userspace rule compiler.
//!
//! # Rule maps
//! `sg_rules` is an LPM trie keyed by (group, generation, direction, remote prefix). Longest-prefix
//! match returns only the most specific prefix, so the compiler stores in every entry the union of
//! all rules of that group and direction whose prefix *contains* the entry's prefix. The entry
//! points at a run of [`SgRange`]s in the `sg_ranges` array: disjoint, sorted intervals over a
//! 24-bit [`match_key`] (protocol, port or ICMPv6 type/code). A packet therefore costs one LPM
//! lookup per group of its pod (at most [`crate::MAX_POD_GROUPS`]) plus a bounded binary search,
//! whatever the number of rules.
//!
//! Rule changes are written under the generation that is not live (its own half of `sg_ranges`
//! and its own LPM keys), then `sg_gen` is flipped with one array write, so a packet sees either
//! the old or the new rule set, never a mix.
//!
//! # State
//! `ct6` tracks flows as seen from the pod, so that the request and its reply share one key.
//! `frag6` remembers the verdict of a first fragment for the fragments that follow it.

pub mod exthdr;

pub mod map_names {
    pub const SG_RULES: &str = "sg_rules";
    pub const SG_RANGES: &str = "sg_ranges";
    pub const SG_GEN: &str = "sg_gen";
    pub const CT6: &str = "ct6";
    /// `[created, limit, limit_out]` (u64 each): the node-wide guard on new `ct6` entries.
    pub const CT6_GUARD: &str = "ct6_guard";
    pub const FRAG6: &str = "frag6";
    pub const SG_SCRATCH: &str = "sg_scratch";
    /// Userspace only: group id → name.
    pub const SG_NAMES: &str = "sg_names";
}

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;
pub const PROTO_SCTP: u8 = 132;

/// Direction of a rule, seen from the pod.
pub const DIR_INGRESS: u8 = 0;
pub const DIR_EGRESS: u8 = 1;

/// Two generations of rules: the live one and the one being written.
pub const SG_GENERATIONS: u32 = 2;
/// Size of one generation's half of `sg_ranges`.
pub const SG_RANGES_PER_GEN: u32 = 65536;
/// Entries of the `sg_rules` trie (both generations).
pub const SG_RULES_MAX: u32 = 131072;
/// Iterations of the binary search over one entry's ranges: 2^17 > `SG_RANGES_PER_GEN`.
pub const SG_SEARCH_STEPS: u32 = 17;
/// Bits of [`SgKey`] before the remote address; the LPM prefix length is this plus the remote
/// prefix length.
pub const SG_KEY_FIXED_BITS: u32 = 64;

/// Rule id reported in events when no rule is involved.
pub const NO_RULE: u32 = u32::MAX;

/// Data part of an `sg_rules` LPM key. Every field before `addr` is always matched in full.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SgKey {
    /// Group id, big endian so that the trie's bit order is the numeric order.
    pub group: [u8; 4],
    pub generation: u8,
    pub dir: u8,
    pub _pad: [u8; 2],
    /// Remote address (network order); the prefix covers its first `prefix_len - 64` bits.
    pub addr: [u8; 16],
}

impl SgKey {
    pub const fn new(group: u32, generation: u8, dir: u8, addr: [u8; 16]) -> Self {
        Self { group: group.to_be_bytes(), generation, dir, _pad: [0; 2], addr }
    }
}

/// Value of `sg_rules`: the ranges `base .. base + count` of `sg_ranges`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SgEntry {
    pub base: u32,
    pub count: u32,
}

/// One interval of allowed [`match_key`]s, with the id of the (first) rule that allows it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SgRange {
    pub lo: u32,
    pub hi: u32,
    pub rule: u32,
}

/// The key a packet is matched on: protocol in bits 16..24, then the destination port (TCP, UDP,
/// SCTP) or ICMPv6 type and code; 0 for other protocols.
#[inline(always)]
pub const fn match_key(proto: u8, dport: u16, icmp_type: u8, icmp_code: u8) -> u32 {
    let low = match proto {
        PROTO_TCP | PROTO_UDP | PROTO_SCTP => dport as u32,
        PROTO_ICMPV6 => ((icmp_type as u32) << 8) | icmp_code as u32,
        _ => 0,
    };
    ((proto as u32) << 16) | low
}

/// Whether a protocol's rules may carry a port range.
pub const fn has_ports(proto: u8) -> bool {
    matches!(proto, PROTO_TCP | PROTO_UDP | PROTO_SCTP)
}

/// Bounded binary search over `count` disjoint sorted ranges read through `get` (relative index).
/// Returns the rule id of the range containing `key`.
///
/// `opaque` is the identity on the host; in the programs it hides a value's known bounds from the
/// verifier, so that the states of every step look alike and get pruned instead of multiplying
/// (2^steps paths otherwise).
#[inline(always)]
pub fn find_range(
    count: u32,
    key: u32,
    get: impl Fn(u32) -> Option<SgRange>,
    opaque: impl Fn(u32) -> Option<u32>,
) -> Option<u32> {
    let mut lo = 0u32;
    let mut hi = count;
    let mut i = 0;
    while i < SG_SEARCH_STEPS {
        lo = opaque(lo)?;
        hi = opaque(hi)?;
        if lo >= hi || hi > SG_RANGES_PER_GEN {
            return None;
        }
        let mid = lo + (hi - lo) / 2;
        let r = get(mid)?;
        if r.lo <= key {
            if key <= r.hi {
                return Some(r.rule);
            }
            lo = mid + 1;
        } else {
            hi = mid;
        }
        i += 1;
    }
    None
}

/// ICMPv6 types of neighbour discovery (RFC 4861: RS, RA, NS, NA, redirect).
#[inline(always)]
pub const fn is_ndp(icmp_type: u8) -> bool {
    matches!(icmp_type, 133..=137)
}

/// ICMPv6 types of multicast listener discovery (RFC 2710 query/report/done, RFC 3810 v2 report).
#[inline(always)]
pub const fn is_mld(icmp_type: u8) -> bool {
    matches!(icmp_type, 130..=132 | 143)
}

/// Whether an NDP or MLD message is one that is valid on the pod's link, and so may bypass the
/// security groups. Anything else with these types (a "Neighbour Solicitation" to a global
/// address is just a way to carry bytes past an egress deny) is ordinary ICMPv6 for the rules.
///
/// `egress`: the pod sent it; otherwise it is delivered to the pod. `peer_is_node`: the address
/// on the node's side of the link (the destination when the pod sends, the source when it
/// receives) is one of the node's own (the programs ask the FIB: a local route).
/// - NDP carries hop limit 255 (RFC 4861 §6-8: a receiver discards anything else, so nothing
///   that crossed a router is NDP); MLD carries hop limit 1 and a link-local source, or `::`
///   for a report before the interface has one (RFC 2710 §3, RFC 3810 §5.2.13).
/// - The source is link-local, `::` (DAD, RFC 4862 §5.4), from the pod the pod's own address
///   (NS for NUD, the NA answering the node), toward the pod one of the node's own addresses
///   (Linux solicits from the address on the veth when it has one).
/// - The destination is link-local unicast (the gateway fe80::1, or the pod's link-local), a
///   solicited-node group ff02::1:ffXX:XXXX, all-nodes ff02::1, all-routers ff02::2, MLDv2
///   routers ff02::16, toward the pod the pod's own address (the node's NUD probe), from the pod
///   one of the node's own addresses (NUD of an on-link gateway with a global address).
///
/// A message that passes here cannot leave the link: the node does not forward packets with a
/// link-local source or link-scoped destination, delivers its own addresses' packets locally,
/// and drops hop-limit-1 packets it would forward. Toward the pod, hop limit 255 (or 1) means
/// the node itself sent it: anything forwarded to the veth lost a hop.
pub fn ndp_on_link(icmp_type: u8, hop_limit: u8, src: &[u8; 16], dst: &[u8; 16], pod: &[u8; 16], egress: bool, peer_is_node: bool) -> bool {
    ndp_type_on_link(icmp_type, ndp_link_bits(hop_limit, src, dst, pod, egress, peer_is_node))
}

/// [`ndp_link_bits`]: the addresses and hop limit would make an NDP message valid on the link.
pub const NDP_ON_LINK: u32 = 1;
/// [`ndp_link_bits`]: ... an MLD message.
pub const MLD_ON_LINK: u32 = 2;

/// The part of [`ndp_on_link`] that depends on the IP header only, as `NDP_ON_LINK | MLD_ON_LINK`
/// bits: the programs compute it at the entry point, in a BPF function of its own, because the
/// IPv6 path's frame has no room for it (see `ndp_bits_tc` in the programs).
#[inline(always)]
pub fn ndp_link_bits(hop_limit: u8, src: &[u8; 16], dst: &[u8; 16], pod: &[u8; 16], egress: bool, peer_is_node: bool) -> u32 {
    if hop_limit != 255 && hop_limit != 1 {
        return 0;
    }
    // Only a unicast, non-link-local address can be the node's in this sense.
    let peer_is_node = peer_is_node && ndp_peer_lookup_needed(hop_limit, src, dst, egress);
    if !(is_link_destination(dst) || (!egress && same(dst, pod)) || (egress && peer_is_node)) {
        return 0;
    }
    let link_src = is_linklocal(src) || all_zero(src);
    if hop_limit == 1 {
        return if link_src { MLD_ON_LINK } else { 0 };
    }
    if link_src || (egress && same(src, pod)) || (!egress && peer_is_node) { NDP_ON_LINK } else { 0 }
}

/// Whether [`ndp_link_bits`] could change with `peer_is_node`: the hop limit is NDP's or MLD's
/// and the node-side address is a unicast one outside the link-local range. Only then do the
/// programs pay for a FIB lookup.
#[inline(always)]
pub fn ndp_peer_lookup_needed(hop_limit: u8, src: &[u8; 16], dst: &[u8; 16], egress: bool) -> bool {
    let peer = if egress { dst } else { src };
    (hop_limit == 255 || hop_limit == 1) && peer[0] != 0xff && !is_linklocal(peer) && !all_zero(peer)
}

/// Whether `icmp_type` is NDP or MLD and `bits` (from [`ndp_link_bits`]) say it is valid on the link.
#[inline(always)]
pub const fn ndp_type_on_link(icmp_type: u8, bits: u32) -> bool {
    (is_ndp(icmp_type) && bits & NDP_ON_LINK != 0) || (is_mld(icmp_type) && bits & MLD_ON_LINK != 0)
}

// Byte loops with an early exit rather than array comparisons: compiled for BPF, these compare
// and branch one byte at a time instead of loading all 16 bytes into registers first, which
// spilled them to a stack that the IPv6 path does not have to spare.

#[inline(always)]
fn is_linklocal(a: &[u8; 16]) -> bool {
    a[0] == 0xfe && (a[1] & 0xc0) == 0x80
}

#[inline(always)]
fn all_zero(a: &[u8; 16]) -> bool {
    let mut i = 0;
    while i < 16 {
        if a[i] != 0 {
            return false;
        }
        i += 1;
    }
    true
}

#[inline(always)]
fn same(a: &[u8; 16], b: &[u8; 16]) -> bool {
    let mut i = 0;
    while i < 16 {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Link-local unicast (fe80::/10), or one of the link-scoped groups NDP and MLD use.
#[inline(always)]
pub fn is_link_destination(a: &[u8; 16]) -> bool {
    if is_linklocal(a) {
        return true;
    }
    // ff02::/16 with zeros up to the last 32 bits (ff02::1, ::2, ::16) or 24 (solicited-node).
    if a[0] != 0xff || a[1] != 0x02 {
        return false;
    }
    let mut i = 2;
    while i < 11 {
        if a[i] != 0 {
            return false;
        }
        i += 1;
    }
    if a[11] == 0x01 {
        return a[12] == 0xff;
    }
    a[11] == 0 && a[12] == 0 && a[13] == 0 && a[14] == 0 && matches!(a[15], 0x01 | 0x02 | 0x16)
}

/// ICMPv6 error messages (destination unreachable, packet too big, time exceeded, parameter
/// problem): they pass when the packet they carry belongs to a tracked flow.
#[inline(always)]
pub const fn is_icmp_error(icmp_type: u8) -> bool {
    matches!(icmp_type, 1..=4)
}

pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_ECHO_REPLY: u8 = 129;

/// Source addresses a pod may use besides its /128: link-local (fe80::/10) and the unspecified
/// address (duplicate address detection).
#[inline(always)]
pub fn is_linklocal_or_unspecified(a: &[u8; 16]) -> bool {
    (a[0] == 0xfe && (a[1] & 0xc0) == 0x80) || *a == [0u8; 16]
}

#[inline(always)]
pub fn is_multicast(a: &[u8; 16]) -> bool {
    a[0] == 0xff
}

/// Whether `a` lies in the /80 `prefix`.
#[inline(always)]
pub fn in_prefix80(a: &[u8; 16], prefix: &[u8; 16]) -> bool {
    let mut i = 0;
    while i < 10 {
        if a[i] != prefix[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Key of `ct6`: a flow as seen from the pod, the same for both directions.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Flow6 {
    pub pod_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    /// For ICMPv6 echo, the identifier is the pod port and the remote port is 0.
    pub pod_port: u16,
    pub remote_port: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

impl Flow6 {
    /// The tracked flow of a packet, or `None` for ICMPv6 messages that do not open flows
    /// (everything but echo). `pod_is_src`: the pod sent the packet. For ICMPv6 echo, `sport`
    /// is the identifier, used as the pod port in both directions so that request and reply
    /// meet.
    #[inline(always)]
    pub fn of_packet(
        proto: u8,
        pod_addr: [u8; 16],
        remote_addr: [u8; 16],
        pod_is_src: bool,
        sport: u16,
        dport: u16,
        icmp_type: u8,
    ) -> Option<Self> {
        let (pod_port, remote_port) = match proto {
            PROTO_ICMPV6 => match icmp_type {
                ICMPV6_ECHO_REQUEST | ICMPV6_ECHO_REPLY => (sport, 0),
                _ => return None,
            },
            PROTO_TCP | PROTO_UDP | PROTO_SCTP => {
                if pod_is_src { (sport, dport) } else { (dport, sport) }
            }
            _ => (0, 0),
        };
        Some(Self { pod_addr, remote_addr, pod_port, remote_port, proto, _pad: [0; 3] })
    }
}

/// `Ct6::flags` bits.
pub mod ct6_flags {
    pub const SEEN_REPLY: u8 = 1 << 0;
    pub const TCP_FIN: u8 = 1 << 1;
    pub const TCP_RST: u8 = 1 << 2;
    /// The opener spoke again, without SYN, after the other side's reply: a handshake completed
    /// (Linux conntrack's IPS_ASSURED). A reply alone is not enough: a pod answers every SYN of
    /// a spoofed flood with a SYN-ACK that nobody acknowledges.
    pub const ASSURED: u8 = 1 << 3;
}

/// `ct6` entries compiled into the object (`[limits] conntrack6` resizes it at creation).
pub const CT6_DEFAULT_ENTRIES: u32 = 262144;

/// Slots of `ct6_guard`: `CREATED` is added to by the programs only (every `ct6` insert), `LIMIT`
/// written by the daemon only, so that neither side read-modify-writes the other's word.
pub const CT6_GUARD_CREATED: u32 = 0;
pub const CT6_GUARD_LIMIT: u32 = 1;
/// The limit for new outbound (pod-initiated) flows: higher, up to where the LRU would start
/// evicting, so that a pod's own connections still get in while inbound ones are refused, and
/// no new flow of any kind makes the LRU evict an established one.
pub const CT6_GUARD_LIMIT_OUT: u32 = 2;
pub const CT6_GUARD_SLOTS: u32 = 3;

/// The occupancy from which the LRU may evict (its per-CPU free lists,
/// `crate::pressure::LRU_LOCAL_FREE`): the outbound guard's mark.
pub const fn lru_evicts_from(max_entries: u64, ncpus: u64) -> u64 {
    max_entries.saturating_sub(crate::pressure::LRU_LOCAL_FREE * (ncpus + 1))
}

/// Flag update of a tracked flow for one packet: `from_origin` is whether the packet comes
/// from the side that opened the flow, `tcp_flags` its TCP flags (0 for other protocols).
#[inline(always)]
pub const fn ct6_next_flags(flags: u8, from_origin: bool, tcp_flags: u8) -> u8 {
    let mut f = flags;
    if !from_origin {
        f |= ct6_flags::SEEN_REPLY;
    } else if flags & ct6_flags::SEEN_REPLY != 0 && tcp_flags & 0x02 == 0 {
        f |= ct6_flags::ASSURED;
    }
    if tcp_flags & 0x01 != 0 {
        f |= ct6_flags::TCP_FIN;
    }
    if tcp_flags & 0x04 != 0 {
        f |= ct6_flags::TCP_RST;
    }
    f
}

/// An inbound-created flow whose handshake never completed: what gives way first (early drop,
/// `[timeouts] unanswered`, the inbound share of `pod_flows`).
#[inline(always)]
pub const fn is_unanswered(ct: &Ct6) -> bool {
    ct.origin == DIR_INGRESS && ct.flags & ct6_flags::ASSURED == 0
}

/// Whether a pod holding `held` flows may open one more under its bound (`[limits]
/// pod_flows`, 0: unbounded). New inbound flows stop an eighth of the bound earlier, so that a
/// flood toward a pod's open port leaves that room to the pod's own outbound flows.
#[inline(always)]
pub const fn pod_flow_admits(held: u64, bound: u32, inbound: bool) -> bool {
    if bound == 0 {
        return true;
    }
    let bound = bound as u64;
    let cap = if inbound { bound - bound / 8 } else { bound };
    held < cap
}

/// Whether the node-wide guard refuses a new inbound flow: the daemon allows `limit - created`
/// more entries until its next pass (0: no guard written yet).
#[inline(always)]
pub const fn guard_refuses(created: u64, limit: u64) -> bool {
    limit != 0 && created >= limit
}

/// The guard the daemon writes after a pass: `created` is the programs' tally read *before*
/// the pass counted `used` entries, so that flows created while it counted are charged twice
/// (never missed); room up to `high_water` stays for new inbound flows.
pub const fn guard_limit(created: u64, used: u64, high_water: u64) -> u64 {
    let room = high_water.saturating_sub(used);
    let l = created.saturating_add(room);
    if l == 0 { 1 } else { l }
}

/// Value of `ct6`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ct6 {
    /// Who opened the flow: `DIR_EGRESS` (the pod) or `DIR_INGRESS` (the remote).
    pub origin: u8,
    pub flags: u8,
    pub _pad: u16,
    /// The rule that allowed the flow, or `NO_RULE` (pod without groups, egress).
    pub rule: u32,
    /// `pods` key (veth ifindex) of the pod, so that userspace can re-check the flow against new
    /// rules (`sg apply --cut`).
    pub pod_ifindex: u32,
    pub pod_id: u32,
    pub created_ns: u64,
    pub last_seen_ns: u64,
    pub packets_out: u64,
    pub packets_in: u64,
}

/// Key of `frag6`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey6 {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub id: u32,
    pub dir: u8,
    pub _pad: [u8; 3],
}

/// Value of `frag6`: the first fragment's verdict.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragVal6 {
    /// 1: allowed, 0: denied.
    pub allow: u8,
    pub proto: u8,
    /// Bytes of the fragmentable part that the first fragment's headers cover: a later fragment
    /// starting before this would overwrite them (RFC 1858 / RFC 5722 overlap attack).
    pub hdr_end: u16,
    pub sport: u16,
    pub dport: u16,
    pub seen_ns: u64,
}

#[cfg(feature = "user")]
mod pod_impls {
    // SAFETY: #[repr(C)], Copy, explicit padding only.
    unsafe impl aya::Pod for super::SgKey {}
    unsafe impl aya::Pod for super::SgEntry {}
    unsafe impl aya::Pod for super::SgRange {}
    unsafe impl aya::Pod for super::Flow6 {}
    unsafe impl aya::Pod for super::Ct6 {}
    unsafe impl aya::Pod for super::FragKey6 {}
    unsafe impl aya::Pod for super::FragVal6 {}
}

const _: () = {
    assert!(core::mem::size_of::<SgKey>() == 24);
    assert!(core::mem::size_of::<SgEntry>() == 8);
    assert!(core::mem::size_of::<SgRange>() == 12);
    assert!(core::mem::size_of::<Flow6>() == 40);
    assert!(core::mem::size_of::<Ct6>() == 48);
    assert!(core::mem::size_of::<FragKey6>() == 40);
    assert!(core::mem::size_of::<FragVal6>() == 16);
};

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use proptest::prelude::*;

    fn search(ranges: &[SgRange], key: u32) -> Option<u32> {
        find_range(ranges.len() as u32, key, |i| ranges.get(i as usize).copied(), Some)
    }

    #[test]
    fn match_keys() {
        assert_eq!(match_key(PROTO_TCP, 443, 0, 0), (6 << 16) | 443);
        assert_eq!(match_key(PROTO_ICMPV6, 0, 128, 0), (58 << 16) | (128 << 8));
        assert_eq!(match_key(47, 1234, 0, 0), 47 << 16);
    }

    #[test]
    fn request_and_reply_share_a_flow() {
        let (pod, remote) = ([1u8; 16], [2u8; 16]);
        let out = Flow6::of_packet(PROTO_TCP, pod, remote, true, 40000, 443, 0);
        let back = Flow6::of_packet(PROTO_TCP, pod, remote, false, 443, 40000, 0);
        assert_eq!(out, back);
        assert_eq!(out.unwrap().pod_port, 40000);
        let req = Flow6::of_packet(PROTO_ICMPV6, pod, remote, false, 77, 0, ICMPV6_ECHO_REQUEST);
        let rep = Flow6::of_packet(PROTO_ICMPV6, pod, remote, true, 77, 0, ICMPV6_ECHO_REPLY);
        assert_eq!(req, rep);
        assert!(Flow6::of_packet(PROTO_ICMPV6, pod, remote, true, 0, 0, 135).is_none());
        assert_eq!(Flow6::of_packet(47, pod, remote, true, 1, 2, 0).unwrap().pod_port, 0);
    }

    #[test]
    fn assured_needs_the_opener_after_a_reply() {
        use ct6_flags::*;
        // Outbound TCP: SYN out, SYN-ACK in, ACK out.
        let f = ct6_next_flags(0, true, 0x02);
        assert_eq!(f, 0);
        let f = ct6_next_flags(f, false, 0x12);
        assert_eq!(f, SEEN_REPLY);
        assert_eq!(ct6_next_flags(f, true, 0x10), SEEN_REPLY | ASSURED);
        // A spoofed SYN answered by the pod, then the same SYN again: never assured.
        let f = ct6_next_flags(ct6_next_flags(0, true, 0x02), false, 0x12);
        assert_eq!(ct6_next_flags(f, true, 0x02), SEEN_REPLY);
        // More replies alone do not assure either.
        assert_eq!(ct6_next_flags(f, false, 0x10), SEEN_REPLY);
        // UDP: request, answer, request.
        assert_eq!(ct6_next_flags(ct6_next_flags(0, false, 0), true, 0), SEEN_REPLY | ASSURED);
        assert_eq!(ct6_next_flags(0, true, 0x05), TCP_FIN | TCP_RST);
    }

    #[test]
    fn unanswered_is_inbound_and_not_assured() {
        let mut ct = Ct6 { origin: DIR_INGRESS, flags: ct6_flags::SEEN_REPLY, ..Default::default() };
        assert!(is_unanswered(&ct), "a SYN-ACK from the pod does not answer a flood");
        ct.flags |= ct6_flags::ASSURED;
        assert!(!is_unanswered(&ct));
        let out = Ct6 { origin: DIR_EGRESS, ..Default::default() };
        assert!(!is_unanswered(&out), "the pod's own flows are never 'unanswered'");
    }

    #[test]
    fn pod_flow_quota_refuses_inbound_first() {
        assert!(pod_flow_admits(1 << 40, 0, true), "0 is unbounded");
        assert!(pod_flow_admits(447, 512, true));
        assert!(!pod_flow_admits(448, 512, true), "inbound stops at 7/8");
        assert!(pod_flow_admits(448, 512, false), "the pod's own flows still get in");
        assert!(pod_flow_admits(511, 512, false));
        assert!(!pod_flow_admits(512, 512, false), "the bound is a hard maximum");
        assert!(!pod_flow_admits(1, 1, true) && pod_flow_admits(0, 1, true));
    }

    #[test]
    fn guard_limit_and_refusal() {
        assert!(!guard_refuses(1 << 40, 0), "no guard before the daemon's first pass");
        let l = guard_limit(1000, 3000, 3600);
        assert_eq!(l, 1600);
        assert!(!guard_refuses(1599, l) && guard_refuses(1600, l));
        assert_eq!(guard_limit(1000, 5000, 3600), 1000, "above the mark: refuse from now on");
        assert_eq!(guard_limit(0, 5000, 3600), 1, "never the 'no guard' value");
    }

    #[test]
    fn special_addresses() {
        let mut ll = [0u8; 16];
        ll[0] = 0xfe;
        ll[1] = 0x80;
        assert!(is_linklocal_or_unspecified(&ll));
        ll[1] = 0xbf;
        assert!(is_linklocal_or_unspecified(&ll));
        ll[1] = 0xc0; // fec0::/10, site-local: not allowed
        assert!(!is_linklocal_or_unspecified(&ll));
        assert!(is_linklocal_or_unspecified(&[0; 16]));
        let p = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        let mut a = p;
        a[15] = 9;
        assert!(in_prefix80(&a, &p));
        a[9] = 2;
        assert!(!in_prefix80(&a, &p));
    }

    fn v6(s: &str) -> [u8; 16] {
        s.parse::<std::net::Ipv6Addr>().unwrap().octets()
    }

    #[test]
    fn ndp_valid_on_link_only() {
        let pod = v6("2001:db8:0:1::a");
        let (ll, gw, any) = (v6("fe80::a"), v6("fe80::1"), v6("::"));
        let sn = v6("ff02::1:ff00:1");
        // The pod resolving its gateway, DAD, NUD, router solicitation, answers to the node.
        assert!(ndp_on_link(135, 255, &ll, &sn, &pod, true, false));
        assert!(ndp_on_link(135, 255, &pod, &sn, &pod, true, false));
        assert!(ndp_on_link(135, 255, &ll, &gw, &pod, true, false));
        assert!(ndp_on_link(135, 255, &any, &v6("ff02::1:ff00:a"), &pod, true, false));
        assert!(ndp_on_link(133, 255, &ll, &v6("ff02::2"), &pod, true, false));
        assert!(ndp_on_link(136, 255, &pod, &gw, &pod, true, false));
        assert!(ndp_on_link(136, 255, &ll, &v6("ff02::1"), &pod, true, false));
        // The node toward the pod: NS to its solicited-node group or, for NUD, its address.
        assert!(ndp_on_link(135, 255, &gw, &v6("ff02::1:ff00:a"), &pod, false, false));
        assert!(ndp_on_link(135, 255, &gw, &pod, &pod, false, false));
        assert!(ndp_on_link(134, 255, &gw, &v6("ff02::1"), &pod, false, false));
        assert!(ndp_on_link(136, 255, &gw, &ll, &pod, false, false));
        // MLD: hop limit 1, link-local (or ::) source.
        assert!(ndp_on_link(143, 1, &ll, &v6("ff02::16"), &pod, true, false));
        assert!(ndp_on_link(143, 1, &any, &v6("ff02::16"), &pod, true, false));
        assert!(ndp_on_link(130, 1, &gw, &v6("ff02::1"), &pod, false, false));
        assert!(ndp_on_link(132, 1, &ll, &v6("ff02::2"), &pod, true, false));

        let far = v6("2001:db8:ffff::1");
        // Toward a global address: exfiltration, whatever the rest.
        for t in [130u8, 131, 132, 133, 134, 135, 136, 137, 143] {
            let hl = if is_ndp(t) { 255 } else { 1 };
            assert!(!ndp_on_link(t, hl, &ll, &far, &pod, true, false), "type {t} to a global address");
            assert!(!ndp_on_link(t, hl, &pod, &far, &pod, true, false), "type {t} from the pod to a global address");
            // Nor from a global address that is not the pod's (inbound from anywhere).
            assert!(!ndp_on_link(t, hl, &far, &v6("ff02::1"), &pod, false, false), "type {t} from afar");
        }
        // Wrong hop limits: routed NDP, or MLD with NDP's.
        assert!(!ndp_on_link(135, 254, &ll, &sn, &pod, true, false));
        assert!(!ndp_on_link(135, 64, &gw, &pod, &pod, false, false));
        assert!(!ndp_on_link(143, 255, &ll, &v6("ff02::16"), &pod, true, false));
        assert!(!ndp_on_link(143, 2, &ll, &v6("ff02::16"), &pod, true, false));
        // MLD from the pod's global address; NDP from a spoofed global; to the pod from the pod.
        assert!(!ndp_on_link(143, 1, &pod, &v6("ff02::16"), &pod, true, false));
        assert!(!ndp_on_link(135, 255, &v6("2001:db8:0:1::b"), &sn, &pod, true, false));
        assert!(!ndp_on_link(135, 255, &pod, &pod, &pod, true, false));
        // Other groups and scopes; site-local is not link-local; not NDP at all.
        for d in ["ff02::3", "ff05::2", "ff0e::1", "ff02::1:fe00:1", "ff02:0:0:0:1::1", "ff12::1:ff00:1", "fec0::1"] {
            assert!(!ndp_on_link(135, 255, &ll, &v6(d), &pod, true, false), "{d}");
        }
        assert!(!ndp_on_link(128, 255, &ll, &sn, &pod, true, false));
        // The node's own global address (the FIB says local): the on-link gateway of a /64.
        let node = v6("2001:db8:0:1::1");
        assert!(ndp_on_link(135, 255, &pod, &node, &pod, true, true), "NUD of the node's address");
        assert!(ndp_on_link(136, 255, &pod, &node, &pod, true, true), "NA to the node's address");
        assert!(ndp_on_link(135, 255, &node, &v6("ff02::1:ff00:a"), &pod, false, true), "the node soliciting from its address");
        assert!(ndp_on_link(136, 255, &node, &pod, &pod, false, true), "the node's NA");
        assert!(!ndp_on_link(135, 255, &pod, &node, &pod, true, false), "not the node's: routed on");
        assert!(!ndp_on_link(136, 255, &node, &pod, &pod, false, false));
        assert!(!ndp_on_link(135, 254, &pod, &node, &pod, true, true), "hop limit still 255");
        assert!(!ndp_on_link(143, 1, &node, &v6("ff02::16"), &pod, false, true), "MLD keeps its link-local source");
        assert!(ndp_peer_lookup_needed(255, &pod, &node, true));
        assert!(!ndp_peer_lookup_needed(255, &pod, &v6("ff02::1:ff00:1"), true));
        assert!(!ndp_peer_lookup_needed(64, &pod, &node, true));
        assert!(!ndp_peer_lookup_needed(255, &v6("fe80::1"), &pod, false));
        assert!(!ndp_on_link(1, 255, &ll, &gw, &pod, false, false));
    }

    proptest! {
        /// Nothing the check lets through can be routed off the link: its destination is
        /// link-scoped, the pod itself (toward it) or the node (from it), and its source is
        /// link-local, `::`, the pod's own (from it) or the node's (toward it).
        #[test]
        fn ndp_bypass_stays_on_link(t in any::<u8>(), hl in any::<u8>(), src in any::<[u8; 16]>(), dst in any::<[u8; 16]>(),
                                    pod in any::<[u8; 16]>(), egress in any::<bool>(), pick in 0u8..4, node in any::<bool>()) {
            // Bias the addresses toward the interesting values.
            let dst = match pick { 0 => pod, 1 => { let mut d = dst; d[0] = 0xff; d[1] = 2; d } _ => dst };
            let src = match pick { 2 => pod, 3 => { let mut s = src; s[0] = 0xfe; s[1] = 0x80; s } _ => src };
            if ndp_on_link(t, hl, &src, &dst, &pod, egress, node) {
                prop_assert!(is_ndp(t) || is_mld(t));
                prop_assert!(hl == 255 || hl == 1);
                let ll = |a: &[u8; 16]| a[0] == 0xfe && (a[1] & 0xc0) == 0x80;
                prop_assert!(ll(&dst) || (dst[0] == 0xff && dst[1] == 2) || (!egress && dst == pod) || (egress && node));
                prop_assert!(ll(&src) || src == [0; 16] || (egress && src == pod) || (!egress && node));
            }
            // The lookup is asked for exactly when its answer can matter.
            if !ndp_peer_lookup_needed(hl, &src, &dst, egress) {
                prop_assert_eq!(ndp_link_bits(hl, &src, &dst, &pod, egress, true), ndp_link_bits(hl, &src, &dst, &pod, egress, false));
            }
        }
    }

    proptest! {
        /// The bounded binary search agrees with a linear scan on any set of disjoint ranges,
        /// including the largest one a generation can hold.
        #[test]
        fn search_matches_linear(mut bounds in proptest::collection::btree_set(0u32..0x00ff_ffff, 0..400), key in 0u32..0x0100_0000, tail in any::<bool>()) {
            let b: std::vec::Vec<u32> = core::mem::take(&mut bounds).into_iter().collect();
            let mut ranges: std::vec::Vec<SgRange> = b.chunks(2).filter(|c| c.len() == 2)
                .enumerate().map(|(i, c)| SgRange { lo: c[0], hi: c[1], rule: i as u32 }).collect();
            if tail && !ranges.is_empty() {
                // Ranges of one point.
                for r in ranges.iter_mut().step_by(3) { r.hi = r.lo; }
            }
            let linear = ranges.iter().find(|r| r.lo <= key && key <= r.hi).map(|r| r.rule);
            prop_assert_eq!(search(&ranges, key), linear);
            for r in &ranges {
                prop_assert_eq!(search(&ranges, r.lo), Some(r.rule));
                prop_assert_eq!(search(&ranges, r.hi), Some(r.rule));
            }
        }
    }

    #[test]
    fn search_full_generation() {
        let ranges: std::vec::Vec<SgRange> = (0..SG_RANGES_PER_GEN)
            .map(|i| SgRange { lo: i * 4, hi: i * 4 + 1, rule: i })
            .collect();
        for i in [0, 1, 2, 1000, SG_RANGES_PER_GEN - 1] {
            assert_eq!(search(&ranges, i * 4 + 1), Some(i));
            assert_eq!(search(&ranges, i * 4 + 2), None);
        }
    }
}
