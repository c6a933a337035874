//! Criterion benchmarks of the commit engine. The same workloads print
//! their figures with `tarn bench core`.
#![allow(missing_docs)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tarn_core::workload::{BlindWrites, Fanout, ReadModifyWrite, Workload};

fn bench(c: &mut Criterion, name: &str, mut w: impl Workload, units_per_op: u64) {
    let mut group = c.benchmark_group("core");
    group.throughput(Throughput::Elements(units_per_op));
    group.bench_function(name, |b| b.iter(|| w.run(1)));
    group.finish();
}

fn engine(c: &mut Criterion) {
    bench(c, "commits_per_sec", BlindWrites::new(), 1);
    bench(c, "txn_commits_per_sec", ReadModifyWrite::new(), 1);
    bench(
        c,
        "fanout_deliveries_per_sec",
        Fanout::new(),
        Fanout::WATCHERS as u64,
    );
}

criterion_group!(benches, engine);
criterion_main!(benches);
