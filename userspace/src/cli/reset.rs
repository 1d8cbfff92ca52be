use anyhow::Result;
use podgate::{dataplane, pins::Pins};

#[derive(clap::Args)]
pub struct Args {
    /// Also delete every pinned map: all mappings and flows are lost.
    #[arg(long)]
    purge: bool,
}

pub fn run(a: Args, pins: &Pins) -> Result<()> {
    let n = dataplane::reset(pins, a.purge)?;
    println!(
        "detached {n} program link(s){}",
        if a.purge { format!("; removed {}", pins.root().display()) } else { String::new() }
    );
    Ok(())
}
