use anyhow::Result;
use clap::Subcommand;
use podgate::control::{CtFilter, Request};

use super::{Ctl, table::cell};

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
        /// At most this many rows.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Forget one pod's flows and mappings.
    Flush {
        #[arg(long)]
        pod: String,
    },
}

pub fn run(v: CtVerb, ctl: &Ctl) -> Result<()> {
    match v {
        CtVerb::List { json, ipv6, pod, proto, dst, limit } => {
            let rows = ctl.result(Request::CtList(CtFilter { ipv6, pod, proto, dst, limit }))?;
            if ipv6 {
                super::table::print(json, &["PROTO", "POD", "REMOTE", "OPENED BY", "RULE", "IDLE(s)", "PKTS OUT", "PKTS IN"], &rows, |r| {
                    vec![
                        cell(&r["proto"]),
                        format!("[{}]:{}", cell(&r["pod_addr"]), r["pod_port"]),
                        format!("[{}]:{}", cell(&r["remote_addr"]), r["remote_port"]),
                        cell(&r["origin"]),
                        cell(&r["rule"]),
                        cell(&r["idle_secs"]),
                        cell(&r["packets_out"]),
                        cell(&r["packets_in"]),
                    ]
                })
            } else {
                super::table::print(
                    json,
                    &["PROTO", "POD", "EXT PORT", "REMOTE", "STATE", "IDLE(s)", "PKTS OUT", "PKTS IN"],
                    &rows,
                    |r| {
                        vec![
                            cell(&r["proto"]),
                            format!("{}:{}", cell(&r["pod_addr"]), r["pod_port"]),
                            cell(&r["ext_port"]),
                            format!("{}:{}", cell(&r["remote_addr"]), r["remote_port"]),
                            cell(&r["state"]),
                            cell(&r["idle_secs"]),
                            cell(&r["packets_out"]),
                            cell(&r["packets_in"]),
                        ]
                    },
                )
            }
        }
        CtVerb::Flush { pod } => {
            let r = ctl.result(Request::CtFlush { pod })?;
            println!("flushed {} entries of pod {} ({})", r["entries"], cell(&r["pod"]), cell(&r["ipv4"]));
            Ok(())
        }
    }
}
