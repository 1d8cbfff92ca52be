//! Loading the embedded object, adopting the pinned maps and re-pinning the programs.

use std::{
    io,
    path::{Path, PathBuf},
};

use aya::{
    EbpfLoader,
    maps::{Array, Map, MapData},
    pin::PinError as AyaPinError,
    programs::{Program, ProgramError},
};
use podgate_common::{ABI_VERSION, NodeConfig, map_names};

use crate::{
    error::DataplaneError,
    maps::{all_map_names, map_err, map_max_entries},
    pins::Pins,
};

/// Programs and where they go.
pub const POD_INGRESS: &str = "pod_ingress";
pub const POD_EGRESS: &str = "pod_egress";
pub const UPLINK_XDP: &str = "uplink_xdp";
pub const UPLINK_TC: &str = "uplink_tc";
const TC_PROGRAMS: &[&str] = &[POD_INGRESS, POD_EGRESS, UPLINK_TC];
const XDP_PROGRAMS: &[&str] = &[UPLINK_XDP];

pub(crate) fn prog_err(name: &str) -> impl FnOnce(ProgramError) -> DataplaneError + '_ {
    move |source| DataplaneError::Program { name: name.into(), source }
}

/// Loads the embedded object, adopting existing pins, and pins maps and programs. Returns the
/// names of the maps that were adopted (not created). `bpf_log_level` (aya-log numbering, 0 =
/// off) is fixed at load: a log point above it returns before formatting anything.
pub fn install(pins: &Pins, bpf_log_level: u8) -> Result<Vec<String>, DataplaneError> {
    install_sized(pins, &[], bpf_log_level)
}

/// Like [`install`], creating the maps in `sizes` (`(name, max_entries)`) with those sizes. A map
/// adopted from its pin keeps the size it was created with (see [`size_mismatches`]).
pub fn install_sized(pins: &Pins, sizes: &[(&str, u32)], bpf_log_level: u8) -> Result<Vec<String>, DataplaneError> {
    pins.prepare()?;
    check_abi(pins)?;
    let names = all_map_names();
    let adopted: Vec<String> = names
        .iter()
        .filter(|n| pins.map(n).exists())
        .map(|n| n.to_string())
        .collect();
    let paths: Vec<(&str, PathBuf)> = names.iter().map(|n| (*n, pins.map(n))).collect();
    let mut loader = EbpfLoader::new();
    loader.override_global(aya_log::LEVEL, &bpf_log_level, false);
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    for (name, n) in sizes {
        loader.map_max_entries(name, *n);
    }
    let mut ebpf = loader.load(crate::EBPF_OBJECT).map_err(DataplaneError::Load)?;
    for name in TC_PROGRAMS.iter().chain(XDP_PROGRAMS) {
        let prog = ebpf
            .program_mut(name)
            .ok_or_else(|| prog_err(name)(ProgramError::NotLoaded))?;
        // The kernel abandons a verification with EAGAIN when a signal is pending; like libbpf,
        // try again a few times before giving up.
        let mut tries = 0;
        loop {
            let r = match &mut *prog {
                Program::SchedClassifier(p) => p.load(),
                Program::Xdp(p) => p.load(),
                _ => Err(ProgramError::UnexpectedProgramType),
            };
            match r {
                Err(e) if tries < 4 && is_eagain(&e) => tries += 1,
                r => break r.map_err(prog_err(name))?,
            }
        }
        repin(pins.prog(name), |path| prog.pin(path))?;
    }
    Ok(adopted)
}

/// The pinned maps whose size differs from `sizes`: `(name, pinned, wanted)`.
pub fn size_mismatches(pins: &Pins, sizes: &[(&str, u32)]) -> Vec<(String, u32, u32)> {
    sizes
        .iter()
        .filter_map(|(name, want)| {
            let have = map_max_entries(pins, name)?;
            (have != *want).then(|| (name.to_string(), have, *want))
        })
        .collect()
}

/// Replaces a program pin: links already attached keep the old program until `attach_*` updates
/// them, so nothing stops forwarding in between.
pub(crate) fn repin(
    path: PathBuf,
    pin: impl FnOnce(&Path) -> Result<(), AyaPinError>,
) -> Result<(), DataplaneError> {
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(DataplaneError::Io { path, source }),
    }
    pin(&path).map_err(|source| DataplaneError::Pin { path, source })
}

/// Refuses pinned maps written by a podgate with another map layout.
fn check_abi(pins: &Pins) -> Result<(), DataplaneError> {
    if !pins.exists() {
        return Ok(());
    }
    let path = pins.map(map_names::NODE);
    let data = MapData::from_pin(&path).map_err(map_err(map_names::NODE))?;
    let info = data.info().map_err(map_err(map_names::NODE))?;
    let found = if info.value_size() as usize != std::mem::size_of::<NodeConfig>() {
        // A different layout cannot even be read as ours.
        u32::MAX
    } else {
        let map = Map::from_map_data(data).map_err(map_err(map_names::NODE))?;
        let arr: Array<MapData, NodeConfig> = Array::try_from(map).map_err(map_err(map_names::NODE))?;
        arr.get(&0, 0).map_err(map_err(map_names::NODE))?.abi_version
    };
    // 0: the map exists but was never filled (a start that failed half-way).
    if found != 0 && found != ABI_VERSION {
        return Err(DataplaneError::AbiMismatch {
            root: pins.root().to_owned(),
            found,
            ours: ABI_VERSION,
        });
    }
    Ok(())
}

fn is_eagain(e: &ProgramError) -> bool {
    match e {
        ProgramError::LoadError { io_error, .. } => io_error.raw_os_error() == Some(libc::EAGAIN),
        ProgramError::SyscallError(aya::sys::SyscallError { io_error, .. }) => {
            io_error.raw_os_error() == Some(libc::EAGAIN)
        }
        _ => false,
    }
}
