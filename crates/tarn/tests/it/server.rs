//! The real `tarn serve` binary on a free loopback port, driven over HTTP,
//! SSE and WebSocket (JSON and MessagePack).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

pub struct Server {
    child: Child,
    pub url: String,
    pub addr: String,
    /// Holds the data directory (`data` inside it).
    dir: tempfile::TempDir,
}

impl Server {
    pub fn start(env: &[(&str, &str)]) -> Server {
        Server::start_in(tempfile::tempdir().unwrap(), env)
    }

    /// Starts a server on `dir/data` (kept by the server until dropped).
    fn start_in(dir: tempfile::TempDir, env: &[(&str, &str)]) -> Server {
        Server::start_at(dir, "127.0.0.1:0", env)
    }

    /// Kills the server (SIGKILL) and returns its data directory and
    /// address, for [`Server::start_at`] later.
    pub fn kill(mut self) -> (tempfile::TempDir, String) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        (dir, self.addr.clone())
    }

    /// Starts a server on `dir/data` listening on `listen`.
    pub fn start_at(dir: tempfile::TempDir, listen: &str, env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tarn"));
        cmd.args(["serve", "--listen", listen, "--data"])
            .arg(dir.path().join("data"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("tarn listening on ")
            .unwrap_or_else(|| panic!("server said {line:?}"))
            .to_string();
        let addr = url.trim_start_matches("http://").to_string();
        Server {
            child,
            url,
            addr,
            dir,
        }
    }

    /// SIGTERM, and wait for a clean exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.terminate()
    }

    /// Stops the server cleanly and starts a new one on the same data
    /// directory.
    pub fn restart(mut self) -> Server {
        assert!(self.terminate().success());
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        drop(self);
        Server::start_in(dir, &[])
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "server did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(10)); // polling a child process: no event
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn send(url: String, method: reqwest::Method, body: Option<&str>) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut req = client.request(method, url);
    if let Some(b) = body {
        req = req.body(b.to_string());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[test]
fn http_round_trips() {
    let server = Server::start(&[]);
    let u = |p: &str| format!("{}/v1/data/{p}", server.url);
    rt().block_on(async {
        let (s, v) = send(u("rooms/lobby"), reqwest::Method::PUT, Some(r#"{"topic":"hi","players":{"alice":{"x":1}}}"#)).await;
        assert_eq!(s, 200, "{v}");
        let t1 = v["time"].clone();
        assert_eq!(send(u("rooms"), reqwest::Method::GET, None).await.1, json!({"lobby": {"topic": "hi", "players": {"alice": {"x": 1}}}}));
        assert_eq!(send(u("rooms/lobby"), reqwest::Method::PATCH, Some(r#"{"topic": null, "n": 2}"#)).await.0, 200);
        assert_eq!(send(u("rooms/lobby"), reqwest::Method::GET, None).await.1, json!({"n": 2, "players": {"alice": {"x": 1}}}));
        // Time travel.
        let at = format!("{}.{}@{}", t1[0], t1[1], t1[2]);
        assert_eq!(send(format!("{}?at={at}", u("rooms/lobby/topic")), reqwest::Method::GET, None).await.1, json!("hi"));
        assert_eq!(send(u("rooms/lobby/players"), reqwest::Method::DELETE, None).await.0, 200);
        assert_eq!(send(u("rooms/lobby/players"), reqwest::Method::GET, None).await.1, Value::Null);
        // Transactions: a stale read conflicts with a typed error.
        let tx = json!({"reads": [{"path": "rooms/lobby/n", "seen": [1, 0, 1]}], "writes": [{"op": "set", "path": "rooms/lobby/n", "value": 3}]});
        let (s, v) = send(format!("{}/v1/tx", server.url), reqwest::Method::POST, Some(&tx.to_string())).await;
        assert_eq!(s, 409, "{v}");
        assert_eq!(v["error"]["code"], "conflict");
        assert_eq!(v["error"]["path"], "rooms/lobby/n");
        // Bad input: typed errors, nothing changed.
        let (s, v) = send(u("a//b"), reqwest::Method::PUT, Some("1")).await;
        assert_eq!((s, v["error"]["code"].clone()), (400, json!("bad_path")));
        let (s, v) = send(u("a"), reqwest::Method::PUT, Some("{nope")).await;
        assert_eq!((s, v["error"]["code"].clone()), (400, json!("bad_request")));
        let (s, v) = send(format!("{}?at=yesterday", u("a")), reqwest::Method::GET, None).await;
        assert_eq!((s, v["error"]["code"].clone()), (400, json!("bad_request")));
        let (s, v) = send(u("a"), reqwest::Method::PUT, Some(&"1".repeat(17 << 20))).await;
        assert_eq!((s, v["error"]["code"].clone()), (413, json!("too_large")));
        let (s, v) = send(format!("{}/nowhere", server.url), reqwest::Method::GET, None).await;
        assert_eq!((s, v["error"]["code"].clone()), (404, json!("not_found")));
        assert_eq!(send(u(""), reqwest::Method::GET, None).await.1, json!({"rooms": {"lobby": {"n": 2}}}));
        let (s, metrics) = send(format!("{}/metrics", server.url), reqwest::Method::GET, None).await;
        assert_eq!(s, 200);
        assert!(metrics.as_str().unwrap().contains("tarn_commits_total"));
    });
    assert!(server.stop().success());
}

#[test]
fn data_survives_a_graceful_restart() {
    // sync=never: only the flush at SIGTERM makes the write durable.
    let server = Server::start(&[("TARN_WAL_SYNC", "never")]);
    rt().block_on(async {
        let url = format!("{}/v1/data/k", server.url);
        assert_eq!(send(url, reqwest::Method::PUT, Some("42")).await.0, 200);
    });
    let server = server.restart();
    let got = rt()
        .block_on(send(
            format!("{}/v1/data/k", server.url),
            reqwest::Method::GET,
            None,
        ))
        .1;
    assert_eq!(got, json!(42));
}

#[test]
fn sse_streams_put_then_patch_events() {
    let server = Server::start(&[]);
    let url = server.url.clone();
    rt().block_on(async move {
        send(
            format!("{url}/v1/data/rooms/lobby/topic"),
            reqwest::Method::PUT,
            Some(r#""hi""#),
        )
        .await;
        let resp = reqwest::Client::new()
            .get(format!("{url}/v1/data/rooms"))
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.bytes_stream();
        let mut text = String::new();
        let mut next_event = async || -> String {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                if let Some(end) = text.find("\n\n") {
                    let event: String = text.drain(..end + 2).collect();
                    if event.starts_with(':') {
                        continue; // keep-alive comment
                    }
                    return event;
                }
                let chunk = tokio::time::timeout_at(deadline, body.next())
                    .await
                    .expect("an SSE event in time")
                    .unwrap()
                    .unwrap();
                text.push_str(std::str::from_utf8(&chunk).unwrap());
            }
        };
        let first = next_event().await;
        assert!(first.starts_with("event: put\n"), "{first}");
        assert!(
            first.contains(r#"{"path":"/","data":{"lobby":{"topic":"hi"}}}"#),
            "{first}"
        );
        send(
            format!("{url}/v1/data/rooms/lobby/topic"),
            reqwest::Method::PUT,
            Some(r#""yo""#),
        )
        .await;
        let put = next_event().await;
        assert!(
            put.contains("event: put") && put.contains(r#"{"path":"/lobby/topic","data":"yo"}"#),
            "{put}"
        );
        send(
            format!("{url}/v1/data/rooms/lobby"),
            reqwest::Method::PATCH,
            Some(r#"{"a":1,"b":2}"#),
        )
        .await;
        let patch = next_event().await;
        assert!(patch.contains("event: patch"), "{patch}");
        assert!(
            patch.contains(r#""lobby/a":1"#) && patch.contains(r#""lobby/b":2"#),
            "{patch}"
        );
    });
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(addr: &str) -> Ws {
    tokio_tungstenite::connect_async(format!("ws://{addr}/v1/ws"))
        .await
        .unwrap()
        .0
}

async fn call(ws: &mut Ws, msg: Value) {
    ws.send(Message::Text(msg.to_string().into()))
        .await
        .unwrap();
}

/// The next JSON message (skipping none), within a deadline.
async fn recv(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message in time")
            .expect("connection open")
            .unwrap();
        match msg {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Close(c) => {
                return json!({"type": "closed", "reason": c.map(|c| c.reason.to_string())});
            }
            _ => continue,
        }
    }
}

#[test]
fn websocket_json_session() {
    let server = Server::start(&[]);
    rt().block_on(async {
        let mut ws = connect(&server.addr).await;
        call(&mut ws, json!({"type": "hello", "id": 1, "version": 1})).await;
        assert_eq!(recv(&mut ws).await["type"], "hello");
        call(&mut ws, json!({"type": "watch", "id": 2, "path": "rooms/lobby"})).await;
        let w = recv(&mut ws).await;
        assert_eq!((w["type"].clone(), w["id"].clone(), w["value"].clone()), (json!("watching"), json!(2), Value::Null));
        let watch = w["watch"].clone();
        for i in 0..5 {
            call(&mut ws, json!({"type": "commit", "id": 10 + i, "writes": [{"op": "set", "path": "rooms/lobby/n", "value": i}]})).await;
        }
        // Commit answers and changes interleave; changes arrive in order.
        let mut committed = 0;
        let mut seen = Vec::new();
        while committed < 5 || seen.len() < 5 {
            let m = recv(&mut ws).await;
            match m["type"].as_str().unwrap() {
                "committed" => committed += 1,
                "change" => {
                    assert_eq!(m["watch"], watch);
                    seen.push(m["changes"][0]["value"].as_i64().unwrap());
                }
                other => panic!("unexpected {other}: {m}"),
            }
        }
        assert_eq!(seen, vec![0, 1, 2, 3, 4]);
        call(&mut ws, json!({"type": "get", "id": 20, "path": "rooms"})).await;
        let v = recv(&mut ws).await;
        assert_eq!(v["value"], json!({"lobby": {"n": 4}}));
        // A transaction that read an old version is rejected, explained.
        call(&mut ws, json!({"type": "commit", "id": 21, "reads": [{"path": "rooms/lobby/n", "seen": [1, 0, 1]}], "writes": [{"op": "delete", "path": "rooms"}]})).await;
        let e = recv(&mut ws).await;
        assert_eq!((e["id"].clone(), e["error"]["code"].clone()), (json!(21), json!("conflict")));
        assert!(e["error"]["newer"].is_array());
        call(&mut ws, json!({"type": "unwatch", "id": 22, "watch": watch})).await;
        assert_eq!(recv(&mut ws).await["type"], "unwatched");
        call(&mut ws, json!({"type": "ping", "id": 23})).await;
        assert_eq!(recv(&mut ws).await, json!({"type": "pong", "id": 23}));
        call(&mut ws, json!({"type": "hello", "id": 24, "version": 99})).await;
        assert_eq!(recv(&mut ws).await["error"]["code"], "unsupported_version");
    });
}

#[test]
fn websocket_msgpack_session() {
    let server = Server::start(&[]);
    rt().block_on(async {
        let mut req = format!("ws://{}/v1/ws", server.addr)
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("sec-websocket-protocol", "tarn.v1.msgpack".parse().unwrap());
        let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
        assert_eq!(resp.headers()["sec-websocket-protocol"], "tarn.v1.msgpack");
        let commit = tarn_proto::Request::Commit {
            client: None,
            seq: None,
            depends_on: vec![],
            retry: false,
            id: 1,
            reads: vec![],
            writes: vec![tarn_proto::WireWrite::Set {
                path: "m/x".into(),
                value: tarn_proto::WireValue(tarn_core::Value::Int(7)),
            }],
        };
        ws.send(Message::Binary(
            rmp_serde::to_vec_named(&commit).unwrap().into(),
        ))
        .await
        .unwrap();
        // One frame may carry several messages: a compact commit and a
        // get, handled in order.
        let codec = tarn_proto::Codec::MsgPack;
        let mut packed = Vec::new();
        codec.encode_request_into(
            &tarn_proto::Request::Commit {
                client: None,
                seq: None,
                depends_on: vec![],
                retry: false,
                id: 3,
                reads: vec![],
                writes: vec![tarn_proto::WireWrite::Set {
                    path: "m/y".into(),
                    value: tarn_proto::WireValue(tarn_core::Value::Int(8)),
                }],
            },
            &mut packed,
        );
        codec.encode_request_into(
            &tarn_proto::Request::Get {
                id: 2,
                path: "m".into(),
                at: None,
            },
            &mut packed,
        );
        ws.send(Message::Binary(packed.into())).await.unwrap();
        let mut got = Vec::new();
        while got.len() < 3 {
            if let Message::Binary(b) = ws.next().await.unwrap().unwrap() {
                got.extend(codec.decode_responses(&b).unwrap());
            }
        }
        // Commit answers may interleave with other answers (matched by
        // id); the get, read after commit 3 was decided, sees both writes.
        let ids: Vec<u64> = got
            .iter()
            .map(|r| match r {
                tarn_proto::Response::Committed { id, .. }
                | tarn_proto::Response::Value { id, .. } => *id,
                other => panic!("{other:?}"),
            })
            .collect();
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, [1, 2, 3], "{got:?}");
        let value = got.iter().find_map(|r| match r {
            tarn_proto::Response::Value { id: 2, value, .. } => Some(value),
            _ => None,
        });
        match value {
            Some(value) => {
                assert_eq!(
                    value.0,
                    [
                        ("x", tarn_core::Value::Int(7)),
                        ("y", tarn_core::Value::Int(8))
                    ]
                    .into_iter()
                    .collect()
                );
            }
            None => panic!("no value for get 2: {got:?}"),
        }
    });
}

#[test]
fn a_watch_resumes_from_its_last_time_without_a_gap() {
    let server = Server::start(&[]);
    rt().block_on(async {
        let mut ws = connect(&server.addr).await;
        call(&mut ws, json!({"type": "watch", "id": 1, "path": "r"})).await;
        recv(&mut ws).await;
        call(&mut ws, json!({"type": "commit", "id": 2, "writes": [{"op": "set", "path": "r/a", "value": 1}]})).await;
        let mut last = Value::Null;
        while last.is_null() {
            let m = recv(&mut ws).await;
            if m["type"] == "change" {
                last = m["time"].clone();
            }
        }
        drop(ws);
        // Missed while away: two commits.
        let mut other = connect(&server.addr).await;
        for (i, v) in [(3, 2), (4, 3)] {
            call(&mut other, json!({"type": "commit", "id": i, "writes": [{"op": "set", "path": "r/a", "value": v}]})).await;
            recv(&mut other).await;
        }
        let mut ws = connect(&server.addr).await;
        call(&mut ws, json!({"type": "watch", "id": 5, "path": "r", "since": last})).await;
        let w = recv(&mut ws).await;
        assert_eq!((w["type"].clone(), w["resumed"].clone()), (json!("watching"), json!(true)));
        let a = recv(&mut ws).await;
        let b = recv(&mut ws).await;
        assert_eq!((a["changes"][0]["value"].clone(), b["changes"][0]["value"].clone()), (json!(2), json!(3)));
        // Resuming from a time after the newest commit is refused.
        call(&mut ws, json!({"type": "watch", "id": 6, "path": "r", "since": [u64::MAX >> 20, 0, 0]})).await;
        let w = recv(&mut ws).await;
        assert_eq!(w["error"]["code"], "after_newest", "{w}");
    });
}

/// The tick coalesces updates only while they pile up: one at a time,
/// each update leaves at once. With a tick of a minute, holding the
/// second update for the tick would miss `recv`'s 10 s deadline.
#[test]
fn an_update_that_comes_alone_is_not_held_for_the_tick() {
    let server = Server::start(&[("TARN_TICK_MS", "60000")]);
    rt().block_on(async {
        let mut watcher = connect(&server.addr).await;
        call(&mut watcher, json!({"type": "watch", "id": 1, "path": "cursor"})).await;
        assert_eq!(recv(&mut watcher).await["type"], "watching");
        let mut writer = connect(&server.addr).await;
        for i in 0..5 {
            call(&mut writer, json!({"type": "commit", "id": 10 + i, "writes": [{"op": "set", "path": "cursor", "value": i}]})).await;
            assert_eq!(recv(&mut writer).await["type"], "committed");
            let change = recv(&mut watcher).await;
            assert_eq!(change["type"], "change", "{change}");
            assert_eq!(change["changes"][0]["value"], json!(i), "{change}");
        }
    });
}

#[test]
fn a_thousand_watchers_receive_every_change_in_order() {
    let server = Server::start(&[]);
    rt().block_on(async {
        let mut conns = Vec::new();
        for c in 0..10 {
            let mut ws = connect(&server.addr).await;
            for w in 0..100 {
                call(&mut ws, json!({"type": "watch", "id": c * 100 + w, "path": "room"})).await;
            }
            for _ in 0..100 {
                assert_eq!(recv(&mut ws).await["type"], "watching");
            }
            conns.push(ws);
        }
        let mut writer = connect(&server.addr).await;
        for i in 0..20 {
            call(&mut writer, json!({"type": "commit", "id": i, "writes": [{"op": "set", "path": "room/x", "value": i}]})).await;
        }
        for ws in &mut conns {
            let mut per_watch: std::collections::HashMap<i64, Vec<i64>> = std::collections::HashMap::new();
            let mut total = 0;
            while total < 100 * 20 {
                let m = recv(ws).await;
                assert_eq!(m["type"], "change");
                per_watch.entry(m["watch"].as_i64().unwrap()).or_default().push(m["changes"][0]["value"].as_i64().unwrap());
                total += 1;
            }
            assert_eq!(per_watch.len(), 100);
            for values in per_watch.values() {
                assert_eq!(*values, (0..20).collect::<Vec<_>>());
            }
        }
    });
}

#[test]
fn bad_frames_get_typed_errors_and_the_server_keeps_serving() {
    let server = Server::start(&[]);
    rt().block_on(async {
        let mut ws = connect(&server.addr).await;
        for (frame, code) in [
            ("not json", "bad_request"),
            (r#"{"type":"nope","id":1}"#, "bad_request"),
            (r#"{"type":"get","id":"x","path":"a"}"#, "bad_request"),
            (r#"{"type":"get","id":3,"path":"a//b"}"#, "bad_path"),
            (r#"{"type":"unwatch","id":4,"watch":99}"#, "unknown_watch"),
            (
                r#"{"type":"commit","id":5,"writes":[{"op":"patch","path":"a","value":1}]}"#,
                "bad_value",
            ),
        ] {
            ws.send(Message::Text(frame.into())).await.unwrap();
            let m = recv(&mut ws).await;
            assert_eq!(m["error"]["code"], code, "{frame} -> {m}");
        }
        let deep = format!(
            r#"{{"type":"commit","id":6,"writes":[{{"op":"set","path":"a","value":{}1{}}}]}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        ws.send(Message::Text(deep.into())).await.unwrap();
        assert_eq!(recv(&mut ws).await["error"]["code"], "bad_request");
        // A 100 MB frame closes this connection (limit 16 MiB) ...
        let mut big = connect(&server.addr).await;
        let _ = big.send(Message::Binary(vec![0u8; 100 << 20].into())).await;
        let closed = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match big.next().await {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                    _ => {}
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "oversized frame did not close the connection"
        );
        // ... and everyone else is still served.
        call(&mut ws, json!({"type": "ping", "id": 7})).await;
        assert_eq!(recv(&mut ws).await["type"], "pong");
    });
}

#[test]
fn a_slow_consumer_is_disconnected_and_memory_stays_bounded() {
    let server = Server::start(&[("TARN_LIMITS_MAX_SEND_BUFFER_BYTES", "262144")]);
    rt().block_on(async {
        // A client that watches and never reads.
        let mut slow = connect(&server.addr).await;
        call(&mut slow, json!({"type": "watch", "id": 1, "path": "big"})).await;
        let mut writer = connect(&server.addr).await;
        let value = "x".repeat(60_000);
        let url = format!("{}/metrics", server.url);
        let mut disconnected = false;
        for i in 0..2_000 {
            call(&mut writer, json!({"type": "commit", "id": i, "writes": [{"op": "set", "path": "big/v", "value": value}]})).await;
            recv(&mut writer).await;
            // Looked at after every commit: the server gives a cut-off
            // connection's writer 2 s to deliver the close message.
            let (_, m) = send(url.clone(), reqwest::Method::GET, None).await;
            if m.as_str().unwrap().lines().any(|l| l.starts_with("tarn_slow_consumers_total") && !l.ends_with(" 0")) {
                disconnected = true;
                break;
            }
        }
        assert!(disconnected, "the slow consumer was never cut off");
        // The slow client, reading at last, finds the reason and the close.
        let mut reason = None;
        while let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_secs(10), slow.next()).await {
            if let Message::Text(t) = msg {
                let m: Value = serde_json::from_str(&t).unwrap();
                if m["type"] == "close" {
                    reason = Some(m["error"]["code"].clone());
                }
            }
        }
        assert_eq!(reason, Some(json!("slow_consumer")));
        call(&mut writer, json!({"type": "ping", "id": 9999})).await;
        assert_eq!(recv(&mut writer).await["type"], "pong");
    });
}

fn tarn(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tarn"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn cli_verbs_against_a_running_server() {
    let server = Server::start(&[]);
    let s = server.url.as_str();
    let ok = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    ok(tarn(&[
        "set",
        "rooms/lobby",
        r#"{"a":{"b":1},"c":[1,2]}"#,
        "--server",
        s,
    ]));
    ok(tarn(&[
        "patch",
        "rooms/lobby",
        r#"{"d":true}"#,
        "--server",
        s,
    ]));
    assert_eq!(
        ok(tarn(&["get", "rooms/lobby/a", "--server", s])).trim(),
        r#"{"b":1}"#
    );
    let exported = ok(tarn(&["export", "--server", s]));
    assert_eq!(
        serde_json::from_str::<Value>(&exported).unwrap(),
        json!({"rooms": {"lobby": {"a": {"b": 1}, "c": [1, 2], "d": true}}})
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("export.json");
    std::fs::write(&file, &exported).unwrap();
    ok(tarn(&[
        "import",
        file.to_str().unwrap(),
        "--at",
        "copy",
        "--server",
        s,
    ]));
    assert_eq!(
        serde_json::from_str::<Value>(&ok(tarn(&["get", "copy/rooms/lobby/d", "--server", s])))
            .unwrap(),
        json!(true)
    );
    ok(tarn(&["rm", "copy", "--server", s]));
    assert_eq!(ok(tarn(&["get", "copy", "--server", s])).trim(), "null");
    let tx = dir.path().join("tx.json");
    std::fs::write(
        &tx,
        r#"{"writes": [{"op": "set", "path": "t", "value": 1}]}"#,
    )
    .unwrap();
    assert!(ok(tarn(&["tx", tx.to_str().unwrap(), "--server", s])).contains("time"));
    // Backup on the server's machine, then an offline restore.
    let backup = dir.path().join("backup");
    ok(tarn(&["backup", backup.to_str().unwrap(), "--server", s]));
    let restored = dir.path().join("restored");
    ok(tarn(&[
        "restore",
        backup.to_str().unwrap(),
        "--data",
        restored.to_str().unwrap(),
    ]));
    assert!(restored.join("TARN").exists());
    // Errors are the server's typed errors, and say what to do.
    let bad = tarn(&["set", "a//b", "1", "--server", s]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("bad_path"));
    let down = tarn(&["status", "--server", "http://127.0.0.1:9"]);
    assert!(String::from_utf8_lossy(&down.stderr).contains("tarn serve"));
    let not_json = tarn(&["set", "x", "hello", "--server", s]);
    assert!(String::from_utf8_lossy(&not_json.stderr).contains("not JSON"));
}

#[test]
fn the_system_area_is_closed_to_clients_on_every_path() {
    let server = Server::start(&[]);
    let base = server.url.clone();
    rt().block_on(async {
        for (method, url, body) in [
            (
                reqwest::Method::PUT,
                format!("{base}/v1/data/$sys/timers/t"),
                Some("1"),
            ),
            (reqwest::Method::DELETE, format!("{base}/v1/data"), None),
            (reqwest::Method::PUT, format!("{base}/v1/data/"), Some("{}")),
            (
                reqwest::Method::PATCH,
                format!("{base}/v1/data"),
                Some(r#"{"$sys": null}"#),
            ),
            (
                reqwest::Method::POST,
                format!("{base}/v1/import"),
                Some(r#"{"$sys": {"x": 1}}"#),
            ),
            (
                reqwest::Method::POST,
                format!("{base}/v1/import?mode=replace"),
                Some("{}"),
            ),
        ] {
            let (s, v) = send(url.clone(), method.clone(), body).await;
            assert_eq!(s, 400, "{method} {url}: {v}");
            assert!(
                v["error"]["message"].as_str().unwrap().contains("$sys"),
                "{v}"
            );
        }
        // Below the root, and patches of the root, are fine.
        assert_eq!(
            send(
                format!("{base}/v1/data"),
                reqwest::Method::PATCH,
                Some(r#"{"a": 1}"#)
            )
            .await
            .0,
            200
        );
        let mut ws = connect(&server.addr).await;
        call(
            &mut ws,
            json!({"type": "commit", "id": 1, "writes": [{"op": "delete", "path": ""}]}),
        )
        .await;
        assert_eq!(recv(&mut ws).await["error"]["code"], "bad_path");
    });
}

#[test]
fn a_watch_too_large_for_the_send_buffer_is_refused_not_a_slow_consumer() {
    let server = Server::start(&[("TARN_LIMITS_MAX_SEND_BUFFER_BYTES", "65536")]);
    rt().block_on(async {
        let big = "x".repeat(200_000);
        let (s, _) = send(
            format!("{}/v1/data/big", server.url),
            reqwest::Method::PUT,
            Some(&json!(big).to_string()),
        )
        .await;
        assert_eq!(s, 200);
        let mut ws = connect(&server.addr).await;
        call(&mut ws, json!({"type": "watch", "id": 1, "path": "big"})).await;
        assert_eq!(recv(&mut ws).await["error"]["code"], "too_large");
        call(&mut ws, json!({"type": "ping", "id": 2})).await;
        assert_eq!(
            recv(&mut ws).await["type"],
            "pong",
            "the connection stays open"
        );
    });
}

#[test]
fn shutdown_is_bounded_even_with_a_client_that_never_reads() {
    use std::io::Write as _;
    let server = Server::start(&[]);
    // An SSE client that sends its request and never reads a byte.
    let mut stuck = std::net::TcpStream::connect(&server.addr).unwrap();
    write!(
        stuck,
        "GET /v1/data/ HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let ws = rt().block_on(connect(&server.addr));
    let started = Instant::now();
    let status = server.stop();
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "shutdown took {:?}",
        started.elapsed()
    );
    drop((stuck, ws));
}

#[test]
fn a_resent_transaction_id_is_answered_not_applied_twice() {
    let server = Server::start(&[]);
    rt().block_on(async {
        let mut ws = connect(&server.addr).await;
        let commit = |id: u64, seq: u64, retry: bool| {
            json!({"type": "commit", "id": id, "client": 77, "seq": seq, "retry": retry,
                   "writes": [{"op": "set", "path": "n", "value": seq}]})
        };
        // A retry from a client the server never heard of: the outcome is
        // unknown, and nothing is decided.
        call(&mut ws, commit(1, 1, true)).await;
        let r = recv(&mut ws).await;
        assert_eq!(r["error"]["code"], "unknown_outcome", "{r}");
        call(&mut ws, commit(2, 1, false)).await;
        let first = recv(&mut ws).await;
        assert_eq!(first["type"], "committed", "{first}");
        // Sent again (as after a lost answer): the same time, no new commit.
        call(&mut ws, commit(3, 1, true)).await;
        let again = recv(&mut ws).await;
        assert_eq!(again["type"], "committed", "{again}");
        assert_eq!(again["time"], first["time"]);
        // A later seq that depends on a rejected one is rejected with it.
        call(
            &mut ws,
            json!({"type": "commit", "id": 4, "client": 77, "seq": 2,
                   "reads": [{"path": "n", "seen": [1, 0, 0]}], "writes": []}),
        )
        .await;
        assert_eq!(recv(&mut ws).await["error"]["code"], "conflict");
        call(
            &mut ws,
            json!({"type": "commit", "id": 5, "client": 77, "seq": 2, "retry": true, "writes": []}),
        )
        .await;
        assert_eq!(recv(&mut ws).await["error"]["code"], "already_rejected");
        call(
            &mut ws,
            json!({"type": "commit", "id": 6, "client": 77, "seq": 3, "depends_on": [2],
                             "writes": [{"op": "set", "path": "m", "value": 1}]}),
        )
        .await;
        assert_eq!(recv(&mut ws).await["error"]["code"], "dependency_rejected");
        call(&mut ws, json!({"type": "get", "id": 7, "path": "n"})).await;
        assert_eq!(recv(&mut ws).await["value"], 1);
    });
}
