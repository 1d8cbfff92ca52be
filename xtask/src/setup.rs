//! The toolchain bootstrap. Idempotent: every step checks first and only acts on what is
//! missing, printing what it installs. `ensure()` is what the other verbs call.

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::util::{output, run_cmd, succeeds};

#[derive(clap::Args)]
pub struct Args {
    /// Only report what is missing; install nothing.
    #[arg(long)]
    check: bool,
}

/// Debian packages: the eBPF compiler and its prebuilt `core`, what bpf-linker builds against,
/// and the tools the lab, tests and benchmarks run.
pub const APT_PACKAGES: &[&str] = &[
    "rustc-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "bpftool",
    "iproute2",
    "iperf3",
    "ethtool",
    "nftables",
    "iptables",
    "netsniff-ng",
    "socat",
    "curl",
    "iputils-ping",
    "python3",
    "procps",
    "containernetworking-plugins",
    // Hostile-input lab tests craft frames (VLAN stacks, forged NDP, floods) with scapy.
    "python3-scapy",
    "tcpdump",
    // cargo xtask vm-test: QEMU, the initramfs' shell, and cpio to check the archive format.
    "qemu-system-x86",
    "busybox-static",
    "cpio",
];

const BPF_LINKER_SERIES: &str = "0.13";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
/// The rustup name under which Debian's rustc-web (in /usr) is registered for aya-build.
pub const BPF_TOOLCHAIN: &str = "podgate-debian";

pub fn run(args: Args) -> Result<()> {
    let missing = missing()?;
    if missing.is_empty() {
        println!("setup: everything is installed");
        return Ok(());
    }
    if args.check {
        for m in &missing {
            println!("missing: {}", m.describe());
        }
        bail!("{} item(s) missing; `cargo xtask setup` installs them", missing.len());
    }
    install(&missing)
}

/// Installs whatever is missing; prints nothing but one line when all is there.
pub fn ensure() -> Result<()> {
    let missing = missing()?;
    if missing.is_empty() {
        println!("setup: toolchain present, nothing to install");
        return Ok(());
    }
    install(&missing)
}

enum Missing {
    Packages(Vec<&'static str>),
    RustupLink,
    BpfLinker(Option<String>),
    Bpffs,
}

impl Missing {
    fn describe(&self) -> String {
        match self {
            Missing::Packages(p) => format!("Debian packages: {}", p.join(" ")),
            Missing::RustupLink => format!(
                "rustup toolchain `{BPF_TOOLCHAIN}` (Debian's rustc-web in /usr, for aya-build)"
            ),
            Missing::BpfLinker(None) => format!("bpf-linker {BPF_LINKER_SERIES} (LLVM 22)"),
            Missing::BpfLinker(Some(v)) => {
                format!("bpf-linker {BPF_LINKER_SERIES} (LLVM 22); found `{v}`")
            }
            Missing::Bpffs => "bpffs mounted at /sys/fs/bpf".into(),
        }
    }
}

fn missing() -> Result<Vec<Missing>> {
    let mut out = Vec::new();
    if !Path::new("/etc/debian_version").exists() {
        bail!(
            "setup only knows Debian (bookworm or newer). Install by hand: Debian's rustc-web \
             1.96 with libstd-rust-web-dev-bpf (or a rustup nightly with rust-src and set \
             PODGATE_BPF_TOOLCHAIN=nightly), bpf-linker 0.13 built for LLVM 22 \
             (`LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker --version ^0.13 \
             --no-default-features --features llvm-22`), bpftool, iproute2, iperf3, socat, curl"
        );
    }
    let pkgs: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !package_installed(p))
        .collect();
    if !pkgs.is_empty() {
        out.push(Missing::Packages(pkgs));
    }
    if has_rustup() && !rustup_link_present()? {
        out.push(Missing::RustupLink);
    }
    match bpf_linker_version() {
        Some(v) if v.contains(&format!(" {BPF_LINKER_SERIES}.")) => {}
        other => out.push(Missing::BpfLinker(other)),
    }
    if !bpffs_mounted() {
        out.push(Missing::Bpffs);
    }
    Ok(out)
}

fn install(missing: &[Missing]) -> Result<()> {
    if unsafe { libc::geteuid() } != 0 {
        let list: Vec<String> = missing.iter().map(Missing::describe).collect();
        bail!(
            "setup must install these and needs root: {}. Run `cargo xtask setup` as root.",
            list.join("; ")
        );
    }
    // Packages first: the rustup link and bpf-linker need them.
    for m in missing {
        if let Missing::Packages(pkgs) = m {
            println!("setup: installing Debian packages: {}", pkgs.join(" "));
            run_cmd(Command::new("apt-get").args(["update", "-q"]))?;
            run_cmd(
                Command::new("apt-get")
                    .args(["install", "-y", "-q", "--no-install-recommends"])
                    .args(pkgs)
                    .env("DEBIAN_FRONTEND", "noninteractive"),
            )?;
        }
    }
    for m in missing {
        match m {
            Missing::Packages(_) => {}
            Missing::RustupLink => {
                println!("setup: registering Debian's rustc-web as rustup toolchain `{BPF_TOOLCHAIN}`");
                run_cmd(Command::new("rustup").args(["toolchain", "link", BPF_TOOLCHAIN, "/usr"]))?;
            }
            Missing::BpfLinker(_) => {
                println!(
                    "setup: building bpf-linker {BPF_LINKER_SERIES} for LLVM 22 (takes a few minutes)"
                );
                run_cmd(
                    Command::new("cargo")
                        .args(["install", "--force", "bpf-linker"])
                        .args(["--version", &format!("^{BPF_LINKER_SERIES}")])
                        .args(["--no-default-features", "--features", "llvm-22"])
                        .env("LLVM_PREFIX", LLVM_PREFIX),
                )?;
            }
            Missing::Bpffs => {
                println!("setup: mounting bpffs at /sys/fs/bpf (pins live there)");
                run_cmd(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
            }
        }
    }
    let still: Vec<String> = missing_after()?;
    if !still.is_empty() {
        bail!("setup finished but these are still missing: {}", still.join("; "));
    }
    println!("setup: done");
    Ok(())
}

fn missing_after() -> Result<Vec<String>> {
    Ok(missing()?.iter().map(Missing::describe).collect())
}

fn package_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn has_rustup() -> bool {
    succeeds(Command::new("rustup").arg("--version"))
}

fn rustup_link_present() -> Result<bool> {
    let list = output(Command::new("rustup").args(["toolchain", "list"]))
        .context("listing rustup toolchains")?;
    Ok(list.lines().any(|l| l.split_whitespace().next() == Some(BPF_TOOLCHAIN)))
}

fn bpf_linker_version() -> Option<String> {
    let o = Command::new("bpf-linker").arg("--version").output().ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

fn bpffs_mounted() -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .map(|m| m.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 2 && f[1] == "/sys/fs/bpf" && f[2] == "bpf"
        }))
        .unwrap_or(false)
}
