use std::net::Ipv4Addr;

use anyhow::Result;
use clap::Subcommand;
use podgate::{dataplane, nat, pins::Pins};

#[derive(Subcommand)]
pub enum NatVerb {
    /// Endpoint-independent mappings: pod address:port → node address:port.
    List {
        #[arg(long)]
        json: bool,
    },
}

pub fn run(v: NatVerb, pins: &Pins) -> Result<()> {
    match v {
        NatVerb::List { json } => {
            let node = dataplane::read_node(pins)?;
            let rows = nat::mapping_rows(pins, Ipv4Addr::from(node.ipv4))?;
            super::table::print(json, &["PROTO", "POD", "EXTERNAL", "IDLE(s)"], &rows, |r| {
                vec![
                    r.proto.clone(),
                    format!("{}:{}", r.pod_addr, r.pod_port),
                    format!("{}:{}", r.ext_addr, r.ext_port),
                    r.idle_secs.to_string(),
                ]
            })
        }
    }
}
