//! A daemon meeting pinned state of another map ABI (a DaemonSet rolling update across an
//! `ABI_VERSION` bump, or a rollback). Migrating between layouts is not implemented, and refusing
//! to start would crash-loop the pod and leave the node without a dataplane: podgate starts clean
//! instead. That loses what the old pins held — flows, mappings, pods registered at runtime
//! through the CNI plugin (their veths keep no podgate program until they are registered again)
//! — and says so once in the log and in `podgate_abi_reset_total`.

use aya::maps::{Array, Map, MapData};
use podgate_common::{ABI_VERSION, NodeConfig, map_names};

use crate::{attach as links, error::DataplaneError, maps::map_err, pins::Pins};

/// `abi_version` of the pinned `node` entry: `None` without pins, 0 for an entry never written
/// (a start that failed half-way), `u32::MAX` for a value of another size (not even readable).
pub fn pinned_abi(pins: &Pins) -> Result<Option<u32>, DataplaneError> {
    if !pins.exists() {
        return Ok(None);
    }
    let path = pins.map(map_names::NODE);
    let data = MapData::from_pin(&path).map_err(map_err(map_names::NODE))?;
    let info = data.info().map_err(map_err(map_names::NODE))?;
    if info.value_size() as usize != std::mem::size_of::<NodeConfig>() {
        return Ok(Some(u32::MAX));
    }
    let map = Map::from_map_data(data).map_err(map_err(map_names::NODE))?;
    let arr: Array<MapData, NodeConfig> = Array::try_from(map).map_err(map_err(map_names::NODE))?;
    Ok(Some(arr.get(&0, 0).map_err(map_err(map_names::NODE))?.abi_version))
}

/// Whether pins of ABI `found` can be adopted by this podgate.
pub fn compatible(found: Option<u32>) -> bool {
    matches!(found, None | Some(0)) || found == Some(ABI_VERSION)
}

/// What a clean start threw away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbiReset {
    /// The pinned ABI (`u32::MAX`: a `node` value of another size).
    pub found: u32,
    pub ours: u32,
    /// Links detached with the old state.
    pub links: usize,
}

/// Detaches and removes pinned state of another ABI so that the caller installs afresh; `None`
/// when the pins (if any) are adoptable. The reserved-ports record and the control socket live
/// outside the pin root and stay.
pub fn clean_start_if_incompatible(pins: &Pins) -> Result<Option<AbiReset>, DataplaneError> {
    let found = pinned_abi(pins)?;
    if compatible(found) {
        return Ok(None);
    }
    let links = links::reset(pins, true)?;
    Ok(Some(AbiReset { found: found.unwrap_or_default(), ours: ABI_VERSION, links }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_version_or_unwritten_state_is_adopted() {
        assert!(compatible(None));
        assert!(compatible(Some(0)));
        assert!(compatible(Some(ABI_VERSION)));
        assert!(!compatible(Some(ABI_VERSION - 1)));
        assert!(!compatible(Some(ABI_VERSION + 1)));
        assert!(!compatible(Some(u32::MAX)));
    }
}
