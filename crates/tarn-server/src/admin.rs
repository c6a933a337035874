//! Whole-tree operations over HTTP: streaming JSON export and import, and
//! backups written on the server's machine.
//!
//! - `GET /v1/export/{path}`: the JSON of the tree at `path` as of one
//!   snapshot, streamed (the server never holds the whole text).
//! - `POST /v1/import/{path}?mode=merge|replace`: JSON from the body,
//!   streamed into the tree in batches of leaves.
//! - `POST /v1/backup` with `{"dir": "/path/on/server"}`: a consistent
//!   backup into a new directory there.
//!
//! The store's export/import/backup are blocking calls; they run on
//! blocking threads, bridged to the async body with bounded channels (so
//! a slow client slows the export down instead of growing memory).

use std::io::{Read, Write};
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{get, post};
use futures_util::StreamExt;
use serde::Deserialize;
use tarn_proto::{ErrorBody, ErrorCode};
use tarn_store::ImportMode;
use tokio::sync::mpsc;

use crate::http::error_response;
use crate::{App, convert};

/// The admin routes.
pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/v1/export", get(export))
        .route("/v1/export/", get(export))
        .route("/v1/export/{*path}", get(export))
        .route("/v1/import", post(import))
        .route("/v1/import/", post(import))
        .route("/v1/import/{*path}", post(import))
        .route("/v1/backup", post(backup))
}

/// How long an export waits for a client that stopped reading.
const EXPORT_STALL: std::time::Duration = std::time::Duration::from_secs(30);

/// `std::io::Write` into a bounded channel of chunks.
struct ChannelWriter(mpsc::Sender<std::io::Result<Bytes>>);

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // A client that stops reading must not hold the export's snapshot
        // pin (and a blocking thread) forever: give up after a while.
        let deadline = std::time::Instant::now() + EXPORT_STALL;
        let mut chunk = Ok(Bytes::copy_from_slice(buf));
        loop {
            match self.0.try_send(chunk) {
                Ok(()) => return Ok(buf.len()),
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::BrokenPipe,
                        "the client went away",
                    ));
                }
                Err(mpsc::error::TrySendError::Full(back)) => {
                    if std::time::Instant::now() > deadline {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "the client stopped reading the export",
                        ));
                    }
                    chunk = back;
                    // A blocking thread waiting for a slow reader.
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            }
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `std::io::Read` from a bounded channel of chunks.
struct ChannelReader {
    rx: std::sync::mpsc::Receiver<Result<Bytes, String>>,
    chunk: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.recv() {
                Ok(Ok(chunk)) => self.chunk = chunk,
                Ok(Err(e)) => return Err(std::io::Error::other(e)),
                Err(_) => return Ok(0), // the body ended
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk = self.chunk.slice(n..);
        Ok(n)
    }
}

async fn export(State(app): State<Arc<App>>, path: Option<UrlPath<String>>) -> HttpResponse {
    run_export(app, path.map(|UrlPath(p)| p).unwrap_or_default()).await
}

async fn run_export(app: Arc<App>, path: String) -> HttpResponse {
    let path = match convert::path(&path, &app.paths) {
        Ok(p) => p,
        Err(e) => return error_response(&e),
    };
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(16);
    let db = Arc::clone(&app.db);
    tokio::task::spawn_blocking(move || {
        let writer = ChannelWriter(tx.clone());
        if let Err(e) = tarn_store::export_json(&db, &path, writer) {
            // Headers are gone already: end the body with an error so the
            // client sees a failed transfer, not a short file.
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
    let stream = tokio_stream_from(rx);
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response()
}

fn tokio_stream_from(
    mut rx: mpsc::Receiver<std::io::Result<Bytes>>,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[derive(Deserialize)]
struct ImportQuery {
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    batch: Option<usize>,
}

async fn import(
    State(app): State<Arc<App>>,
    path: Option<UrlPath<String>>,
    Query(q): Query<ImportQuery>,
    body: Body,
) -> HttpResponse {
    run_import(app, path.map(|UrlPath(p)| p).unwrap_or_default(), q, body).await
}

async fn run_import(app: Arc<App>, path: String, q: ImportQuery, body: Body) -> HttpResponse {
    let path = match convert::path(&path, &app.paths) {
        Ok(p) => p,
        Err(e) => return error_response(&e),
    };
    let mode = match q.mode.as_deref() {
        None | Some("merge") => ImportMode::Merge,
        Some("replace") => ImportMode::Replace,
        Some(other) => {
            return error_response(&ErrorBody::new(
                ErrorCode::BadRequest,
                format!("mode={other:?}: use merge or replace"),
            ));
        }
    };
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Bytes, String>>(16);
    // Body chunks → the blocking importer, with backpressure.
    tokio::spawn(async move {
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let item = chunk.map_err(|e| e.to_string());
            let tx = tx.clone();
            if tokio::task::spawn_blocking(move || tx.send(item))
                .await
                .map_or(true, |r| r.is_err())
            {
                break;
            }
        }
    });
    let db = Arc::clone(&app.db);
    // One batch is one transaction: never more leaves than it may hold.
    let batch = q
        .batch
        .unwrap_or(10_000)
        .clamp(1, app.config.limits.max_txn_leaves);
    let result = tokio::task::spawn_blocking(move || {
        let reader = ChannelReader {
            rx,
            chunk: Bytes::new(),
        };
        tarn_store::import_json_guarded(&db, &path, reader, mode, batch, &|w| {
            convert::writable(w).map_err(|e| e.message)
        })
    })
    .await;
    match result {
        Ok(Ok(stats)) => axum::Json(serde_json::json!({
            "leaves": stats.leaves,
            "commits": stats.commits,
        }))
        .into_response(),
        Ok(Err(tarn_store::StoreError::Import(message))) => {
            error_response(&ErrorBody::new(ErrorCode::BadRequest, message))
        }
        Ok(Err(e)) => error_response(&convert::store_error(&e)),
        Err(e) => error_response(&ErrorBody::new(ErrorCode::Internal, e.to_string())),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackupBody {
    dir: std::path::PathBuf,
}

async fn backup(State(app): State<Arc<App>>, body: Bytes) -> HttpResponse {
    let req: BackupBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return error_response(&ErrorBody::new(
                ErrorCode::BadRequest,
                format!("the body must be {{\"dir\": \"/path/on/the/server\"}}: {e}"),
            ));
        }
    };
    let db = Arc::clone(&app.db);
    let dir = req.dir.clone();
    match tokio::task::spawn_blocking(move || tarn_store::backup(&db, &dir)).await {
        Ok(Ok(info)) => axum::Json(serde_json::json!({
            "dir": req.dir,
            "time": tarn_proto::WireTime::from(info.time),
            "leaves": info.leaves,
            "bytes": info.bytes,
        }))
        .into_response(),
        Ok(Err(tarn_store::StoreError::Io { context, source }))
            if source.kind() == std::io::ErrorKind::AlreadyExists =>
        {
            error_response(&ErrorBody::new(
                ErrorCode::BadRequest,
                format!("{context}: {source}"),
            ))
        }
        Ok(Err(e)) => error_response(&convert::store_error(&e)),
        Err(e) => error_response(&ErrorBody::new(ErrorCode::Internal, e.to_string())),
    }
}
