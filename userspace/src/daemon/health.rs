//! Whether podgate's programs are where the daemon put them, and putting them back. A link can
//! go behind the daemon's back — `podgate reset` run by hand, another tool replacing the node's
//! tc/XDP setup, `bpftool link detach` — and the node then forwards pods' traffic untranslated
//! and unfiltered while every map still looks healthy. The daemon checks every
//! [`CHECK_INTERVAL`], attaches again what it owns (the uplink and every registered pod's
//! veths), logs each one and counts it; `/readyz` fails while anything is missing.

use std::{collections::HashSet, fmt, time::Duration};

use aya::programs::tc::TcAttachType;

use crate::{
    attach::{
        self, POD_EGRESS, POD_INGRESS, attach_tc, attach_uplink,
        foreign::{self, Hook},
    },
    config::{NodeSettings, ReversePath},
    error::DataplaneError,
    maps::pods::list_pods,
    netif,
    pins::Pins,
};

/// How often the daemon looks: a detach is noticed, and repaired, within this (plus one check).
pub const CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// `/healthz` fails once no check has completed for this long: the daemon is wedged.
pub const STALE_AFTER: Duration = Duration::from_secs(15);

/// One hook podgate owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    pub ifname: String,
    pub prog: &'static str,
    pub hook: Hook,
}

impl fmt::Display for Want {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} ({})", self.ifname, self.hook, self.prog)
    }
}

/// What the daemon's checks found (shown on /metrics, /readyz).
#[derive(Debug, Default, Clone)]
pub struct Health {
    pub checks: u64,
    /// When the last check finished.
    pub last_check: Option<std::time::Instant>,
    /// Hooks without podgate's program after the last check (and its repair attempt).
    pub missing: Vec<String>,
    /// The last check itself failed (maps unreadable, pin root removed...).
    pub error: Option<String>,
    /// Programs found detached and attached again since the daemon started.
    pub reattached: u64,
    /// Attempts to attach again that failed.
    pub reattach_errors: u64,
    /// Clean starts over pins of another map ABI (see `upgrade`): 0 or 1 per daemon.
    pub abi_resets: u64,
}

impl Health {
    pub fn ready(&self) -> bool {
        self.checks > 0 && self.missing.is_empty() && self.error.is_none()
    }

    pub fn live(&self, now: std::time::Instant) -> bool {
        self.last_check.is_none_or(|t| now.duration_since(t) < STALE_AFTER)
    }

    /// The body of /readyz.
    pub fn readiness(&self) -> String {
        if self.checks == 0 {
            return "not checked yet\n".into();
        }
        if let Some(e) = &self.error {
            return format!("check failed: {e}\n");
        }
        if self.missing.is_empty() {
            return "ok: every podgate program is attached\n".into();
        }
        format!("not attached: {}\n", self.missing.join("; "))
    }
}

/// The uplink's program: whichever reverse path is pinned now (`attach_uplink` may have chosen
/// TC beside another tool's XDP program), the configured one when neither is.
fn uplink_want(pins: &Pins, node: &NodeSettings) -> Want {
    let pinned = |p: &str| pins.link(&node.uplink, p).exists() || pins.netlink_link(&node.uplink, p).exists();
    let tc = if pinned(attach::UPLINK_TC) {
        true
    } else if pinned(attach::UPLINK_XDP) {
        false
    } else {
        node.reverse_path == ReversePath::Tc
    };
    if tc {
        Want { ifname: node.uplink.clone(), prog: attach::UPLINK_TC, hook: Hook::TcIngress }
    } else {
        Want { ifname: node.uplink.clone(), prog: attach::UPLINK_XDP, hook: Hook::Xdp }
    }
}

/// Every hook podgate owns now: the uplink and the veths of every registered pod. A pod whose
/// interface is gone has nothing to attach to (its record goes with `pod del` or the CNI's DEL).
pub fn wanted(pins: &Pins, node: &NodeSettings) -> Result<Vec<Want>, DataplaneError> {
    let mut v = vec![uplink_want(pins, node)];
    for e in list_pods(pins)? {
        let Some(veth) = netif::name_of(e.pod.ifindex) else { continue };
        v.push(Want { ifname: veth.clone(), prog: POD_INGRESS, hook: Hook::TcIngress });
        v.push(Want { ifname: veth, prog: POD_EGRESS, hook: Hook::TcEgress });
        if e.pod.ifindex_v4 != e.pod.ifindex
            && let Some(v4) = netif::name_of(e.pod.ifindex_v4)
        {
            v.push(Want { ifname: v4, prog: POD_INGRESS, hook: Hook::TcIngress });
        }
    }
    Ok(v)
}

/// The wanted hooks where none of podgate's programs runs, asked of the kernel (tcx, clsact
/// filters, the XDP slot), not of the pins: a pin can outlive its attachment.
pub fn missing(pins: &Pins, wants: &[Want]) -> Result<Vec<Want>, DataplaneError> {
    let ours = foreign::own_ids(pins);
    let mut out = Vec::new();
    for w in wants {
        if netif::ifindex(&w.ifname).is_err() {
            continue;
        }
        let running = foreign::scan(&w.ifname, w.hook, &HashSet::new())?;
        if !running.iter().any(|p| ours.contains(&p.id)) {
            out.push(w.clone());
        }
    }
    Ok(out)
}

/// Attaches `w` again the way the daemon first did.
pub fn reattach(pins: &Pins, node: &NodeSettings, w: &Want) -> Result<(), DataplaneError> {
    match w.prog {
        attach::UPLINK_XDP | attach::UPLINK_TC => attach_uplink(pins, node).map(|_| ()),
        POD_EGRESS => attach_tc(pins, &w.ifname, w.prog, TcAttachType::Egress),
        _ => attach_tc(pins, &w.ifname, w.prog, TcAttachType::Ingress),
    }
}

/// One check and repair; the caller holds the daemon's lock (a `pod add` attaching at the same
/// moment must not be seen half-done). Updates `h`.
pub fn check_and_repair(pins: &Pins, node: &NodeSettings, h: &mut Health) {
    h.checks += 1;
    let r = (|| {
        if !pins.exists() {
            return Err(DataplaneError::NotInstalled { root: pins.root().to_owned() });
        }
        let wants = wanted(pins, node)?;
        let gone = missing(pins, &wants)?;
        for w in &gone {
            match reattach(pins, node, w) {
                Ok(()) => {
                    h.reattached += 1;
                    tracing::warn!(
                        interface = %w.ifname, program = w.prog, hook = %w.hook,
                        "podgate's program was detached behind the daemon's back (`podgate reset`, or \
                         another tool): attached it again"
                    );
                }
                Err(e) => {
                    h.reattach_errors += 1;
                    tracing::warn!(interface = %w.ifname, program = w.prog, "attaching again failed: {:#}", crate::util::error_chain(&e));
                }
            }
        }
        // What is still missing after the repair is what /readyz reports.
        Ok(if gone.is_empty() { Vec::new() } else { missing(pins, &wants)? })
    })();
    match r {
        Ok(still) => {
            h.missing = still.iter().map(ToString::to_string).collect();
            h.error = None;
        }
        Err(e) => {
            h.missing.clear();
            h.error = Some(crate::util::error_chain(&e));
        }
    }
    h.last_check = Some(std::time::Instant::now());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_a_check_and_nothing_missing() {
        let mut h = Health::default();
        assert!(!h.ready(), "ready before the first check");
        h.checks = 1;
        assert!(h.ready());
        h.missing = vec!["veth0 tc egress (pod_egress)".into()];
        assert!(!h.ready());
        assert!(h.readiness().contains("veth0 tc egress"), "{}", h.readiness());
        h.missing.clear();
        h.error = Some("no podgate state".into());
        assert!(!h.ready());
    }

    #[test]
    fn liveness_fails_when_checks_stop() {
        let now = std::time::Instant::now();
        let mut h = Health::default();
        assert!(h.live(now), "starting up counts as live");
        h.last_check = Some(now);
        assert!(h.live(now + STALE_AFTER / 2));
        assert!(!h.live(now + STALE_AFTER + Duration::from_secs(1)));
    }
}
