use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::Result;
use podgate::{dataplane, nat, pins::Pins};
use serde::Serialize;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Status {
    pin_root: String,
    installed: bool,
    abi_version: u32,
    node_ipv4: Option<Ipv4Addr>,
    pod_prefix: Option<String>,
    uplink_ifindex: u32,
    snat_ports: Option<String>,
    pods: usize,
    mappings: usize,
    flows: usize,
    links: Vec<String>,
}

pub fn run(a: Args, pins: &Pins) -> Result<()> {
    let mut s = Status {
        pin_root: pins.root().display().to_string(),
        installed: pins.exists(),
        abi_version: 0,
        node_ipv4: None,
        pod_prefix: None,
        uplink_ifindex: 0,
        snat_ports: None,
        pods: 0,
        mappings: 0,
        flows: 0,
        links: Vec::new(),
    };
    if s.installed {
        let n = dataplane::read_node(pins)?;
        s.abi_version = n.abi_version;
        s.node_ipv4 = Some(Ipv4Addr::from(n.ipv4));
        s.pod_prefix = Some(format!("{}/80", Ipv6Addr::from(n.pod_prefix)));
        s.uplink_ifindex = n.uplink_ifindex;
        s.snat_ports = Some(format!("{}-{}", n.port_min, n.port_max));
        s.pods = dataplane::list_pods(pins)?.len();
        s.mappings = nat::mappings(pins)?.len();
        s.flows = nat::flows(pins)?.len();
        s.links = dataplane::list_links(pins)?
            .iter()
            .filter_map(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()))
            .collect();
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    if !s.installed {
        println!("podgate: not installed under {} (start it with `podgate run --config FILE`)", s.pin_root);
        return Ok(());
    }
    println!("pin root:    {}", s.pin_root);
    println!("map ABI:     v{}", s.abi_version);
    println!("node IPv4:   {}", s.node_ipv4.map(|a| a.to_string()).unwrap_or_default());
    println!("pod prefix:  {}", s.pod_prefix.clone().unwrap_or_default());
    println!("SNAT ports:  {}", s.snat_ports.clone().unwrap_or_default());
    println!("pods:        {}", s.pods);
    println!("mappings:    {}", s.mappings);
    println!("flows:       {}", s.flows);
    println!("attached:    {}", if s.links.is_empty() { "nothing".into() } else { s.links.join(", ") });
    Ok(())
}
