//! Live drop and flow events from the `events` ring buffer.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use podgate::{maps::open_map, pins::Pins, util::proto_name};
use podgate_common::{Event, event_kind, map_names, stats::Counter};
use serde::Serialize;

#[derive(clap::Args)]
pub struct Args {
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
    /// Stop after this many events.
    #[arg(long)]
    count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long)]
    seconds: Option<u64>,
    /// Only drop events.
    #[arg(long, conflicts_with = "flows")]
    drops: bool,
    /// Only new-flow events (the daemon emits them with `--flow-events` / daemon.flow_events).
    #[arg(long)]
    flows: bool,
}

#[derive(Serialize)]
struct Line {
    kind: &'static str,
    reason: String,
    pod_id: u32,
    rule: Option<u32>,
    proto: String,
    src: String,
    dst: String,
    /// The node's external port of a new SNAT flow.
    #[serde(skip_serializing_if = "Option::is_none")]
    ext_port: Option<u16>,
}

pub fn run(a: Args, pins: &Pins) -> Result<()> {
    let map = open_map(pins, map_names::EVENTS)?;
    let mut rb: RingBuf<MapData> = RingBuf::try_from(map).context("events map")?;
    let deadline = a.seconds.map(|s| Instant::now() + Duration::from_secs(s));
    let mut seen = 0u64;
    loop {
        while let Some(item) = rb.next() {
            if item.len() < std::mem::size_of::<Event>() {
                continue;
            }
            // SAFETY: the programs write whole `Event`s; read unaligned from the ring.
            let ev: Event = unsafe { std::ptr::read_unaligned(item.as_ptr() as *const Event) };
            drop(item);
            if (a.drops && ev.kind != event_kind::DROP) || (a.flows && ev.kind != event_kind::NEW_FLOW) {
                continue;
            }
            print_event(&ev, a.json)?;
            seen += 1;
            if a.count.is_some_and(|c| seen >= c) {
                return Ok(());
            }
        }
        let timeout_ms = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(());
                }
                left.as_millis().min(1000) as i32
            }
            None => 1000,
        };
        let mut pfd = libc::pollfd { fd: rb.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    }
}

fn addr(family: u8, b: &[u8; 16]) -> String {
    if family == 4 {
        Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string()
    } else {
        Ipv6Addr::from(*b).to_string()
    }
}

fn print_event(e: &Event, json: bool) -> Result<()> {
    let line = Line {
        kind: match e.kind {
            event_kind::DROP => "drop",
            event_kind::NEW_FLOW => "new_flow",
            _ => "unknown",
        },
        reason: Counter::from_index(e.reason).map(|c| c.name().to_string()).unwrap_or_else(|| e.reason.to_string()),
        pod_id: e.pod_id,
        rule: (e.rule != u32::MAX && e.rule != 0).then_some(e.rule),
        proto: proto_name(e.proto),
        src: format!("{}:{}", addr(e.family, &e.src), e.sport),
        dst: format!("{}:{}", addr(e.family, &e.dst), e.dport),
        ext_port: (e.kind == event_kind::NEW_FLOW && e.family == 4).then_some(e.ext_port),
    };
    if json {
        println!("{}", serde_json::to_string(&line)?);
    } else {
        println!(
            "{:<8} {:<24} pod={} {} {} -> {}{}{}",
            line.kind,
            line.reason,
            line.pod_id,
            line.proto,
            line.src,
            line.dst,
            line.rule.map(|r| format!(" rule={r}")).unwrap_or_default(),
            line.ext_port.map(|p| format!(" ext_port={p}")).unwrap_or_default()
        );
    }
    Ok(())
}
