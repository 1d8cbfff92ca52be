//! Taking labs down (also after a crash), finding them, and describing them.

use std::{fmt, fs, process::Command, time::Duration};

use anyhow::{Result, bail};

use crate::{
    NetnsLock, ProcId, belongs, config_path, netns_exists, netns_list, pin_root, run, state,
    validate_name,
};

/// What `down` removed, one line per item.
#[derive(Debug, Default)]
pub struct DownReport {
    pub removed: Vec<String>,
}

impl fmt::Display for DownReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.removed.is_empty() {
            return writeln!(f, "nothing to remove");
        }
        for r in &self.removed {
            writeln!(f, "removed {r}")?;
        }
        Ok(())
    }
}

/// Takes lab `name` down, from its state file and, for what the state missed, by the lab's
/// namespace names: recorded processes (verified by start time), any process still inside the
/// lab's namespaces, the namespaces (and with them every veth), the pin root, the state dir.
/// Safe to run on a lab that is half built, already down, or whose owner crashed.
pub fn down(name: &str) -> Result<DownReport> {
    validate_name(name)?;
    let st = state::read(name)?.unwrap_or_default();
    let mut report = DownReport::default();
    let grace = Duration::from_secs(2);
    for (id, cmd) in &st.procs {
        if id.terminate(grace) {
            report.removed.push(format!("process {} ({cmd})", id.pid));
        }
    }
    let mut nss: Vec<String> = st
        .netns
        .iter()
        .filter(|n| belongs(name, n))
        .cloned()
        .collect();
    for ns in netns_list() {
        if belongs(name, &ns) && !nss.contains(&ns) {
            nss.push(ns);
        }
    }
    let mut errors = Vec::new();
    for ns in nss.iter().filter(|ns| netns_exists(ns)) {
        // A process left inside would keep the namespace, and its veths, alive after `del`.
        if let Ok(pids) = run(Command::new("ip").args(["netns", "pids", ns])) {
            for pid in pids.split_whitespace().filter_map(|p| p.parse().ok()) {
                if let Some(id) = ProcId::of(pid) {
                    let cmd = id.cmdline();
                    if id.terminate(grace) {
                        report
                            .removed
                            .push(format!("process {pid} ({cmd}) found in {ns}"));
                    }
                }
            }
        }
        let _lock = NetnsLock::take()?;
        match run(Command::new("ip").args(["netns", "del", ns])) {
            Ok(_) => report.removed.push(format!("netns {ns}")),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    let pins = st.pin_root.unwrap_or_else(|| pin_root(name));
    // Only ever this lab's own pin root, whatever the state file says.
    if pins == pin_root(name) && pins.exists() {
        match fs::remove_dir_all(&pins) {
            Ok(()) => report.removed.push(format!("pins {}", pins.display())),
            Err(e) => errors.push(format!("removing {}: {e}", pins.display())),
        }
    }
    // podgate's record of the ports it reserved in the node namespace (gone with the namespace):
    // /run/podgate/<pin root, / as ->.reserved-ports, as `podgate::reserved_ports::record_path`.
    let flat: String = pin_root(name)
        .to_string_lossy()
        .trim_start_matches('/')
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '-' })
        .collect();
    let record = std::path::Path::new("/run/podgate").join(format!("{flat}.reserved-ports"));
    if record.exists() && fs::remove_file(&record).is_ok() {
        report.removed.push(format!("record {}", record.display()));
    }
    let dir = state::dir(name);
    if dir.exists() {
        match fs::remove_dir_all(&dir) {
            Ok(()) => report.removed.push(format!("state {}", dir.display())),
            Err(e) => errors.push(format!("removing {}: {e}", dir.display())),
        }
    }
    if !errors.is_empty() {
        bail!("lab {name} down: {}", errors.join("; "));
    }
    Ok(report)
}

/// The processes recorded in lab `name`'s state (alive or not).
pub fn processes(name: &str) -> Vec<ProcId> {
    state::read(name)
        .ok()
        .flatten()
        .map(|st| st.procs.into_iter().map(|(id, _)| id).collect())
        .unwrap_or_default()
}

/// Labs that exist in any form: a state directory or a namespace of the right shape.
pub fn list() -> Vec<String> {
    let mut names = state::names();
    for ns in netns_list() {
        if let Some(rest) = ns.strip_prefix("pgl-") {
            for suffix in ["-node", "-inet", "-far"] {
                if let Some(n) = rest.strip_suffix(suffix)
                    && !names.iter().any(|x| x == n)
                {
                    names.push(n.to_string());
                }
            }
        }
    }
    names.sort();
    names
}

/// Takes down labs whose owning process (a test run) died without doing so; labs left up on
/// purpose (`cargo xtask lab up`) have no owner and are left alone.
pub fn sweep_orphans() -> Vec<String> {
    let mut swept = Vec::new();
    for name in state::names() {
        if let Ok(Some(st)) = state::read(&name)
            && st.owner.is_some_and(|o| !o.alive())
            && down(&name).is_ok()
        {
            swept.push(name);
        }
    }
    swept
}

/// A human description of lab `name`: namespaces with their addresses, processes, pins.
pub fn status(name: &str) -> Result<String> {
    validate_name(name)?;
    let st = state::read(name)?;
    let mut s = String::new();
    let nss: Vec<String> = netns_list()
        .into_iter()
        .filter(|n| belongs(name, n))
        .collect();
    if st.is_none() && nss.is_empty() {
        return Ok(format!("lab {name}: not up\n"));
    }
    let st = st.unwrap_or_default();
    s.push_str(&format!(
        "lab {name}: {} pod(s), mode {}, state {}\n",
        st.pods,
        st.mode,
        state::dir(name).display()
    ));
    match st.owner {
        Some(o) if o.alive() => s.push_str(&format!("  owner: pid {} (alive)\n", o.pid)),
        Some(o) => s.push_str(&format!(
            "  owner: pid {} (gone: `lab down` cleans up)\n",
            o.pid
        )),
        None => s.push_str("  owner: none (left up by `lab up`)\n"),
    }
    s.push_str("namespaces:\n");
    for ns in &st.netns {
        if !nss.contains(ns) {
            s.push_str(&format!("  {ns}: MISSING\n"));
        }
    }
    for ns in &nss {
        s.push_str(&format!("  {ns}\n"));
        if let Ok(out) = run(Command::new("ip").args(["-n", ns, "-br", "addr", "show"])) {
            for l in out.lines().filter(|l| !l.starts_with("lo ")) {
                s.push_str(&format!("    {l}\n"));
            }
        }
    }
    s.push_str("processes:\n");
    for (id, cmd) in &st.procs {
        let state = if id.alive() { "running" } else { "gone" };
        s.push_str(&format!("  {} {state}: {cmd}\n", id.pid));
    }
    let pins = pin_root(name);
    match fs::read_dir(&pins) {
        Ok(rd) => {
            let entries: Vec<String> = rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            s.push_str(&format!(
                "pins: {} ({} entries: {})\n",
                pins.display(),
                entries.len(),
                entries.join(" ")
            ));
        }
        Err(_) => s.push_str(&format!("pins: none ({} absent)\n", pins.display())),
    }
    let cfg = config_path(name);
    if cfg.exists() {
        s.push_str(&format!("config: {}\n", cfg.display()));
    }
    Ok(s)
}
