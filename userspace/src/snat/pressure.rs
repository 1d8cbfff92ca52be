//! Map pressure after a GC pass: occupancy of the LRU maps and the `nat4_pressure` level.

use aya::maps::MapData;
use podgate_common::nat::map_names as nat_maps;

use super::report::GcReport;
use crate::{
    error::DataplaneError,
    maps::{map_err, map_max_entries, open_map},
    pins::Pins,
};

/// Occupancy of the three LRU maps after a GC pass: `(name, entries, max_entries)`.
pub fn occupancy(pins: &Pins, r: &GcReport) -> Vec<(&'static str, u64, u64)> {
    [
        (nat_maps::CT4, r.flows_seen - r.flows_expired),
        (nat_maps::NAT4_MAP, r.mappings_seen - r.mappings_expired + r.evicted_mappings_restored),
        (nat_maps::NAT4_CLAIM, r.claims_seen),
    ]
    .into_iter()
    .filter_map(|(name, used)| Some((name, used as u64, u64::from(map_max_entries(pins, name)?))))
    .collect()
}

/// Decides from a pass's occupancy whether the programs must refuse new flows
/// (`podgate_common::pressure`), writes the answer to `nat4_pressure` and returns whether every
/// new flow is refused.
pub fn update_pressure(pins: &Pins, r: &GcReport, was: bool) -> Result<bool, DataplaneError> {
    use aya::maps::Array;
    let ncpus = aya::util::nr_cpus().map(|n| n as u64).unwrap_or(1);
    let occ = occupancy(pins, r);
    let on = occ.iter().any(|&(_, used, max)| podgate_common::pressure::under_pressure(was, used, max, ncpus));
    let level = pressure_level(&occ, on, ncpus);
    let mut a: Array<MapData, u32> = Array::try_from(open_map(pins, nat_maps::NAT4_PRESSURE)?)
        .map_err(map_err(nat_maps::NAT4_PRESSURE))?;
    a.set(0, level, 0).map_err(map_err(nat_maps::NAT4_PRESSURE))?;
    Ok(on)
}

/// The `nat4_pressure` value (`podgate_common::nat::pressure_level`): `FULL` when every new flow
/// must be refused (`on`, a map above its high-water mark), else `INBOUND` from `ct4`'s
/// low-water mark on, so that flows a remote opens are refused a tenth of the map before the
/// pods' own ones are.
pub fn pressure_level(occupancy: &[(&'static str, u64, u64)], on: bool, ncpus: u64) -> u32 {
    use podgate_common::nat::pressure_level as level;
    if on {
        return level::FULL;
    }
    let inbound = occupancy
        .iter()
        .any(|&(name, used, max)| name == nat_maps::CT4 && used >= podgate_common::pressure::low_water(max, ncpus));
    if inbound { level::INBOUND } else { level::NONE }
}

#[cfg(test)]
mod tests {
    use super::*;
    use podgate_common::{nat::pressure_level as level, pressure};

    #[test]
    fn inbound_flows_are_refused_before_the_pods_own() {
        let (max, n) = (16_384, 2);
        let occ = |ct4: u64| [(nat_maps::CT4, ct4, max), (nat_maps::NAT4_MAP, 10, max), (nat_maps::NAT4_CLAIM, 10, max)];
        assert_eq!(pressure_level(&occ(pressure::low_water(max, n) - 1), false, n), level::NONE);
        assert_eq!(pressure_level(&occ(pressure::low_water(max, n)), false, n), level::INBOUND);
        assert_eq!(pressure_level(&occ(pressure::high_water(max, n)), true, n), level::FULL);
        // A full mapping table refuses everything; it alone never refuses inbound flows first.
        let maps_full = [(nat_maps::CT4, 10, max), (nat_maps::NAT4_MAP, max, max)];
        assert_eq!(pressure_level(&maps_full, false, n), level::NONE);
        assert_eq!(pressure_level(&maps_full, true, n), level::FULL);
    }
}
