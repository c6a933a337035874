//! `recovery`: how long a server takes, after a crash (SIGKILL), to come
//! back with a given amount of data: from starting the process to the
//! first read of the last key written answering with its value.
//!
//! Both systems are loaded through their own protocol with the same keys
//! and 1,000-byte values (tarn: pipelined commits, `sync = batch(2)`;
//! redis: pipelined SETs with its append-only file synced every second,
//! redis' defaults otherwise, so it rewrites the file as it grows, with an
//! RDB preamble). A graceful restart after loading lets both finish
//! writing what they hold in memory; the timed restarts follow kills.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use tarn_proto::{Request, WireValue, WireWrite};

use super::peers::{Server, System};
use super::resp;
use crate::bench_server::Until;

/// Bytes of each value.
pub const VALUE_BYTES: usize = 1_000;
/// Loader connections per system.
const CONNS: usize = 8;

/// The keys and values of the recovery data set: `keys_per_conn` keys per
/// loader connection.
#[derive(Clone, Copy, Debug)]
pub struct DataSet {
    pub keys_per_conn: u64,
}

impl DataSet {
    /// About `bytes` of values.
    pub fn of_bytes(bytes: u64) -> DataSet {
        DataSet {
            keys_per_conn: (bytes / VALUE_BYTES as u64 / CONNS as u64).max(1),
        }
    }

    pub fn keys(self) -> u64 {
        self.keys_per_conn * CONNS as u64
    }

    /// Bytes of keys and values.
    pub fn bytes(self) -> u64 {
        self.keys() * (VALUE_BYTES as u64 + 10)
    }

    /// Key `i`'s value: `VALUE_BYTES` pseudo-random characters of a
    /// 64-letter alphabet (splitmix64 seeded by `i`). Random, so neither
    /// system can shrink it by compression (redis compresses strings in
    /// its RDB preamble; zero-padded numbers would shrink 25-fold).
    fn value(i: u64) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut state = i;
        let mut out = String::with_capacity(VALUE_BYTES);
        while out.len() < VALUE_BYTES {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            for k in 0..10 {
                if out.len() < VALUE_BYTES {
                    out.push(ALPHABET[((z >> (6 * k)) & 63) as usize] as char);
                }
            }
        }
        out
    }

    fn last(self) -> (usize, u64) {
        (CONNS - 1, self.keys_per_conn - 1)
    }
}

/// Loads the data set into a running server.
pub async fn load(system: System, port: u16, set: DataSet) -> Result<()> {
    let until = Until::Count(set.keys_per_conn);
    match system {
        System::Tarn => {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            crate::bench_server::pipelined(addr, CONNS, until, |c, i| Request::Commit {
                client: None,
                seq: None,
                depends_on: vec![],
                retry: false,
                id: i,
                reads: vec![],
                writes: vec![WireWrite::Set {
                    path: format!("r/c{c}/k{i}"),
                    value: WireValue(tarn_core::Value::String(DataSet::value(i).into())),
                }],
            })
            .await?;
        }
        System::Redis => {
            resp::pipelined(port, CONNS, until, |c, i, out| {
                resp::encode_set(
                    format!("r:c{c}:k{i}").as_bytes(),
                    DataSet::value(i).as_bytes(),
                    out,
                )
            })
            .await?;
        }
        other => bail!("recovery does not run on {}", other.name()),
    }
    Ok(())
}

/// Whether the server answers a read of the last key with its value.
async fn last_key_reads(system: System, port: u16, set: DataSet) -> bool {
    let (c, i) = set.last();
    let want = DataSet::value(i);
    match system {
        System::Tarn => {
            let url = format!("http://127.0.0.1:{port}/v1/data/r/c{c}/k{i}");
            match reqwest::get(&url).await {
                Ok(r) if r.status().is_success() => {
                    r.text().await.is_ok_and(|body| body.contains(&want))
                }
                _ => false,
            }
        }
        System::Redis => {
            let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}/")) else {
                return false;
            };
            let Ok(mut con) = client.get_multiplexed_async_connection().await else {
                return false;
            };
            // While loading, redis answers -LOADING.
            redis::cmd("GET")
                .arg(format!("r:c{c}:k{i}"))
                .query_async::<Option<String>>(&mut con)
                .await
                .is_ok_and(|v| v.as_deref() == Some(want.as_str()))
        }
        _ => false,
    }
}

/// Waits until the server's files stop changing (names and sizes the
/// same over 1.5 s): tarn's archiver and redis' AOF rewrite are done, so
/// each timed restart starts from the same settled files. Gives up after
/// 5 minutes, saying so.
pub fn wait_settled(server: &mut Server) -> Result<()> {
    fn listing(dir: &std::path::Path, out: &mut Vec<(String, u64)>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = e.path();
            match e.metadata() {
                Ok(m) if m.is_dir() => listing(&path, out),
                Ok(m) if !path.ends_with("server.log") => {
                    out.push((path.to_string_lossy().into_owned(), m.len()))
                }
                _ => {}
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    let (mut last, mut same) = (Vec::new(), 0);
    while same < 3 {
        server.check_alive()?;
        if Instant::now() > deadline {
            eprintln!(
                "{}: its files still change after 5 minutes; restarting anyway",
                server.system.name()
            );
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(500));
        let mut now = Vec::new();
        listing(&server.dir, &mut now);
        now.sort();
        same = if now == last { same + 1 } else { 0 };
        last = now;
    }
    Ok(())
}

/// Starts the (stopped) server and times until the last key reads back.
pub fn restart(
    rt: &tokio::runtime::Runtime,
    server: &mut Server,
    set: DataSet,
) -> Result<Duration> {
    let start = Instant::now();
    server.launch()?;
    let deadline = start + Duration::from_secs(1800);
    loop {
        if rt.block_on(last_key_reads(server.system, server.port, set)) {
            return Ok(start.elapsed());
        }
        server.check_alive()?;
        if Instant::now() > deadline {
            bail!("{} did not recover within 30 minutes", server.system.name());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}
