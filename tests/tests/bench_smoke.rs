//! The benchmark's micro part with tiny counts: it runs, every case took its intended path (the
//! bench checks the verdict counters itself and fails otherwise), the numbers are sane and the
//! JSON round-trips. No timing assertions.

use podgate_tests::bench::{MicroOpts, micro};

#[test]
fn micro_bench_smoke() {
    let o = MicroOpts { repeat: 2_000, rounds: 2, singles: 200, scale_sizes: vec![100, 1_000], scale_ninety: false, gc: true };
    let r = micro(&o).map_err(|e| format!("{e:#}")).expect("micro bench");
    let v: serde_json::Value = serde_json::from_str(&serde_json::to_string(&r).unwrap()).expect("JSON parses");
    let cases = v["cases"].as_array().unwrap();
    for name in ["established SNAT egress (UDP", "established SNAT egress (TCP", "reply reverse NAT, XDP", "reply reverse NAT, TC", "new flow", "v6 deny", "v6 allow, new flow", "v6 allow, tracked"] {
        let c = cases.iter().find(|c| c["name"].as_str().unwrap().starts_with(name)).unwrap_or_else(|| panic!("case {name} missing: {v}"));
        let (ns, floor) = (c["ns"].as_f64().unwrap(), c["floor_ns"].as_f64().unwrap());
        assert!(ns > 0.0 && ns < 1e6, "{name}: {ns} ns");
        assert!(floor > 0.0 && floor < 1e6, "{name}: floor {floor} ns");
        assert!(c["verified"].as_str().unwrap().contains("no drops"), "{c}");
    }
    let sc = &v["scale"];
    let pts = sc["points"].as_array().unwrap();
    assert_eq!(pts.len(), 2);
    assert!(pts[1]["entries"].as_u64().unwrap() >= 990, "{}", pts[1]);
    let bpm = sc["bytes_per_mapping"].as_f64().unwrap();
    assert!(bpm > 24.0 && bpm < 10_000.0, "bytes per mapping {bpm}");
    let gc = sc["gc"].as_array().unwrap();
    assert_eq!(gc[0]["flows_expired"], 0, "a fresh table has nothing to expire: {}", gc[0]);
    assert!(gc[1]["flows_expired"].as_u64().unwrap() >= 1_000, "{}", gc[1]);
    assert!(gc[1]["mappings_expired"].as_u64().unwrap() >= 1_000, "{}", gc[1]);
}
