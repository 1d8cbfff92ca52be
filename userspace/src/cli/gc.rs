use anyhow::{Result, bail};
use podgate::control::Request;

use super::Ctl;

/// `podgate gc`: one GC pass now, which deletes what has expired. `--dry-run` only reports
/// (optionally as if `--advance SECS` had passed); pretending time passed for real deletes live
/// state and so needs `--delete-live` spelled out.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Report what a pass would expire and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Evaluate the timeouts as if this many more seconds had passed. Needs --dry-run (a
    /// preview) or --delete-live.
    #[arg(long, value_name = "SECS")]
    advance: Option<u64>,
    /// With --advance: really delete every flow and mapping that would be expired by then,
    /// including live ones still in use (for tests of long timers; never on a serving node).
    #[arg(long, requires = "advance", conflicts_with = "dry_run")]
    delete_live: bool,
}

/// Refuses an `--advance` that would delete without saying so.
fn check(a: &Args) -> Result<()> {
    if a.advance.is_some_and(|s| s > 0) && !a.dry_run && !a.delete_live {
        bail!(
            "--advance deletes live flows and mappings unless it is a preview: add --dry-run to see \
             what would expire (nothing is changed), or --delete-live to really expire them"
        );
    }
    Ok(())
}

pub fn run(a: Args, ctl: &Ctl) -> Result<()> {
    check(&a)?;
    let advance_secs = a.advance.unwrap_or(0);
    let v = ctl.result(Request::Gc { advance_secs, dry_run: a.dry_run })?;
    if a.dry_run {
        eprintln!("podgate: dry run: nothing was changed; the counts say what a pass would expire");
    } else {
        eprintln!(
            "podgate: gc pass done: deleted {} flows and {} mappings (IPv4), {} flows (IPv6)",
            v["flows_expired"], v["mappings_expired"], v["ipv6"]["flows_expired"]
        );
    }
    println!("{v}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        a: Args,
    }

    fn parse(args: &[&str]) -> Result<Args> {
        let mut argv = vec!["gc"];
        argv.extend_from_slice(args);
        let a = Cli::try_parse_from(argv)?.a;
        check(&a)?;
        Ok(a)
    }

    #[test]
    fn advance_deletes_only_when_told_so() {
        assert!(parse(&[]).is_ok());
        assert!(parse(&["--dry-run"]).is_ok());
        assert!(parse(&["--dry-run", "--advance", "600"]).is_ok());
        assert!(parse(&["--advance", "600", "--delete-live"]).is_ok());
        let e = parse(&["--advance", "600"]).unwrap_err().to_string();
        assert!(e.contains("--dry-run") && e.contains("--delete-live"), "{e}");
        assert!(parse(&["--delete-live"]).is_err());
        assert!(parse(&["--dry-run", "--advance", "1", "--delete-live"]).is_err());
    }
}
