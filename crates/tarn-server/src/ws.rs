//! The WebSocket protocol at `/v1/ws`.
//!
//! One session per connection: a reader that decodes requests and
//! answers them (text frames as JSON, binary frames as MessagePack), and
//! a writer that drains the connection's [`Outbox`]: an update leaves at
//! once, but while updates arrive faster than they are written, they are
//! flushed at most once per tick (coalesced, never reordered). Commits are
//! decided in the order they arrive on the connection and acknowledged
//! when durable, so a client may pipeline them. A slow consumer is closed
//! with `slow_consumer` once its queue exceeds the limit.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse, Response as HttpResponse};
use futures_util::{SinkExt, StreamExt};
use tarn_core::{InvalidTxn, Outcome, Path, TxnError, WatchId, WatchKind};
use tarn_proto::{
    Codec, ErrorBody, ErrorCode, MSGPACK_SUBPROTOCOL, PROTOCOL_VERSION, Request, Response,
    WireTime, WireValue,
};
use tarn_store::CommitError;
use tokio::sync::{Semaphore, mpsc};

use crate::fanout::{Outbox, Outgoing};
use crate::{App, ConnectionSlot, convert};

/// `GET /v1/ws`: upgrades to a session, choosing MessagePack when the
/// client offers subprotocol `tarn.v1.msgpack`.
pub async fn upgrade(State(app): State<Arc<App>>, ws: WebSocketUpgrade) -> HttpResponse {
    let Some(slot) = app.connect() else {
        return crate::http::error_response(&ErrorBody::new(
            ErrorCode::TooManyConnections,
            format!(
                "the server holds {} connections (limits.max_connections); try again later",
                app.config.limits.max_connections
            ),
        ));
    };
    let limit = app.config.limits.max_message_bytes;
    let ws = ws
        .protocols([MSGPACK_SUBPROTOCOL])
        .max_message_size(limit)
        .max_frame_size(limit)
        .read_buffer_size(tarn_proto::WS_READ_BUFFER_BYTES);
    let codec = match ws.selected_protocol() {
        Some(p) if p.as_bytes() == MSGPACK_SUBPROTOCOL.as_bytes() => Codec::MsgPack,
        _ => Codec::Json,
    };
    ws.on_failed_upgrade(|e| tracing::debug!(error = %e, "websocket upgrade failed"))
        .on_upgrade(move |socket| session(socket, app, codec, slot))
        .into_response()
}

/// A commit waiting to be acknowledged.
struct Ack {
    id: u64,
    lsn: u64,
    time: tarn_core::Time,
    /// The commit reached watchers: its answer waits until the hub has
    /// queued its changes, so a client watching what it wrote sees the
    /// change before the answer.
    watched: bool,
    /// Holds an in-flight slot until answered.
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// Answers a connection's commits as they become durable, in lsn order:
/// one task per connection instead of one per commit, and one wait for
/// every commit a sync made durable.
async fn ack_loop(
    db: Arc<tarn_store::Db>,
    hub: Arc<crate::fanout::Hub>,
    outbox: Arc<Outbox>,
    mut rx: mpsc::UnboundedReceiver<Vec<Ack>>,
) {
    let mut queue: std::collections::VecDeque<Ack> = std::collections::VecDeque::new();
    loop {
        if queue.is_empty() {
            match rx.recv().await {
                Some(acks) => queue.extend(acks),
                None => return,
            }
        }
        while let Ok(acks) = rx.try_recv() {
            queue.extend(acks);
        }
        let Some(front) = queue.front() else { continue };
        let result = db.durable(front.lsn).await;
        let durable = db.durable_lsn();
        while queue
            .front()
            .is_some_and(|a| result.is_err() || a.lsn <= durable)
        {
            let Some(ack) = queue.pop_front() else { break };
            if ack.watched && result.is_ok() {
                hub.routed(ack.lsn).await;
            }
            let msg = match &result {
                Ok(()) => Response::Committed {
                    id: ack.id,
                    time: ack.time.into(),
                },
                Err(e) => Response::Error {
                    id: ack.id,
                    error: convert::store_error(e),
                },
            };
            outbox.push(msg);
        }
    }
}

/// A commit request checked and holding its in-flight slot, waiting to be
/// decided with the rest of its frame.
struct Prepared {
    id: u64,
    txn: tarn_core::Txn,
    permit: tokio::sync::OwnedSemaphorePermit,
}

struct Session {
    app: Arc<App>,
    acks: mpsc::UnboundedSender<Vec<Ack>>,
    outbox: Arc<Outbox>,
    /// Client watch id → engine watch id.
    watches: HashMap<u64, WatchId>,
    next_watch: u64,
    in_flight: Arc<Semaphore>,
    /// Requests this second, for the rate limit.
    window: (Instant, u32),
}

async fn session(socket: WebSocket, app: Arc<App>, codec: Codec, _slot: ConnectionSlot) {
    let (sink, mut stream) = socket.split();
    let (outbox, rx) = Outbox::new(app.config.limits.max_send_buffer_bytes);
    let tick = Duration::from_millis(app.config.tick_ms);
    let writer = tokio::spawn(write_loop(sink, rx, Arc::clone(&outbox), codec, tick));
    let mut shutdown = app.shutdown.clone();
    let (acks, acks_rx) = mpsc::unbounded_channel();
    tokio::spawn(ack_loop(
        Arc::clone(&app.db),
        Arc::clone(&app.hub),
        Arc::clone(&outbox),
        acks_rx,
    ));
    let mut s = Session {
        acks,
        in_flight: Arc::new(Semaphore::new(
            app.config
                .limits
                .max_in_flight_per_connection
                .min(Semaphore::MAX_PERMITS),
        )),
        app,
        outbox: Arc::clone(&outbox),
        watches: HashMap::new(),
        next_watch: 1,
        window: (Instant::now(), 0),
    };
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(Ok(Message::Text(text))) => s.frame(Codec::Json, text.as_bytes()).await,
                Some(Ok(Message::Binary(bytes))) => s.frame(Codec::MsgPack, &bytes).await,
                Some(Ok(Message::Close(_))) | None => break,
                Some(Ok(_)) => {} // ping/pong: answered by the library
                Some(Err(e)) => {
                    // Oversized or malformed frames end here.
                    let code = if e.to_string().contains("too long") || e.to_string().contains("too big") {
                        ErrorCode::TooLarge
                    } else {
                        ErrorCode::BadRequest
                    };
                    s.outbox.close(ErrorBody::new(code, format!("websocket: {e}")));
                    break;
                }
            },
            _ = s.outbox.closed_notify.notified() => break,
            _ = shutdown.changed() => {
                s.outbox.close(ErrorBody::new(ErrorCode::Unavailable, "the server is shutting down; reconnect later"));
                break;
            }
        }
        if s.outbox.is_closed() {
            break;
        }
    }
    s.cleanup();
    // End the writer: a close (a no-op if a reason is already queued) lets
    // it send the reason and the close frame. A client that does not read
    // gets 2 s, then the writer is aborted, which drops the socket and
    // everything queued: no connection outlives its slot.
    outbox.close(ErrorBody::new(ErrorCode::Unavailable, "connection closed"));
    drop(s);
    let abort = writer.abort_handle();
    if tokio::time::timeout(Duration::from_secs(2), writer)
        .await
        .is_err()
    {
        abort.abort();
        tracing::debug!("writer of a closed connection did not finish; aborted");
    }
}

/// The most bytes of MessagePack messages packed into one frame.
const PACK_BYTES: usize = 64 * 1024;

async fn write_loop(
    mut sink: futures_util::stream::SplitSink<WebSocket, Message>,
    mut rx: mpsc::UnboundedReceiver<(Outgoing, usize)>,
    outbox: Arc<Outbox>,
    codec: Codec,
    tick: Duration,
) {
    let mut last_flush = Instant::now()
        .checked_sub(tick)
        .unwrap_or_else(Instant::now);
    // Updates in the last flush.
    let mut last_updates = 0;
    while let Some(first) = rx.recv().await {
        // Under load, watch updates are flushed at most once per tick:
        // what arrives meanwhile goes out together, in order. "Under load"
        // means the last flush carried more than one update (they arrive
        // faster than they are written); one at a time, an update leaves
        // at once, so a trickle is never delayed by the tick. An answer
        // never starts a hold (one queued behind held updates leaves with
        // them, in order).
        let is_update = matches!(first.0, Outgoing::Msg(Response::Change { .. }));
        let due = last_flush + tick;
        if is_update && last_updates > 1 && Instant::now() < due {
            tokio::time::sleep_until(due.into()).await;
        }
        let mut updates = 0;
        let mut next = Some(first);
        let mut count = 0;
        // MessagePack messages are packed back to back into frames of up
        // to PACK_BYTES; JSON goes one message per text frame.
        let mut packed: Vec<u8> = Vec::new();
        while let Some((out, size)) = next.take() {
            match out {
                Outgoing::Msg(msg) => {
                    updates += usize::from(matches!(msg, Response::Change { .. }));
                    match codec {
                        Codec::Json => {
                            let text =
                                String::from_utf8(codec.encode_response(&msg)).unwrap_or_default();
                            if sink
                                .feed(Message::Text(Utf8Bytes::from(text)))
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                        Codec::MsgPack => {
                            codec.encode_response_into(&msg, &mut packed);
                            if packed.len() >= PACK_BYTES {
                                let frame = Message::Binary(std::mem::take(&mut packed).into());
                                if sink.feed(frame).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    outbox.sent(size);
                }
                Outgoing::Close(error) => {
                    let reason = error.code.as_str().to_string();
                    let close = Response::Close { error };
                    let frame = match codec {
                        Codec::Json => Message::Text(Utf8Bytes::from(
                            String::from_utf8(codec.encode(&close)).unwrap_or_default(),
                        )),
                        Codec::MsgPack => {
                            codec.encode_into(&close, &mut packed);
                            Message::Binary(std::mem::take(&mut packed).into())
                        }
                    };
                    let _ = sink.feed(frame).await;
                    let _ = sink
                        .send(Message::Close(Some(CloseFrame {
                            code: 1008,
                            reason: Utf8Bytes::from(reason),
                        })))
                        .await;
                    return;
                }
            }
            count += 1;
            if count < 4096 {
                next = rx.try_recv().ok();
            }
        }
        if !packed.is_empty() && sink.feed(Message::Binary(packed.into())).await.is_err() {
            return;
        }
        if sink.flush().await.is_err() {
            return;
        }
        last_flush = Instant::now();
        last_updates = updates;
    }
}

/// The id of a request that did not decode, if one can be read.
fn salvage_id(codec: Codec, frame: &[u8]) -> u64 {
    #[derive(serde::Deserialize)]
    struct Id {
        id: u64,
    }
    match codec {
        Codec::Json => serde_json::from_slice::<Id>(frame).map_or(0, |i| i.id),
        Codec::MsgPack => 0,
    }
}

impl Session {
    fn error(&self, id: u64, error: ErrorBody) {
        self.outbox.push(Response::Error { id, error });
    }

    fn rate_limited(&mut self) -> bool {
        let now = Instant::now();
        if now.duration_since(self.window.0) >= Duration::from_secs(1) {
            self.window = (now, 0);
        }
        self.window.1 += 1;
        self.window.1 > self.app.config.limits.max_requests_per_sec
    }

    /// Handles every request of a frame, in order. A message that does
    /// not decode is answered with `bad_request`; nothing after it in the
    /// frame can be read. Consecutive commits are decided together, under
    /// one acquisition of the engine lock.
    async fn frame(&mut self, codec: Codec, frame: &[u8]) {
        let mut batch = Vec::new();
        for req in codec.decode_requests(frame) {
            let req = match req {
                Ok(req) => req,
                Err(e) => {
                    self.submit(&mut batch);
                    let id = salvage_id(codec, frame);
                    self.error(
                        id,
                        ErrorBody::new(
                            ErrorCode::BadRequest,
                            format!("cannot read the message: {e}"),
                        ),
                    );
                    return;
                }
            };
            let id = req.id();
            if self.rate_limited() {
                self.error(
                    id,
                    ErrorBody::new(
                        ErrorCode::RateLimited,
                        format!(
                            "more than {} requests per second on this connection (limits.max_requests_per_sec); slow down",
                            self.app.config.limits.max_requests_per_sec
                        ),
                    ),
                );
                continue;
            }
            if let Err(error) = self.handle(req, &mut batch).await {
                self.error(id, error);
            }
        }
        self.submit(&mut batch);
    }

    /// Checks a commit request and takes its in-flight slot.
    #[allow(clippy::too_many_arguments)]
    fn prepare(
        &self,
        id: u64,
        reads: Vec<tarn_proto::WireRead>,
        writes: Vec<tarn_proto::WireWrite>,
        client: Option<u64>,
        seq: Option<u64>,
        depends_on: Vec<u64>,
        retry: bool,
    ) -> Result<Prepared, ErrorBody> {
        if let (true, Some(client)) = (retry, client) {
            let (known, _) = self
                .app
                .db
                .peek(|e| e.knows_client(tarn_core::ClientId(client)))
                .map_err(|e| convert::store_error(&e))?;
            if !known {
                return Err(ErrorBody::new(
                    ErrorCode::UnknownOutcome,
                    "this transaction was sent before, and the server no longer knows its client (idle past the history horizon, or archived); it may have committed: read the data to find out",
                ));
            }
        }
        let txn_id = match (client, seq) {
            (Some(client), Some(seq)) => Some((client, seq)),
            (None, None) => None,
            _ => {
                return Err(ErrorBody::new(
                    ErrorCode::BadTransaction,
                    "a transaction id needs both `client` and `seq`",
                ));
            }
        };
        let txn = convert::txn_with_id(reads, writes, txn_id, depends_on, &self.app.paths)?;
        let permit = self.in_flight_slot()?;
        Ok(Prepared { id, txn, permit })
    }

    /// One of the connection's in-flight slots, shared by commits and
    /// calls; held until the answer is queued.
    fn in_flight_slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ErrorBody> {
        Arc::clone(&self.in_flight).try_acquire_owned().map_err(|_| {
            ErrorBody::new(
                ErrorCode::RateLimited,
                format!(
                    "{} commits and calls are in flight on this connection (limits.max_in_flight_per_connection); wait for answers",
                    self.app.config.limits.max_in_flight_per_connection
                ),
            )
        })
    }

    /// Decides the prepared commits in order under one lock and hands
    /// their answers to the acknowledger.
    fn submit(&self, batch: &mut Vec<Prepared>) {
        if batch.is_empty() {
            return;
        }
        let (ids, txns): (Vec<_>, Vec<_>) =
            batch.drain(..).map(|p| ((p.id, p.permit), p.txn)).unzip();
        let results = self.app.db.submit_all(txns);
        let mut acks = Vec::with_capacity(results.len());
        let (mut committed, mut rejected) = (0, 0);
        for ((id, permit), result) in ids.into_iter().zip(results) {
            match result {
                Ok(pending) => {
                    committed += 1;
                    acks.push(Ack {
                        id,
                        lsn: pending.lsn,
                        time: pending.commit.time,
                        watched: !pending.commit.deliveries.is_empty(),
                        _permit: permit,
                    });
                }
                // A retry of a transaction that committed: the same
                // answer, once everything logged so far is durable (the
                // first submission may not be yet).
                Err(CommitError::Txn(TxnError::Invalid(InvalidTxn::AlreadyDecided {
                    outcome: Outcome::Committed(time),
                    ..
                }))) => match self.app.db.peek(|_| ()) {
                    Ok(((), lsn)) => acks.push(Ack {
                        id,
                        lsn,
                        time,
                        watched: false,
                        _permit: permit,
                    }),
                    Err(e) => self.error(id, convert::store_error(&e)),
                },
                Err(e) => {
                    rejected += 1;
                    self.error(id, convert::commit_error(&e));
                }
            }
        }
        self.app.counters.commits.increment(committed);
        self.app.counters.rejections.increment(rejected);
        // The acker answers once durable; a closed acker means the session
        // is ending.
        if !acks.is_empty() {
            let _ = self.acks.send(acks);
        }
    }

    /// Handles one request. A commit joins `batch`, decided with the
    /// commits after it in the frame; anything else first decides the
    /// batch, so requests take effect in arrival order.
    async fn handle(&mut self, req: Request, batch: &mut Vec<Prepared>) -> Result<(), ErrorBody> {
        if !matches!(req, Request::Commit { .. }) {
            self.submit(batch);
        }
        match req {
            Request::Hello { id, version, .. } => {
                if version != PROTOCOL_VERSION {
                    return Err(ErrorBody::new(
                        ErrorCode::UnsupportedVersion,
                        format!(
                            "this server speaks protocol version {PROTOCOL_VERSION}, not {version}; upgrade the client"
                        ),
                    ));
                }
                self.outbox.push(Response::Hello {
                    id,
                    version: PROTOCOL_VERSION,
                    node: self
                        .app
                        .db
                        .peek(|e| e.config().node)
                        .map(|(n, _)| n)
                        .map_err(|e| convert::store_error(&e))?,
                });
            }
            Request::Ping { id } => {
                self.outbox.push(Response::Pong { id });
            }
            Request::Get { id, path, at } => {
                let path = convert::path(&path, &self.app.paths)?;
                let (got, lsn) = self
                    .app
                    .db
                    .peek(|e| match at {
                        Some(at) => e.store().get_at(&path, at.into()),
                        None => Ok(e.store().get(&path)),
                    })
                    .map_err(|e| convert::store_error(&e))?;
                let got = got.map_err(|e| convert::store_error(&e.into()))?;
                self.app
                    .db
                    .durable(lsn)
                    .await
                    .map_err(|e| convert::store_error(&e))?;
                self.outbox.push(Response::Value {
                    id,
                    value: WireValue(got.value.unwrap_or(tarn_core::Value::Null)),
                    seen: got.seen.into(),
                });
            }
            Request::Watch {
                id,
                path,
                subtree,
                since,
            } => {
                let path = convert::path(&path, &self.app.paths)?;
                self.watch(id, path, subtree, since).await?;
            }
            Request::Unwatch { id, watch } => {
                let Some(engine_id) = self.watches.remove(&watch) else {
                    return Err(ErrorBody::new(
                        ErrorCode::UnknownWatch,
                        format!("no watch {watch} on this connection"),
                    ));
                };
                self.app.hub.remove(engine_id);
                let _ = self.app.db.peek(|e| e.unwatch(engine_id));
                self.outbox.push(Response::Unwatched { id });
            }
            Request::Commit {
                id,
                reads,
                writes,
                client,
                seq,
                depends_on,
                retry,
            } => {
                // Whether a retry's client is known depends on the
                // commits before it: decide those first.
                if retry {
                    self.submit(batch);
                }
                batch.push(self.prepare(id, reads, writes, client, seq, depends_on, retry)?);
            }
            Request::Call {
                id,
                function,
                args,
                call_id,
            } => self.call(id, function, args, call_id)?,
        }
        Ok(())
    }

    /// Runs a function call off the reader: the answer (`result` or an
    /// error) is queued when the call's commit is durable. Calls share the
    /// connection's in-flight limit with commits.
    fn call(
        &self,
        id: u64,
        function: String,
        args: WireValue,
        call_id: Option<String>,
    ) -> Result<(), ErrorBody> {
        let permit = self.in_flight_slot()?;
        let functions = Arc::clone(&self.app.functions);
        let hub = Arc::clone(&self.app.hub);
        let outbox = Arc::clone(&self.outbox);
        tokio::spawn(async move {
            let _permit = permit;
            let call = tarn_functions::Call::new(function, args.0, call_id);
            let answer = functions.call(call).await;
            // As for commits: the call's own changes reach this
            // connection's watches before its answer.
            if let Ok(a) = &answer
                && a.watched
            {
                hub.routed(a.lsn).await;
            }
            outbox.push(match answer {
                Ok(answer) => Response::Result {
                    id,
                    value: WireValue(answer.result),
                    time: answer.time.map(WireTime::from),
                    reruns: answer.reruns,
                    replayed: answer.replayed,
                },
                Err(e) => Response::Error {
                    id,
                    error: convert::call_error(&e),
                },
            });
        });
        Ok(())
    }

    async fn watch(
        &mut self,
        id: u64,
        path: Path,
        subtree: bool,
        since: Option<WireTime>,
    ) -> Result<(), ErrorBody> {
        let max = self.app.config.limits.max_watches_per_connection;
        if self.watches.len() >= max {
            return Err(ErrorBody::new(
                ErrorCode::TooManyWatches,
                format!(
                    "this connection has {max} watches (limits.max_watches_per_connection); unwatch some"
                ),
            ));
        }
        let client_watch = self.next_watch;
        self.next_watch += 1;
        let kind = if subtree {
            WatchKind::Subtree
        } else {
            WatchKind::Exact
        };
        let (hub, outbox) = (Arc::clone(&self.app.hub), Arc::clone(&self.outbox));
        let send_limit = self.app.config.limits.max_send_buffer_bytes;
        let (registered, lsn) = self
            .app
            .db
            .peek(|e| {
                let newest = e.newest();
                if let Some(since) = since
                    && tarn_core::Time::from(since) > newest
                {
                    return Ok(Err(ErrorBody::new(
                        ErrorCode::AfterNewest,
                        format!("since {:?} is after the newest commit; resume from a time this server sent", since),
                    )));
                }
                let engine_id = e.watch(path.clone(), kind)?;
                // Same critical section as the engine registration: no
                // delivery for this watch can be routed before the hub
                // knows it (it is held until the first message is queued).
                hub.add(engine_id, outbox, client_watch);
                let current = |e: &tarn_core::Engine| {
                    WireValue(e.store().get(&path).value.unwrap_or(tarn_core::Value::Null))
                };
                let first = match since.map(|t| e.store().changes_since(&path, subtree, t.into())) {
                    Some(Ok(missed)) => {
                        let mut msgs = vec![Response::Watching {
                            id,
                            watch: client_watch,
                            value: None,
                            time: since.unwrap_or(WireTime(0, 0, 0)),
                            resumed: true,
                        }];
                        // One message per commit, in commit order.
                        for (time, change) in missed {
                            let wire = convert::change(&change);
                            match msgs.last_mut() {
                                Some(Response::Change {
                                    time: t, changes, ..
                                }) if *t == WireTime::from(time) => {
                                    changes.push(wire);
                                }
                                _ => msgs.push(Response::Change {
                                    watch: client_watch,
                                    time: time.into(),
                                    changes: vec![wire],
                                }),
                            }
                        }
                        msgs
                    }
                    // Not resumable (before the horizon): a resync, with the
                    // full current value and `resumed: false`.
                    Some(Err(_)) | None => vec![Response::Watching {
                        id,
                        watch: client_watch,
                        value: Some(current(e)),
                        time: newest.into(),
                        resumed: false,
                    }],
                };
                // What does not fit the connection's send buffer would only
                // close it as a slow consumer: a long gap resyncs instead,
                // a value too large for any message is refused.
                let size = |msgs: &[Response]| msgs.iter().map(crate::fanout::estimate).sum::<usize>();
                let mut first = first;
                if size(&first) > send_limit && since.is_some() {
                    first = vec![Response::Watching {
                        id,
                        watch: client_watch,
                        value: Some(current(e)),
                        time: newest.into(),
                        resumed: false,
                    }];
                }
                if size(&first) > send_limit {
                    hub.remove(engine_id);
                    e.unwatch(engine_id);
                    return Ok(Err(ErrorBody::new(
                        ErrorCode::TooLarge,
                        format!(
                            "the value at '{path}' is larger than this connection's send buffer ({send_limit} bytes, limits.max_send_buffer_bytes); watch a smaller subtree"
                        ),
                    )));
                }
                Ok::<_, tarn_core::WatchError>(Ok((engine_id, first)))
            })
            .map_err(|e| convert::store_error(&e))?;
        let (engine_id, first) =
            registered.map_err(|e| ErrorBody::new(ErrorCode::TooManyWatches, e.to_string()))??;
        if let Err(e) = self.app.db.durable(lsn).await {
            // Never acknowledged: take the held watch back out.
            self.app.hub.remove(engine_id);
            let _ = self.app.db.peek(|e| e.unwatch(engine_id));
            return Err(convert::store_error(&e));
        }
        self.watches.insert(client_watch, engine_id);
        self.app.hub.release(engine_id, first);
        Ok(())
    }

    fn cleanup(&mut self) {
        for (_, engine_id) in self.watches.drain() {
            self.app.hub.remove(engine_id);
            let _ = self.app.db.peek(|e| e.unwatch(engine_id));
        }
    }
}
