//! `podgate cni`: the chained CNI plugin entry point (spec 1.1: ADD, DEL, CHECK, VERSION,
//! STATUS, GC).
//! Everything it prints on stdout is CNI JSON; failures are CNI error objects with exit 1.
//! Requests go to the daemon's control socket; without a daemon, a pod without security groups
//! is registered on the pinned maps directly (groups need the daemon's definitions).

use std::{io::Read as _, path::PathBuf, process::ExitCode};

use podgate::{
    cni::{self, CniError, NetConf},
    config::DEFAULT_PIN_ROOT,
    control::{self, ControlError, PodAdd, Request},
    pins::Pins,
};
use serde_json::Value;

pub fn main() -> ExitCode {
    let mut input = String::new();
    let command = std::env::var("CNI_COMMAND").unwrap_or_default();
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "cni").collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{}", cni::usage());
        return ExitCode::SUCCESS;
    }
    // A person at a terminal, not a runtime: say what this is (to stderr, exit 0, as the
    // reference plugins' skel does) instead of blocking on stdin or printing a decode error.
    if command.is_empty() {
        eprintln!("{}", cni::usage());
        return ExitCode::SUCCESS;
    }
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

fn plugin(what: &str) -> impl FnOnce(ControlError) -> CniError + '_ {
    move |e| {
        // Bad input (addresses, group names) is the network configuration's fault.
        if e.is_invalid_input() {
            CniError::InvalidConfig(control::error_chain(&e))
        } else {
            CniError::Plugin(format!("{what}: {}", control::error_chain(&e)))
        }
    }
}

/// The daemon's socket and the pins, from the network configuration.
struct Target {
    pins: Pins,
    socket: PathBuf,
    root: PathBuf,
}

impl Target {
    fn of(conf: &NetConf) -> Self {
        let root = PathBuf::from(conf.pin_root.clone().unwrap_or_else(|| DEFAULT_PIN_ROOT.into()));
        let socket = conf.socket.clone().map(PathBuf::from).unwrap_or_else(|| control::default_socket(&root));
        Target { pins: Pins::new(&root), socket, root }
    }

    fn call(&self, req: Request, what: &str) -> Result<Value, CniError> {
        control::dispatch(&self.socket, &self.pins, Some(&self.root), &req).map(|(v, _)| v).map_err(plugin(what))
    }

    fn pods(&self) -> Result<Vec<Value>, CniError> {
        let v = self.call(Request::PodList, "listing pods")?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }
}

fn run(command: &str, input: &str) -> Result<Option<String>, CniError> {
    if command == "VERSION" {
        return Ok(Some(
            serde_json::json!({"cniVersion": "1.0.0", "supportedVersions": cni::SUPPORTED_VERSIONS}).to_string(),
        ));
    }
    let conf: NetConf = serde_json::from_str(input).map_err(|e| CniError::Decode(e.to_string()))?;
    cni::check_version(&conf.cni_version)?;
    let target = Target::of(&conf);
    match command {
        // Ready means the daemon answers: without it, groups cannot be resolved and nothing
        // re-attaches what a reset detached.
        "STATUS" => {
            return match control::call(&target.socket, Some(&target.root), &Request::Status) {
                Ok(Some(_)) => Ok(None),
                Ok(None) => Err(CniError::Unavailable(format!("no daemon on {}", target.socket.display()))),
                Err(e) => Err(CniError::Unavailable(control::error_chain(&e))),
            };
        }
        "GC" => {
            if !target.pins.exists() {
                return Ok(None);
            }
            let valid = conf.valid_attachments.clone().unwrap_or_default();
            let names: Vec<String> =
                target.pods()?.iter().filter_map(|p| p["name"].as_str().map(str::to_string)).collect();
            for n in cni::gc_victims(&names, &valid) {
                target.call(Request::PodDel { name: n }, "collecting a stale pod")?;
            }
            return Ok(None);
        }
        _ => {}
    }
    let container_id = env("CNI_CONTAINERID")?;
    let cni_args = std::env::var("CNI_ARGS").unwrap_or_default();
    let name = cni::pod_name(&container_id, &cni_args);
    let groups = cni::security_groups(&conf.security_groups, &cni_args);
    match command {
        "ADD" => {
            env("CNI_NETNS")?;
            env("CNI_IFNAME")?;
            let prev = conf
                .prev_result
                .as_ref()
                .ok_or_else(|| CniError::InvalidConfig("podgate is a chained plugin: prevResult is required".into()))?;
            let pod = cni::derive_pod(prev, name)?;
            target.call(
                Request::PodAdd(PodAdd {
                    name: pod.name.clone(),
                    ipv6: pod.ipv6.to_string(),
                    ipv4: pod.ipv4.to_string(),
                    veth: pod.veth.clone(),
                    veth_v4: pod.veth_v4.clone(),
                    security_groups: groups,
                }),
                "registering the pod",
            )?;
            // A chained plugin passes the previous result on.
            let mut out: serde_json::Value = serde_json::from_str(input).map_err(|e| CniError::Decode(e.to_string()))?;
            let mut result = out["prevResult"].take();
            result["cniVersion"] = serde_json::Value::String(conf.cni_version.clone());
            Ok(Some(result.to_string()))
        }
        "DEL" => {
            // DEL must succeed for what is not (or no longer) there.
            if !target.pins.exists() {
                return Ok(None);
            }
            let cid: String = container_id.chars().take(12).collect();
            let suffix = format!("@{cid}");
            let found = target
                .pods()?
                .into_iter()
                .filter_map(|p| p["name"].as_str().map(str::to_string))
                .find(|n| *n == name || n.ends_with(&suffix));
            if let Some(n) = found {
                target.call(Request::PodDel { name: n }, "removing the pod")?;
            }
            Ok(None)
        }
        "CHECK" => {
            let prev = conf
                .prev_result
                .as_ref()
                .ok_or_else(|| CniError::InvalidConfig("CHECK needs prevResult".into()))?;
            let want = cni::derive_pod(prev, name.clone())?;
            let pods = target.pods()?;
            let got = pods
                .iter()
                .find(|p| p["name"] == name.as_str())
                .ok_or_else(|| CniError::Plugin(format!("pod {name} is not registered with podgate")))?;
            if got["ipv6"] != want.ipv6.to_string().as_str() || got["ipv4"] != want.ipv4.to_string().as_str() {
                return Err(CniError::Plugin(format!("pod {name} is registered with other addresses")));
            }
            let ifindex = podgate::netif::ifindex(&want.veth).map_err(|e| CniError::Plugin(format!("host veth: {e}")))?;
            if got["ifindex"] != ifindex {
                return Err(CniError::Plugin(format!("pod {name} is registered on another interface")));
            }
            let mut have: Vec<String> = got["security_groups"]
                .as_array()
                .map(|a| a.iter().filter_map(|g| g.as_str().map(str::to_string)).collect())
                .unwrap_or_default();
            let mut wanted = groups;
            have.sort();
            wanted.sort();
            if have != wanted {
                return Err(CniError::Plugin(format!("pod {name} has security groups {have:?}, the configuration asks for {wanted:?}")));
            }
            Ok(None)
        }
        other => Err(CniError::InvalidEnv(if other.is_empty() { "CNI_COMMAND" } else { "CNI_COMMAND (unknown command)" })),
    }
}
