//! Random extension-header chains through the real program: the kernel's verdict and counter
//! agree with the host-tested walk (`podgate_common::sg::exthdr::walk`), and nothing unparsable
//! passes.
mod sg_common;

use std::cell::RefCell;

use podgate_common::{
    sg::{
        PROTO_TCP,
        exthdr::{Frag, walk},
    },
    stats::Counter,
};
use proptest::prelude::*;
use sg_common::*;

fn ext() -> impl Strategy<Value = Ext> {
    prop_oneof![
        Just(Ext::HopByHop),
        Just(Ext::DestOpts),
        prop_oneof![Just(0u8), Just(2), Just(4)].prop_map(Ext::Routing),
        (prop_oneof![Just(0u16), Just(1), Just(2), Just(300)], any::<bool>(), 1u32..4)
            .prop_map(|(offset, more, id)| Ext::Fragment { offset, more, id }),
    ]
}

thread_local! {
    static FX: RefCell<Option<Fx>> = const { RefCell::new(None) };
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn kernel_agrees_with_the_walk(
        chain in proptest::collection::vec(ext(), 0..9),
        dport in prop_oneof![Just(80u16), Just(22)],
        sport in 1024u16..65535,
        keep in 0usize..40,
    ) {
        FX.with(|cell| {
            let mut cell = cell.borrow_mut();
            let fx = cell.get_or_insert_with(|| {
                Fx::new("[security_groups.web]\ningress = [{ proto = \"tcp\", ports = \"80\", cidr = \"::/0\" }]", &["web"])
            });
            let seg = tcp_segment(REMOTE, POD, sport, dport);
            let pkt = with_ext(REMOTE, POD, &chain, PROTO_TCP, &seg[..keep.min(seg.len())]);
            let expected = match walk(&pkt[..], 14, pkt.len()) {
                Err(c) => Err(c),
                // Fragments of earlier cases may have left records; judge only the cases whose
                // outcome does not depend on them.
                Ok(u) => match u.frag {
                    Frag::NonFirst { .. } => return Ok(()),
                    _ if u.proto != PROTO_TCP => Err(Counter::DropSg6Ingress),
                    _ if dport == 80 => Ok(()),
                    _ => Err(Counter::DropSg6Ingress),
                },
            };
            let before: Vec<u64> = Counter::ALL.iter().map(|&c| fx.counter(c)).collect();
            let out = fx.pod_receives(&pkt);
            let after: Vec<u64> = Counter::ALL.iter().map(|&c| fx.counter(c)).collect();
            let moved: Vec<Counter> = Counter::ALL.iter().zip(before.iter().zip(&after))
                .filter(|(_, (b, a))| a != b).map(|(&c, _)| c).collect();
            match expected {
                Err(c) => {
                    prop_assert_eq!(out.verdict, podgate_tests::TC_ACT_SHOT, "{:?}", chain);
                    prop_assert_eq!(moved, vec![c], "{:?}", chain);
                }
                Ok(()) => {
                    prop_assert_eq!(out.verdict, podgate_tests::TC_ACT_OK, "{:?}", chain);
                    prop_assert!(moved == vec![Counter::Sg6Allowed] || moved == vec![Counter::Sg6Tracked], "{:?} {:?}", chain, moved);
                }
            }
            Ok(())
        })?;
    }
}
