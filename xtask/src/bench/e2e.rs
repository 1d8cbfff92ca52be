//! End to end in the namespace lab: every mode gets its own lab of the same shape, all up at
//! once, and the same generators run against each, mode after mode, in rounds.

use std::{
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use podgate_lab::{ChildGuard, INTERNET_LINK, INTERNET_V4, IPERF_PORT, Lab, LabSpec, Mode, NODE_V4, ns_command, output_with_deadline};
use serde::Serialize;

/// The port of the bench's own HTTP server (the lab's Python endpoint is far too slow to show
/// a kernel limit).
const CONN_PORT: u16 = 8080;
const PODS: usize = 3;
/// UDP flows over all pods, as the issue asks.
const UDP_FLOWS: usize = 50_000;
const UDP_FRAME: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Routed,
    Iptables,
    Nftables,
    PodgateXdp,
    PodgateTc,
}

impl Kind {
    pub const ALL: [Kind; 5] = [Kind::Routed, Kind::Iptables, Kind::Nftables, Kind::PodgateXdp, Kind::PodgateTc];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Routed => "routed",
            Kind::Iptables => "iptables",
            Kind::Nftables => "nftables",
            Kind::PodgateXdp => "podgate",
            Kind::PodgateTc => "podgate-tc",
        }
    }

    fn lab_mode(self) -> Mode {
        match self {
            Kind::Iptables => Mode::Iptables,
            Kind::Nftables => Mode::Nftables,
            _ => Mode::Routed,
        }
    }

    fn lab_name(self) -> String {
        format!("bench-{}", self.name())
    }
}

pub struct Opts {
    pub quick: bool,
    /// Only the new-connection runs (`--only new-conn`).
    pub conn_only: bool,
    pub kinds: Vec<Kind>,
    pub bench_bin: std::path::PathBuf,
    pub podgate_bin: std::path::PathBuf,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct ConnRun {
    pub ok: u64,
    pub failed: u64,
    pub slow: u64,
    pub seconds: f64,
    pub per_second: f64,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct ModeResult {
    pub mode: String,
    /// TCP throughput, Gbit/s, one run per round.
    pub tcp1_gbps: Vec<f64>,
    pub tcp4_gbps: Vec<f64>,
    /// 64 B UDP packets per second that reached the internet namespace.
    pub udp_pps: Vec<f64>,
    /// Of those, what the generators sent per second.
    pub udp_sent_pps: Vec<f64>,
    /// Softirq CPU time (machine wide: the node's forwarding and the receiving veth) per
    /// delivered packet, ns.
    pub cpu_ns_per_pkt: Vec<f64>,
    /// Consecutive 5 s runs of new connections.
    pub conn: Vec<ConnRun>,
    /// podgate's non-zero counters at the end (`podgate stats --json`): what its paths did.
    pub podgate_stats: Option<serde_json::Value>,
    pub errors: Vec<String>,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct E2e {
    pub pods: usize,
    pub udp_flows: usize,
    pub udp_frame_bytes: usize,
    pub seconds_per_run: f64,
    /// The generators' own ceiling: the same trafgen runs into a drop at the node's pod veths.
    pub generator_ceiling_pps: Vec<f64>,
    pub modes: Vec<ModeResult>,
}

struct Node {
    kind: Kind,
    lab: Lab,
    _daemon: Option<ChildGuard>,
    _server: ChildGuard,
}

fn run_ok(cmd: Command, what: &str) -> Result<String> {
    let out = output_with_deadline(cmd, Duration::from_secs(60))?;
    if !out.status.success() {
        bail!("{what}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn in_ns(ns: &str, argv: &[&str]) -> Result<String> {
    run_ok(ns_command(ns, argv), &format!("{ns}: {}", argv.join(" ")))
}

/// Drops the generators' UDP (port 9) at the ingress hook of `devs` in netns `ns`: counted by
/// the veth, gone before routing, so no ICMP port-unreachable storm and no socket cost. (nft's
/// netdev family: this kernel has no tc action modules.)
fn ingress_drop(ns: &str, devs: &[&str]) -> Result<()> {
    let mut script = String::from("add table netdev pgbench; ");
    for (i, d) in devs.iter().enumerate() {
        script.push_str(&format!(
            "add chain netdev pgbench in{i} {{ type filter hook ingress device \"{d}\" priority 0; policy accept; }}; \
             add rule netdev pgbench in{i} udp dport 9 counter drop; "
        ));
    }
    in_ns(ns, &["nft", &script]).map(|_| ())
}

/// Starts podgate in the lab's node namespace and waits until every program is attached.
fn start_podgate(lab: &Lab, bin: &Path, tc: bool) -> Result<ChildGuard> {
    // Nearly the range iptables' SNAT uses for ports ≥ 1024: 50k flows to one destination do not
    // fit in the lab's default 49152-65535 (UDP keeps parity: 8k ports per parity). podgate
    // reserves its range from the node's automatic ports and needs 4096 of those left, so the
    // node namespace (which opens no connections of its own here) gets 1024-5119.
    in_ns(&lab.node_ns(), &["sysctl", "-q", "-w", "net.ipv4.ip_local_port_range=1024 5119"])?;
    let mut cfg = lab.config_toml().replace(&format!("snat_ports = \"{}\"", podgate_lab::SNAT_PORTS), "snat_ports = \"5120-65535\"");
    ensure!(cfg.contains("snat_ports = \"5120-65535\""), "lab config has no snat_ports line to widen");
    // No per-pod cap below what the generators open (16.7k UDP flows per pod plus the TCP
    // churn): the kernel NAT paths have none either.
    cfg = cfg.replacen("[node]\n", "[node]\npod_quota = 200000\n", 1);
    if tc {
        cfg = cfg.replacen("[node]\n", "[node]\nreverse_path = \"tc\"\n", 1);
    }
    let path = lab.state_dir().join("podgate-bench.toml");
    std::fs::write(&path, cfg)?;
    let d = lab.spawn_logged(&lab.node_ns(), &[&bin.to_string_lossy(), "run", "--config", &path.to_string_lossy()], "podgate.log")?;
    let log = lab.state_dir().join("podgate.log");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("podgate: running") {
        ensure!(Instant::now() < deadline, "podgate did not report running in 30 s; see {}", log.display());
        thread::sleep(Duration::from_millis(100));
    }
    Ok(d)
}

fn up(kind: Kind, o: &Opts, server_secs: u64) -> Result<Node> {
    let name = kind.lab_name();
    let _ = podgate_lab::down(&name);
    let lab = Lab::up(LabSpec::new(&name, PODS).with_mode(kind.lab_mode()))?;
    if kind == Kind::Routed {
        // The ceiling: the internet routes the pods' range back to the node, no NAT anywhere,
        // no netfilter rules (so no conntrack) in the node.
        in_ns(&lab.internet_ns(), &["ip", "route", "add", podgate_lab::POD_IPV4_CIDR, "via", &NODE_V4.to_string()])?;
    }
    let inet = lab.internet_ns();
    ingress_drop(&inet, &[INTERNET_LINK])?;
    let daemon = match kind {
        Kind::PodgateXdp => Some(start_podgate(&lab, &o.podgate_bin, false)?),
        Kind::PodgateTc => Some(start_podgate(&lab, &o.podgate_bin, true)?),
        _ => None,
    };
    let server = lab.spawn_logged(
        &inet,
        &[&o.bench_bin.to_string_lossy(), "tcp-server", "--port", &CONN_PORT.to_string(), "--secs", &server_secs.to_string(), "--threads", "2"],
        "bench-server.out",
    )?;
    // Wait for the listener.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !in_ns(&inet, &["ss", "-Hltn"])?.contains(&format!(":{CONN_PORT}")) {
        ensure!(Instant::now() < deadline, "bench tcp-server not listening");
        thread::sleep(Duration::from_millis(50));
    }
    // Every pod reaches the internet over IPv4 in this mode, or the mode is broken.
    for i in 0..PODS {
        let p = lab.http(i, podgate_lab::Family::V4);
        ensure!(p.ok, "{}: pod{i} cannot reach the IPv4 endpoint: {}", kind.name(), p.detail);
    }
    Ok(Node { kind, lab, _daemon: daemon, _server: server })
}

fn iperf(n: &Node, streams: usize, secs: u64) -> Result<f64> {
    let out = n.lab.exec_in_for(
        n.lab.pod_ns(0),
        &["iperf3", "-c", &INTERNET_V4.to_string(), "-p", &IPERF_PORT.to_string(), "-t", &secs.to_string(), "-P", &streams.to_string(), "--connect-timeout", "3000", "--json"],
        Duration::from_secs(secs + 20),
    )?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("iperf3 JSON")?;
    ensure!(out.status.success(), "iperf3: {}", v["error"]);
    v["end"]["sum_received"]["bits_per_second"].as_f64().map(|b| b / 1e9).context("iperf3 bits_per_second")
}

/// New connections from every pod at once (4 client threads per pod) for `secs`.
fn conn_run(n: &Node, bench: &Path, secs: f64) -> Result<ConnRun> {
    let addr = format!("{INTERNET_V4}:{CONN_PORT}");
    let outs: Vec<Result<ConnRun>> = thread::scope(|s| {
        let hs: Vec<_> = (0..PODS)
            .map(|i| {
                let (addr, ns) = (addr.clone(), n.lab.pod_ns(i).to_string());
                s.spawn(move || -> Result<ConnRun> {
                    let cmd = ns_command(&ns, &[&bench.to_string_lossy(), "tcp-client", "--addr", &addr, "--secs", &secs.to_string(), "--threads", "4"]);
                    let out = output_with_deadline(cmd, Duration::from_secs_f64(secs + 15.0))?;
                    ensure!(out.status.success(), "tcp-client: {}", String::from_utf8_lossy(&out.stderr));
                    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
                    Ok(ConnRun {
                        ok: v["ok"].as_u64().unwrap_or(0),
                        failed: v["failed"].as_u64().unwrap_or(0),
                        slow: v["slow"].as_u64().unwrap_or(0),
                        seconds: v["seconds"].as_f64().unwrap_or(0.0),
                        per_second: 0.0,
                    })
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("client thread")).collect()
    });
    let mut r = ConnRun::default();
    for o in outs {
        let o = o?;
        r.ok += o.ok;
        r.failed += o.failed;
        r.slow += o.slow;
        r.seconds = r.seconds.max(o.seconds);
    }
    r.per_second = r.ok as f64 / r.seconds.max(1e-9);
    Ok(r)
}

fn link_packets(ns: &str, dev: &str, rx: bool) -> Result<u64> {
    let out = in_ns(ns, &["ip", "-s", "-j", "link", "show", "dev", dev])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let dir = if rx { "rx" } else { "tx" };
    v[0]["stats64"][dir]["packets"].as_u64().with_context(|| format!("{ns} {dev} {dir} packets"))
}

/// Softirq jiffies of all CPUs: where veth forwarding (pod → node → internet) runs. Machine
/// wide, so other work's softirq time on a shared machine counts too (little: no other network
/// load here), while compile jobs' user and system time does not.
fn cpu_busy() -> Result<u64> {
    let s = std::fs::read_to_string("/proc/stat")?;
    let l = s.lines().next().context("/proc/stat")?;
    let f: Vec<u64> = l.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq
    Ok(f.get(6).copied().unwrap_or(0))
}

fn trafgen_conf(lab: &Lab, i: usize) -> Result<std::path::PathBuf> {
    let pod = lab.pod(i);
    let per = UDP_FLOWS / PODS;
    let lo = 10_000 + i * per;
    let path = lab.state_dir().join(format!("trafgen-pod{i}.cfg"));
    // MACs as the lab sets them: pod side 02:00:a9:fe:<i>:02, node side :01.
    let conf = format!(
        "{{\n  eth(da=02:00:a9:fe:{i:02x}:01, sa=02:00:a9:fe:{i:02x}:02, type=0x0800),\n  \
         ipv4(saddr={}, daddr={INTERNET_V4}, ttl=64),\n  \
         udp(sp=dinc({lo}, {}, 1), dp=9),\n  fill(0x00, {})\n}}\n",
        pod.ipv4,
        lo + per - 1,
        UDP_FRAME - 42
    );
    std::fs::write(&path, conf)?;
    Ok(path)
}

/// Runs trafgen in every pod for about `secs` and returns (sent pps, counted pps, CPU ns per
/// counted packet), counting with `count` (packets so far) over the middle of the run.
fn udp_run(lab: &Lab, secs: f64, count: &dyn Fn() -> Result<u64>) -> Result<(f64, f64, f64)> {
    let confs: Vec<_> = (0..PODS).map(|i| trafgen_conf(lab, i)).collect::<Result<_>>()?;
    let total = secs + 2.0;
    let mut gens = Vec::new();
    for (i, c) in confs.iter().enumerate() {
        let t = format!("{total}");
        gens.push(lab.spawn_logged(
            lab.pod_ns(i),
            &["timeout", "-s", "INT", &t, "trafgen", "--dev", "v4if0", "--conf", &c.to_string_lossy(), "--cpus", "1", "--no-sock-mem", "-q"],
            "trafgen.out",
        )?);
    }
    thread::sleep(Duration::from_millis(1000));
    let tx = |lab: &Lab| -> Result<u64> { (0..PODS).map(|i| link_packets(lab.pod_ns(i), "v4if0", false)).sum() };
    let (c0, t0, cpu0, w0) = (count()?, tx(lab)?, cpu_busy()?, Instant::now());
    thread::sleep(Duration::from_secs_f64(secs - 0.5));
    let (c1, t1, cpu1, el) = (count()?, tx(lab)?, cpu_busy()?, w0.elapsed().as_secs_f64());
    let deadline = Instant::now() + Duration::from_secs(10);
    for mut g in gens {
        while g.exited().is_none() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
    }
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let got = (c1 - c0) as f64;
    let cpu_ns = (cpu1 - cpu0) as f64 / hz * 1e9;
    Ok(((t1 - t0) as f64 / el, got / el, if got > 0.0 { cpu_ns / got } else { f64::NAN }))
}

fn udp_delivered(n: &Node, secs: f64) -> Result<(f64, f64, f64)> {
    let inet = n.lab.internet_ns();
    udp_run(&n.lab, secs, &|| link_packets(&inet, INTERNET_LINK, true))
}

/// The generators into a drop at the node's pod veths: their own ceiling.
fn generator_ceiling(n: &Node, secs: f64) -> Result<f64> {
    let node = n.lab.node_ns();
    let vs: Vec<String> = n.lab.pods().iter().map(|p| p.veth_v4.clone()).collect();
    let devs: Vec<&str> = vs.iter().map(String::as_str).collect();
    ingress_drop(&node, &devs)?;
    let r = udp_run(&n.lab, secs, &|| vs.iter().map(|v| link_packets(&node, v, true)).sum());
    let _ = in_ns(&node, &["nft", "delete table netdev pgbench"]);
    Ok(r?.1)
}

pub fn run(o: &Opts, interrupted: &dyn Fn() -> bool) -> Result<E2e> {
    let (secs, rounds, conn_runs) = if o.quick { (2u64, 1usize, 2usize) } else { (5, 3, 3) };
    let rounds = if o.conn_only { 0 } else { rounds };
    let server_secs = if o.quick { 600 } else { 1800 };
    let mut nodes = Vec::new();
    for &k in &o.kinds {
        eprintln!("bench: lab for {} up", k.name());
        nodes.push(up(k, o, server_secs)?);
    }
    let mut res: Vec<ModeResult> = nodes.iter().map(|n| ModeResult { mode: n.kind.name().into(), ..Default::default() }).collect();
    let mut e = E2e { pods: PODS, udp_flows: UDP_FLOWS, udp_frame_bytes: UDP_FRAME, seconds_per_run: secs as f64, ..Default::default() };
    let note = |r: &mut ModeResult, what: &str, x: Result<()>| {
        if let Err(err) = x {
            eprintln!("bench: {} {what}: {err:#}", r.mode);
            r.errors.push(format!("{what}: {err:#}"));
        }
    };
    for round in 0..rounds {
        if let Some(n) = nodes.iter().find(|n| n.kind == Kind::Routed) {
            match generator_ceiling(n, secs as f64) {
                Ok(p) => e.generator_ceiling_pps.push(p),
                Err(err) => eprintln!("bench: generator ceiling: {err:#}"),
            }
        }
        for (n, r) in nodes.iter().zip(res.iter_mut()) {
            if interrupted() {
                bail!("interrupted");
            }
            eprintln!("bench: round {}/{rounds}: {}", round + 1, n.kind.name());
            let x = iperf(n, 1, secs).map(|g| r.tcp1_gbps.push(g));
            note(r, "iperf3 1 stream", x);
            let x = iperf(n, 4, secs).map(|g| r.tcp4_gbps.push(g));
            note(r, "iperf3 4 streams", x);
            let x = udp_delivered(n, secs as f64).map(|(s, d, c)| {
                r.udp_sent_pps.push(s);
                r.udp_pps.push(d);
                r.cpu_ns_per_pkt.push(c);
            });
            note(r, "udp", x);
        }
    }
    // New connections last, mode after mode, runs back to back: the collapse needs the
    // server's TIME_WAIT sockets of the previous runs.
    for (n, r) in nodes.iter().zip(res.iter_mut()) {
        for run in 0..conn_runs {
            if interrupted() {
                bail!("interrupted");
            }
            eprintln!("bench: new connections {}: run {}/{conn_runs}", n.kind.name(), run + 1);
            let x = conn_run(n, &o.bench_bin, secs as f64).map(|c| r.conn.push(c));
            note(r, "connections", x);
        }
    }
    for (n, r) in nodes.iter().zip(res.iter_mut()) {
        if n._daemon.is_some() {
            let root = n.lab.pin_root();
            let x = in_ns(&n.lab.node_ns(), &[&o.podgate_bin.to_string_lossy(), "stats", "--json", "--pin-root", &root.to_string_lossy()])
                .and_then(|t| Ok(serde_json::from_str(&t)?))
                .map(|v| r.podgate_stats = Some(v));
            note(r, "podgate stats", x);
        }
    }
    e.modes = res;
    for n in nodes {
        let name = n.lab.name().to_string();
        drop(n._daemon);
        drop(n._server);
        if let Err(err) = n.lab.down() {
            eprintln!("bench: lab {name} down: {err:#}");
        }
    }
    Ok(e)
}
