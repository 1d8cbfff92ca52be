use anyhow::Result;
use podgate::{dataplane, nat, pins::Pins};

#[derive(clap::Args)]
pub struct Args {
    /// Pretend this many seconds have passed (to see what would expire).
    #[arg(long, default_value_t = 0)]
    advance: u64,
}

pub fn run(a: Args, pins: &Pins) -> Result<()> {
    let node = dataplane::read_node(pins)?;
    let now = nat::boottime_ns() + a.advance * 1_000_000_000;
    let r = nat::gc(pins, &node.timeouts, now)?;
    let r6 = podgate::sg_maps::gc(pins, &node.timeouts, now)?;
    // IPv4 counters stay at the top level; the IPv6 pass is nested under "ipv6".
    let mut out = serde_json::to_value(&r)?;
    out["ipv6"] = serde_json::to_value(&r6)?;
    println!("{out}");
    Ok(())
}
