# Crafted frames and listeners for l2ndp_lab.rs. Run with /usr/bin/python3 (Debian's scapy).
# Every line printed names what it saw; every loop is bounded in count and time.
import socket, struct, sys, time

cmd = sys.argv[1]

if cmd == "listen":
    # listen SECONDS PORT...: UDP (v4 and v6) and raw ICMPv6; prints "got PROTO SRC PAYLOAD"
    # for every packet whose payload carries a "pgmark-" marker.
    import select
    secs, ports = float(sys.argv[2]), [int(p) for p in sys.argv[3:]]
    socks = []
    for p in ports:
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::", p))
        socks.append(("udp", s))
    r6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    socks.append(("icmp6", r6))
    print("ready", flush=True)
    end = time.time() + secs
    while time.time() < end:
        rd, _, _ = select.select([s for _, s in socks], [], [], max(0.05, end - time.time()))
        for kind, s in socks:
            if s in rd:
                data, src = s.recvfrom(4096)
                i = data.find(b"pgmark-")
                if i >= 0:
                    print("got", kind, src[0], data[i:i + 24].decode(errors="replace"), flush=True)

elif cmd == "send":
    # send IFACE DST_MAC POD6 POD4 KIND...: one crafted frame per KIND out of IFACE, in order,
    # each carrying the marker "pgmark-KIND".
    from scapy.all import Ether, Dot1Q, Dot1AD, IPv6, IP, UDP, Raw, ICMPv6ND_NS, ICMPv6ND_NA, ICMPv6MLReport2, sendp, get_if_hwaddr
    iface, dmac, pod6, pod4, kinds = sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6:]
    inet6, inet4 = "2001:db8:ffff::1", "198.51.100.1"
    e = Ether(src=get_if_hwaddr(iface), dst=dmac)
    qq = lambda: Dot1Q(vlan=0) / Dot1Q(vlan=0)
    adq = lambda: Dot1AD(vlan=0) / Dot1Q(vlan=0)
    def frames(mark):
      return {
        # Layer 2: the bypass.
        "qq-v6-spoof": e / qq() / IPv6(src="2001:db8:0:1::beef", dst=inet6) / UDP(sport=4000, dport=5555) / Raw(mark),
        "adq-v6-spoof": e / adq() / IPv6(src="2001:db8:0:1::beef", dst=inet6) / UDP(sport=4000, dport=5555) / Raw(mark),
        "qq-v6-denied": e / qq() / IPv6(src=pod6, dst=inet6) / UDP(sport=4000, dport=6666) / Raw(mark),
        "qq-v4-spoof": e / qq() / IP(src="198.51.100.77", dst=inet4) / UDP(sport=4000, dport=5555) / Raw(mark),
        "adq-v4-spoof": e / adq() / IP(src="198.51.100.77", dst=inet4) / UDP(sport=4000, dport=5555) / Raw(mark),
        # The same, untagged: anti-spoofing and the groups must see them.
        "v6-spoof": e / IPv6(src="2001:db8:0:1::beef", dst=inet6) / UDP(sport=4000, dport=5555) / Raw(mark),
        "v6-denied": e / IPv6(src=pod6, dst=inet6) / UDP(sport=4000, dport=6666) / Raw(mark),
        "v6-allowed": e / IPv6(src=pod6, dst=inet6) / UDP(sport=4000, dport=5555) / Raw(mark),
        # Neighbour discovery toward a global address, carrying bytes.
        "ns-global": e / IPv6(src=pod6, dst=inet6, hlim=255) / ICMPv6ND_NS(tgt=inet6) / Raw(mark),
        "na-global": e / IPv6(src=pod6, dst=inet6, hlim=255) / ICMPv6ND_NA(tgt=pod6, R=0, S=1, O=1) / Raw(mark),
        "mld-global": e / IPv6(src=pod6, dst=inet6, hlim=64) / ICMPv6MLReport2() / Raw(mark),
        "v4-allowed": e / IP(src=pod4, dst=inet4) / UDP(sport=4000, dport=5555) / Raw(mark),
      }
    for kind in kinds:
        sendp(frames(b"pgmark-" + kind.encode())[kind], iface=iface, verbose=False)
        print("sent", kind, flush=True)

elif cmd == "ttl":
    # ttl FAMILY DST PORT HOPS: one UDP datagram with that TTL / hop limit; prints the ICMP error
    # the socket hears (IP_RECVERR), or "noerror" after 3 s.
    fam, dst, port, hops = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    if fam == "4":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, hops)
        s.setsockopt(socket.IPPROTO_IP, 11, 1)  # IP_RECVERR
    else:
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, hops)
        s.setsockopt(socket.IPPROTO_IPV6, 25, 1)  # IPV6_RECVERR
    s.connect((dst, port))
    s.send(b"pgmark-ttl")
    end = time.time() + 3
    while time.time() < end:
        try:
            _, anc, _, _ = s.recvmsg(512, 512, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
        except BlockingIOError:
            time.sleep(0.05)
            continue
        for lvl, typ, data in anc:
            errno_, origin, etype, code, _pad, info, _data = struct.unpack("IBBBBII", data[:16])
            off = data[16:]
            if fam == "4":
                addr = socket.inet_ntop(socket.AF_INET, off[4:8])
            else:
                addr = socket.inet_ntop(socket.AF_INET6, off[8:24])
            print("error origin=%d type=%d code=%d from=%s" % (origin, etype, code, addr), flush=True)
        break
    else:
        print("noerror", flush=True)

