use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;
use podgate::config::Config;
use serde_json::json;

#[derive(Subcommand)]
pub enum ConfigVerb {
    /// Validate a config file without touching the kernel.
    Check {
        file: PathBuf,
        /// A summary object (valid) or the error with its field and value (invalid) on stdout.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(v: ConfigVerb) -> Result<()> {
    match v {
        ConfigVerb::Check { file, json } => match Config::load(&file) {
            Ok(c) => {
                if json {
                    let socket = c.node.socket.clone().unwrap_or_else(|| podgate::control::default_socket(&c.node.pin_root));
                    let summary = json!({
                        "ok": true,
                        "file": file,
                        "uplink": c.node.uplink,
                        "ipv4": c.node.ipv4,
                        "pod_prefix": c.node.pod_prefix,
                        "pod_ipv4_cidr": c.node.pod_ipv4_cidr,
                        "sources": c.node.sources,
                        "snat_ports": format!("{}-{}", c.node.port_min, c.node.port_max),
                        "pin_root": c.node.pin_root,
                        "socket": socket,
                        "metrics": c.node.metrics,
                        "pods": c.pods.iter().map(|p| json!({"name": p.name, "security_groups": p.security_groups})).collect::<Vec<_>>(),
                        "security_groups": c.security_groups.keys().collect::<Vec<_>>(),
                    });
                    println!("{}", serde_json::to_string_pretty(&summary)?);
                } else {
                    println!(
                        "{}: ok ({} pods, {} security groups, uplink {}, pod prefix {} from the {}, node IPv4 {})",
                        file.display(),
                        c.pods.len(),
                        c.security_groups.len(),
                        c.node.uplink,
                        c.node.pod_prefix,
                        c.node.sources.pod_prefix,
                        match c.node.ipv4 {
                            Some(ip) => format!("{ip} from the {}", c.node.sources.ipv4),
                            None => "from the uplink address".to_string(),
                        }
                    );
                }
                Ok(())
            }
            Err(e) if json => {
                let (field, value) = e.field_value().map(|(f, v)| (Some(f), v)).unwrap_or((None, None));
                let out = json!({
                    "ok": false,
                    "file": file,
                    "error": podgate::control::error_chain(&e),
                    "field": field,
                    "value": value,
                });
                println!("{}", serde_json::to_string_pretty(&out)?);
                // The JSON is the whole report; the exit status says it failed.
                std::process::exit(1);
            }
            Err(e) => Err(e.into()),
        },
    }
}
