//! `podgate cni`: the chained CNI plugin entry point (spec 1.0: ADD, DEL, CHECK, VERSION).
//! Everything it prints on stdout is CNI JSON; failures are CNI error objects with exit 1.

use std::{io::Read as _, net::Ipv4Addr, process::ExitCode};

use ipnet::{Ipv4Net, Ipv6Net};
use podgate::{
    cni::{self, CniError, NetConf},
    config::{DEFAULT_PIN_ROOT, RawPod, validate_pod},
    dataplane,
    pins::Pins,
};

pub fn main() -> ExitCode {
    let mut input = String::new();
    let command = std::env::var("CNI_COMMAND").unwrap_or_default();
    let version_hint = if command == "VERSION" {
        "1.0.0".to_string()
    } else {
        let _ = std::io::stdin().read_to_string(&mut input);
        serde_json::from_str::<serde_json::Value>(&input)
            .ok()
            .and_then(|v| v.get("cniVersion").and_then(|s| s.as_str()).map(str::to_string))
            .unwrap_or_else(|| "1.0.0".into())
    };
    match run(&command, &input) {
        Ok(out) => {
            if let Some(out) = out {
                println!("{out}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{}", e.to_json(&version_hint));
            ExitCode::FAILURE
        }
    }
}

fn env(name: &'static str) -> Result<String, CniError> {
    std::env::var(name).ok().filter(|v| !v.is_empty()).ok_or(CniError::InvalidEnv(name))
}

fn plugin<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> CniError + '_ {
    move |e| CniError::Plugin(format!("{what}: {e:#}"))
}

fn run(command: &str, input: &str) -> Result<Option<String>, CniError> {
    if command == "VERSION" {
        return Ok(Some(
            serde_json::json!({"cniVersion": "1.0.0", "supportedVersions": cni::SUPPORTED_VERSIONS}).to_string(),
        ));
    }
    let conf: NetConf = serde_json::from_str(input).map_err(|e| CniError::Decode(e.to_string()))?;
    cni::check_version(&conf.cni_version)?;
    let container_id = env("CNI_CONTAINERID")?;
    let name = cni::pod_name(&container_id, &std::env::var("CNI_ARGS").unwrap_or_default());
    let pins = Pins::new(conf.pin_root.clone().unwrap_or_else(|| DEFAULT_PIN_ROOT.into()));
    match command {
        "ADD" => {
            env("CNI_NETNS")?;
            env("CNI_IFNAME")?;
            let prev = conf
                .prev_result
                .as_ref()
                .ok_or_else(|| CniError::InvalidConfig("podgate is a chained plugin: prevResult is required".into()))?;
            let pod = cni::derive_pod(prev, name)?;
            let node = dataplane::read_node(&pins).map_err(plugin("reading node state"))?;
            let prefix = Ipv6Net::new(node.pod_prefix.into(), 80).map_err(plugin("node prefix"))?;
            let v4net = Ipv4Net::new(Ipv4Addr::from(node.pod_ipv4_net), node.pod_ipv4_prefix_len as u8)
                .map_err(plugin("node pod_ipv4_cidr"))?;
            let raw = RawPod {
                name: pod.name.clone(),
                ipv6: pod.ipv6.to_string(),
                ipv4: pod.ipv4.to_string(),
                veth: pod.veth.clone(),
                veth_v4: pod.veth_v4.clone(),
                security_groups: Vec::new(),
            };
            let spec = validate_pod(prefix, v4net, &raw, "prevResult").map_err(|e| CniError::InvalidConfig(e.to_string()))?;
            dataplane::add_pod(&pins, node.pod_quota, &spec, &[]).map_err(plugin("registering the pod"))?;
            // A chained plugin passes the previous result on.
            let mut out: serde_json::Value = serde_json::from_str(input).map_err(|e| CniError::Decode(e.to_string()))?;
            let mut result = out["prevResult"].take();
            result["cniVersion"] = serde_json::Value::String(conf.cni_version.clone());
            Ok(Some(result.to_string()))
        }
        "DEL" => {
            // DEL must succeed for what is not (or no longer) there.
            if !pins.exists() {
                return Ok(None);
            }
            let pods = dataplane::list_pods(&pins).map_err(plugin("listing pods"))?;
            let cid: String = container_id.chars().take(12).collect();
            let suffix = format!("@{cid}");
            if let Some(p) = pods.iter().find(|p| p.name == name || p.name.ends_with(&suffix)) {
                dataplane::remove_pod(&pins, &p.name).map_err(plugin("removing the pod"))?;
            }
            Ok(None)
        }
        "CHECK" => {
            let prev = conf
                .prev_result
                .as_ref()
                .ok_or_else(|| CniError::InvalidConfig("CHECK needs prevResult".into()))?;
            let want = cni::derive_pod(prev, name.clone())?;
            let pods = dataplane::list_pods(&pins).map_err(plugin("listing pods"))?;
            let got = pods
                .iter()
                .find(|p| p.name == name)
                .ok_or_else(|| CniError::Plugin(format!("pod {name} is not registered with podgate")))?;
            if got.pod.ipv6 != want.ipv6.octets() || got.pod.ipv4 != want.ipv4.octets() {
                return Err(CniError::Plugin(format!("pod {name} is registered with other addresses")));
            }
            let ifindex = podgate::netif::ifindex(&want.veth).map_err(plugin("host veth"))?;
            if got.pod.ifindex != ifindex {
                return Err(CniError::Plugin(format!("pod {name} is registered on another interface")));
            }
            Ok(None)
        }
        other => Err(CniError::InvalidEnv(if other.is_empty() { "CNI_COMMAND" } else { "CNI_COMMAND (unknown command)" })),
    }
}
