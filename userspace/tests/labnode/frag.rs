//! Inbound IPv4 fragments, in any order, from the lab's internet namespace to a pod's UDP socket
//! (RFC 4787 REQ-14 with real sockets). The fragments are crafted with etherparse and sent from
//! a raw socket opened inside the internet namespace.

use std::{
    fs::File,
    net::Ipv4Addr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    thread,
    time::Duration,
};

use etherparse::{IpFragOffset, IpNumber, Ipv4Header, PacketBuilder};
use podgate_lab::{INTERNET_V4, NODE_V4, UDP_ECHO_PORT};

use super::Node;

/// In the pod: one datagram to the echo endpoint (which makes the mapping and tells the external
/// port), then every datagram that arrives for LISTEN seconds, printed whole in hex. With DST
/// `-` (a socket of the node itself), nothing is sent first.
const RECV_PY: &str = r#"
import socket, sys, time
sport, dst, listen = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", sport))
if dst == "-":
    print("ready", flush=True)
else:
    h, p = dst.rsplit(":", 1)
    s.settimeout(5)
    s.sendto(b"frag", (h, int(p)))
    data, src = s.recvfrom(65535)
    print("ext", data.split()[2].decode(), flush=True)
end = time.time() + listen
while time.time() < end:
    s.settimeout(max(0.05, end - time.time()))
    try:
        data, src = s.recvfrom(65535)
        print("got %s:%d %d %s" % (src[0], src[1], len(data), data.hex()), flush=True)
    except socket.timeout:
        pass
"#;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    InOrder,
    /// Last fragment first, first fragment last.
    Reverse,
}

/// A datagram's payload: distinct bytes per `seed`, so a mix-up of datagrams shows.
pub fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u32).wrapping_mul(31).wrapping_add(seed as u32 * 7) as u8).collect()
}

/// A UDP datagram from the echo endpoint (INTERNET_V4:7) to NODE_V4:`ext`, cut into IPv4
/// fragments of at most `mtu` bytes, in order.
pub fn udp_fragments(ext: u16, data: &[u8], id: u16, mtu: usize) -> Vec<Vec<u8>> {
    let mut whole = Vec::new();
    PacketBuilder::ipv4(INTERNET_V4.octets(), NODE_V4.octets(), 64)
        .udp(UDP_ECHO_PORT, ext)
        .write(&mut whole, data)
        .unwrap();
    let (hdr, udp) = Ipv4Header::from_slice(&whole).unwrap();
    let step = (mtu - hdr.header_len()) / 8 * 8;
    let chunks: Vec<&[u8]> = udp.chunks(step).collect();
    chunks
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut h = hdr.clone();
            h.identification = id;
            h.dont_fragment = false;
            h.more_fragments = i + 1 < chunks.len();
            h.fragment_offset = IpFragOffset::try_new((i * step / 8) as u16).unwrap();
            h.total_len = (h.header_len() + c.len()) as u16;
            h.protocol = IpNumber::UDP;
            h.header_checksum = h.calc_header_checksum();
            let mut p = h.to_bytes().to_vec();
            p.extend_from_slice(c);
            p
        })
        .collect()
}

/// Sends IPv4 packets as they are from netns `ns`, `gap` apart. Only a helper thread enters the
/// namespace; the raw socket stays bound to it.
pub fn send_raw(ns: &str, packets: &[Vec<u8>], dst: Ipv4Addr, gap: Duration) {
    let path = format!("/run/netns/{ns}");
    let packets = packets.to_vec();
    thread::spawn(move || {
        let f = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: setns on this thread only, with an fd we own.
        assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns {path}");
        // SAFETY: plain syscalls on an fd owned from here on.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::IPPROTO_RAW) };
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // The sender's own conntrack, if any, must not reassemble what we send out of order.
        let one: libc::c_int = 1;
        let rc = unsafe {
            libc::setsockopt(fd.as_raw_fd(), libc::SOL_IP, libc::IP_NODEFRAG, &one as *const _ as *const libc::c_void, 4)
        };
        assert_eq!(rc, 0, "IP_NODEFRAG");
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(dst.octets()) },
            sin_zero: [0; 8],
        };
        for (i, p) in packets.iter().enumerate() {
            if i > 0 {
                thread::sleep(gap);
            }
            // SAFETY: valid buffer and address.
            let n = unsafe {
                libc::sendto(fd.as_raw_fd(), p.as_ptr() as *const _, p.len(), 0, &sa as *const _ as *const libc::sockaddr, size_of::<libc::sockaddr_in>() as u32)
            };
            assert_eq!(n, p.len() as isize, "sendto: {}", std::io::Error::last_os_error());
        }
    })
    .join()
    .expect("raw sender thread");
}

/// Pod `pod` opens UDP `sport` toward the echo endpoint; the internet then sends it a
/// `len`-byte datagram as fragments of ≤ 1500 bytes in `order`. Returns what the pod's socket
/// received (`Ok(fragments sent)`) or why not.
pub fn deliver(n: &Node, pod: usize, sport: u16, len: usize, order: Order, id: u16) -> Result<usize, String> {
    let script = n.lab.state_dir().join("frag-recv.py");
    std::fs::write(&script, RECV_PY).unwrap();
    let log = format!("frag-{sport}.log");
    let echo = format!("{INTERNET_V4}:{UDP_ECHO_PORT}");
    let _rx = n
        .lab
        .spawn_logged(n.lab.pod_ns(pod), &["python3", "-u", script.to_str().unwrap(), &sport.to_string(), &echo, "20"], &log)
        .expect("pod receiver");
    // Generous: python starting on a loaded machine is slow.
    if !n.wait_log(&log, "ext ", Duration::from_secs(15)) {
        return Err(format!("no mapping made: {}", n.log(&log)));
    }
    let ext: u16 = n.log(&log).lines().find_map(|l| l.strip_prefix("ext ")).unwrap().trim().parse().unwrap();
    send_and_check(n, &log, "pod", ext, len, order, id, sport as u8)
}

/// The internet sends a `len`-byte datagram to NODE_V4:`port`, fragmented like `deliver`, where
/// a UDP socket of the node itself (no pod mapping) listens.
pub fn deliver_to_node(n: &Node, port: u16, len: usize, order: Order, id: u16) -> Result<usize, String> {
    let script = n.lab.state_dir().join("frag-recv.py");
    std::fs::write(&script, RECV_PY).unwrap();
    let log = format!("frag-node-{port}.log");
    let _rx = n
        .lab
        .spawn_logged(&n.lab.node_ns(), &["python3", "-u", script.to_str().unwrap(), &port.to_string(), "-", "20"], &log)
        .expect("node receiver");
    if !n.wait_log(&log, "ready", Duration::from_secs(15)) {
        return Err(format!("node receiver never ready: {}", n.log(&log)));
    }
    send_and_check(n, &log, "node", port, len, order, id, port as u8)
}

/// Sends the fragments of one datagram to NODE_V4:`port` in `order` and checks that the socket
/// logging to `log` received it whole from the echo endpoint.
#[allow(clippy::too_many_arguments)]
fn send_and_check(n: &Node, log: &str, who: &str, port: u16, len: usize, order: Order, id: u16, seed: u8) -> Result<usize, String> {
    let data = payload(len, seed);
    let mut frags = udp_fragments(port, &data, id, 1500);
    if order == Order::Reverse {
        frags.reverse();
    }
    // Apart, so that the orphans are punted and held before the first fragment comes.
    send_raw(&n.lab.internet_ns(), &frags, NODE_V4, Duration::from_millis(100));
    if !n.wait_log(log, "got ", Duration::from_secs(8)) {
        return Err(format!("{len}-byte datagram ({} fragments, {order:?}) never reached the {who}'s socket", frags.len()));
    }
    let text = n.log(log);
    let got = text.lines().find(|l| l.starts_with("got ")).unwrap();
    let f: Vec<&str> = got.split_whitespace().collect();
    let want_src = format!("{INTERNET_V4}:{UDP_ECHO_PORT}");
    let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
    if f[1] != want_src || f[2] != len.to_string() || f[3] != hex {
        return Err(format!("{who} received something else: from {} {} bytes (want {want_src}, {len})", f[1], f[2]));
    }
    Ok(frags.len())
}
