//! The one error type of the map, attach and pod-record layers (`DataplaneError`).

use std::{io, path::PathBuf};

use aya::{
    maps::MapError,
    pin::PinError as AyaPinError,
    programs::{ProgramError, links::LinkError},
};
use thiserror::Error;

use crate::{attach::foreign::ForeignError, netif::NetifError, pins::PinError};

#[derive(Debug, Error)]
pub enum DataplaneError {
    #[error(transparent)]
    Pins(#[from] PinError),
    #[error(transparent)]
    Netif(#[from] NetifError),
    #[error(transparent)]
    Foreign(#[from] ForeignError),
    #[error(
        "pinned state in {root} has map ABI version {found}, this podgate uses {ours}; \
         migration between these versions is not implemented: stop the old dataplane with \
         `podgate reset --pin-root {root}` (drops all flows) and start again"
    )]
    AbiMismatch { root: PathBuf, found: u32, ours: u32 },
    #[error("loading the eBPF object: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("program {name}")]
    Program {
        name: String,
        #[source]
        source: ProgramError,
    },
    #[error("map {name}")]
    Map {
        name: String,
        #[source]
        source: MapError,
    },
    #[error("pinning {path}")]
    Pin {
        path: PathBuf,
        #[source]
        source: AyaPinError,
    },
    #[error("link {path}")]
    Link {
        path: PathBuf,
        #[source]
        source: LinkError,
    },
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no podgate state under {root} (is the daemon started? `podgate run --config FILE`)")]
    NotInstalled { root: PathBuf },
    #[error("pod {name:?} is not registered")]
    UnknownPod { name: String },
    #[error("pod {name:?} conflicts with registered pod {other:?}: {what}")]
    PodConflict { name: String, other: String, what: String },
    #[error("no free pod id (4096 pods registered)")]
    PodIdsExhausted,
    #[error(transparent)]
    Batch(#[from] crate::maps::batch::BatchError),
}
