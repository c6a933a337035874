//! Concurrent incrementers of one counter, each through `transact`.
//!
//! ```sh
//! cargo run --release -p tarn -- serve &        # a server on 127.0.0.1:7070
//! cargo run -p tarn-client --example counter -- [URL] [CLIENTS] [INCREMENTS]
//! ```
//!
//! Every increment reads the counter and writes it plus one; when two
//! race, the server rejects one and it reruns on the new value, so the
//! counter ends at exactly CLIENTS × INCREMENTS.

use tarn_client::{Client, Options, Value};

#[tokio::main]
async fn main() -> Result<(), tarn_client::Error> {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| "ws://127.0.0.1:7070".into());
    let clients: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(8);
    let increments: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);
    let path = "examples/counter";

    let admin = Client::connect(&url, Options::default()).await?;
    let start = match admin.get(path).await? {
        Value::Int(n) => n,
        _ => 0,
    };
    let began = std::time::Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let client = Client::connect(&url, Options::default()).await?;
        tasks.push(tokio::spawn(async move {
            for _ in 0..increments {
                client
                    .transact(|tx| {
                        Box::pin(async move {
                            let n = match tx.get(path).await? {
                                Value::Int(n) => n,
                                _ => 0,
                            };
                            tx.set(path, Value::Int(n + 1))
                        })
                    })
                    .await?;
            }
            Ok::<_, tarn_client::Error>(())
        }));
    }
    for t in tasks {
        t.await.expect("an incrementer panicked")?;
    }
    let end = admin.get(path).await?;
    let expected = start + i64::from(clients * increments);
    println!(
        "counter went from {start} to {end:?} in {:.2?} ({} clients x {increments}); expected {expected}",
        began.elapsed(),
        clients
    );
    if end != Value::Int(expected) {
        eprintln!("lost increments!");
        std::process::exit(1);
    }
    Ok(())
}
