//! Every map, in one place, so that names and sizes are easy to audit against the pins.
#![allow(non_upper_case_globals)]

use aya_ebpf::{
    btf_maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    macros::btf_map,
};
use podgate_common::{
    NodeConfig, Pod,
    nat::{Claim4, Ct4, Endpoint4, FragKey4, FragVal4, Flow4, Mapping4},
    stats::COUNTER_SLOTS,
};

#[btf_map(name = "node")]
pub static NODE: Array<NodeConfig, 1> = Array::new();

/// Keyed by the ifindex of each host-side veth of a pod.
#[btf_map(name = "pods")]
pub static PODS: HashMap<u32, Pod, 4096> = HashMap::new();

/// Pod IPv4 → the ifindex key in `pods` of its IPv4 veth.
#[btf_map(name = "pods_v4")]
pub static PODS_V4: HashMap<[u8; 4], u32, 4096> = HashMap::new();

/// Pod IPv6 (/128) → the ifindex key in `pods` of its IPv6 veth.
#[btf_map(name = "pods_v6")]
pub static PODS_V6: HashMap<[u8; 16], u32, 4096> = HashMap::new();

/// Written and read by userspace only: pod id → name.
#[btf_map(name = "pod_names")]
pub static POD_NAMES: HashMap<u32, podgate_common::PodName, 4096> = HashMap::new();

/// Pod id → what the programs created for it (atomic adds only; `podgate_common::PodUsage`).
#[btf_map(name = "pod_usage")]
pub static POD_USAGE: HashMap<u32, podgate_common::PodUsage, 4096> = HashMap::new();

/// Pod id → what the daemon deleted for it; written by userspace only.
#[btf_map(name = "pod_freed")]
pub static POD_FREED: HashMap<u32, podgate_common::PodUsage, 4096> = HashMap::new();

#[btf_map(name = "stats")]
pub static STATS: PerCpuArray<u64, { COUNTER_SLOTS as usize }> = PerCpuArray::new();

#[btf_map(name = "events")]
pub static EVENTS: RingBuf<podgate_common::Event, { 256 * 1024 }> = RingBuf::new();

// Sized for RFC 7857 port overlapping: ≥ 1M flows per node address.
#[btf_map(name = "nat4_map")]
pub static NAT4_MAP: LruHashMap<Endpoint4, Mapping4, 1048576> = LruHashMap::new();

#[btf_map(name = "nat4_claim")]
pub static NAT4_CLAIM: LruHashMap<Claim4, Endpoint4, 1048576> = LruHashMap::new();

#[btf_map(name = "ct4")]
pub static CT4: LruHashMap<Flow4, Ct4, 1048576> = LruHashMap::new();

#[btf_map(name = "frag4")]
pub static FRAG4: LruHashMap<FragKey4, FragVal4, 8192> = LruHashMap::new();

// IPv6 security groups (podgate_common::sg explains the layout).
use aya_ebpf::btf_maps::LpmTrie;
use podgate_common::sg::{
    Ct6, Flow6, FragKey6, FragVal6, SG_GENERATIONS, SG_RANGES_PER_GEN, SG_RULES_MAX, SgEntry,
    SgKey, SgRange,
};

#[btf_map(name = "sg_rules")]
pub static SG_RULES: LpmTrie<SgKey, SgEntry, { SG_RULES_MAX as usize }> = LpmTrie::new();

#[btf_map(name = "sg_ranges")]
pub static SG_RANGES: Array<SgRange, { (SG_RANGES_PER_GEN * SG_GENERATIONS) as usize }> =
    Array::new();

/// The live generation of `sg_rules` / `sg_ranges` (0 or 1).
#[btf_map(name = "sg_gen")]
pub static SG_GEN: Array<u32, 1> = Array::new();

#[btf_map(name = "ct6")]
pub static CT6: LruHashMap<Flow6, Ct6, 262144> = LruHashMap::new();

/// `[created, limit, limit_out]`: the programs add every `ct6` insert to slot 0, the daemon
/// writes the limits after each GC pass (`podgate_common::sg::guard_limit`); new flows past
/// theirs are refused (`drop_sg6_ct_pressure`) before the LRU would evict a live flow for them.
#[btf_map(name = "ct6_guard")]
pub static CT6_GUARD: Array<u64, { podgate_common::sg::CT6_GUARD_SLOTS as usize }> = Array::new();

#[btf_map(name = "frag6")]
pub static FRAG6: LruHashMap<FragKey6, FragVal6, 8192> = LruHashMap::new();

/// A per-CPU word the security-group code writes and reads back to hide a value's bounds from
/// the verifier (`sg::opaque`).
#[btf_map(name = "sg_scratch")]
pub static SG_SCRATCH: PerCpuArray<u32, 1> = PerCpuArray::new();

/// Written and read by userspace only: security-group id → name, so that ids stay stable across
/// `sg apply` and daemon restarts (pod records hold ids).
#[btf_map(name = "sg_names")]
pub static SG_NAMES: HashMap<u32, podgate_common::PodName, 4096> = HashMap::new();

/// Per-CPU state of the rule lookup's `bpf_loop` (`sg::policy`): its callback context would not
/// fit on the programs' stack. Never pinned: nothing outlives one lookup.
#[btf_map(name = "sg_lookup")]
pub static SG_LOOKUP: PerCpuArray<crate::sg::policy::GroupScan, 1> = PerCpuArray::new();

// Inbound fragments ahead of their first fragment (podgate_common::frag explains the protocol).
use podgate_common::frag::{FRAG_PENDING_MAX, FRAG_PUNT_RING_BYTES, PuntBuf, PuntHdr};

#[btf_map(name = "frag4_punt")]
pub static FRAG4_PUNT: RingBuf<PuntHdr, FRAG_PUNT_RING_BYTES> = RingBuf::new();

#[btf_map(name = "frag4_pending")]
pub static FRAG4_PENDING: LruHashMap<FragKey4, u64, FRAG_PENDING_MAX> = LruHashMap::new();

/// The daemon's liveness deadline (boot ns): no punting once it has passed.
#[btf_map(name = "frag4_punt_alive")]
pub static FRAG4_PUNT_ALIVE: Array<u64, 1> = Array::new();

/// Per-CPU room to assemble an orphan record: too big for the stack. Never pinned.
#[btf_map(name = "frag4_punt_buf")]
pub static FRAG4_PUNT_BUF: PerCpuArray<PuntBuf, 1> = PerCpuArray::new();
/// Non-zero while the daemon sees ct4, nat4_map or nat4_claim above its high-water mark
/// (`podgate_common::pressure`): new flows are then refused (`drop_map_full`) rather than
/// inserted, because an insert into a full LRU map silently evicts some live flow instead.
#[btf_map(name = "nat4_pressure")]
pub static NAT4_PRESSURE: Array<u32, 1> = Array::new();
