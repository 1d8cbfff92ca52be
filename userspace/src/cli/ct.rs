use std::net::Ipv4Addr;

use anyhow::{Context as _, Result};
use clap::Subcommand;
use podgate::{dataplane, nat, pins::Pins};

#[derive(Subcommand)]
pub enum CtVerb {
    /// Tracked IPv4 flows.
    List {
        #[arg(long)]
        json: bool,
        /// Only this pod's flows (its name).
        #[arg(long)]
        pod: Option<String>,
        /// Only this protocol: tcp, udp or icmp.
        #[arg(long)]
        proto: Option<String>,
        /// Only flows to this remote address.
        #[arg(long)]
        dst: Option<Ipv4Addr>,
    },
    /// Forget one pod's flows and mappings.
    Flush {
        #[arg(long)]
        pod: String,
    },
}

pub fn run(v: CtVerb, pins: &Pins) -> Result<()> {
    match v {
        CtVerb::List { json, pod, proto, dst } => {
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
            println!("flushed {n} entries of pod {pod} ({addr})");
            Ok(())
        }
    }
}

fn pod_ipv4(pins: &Pins, name: &str) -> Result<Ipv4Addr> {
    let pods = dataplane::list_pods(pins)?;
    let p = pods
        .iter()
        .find(|p| p.name == name)
        .with_context(|| format!("no registered pod named {name:?}"))?;
    Ok(Ipv4Addr::from(p.pod.ipv4))
}
