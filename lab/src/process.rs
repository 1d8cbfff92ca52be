//! Background processes in the lab's namespaces: started in their own session (so a Ctrl-C
//! meant for `cargo xtask` does not reach them), and ended only by PID after checking that the
//! PID is still the process we started (start time from /proc), never by name.

use std::{
    fs,
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::ns_command;

/// Identity of a process that survives PID reuse: its PID and its start time in clock ticks
/// since boot (field 22 of /proc/PID/stat).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcId {
    pub pid: u32,
    pub start: u64,
}

impl ProcId {
    pub fn of(pid: u32) -> Option<Self> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name (field 2) may contain spaces and ')', so count from the last ')'.
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // fields[0] is field 3 (state); zombies count as gone.
        if fields.first() == Some(&"Z") {
            return None;
        }
        let start = fields.get(22 - 3)?.parse().ok()?;
        Some(Self { pid, start })
    }

    /// Whether this very process (not a later one with the same PID) is still alive.
    pub fn alive(&self) -> bool {
        Self::of(self.pid) == Some(*self)
    }

    pub fn cmdline(&self) -> String {
        fs::read(format!("/proc/{}/cmdline", self.pid))
            .map(|b| {
                b.split(|&c| c == 0)
                    .filter(|s| !s.is_empty())
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default()
    }

    /// SIGTERM, then SIGKILL after `grace`; returns once the process is gone (reaping it if it
    /// is our child). Does nothing if the PID now belongs to someone else.
    pub fn terminate(&self, grace: Duration) -> bool {
        if !self.alive() {
            // Gone, or the PID now names another process: not ours to signal or reap.
            return false;
        }
        signal(self.pid, libc::SIGTERM);
        if !wait_gone(self, grace) {
            if self.alive() {
                signal(self.pid, libc::SIGKILL);
            }
            wait_gone(self, Duration::from_secs(3));
        }
        true
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) with a PID we verified just before; no memory is shared.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Reaps `pid` if it is a child of ours (ECHILD otherwise, which is fine).
fn reap(pid: u32) {
    let mut status = 0;
    // SAFETY: waitpid with WNOHANG on a single PID; status is a valid out pointer.
    unsafe {
        libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG);
    }
}

fn wait_gone(p: &ProcId, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        reap(p.pid);
        if !p.alive() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A process started in a lab namespace; dropping the guard ends it (by PID) and reaps it.
#[derive(Debug)]
pub struct ChildGuard {
    child: Option<Child>,
    id: ProcId,
    what: String,
}

impl ChildGuard {
    pub fn pid(&self) -> u32 {
        self.id.pid
    }

    pub fn id(&self) -> ProcId {
        self.id
    }

    pub fn what(&self) -> &str {
        &self.what
    }

    /// Whether the process has exited already (and reaps it if so).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Leaves the process running and forgets it (a detached `lab up`; `lab down` ends it by
    /// the PID recorded in the lab's state).
    pub fn detach(mut self) {
        self.child = None;
    }

    /// Ends the process now.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        if let Some(mut child) = self.child.take() {
            if matches!(child.try_wait(), Ok(None)) {
                self.id.terminate(Duration::from_secs(2));
            }
            let _ = child.wait();
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// Starts `argv` in network namespace `ns` with its output appended to `log` (or discarded).
pub fn spawn_in(ns: &str, argv: &[&str], log: Option<&Path>) -> Result<ChildGuard> {
    let mut cmd = ns_command(ns, argv);
    let (out, err) = match log {
        Some(path) => {
            let f = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening log {}", path.display()))?;
            (Stdio::from(f.try_clone()?), Stdio::from(f))
        }
        None => (Stdio::null(), Stdio::null()),
    };
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let what = argv.join(" ");
    let child = cmd
        .spawn()
        .with_context(|| format!("starting `{what}` in netns {ns}"))?;
    let pid = child.id();
    // nsenter execs the command, so the PID stays the same; read its start time once it runs.
    let deadline = Instant::now() + Duration::from_secs(2);
    let id = loop {
        if let Some(id) = ProcId::of(pid) {
            break id;
        }
        if Instant::now() >= deadline {
            anyhow::bail!("`{what}` in netns {ns} exited at once");
        }
        thread::sleep(Duration::from_millis(5));
    };
    Ok(ChildGuard {
        child: Some(child),
        id,
        what,
    })
}

/// Runs `cmd` to completion with a deadline, killing it (by PID) when the deadline passes.
pub fn output_with_deadline(mut cmd: Command, limit: Duration) -> Result<std::process::Output> {
    cmd.stdin(Stdio::null());
    output_with_stdin(cmd, limit)
}

/// Like [`output_with_deadline`], keeping the stdin the caller set on `cmd`.
pub fn output_with_stdin(mut cmd: Command, limit: Duration) -> Result<std::process::Output> {
    use std::io::Read as _;
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    // Drain pipes in threads so a chatty child cannot block on a full pipe.
    let mut so = child.stdout.take().expect("piped");
    let mut se = child.stderr.take().expect("piped");
    let t_out = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let t_err = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            break child.wait()?;
        }
        thread::sleep(Duration::from_millis(10));
    };
    Ok(std::process::Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    })
}
