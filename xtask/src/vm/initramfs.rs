//! The VM's initramfs: busybox, vm/init, and the kernel's modules in load order, written as an
//! uncompressed newc cpio archive (the kernel unpacks that without any decompressor).

use std::{fs, path::Path};

use anyhow::{Context as _, Result};

use super::kernel::Module;

const BUSYBOX: &str = "/bin/busybox";

/// Builds the initramfs for one kernel at `out` from vm/init and `modules`.
pub fn build(init: &Path, modules: &[Module], out: &Path) -> Result<()> {
    let mut a = Cpio::default();
    for d in ["bin", "dev", "proc", "sys", "host", "modules"] {
        a.dir(d);
    }
    let busybox = fs::read(BUSYBOX)
        .with_context(|| format!("reading {BUSYBOX} (Debian package busybox-static)"))?;
    a.file("bin/busybox", 0o755, &busybox);
    a.file("init", 0o755, &fs::read(init).with_context(|| format!("reading {}", init.display()))?);
    let mut order = String::new();
    for (i, m) in modules.iter().enumerate() {
        let file = format!("{i:02}-{}.ko", m.name);
        a.file(&format!("modules/{file}"), 0o644, &m.object);
        order.push_str(&file);
        order.push('\n');
    }
    a.file("modules/order", 0o644, order.as_bytes());
    // /dev/console must exist before devtmpfs is mounted, or init starts without stdio.
    a.char_dev("dev/console", 0o600, 5, 1);
    fs::write(out, a.finish()).with_context(|| format!("writing {}", out.display()))
}

/// A newc ("070701") cpio writer: just what an initramfs needs.
#[derive(Default)]
struct Cpio {
    buf: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040_000 | 0o755, 2, (0, 0), &[]);
    }

    fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100_000 | perm, 1, (0, 0), data);
    }

    fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) {
        self.entry(name, 0o020_000 | perm, 1, (major, minor), &[]);
    }

    fn entry(&mut self, name: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime: fixed, so the same inputs give the same archive
            data.len() as u32,
            0, // dev major
            0, // dev minor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, 1, (0, 0), &[]);
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::Cpio;

    /// The archive must read back with the system's cpio, names and contents intact.
    #[test]
    fn newc_archive_reads_back_with_cpio() {
        let mut a = Cpio::default();
        a.dir("bin");
        a.file("bin/hello", 0o755, b"hello world\n");
        a.file("odd", 0o644, b"abc");
        let bytes = a.finish();
        assert_eq!(bytes.len() % 4, 0);
        let Ok(mut child) = std::process::Command::new("cpio")
            .args(["-t", "-v"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
        else {
            panic!("cpio (Debian package cpio) is needed to check the archive format");
        };
        use std::io::Write as _;
        child.stdin.take().unwrap().write_all(&bytes).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let listing = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = listing.lines().collect();
        assert_eq!(lines.len(), 3, "{listing}");
        assert!(lines[0].starts_with("drwxr-xr-x") && lines[0].ends_with(" bin"), "{listing}");
        assert!(lines[1].starts_with("-rwxr-xr-x") && lines[1].contains(" 12 ") && lines[1].ends_with(" bin/hello"), "{listing}");
        assert!(lines[2].starts_with("-rw-r--r--") && lines[2].ends_with(" odd"), "{listing}");
    }
}
