//! Finding workers: static URLs are members from the start; a `dns+http://NAME:PORT` target (a
//! Kubernetes headless Service) is re-resolved every `dns_refresh_secs`. New addresses join as
//! `Unknown` and get requests after their first passing probe; vanished ones drain (finish what
//! they have, get nothing new) and leave the list once idle.
//!
//! Resolution goes through the [`Resolver`] trait so tests can control what a name resolves to.

use super::{HealthPolicy, Members, Worker};
use crate::metrics::Metrics;
use crate::worker::Backend;
use futures::future::BoxFuture;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Name resolution, as discovery needs it.
pub trait Resolver: Send + Sync + 'static {
    fn resolve(&self, host: &str, port: u16) -> BoxFuture<'_, std::io::Result<Vec<SocketAddr>>>;
}

/// The system resolver (`getaddrinfo`, which reads /etc/resolv.conf: cluster DNS in a pod).
#[derive(Debug, Default)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn resolve(&self, host: &str, port: u16) -> BoxFuture<'_, std::io::Result<Vec<SocketAddr>>> {
        let target = format!("{host}:{port}");
        Box::pin(async move { Ok(tokio::net::lookup_host(target).await?.collect()) })
    }
}

/// One DNS-discovered target of a pool.
pub struct DnsTarget {
    pub scheme: String,
    pub host: String,
    pub port: u16,
}

/// Re-resolve `target` every `dns_refresh_secs` until cancelled, keeping `members` in step.
/// Only the members this target found are touched (see [`reconcile`]): the pool's static
/// workers and other targets' workers stay as they are.
pub async fn run_dns(
    target: DnsTarget,
    members: Arc<Members>,
    resolver: Arc<dyn Resolver>,
    metrics: Metrics,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(members.settings.dns_refresh());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let resolved = match resolver.resolve(&target.host, target.port).await {
            Ok(addrs) => addrs,
            Err(e) => {
                // Keep what we have: a DNS blip must not empty the pool.
                tracing::warn!(host = %target.host, error = %e, "worker discovery: resolution failed");
                continue;
            }
        };
        let prefix = format!("{}://", target.scheme);
        let urls: Vec<String> = resolved.iter().map(|a| format!("{prefix}{a}")).collect();
        reconcile(&members, &prefix, &urls, &metrics);
    }
}

/// Make the members whose URL starts with `prefix` (this target's) match `urls`: add new ones,
/// drain vanished ones, drop drained ones that are idle. Others are left alone.
pub fn reconcile(members: &Members, prefix: &str, urls: &[String], metrics: &Metrics) {
    let current = members.list();
    let want: HashSet<&str> = urls.iter().map(String::as_str).collect();
    let mut next: Vec<Arc<Worker>> = Vec::with_capacity(current.len() + urls.len());
    let mut changed = false;
    for w in current.iter() {
        let ours = w.url.starts_with(prefix) && w.backend.http_base().is_some();
        if !ours || want.contains(w.url.as_str()) {
            if ours && w.draining.swap(false, Ordering::Relaxed) {
                tracing::info!(worker = %w.url, "worker discovery: address is back");
                changed = true;
            }
            next.push(w.clone());
        } else if w.in_flight() > 0 {
            if !w.draining.swap(true, Ordering::Relaxed) {
                tracing::info!(worker = %w.url, in_flight = w.in_flight(), "worker discovery: address gone, draining");
                changed = true;
            }
            next.push(w.clone());
        } else {
            w.draining.store(true, Ordering::Relaxed);
            tracing::info!(worker = %w.url, "worker discovery: address gone, removed");
            changed = true;
        }
    }
    for url in urls {
        if !next.iter().any(|w| &w.url == url) {
            tracing::info!(worker = %url, model = %members.model, "worker discovery: new address, joins after a passing probe");
            next.push(Arc::new(Worker::new(
                url.clone(),
                members.model.clone(),
                Backend::http(url.clone()),
                HealthPolicy::from(&members.settings),
                metrics.clone(),
            )));
            changed = true;
        }
    }
    if changed {
        members.set(next);
    }
}
