//! Traffic from pods to the lab's endpoints, each check bounded in time and count, and what
//! came of it (including the source address the endpoint reports having seen).

use std::{fs, net::IpAddr, thread, time::Duration};

use crate::{
    Family, HTTP_PORT, IPERF_PORT, Lab, Pod, UDP_ECHO_PORT, ns_command, output_with_deadline,
    process, state,
};

/// One request from a pod to the internet endpoint and what came of it.
#[derive(Debug, Clone)]
pub struct Probe {
    pub pod: String,
    pub family: Family,
    pub target: IpAddr,
    /// `http`, `udp`, `ping`, `upload` or `iperf3`.
    pub kind: &'static str,
    pub ok: bool,
    /// The source address the endpoint reported seeing (HTTP and UDP echo answer with it).
    pub seen: Option<IpAddr>,
    /// The tool's output, trimmed, for a human.
    pub detail: String,
}

impl Lab {
    /// Runs `f` for every pod at once (one thread per pod, as a node sees its pods), returning
    /// the results in pod order.
    pub fn on_all_pods<T: Send>(&self, f: impl Fn(&Pod) -> T + Sync) -> Vec<T> {
        let f = &f;
        thread::scope(|s| {
            let handles: Vec<_> = self
                .pods
                .iter()
                .map(|pod| s.spawn(move || f(pod)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("pod thread panicked"))
                .collect()
        })
    }

    /// HTTP GET from pod `i` to the internet endpoint; the body names the source it saw.
    pub fn http(&self, i: usize, fam: Family) -> Probe {
        self.http_to(i, fam.endpoint())
    }

    /// One UDP datagram from pod `i` to the internet's echo service, which names the source.
    pub fn udp_echo(&self, i: usize, fam: Family) -> Probe {
        self.udp_echo_to(i, fam.endpoint())
    }

    /// Three echo requests from pod `i` to the internet endpoint.
    pub fn ping(&self, i: usize, fam: Family) -> Probe {
        self.ping_to(i, fam.endpoint())
    }

    /// HTTP GET from pod `i` to `addr` (either endpoint).
    pub fn http_to(&self, i: usize, addr: IpAddr) -> Probe {
        let url = format!("http://{}/", host_port(addr, HTTP_PORT));
        let argv = [
            "curl",
            "-sS",
            "--connect-timeout",
            "2",
            "--max-time",
            "3",
            &url,
        ];
        self.probe(i, addr, "http", &argv, None, Duration::from_secs(5))
    }

    /// One UDP datagram from pod `i` to the echo service at `addr`.
    pub fn udp_echo_to(&self, i: usize, addr: IpAddr) -> Probe {
        let family = if addr.is_ipv4() { "UDP4" } else { "UDP6" };
        let target = format!("{family}:{}", host_port(addr, UDP_ECHO_PORT));
        // -t: how long to wait for the answer after our datagram went out.
        let argv = ["socat", "-t", "1", "-T", "3", "-", &target];
        self.probe(
            i,
            addr,
            "udp",
            &argv,
            Some(b"podgate-lab\n"),
            Duration::from_secs(5),
        )
    }

    /// Three echo requests from pod `i` to `addr` (1 s deadline each). Replies can only come
    /// back if the endpoint saw a source it can route to.
    pub fn ping_to(&self, i: usize, addr: IpAddr) -> Probe {
        let a = addr.to_string();
        let argv = ["ping", "-q", "-n", "-c", "3", "-i", "0.2", "-W", "1", &a];
        self.probe(i, addr, "ping", &argv, None, Duration::from_secs(6))
    }

    /// HTTP POST of `bytes` zero bytes from pod `i` to `addr` (20 s at most): large segments
    /// from the pod, so with [`Lab::set_path_mtu`] it needs PMTU discovery to finish. The
    /// endpoint answers with the source it saw and the byte count it received.
    pub fn upload(&self, i: usize, addr: IpAddr, bytes: u64) -> Probe {
        self.upload_within(i, addr, bytes, Duration::from_secs(20))
    }

    /// Like [`Lab::upload`], giving up after `limit`.
    pub fn upload_within(&self, i: usize, addr: IpAddr, bytes: u64, limit: Duration) -> Probe {
        let url = format!("http://{}/upload", host_port(addr, HTTP_PORT));
        let secs = limit.as_secs().max(1);
        let script = format!(
            "head -c {bytes} /dev/zero | curl -sS --connect-timeout 2 --max-time {secs} \
             -H 'Content-Type: application/octet-stream' --data-binary @- {url}"
        );
        let mut p = self.probe(
            i,
            addr,
            "upload",
            &["sh", "-c", &script],
            None,
            limit + Duration::from_secs(5),
        );
        let want = format!(" bytes {bytes}");
        p.ok = p.ok
            && p.detail
                .lines()
                .any(|l| l.starts_with("seen ") && l.ends_with(&want));
        p
    }

    /// An iperf3 TCP run of `seconds` from pod `i` to the internet's iperf3 server in `fam`
    /// (bounded: `seconds` + 15 s). `detail` holds iperf3's report.
    pub fn iperf3(&self, i: usize, fam: Family, seconds: u32) -> Probe {
        let (server, t) = (fam.endpoint().to_string(), seconds.to_string());
        let port = IPERF_PORT.to_string();
        let argv = [
            "iperf3",
            "-c",
            &server,
            "-p",
            &port,
            "-t",
            &t,
            "--connect-timeout",
            "2000",
        ];
        let limit = Duration::from_secs(u64::from(seconds) + 15);
        let mut p = self.probe(i, fam.endpoint(), "iperf3", &argv, None, limit);
        p.ok = p.ok && p.detail.contains("receiver");
        p
    }

    fn probe(
        &self,
        i: usize,
        addr: IpAddr,
        kind: &'static str,
        argv: &[&str],
        stdin: Option<&[u8]>,
        limit: Duration,
    ) -> Probe {
        let pod = self.pods[i].name.clone();
        let family = Family::of(addr);
        let mut cmd = ns_command(&self.pods[i].ns, argv);
        let result = match stdin {
            None => output_with_deadline(cmd, limit),
            Some(data) => {
                // A shell-free way to feed stdin: write it to a file the child reads.
                let path = state::dir(&self.name).join(format!(
                    "stdin-{}-{kind}-{}",
                    i,
                    std::process::id()
                ));
                let r = fs::write(&path, data).and_then(|_| fs::File::open(&path));
                let _ = fs::remove_file(&path);
                match r {
                    Ok(f) => {
                        cmd.stdin(f);
                        process::output_with_stdin(cmd, limit)
                    }
                    Err(e) => Err(e.into()),
                }
            }
        };
        let (ok, text) = match result {
            Ok(out) => {
                let mut t = String::from_utf8_lossy(&out.stdout).trim().to_string();
                let e = String::from_utf8_lossy(&out.stderr).trim().to_string();
                if !e.is_empty() {
                    if !t.is_empty() {
                        t.push('\n');
                    }
                    t.push_str(&e);
                }
                (out.status.success(), t)
            }
            Err(e) => (false, format!("{e:#}")),
        };
        let seen = text
            .lines()
            .find_map(|l| l.strip_prefix("seen "))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|a| a.parse().ok());
        // HTTP and UDP must also have been answered by our endpoint, which names the source.
        let ok = ok && (!matches!(kind, "http" | "udp" | "upload") || seen.is_some());
        Probe {
            pod,
            family,
            target: addr,
            kind,
            ok,
            seen,
            detail: text,
        }
    }
}

fn host_port(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}
