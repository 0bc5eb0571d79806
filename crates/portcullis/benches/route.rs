//! Cost of the canonical path and the route lookup, the first steps of every request.
//!
//! ```text
//! cargo bench -p portcullis --bench route -- --warm-up-time 1 --measurement-time 3
//! ```

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis::route::{CanonicalPath, RouteTable};

const CLEAN: &str = "/api/public-data";
const MESSY: &str = "/api//v1/./x/../%61dmin/users/";

fn eight_routes() -> RouteTable<&'static str> {
    let mut table = RouteTable::new("default");
    for (pattern, value) in [
        ("/api/admin/**", "admin"),
        ("/api/*/notes", "notes"),
        ("/api/user/**", "user"),
        ("/static/*.js", "js"),
        ("/api/v1/**", "v1"),
        ("/api/reports/*.csv", "reports"),
        ("/health", "health"),
        ("/api/public-data", "public"),
    ] {
        table.insert(pattern, value).expect("valid bench pattern");
    }
    table
}

fn canonical_path(c: &mut Criterion) {
    let table = eight_routes();
    let clean = CanonicalPath::parse(CLEAN).expect("a clean path");
    assert_eq!(
        CanonicalPath::parse(MESSY).expect("a messy path").as_str(),
        "/api/v1/admin/users/"
    );
    assert_eq!(
        *table.lookup(&clean).expect("no case variant").value,
        "public"
    );

    let mut group = c.benchmark_group("canonical_path");
    group.bench_function("parse_clean", |b| {
        b.iter(|| CanonicalPath::parse(black_box(CLEAN)))
    });
    group.bench_function("parse_messy", |b| {
        b.iter(|| CanonicalPath::parse(black_box(MESSY)))
    });
    group.bench_function("lookup_8_routes", |b| {
        b.iter(|| {
            table
                .lookup(black_box(&clean))
                .map(|m| *m.value)
                .expect("no case variant")
        })
    });
    group.finish();
}

criterion_group!(benches, canonical_path);
criterion_main!(benches);
