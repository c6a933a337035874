//! The runner: a real tarn server in a child process on a free loopback
//! port and a temp dir, client processes driving a workload through
//! `tarn-client`, subscribers, and a nemesis injecting faults; then a
//! kill -9 and recovery, the final read, and the checks.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tarn_client::{Client, Options};
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};

use crate::check::{CheckOptions, Report};
use crate::history::{History, Outcome, Recorder, Workload};
use crate::watches::{self, Log, WatchReport};
use crate::workload::{self, Generator, Shared};

/// A fault the nemesis injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// SIGKILL the server, then start it again on the same data.
    Kill,
    /// SIGSTOP the server for a while, then SIGCONT.
    Pause,
    /// SIGTERM the server (graceful), then start it again.
    Restart,
    /// Make some clients slow: they pause inside their transactions.
    Slow,
}

impl Fault {
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Pause => "pause",
            Fault::Restart => "restart",
            Fault::Slow => "slow",
        }
    }
}

/// How to run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The workload.
    pub workload: Workload,
    /// Client processes issuing transactions.
    pub clients: usize,
    /// Subscribers watching every key.
    pub subscribers: usize,
    /// How long clients issue transactions.
    pub duration: Duration,
    /// Faults to inject (none: a fault-free run).
    pub faults: Vec<Fault>,
    /// Mean time between faults.
    pub fault_interval: Duration,
    /// Seeds the generators and the nemesis.
    pub seed: u64,
    /// The server: a `tarn` binary (run as `BIN serve ...`); `None` runs
    /// this program's own `serve`, the same server code.
    pub server_bin: Option<PathBuf>,
    /// Where the server keeps its data; `None`: a fresh temp dir.
    pub data_dir: Option<PathBuf>,
    /// The longest a transaction may take before it is recorded `info`.
    pub op_timeout: Duration,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Run each transaction as one call of a server function (the module
    /// [`workload::MODULE`], deployed at the start) instead of a
    /// tarn-client transaction: the server runs, commits and reruns it,
    /// and answers each call id once.
    pub functions: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            workload: Workload::ListAppend,
            clients: 16,
            subscribers: 2,
            duration: Duration::from_secs(60),
            faults: vec![Fault::Kill, Fault::Pause, Fault::Restart, Fault::Slow],
            fault_interval: Duration::from_secs(3),
            seed: 1,
            server_bin: None,
            data_dir: None,
            op_timeout: Duration::from_secs(20),
            progress: false,
            functions: false,
        }
    }
}

/// What a run found.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    /// The checker's verdict on the history.
    pub report: Report,
    /// The watch checker's verdict.
    pub watches: WatchReport,
    /// Faults injected, by kind.
    pub faults: BTreeMap<Fault, usize>,
    /// Transactions that ended with an error that shows a bug (a value of
    /// the wrong shape, an internal error), explained.
    pub errors: Vec<String>,
    /// The history checked.
    #[serde(skip)]
    pub history: History,
}

impl RunReport {
    /// Anomalies of every kind: history, watches and unexpected errors.
    pub fn anomalies(&self) -> usize {
        self.report.anomalies() + self.watches.anomalies() + self.errors.len()
    }

    /// The `verify.*` lines.
    pub fn lines(&self) -> Vec<String> {
        let faults: usize = self.faults.values().sum();
        let by_kind: Vec<String> = self
            .faults
            .iter()
            .map(|(f, n)| format!("{} {n}", f.name()))
            .collect();
        vec![
            format!("verify.ops {}", self.report.ops),
            format!("verify.ok {}", self.report.ok),
            format!("verify.fail {}", self.report.fail),
            format!("verify.info {}", self.report.info),
            format!("verify.faults {faults} ({})", by_kind.join(", ")),
            format!("verify.watch_updates {}", self.watches.updates),
            format!("verify.watch_resyncs {}", self.watches.resyncs),
            format!("verify.watch_anomalies {}", self.watches.anomalies()),
            format!("verify.lost_acked {}", self.report.lost_acked()),
            format!("verify.anomalies {}", self.anomalies()),
        ]
    }
}

/// The server under test, as a child process.
struct Server {
    program: PathBuf,
    prefix: Vec<String>,
    data: PathBuf,
    addr: SocketAddr,
    log: PathBuf,
    child: Option<Child>,
}

impl Server {
    async fn start(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log)
                .with_context(|| format!("opening {}", self.log.display()))?;
            let mut child = Command::new(&self.program)
                .args(&self.prefix)
                .arg("serve")
                .arg("--data")
                .arg(&self.data)
                .arg("--listen")
                .arg(self.addr.to_string())
                .stdout(std::process::Stdio::piped())
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting {}", self.program.display()))?;
            let stdout = child.stdout.take().context("server stdout")?;
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            let ready = tokio::time::timeout_at(deadline.into(), async {
                while let Ok(Some(line)) = lines.next_line().await {
                    if line.contains("listening on") {
                        return true;
                    }
                }
                false
            })
            .await;
            if ready == Ok(true) {
                // Keep draining stdout so the server never blocks on it.
                tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
                self.child = Some(child);
                return Ok(());
            }
            let _ = child.kill().await;
            anyhow::ensure!(
                Instant::now() < deadline,
                "the server did not start listening on {} within 30 s; see {}",
                self.addr,
                self.log.display()
            );
            // The port may still be held by the previous process: retry.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn pid(&self) -> Option<Pid> {
        self.child
            .as_ref()
            .and_then(Child::id)
            .and_then(|id| i32::try_from(id).ok())
            .map(Pid::from_raw)
    }

    fn signal(&self, signal: Signal) -> Result<()> {
        if let Some(pid) = self.pid() {
            kill(pid, signal).with_context(|| format!("sending {signal} to the server"))?;
        }
        Ok(())
    }

    async fn kill9(&mut self) -> Result<()> {
        self.signal(Signal::SIGCONT)?;
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
        Ok(())
    }

    async fn stop(&mut self) -> Result<()> {
        self.signal(Signal::SIGCONT)?;
        self.signal(Signal::SIGTERM)?;
        if let Some(mut child) = self.child.take()
            && tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .is_err()
        {
            let _ = child.kill().await;
            anyhow::bail!(
                "the server did not stop within 10 s of SIGTERM; see {}",
                self.log.display()
            );
        }
        Ok(())
    }
}

fn client_options() -> Options {
    Options {
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(500),
        connect_timeout: Duration::from_secs(30),
        ping_interval: Duration::from_secs(2),
        ..Options::default()
    }
}

/// Runs the workload against a fresh server, with faults, then checks.
pub async fn run(options: RunOptions) -> Result<RunReport> {
    let temp = tempfile::tempdir().context("creating a temp dir")?;
    let data = options
        .data_dir
        .clone()
        .unwrap_or_else(|| temp.path().join("data"));
    // The checker knows only the values this run wrote.
    if std::fs::read_dir(&data).is_ok_and(|mut d| d.next().is_some()) {
        anyhow::bail!(
            "{} is not empty; the runner needs a fresh data directory",
            data.display()
        );
    }
    let (program, prefix) = match &options.server_bin {
        Some(bin) => (bin.clone(), Vec::new()),
        None => (
            std::env::current_exe().context("finding this program to run its server")?,
            Vec::new(),
        ),
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut server = Server {
        program,
        prefix,
        data,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        log: temp.path().join("server.log"),
        child: None,
    };
    server.start().await?;
    let url = format!("ws://{}/v1/ws", server.addr);
    let deployed = if options.functions {
        workload::deploy(server.addr).await
    } else {
        Ok(())
    };
    let result = match deployed {
        Ok(()) => drive(&options, &mut server, &url).await,
        Err(e) => Err(e),
    };
    let stopped = server.stop().await;
    if result.is_err() || stopped.is_err() {
        // Keep the server's log and data for whoever reads the error.
        let kept = temp.keep();
        eprintln!(
            "tarn-verify: server log and data kept in {}",
            kept.display()
        );
    }
    let report = result?;
    stopped?;
    Ok(report)
}

async fn drive(options: &RunOptions, server: &mut Server, url: &str) -> Result<RunReport> {
    let workload = options.workload;
    let recorder = Recorder::new(workload);
    let shared = Shared::default();
    let start = Instant::now();
    let deadline = start + options.duration;
    let slow: Arc<Vec<AtomicBool>> = Arc::new(
        (0..options.clients)
            .map(|_| AtomicBool::new(false))
            .collect(),
    );
    let progress = progress_bar(options);
    let done_ops = Arc::new(AtomicU64::new(0));

    let mut subscribers = Vec::new();
    let mut logs = Vec::new();
    for _ in 0..options.subscribers {
        let log = Log::default();
        logs.push(log.clone());
        let client = Client::new(url, client_options());
        let task = tokio::spawn(watches::subscribe(client.clone(), workload, log));
        subscribers.push((client, task));
    }

    let mut processes = Vec::new();
    for p in 0..options.clients {
        let (recorder, shared, slow, url, done_ops) = (
            recorder.clone(),
            shared.clone(),
            Arc::clone(&slow),
            url.to_string(),
            Arc::clone(&done_ops),
        );
        let (seed, timeout, clients) = (options.seed, options.op_timeout, options.clients as u64);
        let functions = options.functions;
        processes.push(tokio::spawn(async move {
            let mut generator = Generator::new(workload, seed ^ (p as u64 + 1) << 32, shared);
            let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(31).wrapping_add(p as u64));
            let mut process = p as u64;
            let mut client = Client::new(&url, client_options());
            while Instant::now() < deadline {
                let mops = generator.next_txn();
                let pause = slow[p]
                    .load(Ordering::Relaxed)
                    .then(|| Duration::from_millis(rng.random_range(5..60)));
                let id = recorder.invoke(process, mops.clone());
                let result = if functions {
                    tokio::time::timeout(timeout, workload::call(&client, workload, &mops)).await
                } else {
                    tokio::time::timeout(
                        timeout,
                        workload::execute(&client, workload, &mops, pause),
                    )
                    .await
                };
                let outcome = match result {
                    Ok(Ok(done)) => {
                        recorder.complete(id, Outcome::Ok, Some(done), None);
                        Outcome::Ok
                    }
                    Ok(Err(e)) => {
                        let outcome = workload::outcome_of(&e);
                        recorder.complete(id, outcome, None, Some(e.to_string()));
                        outcome
                    }
                    Err(_) => {
                        recorder.complete(
                            id,
                            Outcome::Info,
                            None,
                            Some(format!("no answer within {timeout:?}")),
                        );
                        // The old client may still send it: a fresh one.
                        client.close().await;
                        client = Client::new(&url, client_options());
                        Outcome::Info
                    }
                };
                if outcome == Outcome::Info {
                    // An operation of unknown outcome ends the process.
                    process += clients;
                }
                done_ops.fetch_add(1, Ordering::Relaxed);
            }
            client.close().await;
        }));
    }

    // The nemesis. If it fails (the server does not come back), stop
    // every task before returning the error.
    let mut faults: BTreeMap<Fault, usize> = BTreeMap::new();
    if let Err(e) = nemesis(options, server, &slow, deadline, &mut faults, |f| {
        tick(&progress, &done_ops, start, f)
    })
    .await
    {
        for p in &processes {
            p.abort();
        }
        for (_, task) in &subscribers {
            task.abort();
        }
        return Err(e);
    }
    for p in processes {
        while !p.is_finished() {
            tick(&progress, &done_ops, start, &faults);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        p.await.context("a client process panicked")?;
    }

    // Final recovery: kill -9, restart, and read every key.
    server.kill9().await?;
    server.start().await?;
    let reader = Client::new(url, client_options());
    let keys = shared.keys();
    let mut first = 0;
    while first < keys {
        let upto = (first + 500).min(keys);
        let mops: Vec<_> = (first..upto)
            .map(|key| crate::history::Mop::Read {
                key,
                value: crate::history::Observed::Unknown,
            })
            .collect();
        let id = recorder.invoke(u64::MAX, mops.clone());
        recorder.mark_final(id);
        let done = tokio::time::timeout(
            options.op_timeout,
            workload::execute(&reader, workload, &mops, None),
        )
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "the final read got no answer within {:?}",
                options.op_timeout
            )
        })?
        .map_err(|e| anyhow::anyhow!("the final read failed: {e}"))?;
        recorder.complete(id, Outcome::Ok, Some(done), None);
        first = upto;
    }
    reader.close().await;
    let history = recorder.snapshot();

    // Subscribers must catch up with the final state.
    let settle = Instant::now() + Duration::from_secs(30);
    while !watches::caught_up(&history, &logs) && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (client, task) in subscribers {
        client.close().await;
        let _ = task.await;
    }
    if let Some(bar) = &progress {
        bar.finish_and_clear();
    }

    let report = crate::check::check(&history, CheckOptions::default())?;
    let watch_report = watches::check(&history, &logs);
    let errors = history
        .ops
        .iter()
        .filter_map(|op| {
            let e = op.error.as_deref()?;
            (e.starts_with("aborted") || e.starts_with("internal")).then(|| format!("{op}: {e}"))
        })
        .collect();
    Ok(RunReport {
        report,
        watches: watch_report,
        faults,
        errors,
        history,
    })
}

/// Injects faults until `deadline`, counting them into `faults`.
async fn nemesis(
    options: &RunOptions,
    server: &mut Server,
    slow: &[AtomicBool],
    deadline: Instant,
    faults: &mut BTreeMap<Fault, usize>,
    tick: impl Fn(&BTreeMap<Fault, usize>),
) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(options.seed);
    while !options.faults.is_empty() {
        let mean = options.fault_interval.as_millis().max(2) as u64;
        let wait = Duration::from_millis(rng.random_range(mean / 2..=mean * 3 / 2));
        let now = Instant::now();
        if now + wait >= deadline {
            break;
        }
        tick(faults);
        tokio::time::sleep(wait).await;
        let fault = options.faults[rng.random_range(0..options.faults.len())];
        match fault {
            Fault::Kill => {
                server.kill9().await?;
                server.start().await?;
            }
            Fault::Pause => {
                server.signal(Signal::SIGSTOP)?;
                tokio::time::sleep(Duration::from_millis(rng.random_range(300..1500))).await;
                server.signal(Signal::SIGCONT)?;
            }
            Fault::Restart => {
                server.stop().await?;
                server.start().await?;
            }
            Fault::Slow => {
                // About a quarter of the clients, chosen afresh each time.
                for s in slow {
                    s.store(rng.random_bool(0.25), Ordering::Relaxed);
                }
            }
        }
        *faults.entry(fault).or_insert(0) += 1;
    }
    Ok(())
}

fn progress_bar(options: &RunOptions) -> Option<indicatif::ProgressBar> {
    if !options.progress {
        return None;
    }
    let bar = indicatif::ProgressBar::new(options.duration.as_secs().max(1));
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} s  {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    Some(bar)
}

fn tick(
    bar: &Option<indicatif::ProgressBar>,
    ops: &AtomicU64,
    start: Instant,
    faults: &BTreeMap<Fault, usize>,
) {
    if let Some(bar) = bar {
        bar.set_position(start.elapsed().as_secs());
        let f: Vec<String> = faults
            .iter()
            .map(|(k, n)| format!("{} {n}", k.name()))
            .collect();
        bar.set_message(format!(
            "{} ops; faults: {}",
            ops.load(Ordering::Relaxed),
            f.join(", ")
        ));
    }
}

/// Writes `history` as JSON lines to `path`.
pub fn save(history: &History, path: &Path) -> Result<()> {
    std::fs::write(path, history.to_json_lines())
        .with_context(|| format!("writing the history to {}", path.display()))
}
