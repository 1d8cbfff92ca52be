use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::Result;
use clap::Subcommand;
use ipnet::{Ipv4Net, Ipv6Net};
use podgate::{
    config::{RawPod, validate_pod},
    dataplane,
    pins::Pins,
};
use serde::Serialize;

#[derive(Subcommand)]
pub enum PodVerb {
    /// Register a pod and attach the programs to its host-side veth(s).
    Add {
        #[arg(long)]
        name: String,
        #[arg(long)]
        ipv6: String,
        #[arg(long)]
        ipv4: String,
        /// Host-side veth carrying IPv6 (and IPv4 when --veth-v4 is not given).
        #[arg(long)]
        veth: String,
        /// Host-side veth carrying IPv4 (EKS style `v4if0`).
        #[arg(long)]
        veth_v4: Option<String>,
    },
    /// Unregister a pod: programs off its veths, its flows, mappings and quota released.
    Del { name: String },
    /// Registered pods.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Serialize)]
struct Row {
    id: u32,
    name: String,
    ipv6: Ipv6Addr,
    ipv4: Ipv4Addr,
    ifindex: u32,
    ifindex_v4: u32,
    mappings: u32,
    quota: u32,
    groups: Vec<u32>,
}

pub fn run(v: PodVerb, pins: &Pins) -> Result<()> {
    match v {
        PodVerb::Add { name, ipv6, ipv4, veth, veth_v4 } => {
            let node = dataplane::read_node(pins)?;
            let prefix = Ipv6Net::new(Ipv6Addr::from(node.pod_prefix), 80)?;
            let v4net = Ipv4Net::new(Ipv4Addr::from(node.pod_ipv4_net), node.pod_ipv4_prefix_len as u8)?;
            let raw = RawPod { name, ipv6, ipv4, veth, veth_v4, security_groups: Vec::new() };
            let spec = validate_pod(prefix, v4net, &raw, "pod")?;
            let pod = dataplane::add_pod(pins, node.pod_quota, &spec, &[])?;
            println!("pod {} registered (id {}, {} / {})", spec.name, pod.id, spec.ipv6, spec.ipv4);
            Ok(())
        }
        PodVerb::Del { name } => {
            let e = dataplane::remove_pod(pins, &name)?;
            println!("pod {} removed (id {})", e.name, e.pod.id);
            Ok(())
        }
        PodVerb::List { json } => {
            let rows: Vec<Row> = dataplane::list_pods(pins)?
                .into_iter()
                .map(|e| Row {
                    id: e.pod.id,
                    name: e.name,
                    ipv6: Ipv6Addr::from(e.pod.ipv6),
                    ipv4: Ipv4Addr::from(e.pod.ipv4),
                    ifindex: e.pod.ifindex,
                    ifindex_v4: e.pod.ifindex_v4,
                    mappings: e.pod.mappings,
                    quota: e.pod.quota,
                    groups: e.pod.groups[..e.pod.group_count as usize].to_vec(),
                })
                .collect();
            super::table::print(json, &["ID", "NAME", "IPV6", "IPV4", "IFINDEX", "IFINDEX_V4", "MAPPINGS"], &rows, |r| {
                vec![
                    r.id.to_string(),
                    r.name.clone(),
                    r.ipv6.to_string(),
                    r.ipv4.to_string(),
                    r.ifindex.to_string(),
                    r.ifindex_v4.to_string(),
                    format!("{}/{}", r.mappings, r.quota),
                ]
            })
        }
    }
}
