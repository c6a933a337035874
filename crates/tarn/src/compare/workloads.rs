//! The workloads of `tarn bench compare`, one function per system each,
//! all driven from this process over loopback with the same shape of
//! load: `sets`, `durable_txn`, and write-to-delivery latency (`fanout`,
//! `watch_latency`).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::{Stream, StreamExt, TryStreamExt};
use rand::{Rng, SeedableRng};
use tarn_proto::{Request, Response};

use super::etcd::{self, Etcd};
use super::peers::System;
use super::resp;
use crate::bench_server::{Conn, Until};

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// `sets`: pipelined single-key writes from 8 connections for `duration`;
/// sets per second.
pub async fn sets(system: System, port: u16, duration: Duration) -> Result<f64> {
    match system {
        System::Tarn => crate::bench_server::ws_sets(addr(port), duration).await,
        System::Redis => {
            let start = Instant::now();
            let (done, end) =
                resp::pipelined(port, 8, Until::Deadline(start + duration), |c, i, out| {
                    resp::encode_set(
                        format!("bench:c{c}").as_bytes(),
                        i.to_string().as_bytes(),
                        out,
                    )
                })
                .await?;
            Ok(done as f64 / end.duration_since(start).as_secs_f64())
        }
        other => bail!("sets does not run on {}", other.name()),
    }
}

/// Concurrent clients of `durable_txn`.
pub const TXN_CLIENTS: usize = 32;
/// Keys `durable_txn` picks its pairs from.
pub const TXN_KEYS: u64 = 1_000;

/// One run of `durable_txn`.
pub struct TxnRun {
    pub per_sec: f64,
    pub latencies_ms: Vec<f64>,
    /// Attempts that conflicted and were retried.
    pub retries: u64,
}

/// Creates the table PostgreSQL's `durable_txn` updates (once per server).
pub async fn txn_setup(system: System, port: u16) -> Result<()> {
    if system == System::Postgres {
        let client = pg_connect(port).await?;
        client
            .batch_execute(&format!(
                "CREATE TABLE kv (k int PRIMARY KEY, v bigint NOT NULL);
                 INSERT INTO kv SELECT g, 0 FROM generate_series(0, {}) g;",
                TXN_KEYS - 1
            ))
            .await?;
    }
    Ok(())
}

async fn pg_connect(port: u16) -> Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=postgres dbname=postgres"),
        tokio_postgres::NoTls,
    )
    .await
    .context("connecting to PostgreSQL")?;
    tokio::spawn(conn);
    Ok(client)
}

/// `durable_txn`: [`TXN_CLIENTS`] clients, each its own connection, each
/// repeatedly reading two random keys and writing both incremented, as
/// one serializable transaction committed with an fsync, retried on
/// conflict, for `duration`.
pub async fn durable_txn(system: System, port: u16, duration: Duration) -> Result<TxnRun> {
    txn_load(system, port, duration, false).await
}

/// The module `functions` deploys: `durable_txn`'s transaction as a
/// server function.
pub const RMW_MODULE: &str = r#"
export function rmw(ctx, { a, b }) {
  const va = ctx.get(a) ?? 0;
  const vb = ctx.get(b) ?? 0;
  ctx.set(a, va + 1);
  ctx.set(b, vb + 1);
}
"#;

/// Prepares a server for `functions`: tarn gets [`RMW_MODULE`]; the
/// peers are set up as for `durable_txn`.
pub async fn functions_setup(system: System, port: u16) -> Result<()> {
    if system != System::Tarn {
        return txn_setup(system, port).await;
    }
    let resp = reqwest::Client::new()
        .put(format!("http://127.0.0.1:{port}/v1/module"))
        .body(RMW_MODULE)
        .send()
        .await
        .context("deploying the functions module")?;
    anyhow::ensure!(
        resp.status().is_success(),
        "deploying the functions module: {}",
        resp.text().await.unwrap_or_default()
    );
    Ok(())
}

/// `functions`: `durable_txn`, with tarn's transaction one call of a
/// server function (one round trip; the server reruns it on conflict).
pub async fn functions(system: System, port: u16, duration: Duration) -> Result<TxnRun> {
    txn_load(system, port, duration, true).await
}

async fn txn_load(system: System, port: u16, duration: Duration, tarn_fn: bool) -> Result<TxnRun> {
    // Every client connects (and prepares) first; the measured time runs
    // from their common start to the last one's last commit.
    let gate = Arc::new(tokio::sync::Barrier::new(TXN_CLIENTS));
    let seed = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..TXN_CLIENTS {
        let gate = Arc::clone(&gate);
        tasks.spawn(async move {
            let rng =
                rand::rngs::StdRng::seed_from_u64(c as u64 ^ seed.elapsed().as_nanos() as u64);
            let load = Load {
                rng,
                gate,
                duration,
            };
            match system {
                System::Tarn if tarn_fn => txn_tarn_fn(port, load).await,
                System::Tarn => txn_tarn(port, load).await,
                System::Etcd => txn_etcd(port, load).await,
                System::Postgres => txn_postgres(port, load).await,
                other => bail!("durable_txn does not run on {}", other.name()),
            }
        });
    }
    let (mut latencies_ms, mut retries) = (Vec::new(), 0);
    let (mut start, mut end): (Option<Instant>, Option<Instant>) = (None, None);
    while let Some(client) = tasks.join_next().await {
        let done = client??;
        latencies_ms.extend(done.latencies_ms);
        retries += done.retries;
        start = Some(start.map_or(done.started, |s| s.min(done.started)));
        end = Some(end.map_or(done.finished, |e| e.max(done.finished)));
    }
    let secs = match (start, end) {
        (Some(s), Some(e)) => e.duration_since(s).as_secs_f64(),
        _ => 0.0,
    };
    Ok(TxnRun {
        per_sec: latencies_ms.len() as f64 / secs.max(1e-9),
        latencies_ms,
        retries,
    })
}

/// One `durable_txn` client's inputs.
struct Load {
    rng: rand::rngs::StdRng,
    /// Passed once every client is connected.
    gate: Arc<tokio::sync::Barrier>,
    duration: Duration,
}

impl Load {
    /// Waits for every client, then gives the time to stop.
    async fn start(&self) -> (Instant, Instant) {
        self.gate.wait().await;
        let started = Instant::now();
        (started, started + self.duration)
    }
}

/// What one `durable_txn` client did.
struct ClientRun {
    latencies_ms: Vec<f64>,
    retries: u64,
    started: Instant,
    finished: Instant,
}

fn pick(rng: &mut impl Rng) -> (u64, u64) {
    let a = rng.random_range(0..TXN_KEYS);
    let b = (a + rng.random_range(1..TXN_KEYS)) % TXN_KEYS;
    (a, b)
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

async fn txn_tarn(port: u16, mut load: Load) -> Result<ClientRun> {
    use tarn_client::Value;
    let options = tarn_client::Options {
        max_attempts: 100_000,
        ..Default::default()
    };
    let client = tarn_client::Client::connect(&format!("ws://127.0.0.1:{port}"), options).await?;
    let attempts = Arc::new(AtomicU64::new(0));
    let mut lat = Vec::new();
    let (started, deadline) = load.start().await;
    while Instant::now() < deadline {
        let (a, b) = pick(&mut load.rng);
        let (pa, pb) = (format!("dt/k{a}"), format!("dt/k{b}"));
        let t = Instant::now();
        client
            .transact(|tx| {
                let (pa, pb, attempts) = (pa.clone(), pb.clone(), Arc::clone(&attempts));
                Box::pin(async move {
                    attempts.fetch_add(1, Ordering::Relaxed);
                    let int = |v: Value| if let Value::Int(n) = v { n } else { 0 };
                    // Both reads in one round trip.
                    let both = tx.get_all(&[&pa, &pb]).await?;
                    let (va, vb) = (int(both[0].clone()), int(both[1].clone()));
                    tx.set(&pa, Value::Int(va + 1))?;
                    tx.set(&pb, Value::Int(vb + 1))?;
                    Ok(())
                })
            })
            .await?;
        lat.push(ms(t));
    }
    let finished = Instant::now();
    client.close().await;
    Ok(ClientRun {
        retries: attempts.load(Ordering::Relaxed) - lat.len() as u64,
        latencies_ms: lat,
        started,
        finished,
    })
}

async fn txn_tarn_fn(port: u16, mut load: Load) -> Result<ClientRun> {
    use tarn_client::Value;
    let client = tarn_client::Client::connect(
        &format!("ws://127.0.0.1:{port}"),
        tarn_client::Options::default(),
    )
    .await?;
    let (mut lat, mut retries) = (Vec::new(), 0u64);
    let (started, deadline) = load.start().await;
    while Instant::now() < deadline {
        let (a, b) = pick(&mut load.rng);
        let args = Value::Object(
            [
                ("a".into(), Value::str(&format!("dt/k{a}"))),
                ("b".into(), Value::str(&format!("dt/k{b}"))),
            ]
            .into(),
        );
        let t = Instant::now();
        let done = client.call("rmw", args).await?;
        lat.push(ms(t));
        retries += u64::from(done.reruns);
    }
    let finished = Instant::now();
    client.close().await;
    Ok(ClientRun {
        retries,
        latencies_ms: lat,
        started,
        finished,
    })
}

async fn txn_etcd(port: u16, mut load: Load) -> Result<ClientRun> {
    let mut etcd = Etcd::connect(port).await?;
    let (mut lat, mut retries) = (Vec::new(), 0);
    let (started, deadline) = load.start().await;
    while Instant::now() < deadline {
        let (a, b) = pick(&mut load.rng);
        let (ka, kb) = (
            format!("dt/k{a}").into_bytes(),
            format!("dt/k{b}").into_bytes(),
        );
        let t = Instant::now();
        loop {
            let read = etcd.txn(etcd::read(&[&ka, &kb])).await?;
            // (mod revision, value) of each key; (0, 0) when absent.
            let mut seen = [(0i64, 0i64); 2];
            for (slot, op) in seen.iter_mut().zip(&read.responses) {
                if let Some(etcd::Response::Range(r)) = &op.response
                    && let Some(kv) = r.kvs.first()
                {
                    let v = std::str::from_utf8(&kv.value)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    *slot = (kv.mod_revision, v);
                }
            }
            let write = etcd::write_if_unchanged(&[
                (&ka, seen[0].0, (seen[0].1 + 1).to_string().into_bytes()),
                (&kb, seen[1].0, (seen[1].1 + 1).to_string().into_bytes()),
            ]);
            if etcd.txn(write).await?.succeeded {
                break;
            }
            retries += 1;
        }
        lat.push(ms(t));
    }
    Ok(ClientRun {
        latencies_ms: lat,
        retries,
        started,
        finished: Instant::now(),
    })
}

async fn txn_postgres(port: u16, mut load: Load) -> Result<ClientRun> {
    use tokio_postgres::error::SqlState;
    let mut client = pg_connect(port).await?;
    let select = client
        .prepare("SELECT k, v FROM kv WHERE k = ANY($1) ORDER BY k")
        .await?;
    let update = client.prepare("UPDATE kv SET v = $2 WHERE k = $1").await?;
    let (mut lat, mut retries) = (Vec::new(), 0);
    let (started, deadline) = load.start().await;
    while Instant::now() < deadline {
        let (a, b) = pick(&mut load.rng);
        let keys = vec![a as i32, b as i32];
        let t = Instant::now();
        loop {
            let attempt: Result<(), tokio_postgres::Error> = async {
                let tx = client
                    .build_transaction()
                    .isolation_level(tokio_postgres::IsolationLevel::Serializable)
                    .start()
                    .await?;
                for row in tx.query(&select, &[&keys]).await? {
                    let (k, v): (i32, i64) = (row.get(0), row.get(1));
                    tx.execute(&update, &[&k, &(v + 1)]).await?;
                }
                tx.commit().await
            }
            .await;
            match attempt {
                Ok(()) => break,
                Err(e)
                    if e.code() == Some(&SqlState::T_R_SERIALIZATION_FAILURE)
                        || e.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED) =>
                {
                    retries += 1
                }
                Err(e) => return Err(e.into()),
            }
        }
        lat.push(ms(t));
    }
    Ok(ClientRun {
        latencies_ms: lat,
        retries,
        started,
        finished: Instant::now(),
    })
}

/// What a delivery-latency run watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topic {
    /// `fanout`: tarn watch of `fan/x`, redis pub/sub and NATS core
    /// subscriptions on `fan`.
    Fanout,
    /// `watch_latency`: tarn watch of `wl`, etcd watch of `wl`, redis
    /// keyspace notifications of key `wl`.
    Watch,
}

/// One subscriber's connection.
enum Sub {
    Tarn(Conn),
    Redis(Pin<Box<dyn Stream<Item = redis::Msg> + Send>>),
    /// The client is kept for the connection's lifetime.
    Nats {
        _client: async_nats::Client,
        sub: async_nats::Subscriber,
    },
    Etcd(tonic::Streaming<etcd::WatchResponse>),
}

impl Sub {
    async fn open(system: System, port: u16, topic: Topic) -> Result<Sub> {
        Ok(match system {
            System::Tarn => {
                let path = if topic == Topic::Fanout {
                    "fan/x"
                } else {
                    "wl"
                };
                let mut conn = Conn::open(addr(port)).await?;
                conn.send(&Request::Watch {
                    id: 1,
                    path: path.into(),
                    subtree: false,
                    since: None,
                })
                .await?;
                match conn.next().await? {
                    Response::Watching { .. } => Sub::Tarn(conn),
                    other => bail!("tarn answered a watch with {other:?}"),
                }
            }
            System::Redis => {
                let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
                let mut pubsub = client.get_async_pubsub().await?;
                match topic {
                    Topic::Fanout => pubsub.subscribe("fan").await?,
                    Topic::Watch => pubsub.subscribe("__keyspace@0__:wl").await?,
                }
                Sub::Redis(Box::pin(pubsub.into_on_message()))
            }
            System::Nats => {
                let client = async_nats::connect(format!("127.0.0.1:{port}")).await?;
                let sub = client.subscribe("fan").await?;
                // The server has the subscription once the flush returns.
                client.flush().await?;
                Sub::Nats {
                    _client: client,
                    sub,
                }
            }
            System::Etcd => {
                let mut stream = Etcd::connect(port).await?.watch(b"wl").await?;
                match stream.message().await? {
                    Some(r) if r.created => Sub::Etcd(stream),
                    other => bail!("etcd answered a watch with {other:?}"),
                }
            }
            System::Postgres => bail!("PostgreSQL is not in the delivery workloads"),
        })
    }

    /// Waits for the next notification(s); how many writes they report.
    async fn next(&mut self) -> Result<usize> {
        loop {
            let n = match self {
                Sub::Tarn(conn) => match conn.next().await? {
                    Response::Change { .. } => 1,
                    _ => 0,
                },
                Sub::Redis(messages) => {
                    messages.next().await.context("redis closed")?;
                    1
                }
                Sub::Nats { sub, .. } => {
                    sub.next().await.context("nats closed")?;
                    1
                }
                Sub::Etcd(stream) => {
                    let r = stream.message().await?.context("etcd closed the watch")?;
                    anyhow::ensure!(!r.canceled, "etcd canceled the watch");
                    r.events.len()
                }
            };
            if n > 0 {
                return Ok(n);
            }
        }
    }
}

/// The writer of a delivery-latency run.
enum Writer {
    Tarn(Conn),
    Redis(redis::aio::MultiplexedConnection),
    Nats(async_nats::Client),
    Etcd(Etcd),
}

impl Writer {
    async fn open(system: System, port: u16) -> Result<Writer> {
        Ok(match system {
            System::Tarn => Writer::Tarn(Conn::open(addr(port)).await?),
            System::Redis => Writer::Redis(
                redis::Client::open(format!("redis://127.0.0.1:{port}/"))?
                    .get_multiplexed_async_connection()
                    .await?,
            ),
            System::Nats => Writer::Nats(async_nats::connect(format!("127.0.0.1:{port}")).await?),
            System::Etcd => Writer::Etcd(Etcd::connect(port).await?),
            System::Postgres => bail!("PostgreSQL is not in the delivery workloads"),
        })
    }

    /// Sends write number `w` (without waiting for its delivery).
    async fn write(&mut self, topic: Topic, w: u64) -> Result<()> {
        match self {
            Writer::Tarn(conn) => {
                let path = if topic == Topic::Fanout {
                    "fan/x"
                } else {
                    "wl"
                };
                conn.send(&crate::bench_server::set(w, path, w as i64))
                    .await?;
                loop {
                    match conn.next().await? {
                        Response::Committed { .. } => return Ok(()),
                        Response::Error { error, .. } => bail!("tarn refused a write: {error:?}"),
                        _ => {}
                    }
                }
            }
            Writer::Redis(con) => {
                let cmd = match topic {
                    Topic::Fanout => redis::cmd("PUBLISH").arg("fan").arg(w).clone(),
                    Topic::Watch => redis::cmd("SET").arg("wl").arg(w).clone(),
                };
                cmd.query_async::<redis::Value>(con).await?;
            }
            Writer::Nats(client) => {
                client.publish("fan", w.to_string().into()).await?;
                client.flush().await?;
            }
            Writer::Etcd(etcd) => etcd.put(b"wl", w.to_string().into_bytes()).await?,
        }
        Ok(())
    }
}

/// Counts deliveries of each write; wakes the writer when a write has
/// reached every subscriber.
struct Deliveries {
    base: Instant,
    counts: Vec<AtomicUsize>,
    subscribers: usize,
    all_in: tokio::sync::Notify,
}

/// Write-to-delivery latency: `subscribers` connections each subscribe,
/// one more connection makes `writes` writes, each after the previous one
/// reached every subscriber. Returns every delivery's latency, in ms.
pub async fn delivery(
    system: System,
    port: u16,
    topic: Topic,
    subscribers: usize,
    writes: usize,
) -> Result<Vec<f64>> {
    let subs: Vec<Sub> = futures_util::stream::iter(0..subscribers)
        .map(|_| Sub::open(system, port, topic))
        .buffer_unordered(64)
        .try_collect()
        .await?;
    let d = Arc::new(Deliveries {
        base: Instant::now(),
        counts: (0..writes).map(|_| AtomicUsize::new(0)).collect(),
        subscribers,
        all_in: tokio::sync::Notify::new(),
    });
    let mut tasks = tokio::task::JoinSet::new();
    for mut sub in subs {
        let d = Arc::clone(&d);
        tasks.spawn(async move {
            // Writes are made one at a time, so the nth notification is
            // write n.
            let mut received_ns = Vec::with_capacity(writes);
            while received_ns.len() < writes {
                let n = sub.next().await?;
                for _ in 0..n.min(writes - received_ns.len()) {
                    let w = received_ns.len();
                    received_ns.push(d.base.elapsed().as_nanos() as u64);
                    if d.counts[w].fetch_add(1, Ordering::AcqRel) + 1 == d.subscribers {
                        d.all_in.notify_one();
                    }
                }
            }
            anyhow::Ok(received_ns)
        });
    }
    let mut writer = Writer::open(system, port).await?;
    let mut sent_ns = Vec::with_capacity(writes);
    for w in 0..writes {
        sent_ns.push(d.base.elapsed().as_nanos() as u64);
        writer.write(topic, w as u64).await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while d.counts[w].load(Ordering::Acquire) < subscribers {
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, d.all_in.notified())
                .await
                .is_err()
            {
                // A subscriber that failed says why.
                if let Some(Ok(Err(e))) = tasks.try_join_next() {
                    return Err(e);
                }
                bail!(
                    "{}: write {w} reached {} of {subscribers} subscribers in 30 s",
                    system.name(),
                    d.counts[w].load(Ordering::Acquire)
                );
            }
        }
    }
    let mut latencies = Vec::with_capacity(writes * subscribers);
    while let Some(sub) = tasks.join_next().await {
        for (sent, received) in sent_ns.iter().zip(sub??) {
            latencies.push(received.saturating_sub(*sent) as f64 / 1e6);
        }
    }
    Ok(latencies)
}
