//! IPv4 SNAT map ABI: mappings (endpoint-independent), port claims (filtering and port
//! overlapping), per-flow conntrack and fragment state.
//!
//! A mapping binds one pod endpoint (proto, pod address, pod port) to one external port for every
//! destination (RFC 4787 REQ-1). The external port is *claimed* per remote address in `nat4_claim`,
//! so the same external port can serve different pods toward different remotes (port overlapping,
//! RFC 7857 §3) while a reply from a remote still resolves to exactly one pod endpoint
//! (address-dependent filtering). In endpoint-independent filtering mode the claim is made for
//! remote 0.0.0.0 instead, which owns the port toward every remote.

//!
//! How the programs fill these maps (what the daemon's `nat list` / `ct list` / GC can rely on):
//! - Times (`*_ns`) are `bpf_ktime_get_boot_ns`: compare with `CLOCK_BOOTTIME` ([`CLOCK`]).
//! - A new flow from a pod: `ct4` lookup by [`Flow4`]; on a miss the endpoint's mapping is looked
//!   up or created (quota check on the pod's held mappings, `pod_usage − pod_freed` by
//!   `Pod::id`, then a random port claimed with `BPF_NOEXIST` in `nat4_claim`, then `nat4_map`
//!   inserted with `BPF_NOEXIST`, then an atomic `pod_usage.mappings += 1`). The claim
//!   for the flow's remote is made as needed; if another endpoint already owns the mapping's port
//!   toward that remote, that one flow gets its own port (`Ct4::ext_port` differs from
//!   `Mapping4::ext_port`), so always translate and expire by `Ct4::ext_port`.
//! - `Flow4::remote_port` is 0 for ICMP echo; `pod_port`/`ext_port` are the echo identifier.
//! - `Ct4::last_seen_ns` is refreshed by both directions, `Mapping4::last_seen_ns` by outbound
//!   packets only; ICMP errors refresh nothing. `Ct4::state` is a `tcp::TcpState` (TCP only).
//!   `Ct4::flags` is unused (0). An inbound packet whose claim exists but whose flow does not
//!   (endpoint-independent filtering, a remote answering from another port, or an evicted
//!   entry) creates the `ct4` entry with the external port the packet arrived on (RFC 4787
//!   REQ-3: it may be a per-flow port, not the mapping's). Every `ct4` insert is `BPF_NOEXIST`;
//!   each created entry adds 1 to `pod_usage.flows4` of the pod (atomic), so the GC, `ct flush`
//!   and `pod del` credit `pod_freed` for each entry they delete.
//! - `frag4` holds inbound first fragments only (`dir` = 1, `new_addr` = the pod address,
//!   `ifindex` = 0): outbound later fragments need no state (every translated pod datagram
//!   leaves with the node address). A first fragment for the node itself (no mapping: passed to
//!   the stack) leaves `new_addr` = [`FRAG_PASS`], so that its later fragments pass too. Expire
//!   with [`frag_expired`].
//! - `Pod::mappings` is unused: the per-pod counts are `pod_usage`/`pod_freed` (`PodUsage`).
//! - Privileged source ports map into `ports::PRIV_PORT_MIN..=PRIV_PORT_MAX` (512..=1023);
//!   others into `NodeConfig::port_min..=port_max`. The node's own ephemeral ports
//!   (`net.ipv4.ip_local_port_range`) should not overlap that range: a pod claim toward a remote
//!   would capture the replies of a node connection from the same port to that remote.

pub mod map_names {
    pub const NAT4_MAP: &str = "nat4_map";
    pub const NAT4_CLAIM: &str = "nat4_claim";
    pub const CT4: &str = "ct4";
    pub const FRAG4: &str = "frag4";
    pub const NAT4_PRESSURE: &str = "nat4_pressure";
}

/// Values of `nat4_pressure` (slot 0), written by the daemon after every GC pass.
pub mod pressure_level {
    /// New flows of every kind are admitted.
    pub const NONE: u32 = 0;
    /// Every new flow is refused (a map is above its high-water mark). 1, what older programs
    /// took any non-zero value for.
    pub const FULL: u32 = 1;
    /// Only new inbound-created `ct4` entries are refused (`ct4` is above its low-water mark):
    /// a flood from outside loses first, the pods' own new flows still get in up to the
    /// high-water mark. Older programs read it as `FULL`, which is only stricter.
    pub const INBOUND: u32 = 2;
}

/// Bits of `Ct4::flags`.
pub mod ct4_flags {
    /// The flow was created by an inbound packet (a remote opened it through a claim).
    pub const INBOUND: u8 = 1 << 0;
    /// The pod sent a packet of the flow: set on every outbound packet of a tracked flow.
    pub const ANSWERED: u8 = 1 << 1;
}

/// An inbound-created flow the pod never answered: it expires after `[timeouts] unanswered`
/// and counts against the inbound share of `[limits] pod_flows`.
pub const fn ct4_unanswered(ct: &Ct4) -> bool {
    ct.flags & ct4_flags::INBOUND != 0 && ct.flags & ct4_flags::ANSWERED == 0
}

/// ICMP echo uses the identifier as its "port".
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// A pod endpoint: key of `nat4_map`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Endpoint4 {
    pub addr: [u8; 4],
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Value of `nat4_map`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mapping4 {
    pub ext_port: u16,
    pub _pad: u16,
    /// `pods` key of the pod's IPv4 veth, for the reverse path's redirect.
    pub pod_ifindex: u32,
    pub created_ns: u64,
    /// Refreshed by outbound packets only (RFC 4787 REQ-6, RFC 7857 §7.1).
    pub last_seen_ns: u64,
}

/// Key of `nat4_claim`: an external port toward one remote address (0.0.0.0: every remote).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Claim4 {
    pub remote: [u8; 4],
    pub ext_port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Key of `ct4`: one flow, as seen from the pod.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Flow4 {
    pub pod_addr: [u8; 4],
    pub remote_addr: [u8; 4],
    pub pod_port: u16,
    pub remote_port: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Value of `ct4`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ct4 {
    pub ext_port: u16,
    /// A `tcp::TcpState` for TCP; 0 otherwise.
    pub state: u8,
    pub flags: u8,
    pub pod_ifindex: u32,
    pub created_ns: u64,
    pub last_seen_ns: u64,
    /// Time of the last state change, for the transitory timeouts.
    pub state_ns: u64,
    pub packets_out: u64,
    pub packets_in: u64,
}

/// Key of `frag4`: fragments of one datagram (RFC 791 identification).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey4 {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub id: u16,
    pub proto: u8,
    /// 0: pod → outside, 1: outside → pod.
    pub dir: u8,
}

/// Value of `frag4`: what the first fragment's translation was, for the ones that follow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragVal4 {
    /// Address to write (source for outbound, destination for inbound).
    pub new_addr: [u8; 4],
    pub ifindex: u32,
    pub seen_ns: u64,
}

#[cfg(feature = "user")]
mod pod_impls {
    // SAFETY: #[repr(C)], Copy, explicit padding only.
    unsafe impl aya::Pod for super::Endpoint4 {}
    unsafe impl aya::Pod for super::Mapping4 {}
    unsafe impl aya::Pod for super::Claim4 {}
    unsafe impl aya::Pod for super::Flow4 {}
    unsafe impl aya::Pod for super::Ct4 {}
    unsafe impl aya::Pod for super::FragKey4 {}
    unsafe impl aya::Pod for super::FragVal4 {}
}

const _: () = {
    assert!(core::mem::size_of::<Endpoint4>() == 8);
    assert!(core::mem::size_of::<Mapping4>() == 24);
    assert!(core::mem::size_of::<Claim4>() == 8);
    assert!(core::mem::size_of::<Flow4>() == 16);
    assert!(core::mem::size_of::<Ct4>() == 48);
    assert!(core::mem::size_of::<FragKey4>() == 12);
    assert!(core::mem::size_of::<FragVal4>() == 16);
};

/// Where the programs read time: `bpf_ktime_get_boot_ns`, i.e. `CLOCK_BOOTTIME` in nanoseconds.
/// Userspace must compare `*_ns` fields against `clock_gettime(CLOCK_BOOTTIME)` (it keeps counting
/// during suspend, like the kernel's own conntrack timeouts), never `CLOCK_MONOTONIC` or wall time.
pub const CLOCK: &str = "CLOCK_BOOTTIME";

/// How long a `frag4` entry is useful: the IPv4 reassembly timeout of Linux
/// (`net.ipv4.ipfrag_time`, 30 s).
pub const FRAG_TIMEOUT_NS: u64 = 30 * NS_PER_SEC;

const NS_PER_SEC: u64 = 1_000_000_000;

/// The configured idle timeout in seconds for a protocol; for TCP, `long` picks the established
/// timeout over the transitory one.
const fn timeout_secs(proto: u8, long: bool, t: &crate::Timeouts) -> u32 {
    match proto {
        PROTO_TCP if long => t.tcp_established,
        PROTO_TCP => t.tcp_transitory,
        PROTO_UDP => t.udp,
        _ => t.icmp,
    }
}

/// The idle timeout of one flow, from its protocol and (for TCP) its `tcp::TcpState`.
pub const fn ct_timeout_ns(proto: u8, state: u8, t: &crate::Timeouts) -> u64 {
    let long = crate::tcp::TcpState::from_u8(state).is_long_lived();
    timeout_secs(proto, long, t) as u64 * NS_PER_SEC
}

/// Whether the daemon's GC should delete this `ct4` entry. `now_ns` is `CLOCK_BOOTTIME`. An
/// entry stamped in the future (clock read on another CPU a moment later) is never expired.
/// An inbound-created flow the pod never answered ([`ct4_unanswered`]) expires after
/// `unanswered_secs` (`[timeouts] unanswered`) when that is shorter than its protocol's timeout.
pub const fn ct_expired(flow: &Flow4, ct: &Ct4, now_ns: u64, t: &crate::Timeouts, unanswered_secs: u32) -> bool {
    let mut timeout = ct_timeout_ns(flow.proto, ct.state, t);
    let short = unanswered_secs as u64 * NS_PER_SEC;
    if ct4_unanswered(ct) && short < timeout {
        timeout = short;
    }
    now_ns > ct.last_seen_ns && now_ns - ct.last_seen_ns > timeout
}

/// The idle timeout of a mapping: the longest one its protocol can have, because the mapping is
/// refreshed only by outbound packets (RFC 4787 REQ-6) while a flow may be quiet outbound.
pub const fn mapping_timeout_ns(proto: u8, t: &crate::Timeouts) -> u64 {
    timeout_secs(proto, t.tcp_established >= t.tcp_transitory, t) as u64 * NS_PER_SEC
}

/// Whether the GC may delete this `nat4_map` entry. It must also check that no live `ct4` entry
/// of the same endpoint remains (`live_flows == 0`): a mapping never dies under a live flow.
///
/// GC order for one endpoint: delete its expired `ct4` entries; for each deleted flow, delete the
/// `nat4_claim` entry `Claim4 { remote: flow.remote_addr (or 0.0.0.0 in EIF mode), ext_port:
/// ct.ext_port, proto }` if it still points at this endpoint and no other live flow of the
/// endpoint uses that remote and port; then, when `mapping_expired`, delete the mapping (and its
/// 0.0.0.0 claim if it points at this endpoint) and credit `pod_freed.mappings` of the pod
/// (and `pod_freed.flows4` for each deleted flow).
pub const fn mapping_expired(
    ep: &Endpoint4,
    m: &Mapping4,
    live_flows: u32,
    now_ns: u64,
    t: &crate::Timeouts,
) -> bool {
    live_flows == 0
        && now_ns > m.last_seen_ns
        && now_ns - m.last_seen_ns > mapping_timeout_ns(ep.proto, t)
}

/// `FragVal4::new_addr` of a datagram for the node itself: its later fragments go to the stack
/// untouched (0.0.0.0 is never a pod address).
pub const FRAG_PASS: [u8; 4] = [0; 4];

/// Whether a first fragment for the node itself may write its [`FRAG_PASS`] entry over `old`.
/// A live pod entry of the same key wins: a forged first fragment toward a node port must not
/// turn the rest of a pod's datagram toward the node's sockets. A stale one (the identification
/// wrapped after the 30 s) is fair game, like any pass entry.
pub const fn frag_pass_may_replace(old: Option<&FragVal4>, now_ns: u64) -> bool {
    match old {
        None => true,
        Some(v) => is_frag_pass(v) || frag_expired(v, now_ns),
    }
}

/// Whether this `frag4` entry is a datagram for the node itself.
pub const fn is_frag_pass(v: &FragVal4) -> bool {
    u32::from_ne_bytes(v.new_addr) == u32::from_ne_bytes(FRAG_PASS)
}

/// Whether the GC may delete this `frag4` entry.
pub const fn frag_expired(v: &FragVal4, now_ns: u64) -> bool {
    now_ns > v.seen_ns && now_ns - v.seen_ns > FRAG_TIMEOUT_NS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Timeouts, tcp::TcpState};

    const S: u64 = NS_PER_SEC;

    fn flow(proto: u8) -> Flow4 {
        Flow4 {
            proto,
            ..Default::default()
        }
    }

    fn ct(state: TcpState, last: u64) -> Ct4 {
        Ct4 {
            state: state as u8,
            last_seen_ns: last,
            ..Default::default()
        }
    }

    #[test]
    fn unanswered_inbound_flows_expire_early() {
        let t = Timeouts::default();
        let udp = flow(PROTO_UDP);
        let base = 1_000 * S;
        let mut c = ct(TcpState::None, base);
        c.flags = ct4_flags::INBOUND;
        assert!(ct4_unanswered(&c));
        assert!(!ct_expired(&udp, &c, base + 5 * S, &t, 5));
        assert!(ct_expired(&udp, &c, base + 6 * S, &t, 5), "never answered: the short timeout");
        c.flags |= ct4_flags::ANSWERED;
        assert!(!ct4_unanswered(&c));
        assert!(!ct_expired(&udp, &c, base + 6 * S, &t, 5), "answered: the protocol's timeout");
        let out = ct(TcpState::None, base);
        assert!(!ct4_unanswered(&out), "the pod's own flows are never 'unanswered'");
        assert!(!ct_expired(&udp, &out, base + 6 * S, &t, 5));
        let mut c = ct(TcpState::None, base);
        c.flags = ct4_flags::INBOUND;
        assert!(!ct_expired(&udp, &c, base + 100 * S, &t, 100_000), "never longer than the protocol's");
        assert!(ct_expired(&udp, &c, base + 301 * S, &t, 100_000));
    }

    #[test]
    fn defaults_meet_the_rfc_minimums() {
        let t = Timeouts::default();
        // RFC 4787 REQ-5/5c, RFC 5382 REQ-5, RFC 5508 REQ-2.
        assert!(ct_timeout_ns(PROTO_UDP, 0, &t) >= 300 * S);
        assert!(ct_timeout_ns(PROTO_TCP, TcpState::Established as u8, &t) >= 7440 * S);
        assert!(ct_timeout_ns(PROTO_TCP, TcpState::SynOut as u8, &t) >= 240 * S);
        assert!(ct_timeout_ns(PROTO_TCP, TcpState::Rst as u8, &t) >= 240 * S);
        assert!(ct_timeout_ns(PROTO_ICMP, 0, &t) >= 60 * S);
    }

    #[test]
    fn expiry_by_protocol_and_state() {
        let t = Timeouts::default();
        let base = 1_000 * S;
        // UDP idle 119 s and 299 s: alive; 301 s: gone.
        assert!(!ct_expired(
            &flow(PROTO_UDP),
            &ct(TcpState::None, base),
            base + 299 * S,
            &t,
            30
        ));
        assert!(ct_expired(
            &flow(PROTO_UDP),
            &ct(TcpState::None, base),
            base + 301 * S,
            &t,
            30
        ));
        // ICMP query: 59 s alive, 61 s gone.
        assert!(!ct_expired(
            &flow(PROTO_ICMP),
            &ct(TcpState::None, base),
            base + 59 * S,
            &t,
            30
        ));
        assert!(ct_expired(
            &flow(PROTO_ICMP),
            &ct(TcpState::None, base),
            base + 61 * S,
            &t,
            30
        ));
        // TCP established survives 2 h 4 min, a reset one only 4 min.
        let tcp = flow(PROTO_TCP);
        assert!(!ct_expired(
            &tcp,
            &ct(TcpState::Established, base),
            base + 7440 * S,
            &t,
            30
        ));
        assert!(ct_expired(
            &tcp,
            &ct(TcpState::Established, base),
            base + 7441 * S,
            &t,
            30
        ));
        assert!(!ct_expired(
            &tcp,
            &ct(TcpState::Rst, base),
            base + 239 * S,
            &t,
            30
        ));
        assert!(ct_expired(
            &tcp,
            &ct(TcpState::Rst, base),
            base + 241 * S,
            &t,
            30
        ));
        assert!(ct_expired(
            &tcp,
            &ct(TcpState::FinBoth, base),
            base + 241 * S,
            &t,
            30
        ));
        assert!(!ct_expired(
            &tcp,
            &ct(TcpState::FinOut, base),
            base + 241 * S,
            &t,
            30
        ));
        // A stamp from the future never expires.
        assert!(!ct_expired(&tcp, &ct(TcpState::SynOut, base + S), base, &t, 30));
    }

    #[test]
    fn mapping_lives_while_a_flow_does() {
        let t = Timeouts::default();
        let ep = Endpoint4 {
            proto: PROTO_UDP,
            ..Default::default()
        };
        let m = Mapping4 {
            last_seen_ns: S,
            ..Default::default()
        };
        assert!(!mapping_expired(&ep, &m, 1, 10_000 * S, &t));
        assert!(mapping_expired(&ep, &m, 0, 10_000 * S, &t));
        assert!(!mapping_expired(&ep, &m, 0, 300 * S, &t));
        let tcp = Endpoint4 {
            proto: PROTO_TCP,
            ..Default::default()
        };
        assert!(!mapping_expired(&tcp, &m, 0, 7000 * S, &t));
    }

    #[test]
    fn frag_expiry() {
        let v = FragVal4 {
            seen_ns: S,
            ..Default::default()
        };
        assert!(!frag_expired(&v, 30 * S));
        assert!(frag_expired(&v, 32 * S));
    }

    #[test]
    fn a_pass_entry_never_displaces_a_live_pod_entry() {
        let pod = FragVal4 { new_addr: [169, 254, 172, 2], ifindex: 0, seen_ns: 10 * S };
        let pass = FragVal4 { new_addr: FRAG_PASS, ..pod };
        assert!(is_frag_pass(&pass) && !is_frag_pass(&pod));
        assert!(frag_pass_may_replace(None, 10 * S));
        assert!(!frag_pass_may_replace(Some(&pod), 10 * S));
        assert!(!frag_pass_may_replace(Some(&pod), 40 * S));
        // Stale: the identification may have wrapped; the new datagram is the node's.
        assert!(frag_pass_may_replace(Some(&pod), 41 * S));
        // The node's own first fragment again (a retransmission): refreshed.
        assert!(frag_pass_may_replace(Some(&pass), 10 * S));
    }
}
