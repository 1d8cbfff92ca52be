//! Random and mutated packets through the real programs (BPF_PROG_TEST_RUN), checking:
//! - only the expected verdicts (TC: OK/SHOT/REDIRECT; XDP: PASS/DROP/TX/REDIRECT);
//! - layer-2 garbage (VLAN tag stacks, unknown EtherTypes, runt and truncated tags; see
//!   `l2_garbage`) is dropped by both pod hooks, never passed, and creates no state anywhere;
//! - no map entry created by a packet that fails parsing: one the host classifies as malformed
//!   (see `malformed`) or one the programs counted as `drop_malformed` leaves the number of
//!   entries of nat4_map, nat4_claim, ct4 and frag4 unchanged;
//! - no port leaked: every claim is backed by its endpoint's mapping or by a live flow on that
//!   port, every mapping and flow is claimed, and each pod's `pod_usage` equals its mappings and flows;
//! - every packet a program changed and let through (pass or redirect) has valid IPv4 and L4
//!   checksums (etherparse recomputes them), when the packet it got had valid ones.
//!
//! `PODGATE_FUZZ_COUNT` runs per program (default 10,000; frames the kernel refuses before the
//! program runs are not counted), `PODGATE_FUZZ_SEED` (default
//! fixed; printed, so a failure can be replayed). `cargo xtask fuzz --count N` runs this with N.
mod snat_common;
use std::collections::{HashMap as Map, HashSet};

use etherparse::{NetHeaders, PacketHeaders, TransportHeader};
use podgate_common::{
    nat::{Claim4, Ct4, Endpoint4, Flow4, FragKey4, FragVal4, Mapping4},
    stats::Counter,
};
use snat_common::*;

/// xorshift64*: small, deterministic per seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    fn pick<T: Clone>(&mut self, v: &[T]) -> T {
        v[self.below(v.len())].clone()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Prog {
    PodIngress,
    PodEgress,
    UplinkXdp,
    UplinkTc,
}

impl Prog {
    fn name(self) -> &'static str {
        match self {
            Prog::PodIngress => "pod_ingress",
            Prog::PodEgress => "pod_egress",
            Prog::UplinkXdp => "uplink_xdp",
            Prog::UplinkTc => "uplink_tc",
        }
    }
}

fn count() -> usize {
    std::env::var("PODGATE_FUZZ_COUNT").ok().and_then(|s| s.parse().ok()).unwrap_or(10_000)
}

fn seed() -> u64 {
    std::env::var("PODGATE_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_0f_90d6a7e)
}

// ---- inputs ----

/// The fixtures mutations start from, for one direction. `ext` are external ports of live
/// mappings, so replies and errors reach the translation code.
fn base(rng: &mut Rng, outbound: bool, ext: &[u16]) -> Vec<u8> {
    let sport = if rng.chance(50) { 40000 + rng.below(64) as u16 } else { rng.next() as u16 };
    let remote = rng.pick(&[REMOTE1, REMOTE2, ROUTER]);
    let n = rng.below(64);
    let payload = rng.bytes(n);
    if outbound {
        let src = if rng.chance(95) { POD_A } else { POD_B };
        return match rng.below(6) {
            0 => tcp(src, sport, remote, 80, rng.pick(&["S", "A", "SA", "FA", "R", "RA"]), &payload),
            1 | 2 => udp(src, sport, remote, 53, &payload),
            3 => echo_request(src, remote, sport, 1),
            4 => fragments(&udp(src, sport, remote, 53, &[7; 48]), 24, rng.next() as u16).1,
            _ => v6(rng, true),
        };
    }
    let port = if !ext.is_empty() && rng.chance(80) { rng.pick(ext) } else { rng.next() as u16 };
    match rng.below(8) {
        0 => tcp(remote, 80, NODE_IP, port, rng.pick(&["SA", "A", "R", "S", "FA"]), &payload),
        1 | 2 => udp(remote, 53, NODE_IP, port, &payload),
        3 => echo_reply(remote, NODE_IP, port, 1),
        4 | 5 => {
            // An error about a translated packet, quoted in full or cut like a router would.
            let quoted = if rng.chance(50) { udp(NODE_IP, port, remote, 53, &payload) } else { tcp(NODE_IP, port, remote, 80, "S", &payload) };
            let ty = rng.pick(&[
                etherparse::Icmpv4Type::DestinationUnreachable(etherparse::icmpv4::DestUnreachableHeader::Port),
                etherparse::Icmpv4Type::DestinationUnreachable(etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1280 }),
                etherparse::Icmpv4Type::TimeExceeded(etherparse::icmpv4::TimeExceededCode::TtlExceededInTransit),
            ]);
            icmp_error(remote, ty, &quoted, rng.pick(&[28, 48, 1000]))
        }
        6 => {
            let (first, rest) = fragments(&udp(remote, 53, NODE_IP, port, &[9; 48]), 24, rng.next() as u16);
            if rng.chance(50) { first } else { rest }
        }
        _ => v6(rng, false),
    }
}

/// An IPv6 frame, sometimes with a garbage extension-header chain.
fn v6(rng: &mut Rng, outbound: bool) -> Vec<u8> {
    let pod = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a];
    let far = [0x20, 0x01, 0x0d, 0xb8, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let (src, dst) = if outbound { (pod, far) } else { (far, pod) };
    let mut v = Vec::new();
    let b = etherparse::PacketBuilder::ethernet2(POD_MAC, HOST_MAC).ipv6(src, dst, 64);
    if rng.chance(50) {
        b.udp(5000, 53).write(&mut v, &rng.bytes(16)).unwrap();
    } else {
        b.tcp(5000, 80, 1, 1000).syn().write(&mut v, &[]).unwrap();
    }
    if rng.chance(50) {
        // Splice in extension headers: hop-by-hop / routing / dest-opts / fragment with random
        // bodies and lengths (possibly lying).
        let n = 1 + rng.below(4);
        let mut chain = Vec::new();
        let next_after = v[14 + 6];
        let kinds: Vec<u8> = (0..n).map(|_| rng.pick(&[0u8, 43, 60, 44, 135, 51])).collect();
        for (i, _) in kinds.iter().enumerate() {
            let nh = if i + 1 < n { kinds[i + 1] } else { next_after };
            let len8 = rng.below(3);
            let mut h = vec![nh, if rng.chance(80) { len8 as u8 } else { rng.next() as u8 }];
            h.extend(rng.bytes(6 + 8 * len8));
            chain.extend(h);
        }
        v[14 + 6] = kinds[0];
        let plen = u16::from_be_bytes([v[18], v[19]]) as usize + chain.len();
        v[18..20].copy_from_slice(&(plen as u16).to_be_bytes());
        v.splice(54..54, chain);
    }
    v
}

/// Recomputes the IPv4 header checksum and, if it parses, the L4 checksum: a mutant that only
/// the mutation made invalid, not its checksums.
fn fix_checksums(f: &mut [u8]) {
    if f.len() < 34 || f[12..14] != [0x08, 0x00] {
        return;
    }
    let ihl = ((f[14] & 0x0f) as usize) * 4;
    if ihl < 20 || f.len() < 14 + ihl {
        return;
    }
    f[24] = 0;
    f[25] = 0;
    let c = podgate_common::csum::checksum(&f[14..14 + ihl]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    if let Ok(p) = PacketHeaders::from_ethernet_slice(f) {
        let Some(NetHeaders::Ipv4(ip, _)) = p.net.clone() else { return };
        if ip.more_fragments || ip.fragment_offset.value() != 0 {
            return;
        }
        let payload = p.payload.slice().to_vec();
        let l4 = 14 + ihl;
        let (off, c) = match &p.transport {
            Some(TransportHeader::Tcp(t)) => (16, t.calc_checksum_ipv4(&ip, &payload).ok()),
            Some(TransportHeader::Udp(u)) if u.checksum != 0 => (6, u.calc_checksum_ipv4(&ip, &payload).ok()),
            Some(TransportHeader::Icmpv4(i)) => (2, Some(i.icmp_type.calc_checksum(&payload))),
            _ => return,
        };
        if let Some(c) = c
            && f.len() >= l4 + off + 2
        {
            f[l4 + off..l4 + off + 2].copy_from_slice(&c.to_be_bytes());
        }
    }
}

/// Layer-2 garbage around a fixture: VLAN tag stacks (802.1Q, 802.1ad, pre-standard QinQ; VID 0
/// and others), unknown EtherTypes, runt and truncated tags.
fn l2_garbage(rng: &mut Rng, f: Vec<u8>) -> Vec<u8> {
    let tpids = [0x8100u16, 0x88a8, 0x9100];
    match rng.below(4) {
        0 | 1 => {
            let mut v = f[..12].to_vec();
            for _ in 0..1 + rng.below(3) {
                v.extend_from_slice(&rng.pick(&tpids).to_be_bytes());
                let tci: u16 = if rng.chance(60) { 0 } else { rng.next() as u16 };
                v.extend_from_slice(&tci.to_be_bytes());
            }
            v.extend_from_slice(&f[12..]);
            if rng.chance(20) {
                // Cut inside the tags or the inner header.
                let n = 14 + rng.below(v.len() - 13);
                v.truncate(n);
            }
            v
        }
        2 => {
            let mut v = f;
            let any = rng.next() as u16;
            let et = rng.pick(&[0x88ccu16, 0x8863, 0x8864, 0x8847, 0x88e5, 0x0000, 0x05dc, 0x888e, 0xffff, any]);
            v[12..14].copy_from_slice(&et.to_be_bytes());
            v
        }
        _ => {
            // A runt: an Ethernet header, perhaps a tag type, and a few bytes of a tag.
            let mut v = f[..12].to_vec();
            v.extend_from_slice(&rng.pick(&tpids).to_be_bytes());
            let n = rng.below(4);
            v.extend(rng.bytes(n));
            v
        }
    }
}

/// What the pod veths admit: untagged IPv4, IPv6 and ARP.
fn admitted_on_pod_veth(f: &[u8]) -> bool {
    f.len() >= 14 && matches!(u16::from_be_bytes([f[12], f[13]]), 0x0800 | 0x86dd | 0x0806)
}

fn mutate(rng: &mut Rng, mut f: Vec<u8>) -> Vec<u8> {
    if rng.chance(10) {
        return l2_garbage(rng, f);
    }
    match rng.below(10) {
        // Unchanged fixture.
        0 => {}
        // Bit flips, checksums left broken.
        1 => {
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(f.len());
                f[i] ^= 1 << rng.below(8);
            }
        }
        // Bit flips in the headers, checksums made valid again.
        2 | 3 => {
            for _ in 0..1 + rng.below(3) {
                let i = 14 + rng.below(f.len().min(82).saturating_sub(14).max(1));
                if i < f.len() {
                    f[i] ^= 1 << rng.below(8);
                }
            }
            fix_checksums(&mut f);
        }
        // Truncation.
        4 => {
            let n = rng.below(f.len() + 1);
            f.truncate(n.max(15));
        }
        // Length fields lie: IPv4 total length, IHL, UDP length, TCP data offset.
        5 => {
            if f.len() >= 34 && f[12..14] == [0x08, 0x00] {
                match rng.below(4) {
                    0 => {
                        let v = rng.next() as u16;
                        f[16..18].copy_from_slice(&v.to_be_bytes());
                    }
                    1 => f[14] = 0x40 | (rng.next() as u8 & 0x0f),
                    2 if f.len() >= 42 => {
                        let v = rng.next() as u16;
                        f[38..40].copy_from_slice(&v.to_be_bytes());
                    }
                    _ if f.len() >= 48 => f[46] = rng.next() as u8,
                    _ => {}
                }
                if rng.chance(70) {
                    fix_checksums(&mut f);
                }
            }
        }
        // IPv4 options garbage (IHL grows, the options are random bytes).
        6 => {
            if f.len() >= 34 && f[12..14] == [0x08, 0x00] && f[14] == 0x45 {
                let words = 1 + rng.below(10);
                let opts = rng.bytes(4 * words);
                f.splice(34..34, opts);
                f[14] = 0x45 + words as u8;
                let tot = u16::from_be_bytes([f[16], f[17]]) as usize + 4 * words;
                f[16..18].copy_from_slice(&(tot as u16).to_be_bytes());
                fix_checksums(&mut f);
            }
        }
        // Random tail bytes.
        7 => {
            let n = rng.below(40);
            let extra = rng.bytes(n);
            f.extend(extra);
        }
        // Entirely random frame, sometimes with an IPv4/IPv6 EtherType.
        8 => {
            let n = 15 + rng.below(200);
            f = rng.bytes(n);
            if rng.chance(70) {
                f[12..14].copy_from_slice(rng.pick(&[[0x08u8, 0x00], [0x86, 0xdd], [0x08, 0x06]]).as_slice());
                if f[12] == 0x08 && f[13] == 0 && rng.chance(50) {
                    f[14] = 0x45;
                }
            }
        }
        // Random overwrite of a run of bytes after the IP header.
        _ => {
            if f.len() > 40 {
                let at = 34 + rng.below(f.len() - 34);
                let n = (1 + rng.below(8)).min(f.len() - at);
                let b = rng.bytes(n);
                f[at..at + n].copy_from_slice(&b);
            }
        }
    }
    f
}

// ---- classification and checks ----

/// Frames BPF_PROG_TEST_RUN rejects for TC before any program runs: shorter than the network
/// header its EtherType announces.
fn kernel_refuses(f: &[u8]) -> bool {
    match (f.get(12), f.get(13)) {
        (Some(0x08), Some(0x00)) => f.len() < 14 + 20,
        (Some(0x86), Some(0xdd)) => f.len() < 14 + 40,
        _ => f.len() < 14,
    }
}

/// Whether the programs must treat `f` as unparseable: no state may come from it.
fn malformed(f: &[u8]) -> bool {
    if f.len() < 14 {
        return true;
    }
    if f[12..14] != [0x08, 0x00] {
        return false;
    }
    if f.len() < 34 {
        return true;
    }
    let ihl = ((f[14] & 0x0f) as usize) * 4;
    let tot = u16::from_be_bytes([f[16], f[17]]) as usize;
    if f[14] >> 4 != 4 || ihl < 20 || tot < ihl || f.len() < 14 + ihl || tot > f.len() - 14 {
        return true;
    }
    let later = u16::from_be_bytes([f[20], f[21]]) & 0x1fff != 0;
    if later {
        return false;
    }
    let avail = tot.min(f.len() - 14) - ihl;
    match f[23] {
        6 => avail < 20,
        17 | 1 => avail < 8,
        _ => false,
    }
}

/// Whether `f` is an IPv4 packet whose header and (unfragmented) L4 checksums verify.
fn checksums_valid(f: &[u8]) -> Result<(), String> {
    let p = PacketHeaders::from_ethernet_slice(f).map_err(|e| format!("does not parse: {e}"))?;
    let Some(NetHeaders::Ipv4(ip, _)) = p.net.clone() else { return Ok(()) };
    if ip.header_checksum != ip.calc_header_checksum() {
        return Err("IPv4 header checksum".into());
    }
    if ip.more_fragments || ip.fragment_offset.value() != 0 {
        return Ok(());
    }
    let payload = p.payload.slice();
    // A packet cut shorter than its IPv4 length cannot be summed.
    if payload.len() + p.transport.as_ref().map(|t| t.header_len()).unwrap_or(0) + ip.header_len() != ip.total_len as usize {
        return Ok(());
    }
    match &p.transport {
        Some(TransportHeader::Tcp(t)) if t.checksum != t.calc_checksum_ipv4(&ip, payload).unwrap() => Err("TCP checksum".into()),
        Some(TransportHeader::Udp(u)) if u.checksum != 0 && u.checksum != u.calc_checksum_ipv4(&ip, payload).unwrap() => Err("UDP checksum".into()),
        Some(TransportHeader::Icmpv4(i)) if i.checksum != i.icmp_type.calc_checksum(payload) => Err("ICMP checksum".into()),
        _ => Ok(()),
    }
}

fn map_len<K: aya::Pod, V: aya::Pod>(env: &Env, name: &str) -> usize {
    let m: aya::maps::HashMap<_, K, V> = aya::maps::HashMap::try_from(env.h.ebpf.map(name).unwrap()).unwrap();
    m.keys().count()
}

fn state_sizes(env: &Env) -> [usize; 4] {
    [
        map_len::<Endpoint4, Mapping4>(env, "nat4_map"),
        map_len::<Claim4, Endpoint4>(env, "nat4_claim"),
        map_len::<Flow4, Ct4>(env, "ct4"),
        map_len::<FragKey4, FragVal4>(env, "frag4"),
    ]
}

/// The port-accounting invariant over the whole SNAT state.
fn check_ports(env: &Env) -> Result<(), String> {
    let maps: Map<Endpoint4, Mapping4> = env.mappings().into_iter().collect();
    let claims = env.claims();
    let flows: Vec<(Flow4, Ct4)> = {
        let m: aya::maps::HashMap<_, Flow4, Ct4> = aya::maps::HashMap::try_from(env.h.ebpf.map("ct4").unwrap()).unwrap();
        m.iter().map(|r| r.unwrap()).collect()
    };
    let flow_ports: HashSet<(Endpoint4, [u8; 4], u16)> = flows
        .iter()
        .map(|(f, c)| (ep(f.pod_addr, f.pod_port, f.proto), f.remote_addr, c.ext_port))
        .collect();
    for (c, owner) in &claims {
        let by_mapping = maps.get(owner).is_some_and(|m| m.ext_port == c.ext_port);
        let by_flow = flow_ports.contains(&(*owner, c.remote, c.ext_port));
        if !by_mapping && !by_flow {
            return Err(format!("leaked claim {c:?} → {owner:?} (mapping {:?})", maps.get(owner)));
        }
        if c.proto != owner.proto {
            return Err(format!("claim {c:?} owned by another protocol's endpoint {owner:?}"));
        }
    }
    let claimed: HashSet<(Endpoint4, u16)> = claims.iter().map(|(c, o)| (*o, c.ext_port)).collect();
    for (e, m) in &maps {
        if !claimed.contains(&(*e, m.ext_port)) {
            return Err(format!("mapping {e:?} → {} holds no claim", m.ext_port));
        }
    }
    let claim_set: Map<Claim4, Endpoint4> = claims.into_iter().collect();
    for (f, c) in &flows {
        let owner = ep(f.pod_addr, f.pod_port, f.proto);
        let k = Claim4 { remote: f.remote_addr, ext_port: c.ext_port, proto: f.proto, _pad: 0 };
        if claim_set.get(&k) != Some(&owner) {
            return Err(format!("flow {f:?} on port {} is not claimed by its endpoint ({:?})", c.ext_port, claim_set.get(&k)));
        }
    }
    for ifindex in [env.pod_a, env.pod_b] {
        // The fixture's pod id is its ifindex; nothing is freed here, so held = created.
        let id = env.pod(ifindex).id;
        let u = env.usage(id);
        let held = maps.values().filter(|m| m.pod_ifindex == ifindex).count() as u64;
        if u.mappings != held {
            return Err(format!("pod {id}: pod_usage.mappings {} but {held} mappings", u.mappings));
        }
        let flows = flows.iter().filter(|(_, c)| c.pod_ifindex == ifindex).count() as u64;
        if u.flows4 != flows {
            return Err(format!("pod {id}: pod_usage.flows4 {} but {flows} flows", u.flows4));
        }
    }
    Ok(())
}

/// Deletes every entry of the SNAT maps and resets the pods' counters (a fresh batch).
fn clear(env: &mut Env) {
    fn wipe<K: aya::Pod, V: aya::Pod>(env: &mut Env, name: &str) {
        let mut m: aya::maps::HashMap<_, K, V> = aya::maps::HashMap::try_from(env.h.ebpf.map_mut(name).unwrap()).unwrap();
        let keys: Vec<K> = m.keys().map(|k| k.unwrap()).collect();
        for k in keys {
            m.remove(&k).unwrap();
        }
    }
    wipe::<Endpoint4, Mapping4>(env, "nat4_map");
    wipe::<Claim4, Endpoint4>(env, "nat4_claim");
    wipe::<Flow4, Ct4>(env, "ct4");
    wipe::<FragKey4, FragVal4>(env, "frag4");
    let (a, b) = (env.pod_a, env.pod_b);
    env.add_pod(a, POD_A, 0);
    env.add_pod(b, POD_B, 0);
}

fn expected_verdict(prog: Prog, v: u32) -> bool {
    match prog {
        Prog::UplinkXdp => [XDP_PASS, XDP_DROP, XDP_TX, XDP_REDIRECT].contains(&v),
        _ => [TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT].contains(&v),
    }
}

fn passed(prog: Prog, v: u32) -> bool {
    match prog {
        Prog::UplinkXdp => v == XDP_PASS || v == XDP_REDIRECT || v == XDP_TX,
        _ => v == TC_ACT_OK || v == TC_ACT_REDIRECT,
    }
}

#[derive(Default, Debug)]
struct Tally {
    runs: usize,
    passed: usize,
    translated: usize,
    malformed: usize,
    l2_garbage: usize,
    verdicts: Map<u32, usize>,
}

fn fuzz(prog: Prog, n: usize, seed: u64) -> Tally {
    println!("fuzz {}: {n} runs, seed {seed:#x} (PODGATE_FUZZ_SEED={seed})", prog.name());
    let mut env = Env::with_fib();
    // The same programs with small SNAT maps, so that counting entries per packet is cheap.
    let node: podgate_common::NodeConfig = {
        let a: aya::maps::Array<_, podgate_common::NodeConfig> = aya::maps::Array::try_from(env.h.ebpf.map("node").unwrap()).unwrap();
        a.get(&0, 0).unwrap()
    };
    env.h = Harness::with_max_entries(&[("nat4_map", 4096), ("nat4_claim", 4096), ("ct4", 4096), ("frag4", 1024)]).expect("load programs");
    {
        let mut a: aya::maps::Array<_, podgate_common::NodeConfig> = aya::maps::Array::try_from(env.h.ebpf.map_mut("node").unwrap()).unwrap();
        a.set(0, node, 0).unwrap();
    }
    let mut rng = Rng(seed ^ (prog as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut t = Tally::default();
    let mut ext: Vec<u16> = vec![];
    let batch = 256;
    // `n` counts packets the program actually ran on: frames the kernel refuses before any
    // program runs do not count, so "1M per program" means 1M runs.
    let mut attempts = 0usize;
    while t.runs < n {
        let i = attempts;
        attempts += 1;
        assert!(attempts <= 2 * n.max(1), "{}: the kernel refused most generated frames ({} runs of {i})", prog.name(), t.runs);
        if i % batch == 0 {
            if i > 0 {
                check_ports(&env).unwrap_or_else(|e| panic!("{} after packet {i} (seed {seed}): {e}", prog.name()));
            }
            clear(&mut env);
            // Live mappings for replies and errors to hit.
            let a = env.pod_a;
            ext = (0..8u16)
                .map(|k| {
                    let f = if k % 2 == 0 { udp(POD_A, 40000 + k, REMOTE1, 53, b"seed") } else { tcp(POD_A, 40000 + k, REMOTE1, 80, "S", b"") };
                    let o = env.egress(a, &f);
                    assert!(o.verdict == TC_ACT_OK || o.verdict == TC_ACT_REDIRECT, "seed flow: verdict {}", o.verdict);
                    ports(&parse_checked(&o.packet)).0
                })
                .collect();
        }
        let outbound = matches!(prog, Prog::PodIngress | Prog::PodEgress);
        let b = base(&mut rng, outbound, &ext);
        let input = mutate(&mut rng, b);
        let bad = malformed(&input);
        let input_valid = checksums_valid(&input).is_ok();
        let before = if bad || !admitted_on_pod_veth(&input) { Some(state_sizes(&env)) } else { None };
        let dm = env.counter(Counter::DropMalformed);
        let news = (env.counter(Counter::SnatNewFlow), env.counter(Counter::SnatNewMapping));
        let (a, up) = (env.pod_a, env.uplink);
        let out = match prog {
            Prog::PodIngress | Prog::PodEgress => env.h.run_tc(prog.name(), &input, a),
            Prog::UplinkTc => env.h.run_tc(prog.name(), &input, up),
            Prog::UplinkXdp => env.h.run_xdp(prog.name(), &input, up),
        };
        let out = match out {
            Ok(o) => o,
            // The kernel refuses some frames before the program runs (an skb needs an
            // Ethernet header and, under an IPv4 EtherType, an IPv4 header's worth): nothing ran.
            Err(e) if kernel_refuses(&input) && format!("{e:#}").contains("Invalid argument") => continue,
            Err(e) => panic!("{} packet {i}: {e:#} input {input:02x?}", prog.name()),
        };
        t.runs += 1;
        *t.verdicts.entry(out.verdict).or_default() += 1;
        assert!(expected_verdict(prog, out.verdict), "{} packet {i} (seed {seed}): verdict {} for {input:02x?}", prog.name(), out.verdict);
        if !admitted_on_pod_veth(&input) {
            t.l2_garbage += 1;
            if matches!(prog, Prog::PodIngress | Prog::PodEgress) {
                assert_eq!(out.verdict, TC_ACT_SHOT, "{} packet {i} (seed {seed}): a tagged or unknown frame was not dropped {input:02x?}", prog.name());
            }
            let after = state_sizes(&env);
            let before = before.unwrap_or(after);
            assert_eq!(before, after, "{} packet {i} (seed {seed}): layer-2 garbage created state {input:02x?}", prog.name());
        }
        if let (true, Some(before)) = (bad, before) {
            t.malformed += 1;
            let after = state_sizes(&env);
            assert_eq!(before, after, "{} packet {i} (seed {seed}): malformed packet created state {input:02x?}", prog.name());
        } else if env.counter(Counter::DropMalformed) > dm {
            // Well-formed to the host, rejected by the program: no flow or mapping from it.
            t.malformed += 1;
            assert_eq!((env.counter(Counter::SnatNewFlow), env.counter(Counter::SnatNewMapping)), news, "{} packet {i} (seed {seed}): rejected packet created state {input:02x?}", prog.name());
        }
        if passed(prog, out.verdict) {
            t.passed += 1;
            if out.packet != input {
                t.translated += 1;
                if input_valid && !bad {
                    checksums_valid(&out.packet).unwrap_or_else(|e| {
                        panic!("{} packet {i} (seed {seed}): output {e} invalid\n in  {input:02x?}\n out {:02x?}", prog.name(), out.packet)
                    });
                }
            }
        }
    }
    check_ports(&env).unwrap_or_else(|e| panic!("{} at the end (seed {seed}): {e}", prog.name()));
    println!("fuzz {}: {t:?}", prog.name());
    t
}

fn run(prog: Prog) {
    let t = fuzz(prog, count(), seed());
    // The generator must reach the interesting paths, or the run proves little.
    assert_eq!(t.runs, count(), "{} ran {} packets, not {}", prog.name(), t.runs, count());
    assert!(t.malformed > 0, "no malformed packet generated");
    assert!(t.l2_garbage * 50 > t.runs, "{}: only {} layer-2 garbage frames in {} runs", prog.name(), t.l2_garbage, t.runs);
    if prog != Prog::PodEgress {
        // About 5% of uplink inputs are translated replies/errors (the rest are mutants the
        // programs rightly refuse or leave to the stack); 2% is the floor for a useful run.
        assert!(t.translated * 50 > t.runs, "{}: only {} of {} translated", prog.name(), t.translated, t.runs);
    }
}

#[test]
fn fuzz_pod_ingress() {
    run(Prog::PodIngress);
}

#[test]
fn fuzz_pod_egress() {
    run(Prog::PodEgress);
}

#[test]
fn fuzz_uplink_xdp() {
    run(Prog::UplinkXdp);
}

#[test]
fn fuzz_uplink_tc() {
    run(Prog::UplinkTc);
}

#[test]
fn classifier_sanity() {
    // The host's idea of "malformed" must agree with the fixtures: valid ones are not.
    assert!(!malformed(&udp(POD_A, 1, REMOTE1, 2, b"x")));
    assert!(!malformed(&tcp(POD_A, 1, REMOTE1, 2, "S", b"")));
    assert!(malformed(&udp(POD_A, 1, REMOTE1, 2, b"x")[..30]));
    let mut f = udp(POD_A, 1, REMOTE1, 2, b"x");
    f[14] = 0x44;
    assert!(malformed(&f));
    assert!(checksums_valid(&udp(POD_A, 1, REMOTE1, 2, b"x")).is_ok());
    let mut f = udp(POD_A, 1, REMOTE1, 2, b"x");
    f[40] ^= 1;
    assert!(checksums_valid(&f).is_err());
}
