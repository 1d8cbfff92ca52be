//! The map ABI shared by podgate's eBPF programs and its userspace, and the pure logic both
//! sides need (checksums, port choice, TCP states, rule matching).
//!
//! Every type that crosses the kernel boundary is `#[repr(C)]` with explicit padding, so that the
//! layout is the same in both compilations and `bpftool map dump` shows every byte under a name.
//! Addresses are stored as byte arrays in network order; ports and numbers in host order.
#![cfg_attr(not(test), no_std)]

pub mod csum;
pub mod frag;
pub mod nat;
pub mod ports;
pub mod pressure;
pub mod sg;
pub mod stats;
pub mod tcp;

/// Bumped whenever a map's key or value layout changes. Userspace refuses to adopt pinned maps
/// whose `node` entry carries another version, instead of misreading them.
pub const ABI_VERSION: u32 = 2;

/// Names under which the maps are pinned (`<pin root>/<name>`); also the names in the object.
pub mod map_names {
    pub const NODE: &str = "node";
    pub const PODS: &str = "pods";
    pub const PODS_V4: &str = "pods_v4";
    pub const PODS_V6: &str = "pods_v6";
    pub const STATS: &str = "stats";
    pub const EVENTS: &str = "events";
    pub const POD_NAMES: &str = "pod_names";
    pub const POD_USAGE: &str = "pod_usage";
    pub const POD_FREED: &str = "pod_freed";
}

/// `NodeConfig::flags` bits.
pub mod node_flags {
    /// Forward translated packets with a FIB lookup and `bpf_redirect` instead of handing them to
    /// the kernel stack.
    pub const FIB_REDIRECT: u32 = 1 << 0;
    /// Endpoint-independent filtering of inbound IPv4 (default: address-dependent).
    pub const FILTER_EIF: u32 = 1 << 1;
    /// Emit new-flow events (drop events are always emitted).
    pub const FLOW_EVENTS: u32 = 1 << 2;
    /// Userspace only: attach TC programs through netlink (clsact) instead of tcx links.
    pub const TC_NETLINK: u32 = 1 << 3;
    /// Punt inbound fragments that arrive before their first fragment to the daemon
    /// (`frag` module), while its `frag4_punt_alive` deadline holds.
    pub const FRAG_PUNT: u32 = 1 << 6;
    /// UDP mappings need not keep the internal port's parity (`udp_port_parity = false`, RFC 7857
    /// §8). TCP and ICMP never keep it. Set when off, so that a zero `flags` keeps RFC 4787 REQ-4.
    pub const UDP_NO_PARITY: u32 = 1 << 4;
    /// Operator log points (aya-log) in the programs; off, each costs one branch.
    pub const BPF_LOG: u32 = 1 << 5;
    /// Another tool's tc/XDP programs on podgate's hooks are left in place and podgate attaches
    /// beside them (default: refuse to start). Kept in the node entry so that `pod add` and the
    /// CNI plugin, which run without the config file, follow the daemon; the TC programs then end
    /// a pass with TC_ACT_UNSPEC (TCX_NEXT) so that the next program in the chain still runs.
    pub const FOREIGN_COEXIST: u32 = 1 << 7;
}

/// The single entry of the `node` array: what the programs need to know about this node.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeConfig {
    pub abi_version: u32,
    pub flags: u32,
    /// The node's external IPv4 (SNAT source), network order.
    pub ipv4: [u8; 4],
    pub uplink_ifindex: u32,
    /// The node's delegated IPv6 /80, network order; the low 48 bits are zero.
    pub pod_prefix: [u8; 16],
    /// Node-local pod IPv4 range (169.254.172.0/22 in EKS), network order, and its length.
    pub pod_ipv4_net: [u8; 4],
    pub pod_ipv4_prefix_len: u32,
    /// Inclusive SNAT port range for ports >= 1024.
    pub port_min: u16,
    pub port_max: u16,
    /// Mappings a single pod may hold at once.
    pub pod_quota: u32,
    pub timeouts: Timeouts,
    /// Flows a single pod may hold in each family's conntrack table (`[limits] pod_flows`,
    /// checked against `PodUsage::held`); 0: unbounded. Added in ABI 2.
    pub pod_flows: u32,
}

/// Idle timeouts in seconds; the eBPF side only records last-seen times, the daemon's GC applies
/// these. They live in the `node` map so that every tool reading the pins sees the policy.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub udp: u32,
    pub tcp_established: u32,
    pub tcp_transitory: u32,
    pub icmp: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            udp: 300,
            tcp_established: 7440,
            tcp_transitory: 240,
            icmp: 60,
        }
    }
}

pub const MAX_POD_GROUPS: usize = 16;

/// A pod, keyed in `pods` by the ifindex of each of its host-side veths (one entry per veth, so a
/// program learns which pod is behind the interface it runs on without parsing anything).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pod {
    pub id: u32,
    /// Host-side veth carrying IPv6 (`eth0` in the pod).
    pub ifindex: u32,
    /// Host-side veth carrying IPv4 (`v4if0`); equal to `ifindex` for a single-veth pod.
    pub ifindex_v4: u32,
    pub ipv4: [u8; 4],
    pub ipv6: [u8; 16],
    /// Unused (written as 0, read by nobody): a pod's mappings are counted once per pod in
    /// `pod_usage`/`pod_freed` ([`PodUsage`]). Kept so that the layout, and `ABI_VERSION`, stay.
    pub mappings: u32,
    pub quota: u32,
    pub group_count: u32,
    pub groups: [u32; MAX_POD_GROUPS],
}

/// Value of `pod_names` (keyed by `Pod::id`): only userspace reads it, so that pinned state alone
/// says which pod is which.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodName {
    pub len: u32,
    pub name: [u8; 252],
}

impl Default for PodName {
    fn default() -> Self {
        Self { len: 0, name: [0; 252] }
    }
}

/// What one pod holds, counted once per pod (keyed by `Pod::id`, not per veth), as two monotonic
/// tallies with one writer each, so that no read-modify-write of the kernel and of userspace can
/// race: `pod_usage` counts what the programs created (atomic adds only), `pod_freed` what the
/// daemon deleted (GC, pod removal, flush; written only by userspace). What a pod holds now is
/// `pod_usage - pod_freed`, field by field ([`PodUsage::held`]); both are pinned, so the count
/// survives a daemon restart.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodUsage {
    /// `nat4_map` entries (IPv4 NAT mappings).
    pub mappings: u64,
    /// `ct4` entries (IPv4 flows).
    pub flows4: u64,
    /// `ct6` entries (IPv6 flows).
    pub flows6: u64,
}

impl PodUsage {
    /// Created minus freed, field by field; a freed tally ahead of the created one (a count lost
    /// before this scheme, or a race in a test) reads as zero rather than wrapping.
    pub const fn held(created: &PodUsage, freed: &PodUsage) -> PodUsage {
        PodUsage {
            mappings: created.mappings.saturating_sub(freed.mappings),
            flows4: created.flows4.saturating_sub(freed.flows4),
            flows6: created.flows6.saturating_sub(freed.flows6),
        }
    }
}

/// A ring-buffer event for `podgate monitor`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    pub kind: u32,
    /// A `stats::Counter` for drops.
    pub reason: u32,
    pub pod_id: u32,
    /// Matching security-group rule id, or `u32::MAX`.
    pub rule: u32,
    /// 4 or 6.
    pub family: u8,
    pub proto: u8,
    /// The node's external port of a new SNAT flow (`NEW_FLOW`, family 4); 0 otherwise. Takes
    /// what was padding, so the layout is unchanged.
    pub ext_port: u16,
    pub sport: u16,
    pub dport: u16,
    /// IPv4 addresses use the first four bytes.
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

pub mod event_kind {
    pub const DROP: u32 = 1;
    pub const NEW_FLOW: u32 = 2;
}

#[cfg(feature = "user")]
mod pod_impls {
    // SAFETY: all of these are #[repr(C)], Copy, with no implicit padding and no pointers.
    unsafe impl aya::Pod for super::NodeConfig {}
    unsafe impl aya::Pod for super::Pod {}
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::PodName {}
    unsafe impl aya::Pod for super::PodUsage {}
}

/// Compile-time layout checks: a silent size change would corrupt every pinned map.
const _: () = {
    assert!(core::mem::size_of::<NodeConfig>() == 68);
    assert!(core::mem::size_of::<Pod>() == 108);
    assert!(core::mem::size_of::<Event>() == 56);
    assert!(core::mem::size_of::<PodUsage>() == 24);
};
