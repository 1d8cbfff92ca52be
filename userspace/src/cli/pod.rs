use anyhow::Result;
use clap::Subcommand;
use podgate::control::{PodAdd, Request};

use super::{Ctl, table::cell};

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
        /// A security group of the daemon's config (`[security_groups.NAME]`); repeatable.
        /// Needs the daemon: its config holds the group definitions.
        #[arg(long = "security-group", value_name = "NAME")]
        security_groups: Vec<String>,
    },
    /// Unregister a pod: programs off its veths, its flows, mappings and quota released.
    Del { name: String },
    /// Registered pods.
    List {
        #[arg(long)]
        json: bool,
    },
}

pub fn run(v: PodVerb, ctl: &Ctl) -> Result<()> {
    match v {
        PodVerb::Add { name, ipv6, ipv4, veth, veth_v4, security_groups } => {
            let r = ctl.result(Request::PodAdd(PodAdd { name, ipv6, ipv4, veth, veth_v4, security_groups }))?;
            let groups = r["security_groups"].as_array().filter(|a| !a.is_empty()).map(|_| cell(&r["security_groups"]));
            println!(
                "pod {} registered (id {}, {} / {}){}",
                cell(&r["name"]),
                r["id"],
                cell(&r["ipv6"]),
                cell(&r["ipv4"]),
                groups.map(|g| format!(", security groups {g}")).unwrap_or_default()
            );
            Ok(())
        }
        PodVerb::Del { name } => {
            let r = ctl.result(Request::PodDel { name })?;
            println!("pod {} removed (id {})", cell(&r["name"]), r["id"]);
            Ok(())
        }
        PodVerb::List { json } => {
            let rows = ctl.result(Request::PodList)?;
            super::table::print(json, &["ID", "NAME", "IPV6", "IPV4", "IFINDEX", "IFINDEX_V4", "MAPPINGS", "GROUPS"], &rows, |r| {
                vec![
                    cell(&r["id"]),
                    cell(&r["name"]),
                    cell(&r["ipv6"]),
                    cell(&r["ipv4"]),
                    cell(&r["ifindex"]),
                    cell(&r["ifindex_v4"]),
                    format!("{}/{}", r["mappings"], r["quota"]),
                    cell(&r["security_groups"]),
                ]
            })
        }
    }
}
