//! Interface lookups in the caller's network namespace.

use std::{ffi::CString, net::Ipv4Addr};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum NetifError {
    #[error("interface {name:?} does not exist in this network namespace")]
    NoSuchInterface { name: String },
    #[error("interface {name:?} has no IPv4 address (set node.ipv4 explicitly)")]
    NoIpv4 { name: String },
    #[error("getifaddrs: {0}")]
    Getifaddrs(std::io::Error),
}

pub fn ifindex(name: &str) -> Result<u32, NetifError> {
    let c = CString::new(name).map_err(|_| NetifError::NoSuchInterface { name: name.into() })?;
    // SAFETY: valid C string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(NetifError::NoSuchInterface { name: name.into() });
    }
    Ok(idx)
}

/// The name of interface `ifindex` in this network namespace.
pub fn name_of(ifindex: u32) -> Option<String> {
    let mut buf = [0u8; libc::IF_NAMESIZE];
    // SAFETY: the buffer holds IF_NAMESIZE bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr().cast()) };
    if p.is_null() {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..end]).into_owned())
}

/// The first IPv4 address configured on `name`.
pub fn first_ipv4(name: &str) -> Result<Ipv4Addr, NetifError> {
    ifindex(name)?;
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: out-pointer; freed below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(NetifError::Getifaddrs(std::io::Error::last_os_error()));
    }
    let mut found = None;
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: getifaddrs returns a valid linked list until freeifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        let ifname = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }.to_string_lossy();
        if ifname != name || unsafe { (*ifa.ifa_addr).sa_family } as i32 != libc::AF_INET {
            continue;
        }
        let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
        found = Some(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
        break;
    }
    unsafe { libc::freeifaddrs(head) };
    found.ok_or_else(|| NetifError::NoIpv4 { name: name.into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback() {
        assert_eq!(ifindex("lo").unwrap(), 1);
        assert_eq!(first_ipv4("lo").unwrap(), Ipv4Addr::LOCALHOST);
        assert!(matches!(ifindex("nonexistent0"), Err(NetifError::NoSuchInterface { .. })));
    }
}

/// Lets `ifname` accept packets whose source is one of this host's addresses. Translated pod
/// packets carry the node's address from the moment they enter the node; whenever the programs
/// hand one to the stack (no FIB answer, `forwarding = "stack"`, too big for the next hop) the
/// input route check would otherwise drop it as a martian.
pub fn set_accept_local(ifname: &str) -> std::io::Result<()> {
    std::fs::write(format!("/proc/sys/net/ipv4/conf/{ifname}/accept_local"), "1")
}
