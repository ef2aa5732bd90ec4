//! Reading what libiscsi's `iscsi-test-cu -v` prints: each test's outcome, and per-suite
//! counts.

use std::collections::BTreeMap;

/// One test's result from `iscsi-test-cu -v` output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub name: String,
    pub passed: bool,
    pub skipped: Option<String>,
}

/// Reads `iscsi-test-cu -v` output: "Suite: S", then "Test: T ..." followed by what the test
/// printed and its result, "passed" or "FAILED" (bare, unlike the "[FAILED]" messages).
/// libiscsi prints "[SKIPPED]" for a test that did not run, and CUnit counts it as passed.
pub fn outcomes(family: &str, out: &str) -> Vec<Outcome> {
    let mut suite = String::new();
    let mut current: Option<Outcome> = None;
    let mut found = Vec::new();
    let mut rest = out;
    loop {
        let marks = [("Suite: ", 0), ("Test: ", 1), ("[SKIPPED]", 2), ("passed", 3), ("FAILED", 4)];
        let next = marks
            .iter()
            .filter_map(|&(m, k)| {
                let mut from = 0;
                while let Some(i) = rest[from..].find(m) {
                    let at = from + i;
                    let bracketed = k >= 3 && at > 0 && rest.as_bytes()[at - 1] == b'[';
                    if !bracketed {
                        return Some((at, m, k));
                    }
                    from = at + m.len();
                }
                None
            })
            .min();
        let Some((at, m, kind)) = next else { break };
        let after = &rest[at + m.len()..];
        let line = after.lines().next().unwrap_or("").trim();
        match kind {
            0 => suite = line.to_string(),
            1 => {
                let name = line.split_whitespace().next().unwrap_or("").to_string();
                current = Some(Outcome { name: format!("{family}.{suite}.{name}"), passed: false, skipped: None });
            }
            2 => {
                if let Some(c) = current.as_mut() {
                    c.skipped.get_or_insert_with(|| line.to_string());
                }
            }
            _ => {
                if let Some(mut c) = current.take() {
                    c.passed = kind == 3;
                    found.push(c);
                }
            }
        }
        rest = after;
    }
    found
}

/// Per-suite (pass, fail, skip) counts.
pub fn table(results: &[Outcome]) -> BTreeMap<String, (u32, u32, u32)> {
    let mut t = BTreeMap::new();
    for r in results {
        let suite = r.name.rsplit_once('.').unwrap().0.to_string();
        let e: &mut (u32, u32, u32) = t.entry(suite).or_default();
        match (r.passed, &r.skipped) {
            (false, _) => e.1 += 1,
            (true, Some(_)) => e.2 += 1,
            (true, None) => e.0 += 1,
        }
    }
    t
}
