//! The HTTP API: REST on `/v1/data/{path}` (Firebase-style: the body is
//! the JSON value), Server-Sent Events on the same path with
//! `Accept: text/event-stream`, `POST /v1/tx`, the app's functions
//! (`POST /v1/call/{fn}`, `PUT|GET /v1/module`, `GET /v1/functions`),
//! `/healthz` and `/metrics`.
//! Errors are `{"error": {"code", "message", ...}}` with a status that
//! fits the code.

// Handlers carry their finished error response as `Err`: built once per
// failed request, so its size does not matter.
#![allow(clippy::result_large_err)]

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{get, post};
use futures_util::stream;
use serde::Deserialize;
use tarn_core::{Path, Txn, Value, WatchKind, Write};
use tarn_proto::{
    CommittedBody, ErrorBody, ErrorCode, ErrorEnvelope, Response, TxBody, WireTime, WireValue,
};

use crate::fanout::{Outbox, Outgoing};
use crate::{App, convert};

/// The HTTP routes (state added by the caller).
pub fn routes(app: Arc<App>) -> Router<Arc<App>> {
    let limit = app.config.limits.max_message_bytes;
    let data = get(get_data)
        .put(put_data)
        .patch(patch_data)
        .delete(delete_data);
    Router::new()
        .route("/v1/data", data.clone())
        .route("/v1/data/", data.clone())
        .route("/v1/data/{*path}", data)
        .route("/v1/tx", post(post_tx))
        .route("/v1/call/{function}", post(post_call))
        .route("/v1/module", get(get_module).put(put_module))
        .route("/v1/functions", get(get_functions))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(limit))
}

/// Makes every error typed: axum's own rejections (a body over the limit,
/// a malformed query or path) are plain text; this turns any error
/// response that is not JSON into `{"error": {"code", "message"}}`.
pub async fn typed_errors(response: HttpResponse) -> HttpResponse {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::TooLarge,
        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => ErrorCode::NotFound,
        s if s.is_server_error() => ErrorCode::Internal,
        _ => ErrorCode::BadRequest,
    };
    let body = axum::body::to_bytes(response.into_body(), 64 << 10)
        .await
        .unwrap_or_default();
    let message = String::from_utf8_lossy(&body).trim().to_string();
    let message = if message.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        message
    };
    (
        status,
        axum::Json(ErrorEnvelope {
            error: ErrorBody::new(code, message),
        }),
    )
        .into_response()
}

/// The HTTP status for an error code.
pub fn status(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::BadRequest
        | ErrorCode::BadPath
        | ErrorCode::BadValue
        | ErrorCode::BadTransaction
        | ErrorCode::UnknownWatch
        | ErrorCode::UnsupportedVersion
        | ErrorCode::AfterNewest => StatusCode::BAD_REQUEST,
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::Conflict
        | ErrorCode::Compacted
        | ErrorCode::DependencyRejected
        | ErrorCode::AlreadyRejected => StatusCode::CONFLICT,
        ErrorCode::BeforeHorizon | ErrorCode::UnknownOutcome => StatusCode::GONE,
        ErrorCode::TooManyWatches | ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::TooManyConnections | ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::NotFound | ErrorCode::NoModule | ErrorCode::UnknownFunction => {
            StatusCode::NOT_FOUND
        }
        ErrorCode::BadModule => StatusCode::BAD_REQUEST,
        // The call was understood; the function failed.
        ErrorCode::FunctionError
        | ErrorCode::Timeout
        | ErrorCode::OutOfMemory
        | ErrorCode::StackOverflow => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::SlowConsumer | ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// An error as an HTTP response.
pub fn error_response(error: &ErrorBody) -> HttpResponse {
    (
        status(error.code),
        axum::Json(ErrorEnvelope {
            error: error.clone(),
        }),
    )
        .into_response()
}

type Result<T> = std::result::Result<T, HttpResponse>;

fn fail(error: ErrorBody) -> HttpResponse {
    error_response(&error)
}

#[derive(Deserialize)]
struct DataQuery {
    at: Option<String>,
}

fn wants_sse(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"))
}

/// The path of a `/v1/data` route: absent for the root.
type DataPath = Option<UrlPath<String>>;

fn data_path(path: DataPath) -> String {
    path.map(|UrlPath(p)| p).unwrap_or_default()
}

async fn get_data(
    state: State<Arc<App>>,
    path: DataPath,
    q: Query<DataQuery>,
    headers: HeaderMap,
) -> HttpResponse {
    read(state, data_path(path), q, headers).await
}

async fn read(
    State(app): State<Arc<App>>,
    path: String,
    Query(q): Query<DataQuery>,
    headers: HeaderMap,
) -> HttpResponse {
    let result: Result<HttpResponse> = async {
        let path = convert::path(&path, &app.paths).map_err(fail)?;
        if wants_sse(&headers) {
            return sse(app, path).await;
        }
        let at = match &q.at {
            None => None,
            Some(text) => Some(WireTime::parse(text).ok_or_else(|| {
                fail(ErrorBody::new(
                    ErrorCode::BadRequest,
                    format!("?at={text:?} is not a time; use ms, ms.logical or ms.logical@node"),
                ))
            })?),
        };
        let (got, lsn) = app
            .db
            .peek(|e| match at {
                Some(at) => e.store().get_at(&path, at.into()),
                None => Ok(e.store().get(&path)),
            })
            .map_err(|e| fail(convert::store_error(&e)))?;
        let got = got.map_err(|e| fail(convert::store_error(&e.into())))?;
        app.db
            .durable(lsn)
            .await
            .map_err(|e| fail(convert::store_error(&e)))?;
        let body = serde_json::to_vec(&WireValue(got.value.unwrap_or(Value::Null)))
            .map_err(|e| fail(ErrorBody::new(ErrorCode::Internal, e.to_string())))?;
        Ok((
            [
                (header::CONTENT_TYPE, "application/json".to_string()),
                (
                    header::HeaderName::from_static("tarn-seen"),
                    tarn_core::Time::from(WireTime::from(got.seen)).to_string(),
                ),
            ],
            body,
        )
            .into_response())
    }
    .await;
    result.unwrap_or_else(|e| e)
}

fn parse_value(body: &Bytes) -> Result<Value> {
    serde_json::from_slice::<WireValue>(body)
        .map(|v| v.0)
        .map_err(|e| {
            fail(ErrorBody::new(
                ErrorCode::BadRequest,
                format!("the body is not JSON: {e}"),
            ))
        })
}

async fn commit(app: &App, txn: Txn) -> HttpResponse {
    let pending = match app.db.submit(txn) {
        Ok(p) => p,
        Err(e) => {
            app.counters.rejections.increment(1);
            return fail(convert::commit_error(&e));
        }
    };
    app.counters.commits.increment(1);
    match app.db.durable(pending.lsn).await {
        Ok(()) => axum::Json(CommittedBody {
            time: pending.commit.time.into(),
        })
        .into_response(),
        Err(e) => fail(convert::store_error(&e)),
    }
}

async fn write(
    app: Arc<App>,
    path: String,
    make: impl FnOnce(Path) -> Result<Write>,
) -> HttpResponse {
    let path = match convert::path(&path, &app.paths) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    match make(path) {
        Ok(w) => match convert::writable(&w) {
            Ok(()) => commit(&app, Txn::new(Vec::new(), vec![w])).await,
            Err(e) => fail(e),
        },
        Err(e) => e,
    }
}

async fn put_data(State(app): State<Arc<App>>, path: DataPath, body: Bytes) -> HttpResponse {
    write(app, data_path(path), |path| {
        Ok(Write::Set {
            path,
            value: parse_value(&body)?,
        })
    })
    .await
}

async fn patch_data(State(app): State<Arc<App>>, path: DataPath, body: Bytes) -> HttpResponse {
    write(app, data_path(path), |path| {
        Ok(Write::Patch {
            path,
            value: parse_value(&body)?,
        })
    })
    .await
}

async fn delete_data(State(app): State<Arc<App>>, path: DataPath) -> HttpResponse {
    write(app, data_path(path), |path| Ok(Write::Delete { path })).await
}

async fn post_tx(State(app): State<Arc<App>>, body: Bytes) -> HttpResponse {
    let tx: TxBody = match serde_json::from_slice(&body) {
        Ok(tx) => tx,
        Err(e) => {
            return fail(ErrorBody::new(
                ErrorCode::BadRequest,
                format!("the body is not a transaction: {e}"),
            ));
        }
    };
    match convert::txn(tx.reads, tx.writes, &app.paths) {
        Ok(txn) => commit(&app, txn).await,
        Err(e) => fail(e),
    }
}

/// `?call_id=` of `POST /v1/call/{fn}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CallQuery {
    call_id: Option<String>,
}

/// `POST /v1/call/{fn}`: the body is the arguments (JSON; empty is
/// `null`); the call id comes from `?call_id=` or the `Idempotency-Key`
/// header. Answers `{"result", "time", "reruns", "replayed"}` once the
/// call's writes are durable.
async fn post_call(
    State(app): State<Arc<App>>,
    UrlPath(function): UrlPath<String>,
    Query(q): Query<CallQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> HttpResponse {
    let args = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        match parse_value(&body) {
            Ok(v) => v,
            Err(e) => return e,
        }
    };
    let header_id = match headers.get("idempotency-key") {
        None => None,
        Some(v) => match std::str::from_utf8(v.as_bytes()) {
            Ok(id) => Some(id.to_string()),
            Err(_) => {
                return fail(ErrorBody::new(
                    ErrorCode::BadRequest,
                    "the Idempotency-Key header is not UTF-8 text",
                ));
            }
        },
    };
    let call_id = q.call_id.or(header_id);
    match app
        .functions
        .call(tarn_functions::Call::new(function, args, call_id))
        .await
    {
        Ok(answer) => axum::Json(tarn_proto::CallResultBody {
            result: WireValue(answer.result),
            time: answer.time.map(WireTime::from),
            reruns: answer.reruns,
            replayed: answer.replayed,
        })
        .into_response(),
        // What the function returned or wrote is the function's failure,
        // not a bad request.
        Err(e) if e.is_outcome() => {
            let body = convert::call_error(&e);
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                axum::Json(ErrorEnvelope { error: body }),
            )
                .into_response()
        }
        Err(e) => fail(convert::call_error(&e)),
    }
}

/// `PUT /v1/module`: the body is the module's source. Answers its
/// version and functions, or `bad_module` with the line and column (the
/// previous module keeps serving).
async fn put_module(State(app): State<Arc<App>>, body: Bytes) -> HttpResponse {
    let source = match String::from_utf8(body.to_vec()) {
        Ok(s) => s,
        Err(_) => {
            return fail(ErrorBody::new(
                ErrorCode::BadModule,
                "the module is not UTF-8 text",
            ));
        }
    };
    let functions = Arc::clone(&app.functions);
    match tokio::task::spawn_blocking(move || functions.deploy(&source)).await {
        Ok(Ok(deployed)) => axum::Json(tarn_proto::ModuleBody {
            version: deployed.version,
            functions: deployed.functions,
            source: None,
        })
        .into_response(),
        Ok(Err(e)) => fail(convert::deploy_error(&e)),
        Err(e) => fail(ErrorBody::new(
            ErrorCode::Internal,
            format!("the deploy task failed: {e}"),
        )),
    }
}

/// `GET /v1/module`: the module being served, with its source.
async fn get_module(State(app): State<Arc<App>>) -> HttpResponse {
    match app.functions.module() {
        Some(m) => axum::Json(tarn_proto::ModuleBody {
            version: m.version,
            functions: m.functions,
            source: Some(m.source.to_string()),
        })
        .into_response(),
        None => fail(convert::call_error(&tarn_functions::CallError::NoModule)),
    }
}

/// `GET /v1/functions`: the module's version and functions, and each
/// called function's diagnostics.
async fn get_functions(State(app): State<Arc<App>>) -> HttpResponse {
    let module = app.functions.module().map(|m| tarn_proto::ModuleBody {
        version: m.version,
        functions: m.functions,
        source: None,
    });
    axum::Json(serde_json::json!({
        "module": module,
        "pending": app.functions.pending(),
        "functions": app.functions.stats(),
    }))
    .into_response()
}

/// Prometheus lines for the functions' diagnostics.
fn function_metrics(app: &App) -> String {
    use std::fmt::Write as _;
    let stats = app.functions.stats();
    let mut out = String::new();
    type Series = (
        &'static str,
        &'static str,
        &'static str,
        fn(&tarn_functions::FunctionStats) -> f64,
    );
    let series: [Series; 9] = [
        (
            "tarn_function_calls_total",
            "counter",
            "Calls answered by running the function.",
            |s| s.calls as f64,
        ),
        (
            "tarn_function_errors_total",
            "counter",
            "Calls that failed.",
            |s| s.errors as f64,
        ),
        (
            "tarn_function_run_mean_seconds",
            "gauge",
            "Mean time from first run to commit decision.",
            |s| s.mean_us / 1e6,
        ),
        (
            "tarn_function_run_p99_seconds",
            "gauge",
            "99th percentile of that over the last 1024 calls.",
            |s| s.p99_us as f64 / 1e6,
        ),
        (
            "tarn_function_reads_mean",
            "gauge",
            "Mean distinct paths read per call.",
            |s| s.mean_reads,
        ),
        (
            "tarn_function_writes_mean",
            "gauge",
            "Mean writes per call.",
            |s| s.mean_writes,
        ),
        (
            "tarn_function_reruns_per_call",
            "gauge",
            "Mean reruns after conflicts per call.",
            |s| s.reruns_per_call,
        ),
        (
            "tarn_function_rejection_ratio",
            "gauge",
            "Commits refused for a conflict over commits tried.",
            |s| s.rejection_rate,
        ),
        (
            "tarn_function_errors_ratio",
            "gauge",
            "Failed calls over calls.",
            |s| {
                if s.calls == 0 {
                    0.0
                } else {
                    s.errors as f64 / s.calls as f64
                }
            },
        ),
    ];
    for (name, kind, help, get) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for s in &stats {
            let label = s
                .name
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            let _ = writeln!(out, "{name}{{function=\"{label}\"}} {}", get(s));
        }
    }
    out
}

async fn metrics(State(app): State<Arc<App>>) -> HttpResponse {
    match &app.metrics {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            format!("{}{}", handle.render(), function_metrics(&app)),
        )
            .into_response(),
        None => fail(ErrorBody::new(
            ErrorCode::Internal,
            "metrics recorder unavailable",
        )),
    }
}

/// Unregisters an SSE stream's watch when the stream is dropped.
struct SseWatch {
    app: Arc<App>,
    id: tarn_core::WatchId,
    _slot: crate::ConnectionSlot,
}

impl Drop for SseWatch {
    fn drop(&mut self) {
        self.app.hub.remove(self.id);
        let _ = self.app.db.peek(|e| e.unwatch(self.id));
    }
}

/// `event: put` / `event: patch` with `data: {"path": "/rel", "data": ...}`,
/// as Firebase's REST streaming: the first event puts the whole value at
/// `/`; each commit puts one changed leaf, or patches several at once.
async fn sse(app: Arc<App>, path: Path) -> Result<HttpResponse> {
    let Some(slot) = app.connect() else {
        return Err(fail(ErrorBody::new(
            ErrorCode::TooManyConnections,
            "too many connections; try again later",
        )));
    };
    let (outbox, rx) = Outbox::new(app.config.limits.max_send_buffer_bytes);
    let hub = Arc::clone(&app.hub);
    let ob = Arc::clone(&outbox);
    let (registered, lsn) = app
        .db
        .peek(|e| {
            let id = e.watch(path.clone(), WatchKind::Subtree)?;
            // Held in the hub until the first event is queued (see fanout).
            hub.add(id, ob, 0);
            let value = e.store().get(&path).value.unwrap_or(Value::Null);
            let first = Response::Watching {
                id: 0,
                watch: 0,
                value: Some(WireValue(value)),
                time: e.newest().into(),
                resumed: false,
            };
            Ok::<_, tarn_core::WatchError>((id, first))
        })
        .map_err(|e| fail(convert::store_error(&e)))?;
    let (id, first) =
        registered.map_err(|e| fail(ErrorBody::new(ErrorCode::TooManyWatches, e.to_string())))?;
    let guard = SseWatch {
        app: Arc::clone(&app),
        id,
        _slot: slot,
    };
    app.db
        .durable(lsn)
        .await
        .map_err(|e| fail(convert::store_error(&e)))?;
    app.hub.release(id, vec![first]);
    let prefix = path;
    let shutdown = app.shutdown.clone();
    let events = stream::unfold((rx, outbox, guard), move |(mut rx, outbox, guard)| {
        let prefix = prefix.clone();
        let mut shutdown = shutdown.clone();
        async move {
            let next = tokio::select! {
                m = rx.recv() => m,
                _ = shutdown.changed() => None,
            };
            let (out, size) = next?;
            outbox.sent(size);
            if outbox.is_closed() && matches!(out, Outgoing::Close(_)) {
                // Slow consumer: say why, then end the stream (the guard
                // releases the watch and the connection slot).
                if let Outgoing::Close(error) = out {
                    let event = Event::default().event("cancel").data(error.message);
                    let (tx_end, rx_end) = tokio::sync::mpsc::unbounded_channel();
                    drop(tx_end);
                    return Some((Ok::<_, Infallible>(event), (rx_end, outbox, guard)));
                }
            }
            let event = match out {
                Outgoing::Msg(Response::Watching { value, .. }) => {
                    put_event("/", value.map(|v| v.0).unwrap_or(Value::Null))
                }
                Outgoing::Msg(Response::Change { changes, .. }) => {
                    let rel = |p: &str| {
                        let skip = prefix.byte_len();
                        let rest = p.get(skip..).unwrap_or("").trim_start_matches('/');
                        format!("/{rest}")
                    };
                    if changes.len() == 1 {
                        put_event(&rel(&changes[0].path), changes[0].value.0.clone())
                    } else {
                        let data: Value = changes
                            .iter()
                            .map(|c| {
                                (
                                    rel(&c.path).trim_start_matches('/').to_string(),
                                    c.value.0.clone(),
                                )
                            })
                            .collect();
                        json_event("patch", "/", data)
                    }
                }
                Outgoing::Close(error) => Event::default().event("cancel").data(error.message),
                Outgoing::Msg(_) => Event::default().comment("ignored"),
            };
            Some((Ok::<_, Infallible>(event), (rx, outbox, guard)))
        }
    });
    Ok(Sse::new(events)
        .keep_alive(
            KeepAlive::new()
                .interval(Duration::from_secs(15))
                .text("keep-alive"),
        )
        .into_response())
}

fn put_event(path: &str, data: Value) -> Event {
    json_event("put", path, data)
}

fn json_event(kind: &str, path: &str, data: Value) -> Event {
    #[derive(serde::Serialize)]
    struct Payload<'a> {
        path: &'a str,
        data: WireValue,
    }
    let text = serde_json::to_string(&Payload {
        path,
        data: WireValue(data),
    })
    .unwrap_or_default();
    Event::default().event(kind).data(text)
}
