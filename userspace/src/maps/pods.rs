//! Reading the pod records back (`pods`, `pod_names`): one entry per registered pod.

use aya::maps::{HashMap, MapData};
use podgate_common::{Pod, PodName, map_names};

use super::{map_err, open_hash, pods_map};
use crate::{error::DataplaneError, pins::Pins};

/// A registered pod, as read back from the maps.
#[derive(Debug, Clone)]
pub struct PodEntry {
    pub name: String,
    pub pod: Pod,
    /// Every host-side ifindex keyed to this pod.
    pub ifindexes: Vec<u32>,
}

/// All registered pods, one entry per pod, ordered by id.
pub fn list_pods(pins: &Pins) -> Result<Vec<PodEntry>, DataplaneError> {
    let pods = pods_map(pins)?;
    let names: HashMap<MapData, u32, PodName> =
        open_hash(pins, map_names::POD_NAMES)?;
    let mut by_id: std::collections::BTreeMap<u32, PodEntry> = Default::default();
    for item in pods.iter() {
        let (ifindex, pod) = item.map_err(map_err(map_names::PODS))?;
        let e = by_id.entry(pod.id).or_insert_with(|| PodEntry {
            name: names
                .get(&pod.id, 0)
                .map(|n| String::from_utf8_lossy(&n.name[..(n.len as usize).min(n.name.len())]).into_owned())
                .unwrap_or_else(|_| format!("pod-{}", pod.id)),
            pod,
            ifindexes: Vec::new(),
        });
        e.ifindexes.push(ifindex);
    }
    Ok(by_id.into_values().collect())
}

