use caprl_gateway::config::{self, Command};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match config::parse_cli() {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("caprl-gateway: {e}");
            return ExitCode::from(2);
        }
    };
    let Command::Serve(args) = cli.command;
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
