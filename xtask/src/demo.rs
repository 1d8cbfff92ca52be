//! `cargo xtask demo`: lab up → podgate on the node → HTTP, UDP echo and ping from every pod to
//! the IPv4 and the IPv6 endpoint → what the endpoint saw, the NAT table, the counters → lab
//! down. Says plainly what works and what does not; exits non-zero on a lab/infrastructure error,
//! and with `--strict` also when any pod check fails.

use std::{
    net::IpAddr,
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{Result, bail};
use podgate_lab::{ChildGuard, Family, Lab, LabSpec, NODE_V4, Probe};

use crate::{build::build_podgate, setup, util::podgate_bin};

const LAB: &str = "demo";

#[derive(clap::Args)]
pub struct Args {
    /// Number of pods.
    #[arg(long, default_value_t = 3)]
    pods: usize,
    /// Exit non-zero if any pod check fails (for CI once SNAT works).
    #[arg(long)]
    strict: bool,
    /// Leave the lab (and podgate) running at the end; `cargo xtask lab down --name demo`.
    #[arg(long)]
    keep: bool,
    /// Use the podgate binary as built; do not run setup or cargo build.
    #[arg(long)]
    no_build: bool,
    /// The podgate binary to run (default: target/debug/podgate, built first).
    #[arg(long)]
    podgate: Option<std::path::PathBuf>,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C and SIGTERM only raise a flag: the demo stops at the next step and still takes the lab
/// down (a killed process would run no destructor).
fn catch_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
}

fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

pub fn run(args: Args) -> Result<()> {
    catch_signals();
    if !args.no_build {
        setup::ensure()?;
        build_podgate(false)?;
    }
    let bin = args.podgate.clone().unwrap_or_else(|| podgate_bin(false));

    let stale = podgate_lab::down(LAB)?;
    if !stale.removed.is_empty() {
        print!("demo: cleaned up a previous demo lab:\n{stale}");
    }
    println!("demo: lab up ({} pods)", args.pods);
    let lab = Lab::up(LabSpec::new(LAB, args.pods))?;
    println!(
        "demo: node netns {}, internet netns {}, config {}",
        lab.node_ns(),
        lab.internet_ns(),
        lab.config_path().display()
    );

    let outcome = demo(&lab, &bin);
    let failed = match outcome {
        Ok(o) => {
            let failed = o.failed;
            if args.keep {
                if let Some(d) = o.daemon {
                    d.detach();
                }
                lab.detach();
                println!(
                    "demo: lab left up (--keep); take it down with `cargo xtask lab down --name {LAB}`"
                );
            } else {
                drop(o.daemon);
                println!("demo: lab down");
                print!("{}", lab.down()?);
            }
            failed
        }
        Err(e) => {
            println!("demo: lab down after an error");
            print!("{}", lab.down()?);
            return Err(e);
        }
    };
    if args.strict && failed > 0 {
        bail!("{failed} pod check(s) failed (--strict)");
    }
    Ok(())
}

struct Outcome {
    daemon: Option<ChildGuard>,
    failed: usize,
}

fn demo(lab: &Lab, bin: &Path) -> Result<Outcome> {
    let daemon = start_podgate(lab, bin)?;
    check_interrupt()?;
    let translating = daemon.is_some();

    println!("\ndemo: traffic from every pod (HTTP, UDP echo, ping) to the internet endpoints");
    let per_pod: Vec<Vec<Probe>> = lab.on_all_pods(|pod| {
        let mut v = Vec::new();
        for fam in [Family::V4, Family::V6] {
            if INTERRUPTED.load(Ordering::SeqCst) {
                break;
            }
            v.push(lab.http(pod.index, fam));
            v.push(lab.udp_echo(pod.index, fam));
            v.push(lab.ping(pod.index, fam));
        }
        v
    });
    check_interrupt()?;
    let probes: Vec<Probe> = per_pod.into_iter().flatten().collect();
    for probe in &probes {
        println!("  {}", describe(probe, translating));
    }

    println!("\ndemo: what the endpoint saw (protocol, source address: requests)");
    let seen = lab.endpoint_seen();
    let mut tally: Vec<((String, IpAddr), usize)> = Vec::new();
    for (proto, addr) in seen {
        match tally.iter_mut().find(|(k, _)| k.0 == proto && k.1 == addr) {
            Some((_, n)) => *n += 1,
            None => tally.push(((proto, addr), 1)),
        }
    }
    tally.sort();
    if tally.is_empty() {
        println!("  nothing");
    }
    for ((proto, addr), n) in &tally {
        let note = match addr {
            IpAddr::V4(a) if *a == NODE_V4 => "  (the node's IPv4: translated)",
            IpAddr::V4(a) if a.octets()[..2] == [169, 254] => {
                "  (a pod's 169.254 address: NOT translated!)"
            }
            _ => "",
        };
        println!("  {proto} {addr}: {n}{note}");
    }
    println!(
        "  (ping has no log line: a reply can only come back if the endpoint saw an address it routes to)"
    );

    if daemon.is_some() {
        for verb in [&["nat", "list"][..], &["stats"][..]] {
            println!("\ndemo: podgate {}", verb.join(" "));
            match lab.podgate_cli(bin, verb) {
                Ok(out) => {
                    print!("{}", String::from_utf8_lossy(&out.stdout));
                    print!("{}", String::from_utf8_lossy(&out.stderr));
                    if !out.status.success() {
                        println!("  (podgate {} failed: {})", verb.join(" "), out.status);
                    }
                }
                Err(e) => println!("  (podgate {} could not run: {e:#})", verb.join(" ")),
            }
        }
    }

    println!("\ndemo: summary");
    let mut failed = 0;
    for fam in [Family::V4, Family::V6] {
        for kind in ["http", "udp", "ping"] {
            let of: Vec<&Probe> = probes
                .iter()
                .filter(|p| p.family == fam && p.kind == kind)
                .collect();
            let good: Vec<&&Probe> = of.iter().filter(|p| passes(p)).collect();
            failed += of.len() - good.len();
            let state = if good.len() == of.len() {
                "works"
            } else if good.is_empty() {
                "FAILS"
            } else {
                "PARTLY FAILS"
            };
            let why = if fam == Family::V4 && good.len() < of.len() && !translating {
                " (no SNAT: podgate not running)"
            } else {
                ""
            };
            println!(
                "  {fam} {kind:<4} from pods: {}/{} {state}{why}",
                good.len(),
                of.len()
            );
        }
    }
    Ok(Outcome { daemon, failed })
}

/// A check passes when it got an answer and, for IPv4, the endpoint saw the node's IPv4.
fn passes(p: &Probe) -> bool {
    p.ok && (p.family == Family::V6 || p.kind == "ping" || p.seen == Some(IpAddr::V4(NODE_V4)))
}

fn describe(p: &Probe, translating: bool) -> String {
    let head = format!("{} {} {:<4}", p.pod, p.family, p.kind);
    if passes(p) {
        let seen = p
            .seen
            .map(|a| format!(": endpoint saw {a}"))
            .unwrap_or_default();
        return format!("{head} ok{seen}");
    }
    if p.ok {
        return format!(
            "{head} WRONG SOURCE: endpoint saw {:?} (expected {NODE_V4})",
            p.seen
        );
    }
    let why = if p.family == Family::V4 && !translating {
        " (no SNAT yet)"
    } else {
        ""
    };
    let last = p.detail.lines().last().unwrap_or("no answer").trim();
    format!("{head} FAILED{why}: {last}")
}

/// Starts the daemon in the node namespace and waits for its pins. `None` when this podgate has
/// no daemon yet or it did not come up (said plainly; the demo goes on without translation).
fn start_podgate(lab: &Lab, bin: &Path) -> Result<Option<ChildGuard>> {
    if !podgate_lab::podgate_has_daemon(bin) {
        println!(
            "demo: podgate not available yet ({} has no `run --config`): skipping translation",
            bin.display()
        );
        return Ok(None);
    }
    println!(
        "demo: starting podgate: nsenter --net=/run/netns/{} {} run --config {}",
        lab.node_ns(),
        bin.display(),
        lab.config_path().display()
    );
    let daemon = match lab.start_podgate(bin, Duration::from_secs(20)) {
        Ok(d) => d,
        Err(e) => {
            println!("demo: podgate did not come up: {e:#}");
            println!("demo: continuing without translation");
            return Ok(None);
        }
    };
    check_interrupt()?;
    println!(
        "demo: podgate running (pid {}), pinned under {}: {}",
        daemon.pid(),
        lab.pin_root().display(),
        lab.pins().join(" ")
    );
    println!(
        "      (inspect: bpftool map dump pinned {}/<map>)",
        lab.pin_root().display()
    );
    if let Ok(out) = lab.exec_in(&lab.node_ns(), &["bpftool", "net", "show"]) {
        println!("demo: programs attached in the node namespace (bpftool net show):");
        for l in String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
        {
            println!("  {l}");
        }
    }
    Ok(Some(daemon))
}
