use anyhow::{Result, bail};

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> Result<()> {
    bail!("`cargo xtask bench` is not built yet (issue 6); see README status table")
}
