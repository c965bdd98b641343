//! Every metric the gateway exports, named once, here. Prefix `caprl_gateway_`; counters end in
//! `_total`, times in `_seconds`, sizes in `_bytes`. Labels are bounded: model names and worker
//! addresses come from configuration or discovery, routes from the router, status codes and
//! reasons from fixed sets. Never a key, a prompt or a hash.
//!
//! `/metrics` renders [`Metrics::render`] in the Prometheus text format. The in-process engine
//! adds its own series under vLLM's names (`vllm:…`) to the same registry.

use prometheus::{
    exponential_buckets, Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

const PREFIX: &str = "caprl_gateway";

/// Latency buckets from 1 ms to ~9 min: covers a text-only reply and a long dense caption.
fn latency_buckets() -> Vec<f64> {
    exponential_buckets(0.001, 2.0, 20).expect("static buckets are valid; this is a bug")
}

/// Cheap to clone: every field is a handle on a registered metric family.
#[derive(Clone, Debug)]
pub struct Metrics {
    pub registry: Registry,
    /// HTTP requests by route, method and status code.
    pub http_requests: IntCounterVec,
    /// HTTP request duration (to the response head for streams) by route.
    pub http_duration: HistogramVec,
    /// Chat completion requests by model, outcome (`success`, `client_error`, `rejected`,
    /// `worker_error`, `cancelled`) and whether streamed.
    pub requests: IntCounterVec,
    /// Whole chat completion time, arrival to last byte, by model and streaming.
    pub request_duration: HistogramVec,
    /// Time to the first streamed token, by model.
    pub ttft: HistogramVec,
    /// Time per output token after the first, by model (streams).
    pub tpot: HistogramVec,
    /// Requests waiting in the admission queue, by model.
    pub queue_depth: IntGaugeVec,
    /// Time spent waiting in the queue, by model.
    pub queue_wait: HistogramVec,
    /// Requests whose client left while they waited, by model.
    pub queue_abandoned: IntCounterVec,
    /// Requests per batch handed to a worker, by model.
    pub batch_size: HistogramVec,
    /// Estimated tokens per batch, by model.
    pub batch_tokens: HistogramVec,
    /// Tokens reported in the workers' `usage`, by model and kind (`prompt`, `completion`).
    pub tokens: IntCounterVec,
    /// Visual tokens estimated at validation, by model.
    pub image_tokens: IntCounterVec,
    /// Images by sniffed format (`unknown` when the bytes are no image) and outcome (`ok`,
    /// `rejected`).
    pub images: IntCounterVec,
    /// Decoded image size.
    pub image_bytes: HistogramVec,
    /// Image pixel count (width × height).
    pub image_pixels: HistogramVec,
    /// Time to decode base64, read the header and hash one image.
    pub image_check: HistogramVec,
    /// Requests in flight per worker.
    pub worker_in_flight: IntGaugeVec,
    /// Worker health: 1 serving, 0.5 ejected or half-open, 0 down.
    pub worker_health: GaugeVec,
    /// Passive ejections per worker.
    pub worker_ejections: IntCounterVec,
    /// Worker responses by status code (`error` when there was none).
    pub worker_responses: IntCounterVec,
    /// Retries of a request on another worker, by model.
    pub retries: IntCounterVec,
    /// Requests refused by the gateway, by model and reason (`bad_request`, `too_large`,
    /// `model_not_found`, `queue_full`, `queue_timeout`, `no_worker`, `unauthorized`,
    /// `shutting_down`). `model_name` is empty when the model was not known (or not served).
    pub rejections: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(format!("{PREFIX}_{name}"), help), labels)
                .expect("metric definitions are valid; this is a bug");
            registry
                .register(Box::new(c.clone()))
                .expect("each metric is registered once; this is a bug");
            c
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(format!("{PREFIX}_{name}"), help), labels)
                .expect("metric definitions are valid; this is a bug");
            registry
                .register(Box::new(g.clone()))
                .expect("each metric is registered once; this is a bug");
            g
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            let h = HistogramVec::new(
                HistogramOpts::new(format!("{PREFIX}_{name}"), help).buckets(buckets),
                labels,
            )
            .expect("metric definitions are valid; this is a bug");
            registry
                .register(Box::new(h.clone()))
                .expect("each metric is registered once; this is a bug");
            h
        };
        let worker_health = GaugeVec::new(
            Opts::new(
                format!("{PREFIX}_worker_health"),
                "Worker health: 1 serving, 0.5 ejected or half-open, 0 down.",
            ),
            &["model_name", "worker"],
        )
        .expect("metric definitions are valid; this is a bug");
        registry
            .register(Box::new(worker_health.clone()))
            .expect("each metric is registered once; this is a bug");
        let pow2 = |start: f64, n: usize| {
            exponential_buckets(start, 2.0, n).expect("static buckets are valid; this is a bug")
        };
        Metrics {
            http_requests: counter(
                "http_requests_total",
                "HTTP requests by route, method and status code.",
                &["route", "method", "status_code"],
            ),
            http_duration: histogram(
                "http_request_duration_seconds",
                "HTTP request duration to the response head, by route.",
                &["route"],
                latency_buckets(),
            ),
            requests: counter(
                "requests_total",
                "Chat completion requests by model, outcome and streaming.",
                &["model_name", "outcome", "streaming"],
            ),
            request_duration: histogram(
                "request_duration_seconds",
                "Chat completion time from arrival to the last byte.",
                &["model_name", "streaming"],
                latency_buckets(),
            ),
            ttft: histogram(
                "time_to_first_token_seconds",
                "Time from arrival to the first streamed token.",
                &["model_name"],
                latency_buckets(),
            ),
            tpot: histogram(
                "time_per_output_token_seconds",
                "Time per output token after the first, for streams.",
                &["model_name"],
                pow2(0.0005, 16),
            ),
            queue_depth: gauge(
                "queue_depth",
                "Requests waiting in the admission queue.",
                &["model_name"],
            ),
            queue_wait: histogram(
                "queue_wait_seconds",
                "Time a request waited for a worker.",
                &["model_name"],
                pow2(0.0001, 20),
            ),
            queue_abandoned: counter(
                "queue_abandoned_total",
                "Requests whose client left while they waited in the queue.",
                &["model_name"],
            ),
            batch_size: histogram(
                "batch_size",
                "Requests per batch handed to a worker.",
                &["model_name"],
                pow2(1.0, 10),
            ),
            batch_tokens: histogram(
                "batch_tokens",
                "Estimated tokens per batch handed to a worker.",
                &["model_name"],
                pow2(16.0, 16),
            ),
            tokens: counter(
                "tokens_total",
                "Tokens reported in the workers' usage, by kind (prompt, completion).",
                &["model_name", "kind"],
            ),
            image_tokens: counter(
                "image_tokens_total",
                "Visual tokens estimated for checked images.",
                &["model_name"],
            ),
            images: counter(
                "images_total",
                "Images checked, by sniffed format and outcome.",
                &["format", "outcome"],
            ),
            image_bytes: histogram(
                "image_bytes",
                "Decoded image size in bytes.",
                &["format"],
                pow2(1024.0, 16),
            ),
            image_pixels: histogram(
                "image_pixels",
                "Image size in pixels (width x height).",
                &["format"],
                pow2(1024.0, 16),
            ),
            image_check: histogram(
                "image_check_seconds",
                "Time to decode, read the header of and hash one image.",
                &["format"],
                pow2(0.00001, 16),
            ),
            worker_in_flight: gauge(
                "worker_in_flight",
                "Requests in flight per worker.",
                &["model_name", "worker"],
            ),
            worker_health,
            worker_ejections: counter(
                "worker_ejections_total",
                "Passive ejections of a worker after consecutive failures.",
                &["model_name", "worker"],
            ),
            worker_responses: counter(
                "worker_responses_total",
                "Worker responses by status code (`error` when none came).",
                &["model_name", "worker", "status_code"],
            ),
            retries: counter(
                "retries_total",
                "Requests retried on another worker after a failure before any byte.",
                &["model_name"],
            ),
            rejections: counter(
                "rejections_total",
                "Requests refused by the gateway, by reason.",
                &["model_name", "reason"],
            ),
            registry,
        }
    }

    /// The Prometheus text exposition of everything registered.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("encoding to a Vec cannot fail; this is a bug");
        String::from_utf8(buf).expect("the text format is UTF-8; this is a bug")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_has_the_prefix_and_a_help() {
        let m = Metrics::new();
        m.requests
            .with_label_values(&["caprl", "success", "false"])
            .inc();
        m.worker_health.with_label_values(&["caprl", "w"]).set(1.0);
        let text = m.render();
        assert!(text.contains("caprl_gateway_requests_total{model_name=\"caprl\",outcome=\"success\",streaming=\"false\"} 1"));
        for family in m.registry.gather() {
            assert!(
                family.name().starts_with("caprl_gateway_"),
                "{}",
                family.name()
            );
            assert!(!family.help().is_empty());
        }
    }
}
