//! One QEMU run: software emulation (TCG), no network device, the host's / shared read-only over
//! 9p, the serial console captured line by line into a log, a hard timeout enforced by killing the
//! QEMU process we started.

use std::{
    fs::File,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

pub struct Boot<'a> {
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub append: String,
    pub memory_mib: u32,
    pub timeout: Duration,
    pub log: PathBuf,
}

pub struct Console {
    pub lines: Vec<String>,
    pub timed_out: bool,
    pub elapsed: Duration,
}

/// Boots, echoes `PGVM` lines as progress, and returns the whole console.
pub fn run(b: &Boot) -> Result<Console> {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-cpu", "max", "-smp", "1"])
        .args(["-m", &b.memory_mib.to_string()])
        .args(["-display", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot"])
        // No network device at all: the tests' traffic stays in the guest's own namespaces.
        .args(["-nic", "none"])
        .args([
            // remap: / spans several host filesystems, whose inode numbers would collide.
            "-virtfs",
            "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap,id=hostroot",
        ])
        .arg("-kernel")
        .arg(b.kernel)
        .arg("-initrd")
        .arg(b.initrd)
        .args(["-append", &b.append])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().context("starting qemu-system-x86_64 (Debian package qemu-system-x86)")?;
    let pid = child.id();
    let mut log = File::create(&b.log).with_context(|| format!("creating {}", b.log.display()))?;
    let (tx, rx) = mpsc::channel::<String>();
    let out = child.stdout.take().expect("piped");
    let err = child.stderr.take().expect("piped");
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        for l in BufReader::new(out).split(b'\n').map_while(Result::ok) {
            let l = String::from_utf8_lossy(&l).trim_end_matches('\r').to_string();
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            if tx2.send(format!("qemu-stderr: {l}")).is_err() {
                break;
            }
        }
    });
    let deadline = start + b.timeout;
    let mut lines = Vec::new();
    let mut timed_out = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => {
                writeln!(log, "{l}")?;
                if l.starts_with("PGVM ") || l.starts_with("qemu-stderr") {
                    println!("  [{:>5.1}s] {l}", start.elapsed().as_secs_f64());
                }
                lines.push(l);
            }
            // Both readers finished: QEMU closed its output, i.e. exited.
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                println!("vm-test: timeout after {:?}, killing QEMU (pid {pid})", b.timeout);
                writeln!(log, "vm-test: timeout after {:?}, QEMU killed", b.timeout)?;
                // Child::kill signals exactly the process we spawned.
                let _ = child.kill();
                break;
            }
        }
    }
    let status = child.wait()?;
    writeln!(log, "vm-test: qemu exited: {status}")?;
    Ok(Console { lines, timed_out, elapsed: start.elapsed() })
}
