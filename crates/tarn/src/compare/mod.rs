//! `tarn bench compare`: tarn and its peers (Debian's redis-server, etcd,
//! nats-server, PostgreSQL) measured in the same run, on this machine,
//! each figure the median of alternating runs (tarn, peer, tarn, peer,
//! ...), printed as `compare.<figure>.<system> <value> <unit>` and
//! `compare.<figure>.ratio <tarn/peer> x` lines (`ratio_<peer>` when a
//! figure has several peers), and written to `bench-results/compare.md`
//! with a plot of the latency distributions.
//!
//! | workload | tarn | peers |
//! |---|---|---|
//! | `sets`: single-key writes, 8 connections, pipelined | `sync = batch(2)` | redis SET, AOF `everysec` |
//! | `durable_txn`: read 2 keys, write both, 32 clients | `sync = always` | etcd txn, PostgreSQL SERIALIZABLE, `synchronous_commit=on` |
//! | `fanout`: 1 writer, 1,000 and 10,000 subscribers | watch | redis pub/sub, NATS core |
//! | `watch_latency`: 1 writer, 1 subscriber | watch | etcd watch, redis keyspace notifications |
//! | `recovery`: restart after SIGKILL with 1 GiB | WAL + archives | redis AOF |

pub mod etcd;
pub(crate) mod peers;
mod recovery;
mod report;
mod resp;
mod workloads;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::ValueEnum;
use indicatif::{ProgressBar, ProgressStyle};

use peers::{Server, Settings, System};
use report::{Dist, Figure, Report};
use workloads::Topic;

/// A workload of `tarn bench compare`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    Sets,
    DurableTxn,
    Fanout,
    WatchLatency,
    Recovery,
    Functions,
}

/// What `tarn bench compare` runs.
#[derive(Clone, Debug)]
pub struct Options {
    pub quick: bool,
    /// Alternating runs per figure (at least 5 for figures to quote).
    pub runs: usize,
    /// Length of each run of `sets` and `durable_txn`.
    pub duration: Duration,
    /// Data loaded for `recovery`.
    pub recovery_bytes: u64,
    /// Workloads to run (empty: all).
    pub only: Vec<Workload>,
    /// Where the report goes.
    pub out: PathBuf,
    /// Run tarn under `perf record`, one profile per workload in
    /// `<out>/raw/perf-<workload>.data`.
    pub perf: bool,
    /// The command line, for the report.
    pub command: String,
}

impl Options {
    fn fanout_sizes(&self) -> [usize; 2] {
        if self.quick {
            [100, 1_000]
        } else {
            [1_000, 10_000]
        }
    }

    fn fanout_writes(&self) -> usize {
        if self.quick { 10 } else { 20 }
    }

    fn watch_writes(&self) -> usize {
        if self.quick { 50 } else { 200 }
    }

    fn perf_to(&self, workload: &str) -> Result<Option<PathBuf>> {
        if !self.perf {
            return Ok(None);
        }
        let raw = self.out.join("raw");
        std::fs::create_dir_all(&raw)?;
        Ok(Some(std::path::absolute(
            raw.join(format!("perf-{workload}.data")),
        )?))
    }
}

/// Runs the comparison and writes the report.
pub fn run(o: Options) -> Result<()> {
    raise_open_files_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut report = Report {
        command: o.command.clone(),
        commit: report::first_line("git", &["describe", "--always", "--dirty"]),
        runs: o.runs,
        ..Default::default()
    };
    // Every server's data goes under the temp dir: on tmpfs, fsync does
    // nothing and the durable figures would mean nothing.
    let tmp = std::env::temp_dir();
    if let Ok(fs) = nix::sys::statfs::statfs(&tmp)
        && fs.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC
    {
        anyhow::bail!(
            "{} is a tmpfs, where fsync does nothing: set TMPDIR to a directory on the disk to measure",
            tmp.display()
        );
    }
    report.notes.push(format!(
        "Every server's data lived under {}.",
        tmp.display()
    ));
    let mut installed = vec![];
    for s in System::ALL {
        match s.locate() {
            Ok(_) => installed.push(s),
            Err(e) => {
                eprintln!("skipping {}: {e:#}", s.name());
                report
                    .notes
                    .push(format!("{} was not measured: {e:#}.", s.name()));
            }
        }
    }
    let all = [
        Workload::Sets,
        Workload::DurableTxn,
        Workload::Fanout,
        Workload::WatchLatency,
        Workload::Recovery,
        Workload::Functions,
    ];
    let selected: Vec<Workload> = all
        .into_iter()
        .filter(|w| o.only.is_empty() || o.only.contains(w))
        .collect();
    let mut c = Compare {
        o: &o,
        cpu_notes: vec![],
        rt: &rt,
        report: &mut report,
        installed,
    };
    let mut failed = Ok(());
    for w in selected {
        let done = match w {
            Workload::Sets => c.sets(),
            Workload::DurableTxn => c.durable_txn(),
            Workload::Fanout => c.fanout(),
            Workload::WatchLatency => c.watch_latency(),
            Workload::Recovery => c.recovery(),
            Workload::Functions => c.functions(),
        };
        // The figures measured so far are still written.
        if let Err(e) = done {
            c.report
                .notes
                .push(format!("The run stopped at {w:?}: {e:#}"));
            failed = Err(e);
            break;
        }
    }
    if !c.cpu_notes.is_empty() {
        let cpu = c.cpu_notes.join("; ");
        c.report.notes.push(format!(
            "CPU time per run, each system's server (with its child processes; under \
             --perf, perf's own time too) and this process generating the load: {cpu}."
        ));
    }
    report.write(&o.out)?;
    failed
}

/// Lifts the soft limit on open files to the hard one: 10,000 subscribers
/// need as many sockets here, and as many in the server (children inherit
/// the limit).
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

struct Compare<'a> {
    o: &'a Options,
    /// CPU seconds per run of each system's server and of the load, by
    /// workload.
    cpu_notes: Vec<String>,
    rt: &'a tokio::runtime::Runtime,
    report: &'a mut Report,
    installed: Vec<System>,
}

/// Each system's per-run results, in run order.
type Runs<T> = BTreeMap<System, Vec<T>>;

impl Compare<'_> {
    /// tarn with `wal.sync = sync`, under `perf record` with `--perf`.
    fn tarn(&self, sync: &'static str, workload: &str) -> Result<(System, Settings)> {
        Ok((
            System::Tarn,
            Settings {
                tarn_sync: Some(sync),
                perf_to: self.o.perf_to(workload)?,
                ..Default::default()
            },
        ))
    }

    /// Starts the installed ones of `wanted` (tarn first); None when tarn
    /// or every peer is missing.
    fn start(
        &mut self,
        workload: &str,
        wanted: &[(System, Settings)],
    ) -> Result<Option<Vec<Server>>> {
        let present: Vec<&(System, Settings)> = wanted
            .iter()
            .filter(|(s, _)| self.installed.contains(s))
            .collect();
        if present.len() < 2 || present[0].0 != System::Tarn {
            eprintln!("skipping {workload}: no peer installed (scripts/bench-deps.sh)");
            return Ok(None);
        }
        eprintln!(
            "\n== {workload}: {}",
            present
                .iter()
                .map(|(s, _)| s.name())
                .collect::<Vec<_>>()
                .join(" vs ")
        );
        let mut servers = vec![];
        for (s, settings) in present {
            servers.push(Server::start(*s, settings)?);
            if !self.report.systems.contains(s) {
                self.report.systems.push(*s);
            }
        }
        Ok(Some(servers))
    }

    /// `runs` rounds of `f` on each server in turn; a progress bar counts
    /// them.
    fn alternate<T>(
        &mut self,
        what: &str,
        servers: &mut [Server],
        mut f: impl FnMut(&mut Server) -> Result<T>,
    ) -> Result<Runs<T>> {
        let bar = ProgressBar::new((self.o.runs * servers.len()) as u64);
        bar.set_style(
            ProgressStyle::with_template("{prefix:>14} [{bar:30}] {pos}/{len} {msg}")?
                .progress_chars("=> "),
        );
        bar.set_prefix(what.to_string());
        let mut out: Runs<T> = BTreeMap::new();
        // CPU seconds of each system's server and of this process (the
        // load) over its runs.
        let mut cpu: BTreeMap<System, (f64, f64)> = BTreeMap::new();
        for round in 1..=self.o.runs {
            // Each round starts with the next system, so none always
            // follows the same one (and inherits its background work).
            let n = servers.len();
            servers.rotate_left(usize::from(round > 1) % n.max(1));
            for server in servers.iter_mut() {
                bar.set_message(format!("run {round}: {}", server.system.name()));
                let (server_before, load_before) =
                    (server.cpu_secs(), peers::cpu_secs("/proc/self/stat"));
                let result = f(server);
                if result.is_err() {
                    server.check_alive()?;
                }
                let c = cpu.entry(server.system).or_default();
                // (A server restarted within the run starts from 0.)
                c.0 += (server.cpu_secs() - server_before).max(0.0);
                c.1 += peers::cpu_secs("/proc/self/stat") - load_before;
                out.entry(server.system).or_default().push(result?);
                bar.inc(1);
            }
        }
        bar.finish_and_clear();
        let runs = self.o.runs as f64;
        if what == "recovery" {
            // Restarts replace the server process: no per-run figure.
            return Ok(out);
        }
        self.cpu_notes.push(format!(
            "{what}: {}",
            cpu.iter()
                .map(|(s, (server, load))| format!(
                    "{} {:.2} s server + {:.2} s load",
                    s.name(),
                    server / runs,
                    load / runs
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        Ok(out)
    }

    fn sets(&mut self) -> Result<()> {
        let Some(mut servers) = self.start(
            "sets",
            &[
                self.tarn("batch(2)", "sets")?,
                (
                    System::Redis,
                    Settings {
                        redis_aof: true,
                        ..Default::default()
                    },
                ),
            ],
        )?
        else {
            return Ok(());
        };
        let (rt, duration) = (self.rt, self.o.duration);
        let runs = self.alternate("sets", &mut servers, |s| {
            rt.block_on(workloads::sets(s.system, s.port, duration))
        })?;
        self.report.add(Figure {
            name: "sets".into(),
            unit: "sets/s",
            higher_is_better: true,
            runs: runs.into_iter().collect(),
            goals: vec![(System::Redis, 0.67)],
        });
        self.report.notes.push(
            "sets: 8 connections, each with 256 writes in flight sent 16 per frame (tarn: \
             MessagePack over WebSocket, `sync = batch(2)`, acknowledged once fsynced; \
             redis: RESP, `appendonly yes`, `appendfsync everysec`, acknowledged before \
             its fsync)."
                .into(),
        );
        Ok(())
    }

    fn durable_txn(&mut self) -> Result<()> {
        self.txn_workload(false)
    }

    fn functions(&mut self) -> Result<()> {
        self.txn_workload(true)
    }

    /// `durable_txn`, or with `tarn_fn` `functions`: the same load, tarn's
    /// transaction a server-function call.
    fn txn_workload(&mut self, tarn_fn: bool) -> Result<()> {
        let name = if tarn_fn { "functions" } else { "durable_txn" };
        let Some(mut servers) = self.start(
            name,
            &[
                self.tarn("always", name)?,
                (System::Etcd, Settings::default()),
                (System::Postgres, Settings::default()),
            ],
        )?
        else {
            return Ok(());
        };
        for s in &servers {
            if tarn_fn {
                self.rt
                    .block_on(workloads::functions_setup(s.system, s.port))?;
            } else {
                self.rt.block_on(workloads::txn_setup(s.system, s.port))?;
            }
        }
        let (rt, duration) = (self.rt, self.o.duration);
        let runs = self.alternate(name, &mut servers, |s| {
            if tarn_fn {
                rt.block_on(workloads::functions(s.system, s.port, duration))
            } else {
                rt.block_on(workloads::durable_txn(s.system, s.port, duration))
            }
        })?;
        let mut dist = Dist {
            title: format!(
                "{name}: read-modify-write of 2 keys, {} clients{}",
                workloads::TXN_CLIENTS,
                if tarn_fn {
                    " (tarn: one server-function call)"
                } else {
                    ""
                }
            ),
            series: vec![],
        };
        let (mut rates, mut p99s, mut retries) = (vec![], vec![], vec![]);
        for (system, rs) in runs {
            rates.push((system, rs.iter().map(|r| r.per_sec).collect()));
            p99s.push((
                system,
                rs.iter().map(|r| quantile(&r.latencies_ms, 0.99)).collect(),
            ));
            let (r, n): (u64, usize) = rs.iter().fold((0, 0), |(r, n), run| {
                (r + run.retries, n + run.latencies_ms.len())
            });
            retries.push(format!("{} {r} in {n}", system.name()));
            dist.series.push((
                system,
                rs.into_iter().flat_map(|r| r.latencies_ms).collect(),
            ));
        }
        self.report.add(Figure {
            name: name.into(),
            unit: "txn/s",
            higher_is_better: true,
            runs: rates,
            goals: if tarn_fn {
                vec![]
            } else {
                vec![(System::Etcd, 10.0), (System::Postgres, 3.0)]
            },
        });
        self.report.add(Figure {
            name: format!("{name}_p99"),
            unit: "ms",
            higher_is_better: false,
            runs: p99s,
            goals: vec![],
        });
        self.report.dists.push(dist);
        if tarn_fn {
            self.report.notes.push(format!(
                "functions: durable_txn's load with tarn's transaction as one call of a server \
                 function (`rmw`: 2 `ctx.get`s, 2 `ctx.set`s), sent over tarn-client's \
                 WebSocket, run, committed (`sync = always`) and rerun on conflict by the \
                 server, answered once durable: one round trip instead of two. etcd and \
                 PostgreSQL run their durable_txn clients again. Reruns and retries, all \
                 runs: {}.",
                retries.join(", ")
            ));
        } else {
            self.report.notes.push(format!(
                "durable_txn: {} clients, each its own connection, each transaction reading 2 \
                 of {} keys and writing both incremented, retried on conflict; every commit \
                 fsynced before it is acknowledged (tarn `sync = always` through tarn-client's \
                 `transact`: `get_all` of both keys in one round trip, then the commit; etcd: one txn of 2 serializable reads, \
                 then a txn comparing both mod revisions; PostgreSQL: BEGIN ISOLATION LEVEL \
                 SERIALIZABLE, SELECT, 2 UPDATEs, COMMIT, `synchronous_commit = on`). Retried \
                 attempts, all runs: {}.",
                workloads::TXN_CLIENTS,
                workloads::TXN_KEYS,
                retries.join(", ")
            ));
        }
        Ok(())
    }

    fn fanout(&mut self) -> Result<()> {
        let Some(mut servers) = self.start(
            "fanout",
            &[
                self.tarn("always", "fanout")?,
                (System::Redis, Settings::default()),
                (System::Nats, Settings::default()),
            ],
        )?
        else {
            return Ok(());
        };
        let writes = self.o.fanout_writes();
        for n in self.o.fanout_sizes() {
            let name = format!("fanout_{}", count_name(n));
            let rt = self.rt;
            let runs = self.alternate(&name, &mut servers, |s| {
                rt.block_on(workloads::delivery(
                    s.system,
                    s.port,
                    Topic::Fanout,
                    n,
                    writes,
                ))
            })?;
            self.latency_figures(
                &name,
                format!("fanout: 1 writer, {n} subscribers (write to delivery)"),
                runs,
                &[(System::Redis, 1.0)],
            );
        }
        self.report.notes.push(format!(
            "fanout: each subscriber its own connection; {writes} writes per run, each \
             after the previous reached every subscriber; latency from sending the write to \
             each subscriber receiving it (tarn: a watch of one path, the write a commit \
             with `sync = always`, delivered once fsynced; redis: PUBLISH, no \
             persistence; NATS: core publish, no persistence)."
        ));
        Ok(())
    }

    fn watch_latency(&mut self) -> Result<()> {
        let Some(mut servers) = self.start(
            "watch_latency",
            &[
                self.tarn("always", "watch_latency")?,
                (System::Etcd, Settings::default()),
                (
                    System::Redis,
                    Settings {
                        redis_aof: true,
                        redis_notify: true,
                        ..Default::default()
                    },
                ),
            ],
        )?
        else {
            return Ok(());
        };
        let (rt, writes) = (self.rt, self.o.watch_writes());
        let runs = self.alternate("watch_latency", &mut servers, |s| {
            rt.block_on(workloads::delivery(
                s.system,
                s.port,
                Topic::Watch,
                1,
                writes,
            ))
        })?;
        self.latency_figures(
            "watch_latency",
            "watch_latency: 1 writer, 1 subscriber (write to notification)".into(),
            runs,
            &[],
        );
        self.report.notes.push(format!(
            "watch_latency: {writes} writes per run, one at a time; latency from sending a \
             write of one key to its watcher's notification (tarn: watch, `sync = always` \
             (each write fsynced before it is shown, as etcd), `tick_ms = 5` (which \
             holds updates only while they pile up); etcd: Watch stream, each put \
             fsynced; redis: keyspace notifications (`notify-keyspace-events \
             K$`), AOF `everysec`)."
        ));
        Ok(())
    }

    /// p50 and p99 figures (median over runs of each run's quantile) and
    /// the distribution of all samples.
    fn latency_figures(
        &mut self,
        name: &str,
        title: String,
        runs: Runs<Vec<f64>>,
        p99_goals: &[(System, f64)],
    ) {
        let per_run = |q: f64| {
            runs.iter()
                .map(|(s, rs)| (*s, rs.iter().map(|r| quantile(r, q)).collect()))
                .collect::<Vec<_>>()
        };
        for (q, suffix, goals) in [(0.5, "p50", &[][..]), (0.99, "p99", p99_goals)] {
            self.report.add(Figure {
                name: format!("{name}_{suffix}"),
                unit: "ms",
                higher_is_better: false,
                runs: per_run(q),
                goals: goals.to_vec(),
            });
        }
        self.report.dists.push(Dist {
            title,
            series: runs
                .into_iter()
                .map(|(s, rs)| (s, rs.into_iter().flatten().collect()))
                .collect(),
        });
    }

    fn recovery(&mut self) -> Result<()> {
        let Some(mut servers) = self.start(
            "recovery",
            &[
                (System::Tarn, Settings::default()),
                (
                    System::Redis,
                    Settings {
                        redis_aof: true,
                        ..Default::default()
                    },
                ),
            ],
        )?
        else {
            return Ok(());
        };
        let set = recovery::DataSet::of_bytes(self.o.recovery_bytes);
        let mib = set.bytes() as f64 / (1024.0 * 1024.0);
        let mut sizes = vec![];
        for s in &mut servers {
            let bar = ProgressBar::new_spinner();
            bar.enable_steady_tick(Duration::from_millis(200));
            bar.set_message(format!(
                "loading {} keys ({mib:.0} MiB) into {}",
                set.keys(),
                s.system.name()
            ));
            let start = std::time::Instant::now();
            self.rt.block_on(recovery::load(s.system, s.port, set))?;
            bar.finish_and_clear();
            eprintln!(
                "loaded {mib:.0} MiB into {} in {:.1} s",
                s.system.name(),
                start.elapsed().as_secs_f64()
            );
            // A graceful restart: each finishes writing what it holds,
            // then settles (archiving, AOF rewrite).
            s.stop();
            recovery::restart(self.rt, s, set)?;
            recovery::wait_settled(s)?;
            sizes.push(format!(
                "{} {:.0} MiB",
                s.system.name(),
                s.disk_bytes() as f64 / (1024.0 * 1024.0)
            ));
        }
        let rt = self.rt;
        let runs = self.alternate("recovery", &mut servers, |s| {
            s.kill();
            let took = recovery::restart(rt, s, set)?;
            recovery::wait_settled(s)?;
            Ok(took.as_secs_f64())
        })?;
        let secs: Vec<(System, Vec<f64>)> = runs.into_iter().collect();
        self.report.add(Figure {
            name: "recovery".into(),
            unit: "MiB/s",
            higher_is_better: true,
            runs: secs
                .iter()
                .map(|(s, v)| (*s, v.iter().map(|t| mib / t).collect()))
                .collect(),
            goals: vec![(System::Redis, 1.0)],
        });
        self.report.add(Figure {
            name: "recovery_secs".into(),
            unit: "s",
            higher_is_better: false,
            runs: secs,
            goals: vec![],
        });
        self.report.notes.push(format!(
            "recovery: {} keys of {} bytes ({mib:.0} MiB of keys and values) loaded through \
             each protocol, a graceful restart, waiting until its files stop changing \
             (archiving, AOF rewrite), then per run a SIGKILL and a restart timed \
             from starting the process to the first read of the last key written answering \
             its value; files in the page cache. On disk: {}. tarn: WAL segments and \
             archives, `sync = batch(2)`; redis: AOF `everysec` with its default rewrites \
             (RDB preamble).",
            set.keys(),
            recovery::VALUE_BYTES,
            sizes.join(", ")
        ));
        Ok(())
    }
}

/// The `q` quantile of unsorted samples (0 when empty).
fn quantile(samples: &[f64], q: f64) -> f64 {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return 0.0;
    }
    s[((s.len() - 1) as f64 * q).round() as usize]
}

/// 1000 → "1k", 10000 → "10k", 100 → "100".
fn count_name(n: usize) -> String {
    if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_names() {
        assert_eq!(quantile(&[], 0.5), 0.0);
        assert_eq!(quantile(&[3.0, 1.0, 2.0], 0.5), 2.0);
        assert_eq!(quantile(&[3.0, 1.0, 2.0], 0.99), 3.0);
        assert_eq!(count_name(10_000), "10k");
        assert_eq!(count_name(100), "100");
        let median = crate::bench_server::median;
        assert_eq!(median(vec![]), 0.0);
        assert_eq!(median(vec![5.0, 1.0, 3.0]), 3.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
    }
}
