//! eBPF-side log lines (aya-log) forwarded into the daemon's `tracing` output, only when asked
//! for (`[daemon] bpf_log`, `podgate run --bpf-log LEVEL`). The programs write them only while
//! `node_flags::BPF_LOG` is set, so off costs them one branch on their drop paths.

use std::path::PathBuf;

use aya::programs::ProgramInfo;
use aya_log::EbpfLogger;
use thiserror::Error;
use tracing::Level;

use crate::{attach, pins::Pins};

/// aya-log's numbering (`aya_log_common::Level`): 0 turns every log point off.
pub fn aya_level(level: Option<Level>) -> u8 {
    match level {
        None => 0,
        Some(Level::ERROR) => 1,
        Some(Level::WARN) => 2,
        Some(Level::INFO) => 3,
        Some(Level::DEBUG) => 4,
        Some(Level::TRACE) => 5,
    }
}

#[derive(Debug, Error)]
pub enum BpfLogError {
    #[error("reading pinned program {path}")]
    Program {
        path: PathBuf,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("no pinned podgate program carries an aya-log buffer (AYA_LOGS): {0}")]
    NoLogMap(#[source] aya_log::Error),
}

/// Re-emits aya-log records as `tracing` events under target `podgate::bpf`.
pub struct Forward;

impl log::Log for Forward {
    fn enabled(&self, _: &log::Metadata) -> bool {
        // The level was applied in the kernel (AYA_LOG_LEVEL); the tracing filter applies too.
        true
    }

    fn log(&self, r: &log::Record) {
        let msg = r.args();
        match r.level() {
            log::Level::Error => tracing::error!(target: "podgate::bpf", "{msg}"),
            log::Level::Warn => tracing::warn!(target: "podgate::bpf", "{msg}"),
            log::Level::Info => tracing::info!(target: "podgate::bpf", "{msg}"),
            log::Level::Debug => tracing::debug!(target: "podgate::bpf", "{msg}"),
            log::Level::Trace => tracing::trace!(target: "podgate::bpf", "{msg}"),
        }
    }

    fn flush(&self) {}
}

/// Opens the log buffer of the pinned programs (all of them share one, from one load).
pub fn open(pins: &Pins) -> Result<EbpfLogger<Forward>, BpfLogError> {
    let mut last = aya_log::Error::MapNotFound;
    for prog in [attach::POD_INGRESS, attach::POD_EGRESS, attach::UPLINK_XDP, attach::UPLINK_TC] {
        let path = pins.prog(prog);
        let info = ProgramInfo::from_pin(&path).map_err(|source| BpfLogError::Program { path, source })?;
        match EbpfLogger::init_from_id_with_logger(info.id(), Forward) {
            Ok(l) => return Ok(l),
            Err(e) => last = e,
        }
    }
    Err(BpfLogError::NoLogMap(last))
}
