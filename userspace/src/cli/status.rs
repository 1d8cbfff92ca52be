use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::Result;
use podgate::{
    dataplane,
    foreign::{self, Hook},
    nat,
    pins::Pins,
};
use podgate_common::node_flags;
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
    /// "xdp" or "tc": where replies are reverse-translated (tc when another tool holds XDP).
    reverse_path: Option<&'static str>,
    flags: Vec<&'static str>,
    /// Other tools' programs on the hooks podgate is attached to.
    foreign_programs: Vec<String>,
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
        reverse_path: None,
        flags: Vec::new(),
        foreign_programs: Vec::new(),
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
        for (bit, name) in [
            (node_flags::FIB_REDIRECT, "fib_redirect"),
            (node_flags::FILTER_EIF, "filter_endpoint_independent"),
            (node_flags::FLOW_EVENTS, "flow_events"),
            (node_flags::TC_NETLINK, "tc_netlink"),
            (node_flags::BPF_LOG, "bpf_log"),
            (node_flags::FOREIGN_COEXIST, "foreign_coexist"),
        ] {
            if n.flags & bit != 0 {
                s.flags.push(name);
            }
        }
        let mut hooks = Vec::new();
        for l in &s.links {
            let Some((ifname, prog)) = Pins::parse_link_name(l) else { continue };
            let prog = prog.trim_end_matches(podgate::pins::NETLINK_SUFFIX).to_string();
            let hook = match prog.as_str() {
                dataplane::UPLINK_XDP => {
                    s.reverse_path = Some("xdp");
                    Hook::Xdp
                }
                dataplane::UPLINK_TC => {
                    s.reverse_path = Some("tc");
                    Hook::TcIngress
                }
                dataplane::POD_EGRESS => Hook::TcEgress,
                _ => Hook::TcIngress,
            };
            hooks.push((ifname, hook));
        }
        // The uplink's XDP slot too: another tool holding it is why the reverse path can be tc.
        if let Some(uplink) = podgate::netif::name_of(n.uplink_ifindex) {
            for hook in [Hook::Xdp, Hook::TcIngress] {
                if !hooks.contains(&(uplink.clone(), hook)) {
                    hooks.push((uplink.clone(), hook));
                }
            }
        }
        let ours = foreign::own_ids(pins);
        for (ifname, hook) in &hooks {
            // A veth deleted with its pod leaves only a stale pin: nothing to scan.
            if let Ok(found) = foreign::scan(ifname, *hook, &ours) {
                s.foreign_programs.extend(found.iter().map(ToString::to_string));
            }
        }
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
    println!("reverse NAT: {}", s.reverse_path.unwrap_or("not attached"));
    println!("flags:       {}", if s.flags.is_empty() { "none".into() } else { s.flags.join(", ") });
    if !s.foreign_programs.is_empty() {
        println!("beside podgate (other tools' programs, left in place):");
        for f in &s.foreign_programs {
            println!("  {f}");
        }
    }
    Ok(())
}
