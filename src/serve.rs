//! `caprl-gateway serve`: bind, serve, drain on SIGTERM, exit.
//!
//! Once bound, [`serve`] prints `listening on ADDR` (the bound address, so `--port 0` reports
//! the port it got) as the first and only line on stdout; logs go to stderr. Tests and scripts
//! read that line instead of guessing a free port. The fake worker prints the same line.

use crate::config::ServeArgs;
use crate::http;
use crate::metrics::Metrics;
use crate::shutdown;
use crate::state::AppState;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

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
        let conns = Connections::new(&state);
        let cancel = state.cancel.clone();
        state
            .tasks
            .spawn(async move { conns.accept(metrics_listener, app, cancel).await });
    }
    let app = http::app(state.clone());
    tracing::info!(%addr, models = ?state.pools.keys().collect::<Vec<_>>(), "caprl-gateway listening");

    // Keep serving while draining, so late requests get a clean 503 instead of a refused
    // connection; stop the listener once the drain is over.
    let drained = CancellationToken::new();
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
    let conns = Connections::new(&state);
    let accepting = conns.accept(listener, app, drained.clone());
    tokio::select! {
        () = accepting => {}
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

/// The accept loop's settings: hyper's builder with the edge's deadlines and bounds, and the
/// connection slots.
///
/// - HTTP/1: the request head must arrive within `header_read_timeout`, counted from when the
///   connection starts waiting for it, so the same deadline closes a keep-alive connection
///   that sits idle between requests. A head larger than `max_header_bytes` gets 431.
/// - HTTP/2: the header list is bounded the same way; idle connections are pinged, and one
///   that stops answering is closed.
/// - At most `max_connections` are open: past it the loop stops accepting, and new ones wait
///   in the kernel's backlog rather than each costing a task and buffers here.
///
/// Body deadlines are per request, in [`http::edge`].
struct Connections {
    builder: auto::Builder<TokioExecutor>,
    slots: Arc<Semaphore>,
    metrics: Metrics,
}

impl Connections {
    fn new(state: &AppState) -> Connections {
        let server = &state.config.server;
        let head_bytes = usize::try_from(server.max_header_bytes).unwrap_or(usize::MAX);
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(server.header_read_timeout())
            .max_buf_size(head_bytes);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(head_bytes).unwrap_or(u32::MAX))
            .keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(20));
        Connections {
            builder,
            slots: Arc::new(Semaphore::new(server.max_connections)),
            metrics: state.metrics.clone(),
        }
    }

    /// Accept and serve connections until `stop`; then ask every open connection to finish
    /// (idle ones close at once, busy ones after their answer) and wait for them.
    async fn accept(self, listener: TcpListener, app: Router, stop: CancellationToken) {
        let graceful = GracefulShutdown::new();
        loop {
            let slot = tokio::select! {
                slot = self.slots.clone().acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_) => break, // the semaphore is never closed
                },
                () = stop.cancelled() => break,
            };
            let tcp = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, _peer)) => tcp,
                    Err(e) => {
                        // Out of file descriptors, or a connection reset before it was
                        // accepted: log, wait a moment (a hot loop would not help), go on.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = stop.cancelled() => break,
            };
            // Small SSE frames must not wait for Nagle's algorithm.
            let _ = tcp.set_nodelay(true);
            let service = TowerToHyperService::new(app.clone());
            let conn = self
                .builder
                .serve_connection(TokioIo::new(tcp), service)
                .into_owned();
            let conn = graceful.watch(conn);
            let open = self.metrics.connection_opened();
            tokio::spawn(async move {
                // A connection's errors are the client's (reset, bad head, timeout): hyper has
                // answered what could be answered.
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                drop(open);
                drop(slot);
            });
        }
        drop(listener);
        graceful.shutdown().await;
    }
}
