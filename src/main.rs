//! `caprl-gateway`: parses the command line, starts logging and a Tokio runtime, and serves.
//!
//! The process allocates with jemalloc, not glibc's malloc: a burst of hostile connections (1 MB
//! bodies, stalled heads) left glibc holding hundreds of MiB it never returned, while jemalloc's
//! background threads purge freed pages after the decay time even when the gateway is idle
//! (figures and commands: docs/BENCHMARKS.md, "Memory after connection bursts").

use caprl_gateway::config::{self, Command};
use std::process::ExitCode;

/// jemalloc, with background purging threads on (the `background_threads` feature in Cargo.toml
/// builds `background_thread:true` in) and the dirty-page decay from .cargo/config.toml
/// (`JEMALLOC_SYS_WITH_MALLOC_CONF`). `_RJEM_MALLOC_CONF` overrides either at run time.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = match config::parse_cli() {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("caprl-gateway: {e}");
            return ExitCode::from(2);
        }
    };
    let args = match cli.command {
        Command::Serve(args) => args,
        Command::Caption(args) => return run_command(caprl_gateway::workflow::caption::run(*args)),
        Command::Qa(cmd) => return run_command(caprl_gateway::workflow::qa::run(*cmd)),
        Command::Eval(cmd) => return run_command(caprl_gateway::workflow::prism::run(*cmd)),
    };
    caprl_gateway::telemetry::init(args.server.log_format);
    tracing::info!(config = ?args, "starting");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime starts; this is a bug");
    match runtime.block_on(caprl_gateway::serve::serve(*args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "caprl-gateway failed");
            eprintln!("caprl-gateway: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A workflow command: logs to stderr (warnings by default), its own runtime, its exit code.
fn run_command(command: impl std::future::Future<Output = anyhow::Result<i32>>) -> ExitCode {
    caprl_gateway::telemetry::init_for_command();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime starts; this is a bug");
    match runtime.block_on(command) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("caprl-gateway: {e:#}");
            ExitCode::FAILURE
        }
    }
}
