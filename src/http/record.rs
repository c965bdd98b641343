//! One request's account: what it was (model, images, streaming), where it went, how it ended.
//! [`RequestRecord::finish`] writes the one log line per finished request and the request
//! metrics; a stream's record rides in its body and finishes as `cancelled` if the client hangs
//! up first. Image lines carry format, size, pixels, tokens and a hash prefix, never bytes.

use super::middleware::RequestId;
use crate::api::chat::Usage;
use crate::metrics::Metrics;
pub use crate::metrics::Outcome;
use crate::state::AppState;
use crate::tenant::limits::Charge;
use crate::validate::ValidRequest;
use axum::http::StatusCode;
use tokio::time::Instant;

#[derive(Debug)]
pub struct RequestRecord {
    id: RequestId,
    model: String,
    stream: bool,
    started: Instant,
    images: String,
    pub worker: Option<String>,
    metrics: Metrics,
    /// The caller's key and what the request holds of its limits, settled at the finish.
    charge: Option<Charge>,
    /// Answered from the caption cache: no worker, no tokens.
    cached: bool,
    finished: bool,
}

impl RequestRecord {
    pub fn new(
        state: &AppState,
        id: &RequestId,
        req: &ValidRequest,
        started: Instant,
    ) -> RequestRecord {
        let metrics = &state.metrics;
        for img in &req.images {
            metrics.image_checked(img);
        }
        metrics.image_tokens(&req.model, req.image_tokens);
        let images = req
            .images
            .iter()
            .map(|i| {
                format!(
                    "{}:{}x{}:{}B:{}tok:{:012x}",
                    i.format.as_str(),
                    i.width,
                    i.height,
                    i.bytes,
                    i.tokens,
                    i.hash >> 80
                )
            })
            .chain((0..req.remote.len()).map(|_| "remote".to_string()))
            .collect::<Vec<_>>()
            .join(",");
        RequestRecord {
            id: id.clone(),
            model: req.model.clone(),
            stream: req.stream,
            started,
            images,
            worker: None,
            metrics: metrics.clone(),
            charge: None,
            cached: false,
            finished: false,
        }
    }

    /// The request holds `charge` of its key's limits (None: no keys configured).
    pub fn charge(&mut self, charge: Option<Charge>) {
        self.charge = charge;
    }

    /// The answer comes from the caption cache: the key is charged no tokens for it.
    pub fn served_from_cache(&mut self) {
        self.cached = true;
        self.worker = Some("cache".into());
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Log the request's line and count it. Only the first call counts.
    pub fn finish(&mut self, status: StatusCode, outcome: Outcome, usage: Option<Usage>) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let elapsed = self.started.elapsed();
        self.metrics
            .request_finished(&self.model, outcome, self.stream, elapsed, usage.as_ref());
        if let Some(charge) = &mut self.charge {
            // Tokens are settled when the worker said what it used, or when it was never
            // reached (refused: nothing used); otherwise the estimate stays charged.
            let used = match (usage, outcome) {
                _ if self.cached => Some(0),
                (Some(u), _) => Some(u.prompt_tokens + u.completion_tokens),
                (None, Outcome::Rejected) => Some(0),
                (None, _) => None,
            };
            if let Some(used) = used {
                charge.settle(used);
            }
            if let Some(u) = usage {
                charge.count_tokens(u.prompt_tokens, u.completion_tokens);
            }
        }
        let usage = usage.unwrap_or_default();
        tracing::info!(
            request_id = %self.id,
            model = %self.model,
            status = status.as_u16(),
            outcome = outcome.as_str(),
            stream = self.stream,
            latency_ms = elapsed.as_secs_f64() * 1000.0,
            prompt_tokens = usage.prompt_tokens,
            completion_tokens = usage.completion_tokens,
            worker = self.worker.as_deref().unwrap_or("-"),
            images = %self.images,
            "request finished"
        );
    }
}

impl Drop for RequestRecord {
    fn drop(&mut self) {
        // Nothing finished it: the client went away (a stream hung up, or the handler was
        // dropped while waiting). 499 is the conventional "client closed request".
        if !self.finished {
            let status =
                StatusCode::from_u16(499).expect("499 is a valid status code; this is a bug");
            self.finish(status, Outcome::Cancelled, None);
        }
    }
}
