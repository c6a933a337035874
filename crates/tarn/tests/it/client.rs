//! tarn-client against the real server binary: concurrent transactions,
//! invariants under contention, restarts in the middle of a watch,
//! prediction and rollback as the watch stream shows them.

use std::time::{Duration, Instant};

use tarn_client::{Client, ConnectionState, Options, Update, UpdateKind, Value};

use crate::server::Server;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn int(v: &Value) -> i64 {
    match v {
        Value::Int(n) => *n,
        Value::Null => 0,
        other => panic!("not an integer: {other:?}"),
    }
}

/// The next update, or a failure after a deadline.
async fn next(w: &mut tarn_client::Watch) -> Update {
    tokio::time::timeout(Duration::from_secs(20), w.recv())
        .await
        .expect("an update within 20 s")
        .expect("the watch is open")
}

/// Options for clients that contend on purpose: these tests check exact
/// totals, not how soon a transaction gives up (`max_attempts`, 64 by
/// default), which a loaded machine can reach.
fn contended() -> Options {
    Options {
        max_attempts: 100_000,
        ..Options::default()
    }
}

async fn increment(client: &Client, path: &'static str) -> i64 {
    client
        .transact(move |tx| {
            Box::pin(async move {
                let n = int(&tx.get(path).await?) + 1;
                tx.set(path, Value::Int(n))?;
                Ok(n)
            })
        })
        .await
        .unwrap()
}

#[test]
fn concurrent_increments_through_transact_are_exact() {
    let server = Server::start(&[]);
    rt().block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let client = Client::connect(&server.url, contended()).await.unwrap();
            tasks.push(tokio::spawn(async move {
                for _ in 0..500 {
                    increment(&client, "counter").await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let client = Client::connect(&server.url, Options::default())
            .await
            .unwrap();
        assert_eq!(client.get("counter").await.unwrap(), Value::Int(4000));
    });
}

#[test]
fn transfers_keep_the_total_in_every_snapshot() {
    const ACCOUNTS: i64 = 20;
    let server = Server::start(&[]);
    rt().block_on(async {
        let setup = Client::connect(&server.url, Options::default())
            .await
            .unwrap();
        let accounts: Value = (0..ACCOUNTS)
            .map(|i| (format!("a{i}"), Value::Int(100)))
            .collect();
        setup.set("bank", accounts).await.unwrap();
        let total = |v: &Value| match v {
            Value::Object(m) => m.values().map(int).sum::<i64>(),
            _ => 0,
        };
        // A watcher checks every committed state it is shown.
        let observer = Client::connect(&server.url, Options::default())
            .await
            .unwrap();
        let mut watch = observer.watch_subtree("bank").await.unwrap();
        let first = next(&mut watch).await;
        assert_eq!(total(&first.value), 100 * ACCOUNTS);
        let mut tasks = Vec::new();
        for c in 0..4u64 {
            let client = Client::connect(&server.url, contended()).await.unwrap();
            tasks.push(tokio::spawn(async move {
                let mut seed = c * 7919 + 1;
                for _ in 0..100 {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let from = (seed >> 33) % ACCOUNTS as u64;
                    let to = (from + 1 + (seed >> 40) % (ACCOUNTS as u64 - 1)) % ACCOUNTS as u64;
                    let amount = ((seed >> 20) % 30) as i64;
                    client
                        .transact(move |tx| {
                            Box::pin(async move {
                                let (f, t) = (format!("bank/a{from}"), format!("bank/a{to}"));
                                // Half the clients read both accounts in
                                // one round trip.
                                let (fb, tb) = if c % 2 == 0 {
                                    let both = tx.get_all(&[&f, &t]).await?;
                                    (int(&both[0]), int(&both[1]))
                                } else {
                                    (int(&tx.get(&f).await?), int(&tx.get(&t).await?))
                                };
                                if fb >= amount {
                                    tx.set(&f, Value::Int(fb - amount))?;
                                    tx.set(&t, Value::Int(tb + amount))?;
                                }
                                Ok(())
                            })
                        })
                        .await
                        .unwrap();
                }
            }));
            // Snapshots read in transactions see the total too.
        }
        let reader = Client::connect(&server.url, contended()).await.unwrap();
        for round in 0..20 {
            let sum = reader
                .transact(|tx| {
                    Box::pin(async move {
                        let paths: Vec<String> =
                            (0..ACCOUNTS).map(|i| format!("bank/a{i}")).collect();
                        let mut sum = 0;
                        if round % 2 == 0 {
                            // All accounts in one round trip.
                            let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
                            sum = tx.get_all(&refs).await?.iter().map(int).sum();
                        } else {
                            for p in &paths {
                                sum += int(&tx.get(p).await?);
                            }
                        }
                        Ok(sum)
                    })
                })
                .await
                .unwrap();
            assert_eq!(sum, 100 * ACCOUNTS, "a transaction saw a partial transfer");
        }
        for t in tasks {
            t.await.unwrap();
        }
        // Drain the watch up to the final state: every committed state
        // shown had the full total.
        let final_time = setup.set("done", Value::Bool(true)).await.unwrap();
        let mut seen = 0;
        loop {
            let u = tokio::time::timeout(Duration::from_millis(500), watch.recv()).await;
            let Ok(Some(u)) = u else { break };
            assert!(!u.predicted, "the observer wrote nothing");
            assert_eq!(total(&u.value), 100 * ACCOUNTS, "at {:?}", u.time);
            seen += 1;
            if u.time >= final_time {
                break;
            }
        }
        assert!(seen > 0, "the observer saw transfers");
        assert_eq!(total(&observer.get("bank").await.unwrap()), 100 * ACCOUNTS);
    });
}

#[test]
fn a_watch_across_a_kill_and_restart_loses_and_duplicates_nothing() {
    const N: i64 = 60;
    let server = Server::start(&[]);
    let url = server.url.clone();
    rt().block_on(async move {
        let fast = Options {
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_millis(100),
            ..Options::default()
        };
        let watcher = Client::connect(&url, fast.clone()).await.unwrap();
        let mut watch = watcher.watch("w/n").await.unwrap();
        assert_eq!(next(&mut watch).await.kind, UpdateKind::Initial);
        let writer = Client::connect(&url, fast.clone()).await.unwrap();
        let writes = {
            let writer = writer.clone();
            tokio::spawn(async move {
                for i in 1..=N {
                    writer.set("w/n", Value::Int(i)).await.unwrap();
                }
            })
        };
        // Kill the server once some writes landed, let the writer queue
        // some offline, then start it again on the same port.
        let mut seen = Vec::new();
        while seen.len() < 10 {
            if let UpdateKind::Committed(_) = next(&mut watch).await.kind {
                seen.push(0);
            }
        }
        let (dir, addr) = tokio::task::spawn_blocking(move || server.kill())
            .await
            .unwrap();
        let mut states = writer.states();
        states
            .wait_for(|s| *s != ConnectionState::Connected)
            .await
            .unwrap();
        let server = tokio::task::spawn_blocking(move || Server::start_at(dir, &addr, &[]))
            .await
            .unwrap();
        writes.await.unwrap();
        // Every value once, in order, across the restart.
        let mut values = Vec::new();
        let mut watch_values = Vec::new();
        while values.last() != Some(&N) {
            let u = next(&mut watch).await;
            if let UpdateKind::Committed(changes) = &u.kind {
                for (_, v) in changes {
                    values.push(int(v));
                }
            }
            watch_values.push(u);
        }
        // The 10 seen before the kill were 1..=10 (writes are sequential).
        let all: Vec<i64> = (1..=10).chain(values.iter().copied()).collect();
        assert_eq!(all, (1..=N).collect::<Vec<_>>(), "{watch_values:?}");
        assert_eq!(writer.queued(), 0);
        drop(server);
    });
}

#[test]
fn writes_made_offline_are_sent_in_order_on_reconnect() {
    let server = Server::start(&[]);
    let url = server.url.clone();
    rt().block_on(async move {
        let opts = Options {
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_millis(50),
            max_queue: 50,
            ..Options::default()
        };
        let client = Client::connect(&url, opts).await.unwrap();
        let (dir, addr) = tokio::task::spawn_blocking(move || server.kill())
            .await
            .unwrap();
        client
            .states()
            .wait_for(|s| *s != ConnectionState::Connected)
            .await
            .unwrap();
        // Written in this order (join_all polls them in order, so each
        // is queued before the next).
        let answers = {
            let c = client.clone();
            tokio::spawn(async move {
                let writes = (0..50).map(|i| {
                    let c = c.clone();
                    async move { c.set("q/last", Value::Int(i)).await }
                });
                futures_util::future::join_all(writes).await
            })
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while client.queued() < 50 {
            assert!(Instant::now() < deadline);
            tokio::task::yield_now().await;
        }
        // The queue is bounded.
        assert!(matches!(
            client.set("q/over", Value::Int(1)).await,
            Err(tarn_client::Error::QueueFull { max: 50 })
        ));
        // The predicted value is the last write.
        let server = tokio::task::spawn_blocking(move || Server::start_at(dir, &addr, &[]))
            .await
            .unwrap();
        let times: Vec<_> = answers
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.unwrap())
            .collect();
        // Committed in the order written.
        let mut sorted = times.clone();
        sorted.sort();
        assert_eq!(times, sorted);
        assert_eq!(client.get("q/last").await.unwrap(), Value::Int(49));
        assert_eq!(client.queued(), 0);
        drop(server);
    });
}

#[test]
fn a_rejected_prediction_rolls_back_in_order_and_takes_its_dependents() {
    let server = Server::start(&[]);
    rt().block_on(async {
        let a = Client::connect(&server.url, Options::default())
            .await
            .unwrap();
        let b = Client::connect(&server.url, Options::default())
            .await
            .unwrap();
        a.set("x", Value::Int(1)).await.unwrap();
        let mut watch = a.watch("x").await.unwrap();
        assert_eq!(next(&mut watch).await.value, Value::Int(1));
        // A's transaction reads x = 1; B writes x = 2 before A commits,
        // so A's first attempt is rejected and rerun on x = 2.
        let attempts = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counter = attempts.clone();
        let b2 = b.clone();
        let result = a
            .transact(move |tx| {
                let b = b2.clone();
                let attempts = counter.clone();
                Box::pin(async move {
                    let x = int(&tx.get("x").await?);
                    if attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                        b.set("x", Value::Int(2)).await?;
                    }
                    tx.set("x", Value::Int(x * 100))?;
                    Ok(x)
                })
            })
            .await
            .unwrap();
        assert_eq!(result, 2);
        assert_eq!(attempts.load(std::sync::atomic::Ordering::SeqCst), 2);
        // The stream, in order: B's 2; A's prediction 100 (from the stale
        // read) then its rollback to 2; the rerun's prediction 200; its
        // commit and confirmation.
        let mut log = Vec::new();
        loop {
            let u = next(&mut watch).await;
            let done = matches!(u.kind, UpdateKind::Confirmed(_));
            log.push((u.kind.clone(), int(&u.value), u.predicted));
            if done {
                break;
            }
        }
        let shape: Vec<(&str, i64, bool)> = log
            .iter()
            .map(|(k, v, p)| {
                let k = match k {
                    UpdateKind::Committed(_) => "committed",
                    UpdateKind::Predicted(_) => "predicted",
                    UpdateKind::RolledBack { .. } => "rolled_back",
                    UpdateKind::Confirmed(_) => "confirmed",
                    _ => "other",
                };
                (k, *v, *p)
            })
            .collect();
        // B's change may land before or after A's prediction is shown.
        let ok_orders = [
            vec![
                ("committed", 2, false),
                ("predicted", 100, true),
                ("rolled_back", 2, false),
                ("predicted", 200, true),
                ("committed", 200, true),
                ("confirmed", 200, false),
            ],
            vec![
                ("predicted", 100, true),
                ("committed", 100, true),
                ("rolled_back", 2, false),
                ("predicted", 200, true),
                ("committed", 200, true),
                ("confirmed", 200, false),
            ],
        ];
        assert!(ok_orders.contains(&shape), "{log:?}");
    });
}

#[test]
fn a_read_of_a_predicted_value_depends_on_it() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let server = Server::start(&[]);
    rt().block_on(async {
        let a = Client::connect(&server.url, Options::default())
            .await
            .unwrap();
        let b = Client::connect(&server.url, Options::default())
            .await
            .unwrap();
        // T1 reads p, B overwrites p, T1 writes q = 10 * p: T1's first
        // attempt is rejected. T2 reads q meanwhile and writes r = q + 1.
        // If T2 read T1's predicted q = 10, it depends on T1 and must be
        // rejected with it: r = 11 must never commit. Repeated until T2
        // has read a prediction at least once: whether T2's read is
        // answered before T1's rejection arrives is a race, so this runs
        // many rounds (each a few milliseconds) until it has happened.
        let mut exercised = 0;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        for round in 0..1000 {
            if std::time::Instant::now() > deadline {
                break;
            }
            let (p, q, r) = (
                format!("d{round}/p"),
                format!("d{round}/q"),
                format!("d{round}/r"),
            );
            a.set(&p, Value::Int(1)).await.unwrap();
            let gate = Arc::new(tokio::sync::Notify::new());
            let proceed = Arc::new(tokio::sync::Notify::new());
            let first = Arc::new(AtomicBool::new(true));
            let t1 = {
                let (a, b, gate, proceed, first) = (
                    a.clone(),
                    b.clone(),
                    gate.clone(),
                    proceed.clone(),
                    first.clone(),
                );
                let (p, q) = (p.clone(), q.clone());
                tokio::spawn(async move {
                    a.transact(move |tx| {
                        let (b, gate, proceed, first) =
                            (b.clone(), gate.clone(), proceed.clone(), first.clone());
                        let (p, q) = (p.clone(), q.clone());
                        Box::pin(async move {
                            let v = int(&tx.get(&p).await?);
                            let once = first.swap(false, Ordering::SeqCst);
                            if once {
                                b.set(&p, Value::Int(2)).await?;
                            }
                            tx.set(&q, Value::Int(v * 10))?;
                            if once {
                                // T2 sends its read first; T1's commit
                                // follows, so its rejection comes back
                                // at least a round trip after T2's answer.
                                gate.notify_one();
                                proceed.notified().await;
                            }
                            Ok(())
                        })
                    })
                    .await
                })
            };
            gate.notified().await;
            let reads = Arc::new(std::sync::Mutex::new(Vec::new()));
            let t2 = {
                let reads = reads.clone();
                let (q, r) = (q.clone(), r.clone());
                a.transact(move |tx| {
                    let reads = reads.clone();
                    let (q, r) = (q.clone(), r.clone());
                    Box::pin(async move {
                        let v = int(&tx.get(&q).await?);
                        reads.lock().unwrap().push(v);
                        tx.set(&r, Value::Int(v + 1))?;
                        Ok(())
                    })
                })
            };
            let mut t2 = Box::pin(t2);
            // The first poll queues T2's read of q; then T1 commits.
            let polled = futures_util::poll!(t2.as_mut());
            assert!(polled.is_pending(), "T2 waits for its read");
            proceed.notify_one();
            t2.await.unwrap();
            t1.await.unwrap().unwrap();
            let reads = reads.lock().unwrap().clone();
            let r = a.get(&r).await.unwrap();
            assert_ne!(
                r,
                Value::Int(11),
                "a read of a rejected prediction committed: {reads:?}"
            );
            assert_eq!(a.get(&q).await.unwrap(), Value::Int(20));
            if reads.first() == Some(&10) {
                assert!(reads.len() >= 2, "rejected with its dependency, then rerun");
                exercised += 1;
                if exercised >= 3 {
                    break;
                }
            }
        }
        assert!(exercised > 0, "T2 never read T1's prediction");
    });
}
