//! Bulk codes in-process: minting and formatting the CSV of 100,000 codes
//! (`POST /v1/campaigns/{id}/codes` does exactly this per request, on a
//! blocking task, 2,000 lines per chunk). The server time of a whole request
//! is measured with curl (docs/benchmarks.md, "Bulk codes").

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use stampede::domain::code::CodeKey;
use stampede::service::bulk::{CHUNK_LINES, CsvLines};
use stampede::store::bulk::Batch;

fn csv(c: &mut Criterion) {
    let key = CodeKey::new([7; 32]);
    let batch = Batch {
        first: 1_000_001,
        count: 100_000,
        expires_ms: 1_767_225_600_000,
    };
    let mut g = c.benchmark_group("bulk");
    g.sample_size(20);
    g.bench_function("csv_100k_lines", |b| {
        b.iter(|| {
            CsvLines::for_campaign(
                key.clone(),
                42,
                "double11-20off",
                black_box(batch),
                CHUNK_LINES,
            )
            .map(|chunk| chunk.map(|c| c.len()).unwrap_or(0))
            .sum::<usize>()
        })
    });
    g.finish();
}

criterion_group!(benches, csv);
criterion_main!(benches);
