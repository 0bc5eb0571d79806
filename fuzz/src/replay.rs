//! Runs a fuzz target's check over its seed corpus (`fuzz/corpus/TARGET/`) and over
//! mutations of the seeds, on stable, in the ordinary test suite. Shared as source by the
//! replay tests of both crates; `cargo fuzz` explores further with coverage guidance.
//!
//! The mutations come from a fixed seed, so a run is repeatable; set
//! `PORTCULLIS_FUZZ_SEED` to explore other ones and `PORTCULLIS_FUZZ_ROUNDS` for more.
//! A failing input is written to `target/fuzz-replay-failures/` and named in the panic.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

/// Byte strings the mutations insert: the syntax the checks' parsers care about.
const TOKENS: &[&[u8]] = &[
    b"/",
    b"//",
    b".",
    b"..",
    b"%2e",
    b"%2E",
    b"%2f",
    b"%5c",
    b"%25",
    b"%00",
    b"%0d%0a",
    b";",
    b"\\",
    b"?",
    b"#",
    b"\n",
    b"\n\n",
    b":",
    b"\xff",
    b"\xc0\xae",
    b"\xef\xbc\x8f",
    b"'",
    b"\"",
    b"<",
    b">",
    b"<script",
    b"</script>",
    b" nonce=",
    b"{{portcullis-nonce}}",
    b"<!--",
    b"-->",
    b"api",
    b"admin",
    b"user",
    b"upload",
    b"limited",
    b"GET",
    b"POST",
    b"OPTIONS",
    b"PUT",
    b"Authorization: Bearer ",
    b"Origin: https://evil.example",
    b"Sec-Fetch-Site: cross-site",
    b"Sec-Fetch-Site: same-origin",
    b"Content-Length: 99999999",
    b"Content-Length: 0",
    b"Transfer-Encoding: chunked",
    b"X-Forwarded-For: 1.2.3.4, 10.0.0.1",
    b"Content-Type: application/json",
    b"Cookie: __Host-csrf=",
    b"X-CSRF-Token: ",
    b"Access-Control-Request-Method: DELETE",
    b"'nonce'",
    b"'self'",
    b"script-src",
    b"; ",
    b"[server]",
    b"[[route]]",
    b"path = \"/**\"",
    b"preset = \"strict\"",
    b" = ",
    b"\"",
    b"[",
    b"]",
    b"{",
    b"}",
    b"0",
    b"-1",
    b"99999999999999999999",
    b"1/1s",
    b"1MiB",
    b"\0",
];

pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

pub fn mutate(rng: &mut Rng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = seed.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(6) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
            1 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] = rng.next() as u8;
            }
            2 => {
                let token = TOKENS[rng.below(TOKENS.len())];
                out.splice(at..at, token.iter().copied());
            }
            3 if at < out.len() => {
                let end = (at + 1 + rng.below(16)).min(out.len());
                out.drain(at..end);
            }
            4 if at < out.len() => {
                let end = (at + 1 + rng.below(32)).min(out.len());
                let copy = out[at..end].to_vec();
                out.splice(at..at, copy);
            }
            _ => {
                let from = rng.below(other.len() + 1);
                let to = (from + rng.below(64)).min(other.len());
                out.splice(at..at, other[from..to].iter().copied());
            }
        }
    }
    out
}

/// The number in the environment variable `name`, or `default`.
pub fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn fail(target: &str, input: &[u8]) -> ! {
    let dir: PathBuf =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/fuzz-replay-failures");
    let _ = std::fs::create_dir_all(&dir);
    let file = dir.join(format!("{target}-{:016x}", {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in input {
            h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
        h
    }));
    let _ = std::fs::write(&file, input);
    panic!(
        "fuzz check `{target}` failed on {:?} (saved to {}; replay with `cargo fuzz run {target} {}`)",
        String::from_utf8_lossy(input),
        file.display(),
        file.display()
    );
}

fn run(target: &str, check: fn(&[u8]), input: &[u8]) {
    if catch_unwind(AssertUnwindSafe(|| check(input))).is_err() {
        fail(target, input);
    }
}

/// Runs `check` on every seed of `target`, then on `rounds` mutations of each (default
/// `default_rounds`, or `PORTCULLIS_FUZZ_ROUNDS`). Returns how many inputs ran.
pub fn replay(target: &str, check: fn(&[u8]), default_rounds: u64) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    let seeds: Vec<Vec<u8>> = files.iter().filter_map(|f| std::fs::read(f).ok()).collect();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    let mut rng = Rng(env_number("PORTCULLIS_FUZZ_SEED", 0x5eed_0fc0_ffee) | 1);
    let rounds = env_number("PORTCULLIS_FUZZ_ROUNDS", default_rounds);
    let mut ran = 0;
    for seed in &seeds {
        run(target, check, seed);
        ran += 1;
    }
    for _ in 0..rounds {
        for seed in &seeds {
            let other = &seeds[rng.below(seeds.len())];
            let input = mutate(&mut rng, seed, other);
            run(target, check, &input);
            ran += 1;
        }
    }
    ran
}
