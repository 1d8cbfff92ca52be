//! The bench's table, goal verdicts and plot, all from the combined JSON (so what is printed is
//! exactly what is stored).

use std::fmt::Write as _;

use serde_json::{Value, json};

pub fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|r| r.trim_start_matches([' ', '\t', ':']).to_string()))
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().take(3).collect::<Vec<_>>().join(" ");
    let mem_kb: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:").and_then(|r| r.split_whitespace().next()?.parse().ok()))
        .unwrap_or(0);
    json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": cpu,
        "kernel": kernel,
        "mem_gib": (mem_kb as f64 / 1048576.0 * 10.0).round() / 10.0,
        "loadavg_at_start": load,
        "date_utc": String::from_utf8_lossy(&std::process::Command::new("date").args(["-u", "+%Y-%m-%d %H:%M"]).output().map(|o| o.stdout).unwrap_or_default()).trim().to_string(),
    })
}

pub fn machine_line(m: &Value) -> String {
    format!(
        "machine: {} CPU(s), {}, kernel {}, {} GiB, load average at start {} ({})",
        m["nproc"], s(&m["cpu"]), s(&m["kernel"]), m["mem_gib"], s(&m["loadavg_at_start"]), s(&m["date_utc"])
    )
}

fn s(v: &Value) -> String {
    v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())
}

fn f(v: &Value) -> Option<f64> {
    v.as_f64()
}

pub fn median(v: &Value) -> Option<f64> {
    let mut xs: Vec<f64> = v.as_array()?.iter().filter_map(Value::as_f64).filter(|x| x.is_finite()).collect();
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(|a, b| a.total_cmp(b));
    let n = xs.len();
    Some(if n % 2 == 1 { xs[n / 2] } else { (xs[n / 2 - 1] + xs[n / 2]) / 2.0 })
}

fn opt(x: Option<f64>, prec: usize) -> String {
    x.map(|v| format!("{v:.prec$}")).unwrap_or_else(|| "-".into())
}

fn si(x: Option<f64>) -> String {
    match x {
        Some(v) if v >= 1e6 => format!("{:.2}M", v / 1e6),
        Some(v) if v >= 1e3 => format!("{:.1}k", v / 1e3),
        Some(v) => format!("{v:.0}"),
        None => "-".into(),
    }
}

fn mode<'a>(e2e: &'a Value, name: &str) -> Option<&'a Value> {
    e2e["modes"].as_array()?.iter().find(|m| m["mode"] == name)
}

fn case<'a>(micro: &'a Value, prefix: &str) -> Option<&'a Value> {
    micro["cases"].as_array()?.iter().find(|c| c["name"].as_str().is_some_and(|n| n.starts_with(prefix)))
}

fn verdict(met: Option<bool>, why: String) -> Value {
    json!({ "verdict": match met { Some(true) => "met", Some(false) => "MISSED", None => "not measured" }, "detail": why })
}

/// Issue 6's goals against this run's numbers.
pub fn goals(micro: &Value, e2e: &Value) -> Value {
    let mut g = serde_json::Map::new();
    let udp = |m: &str| mode(e2e, m).and_then(|v| median(&v["udp_pps"]));
    let (pg, routed) = (udp("podgate"), udp("routed"));
    let ceiling = median(&e2e["generator_ceiling_pps"]);
    let gen_note = match (routed, ceiling) {
        (Some(r), Some(c)) if r >= 0.9 * c => format!(" NOTE: routed delivers {:.0} % of the generator's own ceiling ({}), so the generator may cap every mode.", 100.0 * r / c, si(Some(c))),
        (_, Some(c)) => format!(" The generator's own ceiling is {} pps, above every mode.", si(Some(c))),
        _ => String::new(),
    };
    g.insert(
        "small_packets_at_routed_ceiling".into(),
        verdict(
            pg.zip(routed).map(|(p, r)| p >= r),
            match pg.zip(routed) {
                Some((p, r)) => format!("podgate {} pps vs routed {} pps ({:.0} %), 64 B UDP, {} flows, medians.{gen_note}", si(Some(p)), si(Some(r)), 100.0 * p / r, e2e["udp_flows"]),
                None => "lab part not run".into(),
            },
        ),
    );
    let conn = mode(e2e, "podgate").and_then(|m| m["conn"].as_array().cloned());
    g.insert(
        "new_connections_10k_no_collapse".into(),
        match conn.filter(|c| !c.is_empty()) {
            Some(runs) => {
                let rates: Vec<f64> = runs.iter().filter_map(|r| f(&r["per_second"])).collect();
                let failed: u64 = runs.iter().filter_map(|r| r["failed"].as_u64()).sum();
                let slow: u64 = runs.iter().filter_map(|r| r["slow"].as_u64()).sum();
                let min = rates.iter().copied().fold(f64::INFINITY, f64::min);
                let routed: Vec<String> = mode(e2e, "routed")
                    .and_then(|m| m["conn"].as_array().map(|r| r.iter().map(|c| si(f(&c["per_second"]))).collect()))
                    .unwrap_or_default();
                verdict(
                    Some(min >= 10_000.0 && failed == 0),
                    format!(
                        "podgate runs: {} /s; failed connects {failed}, SYN-retried (>0.5 s) {slow}; goal ≥ 10k/s every run, 0 failed. Routed (no NAT) on this machine in the same run: {} /s",
                        rates.iter().map(|r| si(Some(*r))).collect::<Vec<_>>().join(" / "),
                        if routed.is_empty() { "-".to_string() } else { routed.join(" / ") }
                    ),
                )
            }
            None => verdict(None, "lab part not run".into()),
        },
    );
    let tcp = |m: &str, k: &str| mode(e2e, m).and_then(|v| median(&v[k]));
    let t = [("tcp1_gbps", "1 stream"), ("tcp4_gbps", "4 streams")].map(|(k, n)| (n, tcp("podgate", k), tcp("iptables", k)));
    let met = t.iter().map(|(_, p, i)| p.zip(*i).map(|(p, i)| p >= i)).collect::<Option<Vec<bool>>>().map(|v| v.iter().all(|x| *x));
    g.insert(
        "tcp_throughput_at_least_iptables".into(),
        verdict(met, t.iter().map(|(n, p, i)| format!("{n}: podgate {} vs iptables {} Gbit/s", opt(*p, 2), opt(*i, 2))).collect::<Vec<_>>().join("; ")),
    );
    let est = case(micro, "established SNAT egress (UDP");
    g.insert(
        "established_snat_within_3x_floor".into(),
        match est {
            Some(c) => verdict(
                f(&c["ratio"]).map(|r| r <= 3.0),
                format!("{:.1} ns vs noop_tc {:.1} ns: ×{:.2} (repeat {})", f(&c["ns"]).unwrap_or(f64::NAN), f(&c["floor_ns"]).unwrap_or(f64::NAN), f(&c["ratio"]).unwrap_or(f64::NAN), c["runs"]),
            ),
            None => verdict(None, "micro part not run".into()),
        },
    );
    let pts = micro["scale"]["points"].as_array().cloned().unwrap_or_default();
    let bpm = f(&micro["scale"]["bytes_per_mapping"]);
    if pts.len() >= 2 {
        let hot: Vec<f64> = pts.iter().filter_map(|p| f(&p["hot"]["ns"])).collect();
        let spread: Vec<f64> = pts.iter().filter_map(|p| f(&p["spread"]["net_ns"])).collect();
        let (first, last) = (&pts[0], &pts[pts.len() - 1]);
        let ratio = |v: &[f64]| v.last().unwrap_or(&f64::NAN) / v.first().unwrap_or(&f64::NAN);
        let (hot_ratio, spread_ratio) = (ratio(&hot), ratio(&spread));
        // "Flat": within 20 % from the smallest to the largest table, for one flow (the hash
        // lookup itself) and for random flows (the lookup plus the cache misses a big table brings).
        g.insert(
            "lookup_flat_across_table_sizes".into(),
            verdict(
                Some(hot_ratio <= 1.2 && spread_ratio <= 1.2),
                format!(
                    "one flow: {:.1} ns at {} entries, {:.1} ns at {} (×{hot_ratio:.2}, flat); random flows over the table: net {:.0} → {:.0} ns (×{spread_ratio:.2}: the hash lookup is O(1), the cache and TLB misses of a {:.0} MB table are not)",
                    hot.first().unwrap_or(&f64::NAN), first["entries"], hot.last().unwrap_or(&f64::NAN), last["entries"],
                    spread.first().unwrap_or(&f64::NAN), spread.last().unwrap_or(&f64::NAN),
                    bpm.unwrap_or(0.0) * f(&last["entries"]).unwrap_or(0.0) / 1e6
                ),
            ),
        );
    } else {
        g.insert("lookup_flat_across_table_sizes".into(), verdict(None, "scale part not run".into()));
    }
    g.insert(
        "at_most_256_bytes_per_mapping".into(),
        verdict(
            bpm.map(|b| b <= 256.0),
            match micro["scale"]["memory"].as_array() {
                Some(m) => format!(
                    "{} bytes: {} (bytes_memlock / max_entries; LRU hashes are preallocated, so this is paid for every slot, used or not)",
                    opt(bpm, 0),
                    m.iter().map(|x| format!("{} {:.0}", s(&x["map"]), f(&x["bytes_per_entry"]).unwrap_or(0.0))).collect::<Vec<_>>().join(" + ")
                ),
                None => "scale part not run".into(),
            },
        ),
    );
    Value::Object(g)
}

pub fn table(all: &Value) -> String {
    let mut o = String::new();
    let micro = &all["micro"];
    let e2e = &all["e2e"];
    let _ = writeln!(o, "\n## podgate benchmark{}\n", if all["quick"] == true { " (--quick: smoke run, numbers not representative)" } else { "" });
    let _ = writeln!(o, "{}\n", machine_line(&all["machine"]));
    if let Some(cases) = micro["cases"].as_array() {
        let _ = writeln!(o, "### Per packet (BPF_PROG_TEST_RUN, medians of {} alternating rounds)\n", micro["opts"]["rounds"]);
        let _ = writeln!(o, "| case | method | ns/packet | floor | floor ns | × floor | net ns |");
        let _ = writeln!(o, "|---|---|---:|---|---:|---:|---:|");
        for c in cases {
            let runs = if c["method"] == "repeat" { format!("repeat {}", c["runs"]) } else { format!("{} single runs", c["runs"]) };
            let _ = writeln!(
                o,
                "| {} | {runs} | {} | {} | {} | {} | {} |",
                s(&c["name"]), opt(f(&c["ns"]), 1), s(&c["floor_program"]), opt(f(&c["floor_ns"]), 1), opt(f(&c["ratio"]), 2), opt(f(&c["net_ns"]), 1)
            );
        }
        let _ = writeln!(o);
    }
    let sc = &micro["scale"];
    if let Some(pts) = sc["points"].as_array() {
        let _ = writeln!(o, "### Scale: established egress and reverse NAT against table size\n");
        let _ = writeln!(o, "| entries (ct4 = mappings) | egress, one flow ns (× floor) | egress, random flows net ns | reverse XDP, one mapping ns (× floor) |");
        let _ = writeln!(o, "|---:|---:|---:|---:|");
        for p in pts {
            let _ = writeln!(
                o,
                "| {} | {} (×{}) | {} | {} (×{}) |",
                p["entries"], opt(f(&p["hot"]["ns"]), 1), opt(f(&p["hot"]["ratio"]), 2), opt(f(&p["spread"]["net_ns"]), 0), opt(f(&p["reverse_hot"]["ns"]), 1), opt(f(&p["reverse_hot"]["ratio"]), 2)
            );
        }
        let _ = writeln!(o);
        for (k, label) in [("new_flow_empty", "new flow, table empty"), ("new_flow_ninety", "new flow, table 90 % full")] {
            if let Some(c) = sc[k].as_object() {
                let ns = c.get("ns").and_then(Value::as_f64);
                let net = c.get("net_ns").and_then(Value::as_f64);
                let _ = writeln!(o, "- {label}: {} ns per packet (net {} ns over noop_tc) ⇒ {} new flows/s on one CPU", opt(ns, 0), opt(net, 0), si(ns.map(|n| 1e9 / n)));
            }
        }
        if let Some(mem) = sc["memory"].as_array() {
            let per: Vec<String> = mem.iter().map(|m| format!("{} {:.0} B/entry ({} B for {} entries)", s(&m["map"]), f(&m["bytes_per_entry"]).unwrap_or(0.0), m["bytes_memlock"], m["max_entries"])).collect();
            let _ = writeln!(o, "- memory: {}; one mapping with its flow: {} bytes", per.join(", "), opt(f(&sc["bytes_per_mapping"]), 0));
        }
        if let Some(gc) = sc["gc"].as_array() {
            for p in gc {
                // The per-key walk of the same pass in the same run, for the ratio.
                let reference = gc.iter().find(|r| r["what"] == p["what"] && r["walk"] == "per-key reference");
                let ratio = match (reference, p["walk"].as_str()) {
                    (Some(r), Some("batched")) => format!(
                        "; per-key walk {:.2} s ({:.1}× slower)",
                        f(&r["seconds"]).unwrap_or(f64::NAN),
                        f(&r["seconds"]).unwrap_or(f64::NAN) / f(&p["seconds"]).unwrap_or(f64::NAN)
                    ),
                    _ => String::new(),
                };
                if p["walk"] == "per-key reference" {
                    continue;
                }
                let _ = writeln!(
                    o,
                    "- GC pass ({}): {:.2} s over {} flows / {} mappings; expired {} flows, {} mappings, {} claims{ratio}",
                    s(&p["what"]), f(&p["seconds"]).unwrap_or(f64::NAN), p["flows_seen"], p["mappings_seen"], p["flows_expired"], p["mappings_expired"], p["claims_removed"]
                );
            }
        }
        let _ = writeln!(o, "- prefill: {} entries/s through single map updates (nat4_map + nat4_claim + ct4 each)\n", si(f(&sc["fill_rate_per_s"])));
    }
    if let Some(modes) = e2e["modes"].as_array() {
        let _ = writeln!(
            o,
            "### End to end in the lab ({} pods, medians of rounds; {} s runs)\n",
            e2e["pods"], e2e["seconds_per_run"]
        );
        let routed = mode(e2e, "routed").and_then(|m| median(&m["udp_pps"]));
        let _ = writeln!(o, "| mode | UDP 64 B pps ({} flows), median (min–max) | vs routed | TCP 1 stream Gbit/s | TCP 4 streams Gbit/s | new conn/s, consecutive runs | failed / SYN-retried connects | softirq ns per UDP pkt |", e2e["udp_flows"]);
        let _ = writeln!(o, "|---|---:|---:|---:|---:|---|---:|---:|");
        for m in modes {
            let udp = median(&m["udp_pps"]);
            let all: Vec<f64> = m["udp_pps"].as_array().map(|v| v.iter().filter_map(Value::as_f64).collect()).unwrap_or_default();
            let range = if all.is_empty() { String::new() } else { format!(" ({}–{})", si(all.iter().copied().reduce(f64::min)), si(all.iter().copied().reduce(f64::max))) };
            let runs = m["conn"].as_array().map(|r| r.iter().map(|c| si(f(&c["per_second"]))).collect::<Vec<_>>().join(" / ")).unwrap_or_default();
            let sum = |k: &str| -> u64 { m["conn"].as_array().map(|r| r.iter().filter_map(|c| c[k].as_u64()).sum()).unwrap_or(0) };
            let _ = writeln!(
                o,
                "| {} | {}{range} | {} | {} | {} | {} | {} / {} | {} |",
                s(&m["mode"]), si(udp), udp.zip(routed).map(|(u, r)| format!("{:.0} %", 100.0 * u / r)).unwrap_or("-".into()), opt(median(&m["tcp1_gbps"]), 2), opt(median(&m["tcp4_gbps"]), 2), runs, sum("failed"), sum("slow"), opt(median(&m["cpu_ns_per_pkt"]), 0)
            );
        }
        for m in modes {
            if let Some(st) = m["podgate_stats"].as_array() {
                let drops: Vec<String> = st.iter().filter(|c| c["kind"] == "drop").map(|c| format!("{} {}", s(&c["counter"]), c["value"])).collect();
                let _ = writeln!(o, "\n- {} drop counters at the end: {}", s(&m["mode"]), if drops.is_empty() { "none".to_string() } else { drops.join(", ") });
            }
        }
        let _ = writeln!(o, "\n- generator ceiling (same trafgen into a drop at the node's pod veths): {} pps", si(median(&e2e["generator_ceiling_pps"])));
        for m in modes {
            if let Some(errs) = m["errors"].as_array().filter(|e| !e.is_empty()) {
                let _ = writeln!(o, "- {} errors: {}", s(&m["mode"]), errs.iter().map(s).collect::<Vec<_>>().join("; "));
            }
        }
        let _ = writeln!(o);
    }
    if let Some(g) = all["goals"].as_object() {
        let _ = writeln!(o, "### Goals (issue 6)\n");
        for (k, v) in g {
            let _ = writeln!(o, "- **{}** {k}: {}", s(&v["verdict"]), s(&v["detail"]));
        }
        let _ = writeln!(o);
    }
    o
}

/// A plotted line: label, colour, (entries, ns) points.
type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// Established egress cost against table size (one flow, and random flows net of the floor).
pub fn lookup_svg(all: &Value) -> Option<String> {
    let pts = all["micro"]["scale"]["points"].as_array()?;
    if pts.len() < 2 {
        return None;
    }
    let series: Vec<Series> = vec![
        ("one flow (hot), ns", "#1f77b4", pts.iter().filter_map(|p| Some((f(&p["entries"])?, f(&p["hot"]["ns"])?))).collect()),
        ("random flows, net ns", "#d62728", pts.iter().filter_map(|p| Some((f(&p["entries"])?, f(&p["spread"]["net_ns"])?))).collect()),
        ("reverse XDP one mapping, ns", "#2ca02c", pts.iter().filter_map(|p| Some((f(&p["entries"])?, f(&p["reverse_hot"]["ns"])?))).collect()),
    ];
    let (w, h, l, r, t, b) = (640.0, 400.0, 60.0, 20.0, 30.0, 50.0);
    let xs: Vec<f64> = series.iter().flat_map(|s| s.2.iter().map(|p| p.0.max(1.0).log10())).collect();
    let ymax = series.iter().flat_map(|s| s.2.iter().map(|p| p.1)).fold(1.0, f64::max) * 1.15;
    let (x0, x1) = (xs.iter().copied().fold(f64::INFINITY, f64::min).floor(), xs.iter().copied().fold(0.0, f64::max).ceil());
    let px = |x: f64| l + (x.max(1.0).log10() - x0) / (x1 - x0).max(1e-9) * (w - l - r);
    let py = |y: f64| h - b - y.max(0.0) / ymax * (h - t - b);
    let mut o = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n");
    let _ = writeln!(o, "<text x=\"{l}\" y=\"18\">podgate established egress cost vs table size (BPF_PROG_TEST_RUN)</text>");
    let _ = writeln!(o, "<line x1=\"{l}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/><line x1=\"{l}\" y1=\"{t}\" x2=\"{l}\" y2=\"{}\" stroke=\"black\"/>", h - b, w - r, h - b, h - b);
    let mut e = x0;
    while e <= x1 {
        let x = px(10f64.powf(e));
        let _ = writeln!(o, "<text x=\"{x}\" y=\"{}\" text-anchor=\"middle\">1e{e}</text>", h - b + 16.0);
        e += 1.0;
    }
    for i in 0..=4 {
        let y = ymax * i as f64 / 4.0;
        let _ = writeln!(o, "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{y:.0}</text>", l - 4.0, py(y) + 4.0);
    }
    let _ = writeln!(o, "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">entries (log)</text>", (l + w - r) / 2.0, h - 12.0);
    for (i, (name, color, p)) in series.iter().enumerate() {
        let path: Vec<String> = p.iter().map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y))).collect();
        let _ = writeln!(o, "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>", path.join(" "));
        for (x, y) in p {
            let _ = writeln!(o, "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\"/>", px(*x), py(*y));
        }
        let _ = writeln!(o, "<text x=\"{}\" y=\"{}\" fill=\"{color}\">{name}</text>", l + 10.0, t + 16.0 * (i as f64 + 1.0));
    }
    o.push_str("</svg>\n");
    Some(o)
}
