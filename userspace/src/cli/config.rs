use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;
use podgate::config::Config;

#[derive(Subcommand)]
pub enum ConfigVerb {
    /// Validate a config file without touching the kernel.
    Check {
        file: PathBuf,
    },
}

pub fn run(v: ConfigVerb) -> Result<()> {
    match v {
        ConfigVerb::Check { file } => {
            let c = Config::load(&file)?;
            println!(
                "{}: ok ({} pods, {} security groups, uplink {}, pod prefix {})",
                file.display(),
                c.pods.len(),
                c.security_groups.len(),
                c.node.uplink,
                c.node.pod_prefix
            );
            Ok(())
        }
    }
}
