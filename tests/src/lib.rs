//! Shared helpers for the integration tests: loading the real eBPF object without pinning, and
//! running one program over one packet with BPF_PROG_TEST_RUN.

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    programs::{ProgramError, SchedClassifier, TestRun, TestRunOptions, Xdp},
};

/// TC verdicts as returned by the programs.
pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;
/// XDP verdicts.
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// Loads a program, again when the verifier was interrupted: it gives up with EAGAIN when a
/// signal is pending on the loading thread, which a test process starting commands can cause
/// (libbpf retries 5 times the same way).
fn retry_eagain(mut load: impl FnMut() -> Result<(), ProgramError>) -> Result<(), ProgramError> {
    let mut attempt = 0;
    loop {
        match load() {
            Err(ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && attempt < 4 =>
            {
                attempt += 1;
            }
            r => return r,
        }
    }
}

/// A private copy of podgate's programs and maps (nothing pinned, nothing attached): each test
/// gets its own maps, so tests can run in parallel.
pub struct Harness {
    pub ebpf: Ebpf,
}

/// The output of one test run.
#[derive(Debug, Clone)]
pub struct RunOutput {
    pub verdict: u32,
    pub packet: Vec<u8>,
}

impl Harness {
    pub fn new() -> Result<Self> {
        Self::with_max_entries(&[])
    }

    /// Like [`Harness::new`] with some maps made smaller (`(name, max_entries)`): iterating a
    /// sparse million-bucket hash map costs milliseconds, too much to do per packet.
    pub fn with_max_entries(sizes: &[(&str, u32)]) -> Result<Self> {
        let mut loader = EbpfLoader::new();
        for (name, n) in sizes {
            loader.map_max_entries(name, *n);
        }
        let ebpf = loader
            .load(podgate::EBPF_OBJECT)
            .context("loading podgate's eBPF object (are you root?)")?;
        let mut h = Self { ebpf };
        for name in ["pod_ingress", "pod_egress", "uplink_tc", "noop_tc"] {
            let p: &mut SchedClassifier = h
                .ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing"))?
                .try_into()?;
            retry_eagain(|| p.load()).with_context(|| format!("verifier rejected {name}"))?;
        }
        for name in ["uplink_xdp", "noop_xdp"] {
            let p: &mut Xdp = h
                .ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing"))?
                .try_into()?;
            retry_eagain(|| p.load()).with_context(|| format!("verifier rejected {name}"))?;
        }
        Ok(h)
    }

    /// Runs a TC program on `packet` (an Ethernet frame). `ifindex` becomes `skb->ifindex`, which
    /// is how the pod programs learn which veth they run on.
    pub fn run_tc(&mut self, prog: &str, packet: &[u8], ifindex: u32) -> Result<RunOutput> {
        let p: &mut SchedClassifier = self
            .ebpf
            .program_mut(prog)
            .with_context(|| format!("program {prog} missing"))?
            .try_into()?;
        let ctx = skb_ctx(ifindex);
        let mut out = vec![0u8; packet.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(packet);
        opts.data_out = Some(&mut out);
        opts.ctx_in = Some(&ctx);
        let r = p.test_run(opts).with_context(|| format!("BPF_PROG_TEST_RUN of {prog}"))?;
        out.truncate(r.data_size_out as usize);
        Ok(RunOutput { verdict: r.return_value, packet: out })
    }

    /// Runs an XDP program on `packet`. `ifindex` becomes the receiving interface; it must exist
    /// in the current network namespace (use 1, loopback, when it does not matter).
    pub fn run_xdp(&mut self, prog: &str, packet: &[u8], ifindex: u32) -> Result<RunOutput> {
        let p: &mut Xdp = self
            .ebpf
            .program_mut(prog)
            .with_context(|| format!("program {prog} missing"))?
            .try_into()?;
        let ctx = xdp_md_ctx(ifindex, packet.len());
        let mut out = vec![0u8; packet.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(packet);
        opts.data_out = Some(&mut out);
        opts.ctx_in = Some(&ctx);
        let r = p.test_run(opts).with_context(|| format!("BPF_PROG_TEST_RUN of {prog}"))?;
        out.truncate(r.data_size_out as usize);
        Ok(RunOutput { verdict: r.return_value, packet: out })
    }

    /// Takes every event waiting in the `events` ring buffer.
    pub fn events(&mut self) -> Vec<podgate_common::Event> {
        let map = self.ebpf.map_mut("events").expect("events map");
        let mut rb = aya::maps::RingBuf::try_from(map).expect("events is a ring buffer");
        let mut out = Vec::new();
        while let Some(item) = rb.next() {
            assert_eq!(item.len(), std::mem::size_of::<podgate_common::Event>());
            // SAFETY: the programs write whole `Event`s.
            out.push(unsafe { std::ptr::read_unaligned(item.as_ptr() as *const podgate_common::Event) });
        }
        out
    }

    /// Times `repeat` runs of a program over one packet in the kernel; returns ns per run.
    pub fn bench(&mut self, prog: &str, packet: &[u8], ifindex: u32, repeat: u32) -> Result<f64> {
        let mut out = vec![0u8; packet.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(packet);
        opts.data_out = Some(&mut out);
        opts.repeat = repeat;
        let r = match self.ebpf.program_mut(prog).with_context(|| format!("{prog} missing"))? {
            aya::programs::Program::SchedClassifier(p) => {
                let ctx = skb_ctx(ifindex);
                opts.ctx_in = Some(&ctx);
                p.test_run(opts)?
            }
            aya::programs::Program::Xdp(p) => {
                let ctx = xdp_md_ctx(ifindex, packet.len());
                opts.ctx_in = Some(&ctx);
                p.test_run(opts)?
            }
            _ => bail!("{prog} is neither TC nor XDP"),
        };
        Ok(r.duration.as_nanos() as f64)
    }
}

/// A `struct __sk_buff` for ctx_in: only the fields test_run accepts may be non-zero.
fn skb_ctx(ifindex: u32) -> Vec<u8> {
    // struct __sk_buff is 192 bytes; ifindex is at offset 40. ingress_ifindex (36) stays zero:
    // Linux 5.10 refuses a test run that sets it.
    let mut ctx = vec![0u8; 192];
    ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
}

/// A `struct xdp_md` for ctx_in: the kernel wants data_end equal to the packet length and the
/// ingress_ifindex (offset 12) of a device that exists in the caller's namespace.
fn xdp_md_ctx(ifindex: u32, len: usize) -> Vec<u8> {
    let mut ctx = vec![0u8; 24];
    ctx[4..8].copy_from_slice(&(len as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
}
/// The namespace lab for integration tests (tests/tests/lab_*.rs).
pub mod lab;
/// SNAT fixtures: a private namespace with the programs' interfaces, map setup, packet builders.
pub mod fixture;
/// The orphan-fragment slow path (`frag4_punt`) from the test side.
pub mod punt;
/// Per-packet and table-scale measurements (`podgate-bench micro`, `cargo xtask bench`).
pub mod bench;
pub mod bench_gc_ref;
