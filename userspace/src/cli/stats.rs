use anyhow::Result;
use podgate::{dataplane, pins::Pins};
use serde::Serialize;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    json: bool,
    /// Show counters that are zero too.
    #[arg(long)]
    all: bool,
}

#[derive(Serialize)]
struct Row {
    counter: &'static str,
    kind: &'static str,
    value: u64,
}

pub fn run(a: Args, pins: &Pins) -> Result<()> {
    let rows: Vec<Row> = dataplane::read_stats(pins)?
        .into_iter()
        .filter(|(_, v)| a.all || *v > 0)
        .map(|(c, v)| Row {
            counter: c.name(),
            kind: if c.is_drop() { "drop" } else { "verdict" },
            value: v,
        })
        .collect();
    super::table::print(a.json, &["COUNTER", "KIND", "VALUE"], &rows, |r| {
        vec![r.counter.into(), r.kind.into(), r.value.to_string()]
    })
}
