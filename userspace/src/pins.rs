//! Where podgate's state lives on bpffs. One root (default `/sys/fs/bpf/podgate`):
//! `<root>/<map>` for maps (the names `bpftool map dump pinned` takes), `<root>/progs/<program>`,
//! `<root>/links/<ifname>:<program>` for attachments that outlive the daemon. bpffs refuses names
//! with a dot, so a dot in an interface name (VLANs: `eth0.100`) is stored as `%`.

use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use thiserror::Error;

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// Ends the name of a `links/` pin that stands for a netlink TC filter rather than a bpf link.
pub const NETLINK_SUFFIX: &str = ":netlink";

#[derive(Debug, Error)]
pub enum PinError {
    #[error(
        "pin root {root} is not on a bpffs ({found}). Mount one with `mount -t bpf bpf /sys/fs/bpf`, \
         or set node.pin_root to a directory on a bpffs. Note: `ip netns exec` remounts /sys, so \
         /sys/fs/bpf inside it is not the host's bpffs and dies with the process; run podgate in a \
         namespace with `nsenter --net=/run/netns/NAME` instead, which keeps the host's mounts"
    )]
    NotBpffs { root: PathBuf, found: String },
    #[error("creating pin directory {path}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone)]
pub struct Pins {
    root: PathBuf,
}

impl Pins {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub fn prog(&self, name: &str) -> PathBuf {
        self.root.join("progs").join(name)
    }

    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    pub fn link(&self, ifname: &str, prog: &str) -> PathBuf {
        self.links_dir().join(format!("{}:{prog}", ifname.replace('.', "%")))
    }

    /// The pin standing for a netlink TC filter (kernels without tcx): the program itself.
    pub fn netlink_link(&self, ifname: &str, prog: &str) -> PathBuf {
        self.links_dir().join(format!("{}:{prog}{NETLINK_SUFFIX}", ifname.replace('.', "%")))
    }

    /// The (interface, program) a link pin's file name stands for; the program part keeps a
    /// `NETLINK_SUFFIX`.
    pub fn parse_link_name(file: &str) -> Option<(String, String)> {
        let (ifname, prog) = file.split_once(':')?;
        Some((ifname.replace('%', "."), prog.to_string()))
    }

    /// Whether a previous podgate left state here.
    pub fn exists(&self) -> bool {
        self.map(podgate_common::map_names::NODE).exists()
    }

    /// Checks that the root is (or would be created) on a bpffs, then creates the directories.
    pub fn prepare(&self) -> Result<(), PinError> {
        self.check_bpffs()?;
        for dir in [self.root.clone(), self.root.join("progs"), self.links_dir()] {
            std::fs::create_dir_all(&dir).map_err(|source| PinError::Create { path: dir, source })?;
        }
        Ok(())
    }

    /// The nearest existing ancestor of the root must be a bpffs: a directory created on another
    /// filesystem could not hold pins, and `/sys/fs/bpf` without a mount is plain sysfs.
    pub fn check_bpffs(&self) -> Result<(), PinError> {
        let mut probe = self.root.as_path();
        while !probe.exists() {
            probe = match probe.parent() {
                Some(p) => p,
                None => break,
            };
        }
        let found = match fs_type(probe) {
            Ok(t) if t == BPF_FS_MAGIC => return Ok(()),
            Ok(t) => format!("{} is on a filesystem of type {t:#x}", probe.display()),
            Err(e) => format!("statfs({}): {e}", probe.display()),
        };
        Err(PinError::NotBpffs {
            root: self.root.clone(),
            found,
        })
    }
}

fn fs_type(path: &Path) -> std::io::Result<i64> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out-pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_type as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let p = Pins::new("/sys/fs/bpf/podgate");
        assert_eq!(p.map("ct4"), PathBuf::from("/sys/fs/bpf/podgate/ct4"));
        assert_eq!(p.link("eni", "uplink_xdp"), PathBuf::from("/sys/fs/bpf/podgate/links/eni:uplink_xdp"));
        let vlan = p.link("eth0.100", "pod_ingress");
        let file = vlan.file_name().unwrap().to_str().unwrap();
        assert!(!file.contains('.'), "bpffs rejects dots: {file}");
        assert_eq!(
            Pins::parse_link_name(file),
            Some(("eth0.100".to_string(), "pod_ingress".to_string()))
        );
    }

    #[test]
    fn tmp_is_not_bpffs() {
        let e = Pins::new("/tmp/podgate-not-bpffs/x").check_bpffs().unwrap_err();
        assert!(e.to_string().contains("not on a bpffs"), "{e}");
    }
}
