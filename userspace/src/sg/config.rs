//! `[security_groups.NAME]` in the configuration, and its validation into [`Rule`]s.

use std::{collections::BTreeMap, fmt, net::Ipv6Addr};

use ipnet::Ipv6Net;
use podgate_common::sg::{PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP, has_ports};
use serde::{Deserialize, Serialize};

use super::SgError;

/// All groups of a configuration, by name (the `[security_groups]` table).
pub type SecurityGroups = BTreeMap<String, GroupConfig>;

/// One security group: allow rules per direction, seen from the pod.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    #[serde(default)]
    pub ingress: Vec<RuleConfig>,
    #[serde(default)]
    pub egress: Vec<RuleConfig>,
}

/// A rule as written: `{ proto = "tcp", ports = "8000-8080", cidr = "2001:db8::/32" }`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// `tcp`, `udp`, `icmpv6`, `any`, or a protocol number.
    pub proto: Option<NameOrNumber>,
    /// `"443"` or `"8000-8080"` (a bare number is accepted too); TCP, UDP and SCTP only.
    pub ports: Option<NameOrNumber>,
    pub icmp_type: Option<u8>,
    pub icmp_code: Option<u8>,
    /// An IPv6 CIDR, or `node` for the node's /80.
    pub cidr: Option<String>,
    /// Another group's name: every pod in it.
    pub group: Option<String>,
}

/// A TOML value that may be written as a string or an integer.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum NameOrNumber {
    Number(i64),
    Name(String),
}

impl fmt::Display for NameOrNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameOrNumber::Number(n) => write!(f, "{n}"),
            NameOrNumber::Name(s) => f.write_str(s),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub const BOTH: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    /// The `dir` byte of the map ABI.
    pub fn abi(self) -> u8 {
        match self {
            Direction::Ingress => podgate_common::sg::DIR_INGRESS,
            Direction::Egress => podgate_common::sg::DIR_EGRESS,
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

/// The protocol part of a validated rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Any,
    Number(u8),
}

/// Who is on the other side of a validated rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Remote {
    Cidr(Ipv6Net),
    /// The node's /80: every pod on this node (and the node's own addresses in it).
    Node,
    /// The /128s of every pod in the named group.
    Group(String),
}

/// A validated rule. `ports` and `icmp` are inclusive ranges over what the rule matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub proto: Proto,
    pub ports: Option<(u16, u16)>,
    /// ICMPv6 type and optional code.
    pub icmp: Option<(u8, Option<u8>)>,
    pub remote: Remote,
}

impl Rule {
    /// The inclusive interval of `podgate_common::sg::match_key`s this rule allows.
    pub fn key_range(&self) -> (u32, u32) {
        match self.proto {
            Proto::Any => (0, 0x00ff_ffff),
            Proto::Number(p) => {
                let base = (p as u32) << 16;
                if let Some((lo, hi)) = self.ports {
                    (base | lo as u32, base | hi as u32)
                } else if let Some((t, code)) = self.icmp {
                    let t = (t as u32) << 8;
                    match code {
                        Some(c) => (base | t | c as u32, base | t | c as u32),
                        None => (base | t, base | t | 0xff),
                    }
                } else {
                    (base, base | 0xffff)
                }
            }
        }
    }

    /// Whether the rule covers `remote`, given the addresses of the pods of each group.
    pub fn covers(&self, remote: Ipv6Addr, node: Ipv6Net, members: &BTreeMap<String, Vec<Ipv6Addr>>) -> bool {
        match &self.remote {
            Remote::Cidr(n) => n.contains(&remote),
            Remote::Node => node.contains(&remote),
            Remote::Group(g) => members.get(g).is_some_and(|m| m.contains(&remote)),
        }
    }
}

/// Checks one rule. `groups`: every group name, for `group = ...` references.
pub fn validate_rule(
    group: &str,
    dir: Direction,
    index: usize,
    r: &RuleConfig,
    groups: &SecurityGroups,
) -> Result<Rule, SgError> {
    let err = |field: &'static str, value: &dyn fmt::Display, msg: &str| SgError::Rule {
        group: group.to_owned(),
        dir,
        index,
        field,
        value: value.to_string(),
        msg: msg.to_owned(),
    };
    let proto = match &r.proto {
        None => return Err(err("proto", &"(missing)", "required: tcp, udp, icmpv6, any or a number")),
        Some(NameOrNumber::Name(n)) => match n.to_ascii_lowercase().as_str() {
            "any" | "all" => Proto::Any,
            "tcp" => Proto::Number(PROTO_TCP),
            "udp" => Proto::Number(PROTO_UDP),
            "icmpv6" | "ipv6-icmp" => Proto::Number(PROTO_ICMPV6),
            "sctp" => Proto::Number(PROTO_SCTP),
            _ => match n.parse::<u8>() {
                Ok(p) => Proto::Number(p),
                Err(_) => return Err(err("proto", n, "expected tcp, udp, icmpv6, any or 0-255")),
            },
        },
        Some(NameOrNumber::Number(n)) => match u8::try_from(*n) {
            Ok(p) => Proto::Number(p),
            Err(_) => return Err(err("proto", n, "protocol numbers are 0-255")),
        },
    };
    let ports = match &r.ports {
        None => None,
        Some(p) => {
            if !matches!(proto, Proto::Number(n) if has_ports(n)) {
                return Err(err("ports", p, "ports need proto tcp, udp or sctp"));
            }
            Some(parse_ports(p).ok_or_else(|| err("ports", p, "expected \"PORT\" or \"LOW-HIGH\" with 0 <= LOW <= HIGH <= 65535"))?)
        }
    };
    let icmp = match (r.icmp_type, r.icmp_code) {
        (None, None) => None,
        (None, Some(c)) => return Err(err("icmp_code", &c, "icmp_code needs icmp_type")),
        (Some(t), c) => {
            if proto != Proto::Number(PROTO_ICMPV6) {
                return Err(err("icmp_type", &t, "icmp_type needs proto icmpv6"));
            }
            Some((t, c))
        }
    };
    let remote = match (&r.cidr, &r.group) {
        (Some(c), None) if c.eq_ignore_ascii_case("node") => Remote::Node,
        (Some(c), None) => {
            let net = c
                .parse::<Ipv6Net>()
                .or_else(|_| c.parse::<Ipv6Addr>().map(Ipv6Net::from))
                .map_err(|_| err("cidr", c, "expected an IPv6 CIDR (2001:db8::/32) or \"node\""))?;
            Remote::Cidr(net.trunc())
        }
        (None, Some(g)) => {
            if !groups.contains_key(g) {
                return Err(err("group", g, "no security group of that name"));
            }
            Remote::Group(g.clone())
        }
        (Some(c), Some(_)) => return Err(err("cidr", c, "give either cidr or group, not both")),
        (None, None) => return Err(err("cidr", &"(missing)", "give cidr (an IPv6 CIDR or \"node\") or group")),
    };
    Ok(Rule { proto, ports, icmp, remote })
}

fn parse_ports(p: &NameOrNumber) -> Option<(u16, u16)> {
    match p {
        NameOrNumber::Number(n) => u16::try_from(*n).ok().map(|n| (n, n)),
        NameOrNumber::Name(s) => crate::util::parse_port_range(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<SecurityGroups, toml::de::Error> {
        #[derive(Deserialize)]
        struct Doc {
            security_groups: SecurityGroups,
        }
        toml::from_str::<Doc>(toml_text).map(|d| d.security_groups)
    }

    fn check(text: &str) -> Result<Vec<Rule>, SgError> {
        let g = parse(text).unwrap();
        let mut out = Vec::new();
        for (name, cfg) in &g {
            for (i, r) in cfg.ingress.iter().enumerate() {
                out.push(validate_rule(name, Direction::Ingress, i, r, &g)?);
            }
            for (i, r) in cfg.egress.iter().enumerate() {
                out.push(validate_rule(name, Direction::Egress, i, r, &g)?);
            }
        }
        Ok(out)
    }

    #[test]
    fn parses_every_rule_kind() {
        let rules = check(
            r#"
            [security_groups.web]
            ingress = [
              { proto = "tcp", ports = "443", cidr = "2001:db8::/32" },
              { proto = "udp", ports = "8000-8080", cidr = "node" },
              { proto = "icmpv6", icmp_type = 128, cidr = "::/0" },
              { proto = "any", group = "web" },
              { proto = 47, cidr = "2001:db8:1::1" },
            ]
            egress = [{ proto = "tcp", ports = 22, cidr = "2001:db8:0:ff::/64" }]
            "#,
        )
        .unwrap();
        assert_eq!(rules[0].key_range(), ((6 << 16) | 443, (6 << 16) | 443));
        assert_eq!(rules[1].ports, Some((8000, 8080)));
        assert_eq!(rules[1].remote, Remote::Node);
        assert_eq!(rules[2].key_range(), ((58 << 16) | (128 << 8), (58 << 16) | (128 << 8) | 255));
        assert_eq!(rules[3].key_range(), (0, 0xff_ffff));
        assert_eq!(rules[4].remote, Remote::Cidr("2001:db8:1::1/128".parse().unwrap()));
        assert_eq!(rules[5].ports, Some((22, 22)));
    }

    #[test]
    fn errors_name_group_direction_index_field_and_value() {
        let e = check(
            r#"
            [security_groups.web]
            egress = [{ proto = "tcp", ports = "443", cidr = "::/0" }, { proto = "tcp", ports = "90-80", cidr = "::/0" }]
            "#,
        )
        .unwrap_err()
        .to_string();
        for part in ["`web`", "egress", "rule 1", "`ports`", "90-80"] {
            assert!(e.contains(part), "{e} lacks {part}");
        }
        let bad = [
            (r#"{ proto = "tcp", ports = "443", cidr = "192.0.2.0/24" }"#, "cidr"),
            (r#"{ proto = "icmpv6", ports = "443", cidr = "::/0" }"#, "ports"),
            (r#"{ proto = "tcp", icmp_type = 1, cidr = "::/0" }"#, "icmp_type"),
            (r#"{ proto = "icmpv6", icmp_code = 1, cidr = "::/0" }"#, "icmp_code"),
            (r#"{ proto = "gre", cidr = "::/0" }"#, "proto"),
            (r#"{ proto = 300, cidr = "::/0" }"#, "proto"),
            (r#"{ proto = "tcp" }"#, "cidr"),
            (r#"{ proto = "tcp", group = "nope" }"#, "group"),
            (r#"{ proto = "tcp", cidr = "::/0", group = "web" }"#, "cidr"),
            (r#"{ cidr = "::/0" }"#, "proto"),
        ];
        for (rule, field) in bad {
            let e = check(&format!("[security_groups.web]\ningress = [{rule}]")).unwrap_err();
            match &e {
                SgError::Rule { group, dir, index, field: f, .. } => {
                    assert_eq!((group.as_str(), *dir, *index, *f), ("web", Direction::Ingress, 0, field), "{rule}: {e}");
                }
                other => panic!("{rule}: {other}"),
            }
        }
        // Unknown keys are refused by serde.
        assert!(parse("[security_groups.web]\ningress = [{ proto = \"tcp\", port = \"1\", cidr = \"::/0\" }]").is_err());
        assert!(parse("[security_groups.web]\ningres = []").is_err());
    }
}
