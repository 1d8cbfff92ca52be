//! Where the per-node values come from, so that one ConfigMap serves a whole cluster: a key the
//! config file leaves out is taken from an environment variable (which a DaemonSet fills per node,
//! e.g. from the downward API), and `node.ipv4` last from the uplink's first address. The file
//! wins when it sets a key; `config check` and `status` say which source each value came from.

use serde::Serialize;

/// Fills `node.ipv4` when the file leaves it out (`status.hostIP` in `deploy/daemonset.yaml`).
pub const ENV_NODE_IPV4: &str = "PODGATE_NODE_IPV4";
/// Fills `node.pod_prefix` when the file leaves it out (the node's delegated IPv6 /80).
pub const ENV_POD_PREFIX: &str = "PODGATE_POD_PREFIX";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The config file.
    Config,
    /// The named environment variable.
    Env(&'static str),
    /// Read from the uplink when the dataplane starts (and followed while it runs).
    Uplink,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Config => f.write_str("config file"),
            Source::Env(v) => write!(f, "environment ({v})"),
            Source::Uplink => f.write_str("uplink address"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct NodeSources {
    pub ipv4: Source,
    pub pod_prefix: Source,
}

impl Default for NodeSources {
    fn default() -> Self {
        NodeSources { ipv4: Source::Uplink, pod_prefix: Source::Config }
    }
}

/// The file's value, else the variable's (empty counts as unset). `None`: neither has one.
pub fn pick(file: Option<&str>, var: &'static str, env: &dyn Fn(&str) -> Option<String>) -> Option<(String, Source)> {
    if let Some(v) = file {
        return Some((v.to_string(), Source::Config));
    }
    env(var).filter(|v| !v.trim().is_empty()).map(|v| (v.trim().to_string(), Source::Env(var)))
}

/// The process environment, as `pick` wants it.
pub fn process_env(var: &str) -> Option<String> {
    std::env::var(var).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_wins_then_the_environment() {
        let env = |v: &str| (v == ENV_POD_PREFIX).then(|| " 2001:db8:0:2::/80 ".to_string());
        assert_eq!(pick(Some("2001:db8:0:1::/80"), ENV_POD_PREFIX, &env), Some(("2001:db8:0:1::/80".into(), Source::Config)));
        assert_eq!(pick(None, ENV_POD_PREFIX, &env), Some(("2001:db8:0:2::/80".into(), Source::Env(ENV_POD_PREFIX))));
        assert_eq!(pick(None, ENV_NODE_IPV4, &env), None);
        let empty = |_: &str| Some(String::new());
        assert_eq!(pick(None, ENV_NODE_IPV4, &empty), None, "an empty variable is unset");
    }
}
