//! One request's account: what it was (model, images, streaming), where it went, how it ended.
//! [`RequestRecord::finish`] writes the one log line per finished request and the request
//! metrics; a stream's record rides in its body and finishes as `cancelled` if the client hangs
//! up first. Image lines carry format, size, pixels, tokens and a hash prefix, never bytes.

use super::middleware::RequestId;
use crate::api::chat::Usage;
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::state::AppState;
use crate::validate::ValidRequest;
use axum::http::StatusCode;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// The worker answered 4xx (passed through).
    ClientError,
    /// The gateway refused it (queue full or timed out, no worker, draining).
    Rejected,
    WorkerError,
    /// The client left before the end.
    Cancelled,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::ClientError => "client_error",
            Outcome::Rejected => "rejected",
            Outcome::WorkerError => "worker_error",
            Outcome::Cancelled => "cancelled",
        }
    }

    pub fn from_error(err: &GatewayError) -> Outcome {
        match err {
            GatewayError::Overloaded { .. }
            | GatewayError::ShuttingDown
            | GatewayError::NoWorker(_) => Outcome::Rejected,
            e if e.status().is_client_error() => Outcome::ClientError,
            _ => Outcome::WorkerError,
        }
    }

    pub fn from_status(status: StatusCode) -> Outcome {
        if status.is_success() {
            Outcome::Success
        } else if status.is_client_error() {
            Outcome::ClientError
        } else {
            Outcome::WorkerError
        }
    }
}

#[derive(Debug)]
pub struct RequestRecord {
    id: RequestId,
    model: String,
    stream: bool,
    started: Instant,
    images: String,
    pub worker: Option<String>,
    metrics: Metrics,
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
            let f = img.format.as_str();
            metrics.images.with_label_values(&[f, "ok"]).inc();
            metrics
                .image_bytes
                .with_label_values(&[f])
                .observe(img.bytes as f64);
            metrics
                .image_pixels
                .with_label_values(&[f])
                .observe(img.width as f64 * img.height as f64);
            metrics
                .image_check
                .with_label_values(&[f])
                .observe(img.check_time.as_secs_f64());
        }
        metrics
            .image_tokens
            .with_label_values(&[req.model.as_str()])
            .inc_by(req.image_tokens);
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
            .chain((0..req.remote_images).map(|_| "remote".to_string()))
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
            finished: false,
        }
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
        let streaming = if self.stream { "true" } else { "false" };
        let m = &self.metrics;
        m.requests
            .with_label_values(&[self.model.as_str(), outcome.as_str(), streaming])
            .inc();
        m.request_duration
            .with_label_values(&[self.model.as_str(), streaming])
            .observe(elapsed.as_secs_f64());
        if let Some(u) = usage {
            m.tokens
                .with_label_values(&[self.model.as_str(), "prompt"])
                .inc_by(u.prompt_tokens);
            m.tokens
                .with_label_values(&[self.model.as_str(), "completion"])
                .inc_by(u.completion_tokens);
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
