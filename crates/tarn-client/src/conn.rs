//! The connection task: connects with backoff, restores watches and
//! resends unanswered commits after each (re)connect, sends what the
//! client queues, and applies what the server answers.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures_util::{SinkExt, StreamExt};
use tarn_core::{Time, Value};
use tarn_proto::{Codec, ErrorCode, MSGPACK_SUBPROTOCOL, PROTOCOL_VERSION, Request, Response};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::{
    ConnectionState, Error, Shared, State, Update, UpdateKind, emit_changed, predicted, snapshot,
    tree, visible,
};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Most bytes of requests packed into one frame.
const PACK_BYTES: usize = 64 * 1024;

/// `ws://host:port/v1/ws` from `ws://host:port`, `http://host:port` or
/// the full URL.
pub(crate) fn ws_url(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    let url = if let Some(rest) = url.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = url.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if url.contains("://") {
        url.to_string()
    } else {
        format!("ws://{url}")
    };
    if url.ends_with("/v1/ws") {
        url
    } else {
        format!("{url}/v1/ws")
    }
}

/// A `watch` request for local watch `local`, resuming after the last
/// change received if it has a value.
pub(crate) fn watch_request(state: &mut State, local: u64) -> Request {
    let id = state.next_request;
    state.next_request += 1;
    state.watch_requests.insert(id, local);
    let w = &state.watches[&local];
    Request::Watch {
        id,
        path: w.path.join("/"),
        subtree: true,
        since: if w.resync {
            None
        } else {
            w.committed.as_ref().map(|_| w.time.into())
        },
    }
}

async fn connect(url: &str) -> Result<Ws, String> {
    let mut req = url.into_client_request().map_err(|e| e.to_string())?;
    let protocol = MSGPACK_SUBPROTOCOL.parse().map_err(|e| format!("{e}"))?;
    req.headers_mut().insert("sec-websocket-protocol", protocol);
    // TCP_NODELAY (`disable_nagle`): commits and reads are small writes
    // that must leave at once.
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(tarn_proto::WS_READ_BUFFER_BYTES);
    let (ws, _) = tokio_tungstenite::connect_async_with_config(req, Some(config), true)
        .await
        .map_err(|e| e.to_string())?;
    Ok(ws)
}

async fn until_closed(shared: &Shared) {
    while !shared.closed.load(Ordering::SeqCst) {
        shared.closing.notified().await;
    }
}

/// The task behind a [`crate::Client`]: runs until the client closes.
pub(crate) async fn run(shared: Arc<Shared>) {
    let mut backoff = shared.options.backoff_min;
    while !shared.closed.load(Ordering::SeqCst) {
        shared.conn_state.send_replace(ConnectionState::Connecting);
        let attempt = tokio::select! {
            ws = connect(&shared.url) => ws,
            _ = until_closed(&shared) => break,
        };
        match attempt {
            Ok(ws) => {
                let mut healthy = false;
                if let Err(e) = session(&shared, ws, &mut healthy).await {
                    tracing::debug!(error = %e, "tarn connection lost");
                }
                // Only a session the server answered resets the backoff: a
                // server that closes at once is not retried in a hot loop.
                if healthy {
                    backoff = shared.options.backoff_min;
                }
            }
            Err(e) => tracing::debug!(url = %shared.url, error = %e, "tarn connect failed"),
        }
        disconnected(&mut shared.lock());
        if shared.closed.load(Ordering::SeqCst) {
            break;
        }
        shared
            .conn_state
            .send_replace(ConnectionState::Disconnected);
        tokio::select! {
            _ = tokio::time::sleep(crate::jitter(backoff)) => {}
            _ = until_closed(&shared) => break,
        }
        backoff = (backoff * 2).min(shared.options.backoff_max);
    }
    close_all(&mut shared.lock());
    shared.conn_state.send_replace(ConnectionState::Closed);
}

/// Forgets what belonged to the lost connection; what must be sent again
/// (watches, gets, unanswered commits) is rebuilt from the state.
fn disconnected(state: &mut State) {
    // Sent and unanswered: the server may have decided them.
    for seq in std::mem::take(&mut state.in_flight) {
        if let Some(c) = state.commits.get_mut(&seq) {
            c.sent = true;
        }
    }
    state.connected = false;
    state.unsent.clear();
    state.in_flight.clear();
    state.sent_upto = 0;
    state.commit_requests.clear();
    state.watch_requests.clear();
    state.by_server_id.clear();
    for w in state.watches.values_mut() {
        w.server_id = None;
    }
}

/// The client closed: everything waiting fails, watch streams end.
fn close_all(state: &mut State) {
    for (_, mut commit) in std::mem::take(&mut state.commits) {
        if let Some(reply) = commit.reply.take() {
            let _ = reply.send(Err(Error::Closed));
        }
    }
    for (_, (_, reply)) in state.gets.drain() {
        let _ = reply.send(Err(Error::Closed));
    }
    for (_, (_, reply)) in state.calls.drain() {
        let _ = reply.send(Err(Error::Closed));
    }
    state.watches.clear();
}

/// One connection, until it fails or the client closes.
async fn session(shared: &Shared, ws: Ws, healthy: &mut bool) -> Result<(), String> {
    let (mut sink, mut stream) = ws.split();
    let first = {
        let mut state = shared.lock();
        disconnected(&mut state);
        let id = state.next_request;
        state.next_request += 1;
        let mut reqs = vec![Request::Hello {
            id,
            version: PROTOCOL_VERSION,
            token: shared.options.token.clone(),
        }];
        let mut watches: Vec<u64> = state.watches.keys().copied().collect();
        watches.sort_unstable();
        for local in watches {
            reqs.push(watch_request(&mut state, local));
        }
        for (id, (path, _)) in &state.gets {
            reqs.push(Request::Get {
                id: *id,
                path: path.clone(),
                at: None,
            });
        }
        let mut calls: Vec<&u64> = state.calls.keys().collect();
        calls.sort_unstable();
        reqs.extend(calls.into_iter().map(|id| state.calls[id].0.clone()));
        state.connected = true;
        reqs.extend(sendable(shared, &mut state));
        reqs
    };
    send(&mut sink, first).await?;
    shared.conn_state.send_replace(ConnectionState::Connected);
    let ping_every = shared
        .options
        .ping_interval
        .max(std::time::Duration::from_millis(10));
    let mut heard = tokio::time::Instant::now();
    let mut pinged = false;
    loop {
        let batch = sendable(shared, &mut shared.lock());
        if !batch.is_empty() {
            send(&mut sink, batch).await?;
        }
        let quiet_until = heard + if pinged { ping_every * 2 } else { ping_every };
        tokio::select! {
            _ = tokio::time::sleep_until(quiet_until) => {
                if pinged {
                    return Err(format!("no answer for {:?}; reconnecting", ping_every * 2));
                }
                // Its own id: an answer to it must never be taken for
                // another request's.
                let id = {
                    let mut state = shared.lock();
                    let id = state.next_request;
                    state.next_request += 1;
                    id
                };
                send(&mut sink, vec![Request::Ping { id }]).await?;
                pinged = true;
            }
            msg = stream.next() => match msg {
                Some(Ok(Message::Binary(frame))) => {
                    (heard, pinged, *healthy) = (tokio::time::Instant::now(), false, true);
                    let msgs = Codec::MsgPack
                        .decode_responses(&frame)
                        .map_err(|e| format!("unreadable frame from the server: {e}"))?;
                    let mut state = shared.lock();
                    for msg in msgs {
                        handle(&mut state, msg);
                    }
                }
                Some(Ok(Message::Text(text))) => {
                    (heard, pinged, *healthy) = (tokio::time::Instant::now(), false, true);
                    let msg = Codec::Json
                        .decode_response(text.as_bytes())
                        .map_err(|e| format!("unreadable frame from the server: {e}"))?;
                    handle(&mut shared.lock(), msg);
                }
                Some(Ok(Message::Close(frame))) => {
                    return Err(format!("the server closed the connection: {frame:?}"));
                }
                Some(Ok(_)) => (heard, pinged) = (tokio::time::Instant::now(), false),
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("the connection ended".into()),
            },
            _ = shared.wake.notified() => {}
            _ = until_closed(shared) => {
                let _ = sink.close().await;
                return Ok(());
            }
        }
    }
}

/// What to send now: queued requests, then commits in seq order within
/// the in-flight window.
fn sendable(shared: &Shared, state: &mut State) -> Vec<Request> {
    let mut out: Vec<Request> = state.unsent.drain(..).collect();
    let max = shared.options.max_in_flight.max(1);
    let upto = state.sent_upto;
    let due: Vec<u64> = state
        .commits
        .range(upto + 1..)
        .map(|(seq, _)| *seq)
        .take(max.saturating_sub(state.in_flight.len()))
        .collect();
    for seq in due {
        let id = state.next_request;
        state.next_request += 1;
        let commit = &state.commits[&seq];
        out.push(Request::Commit {
            id,
            reads: commit.reads.clone(),
            writes: commit.ops.iter().map(crate::Op::wire).collect(),
            client: Some(shared.client_id),
            seq: Some(seq),
            depends_on: commit.depends_on.clone(),
            retry: commit.sent,
        });
        state.commit_requests.insert(id, seq);
        state.in_flight.insert(seq);
        state.sent_upto = seq;
    }
    out
}

async fn send(
    sink: &mut futures_util::stream::SplitSink<Ws, Message>,
    reqs: Vec<Request>,
) -> Result<(), String> {
    let mut frame = Vec::new();
    for req in &reqs {
        Codec::MsgPack.encode_request_into(req, &mut frame);
        if frame.len() >= PACK_BYTES {
            let full = std::mem::take(&mut frame);
            sink.feed(Message::Binary(full.into()))
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    if !frame.is_empty() {
        sink.feed(Message::Binary(frame.into()))
            .await
            .map_err(|e| e.to_string())?;
    }
    sink.flush().await.map_err(|e| e.to_string())
}

/// Applies one message from the server.
fn handle(state: &mut State, msg: Response) {
    match msg {
        Response::Value { id, value, seen } => {
            if let Some((_, reply)) = state.gets.remove(&id) {
                let _ = reply.send(Ok((value.0, seen.into())));
            }
        }
        Response::Watching {
            id,
            watch,
            value,
            time,
            resumed,
        } => {
            let Some(local) = state.watch_requests.remove(&id) else {
                return;
            };
            let Some(w) = state.watches.get_mut(&local) else {
                // Dropped before the server answered: stop it there.
                let id = state.next_request;
                state.next_request += 1;
                state.unsent.push_back(Request::Unwatch { id, watch });
                return;
            };
            state.by_server_id.insert(watch, local);
            w.server_id = Some(watch);
            w.resync = false;
            if resumed && w.committed.is_some() {
                return; // the missed changes follow
            }
            let kind = if w.committed.is_none() {
                UpdateKind::Initial
            } else {
                UpdateKind::Resynced
            };
            w.committed = Some(value.map_or(Value::Null, |v| v.0));
            w.time = time.into();
            let w = &state.watches[&local];
            let _ = w.tx.send(Update {
                value: visible(state, w),
                time: w.time,
                predicted: predicted(state, w),
                kind,
            });
        }
        Response::Change {
            watch,
            time,
            changes,
        } => {
            let time = Time::from(time);
            let Some(local) = state.by_server_id.get(&watch).copied() else {
                return;
            };
            let Some(w) = state.watches.get_mut(&local) else {
                return;
            };
            // A change already reflected (resumed from an older time). A
            // resynced value may be older than the last time seen (the
            // server lost history): then only the value's time counts.
            if w.time >= time {
                return;
            }
            let committed = w.committed.get_or_insert(Value::Null);
            let at: Vec<&str> = w.path.iter().map(String::as_str).collect();
            let mut list = Vec::with_capacity(changes.len());
            for c in changes {
                let keys = tree::keys(&c.path);
                if let Some(rel) = tree::strip(&keys, &at) {
                    tree::set(committed, rel, c.value.0.clone());
                } else if let Some(rel) = tree::strip(&at, &keys) {
                    *committed = tree::get(&c.value.0, rel).clone();
                }
                list.push((c.path, c.value.0));
            }
            w.time = time;
            let w = &state.watches[&local];
            let _ = w.tx.send(Update {
                value: visible(state, w),
                time,
                predicted: predicted(state, w),
                kind: UpdateKind::Committed(list),
            });
        }
        Response::Result {
            id,
            value,
            time,
            reruns,
            ..
        } => {
            if let Some((_, reply)) = state.calls.remove(&id) {
                let _ = reply.send(Ok(crate::CallResult {
                    value: value.0,
                    time: time.map(Time::from),
                    reruns,
                }));
            }
        }
        Response::Committed { id, time } => {
            if let Some(seq) = state.commit_requests.remove(&id) {
                finish(state, seq, Ok(time.into()));
            }
        }
        Response::Error { id, error } => {
            if let Some(seq) = state.commit_requests.remove(&id) {
                finish(state, seq, Err(Error::Server(error)));
            } else if let Some((_, reply)) = state.gets.remove(&id) {
                let _ = reply.send(Err(Error::Server(error)));
            } else if let Some((_, reply)) = state.calls.remove(&id) {
                let _ = reply.send(Err(Error::Server(error)));
            } else if let Some(local) = state.watch_requests.remove(&id) {
                match error.code {
                    // `since` is newer than the server has (a restore, a
                    // failover): watch again from its current value.
                    ErrorCode::AfterNewest if state.watches.contains_key(&local) => {
                        if let Some(w) = state.watches.get_mut(&local) {
                            w.resync = true;
                        }
                        let req = watch_request(state, local);
                        state.unsent.push_back(req);
                    }
                    // The watch cannot be served: its stream ends.
                    _ => {
                        tracing::warn!(code = error.code.as_str(), message = %error.message, "watch refused");
                        state.watches.remove(&local);
                    }
                }
            } else {
                tracing::debug!(id, code = error.code.as_str(), message = %error.message, "error from the server");
            }
        }
        Response::Close { error } => {
            tracing::warn!(code = error.code.as_str(), message = %error.message, "the server is closing the connection");
        }
        Response::Hello { .. } | Response::Pong { .. } | Response::Unwatched { .. } => {}
    }
}

/// A commit's answer: drop its prediction, tell the caller and the
/// watches it touched.
fn finish(state: &mut State, seq: u64, result: Result<Time, Error>) {
    state.in_flight.remove(&seq);
    let Some(ops) = state.commits.get(&seq).map(|c| c.ops.clone()) else {
        return;
    };
    let before = snapshot(state, &ops);
    let Some(mut commit) = state.commits.remove(&seq) else {
        return;
    };
    let kind = match &result {
        Ok(_) => UpdateKind::Confirmed(seq),
        Err(e) => UpdateKind::RolledBack {
            seq,
            reason: e.to_string(),
        },
    };
    if let Some(reply) = commit.reply.take() {
        let _ = reply.send(result);
    }
    emit_changed(state, before, |_| kind.clone());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_the_websocket_route() {
        assert_eq!(ws_url("http://127.0.0.1:7070"), "ws://127.0.0.1:7070/v1/ws");
        assert_eq!(ws_url("ws://h:1/"), "ws://h:1/v1/ws");
        assert_eq!(ws_url("ws://h:1/v1/ws"), "ws://h:1/v1/ws");
        assert_eq!(ws_url("h:1"), "ws://h:1/v1/ws");
        assert_eq!(ws_url("https://h"), "wss://h/v1/ws");
    }
}
