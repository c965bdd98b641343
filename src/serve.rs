//! `caprl-gateway serve`: bind, serve, drain on SIGTERM, exit.
//!
//! Once bound, [`serve`] prints `listening on ADDR` (the bound address, so `--port 0` reports
//! the port it got) as the first and only line on stdout; logs go to stderr. Tests and scripts
//! read that line instead of guessing a free port. The fake worker prints the same line.

use crate::config::ServeArgs;
use crate::http;
use crate::shutdown;
use crate::state::AppState;
use axum::serve::ListenerExt;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;

/// Serve until `stop` resolves (SIGTERM in production), then drain and return.
pub async fn run(
    state: AppState,
    listener: TcpListener,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let grace = Duration::from_secs_f64(state.config.server.shutdown_grace_secs);
    if let Some(port) = state.config.server.metrics_port {
        let metrics_listener =
            TcpListener::bind(SocketAddr::new(state.config.server.host, port)).await?;
        let app = http::metrics_app(state.clone());
        let cancel = state.cancel.clone();
        state.tasks.spawn(async move {
            let _ = axum::serve(metrics_listener, app)
                .with_graceful_shutdown(cancel.cancelled_owned())
                .await;
        });
    }
    let app = http::app(state.clone());
    tracing::info!(%addr, models = ?state.pools.keys().collect::<Vec<_>>(), "caprl-gateway listening");

    // Keep serving while draining, so late requests get a clean 503 instead of a refused
    // connection; stop the listener once the drain is over.
    let drained = tokio_util::sync::CancellationToken::new();
    let drain_state = state.clone();
    let drained_tx = drained.clone();
    let drain = tokio::spawn(async move {
        stop.await;
        tracing::info!(
            grace_secs = grace.as_secs_f64(),
            in_flight = drain_state.drain.in_flight(),
            "shutdown: draining"
        );
        drain_state.drain.start();
        let idle = drain_state.drain.wait_idle(grace).await;
        if idle {
            tracing::info!("shutdown: drained");
        } else {
            tracing::warn!(
                in_flight = drain_state.drain.in_flight(),
                "shutdown: grace period over with requests in flight"
            );
        }
        drained_tx.cancel();
    });
    let listener = listener.tap_io(|tcp| {
        // Small SSE frames must not wait for Nagle's algorithm.
        let _ = tcp.set_nodelay(true);
    });
    let server =
        axum::serve(listener, app).with_graceful_shutdown(drained.clone().cancelled_owned());
    tokio::select! {
        r = server => r?,
        // Connections still open after the grace period (a stuck stream) do not hold us up.
        _ = async { drained.cancelled().await; tokio::time::sleep(Duration::from_secs(1)).await } => {}
    }
    drain.abort();
    state.cancel.cancel();
    state.tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(2), state.tasks.wait()).await;
    tracing::info!("shutdown: done");
    Ok(())
}

/// The `serve` subcommand: build state from the settings and run until SIGTERM.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let addr = SocketAddr::new(args.server.host, args.server.port);
    let state = AppState::build(args)?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    // A fixed form on stdout (line-buffered, so flushed at the newline): connections made
    // after this line are accepted, since the socket is already listening.
    println!("listening on {}", listener.local_addr()?);
    run(state, listener, shutdown::signal()).await
}
