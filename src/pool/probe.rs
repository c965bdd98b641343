//! Active health probes: every `health_interval_secs`, `GET /health` on each HTTP worker of a
//! pool, all at once. A worker that comes up is asked `GET /v1/models` to check it serves the
//! pool's model (one that serves something else is kept out, with an error in the log) and
//! for the context it reports (`max_model_len`), which then bounds `max_tokens` at validation.

use super::health::ProbeState;
use super::{Members, Transition, Worker};
use crate::worker::http;
use futures::future::join_all;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub async fn run(members: Arc<Members>, client: reqwest::Client, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(members.settings.health_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let workers = members.list();
        let probes = workers.iter().map(|w| probe_one(w, &members, &client));
        if join_all(probes).await.into_iter().any(|woke| woke) {
            members.freed.notify_one();
        }
    }
}

/// Probe one worker; true when it became able to take requests.
async fn probe_one(w: &Arc<Worker>, members: &Members, client: &reqwest::Client) -> bool {
    // The in-process engine needs no probe.
    let Some(base) = w.backend.http_base() else {
        return false;
    };
    let timeout = members.settings.health_timeout();
    let passed = http::probe_health(client, base, timeout).await;
    // Before it can go up: what it serves (and its context) is known before any request.
    if passed && (w.health.probe_state() != ProbeState::Up || w.health.is_down()) {
        check_model(w, client, base, timeout).await;
    }
    let transition = w.health.record_probe(passed);
    w.log_transition(transition, "probe");
    w.update_health_gauge();
    transition == Transition::WentUp
}

async fn check_model(
    w: &Worker,
    client: &reqwest::Client,
    base: &str,
    timeout: std::time::Duration,
) {
    match http::served_models(client, base, timeout).await {
        Some(models) => match models.iter().find(|m| m.id == w.model) {
            Some(served) => {
                w.health.set_model_ok(true);
                w.set_max_model_len(served.max_model_len);
            }
            None => {
                let serves: Vec<&str> = models.iter().map(|m| m.id.as_str()).collect();
                tracing::error!(worker = %w.url, expected = %w.model, serves = ?serves,
                    "worker does not serve the pool's model; kept out of rotation (start vLLM with --served-model-name {})", w.model);
                w.health.set_model_ok(false);
            }
        },
        None => {
            tracing::warn!(worker = %w.url, "worker did not list its models; serving it unchecked");
            w.health.set_model_ok(true);
        }
    }
}
