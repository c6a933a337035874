//! Integration tests of tarn-functions: the sandbox and the runner over a
//! real `Db` in a temp dir.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use tarn_core::{Path, Value};
use tarn_functions::{Call, CallError, DeployError, FunctionLimits, Functions};
use tarn_store::{Db, StoreOptions};

struct Fixture {
    dir: tempfile::TempDir,
    db: Arc<Db>,
    functions: Functions,
}

fn limits() -> FunctionLimits {
    FunctionLimits {
        engines: 2,
        ..FunctionLimits::default()
    }
}

fn open(dir: tempfile::TempDir) -> Fixture {
    open_with(dir, limits())
}

fn open_with(dir: tempfile::TempDir, limits: FunctionLimits) -> Fixture {
    let db = Arc::new(Db::open(dir.path(), StoreOptions::default()).unwrap());
    let functions = Functions::open(Arc::clone(&db), limits).unwrap();
    Fixture { dir, db, functions }
}

/// A retention short enough for a test to see outcomes expire.
fn short_retention() -> FunctionLimits {
    FunctionLimits {
        engines: 1,
        outcome_retention: Duration::from_millis(50),
        ..FunctionLimits::default()
    }
}

/// Waits (polling, with a deadline) until nothing is at `path`.
fn wait_until_absent(f: &Fixture, path: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while get(f, path) != Value::Null {
        assert!(
            std::time::Instant::now() < deadline,
            "{path} never went away"
        );
        std::thread::yield_now();
    }
}

fn fixture(source: &str) -> Fixture {
    let f = open(tempfile::tempdir().unwrap());
    f.functions.deploy(source).unwrap();
    f
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap()
}

fn get(f: &Fixture, path: &str) -> Value {
    f.db.get(&Path::parse(path).unwrap())
        .unwrap()
        .value
        .unwrap_or(Value::Null)
}

fn call(
    f: &Fixture,
    function: &str,
    args: &str,
    id: Option<&str>,
) -> Result<tarn_functions::Answer, CallError> {
    f.functions
        .call_blocking(Call::new(function, json(args), id.map(String::from)))
}

const APP: &str = r#"
let calls = 0;
const config = { step: 1 };

export function increment(ctx, args) {
  const n = ctx.get(`counters/${args.name}`) ?? 0;
  ctx.set(`counters/${args.name}`, n + (args.by ?? config.step));
  return n + 1;
}

export function slowIncrement(ctx, args) {
  const n = ctx.get(`counters/${args.name}`) ?? 0;
  let x = 0;
  for (let i = 0; i < args.spin; i++) x = (x + i) % 1000;
  ctx.set(`counters/${args.name}`, n + 1);
  return x;
}

export function transfer(ctx, { from, to, amount }) {
  const a = ctx.get(`accounts/${from}`);
  const b = ctx.get(`accounts/${to}`);
  if (a < amount) throw new Error(`insufficient funds in ${from}`);
  ctx.set(`accounts/${from}`, a - amount);
  ctx.set(`accounts/${to}`, b + amount);
  return { from: a - amount, to: b + amount };
}

export function leak(ctx) {
  calls += 1;
  const before = config.step;
  config.step += 1;
  let frozen = [];
  try { globalThis.shared = 1; } catch (e) { frozen.push("global"); }
  try { Array.prototype.evil = 1; } catch (e) { frozen.push("prototype"); }
  try { Math.random = () => 4; } catch (e) { frozen.push("Math"); }
  const o = {};
  o.toString = () => "own";
  return { calls, before, frozen, own: String(o), evil: [].evil ?? null };
}

export function nondeterminism(ctx) {
  ctx.set("det/now", Date.now());
  ctx.set("det/date", new Date().getTime());
  ctx.set("det/random", [Math.random(), Math.random(), ctx.random()]);
  return { now: ctx.now, id: ctx.callId, auth: ctx.auth };
}

export function readOwnWrites(ctx) {
  ctx.set("row/a/b", 1);
  ctx.patch("row/a", { c: 2, d: { e: 3 } });
  const whole = ctx.get("row/a");
  const keys = ctx.keys("row/a");
  ctx.remove("row/a/c");
  return { whole, keys, after: ctx.get("row/a") };
}

export function outer(ctx, args) {
  const first = ctx.call("increment", { name: args.name });
  const second = increment(ctx, { name: args.name });
  return [first, second];
}

export async function later(ctx) {
  await null;
  ctx.set("async/done", true);
  return "done";
}

export function spin() { for (;;) {} }
export function hog() { const a = []; for (;;) a.push(new Array(1e6).fill(1)); }
export function big() { return new Array(1e9).fill(0).length; }
export function deep() { const f = (n) => f(n + 1) + 1; return f(0); }
export function boom() { throw new TypeError("boom"); }
export function writeSys(ctx) { ctx.set("$sys/calls/x", 1); }
export function badReturn() { return () => 1; }
export function keep(ctx) { globalThis.kept = ctx; }
export function root(ctx) { ctx.set("", 1); }
export function rootPatch(ctx) { ctx.patch("", { "$sys": null }); }
export function presence(ctx) { return ctx.get("$presence/x"); }
export function throwNull() { throw null; }
export function longArray() { const a = []; a.length = 2 ** 31 - 1; return a; }
export function hook() { Error.prepareStackTrace = () => "hooked"; }
export function iteratorProto() { Object.getPrototypeOf([].values()).next = () => ({ done: true }); }
export function jobs(ctx) {
  Promise.resolve().then(() => ctx.set("jobs/then", true));
  return "sync";
}
export function localTime() {
  const d = new Date(2020, 0, 2, 3, 4, 5);
  return [d.getTime(), d.getHours(), d.getTimezoneOffset(), String(d), new Date("2020-01-02T03:04:05").getTime()];
}
export function empties(ctx) {
  ctx.set("e/a", { b: {}, c: 1 });
  return [ctx.get("e/a"), ctx.keys("e/a")];
}
"#;

#[test]
fn concurrent_increments_are_serializable_and_rerun_on_conflict() {
    let f = Arc::new(fixture(APP));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let f = Arc::clone(&f);
            std::thread::spawn(move || {
                let mut reruns = 0;
                for _ in 0..100 {
                    reruns += call(&f, "increment", r#"{"name": "c"}"#, None)
                        .unwrap()
                        .reruns;
                }
                reruns
            })
        })
        .collect();
    let reruns: u32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(get(&f, "counters/c"), Value::Int(400));
    let stats = f.functions.stats();
    let inc = stats.iter().find(|s| s.name == "increment").unwrap();
    assert_eq!(inc.calls, 400);
    assert!((inc.reruns_per_call * 400.0 - f64::from(reruns)).abs() < 1e-6);
    assert!((inc.mean_reads, inc.mean_writes) == (1.0, 1.0));
    assert!(inc.p99_us > 0 && inc.mean_us > 0.0);
}

#[test]
fn a_slow_call_is_not_starved_by_fast_ones_on_the_same_data() {
    // Three callers increment a counter as fast as they can while one
    // call reads it, spins for milliseconds, and writes it: every run of
    // the slow call is overtaken, until it runs alone.
    let f = Arc::new(open_with(
        tempfile::tempdir().unwrap(),
        FunctionLimits {
            engines: 4,
            timeout: Duration::from_secs(10),
            ..FunctionLimits::default()
        },
    ));
    f.functions.deploy(APP).unwrap();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let fast: Vec<_> = (0..3)
        .map(|_| {
            let (f, done) = (Arc::clone(&f), Arc::clone(&done));
            std::thread::spawn(move || {
                let mut calls = 0i64;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    call(&f, "increment", r#"{"name": "hot"}"#, None).unwrap();
                    calls += 1;
                }
                calls
            })
        })
        .collect();
    // Let the fast callers get going before the slow call starts.
    while get(&f, "counters/hot") == Value::Null {
        std::thread::yield_now();
    }
    let slow = call(
        &f,
        "slowIncrement",
        r#"{"name": "hot", "spin": 300000}"#,
        None,
    );
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let fast: i64 = fast.into_iter().map(|t| t.join().unwrap()).sum();
    let slow = slow.expect("the slow call commits");
    // Alone from its third rerun, nothing overtakes it again. (Without the
    // gate, this call gave up with `Contention { reruns: 16 }`.)
    assert!(slow.reruns <= 3, "{} reruns", slow.reruns);
    assert_eq!(get(&f, "counters/hot"), Value::Int(fast + 1));
}

#[test]
fn a_call_id_takes_effect_once_even_across_a_restart() {
    let f = fixture(APP);
    let first = call(&f, "increment", r#"{"name": "once"}"#, Some("call-1")).unwrap();
    assert!(!first.replayed);
    assert_eq!(first.result, Value::Int(1));
    for _ in 0..4 {
        let again = call(&f, "increment", r#"{"name": "once"}"#, Some("call-1")).unwrap();
        assert!(again.replayed);
        assert_eq!(again.result, Value::Int(1));
        assert_eq!(
            again.time, first.time,
            "the stored outcome carries the commit time"
        );
    }
    let Fixture { dir, db, functions } = f;
    functions.close();
    Arc::try_unwrap(db).ok().unwrap().close().unwrap();
    let f = open(dir);
    assert_eq!(
        f.functions.module().unwrap().version,
        1,
        "the module survives a restart"
    );
    for _ in 0..5 {
        let again = call(&f, "increment", r#"{"name": "once"}"#, Some("call-1")).unwrap();
        assert!(again.replayed);
        assert_eq!(again.result, Value::Int(1));
    }
    assert_eq!(get(&f, "counters/once"), Value::Int(1));
    // A stored failure is answered the same way.
    let e = call(&f, "boom", "null", Some("call-2")).unwrap_err();
    let again = call(&f, "boom", "null", Some("call-2")).unwrap_err();
    assert_eq!(
        (e.code(), again.code()),
        ("function_error", "function_error")
    );
    assert_eq!(e.to_string(), again.to_string());
    // A call id that is not a path key is refused before running.
    let e = call(&f, "increment", r#"{"name": "x"}"#, Some("a/b")).unwrap_err();
    assert_eq!(e.code(), "bad_request");
}

#[test]
fn transfers_keep_the_total_under_eight_concurrent_callers() {
    let f = Arc::new(fixture(APP));
    f.db.commit(tarn_core::Txn::set(
        Path::parse("accounts").unwrap(),
        json(r#"{"a": 100, "b": 100, "c": 100, "d": 100}"#),
    ))
    .unwrap();
    let names = ["a", "b", "c", "d"];
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let f = Arc::clone(&f);
            std::thread::spawn(move || {
                for i in 0..40 {
                    let (from, to) = (names[(t + i) % 4], names[(t + i * 3 + 1) % 4]);
                    if from == to {
                        continue;
                    }
                    let args = format!(
                        r#"{{"from": "{from}", "to": "{to}", "amount": {}}}"#,
                        1 + i % 7
                    );
                    match call(&f, "transfer", &args, None) {
                        Ok(_) => {}
                        Err(e) => assert!(
                            e.code() == "function_error" || e.code() == "conflict",
                            "{e}"
                        ),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let Value::Object(accounts) = get(&f, "accounts") else {
        panic!("accounts")
    };
    let total: i64 = accounts
        .values()
        .map(|v| match v {
            Value::Int(i) => *i,
            other => panic!("{other:?}"),
        })
        .sum();
    assert_eq!(total, 400);
}

#[test]
fn module_state_does_not_leak_between_calls() {
    let f = fixture(APP);
    for _ in 0..3 {
        let a = call(&f, "leak", "null", None).unwrap();
        assert_eq!(
            a.result,
            json(
                r#"{"calls": 1, "before": 1, "frozen": ["global", "prototype", "Math"], "own": "own", "evil": null}"#
            )
        );
    }
}

#[test]
fn date_and_random_are_the_calls_own() {
    let f = fixture(APP);
    let a = call(&f, "nondeterminism", "null", Some("seed-1")).unwrap();
    let first = get(&f, "det");
    let Value::Object(result) = &a.result else {
        panic!()
    };
    let now = result["now"].clone();
    assert_eq!(first.clone(), {
        let Value::Object(d) = &first else { panic!() };
        assert_eq!(d["now"], now, "Date.now() is ctx.now");
        assert_eq!(d["date"], now, "new Date() is ctx.now");
        first.clone()
    });
    assert_eq!(result["id"], Value::str("seed-1"));
    assert_eq!(result["auth"], json(r#"{"uid": null, "roles": ["guest"]}"#));
    // The same call id on another server (a fresh store) draws the same
    // numbers; another id draws others.
    let g = fixture(APP);
    call(&g, "nondeterminism", "null", Some("seed-1")).unwrap();
    let Value::Object(d1) = first else { panic!() };
    let Value::Object(d2) = get(&g, "det") else {
        panic!()
    };
    assert_eq!(d1["random"], d2["random"]);
    call(&g, "nondeterminism", "null", Some("seed-2")).unwrap();
    let Value::Object(d3) = get(&g, "det") else {
        panic!()
    };
    assert_ne!(d1["random"], d3["random"]);
    let Value::Array(r) = &d1["random"] else {
        panic!()
    };
    assert!(
        r.iter()
            .all(|x| matches!(x, Value::Float(f) if (0.0..1.0).contains(f)))
    );
    // The generator is specified: SplitMix64 over FNV-1a of the id.
    let mut rng = tarn_functions::sandbox::SplitMix64::for_call("seed-1");
    assert_eq!(r[0], Value::Float(rng.next_f64()));
}

#[test]
fn reads_see_the_calls_own_writes() {
    let f = fixture(APP);
    let a = call(&f, "readOwnWrites", "null", None).unwrap();
    assert_eq!(
        a.result,
        json(
            r#"{"whole": {"b": 1, "c": 2, "d": {"e": 3}}, "keys": ["b", "c", "d"], "after": {"b": 1, "d": {"e": 3}}}"#
        )
    );
    assert_eq!(get(&f, "row/a"), json(r#"{"b": 1, "d": {"e": 3}}"#));
}

#[test]
fn functions_call_functions_in_the_same_transaction() {
    let f = fixture(APP);
    let a = call(&f, "outer", r#"{"name": "nested"}"#, None).unwrap();
    assert_eq!(a.result, json("[1, 2]"));
    assert_eq!(get(&f, "counters/nested"), Value::Int(2));
    let a = call(&f, "later", "null", None).unwrap();
    assert_eq!(a.result, Value::str("done"));
    assert_eq!(get(&f, "async/done"), Value::Bool(true));
}

#[test]
fn limits_give_typed_errors_and_the_engines_keep_serving() {
    let f = fixture(APP);
    let cases = [
        ("spin", "timeout"),
        ("hog", "out_of_memory"),
        ("big", "out_of_memory"),
        ("deep", "stack_overflow"),
        ("boom", "function_error"),
        ("writeSys", "function_error"),
        ("badReturn", "bad_value"),
        ("nope", "unknown_function"),
    ];
    for (function, code) in cases {
        let started = std::time::Instant::now();
        let e = call(&f, function, "null", None).unwrap_err();
        assert_eq!(e.code(), code, "{function}: {e}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{function} took {:?}",
            started.elapsed()
        );
        // Still serving, on every engine.
        for _ in 0..4 {
            call(&f, "increment", r#"{"name": "alive"}"#, None).unwrap();
        }
    }
    let e = call(&f, "boom", "null", None).unwrap_err();
    assert!(e.to_string().contains("TypeError: boom"), "{e}");
    assert!(e.to_string().contains("app.js:"), "the place is named: {e}");
    let e = call(&f, "writeSys", "null", None).unwrap_err();
    assert!(e.to_string().contains("$sys"), "{e}");
    // A ctx kept past its call cannot be used.
    call(&f, "keep", "null", None).unwrap_err();
    assert_eq!(get(&f, "counters/alive"), Value::Int(32));
}

#[test]
fn a_module_with_a_syntax_error_is_refused_with_its_place_and_the_old_one_serves() {
    let f = fixture(APP);
    let e = f
        .functions
        .deploy("export function ok() { return 1; }\nexport function bad() { return 1 +; }\n")
        .unwrap_err();
    let DeployError::Invalid { message, line, .. } = &e else {
        panic!("{e:?}")
    };
    assert!(message.contains("SyntaxError"), "{message}");
    assert_eq!(*line, Some(2), "{message}");
    let e = f
        .functions
        .deploy("export function ok() { return 1; }\nthrow new Error('at load');\n")
        .unwrap_err();
    assert!(e.to_string().contains("at load"), "{e}");
    let e = f
        .functions
        .deploy("import x from 'fs';\nexport function f() {}")
        .unwrap_err();
    assert!(matches!(e, DeployError::Invalid { .. }), "{e:?}");
    assert_eq!(f.functions.module().unwrap().version, 1);
    call(&f, "increment", r#"{"name": "still"}"#, None).unwrap();
    let d = f
        .functions
        .deploy("export function two() { return 2; }")
        .unwrap();
    assert_eq!(
        (d.version, d.functions.clone()),
        (2, vec!["two".to_string()])
    );
    assert_eq!(call(&f, "two", "null", None).unwrap().result, Value::Int(2));
    assert_eq!(
        call(&f, "increment", "{}", None).unwrap_err().code(),
        "unknown_function"
    );
}

#[test]
fn no_module_is_a_clear_error() {
    let f = open(tempfile::tempdir().unwrap());
    let e = call(&f, "anything", "null", None).unwrap_err();
    assert_eq!(e.code(), "no_module");
    assert!(e.to_string().contains("tarn deploy"), "{e}");
}

#[test]
fn escapes_from_the_sandbox_are_closed() {
    let f = fixture(APP);
    for function in ["root", "rootPatch", "presence", "hook", "iteratorProto"] {
        let e = call(&f, function, "null", None).unwrap_err();
        assert_eq!(e.code(), "function_error", "{function}: {e}");
    }
    let e = call(&f, "throwNull", "null", None).unwrap_err();
    assert_eq!(e.code(), "function_error", "{e}");
    let e = call(&f, "longArray", "null", None).unwrap_err();
    assert_eq!(e.code(), "bad_value", "{e}");
    // Promise jobs a synchronous function queues run within its call.
    assert_eq!(
        call(&f, "jobs", "null", None).unwrap().result,
        Value::str("sync")
    );
    assert_eq!(get(&f, "jobs/then"), Value::Bool(true));
    // Dates are in UTC whatever the machine's zone.
    let a = call(&f, "localTime", "null", None).unwrap();
    assert_eq!(
        a.result,
        json(r#"[1577934245000, 3, 0, "Thu, 02 Jan 2020 03:04:05 GMT", 1577934245000]"#)
    );
    // Empty objects written are absent when read back, as in the store.
    let a = call(&f, "empties", "null", None).unwrap();
    assert_eq!(a.result, json(r#"[{"c": 1}, ["c"]]"#));
    // The stored system data is intact.
    assert_eq!(f.functions.module().unwrap().version, 1);
}

#[test]
fn outcomes_expire_after_the_retention_and_the_id_runs_again() {
    let f = open_with(tempfile::tempdir().unwrap(), short_retention());
    f.functions.deploy(APP).unwrap();
    let first = call(&f, "increment", r#"{"name": "x"}"#, Some("short-lived")).unwrap();
    assert_eq!(first.result, Value::Int(1));
    wait_until_absent(&f, "$sys/calls/short-lived");
    let again = call(&f, "increment", r#"{"name": "x"}"#, Some("short-lived")).unwrap();
    assert!(!again.replayed);
    assert_eq!(
        again.result,
        Value::Int(2),
        "past the retention, the id runs again"
    );
    assert_eq!(get(&f, "counters/x"), Value::Int(2));
}

#[test]
fn outcomes_stored_before_a_restart_expire_too() {
    let f = fixture(APP);
    call(&f, "increment", r#"{"name": "y"}"#, Some("old-one")).unwrap();
    let Fixture { dir, db, functions } = f;
    functions.close();
    Arc::try_unwrap(db).ok().unwrap().close().unwrap();
    let f = open_with(dir, short_retention());
    wait_until_absent(&f, "$sys/calls/old-one");
}

#[test]
fn a_stored_outcome_answers_even_after_its_function_is_gone() {
    let f = fixture(APP);
    let first = call(
        &f,
        "increment",
        r#"{"name": "gone"}"#,
        Some("before-redeploy"),
    )
    .unwrap();
    f.functions
        .deploy("export function other() { return 0; }")
        .unwrap();
    let again = call(
        &f,
        "increment",
        r#"{"name": "gone"}"#,
        Some("before-redeploy"),
    )
    .unwrap();
    assert!(again.replayed);
    assert_eq!(again.result, first.result);
    // The same id for another function is a mistake, not a replay.
    let e = call(&f, "other", "null", Some("before-redeploy")).unwrap_err();
    assert_eq!(e.code(), "bad_request", "{e}");
    assert!(e.to_string().contains("another function"), "{e}");
}

#[test]
fn a_return_value_too_large_to_store_fails_the_same_with_or_without_an_id() {
    let f = fixture(
        "export function big(ctx, args) { return 'x'.repeat(args.n); }\nexport function quotes(ctx, args) { return '\"'.repeat(args.n); }",
    );
    let max = 1 << 20;
    for id in [None, Some("big-1")] {
        let e = call(&f, "big", &format!(r#"{{"n": {max}}}"#), id).unwrap_err();
        assert_eq!(e.code(), "bad_value", "{e}");
        // Escaping counts: each quote takes three bytes stored.
        let e = call(
            &f,
            "quotes",
            &format!(r#"{{"n": {}}}"#, max / 3),
            id.map(|_| "q-1"),
        )
        .unwrap_err();
        assert_eq!(e.code(), "bad_value", "{e}");
    }
    assert_eq!(
        call(&f, "big", r#"{"n": 1000}"#, Some("small"))
            .unwrap()
            .result,
        Value::str(&"x".repeat(1000))
    );
}
