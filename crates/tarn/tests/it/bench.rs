//! `tarn bench core` prints one line per figure, `core.<metric> <value> <unit>`.

use std::process::Command;

/// Checks that a bench run succeeded and printed only lines
/// `<area>.<metric> <value> <unit>` with positive values, among them every
/// figure in `wants`.
fn assert_figures(out: std::process::Output, area: &str, wants: &[&str]) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut metrics = Vec::new();
    for line in text.lines() {
        let parts: Vec<&str> = line.split(' ').collect();
        assert_eq!(
            parts.len(),
            3,
            "line {line:?} is not `<metric> <value> <unit>`"
        );
        assert!(parts[0].starts_with(&format!("{area}.")), "{line}");
        let value: f64 = parts[1].parse().unwrap();
        assert!(value > 0.0, "{line}: a benchmark that did nothing");
        metrics.push(parts[0].to_string());
    }
    for want in wants {
        assert!(
            metrics.iter().any(|m| m == want),
            "missing {want} in:\n{text}"
        );
    }
}

#[test]
fn bench_core_prints_every_figure() {
    let out = Command::new(env!("CARGO_BIN_EXE_tarn"))
        .args(["bench", "core", "--duration-ms", "40"])
        .output()
        .unwrap();
    assert_figures(
        out,
        "core",
        &[
            "core.commits_per_sec",
            "core.txn_commits_per_sec",
            "core.fanout_deliveries_per_sec",
        ],
    );
}

#[test]
fn bad_arguments_get_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_tarn"))
        .args(["bench", "nosuch"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid value 'nosuch'"), "{err}");
}

#[test]
fn bench_store_prints_every_figure_and_cleans_up() {
    let scratch = std::env::temp_dir().join(format!("tarn-bench-test-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_tarn"))
        .args([
            "bench",
            "store",
            "--duration-ms",
            "30",
            "--replay-mib",
            "2",
            "--committers",
            "4",
            "--dir",
        ])
        .arg(&scratch)
        .output()
        .unwrap();
    assert_figures(
        out,
        "store",
        &[
            "store.fsync_per_sec",
            "store.durable_commits_per_sec",
            "store.commits_per_sec_batch",
            "store.replay_mb_per_sec",
        ],
    );
    assert!(
        !scratch.exists(),
        "the benchmark left {} behind",
        scratch.display()
    );
}

#[test]
fn bench_store_refuses_an_existing_directory() {
    let dir = std::env::temp_dir();
    let out = Command::new(env!("CARGO_BIN_EXE_tarn"))
        .args(["bench", "store", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    assert!(dir.exists());
}

#[test]
fn bench_server_prints_every_figure() {
    let out = Command::new(env!("CARGO_BIN_EXE_tarn"))
        .args(["bench", "server", "--duration-ms", "100"])
        .output()
        .unwrap();
    assert_figures(
        out,
        "server",
        &[
            "server.ws_sets_per_sec",
            "server.commit_rtt_p50_us",
            "server.commit_rtt_p99_us",
            "server.fanout_p99_ms",
            "server.bytes_per_write",
        ],
    );
}

#[test]
fn bench_functions_prints_every_figure() {
    let out = Command::new(env!("CARGO_BIN_EXE_tarn"))
        .args(["bench", "functions", "--duration-ms", "100"])
        .output()
        .unwrap();
    assert_figures(
        out,
        "functions",
        &[
            "functions.call_us_p50",
            "functions.call_us_p99",
            "functions.instance_us_p50",
            "functions.echo_us_p50",
            "functions.calls_per_sec",
            "functions.ws_call_us_p50",
            "functions.ws_call_us_p99",
        ],
    );
}

/// `tarn bench compare --quick` against every peer (test.sh installs them
/// with scripts/bench-deps.sh): each figure and ratio line, values that are
/// numbers, and the report with its plot. One run per figure keeps the
/// suite short; the figures themselves are for `--runs 5` in release.
#[test]
fn bench_compare_runs_every_workload_against_every_peer() {
    let out_dir = std::env::temp_dir().join(format!("tarn-compare-test-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_tarn"))
        .args([
            "bench",
            "compare",
            "--quick",
            "--runs",
            "1",
            "--duration-ms",
            "300",
            "--recovery-mib",
            "4",
            "--out",
        ])
        .arg(&out_dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = out.id();
    let out = out.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut figures = std::collections::BTreeMap::new();
    for line in text.lines() {
        let parts: Vec<&str> = line.split(' ').collect();
        assert_eq!(
            parts.len(),
            3,
            "line {line:?} is not `<figure> <value> <unit>`"
        );
        assert!(parts[0].starts_with("compare."), "{line}");
        let value: f64 = parts[1].parse().unwrap();
        assert!(value.is_finite() && value > 0.0, "{line}");
        figures.insert(parts[0].to_string(), value);
    }
    let mut wants = vec![];
    for (figure, systems) in [
        ("sets", &["tarn", "redis", "ratio"][..]),
        (
            "durable_txn",
            &["tarn", "etcd", "postgres", "ratio_etcd", "ratio_postgres"],
        ),
        ("fanout_100_p50", &["tarn", "redis", "nats", "ratio_redis"]),
        ("fanout_1k_p99", &["tarn", "redis", "nats", "ratio_nats"]),
        (
            "watch_latency_p99",
            &["tarn", "etcd", "redis", "ratio_etcd"],
        ),
        ("recovery", &["tarn", "redis", "ratio"]),
        (
            "functions",
            &["tarn", "etcd", "postgres", "ratio_etcd", "ratio_postgres"],
        ),
        ("recovery_secs", &["tarn", "redis"]),
    ] {
        for s in systems {
            wants.push(format!("compare.{figure}.{s}"));
        }
    }
    for want in &wants {
        assert!(figures.contains_key(want), "missing {want} in:\n{text}");
    }
    let report = std::fs::read_to_string(out_dir.join("compare.md")).unwrap();
    assert!(report.contains("| durable_txn | txn/s |"), "{report}");
    assert!(report.contains("compare-latency.png"), "{report}");
    let png = std::fs::read(out_dir.join("compare-latency.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    std::fs::remove_dir_all(&out_dir).unwrap();
    // Every server was stopped and its temp dir removed.
    let left: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("tarn-compare-") && name.contains(&format!("-{pid}-")))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// `tarn bench core | head -1`: the reader goes away after one line; the
/// next lines end the process quietly (exit 0), not with a panic.
#[test]
fn a_closed_stdout_ends_the_bench_quietly() {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_tarn"))
        .args(["bench", "core", "--duration-ms", "100"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("core."), "{first}");
    // The reader (and the pipe's only read end) is gone here.
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {err}", out.status);
    assert!(!err.contains("panicked"), "{err}");
}
