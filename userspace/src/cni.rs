//! CNI 1.0 chained plugin logic: derive a pod from the previous plugin's result, register it on
//! ADD, remove it and all its state on DEL. Pure parts (parsing, pod derivation) are separate from
//! the parts that touch maps, so they are unit-tested without a kernel.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

/// 1.1.0 is advertised because STATUS and GC are implemented (see `cli/cni.rs`).
pub const SUPPORTED_VERSIONS: &[&str] = &["0.4.0", "1.0.0", "1.1.0"];

/// What `podgate cni` prints when a person runs it (no CNI_COMMAND, or `--help`), in the manner
/// of the reference plugins' "about" text.
pub fn usage() -> String {
    format!(
        "CNI podgate plugin (chained): registers the pod that the previous plugin's result \
describes with the podgate daemon\n\
(IPv4 egress SNAT to the node's address, IPv6 security groups on the pod's veth).\n\
CNI protocol versions supported: {}\n\
Commands (CNI_COMMAND): ADD, DEL, CHECK, VERSION, STATUS (does the daemon answer?), \
GC (removes pods whose attachment is not in cni.dev/valid-attachments).\n\
Run by a container runtime with the network configuration on stdin, e.g. in a conflist:\n\
  {{\"type\": \"podgate\", \"securityGroups\": [\"web\"], \"socket\": \"/run/podgate/podgate.sock\"}}\n\
Per pod: CNI_ARGS PODGATE_SECURITY_GROUPS=a,b. See README.md (CNI plugin).",
        SUPPORTED_VERSIONS.join(", ")
    )
}

/// CNI error codes (spec §Error): 1-99 are the spec's, 100+ the plugin's.
#[derive(Debug, Error)]
pub enum CniError {
    #[error("incompatible CNI version {0:?} (supported: {SUPPORTED_VERSIONS:?})")]
    IncompatibleVersion(String),
    #[error("missing or bad environment variable {0}")]
    InvalidEnv(&'static str),
    #[error("cannot decode the network configuration: {0}")]
    Decode(String),
    #[error("invalid network configuration: {0}")]
    InvalidConfig(String),
    /// STATUS: the plugin cannot serve ADD now (spec 1.1 code 50).
    #[error("podgate is not available: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Plugin(String),
}

impl CniError {
    pub fn code(&self) -> u32 {
        match self {
            CniError::IncompatibleVersion(_) => 1,
            CniError::InvalidEnv(_) => 4,
            CniError::Decode(_) => 6,
            CniError::InvalidConfig(_) => 7,
            CniError::Unavailable(_) => 50,
            CniError::Plugin(_) => 100,
        }
    }

    /// The error object a runtime expects on stdout.
    pub fn to_json(&self, cni_version: &str) -> Value {
        serde_json::json!({
            "cniVersion": cni_version,
            "code": self.code(),
            "msg": self.to_string(),
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// Where podgate's state is pinned (default /sys/fs/bpf/podgate).
    #[serde(default, rename = "pin_root")]
    pub pin_root: Option<String>,
    /// The daemon's control socket (default: the one of `pin_root`).
    #[serde(default)]
    pub socket: Option<String>,
    /// Security groups (names of the daemon's `[security_groups.NAME]`) for every pod of this
    /// network; CNI_ARGS `PODGATE_SECURITY_GROUPS=a,b` adds per-pod ones.
    #[serde(default)]
    pub security_groups: Vec<String>,
    #[serde(default)]
    pub prev_result: Option<PrevResult>,
    /// GC (spec 1.1): the attachments the runtime still has; every other one is garbage.
    #[serde(default, rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<Attachment>>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    #[serde(default)]
    pub ifname: String,
}

/// The CNI-made pods (names from [`pod_name`], ending `@cid12`) whose container is not among the
/// valid attachments. Pods without `@` were configured by hand (podgate.toml, `pod add`) and are
/// never collected: GC only owns what ADD made.
pub fn gc_victims(pods: &[String], valid: &[Attachment]) -> Vec<String> {
    let live: Vec<String> = valid.iter().map(|a| a.container_id.chars().take(12).collect()).collect();
    pods.iter()
        .filter(|name| match name.rsplit_once('@') {
            Some((_, cid)) if !cid.is_empty() => !live.iter().any(|l| l == cid),
            _ => false,
        })
        .cloned()
        .collect()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct PrevResult {
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Interface {
    pub name: String,
    #[serde(default)]
    pub sandbox: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct IpConfig {
    pub address: String,
    #[serde(default)]
    pub interface: Option<usize>,
}

/// The pod to register, derived from prevResult.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniPod {
    pub name: String,
    pub ipv6: Ipv6Addr,
    pub ipv4: Ipv4Addr,
    pub veth: String,
    pub veth_v4: Option<String>,
}

/// `ns/name@cid12` from CNI_ARGS when the runtime gives the Kubernetes names, else `cni@cid12`:
/// the container id keeps a replaced pod's late DEL from removing its successor.
pub fn pod_name(container_id: &str, cni_args: &str) -> String {
    let mut ns = None;
    let mut pod = None;
    for kv in cni_args.split(';') {
        match kv.split_once('=') {
            Some(("K8S_POD_NAMESPACE", v)) if !v.is_empty() => ns = Some(v),
            Some(("K8S_POD_NAME", v)) if !v.is_empty() => pod = Some(v),
            _ => {}
        }
    }
    let cid: String = container_id.chars().take(12).collect();
    match (ns, pod) {
        (Some(ns), Some(pod)) => format!("{ns}/{pod}@{cid}"),
        _ => format!("cni@{cid}"),
    }
}

/// The pod's security groups: the network's (`securityGroups`), then the pod's own from CNI_ARGS
/// `PODGATE_SECURITY_GROUPS=a,b`, each name once, in that order.
pub fn security_groups(conf: &[String], cni_args: &str) -> Vec<String> {
    let from_args = cni_args
        .split(';')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| *k == "PODGATE_SECURITY_GROUPS")
        .flat_map(|(_, v)| v.split(','));
    let mut out: Vec<String> = Vec::new();
    for g in conf.iter().map(String::as_str).chain(from_args) {
        let g = g.trim();
        if !g.is_empty() && !out.iter().any(|o| o == g) {
            out.push(g.to_string());
        }
    }
    out
}

/// The host-side peer of container interface `idx`: ptp and bridge list a host interface just
/// before the container interface it pairs with.
fn host_peer(ifaces: &[Interface], idx: usize) -> Option<&str> {
    ifaces[..idx.min(ifaces.len())]
        .iter()
        .rev()
        .find(|i| i.sandbox.as_deref().is_none_or(str::is_empty))
        .map(|i| i.name.as_str())
}

pub fn derive_pod(prev: &PrevResult, name: String) -> Result<CniPod, CniError> {
    let mut v6: Option<(Ipv6Addr, Option<usize>)> = None;
    let mut v4: Option<(Ipv4Addr, Option<usize>)> = None;
    for ip in &prev.ips {
        let addr = ip.address.split('/').next().unwrap_or("");
        match addr.parse::<IpAddr>() {
            Ok(IpAddr::V6(a)) if v6.is_none() && !a.is_unicast_link_local() => v6 = Some((a, ip.interface)),
            Ok(IpAddr::V4(a)) if v4.is_none() => v4 = Some((a, ip.interface)),
            Ok(_) => {}
            Err(_) => {
                return Err(CniError::InvalidConfig(format!("prevResult.ips: bad address {:?}", ip.address)));
            }
        }
    }
    let (ipv6, if6) = v6.ok_or_else(|| CniError::InvalidConfig("prevResult has no IPv6 address for the pod".into()))?;
    let (ipv4, if4) = v4.ok_or_else(|| CniError::InvalidConfig("prevResult has no IPv4 address for the pod".into()))?;
    let peer = |idx: Option<usize>, fam: &str| -> Result<String, CniError> {
        let found = match idx {
            Some(i) => host_peer(&prev.interfaces, i),
            None => prev
                .interfaces
                .iter()
                .find(|i| i.sandbox.as_deref().is_none_or(str::is_empty))
                .map(|i| i.name.as_str()),
        };
        found
            .map(str::to_string)
            .ok_or_else(|| CniError::InvalidConfig(format!("prevResult names no host-side interface for the {fam} address")))
    };
    let veth = peer(if6, "IPv6")?;
    let veth4 = peer(if4, "IPv4")?;
    Ok(CniPod {
        name,
        ipv6,
        ipv4,
        veth_v4: (veth4 != veth).then_some(veth4),
        veth,
    })
}

pub fn check_version(v: &str) -> Result<(), CniError> {
    if SUPPORTED_VERSIONS.contains(&v) {
        Ok(())
    } else {
        Err(CniError::IncompatibleVersion(v.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prev(json: &str) -> PrevResult {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn names() {
        assert_eq!(
            pod_name("0123456789abcdef", "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0"),
            "default/web-0@0123456789ab"
        );
        assert_eq!(pod_name("abc", ""), "cni@abc");
    }

    #[test]
    fn groups_from_the_conflist_and_cni_args() {
        let conf = vec!["web".to_string()];
        assert_eq!(security_groups(&conf, ""), vec!["web"]);
        assert_eq!(
            security_groups(&conf, "IgnoreUnknown=1;PODGATE_SECURITY_GROUPS=db, web ,cache;K8S_POD_NAME=x"),
            vec!["web", "db", "cache"]
        );
        assert_eq!(security_groups(&[], "PODGATE_SECURITY_GROUPS="), Vec::<String>::new());
        let n: NetConf = serde_json::from_str(
            r#"{"cniVersion":"1.0.0","name":"n","type":"podgate","securityGroups":["a","b"],"socket":"/run/x.sock"}"#,
        )
        .unwrap();
        assert_eq!(n.security_groups, vec!["a", "b"]);
        assert_eq!(n.socket.as_deref(), Some("/run/x.sock"));
    }

    #[test]
    fn ptp_single_veth() {
        let p = prev(
            r#"{"interfaces":[{"name":"veth1a2b"},{"name":"eth0","sandbox":"/run/netns/x"}],
               "ips":[{"address":"2001:db8:0:1::a/128","interface":1},{"address":"169.254.172.10/22","interface":1}]}"#,
        );
        let pod = derive_pod(&p, "n".into()).unwrap();
        assert_eq!(pod.veth, "veth1a2b");
        assert_eq!(pod.veth_v4, None);
        assert_eq!(pod.ipv6, "2001:db8:0:1::a".parse::<Ipv6Addr>().unwrap());
        assert_eq!(pod.ipv4, Ipv4Addr::new(169, 254, 172, 10));
    }

    #[test]
    fn eks_two_veths() {
        let p = prev(
            r#"{"interfaces":[{"name":"vethA"},{"name":"eth0","sandbox":"/x"},{"name":"vethB"},{"name":"v4if0","sandbox":"/x"}],
               "ips":[{"address":"2001:db8:0:1::a/128","interface":1},{"address":"169.254.172.10/22","interface":3}]}"#,
        );
        let pod = derive_pod(&p, "n".into()).unwrap();
        assert_eq!((pod.veth.as_str(), pod.veth_v4.as_deref()), ("vethA", Some("vethB")));
    }

    #[test]
    fn gc_collects_only_cni_pods_without_an_attachment() {
        let n: NetConf = serde_json::from_str(
            r#"{"cniVersion":"1.1.0","name":"n","type":"podgate",
               "cni.dev/valid-attachments":[{"containerID":"0123456789abcdef","ifname":"eth0"}]}"#,
        )
        .unwrap();
        let valid = n.valid_attachments.unwrap();
        let pods: Vec<String> =
            ["pod0", "default/web-0@0123456789ab", "cni@fedcba987654", "shop/db-0@aaaaaaaaaaaa", "odd@"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        assert_eq!(gc_victims(&pods, &valid), vec!["cni@fedcba987654", "shop/db-0@aaaaaaaaaaaa"]);
        assert_eq!(gc_victims(&pods, &[]).len(), 3);
    }

    #[test]
    fn usage_names_every_command_and_version() {
        let u = usage();
        for w in ["ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC", "1.1.0", "podgate"] {
            assert!(u.contains(w), "{w} missing from {u}");
        }
    }

    #[test]
    fn missing_family_is_an_error() {
        let p = prev(r#"{"interfaces":[{"name":"v"}],"ips":[{"address":"2001:db8:0:1::a/128"}]}"#);
        let e = derive_pod(&p, "n".into()).unwrap_err();
        assert_eq!(e.code(), 7);
        assert!(e.to_string().contains("IPv4"));
    }
}
