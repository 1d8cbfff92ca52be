//! podgate on the lab's node: started through `nsenter --net` (so the host's bpffs stays
//! visible and pins outlive the daemon, DESIGN.md §5) and ready once it says it is running,
//! which it does after every pod's programs are attached.

use std::{
    fs,
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{ChildGuard, Lab, output_with_deadline};

/// Whether `bin` is a podgate with the daemon (`podgate run --config FILE`).
pub fn podgate_has_daemon(bin: &Path) -> bool {
    if !bin.exists() {
        return false;
    }
    let mut cmd = Command::new(bin);
    cmd.args(["run", "--help"]);
    output_with_deadline(cmd, Duration::from_secs(10)).is_ok_and(|out| {
        let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
        out.status.success() && text.contains("--config")
    })
}

impl Lab {
    /// Starts `bin run --config <lab config>` in the node namespace, output to
    /// `<state dir>/podgate.log`, and waits up to `limit` for its "running" line (maps pinned and
    /// every program attached: traffic sent earlier would leave untranslated).
    /// Returns the daemon's guard (dropping it stops the daemon; the pins stay until `down`).
    pub fn start_podgate(&self, bin: &Path, limit: Duration) -> Result<ChildGuard> {
        let cfg = self.config_path();
        let argv = [
            &*bin.to_string_lossy(),
            "run",
            "--config",
            &*cfg.to_string_lossy(),
        ];
        let mut daemon = self
            .spawn_logged(&self.node_ns(), &argv, "podgate.log")
            .with_context(|| format!("podgate's log:\n{}", self.podgate_log()))?;
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = daemon.exited() {
                bail!(
                    "podgate exited at start ({st}); its log:\n{}",
                    self.podgate_log()
                );
            }
            if self.podgate_log().contains("podgate: running") {
                return Ok(daemon);
            }
            if Instant::now() >= deadline {
                bail!(
                    "podgate (pid {}) did not report running within {limit:?} (pins under {}); its log:\n{}",
                    daemon.pid(),
                    self.pin_root().display(),
                    self.podgate_log()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The entries directly under the lab's pin root, sorted.
    pub fn pins(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.pin_root())
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    pub fn podgate_log(&self) -> String {
        fs::read_to_string(self.state_dir().join("podgate.log")).unwrap_or_default()
    }

    /// Runs a podgate CLI verb (`nat list`, `stats`, …) in the node namespace with the lab's
    /// config; killed after 10 s.
    pub fn podgate_cli(&self, bin: &Path, verb: &[&str]) -> Result<std::process::Output> {
        let (bin_s, root) = (bin.to_string_lossy(), self.pin_root());
        let root_s = root.to_string_lossy();
        let mut argv: Vec<&str> = vec![&bin_s, "--pin-root", &root_s];
        argv.extend_from_slice(verb);
        self.exec_in_for(&self.node_ns(), &argv, Duration::from_secs(10))
    }
}
