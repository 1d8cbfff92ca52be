use std::{collections::BTreeMap, net::Ipv6Addr, path::PathBuf};

use anyhow::Result;
use clap::Subcommand;
use ipnet::Ipv6Net;
use podgate::{config::Config, dataplane, pins::Pins, sg_maps};
use serde::Serialize;

#[derive(Subcommand)]
pub enum SgVerb {
    /// Security groups in the dataplane: id, name, pods using each.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Compile the config file's [security_groups] (and its pods' group lists) and switch the
    /// dataplane to them in one step. Tracked flows the new rules no longer allow keep working
    /// (as in AWS) unless --cut is given.
    Apply {
        #[arg(long, short)]
        config: PathBuf,
        /// Also drop tracked flows the new rules would not open.
        #[arg(long)]
        cut: bool,
    },
}

#[derive(Serialize)]
struct Row {
    id: u32,
    name: String,
    pods: Vec<String>,
}

pub fn run(v: SgVerb, pins: &Pins) -> Result<()> {
    match v {
        SgVerb::List { json } => {
            let ids = sg_maps::group_ids(pins)?;
            let pods = dataplane::list_pods(pins)?;
            let rows: Vec<Row> = ids
                .iter()
                .map(|(name, id)| Row {
                    id: *id,
                    name: name.clone(),
                    pods: pods
                        .iter()
                        .filter(|p| p.pod.groups[..p.pod.group_count as usize].contains(id))
                        .map(|p| p.name.clone())
                        .collect(),
                })
                .collect();
            super::table::print(json, &["ID", "GROUP", "PODS"], &rows, |r| {
                vec![r.id.to_string(), r.name.clone(), r.pods.join(",")]
            })
        }
        SgVerb::Apply { config, cut } => {
            let cfg = Config::load(&config)?;
            let node = dataplane::read_node(pins)?;
            let prefix = Ipv6Net::new(Ipv6Addr::from(node.pod_prefix), 80)?;
            let assign: BTreeMap<String, Vec<String>> =
                cfg.pods.iter().map(|p| (p.name.clone(), p.security_groups.clone())).collect();
            let r = sg_maps::apply(pins, &cfg.security_groups, &assign, prefix, cfg.node.max_groups_per_pod as usize, cut)?;
            println!(
                "applied {} security groups ({} rule entries) to {} pods as generation {}{}",
                r.groups,
                r.rule_entries,
                r.pods,
                r.generation,
                if cut { format!("; cut {} flows", r.flows_cut) } else { String::new() }
            );
            Ok(())
        }
    }
}
