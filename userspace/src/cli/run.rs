//! The daemon: validate everything, install or adopt the pinned dataplane, attach, fill the maps,
//! then garbage-collect until a signal. Exiting leaves the dataplane attached and forwarding.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use std::str::FromStr as _;

use podgate::{
    config::{Config, ForeignPrograms, parse_bpf_log},
    control::{self, ControlSocket, Daemon, DaemonConfig, DaemonInfo},
    attach,
    daemon::{
        bpf_log,
        frag_punt,
        metrics::{self, DaemonMetrics},
    },
    maps, netif, node,
    pins::Pins,
    pods, snat,
};
use tracing::{debug, info, warn};

#[derive(clap::Args)]
pub struct Args {
    /// The podgate.toml to apply.
    #[arg(long, short)]
    config: PathBuf,
    /// Another tool's tc/XDP programs on podgate's interfaces: "refuse" to start, or "coexist"
    /// beside them (overrides node.foreign_programs).
    #[arg(long, value_parser = ForeignPrograms::from_str)]
    foreign_programs: Option<ForeignPrograms>,
    /// Emit new-flow events for `podgate monitor` (overrides daemon.flow_events).
    #[arg(long)]
    flow_events: bool,
    /// Forward eBPF log lines at this level and above into the daemon's log: off, error, warn,
    /// info, debug, trace (overrides daemon.bpf_log).
    #[arg(long, value_name = "LEVEL", value_parser = |s: &str| parse_bpf_log(s).map(|_| s.to_string()))]
    bpf_log: Option<String>,
}

pub fn run(a: Args, cli_pin_root: PathBuf, cli_socket: Option<PathBuf>) -> Result<()> {
    let mut cfg = Config::load(&a.config)?;
    if let Some(f) = a.foreign_programs {
        cfg.node.foreign_programs = f;
    }
    cfg.node.flow_events |= a.flow_events;
    if let Some(level) = a.bpf_log {
        cfg.node.bpf_log = parse_bpf_log(&level).map_err(anyhow::Error::msg)?;
    }
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

    // Bound before anything is installed: a daemon already serving this socket (and so,
    // most likely, this pin root) must not be fought over the same maps.
    let socket_path = cli_socket
        .or_else(|| cfg.node.socket.clone())
        .unwrap_or_else(|| control::default_socket(pins.root()));
    let mut control_socket = ControlSocket::bind(&socket_path)
        .with_context(|| format!("daemon.socket = {:?}: cannot listen", socket_path.display().to_string()))?;
    // Bound before anything is installed: a port in use must not leave a half-started node.
    let metrics_listener = match cfg.node.metrics {
        Some(addr) => {
            let l = std::net::TcpListener::bind(addr)
                .with_context(|| format!("daemon.metrics = \"{addr}\": cannot listen"))?;
            l.set_nonblocking(true)?;
            Some(l)
        }
        None => None,
    };
    // Other tools' programs on our hooks: refused here, before anything is loaded or attached;
    // with coexist, `attach_*` say where podgate goes beside each of them.
    let hooks = attach::hooks_for(&cfg.node, &cfg.pods);
    let tc_netlink = cfg.node.tc_attach == podgate::config::TcAttach::Netlink;
    let others = attach::scan_foreign(&pins, &hooks, cfg.node.foreign_programs, tc_netlink)?;
    for f in &others {
        info!(other = %f, "another tool's program on a hook podgate uses: left in place (foreign_programs = \"coexist\")");
    }
    // The node's own sockets must never be handed a port a pod's mapping may hold: podgate's
    // range goes into this namespace's ip_local_reserved_ports before anything translates
    // (after every check that can refuse the start, so a refusal leaves no reservation behind).
    let record = podgate::reserved_ports::record_path(pins.root());
    let plan = podgate::reserved_ports::reserve((cfg.node.port_min, cfg.node.port_max), &record)
        .context("reserving node.snat_ports for podgate (net.ipv4.ip_local_reserved_ports)")?;
    info!(
        reserved = %podgate::reserved_ports::format_list(&plan.reserved),
        added = %podgate::reserved_ports::format_list(&plan.added),
        node_ephemeral_ports_left = plan.node_left,
        "podgate's external ports are reserved from the node's automatic port choice"
    );
    let fresh = !pins.exists();
    if let Err(e) = bring_up(&pins, &cfg) {
        // A first start that fails leaves nothing behind; a restart keeps the previous state,
        // which is still forwarding.
        if fresh {
            if let Err(r) = podgate::reserved_ports::release(&record) {
                warn!("giving back the reserved ports failed: {r:#}");
            }
            match attach::reset(&pins, true) {
                Ok(_) => return Err(e.context("nothing was left attached or pinned")),
                Err(r) => warn!("rolling back failed too: {r:#}"),
            }
        }
        return Err(e);
    }
    println!("podgate: running (pins under {}); Ctrl-C or SIGTERM to exit, the dataplane stays attached", pins.root().display());

    info!(socket = %control_socket.path().display(), "control socket listening");
    let daemon = Arc::new(Daemon::new(
        DaemonInfo {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION"),
            protocol: control::PROTOCOL_VERSION,
            socket: control_socket.path().to_owned(),
            config: std::fs::canonicalize(&a.config).unwrap_or(a.config.clone()),
            started: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        },
        DaemonConfig {
            node: cfg.node.clone(),
            groups: cfg.security_groups.clone(),
            assign: cfg.pods.iter().map(|p| (p.name.clone(), p.security_groups.clone())).collect(),
        },
    ));
    let listener = control_socket.take_listener().expect("listener taken once");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let r = rt.block_on(daemon_loop(&pins, &cfg, metrics_listener, listener, daemon));
    // Dropping the socket removes its file: a clean exit leaves no stale socket behind.
    drop(control_socket);
    r
}

/// Installs or adopts the dataplane and applies the configuration to it.
fn bring_up(pins: &Pins, cfg: &Config) -> Result<()> {
    let sizes = cfg.node.limits.map_sizes();
    for (name, have, want) in attach::size_mismatches(pins, &sizes) {
        warn!(map = %name, pinned = have, configured = want, "map keeps its pinned size; `podgate reset` applies [limits]");
    }
    let adopted = attach::install_sized(pins, &sizes, bpf_log::aya_level(cfg.node.bpf_log)).context("installing the dataplane")?;
    if adopted.is_empty() {
        info!(root = %pins.root().display(), "created new pinned maps");
    } else {
        info!(root = %pins.root().display(), maps = adopted.len(), "adopted pinned maps from a previous run (flows kept)");
    }
    let node = node::write_node(pins, &cfg.node)?;
    info!(
        ipv4 = %std::net::Ipv4Addr::from(node.ipv4),
        uplink = %cfg.node.uplink,
        prefix = %cfg.node.pod_prefix,
        "node configured"
    );
    // Before the uplink and pods are attached: a pod's interface replaced while podgate was down
    // leaves entries keyed by an ifindex that is gone and flows that point at it.
    let configured: std::collections::HashSet<&str> = cfg.pods.iter().map(|p| p.name.as_str()).collect();
    for e in pods::remove_vanished_pods(pins)? {
        let again = if configured.contains(e.name.as_str()) {
            "registered again from the config with its new interfaces"
        } else {
            "not in the config: register it again (pod add, or the CNI's ADD)"
        };
        warn!(
            pod = %e.name,
            ipv4 = %std::net::Ipv4Addr::from(e.pod.ipv4),
            "pod's host interfaces are gone (deleted or replaced while podgate was down): its flows \
             and mappings were flushed as on pod removal; {again}"
        );
    }
    let path = attach::attach_uplink(pins, &cfg.node)?;
    info!(uplink = %cfg.node.uplink, ?path, "uplink attached");
    // On a restart the config's pods keep their pinned group ids while they are re-registered:
    // a record without groups would let the pod send anything until the groups are applied.
    let pinned_groups = podgate::sg::group_ids(pins)?;
    for p in &cfg.pods {
        let ids: Vec<u32> = p.security_groups.iter().filter_map(|g| pinned_groups.get(g).copied()).collect();
        let pod = pods::add_pod(pins, cfg.node.pod_quota, p, &ids)
            .with_context(|| format!("registering pod {}", p.name))?;
        info!(pod = %p.name, id = pod.id, ipv6 = %p.ipv6, ipv4 = %p.ipv4, "pod registered");
    }
    let assign = cfg.pods.iter().map(|p| (p.name.clone(), p.security_groups.clone())).collect();
    let r = podgate::sg::apply(
        pins,
        &cfg.security_groups,
        &assign,
        cfg.node.pod_prefix,
        cfg.node.max_groups_per_pod as usize,
        false,
    )?;
    info!(groups = r.groups, rule_entries = r.rule_entries, generation = r.generation, "security groups applied");
    for e in maps::pods::list_pods(pins)? {
        // Pods registered at runtime by an older daemon get their tallies too.
        podgate::maps::usage::init(pins, e.pod.id, e.pod.ipv4)?;
        if !configured.contains(e.name.as_str()) {
            info!(pod = %e.name, "keeping pod registered at runtime (not in the config file)");
        }
    }
    Ok(())
}

async fn daemon_loop(
    pins: &Pins,
    cfg: &Config,
    listener: Option<std::net::TcpListener>,
    control_listener: std::os::unix::net::UnixListener,
    daemon: Arc<Daemon>,
) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let metrics = Arc::new(Mutex::new(DaemonMetrics::default()));
    tokio::spawn(control::serve(control_listener, pins.clone(), daemon.clone()));
    if let Some(listener) = listener {
        let addr = listener.local_addr()?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        info!(%addr, "metrics at http://{addr}/metrics");
        tokio::spawn(serve_metrics(listener, pins.clone(), metrics.clone()));
    }
    if cfg.node.frag_punt {
        tokio::spawn(frag_punt::run(pins.clone(), metrics.clone()));
    }
    let mut bpf_log = match cfg.node.bpf_log {
        Some(level) => {
            let logger = bpf_log::open(pins).context("forwarding eBPF logs (daemon.bpf_log)")?;
            info!(%level, "forwarding eBPF log lines (target podgate::bpf)");
            // SAFETY: the logger owns its ring buffer's fd, which stays open and the same for
            // as long as the logger lives, and the AsyncFd owns the logger.
            let fd = unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
            }
            .map_err(|e| anyhow::anyhow!("polling the eBPF log buffer: {e}"))?;
            Some(fd)
        }
        None => None,
    };
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    // The GC runs on a thread of its own: a pass over a million entries takes a while and must
    // stall neither the control socket, nor /metrics, nor the fragment slow path's liveness
    // refresh (all on this runtime).
    let (stop_gc, stopped) = std::sync::mpsc::channel::<()>();
    let gc_thread = {
        let (pins, cfg, daemon, metrics) = (pins.clone(), cfg.clone(), daemon.clone(), metrics.clone());
        std::thread::Builder::new()
            .name("podgate-gc".into())
            .spawn(move || gc_loop(&pins, &cfg, &daemon, &metrics, stopped))?
    };
    loop {
        tokio::select! {
            r = async { bpf_log.as_mut().expect("guarded").readable_mut().await }, if bpf_log.is_some() => {
                let mut guard = r?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    drop(stop_gc);
    // A pass in progress finishes first: its deletions and repairs are never left half-done.
    let _ = tokio::task::spawn_blocking(move || gc_thread.join()).await;
    if bpf_log.is_some() {
        // Nobody reads the log buffer once this daemon is gone: stop the programs writing it.
        if let Err(e) = maps::set_node_flag(pins, podgate_common::node_flags::BPF_LOG, false) {
            warn!("turning eBPF logging off: {e:#}");
        }
    }
    info!("exiting; programs stay attached and maps pinned (`podgate reset` removes them)");
    Ok(())
}

/// GC passes until `stop` is dropped: IPv4 NAT (its walks without the daemon's lock, its
/// repairs under it), then IPv6; the next pass comes sooner as the tables fill.
fn gc_loop(pins: &Pins, cfg: &Config, daemon: &Daemon, metrics: &Mutex<DaemonMetrics>, stop: std::sync::mpsc::Receiver<()>) {
    let mut pressure = false;
    let mut next = Duration::ZERO;
    let lock = || Box::new(daemon.lock()) as Box<dyn podgate::snat::gc::Held + '_>;
    loop {
        match stop.recv_timeout(next) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        {
            let _serialized = daemon.lock();
            match node::follow_uplink_ipv4(pins, &cfg.node) {
                Ok(Some((old, new))) => warn!(%old, %new, "uplink address changed: translating to the new one"),
                Ok(None) => {}
                Err(e) => warn!("reading the uplink address: {e:#}"),
            }
        }
        let started = std::time::Instant::now();
        let now = podgate::util::boottime_ns();
        let r = snat::gc_locked(pins, &cfg.node.timeouts, cfg.node.unanswered_secs, now, &lock);
        let mut pressure6 = false;
        {
            let _serialized = daemon.lock();
            match podgate::sg::gc(pins, &cfg.node.timeouts, cfg.node.unanswered_secs, now) {
                Ok(r6) => {
                    if r6.pressure {
                        warn!(?r6, "ct6 near full: unassured flows dropped early, new inbound flows refused (drop_sg6_ct_pressure) until GC frees room");
                    } else if r6.flows_expired + r6.frags_expired > 0 {
                        info!(?r6, "gc ipv6");
                    }
                    pressure6 = r6.pressure;
                }
                Err(e) => warn!("ipv6 gc pass failed: {e:#}"),
            }
        }
        let mut fullest = 0.0_f64;
        let mut high = 0.9_f64;
        let mut m = metrics.lock().expect("metrics lock");
        m.gc_runs += 1;
        m.gc_seconds_total += started.elapsed().as_secs_f64();
        match r {
            Ok(r) => {
                if r.flows_expired + r.mappings_expired + r.evictions() > 0 {
                    info!(?r, entries_per_sec = podgate::snat::gc::entries_per_sec(&r) as u64, "gc");
                } else {
                    debug!(?r, "gc");
                }
                if r.evictions() > 0 {
                    warn!(restored_mappings = r.evicted_mappings_restored, restored_claims = r.evicted_claims_restored,
                          lost_mappings = r.evicted_mappings_lost, "the LRU evicted live NAT state (repaired)");
                }
                m.evicted_mappings_restored += r.evicted_mappings_restored as u64;
                m.evicted_claims_restored += r.evicted_claims_restored as u64;
                m.evicted_mappings_lost += r.evicted_mappings_lost as u64;
                let occ = snat::occupancy(pins, &r);
                let ncpus = aya::util::nr_cpus().map(|n| n as u64).unwrap_or(1);
                for &(_, used, max) in &occ {
                    if max > 0 && used as f64 / max as f64 >= fullest {
                        fullest = used as f64 / max as f64;
                        high = podgate_common::pressure::high_water(max, ncpus) as f64 / max as f64;
                    }
                }
                match snat::update_pressure(pins, &r, pressure) {
                    Ok(p) => {
                        if p != pressure {
                            let occ: Vec<String> = occ.iter().map(|(n, u, x)| format!("{n} {u}/{x}")).collect();
                            if p {
                                warn!(occupancy = %occ.join(", "), "NAT maps near full: refusing new flows (drop_map_full) until GC frees room");
                            } else {
                                info!(occupancy = %occ.join(", "), "NAT maps below the low-water mark: new flows accepted again");
                            }
                        }
                        if p {
                            m.pressure_passes += 1;
                        }
                        pressure = p;
                        m.pressure = p;
                    }
                    Err(e) => warn!("setting nat4_pressure: {e:#}"),
                }
                m.last_gc = r;
            }
            Err(e) => {
                m.gc_errors += 1;
                warn!("gc pass failed: {e:#}");
            }
        }
        // Under pressure (IPv4 or ct6) the next pass comes once a second: new flows are being refused until
        // a pass finds room; short of it, sooner as the fullest table nears its high-water mark.
        let base = Duration::from_secs(cfg.node.gc_interval_secs);
        next = if pressure || pressure6 { Duration::from_secs(1).min(base) } else { podgate::snat::gc::next_interval(base, fullest, high) };
        m.gc_next_secs = next.as_secs_f64();
    }
}

/// A minimal HTTP/1.0 responder: Prometheus needs nothing more than GET /metrics.
async fn serve_metrics(listener: tokio::net::TcpListener, pins: Pins, d: Arc<Mutex<DaemonMetrics>>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            // Out of fds or similar: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let pins = pins.clone();
        let d = d.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let n = match tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let req = String::from_utf8_lossy(&buf[..n]);
            let path = req.split_whitespace().nth(1).unwrap_or("");
            let (status, body) = if path == "/metrics" {
                let snapshot = d.lock().expect("metrics lock").clone();
                match metrics::render(&pins, &snapshot) {
                    Ok(b) => ("200 OK", b),
                    Err(e) => ("500 Internal Server Error", format!("{:#}\n", anyhow::Error::new(e))),
                }
            } else {
                ("404 Not Found", "try /metrics\n".to_string())
            };
            let head = format!(
                "HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(body.as_bytes()).await;
        });
    }
}
