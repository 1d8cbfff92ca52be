//! `cargo xtask fuzz [--count N] [--seed S]`: the fuzz tests of tests/tests/fuzz.rs with N
//! program runs per program (default 1,000,000; frames the kernel refuses before a program
//! runs do not count): random and mutated fixtures through pod_ingress,
//! pod_egress, uplink_xdp and uplink_tc, checking verdicts, state from malformed packets, port
//! accounting and checksums.

use std::process::Command;

use anyhow::{Result, bail};

use crate::util::{run_cmd, workspace_root};

#[derive(clap::Args)]
pub struct Args {
    /// Program runs per program (frames the kernel refuses before the program runs do not count).
    #[arg(long, default_value_t = 1_000_000)]
    count: u64,
    /// PRNG seed (the default is the suite's fixed one; a failure prints the seed to replay).
    #[arg(long)]
    seed: Option<u64>,
}

pub fn run(args: Args) -> Result<()> {
    if unsafe { libc::geteuid() } != 0 {
        bail!("fuzzing loads eBPF programs and builds network namespaces: run it as root");
    }
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root())
        .args(["test", "--release", "-p", "podgate-tests", "--test", "fuzz", "--", "--nocapture", "--test-threads=2"])
        .env("PODGATE_FUZZ_COUNT", args.count.to_string());
    if let Some(s) = args.seed {
        cmd.env("PODGATE_FUZZ_SEED", s.to_string());
    }
    run_cmd(&mut cmd)
}
