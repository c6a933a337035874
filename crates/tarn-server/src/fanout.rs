//! Fan-out: from the store's ordered feed of durable commits to each
//! connection's outbox.
//!
//! - An [`Outbox`] is a connection's queue of outgoing messages, bounded
//!   in bytes: a push that would exceed `max_send_buffer_bytes` closes the
//!   connection as a slow consumer instead of growing memory.
//! - The [`Hub`] maps engine watch ids to outboxes. Its task takes each
//!   durable commit from the feed, in commit order, and pushes one
//!   `change` message per delivery: one transaction's changes to a watch
//!   travel in one message (atomic), in commit order (ordered), each once
//!   (unique).
//! - A new watch is *held* until its first message (the current value, or
//!   the history it resumes from) has been queued, so a change committed
//!   meanwhile is never delivered before it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tarn_core::{Commit, WatchId};
use tarn_proto::{ErrorBody, ErrorCode, Response};
use tokio::sync::{Notify, mpsc};

use crate::convert;

/// A message for a connection, and the bytes it was counted as.
#[derive(Debug)]
pub enum Outgoing {
    /// Send this.
    Msg(Response),
    /// Send this reason and close.
    Close(ErrorBody),
}

/// A connection's bounded queue of outgoing messages.
#[derive(Debug)]
pub struct Outbox {
    tx: mpsc::UnboundedSender<(Outgoing, usize)>,
    queued: AtomicUsize,
    limit: usize,
    closed: AtomicBool,
    /// Woken when the outbox closes (the reader stops waiting).
    pub closed_notify: Notify,
}

/// Bytes a message is counted as against the send buffer limit: its
/// values as JSON plus a fixed overhead per message and per change.
pub fn estimate(msg: &Response) -> usize {
    match msg {
        Response::Change { changes, .. } => {
            48 + changes
                .iter()
                .map(|c| c.path.len() + c.value.0.json_len() + 16)
                .sum::<usize>()
        }
        Response::Value { value, .. } => 64 + value.0.json_len(),
        Response::Watching { value, .. } => 64 + value.as_ref().map_or(0, |v| v.0.json_len()),
        Response::Error { error, .. } | Response::Close { error } => 64 + error.message.len(),
        _ => 48,
    }
}

impl Outbox {
    /// An outbox holding at most `limit` bytes, and its receiving end.
    pub fn new(limit: usize) -> (Arc<Outbox>, mpsc::UnboundedReceiver<(Outgoing, usize)>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Arc::new(Outbox {
                tx,
                queued: AtomicUsize::new(0),
                limit,
                closed: AtomicBool::new(false),
                closed_notify: Notify::new(),
            }),
            rx,
        )
    }

    /// Queues a message; false if the connection is (now) closed.
    pub fn push(&self, msg: Response) -> bool {
        if self.is_closed() {
            return false;
        }
        let size = estimate(&msg);
        let queued = self.queued.fetch_add(size, Ordering::Relaxed) + size;
        if queued > self.limit {
            metrics::counter!("tarn_slow_consumers_total").increment(1);
            self.close(ErrorBody::new(
                ErrorCode::SlowConsumer,
                format!(
                    "more than {} bytes queued for this connection (limits.max_send_buffer_bytes); read faster or watch less",
                    self.limit
                ),
            ));
            return false;
        }
        self.tx.send((Outgoing::Msg(msg), size)).is_ok()
    }

    /// Closes the connection with a reason (once).
    pub fn close(&self, why: ErrorBody) {
        if !self.closed.swap(true, Ordering::SeqCst) {
            let _ = self.tx.send((Outgoing::Close(why), 0));
            self.closed_notify.notify_waiters();
            self.closed_notify.notify_one();
        }
    }

    /// True once closed.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Marks `size` bytes as sent.
    pub fn sent(&self, size: usize) {
        self.queued.fetch_sub(size, Ordering::Relaxed);
    }
}

struct Target {
    outbox: Arc<Outbox>,
    client_watch: u64,
    /// `Some` while the watch's first message is not queued yet.
    held: Option<Vec<Response>>,
}

/// Routes deliveries of durable commits to outboxes. See the module docs.
pub struct Hub {
    targets: Mutex<HashMap<WatchId, Target>>,
    /// The log sequence number of the last commit routed: a commit's
    /// answer waits for it, so it never overtakes the commit's own
    /// changes on the committing connection.
    routed: tokio::sync::watch::Sender<u64>,
}

impl Default for Hub {
    fn default() -> Hub {
        Hub {
            targets: Mutex::default(),
            routed: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<WatchId, Target>> {
        self.targets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a watch, held until [`Hub::release`]. Call under the
    /// store lock, in the same critical section that registers the watch
    /// in the engine, so no delivery for it can be missed.
    pub fn add(&self, id: WatchId, outbox: Arc<Outbox>, client_watch: u64) {
        self.lock().insert(
            id,
            Target {
                outbox,
                client_watch,
                held: Some(Vec::new()),
            },
        );
        metrics::gauge!("tarn_watches").increment(1.0);
    }

    /// Queues the watch's first messages, then what arrived meanwhile, and
    /// lets later changes through directly.
    pub fn release(&self, id: WatchId, first: Vec<Response>) {
        let mut targets = self.lock();
        if let Some(t) = targets.get_mut(&id) {
            for msg in first {
                t.outbox.push(msg);
            }
            for msg in t.held.take().unwrap_or_default() {
                t.outbox.push(msg);
            }
        }
    }

    /// Forgets a watch.
    pub fn remove(&self, id: WatchId) {
        if self.lock().remove(&id).is_some() {
            metrics::gauge!("tarn_watches").decrement(1.0);
        }
    }

    /// Waits until the commit logged at `lsn` has been routed (its
    /// changes queued to every watcher's outbox). Only for commits with
    /// deliveries: others never reach the hub.
    pub async fn routed(&self, lsn: u64) {
        let mut rx = self.routed.subscribe();
        // The sender lives as long as the hub.
        let _ = rx.wait_for(|routed| *routed >= lsn).await;
    }

    /// Routes every commit of `feed` until it closes.
    pub async fn run(self: Arc<Self>, mut feed: mpsc::UnboundedReceiver<(u64, Arc<Commit>)>) {
        let lag = metrics::histogram!("tarn_fanout_lag_seconds");
        while let Some((lsn, commit)) = feed.recv().await {
            self.route(&commit);
            self.routed.send_replace(lsn);
            let lag_ms = tarn_store::db::wall_ms().saturating_sub(commit.time.ms);
            lag.record(lag_ms as f64 / 1000.0);
        }
    }

    fn route(&self, commit: &Commit) {
        if commit.deliveries.is_empty() {
            return;
        }
        let mut targets = self.lock();
        for d in &commit.deliveries {
            let Some(t) = targets.get_mut(&d.watch) else {
                continue;
            };
            let changes = commit.changes[d.changes.start as usize..d.changes.end as usize]
                .iter()
                .map(convert::change)
                .collect();
            let msg = Response::Change {
                watch: t.client_watch,
                time: commit.time.into(),
                changes,
            };
            match &mut t.held {
                Some(held) => held.push(msg),
                None => {
                    t.outbox.push(msg);
                }
            }
        }
    }
}
