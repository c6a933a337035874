//! Pipelined redis `SET`s in the same shape as tarn's pipelined commits
//! (`bench_server::pipelined`): per connection a [`Window`] of 256 in
//! flight, sent in writes of at most 16 commands. Replies are counted as lines
//! (`+OK\r\n`, or `-ERR ...\r\n` for an error), so the client costs
//! redis next to nothing.

use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::bench_server::{Until, Window, join_pipelined};

/// Appends one `SET key value` command (RESP array of bulk strings).
pub fn encode_set(key: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(b"*3\r\n$3\r\nSET\r\n");
    for part in [key, value] {
        out.push(b'$');
        out.extend_from_slice(part.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(part);
        out.extend_from_slice(b"\r\n");
    }
}

/// Pipelined SETs on `conns` connections, `make(connection, i, out)`
/// appending each connection's `i`th command, through a [`Window`] each.
/// All must succeed. Returns how many did and when the last reply came.
pub async fn pipelined<F>(port: u16, conns: usize, until: Until, make: F) -> Result<(u64, Instant)>
where
    F: Fn(usize, u64, &mut Vec<u8>) + Clone + Send + Sync + 'static,
{
    let mut tasks = Vec::new();
    for c in 0..conns {
        let make = make.clone();
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            stream.set_nodelay(true)?;
            let (mut rx, mut tx) = stream.into_split();
            let window = Window::new();
            let sender_window = window.clone();
            let sender = tokio::spawn(async move {
                let mut sent = 0u64;
                let mut buf = Vec::new();
                while until.more(sent) {
                    let n = sender_window.take(until, sent).await?;
                    buf.clear();
                    for _ in 0..n {
                        make(c, sent, &mut buf);
                        sent += 1;
                    }
                    tx.write_all(&buf).await?;
                    sender_window.sent(sent);
                }
                anyhow::Ok(sent)
            });
            let (mut replies, mut errors) = (0u64, 0u64);
            let mut at_line_start = true;
            let mut last = Instant::now();
            let mut buf = vec![0u8; 64 * 1024];
            while !(sender.is_finished() && window.all_answered(replies)) {
                let read = tokio::time::timeout(Duration::from_secs(10), rx.read(&mut buf)).await;
                // Silence, a closed or a broken connection ends the load
                // (`finish` says so).
                let Ok(Ok(n)) = read else { break };
                if n == 0 {
                    break;
                }
                let mut lines = 0;
                for &b in &buf[..n] {
                    if at_line_start && b == b'-' {
                        errors += 1;
                    }
                    at_line_start = b == b'\n';
                    lines += usize::from(at_line_start);
                }
                replies += lines as u64;
                last = Instant::now();
                window.answered(lines);
            }
            let first_error = (errors > 0).then(|| "an -ERR reply".to_string());
            window
                .finish(sender, replies - errors, errors, first_error)
                .await
                .map_err(|e| e.context("redis"))?;
            anyhow::Ok((replies, last))
        }));
    }
    join_pipelined(tasks).await
}
