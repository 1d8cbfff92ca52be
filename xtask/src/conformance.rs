//! `cargo xtask conformance`: runs the conformance test binaries (exact packets through the
//! programs, and the namespace lab with real sockets) and prints their rows as one table:
//! requirement → PASS / FAIL / N/A, with what was measured.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};
use podgate_lab::conformance::MARK;

use crate::util::{show, workspace_root};

#[derive(clap::Args)]
pub struct Args {
    /// Only the BPF_PROG_TEST_RUN checks (no lab, no daemon).
    #[arg(long)]
    packets_only: bool,
}

/// (package, test target) of each suite that prints rows.
const SUITES: &[(&str, &str)] = &[("podgate-tests", "conformance_pkt"), ("podgate", "conformance_lab")];

/// The requirement table, in the repository so that CI and users have it: one row per
/// requirement line of RFC 4787, 5382, 5508 and 7857 with its status and evidence.
const TABLE: &str = "docs/conformance.md";

/// Every requirement line of the four RFCs (the IDs of shared/NAT-REQUIREMENTS.md, compound lines
/// split where they hold several requirements): each must have a row in [`TABLE`].
const REQUIREMENTS: &[&str] = &[
    "4787 REQ-1", "4787 REQ-2", "4787 REQ-3", "4787 REQ-3a", "4787 REQ-4", "4787 REQ-5", "4787 REQ-5a",
    "4787 REQ-5b", "4787 REQ-5c", "4787 REQ-6", "4787 REQ-6a", "4787 REQ-7", "4787 REQ-8", "4787 REQ-9",
    "4787 REQ-9a", "4787 REQ-10", "4787 REQ-10a", "4787 REQ-11", "4787 REQ-12", "4787 REQ-12a", "4787 REQ-12b",
    "4787 REQ-13", "4787 REQ-13a", "4787 REQ-14", "4787 REQ-14a",
    "5382 REQ-1", "5382 REQ-2", "5382 REQ-2a", "5382 REQ-3", "5382 REQ-3a", "5382 REQ-3b", "5382 REQ-4",
    "5382 REQ-4a", "5382 REQ-5", "5382 REQ-5a", "5382 REQ-6", "5382 REQ-7", "5382 REQ-8", "5382 REQ-9",
    "5382 REQ-10",
    "5508 REQ-1", "5508 REQ-1a", "5508 REQ-2", "5508 REQ-2a", "5508 REQ-3", "5508 REQ-3a", "5508 REQ-3b",
    "5508 REQ-3c", "5508 REQ-3d", "5508 REQ-4", "5508 REQ-5", "5508 REQ-6", "5508 REQ-7", "5508 REQ-7a",
    "5508 REQ-8", "5508 REQ-9", "5508 §7.1", "5508 §7.2", "5508 §7.3", "5508 §7.4", "5508 §7.5", "5508 §7.6",
    "5508 §7.7", "5508 §9", "5508 REQ-11", "5508 §10",
    "7857 §2", "7857 §2.1", "7857 §2.2", "7857 §3", "7857 §4", "7857 §5", "7857 §6", "7857 §7", "7857 §7.1",
    "7857 §8", "7857 §9", "7857 §10", "7857 §11", "7857 §12",
];

/// One requirement row of [`TABLE`].
#[derive(Debug, PartialEq)]
struct Req {
    id: String,
    /// `row` (measured by the suites: `evidence` lists the suite rows), `PASS`, `FAIL` or `N/A`.
    status: String,
    evidence: String,
}

impl Req {
    fn suite_rows(&self) -> Vec<String> {
        if self.status != "row" {
            return Vec::new();
        }
        self.evidence.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
    }
}

/// The requirement rows of the table (`| id | level | text | status | evidence |`), and the
/// lines that look like requirement rows but have no valid status or no evidence.
fn parse_table(text: &str) -> (Vec<Req>, Vec<String>) {
    let (mut reqs, mut bad) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let cells: Vec<&str> = line.trim().trim_matches('|').split('|').map(str::trim).collect();
        let Some(id) = cells.first() else { continue };
        if !["4787 ", "5382 ", "5508 ", "7857 "].iter().any(|p| id.starts_with(p)) {
            continue;
        }
        let status = cells.get(3).copied().unwrap_or("");
        let evidence = cells.get(4).copied().unwrap_or("");
        if !matches!(status, "row" | "PASS" | "FAIL" | "N/A") || evidence.is_empty() {
            bad.push(id.to_string());
            continue;
        }
        reqs.push(Req { id: id.to_string(), status: status.into(), evidence: evidence.replace('`', "") });
    }
    (reqs, bad)
}

/// Requirement lines with no valid row: absent from the table, or present without a status.
fn without_row(reqs: &[Req], bad: &[String]) -> Vec<String> {
    let mut v: Vec<String> = REQUIREMENTS.iter().filter(|r| !reqs.iter().any(|q| q.id == **r)).map(|r| r.to_string()).collect();
    v.extend(bad.iter().cloned());
    v
}

struct Row {
    status: String,
    title: String,
    detail: String,
}

/// Parses one `CONFORMANCE\tid\tstatus\ttitle\tdetail` line.
fn parse(line: &str) -> Option<(String, Row)> {
    let mut f = line.strip_prefix(MARK)?.strip_prefix('\t')?.splitn(4, '\t');
    let id = f.next()?.to_string();
    let status = f.next()?.to_string();
    let title = f.next()?.to_string();
    let detail = f.next().unwrap_or("").to_string();
    Some((id, Row { status, title, detail }))
}

pub fn run(args: Args) -> Result<()> {
    if unsafe { libc::geteuid() } != 0 {
        bail!("the conformance suite loads eBPF programs and builds network namespaces: run it as root");
    }
    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    let mut suites_failed = vec![];
    for (pkg, test) in SUITES {
        if args.packets_only && *test == "conformance_lab" {
            continue;
        }
        let mut cmd = Command::new("cargo");
        cmd.current_dir(workspace_root())
            // --include-ignored: a known gap is ignored in `cargo xtask test`, never here.
            .args(["test", "-p", pkg, "--test", test, "--", "--nocapture", "--test-threads=2", "--include-ignored"])
            .stdout(Stdio::piped());
        println!("conformance: {}", show(&cmd));
        let mut child = cmd.spawn().with_context(|| format!("could not start `{}`", show(&cmd)))?;
        for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
            let line = line?;
            match parse(&line) {
                Some((id, row)) => {
                    rows.insert(id, row);
                }
                None if line.starts_with("test ") => println!("  {line}"),
                None => {}
            }
        }
        if !child.wait()?.success() {
            suites_failed.push(*test);
        }
    }
    let text = std::fs::read_to_string(workspace_root().join(TABLE)).with_context(|| format!("reading {TABLE}"))?;
    let (reqs, bad) = parse_table(&text);
    let no_row = without_row(&reqs, &bad);

    let w = reqs.iter().map(|r| r.id.chars().count()).max().unwrap_or(10).max(16);
    println!("\n{:<w$}  {:<7}  behaviour — measured, or the evidence", "requirement", "result");
    println!("{}", "-".repeat(w + 60));
    let mut results: BTreeMap<&str, usize> = BTreeMap::new();
    let mut not_run = 0;
    for q in &reqs {
        let (result, said) = if q.status == "row" {
            let mut statuses = vec![];
            let mut said = vec![];
            for id in q.suite_rows() {
                if args.packets_only && !is_packet_row(&id) {
                    statuses.push("SKIPPED");
                    said.push(format!("[{id}] not run with --packets-only"));
                    continue;
                }
                match rows.get(&id) {
                    Some(r) => {
                        statuses.push(r.status.as_str());
                        said.push(format!("[{id}] {} — {}", r.title, r.detail));
                    }
                    None => {
                        statuses.push("NOT RUN");
                        said.push(format!("[{id}] its test did not report: crashed or filtered"));
                    }
                }
            }
            let result = ["FAIL", "NOT RUN", "PASS", "N/A", "SKIPPED"]
                .into_iter()
                .find(|s| statuses.contains(s))
                .unwrap_or("NOT RUN");
            (result, said.join("; "))
        } else {
            (q.status.as_str(), q.evidence.clone())
        };
        if result == "NOT RUN" {
            not_run += 1;
        }
        *results.entry(result).or_default() += 1;
        println!("{:<w$}  {result:<7}  {said}", q.id);
    }
    let referenced: Vec<String> = reqs.iter().flat_map(Req::suite_rows).collect();
    for id in rows.keys().filter(|k| !referenced.contains(k)) {
        println!("note: suite row {id:?} is not referenced by any requirement of {TABLE}");
    }
    for id in &no_row {
        println!("{id:<w$}  NO ROW   (no valid row in {TABLE})");
    }
    let n = |s: &str| results.get(s).copied().unwrap_or(0);
    println!(
        "\nconformance: {} requirement lines: {} pass, {} fail, {} not applicable, {} not run; \
         requirement lines without a row: {}",
        REQUIREMENTS.len(),
        n("PASS"),
        n("FAIL"),
        n("N/A"),
        not_run,
        no_row.len()
    );
    if n("FAIL") > 0 || not_run > 0 || !no_row.is_empty() || !suites_failed.is_empty() {
        bail!("conformance suite failed ({suites_failed:?})");
    }
    Ok(())
}

/// Rows produced by conformance_pkt (for `--packets-only`).
fn is_packet_row(id: &str) -> bool {
    matches!(
        id,
        "4787 REQ-2" | "4787 REQ-10" | "4787 REQ-11" | "4787 REQ-12" | "4787 REQ-14" | "4787 REQ-14a" | "5382 REQ-2a"
            | "5382 REQ-6" | "5382 REQ-10" | "5508 REQ-1a" | "5508 REQ-3" | "5508 REQ-4" | "5508 REQ-6" | "5508 REQ-8"
            | "7857 §2.2" | "7857 §3" | "7857 §4" | "7857 §5" | "7857 §7.1" | "7857 §9"
    )
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn every_requirement_line_has_a_row_in_the_table() {
        let text = std::fs::read_to_string(crate::util::workspace_root().join(super::TABLE)).unwrap();
        let (reqs, bad) = super::parse_table(&text);
        assert_eq!(super::without_row(&reqs, &bad), Vec::<String>::new());
        let mut ids: Vec<&str> = reqs.iter().map(|r| r.id.as_str()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), reqs.len(), "a requirement has two rows");
        assert!(reqs.iter().all(|r| super::REQUIREMENTS.contains(&r.id.as_str())), "a row names no known requirement");
    }

    #[test]
    fn a_row_without_status_counts_as_missing() {
        let t = "| 4787 REQ-1 | MUST | x | row | 4787 REQ-1 |\n| 4787 REQ-2 | SHOULD | y |  |  |\n| other | a | b | c | d |";
        let (reqs, bad) = super::parse_table(t);
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].suite_rows(), vec!["4787 REQ-1".to_string()]);
        assert_eq!(bad, vec!["4787 REQ-2".to_string()]);
        assert_eq!(super::without_row(&reqs, &bad).len(), super::REQUIREMENTS.len());
    }

    #[test]
    fn parses_rows() {
        let (id, r) = parse("CONFORMANCE\t4787 REQ-1\tPASS\tEIM\tsame port").unwrap();
        assert_eq!((id.as_str(), r.status.as_str(), r.title.as_str(), r.detail.as_str()), ("4787 REQ-1", "PASS", "EIM", "same port"));
        assert!(parse("test foo ... ok").is_none());
    }
}
