use anyhow::Result;
use clap::Subcommand;
use podgate::control::{NatFilter, Request};

use super::{Ctl, table::cell};

#[derive(Subcommand)]
pub enum NatVerb {
    /// Endpoint-independent mappings: pod address:port → node address:port.
    List {
        #[arg(long)]
        json: bool,
        /// Only this pod's mappings (its name).
        #[arg(long)]
        pod: Option<String>,
        /// Only this protocol: tcp, udp or icmp.
        #[arg(long)]
        proto: Option<String>,
        /// At most this many rows.
        #[arg(long)]
        limit: Option<usize>,
    },
}

pub fn run(v: NatVerb, ctl: &Ctl) -> Result<()> {
    match v {
        NatVerb::List { json, pod, proto, limit } => {
            let rows = ctl.result(Request::NatList(NatFilter { pod, proto, limit }))?;
            super::table::print(json, &["PROTO", "POD", "EXTERNAL", "IDLE(s)"], &rows, |r| {
                vec![
                    cell(&r["proto"]),
                    format!("{}:{}", cell(&r["pod_addr"]), r["pod_port"]),
                    format!("{}:{}", cell(&r["ext_addr"]), r["ext_port"]),
                    cell(&r["idle_secs"]),
                ]
            })
        }
    }
}
