use std::net::Ipv4Addr;

use anyhow::{Context as _, Result};
use clap::Subcommand;
use podgate::{dataplane, nat, pins::Pins};

#[derive(Subcommand)]
pub enum CtVerb {
    /// Tracked flows.
    List {
        #[arg(long)]
        json: bool,
        /// IPv6 (security-group) flows instead of IPv4 NAT flows.
        #[arg(long)]
        ipv6: bool,
        /// Only this pod's flows (its name).
        #[arg(long)]
        pod: Option<String>,
        /// Only this protocol: tcp, udp or icmp.
        #[arg(long)]
        proto: Option<String>,
        /// Only flows to this remote address.
        #[arg(long)]
        dst: Option<String>,
    },
    /// Forget one pod's flows and mappings.
    Flush {
        #[arg(long)]
        pod: String,
    },
}

pub fn run(v: CtVerb, pins: &Pins) -> Result<()> {
    match v {
        CtVerb::List { json, ipv6: true, pod, proto, dst } => {
            let pod_addr = match &pod {
                Some(name) => Some(pod_entry(pins, name)?.ipv6),
                None => None,
            };
            let dst: Option<std::net::Ipv6Addr> = match dst {
                Some(d) => Some(d.parse().with_context(|| format!("--dst {d}: not an IPv6 address"))?),
                None => None,
            };
            let rows: Vec<_> = podgate::sg_maps::flow_rows(pins)?
                .into_iter()
                .filter(|r| pod_addr.is_none_or(|a| r.pod_addr.octets() == a))
                .filter(|r| proto.as_deref().is_none_or(|p| r.proto == p))
                .filter(|r| dst.is_none_or(|d| r.remote_addr == d))
                .collect();
            super::table::print(json, &["PROTO", "POD", "REMOTE", "OPENED BY", "RULE", "IDLE(s)", "PKTS OUT", "PKTS IN"], &rows, |r| {
                vec![
                    r.proto.clone(),
                    format!("[{}]:{}", r.pod_addr, r.pod_port),
                    format!("[{}]:{}", r.remote_addr, r.remote_port),
                    r.origin.to_string(),
                    r.rule.map(|x| x.to_string()).unwrap_or_else(|| "-".into()),
                    r.idle_secs.to_string(),
                    r.packets_out.to_string(),
                    r.packets_in.to_string(),
                ]
            })
        }
        CtVerb::List { json, ipv6: false, pod, proto, dst } => {
            let dst: Option<Ipv4Addr> = match dst {
                Some(d) => Some(d.parse().with_context(|| format!("--dst {d}: not an IPv4 address (use --ipv6 for IPv6 flows)"))?),
                None => None,
            };
            let pod_addr = match &pod {
                Some(name) => Some(pod_ipv4(pins, name)?),
                None => None,
            };
            let rows: Vec<_> = nat::flow_rows(pins)?
                .into_iter()
                .filter(|r| pod_addr.is_none_or(|a| r.pod_addr == a))
                .filter(|r| proto.as_deref().is_none_or(|p| r.proto == p))
                .filter(|r| dst.is_none_or(|d| r.remote_addr == d))
                .collect();
            super::table::print(
                json,
                &["PROTO", "POD", "EXT PORT", "REMOTE", "STATE", "IDLE(s)", "PKTS OUT", "PKTS IN"],
                &rows,
                |r| {
                    vec![
                        r.proto.clone(),
                        format!("{}:{}", r.pod_addr, r.pod_port),
                        r.ext_port.to_string(),
                        format!("{}:{}", r.remote_addr, r.remote_port),
                        r.state.clone(),
                        r.idle_secs.to_string(),
                        r.packets_out.to_string(),
                        r.packets_in.to_string(),
                    ]
                },
            )
        }
        CtVerb::Flush { pod } => {
            let addr = pod_ipv4(pins, &pod)?;
            let n = nat::flush_pod(pins, addr)?;
            let n6 = podgate::sg_maps::flush_pod(pins, std::net::Ipv6Addr::from(pod_entry(pins, &pod)?.ipv6))?;
            println!("flushed {} entries of pod {pod} ({addr})", n + n6);
            Ok(())
        }
    }
}

fn pod_entry(pins: &Pins, name: &str) -> Result<podgate_common::Pod> {
    let pods = dataplane::list_pods(pins)?;
    let p = pods
        .into_iter()
        .find(|p| p.name == name)
        .with_context(|| format!("no registered pod named {name:?}"))?;
    Ok(p.pod)
}

fn pod_ipv4(pins: &Pins, name: &str) -> Result<Ipv4Addr> {
    Ok(Ipv4Addr::from(pod_entry(pins, name)?.ipv4))
}
