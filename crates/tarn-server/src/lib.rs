//! tarn-server: the server of tarn on tokio + axum. The only crate that
//! knows HTTP.
//!
//! - [`config`]: settings (defaults, TOML file, `TARN_*` variables).
//! - [`ws`]: the WebSocket protocol at `/v1/ws` (JSON or MessagePack).
//! - [`http`]: REST (`/v1/data/{path}`, `/v1/tx`), SSE, `/healthz`,
//!   `/metrics`.
//! - [`fanout`]: durable commits → watchers' connections, in order,
//!   bounded per connection.
//! - [`convert`]: wire ↔ core types and the mapping of every error to a
//!   stable code.

pub mod admin;
pub mod config;
pub mod convert;
pub mod fanout;
pub mod http;
pub mod ws;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tarn_core::PathLimits;
use tarn_store::Db;
use tokio::sync::watch;

pub use config::ServerConfig;

/// How long shutdown waits for connections to finish before flushing.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What every handler shares.
pub struct App {
    /// The database.
    pub db: Arc<Db>,
    /// The fan-out to watchers.
    pub hub: Arc<fanout::Hub>,
    /// The app's server functions.
    pub functions: Arc<tarn_functions::Functions>,
    /// The settings.
    pub config: ServerConfig,
    /// Path limits for parsing paths from the wire.
    pub paths: PathLimits,
    /// Open WebSocket and SSE connections.
    pub connections: AtomicUsize,
    /// Prometheus rendering of the metrics.
    pub metrics: Option<PrometheusHandle>,
    /// Handles of the counters bumped on every request (a lookup by name
    /// costs a hash and a lock).
    pub counters: Counters,
    /// Becomes true when the server shuts down: sessions close.
    pub shutdown: watch::Receiver<bool>,
}

/// Registered once, when the server starts.
pub struct Counters {
    /// `tarn_commits_total`: commits decided.
    pub commits: metrics::Counter,
    /// `tarn_rejections_total`: commits refused (conflict or invalid).
    pub rejections: metrics::Counter,
}

impl Counters {
    fn register() -> Counters {
        Counters {
            commits: metrics::counter!("tarn_commits_total"),
            rejections: metrics::counter!("tarn_rejections_total"),
        }
    }
}

/// A slot among `limits.max_connections`, released on drop.
pub struct ConnectionSlot(Arc<App>);

impl App {
    /// Takes a connection slot, or `None` at the limit.
    pub fn connect(self: &Arc<Self>) -> Option<ConnectionSlot> {
        let max = self.config.limits.max_connections;
        let mut n = self.connections.load(Ordering::Relaxed);
        loop {
            if n >= max {
                return None;
            }
            match self
                .connections
                .compare_exchange(n, n + 1, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(now) => n = now,
            }
        }
        metrics::gauge!("tarn_connections").increment(1.0);
        Some(ConnectionSlot(Arc::clone(self)))
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!("tarn_connections").decrement(1.0);
    }
}

/// The router: every route of the server.
pub fn router(app: Arc<App>) -> Router {
    http::routes(Arc::clone(&app))
        .merge(admin::routes())
        .route("/v1/ws", axum::routing::get(ws::upgrade))
        .layer(axum::middleware::map_response(http::typed_errors))
        .with_state(app)
}

fn metrics_handle() -> Option<PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<Option<PrometheusHandle>> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .ok()
        })
        .clone()
}

/// What `tarn serve` runs: logs to stderr (`RUST_LOG`, default `info`),
/// serves `config` until SIGINT or SIGTERM, then shuts down cleanly.
/// Once listening it prints `tarn listening on http://ADDR` on stdout:
/// scripts and tests wait for that line.
pub fn serve_main(config: ServerConfig) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(config, shutdown_signal(), |addr| {
        println!("tarn listening on http://{addr}");
    }))
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!("tarn: shutting down (flushing the write-ahead log)");
}

/// Opens the database, serves until `shutdown` completes, then closes
/// every connection and flushes the WAL. `ready` is called with the bound
/// address once the server accepts connections.
pub async fn run(
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(std::net::SocketAddr),
) -> anyhow::Result<()> {
    let options = config
        .store_options()
        .map_err(|e| anyhow::anyhow!("wal.sync: {e}"))?;
    let paths = options.engine.paths;
    let (feed_tx, feed_rx) = tokio::sync::mpsc::unbounded_channel();
    let dir = config.data_dir.clone();
    let db = tokio::task::spawn_blocking(move || Db::open_with_feed(&dir, options, Some(feed_tx)))
        .await
        .context("opening the data directory")?
        .with_context(|| format!("opening data directory {}", config.data_dir.display()))?;
    let db = Arc::new(db);
    let function_limits = config.functions.limits();
    let functions = {
        let db = Arc::clone(&db);
        tokio::task::spawn_blocking(move || tarn_functions::Functions::open(db, function_limits))
            .await
            .context("starting the function engines")?
            .map_err(|e| anyhow::anyhow!("starting the function engines: {e}"))?
    };
    let functions = Arc::new(functions);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| {
            format!(
                "listening on {}: is another server using it? choose another with --listen",
                config.listen
            )
        })?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    // The recorder first: handles taken before it exist are no-ops.
    let metrics = metrics_handle();
    let hub = Arc::new(fanout::Hub::default());
    tokio::spawn(Arc::clone(&hub).run(feed_rx));
    let app = Arc::new(App {
        db: Arc::clone(&db),
        hub,
        functions: Arc::clone(&functions),
        config,
        paths,
        connections: AtomicUsize::new(0),
        metrics,
        counters: Counters::register(),
        shutdown: stop_rx,
    });
    ready(addr);
    let shutdown = async move {
        shutdown.await;
        // Long-lived sessions (WebSocket, SSE) close on this signal, so the
        // graceful shutdown does not wait for clients forever.
        let _ = stop_tx.send(true);
    };
    let mut stopping = app.shutdown.clone();
    // TCP_NODELAY: pushes and answers are small writes that must leave at
    // once; with Nagle's algorithm one waits for the previous one's ACK,
    // which a delayed ACK holds back up to 40 ms.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("TCP_NODELAY on an accepted connection: {e}");
        }
    });
    let serve = axum::serve(listener, router(Arc::clone(&app))).with_graceful_shutdown(shutdown);
    tokio::select! {
        served = serve => served.context("serving")?,
        // A client that does not read can keep a response (SSE, export)
        // from ever finishing: after the signal, stop waiting for HTTP
        // responses within a bound.
        _ = async {
            let _ = stopping.wait_for(|stop| *stop).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => tracing::warn!("some HTTP responses did not finish in time at shutdown; dropped"),
    }
    // WebSocket sessions are not tracked by axum after the upgrade: give
    // them the same bound to send their close reason and answer what they
    // decided, then flush.
    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    while app.connections.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(app);
    // Flushing waits on the log, and the engines finish their calls: off
    // the async threads.
    tokio::task::spawn_blocking(move || {
        // Calls still running finish before the flush; if a connection's
        // task still holds the functions, they stop when it lets go.
        if let Ok(functions) = Arc::try_unwrap(functions) {
            functions.close();
        }
        db.flush()
    })
    .await
    .context("flushing the write-ahead log at shutdown")?
    .context("flushing the write-ahead log at shutdown")?;
    Ok(())
}

/// A server running in this process (see [`spawn`]).
pub struct Running {
    /// The address it listens on.
    pub addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Its WebSocket URL, `ws://addr/v1/ws`.
    pub fn url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }

    /// Shuts it down as SIGTERM would (connections closed, WAL flushed).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.context("the server task")?
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Starts a server in this process on the current tokio runtime and waits
/// until it listens: for tests, examples and benchmarks.
pub async fn spawn(config: ServerConfig) -> anyhow::Result<Running> {
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut task = tokio::spawn(run(
        config,
        async move {
            let _ = stop_rx.await;
        },
        move |addr| {
            let _ = addr_tx.send(addr);
        },
    ));
    let addr = tokio::select! {
        addr = addr_rx => addr.ok(),
        done = &mut task => {
            done.context("the server task")??;
            None
        }
    };
    let addr = addr.context("the server stopped before listening")?;
    Ok(Running {
        addr,
        stop: Some(stop_tx),
        task,
    })
}
