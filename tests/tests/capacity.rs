//! DESIGN.md §4 capacity through the real programs. A file of its own: 60k test runs take
//! seconds here but over ten minutes under `cargo xtask vm-test`'s emulation, whose default set
//! (`smoke`, `snat*`, `sg*`) is about the verifier and leaves this logic test out.
mod snat_common;
use podgate_common::stats::Counter;
use snat_common::*;

#[test]
fn tcp_from_even_ports_holds_60k_flows_toward_one_destination() {
    // DESIGN §4: ≥ 60k concurrent flows to one destination. Even source ports only, from two
    // pods, the way Linux's connect() hands them out: with TCP parity kept, the 32256 even ports
    // of 1024-65535 would run out half way.
    let mut env = Env::with(Config {
        port_min: 1024,
        port_max: 65535,
        ..Default::default()
    });
    let (a, b) = (env.pod_a, env.pod_b);
    let mut used = std::collections::HashSet::new();
    for i in 0..60_000u32 {
        let (pod, addr) = if i % 2 == 0 { (a, POD_A) } else { (b, POD_B) };
        let sport = 1024 + 2 * (i / 2) as u16;
        let f = tcp(addr, sport, REMOTE1, 443, "S", b"");
        let o = env.egress(pod, &f);
        assert_eq!(o.verdict, TC_ACT_OK, "flow {i} from {addr:?}:{sport} not translated");
        let ext = u16::from_be_bytes([o.packet[14 + 20], o.packet[14 + 21]]);
        assert!(ext >= 1024, "{ext}");
        assert!(used.insert(ext), "external port {ext} handed out twice toward one remote");
    }
    assert_eq!(env.counter(Counter::SnatNewMapping), 60_000);
    assert_eq!(env.counter(Counter::DropPortExhausted), 0);
    assert_eq!(env.mappings().len(), 60_000);
    assert_eq!(env.claims().len(), 60_000);
}
