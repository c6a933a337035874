//! The runner catches a broken engine: built with feature `broken-engine`
//! (commits skip their read check), a short fault-free run must report
//! anomalies. `./test.sh` runs it as
//! `cargo test -p tarn-verify --features broken-engine --test broken`.

use std::time::Duration;

use tarn_verify::Workload;
use tarn_verify::runner::{RunOptions, run};

#[test]
fn a_broken_engine_is_caught() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let report = runtime
        .block_on(run(RunOptions {
            workload: Workload::ListAppend,
            clients: 8,
            subscribers: 1,
            duration: Duration::from_secs(8),
            faults: Vec::new(),
            seed: 7,
            server_bin: Some(env!("CARGO_BIN_EXE_tarn-verify").into()),
            ..RunOptions::default()
        }))
        .expect("the run completes");
    for line in report.lines() {
        println!("{line}");
    }
    println!("{}", report.report);
    assert!(
        report.anomalies() > 0,
        "validation is off, yet nothing was found: {}",
        report.report
    );
    assert!(
        report.report.has(tarn_verify::AnomalyKind::LostUpdate)
            || report.report.has(tarn_verify::AnomalyKind::GSingle)
            || report.report.has(tarn_verify::AnomalyKind::G2),
        "expected the anomalies of a missing read check: {}",
        report.report
    );
}
