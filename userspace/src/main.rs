//! The `podgate` binary: the daemon (`run`) and the CLI verbs, one module per verb.

mod cli;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "podgate", version, about = "eBPF SNAT and IPv6 security groups for IPv6-only pods")]
pub struct Cli {
    /// Where podgate's maps, programs and links are pinned (a directory on a bpffs) [default:
    /// /sys/fs/bpf/podgate]. For `run` the config's node.pin_root wins when set.
    #[arg(long, global = true, env = "PODGATE_PIN_ROOT")]
    pin_root: Option<PathBuf>,
    /// The daemon's control socket [default: /run/podgate/podgate.sock for the default pin
    /// root, /run/podgate/<pin root with / as ->.sock for others]. For `run` this wins over
    /// the config's `[daemon] socket`.
    #[arg(long, global = true, env = "PODGATE_SOCKET")]
    socket: Option<PathBuf>,
    /// Log filter (tracing EnvFilter syntax), e.g. `debug`.
    #[arg(long, global = true, env = "PODGATE_LOG", default_value = "info")]
    log: String,
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Subcommand)]
enum Verb {
    /// Load, attach, fill the maps from a config file and keep running (GC, signals).
    Run(cli::run::Args),
    /// Register, unregister and list pods at runtime.
    #[command(subcommand)]
    Pod(cli::pod::PodVerb),
    /// IPv6 security groups.
    #[command(subcommand)]
    Sg(cli::sg::SgVerb),
    /// IPv4 SNAT mappings.
    #[command(subcommand)]
    Nat(cli::nat::NatVerb),
    /// Connection tracking (IPv4 NAT flows; `--ipv6` for security-group flows).
    #[command(subcommand)]
    Ct(cli::ct::CtVerb),
    /// Counters per verdict and drop reason.
    Stats(cli::stats::Args),
    /// Live drop and new-flow events (5-tuple, pod, reason or rule).
    Monitor(cli::monitor::Args),
    /// What is loaded, pinned and attached.
    Status(cli::status::Args),
    /// The chained CNI plugin (reads CNI_COMMAND and the network config on stdin).
    Cni,
    /// Configuration files.
    #[command(subcommand)]
    Config(cli::config::ConfigVerb),
    /// One garbage-collection pass: deletes expired conntrack and NAT state (the daemon runs
    /// these itself); --dry-run only reports what would expire.
    Gc(cli::gc::Args),
    /// Detach all programs; with --purge also delete every pinned map (all state).
    Reset(cli::reset::Args),
}

fn main() -> ExitCode {
    // Container runtimes run CNI plugins by file name (installed as `podgate` or a link to it)
    // with CNI_COMMAND set and no arguments; `podgate cni` is the explicit form.
    let args: Vec<String> = std::env::args().collect();
    if (args.len() == 1 && std::env::var_os("CNI_COMMAND").is_some())
        || args.get(1).map(String::as_str) == Some("cni")
    {
        return cli::cni::main();
    }
    let cli = Cli::parse();
    // eBPF log lines are filtered by `bpf_log` in the kernel already; the general filter would
    // otherwise hide the debug level asked for there.
    let filter = if cli.log.contains("podgate::bpf") {
        cli.log.clone()
    } else {
        format!("{},podgate::bpf=trace", cli.log)
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&filter)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let pin_root = cli.pin_root.clone().unwrap_or_else(|| PathBuf::from(podgate::config::DEFAULT_PIN_ROOT));
    let ctl = cli::Ctl {
        pins: podgate::pins::Pins::new(&pin_root),
        socket: cli.socket.clone().unwrap_or_else(|| podgate::control::default_socket(&pin_root)),
        explicit_root: cli.pin_root.clone(),
    };
    let pins = &ctl.pins;
    let result = match cli.verb {
        Verb::Run(a) => cli::run::run(a, pin_root, cli.socket),
        Verb::Pod(v) => cli::pod::run(v, &ctl),
        Verb::Nat(v) => cli::nat::run(v, &ctl),
        Verb::Sg(v) => cli::sg::run(v, &ctl),
        Verb::Ct(v) => cli::ct::run(v, &ctl),
        Verb::Stats(a) => cli::stats::run(a, &ctl),
        Verb::Status(a) => cli::status::run(a, &ctl),
        // A live stream and a teardown: both work on the pins, with or without a daemon.
        Verb::Monitor(a) => cli::monitor::run(a, pins),
        Verb::Config(v) => cli::config::run(v),
        Verb::Cni => unreachable!("handled before argument parsing"),
        Verb::Gc(a) => cli::gc::run(a, &ctl),
        Verb::Reset(a) => cli::reset::run(a, pins),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("podgate: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
