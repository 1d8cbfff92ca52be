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

/// What the verifier of the running kernel processed for each program. Older kernels (6.1) prune
/// less and stop at 1M instructions, so the count on this kernel must stay far below that.
#[test]
fn verified_instructions_stay_small() {
    use aya::programs::{SchedClassifier, Xdp};
    let mut h = Harness::new().expect("load");
    let mut worst = 0;
    for name in ["pod_ingress", "pod_egress", "uplink_tc", "uplink_xdp"] {
        let p = h.ebpf.program_mut(name).unwrap();
        let info = match name {
            "uplink_xdp" => <&mut Xdp>::try_from(p).unwrap().info(),
            _ => <&mut SchedClassifier>::try_from(p).unwrap().info(),
        }
        .expect("prog info");
        let n = info.verified_instruction_count().expect("kernel reports verified_insns");
        eprintln!("{name}: {n} verified instructions");
        worst = worst.max(n);
    }
    assert!(worst < VERIFIED_BUDGET, "a program needed {worst} verified instructions");
}

const VERIFIED_BUDGET: u32 = 400_000;
