//! The `tarn` binary: one command-line interface over the server and the
//! client. Each verb lives in its own module; this file only parses the
//! command line and dispatches.

mod bench;
mod bench_store;

use anyhow::Result;

/// jemalloc: measured fastest for the engine and for replay (see
/// Cargo.toml).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
use clap::{Parser, Subcommand};

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
    Serve,
    /// Measure tarn and print one line per figure: `<area>.<metric> <value> <unit>`.
    Bench(bench::BenchArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve => {
            eprintln!(
                "tarn serve: the server is not yet implemented in this build; \
                 the commit engine can be measured with `tarn bench core`"
            );
            std::process::exit(2);
        }
        Command::Bench(args) => bench::run(args),
    }
}
