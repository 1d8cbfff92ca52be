//! The IPv4 NAT garbage collector: what expires, what is an eviction hole, what is repaired, and
//! who gets the freed entries credited. The decisions run against [`NatState`], which the kernel
//! implements with batched map walks ([`KernelNat`]) and the tests with a mock.
//!
//! A pass walks each map in chunks of the kernel's batch cursor; an entry found expired is
//! re-read by key immediately before its own deletion, and deleted only if the re-read shows it
//! unchanged (same `last_seen_ns`, same claim owner). The deletion returns the value it deleted
//! (`BPF_MAP_LOOKUP_AND_DELETE_ELEM`): one refreshed after the re-read goes back. The datapath
//! refreshes through its lookup's value pointer and the kernel has no compare-and-delete, so a
//! program that looked the entry up before the deletion and writes after it still writes into
//! the deleted element; that flow loses its ct4 entry or mapping until its next packet or the
//! next pass's repair (`snat_full::gc_passes_racing_refreshes_never_take_a_live_flows_state`).

use std::collections::{HashMap as StdMap, HashSet as StdSet};

/// The pass keeps sets of up to a million entries each: SipHash would be most of its time.
type HashMap<K, V> = StdMap<K, V, foldhash::fast::RandomState>;
type HashSet<K> = StdSet<K, foldhash::fast::RandomState>;
use std::time::Instant;

use podgate_common::{
    Pod, PodUsage, Timeouts, map_names,
    nat::{self as abi, Claim4, Ct4, Endpoint4, Flow4, FragKey4, FragVal4, Mapping4, map_names as nat_maps},
};

use crate::maps::batch::{BPF_NOEXIST, BatchError, BatchMap, Cursor};
use super::report::GcReport;
use crate::pins::Pins;

#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error(transparent)]
    Batch(#[from] BatchError),
    #[error(transparent)]
    Dataplane(#[from] crate::error::DataplaneError),
}

/// Whatever keeps a lock held while it lives (a guard, or nothing).
pub trait Held {}
impl<T> Held for T {}

/// What a walk calls for each chunk: its cursor, keys and values.
pub type ChunkFn<'a, K, V> = dyn FnMut(Cursor, &[K], &[V]) -> Result<(), GcError> + 'a;

/// One map as the GC sees it: walked in chunks, keys re-read and deleted one by one.
pub trait Table<K, V> {
    /// Calls `f` for each chunk with its cursor; returns the entries walked.
    fn walk(&self, f: &mut ChunkFn<'_, K, V>) -> Result<usize, GcError>;
    /// Deletes `keys` (already gone ones are skipped); returns how many went.
    fn delete(&self, keys: &[K]) -> Result<usize, GcError>;
    /// Deletes one key with its own syscall; `false` when it was gone already.
    fn remove(&self, k: &K) -> Result<bool, GcError> {
        Ok(self.delete(std::slice::from_ref(k))? == 1)
    }
    /// Deletes one key and returns its value as the deletion found it (`None`: gone already).
    fn take(&self, k: &K) -> Result<Option<V>, GcError> {
        let v = self.get(k)?;
        Ok(if self.remove(k)? { v } else { None })
    }
    fn get(&self, k: &K) -> Result<Option<V>, GcError>;
    /// Inserts only if absent; `false` when an entry was there (the datapath's wins).
    fn insert_new(&self, k: &K, v: &V) -> Result<bool, GcError>;
}

/// The pinned state a pass works on. `pods` and `pods_v4` are read once per pass (they are
/// small); `pod_freed` is written only by userspace.
pub trait NatState {
    fn ct4(&self) -> &dyn Table<Flow4, Ct4>;
    fn nat4_map(&self) -> &dyn Table<Endpoint4, Mapping4>;
    fn nat4_claim(&self) -> &dyn Table<Claim4, Endpoint4>;
    fn frag4(&self) -> &dyn Table<FragKey4, FragVal4>;
    /// `pods` (veth ifindex → record).
    fn pods(&self) -> Result<Vec<(u32, Pod)>, GcError>;
    /// `pods_v4` (pod IPv4 → ifindex of its IPv4 veth).
    fn pods_v4(&self) -> Result<Vec<([u8; 4], u32)>, GcError>;
    /// Adds to a pod's `pod_freed` tally.
    fn credit(&self, pod_id: u32, freed: PodUsage) -> Result<(), GcError>;
    /// EIF filtering: claims are keyed by 0.0.0.0.
    fn eif(&self) -> bool;
    /// How many mappings `nat4_map` may hold before a restore would only evict another.
    fn mapping_room(&self) -> usize;
    /// Held while the pass writes what is not a deletion of an unchanged entry (eviction
    /// repair, crediting): a pod added or removed meanwhile is never half-seen.
    fn serialize(&self) -> Box<dyn Held + '_> {
        Box::new(())
    }
}

/// Walks `t` in batched chunks, asking `expired` of each entry; each expired one is re-read by
/// key immediately before its own deletion and deleted only when `same(old, now)` and still
/// expired. Returns the deleted entries; `keep` gets every entry that stays (as last read).
///
/// Per key, not per chunk: the programs refresh an entry by writing through the value pointer
/// of their lookup, so a refresh landing between a re-read and the deletion would be lost with
/// the element. A chunk's re-read and batch deletion left that open for a chunk's worth of
/// syscalls; a per-key re-read narrows it to one key's, and `take` (lookup-and-delete) returns
/// a refresh that landed before the deletion so it can be put back. Expired entries are usually
/// few next to the walk, which stays batched.
fn sweep<K: Copy + Eq + std::hash::Hash, V: Copy>(
    t: &dyn Table<K, V>,
    expired: &dyn Fn(&K, &V) -> bool,
    same: &dyn Fn(&V, &V) -> bool,
    keep: &mut dyn FnMut(&K, &V),
) -> Result<(usize, Vec<(K, V)>), GcError> {
    let mut deleted = Vec::new();
    let seen = t.walk(&mut |_, ks, vs| {
        for (k, old) in ks.iter().zip(vs) {
            if !expired(k, old) {
                keep(k, old);
                continue;
            }
            match t.get(k)? {
                Some(cur) if same(old, &cur) && expired(k, &cur) => match t.take(k)? {
                    Some(gone) if same(&cur, &gone) => deleted.push((*k, gone)),
                    // Refreshed between the re-read and the deletion: the deletion returned the
                    // refresh, so the entry goes back, unless the programs re-created it
                    // meanwhile (they charged the new one; the deleted one is credited).
                    Some(gone) => {
                        if t.insert_new(k, &gone)? {
                            keep(k, &gone);
                        } else {
                            deleted.push((*k, gone));
                        }
                    }
                    // Gone meanwhile (the LRU, a flush): not ours to count.
                    None => {}
                },
                // Refreshed or re-created meanwhile: live, kept.
                Some(cur) => keep(k, &cur),
                None => {}
            }
        }
        Ok(())
    })?;
    Ok((seen, deleted))
}

/// One pass at a time per process: two passes deleting the same entry would both credit it.
static ONE_PASS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// How long until the next pass: `base` while the fullest table is at most a quarter full, then
/// linearly sooner, down to 1 s at the high-water mark (`podgate_common::pressure`), where new
/// flows are about to be refused and only a pass makes room.
pub fn next_interval(base: std::time::Duration, occupancy: f64, high_water: f64) -> std::time::Duration {
    let floor = std::time::Duration::from_secs(1).min(base);
    let low = 0.25_f64.min(high_water);
    if occupancy <= low {
        return base;
    }
    if occupancy >= high_water {
        return floor;
    }
    let f = (occupancy - low) / (high_water - low);
    floor + (base - floor).mul_f64(1.0 - f)
}

/// Entries a pass walked per second (ct4 + nat4_map + nat4_claim).
pub fn entries_per_sec(r: &GcReport) -> f64 {
    let n = r.flows_seen + r.mappings_seen + r.claims_seen + r.claims_removed + r.orphan_claims_removed;
    if r.duration_us == 0 { 0.0 } else { n as f64 * 1e6 / r.duration_us as f64 }
}

/// One pass at `now` (CLOCK_BOOTTIME ns), in the order `podgate_common::nat::mapping_expired`
/// documents: expired flows; then mappings no live flow holds that sat idle for their timeout;
/// then the claims of both and the eviction holes; then stale fragment records.
pub fn pass(s: &dyn NatState, t: &Timeouts, unanswered_secs: u32, now: u64) -> Result<GcReport, GcError> {
    let _one = ONE_PASS.lock().unwrap_or_else(|e| e.into_inner());
    let start = Instant::now();
    let mut r = GcReport::default();

    // Flows.
    let mut live_flows: HashMap<Endpoint4, u32> = HashMap::default();
    let mut live: Vec<(Endpoint4, [u8; 4], u16, u32, u64)> = Vec::new();
    let ep_of = |k: &Flow4| Endpoint4 { addr: k.pod_addr, port: k.pod_port, proto: k.proto, _pad: 0 };
    let (seen, dead) = sweep(
        s.ct4(),
        &|k, v| abi::ct_expired(k, v, now, t, unanswered_secs),
        &|a, b| a.last_seen_ns == b.last_seen_ns && a.state == b.state,
        &mut |k, v| {
            let ep = ep_of(k);
            *live_flows.entry(ep).or_default() += 1;
            live.push((ep, k.remote_addr, v.ext_port, v.pod_ifindex, v.last_seen_ns));
        },
    )?;
    r.flows_seen = seen;
    r.flows_expired = dead.len();

    // Mappings.
    let mut mapped: HashSet<Endpoint4> = HashSet::with_capacity_and_hasher(live_flows.len(), Default::default());
    let (seen, gone) = sweep(
        s.nat4_map(),
        &|k, v| abi::mapping_expired(k, v, live_flows.get(k).copied().unwrap_or(0), now, t),
        &|a, b| a.last_seen_ns == b.last_seen_ns && a.ext_port == b.ext_port,
        &mut |k, _| {
            mapped.insert(*k);
        },
    )?;
    r.mappings_seen = seen;
    r.mappings_expired = gone.len();
    let gone_eps: HashSet<Endpoint4> = gone.iter().map(|(k, _)| *k).collect();

    // What nat4_map holds now: a mapping the programs created during the pass is nobody's hole.
    if !gone.is_empty() || !dead.is_empty() {
        s.nat4_map().walk(&mut |_, ks, _| {
            mapped.extend(ks.iter().copied());
            Ok(())
        })?;
    }

    let eif = s.eif();
    let claim_of = |ep: &Endpoint4, remote: [u8; 4], ext: u16| Claim4 { remote: if eif { [0; 4] } else { remote }, ext_port: ext, proto: ep.proto, _pad: 0 };
    // Claims only a dead flow used.
    let live_claims: HashSet<(Endpoint4, [u8; 4], u16)> =
        if dead.is_empty() { HashSet::default() } else { live.iter().map(|l| (l.0, l.1, l.2)).collect() };
    let dead_claims: HashMap<(Claim4, Endpoint4), Flow4> = dead
        .iter()
        .filter(|(k, v)| !live_claims.contains(&(ep_of(k), k.remote_addr, v.ext_port)))
        .map(|(k, v)| ((Claim4 { remote: k.remote_addr, ext_port: v.ext_port, proto: k.proto, _pad: 0 }, ep_of(k)), *k))
        .collect();
    // Needed only for claims whose mapping is missing (rare): built on first use.
    let live_ports = std::cell::OnceCell::<HashSet<(Endpoint4, u16)>>::new();
    let live_port = |ep: Endpoint4, port: u16| live_ports.get_or_init(|| live.iter().map(|l| (l.0, l.2)).collect()).contains(&(ep, port));

    // Claims: of dead flows, of expired mappings, and orphans (mapping evicted, no flow left).
    let mut claims_now: HashSet<Claim4> = HashSet::default();
    let mut lost: HashSet<Endpoint4> = HashSet::default();
    let mut orphans = 0usize;
    let mut removed = 0usize;
    let mut claims_seen = 0usize;
    let doomed = |k: &Claim4, owner: &Endpoint4| -> u8 {
        if gone_eps.contains(owner) && !mapped.contains(owner) {
            1
        } else if dead_claims.contains_key(&(*k, *owner)) {
            2
        } else if !mapped.contains(owner) && !live_port(*owner, k.ext_port) {
            3
        } else {
            0
        }
    };
    {
        let c = s.nat4_claim();
        let m = s.nat4_map();
        let ct = s.ct4();
        let mut cand: Vec<(Claim4, Endpoint4, u8)> = Vec::new();
        c.walk(&mut |_, ks, vs| {
            claims_seen += ks.len();
            cand.clear();
            for (k, o) in ks.iter().zip(vs) {
                match doomed(k, o) {
                    0 => {
                        claims_now.insert(*k);
                    }
                    why => cand.push((*k, *o, why)),
                }
            }
            if cand.is_empty() {
                return Ok(());
            }
            // Each candidate is re-read, checked and deleted on its own, as `sweep` does: a
            // flow re-created on its claim after the check would lose the claim to a deletion
            // batched behind other keys' checks.
            for (k, o, why) in &cand {
                match c.get(k)? {
                    // The programs claim a port just before they insert its mapping: a mapping
                    // made since the walk read nat4_map makes its claim no orphan.
                    Some(cur) if cur == *o && *why == 3 && m.get(o)?.is_some() => {
                        claims_now.insert(*k);
                    }
                    // An endpoint whose mapping expired this pass and that sent again since:
                    // the claim of its new mapping's port is live (its old port's claim is not).
                    Some(cur) if cur == *o && *why == 1 && m.get(o)?.is_some_and(|n| n.ext_port == k.ext_port) => {
                        claims_now.insert(*k);
                    }
                    // A dead flow's claim under a live mapping: the pod may have sent on that
                    // flow again since the ct4 walk, re-creating it on the same claim.
                    Some(cur) if cur == *o && *why == 2 && ct.get(&dead_claims[&(*k, *o)])?.is_some() => {
                        claims_now.insert(*k);
                    }
                    Some(cur) if cur == *o && c.remove(k)? => match why {
                        3 => {
                            orphans += 1;
                            lost.insert(*o);
                        }
                        _ => removed += 1,
                    },
                    // Gone since the re-read: not ours to count.
                    Some(cur) if cur == *o => {}
                    Some(_) => {
                        claims_now.insert(*k);
                    }
                    None => {}
                }
            }
            Ok(())
        })?;
    }
    r.claims_removed = removed;
    r.orphan_claims_removed = orphans;
    r.claims_seen = claims_seen - removed - orphans;

    // Eviction repair and crediting write state the programs also write: one at a time with pod
    // registration and removal.
    let _serial = s.serialize();
    let pods: HashMap<u32, Pod> = s.pods()?.into_iter().collect();
    let room = s.mapping_room();
    let mut counted = mapped.len();
    let mut restored: HashSet<Endpoint4> = HashSet::default();
    for &(ep, remote, ext, pod_ifindex, last_seen_ns) in &live {
        // A pod removed meanwhile (its flows flushed after this pass read them) gets nothing back.
        if !pods.contains_key(&pod_ifindex) {
            continue;
        }
        if !mapped.contains(&ep) && !restored.contains(&ep) {
            if counted >= room {
                r.evicted_mappings_pending += 1;
            } else {
                let m = Mapping4 { ext_port: ext, _pad: 0, pod_ifindex, created_ns: now, last_seen_ns };
                // NOEXIST: the pod may have opened a new mapping meanwhile; it wins.
                if s.nat4_map().insert_new(&ep, &m)? {
                    r.evicted_mappings_restored += 1;
                }
                restored.insert(ep);
                counted += 1;
            }
        }
        let k = claim_of(&ep, remote, ext);
        if !claims_now.contains(&k) && s.nat4_claim().insert_new(&k, &ep)? {
            r.evicted_claims_restored += 1;
            claims_now.insert(k);
            r.claims_seen += 1;
        }
    }
    // Endpoints whose flows all ended this pass while their mapping was already gone.
    for (k, _) in &dead {
        let ep = ep_of(k);
        if !gone_eps.contains(&ep) && !mapped.contains(&ep) && !live_flows.contains_key(&ep) {
            lost.insert(ep);
        }
    }
    lost.retain(|ep| !restored.contains(ep) && !mapped.contains(ep));
    r.evicted_mappings_lost = lost.len();

    // Crediting: every deleted ct4 and nat4_map entry, and every mapping the LRU took for good
    // (the programs counted it when they made it; nobody else will free it). A restored mapping
    // was never credited, so its later expiry is its one credit.
    let mut freed: HashMap<u32, PodUsage> = HashMap::default();
    for (_, v) in &dead {
        if let Some(p) = pods.get(&v.pod_ifindex) {
            freed.entry(p.id).or_default().flows4 += 1;
        }
    }
    for (_, v) in &gone {
        if let Some(p) = pods.get(&v.pod_ifindex) {
            freed.entry(p.id).or_default().mappings += 1;
        }
    }
    let pods_v4: HashMap<[u8; 4], u32> = if lost.is_empty() { HashMap::default() } else { s.pods_v4()?.into_iter().collect() };
    for ep in &lost {
        if let Some(ifindex) = pods_v4.get(&ep.addr)
            && let Some(p) = pods.get(ifindex)
        {
            freed.entry(p.id).or_default().mappings += 1;
        }
    }
    for (id, f) in freed {
        s.credit(id, f)?;
    }
    drop(_serial);

    let (_, stale) = sweep(s.frag4(), &|_, v| abi::frag_expired(v, now), &|a, b| a == b, &mut |_, _| {})?;
    r.frags_expired = stale.len();
    r.duration_us = start.elapsed().as_micros() as u64;
    Ok(r)
}

/// The pinned maps, walked with batched bpf(2) commands.
pub struct KernelNat<'a> {
    pins: &'a Pins,
    ct4: BatchMap<Flow4, Ct4>,
    nat4_map: BatchMap<Endpoint4, Mapping4>,
    nat4_claim: BatchMap<Claim4, Endpoint4>,
    frag4: BatchMap<FragKey4, FragVal4>,
    lock: Option<&'a dyn Fn() -> Box<dyn Held + 'a>>,
}

impl<'a> KernelNat<'a> {
    pub fn open(pins: &'a Pins) -> Result<Self, GcError> {
        let open = |n: &str| -> Result<std::path::PathBuf, GcError> {
            let p = pins.map(n);
            if !p.exists() {
                return Err(crate::error::DataplaneError::NotInstalled { root: pins.root().to_owned() }.into());
            }
            Ok(p)
        };
        Ok(Self {
            pins,
            ct4: BatchMap::from_pin(&open(nat_maps::CT4)?)?,
            nat4_map: BatchMap::from_pin(&open(nat_maps::NAT4_MAP)?)?,
            nat4_claim: BatchMap::from_pin(&open(nat_maps::NAT4_CLAIM)?)?,
            frag4: BatchMap::from_pin(&open(nat_maps::FRAG4)?)?,
            lock: None,
        })
    }

    /// Runs the pass's writes under `lock` (the daemon's mutation lock).
    pub fn with_lock(mut self, lock: &'a dyn Fn() -> Box<dyn Held + 'a>) -> Self {
        self.lock = Some(lock);
        self
    }

    fn small<K: aya::Pod, V: aya::Pod>(&self, name: &str) -> Result<BatchMap<K, V>, GcError> {
        Ok(BatchMap::from_pin(&self.pins.map(name))?)
    }
}

impl<K: crate::maps::batch::Plain, V: crate::maps::batch::Plain> Table<K, V> for BatchMap<K, V> {
    fn walk(&self, f: &mut ChunkFn<'_, K, V>) -> Result<usize, GcError> {
        let mut err = None;
        let n = self.for_each_chunk(|_, at, k, v| match f(at, k, v) {
            Ok(()) => Ok(()),
            Err(GcError::Batch(e)) => Err(e),
            Err(e) => {
                err = Some(e);
                Err(BatchError::Syscall { cmd: "walk", source: std::io::Error::other("stopped") })
            }
        });
        match (n, err) {
            (_, Some(e)) => Err(e),
            (n, None) => Ok(n?),
        }
    }
    fn delete(&self, keys: &[K]) -> Result<usize, GcError> {
        Ok(BatchMap::delete(self, keys)?)
    }
    fn remove(&self, k: &K) -> Result<bool, GcError> {
        Ok(BatchMap::remove(self, k)?)
    }
    fn take(&self, k: &K) -> Result<Option<V>, GcError> {
        Ok(BatchMap::take(self, k)?)
    }
    fn get(&self, k: &K) -> Result<Option<V>, GcError> {
        Ok(BatchMap::get(self, k)?)
    }
    fn insert_new(&self, k: &K, v: &V) -> Result<bool, GcError> {
        Ok(self.insert(k, v, BPF_NOEXIST)?)
    }
}

impl NatState for KernelNat<'_> {
    fn ct4(&self) -> &dyn Table<Flow4, Ct4> {
        &self.ct4
    }
    fn nat4_map(&self) -> &dyn Table<Endpoint4, Mapping4> {
        &self.nat4_map
    }
    fn nat4_claim(&self) -> &dyn Table<Claim4, Endpoint4> {
        &self.nat4_claim
    }
    fn frag4(&self) -> &dyn Table<FragKey4, FragVal4> {
        &self.frag4
    }
    fn pods(&self) -> Result<Vec<(u32, Pod)>, GcError> {
        Ok(self.small::<u32, Pod>(map_names::PODS)?.entries()?)
    }
    fn pods_v4(&self) -> Result<Vec<([u8; 4], u32)>, GcError> {
        Ok(self.small::<[u8; 4], u32>(map_names::PODS_V4)?.entries()?)
    }
    fn credit(&self, pod_id: u32, f: PodUsage) -> Result<(), GcError> {
        // A pin set from before pod_freed existed has nowhere to credit: the legacy count is all.
        if !self.pins.map(map_names::POD_FREED).exists() {
            return Ok(());
        }
        let m = self.small::<u32, PodUsage>(map_names::POD_FREED)?;
        let old = m.get(&pod_id)?.unwrap_or_default();
        let new = PodUsage {
            mappings: old.mappings + f.mappings,
            flows4: old.flows4 + f.flows4,
            flows6: old.flows6 + f.flows6,
        };
        // Userspace is pod_freed's only writer, and this runs under the mutation lock.
        m.insert(&pod_id, &new, 0)?;
        Ok(())
    }
    fn eif(&self) -> bool {
        crate::maps::read_node(self.pins).is_ok_and(|n| n.flags & podgate_common::node_flags::FILTER_EIF != 0)
    }
    fn mapping_room(&self) -> usize {
        let ncpus = aya::util::nr_cpus().map(|n| n as u64).unwrap_or(1);
        crate::maps::map_max_entries(self.pins, nat_maps::NAT4_MAP)
            .map(|max| podgate_common::pressure::high_water(u64::from(max), ncpus) as usize)
            .unwrap_or(0)
    }
    fn serialize(&self) -> Box<dyn Held + '_> {
        match self.lock {
            Some(l) => l(),
            None => Box::new(()),
        }
    }
}

#[cfg(test)]
mod tests;
