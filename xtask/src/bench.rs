//! `cargo xtask bench`: per-packet cost and table scale through BPF_PROG_TEST_RUN (the
//! `podgate-bench` binary of the tests crate, which embeds the eBPF object; xtask only builds and
//! runs it), then every NAT mode end to end in the namespace lab, in one run. Prints a table,
//! writes the same results as JSON (and an SVG of lookup cost against table size), says which of
//! issue 6's goals are met.

mod e2e;
mod report;

use std::{
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use crate::util::{run_cmd, show, workspace_root};

#[derive(clap::Args)]
pub struct Args {
    /// A short smoke run: small repeats, small tables, 2 s lab runs, one round.
    #[arg(long)]
    quick: bool,
    /// Skip the BPF_PROG_TEST_RUN part.
    #[arg(long)]
    no_micro: bool,
    /// Skip the lab part.
    #[arg(long)]
    no_lab: bool,
    /// Lab modes to run (default: all): routed, iptables, nftables, podgate, podgate-tc.
    #[arg(long, value_delimiter = ',')]
    modes: Vec<String>,
    /// Run only one lab part: "new-conn" (the consecutive new-TCP-connection runs, no UDP or
    /// iperf3 rounds).
    #[arg(long, value_parser = ["new-conn"])]
    only: Option<String>,
    /// Where results go (default: target/bench).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Use the binaries as built; do not run cargo build.
    #[arg(long)]
    no_build: bool,
    /// Only print the table (and goals) of an earlier run's results.json.
    #[arg(long, value_name = "RESULTS_JSON")]
    render: Option<PathBuf>,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

pub fn run(args: Args) -> Result<()> {
    // Ctrl-C stops at the next step and still takes the labs down.
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    if let Some(file) = &args.render {
        let mut all: Value = serde_json::from_str(&std::fs::read_to_string(file)?).with_context(|| format!("{}", file.display()))?;
        all["goals"] = report::goals(&all["micro"], &all["e2e"]);
        print!("{}", report::table(&all));
        return Ok(());
    }
    let root = workspace_root();
    let out = args.out.clone().unwrap_or_else(|| root.join("target").join("bench"));
    std::fs::create_dir_all(&out)?;
    let rel = root.join("target").join("release");
    let (bench_bin, podgate_bin) = (rel.join("podgate-bench"), rel.join("podgate"));
    if !args.no_build {
        let mut cmd = Command::new("cargo");
        cmd.current_dir(&root)
            .args(["build", "--release", "-p", "podgate-tests", "--bin", "podgate-bench", "-p", "podgate", "--bin", "podgate"]);
        println!("bench: {}", show(&cmd));
        run_cmd(&mut cmd)?;
    }
    let machine = report::machine();
    println!("bench: {}", report::machine_line(&machine));

    let micro: Value = if args.no_micro {
        Value::Null
    } else {
        let file = out.join("micro.json");
        let mut cmd = Command::new(&bench_bin);
        cmd.args(["micro", "--out"]).arg(&file);
        if args.quick {
            cmd.arg("--quick");
        }
        println!("bench: {}", show(&cmd));
        run_cmd(&mut cmd)?;
        serde_json::from_str(&std::fs::read_to_string(&file)?).context("micro.json")?
    };
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }

    let e2e: Value = if args.no_lab {
        Value::Null
    } else {
        let kinds = if args.modes.is_empty() {
            e2e::Kind::ALL.to_vec()
        } else {
            args.modes
                .iter()
                .map(|m| e2e::Kind::ALL.into_iter().find(|k| k.name() == m).with_context(|| format!("mode {m:?}")))
                .collect::<Result<_>>()?
        };
        let conn_only = args.only.as_deref() == Some("new-conn");
        let o = e2e::Opts { quick: args.quick, conn_only, kinds, bench_bin: bench_bin.clone(), podgate_bin };
        let r = e2e::run(&o, &|| INTERRUPTED.load(Ordering::SeqCst))?;
        serde_json::to_value(&r)?
    };

    let goals = report::goals(&micro, &e2e);
    let all = json!({
        "machine": machine,
        "quick": args.quick,
        "micro": micro,
        "e2e": e2e,
        "goals": goals,
    });
    let table = report::table(&all);
    print!("{table}");
    let json_path = out.join("results.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&all)?)?;
    std::fs::write(out.join("results.md"), &table)?;
    if let Some(svg) = report::lookup_svg(&all) {
        std::fs::write(out.join("lookup-vs-size.svg"), svg)?;
    }
    println!("bench: results in {} (results.json, results.md, lookup-vs-size.svg)", out.display());
    Ok(())
}
