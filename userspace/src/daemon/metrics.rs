//! Prometheus text exposition of the dataplane's state, rendered from the pinned maps on each
//! scrape (so it is exact, and costs nothing between scrapes).

use std::fmt::Write as _;

use podgate_common::NodeConfig;

use crate::{
    error::DataplaneError,
    maps::{self, pods::list_pods, usage},
    sg,
    snat::{self, GcReport},
    pins::Pins,
};

/// What the daemon itself knows (not in any map).
#[derive(Debug, Default, Clone)]
pub struct DaemonMetrics {
    pub gc_runs: u64,
    pub gc_seconds_total: f64,
    /// Delay the daemon chose for the next pass.
    pub gc_next_secs: f64,
    pub last_gc: GcReport,
    pub gc_errors: u64,
    /// The orphan-fragment slow path (`frag_punt`).
    pub frag_punt: PuntStats,
    /// LRU evictions the GC found, by kind (`snat::GcReport`), since the daemon started.
    pub evicted_mappings_restored: u64,
    pub evicted_claims_restored: u64,
    pub evicted_mappings_lost: u64,
    /// New flows refused (`nat4_pressure`) now, and GC passes that found the maps near full.
    pub pressure: bool,
    pub pressure_passes: u64,
}

/// What the daemon did with orphans (Prometheus: `podgate_frag_punt_*`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PuntStats {
    /// Fragments and their bytes held now.
    pub held: u64,
    pub held_bytes: u64,
    /// Fragments handed back to the program once their first fragment was translated.
    pub released: u64,
    /// Fragments whose first fragment never came within `max_age_ns`.
    pub expired: u64,
    /// Fragments refused or evicted by the limits.
    pub dropped: u64,
    /// Failed re-runs of the program.
    pub reinject_errors: u64,
}

pub fn render(pins: &Pins, d: &DaemonMetrics) -> Result<String, DataplaneError> {
    let mut out = String::new();
    let node: NodeConfig = maps::read_node(pins)?;
    let w = &mut out;
    let _ = writeln!(w, "# HELP podgate_packets_total Packets by verdict or drop reason.");
    let _ = writeln!(w, "# TYPE podgate_packets_total counter");
    for (c, v) in maps::read_stats(pins)? {
        let kind = if c.is_drop() { "drop" } else { "verdict" };
        let _ = writeln!(w, "podgate_packets_total{{kind=\"{kind}\",reason=\"{}\"}} {v}", c.name());
    }
    let mappings = snat::mappings(pins)?;
    let flows = snat::flows(pins)?;
    let _ = writeln!(w, "# HELP podgate_map_entries Entries in each state map.");
    let _ = writeln!(w, "# TYPE podgate_map_entries gauge");
    let _ = writeln!(w, "podgate_map_entries{{map=\"nat4_map\"}} {}", mappings.len());
    let _ = writeln!(w, "podgate_map_entries{{map=\"ct4\"}} {}", flows.len());
    let ct6 = sg::flow_rows(pins)?.len();
    let _ = writeln!(w, "podgate_map_entries{{map=\"ct6\"}} {ct6}");
    let _ = writeln!(w, "# HELP podgate_map_capacity Maximum entries of each state map.");
    let _ = writeln!(w, "# TYPE podgate_map_capacity gauge");
    for name in [
        podgate_common::nat::map_names::NAT4_MAP,
        podgate_common::nat::map_names::CT4,
        podgate_common::nat::map_names::NAT4_CLAIM,
        podgate_common::sg::map_names::CT6,
    ] {
        if let Some(max) = maps::map_max_entries(pins, name) {
            let _ = writeln!(w, "podgate_map_capacity{{map=\"{name}\"}} {max}");
        }
    }
    let pool = u64::from(node.port_max - node.port_min) + 1;
    let _ = writeln!(w, "# HELP podgate_port_pool_size External ports per protocol and remote address.");
    let _ = writeln!(w, "# TYPE podgate_port_pool_size gauge");
    let _ = writeln!(w, "podgate_port_pool_size {pool}");
    let _ = writeln!(w, "# HELP podgate_pod_mappings NAT mappings held by each pod, and its quota.");
    let _ = writeln!(w, "# TYPE podgate_pod_mappings gauge");
    let _ = writeln!(w, "# TYPE podgate_pod_quota gauge");
    let _ = writeln!(w, "# HELP podgate_pod_flows4 IPv4 flows (ct4 entries) held by each pod.");
    let _ = writeln!(w, "# TYPE podgate_pod_flows4 gauge");
    for p in list_pods(pins)? {
        // What the quota compares: pod_usage − pod_freed, one count per pod.
        let held = usage::held(pins, p.pod.id)?;
        let _ = writeln!(w, "podgate_pod_mappings{{pod=\"{}\"}} {}", escape(&p.name), held.mappings);
        let _ = writeln!(w, "podgate_pod_flows4{{pod=\"{}\"}} {}", escape(&p.name), held.flows4);
        let _ = writeln!(w, "podgate_pod_quota{{pod=\"{}\"}} {}", escape(&p.name), p.pod.quota);
    }
    let _ = writeln!(w, "# HELP podgate_gc_runs_total Garbage-collection passes.");
    let _ = writeln!(w, "# TYPE podgate_gc_runs_total counter");
    let _ = writeln!(w, "podgate_gc_runs_total {}", d.gc_runs);
    let _ = writeln!(w, "# TYPE podgate_gc_errors_total counter");
    let _ = writeln!(w, "podgate_gc_errors_total {}", d.gc_errors);
    let _ = writeln!(w, "# HELP podgate_lru_evictions_total Live NAT state the LRU maps evicted, found by the GC.");
    let _ = writeln!(w, "# TYPE podgate_lru_evictions_total counter");
    let _ = writeln!(w, "podgate_lru_evictions_total{{kind=\"mapping_restored\"}} {}", d.evicted_mappings_restored);
    let _ = writeln!(w, "podgate_lru_evictions_total{{kind=\"claim_restored\"}} {}", d.evicted_claims_restored);
    let _ = writeln!(w, "podgate_lru_evictions_total{{kind=\"mapping_lost\"}} {}", d.evicted_mappings_lost);
    let _ = writeln!(w, "# HELP podgate_lru_evicted_pending Live flows whose evicted mapping waits for room (last GC pass).");
    let _ = writeln!(w, "# TYPE podgate_lru_evicted_pending gauge");
    let _ = writeln!(w, "podgate_lru_evicted_pending {}", d.last_gc.evicted_mappings_pending);
    let _ = writeln!(w, "# HELP podgate_map_pressure 1 while new flows are refused because the NAT maps are near full.");
    let _ = writeln!(w, "# TYPE podgate_map_pressure gauge");
    let _ = writeln!(w, "podgate_map_pressure {}", u8::from(d.pressure));
    let _ = writeln!(w, "# TYPE podgate_map_pressure_passes_total counter");
    let _ = writeln!(w, "podgate_map_pressure_passes_total {}", d.pressure_passes);
    let _ = writeln!(w, "# HELP podgate_gc_last_seconds Duration of the last IPv4 NAT GC pass.");
    let _ = writeln!(w, "# TYPE podgate_gc_last_seconds gauge");
    let _ = writeln!(w, "podgate_gc_last_seconds {}", d.last_gc.duration_us as f64 / 1e6);
    let _ = writeln!(w, "# HELP podgate_gc_last_entries_per_second Entries (ct4, nat4_map, nat4_claim) the last IPv4 NAT GC pass walked per second.");
    let _ = writeln!(w, "# TYPE podgate_gc_last_entries_per_second gauge");
    let _ = writeln!(w, "podgate_gc_last_entries_per_second {:.0}", snat::gc::entries_per_sec(&d.last_gc));
    let _ = writeln!(w, "# HELP podgate_gc_next_seconds Delay until the next GC pass (sooner as the tables fill).");
    let _ = writeln!(w, "# TYPE podgate_gc_next_seconds gauge");
    let _ = writeln!(w, "podgate_gc_next_seconds {}", d.gc_next_secs);
    let _ = writeln!(w, "# HELP podgate_gc_seconds_total Time spent in garbage collection.");
    let _ = writeln!(w, "# TYPE podgate_gc_seconds_total counter");
    let _ = writeln!(w, "podgate_gc_seconds_total {}", d.gc_seconds_total);
    let _ = writeln!(w, "# HELP podgate_gc_last_expired Entries the last GC pass expired.");
    let _ = writeln!(w, "# TYPE podgate_gc_last_expired gauge");
    let _ = writeln!(w, "podgate_gc_last_expired{{map=\"ct4\"}} {}", d.last_gc.flows_expired);
    let _ = writeln!(w, "podgate_gc_last_expired{{map=\"nat4_map\"}} {}", d.last_gc.mappings_expired);
    let f = &d.frag_punt;
    let _ = writeln!(w, "# HELP podgate_frag_punt_held Inbound fragments the daemon holds until their first fragment.");
    let _ = writeln!(w, "# TYPE podgate_frag_punt_held gauge");
    let _ = writeln!(w, "podgate_frag_punt_held {}", f.held);
    let _ = writeln!(w, "# TYPE podgate_frag_punt_held_bytes gauge");
    let _ = writeln!(w, "podgate_frag_punt_held_bytes {}", f.held_bytes);
    let _ = writeln!(w, "# HELP podgate_frag_punt_total Held fragments by outcome.");
    let _ = writeln!(w, "# TYPE podgate_frag_punt_total counter");
    for (outcome, v) in [("released", f.released), ("expired", f.expired), ("dropped", f.dropped), ("reinject_error", f.reinject_errors)] {
        let _ = writeln!(w, "podgate_frag_punt_total{{outcome=\"{outcome}\"}} {v}");
    }
    Ok(out)
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
