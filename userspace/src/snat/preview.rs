//! `podgate gc --dry-run`: what a pass would expire, read without changing anything.

use aya::maps::{HashMap, MapData};
use podgate_common::{
    Timeouts,
    nat::{self, Ct4, Endpoint4, FragKey4, FragVal4, Flow4, Mapping4, map_names as nat_maps},
};

use super::report::GcPreview;
use crate::{error::DataplaneError, maps::open_hash, pins::Pins};

pub fn gc_preview(pins: &Pins, t: &Timeouts, unanswered_secs: u32, now: u64) -> Result<GcPreview, DataplaneError> {
    use std::collections::HashMap as Map;
    let mut r = GcPreview::default();
    let ct: HashMap<MapData, Flow4, Ct4> = open_hash(pins, nat_maps::CT4)?;
    let mut live_flows: Map<Endpoint4, u32> = Map::new();
    for (k, v) in ct.iter().filter_map(Result::ok) {
        r.flows_seen += 1;
        if nat::ct_expired(&k, &v, now, t, unanswered_secs) {
            r.flows_would_expire += 1;
        } else {
            let ep = Endpoint4 { addr: k.pod_addr, port: k.pod_port, proto: k.proto, _pad: 0 };
            *live_flows.entry(ep).or_default() += 1;
        }
    }
    let maps: HashMap<MapData, Endpoint4, Mapping4> = open_hash(pins, nat_maps::NAT4_MAP)?;
    for (k, v) in maps.iter().filter_map(Result::ok) {
        r.mappings_seen += 1;
        let live = live_flows.get(&k).copied().unwrap_or(0);
        r.mappings_would_expire += usize::from(nat::mapping_expired(&k, &v, live, now, t));
    }
    let frags: HashMap<MapData, FragKey4, FragVal4> = open_hash(pins, nat_maps::FRAG4)?;
    r.frags_would_expire = frags.iter().filter_map(Result::ok).filter(|(_, v)| nat::frag_expired(v, now)).count();
    Ok(r)
}
