//! `tarn-verify`: runs a workload against a real tarn server with faults
//! and checks the history; checks a saved history; runs the server itself
//! (what `run` starts by default).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};
use tarn_verify::runner::{Fault, RunOptions};
use tarn_verify::{CheckOptions, History, Workload};

/// Proves tarn keeps its promises: serializable commits, no lost
/// acknowledged write, watches in order without loss.
#[derive(Parser, Debug)]
#[command(name = "tarn-verify", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start a server in a temp dir, drive a workload with faults, check.
    /// Prints `verify.<figure> N` lines; exits 1 on any anomaly.
    Run {
        /// The workload.
        #[arg(long, value_enum, default_value = "list-append")]
        workload: Workload,
        /// Client processes.
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Subscribers watching every key.
        #[arg(long, default_value_t = 2)]
        subscribers: usize,
        /// How long clients issue transactions (e.g. 60s, 2m).
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        duration: Duration,
        /// Faults, comma-separated: kill, pause, restart, slow (none: no faults).
        #[arg(long, value_delimiter = ',', default_value = "kill,pause,restart,slow")]
        faults: Vec<FaultArg>,
        /// Mean time between faults.
        #[arg(long, default_value = "3s", value_parser = parse_duration)]
        fault_interval: Duration,
        /// Seeds the generators and the fault schedule.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// A `tarn` binary to test (default: this program's own server).
        #[arg(long)]
        server_bin: Option<PathBuf>,
        /// Write the history here as JSON lines (for `tarn-verify check`).
        #[arg(long)]
        history: Option<PathBuf>,
        /// Run each transaction as one server-function call (a module is
        /// deployed first) instead of a tarn-client transaction.
        #[arg(long)]
        functions: bool,
    },
    /// Check a history written by `run --history`.
    Check {
        /// The history file.
        file: PathBuf,
        /// Check serializability only, not strict serializability.
        #[arg(long)]
        serializable: bool,
    },
    /// Run the tarn server (as `tarn serve`); `run` starts this.
    #[command(hide = true)]
    Serve {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        listen: std::net::SocketAddr,
    },
    /// Write the built-in seed inputs of every fuzz target into DIR/<target>/.
    #[command(hide = true)]
    SeedCorpus {
        /// The corpus root (fuzz/corpus).
        dir: PathBuf,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum FaultArg {
    Kill,
    Pause,
    Restart,
    Slow,
    None,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (n, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, "s"), |i| text.split_at(i));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{text:?}: expected a number and a unit, like 60s or 2m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("{text:?}: the unit must be ms, s, m or h")),
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            workload,
            clients,
            subscribers,
            duration,
            faults,
            fault_interval,
            seed,
            server_bin,
            history,
            functions,
        } => {
            let faults = faults
                .into_iter()
                .filter_map(|f| match f {
                    FaultArg::Kill => Some(Fault::Kill),
                    FaultArg::Pause => Some(Fault::Pause),
                    FaultArg::Restart => Some(Fault::Restart),
                    FaultArg::Slow => Some(Fault::Slow),
                    FaultArg::None => None,
                })
                .collect();
            let options = RunOptions {
                workload,
                clients,
                subscribers,
                duration,
                faults,
                fault_interval,
                seed,
                server_bin,
                functions,
                progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
                ..RunOptions::default()
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let report = runtime.block_on(tarn_verify::runner::run(options))?;
            if let Some(path) = history {
                tarn_verify::runner::save(&report.history, &path)?;
            }
            eprint!("{}", report.report);
            for e in &report.watches.examples {
                eprintln!("- watch {e}");
            }
            for e in &report.errors {
                eprintln!("- error: {e}");
            }
            for line in report.lines() {
                println!("{line}");
            }
            if report.anomalies() > 0 {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Check { file, serializable } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", file.display()))?;
            let history = History::from_json_lines(&text)?;
            let report = tarn_verify::check(
                &history,
                CheckOptions {
                    strict: !serializable,
                    ..CheckOptions::default()
                },
            )?;
            print!("{report}");
            println!("verify.ops {}", report.ops);
            println!("verify.lost_acked {}", report.lost_acked());
            println!("verify.anomalies {}", report.anomalies());
            if !report.is_valid() {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Serve { data, listen } => serve(data, listen),
        Command::SeedCorpus { dir } => {
            for (target, bytes) in tarn_verify::fuzz::seeds() {
                let d = dir.join(target);
                std::fs::create_dir_all(&d)?;
                let name = format!("seed-{:016x}", fnv(&bytes));
                std::fs::write(d.join(name), bytes)?;
            }
            Ok(())
        }
    }
}

/// A stable name for a corpus file.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The server exactly as `tarn serve` runs it (config from the
/// environment, defaults otherwise), on `data` and `listen`.
fn serve(data: PathBuf, listen: std::net::SocketAddr) -> Result<()> {
    let mut config = tarn_server::ServerConfig::load(None)?;
    config.data_dir = data;
    config.listen = listen;
    tarn_server::serve_main(config)
}
