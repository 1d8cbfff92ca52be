use anyhow::Result;
use clap::Subcommand;
use podgate::control::Request;

use super::{Ctl, table::cell};

#[derive(Subcommand)]
pub enum NatVerb {
    /// Endpoint-independent mappings: pod address:port → node address:port.
    List {
        #[arg(long)]
        json: bool,
    },
}

pub fn run(v: NatVerb, ctl: &Ctl) -> Result<()> {
    match v {
        NatVerb::List { json } => {
            let rows = ctl.result(Request::NatList)?;
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
