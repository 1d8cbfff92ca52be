//! Loads every podgate program through the running kernel's verifier, one by one, and prints one
//! machine-readable line per program (`cargo xtask vm-test` runs this inside each VM kernel).
//! Unlike `Harness::new`, it does not stop at the first rejection, so one run shows every program
//! a kernel refuses, with the head of each verifier log.
use std::process::ExitCode;

use aya::{
    EbpfLoader,
    programs::{Program, ProgramError},
};

/// Verifier logs run to thousands of lines; the reason is at the end, the context just before it.
const LOG_TAIL_LINES: usize = 25;

fn main() -> ExitCode {
    let mut ebpf = match EbpfLoader::new().load(podgate::EBPF_OBJECT) {
        Ok(e) => e,
        Err(e) => {
            // Maps are created before any program: a kernel without a map type fails here.
            println!("PGVM verify prog=* status=fail");
            for l in format!("{e:#}").lines() {
                println!("PGVM vlog prog=* {l}");
            }
            return ExitCode::FAILURE;
        }
    };
    let mut names: Vec<String> = ebpf.programs().map(|(n, _)| n.to_string()).collect();
    names.sort();
    let mut failed = 0;
    for name in &names {
        let result = match ebpf.program_mut(name).expect("listed above") {
            Program::SchedClassifier(p) => p.load(),
            Program::Xdp(p) => p.load(),
            _ => {
                println!("PGVM verify prog={name} status=skip reason=not-tc-or-xdp");
                continue;
            }
        };
        match result {
            Ok(()) => println!("PGVM verify prog={name} status=ok"),
            Err(e) => {
                failed += 1;
                println!("PGVM verify prog={name} status=fail");
                let text = match &e {
                    ProgramError::LoadError { io_error, verifier_log } => {
                        format!("BPF_PROG_LOAD: {io_error}\n{verifier_log}")
                    }
                    other => format!("{other:#}"),
                };
                let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
                let first = lines.first().copied().unwrap_or("");
                println!("PGVM vlog prog={name} {first}");
                let tail = lines.len().saturating_sub(LOG_TAIL_LINES).max(1);
                if tail > 1 {
                    println!("PGVM vlog prog={name} ... ({} lines omitted)", tail - 1);
                }
                for l in &lines[tail.min(lines.len())..] {
                    println!("PGVM vlog prog={name} {l}");
                }
            }
        }
    }
    if failed > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
