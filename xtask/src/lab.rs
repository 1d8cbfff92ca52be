//! `cargo xtask lab up|down|status`: the namespace lab (topology in the `podgate-lab` crate,
//! shared with the integration tests).

use anyhow::Result;
use clap::Subcommand;
use podgate_lab::{Lab, LabSpec};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand)]
enum Action {
    /// Build the lab and leave it running; prints its namespaces and podgate config.
    Up {
        /// Number of pods.
        #[arg(long, default_value_t = 3)]
        pods: usize,
        /// Lab name (namespaces are pgl-<name>-node, -inet, -podN).
        #[arg(long, default_value = "lab")]
        name: String,
        /// `routed` (no NAT: pods' IPv4 needs podgate) or `iptables` (the VPC CNI's
        /// `SNAT --random-fully`, a baseline for comparisons).
        #[arg(long, default_value = "routed")]
        mode: podgate_lab::Mode,
    },
    /// Remove the lab: processes, namespaces, pins, state. Works after a crashed run too.
    Down {
        #[arg(long, default_value = "lab")]
        name: String,
        /// Every lab found (state dirs and pgl-* namespaces).
        #[arg(long, conflicts_with = "name")]
        all: bool,
    },
    /// Show namespaces, addresses, processes and podgate pins of a lab (all labs without --name).
    Status {
        #[arg(long)]
        name: Option<String>,
    },
}

pub fn run(args: Args) -> Result<()> {
    match args.action {
        Action::Up { pods, name, mode } => {
            let lab = Lab::up(LabSpec::new(&name, pods).with_mode(mode))?;
            let (node, pod0, cfg) = (lab.node_ns(), lab.pod_ns(0).to_string(), lab.config_path());
            lab.detach();
            print!("{}", podgate_lab::status(&name)?);
            println!(
                "\nrun podgate on it:\n  nsenter --net=/run/netns/{} target/debug/podgate run --config {}",
                node,
                cfg.display()
            );
            println!("a shell in pod0:\n  nsenter --net=/run/netns/{pod0} bash");
            println!("take it down:\n  cargo xtask lab down --name {name}");
            Ok(())
        }
        Action::Down { name, all } => {
            let names = if all { podgate_lab::list() } else { vec![name] };
            for n in names {
                let report = podgate_lab::down(&n)?;
                print!("lab {n}: {report}");
            }
            Ok(())
        }
        Action::Status { name: Some(name) } => {
            print!("{}", podgate_lab::status(&name)?);
            Ok(())
        }
        Action::Status { name: None } => {
            let labs = podgate_lab::list();
            if labs.is_empty() {
                println!("no lab is up");
            }
            for n in labs {
                print!("{}", podgate_lab::status(&n)?);
            }
            Ok(())
        }
    }
}
