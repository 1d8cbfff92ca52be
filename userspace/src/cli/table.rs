//! Plain-text tables and `--json` output for the read verbs. Both are rendered from the JSON
//! result of the control API, so the daemon and the pinned-maps path print the same.

use serde_json::Value;

/// Prints `rows` (a JSON array) as pretty JSON (`json`) or as an aligned table with `headers`.
pub fn print(json: bool, headers: &[&str], rows: &Value, cells: impl Fn(&Value) -> Vec<String>) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(rows)?);
        return Ok(());
    }
    let body: Vec<Vec<String>> = rows.as_array().map(|a| a.iter().map(cells).collect()).unwrap_or_default();
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

/// One JSON value as a table cell: strings bare, null as "-", lists comma-separated.
pub fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}
