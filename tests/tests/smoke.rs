//! Every program loads through the verifier of the running kernel and runs over a packet.
use podgate_tests::{Harness, TC_ACT_OK, XDP_PASS};

#[test]
fn all_programs_load_and_noops_pass() {
    let mut h = Harness::new().expect("load");
    let frame = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4([169, 254, 172, 10], [198, 51, 100, 1], 64)
        .udp(4000, 53);
    let mut pkt = Vec::new();
    frame.write(&mut pkt, b"hello").unwrap();
    assert_eq!(h.run_tc("noop_tc", &pkt, 1).unwrap().verdict, TC_ACT_OK);
    assert_eq!(h.run_xdp("noop_xdp", &pkt, 1).unwrap().verdict, XDP_PASS);
}
