use std::{os::unix::process::CommandExt as _, process::Command};

use anyhow::{Result, bail};

use crate::{build::build_podgate, setup, util::podgate_bin};

#[derive(clap::Args)]
pub struct Args {
    /// Use the release build.
    #[arg(long)]
    release: bool,
    /// Arguments for podgate, after `--` (default: `run --config podgate.toml`).
    #[arg(last = true)]
    podgate_args: Vec<String>,
}

pub fn run(args: Args) -> Result<()> {
    setup::ensure()?;
    build_podgate(args.release)?;
    let mut podgate_args = args.podgate_args;
    if podgate_args.is_empty() {
        podgate_args = vec!["run".into(), "--config".into(), "podgate.toml".into()];
    }
    let bin = podgate_bin(args.release);
    println!("run: {} {}", bin.display(), podgate_args.join(" "));
    // exec: signals (Ctrl-C, SIGTERM) reach podgate itself.
    let err = Command::new(&bin).args(&podgate_args).exec();
    bail!("could not exec {}: {err}", bin.display())
}
