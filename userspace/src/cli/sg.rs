use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::Subcommand;
use podgate::control::Request;

use super::{Ctl, table::cell};

#[derive(Subcommand)]
pub enum SgVerb {
    /// Security groups in the dataplane: id, name, pods using each.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Compile the config file's [security_groups] (and its pods' group lists) and switch the
    /// dataplane to them in one step. Tracked flows the new rules no longer allow keep working
    /// (as in AWS) unless --cut is given. Through the daemon, later `pod add --security-group`
    /// resolve against these groups.
    Apply {
        #[arg(long, short)]
        config: PathBuf,
        /// Also drop tracked flows the new rules would not open.
        #[arg(long)]
        cut: bool,
    },
}

pub fn run(v: SgVerb, ctl: &Ctl) -> Result<()> {
    match v {
        SgVerb::List { json } => {
            let rows = ctl.result(Request::SgList)?;
            super::table::print(json, &["ID", "GROUP", "PODS"], &rows, |r| vec![cell(&r["id"]), cell(&r["name"]), cell(&r["pods"])])
        }
        SgVerb::Apply { config, cut } => {
            // The file is read here and sent whole: the daemon may not see this path.
            let text = std::fs::read_to_string(&config).with_context(|| format!("cannot read config file {}", config.display()))?;
            let r = ctl
                .result(Request::SgApply { config: text, cut })
                .with_context(|| format!("applying {}", config.display()))?;
            println!(
                "applied {} security groups ({} rule entries) to {} pods as generation {}{}",
                r["groups"],
                r["rule_entries"],
                r["pods"],
                r["generation"],
                if cut { format!("; cut {} flows", r["flows_cut"]) } else { String::new() }
            );
            Ok(())
        }
    }
}
