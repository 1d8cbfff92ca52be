use anyhow::Result;
use podgate::control::{Answered, Request};

use super::{Ctl, table::cell};

/// Exit status of `podgate status` when no podgate program is attached (not installed, or
/// everything detached): the report is still printed.
pub const NOTHING_ATTACHED: i32 = 3;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args, ctl: &Ctl) -> Result<()> {
    let (s, answered) = ctl.call(Request::Status)?;
    // A probe or script asking "is podgate forwarding here?" gets the answer in the exit status.
    let nothing_attached = s["links"].as_array().is_none_or(|l| l.is_empty());
    let done = || -> Result<()> {
        if nothing_attached {
            std::process::exit(NOTHING_ATTACHED);
        }
        Ok(())
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return done();
    }
    let via = match answered {
        Answered::Daemon => format!(
            "daemon (pid {}, up {} s, config {}) on {}",
            s["daemon"]["pid"],
            s["daemon"]["uptime_secs"],
            cell(&s["daemon"]["config"]),
            ctl.socket.display()
        ),
        Answered::Pins => format!("pinned maps (no daemon answers on {})", ctl.socket.display()),
    };
    if s["installed"] != true {
        println!("podgate: not installed under {} (start it with `podgate run --config FILE`)", cell(&s["pin_root"]));
        println!("answered by: {via}");
        return done();
    }
    let links = cell(&s["links"]);
    println!("answered by: {via}");
    println!("pin root:    {}", cell(&s["pin_root"]));
    println!("map ABI:     v{}", s["abi_version"]);
    // Where the daemon took them from (file, environment, uplink); the pins alone do not know.
    let from = |k: &str| match &s["daemon"]["node_sources"][k] {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(v) => format!(" (from {})", v.replace('_', " ")),
        v => format!(" (from {})", v.as_object().and_then(|o| o.iter().next()).map(|(k, v)| format!("{k} {}", cell(v))).unwrap_or_default()),
    };
    println!("node IPv4:   {}{}", cell(&s["node_ipv4"]), from("ipv4"));
    println!("pod prefix:  {}{}", cell(&s["pod_prefix"]), from("pod_prefix"));
    println!("SNAT ports:  {}", cell(&s["snat_ports"]));
    println!("pods:        {}", s["pods"]);
    println!("mappings:    {}", s["mappings"]);
    println!("flows:       {}", s["flows"]);
    println!("attached:    {}", if links.is_empty() { "nothing".into() } else { links.replace(',', ", ") });
    println!("reverse NAT: {}", s["reverse_path"].as_str().unwrap_or("not attached"));
    let flags = cell(&s["flags"]);
    println!("flags:       {}", if flags.is_empty() { "none".into() } else { flags.replace(',', ", ") });
    if let Some(f) = s["foreign_programs"].as_array().filter(|f| !f.is_empty()) {
        println!("beside podgate (other tools' programs, left in place):");
        for p in f {
            println!("  {}", p.as_str().unwrap_or_default());
        }
    }
    done()
}
