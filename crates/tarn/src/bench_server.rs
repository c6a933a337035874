//! `tarn bench server`: the server measured over its own protocol, on
//! loopback, in this process (server and clients share the machine's two
//! cores, as a peer run on the same machine would).
//!
//! - `server.ws_sets_per_sec`: pipelined single-path sets from 8
//!   WebSocket connections (MessagePack), `sync = batch(2)`.
//! - `server.commit_rtt_p50_us` / `_p99_us`: one client, sequential
//!   commits, each waiting for its answer.
//! - `server.fanout_p99_ms`: one write delivered to 10,000 watchers (100
//!   connections × 100 watches), write to receipt, p99 over all
//!   deliveries of 20 writes.
//! - `server.bytes_per_write`: bytes on the wire of the MessagePack
//!   `change` message a watcher receives for one write of a small value.
//! - With `--vs redis`: Debian's redis-server on a free loopback port,
//!   `redis-benchmark -t set -P 16 -c 8` in the same run, three rounds
//!   alternating with tarn's sets, medians. `server.vs_redis_set_ratio`
//!   compares with redis logging to its append-only file synced every
//!   second (its durable setting closest to `batch(2)`);
//!   `server.vs_redis_nopersist_set_ratio` with redis keeping writes only
//!   in memory.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::{SinkExt, StreamExt};
use tarn_proto::{Codec, Request, Response, WireValue, WireWrite};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub fn run(duration: Duration, vs_redis: bool) -> Result<()> {
    crate::bench::with_server("server", |addr| async move {
        if vs_redis {
            // Alternating runs, medians: the machine is shared and noisy,
            // and each side gets the same share of its moods.
            let (mut tarn, mut aof, mut bare) = (Vec::new(), Vec::new(), Vec::new());
            for round in 1..=ROUNDS {
                eprintln!(
                    "round {round}/{ROUNDS}: tarn, redis (aof everysec), redis (no persistence)"
                );
                tarn.push(ws_sets(addr, duration).await?);
                aof.push(redis_sets(duration, true)?);
                bare.push(redis_sets(duration, false)?);
            }
            let (tarn, aof, bare) = (median(tarn), median(aof), median(bare));
            out!("server.ws_sets_per_sec {tarn:.0} sets/s");
            out!("server.redis_pipelined_sets_per_sec {aof:.0} sets/s");
            out!("server.vs_redis_set_ratio {:.2} x", tarn / aof.max(1.0));
            out!("server.redis_nopersist_sets_per_sec {bare:.0} sets/s");
            out!(
                "server.vs_redis_nopersist_set_ratio {:.2} x",
                tarn / bare.max(1.0)
            );
        } else {
            let sets = ws_sets(addr, duration).await?;
            out!("server.ws_sets_per_sec {sets:.0} sets/s");
        }
        let (p50, p99) = commit_rtt(addr, duration).await?;
        out!("server.commit_rtt_p50_us {p50:.0} us");
        out!("server.commit_rtt_p99_us {p99:.0} us");
        let fanout = fanout_p99(addr).await?;
        out!("server.fanout_p99_ms {fanout:.1} ms");
        let bytes = bytes_per_write(addr).await?;
        out!("server.bytes_per_write {bytes} bytes");
        Ok(())
    })
}

/// Rounds of alternating tarn and redis runs with `--vs redis`.
const ROUNDS: usize = 3;

/// The median (the mean of the middle two of an even count; 0 if empty).
pub(crate) fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    match xs.len() {
        0 => 0.0,
        n if n % 2 == 1 => xs[n / 2],
        n => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

pub(crate) async fn connect(addr: SocketAddr) -> Result<Ws> {
    let mut req = format!("ws://{addr}/v1/ws").into_client_request()?;
    req.headers_mut().insert(
        "sec-websocket-protocol",
        tarn_proto::MSGPACK_SUBPROTOCOL.parse()?,
    );
    // As tarn-client connects: TCP_NODELAY, tarn's read buffer size.
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(tarn_proto::WS_READ_BUFFER_BYTES);
    let (ws, _) = tokio_tungstenite::connect_async_with_config(req, Some(config), true).await?;
    Ok(ws)
}

pub(crate) fn set(id: u64, path: &str, v: i64) -> Request {
    Request::Commit {
        client: None,
        seq: None,
        depends_on: vec![],
        retry: false,
        id,
        reads: vec![],
        writes: vec![WireWrite::Set {
            path: path.into(),
            value: WireValue(tarn_core::Value::Int(v)),
        }],
    }
}

/// A connection and the messages of its last frame not yet taken (a
/// MessagePack frame may carry several).
pub(crate) struct Conn {
    ws: Ws,
    unread: std::collections::VecDeque<Response>,
}

impl Conn {
    pub(crate) async fn open(addr: SocketAddr) -> Result<Conn> {
        Ok(Conn {
            ws: connect(addr).await?,
            unread: Default::default(),
        })
    }

    pub(crate) async fn send(&mut self, req: &Request) -> Result<()> {
        let frame = Codec::MsgPack.encode_request(req);
        Ok(self.ws.send(Message::Binary(frame.into())).await?)
    }

    pub(crate) async fn next(&mut self) -> Result<Response> {
        loop {
            if let Some(msg) = self.unread.pop_front() {
                return Ok(msg);
            }
            match self.ws.next().await.context("connection closed")?? {
                Message::Binary(b) => self.unread.extend(Codec::MsgPack.decode_responses(&b)?),
                Message::Close(c) => anyhow::bail!("server closed the connection: {c:?}"),
                _ => continue,
            }
        }
    }
}

/// Pipelined sets on 8 connections, each through a [`Window`] (within the
/// server's in-flight limit).
pub(crate) async fn ws_sets(addr: SocketAddr, duration: Duration) -> Result<f64> {
    let start = Instant::now();
    let (done, end) = pipelined(addr, 8, Until::Deadline(start + duration), |c, i| {
        set(i, &format!("bench/c{c}"), i as i64)
    })
    .await?;
    Ok(done as f64 / end.duration_since(start).as_secs_f64())
}

/// When a pipelined load stops sending.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Until {
    Deadline(Instant),
    /// This many requests per connection.
    Count(u64),
}

impl Until {
    pub(crate) fn more(self, sent: u64) -> bool {
        match self {
            // At least one pack, so that a figure is never of nothing
            // (a connection can open after a short deadline).
            Until::Deadline(at) => sent == 0 || Instant::now() < at,
            Until::Count(n) => sent < n,
        }
    }
}

/// The in-flight window of one pipelined connection, shared by its sender
/// and its reader: at most [`Window::SIZE`] requests unanswered, sent at
/// most [`Window::PACK`] per write (as `redis-benchmark -P 16` packs 16
/// commands per write).
#[derive(Clone)]
pub(crate) struct Window {
    credits: std::sync::Arc<tokio::sync::Semaphore>,
    sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Window {
    pub(crate) const SIZE: usize = 256;
    pub(crate) const PACK: u64 = 16;

    pub(crate) fn new() -> Window {
        Window {
            credits: std::sync::Arc::new(tokio::sync::Semaphore::new(Self::SIZE)),
            sent: Default::default(),
        }
    }

    /// Waits for room for one request, then takes room for more, up to a
    /// pack, while there is room and `until` allows more after `sent`:
    /// how many to send now.
    pub(crate) async fn take(&self, until: Until, sent: u64) -> Result<u64> {
        self.credits.acquire().await?.forget();
        let mut n = 1;
        while n < Self::PACK
            && until.more(sent + n)
            && let Ok(p) = self.credits.try_acquire()
        {
            p.forget();
            n += 1;
        }
        Ok(n)
    }

    /// Records that `total` requests have been sent so far.
    pub(crate) fn sent(&self, total: u64) {
        self.sent.store(total, std::sync::atomic::Ordering::Release);
    }

    /// `n` answers came back: room for `n` more.
    pub(crate) fn answered(&self, n: usize) {
        self.credits.add_permits(n);
    }

    /// Whether `answers` covers everything sent so far.
    pub(crate) fn all_answered(&self, answers: u64) -> bool {
        answers >= self.sent.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Ends a connection's load once its reader has stopped: how many
    /// requests were sent, or why they were not all answered with success
    /// (`ok` succeeded, `failed` were refused, the first for `first_error`).
    /// A sender still waiting for room (the reader gave up after 10 s of
    /// silence, or the server closed the connection) is stopped.
    pub(crate) async fn finish(
        &self,
        sender: tokio::task::JoinHandle<Result<u64>>,
        ok: u64,
        failed: u64,
        first_error: Option<String>,
    ) -> Result<u64> {
        if !sender.is_finished() {
            sender.abort();
        }
        let sent = self.sent.load(std::sync::atomic::Ordering::Acquire);
        let first = first_error.unwrap_or_else(|| "none".into());
        match sender.await {
            Ok(Ok(sent)) if failed == 0 && ok == sent => Ok(sent),
            Ok(Ok(sent)) => anyhow::bail!(
                "{failed} of {sent} requests failed, {} unanswered; first error: {first}",
                sent.saturating_sub(ok + failed)
            ),
            Ok(Err(e)) => Err(e.context(format!(
                "sending: {ok} of {sent} answered, {failed} failed; first error: {first}"
            ))),
            Err(_) => anyhow::bail!(
                "no answer for 10 s, or the server closed the connection: {ok} of {sent} \
                 answered, {failed} failed; first error: {first}"
            ),
        }
    }
}

/// Sums the connections of a pipelined load: requests answered, and when
/// the last answer came.
pub(crate) async fn join_pipelined(
    tasks: Vec<tokio::task::JoinHandle<Result<(u64, Instant)>>>,
) -> Result<(u64, Instant)> {
    let mut total = 0;
    let mut end = Instant::now();
    for t in tasks {
        let (done, last) = t.await??;
        total += done;
        end = end.max(last);
    }
    Ok((total, end))
}

/// Pipelined commits on `conns` connections, `make(connection, i)` being
/// each connection's `i`th, through a [`Window`] each. All must commit.
/// Returns how many did and when the last answer came.
pub(crate) async fn pipelined<F>(
    addr: SocketAddr,
    conns: usize,
    until: Until,
    make: F,
) -> Result<(u64, Instant)>
where
    F: Fn(usize, u64) -> Request + Clone + Send + Sync + 'static,
{
    let mut tasks = Vec::new();
    for c in 0..conns {
        let make = make.clone();
        tasks.push(tokio::spawn(async move {
            let (mut tx, mut rx) = connect(addr).await?.split();
            let window = Window::new();
            let sender_window = window.clone();
            let sender = tokio::spawn(async move {
                let mut sent = 0u64;
                while until.more(sent) {
                    let n = sender_window.take(until, sent).await?;
                    let mut frame = Vec::with_capacity(n as usize * 20);
                    for _ in 0..n {
                        Codec::MsgPack.encode_request_into(&make(c, sent), &mut frame);
                        sent += 1;
                    }
                    // One write per pack, as the redis load makes.
                    tx.send(Message::Binary(frame.into())).await?;
                    sender_window.sent(sent);
                }
                anyhow::Ok(sent)
            });
            let (mut done, mut errors) = (0u64, 0u64);
            let mut first_error = None;
            let mut last = Instant::now();
            while !(sender.is_finished() && window.all_answered(done + errors)) {
                let msg = tokio::time::timeout(Duration::from_secs(10), rx.next()).await;
                let Ok(Some(msg)) = msg else { break };
                // A broken connection or frame ends the load (`finish`
                // says why), as silence does.
                let answers = match msg.map_err(anyhow::Error::from).and_then(|m| match m {
                    Message::Binary(b) => Ok(Codec::MsgPack.decode_responses(&b)?),
                    _ => Ok(Vec::new()),
                }) {
                    Ok(answers) => answers,
                    Err(e) => {
                        first_error.get_or_insert_with(|| format!("{e:#}"));
                        break;
                    }
                };
                if !answers.is_empty() {
                    for answer in &answers {
                        match answer {
                            Response::Committed { .. } => done += 1,
                            other => {
                                errors += 1;
                                first_error.get_or_insert_with(|| format!("{other:?}"));
                            }
                        }
                    }
                    last = Instant::now();
                    window.answered(answers.len());
                }
            }
            window.finish(sender, done, errors, first_error).await?;
            anyhow::Ok((done, last))
        }));
    }
    join_pipelined(tasks).await
}

async fn commit_rtt(addr: SocketAddr, duration: Duration) -> Result<(f64, f64)> {
    let mut ws = Conn::open(addr).await?;
    let mut rtts = Vec::new();
    let start = Instant::now();
    let mut id = 0;
    while start.elapsed() < duration {
        let t = Instant::now();
        ws.send(&set(id, "bench/rtt", id as i64)).await?;
        loop {
            if let Response::Committed { .. } = ws.next().await? {
                break;
            }
        }
        rtts.push(t.elapsed().as_secs_f64() * 1e6);
        id += 1;
    }
    rtts.sort_by(f64::total_cmp);
    let q = |p: f64| rtts[((rtts.len() as f64 - 1.0) * p) as usize];
    Ok((q(0.5), q(0.99)))
}

async fn fanout_p99(addr: SocketAddr) -> Result<f64> {
    const CONNS: usize = 100;
    const PER_CONN: u64 = 100;
    const WRITES: i64 = 20;
    let mut watchers = Vec::new();
    for _ in 0..CONNS {
        let mut ws = Conn::open(addr).await?;
        for w in 0..PER_CONN {
            ws.send(&Request::Watch {
                id: w,
                path: "fan".into(),
                subtree: true,
                since: None,
            })
            .await?;
        }
        for _ in 0..PER_CONN {
            ws.next().await?;
        }
        watchers.push(ws);
    }
    let (times_tx, mut times_rx) = tokio::sync::mpsc::unbounded_channel::<(i64, Instant)>();
    let mut readers = Vec::new();
    for mut ws in watchers {
        let times_tx = times_tx.clone();
        readers.push(tokio::spawn(async move {
            let mut got = 0;
            while got < PER_CONN as i64 * WRITES {
                if let Response::Change { changes, .. } = ws.next().await? {
                    if let tarn_core::Value::Int(v) = changes[0].value.0 {
                        let _ = times_tx.send((v, Instant::now()));
                    }
                    got += 1;
                }
            }
            anyhow::Ok(())
        }));
    }
    drop(times_tx);
    let mut writer = Conn::open(addr).await?;
    let mut sent_at = Vec::new();
    for v in 0..WRITES {
        sent_at.push(Instant::now());
        writer.send(&set(v as u64, "fan/x", v)).await?;
        loop {
            if let Response::Committed { .. } = writer.next().await? {
                break;
            }
        }
        // Let this write's fan-out finish before the next.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut lat = Vec::new();
    while let Some((v, at)) = times_rx.recv().await {
        lat.push(at.duration_since(sent_at[v as usize]).as_secs_f64() * 1e3);
    }
    for r in readers {
        r.await??;
    }
    lat.sort_by(f64::total_cmp);
    Ok(lat[((lat.len() as f64 - 1.0) * 0.99) as usize])
}

async fn bytes_per_write(addr: SocketAddr) -> Result<usize> {
    let mut watcher = Conn::open(addr).await?;
    watcher
        .send(&Request::Watch {
            id: 1,
            path: "rooms/lobby".into(),
            subtree: true,
            since: None,
        })
        .await?;
    watcher.next().await?;
    let mut writer = Conn::open(addr).await?;
    writer
        .send(&set(1, "rooms/lobby/players/alice/x", 42))
        .await?;
    // The frame holding the one change (and nothing else).
    loop {
        match watcher.ws.next().await.context("closed")?? {
            Message::Binary(b) => {
                if let [Response::Change { .. }] = Codec::MsgPack.decode_responses(&b)?[..] {
                    return Ok(b.len());
                }
            }
            _ => continue,
        }
    }
}

/// redis-server on a free port and redis-benchmark's pipelined SET. With
/// `aof`, redis logs every write and syncs once a second
/// (`appendonly yes`, `appendfsync everysec`): its durable setting
/// closest to tarn's `sync = batch(2)`, which syncs every 2 ms. Without,
/// redis keeps writes only in memory.
fn redis_sets(duration: Duration, aof: bool) -> Result<f64> {
    use crate::compare::peers::{Server, Settings, System};
    let server = Server::start(
        System::Redis,
        &Settings {
            redis_aof: aof,
            ..Default::default()
        },
    )?;
    let port = server.port;
    let requests = (2_000_000.0 * duration.as_secs_f64()).max(100_000.0) as u64;
    let out = std::process::Command::new("redis-benchmark")
        .args([
            "-p",
            &port.to_string(),
            "-t",
            "set",
            "-P",
            "16",
            "-c",
            "8",
            "-q",
            "-n",
            &requests.to_string(),
        ])
        .output()
        .context("running redis-benchmark");
    // Stops redis and removes its dir.
    drop(server);
    let out = out?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rate = text
        .split_whitespace()
        .zip(text.split_whitespace().skip(1))
        .find(|(_, unit)| *unit == "requests")
        .and_then(|(n, _)| n.parse::<f64>().ok())
        .with_context(|| format!("reading redis-benchmark output: {text}"))?;
    Ok(rate)
}
