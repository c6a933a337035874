//! `tarn bench functions`: server functions (tarn-functions).
//!
//! In process, on this thread (no hand-off to an engine thread), over a
//! store with `sync = batch(2)`:
//! - `functions.call_us_p50`, `_p99`: a call of `move`, which reads two
//!   paths and writes one, from the call to its commit decided: the run
//!   in QuickJS, marshalling both ways, and the commit under the engine
//!   lock. Not the fsync the answer then waits for (`bench store`
//!   measures that), nor the fresh module instance each call gets, which
//!   an engine makes between calls, while idle:
//! - `functions.instance_us_p50`: making that instance.
//! - `functions.echo_us_p50`: a call of a function that returns its
//!   arguments: the floor of a call (no reads, no writes, an empty commit).
//!
//! Over WebSocket, against a server in this process on loopback:
//! - `functions.calls_per_sec`: 8 tarn-clients with 32 calls of `move` in
//!   flight each, each call on its own keys (no conflicts), answered once
//!   durable; `functions.ws_call_us_p50`/`_p99` are their latencies.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tarn_core::Value;
use tarn_functions::{Call, FunctionLimits, Functions};
use tarn_store::{Db, StoreOptions};

const MODULE: &str = r#"
export function move(ctx, args) {
  const a = ctx.get(`bench/${args.k}/a`) ?? 0;
  const b = ctx.get(`bench/${args.k}/b`) ?? 0;
  ctx.set(`bench/${args.k}/sum`, a + b + 1);
  return a + b;
}

export function echo(ctx, args) {
  return args;
}
"#;

const CLIENTS: usize = 8;
const IN_FLIGHT: usize = 32;

pub fn run(duration: Duration) -> Result<()> {
    in_process(duration)?;
    over_websocket(duration)
}

fn percentile(xs: &mut [f64], p: f64) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    xs.sort_by(f64::total_cmp);
    let i = ((xs.len() as f64 * p).ceil() as usize).clamp(1, xs.len()) - 1;
    xs[i]
}

fn args(k: &str) -> Value {
    Value::Object([("k".into(), Value::str(k))].into())
}

fn in_process(duration: Duration) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("tarn-bench-fn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = in_process_at(&dir, duration);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn in_process_at(dir: &std::path::Path, duration: Duration) -> Result<()> {
    let db = Arc::new(Db::open(dir, StoreOptions::default())?);
    let functions = Functions::open(
        Arc::clone(&db),
        FunctionLimits {
            engines: 1,
            ..FunctionLimits::default()
        },
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    functions
        .deploy(MODULE)
        .map_err(|e| anyhow::anyhow!("deploying the bench module: {e}"))?;
    let mut engine = functions.local_engine();
    let keys: Vec<String> = (0..1000).map(|i| format!("k{i}")).collect();
    let mut timed = |function: &str| -> Result<(Vec<f64>, Vec<f64>)> {
        let (mut calls, mut instances) = (Vec::new(), Vec::new());
        let warm = Instant::now() + duration / 4;
        let end = warm + duration;
        let mut i = 0usize;
        loop {
            let now = Instant::now();
            if now >= end {
                break;
            }
            let t = Instant::now();
            engine.prepare().map_err(|e| anyhow::anyhow!("{e}"))?;
            let instance = t.elapsed();
            let call = Call::new(function, args(&keys[i % keys.len()]), None);
            let t = Instant::now();
            engine.decide(&call).map_err(|e| anyhow::anyhow!("{e}"))?;
            let took = t.elapsed();
            if now >= warm {
                calls.push(took.as_secs_f64() * 1e6);
                instances.push(instance.as_secs_f64() * 1e6);
            }
            i += 1;
        }
        Ok((calls, instances))
    };
    let (mut calls, mut instances) = timed("move")?;
    let (mut echo, _) = timed("echo")?;
    out!(
        "functions.call_us_p50 {:.1} us",
        percentile(&mut calls, 0.5)
    );
    out!(
        "functions.call_us_p99 {:.1} us",
        percentile(&mut calls, 0.99)
    );
    out!(
        "functions.instance_us_p50 {:.1} us",
        percentile(&mut instances, 0.5)
    );
    out!("functions.echo_us_p50 {:.1} us", percentile(&mut echo, 0.5));
    drop(engine);
    functions.close();
    db.flush()?;
    Ok(())
}

fn over_websocket(duration: Duration) -> Result<()> {
    crate::bench::with_server("functions", |addr| async move {
        let resp = reqwest::Client::new()
            .put(format!("http://{addr}/v1/module"))
            .body(MODULE)
            .send()
            .await
            .context("deploying the bench module")?;
        anyhow::ensure!(
            resp.status().is_success(),
            "deploying the bench module: {}",
            resp.text().await.unwrap_or_default()
        );
        let url = format!("ws://{addr}/v1/ws");
        let mut clients = Vec::new();
        for _ in 0..CLIENTS {
            clients.push(Arc::new(
                tarn_client::Client::connect(&url, tarn_client::Options::default()).await?,
            ));
        }
        let start = Instant::now();
        let deadline = start + duration;
        let mut tasks = Vec::new();
        for (c, client) in clients.iter().enumerate() {
            for t in 0..IN_FLIGHT {
                let client = Arc::clone(client);
                let key = format!("c{c}-{t}");
                tasks.push(tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    while Instant::now() < deadline {
                        let sent = Instant::now();
                        client.call("move", args(&key)).await?;
                        latencies.push(sent.elapsed().as_secs_f64() * 1e6);
                    }
                    anyhow::Ok(latencies)
                }));
            }
        }
        let mut latencies = Vec::new();
        for t in tasks {
            latencies.extend(t.await??);
        }
        let secs = start.elapsed().as_secs_f64();
        out!(
            "functions.calls_per_sec {:.0} calls/s",
            latencies.len() as f64 / secs
        );
        out!(
            "functions.ws_call_us_p50 {:.0} us",
            percentile(&mut latencies, 0.5)
        );
        out!(
            "functions.ws_call_us_p99 {:.0} us",
            percentile(&mut latencies, 0.99)
        );
        Ok(())
    })
}
