//! `tarn bench client`: tarn-client against a server in this process, on
//! loopback (server and clients share the machine's two cores).
//!
//! - `client.transact_per_sec`: 8 clients each incrementing one shared
//!   counter through `transact` (a read, a write, reruns on conflict),
//!   `sync = batch(2)`; committed increments per second.
//! - `client.transact_reruns_per_commit`: closure runs beyond the first,
//!   per committed increment (the price of the contention).
//! - `client.predicted_apply_us`: from `set` to the local watch showing
//!   the predicted value, p50 and p99 over 10,000 sets.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tarn_client::{Client, Options, UpdateKind, Value};

pub fn run(duration: Duration) -> Result<()> {
    crate::bench::with_server("client", |addr| async move {
        let url = format!("ws://{addr}/v1/ws");
        let (rate, reruns) = transact_rate(&url, duration).await?;
        out!("client.transact_per_sec {rate:.0} txn/s");
        out!("client.transact_reruns_per_commit {reruns:.2} runs");
        let (p50, p99) = predicted_apply(&url).await?;
        out!("client.predicted_apply_us {p50:.1} us");
        out!("client.predicted_apply_p99_us {p99:.1} us");
        Ok(())
    })
}

async fn transact_rate(url: &str, duration: Duration) -> Result<(f64, f64)> {
    const CLIENTS: usize = 8;
    let runs = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(Client::connect(url, Options::default()).await?);
    }
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for client in clients {
        let runs = Arc::clone(&runs);
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            while Instant::now() < deadline {
                let runs = Arc::clone(&runs);
                client
                    .transact(move |tx| {
                        runs.fetch_add(1, Ordering::Relaxed);
                        Box::pin(async move {
                            let n = match tx.get("bench/counter").await? {
                                Value::Int(n) => n,
                                _ => 0,
                            };
                            tx.set("bench/counter", Value::Int(n + 1))
                        })
                    })
                    .await?;
                done += 1;
            }
            anyhow::Ok(done)
        }));
    }
    let mut done = 0;
    for t in tasks {
        done += t.await??;
    }
    let secs = start.elapsed().as_secs_f64();
    let check = Client::connect(url, Options::default()).await?;
    anyhow::ensure!(
        check.get("bench/counter").await? == Value::Int(done as i64),
        "the counter lost increments"
    );
    let runs = runs.load(Ordering::Relaxed) as f64;
    Ok((
        done as f64 / secs,
        (runs - done as f64) / done.max(1) as f64,
    ))
}

async fn predicted_apply(url: &str) -> Result<(f64, f64)> {
    const SETS: usize = 10_000;
    let client = Client::connect(url, Options::default()).await?;
    let mut watch = client.watch("bench/predicted").await?;
    watch.recv().await.context("the watch's first value")?;
    let mut lat = Vec::with_capacity(SETS);
    let mut answers = Vec::new();
    for i in 0..SETS {
        let start = Instant::now();
        // The first poll predicts and queues the write; the answer comes
        // later.
        let mut answer = Box::pin(client.set("bench/predicted", Value::Int(i as i64)));
        let _ = futures_util::poll!(answer.as_mut());
        loop {
            let update = watch.recv().await.context("the watch ended")?;
            if update.kind == UpdateKind::Predicted(update_seq(&update))
                && update.value == Value::Int(i as i64)
            {
                break;
            }
        }
        lat.push(start.elapsed().as_secs_f64() * 1e6);
        answers.push(answer);
        if answers.len() >= 128 {
            for a in answers.drain(..) {
                a.await?;
            }
        }
    }
    for a in answers {
        a.await?;
    }
    lat.sort_by(f64::total_cmp);
    let q = |p: f64| lat[((lat.len() as f64 - 1.0) * p) as usize];
    Ok((q(0.5), q(0.99)))
}

fn update_seq(u: &tarn_client::Update) -> u64 {
    match u.kind {
        UpdateKind::Predicted(seq) => seq,
        _ => u64::MAX,
    }
}
