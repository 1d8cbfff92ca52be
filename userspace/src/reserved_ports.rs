//! Keeping the node's own sockets out of podgate's external ports.
//!
//! podgate translates pods to the node's own IPv4, so an external port it hands a pod is a port
//! of the node. If the node's stack gives the same port to one of its own sockets (kubelet, a
//! hostNetwork pod) talking to the same remote, the remote's replies match the pod's claim and
//! are delivered to the pod. The stack picks automatic ports from `net.ipv4.ip_local_port_range`
//! minus `net.ipv4.ip_local_reserved_ports` (both per network namespace), so podgate adds its
//! range to the reserved list of the namespace it runs in, as Cilium does for its NodePort range,
//! keeping every entry the operator had, and refuses to start when the node would be left with
//! fewer than [`MIN_NODE_EPHEMERAL_PORTS`] automatic ports. What podgate added is recorded in a
//! file beside the control socket, and `podgate reset --purge` gives exactly that back.
//!
//! Reserved ports only stop automatic choice: a socket that binds a reserved port explicitly
//! still gets it (so node listeners must stay out of `snat_ports`, as before).

use std::{
    io,
    path::{Path, PathBuf},
};

use thiserror::Error;

pub const PORT_RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";
pub const RESERVED: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";

/// The fewest automatic ports podgate leaves the node's own sockets (after its reservation).
/// Below this the node's outbound connections would fail with EADDRNOTAVAIL under modest load.
pub const MIN_NODE_EPHEMERAL_PORTS: u32 = 4096;

/// Inclusive port ranges, sorted and merged.
pub type Ranges = Vec<(u16, u16)>;

#[derive(Debug, Error)]
pub enum ReserveError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: cannot parse {text:?}")]
    Parse { path: PathBuf, text: String },
    #[error(
        "node.snat_ports {snat} would leave the node's own sockets {left} automatic ports \
         (net.ipv4.ip_local_port_range is {lo}-{hi}, reserved besides: {reserved}); podgate needs \
         at least {min} left so that the node's connections never take a port a pod's mapping \
         holds. Fix: choose a snat_ports outside {lo}-{hi} (the default 49152-65535 leaves a stock 32768-60999 16384 ports), or move the \
         node's range, e.g. `sysctl -w net.ipv4.ip_local_port_range=\"{lo} {suggest}\"`"
    )]
    TooFewLeft { snat: String, lo: u16, hi: u16, reserved: String, left: u32, min: u32, suggest: u32 },
}

/// Parses the `ip_local_reserved_ports` format: `a-b,c,...` (empty: none).
pub fn parse_list(s: &str) -> Option<Ranges> {
    let mut v = Vec::new();
    for part in s.trim().split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.trim().parse().ok()?, b.trim().parse().ok()?),
            None => {
                let p = part.parse().ok()?;
                (p, p)
            }
        };
        if a > b {
            return None;
        }
        v.push((a, b));
    }
    Some(merge(v))
}

pub fn format_list(r: &[(u16, u16)]) -> String {
    r.iter()
        .map(|&(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") })
        .collect::<Vec<_>>()
        .join(",")
}

/// Sorts and merges overlapping or adjacent ranges.
pub fn merge(mut v: Ranges) -> Ranges {
    v.sort();
    let mut out: Ranges = Vec::new();
    for (a, b) in v {
        match out.last_mut() {
            Some(last) if u32::from(a) <= u32::from(last.1) + 1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// `a` minus `b`.
pub fn subtract(a: &[(u16, u16)], b: &[(u16, u16)]) -> Ranges {
    let mut out = Vec::new();
    for &(mut lo, hi) in a {
        let mut done = false;
        for &(x, y) in b {
            if y < lo || x > hi {
                continue;
            }
            if x > lo {
                out.push((lo, x - 1));
            }
            if y >= hi {
                done = true;
                break;
            }
            lo = y + 1;
        }
        if !done {
            out.push((lo, hi));
        }
    }
    merge(out)
}

fn count(r: &[(u16, u16)]) -> u32 {
    r.iter().map(|&(a, b)| u32::from(b) - u32::from(a) + 1).sum()
}

/// The ports podgate hands out: its `snat_ports`, and the privileged band 512-1023 (pod ports
/// below 1024) where the node's automatic range reaches that low.
pub fn podgate_ranges(snat: (u16, u16), local: (u16, u16)) -> Ranges {
    let mut v = vec![snat];
    if local.0 < 1024 {
        v.push((512, 1023));
    }
    merge(v)
}

/// What to write: the reserved list with podgate's ranges merged in, and the part podgate adds
/// (what it must give back later; empty when the operator had reserved it all already).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub reserved: Ranges,
    pub added: Ranges,
    /// Automatic ports the node's own sockets keep.
    pub node_left: u32,
}

pub fn plan(local: (u16, u16), reserved: &[(u16, u16)], snat: (u16, u16)) -> Result<Plan, ReserveError> {
    let ours = podgate_ranges(snat, local);
    let added = subtract(&ours, reserved);
    let all = merge(reserved.iter().copied().chain(ours.iter().copied()).collect());
    let node_left = count(&subtract(&[local], &all));
    if node_left < MIN_NODE_EPHEMERAL_PORTS {
        return Err(ReserveError::TooFewLeft {
            snat: format!("{}-{}", snat.0, snat.1),
            lo: local.0,
            hi: local.1,
            reserved: if reserved.is_empty() { "none".into() } else { format_list(reserved) },
            left: node_left,
            min: MIN_NODE_EPHEMERAL_PORTS,
            suggest: (u32::from(snat.0).saturating_sub(1)).max(u32::from(local.0) + MIN_NODE_EPHEMERAL_PORTS - 1),
        });
    }
    Ok(Plan { reserved: all, added, node_left })
}

fn read(path: &str) -> Result<String, ReserveError> {
    std::fs::read_to_string(path).map_err(|source| ReserveError::Io { path: path.into(), source })
}

fn write(path: &str, text: &str) -> Result<(), ReserveError> {
    std::fs::write(path, format!("{text}\n")).map_err(|source| ReserveError::Io { path: path.into(), source })
}

fn parse_at(path: &str, text: &str) -> Result<Ranges, ReserveError> {
    parse_list(text).ok_or_else(|| ReserveError::Parse { path: path.into(), text: text.trim().into() })
}

pub fn local_port_range() -> Result<(u16, u16), ReserveError> {
    let t = read(PORT_RANGE)?;
    let mut it = t.split_whitespace().map(str::parse::<u16>);
    match (it.next(), it.next()) {
        (Some(Ok(a)), Some(Ok(b))) if a <= b => Ok((a, b)),
        _ => Err(ReserveError::Parse { path: PORT_RANGE.into(), text: t.trim().into() }),
    }
}

/// Where the ranges podgate added are recorded: beside the default control socket of
/// `pin_root` (`/run/podgate/podgate.reserved-ports` for the default pin root), whatever socket
/// the daemon was told to use, so that `reset --purge` finds it from the pin root alone.
pub fn record_path(pin_root: &Path) -> PathBuf {
    crate::control::default_socket(pin_root).with_extension("reserved-ports")
}

/// Reserves podgate's ranges in this network namespace (see the module comment) and records what
/// was added in `record` (merged with an earlier record: a restart adds nothing new).
pub fn reserve(snat: (u16, u16), record: &Path) -> Result<Plan, ReserveError> {
    let local = local_port_range()?;
    let text = read(RESERVED)?;
    let reserved = parse_at(RESERVED, &text)?;
    let p = plan(local, &reserved, snat)?;
    if !p.added.is_empty() {
        write(RESERVED, &format_list(&p.reserved))?;
        let before = std::fs::read_to_string(record).ok().and_then(|t| parse_list(&t)).unwrap_or_default();
        let rec = merge(before.into_iter().chain(p.added.iter().copied()).collect());
        if let Some(dir) = record.parent() {
            std::fs::create_dir_all(dir).map_err(|source| ReserveError::Io { path: dir.into(), source })?;
        }
        std::fs::write(record, format_list(&rec) + "\n")
            .map_err(|source| ReserveError::Io { path: record.into(), source })?;
    }
    Ok(p)
}

/// Gives back what `reserve` recorded (and nothing the operator reserved); returns it.
pub fn release(record: &Path) -> Result<Ranges, ReserveError> {
    let Ok(t) = std::fs::read_to_string(record) else {
        return Ok(Vec::new());
    };
    let ours = parse_list(&t).unwrap_or_default();
    let text = read(RESERVED)?;
    let now = parse_at(RESERVED, &text)?;
    write(RESERVED, &format_list(&subtract(&now, &ours)))?;
    std::fs::remove_file(record).map_err(|source| ReserveError::Io { path: record.into(), source })?;
    Ok(ours)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_format_round_trips_and_merges() {
        assert_eq!(parse_list(""), Some(vec![]));
        assert_eq!(parse_list("\n"), Some(vec![]));
        assert_eq!(parse_list("8080,30000-32767,8081"), Some(vec![(8080, 8081), (30000, 32767)]));
        assert_eq!(format_list(&parse_list("1,3-5,4-9").unwrap()), "1,3-9");
        assert_eq!(parse_list("5-3"), None);
        assert_eq!(parse_list("x"), None);
        assert_eq!(parse_list("70000"), None);
    }

    #[test]
    fn subtract_keeps_the_rest() {
        assert_eq!(subtract(&[(10, 20)], &[(12, 13), (18, 30)]), vec![(10, 11), (14, 17)]);
        assert_eq!(subtract(&[(10, 20)], &[(0, 65535)]), vec![]);
        assert_eq!(subtract(&[(10, 20)], &[]), vec![(10, 20)]);
        assert_eq!(subtract(&[(0, 65535)], &[(0, 0), (65535, 65535)]), vec![(1, 65534)]);
    }

    #[test]
    fn the_default_starts_on_a_stock_node() {
        let snat = crate::config::parse_port_range(crate::config::DEFAULT_SNAT_PORTS).unwrap();
        assert_eq!(snat, (49152, 65535));
        let p = plan((32768, 60999), &[], snat).unwrap();
        assert_eq!(p.node_left, 49151 - 32768 + 1, "the node keeps 32768-49151");
        assert_eq!(p.reserved, vec![snat]);
        assert_eq!(p.added, vec![snat]);
    }

    #[test]
    fn the_operators_entries_are_kept_and_not_claimed() {
        let p = plan((32768, 60999), &[(8080, 8080), (40000, 40010)], (40000, 45000)).unwrap();
        assert_eq!(p.reserved, vec![(8080, 8080), (40000, 45000)]);
        assert_eq!(p.added, vec![(40011, 45000)], "the operator's 40000-40010 is theirs to keep");
        // Already reserved by the operator: podgate adds (and later gives back) nothing.
        let p = plan((32768, 60999), &[(30000, 50000)], (40000, 45000)).unwrap();
        assert!(p.added.is_empty());
    }

    #[test]
    fn a_range_that_leaves_the_node_too_few_ports_is_refused_naming_both() {
        let e = plan((32768, 60999), &[], (32768, 65535)).unwrap_err().to_string();
        assert!(e.contains("32768-65535") && e.contains("32768-60999") && e.contains("ip_local_port_range"), "{e}");
        // 4095 left: refused; 4096 left: accepted.
        assert!(plan((32768, 60999), &[], (32768 + 4095, 65535)).is_err());
        assert_eq!(plan((32768, 60999), &[], (32768 + 4096, 65535)).unwrap().node_left, 4096);
        // The operator's own reservations count against what is left.
        assert!(plan((32768, 60999), &[(32768, 42000)], (45000, 65535)).is_err());
        assert!(plan((32768, 60999), &[(32768, 40000)], (45000, 65535)).is_ok());
    }

    #[test]
    fn the_privileged_band_is_reserved_only_where_the_node_range_reaches_it() {
        assert_eq!(podgate_ranges((61000, 65535), (32768, 60999)), vec![(61000, 65535)]);
        assert_eq!(podgate_ranges((61000, 65535), (600, 60999)), vec![(512, 1023), (61000, 65535)]);
    }
}
