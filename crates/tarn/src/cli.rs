//! Client verbs against a running server over its HTTP API:
//! `get`, `set`, `patch`, `rm`, `tx`, `call`, `deploy`, `status`. Output is the JSON the
//! server returned; errors print the server's code and message.

use std::io::IsTerminal;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

/// Where the server is.
#[derive(Args, Debug)]
pub struct ServerArg {
    /// The server's URL.
    #[arg(long, default_value = "http://127.0.0.1:7070", env = "TARN_SERVER")]
    server: String,
}

/// The client verbs.
#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Print the value at PATH (`--at TIME` reads the past).
    Get {
        /// The path, e.g. rooms/lobby.
        path: String,
        /// A past time (`ms`, `ms.logical@node`).
        #[arg(long)]
        at: Option<String>,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Replace the value at PATH with JSON.
    Set {
        /// The path.
        path: String,
        /// A JSON value.
        json: String,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Merge the JSON object's children into PATH.
    Patch {
        /// The path.
        path: String,
        /// A JSON object.
        json: String,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Delete PATH and everything under it.
    Rm {
        /// The path.
        path: String,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Commit the transaction in FILE (`{"reads": [...], "writes": [...]}`).
    Tx {
        /// A JSON file, or - for standard input.
        file: String,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Call FUNCTION of the deployed module with ARGS (JSON) and print its result.
    Call {
        /// The exported function.
        function: String,
        /// Its arguments, as JSON (default null).
        #[arg(default_value = "null")]
        args: String,
        /// An id for this call: repeating it returns the first call's
        /// result without running again.
        #[arg(long)]
        call_id: Option<String>,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Deploy FILE, an ES module whose exported functions become callable.
    Deploy {
        /// The module's source file.
        file: std::path::PathBuf,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Check that the server is up.
    Status {
        #[command(flatten)]
        server: ServerArg,
    },
    /// Print every change under PATH as a JSON line, until Ctrl-C.
    Watch {
        /// The path.
        path: String,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Write the tree at PATH (default: everything) as JSON to stdout.
    Export {
        /// The path.
        #[arg(default_value = "")]
        path: String,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Load a JSON file into the tree at --at (default: the root).
    Import {
        /// The JSON file.
        file: std::path::PathBuf,
        /// Where to put it.
        #[arg(long, default_value = "")]
        at: String,
        /// Delete what is at --at first instead of merging.
        #[arg(long)]
        replace: bool,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Write a consistent backup into DIR, a new directory on the server's machine.
    Backup {
        /// The directory (on the server's machine; must not exist or be empty).
        dir: std::path::PathBuf,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Restore a backup into a new data directory (offline: no server involved).
    Restore {
        /// The backup directory.
        backup: std::path::PathBuf,
        /// The data directory to create (must not exist or be empty).
        #[arg(long, default_value = "tarn-data")]
        data: std::path::PathBuf,
    },
}

/// Runs a client verb.
pub fn run(cmd: ClientCommand) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run_async(cmd))
}

impl ServerArg {
    /// The URL of `route` (e.g. `v1/tx`) on the server, with `path` (a
    /// tree path, may be empty) appended.
    fn url(&self, route: &str, path: &str) -> String {
        let base = format!("{}/{route}", self.server.trim_end_matches('/'));
        match path.trim_start_matches('/') {
            "" => base,
            path => format!("{base}/{path}"),
        }
    }
}

fn data_url(server: &ServerArg, path: &str) -> String {
    server.url("v1/data", path)
}

fn parse_json(text: &str) -> Result<serde_json::Value> {
    serde_json::from_str(text)
        .with_context(|| format!("{text:?} is not JSON (strings need quotes: '\"text\"')"))
}

async fn run_async(cmd: ClientCommand) -> Result<()> {
    let http = reqwest::Client::new();
    match &cmd {
        ClientCommand::Watch { path, server } => return watch(&http, server, path).await,
        ClientCommand::Export { path, server } => return export(&http, server, path).await,
        ClientCommand::Import {
            file,
            at,
            replace,
            server,
        } => {
            return import(&http, server, file, at, *replace).await;
        }
        ClientCommand::Restore { backup, data } => {
            tarn_store::restore(backup, data).with_context(|| {
                format!("restoring {} into {}", backup.display(), data.display())
            })?;
            out!(
                "restored {} into {}; start it with `tarn serve --data {}`",
                backup.display(),
                data.display(),
                data.display()
            );
            return Ok(());
        }
        _ => {}
    }
    let (request, server) = match &cmd {
        ClientCommand::Get { path, at, server } => {
            let mut url = data_url(server, path);
            if let Some(at) = at {
                url = format!("{url}?at={at}");
            }
            (http.get(url), server)
        }
        ClientCommand::Set { path, json, server } => (
            http.put(data_url(server, path))
                .body(parse_json(json)?.to_string()),
            server,
        ),
        ClientCommand::Patch { path, json, server } => (
            http.patch(data_url(server, path))
                .body(parse_json(json)?.to_string()),
            server,
        ),
        ClientCommand::Rm { path, server } => (http.delete(data_url(server, path)), server),
        ClientCommand::Tx { file, server } => {
            let text = if file == "-" {
                std::io::read_to_string(std::io::stdin())
                    .context("reading the transaction from stdin")?
            } else {
                std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?
            };
            parse_json(&text)?;
            (http.post(server.url("v1/tx", "")).body(text), server)
        }
        ClientCommand::Call {
            function,
            args,
            call_id,
            server,
        } => {
            let mut request = http
                .post(server.url("v1/call", function))
                .body(parse_json(args)?.to_string());
            if let Some(id) = call_id {
                request = request.header("idempotency-key", id);
            }
            (request, server)
        }
        ClientCommand::Deploy { file, server } => {
            let source = std::fs::read_to_string(file)
                .with_context(|| format!("reading the module {}", file.display()))?;
            (http.put(server.url("v1/module", "")).body(source), server)
        }
        ClientCommand::Status { server } => (http.get(server.url("healthz", "")), server),
        ClientCommand::Backup { dir, server } => (
            http.post(server.url("v1/backup", ""))
                .body(serde_json::json!({ "dir": dir }).to_string()),
            server,
        ),
        ClientCommand::Watch { .. }
        | ClientCommand::Export { .. }
        | ClientCommand::Import { .. }
        | ClientCommand::Restore { .. } => unreachable!("handled above"),
    };
    let response = request
        .header("content-type", "application/json")
        .send()
        .await
        .with_context(|| unreachable_server(server))?;
    let body = check_deploy(&cmd, response)
        .await?
        .text()
        .await
        .context("reading the answer")?;
    if matches!(cmd, ClientCommand::Status { .. }) {
        out!("ok: {} is up", server.server);
        return Ok(());
    }
    let value: serde_json::Value =
        serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body));
    if std::io::stdout().is_terminal() {
        out!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        out!("{value}");
    }
    Ok(())
}

/// [`check`], and for a module that does not compile, the place in the
/// file the error names.
async fn check_deploy(
    cmd: &ClientCommand,
    response: reqwest::Response,
) -> Result<reqwest::Response> {
    let ClientCommand::Deploy { file, .. } = cmd else {
        return check(response).await;
    };
    if response.status().is_success() {
        return Ok(response);
    }
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    match serde_json::from_str::<tarn_proto::ErrorEnvelope>(&body) {
        Ok(e) => match (e.error.line, e.error.column) {
            (Some(line), Some(column)) => bail!(
                "{}:{line}:{column}: {} ({}); the previous module keeps serving",
                file.display(),
                e.error.message,
                e.error.code.as_str()
            ),
            _ => bail!(
                "{} ({}): {}; the previous module keeps serving",
                e.error.code.as_str(),
                status,
                e.error.message
            ),
        },
        Err(_) => bail!("the server answered {status}: {body}"),
    }
}

fn unreachable_server(server: &ServerArg) -> String {
    format!(
        "cannot reach the server at {}; start it with `tarn serve` or pass --server",
        server.server
    )
}

async fn check(response: reqwest::Response) -> Result<reqwest::Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.text().await.unwrap_or_default();
    match serde_json::from_str::<tarn_proto::ErrorEnvelope>(&body) {
        Ok(e) => bail!(
            "{} ({}): {}",
            e.error.code.as_str(),
            status,
            e.error.message
        ),
        Err(_) => bail!("the server answered {status}: {body}"),
    }
}

/// Follows the SSE stream of PATH and prints one JSON line per event.
async fn watch(http: &reqwest::Client, server: &ServerArg, path: &str) -> Result<()> {
    use futures_util::StreamExt;
    let response = http
        .get(data_url(server, path))
        .header("accept", "text/event-stream")
        .send()
        .await
        .with_context(|| unreachable_server(server))?;
    let mut body = check(response).await?.bytes_stream();
    let mut text = String::new();
    let mut event = String::new();
    while let Some(chunk) = body.next().await {
        text.push_str(&String::from_utf8_lossy(
            &chunk.context("reading the stream")?,
        ));
        while let Some(end) = text.find('\n') {
            let line: String = text.drain(..=end).collect();
            let line = line.trim_end();
            if let Some(kind) = line.strip_prefix("event: ") {
                event = kind.to_string();
            } else if let Some(data) = line.strip_prefix("data: ") {
                let data: serde_json::Value = serde_json::from_str(data).unwrap_or_default();
                out!(
                    "{}",
                    serde_json::json!({ "event": event, "path": data["path"], "data": data["data"] })
                );
            }
        }
    }
    Ok(())
}

/// Streams the export to stdout.
async fn export(http: &reqwest::Client, server: &ServerArg, path: &str) -> Result<()> {
    use futures_util::StreamExt;
    use std::io::Write;
    let url = server.url("v1/export", path);
    let response = http
        .get(url)
        .send()
        .await
        .with_context(|| unreachable_server(server))?;
    let mut body = check(response).await?.bytes_stream();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    while let Some(chunk) = body.next().await {
        out.write_all(&chunk.context("the export was cut off")?)?;
    }
    out.flush()?;
    Ok(())
}

/// Streams a file to the server's importer, with a progress bar.
async fn import(
    http: &reqwest::Client,
    server: &ServerArg,
    file: &std::path::Path,
    at: &str,
    replace: bool,
) -> Result<()> {
    let meta = std::fs::metadata(file).with_context(|| format!("reading {}", file.display()))?;
    let bar = indicatif::ProgressBar::new(meta.len());
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "importing {bar:40} {bytes}/{total_bytes} ({bytes_per_sec})",
    ) {
        bar.set_style(style);
    }
    let f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(8);
    let reader_bar = bar.clone();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut f = f;
        let mut buf = vec![0u8; 256 << 10];
        loop {
            match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    reader_bar.inc(n as u64);
                    if tx
                        .blocking_send(Ok(bytes::Bytes::copy_from_slice(&buf[..n])))
                        .is_err()
                    {
                        break;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    break;
                }
            }
        }
    });
    let mut rx = rx;
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let mode = if replace { "replace" } else { "merge" };
    let url = format!("{}?mode={mode}", server.url("v1/import", at));
    let response = http
        .post(url)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .with_context(|| unreachable_server(server))?;
    let response = check(response).await;
    bar.finish_and_clear();
    let text = response?.text().await.context("reading the answer")?;
    let stats: serde_json::Value = serde_json::from_str(&text).context("reading the answer")?;
    out!(
        "imported {} leaves in {} commits",
        stats["leaves"],
        stats["commits"]
    );
    Ok(())
}
