//! Beside another tool's TC programs (`foreign_programs = "coexist"`), a pass must hand the packet
//! on down the chain (TC_ACT_UNSPEC = TCX_NEXT) instead of ending it; drops and redirects stay
//! final. Alone, podgate keeps answering TC_ACT_OK.
mod snat_common;

use podgate_common::node_flags;
use snat_common::{Config, Env, POD_A, POD_B, REMOTE1, TC_ACT_OK, TC_ACT_SHOT, udp};

const TC_ACT_UNSPEC: u32 = -1i32 as u32;

fn verdicts(flags: u32) -> (u32, u32) {
    let mut env = Env::with(Config { flags, ..Default::default() });
    let a = env.pod_a;
    // Pod to pod inside the node-local range: passed untranslated.
    let pass = env.egress(a, &udp(POD_A, 5000, POD_B, 53, b"x")).verdict;
    let spoofed = env.egress(a, &udp([169, 254, 172, 99], 5000, REMOTE1, 53, b"x")).verdict;
    (pass, spoofed)
}

#[test]
fn a_pass_continues_the_chain_only_when_coexisting() {
    assert_eq!(verdicts(0), (TC_ACT_OK, TC_ACT_SHOT));
    assert_eq!(verdicts(node_flags::FOREIGN_COEXIST), (TC_ACT_UNSPEC, TC_ACT_SHOT));
}
