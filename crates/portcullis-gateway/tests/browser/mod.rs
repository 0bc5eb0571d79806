//! Headless Chromium for the gateway's browser tests: Debian's `/usr/bin/chromium`, driven by
//! `playwright-core` (installed with npm into this folder when missing) through `probe.mjs`.
//!
//! A missing Chromium or Node.js fails the test with a pointer to `scripts/test.sh`, which
//! installs them: a browser test that skips would prove nothing.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Instant;

/// Debian's Chromium (the `chromium` package).
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Seconds one probe may take before it is killed.
const PROBE_TIMEOUT_SECS: &str = "120";

/// One npm install at a time within a test binary.
static INSTALL: Mutex<()> = Mutex::new(());

/// This folder: `probe.mjs`, `package.json`, and `node_modules` once installed.
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Fails (never skips) when a tool the browser tests need is missing.
pub fn require_tool(path_or_name: &str, package: &str) {
    let found = if path_or_name.starts_with('/') {
        Path::new(path_or_name).exists()
    } else {
        Command::new("sh")
            .args(["-c", &format!("command -v {path_or_name}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    assert!(
        found,
        "{path_or_name} is missing: the browser tests need Debian's `{package}` package. \
         Run the tests with `bash scripts/test.sh`, which installs it, or `apt-get install {package}`."
    );
}

/// Runs `npm install --no-audit --no-fund` in `dir` unless `marker` (a file the install
/// creates) is already there. Returns how long it took (zero when nothing was installed).
pub fn npm_install(dir: &Path, marker: &str) -> std::time::Duration {
    let _one = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let start = Instant::now();
    if dir.join(marker).exists() {
        return std::time::Duration::ZERO;
    }
    require_tool("node", "nodejs");
    require_tool("npm", "npm");
    let out = Command::new("npm")
        .args(["install", "--no-audit", "--no-fund"])
        .current_dir(dir)
        .env("NEXT_TELEMETRY_DISABLED", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run npm");
    assert!(
        out.status.success(),
        "npm install in {} failed:\n{}\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        dir.join(marker).exists(),
        "npm install did not create {marker}"
    );
    start.elapsed()
}

/// Loads a page in headless Chromium and returns what `probe.mjs` reported (see there): the
/// options are its JSON argument (`url`, `read`, `click`, `clicks`, `waitFor`, `waitAfter`,
/// `acceptDialogs`).
pub fn probe(options: &serde_json::Value) -> serde_json::Value {
    require_tool(CHROMIUM, "chromium");
    require_tool("node", "nodejs");
    let dir = dir();
    npm_install(&dir, "node_modules/playwright-core/package.json");
    let out = Command::new("timeout")
        .args([PROBE_TIMEOUT_SECS, "node", "probe.mjs"])
        .arg(options.to_string())
        .current_dir(&dir)
        .stdin(Stdio::null())
        .output()
        .expect("run node probe.mjs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the browser probe failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON from the probe: {stdout}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("bad JSON from the probe ({e}): {line}"))
}

/// The `'nonce-…'` value of a CSP's `script-src`.
pub fn csp_nonce(csp: &str) -> Option<String> {
    let directive = csp
        .split(';')
        .map(str::trim)
        .find(|d| d.starts_with("script-src "))?;
    directive
        .split_whitespace()
        .find_map(|s| s.strip_prefix("'nonce-")?.strip_suffix('\''))
        .map(str::to_string)
}

/// Each `<script …>` start tag in raw HTML, with its `nonce` attribute value if any
/// (double-quoted, single-quoted or bare).
pub fn script_tags(html: &str) -> Vec<(String, Option<String>)> {
    let lower = html.to_ascii_lowercase();
    let mut tags = Vec::new();
    let mut at = 0;
    while let Some(i) = lower[at..].find("<script") {
        let start = at + i;
        let end = lower[start..]
            .find('>')
            .map_or(html.len(), |e| start + e + 1);
        let tag = &html[start..end];
        tags.push((tag.to_string(), attribute(tag, "nonce")));
        at = end;
    }
    tags
}

fn attribute(tag: &str, name: &str) -> Option<String> {
    let lower = tag.to_ascii_lowercase();
    let needle = format!(" {name}=");
    let i = lower.find(&needle)? + needle.len();
    let rest = &tag[i..];
    let value = match rest.chars().next()? {
        q @ ('"' | '\'') => rest[1..].split(q).next()?,
        _ => rest
            .split(|c: char| c.is_ascii_whitespace() || c == '>')
            .next()?,
    };
    Some(value.to_string())
}
