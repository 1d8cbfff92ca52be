//! IPv6 security groups, userspace side: configuration types, the rule compiler, and writing
//! rule sets into the maps without a half-applied state.
//!
//! ```text
//! [security_groups.web]
//! ingress = [{ proto = "tcp", ports = "443", cidr = "::/0" }, { proto = "any", group = "web" }]
//! egress  = [{ proto = "udp", ports = "53", cidr = "node" }]
//! ```
//! `compile` turns the groups and the pods into the exact map entries (pure, unit-tested);
//! `SgMaps::write` writes them under a new generation and switches, `apply` does both against the
//! pinned maps and the registered pods (`state`); `cut_flows` removes the tracked flows
//! the new rules would not open (otherwise they survive a change, as in AWS).
mod apply;
mod compile;
mod config;
mod state;

pub use apply::{SgMaps, cut_flows, cut_flows_by_pod, cut_flows_in, write_in};
pub use state::{
    ApplyReport, Flow6Row, Gc6Preview, Gc6Report, apply, credit_flows6, ct6_expired, ct6_timeout_ns, early_drop_victims,
    eviction_credit, flow_rows, flush_pod, gc, gc_preview, group_ids, parse_groups, read_guard,
};
pub use compile::{CompileInput, Compiled, PodGroups, RuleKey, RuleRef, compile, merge};
pub use config::{Direction, GroupConfig, NameOrNumber, Proto, Remote, Rule, RuleConfig, SecurityGroups, validate_rule};

/// Everything that can be wrong with a rule set or while writing it.
#[derive(Debug, thiserror::Error)]
pub enum SgError {
    #[error("security group `{group}`, {dir} rule {index}: field `{field}` = `{value}`: {msg}")]
    Rule { group: String, dir: Direction, index: usize, field: &'static str, value: String, msg: String },
    #[error("pod `{pod}`: unknown security group `{group}`")]
    UnknownPodGroup { pod: String, group: String },
    #[error("pod `{pod}`: {count} security groups, at most {max} allowed")]
    TooManyGroups { pod: String, count: usize, max: usize },
    #[error("the rule set needs {need} entries in `{what}`, which holds {max} per generation")]
    Capacity { what: &'static str, need: usize, max: usize },
    #[error("map `{0}` is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error(transparent)]
    Dataplane(#[from] crate::error::DataplaneError),
    #[error("security_groups: {0}")]
    Config(String),
    #[error("map `{map}`: {op} failed")]
    Map {
        map: &'static str,
        op: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}
