//! The `node` array entry: the handle, reading it, and single flags.

use aya::maps::{Array, MapData};
use podgate_common::{NodeConfig, map_names};

use super::{map_err, open_map};
use crate::{error::DataplaneError, pins::Pins};

pub fn node_map(pins: &Pins) -> Result<Array<MapData, NodeConfig>, DataplaneError> {
    Array::try_from(open_map(pins, map_names::NODE)?).map_err(map_err(map_names::NODE))
}

pub fn read_node(pins: &Pins) -> Result<NodeConfig, DataplaneError> {
    node_map(pins)?.get(&0, 0).map_err(map_err(map_names::NODE))
}

/// Sets or clears one bit of the node entry's flags.
pub fn set_node_flag(pins: &Pins, flag: u32, on: bool) -> Result<(), DataplaneError> {
    let mut cfg = read_node(pins)?;
    if on {
        cfg.flags |= flag;
    } else {
        cfg.flags &= !flag;
    }
    node_map(pins)?.set(0, cfg, 0).map_err(map_err(map_names::NODE))
}
