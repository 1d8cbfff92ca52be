//! Extension-header and fragment evasions: a denied TCP port must stay denied whatever is put in
//! front of it, and what cannot be judged is dropped and counted.
mod sg_common;

use podgate_common::{
    sg::{DIR_INGRESS, PROTO_TCP},
    stats::Counter,
};
use sg_common::*;

/// tcp/80 in is allowed, tcp/22 is not.
const WEB: &str = r#"
[security_groups.web]
ingress = [{ proto = "tcp", ports = "80", cidr = "::/0" }]
"#;

fn fx() -> Fx {
    Fx::new(WEB, &["web"])
}

fn seg(dport: u16) -> Vec<u8> {
    tcp_segment(REMOTE, POD, 50000, dport)
}

fn frag(offset: u16, more: bool, id: u32) -> Ext {
    Ext::Fragment { offset, more, id }
}

#[test]
fn denied_port_behind_options_headers() {
    let mut fx = fx();
    for (chain, what) in [
        (vec![Ext::HopByHop], "hop-by-hop"),
        (vec![Ext::DestOpts], "destination options"),
        (vec![Ext::HopByHop, Ext::DestOpts, Ext::DestOpts], "three headers"),
        (vec![Ext::Routing(2)], "routing type 2"),
    ] {
        let denied = with_ext(REMOTE, POD, &chain, PROTO_TCP, &seg(22));
        fx.check(true, &denied, false, Counter::DropSg6Ingress, &format!("tcp/22 behind {what}"));
        // The walk finds the real port: the allowed one passes behind the same chain.
        let allowed = with_ext(REMOTE, POD, &chain, PROTO_TCP, &seg(80));
        fx.check(true, &allowed, true, Counter::Sg6Allowed, &format!("tcp/80 behind {what}"));
        assert_eq!(fx.ct().len(), 1, "{what}: state keyed on the real ports");
        let (f, _) = fx.ct()[0];
        assert_eq!((f.pod_port, f.remote_port, f.proto), (80, 50000, PROTO_TCP));
        let mut m: aya::maps::HashMap<_, podgate_common::sg::Flow6, podgate_common::sg::Ct6> =
            aya::maps::HashMap::try_from(fx.h.ebpf.map_mut("ct6").unwrap()).unwrap();
        m.remove(&f).unwrap();
    }
    // The egress side walks the same way.
    let mut fx = Fx::new("[security_groups.web]\negress = [{ proto = \"tcp\", ports = \"443\", cidr = \"::/0\" }]", &["web"]);
    let out = with_ext(POD, REMOTE, &[Ext::DestOpts], PROTO_TCP, &tcp_segment(POD, REMOTE, 40000, 22));
    fx.check(false, &out, false, Counter::DropSg6Egress, "egress tcp/22 behind destination options");
}

#[test]
fn routing_type0_chains_and_misplaced_headers() {
    let mut fx = fx();
    let rh0 = with_ext(REMOTE, POD, &[Ext::Routing(0)], PROTO_TCP, &seg(80));
    fx.check(true, &rh0, false, Counter::DropRoutingType0, "routing header type 0");
    let long = with_ext(REMOTE, POD, &[Ext::DestOpts; 7], PROTO_TCP, &seg(80));
    fx.check(true, &long, false, Counter::DropExtHdrChain, "seven headers");
    let ok = with_ext(REMOTE, POD, &[Ext::DestOpts; 6], PROTO_TCP, &seg(80));
    fx.check(true, &ok, true, Counter::Sg6Allowed, "six headers are fine");
    let late_hbh = with_ext(REMOTE, POD, &[Ext::DestOpts, Ext::HopByHop], PROTO_TCP, &seg(80));
    fx.check(true, &late_hbh, false, Counter::DropExtHdrChain, "hop-by-hop not first");
    // A header whose length runs past the packet.
    let mut cut = with_ext(REMOTE, POD, &[Ext::DestOpts], PROTO_TCP, &[]);
    cut[14 + 41] = 5; // claims 48 bytes
    fx.check(true, &cut, false, Counter::DropExtHdrChain, "truncated chain");
    // A TCP header in the Ethernet padding, beyond the IPv6 payload length.
    let mut padded = raw(REMOTE, POD, PROTO_TCP, &[]);
    padded[14 + 5] = 4; // payload length 4
    padded.extend_from_slice(&seg(80));
    fx.check(true, &padded, false, Counter::DropMalformed, "ports in the padding");
    assert!(fx.events().iter().any(|e| e.reason == Counter::DropRoutingType0 as u32 && e.pod_id == POD_ID));
}

/// A fragmented datagram: the first fragment is judged on its real ports, the others follow it.
#[test]
fn fragments_follow_their_first() {
    let mut fx = fx();
    let body = seg(22);
    let first = with_ext(REMOTE, POD, &[frag(0, true, 1)], PROTO_TCP, &body[..32]);
    fx.check(true, &first, false, Counter::DropSg6Ingress, "first fragment of tcp/22");
    let rest = with_ext(REMOTE, POD, &[frag(4, false, 1)], PROTO_TCP, &body[32..]);
    fx.check(true, &rest, false, Counter::DropSg6Ingress, "its second fragment");

    let body = seg(80);
    let first = with_ext(REMOTE, POD, &[frag(0, true, 2)], PROTO_TCP, &body[..32]);
    fx.check(true, &first, true, Counter::Sg6Allowed, "first fragment of tcp/80");
    let rest = with_ext(REMOTE, POD, &[frag(4, false, 2)], PROTO_TCP, &body[32..]);
    fx.check(true, &rest, true, Counter::Sg6Allowed, "its second fragment");

    let recs = fx.frag6();
    assert_eq!(recs.len(), 2);
    let allowed = recs.iter().find(|(k, _)| k.id == 2).unwrap();
    assert_eq!((allowed.0.dir, allowed.1.allow, allowed.1.dport, allowed.1.hdr_end), (DIR_INGRESS, 1, 80, 20));
    assert_eq!(recs.iter().find(|(k, _)| k.id == 1).unwrap().1.allow, 0);

    // A fragment of a datagram whose first fragment never came.
    let orphan = with_ext(REMOTE, POD, &[frag(4, false, 3)], PROTO_TCP, &[0; 16]);
    fx.check(true, &orphan, false, Counter::DropFragOrphan, "orphan fragment");
    // The uplink lets orphans through (the veth decides) but drops those of a denied first.
    fx.check_xdp(&orphan, true, "orphan at the uplink");
    fx.check_xdp(&with_ext(REMOTE, POD, &[frag(4, false, 1)], PROTO_TCP, &[0; 16]), false, "denied datagram at the uplink");
}

/// RFC 7112: a first fragment must hold the whole chain up to the transport header.
#[test]
fn tiny_first_fragment() {
    let mut fx = fx();
    let body = seg(80);
    let tiny = with_ext(REMOTE, POD, &[frag(0, true, 5)], PROTO_TCP, &body[..8]);
    fx.check(true, &tiny, false, Counter::DropTinyFragment, "8 bytes of TCP");
    // The chain itself continues in the next fragment.
    let split_chain = with_ext(REMOTE, POD, &[Ext::HopByHop, frag(0, true, 6)], 60, &[]);
    fx.check(true, &split_chain, false, Counter::DropTinyFragment, "options header left for later");
    // Neither created a record, so their followers are orphans.
    assert!(fx.frag6().is_empty());
    let rest = with_ext(REMOTE, POD, &[frag(1, false, 5)], PROTO_TCP, &body[8..]);
    fx.check(true, &rest, false, Counter::DropFragOrphan, "rest of the tiny datagram");
}

/// Overlapping fragments (RFC 1858 / 5722): a later fragment that would rewrite the TCP header
/// the first fragment was judged on is dropped, even in an allowed datagram.
#[test]
fn overlapping_fragments() {
    let mut fx = fx();
    let allowed = seg(80);
    let first = with_ext(REMOTE, POD, &[frag(0, true, 9)], PROTO_TCP, &allowed[..24]);
    fx.check(true, &first, true, Counter::Sg6Allowed, "first fragment of tcp/80");
    // Offset 8 bytes: would overwrite bytes 8..20 of the TCP header (flags, window).
    let denied = seg(22);
    let overlap = with_ext(REMOTE, POD, &[frag(1, false, 9)], PROTO_TCP, &denied[8..]);
    fx.check(true, &overlap, false, Counter::DropFragOverlap, "overlap into the TCP header");
    // A second "first fragment" for a denied port is judged on its own and denied.
    let second_first = with_ext(REMOTE, POD, &[frag(0, true, 9)], PROTO_TCP, &denied[..24]);
    fx.check(true, &second_first, false, Counter::DropSg6Ingress, "rewritten first fragment");
    // ... and the datagram's later fragments then follow the denial.
    let tail = with_ext(REMOTE, POD, &[frag(3, false, 9)], PROTO_TCP, &denied[24..]);
    fx.check(true, &tail, false, Counter::DropSg6Ingress, "tail after the rewrite");
}

/// An atomic fragment (offset 0, no more fragments) is a whole packet (RFC 6946).
#[test]
fn atomic_fragment_is_judged_whole() {
    let mut fx = fx();
    let p = with_ext(REMOTE, POD, &[frag(0, false, 11)], PROTO_TCP, &seg(22));
    fx.check(true, &p, false, Counter::DropSg6Ingress, "atomic tcp/22");
    let p = with_ext(REMOTE, POD, &[frag(0, false, 12)], PROTO_TCP, &seg(80));
    fx.check(true, &p, true, Counter::Sg6Allowed, "atomic tcp/80");
    assert!(fx.frag6().is_empty());
}

/// Issue 3 for IPv6: fragments for the node itself (outside the pod prefix, or a prefix address
/// no pod has) pass the uplink in any order and leave no fragment state; only pods' datagrams
/// are judged.
#[test]
fn node_fragments_pass_the_uplink_in_any_order() {
    let mut fx = fx();
    let body = seg(22);
    for (i, node) in ["2001:db8:0:1::2", "2001:db8:0:1:1::fe"].into_iter().enumerate() {
        let id = 10 + i as u32;
        let first = with_ext(REMOTE, node, &[frag(0, true, id)], PROTO_TCP, &body[..32]);
        let rest = with_ext(REMOTE, node, &[frag(4, false, id)], PROTO_TCP, &body[32..]);
        for (what, f) in [("last", &rest), ("first", &first), ("last again", &rest)] {
            fx.check_xdp(f, true, &format!("{node}: {what} fragment"));
        }
    }
    assert!(fx.frag6().is_empty(), "state for the node's datagrams: {:?}", fx.frag6());
    assert_eq!(fx.counter(Counter::DropFragOrphan), 0);
    assert_eq!(fx.counter(Counter::NotOurs), 6);
}
