//! IPv4 SNAT: pod → node address on the pod veth, reverse translation at the uplink.
pub mod egress;
pub mod reverse;
