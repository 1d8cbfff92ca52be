use anyhow::Result;
use podgate::{attach, pins::Pins, reserved_ports};

#[derive(clap::Args)]
pub struct Args {
    /// Also delete every pinned map (all mappings and flows are lost) and give back the ports
    /// podgate added to net.ipv4.ip_local_reserved_ports of this network namespace.
    #[arg(long)]
    purge: bool,
}

pub fn run(a: Args, pins: &Pins) -> Result<()> {
    let n = attach::reset(pins, a.purge)?;
    let mut released = String::new();
    if a.purge {
        let r = reserved_ports::release(&reserved_ports::record_path(pins.root()))?;
        if !r.is_empty() {
            released = format!("; gave back reserved ports {}", reserved_ports::format_list(&r));
        }
    }
    println!(
        "detached {n} program link(s){}{released}",
        if a.purge { format!("; removed {}", pins.root().display()) } else { String::new() }
    );
    Ok(())
}
