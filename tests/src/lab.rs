//! The namespace lab for integration tests: the `podgate-lab` crate (shared with `cargo xtask
//! lab`), plus names that keep parallel tests apart.

pub use podgate_lab::*;

/// Builds a lab named after the test and this process, so tests in parallel (and in other test
/// binaries) never share namespaces. Labs of earlier runs that were killed are removed first.
pub fn test_lab(tag: &str, pods: usize) -> Lab {
    for name in sweep_orphans() {
        eprintln!("removed lab {name} left behind by a killed test run");
    }
    Lab::up(LabSpec::new(test_lab_name(tag), pods)).expect("lab up")
}

/// `t<pid>-<tag>`: unique per test process and test.
pub fn test_lab_name(tag: &str) -> String {
    assert!(tag.len() <= 12, "tag {tag:?} too long for a lab name");
    format!("t{}-{tag}", std::process::id())
}
