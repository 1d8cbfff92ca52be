//! The daemon: validate everything, install or adopt the pinned dataplane, attach, fill the maps,
//! then garbage-collect until a signal. Exiting leaves the dataplane attached and forwarding.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, Result, bail};
use podgate::{
    config::Config,
    dataplane, nat, netif,
    pins::Pins,
};
use tracing::{debug, info, warn};

#[derive(clap::Args)]
pub struct Args {
    /// The podgate.toml to apply.
    #[arg(long, short)]
    config: PathBuf,
}

pub fn run(a: Args, cli_pin_root: PathBuf) -> Result<()> {
    let cfg = Config::load(&a.config)?;
    let explicit_root = cfg.node.pin_root != PathBuf::from(podgate::config::DEFAULT_PIN_ROOT);
    let root = if explicit_root { cfg.node.pin_root.clone() } else { cli_pin_root };
    let pins = Pins::new(root);

    // Everything that can be checked is checked before the kernel is touched.
    let mut missing = Vec::new();
    if netif::ifindex(&cfg.node.uplink).is_err() {
        missing.push(format!("node.uplink = {:?}", cfg.node.uplink));
    }
    for (i, p) in cfg.pods.iter().enumerate() {
        if netif::ifindex(&p.veth).is_err() {
            missing.push(format!("pods[{i}].veth = {:?}", p.veth));
        }
        if let Some(v) = &p.veth_v4
            && netif::ifindex(v).is_err()
        {
            missing.push(format!("pods[{i}].veth_v4 = {v:?}"));
        }
    }
    if !missing.is_empty() {
        bail!("no such interface in this network namespace: {}", missing.join(", "));
    }
    if cfg.node.ipv4.is_none() {
        netif::first_ipv4(&cfg.node.uplink)?;
    }
    pins.check_bpffs()?;

    let adopted = dataplane::install(&pins).context("installing the dataplane")?;
    if adopted.is_empty() {
        info!(root = %pins.root().display(), "created new pinned maps");
    } else {
        info!(root = %pins.root().display(), maps = adopted.len(), "adopted pinned maps from a previous run (flows kept)");
    }
    let node = dataplane::write_node(&pins, &cfg.node)?;
    info!(
        ipv4 = %std::net::Ipv4Addr::from(node.ipv4),
        uplink = %cfg.node.uplink,
        prefix = %cfg.node.pod_prefix,
        "node configured"
    );
    dataplane::attach_uplink(&pins, &cfg.node)?;
    info!(uplink = %cfg.node.uplink, path = ?cfg.node.reverse_path, "uplink attached");
    for p in &cfg.pods {
        let pod = dataplane::add_pod(&pins, cfg.node.pod_quota, p, &[])
            .with_context(|| format!("registering pod {}", p.name))?;
        info!(pod = %p.name, id = pod.id, ipv6 = %p.ipv6, ipv4 = %p.ipv4, "pod registered");
    }
    let configured: std::collections::HashSet<&str> = cfg.pods.iter().map(|p| p.name.as_str()).collect();
    for e in dataplane::list_pods(&pins)? {
        if !configured.contains(e.name.as_str()) {
            info!(pod = %e.name, "keeping pod registered at runtime (not in the config file)");
        }
    }
    println!("podgate: running (pins under {}); Ctrl-C or SIGTERM to exit, the dataplane stays attached", pins.root().display());

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(daemon_loop(&pins, &cfg))
}

async fn daemon_loop(pins: &Pins, cfg: &Config) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(Duration::from_secs(cfg.node.gc_interval_secs));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                match nat::gc(pins, &cfg.node.timeouts, nat::boottime_ns()) {
                    Ok(r) if r.flows_expired + r.mappings_expired > 0 => info!(?r, "gc"),
                    Ok(r) => debug!(?r, "gc"),
                    Err(e) => warn!("gc pass failed: {e:#}"),
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    info!("exiting; programs stay attached and maps pinned (`podgate reset` removes them)");
    Ok(())
}
