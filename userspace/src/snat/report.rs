//! What a GC pass did (`GcReport`) and what one would do (`GcPreview`), as reported and serialized.

use serde::Serialize;

#[derive(Debug, Default, Clone, Serialize)]
pub struct GcReport {
    pub flows_seen: usize,
    pub flows_expired: usize,
    pub mappings_seen: usize,
    pub mappings_expired: usize,
    pub claims_removed: usize,
    pub frags_expired: usize,
    /// Claims left after the pass (its occupancy).
    pub claims_seen: usize,
    /// LRU evictions found and repaired: a live flow's mapping (put back from the flow), a live
    /// flow's claim (put back), and mappings lost with no flow left, whose claims (orphans, the
    /// port otherwise reserved for nobody) are removed and whose pod gets its quota back.
    pub evicted_mappings_restored: usize,
    pub evicted_claims_restored: usize,
    pub evicted_mappings_lost: usize,
    pub orphan_claims_removed: usize,
    /// Live flows whose evicted mapping was not put back because nat4_map sits above its
    /// high-water mark (putting it back would only evict another): found again next pass.
    pub evicted_mappings_pending: usize,
    pub duration_us: u64,
}

impl GcReport {
    pub fn evictions(&self) -> usize {
        self.evicted_mappings_restored + self.evicted_claims_restored + self.evicted_mappings_lost
    }
}

/// What [`gc`] at `now` would expire, read without changing anything (`podgate gc --dry-run`).
/// It applies the same rules as the pass (`podgate_common::nat::ct_expired`, `mapping_expired`,
/// `frag_expired`); eviction repair is not previewed (it only ever puts entries back).
#[derive(Debug, Default, Clone, Serialize)]
pub struct GcPreview {
    pub flows_seen: usize,
    pub flows_would_expire: usize,
    pub mappings_seen: usize,
    pub mappings_would_expire: usize,
    pub frags_would_expire: usize,
}
