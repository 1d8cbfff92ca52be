//! `cargo xtask test`: every test in one run, one summary line at the end.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::{setup, util::{show, workspace_root}};

#[derive(clap::Args)]
pub struct Args {
    /// Leave out the other-kernel run in QEMU (`cargo xtask vm-test`); it is counted as skipped.
    #[arg(long)]
    no_vm: bool,
    /// Extra arguments for `cargo test` (after `--`), e.g. a test-name filter.
    #[arg(last = true)]
    cargo_args: Vec<String>,
}

#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) passed: u64,
    pub(crate) failed: u64,
    pub(crate) ignored: u64,
    pub(crate) suites: u64,
}

impl Tally {
    /// Parses libtest's `test result: ok. 3 passed; 0 failed; 1 ignored; ...` line.
    pub(crate) fn add_line(&mut self, line: &str) -> bool {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return false;
        };
        self.suites += 1;
        for part in rest.split(';') {
            let mut it = part.split_whitespace().rev();
            let (Some(word), Some(n)) = (it.next(), it.next()) else { continue };
            let Ok(n) = n.parse::<u64>() else { continue };
            match word {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
        true
    }
}

pub fn run(args: Args) -> Result<()> {
    setup::ensure()?;
    if unsafe { libc::geteuid() } != 0 {
        bail!("the tests load eBPF programs and build network namespaces: run them as root");
    }
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root())
        .args(["test", "--workspace", "--no-fail-fast"])
        .args(&args.cargo_args)
        .stdout(Stdio::piped());
    println!("test: {}", show(&cmd));
    let mut child = cmd.spawn().with_context(|| format!("could not start `{}`", show(&cmd)))?;
    let mut tally = Tally::default();
    let stdout = child.stdout.take().expect("piped stdout");
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        tally.add_line(&line);
    }
    let status = child.wait()?;
    // Other kernels last: they reuse the test binaries just built. Each kernel counts as one test.
    let mut vm_error = None;
    if args.no_vm {
        println!("test: vm-test left out (--no-vm)");
        tally.ignored += 1;
    } else {
        println!("test: other kernels in QEMU (cargo xtask vm-test)");
        // The verifier of each kernel over every program, the smoke run and the namespace test;
        // `cargo xtask vm-test` also runs the packet-fixture suites there (slow under TCG).
        let opts = crate::vm::Options {
            test_bins: vec!["smoke".into()],
            timeout: std::time::Duration::from_secs(600),
            ..Default::default()
        };
        match crate::vm::run_with(&opts) {
            Ok(s) => {
                for k in &s.kernels {
                    println!("test vm-test {} ... {}", k.series, if k.ok { "ok" } else { "FAILED" });
                    if k.ok {
                        tally.passed += 1;
                    } else {
                        tally.failed += 1;
                    }
                }
                tally.suites += 1;
            }
            Err(e) => {
                println!("test vm-test ... FAILED: {e:#}");
                tally.failed += 1;
                vm_error = Some(e);
            }
        }
    }
    println!(
        "test: {} suites (cargo test binaries, and the QEMU run)",
        tally.suites
    );
    // The last line, in the plain form CI reads: `summary: N passed, N failed, N skipped`.
    println!("summary: {} passed, {} failed, {} skipped", tally.passed, tally.failed, tally.ignored);
    if let Some(e) = vm_error {
        return Err(e.context("vm-test could not run"));
    }
    if !status.success() || tally.failed > 0 {
        bail!("tests failed ({status})");
    }
    if tally.passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Tally;

    #[test]
    fn parses_libtest_result_lines() {
        let mut t = Tally::default();
        assert!(t.add_line("test result: ok. 3 passed; 1 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.1s"));
        assert!(!t.add_line("running 3 tests"));
        assert_eq!((t.passed, t.failed, t.ignored, t.suites), (3, 1, 2, 1));
    }
}
