//! Every metric the gateway exports, named once, here. Prefix `caprl_gateway_`; counters end in
//! `_total`, times in `_seconds`, sizes in `_bytes`. Labels are bounded: model names and worker
//! addresses come from configuration or discovery, routes from the router, status codes and
//! reasons from fixed sets. Never a key, a prompt or a hash.
//!
//! Callers record through the typed functions on [`Metrics`] (`reject`, `worker_response`,
//! `waited_in_queue`, …), which own the label sets and the reason names ([`RejectReason`],
//! [`HealthLevel`]); the public fields remain for what is not converted yet and for tests.
//!
//! `/metrics` renders [`Metrics::render`] in the Prometheus text format. The in-process engine
//! adds its own series under vLLM's names (`vllm:…`) to the same registry.

use crate::error::GatewayError;
use axum::http::StatusCode;
use prometheus::{
    exponential_buckets, Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

const PREFIX: &str = "caprl_gateway";

/// Why the gateway refused a request: the `reason` label of `rejections_total`, one name per
/// reason for every place that refuses. The names are what the dashboard and the tests read;
/// they predate [`GatewayError::code`] and differ from it in places (`too_large` for
/// `payload_too_large`), so they are mapped here, from the error's variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    BadRequest,
    TooLarge,
    ModelNotFound,
    Unauthorized,
    Forbidden,
    RateLimited,
    RequestTimeout,
    QueueFull,
    QueueTimeout,
    NoWorker,
    BodyBudget,
    ShuttingDown,
}

impl RejectReason {
    pub const ALL: [RejectReason; 12] = [
        RejectReason::BadRequest,
        RejectReason::TooLarge,
        RejectReason::ModelNotFound,
        RejectReason::Unauthorized,
        RejectReason::Forbidden,
        RejectReason::RateLimited,
        RejectReason::RequestTimeout,
        RejectReason::QueueFull,
        RejectReason::QueueTimeout,
        RejectReason::NoWorker,
        RejectReason::BodyBudget,
        RejectReason::ShuttingDown,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::BadRequest => "bad_request",
            RejectReason::TooLarge => "too_large",
            RejectReason::ModelNotFound => "model_not_found",
            RejectReason::Unauthorized => "unauthorized",
            RejectReason::Forbidden => "forbidden",
            RejectReason::RateLimited => "rate_limited",
            RejectReason::RequestTimeout => "request_timeout",
            RejectReason::QueueFull => "queue_full",
            RejectReason::QueueTimeout => "queue_timeout",
            RejectReason::NoWorker => "no_worker",
            RejectReason::BodyBudget => "body_budget_full",
            RejectReason::ShuttingDown => "shutting_down",
        }
    }

    /// The reason a refusal stands for. `None` for an error that is no refusal (a worker's
    /// failure, a bug in the gateway, an unknown route or method): `requests_total`'s outcome
    /// and `http_requests_total` count those. An `Overloaded` error is `QueueFull`; the queue,
    /// the one place that knows a wait ran out, records `QueueTimeout` itself.
    pub fn of(err: &GatewayError) -> Option<RejectReason> {
        Some(match err {
            GatewayError::InvalidRequest { .. } => RejectReason::BadRequest,
            GatewayError::TooLarge { .. } => RejectReason::TooLarge,
            GatewayError::ModelNotFound(_) => RejectReason::ModelNotFound,
            GatewayError::Unauthorized => RejectReason::Unauthorized,
            GatewayError::PermissionDenied(_) => RejectReason::Forbidden,
            GatewayError::RateLimited { .. } => RejectReason::RateLimited,
            GatewayError::RequestTimeout(_) => RejectReason::RequestTimeout,
            GatewayError::Overloaded { .. } => RejectReason::QueueFull,
            GatewayError::NoWorker(_) => RejectReason::NoWorker,
            GatewayError::ShuttingDown => RejectReason::ShuttingDown,
            GatewayError::BodyBudget(_) => RejectReason::BodyBudget,
            GatewayError::RouteNotFound(_)
            | GatewayError::NotFound { .. }
            | GatewayError::Conflict(_)
            | GatewayError::MethodNotAllowed
            | GatewayError::BadGateway(_)
            | GatewayError::WorkerStatus { .. }
            | GatewayError::Timeout(_)
            | GatewayError::Internal(_) => return None,
        })
    }
}

/// How a chat request ended, as `requests_total`'s `outcome` label names it.
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
            | GatewayError::RateLimited { .. }
            | GatewayError::ShuttingDown
            | GatewayError::BodyBudget(_)
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

/// What the resize to the pixel budget did with one image above it, as
/// `image_resizes_total`'s `outcome` label names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeOutcome {
    /// Resized to its target and forwarded as PNG.
    Resized,
    /// Resized, but the PNG was not smaller than what the client sent: the original went on
    /// (the worker resizes it to the same pixels).
    Larger,
    /// Not resized: its decoder is not known to give Pillow's pixels (a CMYK JPEG, a 16-bit
    /// PNG), so the gateway's pixels could differ from the worker's.
    NotExact,
    /// Not resized: it did not decode whole (the worker will say so).
    Undecodable,
}

impl ResizeOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            ResizeOutcome::Resized => "resized",
            ResizeOutcome::Larger => "larger",
            ResizeOutcome::NotExact => "not_exact",
            ResizeOutcome::Undecodable => "undecodable",
        }
    }
}

/// How one remote image fetch ended, as `image_fetches_total`'s `outcome` label names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchOutcome {
    /// Downloaded whole (its checks as an image come after, in validation).
    Ok,
    /// Refused by the SSRF guard before connecting (or on a redirect hop).
    Refused,
    /// The server answered, but not 2xx.
    Status,
    /// No answer: the name did not resolve, the connection or TLS failed, the body broke.
    Error,
    /// Past `--fetch-timeout-secs`.
    Timeout,
    /// Larger than `max_image_bytes`, or the request with its images past `max_body_bytes`.
    TooLarge,
    /// No `--fetch-max-concurrent` slot came free within the fetch's timeout.
    Busy,
}

impl FetchOutcome {
    pub const ALL: [FetchOutcome; 7] = [
        FetchOutcome::Ok,
        FetchOutcome::Refused,
        FetchOutcome::Status,
        FetchOutcome::Error,
        FetchOutcome::Timeout,
        FetchOutcome::TooLarge,
        FetchOutcome::Busy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FetchOutcome::Ok => "ok",
            FetchOutcome::Refused => "refused",
            FetchOutcome::Status => "status",
            FetchOutcome::Error => "error",
            FetchOutcome::Timeout => "timeout",
            FetchOutcome::TooLarge => "too_large",
            FetchOutcome::Busy => "busy",
        }
    }
}

/// A worker's health as `worker_health` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthLevel {
    /// Takes requests.
    Serving,
    /// Ejected after failures, or half-open with its one trial request.
    Ejected,
    /// Down by probe, or serving another model.
    Down,
}

impl HealthLevel {
    fn value(self) -> f64 {
        match self {
            HealthLevel::Serving => 1.0,
            HealthLevel::Ejected => 0.5,
            HealthLevel::Down => 0.0,
        }
    }
}

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
    /// Remote images the gateway fetched (`--fetch-remote-images`), by [`FetchOutcome`].
    pub image_fetches: IntCounterVec,
    /// Bytes of fetched images (each fetch that passed, its whole body).
    pub image_fetch_bytes: IntCounterVec,
    /// Time one fetch took, from waiting for its slot to its last byte (every outcome).
    pub image_fetch_duration: HistogramVec,
    /// Images above the pixel budget in pools that resize them, by [`ResizeOutcome`].
    pub image_resizes: IntCounterVec,
    /// Image bytes of requests to resizing pools: `in` as received, `out` as forwarded.
    pub image_resize_bytes: IntCounterVec,
    /// Time to decode, resize and encode one request's images.
    pub image_resize_duration: HistogramVec,
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
    /// Requests refused by the gateway, by model and reason (a [`RejectReason`]: `bad_request`,
    /// `too_large`, `model_not_found`, `queue_full`, `queue_timeout`, `no_worker`,
    /// `unauthorized`, `shutting_down`). `model_name` is empty when the model was not known (or
    /// not served). Recorded through [`Metrics::reject`] or [`Metrics::rejected`].
    pub rejections: IntCounterVec,
    /// Batch lines waiting in the admission queue, by model (they yield to interactive ones).
    pub bulk_queue_depth: IntGaugeVec,
    /// Batches by status (`validating`, `in_progress`, …, `cancelled`).
    pub batches: IntGaugeVec,
    /// Batch lines finished, by model and outcome (`completed`: in the output file; `failed`:
    /// in the error file, not executed lines included).
    pub batch_lines: IntCounterVec,
    /// Bytes the files API holds on disk (uploads and batch output).
    pub files_bytes: IntGaugeVec,
    /// Client connections open now, and accepted in all.
    pub connections_open: IntGaugeVec,
    pub connections: IntCounterVec,
    /// `/v1` requests by API key name (`key`: a name from the keys file, never the secret).
    pub key_requests: IntCounterVec,
    /// Requests refused by a key's limit, by key and limit (`requests`, `tokens`,
    /// `concurrency`).
    pub key_rate_limited: IntCounterVec,
    /// Tokens charged to a key (the worker's usage; the estimate where none came), by kind.
    pub key_tokens: IntCounterVec,
    /// Requests of a key in flight.
    pub key_in_flight: IntGaugeVec,
    /// API keys in force.
    pub keys: IntGaugeVec,
    /// Reloads of the keys file by outcome (`ok`; `error`: the old keys stayed).
    pub keys_reloads: IntCounterVec,
    /// Caption cache lookups by outcome (`hit`, `miss`, `bypass`: not cacheable).
    pub cache_requests: IntCounterVec,
    /// Caption cache entries removed, by cause (`size`, `expired`, `replaced`, `explicit`).
    pub cache_evictions: IntCounterVec,
    /// Bytes of request bodies in flight, against `max_inflight_body_bytes`.
    pub body_bytes_in_flight: IntGaugeVec,
    /// Bytes and entries the caption cache holds.
    pub cache_bytes: IntGaugeVec,
    pub cache_entries: IntGaugeVec,
}

/// Holds one open connection in `connections_open`; dropped when the connection ends.
pub struct OpenConnection(prometheus::IntGauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
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
            image_fetches: counter(
                "image_fetches_total",
                "Remote images fetched by the gateway, by outcome.",
                &["outcome"],
            ),
            image_fetch_bytes: counter(
                "image_fetch_bytes_total",
                "Bytes of remote images fetched by the gateway.",
                &[],
            ),
            image_fetch_duration: histogram(
                "image_fetch_duration_seconds",
                "Time one remote image fetch took, waiting for its slot included.",
                &[],
                latency_buckets(),
            ),
            image_resizes: counter(
                "image_resizes_total",
                "Images above the pixel budget in resizing pools, by outcome.",
                &["outcome"],
            ),
            image_resize_bytes: counter(
                "image_resize_bytes_total",
                "Image bytes of requests to resizing pools, as received (in) and forwarded (out).",
                &["stage"],
            ),
            image_resize_duration: histogram(
                "image_resize_duration_seconds",
                "Time to decode, resize and encode one request's images above the pixel budget.",
                &[],
                latency_buckets(),
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
            bulk_queue_depth: gauge(
                "bulk_queue_depth",
                "Batch lines waiting in the admission queue.",
                &["model_name"],
            ),
            batches: gauge("batches", "Batches by status.", &["status"]),
            batch_lines: counter(
                "batch_lines_total",
                "Batch lines finished, by outcome (completed, failed).",
                &["model_name", "outcome"],
            ),
            files_bytes: gauge(
                "files_bytes",
                "Bytes the files API holds on disk (uploads and batch output).",
                &[],
            ),
            connections_open: gauge(
                "connections_open",
                "Client connections open now.",
                &[],
            ),
            connections: counter(
                "connections_total",
                "Client connections accepted.",
                &[],
            ),
            key_requests: counter(
                "key_requests_total",
                "API requests by key name.",
                &["key"],
            ),
            key_rate_limited: counter(
                "key_rate_limited_total",
                "Requests refused by a key's limit, by key and limit (requests, tokens, concurrency).",
                &["key", "limit"],
            ),
            key_tokens: counter(
                "key_tokens_total",
                "Tokens charged to a key, by kind (prompt, completion).",
                &["key", "kind"],
            ),
            key_in_flight: gauge(
                "key_in_flight",
                "Requests of a key in flight.",
                &["key"],
            ),
            keys: gauge("keys", "API keys in force.", &[]),
            cache_requests: counter(
                "cache_requests_total",
                "Caption cache lookups by outcome (hit, miss, bypass).",
                &["outcome"],
            ),
            cache_evictions: counter(
                "cache_evictions_total",
                "Caption cache entries removed, by cause (size, expired, replaced, explicit).",
                &["cause"],
            ),
            cache_bytes: gauge("cache_bytes", "Bytes the caption cache holds.", &[]),
            body_bytes_in_flight: gauge(
                "body_bytes_in_flight",
                "Bytes of request bodies in flight (declared lengths).",
                &[],
            ),
            cache_entries: gauge("cache_entries", "Entries the caption cache holds.", &[]),
            keys_reloads: counter(
                "keys_reloads_total",
                "Reloads of the keys file by outcome (ok, error: the keys in force stayed).",
                &["outcome"],
            ),
            registry,
        }
    }

    /// A connection was accepted: counted, and open until the guard drops.
    pub fn connection_opened(&self) -> OpenConnection {
        self.connections.with_label_values(&[] as &[&str]).inc();
        let open = self.connections_open.with_label_values(&[] as &[&str]);
        open.inc();
        OpenConnection(open)
    }

    /// A `/v1` request authenticated as `key`.
    pub fn key_request(&self, key: &str) {
        self.key_requests.with_label_values(&[key]).inc();
    }

    /// A request of `key` refused by its `limit` (`requests`, `tokens`, `concurrency`).
    pub fn key_limited(&self, key: &str, limit: &str) {
        self.key_rate_limited.with_label_values(&[key, limit]).inc();
    }

    /// Tokens charged to `key` when its request finished.
    pub fn key_tokens(&self, key: &str, prompt: u64, completion: u64) {
        self.key_tokens
            .with_label_values(&[key, "prompt"])
            .inc_by(prompt);
        self.key_tokens
            .with_label_values(&[key, "completion"])
            .inc_by(completion);
    }

    /// The in-flight gauge of `key`, looked up once per key.
    pub fn key_in_flight(&self, key: &str) -> prometheus::IntGauge {
        self.key_in_flight.with_label_values(&[key])
    }

    /// A caption cache lookup: a hit or a miss.
    pub fn cache_lookup(&self, hit: bool) {
        self.cache_requests
            .with_label_values(&[if hit { "hit" } else { "miss" }])
            .inc();
    }

    /// A request the cache would not take (not deterministic, or opted out).
    pub fn cache_bypassed(&self) {
        self.cache_requests.with_label_values(&["bypass"]).inc();
    }

    pub fn cache_evicted(&self, cause: &str) {
        self.cache_evictions.with_label_values(&[cause]).inc();
    }

    pub fn cache_size(&self, bytes: u64, entries: u64) {
        let none: &[&str] = &[];
        self.cache_bytes
            .with_label_values(none)
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        self.cache_entries
            .with_label_values(none)
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
    }

    /// `n` keys are in force.
    pub fn keys_loaded(&self, n: usize) {
        self.keys
            .with_label_values(&[] as &[&str])
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The keys file was reloaded (`ok`) or refused (`error`).
    pub fn keys_reloaded(&self, ok: bool) {
        self.keys_reloads
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
    }

    /// A key left the keys file: its series go too, so the label stays bounded by the file.
    pub fn forget_key(&self, key: &str) {
        let _ = self.key_requests.remove_label_values(&[key]);
        let _ = self.key_in_flight.remove_label_values(&[key]);
        for kind in ["prompt", "completion"] {
            let _ = self.key_tokens.remove_label_values(&[key, kind]);
        }
        for limit in ["requests", "tokens", "concurrency"] {
            let _ = self.key_rate_limited.remove_label_values(&[key, limit]);
        }
    }

    /// An HTTP request answered: `route` is the matched route template (a bounded label).
    pub fn http_request(
        &self,
        route: &str,
        method: &str,
        status: StatusCode,
        elapsed: std::time::Duration,
    ) {
        self.http_requests
            .with_label_values(&[route, method, status.as_str()])
            .inc();
        self.http_duration
            .with_label_values(&[route])
            .observe(elapsed.as_secs_f64());
    }

    /// A chat request finished: counted by outcome, timed, its tokens added.
    pub fn request_finished(
        &self,
        model: &str,
        outcome: Outcome,
        stream: bool,
        elapsed: std::time::Duration,
        usage: Option<&crate::api::chat::Usage>,
    ) {
        let streaming = if stream { "true" } else { "false" };
        self.requests
            .with_label_values(&[model, outcome.as_str(), streaming])
            .inc();
        self.request_duration
            .with_label_values(&[model, streaming])
            .observe(elapsed.as_secs_f64());
        if let Some(u) = usage {
            self.tokens
                .with_label_values(&[model, "prompt"])
                .inc_by(u.prompt_tokens);
            self.tokens
                .with_label_values(&[model, "completion"])
                .inc_by(u.completion_tokens);
        }
    }

    /// Time to a stream's first token.
    pub fn first_token(&self, model: &str, after: std::time::Duration) {
        self.ttft
            .with_label_values(&[model])
            .observe(after.as_secs_f64());
    }

    /// Mean time per output token after the first, of one stream.
    pub fn per_output_token(&self, model: &str, seconds: f64) {
        self.tpot.with_label_values(&[model]).observe(seconds);
    }

    /// An image that passed its checks: counted by format, its size, pixels and check time.
    pub fn image_checked(&self, img: &crate::validate::ImageInfo) {
        let f = img.format.as_str();
        self.images.with_label_values(&[f, "ok"]).inc();
        self.image_bytes
            .with_label_values(&[f])
            .observe(img.bytes as f64);
        self.image_pixels
            .with_label_values(&[f])
            .observe(img.width as f64 * img.height as f64);
        self.image_check
            .with_label_values(&[f])
            .observe(img.check_time.as_secs_f64());
    }

    /// An image that failed its checks, with its format when it was sniffed.
    pub fn image_rejected(&self, format: Option<crate::validate::ImageFormat>) {
        let f = format.map_or("unknown", |f| f.as_str());
        self.images.with_label_values(&[f, "rejected"]).inc();
    }

    /// One remote image fetch ended: its outcome, its time, and its bytes when it passed.
    pub fn image_resized(&self, outcome: ResizeOutcome) {
        self.image_resizes
            .with_label_values(&[outcome.as_str()])
            .inc();
    }

    /// One request to a resizing pool: its image bytes as received and as forwarded, and the
    /// time its resizes took (`None`: nothing needed resizing).
    pub fn images_forwarded(
        &self,
        received: u64,
        forwarded: u64,
        took: Option<std::time::Duration>,
    ) {
        self.image_resize_bytes
            .with_label_values(&["in"])
            .inc_by(received);
        self.image_resize_bytes
            .with_label_values(&["out"])
            .inc_by(forwarded);
        if let Some(took) = took {
            self.image_resize_duration
                .with_label_values(&[] as &[&str])
                .observe(took.as_secs_f64());
        }
    }

    pub fn image_fetched(&self, outcome: FetchOutcome, took: std::time::Duration, bytes: u64) {
        self.image_fetches
            .with_label_values(&[outcome.as_str()])
            .inc();
        self.image_fetch_duration
            .with_label_values(&[] as &[&str])
            .observe(took.as_secs_f64());
        if outcome == FetchOutcome::Ok {
            self.image_fetch_bytes
                .with_label_values(&[] as &[&str])
                .inc_by(bytes);
        }
    }

    /// Visual tokens estimated for `model`'s requests.
    pub fn image_tokens(&self, model: &str, tokens: u64) {
        self.image_tokens.with_label_values(&[model]).inc_by(tokens);
    }

    /// A request refused with `err`, when `err` is a refusal (see [`RejectReason::of`]).
    pub fn reject(&self, model: &str, err: &GatewayError) {
        if let Some(reason) = RejectReason::of(err) {
            self.rejected(model, reason);
        }
    }

    /// A request refused for `reason`.
    pub fn rejected(&self, model: &str, reason: RejectReason) {
        self.rejections
            .with_label_values(&[model, reason.as_str()])
            .inc();
    }

    /// A worker's answer: its status code, or `None` when none came (refused, reset, timed out).
    pub fn worker_response(&self, model: &str, worker: &str, status: Option<StatusCode>) {
        let code = status.as_ref().map_or("error", StatusCode::as_str);
        self.worker_responses
            .with_label_values(&[model, worker, code])
            .inc();
    }

    /// A request sent again, to another worker, after a failure before any byte.
    pub fn retry(&self, model: &str) {
        self.retries.with_label_values(&[model]).inc();
    }

    /// How many batch lines wait in `model`'s queue now.
    pub fn set_bulk_queue_depth(&self, model: &str, depth: usize) {
        self.bulk_queue_depth
            .with_label_values(&[model])
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    /// Batches in each status now (every status is set, absent ones to 0).
    pub fn set_batches(&self, counts: &[(crate::store::Status, u64)]) {
        for status in crate::store::Status::ALL {
            let n = counts
                .iter()
                .find(|(s, _)| *s == status)
                .map_or(0, |(_, n)| *n);
            self.batches
                .with_label_values(&[status.as_str()])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Batch lines of `model` finished: `completed` into the output file, `failed` into the
    /// error file.
    pub fn batch_lines_done(&self, model: &str, completed: u64, failed: u64) {
        if completed > 0 {
            self.batch_lines
                .with_label_values(&[model, "completed"])
                .inc_by(completed);
        }
        if failed > 0 {
            self.batch_lines
                .with_label_values(&[model, "failed"])
                .inc_by(failed);
        }
    }

    /// Bytes the files API holds now.
    pub fn set_files_bytes(&self, bytes: u64) {
        self.files_bytes
            .with_label_values::<&str>(&[])
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// How many requests wait in `model`'s queue now.
    pub fn set_queue_depth(&self, model: &str, depth: usize) {
        self.queue_depth
            .with_label_values(&[model])
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    /// A request left the queue with a lease after waiting `waited`.
    pub fn waited_in_queue(&self, model: &str, waited: std::time::Duration) {
        self.queue_wait
            .with_label_values(&[model])
            .observe(waited.as_secs_f64());
    }

    /// A request's caller left while it waited in the queue.
    pub fn left_queue(&self, model: &str) {
        self.queue_abandoned.with_label_values(&[model]).inc();
    }

    /// `delta` requests more (or fewer) in flight on a worker.
    pub fn add_worker_in_flight(&self, model: &str, worker: &str, delta: i64) {
        self.worker_in_flight
            .with_label_values(&[model, worker])
            .add(delta);
    }

    /// A worker was ejected after consecutive failures.
    pub fn worker_ejected(&self, model: &str, worker: &str) {
        self.worker_ejections
            .with_label_values(&[model, worker])
            .inc();
    }

    /// A worker's health now.
    pub fn set_worker_health(&self, model: &str, worker: &str, level: HealthLevel) {
        self.worker_health
            .with_label_values(&[model, worker])
            .set(level.value());
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
    fn reject_reasons_keep_the_names_dashboards_read() {
        let names: Vec<&str> = RejectReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            names,
            [
                "bad_request",
                "too_large",
                "model_not_found",
                "unauthorized",
                "forbidden",
                "rate_limited",
                "request_timeout",
                "queue_full",
                "queue_timeout",
                "no_worker",
                "body_budget_full",
                "shutting_down"
            ]
        );
    }

    #[test]
    fn reject_names_the_reason_from_the_error() {
        let m = Metrics::new();
        let cases = [
            (GatewayError::invalid("bad", None), Some("bad_request")),
            (GatewayError::too_large("big", None), Some("too_large")),
            (
                GatewayError::ModelNotFound("x".into()),
                Some("model_not_found"),
            ),
            (GatewayError::Unauthorized, Some("unauthorized")),
            (
                GatewayError::PermissionDenied("no".into()),
                Some("forbidden"),
            ),
            (
                GatewayError::RateLimited {
                    message: "slow down".into(),
                    limit: "requests",
                    retry_after: None,
                },
                Some("rate_limited"),
            ),
            (
                GatewayError::RequestTimeout("late".into()),
                Some("request_timeout"),
            ),
            (
                GatewayError::Overloaded {
                    message: "full".into(),
                    retry_after: std::time::Duration::from_secs(1),
                },
                Some("queue_full"),
            ),
            (GatewayError::NoWorker("caprl".into()), Some("no_worker")),
            (GatewayError::ShuttingDown, Some("shutting_down")),
            (
                GatewayError::BodyBudget("full".into()),
                Some("body_budget_full"),
            ),
            (GatewayError::BadGateway("reset".into()), None),
            (GatewayError::Timeout("slow".into()), None),
            (GatewayError::Internal("bug".into()), None),
            (GatewayError::RouteNotFound("/x".into()), None),
        ];
        for (err, want) in &cases {
            assert_eq!(
                RejectReason::of(err).map(RejectReason::as_str),
                *want,
                "{err:?}"
            );
            m.reject("caprl", err);
        }
        // Each refusal once, the other errors not at all; only the queue records a timeout.
        for reason in RejectReason::ALL {
            let want = u64::from(reason != RejectReason::QueueTimeout);
            assert_eq!(
                m.rejections
                    .with_label_values(&["caprl", reason.as_str()])
                    .get(),
                want,
                "{reason:?}"
            );
        }
    }

    #[test]
    fn worker_response_labels_the_status_or_error() {
        let m = Metrics::new();
        m.worker_response("caprl", "w", Some(StatusCode::SERVICE_UNAVAILABLE));
        m.worker_response("caprl", "w", Some(StatusCode::OK));
        m.worker_response("caprl", "w", None);
        for code in ["503", "200", "error"] {
            assert_eq!(
                m.worker_responses
                    .with_label_values(&["caprl", "w", code])
                    .get(),
                1,
                "{code}"
            );
        }
        m.set_worker_health("caprl", "w", HealthLevel::Ejected);
        assert_eq!(
            m.worker_health.with_label_values(&["caprl", "w"]).get(),
            0.5
        );
    }

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
