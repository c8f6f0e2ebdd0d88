//! Placeholder replaced by the benchmark work (issue 7): parse + validate a
//! document, the physical floor of the sidecar's per-call work.
use criterion::{criterion_group, criterion_main, Criterion};

fn parse(c: &mut Criterion) {
    let doc = br#"{"a": [1, 2, 3], "b": {"c": "d"}}"#;
    c.bench_function("parse_small", |b| {
        b.iter(|| serde_json::from_slice::<serde_json::Value>(doc).unwrap())
    });
}

criterion_group!(benches, parse);
criterion_main!(benches);
