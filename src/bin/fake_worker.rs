//! `caprl-fake-worker`: a vLLM-compatible fake worker on 127.0.0.1, for tests and benchmarks.
//! Built only with the feature `fake-worker` (on by default). Once bound it prints
//! `listening on ADDR` on stdout, as `caprl-gateway serve` does.

use caprl_gateway::fake_worker::{Behaviour, FakeWorker};
use clap::Parser;

#[derive(Parser)]
#[command(about = "A fake vLLM worker for tests and load benchmarks")]
struct Args {
    /// Port on 127.0.0.1 (0: any free port; the chosen one is printed).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Served model name; repeat for several.
    #[arg(long = "model", default_values_t = vec!["caprl".to_string()])]
    models: Vec<String>,
    /// Runtime worker threads (1 keeps benchmark CPU use predictable).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    #[command(flatten)]
    behaviour: Behaviour,
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port)).await?;
        println!("listening on {}", listener.local_addr()?);
        let worker = FakeWorker::new(
            format!("fake:{}", listener.local_addr()?.port()),
            args.models,
            args.behaviour,
        );
        tokio::select! {
            r = worker.serve(listener) => r,
            _ = caprl_gateway::shutdown::signal() => Ok(()),
        }
    })
}
