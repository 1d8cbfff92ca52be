use anyhow::Result;
use podgate::control::Request;

use super::Ctl;

#[derive(clap::Args)]
pub struct Args {
    /// Pretend this many seconds have passed (to see what would expire).
    #[arg(long, default_value_t = 0)]
    advance: u64,
}

pub fn run(a: Args, ctl: &Ctl) -> Result<()> {
    println!("{}", ctl.result(Request::Gc { advance_secs: a.advance })?);
    Ok(())
}
