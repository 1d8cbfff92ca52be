//! Turning one VM's console into results: the `PGVM` lines that vm/init, vm/guest.sh,
//! vm/netns.sh and the vm_verify loader print, plus libtest's own `test result:` lines.

use std::collections::BTreeMap;

use crate::test::Tally;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Pass,
    Fail,
    /// Never reported: the step did not run or did not finish (timeout, crash, boot failure).
    Missing,
}

impl Status {
    pub fn word(&self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "FAIL",
            Status::Missing => "NOT RUN",
        }
    }
}

pub struct TestBin {
    pub name: String,
    pub rc: Option<i32>,
    /// libtest's `test result:` counts.
    pub tally: Tally,
    /// First failing test names, from libtest's `test x ... FAILED` lines.
    pub failures: Vec<String>,
}

impl TestBin {
    pub fn status(&self) -> Status {
        match self.rc {
            None => Status::Missing,
            // A binary that ran no test proves nothing about this kernel.
            Some(0) if self.tally.failed == 0 && self.tally.passed > 0 => Status::Pass,
            Some(_) => Status::Fail,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Netns {
    pub rc: Option<i32>,
    pub tcx_present: Option<bool>,
    /// podgate's TC attach (tcx) failed.
    pub tc_attach_failed: bool,
    /// The same programs attached with netlink TC (clsact) passed traffic, counted.
    pub legacy_tc: Option<bool>,
    /// The `PGVM netns` lines, for the report.
    pub lines: Vec<String>,
}

#[derive(Default)]
pub struct GuestRun {
    pub booted_release: Option<String>,
    pub finished: bool,
    pub init_errors: Vec<String>,
    /// program → ok?
    pub verify: BTreeMap<String, bool>,
    pub verify_rc: Option<i32>,
    pub vlog: BTreeMap<String, Vec<String>>,
    pub tests: Vec<TestBin>,
    pub netns: Netns,
}

impl GuestRun {
    pub fn verify_status(&self) -> Status {
        match self.verify_rc {
            None => Status::Missing,
            Some(0) if !self.verify.is_empty() && self.verify.values().all(|ok| *ok) => Status::Pass,
            Some(_) => Status::Fail,
        }
    }

    /// The namespace test failed only because the kernel has no tcx, and podgate's programs
    /// themselves worked there when attached through netlink TC.
    pub fn netns_only_lacks_tcx(&self) -> bool {
        self.netns_status() == Status::Fail
            && self.netns.tcx_present == Some(false)
            && self.netns.tc_attach_failed
            && self.netns.legacy_tc == Some(true)
    }

    pub fn netns_status(&self) -> Status {
        match self.netns.rc {
            None => Status::Missing,
            Some(0) if self.netns.lines.iter().any(|l| l.contains("status=pass")) => Status::Pass,
            Some(_) => Status::Fail,
        }
    }
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

pub fn parse(lines: &[String]) -> GuestRun {
    let mut r = GuestRun::default();
    let mut current: Option<usize> = None;
    for line in lines {
        let l = line.trim();
        if let Some(rest) = l.strip_prefix("PGVM ") {
            let word = rest.split_whitespace().next().unwrap_or("");
            match word {
                "boot" => r.booted_release = field(rest, "kernel").map(str::to_string),
                "done" => r.finished = true,
                "init" => r.init_errors.push(rest.to_string()),
                "verify" => {
                    if let (Some(p), Some(s)) = (field(rest, "prog"), field(rest, "status")) {
                        r.verify.insert(p.to_string(), s == "ok");
                    }
                }
                "vlog" => {
                    let p = field(rest, "prog").unwrap_or("?").to_string();
                    let text = rest.splitn(3, ' ').nth(2).unwrap_or("").to_string();
                    r.vlog.entry(p).or_default().push(text);
                }
                "step-begin" if rest.contains(" test ") => {
                    r.tests.push(TestBin {
                        name: field(rest, "bin").unwrap_or("?").to_string(),
                        rc: None,
                        tally: Tally::default(),
                        failures: Vec::new(),
                    });
                    current = Some(r.tests.len() - 1);
                }
                "step-end" => {
                    let rc = field(rest, "rc").and_then(|v| v.parse().ok());
                    if rest.contains(" verify") {
                        r.verify_rc = rc;
                    } else if rest.contains(" netns") {
                        r.netns.rc = rc;
                    } else if let Some(i) = current.take() {
                        r.tests[i].rc = rc;
                    }
                }
                "netns" => {
                    if let Some(t) = field(rest, "tcx") {
                        r.netns.tcx_present = Some(t == "present");
                    }
                    if field(rest, "reason") == Some("tc-attach-failed") && rest.contains("attach=fail") {
                        r.netns.tc_attach_failed = true;
                    }
                    if let Some(v) = field(rest, "legacy-tc") {
                        r.netns.legacy_tc = Some(v == "pass");
                    }
                    r.netns.lines.push(rest.to_string());
                }
                _ => {}
            }
            continue;
        }
        let Some(i) = current else { continue };
        let t = &mut r.tests[i];
        if !t.tally.add_line(l)
            && let Some(name) = l.strip_prefix("test ").and_then(|s| s.strip_suffix(" ... FAILED"))
            && t.failures.len() < 5
        {
            t.failures.push(name.to_string());
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(s: &str) -> Vec<String> {
        s.lines().map(str::to_string).collect()
    }

    #[test]
    fn parses_a_full_console() {
        let con = lines(
            "[    0.0] Linux version 6.1.0\n\
             PGVM boot kernel=6.1.0-56-amd64\n\
             PGVM step-begin verify\n\
             PGVM verify prog=noop_tc status=ok\n\
             PGVM verify prog=pod_ingress status=fail\n\
             PGVM vlog prog=pod_ingress BPF_PROG_LOAD: Permission denied (os error 13)\n\
             PGVM vlog prog=pod_ingress R1 invalid mem access 'scalar'\n\
             PGVM step-end verify rc=1\n\
             PGVM step-begin test bin=smoke\n\
             running 2 tests\n\
             test a ... ok\n\
             test b ... FAILED\n\
             test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out\n\
             PGVM step-end test bin=smoke rc=101\n\
             PGVM step-begin test bin=snat\n\
             PGVM step-end test bin=snat rc=0\n\
             PGVM step-begin netns\n\
             PGVM netns tcx=absent kernel=6.1.0-56-amd64\n\
             PGVM netns attach=fail reason=tc-attach-failed error=x\n\
             PGVM netns legacy-tc=pass\n\
             PGVM netns status=fail reason=tc-attach-failed\n\
             PGVM step-end netns rc=1\n\
             PGVM done\n",
        );
        let r = parse(&con);
        assert_eq!(r.booted_release.as_deref(), Some("6.1.0-56-amd64"));
        assert!(r.finished);
        assert_eq!(r.verify_status(), Status::Fail);
        assert_eq!(r.vlog["pod_ingress"][1], "R1 invalid mem access 'scalar'");
        assert_eq!(r.tests.len(), 2);
        assert_eq!((r.tests[0].tally.passed, r.tests[0].tally.failed), (1, 1));
        assert_eq!(r.tests[0].failures, ["b"]);
        assert_eq!(r.tests[0].status(), Status::Fail);
        // Exit 0 without a single test is not a pass.
        assert_eq!(r.tests[1].status(), Status::Fail);
        assert_eq!(r.netns.tcx_present, Some(false));
        assert_eq!(r.netns_status(), Status::Fail);
        assert!(r.netns_only_lacks_tcx());
    }

    #[test]
    fn a_console_cut_short_is_not_a_pass() {
        let r = parse(&lines(
            "PGVM boot kernel=6.12\nPGVM step-begin verify\nPGVM verify prog=a status=ok\n\
             PGVM step-begin test bin=smoke\nrunning 1 test\n",
        ));
        assert!(!r.finished);
        assert_eq!(r.verify_status(), Status::Missing);
        assert_eq!(r.tests[0].status(), Status::Missing);
        assert_eq!(r.netns_status(), Status::Missing);
    }
}
