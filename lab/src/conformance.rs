//! Rows of the conformance table (`cargo xtask conformance`): every check prints one line that
//! the xtask verb collects from the test binaries' output, and a failed check still fails its
//! test.

use std::panic::{AssertUnwindSafe, catch_unwind};

/// The marker the xtask verb looks for.
pub const MARK: &str = "CONFORMANCE";

fn row(id: &str, status: &str, title: &str, detail: &str) {
    let detail = detail.replace(['\n', '\t'], " ");
    println!("{MARK}\t{id}\t{status}\t{title}\t{detail}");
}

/// Runs one check; `f` panics on a violation and otherwise returns what it measured. Returns
/// whether it passed, so one test can run several checks and fail at the end.
pub fn check(id: &str, title: &str, f: impl FnOnce() -> String) -> bool {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(detail) => {
            row(id, "PASS", title, &detail);
            true
        }
        Err(e) => {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            row(id, "FAIL", title, &msg);
            false
        }
    }
}

/// A requirement that does not apply to podgate, with the reason.
pub fn not_applicable(id: &str, title: &str, reason: &str) {
    row(id, "N/A", title, reason);
}

/// Fails the calling test when any of `results` is false, naming the failed ones.
pub fn all(results: &[(&str, bool)]) {
    let failed: Vec<_> = results.iter().filter(|(_, ok)| !ok).map(|(id, _)| *id).collect();
    assert!(failed.is_empty(), "conformance checks failed: {failed:?}");
}
