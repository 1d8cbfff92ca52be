//! The node entry from the configuration: building it, writing it, following the uplink's address.

use std::net::Ipv4Addr;

use podgate_common::{ABI_VERSION, NodeConfig, map_names, node_flags};

use crate::{
    config::{Filtering, ForeignPrograms, Forwarding, NodeSettings, TcAttach},
    error::DataplaneError,
    maps::{map_err, node_map, read_node},
    netif,
    pins::Pins,
};

/// The `node` entry for these settings.
pub fn node_config(node: &NodeSettings, ipv4: Ipv4Addr, uplink_ifindex: u32) -> NodeConfig {
    let mut flags = 0;
    if node.forwarding == Forwarding::Redirect {
        flags |= node_flags::FIB_REDIRECT;
    }
    if node.filtering == Filtering::EndpointIndependent {
        flags |= node_flags::FILTER_EIF;
    }
    if node.tc_attach == TcAttach::Netlink {
        flags |= node_flags::TC_NETLINK;
    }
    if node.frag_punt {
        flags |= node_flags::FRAG_PUNT;
    }
    if !node.udp_port_parity {
        flags |= node_flags::UDP_NO_PARITY;
    }
    if node.flow_events {
        flags |= node_flags::FLOW_EVENTS;
    }
    if node.bpf_log.is_some() {
        flags |= node_flags::BPF_LOG;
    }
    if node.foreign_programs == ForeignPrograms::Coexist {
        flags |= node_flags::FOREIGN_COEXIST;
    }
    NodeConfig {
        abi_version: ABI_VERSION,
        flags,
        ipv4: ipv4.octets(),
        uplink_ifindex,
        pod_prefix: node.pod_prefix.network().octets(),
        pod_ipv4_net: node.pod_ipv4_cidr.network().octets(),
        pod_ipv4_prefix_len: node.pod_ipv4_cidr.prefix_len() as u32,
        port_min: node.port_min,
        port_max: node.port_max,
        pod_quota: node.pod_quota,
        timeouts: node.timeouts,
        pod_flows: node.limits.pod_flows,
    }
}

/// Writes the node entry: the uplink address is resolved now unless configured.
pub fn write_node(pins: &Pins, node: &NodeSettings) -> Result<NodeConfig, DataplaneError> {
    let uplink_ifindex = netif::ifindex(&node.uplink)?;
    let ipv4 = match node.ipv4 {
        Some(ip) => ip,
        None => netif::first_ipv4(&node.uplink)?,
    };
    let cfg = node_config(node, ipv4, uplink_ifindex);
    node_map(pins)?.set(0, cfg, 0).map_err(map_err(map_names::NODE))?;
    Ok(cfg)
}

/// With `node.ipv4` not configured, the SNAT address follows the uplink: when its first IPv4
/// changed (DHCP, a re-attached ENI), the node entry is rewritten and the new address is
/// returned with the old one. Mappings hold only ports, so they carry over; connections already
/// made toward the old address end, new ones use the new one.
pub fn follow_uplink_ipv4(pins: &Pins, node: &NodeSettings) -> Result<Option<(Ipv4Addr, Ipv4Addr)>, DataplaneError> {
    if node.ipv4.is_some() {
        return Ok(None);
    }
    let now = netif::first_ipv4(&node.uplink)?;
    let mut cfg = read_node(pins)?;
    let old = Ipv4Addr::from(cfg.ipv4);
    if old == now {
        return Ok(None);
    }
    cfg.ipv4 = now.octets();
    node_map(pins)?.set(0, cfg, 0).map_err(map_err(map_names::NODE))?;
    Ok(Some((old, now)))
}
