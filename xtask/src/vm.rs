//! `cargo xtask vm-test`: podgate's programs on the kernels EKS nodes run. Each kernel is a Debian
//! package unpacked into target/vm-cache and booted under QEMU (TCG: no KVM needed) with a small
//! initramfs that mounts the host's / read-only over 9p and runs vm/guest.sh chrooted into it, so
//! the host-built test binaries run unchanged. In the VM: every program through the verifier, the
//! test_run suites, and a namespace test with `podgate run`. The VM has no network device.

mod initramfs;
mod kernel;
mod qemu;
mod report;

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::util::{output, show, workspace_root};
use report::{GuestRun, Status};

pub use kernel::DEFAULT as DEFAULT_KERNELS;

/// Test binaries run by default: libtest executables of podgate-tests named like these (a name
/// matches `p` when it is `p` or starts with `p_`).
pub const DEFAULT_TEST_BINS: &[&str] = &["smoke", "snat", "sg"];

#[derive(clap::Args)]
pub struct Args {
    /// Kernel series to boot, repeatable (known: 6.1, 6.12, 5.10). Default: 6.1 and 6.12.
    #[arg(long = "kernel", value_name = "SERIES")]
    kernels: Vec<String>,
    /// podgate-tests integration test binaries to run, repeatable; `p` selects `p` and `p_*`.
    /// Default: smoke, snat, sg.
    #[arg(long = "test-bin", value_name = "NAME")]
    test_bins: Vec<String>,
    /// Hard limit for one VM, boot to power-off; QEMU is killed when it passes.
    #[arg(long, default_value_t = DEFAULT_TIMEOUT_SECS)]
    timeout_secs: u64,
    /// Guest memory.
    #[arg(long, default_value_t = 1536)]
    memory_mib: u32,
    /// Skip the namespace test.
    #[arg(long)]
    no_netns: bool,
}

/// The default limit for one VM. Measured for the default plan (verifier, smoke, every snat_*
/// and sg_* binary, namespace test) under TCG with one vCPU on the shared 2-core machine
/// (2026-12-02, other builds and lab tests running beside it): Linux 6.12 474 s, Linux 6.1
/// 1226 s boot to power-off, its slowest steps snat_egress 301 s and snat_frag 297 s. The old
/// 300 s cut both runs short. 1800 s is the slower run with half again as margin; each step may
/// take half of it (900 s), three times the slowest step.
pub const DEFAULT_TIMEOUT_SECS: u64 = 1800;

pub struct Options {
    pub kernels: Vec<String>,
    pub test_bins: Vec<String>,
    pub timeout: Duration,
    pub memory_mib: u32,
    pub netns: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            kernels: DEFAULT_KERNELS.iter().map(|s| s.to_string()).collect(),
            test_bins: DEFAULT_TEST_BINS.iter().map(|s| s.to_string()).collect(),
            timeout: Duration::from_secs(DEFAULT_TIMEOUT_SECS),
            memory_mib: 1536,
            netns: true,
        }
    }
}

/// What one kernel did.
pub struct KernelReport {
    pub series: String,
    pub package: String,
    pub elapsed: Duration,
    pub timed_out: bool,
    pub guest: GuestRun,
    pub log: PathBuf,
    /// The namespace test was in the plan (not `--no-netns`).
    pub netns_planned: bool,
    /// Everything this kernel is expected to do worked.
    pub ok: bool,
    /// Why not, one line each.
    pub problems: Vec<String>,
}

pub struct VmSummary {
    pub kernels: Vec<KernelReport>,
    pub elapsed: Duration,
}

impl VmSummary {
    pub fn ok(&self) -> bool {
        !self.kernels.is_empty() && self.kernels.iter().all(|k| k.ok)
    }
}

pub fn run(a: Args) -> Result<()> {
    let mut o = Options::default();
    if !a.kernels.is_empty() {
        o.kernels = a.kernels;
    }
    if !a.test_bins.is_empty() {
        o.test_bins = a.test_bins;
    }
    o.timeout = Duration::from_secs(a.timeout_secs);
    o.memory_mib = a.memory_mib;
    o.netns = !a.no_netns;
    let s = run_with(&o)?;
    check(&s)
}

/// Fails when any kernel did not do what it is expected to.
pub fn check(s: &VmSummary) -> Result<()> {
    if s.ok() {
        return Ok(());
    }
    let bad: Vec<&str> = s.kernels.iter().filter(|k| !k.ok).map(|k| k.series.as_str()).collect();
    bail!("vm-test failed on kernel(s) {}", bad.join(", "))
}

pub fn run_with(o: &Options) -> Result<VmSummary> {
    let start = Instant::now();
    preflight()?;
    let specs = o.kernels.iter().map(|k| kernel::spec(k)).collect::<Result<Vec<_>>>()?;
    let root = workspace_root();
    let cache = root.join("target/vm-cache");
    fs::create_dir_all(&cache)?;

    println!("vm-test: building the test binaries, the verifier loader and podgate");
    let bins = build_artifacts(&root)?;
    let selected: Vec<&(String, PathBuf)> =
        bins.tests.iter().filter(|(n, _)| o.test_bins.iter().any(|p| selects(p, n))).collect();
    for p in &o.test_bins {
        if !bins.tests.iter().any(|(n, _)| selects(p, n)) {
            println!("vm-test: note: no podgate-tests binary matches {p:?} (not written yet?)");
        }
    }
    if selected.is_empty() {
        bail!("no podgate-tests binary matches {:?}", o.test_bins);
    }
    let mut plan = format!("verify {}\n", bins.verify.display());
    for (n, p) in &selected {
        writeln!(plan, "test {n} {}", p.display())?;
    }
    if o.netns {
        writeln!(plan, "netns {} {}", bins.podgate.display(), root.join("vm").display())?;
    }
    let plan_path = cache.join("plan.txt");
    fs::write(&plan_path, &plan)?;
    println!(
        "vm-test: plan: verifier loader, {} test binaries ({}){}",
        selected.len(),
        selected.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", "),
        if o.netns { ", namespace test" } else { "" }
    );

    let mut reports = Vec::new();
    for spec in specs {
        println!("vm-test: kernel {}: fetching", spec.name);
        let k = kernel::fetch(spec, &cache)?;
        let modules = kernel::modules(&k, kernel::WANTED_MODULES)?;
        let initrd = cache.join(format!("initramfs-{}.cpio", k.release));
        initramfs::build(&root.join("vm/init"), &modules, &initrd)?;
        println!(
            "vm-test: kernel {}: booting {} ({} modules in the initramfs: {})",
            spec.name,
            k.package,
            modules.len(),
            modules.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(" ")
        );
        let log = cache.join(format!("console-{}.log", spec.name));
        let con = qemu::run(&qemu::Boot {
            kernel: &k.vmlinuz,
            initrd: &initrd,
            // One step (a test binary) may take half the VM's budget, so a hung binary still
            // leaves time for the others and for a report.
            append: format!(
                "console=ttyS0 panic=-1 loglevel=4 pgvm_script={} pgvm_plan={} pgvm_step_timeout={}",
                root.join("vm/guest.sh").display(),
                plan_path.display(),
                (o.timeout.as_secs() / 2).max(30)
            ),
            memory_mib: o.memory_mib,
            timeout: o.timeout,
            log: log.clone(),
        })?;
        let guest = report::parse(&con.lines);
        let (ok, problems) = judge(&guest, con.timed_out, &selected);
        let r = KernelReport {
            series: spec.name.to_string(),
            package: k.package.clone(),
            elapsed: con.elapsed,
            timed_out: con.timed_out,
            guest,
            log,
            netns_planned: o.netns,
            ok,
            problems,
        };
        println!(
            "vm-test: kernel {}: {} in {:.0} s (console log {})",
            spec.name,
            if r.ok { "ok" } else { "FAILED" },
            r.elapsed.as_secs_f64(),
            r.log.display()
        );
        reports.push(r);
    }
    let s = VmSummary { kernels: reports, elapsed: start.elapsed() };
    print_table(&s);
    Ok(s)
}

fn preflight() -> Result<()> {
    if unsafe { libc::geteuid() } != 0 {
        bail!("vm-test shares / with the VM over 9p and reads kernel packages as root: run it as root");
    }
    for (tool, pkg) in [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("apt-get", "apt"),
        ("dpkg-deb", "dpkg"),
        ("xz", "xz-utils"),
    ] {
        if !crate::util::succeeds(Command::new(tool).arg("--version")) {
            bail!("vm-test needs {tool} (Debian package {pkg}; `cargo xtask setup` installs it)");
        }
    }
    if !Path::new("/bin/busybox").exists() {
        bail!("vm-test needs /bin/busybox (Debian package busybox-static; `cargo xtask setup`)");
    }
    Ok(())
}

/// `smoke` selects `smoke` and `smoke_*`, not `smokey`.
fn selects(pattern: &str, name: &str) -> bool {
    name == pattern || name.strip_prefix(pattern).is_some_and(|r| r.starts_with('_'))
}

struct Artifacts {
    /// (target name, executable) of every podgate-tests integration test binary.
    tests: Vec<(String, PathBuf)>,
    verify: PathBuf,
    podgate: PathBuf,
}

fn build_artifacts(root: &Path) -> Result<Artifacts> {
    let mut tests = Vec::new();
    let mut verify = None;
    let mut podgate = None;
    let runs: [&[&str]; 2] = [
        &["test", "-p", "podgate-tests", "--tests", "--no-run"],
        &["build", "-p", "podgate-tests", "--example", "vm_verify", "-p", "podgate", "--bin", "podgate"],
    ];
    for args in runs {
        let mut cmd = Command::new("cargo");
        cmd.current_dir(root).args(args).arg("--message-format=json-render-diagnostics");
        println!("vm-test: {}", show(&cmd));
        let out = output(&mut cmd)?;
        for line in out.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
            if v["reason"] != "compiler-artifact" {
                continue;
            }
            let Some(exe) = v["executable"].as_str() else { continue };
            let name = v["target"]["name"].as_str().unwrap_or_default().to_string();
            let kinds = v["target"]["kind"].to_string();
            let is_test = v["profile"]["test"].as_bool().unwrap_or(false);
            if is_test && kinds.contains("\"test\"") {
                tests.push((name, PathBuf::from(exe)));
            } else if name == "vm_verify" {
                verify = Some(PathBuf::from(exe));
            } else if name == "podgate" && kinds.contains("\"bin\"") {
                podgate = Some(PathBuf::from(exe));
            }
        }
    }
    tests.sort();
    Ok(Artifacts {
        tests,
        verify: verify.context("cargo built no vm_verify example")?,
        podgate: podgate.context("cargo built no podgate binary")?,
    })
}

/// Kernels without tcx (before 6.6) cannot take podgate's TC attach: that is reported in the
/// table, and does not fail the kernel as long as the same programs work when attached through
/// netlink TC (so the programs are fine there; podgate's attach is what the kernel lacks).
fn judge(g: &GuestRun, timed_out: bool, selected: &[&(String, PathBuf)]) -> (bool, Vec<String>) {
    let mut p = Vec::new();
    if timed_out {
        p.push("timed out (QEMU killed)".to_string());
    }
    if g.booted_release.is_none() {
        p.push("never reached the initramfs".into());
    }
    p.extend(g.init_errors.iter().cloned());
    if !g.finished && !timed_out {
        p.push("guest did not finish its plan".into());
    }
    match g.verify_status() {
        Status::Pass => {}
        s => p.push(format!("verifier: {}", s.word())),
    }
    for (n, _) in selected {
        match g.tests.iter().find(|t| &t.name == n) {
            None => p.push(format!("{n}: not run")),
            Some(t) if t.status() != Status::Pass => p.push(format!("{n}: {}", t.status().word())),
            Some(_) => {}
        }
    }
    let netns_ran = g.netns.rc.is_some() || !g.netns.lines.is_empty();
    if netns_ran && g.netns_status() != Status::Pass && !g.netns_only_lacks_tcx() {
        p.push(format!("namespace test: {}", g.netns_status().word()));
    }
    (p.is_empty(), p)
}

fn print_table(s: &VmSummary) {
    println!();
    let (k, r, v, t) = ("KERNEL", "RELEASE", "VERIFIER", "TEST BINARIES");
    println!("{k:<6} {r:<34} {v:<9} {t:<30} NAMESPACE TEST");
    for k in &s.kernels {
        let g = &k.guest;
        let tests: Vec<String> = g
            .tests
            .iter()
            .map(|t| {
                let n = &t.tally;
                format!("{} {} ({}/{})", t.name, t.status().word(), n.passed, n.passed + n.failed)
            })
            .collect();
        let netns = match (g.netns_status(), g.netns.tcx_present) {
            (Status::Pass, tcx) => format!(
                "pass (podgate run, {}; ping6+ping4 counted)",
                if tcx == Some(false) { "netlink TC" } else { "tcx" }
            ),
            (Status::Fail, Some(false)) if g.netns.tc_attach_failed => format!(
                "podgate attach FAIL: no tcx, needs Linux >= 6.6; netlink-TC attach of the programs: {}",
                match g.netns.legacy_tc {
                    Some(true) => "pass",
                    Some(false) => "FAIL",
                    None => "NOT RUN",
                }
            ),
            (Status::Missing, _) if !k.netns_planned => "skipped (--no-netns)".to_string(),
            (st, _) => st.word().to_string(),
        };
        println!(
            "{:<6} {:<34} {:<9} {:<30} {}",
            k.series,
            g.booted_release.as_deref().unwrap_or("(did not boot)"),
            g.verify_status().word(),
            if tests.is_empty() { "(none ran)".to_string() } else { tests.join(", ") },
            netns
        );
    }
    println!();
    for k in &s.kernels {
        let g = &k.guest;
        for (prog, ok) in &g.verify {
            if !ok {
                println!("{}: verifier rejected {prog}:", k.series);
                for l in g.vlog.get(prog).into_iter().flatten() {
                    println!("    {l}");
                }
            }
        }
        for t in g.tests.iter().filter(|t| t.status() != Status::Pass) {
            println!(
                "{}: {} {} ({}); failing tests: {}",
                k.series,
                t.name,
                t.status().word(),
                match t.rc {
                    None => "did not finish".to_string(),
                    Some(124) => "killed by the step timeout".to_string(),
                    Some(rc) => format!("exit {rc}"),
                },
                if t.failures.is_empty() { "-".into() } else { t.failures.join(", ") }
            );
        }
        for l in &g.netns.lines {
            println!("{}: netns: {l}", k.series);
        }
        println!(
            "{}: {} ({}) {} in {:.0} s{}{}",
            k.series,
            k.package,
            if k.timed_out { "timed out" } else { "ran to power-off" },
            if k.ok { "ok" } else { "FAILED" },
            k.elapsed.as_secs_f64(),
            if k.problems.is_empty() { String::new() } else { format!(": {}", k.problems.join("; ")) },
            if k.ok { String::new() } else { format!(" (log: {})", k.log.display()) },
        );
    }
    println!("vm-test: total {:.0} s", s.elapsed.as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::selects;

    #[test]
    fn test_bin_patterns() {
        assert!(selects("smoke", "smoke"));
        assert!(selects("snat", "snat_tcp"));
        assert!(!selects("sg", "sgx"));
        assert!(!selects("sg", "msg"));
    }
}
