use std::process::Command;

use anyhow::Result;

use crate::{setup, util::{run_cmd, workspace_root}};

#[derive(clap::Args)]
pub struct Args {
    /// Build with the release profile.
    #[arg(long)]
    pub release: bool,
}

pub fn run(args: Args) -> Result<()> {
    setup::ensure()?;
    build_podgate(args.release)
}

/// Builds the `podgate` binary (and through its build script, the eBPF object it embeds).
pub fn build_podgate(release: bool) -> Result<()> {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root()).args(["build", "--package", "podgate"]);
    if release {
        cmd.arg("--release");
    }
    println!("build: {}", crate::util::show(&cmd));
    run_cmd(&mut cmd)
}
