//! The short mode of the runner, in every `./test.sh`: a real server (this
//! crate's binary, the same server code as `tarn serve`) in a child
//! process, clients and subscribers through `tarn-client`, faults, the
//! final recovery, and the checks. The long mode is documented in the
//! README (`tarn-verify run --duration 10m ...`).

use std::time::Duration;

use tarn_verify::Workload;
use tarn_verify::runner::{Fault, RunOptions, run};

fn options_with(workload: Workload, seed: u64, functions: bool) -> RunOptions {
    RunOptions {
        workload,
        clients: 8,
        subscribers: 2,
        duration: Duration::from_secs(12),
        faults: vec![Fault::Kill, Fault::Pause, Fault::Restart, Fault::Slow],
        fault_interval: Duration::from_millis(1500),
        seed,
        server_bin: Some(env!("CARGO_BIN_EXE_tarn-verify").into()),
        functions,
        ..RunOptions::default()
    }
}

fn verify(workload: Workload, seed: u64) {
    verify_with(workload, seed, false);
}

fn verify_with(workload: Workload, seed: u64, functions: bool) {
    // The run's future is large in debug builds and its polls are deep: on
    // a test thread's 2 MiB stack it overflowed once in a few hundred
    // runs. The run gets a thread of its own, with room (the `tarn-verify`
    // binary runs it on its 8 MiB main thread), and its future lives on
    // the heap.
    let report = std::thread::Builder::new()
        .name(format!("verify-{seed}"))
        .stack_size(32 << 20)
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(Box::pin(run(options_with(workload, seed, functions))))
        })
        .expect("a thread for the run")
        .join()
        .expect("the run's thread")
        .expect("the run completes");
    for line in report.lines() {
        println!("{line}");
    }
    println!("{}", report.report);
    assert_eq!(
        report.anomalies(),
        0,
        "{}\nwatches: {:?}\nerrors: {:?}",
        report.report,
        report.watches,
        report.errors
    );
    let faults: usize = report.faults.values().sum();
    assert!(faults >= 3, "faults injected: {:?}", report.faults);
    assert!(
        report.report.ok >= 50,
        "too few transactions committed: {}",
        report.report
    );
    assert!(
        report.watches.updates > 0,
        "the subscribers received nothing"
    );
}

#[test]
fn list_append_with_faults_seed_1() {
    verify(Workload::ListAppend, 1);
}

#[test]
fn list_append_with_faults_seed_2() {
    verify(Workload::ListAppend, 2);
}

#[test]
fn rw_register_with_faults_seed_3() {
    verify(Workload::RwRegister, 3);
}

/// The same history checks with every transaction a server-function call:
/// serializable, no lost or doubled call across kill -9, pauses and
/// restarts (tarn-client resends unanswered calls with their ids).
#[test]
fn list_append_through_functions_with_faults_seed_5() {
    verify_with(Workload::ListAppend, 5, true);
}
