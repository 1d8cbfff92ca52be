//! Other tools' programs on the hooks podgate uses. podgate never replaces or detaches them: it
//! either refuses to start (`node.foreign_programs = "refuse"`, the default) or attaches beside
//! them (`"coexist"`). Three places can hold a program: tcx links (BPF_PROG_QUERY), filters on a
//! clsact qdisc (netlink RTM_GETTFILTER), and the interface's XDP slot (netlink RTM_GETLINK).

use std::{collections::HashSet, fmt, io};

use aya::programs::{ProgramInfo, SchedClassifier, links::PinnedLink, tc::TcAttachType};
use thiserror::Error;

use crate::{netif, pins::Pins};

/// A hook podgate attaches to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hook {
    Xdp,
    TcIngress,
    TcEgress,
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Hook::Xdp => "XDP",
            Hook::TcIngress => "tc ingress",
            Hook::TcEgress => "tc egress",
        })
    }
}

/// How the other program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    Tcx,
    /// A clsact filter, with its priority and handle.
    Netlink { priority: u16, handle: u32 },
    Xdp,
}

/// A program (or non-BPF classifier) that is not podgate's, on a hook podgate uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Foreign {
    pub ifname: String,
    pub hook: Hook,
    pub attach: Attach,
    /// 0 for a classifier that is not BPF (u32, flower, ...).
    pub id: u32,
    pub name: String,
    pub tag: String,
}

impl fmt::Display for Foreign {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: ", self.ifname, self.hook)?;
        if self.id == 0 {
            write!(f, "a {:?} classifier", self.name)?;
        } else {
            write!(f, "program id {} name {:?} tag {}", self.id, self.name, self.tag)?;
        }
        match self.attach {
            Attach::Tcx => f.write_str(" (tcx link)"),
            Attach::Netlink { priority, handle } => {
                write!(f, " (clsact filter pref {priority} handle {handle:#x})")
            }
            Attach::Xdp => Ok(()),
        }
    }
}

#[derive(Debug, Error)]
pub enum ForeignError {
    #[error("{what} on {ifname}")]
    Netlink {
        what: &'static str,
        ifname: String,
        #[source]
        source: io::Error,
    },
    #[error("querying tcx programs on {ifname} {hook}")]
    Tcx {
        ifname: String,
        hook: Hook,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error(
        "another tool's programs are attached where podgate would attach (node.foreign_programs = \
         \"refuse\"): {}. Nothing of podgate was attached. Remove them, or start with \
         `--foreign-programs coexist` (node.foreign_programs = \"coexist\") to attach beside them",
        .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    )]
    Refused(Vec<Foreign>),
    #[error(
        "node.tc_attach = \"netlink\" would put podgate's filters behind another tool's tcx \
         programs, which can end processing before any clsact filter runs and so skip \
         anti-spoofing and security groups: {}. Use tc_attach = \"auto\" (podgate then goes first \
         in the tcx chain). Nothing of podgate was attached",
        .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    )]
    WouldRunBehind(Vec<Foreign>),
}

/// The ids of podgate's own programs: the pinned ones and those behind its pinned links (an
/// upgrade re-pins programs before it re-points the links, so both generations are ours).
pub fn own_ids(pins: &Pins) -> HashSet<u32> {
    let mut ids = HashSet::new();
    let entries = |dir: std::path::PathBuf| std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.path());
    for p in entries(pins.root().join("progs")) {
        if let Ok(info) = ProgramInfo::from_pin(&p) {
            ids.insert(info.id());
        }
    }
    // The object behind a pin is known only from its name here: asking a link fd for program
    // info (or the other way round) succeeds and reads the wrong structure.
    for p in entries(pins.links_dir()) {
        let netlink = p.to_string_lossy().ends_with(crate::pins::NETLINK_SUFFIX);
        let id = if netlink {
            ProgramInfo::from_pin(&p).ok().map(|i| i.id())
        } else {
            PinnedLink::from_pin(&p).ok().and_then(link_prog_id)
        };
        ids.extend(id);
    }
    ids
}

/// The program a pinned bpf link runs. Dropping the fd leaves the link pinned and attached.
fn link_prog_id(link: PinnedLink) -> Option<u32> {
    aya::programs::links::FdLink::from(link).info().ok().map(|i| i.program_id())
}

/// Everything on `hook` of `ifname` that is not one of `ours`.
pub fn scan(ifname: &str, hook: Hook, ours: &HashSet<u32>) -> Result<Vec<Foreign>, ForeignError> {
    let ifindex = netif::ifindex(ifname).map_err(|e| ForeignError::Netlink {
        what: "looking up the interface",
        ifname: ifname.into(),
        source: io::Error::new(io::ErrorKind::NotFound, e.to_string()),
    })?;
    let mut out = Vec::new();
    match hook {
        Hook::Xdp => {
            for id in nl::xdp_prog_ids(ifindex).map_err(|source| ForeignError::Netlink {
                what: "reading the XDP programs (RTM_GETLINK)",
                ifname: ifname.into(),
                source,
            })? {
                if !ours.contains(&id) {
                    out.push(describe(ifname, hook, Attach::Xdp, id));
                }
            }
        }
        Hook::TcIngress | Hook::TcEgress => {
            let dir = if hook == Hook::TcIngress { TcAttachType::Ingress } else { TcAttachType::Egress };
            match SchedClassifier::query_tcx(ifname, dir) {
                Ok((_, progs)) => {
                    for p in progs {
                        if !ours.contains(&p.id()) {
                            out.push(Foreign {
                                ifname: ifname.into(),
                                hook,
                                attach: Attach::Tcx,
                                id: p.id(),
                                name: p.name_as_str().unwrap_or("").to_string(),
                                tag: format!("{:016x}", p.tag()),
                            });
                        }
                    }
                }
                // Kernels before 6.6 have no tcx, so nothing can be attached there.
                Err(e) if tcx_unsupported(&e) => {}
                Err(source) => return Err(ForeignError::Tcx { ifname: ifname.into(), hook, source }),
            }
            let filters = nl::tc_filters(ifindex, hook == Hook::TcIngress).map_err(|source| ForeignError::Netlink {
                what: "listing clsact filters (RTM_GETTFILTER)",
                ifname: ifname.into(),
                source,
            })?;
            for f in filters {
                if f.bpf_id.is_some_and(|id| ours.contains(&id)) {
                    continue;
                }
                let attach = Attach::Netlink { priority: f.priority, handle: f.handle };
                out.push(match f.bpf_id {
                    Some(id) => {
                        let mut d = describe(ifname, hook, attach, id);
                        if d.name.is_empty() {
                            d.name = f.name;
                        }
                        d
                    }
                    None => Foreign { ifname: ifname.into(), hook, attach, id: 0, name: f.kind, tag: String::new() },
                });
            }
        }
    }
    Ok(out)
}

fn tcx_unsupported(e: &aya::programs::ProgramError) -> bool {
    match e {
        aya::programs::ProgramError::SyscallError(aya::sys::SyscallError { io_error, .. }) => {
            matches!(io_error.raw_os_error(), Some(libc::EINVAL) | Some(libc::EOPNOTSUPP))
        }
        _ => false,
    }
}

fn describe(ifname: &str, hook: Hook, attach: Attach, id: u32) -> Foreign {
    let info = aya::programs::loaded_programs().flatten().find(|p| p.id() == id);
    Foreign {
        ifname: ifname.into(),
        hook,
        attach,
        id,
        name: info.as_ref().and_then(|p| p.name_as_str().map(str::to_string)).unwrap_or_default(),
        tag: info.map(|p| format!("{:016x}", p.tag())).unwrap_or_default(),
    }
}

/// The priority podgate's own clsact filter takes beside `others`: ahead of them (a lower
/// number runs first), so that anti-spoofing and security groups see every packet before another
/// program could pass or redirect it. 0 (let the kernel choose) when there is nothing to order.
pub fn netlink_priority(others: &[Foreign]) -> u16 {
    others
        .iter()
        .filter_map(|f| match f.attach {
            Attach::Netlink { priority, .. } => Some(priority),
            _ => None,
        })
        .min()
        .map_or(0, |p| p.saturating_sub(1).max(1))
}

/// The (priority, handle) of every clsact filter on `ifindex` that runs program `prog_id`.
pub fn filters_running(ifindex: u32, ingress: bool, prog_id: u32) -> io::Result<Vec<(u16, u32)>> {
    Ok(nl::tc_filters(ifindex, ingress)?
        .into_iter()
        .filter(|f| f.bpf_id == Some(prog_id))
        .map(|f| (f.priority, f.handle))
        .collect())
}

/// Netlink requests answered by the kernel's rtnetlink, over a plain socket.
mod nl {
    use std::io;

    const NLMSG_HDRLEN: usize = 16;
    const NLM_F_REQUEST: u16 = 1;
    const NLM_F_DUMP: u16 = 0x300;
    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;
    const RTM_NEWLINK: u16 = 16;
    const RTM_GETLINK: u16 = 18;
    const RTM_NEWTFILTER: u16 = 44;
    const RTM_GETTFILTER: u16 = 46;
    const IFLA_XDP: u16 = 43;
    const IFLA_XDP_PROG_ID: u16 = 4;
    const IFLA_XDP_DRV_PROG_ID: u16 = 5;
    const IFLA_XDP_SKB_PROG_ID: u16 = 6;
    const IFLA_XDP_HW_PROG_ID: u16 = 7;
    const TCA_KIND: u16 = 1;
    const TCA_OPTIONS: u16 = 2;
    const TCA_BPF_NAME: u16 = 7;
    const TCA_BPF_ID: u16 = 11;
    /// TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS / TC_H_MIN_EGRESS).
    const CLSACT_INGRESS: u32 = 0xffff_fff2;
    const CLSACT_EGRESS: u32 = 0xffff_fff3;

    pub struct Filter {
        pub kind: String,
        pub priority: u16,
        pub handle: u32,
        pub bpf_id: Option<u32>,
        pub name: String,
    }

    /// Every program in the interface's XDP slot (driver, generic or offloaded).
    pub fn xdp_prog_ids(ifindex: u32) -> io::Result<Vec<u32>> {
        // struct ifinfomsg: family, pad, type, index, flags, change.
        let mut body = vec![0u8; 16];
        body[4..8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
        let mut ids = Vec::new();
        for msg in request(RTM_GETLINK, NLM_F_REQUEST, &body)? {
            if msg.0 != RTM_NEWLINK || msg.1.len() < 16 {
                continue;
            }
            for (ty, val) in attrs(&msg.1[16..]) {
                if ty != IFLA_XDP {
                    continue;
                }
                for (ty, val) in attrs(val) {
                    if matches!(ty, IFLA_XDP_PROG_ID | IFLA_XDP_DRV_PROG_ID | IFLA_XDP_SKB_PROG_ID | IFLA_XDP_HW_PROG_ID)
                        && val.len() >= 4
                    {
                        let id = u32::from_ne_bytes(val[..4].try_into().unwrap());
                        if id != 0 && !ids.contains(&id) {
                            ids.push(id);
                        }
                    }
                }
            }
        }
        Ok(ids)
    }

    /// The filters on the clsact qdisc's ingress or egress side; none without a clsact qdisc.
    pub fn tc_filters(ifindex: u32, ingress: bool) -> io::Result<Vec<Filter>> {
        // struct tcmsg: family, pad1, pad2, ifindex, handle, parent, info.
        let mut body = vec![0u8; 20];
        body[4..8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
        let parent = if ingress { CLSACT_INGRESS } else { CLSACT_EGRESS };
        body[12..16].copy_from_slice(&parent.to_ne_bytes());
        let msgs = match request(RTM_GETTFILTER, NLM_F_REQUEST | NLM_F_DUMP, &body) {
            Ok(m) => m,
            // No clsact qdisc: no filters.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOENT)) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for (ty, m) in msgs {
            if ty != RTM_NEWTFILTER || m.len() < 20 {
                continue;
            }
            let handle = u32::from_ne_bytes(m[8..12].try_into().unwrap());
            let info = u32::from_ne_bytes(m[16..20].try_into().unwrap());
            let mut f = Filter { kind: String::new(), priority: (info >> 16) as u16, handle, bpf_id: None, name: String::new() };
            let mut options = None;
            for (ty, val) in attrs(&m[20..]) {
                match ty {
                    TCA_KIND => f.kind = cstr(val),
                    TCA_OPTIONS => options = Some(val),
                    _ => {}
                }
            }
            // The kernel lists a filter chain's head too (kind, no handle): not an attachment.
            if handle == 0 {
                continue;
            }
            if f.kind == "bpf"
                && let Some(opts) = options
            {
                for (ty, val) in attrs(opts) {
                    match ty {
                        TCA_BPF_ID if val.len() >= 4 => f.bpf_id = Some(u32::from_ne_bytes(val[..4].try_into().unwrap())),
                        TCA_BPF_NAME => f.name = cstr(val),
                        _ => {}
                    }
                }
            }
            out.push(f);
        }
        Ok(out)
    }

    fn cstr(b: &[u8]) -> String {
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..end]).into_owned()
    }

    /// The (type, value) attributes in `b`, nested-flag bits cleared from the type.
    fn attrs(mut b: &[u8]) -> Vec<(u16, &[u8])> {
        let mut out = Vec::new();
        while b.len() >= 4 {
            let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
            let ty = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
            if len < 4 || len > b.len() {
                break;
            }
            out.push((ty, &b[4..len]));
            let next = (len + 3) & !3;
            b = if next >= b.len() { &[] } else { &b[next..] };
        }
        out
    }

    /// Sends one request and collects the answers (type, payload) until the dump ends.
    fn request(ty: u16, flags: u16, body: &[u8]) -> io::Result<Vec<(u16, Vec<u8>)>> {
        // SAFETY: plain socket syscalls on an fd this function owns and closes.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a freshly created fd that nothing else owns.
        let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        exchange(&fd, ty, flags, body)
    }

    fn exchange(fd: &std::os::fd::OwnedFd, ty: u16, flags: u16, body: &[u8]) -> io::Result<Vec<(u16, Vec<u8>)>> {
        use std::os::fd::AsRawFd as _;
        let seq: u32 = 1;
        let len = NLMSG_HDRLEN + body.len();
        let mut req = Vec::with_capacity(len);
        req.extend_from_slice(&(len as u32).to_ne_bytes());
        req.extend_from_slice(&ty.to_ne_bytes());
        req.extend_from_slice(&flags.to_ne_bytes());
        req.extend_from_slice(&seq.to_ne_bytes());
        req.extend_from_slice(&0u32.to_ne_bytes());
        req.extend_from_slice(body);
        // SAFETY: sending a buffer we own to the kernel (a zeroed sockaddr_nl addresses it).
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        let rc = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                req.as_ptr().cast(),
                req.len(),
                0,
                (&sa as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: receiving into a buffer we own.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let mut b = &buf[..n as usize];
            while b.len() >= NLMSG_HDRLEN {
                let mlen = u32::from_ne_bytes(b[0..4].try_into().unwrap()) as usize;
                let mty = u16::from_ne_bytes(b[4..6].try_into().unwrap());
                if mlen < NLMSG_HDRLEN || mlen > b.len() {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "truncated netlink message"));
                }
                let payload = &b[NLMSG_HDRLEN..mlen];
                match mty {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let errno = i32::from_ne_bytes(payload[0..4].try_into().unwrap());
                        if errno != 0 {
                            return Err(io::Error::from_raw_os_error(-errno));
                        }
                        return Ok(out);
                    }
                    _ => out.push((mty, payload.to_vec())),
                }
                let next = (mlen + 3) & !3;
                b = if next >= b.len() { &[] } else { &b[next..] };
            }
            if !dump && !out.is_empty() {
                return Ok(out);
            }
        }
    }
}
