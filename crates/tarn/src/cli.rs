//! Client verbs against a running server over its HTTP API:
//! `get`, `set`, `patch`, `rm`, `tx`, `status`. Output is the JSON the
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
    /// Check that the server is up.
    Status {
        #[command(flatten)]
        server: ServerArg,
    },
}

/// Runs a client verb.
pub fn run(cmd: ClientCommand) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run_async(cmd))
}

fn data_url(server: &ServerArg, path: &str) -> String {
    format!(
        "{}/v1/data/{}",
        server.server.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

fn parse_json(text: &str) -> Result<serde_json::Value> {
    serde_json::from_str(text)
        .with_context(|| format!("{text:?} is not JSON (strings need quotes: '\"text\"')"))
}

async fn run_async(cmd: ClientCommand) -> Result<()> {
    let http = reqwest::Client::new();
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
            (
                http.post(format!("{}/v1/tx", server.server.trim_end_matches('/')))
                    .body(text),
                server,
            )
        }
        ClientCommand::Status { server } => (
            http.get(format!("{}/healthz", server.server.trim_end_matches('/'))),
            server,
        ),
    };
    let response = request
        .header("content-type", "application/json")
        .send()
        .await
        .with_context(|| {
            format!(
                "cannot reach the server at {}; start it with `tarn serve` or pass --server",
                server.server
            )
        })?;
    let status = response.status();
    let body = response.text().await.context("reading the answer")?;
    if !status.is_success() {
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
    if matches!(cmd, ClientCommand::Status { .. }) {
        println!("ok: {} is up", server.server);
        return Ok(());
    }
    let value: serde_json::Value =
        serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body));
    if std::io::stdout().is_terminal() {
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!("{value}");
    }
    Ok(())
}
