//! Developer tasks: `cargo xtask <verb>`. One module per verb.

mod bench;
mod build;
mod conformance;
mod demo;
mod fuzz;
mod lab;
mod run;
mod setup;
mod test;
mod util;
mod vm;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "podgate developer tasks")]
struct Cli {
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Subcommand)]
enum Verb {
    /// Install what building and testing podgate needs (idempotent; prints what it installs).
    Setup(setup::Args),
    /// Build the workspace (the eBPF object is built and embedded by the userspace crate).
    Build(build::Args),
    /// Build podgate and run it on this host: `cargo xtask run -- <podgate args>`.
    Run(run::Args),
    /// The namespace lab: a node, its pods and an "internet", all in network namespaces.
    Lab(lab::Args),
    /// Lab up, podgate on it, traffic from every pod, what the endpoints saw, lab down.
    Demo(demo::Args),
    /// Everything: host unit tests, BPF test_run tests, namespace integration tests.
    Test(test::Args),
    /// Benchmarks.
    Bench(bench::Args),
    /// Boot other kernels in QEMU and run the verifier and test_run suite there.
    VmTest(vm::Args),
    /// The RFC 4787/5382/5508/7857 conformance suite: a table requirement → pass/fail.
    Conformance(conformance::Args),
    /// Random and mutated packets through every program (BPF_PROG_TEST_RUN), with invariants.
    Fuzz(fuzz::Args),
}

fn main() -> Result<()> {
    match Cli::parse().verb {
        Verb::Setup(a) => setup::run(a),
        Verb::Build(a) => build::run(a),
        Verb::Run(a) => run::run(a),
        Verb::Lab(a) => lab::run(a),
        Verb::Demo(a) => demo::run(a),
        Verb::Test(a) => test::run(a),
        Verb::Bench(a) => bench::run(a),
        Verb::VmTest(a) => vm::run(a),
        Verb::Conformance(a) => conformance::run(a),
        Verb::Fuzz(a) => fuzz::run(a),
    }
}
