use anyhow::Result;
use podgate::control::Request;

use super::{Ctl, table::cell};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    json: bool,
    /// Show counters that are zero too.
    #[arg(long)]
    all: bool,
}

pub fn run(a: Args, ctl: &Ctl) -> Result<()> {
    let rows = ctl.result(Request::Stats { all: a.all })?;
    super::table::print(a.json, &["COUNTER", "KIND", "VALUE"], &rows, |r| {
        vec![cell(&r["counter"]), cell(&r["kind"]), cell(&r["value"])]
    })
}
