//! tarn-client: the Rust client of tarn.
//!
//! One [`Client`] keeps one WebSocket connection to a tarn server and
//! hides its comings and goings:
//!
//! - **Watches** ([`Client::watch`], [`Client::watch_subtree`]) are
//!   streams of [`Update`]s: the current value, then one update per
//!   committed change, in commit order. Watched values are cached, so
//!   [`Client::get`] under a watch is served from memory.
//! - **Writes** ([`Client::set`], [`Client::patch`], [`Client::remove`])
//!   and **transactions** ([`Client::transact`]) are *predicted*: applied
//!   to the cache at once (watch streams see them flagged
//!   [`Update::predicted`]), then confirmed or rolled back when the server
//!   answers. A transaction that read a predicted value depends on it and
//!   is rolled back with it.
//! - **Reconnects** are automatic, with jittered exponential backoff.
//!   Watches resume from the last change received (no gap, no duplicate);
//!   writes made while offline wait in a bounded queue
//!   ([`Options::max_queue`]) and are sent in order on reconnect. Every
//!   transaction carries an id `(client, seq)`, so one resent after a lost
//!   answer is answered with its recorded outcome, never applied twice.
//!
//! ```
//! # #[tokio::main] async fn main() -> anyhow::Result<()> {
//! # let dir = tempfile::tempdir()?;
//! # let server = tarn_server::spawn(tarn_server::ServerConfig::local(dir.path())).await?;
//! # let url = server.url();
//! use tarn_client::{Client, Options, Value};
//! use futures_util::StreamExt;
//!
//! let client = Client::connect(&url, Options::default()).await?;
//! let mut lobby = client.watch_subtree("rooms/lobby").await?;
//! // The first update is the server's value when the watch began.
//! let initial = lobby.next().await.expect("the initial value");
//! assert_eq!(initial.get("topic"), &Value::Null);
//! client.set("rooms/lobby/topic", Value::str("hello")).await?;
//! // The watch shows the predicted write, then its confirmation.
//! let update = lobby.next().await.expect("an update");
//! assert_eq!(update.get("topic"), &Value::str("hello"));
//! assert!(update.predicted);
//! # Ok(()) }
//! ```
//!
//! The protocol underneath is documented in `docs/protocol.md`.

mod conn;
use tarn_core::tree;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use tarn_proto::{WireRead, WireValue, WireWrite};
use tokio::sync::{Notify, mpsc, oneshot, watch};

pub use tarn_core::{Time, Value};
pub use tarn_proto::{ErrorBody, ErrorCode};

/// How a [`Client`] behaves. Every field has a default.
///
/// ```
/// use std::time::Duration;
/// let options = tarn_client::Options {
///     token: Some("eyJ...".into()),
///     max_queue: 1_000,
///     ..Default::default()
/// };
/// assert_eq!(options.backoff_min, Duration::from_millis(50));
/// ```
#[derive(Clone, Debug)]
pub struct Options {
    /// A bearer token (JWT) sent in `hello`.
    pub token: Option<String>,
    /// First delay before reconnecting; doubles per failed attempt.
    pub backoff_min: Duration,
    /// Longest delay between reconnect attempts.
    pub backoff_max: Duration,
    /// How long [`Client::connect`] waits for the first connection.
    pub connect_timeout: Duration,
    /// Most writes and transactions waiting for an answer (sent or queued
    /// while offline); more get [`Error::QueueFull`].
    pub max_queue: usize,
    /// Most commits sent and not yet answered on the connection (keep it
    /// within the server's `limits.max_in_flight_per_connection`).
    pub max_in_flight: usize,
    /// Most runs of a [`Client::transact`] closure before
    /// [`Error::TooManyAttempts`].
    pub max_attempts: u32,
    /// Longest jittered pause between transaction attempts.
    pub retry_backoff_max: Duration,
    /// A ping is sent after this long without traffic; a connection
    /// silent for twice as long is taken as dead and replaced.
    pub ping_interval: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            token: None,
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            max_queue: 10_000,
            max_in_flight: 256,
            max_attempts: 64,
            retry_backoff_max: Duration::from_millis(50),
            ping_interval: Duration::from_secs(10),
        }
    }
}

/// What went wrong.
///
/// ```
/// let e = tarn_client::Error::QueueFull { max: 10 };
/// assert!(!e.is_retryable());
/// assert!(e.to_string().contains("max_queue"));
/// ```
#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    /// A path that breaks the path rules; fix the path.
    #[error("bad path {path:?}: {reason}")]
    BadPath {
        /// The path given.
        path: String,
        /// Why it is refused.
        reason: String,
    },
    /// The server refused the request; `code` says why.
    #[error("{}: {}", .0.code.as_str(), .0.message)]
    Server(ErrorBody),
    /// Too many writes wait for an answer.
    #[error(
        "{max} writes are waiting for the server (Options::max_queue); wait for some to finish"
    )]
    QueueFull {
        /// The limit.
        max: usize,
    },
    /// A transaction kept losing races.
    #[error("the transaction did not commit after {attempts} attempts; last: {last}")]
    TooManyAttempts {
        /// Runs of the closure.
        attempts: u32,
        /// The last rejection.
        last: Box<Error>,
    },
    /// No connection within [`Options::connect_timeout`].
    #[error("could not connect to {url}: {reason}; is `tarn serve` running there?")]
    Connect {
        /// The URL tried.
        url: String,
        /// The last failure.
        reason: String,
    },
    /// The transaction's closure gave up.
    #[error("aborted: {0}")]
    Aborted(String),
    /// The client was closed.
    #[error("the client is closed")]
    Closed,
}

impl Error {
    /// True for rejections a transaction reruns on: the data it read
    /// changed (`conflict`, `compacted`), or a predicted transaction it
    /// read from was rejected (`dependency_rejected`, `already_rejected`).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Server(ErrorBody {
                code: ErrorCode::Conflict
                    | ErrorCode::Compacted
                    | ErrorCode::DependencyRejected
                    | ErrorCode::AlreadyRejected,
                ..
            })
        )
    }

    /// The server's error code, if the server refused.
    ///
    /// ```
    /// use tarn_client::{Error, ErrorBody, ErrorCode};
    /// let e = Error::Server(ErrorBody::new(ErrorCode::TooLarge, "x"));
    /// assert_eq!(e.code(), Some(ErrorCode::TooLarge));
    /// assert_eq!(Error::Closed.code(), None);
    /// ```
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Server(body) => Some(body.code),
            _ => None,
        }
    }
}

/// The connection's state, observable with [`Client::state`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// // Nothing listens on port 9: the client keeps trying.
/// let client = tarn_client::Client::new("ws://127.0.0.1:9", Default::default());
/// assert_ne!(client.state(), tarn_client::ConnectionState::Connected);
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionState {
    /// Trying to connect (first time or after a loss).
    Connecting,
    /// Connected; watches restored and queued writes sent.
    Connected,
    /// Lost; reconnecting after a backoff.
    Disconnected,
    /// [`Client::close`] was called.
    Closed,
}

/// Why a watch produced an [`Update`].
///
/// ```
/// # #[tokio::main] async fn main() -> anyhow::Result<()> {
/// # let dir = tempfile::tempdir()?;
/// # let server = tarn_server::spawn(tarn_server::ServerConfig::local(dir.path())).await?;
/// # let url = server.url();
/// use tarn_client::UpdateKind;
/// let client = tarn_client::Client::connect(&url, Default::default()).await?;
/// let mut w = client.watch("n").await?;
/// assert_eq!(w.recv().await.unwrap().kind, UpdateKind::Initial);
/// let write = client.set("n", 5.into());
/// tokio::pin!(write);
/// let _ = futures_util::poll!(write.as_mut()); // predicted at once
/// assert!(matches!(w.recv().await.unwrap().kind, UpdateKind::Predicted(_)));
/// write.await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq)]
pub enum UpdateKind {
    /// The first value of the watch.
    Initial,
    /// The value again after a reconnect that could not resume (the last
    /// change received is older than the server's history): changes in
    /// between are not reported one by one.
    Resynced,
    /// Changes committed at [`Update::time`]: the leaf paths (absolute)
    /// and their new values (`Null`: deleted).
    Committed(Vec<(String, Value)>),
    /// This client's transaction `seq` was applied to the cache, before
    /// the server answered.
    Predicted(u64),
    /// The server committed transaction `seq`.
    Confirmed(u64),
    /// The server rejected transaction `seq`: its predicted writes are
    /// gone from the value.
    RolledBack {
        /// The transaction.
        seq: u64,
        /// Why the server refused it.
        reason: String,
    },
}

/// One update of a watch: the watched value as the app should show it now.
///
/// ```
/// # use tarn_client::{Update, UpdateKind, Value, Time};
/// let u = Update { value: Value::Int(3), time: Time::ZERO, predicted: false, kind: UpdateKind::Initial };
/// assert_eq!(u.value, Value::Int(3));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Update {
    /// The value, including predicted writes (`Null`: absent).
    pub value: Value,
    /// The newest commit time the committed part reflects.
    pub time: Time,
    /// True when `value` includes writes the server has not confirmed.
    pub predicted: bool,
    /// What caused it.
    pub kind: UpdateKind,
}

impl Update {
    /// The value at `rel` under the watched value (`Null` if absent).
    ///
    /// ```
    /// # use tarn_client::{Update, UpdateKind, Value, Time};
    /// let value: Value = [("a", [("b", Value::Int(1))].into_iter().collect())].into_iter().collect();
    /// let u = Update { value, time: Time::ZERO, predicted: false, kind: UpdateKind::Initial };
    /// assert_eq!(u.get("a/b"), &Value::Int(1));
    /// assert_eq!(u.get("a/c"), &Value::Null);
    /// ```
    pub fn get(&self, rel: &str) -> &Value {
        tree::get(&self.value, &tree::keys(rel))
    }
}

/// A write as the client records it (validated path, value).
#[derive(Clone, Debug)]
enum Op {
    Set(Vec<String>, Value),
    Patch(Vec<String>, Value),
    Delete(Vec<String>),
}

impl Op {
    fn path(&self) -> &[String] {
        match self {
            Op::Set(p, _) | Op::Patch(p, _) | Op::Delete(p) => p,
        }
    }

    fn wire(&self) -> WireWrite {
        let path = self.path().join("/");
        match self {
            Op::Set(_, v) => WireWrite::Set {
                path,
                value: WireValue(v.clone()),
            },
            Op::Patch(_, v) => WireWrite::Patch {
                path,
                value: WireValue(v.clone()),
            },
            Op::Delete(_) => WireWrite::Delete { path },
        }
    }

    /// Applies this write to `v`, the value at `at`.
    fn apply(&self, at: &[String], v: &mut Value) {
        let at: Vec<&str> = at.iter().map(String::as_str).collect();
        let path: Vec<&str> = self.path().iter().map(String::as_str).collect();
        if let Some(rel) = tree::strip(&path, &at) {
            match self {
                Op::Set(_, new) => tree::set(v, rel, new.clone()),
                Op::Patch(_, obj) => tree::patch(v, rel, obj),
                Op::Delete(_) => tree::set(v, rel, Value::Null),
            }
        } else if let Some(rel) = tree::strip(&at, &path) {
            // The write is above the watched path.
            match self {
                Op::Set(_, new) => *v = tree::get(new, rel).clone(),
                Op::Delete(_) => *v = Value::Null,
                Op::Patch(_, obj) => {
                    if let Some((first, rest)) = rel.split_first()
                        && let Value::Object(children) = obj
                        && let Some(child) = children.get(*first)
                    {
                        *v = tree::get(child, rest).clone();
                    }
                }
            }
        }
    }

    /// True if the write touches `at` (at, above or under it).
    fn overlaps(&self, at: &[String]) -> bool {
        let p = self.path();
        p.starts_with(at) || at.starts_with(p)
    }
}

/// A commit waiting for its answer.
struct PendingCommit {
    /// Sent on an earlier connection, answer lost: resent as a retry.
    sent: bool,
    reads: Vec<WireRead>,
    ops: Vec<Op>,
    depends_on: Vec<u64>,
    reply: Option<oneshot::Sender<Result<Time, Error>>>,
}

struct WatchState {
    path: Vec<String>,
    subtree: bool,
    /// The committed value, once the server sent it.
    committed: Option<Value>,
    /// The last commit time received for this watch.
    time: Time,
    /// The server's id for this watch on the current connection.
    server_id: Option<u64>,
    /// Watch again without `since` (the server refused the time).
    resync: bool,
    tx: mpsc::UnboundedSender<Update>,
}

/// Where a `get`'s answer goes: the value and its `seen` version.
type GetReply = oneshot::Sender<Result<(Value, Time), Error>>;

type CallReply = oneshot::Sender<Result<CallResult, Error>>;

/// What a server function returned (see [`Client::call`]).
#[derive(Clone, Debug, PartialEq)]
pub struct CallResult {
    /// The function's return value.
    pub value: Value,
    /// The commit time of its writes.
    pub time: Option<Time>,
    /// Times the server reran it after a conflict.
    pub reruns: u32,
}

/// What the client knows; guarded by one mutex, shared with the
/// connection task.
#[derive(Default)]
struct State {
    next_request: u64,
    next_seq: u64,
    next_watch: u64,
    /// Predicted and unanswered, by seq (sent in this order).
    commits: BTreeMap<u64, PendingCommit>,
    /// Seqs sent on the current connection and not answered.
    in_flight: BTreeSet<u64>,
    /// The highest seq sent on the current connection.
    sent_upto: u64,
    /// Request id → seq, for answers.
    commit_requests: HashMap<u64, u64>,
    gets: HashMap<u64, (String, GetReply)>,
    /// Unanswered function calls by request id: sent again after a
    /// reconnect with the same call id, which the server answers once.
    calls: HashMap<u64, (tarn_proto::Request, CallReply)>,
    watches: HashMap<u64, WatchState>,
    /// Request id → local watch, for `watching` answers.
    watch_requests: HashMap<u64, u64>,
    /// Server watch id → local watch.
    by_server_id: HashMap<u64, u64>,
    /// Requests other than commits to send on the current connection.
    unsent: VecDeque<tarn_proto::Request>,
    connected: bool,
}

struct Shared {
    url: String,
    options: Options,
    client_id: u64,
    state: Mutex<State>,
    /// Wakes the connection task: something to send.
    wake: Notify,
    /// Wakes the connection task to close.
    closing: Notify,
    conn_state: watch::Sender<ConnectionState>,
    closed: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.closing.notify_one();
    }
}

/// Stops the connection task when the last [`Client`] handle is dropped.
struct Guard(Arc<Shared>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// A connection to a tarn server. Cheap to clone; all clones share the
/// connection, the cache and the queue. See the crate docs.
///
/// ```
/// # #[tokio::main] async fn main() -> anyhow::Result<()> {
/// # let dir = tempfile::tempdir()?;
/// # let server = tarn_server::spawn(tarn_server::ServerConfig::local(dir.path())).await?;
/// # let url = server.url();
/// let client = tarn_client::Client::connect(&url, Default::default()).await?;
/// let other = client.clone(); // the same connection
/// other.set("a", 1.into()).await?;
/// assert_eq!(client.get("a").await?, tarn_client::Value::Int(1));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
    _guard: Arc<Guard>,
}

/// A random u64 from the standard library's hasher seeds.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// A random duration in `[0, max]`.
fn jitter(max: Duration) -> Duration {
    let nanos = max.as_nanos().min(u64::MAX as u128) as u64;
    Duration::from_nanos(random_u64() % nanos.max(1))
}

fn parse_path(path: &str) -> Result<Vec<String>, Error> {
    tarn_core::Path::parse(path)
        .map(|p| p.keys().iter().map(|k| k.as_str().to_string()).collect())
        .map_err(|e| Error::BadPath {
            path: path.to_string(),
            reason: e.to_string(),
        })
}

impl Client {
    /// Connects to `url` (`ws://host:port`, `http://host:port`, or the
    /// full `ws://host:port/v1/ws`) and waits for the connection, up to
    /// [`Options::connect_timeout`].
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> anyhow::Result<()> {
    /// # let dir = tempfile::tempdir()?;
    /// # let server = tarn_server::spawn(tarn_server::ServerConfig::local(dir.path())).await?;
    /// # let url = server.url();
    /// let client = tarn_client::Client::connect(&url, Default::default()).await?;
    /// assert_eq!(client.state(), tarn_client::ConnectionState::Connected);
    /// # Ok(()) }
    /// ```
    pub async fn connect(url: &str, options: Options) -> Result<Client, Error> {
        let timeout = options.connect_timeout;
        let client = Client::new(url, options);
        let mut states = client.shared.conn_state.subscribe();
        let connected = tokio::time::timeout(
            timeout,
            states.wait_for(|s| *s == ConnectionState::Connected),
        )
        .await;
        match connected {
            Ok(Ok(_)) => Ok(client),
            _ => Err(Error::Connect {
                url: client.shared.url.clone(),
                reason: format!("not connected within {timeout:?}"),
            }),
        }
    }

    /// A client that connects in the background and works offline until
    /// then: watches and writes wait for the connection.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// // Nothing listens here: the write waits in the offline queue.
    /// let client = tarn_client::Client::new("ws://127.0.0.1:9", Default::default());
    /// let write = client.set("a", tarn_client::Value::Int(1));
    /// assert!(tokio::time::timeout(std::time::Duration::from_millis(50), write).await.is_err());
    /// assert_eq!(client.queued(), 1);
    /// # }
    /// ```
    pub fn new(url: &str, options: Options) -> Client {
        let url = conn::ws_url(url);
        let shared = Arc::new(Shared {
            url,
            options,
            client_id: random_u64(),
            state: Mutex::new(State {
                next_seq: 1,
                next_request: 1,
                next_watch: 1,
                ..State::default()
            }),
            wake: Notify::new(),
            closing: Notify::new(),
            conn_state: watch::Sender::new(ConnectionState::Connecting),
            closed: AtomicBool::new(false),
        });
        tokio::spawn(conn::run(Arc::clone(&shared)));
        Client {
            _guard: Arc::new(Guard(Arc::clone(&shared))),
            shared,
        }
    }

    /// The connection's state now.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> anyhow::Result<()> {
    /// # let dir = tempfile::tempdir()?;
    /// # let server = tarn_server::spawn(tarn_server::ServerConfig::local(dir.path())).await?;
    /// # let url = server.url();
    /// let client = tarn_client::Client::connect(&url, Default::default()).await?;
    /// assert_eq!(client.state(), tarn_client::ConnectionState::Connected);
    /// # Ok(()) }
    /// ```
    pub fn state(&self) -> ConnectionState {
        *self.shared.conn_state.borrow()
    }

    /// Every change of the connection's state.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> anyhow::Result<()> {
    /// # let dir = tempfile::tempdir()?;
    /// # let server = tarn_server::spawn(tarn_server::ServerConfig::local(dir.path())).await?;
    /// # let url = server.url();
    /// let client = tarn_client::Client::connect(&url, Default::default()).await?;
    /// let states = client.states();
    /// client.close().await;
    /// assert_eq!(*states.borrow(), tarn_client::ConnectionState::Closed);
    /// # Ok(()) }
    /// ```
    pub fn states(&self) -> watch::Receiver<ConnectionState> {
        self.shared.conn_state.subscribe()
    }

    /// Writes and transactions waiting for the server's answer (sent, or
    /// queued while offline).
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> anyhow::Result<()> {
    /// # let dir = tempfile::tempdir()?;
    /// # let server = tarn_server::spawn(tarn_server::ServerConfig::local(dir.path())).await?;
    /// # let url = server.url();
    /// let client = tarn_client::Client::connect(&url, Default::default()).await?;
    /// client.set("a", 1.into()).await?;
    /// assert_eq!(client.queued(), 0);
    /// # Ok(()) }
    /// ```
    pub fn queued(&self) -> usize {
        self.shared.lock().commits.len()
    }

    /// This client's id: the `client` of its transaction ids.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> anyhow::Result<()> {
    /// # let dir = tempfile::tempdir()?;
    /// # let server = tarn_server::spawn(tarn_server::ServerConfig::local(dir.path())).await?;
    /// # let url = server.url();
    /// let a = tarn_client::Client::connect(&url, Default::default()).await?;
    /// let b = tarn_client::Client::connect(&url, Default::default()).await?;
    /// assert_ne!(a.id(), b.id());
    /// # Ok(()) }
    /// ```
    pub fn id(&self) -> u64 {
        self.shared.client_id
    }

    /// Closes the connection. Unanswered writes fail with
    /// [`Error::Closed`] (whether they committed is unknown); watch
    /// streams end.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> anyhow::Result<()> {
    /// # let dir = tempfile::tempdir()?;
    /// # let server = tarn_server::spawn(tarn_server::ServerConfig::local(dir.path())).await?;
    /// # let url = server.url();
    /// let client = tarn_client::Client::connect(&url, Default::default()).await?;
    /// client.close().await;
    /// assert!(matches!(client.get("a").await, Err(tarn_client::Error::Closed)));
    /// # Ok(()) }
    /// ```
    pub async fn close(&self) {
        self.shared.close();
        let mut states = self.shared.conn_state.subscribe();
        let _ = states.wait_for(|s| *s == ConnectionState::Closed).await;
    }

    /// The value at `path`: from the cache when a watch covers it
    /// (predicted writes included), else from the server.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> anyhow::Result<()> {
    /// # let dir = tempfile::tempdir()?;
    /// # let server = tarn_server::spawn(tarn_server::ServerConfig::local(dir.path())).await?;
    /// # let url = server.url();
    /// let client = tarn_client::Client::connect(&url, Default::default()).await?;
    /// client.set("users/ada/name", tarn_client::Value::str("Ada")).await?;
    /// assert_eq!(client.get("users/ada/name").await?, tarn_client::Value::str("Ada"));
    /// assert_eq!(client.get("users/bob").await?, tarn_client::Value::Null);
    /// # Ok(()) }
    /// ```
    pub async fn get(&self, path: &str) -> Result<Value, Error> {
        let keys = parse_path(path)?;
        if let Some(v) = self.cached_keys(&keys) {
            return Ok(v);
        }
        Ok(self.get_versioned(&keys).await?.0)
    }

    /// The cached value at `path`, if a watch covers it (predicted writes
    /// included); never asks the server.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> anyhow::Result<()> {
    /// # let dir = tempfile::tempdir()?;
    /// # let server = tarn_server::spawn(tarn_server::ServerConfig::local(dir.path())).await?;
    /// # let url = server.url();
    /// let client = tarn_client::Client::connect(&url, Default::default()).await?;
    /// assert_eq!(client.cached("x"), None);
    /// # Ok(()) }
    /// ```
    pub fn cached(&self, path: &str) -> Option<Value> {
        self.cached_keys(&parse_path(path).ok()?)
    }

    fn cached_keys(&self, keys: &[String]) -> Option<Value> {
        let state = self.shared.lock();
        let watch = state.watches.values().find(|w| {
            w.committed.is_some()
                && if w.subtree {
                    keys.starts_with(&w.path)
                } else {
                    keys == w.path.as_slice()
                }
        })?;
        let visible = visible(&state, watch);
        let rel: Vec<&str> = keys[watch.path.len()..]
            .iter()
            .map(String::as_str)
            .collect();
        Some(tree::get(&visible, &rel).clone())
    }

    /// Reads `path` from the server: its value and the `seen` version a
    /// transaction quotes.
    async fn get_versioned(&self, keys: &[String]) -> Result<(Value, Time), Error> {
        let (tx, rx) = oneshot::channel();
        {
            let mut state = self.live()?;
            let id = state.next_request;
            state.next_request += 1;
            let path = keys.join("/");
            state.gets.insert(id, (path.clone(), tx));
            if state.connected {
                state
                    .unsent
                    .push_back(tarn_proto::Request::Get { id, path, at: None });
            }
        }
        self.shared.wake.notify_one();
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Calls `function` of the deployed module with `args` on the server
    /// and resolves with what it returned, once its writes are durable.
    /// The call carries an id of this client's: if the connection drops,
    /// it is sent again after the reconnect and the server runs it at
    /// most once.
    pub async fn call(&self, function: &str, args: Value) -> Result<CallResult, Error> {
        let (tx, rx) = oneshot::channel();
        {
            let mut state = self.live()?;
            let id = state.next_request;
            state.next_request += 1;
            let req = tarn_proto::Request::Call {
                id,
                function: function.to_string(),
                args: tarn_proto::WireValue(args),
                call_id: Some(format!("{:016x}-{id}", self.shared.client_id)),
            };
            if state.connected {
                state.unsent.push_back(req.clone());
            }
            state.calls.insert(id, (req, tx));
        }
        self.shared.wake.notify_one();
        rx.await.map_err(|_| Error::Closed)?
    }

    fn live(&self) -> Result<MutexGuard<'_, State>, Error> {
        if self.shared.closed.load(Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        Ok(self.shared.lock())
    }

    /// Replaces the value at `path` (`Null` deletes); resolves with the
    /// commit time. Predicted at once.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> anyhow::Result<()> {
    /// # let dir = tempfile::tempdir()?;
    /// # let server = tarn_server::spawn(tarn_server::ServerConfig::local(dir.path())).await?;
    /// # let url = server.url();
    /// let client = tarn_client::Client::connect(&url, Default::default()).await?;
    /// let time = client.set("config/theme", tarn_client::Value::str("dark")).await?;
    /// assert!(time > tarn_client::Time::ZERO);
    /// # Ok(()) }
    /// ```
    pub async fn set(&self, path: &str, value: Value) -> Result<Time, Error> {
        let op = Op::Set(parse_path(path)?, value);
        self.submit(Vec::new(), vec![op], Vec::new())?.await
    }

    /// Merges the children of `value` (an object) into `path`.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> anyhow::Result<()> {
    /// # let dir = tempfile::tempdir()?;
    /// # let server = tarn_server::spawn(tarn_server::ServerConfig::local(dir.path())).await?;
    /// # let url = server.url();
    /// use tarn_client::Value;
    /// let client = tarn_client::Client::connect(&url, Default::default()).await?;
    /// client.set("p", [("a", Value::Int(1))].into_iter().collect()).await?;
    /// client.patch("p", [("b", Value::Int(2))].into_iter().collect()).await?;
    /// assert_eq!(client.get("p/a").await?, Value::Int(1));
    /// assert_eq!(client.get("p/b").await?, Value::Int(2));
    /// # Ok(()) }
    /// ```
    pub async fn patch(&self, path: &str, value: Value) -> Result<Time, Error> {
        let op = Op::Patch(parse_path(path)?, value);
        self.submit(Vec::new(), vec![op], Vec::new())?.await
    }

    /// Deletes `path` and everything under it.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> anyhow::Result<()> {
    /// # let dir = tempfile::tempdir()?;
    /// # let server = tarn_server::spawn(tarn_server::ServerConfig::local(dir.path())).await?;
    /// # let url = server.url();
    /// let client = tarn_client::Client::connect(&url, Default::default()).await?;
    /// client.set("tmp/x", 1.into()).await?;
    /// client.remove("tmp").await?;
    /// assert_eq!(client.get("tmp/x").await?, tarn_client::Value::Null);
    /// # Ok(()) }
    /// ```
    pub async fn remove(&self, path: &str) -> Result<Time, Error> {
        let op = Op::Delete(parse_path(path)?);
        self.submit(Vec::new(), vec![op], Vec::new())?.await
    }

    /// Predicts and queues a commit; the returned future resolves with the
    /// server's answer.
    fn submit(
        &self,
        reads: Vec<WireRead>,
        ops: Vec<Op>,
        depends_on: Vec<u64>,
    ) -> Result<Answer, Error> {
        let (tx, rx) = oneshot::channel();
        let seq;
        {
            let mut state = self.live()?;
            if state.commits.len() >= self.shared.options.max_queue {
                return Err(Error::QueueFull {
                    max: self.shared.options.max_queue,
                });
            }
            seq = state.next_seq;
            state.next_seq += 1;
            let before = snapshot(&state, &ops);
            state.commits.insert(
                seq,
                PendingCommit {
                    sent: false,
                    reads,
                    ops,
                    depends_on,
                    reply: Some(tx),
                },
            );
            emit_changed(&state, before, |_| UpdateKind::Predicted(seq));
        }
        self.shared.wake.notify_one();
        Ok(Answer(rx))
    }

    /// Watches the value at `path` (assembled if it has children). The
    /// server is asked for a subtree watch, so the cache and predictions
    /// always agree with what it sends; [`Client::watch_subtree`] is the
    /// same watch, named for prefixes.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> anyhow::Result<()> {
    /// # let dir = tempfile::tempdir()?;
    /// # let server = tarn_server::spawn(tarn_server::ServerConfig::local(dir.path())).await?;
    /// # let url = server.url();
    /// use futures_util::StreamExt;
    /// let client = tarn_client::Client::connect(&url, Default::default()).await?;
    /// let mut w = client.watch("counter").await?;
    /// assert_eq!(w.next().await.expect("initial").value, tarn_client::Value::Null);
    /// # Ok(()) }
    /// ```
    pub async fn watch(&self, path: &str) -> Result<Watch, Error> {
        self.open_watch(path, false)
    }

    /// Watches `prefix` and everything under it (its value is the
    /// assembled object).
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> anyhow::Result<()> {
    /// # let dir = tempfile::tempdir()?;
    /// # let server = tarn_server::spawn(tarn_server::ServerConfig::local(dir.path())).await?;
    /// # let url = server.url();
    /// use futures_util::StreamExt;
    /// let client = tarn_client::Client::connect(&url, Default::default()).await?;
    /// let mut w = client.watch_subtree("rooms").await?;
    /// let first = w.next().await.expect("initial");
    /// assert_eq!(first.kind, tarn_client::UpdateKind::Initial);
    /// # Ok(()) }
    /// ```
    pub async fn watch_subtree(&self, prefix: &str) -> Result<Watch, Error> {
        self.open_watch(prefix, true)
    }

    fn open_watch(&self, path: &str, subtree: bool) -> Result<Watch, Error> {
        let keys = parse_path(path)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let id;
        {
            let mut state = self.live()?;
            id = state.next_watch;
            state.next_watch += 1;
            state.watches.insert(
                id,
                WatchState {
                    path: keys,
                    subtree,
                    committed: None,
                    time: Time::ZERO,
                    server_id: None,
                    resync: false,
                    tx,
                },
            );
            if state.connected {
                let req = conn::watch_request(&mut state, id);
                state.unsent.push_back(req);
            }
        }
        self.shared.wake.notify_one();
        Ok(Watch {
            id,
            rx,
            shared: Arc::clone(&self.shared),
        })
    }

    /// Runs `f` as a serializable transaction: what it reads through the
    /// [`Tx`] becomes the transaction's reads, what it writes is buffered
    /// and committed at the end, predicted at once. If the server rejects
    /// it because what it read changed, `f` runs again on fresh data, up
    /// to [`Options::max_attempts`] runs with jittered pauses.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> anyhow::Result<()> {
    /// # let dir = tempfile::tempdir()?;
    /// # let server = tarn_server::spawn(tarn_server::ServerConfig::local(dir.path())).await?;
    /// # let url = server.url();
    /// use tarn_client::Value;
    /// let client = tarn_client::Client::connect(&url, Default::default()).await?;
    /// let n = client
    ///     .transact(|tx| Box::pin(async move {
    ///         let n = match tx.get("counter").await? { Value::Int(n) => n, _ => 0 };
    ///         tx.set("counter", Value::Int(n + 1))?;
    ///         Ok(n + 1)
    ///     }))
    ///     .await?;
    /// assert_eq!(n, 1);
    /// # Ok(()) }
    /// ```
    pub async fn transact<T, F>(&self, mut f: F) -> Result<T, Error>
    where
        F: for<'t> FnMut(&'t mut Tx) -> Pin<Box<dyn Future<Output = Result<T, Error>> + Send + 't>>,
    {
        let max = self.shared.options.max_attempts.max(1);
        let mut last = None;
        for attempt in 0..max {
            if attempt > 0 {
                let cap = self
                    .shared
                    .options
                    .retry_backoff_max
                    .min(Duration::from_micros(200) * 2u32.saturating_pow(attempt.min(16)));
                tokio::time::sleep(jitter(cap)).await;
            }
            let mut tx = Tx {
                client: self.clone(),
                reads: Vec::new(),
                ops: Vec::new(),
                depends_on: BTreeSet::new(),
            };
            let out = f(&mut tx).await?;
            if tx.ops.is_empty() && tx.reads.is_empty() {
                return Ok(out);
            }
            let answer = self.submit(tx.reads, tx.ops, tx.depends_on.into_iter().collect())?;
            match answer.await {
                Ok(_) => return Ok(out),
                Err(e) if e.is_retryable() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(Error::TooManyAttempts {
            attempts: max,
            last: Box::new(last.unwrap_or(Error::Closed)),
        })
    }
}

/// The server's answer to a commit.
struct Answer(oneshot::Receiver<Result<Time, Error>>);

impl Future for Answer {
    type Output = Result<Time, Error>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(Error::Closed)))
    }
}

/// A transaction being built by a [`Client::transact`] closure.
///
/// ```
/// # #[tokio::main] async fn main() -> anyhow::Result<()> {
/// # let dir = tempfile::tempdir()?;
/// # let server = tarn_server::spawn(tarn_server::ServerConfig::local(dir.path())).await?;
/// # let url = server.url();
/// use tarn_client::Value;
/// let client = tarn_client::Client::connect(&url, Default::default()).await?;
/// client.set("stock/apples", Value::Int(3)).await?;
/// // Take one apple if there is one: read, decide, write.
/// let took = client.transact(|tx| Box::pin(async move {
///     match tx.get("stock/apples").await? {
///         Value::Int(n) if n > 0 => { tx.set("stock/apples", Value::Int(n - 1))?; Ok(true) }
///         _ => Ok(false),
///     }
/// })).await?;
/// assert!(took);
/// # Ok(()) }
/// ```
pub struct Tx {
    client: Client,
    reads: Vec<WireRead>,
    ops: Vec<Op>,
    depends_on: BTreeSet<u64>,
}

impl Tx {
    /// Reads the value at `path` (an object if it has children), recorded
    /// as a read. Sees this client's predicted writes (the transaction
    /// then depends on them) and this transaction's own writes.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> anyhow::Result<()> {
    /// # let dir = tempfile::tempdir()?;
    /// # let server = tarn_server::spawn(tarn_server::ServerConfig::local(dir.path())).await?;
    /// # let url = server.url();
    /// use tarn_client::Value;
    /// let client = tarn_client::Client::connect(&url, Default::default()).await?;
    /// client.set("a", Value::Int(5)).await?;
    /// let a = client.transact(|tx| Box::pin(async move { tx.get("a").await })).await?;
    /// assert_eq!(a, Value::Int(5));
    /// # Ok(()) }
    /// ```
    pub async fn get(&mut self, path: &str) -> Result<Value, Error> {
        self.read(path, false).await
    }

    /// The child keys under `path`, recorded as a subtree read: a child
    /// added or removed by someone else before the commit rejects it.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> anyhow::Result<()> {
    /// # let dir = tempfile::tempdir()?;
    /// # let server = tarn_server::spawn(tarn_server::ServerConfig::local(dir.path())).await?;
    /// # let url = server.url();
    /// let client = tarn_client::Client::connect(&url, Default::default()).await?;
    /// client.set("rooms/a/n", 1.into()).await?;
    /// client.set("rooms/b/n", 1.into()).await?;
    /// let keys = client.transact(|tx| Box::pin(async move { tx.keys("rooms").await })).await?;
    /// assert_eq!(keys, vec!["a".to_string(), "b".to_string()]);
    /// # Ok(()) }
    /// ```
    pub async fn keys(&mut self, path: &str) -> Result<Vec<String>, Error> {
        Ok(match self.read(path, true).await? {
            Value::Object(children) => children.keys().map(|k| k.to_string()).collect(),
            _ => Vec::new(),
        })
    }

    /// Reads several paths at once: their gets go out together, so the
    /// transaction waits one round trip for all of them rather than one
    /// per path. Each is recorded as a read, as [`Tx::get`] records one;
    /// the values come back in the order of `paths`.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> anyhow::Result<()> {
    /// # let dir = tempfile::tempdir()?;
    /// # let server = tarn_server::spawn(tarn_server::ServerConfig::local(dir.path())).await?;
    /// # let url = server.url();
    /// use tarn_client::Value;
    /// let client = tarn_client::Client::connect(&url, Default::default()).await?;
    /// client.set("accounts/a", Value::Int(10)).await?;
    /// // Move 3 from a to b, reading both in one round trip.
    /// client.transact(|tx| Box::pin(async move {
    ///     let [a, b] = <[Value; 2]>::try_from(tx.get_all(&["accounts/a", "accounts/b"]).await?)
    ///         .map_err(|_| tarn_client::Error::Closed)?;
    ///     let int = |v: Value| if let Value::Int(n) = v { n } else { 0 };
    ///     tx.set("accounts/a", Value::Int(int(a) - 3))?;
    ///     tx.set("accounts/b", Value::Int(int(b) + 3))
    /// })).await?;
    /// assert_eq!(client.get("accounts/b").await?, Value::Int(3));
    /// # Ok(()) }
    /// ```
    pub async fn get_all(&mut self, paths: &[&str]) -> Result<Vec<Value>, Error> {
        let keys = paths
            .iter()
            .map(|p| parse_path(p))
            .collect::<Result<Vec<_>, _>>()?;
        let client = self.client.clone();
        let fetched =
            futures_util::future::try_join_all(keys.iter().map(|k| client.get_versioned(k)))
                .await?;
        Ok(keys
            .iter()
            .zip(fetched)
            .map(|(k, (value, seen))| self.record(k, value, seen, false))
            .collect())
    }

    async fn read(&mut self, path: &str, subtree: bool) -> Result<Value, Error> {
        let keys = parse_path(path)?;
        let (value, seen) = self.client.get_versioned(&keys).await?;
        Ok(self.record(&keys, value, seen, subtree))
    }

    /// Records a read of `keys` that saw `value` as of `seen`, and returns
    /// what the transaction sees there: the value with this client's
    /// predictions and this transaction's own writes laid over it.
    fn record(&mut self, keys: &[String], mut value: Value, seen: Time, subtree: bool) -> Value {
        // This client's unanswered transactions touching the path: the
        // read sees their predictions and depends on them.
        let laid = lay_predictions(&self.client.shared.lock(), keys, &mut value);
        let pending_on = laid.last().copied();
        self.depends_on
            .extend(&laid[..laid.len().saturating_sub(1)]);
        // One read per path (the engine refuses duplicates): the first
        // version seen stands; a later subtree read widens it.
        let path = keys.join("/");
        match self.reads.iter_mut().find(|r| r.path == path) {
            Some(r) => r.subtree |= subtree,
            None => self.reads.push(WireRead {
                path,
                seen: seen.into(),
                subtree,
                pending_on,
            }),
        }
        for op in &self.ops {
            op.apply(keys, &mut value);
        }
        value
    }

    /// Buffers a set of `path` (`Null` deletes).
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> anyhow::Result<()> {
    /// # let dir = tempfile::tempdir()?;
    /// # let server = tarn_server::spawn(tarn_server::ServerConfig::local(dir.path())).await?;
    /// # let url = server.url();
    /// let client = tarn_client::Client::connect(&url, Default::default()).await?;
    /// client.transact(|tx| Box::pin(async move { tx.set("a", 1.into()) })).await?;
    /// assert_eq!(client.get("a").await?, tarn_client::Value::Int(1));
    /// # Ok(()) }
    /// ```
    pub fn set(&mut self, path: &str, value: Value) -> Result<(), Error> {
        self.push(Op::Set(parse_path(path)?, value));
        Ok(())
    }

    /// Adds a write, folding it into an earlier write of the same path
    /// (the engine takes one write per path).
    fn push(&mut self, op: Op) {
        let Some(i) = self.ops.iter().position(|o| o.path() == op.path()) else {
            self.ops.push(op);
            return;
        };
        let earlier = self.ops.remove(i);
        let op = match (earlier, op) {
            (Op::Patch(path, mut a), Op::Patch(_, b)) => {
                tree::patch(&mut a, &[], &b);
                Op::Patch(path, a)
            }
            (Op::Set(path, mut a), Op::Patch(_, b)) => {
                tree::patch(&mut a, &[], &b);
                Op::Set(path, a)
            }
            (Op::Delete(path), Op::Patch(_, b)) => Op::Set(path, b),
            (_, later) => later,
        };
        self.ops.push(op);
    }

    /// Buffers a patch (merge the children of `value` into `path`).
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> anyhow::Result<()> {
    /// # let dir = tempfile::tempdir()?;
    /// # let server = tarn_server::spawn(tarn_server::ServerConfig::local(dir.path())).await?;
    /// # let url = server.url();
    /// use tarn_client::Value;
    /// let client = tarn_client::Client::connect(&url, Default::default()).await?;
    /// client.transact(|tx| Box::pin(async move {
    ///     tx.patch("p", [("a", Value::Int(1))].into_iter().collect())
    /// })).await?;
    /// assert_eq!(client.get("p/a").await?, Value::Int(1));
    /// # Ok(()) }
    /// ```
    pub fn patch(&mut self, path: &str, value: Value) -> Result<(), Error> {
        self.push(Op::Patch(parse_path(path)?, value));
        Ok(())
    }

    /// Buffers a delete of `path` and everything under it.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> anyhow::Result<()> {
    /// # let dir = tempfile::tempdir()?;
    /// # let server = tarn_server::spawn(tarn_server::ServerConfig::local(dir.path())).await?;
    /// # let url = server.url();
    /// let client = tarn_client::Client::connect(&url, Default::default()).await?;
    /// client.set("a", 1.into()).await?;
    /// client.transact(|tx| Box::pin(async move { tx.remove("a") })).await?;
    /// assert_eq!(client.get("a").await?, tarn_client::Value::Null);
    /// # Ok(()) }
    /// ```
    pub fn remove(&mut self, path: &str) -> Result<(), Error> {
        self.push(Op::Delete(parse_path(path)?));
        Ok(())
    }
}

/// A stream of [`Update`]s for one watch; unwatches when dropped.
///
/// ```
/// # #[tokio::main] async fn main() -> anyhow::Result<()> {
/// # let dir = tempfile::tempdir()?;
/// # let server = tarn_server::spawn(tarn_server::ServerConfig::local(dir.path())).await?;
/// # let url = server.url();
/// use futures_util::StreamExt;
/// let client = tarn_client::Client::connect(&url, Default::default()).await?;
/// let mut watch = client.watch_subtree("feed").await?;
/// assert_eq!(watch.next().await.unwrap().kind, tarn_client::UpdateKind::Initial);
/// client.set("feed/a", 1.into()).await?;
/// // Predicted, then Committed and Confirmed (in this order).
/// let updates: Vec<_> = watch.take(3).collect().await;
/// assert!(matches!(updates[2].kind, tarn_client::UpdateKind::Confirmed(_)));
/// assert_eq!(updates[2].get("a"), &tarn_client::Value::Int(1));
/// assert!(!updates[2].predicted);
/// # Ok(()) }
/// ```
pub struct Watch {
    id: u64,
    rx: mpsc::UnboundedReceiver<Update>,
    shared: Arc<Shared>,
}

impl Watch {
    /// The next update; `None` once the client is closed, or if the server
    /// refused the watch (e.g. `too_many_watches`, `bad_path`).
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> anyhow::Result<()> {
    /// # let dir = tempfile::tempdir()?;
    /// # let server = tarn_server::spawn(tarn_server::ServerConfig::local(dir.path())).await?;
    /// # let url = server.url();
    /// let client = tarn_client::Client::connect(&url, Default::default()).await?;
    /// let mut w = client.watch("x").await?;
    /// assert!(w.recv().await.is_some());
    /// # Ok(()) }
    /// ```
    pub async fn recv(&mut self) -> Option<Update> {
        self.rx.recv().await
    }
}

impl futures_util::Stream for Watch {
    type Item = Update;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Update>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        if let Some(w) = state.watches.remove(&self.id)
            && let Some(server_id) = w.server_id
        {
            state.by_server_id.remove(&server_id);
            if state.connected {
                let id = state.next_request;
                state.next_request += 1;
                state.unsent.push_back(tarn_proto::Request::Unwatch {
                    id,
                    watch: server_id,
                });
                drop(state);
                self.shared.wake.notify_one();
            }
        }
    }
}

/// The value of `watch` with every unanswered transaction laid over it.
fn visible(state: &State, watch: &WatchState) -> Value {
    let mut v = watch.committed.clone().unwrap_or(Value::Null);
    lay_predictions(state, &watch.path, &mut v);
    v
}

/// Lays the writes of every unanswered commit touching `at` over `v`, the
/// value at `at`, in seq order; returns the seqs laid.
fn lay_predictions(state: &State, at: &[String], v: &mut Value) -> Vec<u64> {
    let mut laid = Vec::new();
    for (seq, commit) in &state.commits {
        if commit.ops.iter().any(|op| op.overlaps(at)) {
            for op in &commit.ops {
                op.apply(at, v);
            }
            laid.push(*seq);
        }
    }
    laid
}

fn predicted(state: &State, watch: &WatchState) -> bool {
    state
        .commits
        .values()
        .any(|c| c.ops.iter().any(|op| op.overlaps(&watch.path)))
}

/// The visible values of the watches `ops` touch, before a change to the
/// predictions.
fn snapshot(state: &State, ops: &[Op]) -> Vec<(u64, Value, bool)> {
    state
        .watches
        .iter()
        .filter(|(_, w)| w.committed.is_some() && ops.iter().any(|op| op.overlaps(&w.path)))
        .map(|(id, w)| (*id, visible(state, w), predicted(state, w)))
        .collect()
}

/// Sends an update to each watch of `before` whose visible value changed
/// (or that a confirmation concerns).
fn emit_changed(
    state: &State,
    before: Vec<(u64, Value, bool)>,
    kind: impl Fn(&Value) -> UpdateKind,
) {
    for (id, old, was_predicted) in before {
        let Some(w) = state.watches.get(&id) else {
            continue;
        };
        let value = visible(state, w);
        let predicted = predicted(state, w);
        let kind = kind(&value);
        if value == old && predicted == was_predicted && !matches!(kind, UpdateKind::Confirmed(_)) {
            continue;
        }
        let _ = w.tx.send(Update {
            value,
            time: w.time,
            predicted,
            kind,
        });
    }
}
