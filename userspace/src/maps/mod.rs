//! Typed access to the pinned maps: the one table of pinned maps, open helpers, the node entry,
//! counters and per-pod usage; `batch` is the one module that issues raw bpf(2) map commands.

pub mod batch;
pub mod node;
pub mod pinned;
pub mod pods;
pub mod usage;

use aya::maps::{HashMap, Map, MapData, MapError, PerCpuArray};
use podgate_common::{Pod, map_names, stats};

use crate::{error::DataplaneError, pins::Pins};

pub use node::{node_map, read_node, set_node_flag};
pub use pinned::{PINNED, UNPINNED, all_map_names};

pub(crate) fn map_err(name: &str) -> impl FnOnce(MapError) -> DataplaneError + '_ {
    move |source| DataplaneError::Map { name: name.into(), source }
}

/// Opens a pinned hash map (plain or LRU) with its key and value types.
pub(crate) fn open_hash<K: aya::Pod, V: aya::Pod>(pins: &Pins, name: &str) -> Result<HashMap<MapData, K, V>, DataplaneError> {
    HashMap::try_from(open_map(pins, name)?).map_err(map_err(name))
}

/// `max_entries` of a pinned map.
pub fn map_max_entries(pins: &Pins, name: &str) -> Option<u32> {
    let path = pins.map(name);
    let data = MapData::from_pin(&path).ok()?;
    data.info().ok().map(|i| i.max_entries())
}

/// Opens a pinned map by name.
pub fn open_map(pins: &Pins, name: &str) -> Result<Map, DataplaneError> {
    let path = pins.map(name);
    if !path.exists() {
        return Err(DataplaneError::NotInstalled { root: pins.root().to_owned() });
    }
    let data = MapData::from_pin(&path).map_err(map_err(name))?;
    Map::from_map_data(data).map_err(map_err(name))
}

pub fn pods_map(pins: &Pins) -> Result<HashMap<MapData, u32, Pod>, DataplaneError> {
    open_hash(pins, map_names::PODS)
}

pub fn stats_map(pins: &Pins) -> Result<PerCpuArray<MapData, u64>, DataplaneError> {
    PerCpuArray::try_from(open_map(pins, map_names::STATS)?).map_err(map_err(map_names::STATS))
}

pub fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        other => other,
    }
}

/// Sums the per-CPU counters: (counter, total).
pub fn read_stats(pins: &Pins) -> Result<Vec<(stats::Counter, u64)>, DataplaneError> {
    let m = stats_map(pins)?;
    let mut out = Vec::new();
    for &c in stats::Counter::ALL {
        let v = m.get(&(c as u32), 0).map_err(map_err(map_names::STATS))?;
        out.push((c, v.iter().sum()));
    }
    Ok(out)
}
