//! Plain-text tables and `--json` output for the read verbs.

use serde::Serialize;

/// Prints rows as JSON (`json`) or as an aligned table with `headers`.
pub fn print<T: Serialize>(json: bool, headers: &[&str], rows: &[T], cells: impl Fn(&T) -> Vec<String>) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(rows)?);
        return Ok(());
    }
    let body: Vec<Vec<String>> = rows.iter().map(cells).collect();
    let mut width: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &body {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cols: Vec<String>| {
        let s: Vec<String> = cols.iter().zip(&width).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in body {
        line(r);
    }
    Ok(())
}
