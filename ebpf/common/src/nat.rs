//! IPv4 SNAT map ABI: mappings (endpoint-independent), port claims (filtering and port
//! overlapping), per-flow conntrack and fragment state.
//!
//! A mapping binds one pod endpoint (proto, pod address, pod port) to one external port for every
//! destination (RFC 4787 REQ-1). The external port is *claimed* per remote address in `nat4_claim`,
//! so the same external port can serve different pods toward different remotes (port overlapping,
//! RFC 7857 §3) while a reply from a remote still resolves to exactly one pod endpoint
//! (address-dependent filtering). In endpoint-independent filtering mode the claim is made for
//! remote 0.0.0.0 instead, which owns the port toward every remote.

pub mod map_names {
    pub const NAT4_MAP: &str = "nat4_map";
    pub const NAT4_CLAIM: &str = "nat4_claim";
    pub const CT4: &str = "ct4";
    pub const FRAG4: &str = "frag4";
}

/// ICMP echo uses the identifier as its "port".
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// A pod endpoint: key of `nat4_map`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Endpoint4 {
    pub addr: [u8; 4],
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Value of `nat4_map`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mapping4 {
    pub ext_port: u16,
    pub _pad: u16,
    /// `pods` key of the pod's IPv4 veth, for the reverse path's redirect.
    pub pod_ifindex: u32,
    pub created_ns: u64,
    /// Refreshed by outbound packets only (RFC 4787 REQ-6, RFC 7857 §7.1).
    pub last_seen_ns: u64,
}

/// Key of `nat4_claim`: an external port toward one remote address (0.0.0.0: every remote).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Claim4 {
    pub remote: [u8; 4],
    pub ext_port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Key of `ct4`: one flow, as seen from the pod.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Flow4 {
    pub pod_addr: [u8; 4],
    pub remote_addr: [u8; 4],
    pub pod_port: u16,
    pub remote_port: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Value of `ct4`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ct4 {
    pub ext_port: u16,
    /// A `tcp::TcpState` for TCP; 0 otherwise.
    pub state: u8,
    pub flags: u8,
    pub pod_ifindex: u32,
    pub created_ns: u64,
    pub last_seen_ns: u64,
    /// Time of the last state change, for the transitory timeouts.
    pub state_ns: u64,
    pub packets_out: u64,
    pub packets_in: u64,
}

/// Key of `frag4`: fragments of one datagram (RFC 791 identification).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey4 {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub id: u16,
    pub proto: u8,
    /// 0: pod → outside, 1: outside → pod.
    pub dir: u8,
}

/// Value of `frag4`: what the first fragment's translation was, for the ones that follow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragVal4 {
    /// Address to write (source for outbound, destination for inbound).
    pub new_addr: [u8; 4],
    pub ifindex: u32,
    pub seen_ns: u64,
}

#[cfg(feature = "user")]
mod pod_impls {
    // SAFETY: #[repr(C)], Copy, explicit padding only.
    unsafe impl aya::Pod for super::Endpoint4 {}
    unsafe impl aya::Pod for super::Mapping4 {}
    unsafe impl aya::Pod for super::Claim4 {}
    unsafe impl aya::Pod for super::Flow4 {}
    unsafe impl aya::Pod for super::Ct4 {}
    unsafe impl aya::Pod for super::FragKey4 {}
    unsafe impl aya::Pod for super::FragVal4 {}
}

const _: () = {
    assert!(core::mem::size_of::<Endpoint4>() == 8);
    assert!(core::mem::size_of::<Mapping4>() == 24);
    assert!(core::mem::size_of::<Claim4>() == 8);
    assert!(core::mem::size_of::<Flow4>() == 16);
    assert!(core::mem::size_of::<Ct4>() == 48);
    assert!(core::mem::size_of::<FragKey4>() == 12);
    assert!(core::mem::size_of::<FragVal4>() == 16);
};
