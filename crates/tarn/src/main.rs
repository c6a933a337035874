//! The `tarn` binary: one command-line interface over the server and the
//! client. Each verb lives in its own module; this file only parses the
//! command line and dispatches.

/// `println!` for output a pipe may close early (`tarn watch x | head`):
/// a closed stdout ends the process quietly, as it ends `cat`, instead of
/// panicking; any other write error is reported and exits 1.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::stdout_line(format_args!($($arg)*))
    };
}

/// Writes one line to stdout for [`out!`].
fn stdout_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if let Err(e) = writeln!(std::io::stdout().lock(), "{args}") {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("writing to stdout: {e}");
        std::process::exit(1);
    }
}

mod bench;
mod bench_client;
mod bench_functions;
mod bench_server;
mod bench_store;
mod cli;
mod compare;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// jemalloc: measured fastest for the engine and for replay (see
/// Cargo.toml).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// tarn: a realtime, transactional, path-addressed database.
#[derive(Parser, Debug)]
#[command(name = "tarn", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server (embedded store in ./tarn-data, listening on 127.0.0.1:7070).
    Serve {
        /// Data directory (default ./tarn-data; env TARN_DATA_DIR).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Address to listen on (default 127.0.0.1:7070; env TARN_LISTEN).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// A TOML config file (settings and limits).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Skip damaged records in the middle of the WAL at startup (logged).
        #[arg(long)]
        recover: bool,
    },
    /// Measure tarn and print one line per figure: `<area>.<metric> <value> <unit>`.
    Bench(bench::BenchArgs),
    #[command(flatten)]
    Client(cli::ClientCommand),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            data,
            listen,
            config,
            recover,
        } => serve(data, listen, config, recover),
        Command::Bench(args) => bench::run(args),
        Command::Client(cmd) => cli::run(cmd),
    }
}

fn serve(
    data: Option<PathBuf>,
    listen: Option<std::net::SocketAddr>,
    config: Option<PathBuf>,
    recover: bool,
) -> Result<()> {
    let mut config = tarn_server::ServerConfig::load(config.as_deref())?;
    if let Some(data) = data {
        config.data_dir = data;
    }
    if let Some(listen) = listen {
        config.listen = listen;
    }
    config.wal.recover |= recover;
    tarn_server::serve_main(config)
}
