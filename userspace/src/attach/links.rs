//! Pinned links under `links/`: re-pointing them at a new program, pinning, listing, detaching
//! (bpf links and netlink filters alike), and `reset`.

use std::{
    io,
    path::{Path, PathBuf},
};

use aya::programs::{
    ProgramError,
    links::{FdLink, LinkError, PinnedLink},
    tc::TcAttachType,
};

use super::{foreign, load::{POD_EGRESS, prog_err}};
use crate::{error::DataplaneError, netif, pins::Pins};

/// Removes podgate's filter recorded by the netlink pin `pin` (the program it runs): found by
/// program id, so a filter of another tool is never touched, whatever its name.
pub(crate) fn remove_netlink_filter(pin: &Path, ifname: &str, dir: TcAttachType) -> Result<(), DataplaneError> {
    let Ok(info) = aya::programs::ProgramInfo::from_pin(pin) else {
        return Ok(());
    };
    let Ok(ifindex) = netif::ifindex(ifname) else {
        // The interface is gone, and its filters with it.
        return Ok(());
    };
    let ingress = dir == TcAttachType::Ingress;
    let filters = foreign::filters_running(ifindex, ingress, info.id()).map_err(|source| DataplaneError::Io {
        path: pin.to_owned(),
        source,
    })?;
    for (priority, handle) in filters {
        let link = aya::programs::tc::SchedClassifierLink::attached(ifname, dir, priority, aya::programs::tc::TcHandle::from(handle), None)
            .map_err(|source| DataplaneError::Io { path: pin.to_owned(), source })?;
        match aya::programs::links::Link::detach(link) {
            Ok(()) => {}
            Err(_) if netif::ifindex(ifname).is_err() => {}
            Err(source) => return Err(DataplaneError::Program { name: pin.display().to_string(), source }),
        }
    }
    Ok(())
}

/// Detaches whatever a pin under `links/` stands for: a bpf link (tcx, XDP) or a netlink filter.
pub(crate) fn detach_pin(path: &Path) -> Result<(), DataplaneError> {
    let file = path.file_name().and_then(|f| f.to_str()).unwrap_or_default();
    if let Some((ifname, prog)) = Pins::parse_link_name(file)
        && let Some(prog) = prog.strip_suffix(crate::pins::NETLINK_SUFFIX)
    {
        let dir = if prog == POD_EGRESS { TcAttachType::Egress } else { TcAttachType::Ingress };
        remove_netlink_filter(path, &ifname, dir)?;
        return std::fs::remove_file(path).map_err(|source| DataplaneError::Io { path: path.to_owned(), source });
    }
    // Dropping the last fd of an unpinned link detaches it.
    drop(take_pinned_link(path)?);
    Ok(())
}

/// BPF_LINK_UPDATE on a link whose interface was deleted: the kernel severed it (ENOLINK). An
/// interface of the same name created since is another device, with nothing attached.
fn link_severed(e: &ProgramError) -> bool {
    matches!(e, ProgramError::SyscallError(aya::sys::SyscallError { io_error, .. })
        if io_error.raw_os_error() == Some(libc::ENOLINK))
}

/// The severed link was already unpinned by `relink`; its fd closes with the failed update.
fn log_severed(ifname: &str, prog: &str) {
    tracing::warn!(
        interface = ifname,
        program = prog,
        "pinned link severed: {ifname} was deleted (and perhaps created again) while podgate was \
         down; the stale link was unpinned and {prog} is attached afresh to {ifname}"
    );
}

/// The link pinned at `path`, unpinned and typed for `attach_to_link` (which re-points it).
fn relink<L: TryFrom<FdLink, Error = LinkError>>(path: &Path) -> Result<L, DataplaneError> {
    L::try_from(take_pinned_link(path)?).map_err(|source| DataplaneError::Link { path: path.to_owned(), source })
}

/// Re-points the link pinned at `link_path` (if any) to the freshly loaded program with
/// `attach_to_link`. `None`: nothing was pinned, or the pinned link was severed (its interface
/// was deleted), logged; the caller then attaches afresh.
pub(crate) fn readopt<L, Id>(
    link_path: &Path,
    ifname: &str,
    prog: &str,
    attach_to_link: impl FnOnce(L) -> Result<Id, ProgramError>,
) -> Result<Option<Id>, DataplaneError>
where
    L: TryFrom<FdLink, Error = LinkError>,
{
    if !link_path.exists() {
        return Ok(None);
    }
    match attach_to_link(relink(link_path)?) {
        Ok(id) => Ok(Some(id)),
        Err(e) if link_severed(&e) => {
            log_severed(ifname, prog);
            Ok(None)
        }
        Err(e) => Err(prog_err(prog)(e)),
    }
}

/// Pins a link taken from its program, so that it outlives this process.
pub(crate) fn pin_link<L>(link: L, path: PathBuf) -> Result<(), DataplaneError>
where
    FdLink: TryFrom<L, Error = LinkError>,
{
    let fd = FdLink::try_from(link).map_err(|source| DataplaneError::Link { path: path.clone(), source })?;
    fd.pin(&path).map_err(|source| DataplaneError::Pin { path, source })?;
    Ok(())
}

/// Takes a pinned link out of bpffs, keeping it alive through the returned fd.
fn take_pinned_link(path: &Path) -> Result<FdLink, DataplaneError> {
    let pinned = PinnedLink::from_pin(path).map_err(|source| DataplaneError::Link {
        path: path.to_owned(),
        source,
    })?;
    pinned.unpin().map_err(|source| DataplaneError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Detaches every pinned link on `ifname`; returns how many.
pub fn detach_interface(pins: &Pins, ifname: &str) -> Result<usize, DataplaneError> {
    let mut n = 0;
    for path in list_links(pins)? {
        if link_ifname(&path).as_deref() == Some(ifname) {
            // Dropping the last fd of an unpinned link detaches it.
            detach_pin(&path)?;
            n += 1;
        }
    }
    Ok(n)
}

pub(crate) fn link_ifname(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    Pins::parse_link_name(file).map(|(ifname, _)| ifname)
}

pub fn list_links(pins: &Pins) -> Result<Vec<PathBuf>, DataplaneError> {
    let dir = pins.links_dir();
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(DataplaneError::Io { path: dir, source }),
    };
    let mut v: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    v.sort();
    Ok(v)
}

pub(crate) fn remove_link(pins: &Pins, ifname: &str, prog: &str) -> Result<(), DataplaneError> {
    for path in [pins.link(ifname, prog), pins.netlink_link(ifname, prog)] {
        if path.exists() {
            detach_pin(&path)?;
        }
    }
    Ok(())
}

/// Detaches every podgate link and, with `purge`, removes the whole pin root (all state).
pub fn reset(pins: &Pins, purge: bool) -> Result<usize, DataplaneError> {
    let mut n = 0;
    for path in list_links(pins)? {
        detach_pin(&path)?;
        n += 1;
    }
    if purge && pins.root().exists() {
        std::fs::remove_dir_all(pins.root()).map_err(|source| DataplaneError::Io {
            path: pins.root().to_owned(),
            source,
        })?;
    }
    Ok(n)
}
