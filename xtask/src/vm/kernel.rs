//! Debian kernel packages: which package a kernel series is, downloading and unpacking it into the
//! cache (never installing it on the host), and the modules the VM needs, in load order.

use std::{
    collections::{BTreeMap, HashSet},
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::util::{output, run_cmd};

/// A kernel series vm-test knows how to fetch.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// What `--kernel` takes.
    pub name: &'static str,
    /// The Debian meta package whose `Depends:` names the current image package.
    pub meta: &'static str,
    /// A Debian release other than the host's: apt gets a private sources list and state under
    /// the cache for it, leaving the host's apt configuration alone.
    pub foreign_suite: Option<&'static str>,
}

/// bookworm's own 6.1 LTS and the 6.12 bookworm-security carries: the kernels EKS nodes run; and
/// bullseye's 5.10, the Amazon Linux 2 generation.
pub const KNOWN: &[Spec] = &[
    Spec { name: "6.1", meta: "linux-image-amd64", foreign_suite: None },
    Spec { name: "6.12", meta: "linux-image-6.12-amd64", foreign_suite: None },
    Spec { name: "5.10", meta: "linux-image-amd64", foreign_suite: Some("bullseye") },
];

pub const DEFAULT: &[&str] = &["6.1", "6.12"];

pub fn spec(name: &str) -> Result<Spec> {
    KNOWN.iter().copied().find(|s| s.name == name).with_context(|| {
        let known: Vec<&str> = KNOWN.iter().map(|s| s.name).collect();
        format!("unknown kernel {name:?}; vm-test knows {}", known.join(", "))
    })
}

/// Modules the VM loads when the kernel has them as modules: a 9p root over virtio-pci; veth, and
/// clsact + cls_bpf for the namespace test's netlink-TC attach. Dependencies are added from each
/// module's own `depends=`.
pub const WANTED_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "veth", "sch_ingress", "cls_bpf"];

/// An unpacked kernel package in the cache.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub package: String,
    pub release: String,
    pub vmlinuz: PathBuf,
    pub modules_dir: PathBuf,
}

/// Resolves, downloads (once) and unpacks (once) the kernel of `spec` under `cache`.
pub fn fetch(spec: Spec, cache: &Path) -> Result<Kernel> {
    let remembered = cache.join(format!("kernel-{}.package", spec.name));
    let apt = AptConfig::new(spec, cache)?;
    let package = match resolve_package(&apt, spec.meta) {
        Ok(p) => {
            fs::write(&remembered, &p)?;
            p
        }
        // Offline, the last resolution still names a package we already unpacked.
        Err(e) => match fs::read_to_string(&remembered) {
            Ok(p) => {
                println!("vm-test: {e:#}; using the cached {}", p.trim());
                p.trim().to_string()
            }
            Err(_) => return Err(e),
        },
    };
    let root = cache.join("kernels").join(&package);
    let stamp = root.join(".unpacked");
    if !stamp.exists() {
        let debs = cache.join("debs");
        fs::create_dir_all(&debs)?;
        let deb = match find_deb(&debs, &package)? {
            Some(d) => d,
            None => {
                println!("vm-test: downloading {package}");
                // apt's _apt sandbox user cannot write into the build tree; the download only
                // writes the .deb, it installs nothing.
                run_cmd(
                    Command::new("apt-get")
                        .current_dir(&debs)
                        .args(&apt.options)
                        .args(["-q", "-o", "APT::Sandbox::User=root", "download", &package]),
                )?;
                find_deb(&debs, &package)?
                    .with_context(|| format!("apt-get download {package} left no .deb in {}", debs.display()))?
            }
        };
        println!("vm-test: unpacking {}", deb.display());
        if root.exists() {
            fs::remove_dir_all(&root)?;
        }
        fs::create_dir_all(&root)?;
        run_cmd(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
        fs::write(&stamp, "")?;
    }
    let release = only_entry(&root.join("lib/modules"))?;
    let vmlinuz = root.join("boot").join(format!("vmlinuz-{release}"));
    if !vmlinuz.exists() {
        bail!("{} has no {}", package, vmlinuz.display());
    }
    Ok(Kernel {
        package,
        modules_dir: root.join("lib/modules").join(&release),
        release,
        vmlinuz,
    })
}

/// `-o` options that point apt at a private sources list and state for a foreign suite.
struct AptConfig {
    options: Vec<String>,
}

impl AptConfig {
    fn new(spec: Spec, cache: &Path) -> Result<Self> {
        let Some(suite) = spec.foreign_suite else {
            return Ok(Self { options: Vec::new() });
        };
        let dir = cache.join(format!("apt-{suite}"));
        fs::create_dir_all(dir.join("lists/partial"))?;
        fs::create_dir_all(dir.join("cache/archives/partial"))?;
        let sources = dir.join("sources.list");
        let keyring = "/usr/share/keyrings/debian-archive-keyring.gpg";
        fs::write(
            &sources,
            format!(
                "deb [signed-by={keyring}] http://deb.debian.org/debian {suite} main\n\
                 deb [signed-by={keyring}] http://deb.debian.org/debian-security {suite}-security main\n"
            ),
        )?;
        let options = vec![
            "-o".into(),
            format!("Dir::Etc::SourceList={}", sources.display()),
            "-o".into(),
            "Dir::Etc::SourceParts=/nonexistent".into(),
            "-o".into(),
            format!("Dir::State::Lists={}", dir.join("lists").display()),
            "-o".into(),
            format!("Dir::Cache={}", dir.join("cache").display()),
        ];
        let has_lists = fs::read_dir(dir.join("lists"))?
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().ends_with("_Packages"));
        if !has_lists {
            println!("vm-test: fetching the {suite} package index (private apt state in {})", dir.display());
            // Failure is not fatal here: an unpacked kernel from an earlier run may be cached.
            let _ = run_cmd(
                Command::new("apt-get")
                    .args(&options)
                    .args(["-q", "-o", "APT::Sandbox::User=root", "update"]),
            );
        }
        Ok(Self { options })
    }
}

/// `linux-image-amd64` → `linux-image-6.1.0-56-amd64` (the candidate apt would install).
fn resolve_package(apt: &AptConfig, meta: &str) -> Result<String> {
    let out = output(
        Command::new("apt-cache")
            .args(&apt.options)
            .args(["depends", "--no-recommends", "--no-suggests", meta]),
    )
        .with_context(|| format!("asking apt which package {meta} is (run `apt-get update`?)"))?;
    parse_depends(&out).with_context(|| format!("`apt-cache depends {meta}` names no linux-image package"))
}

fn parse_depends(out: &str) -> Option<String> {
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-"))
        .map(str::to_string)
}

fn find_deb(dir: &Path, package: &str) -> Result<Option<PathBuf>> {
    let prefix = format!("{package}_");
    for e in fs::read_dir(dir)? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) && name.ends_with(".deb") {
            return Ok(Some(dir.join(name)));
        }
    }
    Ok(None)
}

fn only_entry(dir: &Path) -> Result<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    match names.len() {
        1 => Ok(names.remove(0)),
        n => bail!("{} holds {n} entries, expected one kernel release", dir.display()),
    }
}

/// A module ready for the initramfs: its name and its uncompressed object.
pub struct Module {
    pub name: String,
    pub object: Vec<u8>,
}

/// The modules `wanted` needs that the kernel does not have built in, dependencies first.
pub fn modules(kernel: &Kernel, wanted: &[&str]) -> Result<Vec<Module>> {
    let builtin: HashSet<String> = fs::read_to_string(kernel.modules_dir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| module_name(l.rsplit('/').next()?))
        .collect();
    let mut files = BTreeMap::new();
    index_modules(&kernel.modules_dir.join("kernel"), &mut files)?;
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for w in wanted {
        add_module(&canonical(w), &builtin, &files, &mut seen, &mut out)?;
    }
    Ok(out)
}

fn add_module(
    name: &str,
    builtin: &HashSet<String>,
    files: &BTreeMap<String, PathBuf>,
    seen: &mut HashSet<String>,
    out: &mut Vec<Module>,
) -> Result<()> {
    if builtin.contains(name) || !seen.insert(name.to_string()) {
        return Ok(());
    }
    let path = files
        .get(name)
        .with_context(|| format!("module {name} is neither built in nor shipped"))?;
    let object = read_module(path)?;
    for dep in depends(&object) {
        add_module(&dep, builtin, files, seen, out)?;
    }
    out.push(Module { name: name.to_string(), object });
    Ok(())
}

fn index_modules(dir: &Path, files: &mut BTreeMap<String, PathBuf>) -> Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        let path = e.path();
        if e.file_type()?.is_dir() {
            index_modules(&path, files)?;
        } else if let Some(n) = module_name(&e.file_name().to_string_lossy()) {
            files.insert(n, path);
        }
    }
    Ok(())
}

/// `9pnet_virtio.ko.xz` → `9pnet_virtio`; the kernel treats `-` and `_` alike.
fn module_name(file: &str) -> Option<String> {
    let stem = file
        .strip_suffix(".ko")
        .or_else(|| file.strip_suffix(".ko.xz"))
        .or_else(|| file.strip_suffix(".ko.zst"))
        .or_else(|| file.strip_suffix(".ko.gz"))?;
    Some(canonical(stem))
}

fn canonical(name: &str) -> String {
    name.replace('-', "_")
}

/// busybox insmod hands the file to init_module as is, so compressed modules are unpacked here.
fn read_module(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        Some("xz")
    } else if name.ends_with(".zst") {
        Some("zstd")
    } else if name.ends_with(".gz") {
        Some("gzip")
    } else {
        None
    };
    match tool {
        None => fs::read(path).with_context(|| format!("reading {}", path.display())),
        Some(t) => {
            let out = Command::new(t)
                .arg("-dc")
                .arg(path)
                .output()
                .with_context(|| format!("running {t} -dc {}", path.display()))?;
            if !out.status.success() {
                bail!("{t} -dc {} failed: {}", path.display(), out.status);
            }
            Ok(out.stdout)
        }
    }
}

/// The `depends=a,b` entry of a module's .modinfo section (NUL-separated key=value strings).
fn depends(object: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(at) = object.windows(KEY.len()).position(|w| w == KEY) else {
        return Vec::new();
    };
    let rest = &object[at + KEY.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .filter(|s| !s.is_empty())
        .map(canonical)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_depends_from_modinfo() {
        let obj = b"\x7fELF...\0license=GPL\0depends=9pnet,virtio_ring,virtio-foo\0intree=Y\0";
        assert_eq!(depends(obj), ["9pnet", "virtio_ring", "virtio_foo"]);
        assert!(depends(b"\0depends=\0name=x\0").is_empty());
        assert!(depends(b"no modinfo here").is_empty());
    }

    #[test]
    fn module_names() {
        assert_eq!(module_name("9pnet_virtio.ko.xz").as_deref(), Some("9pnet_virtio"));
        assert_eq!(module_name("sch-ingress.ko").as_deref(), Some("sch_ingress"));
        assert_eq!(module_name("modules.order"), None);
    }

    #[test]
    fn picks_the_image_package_from_apt_cache_depends() {
        let out = "linux-image-amd64\n  Depends: linux-image-6.1.0-56-amd64\n";
        assert_eq!(parse_depends(out).as_deref(), Some("linux-image-6.1.0-56-amd64"));
        assert_eq!(parse_depends("linux-image-amd64\n"), None);
    }
}
