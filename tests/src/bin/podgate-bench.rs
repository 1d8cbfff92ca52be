//! The benchmark binary `cargo xtask bench` builds and drives:
//! - `micro [--quick] [--gc-only] [--out FILE]`: per-packet and scale measurements with BPF_PROG_TEST_RUN
//!   (podgate_tests::bench), JSON to FILE;
//! - `tcp-server --port P --secs S`: a minimal HTTP/1.0 server that closes first, so the
//!   server keeps TIME_WAIT like a real web server does (the churn DESIGN.md §4 describes);
//! - `tcp-client --addr A:P --secs S --threads T`: opens, requests, reads, closes, as fast as it
//!   can for S seconds; JSON with successes, failures and slow (SYN-retried) connects.
//!
//! The lab parts run inside lab namespaces (xtask starts them with nsenter); everything is
//! bounded in time.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use podgate_tests::bench::{self, MicroOpts};

fn flag(args: &[String], name: &str) -> bool {
    args.iter().any(|a| a == name)
}

fn value<T: std::str::FromStr>(args: &[String], name: &str) -> Result<Option<T>>
where
    T::Err: std::fmt::Display,
{
    match args.iter().position(|a| a == name) {
        None => Ok(None),
        Some(i) => {
            let v = args.get(i + 1).with_context(|| format!("{name} needs a value"))?;
            v.parse().map(Some).map_err(|e| anyhow::anyhow!("{name} {v}: {e}"))
        }
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(verb) = args.first() else {
        bail!("usage: podgate-bench micro|tcp-server|tcp-client ...");
    };
    let rest = &args[1..];
    match verb.as_str() {
        "micro" => micro(rest),
        "tcp-server" => tcp_server(rest),
        "tcp-client" => tcp_client(rest),
        v => bail!("unknown verb {v:?}"),
    }
}

fn micro(args: &[String]) -> Result<()> {
    let mut o = if flag(args, "--quick") { MicroOpts::quick() } else { MicroOpts::full() };
    if let Some(r) = value(args, "--repeat")? {
        o.repeat = r;
    }
    let gc_only = flag(args, "--gc-only");
    if gc_only {
        // The 1M scale point and its GC passes (batched and per-key reference) alone.
        o.scale_ninety = false;
        o.scale_sizes = vec![1_000_000];
    }
    if flag(args, "--no-scale") {
        o.scale_sizes.clear();
    }
    let out: PathBuf = value::<String>(args, "--out")?.map(PathBuf::from).unwrap_or_else(|| bench::default_out(&std::env::current_dir().unwrap_or_default()));
    let r = if gc_only { bench::scale_only(&o)? } else { bench::micro(&o)? };
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&r)?)?;
    for c in &r.cases {
        eprintln!("{:<50} {:>8.1} ns  floor {:>6.1} ns  ×{:.2}", c.name, c.ns, c.floor_ns, c.ratio);
    }
    eprintln!("micro: results in {}", out.display());
    Ok(())
}

/// Accept loop threads: read the request head, answer, close first. The process exits after
/// `--secs` whatever it is doing.
fn tcp_server(args: &[String]) -> Result<()> {
    let port: u16 = value(args, "--port")?.unwrap_or(8080);
    let secs: u64 = value(args, "--secs")?.context("--secs is required (the server is bounded)")?;
    let threads: usize = value(args, "--threads")?.unwrap_or(2);
    // [::] with V6ONLY off (Linux default) takes IPv4 too.
    let l = Arc::new(TcpListener::bind(("::", port)).with_context(|| format!("bind [::]:{port}"))?);
    let served = Arc::new(AtomicU64::new(0));
    for _ in 0..threads {
        let (l, served) = (l.clone(), served.clone());
        thread::spawn(move || {
            let mut buf = [0u8; 1024];
            loop {
                let Ok((mut s, _)) = l.accept() else { continue };
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut got = 0;
                while got < buf.len() {
                    match s.read(&mut buf[got..]) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            got += n;
                            if buf[..got].windows(4).any(|w| w == b"\r\n\r\n") {
                                break;
                            }
                        }
                    }
                }
                let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n");
                served.fetch_add(1, Ordering::Relaxed);
                // Dropping closes first: TIME_WAIT stays on this side.
            }
        });
    }
    thread::sleep(Duration::from_secs(secs));
    println!("{{\"served\": {}}}", served.load(Ordering::Relaxed));
    std::process::exit(0);
}

fn tcp_client(args: &[String]) -> Result<()> {
    let addr: SocketAddr = value(args, "--addr")?.context("--addr")?;
    let secs: f64 = value(args, "--secs")?.unwrap_or(5.0);
    let threads: usize = value(args, "--threads")?.unwrap_or(2);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed, slow) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let start = Instant::now();
    let hs: Vec<_> = (0..threads)
        .map(|_| {
            let (stop, ok, failed, slow) = (stop.clone(), ok.clone(), failed.clone(), slow.clone());
            thread::spawn(move || {
                let mut buf = [0u8; 256];
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let r = (|| -> std::io::Result<()> {
                        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
                        if t.elapsed() > Duration::from_millis(500) {
                            slow.fetch_add(1, Ordering::Relaxed);
                        }
                        s.set_read_timeout(Some(Duration::from_secs(3)))?;
                        s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
                        let mut got = 0;
                        loop {
                            match s.read(&mut buf)? {
                                0 => break,
                                n => got += n,
                            }
                        }
                        if got == 0 {
                            return Err(std::io::Error::other("empty answer"));
                        }
                        Ok(())
                    })();
                    match r {
                        Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    // Connections in flight finish within their 3 s timeouts and are counted.
    for h in hs {
        let _ = h.join();
    }
    let el = start.elapsed().as_secs_f64();
    let ok = ok.load(Ordering::Relaxed);
    println!(
        "{{\"ok\": {ok}, \"failed\": {}, \"slow\": {}, \"seconds\": {el:.3}, \"per_second\": {:.1}}}",
        failed.load(Ordering::Relaxed),
        slow.load(Ordering::Relaxed),
        ok as f64 / el
    );
    Ok(())
}
