//! Server functions end to end: the real `tarn serve`, modules deployed
//! with `tarn deploy` and `PUT /v1/module`, calls over WebSocket
//! (tarn-client), HTTP and `tarn call`.

use std::time::Instant;

use serde_json::{Value, json};
use tarn_client::{Client, Options};

use crate::server::Server;

const APP: &str = r#"
// Reads, works for a while (so that concurrent calls overlap), writes.
export function increment(ctx, args) {
  const n = ctx.get(args.path) ?? 0;
  let spin = 0;
  for (let i = 0; i < 20000; i++) spin += i;
  ctx.set(args.path, n + 1);
  return n + 1;
}

export function transfer(ctx, { from, to, amount }) {
  const a = ctx.get(`accounts/${from}`);
  const b = ctx.get(`accounts/${to}`);
  if (a < amount) throw new Error(`insufficient funds in ${from}`);
  ctx.set(`accounts/${from}`, a - amount);
  ctx.set(`accounts/${to}`, b + amount);
}

export function stamp(ctx, args) {
  ctx.set(`stamps/${args.key}`, { now: Date.now(), r: [Math.random(), Math.random()] });
  return ctx.callId;
}

export function spin() { for (;;) {} }
export function gigabyte() { return new Array(1e9).fill(0).length; }
export function deep() { const f = (n) => f(n + 1) + 1; return f(0); }
export function boom() { throw new RangeError("out of range"); }
"#;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn tarn(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tarn"))
        .args(args)
        .output()
        .unwrap()
}

fn deploy(server: &Server, source: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.js");
    std::fs::write(&file, source).unwrap();
    tarn(&["deploy", file.to_str().unwrap(), "--server", &server.url])
}

async fn post(url: String, body: &str, call_id: Option<&str>) -> (u16, Value) {
    let mut req = reqwest::Client::new().post(url).body(body.to_string());
    if let Some(id) = call_id {
        req = req.header("idempotency-key", id);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (
        status,
        serde_json::from_str(&resp.text().await.unwrap()).unwrap(),
    )
}

async fn get(url: String) -> (u16, Value) {
    let resp = reqwest::get(url).await.unwrap();
    let status = resp.status().as_u16();
    (
        status,
        serde_json::from_str(&resp.text().await.unwrap()).unwrap(),
    )
}

/// Servers with more engines than cores, so calls on one counter overlap
/// even on a small machine; with room for `increment`'s loop in a debug
/// build on a loaded machine (the default limit is 100 ms).
const ENGINES: &[(&str, &str)] = &[
    ("TARN_FUNCTIONS_ENGINES", "4"),
    ("TARN_FUNCTIONS_TIMEOUT_MS", "10000"),
];

#[test]
fn four_clients_increment_one_counter_to_exactly_a_thousand_with_reruns() {
    let server = Server::start(ENGINES);
    let out = deploy(&server, APP);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("\"version\""), "{stdout}");
    let ws = format!("ws://{}/v1/ws", server.addr);
    let reruns: u32 = rt().block_on(async {
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let ws = ws.clone();
                tokio::spawn(async move {
                    let client = Client::connect(&ws, Options::default()).await.unwrap();
                    let mut reruns = 0;
                    for _ in 0..250 {
                        let args = tarn_client::Value::Object(
                            [("path".into(), tarn_client::Value::str("counters/one"))].into(),
                        );
                        reruns += client.call("increment", args).await.unwrap().reruns;
                    }
                    reruns
                })
            })
            .collect();
        let mut sum = 0;
        for t in tasks {
            sum += t.await.unwrap();
        }
        sum
    });
    rt().block_on(async {
        let (_, v) = get(format!("{}/v1/data/counters/one", server.url)).await;
        assert_eq!(v, json!(1000));
        let (status, f) = get(format!("{}/v1/functions", server.url)).await;
        assert_eq!(status, 200);
        let inc = f["functions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "increment")
            .unwrap()
            .clone();
        assert_eq!(inc["calls"], json!(1000));
        assert!(reruns > 0, "concurrent increments must have conflicted");
        let per_call = inc["reruns_per_call"].as_f64().unwrap();
        assert!((per_call * 1000.0 - f64::from(reruns)).abs() < 0.5, "{inc}");
        assert!(inc["rejection_rate"].as_f64().unwrap() > 0.0, "{inc}");
        assert!(inc["p99_us"].as_u64().unwrap() >= inc["mean_us"].as_f64().unwrap() as u64 / 2);
        let metrics = reqwest::get(format!("{}/metrics", server.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains("tarn_function_calls_total{function=\"increment\"} 1000"),
            "{metrics}"
        );
        assert!(metrics.contains("tarn_function_reruns_per_call{function=\"increment\"}"));
    });
}

#[test]
fn transfers_from_eight_concurrent_callers_keep_the_total() {
    let server = Server::start(ENGINES);
    assert!(deploy(&server, APP).status.success());
    let base = server.url.clone();
    rt().block_on(async move {
        let (status, _) = {
            let resp = reqwest::Client::new()
                .put(format!("{base}/v1/data/accounts"))
                .body(r#"{"a": 100, "b": 100, "c": 100, "d": 100}"#)
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), ())
        };
        assert_eq!(status, 200);
        let ws = format!("ws://{}/v1/ws", base.trim_start_matches("http://"));
        let names = ["a", "b", "c", "d"];
        let tasks: Vec<_> = (0..8)
            .map(|t| {
                let ws = ws.clone();
                tokio::spawn(async move {
                    let client = Client::connect(&ws, Options::default()).await.unwrap();
                    for i in 0..50usize {
                        let (from, to) = (names[(t + i) % 4], names[(t + 2 * i + 1) % 4]);
                        if from == to {
                            continue;
                        }
                        let args: tarn_client::Value = serde_json::from_value(
                            json!({"from": from, "to": to, "amount": 1 + i % 9}),
                        )
                        .unwrap();
                        if let Err(e) = client.call("transfer", args).await {
                            let tarn_client::Error::Server(e) = e else {
                                panic!("{e}")
                            };
                            assert_eq!(e.code.as_str(), "function_error", "{}", e.message);
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let (_, v) = get(format!("{base}/v1/data/accounts")).await;
        let total: i64 = v
            .as_object()
            .unwrap()
            .values()
            .map(|x| x.as_i64().unwrap())
            .sum();
        assert_eq!(total, 400, "{v}");
    });
}

#[test]
fn a_call_id_retried_ten_times_across_a_restart_takes_effect_once() {
    let server = Server::start(&[]);
    assert!(deploy(&server, APP).status.success());
    let call = |server: &Server| {
        let url = format!("{}/v1/call/increment", server.url);
        rt().block_on(post(url, r#"{"path": "once"}"#, Some("retry-me")))
    };
    let (status, first) = call(&server);
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["result"], json!(1));
    assert_eq!(first["replayed"], json!(false));
    for _ in 0..4 {
        let (_, again) = call(&server);
        assert_eq!(again["result"], json!(1));
        assert_eq!(again["time"], first["time"]);
        assert_eq!(again["replayed"], json!(true));
    }
    let server = server.restart();
    for _ in 0..5 {
        let (status, again) = call(&server);
        assert_eq!(status, 200, "{again}");
        assert_eq!(again["result"], json!(1));
        assert_eq!(again["time"], first["time"]);
    }
    // The CLI, with the same id: still once.
    let out = tarn(&[
        "call",
        "increment",
        r#"{"path": "once"}"#,
        "--call-id",
        "retry-me",
        "--server",
        &server.url,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["result"], json!(1));
    let (_, v) = rt().block_on(get(format!("{}/v1/data/once", server.url)));
    assert_eq!(v, json!(1), "ten tries, one increment");
    // The module survived the restart too.
    let (_, m) = rt().block_on(get(format!("{}/v1/module", server.url)));
    assert_eq!(m["version"], json!(1));
    assert!(
        m["source"]
            .as_str()
            .unwrap()
            .contains("export function increment")
    );
}

#[test]
fn runaway_functions_get_typed_errors_and_the_server_keeps_serving() {
    let server = Server::start(&[]);
    assert!(deploy(&server, APP).status.success());
    rt().block_on(async {
        for (function, status, code) in [
            ("spin", 422, "timeout"),
            ("gigabyte", 422, "out_of_memory"),
            ("deep", 422, "stack_overflow"),
            ("boom", 422, "function_error"),
            ("missing", 404, "unknown_function"),
        ] {
            let started = Instant::now();
            let (got, body) =
                post(format!("{}/v1/call/{function}", server.url), "null", None).await;
            assert_eq!(
                (got, body["error"]["code"].as_str().unwrap()),
                (status, code),
                "{function}: {body}"
            );
            assert!(started.elapsed().as_secs() < 10);
            let (got, ok) = post(
                format!("{}/v1/call/increment", server.url),
                r#"{"path": "alive"}"#,
                None,
            )
            .await;
            assert_eq!(got, 200, "after {function}: {ok}");
        }
        let (_, body) = post(format!("{}/v1/call/boom", server.url), "null", None).await;
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("RangeError: out of range") && message.contains("app.js:"),
            "{message}"
        );
        let (_, bad) = post(
            format!("{}/v1/call/increment", server.url),
            "{not json",
            None,
        )
        .await;
        assert_eq!(bad["error"]["code"], json!("bad_request"));
        let (_, v) = get(format!("{}/v1/data/alive", server.url)).await;
        assert_eq!(v, json!(5));
    });
}

#[test]
fn the_same_call_id_writes_the_same_values_on_two_servers() {
    let stamps: Vec<Value> = (0..2)
        .map(|_| {
            let server = Server::start(&[]);
            assert!(deploy(&server, APP).status.success());
            rt().block_on(async {
                let (status, a) = post(
                    format!("{}/v1/call/stamp", server.url),
                    r#"{"key": "k"}"#,
                    Some("fixed-id"),
                )
                .await;
                assert_eq!(status, 200, "{a}");
                assert_eq!(a["result"], json!("fixed-id"));
                get(format!("{}/v1/data/stamps/k", server.url)).await.1
            })
        })
        .collect();
    // Math.random() is the call id's: the same on both servers.
    assert_eq!(stamps[0]["r"], stamps[1]["r"]);
    assert_ne!(stamps[0]["r"][0], stamps[0]["r"][1]);
    // Date.now() is the call's ctx.now: a time of the call, not of the
    // machine's clock at each read.
    for s in &stamps {
        assert!(s["now"].as_u64().unwrap() > 1_700_000_000_000, "{s}");
    }
}

#[test]
fn a_module_with_a_syntax_error_is_refused_with_its_place_and_the_old_one_serves() {
    let server = Server::start(&[]);
    assert!(deploy(&server, APP).status.success());
    let broken = "export function ok(ctx) {\n  return 1;\n}\nexport function bad(ctx) {\n  return ctx.get(;\n}\n";
    let out = deploy(&server, broken);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("app.js:5:"),
        "the CLI names file:line:column: {stderr}"
    );
    assert!(
        stderr.contains("SyntaxError") && stderr.contains("bad_module"),
        "{stderr}"
    );
    rt().block_on(async {
        let resp = reqwest::Client::new()
            .put(format!("{}/v1/module", server.url))
            .body(broken)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 400);
        let body: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
        assert_eq!(body["error"]["code"], json!("bad_module"));
        assert_eq!(body["error"]["line"], json!(5));
        assert!(body["error"]["column"].as_u64().is_some());
        let (_, m) = get(format!("{}/v1/module", server.url)).await;
        assert_eq!(m["version"], json!(1));
        let (status, _) = post(
            format!("{}/v1/call/increment", server.url),
            r#"{"path": "p"}"#,
            None,
        )
        .await;
        assert_eq!(status, 200);
    });
}

#[test]
fn a_callers_watch_shows_the_calls_writes_before_its_answer() {
    let server = Server::start(&[]);
    assert!(deploy(&server, APP).status.success());
    let ws = format!("ws://{}/v1/ws", server.addr);
    rt().block_on(async move {
        let client = Client::connect(&ws, Options::default()).await.unwrap();
        let mut watch = client.watch_subtree("seen").await.unwrap();
        let _initial = watch.recv().await;
        for n in 1..=20 {
            let args: tarn_client::Value =
                serde_json::from_value(json!({"path": "seen/n"})).unwrap();
            let result = client.call("increment", args).await.unwrap();
            assert_eq!(result.value, tarn_client::Value::Int(n));
            // The change came first: the cache already has it.
            assert_eq!(client.cached("seen/n"), Some(tarn_client::Value::Int(n)));
        }
    });
}

#[test]
fn calls_cut_off_by_kill_9_take_effect_once_when_retried() {
    let server = Server::start(&[("TARN_WAL_SYNC", "always")]);
    assert!(deploy(&server, APP).status.success());
    const CALLS: usize = 200;
    let url = server.url.clone();
    // Calls in flight when the server dies: some committed (answered or
    // not), some never ran.
    let runtime = rt();
    let tasks: Vec<_> = (0..CALLS)
        .map(|i| {
            let url = url.clone();
            runtime.spawn(async move {
                let body = format!(r#"{{"path": "cut/k{i}"}}"#);
                let _ = reqwest::Client::new()
                    .post(format!("{url}/v1/call/increment"))
                    .header("idempotency-key", format!("cut-{i}"))
                    .body(body)
                    .send()
                    .await;
            })
        })
        .collect();
    // Kill once some have landed (polled, with a deadline).
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, v) = runtime.block_on(get(format!("{url}/v1/data/cut")));
        if v.as_object().is_some_and(|o| o.len() >= 10) {
            break;
        }
        assert!(Instant::now() < deadline, "no call landed");
    }
    let (dir, addr) = server.kill();
    for t in tasks {
        let _ = runtime.block_on(t);
    }
    let server = Server::start_at(dir, &addr, &[]);
    // Every id again, twice: each takes effect exactly once.
    runtime.block_on(async {
        for round in 0..2 {
            for i in 0..CALLS {
                let (status, a) = post(
                    format!("{}/v1/call/increment", server.url),
                    &format!(r#"{{"path": "cut/k{i}"}}"#),
                    Some(&format!("cut-{i}")),
                )
                .await;
                assert_eq!(status, 200, "{a}");
                assert_eq!(a["result"], json!(1), "round {round}, call {i}: {a}");
            }
        }
        let (_, v) = get(format!("{}/v1/data/cut", server.url)).await;
        let counts = v.as_object().unwrap();
        assert_eq!(counts.len(), CALLS);
        assert!(counts.values().all(|c| *c == json!(1)), "{v}");
    });
}
