//! A chat in the terminal: every line you type is posted to a room; every
//! message in the room is printed as it arrives (yours at once, as a
//! prediction, marked `…` until the server confirms it).
//!
//! ```sh
//! cargo run --release -p tarn -- serve &        # a server on 127.0.0.1:7070
//! cargo run -p tarn-client --example chat -- ada lobby [URL]
//! cargo run -p tarn-client --example chat -- bob lobby [URL]   # another terminal
//! ```
//!
//! Messages live at `chat/ROOM/messages/KEY` as `{from, text}`; keys sort
//! by time, so the room prints in order. Stop the server and type: lines
//! queue offline and are sent when it is back.

use std::collections::BTreeSet;

use tarn_client::{Client, ConnectionState, Options, UpdateKind, Value};
use tokio::io::AsyncBufReadExt;

#[tokio::main]
async fn main() -> Result<(), tarn_client::Error> {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "guest".into());
    let room = args.next().unwrap_or_else(|| "lobby".into());
    let url = args.next().unwrap_or_else(|| "ws://127.0.0.1:7070".into());
    let client = Client::new(&url, Options::default());
    let messages = format!("chat/{room}/messages");
    let mut watch = client.watch_subtree(&messages).await?;

    // Print the room as it changes.
    tokio::spawn(async move {
        let mut shown = BTreeSet::new();
        while let Some(update) = watch.recv().await {
            if let UpdateKind::RolledBack { reason, .. } = &update.kind {
                println!("(a message was refused: {reason})");
            }
            let Value::Object(all) = &update.value else {
                continue;
            };
            for (key, msg) in all {
                if shown.contains(key) {
                    continue;
                }
                let text = |field: &str| match msg {
                    Value::Object(m) => match m.get(field) {
                        Some(Value::String(s)) => s.to_string(),
                        _ => String::new(),
                    },
                    _ => String::new(),
                };
                let pending = update.predicted && matches!(update.kind, UpdateKind::Predicted(_));
                println!(
                    "{}: {}{}",
                    text("from"),
                    text("text"),
                    if pending { " …" } else { "" }
                );
                if !pending {
                    shown.insert(key.clone());
                }
            }
        }
    });
    // Report the connection as it comes and goes.
    let mut states = client.states();
    tokio::spawn(async move {
        while states.changed().await.is_ok() {
            let s = *states.borrow();
            if s != ConnectionState::Connecting {
                println!("({s:?})");
            }
        }
    });

    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut n = 0u32;
    while let Ok(Some(line)) = lines.next_line().await {
        if line.trim().is_empty() {
            continue;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros());
        n += 1;
        let key = format!("{now:020}-{name}-{n}");
        let msg: Value = [("from", Value::str(&name)), ("text", Value::str(&line))]
            .into_iter()
            .collect();
        let client = client.clone();
        let path = format!("{messages}/{key}");
        tokio::spawn(async move {
            if let Err(e) = client.set(&path, msg).await {
                eprintln!("not sent: {e}");
            }
        });
    }
    client.close().await;
    Ok(())
}
