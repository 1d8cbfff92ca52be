//! What a lab created, written down *before* it is created, so that `down` can undo a lab whose
//! owner crashed half-way. One fact per line, appended:
//!
//! ```text
//! pods 3
//! mode routed
//! pin_root /sys/fs/bpf/podgate-lab-demo
//! owner 1234 5678          # PID + start time of a test process owning the lab (absent: detached)
//! netns pgl-demo-node
//! proc 2345 6789 python3 … # PID + start time + command line
//! ```

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

use crate::process::ProcId;

pub const STATE_ROOT: &str = "/run/podgate-lab";

#[derive(Debug, Default)]
pub struct State {
    pub pods: usize,
    pub mode: String,
    pub pin_root: Option<PathBuf>,
    pub owner: Option<ProcId>,
    pub netns: Vec<String>,
    pub procs: Vec<(ProcId, String)>,
}

pub fn dir(name: &str) -> PathBuf {
    Path::new(STATE_ROOT).join(name)
}

pub fn file(name: &str) -> PathBuf {
    dir(name).join("state")
}

pub fn append(name: &str, line: &str) -> Result<()> {
    let path = file(name);
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("writing lab state {}", path.display()))?;
    writeln!(f, "{line}")?;
    f.sync_data()?;
    Ok(())
}

pub fn read(name: &str) -> Result<Option<State>> {
    let path = file(name);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut st = State::default();
    for line in text.lines() {
        let mut it = line.splitn(2, ' ');
        let (key, rest) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
        let proc_id = |s: &str| -> Option<(ProcId, String)> {
            let mut f = s.splitn(3, ' ');
            let pid = f.next()?.parse().ok()?;
            let start = f.next()?.parse().ok()?;
            Some((ProcId { pid, start }, f.next().unwrap_or("").to_string()))
        };
        match key {
            "pods" => st.pods = rest.parse().unwrap_or(0),
            "mode" => st.mode = rest.to_string(),
            "pin_root" => st.pin_root = Some(PathBuf::from(rest)),
            "owner" => st.owner = proc_id(rest).map(|(p, _)| p),
            "netns" => st.netns.push(rest.to_string()),
            "proc" => st.procs.extend(proc_id(rest)),
            // A torn last line from a crash: skip it, `down` also scans by name.
            _ => {}
        }
    }
    Ok(Some(st))
}

/// Lab names that have a state directory.
pub fn names() -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(STATE_ROOT)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}
