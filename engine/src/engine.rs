//! The engine's handle: submit a request, receive its tokens as they are produced.
//!
//! [`EngineHandle::start`] moves a [`StepModel`] onto a dedicated OS thread running the
//! [`Scheduler`]; the cloneable handle checks and prepares each [`GenerateRequest`] on the
//! caller's thread (sampling parameters resolved against the model's defaults, images
//! preprocessed, prompt rendered and tokenized, lengths checked against the context and the
//! KV cache), then queues it. The caller reads [`Event`]s from a bounded channel: one
//! `Token` per generated token of each of the `n` sequences, then each sequence's
//! `Finished`. Dropping the receiver cancels the request at the next step boundary.
//! [`EngineMetrics`] are the engine's series under vLLM's names.

use crate::backend::{ProcessedImage, StepModel};
use crate::prompt::{Message, PromptBuilder};
use crate::sampling::{ParamError, RequestSampling, SamplingDefaults};
use crate::scheduler::{Scheduler, SchedulerConfig, Submission};
use prometheus::{Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use tokio::sync::mpsc as tmpsc;

/// Events buffered per request between the scheduler and its reader; past it events wait in
/// the scheduler's outbox for the reader (a slow client never stalls a step).
pub const EVENT_CHANNEL: usize = 256;

/// Why a sequence ended (OpenAI's `finish_reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An eos token, a stop token or a stop string.
    Stop,
    /// `max_tokens`, or the context is full.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// What stopped a sequence besides eos (vLLM's `stop_reason`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    Token(u32),
    Text(String),
}

/// Token counts of one sequence.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// The prompt, image pads included.
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// What the engine tells a request's reader.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A token of sequence `index`; `text` is what it adds to the output (possibly empty:
    /// held back as an incomplete character or the possible start of a stop string).
    Token {
        index: usize,
        text: String,
        token_id: u32,
    },
    /// Sequence `index` is done.
    Finished {
        index: usize,
        reason: FinishReason,
        stop_reason: Option<StopReason>,
        usage: Usage,
    },
    /// The request failed inside the engine; nothing more follows.
    Error(String),
}

/// One request to the engine.
#[derive(Debug, Clone, Default)]
pub struct GenerateRequest {
    pub messages: Vec<Message>,
    /// Encoded image bytes, in the order the messages' image parts appear.
    pub images: Vec<bytes::Bytes>,
    pub sampling: RequestSampling,
}

/// Why a request was not accepted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SubmitError {
    /// The client's fault (OpenAI's 400): a bad parameter, a prompt too long.
    #[error("{message}")]
    Invalid {
        message: String,
        param: Option<&'static str>,
    },
    /// The engine's thread is gone.
    #[error("the engine has stopped")]
    Stopped,
}

impl From<ParamError> for SubmitError {
    fn from(e: ParamError) -> Self {
        SubmitError::Invalid {
            message: e.message,
            param: Some(e.param),
        }
    }
}

fn invalid(message: impl Into<String>, param: &'static str) -> SubmitError {
    SubmitError::Invalid {
        message: message.into(),
        param: Some(param),
    }
}

/// A running request: its events, and what was decided before it was queued.
#[derive(Debug)]
pub struct Generation {
    pub events: tmpsc::Receiver<Event>,
    pub prompt_tokens: usize,
    pub n: usize,
    /// The rendered prompt, for debugging.
    pub prompt_text: String,
}

/// Turns encoded image bytes into the vision tower's input (the model's preprocessor).
pub type ImageProcessor = Arc<dyn Fn(&[u8]) -> anyhow::Result<ProcessedImage> + Send + Sync>;

/// Everything the engine needs besides the model.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub scheduler: SchedulerConfig,
    /// Longest prompt plus output (vLLM's `max_model_len`).
    pub max_model_len: usize,
    pub defaults: SamplingDefaults,
}

/// A cloneable handle on a running engine; the engine stops when the last one is dropped.
#[derive(Clone)]
pub struct EngineHandle {
    inner: Arc<Inner>,
}

struct Inner {
    /// To the scheduler thread, which owns the receiving end; unbounded, since the gateway's
    /// queue already bounds what is in flight.
    tx: mpsc::Sender<Submission>,
    prompts: Arc<PromptBuilder>,
    images: ImageProcessor,
    cfg: EngineConfig,
}

impl std::fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHandle")
            .field("config", &self.inner.cfg)
            .finish()
    }
}

impl EngineHandle {
    /// Start the scheduler thread with this model.
    pub fn start<M: StepModel>(
        model: M,
        prompts: PromptBuilder,
        images: ImageProcessor,
        cfg: EngineConfig,
        metrics: Arc<EngineMetrics>,
    ) -> anyhow::Result<EngineHandle> {
        let (tx, rx) = mpsc::channel();
        let prompts = Arc::new(prompts);
        let tokenizer = Arc::new(prompts.tokenizer().clone());
        let sched_cfg = cfg.scheduler.clone();
        std::thread::Builder::new()
            .name("caprl-engine".into())
            .spawn(move || Scheduler::new(model, sched_cfg, tokenizer, metrics, rx).run())?;
        Ok(EngineHandle {
            inner: Arc::new(Inner {
                tx,
                prompts,
                images,
                cfg,
            }),
        })
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.cfg
    }

    /// Check, prepare and queue a request. CPU work (image preprocessing, tokenization)
    /// happens here, on the caller's thread.
    pub fn generate(&self, req: GenerateRequest) -> Result<Generation, SubmitError> {
        let arrived = Instant::now();
        let cfg = &self.inner.cfg;
        let mut params = req.sampling.resolve(&cfg.defaults)?;
        let parts: usize = req.messages.iter().map(Message::image_count).sum();
        if parts != req.images.len() {
            return Err(invalid(
                format!("{parts} image parts but {} images", req.images.len()),
                "messages",
            ));
        }
        let mut images = Vec::with_capacity(req.images.len());
        for (i, bytes) in req.images.iter().enumerate() {
            let img = (self.inner.images)(bytes)
                .map_err(|e| invalid(format!("image {i}: {e}"), "messages"))?;
            images.push(img);
        }
        let built = self
            .inner
            .prompts
            .build(&req.messages, images)
            .map_err(|e| invalid(format!("{e:#}"), "messages"))?;
        let prompt_len = built.input.input_ids.len();
        let max_len = cfg.max_model_len;
        if prompt_len >= max_len {
            return Err(invalid(
                format!("This model's maximum context length is {max_len} tokens. However, your request has {prompt_len} input tokens. Please reduce the length of the input messages."),
                "messages",
            ));
        }
        let max_tokens = match params.max_tokens {
            Some(m) if prompt_len + m > max_len => {
                return Err(invalid(
                    format!("'max_tokens' or 'max_completion_tokens' is too large: {m}. This model's maximum context length is {max_len} tokens and your request has {prompt_len} input tokens ({m} > {max_len} - {prompt_len})."),
                    "max_tokens",
                ))
            }
            Some(m) => m,
            None => max_len - prompt_len,
        };
        params.max_tokens = Some(max_tokens);
        if params.n > cfg.scheduler.max_sequences {
            return Err(invalid(
                format!("n must be at most {}", cfg.scheduler.max_sequences),
                "n",
            ));
        }
        let (events, rx) = tmpsc::channel(EVENT_CHANNEL);
        let n = params.n;
        let sub = Submission {
            prompt: built.input,
            params,
            events,
            arrived,
        };
        if sub.kv_reservation() > cfg.scheduler.kv_cache_tokens {
            return Err(invalid(
                format!(
                    "the request needs {} KV cache tokens ((prompt + max_tokens) x n) but the engine holds {}",
                    sub.kv_reservation(),
                    cfg.scheduler.kv_cache_tokens
                ),
                "max_tokens",
            ));
        }
        self.inner.tx.send(sub).map_err(|_| SubmitError::Stopped)?;
        Ok(Generation {
            events: rx,
            prompt_tokens: prompt_len,
            n,
            prompt_text: built.text,
        })
    }
}

pub use candle_core::{DType, Device};

/// A device from its name: `cpu`, `cuda` or `cuda:N` (`metal:N` where built with metal).
pub fn parse_device(spec: &str) -> anyhow::Result<Device> {
    let spec = spec.trim();
    if spec == "cpu" {
        return Ok(Device::Cpu);
    }
    let (kind, ordinal) = match spec.split_once(':') {
        Some((k, n)) => (
            k,
            n.parse::<usize>()
                .map_err(|_| anyhow::anyhow!("bad device ordinal in {spec:?}"))?,
        ),
        None => (spec, 0),
    };
    match kind {
        "cuda" => Ok(Device::new_cuda(ordinal)?),
        "metal" => Ok(Device::new_metal(ordinal)?),
        _ => anyhow::bail!("unknown device {spec:?}: expected cpu or cuda:N"),
    }
}

/// The engine's Prometheus series, under vLLM's names, each with a constant `model_name`.
#[derive(Debug, Clone)]
pub struct EngineMetrics {
    pub running: Gauge,
    pub waiting: Gauge,
    pub kv_usage: Gauge,
    pub ttft: Histogram,
    pub tpot: Histogram,
    pub e2e: Histogram,
    pub prompt_tokens: IntCounter,
    pub generation_tokens: IntCounter,
    pub success: IntCounterVec,
}

const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
const TPOT_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
const E2E_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];

impl EngineMetrics {
    /// Create the series and register them in `registry`.
    pub fn register(registry: &Registry, model_name: &str) -> prometheus::Result<EngineMetrics> {
        let m = EngineMetrics::new(model_name)?;
        registry.register(Box::new(m.running.clone()))?;
        registry.register(Box::new(m.waiting.clone()))?;
        registry.register(Box::new(m.kv_usage.clone()))?;
        registry.register(Box::new(m.ttft.clone()))?;
        registry.register(Box::new(m.tpot.clone()))?;
        registry.register(Box::new(m.e2e.clone()))?;
        registry.register(Box::new(m.prompt_tokens.clone()))?;
        registry.register(Box::new(m.generation_tokens.clone()))?;
        registry.register(Box::new(m.success.clone()))?;
        Ok(m)
    }

    /// The series without a registry (tests, benches).
    pub fn new(model_name: &str) -> prometheus::Result<EngineMetrics> {
        let opts =
            |name: &str, help: &str| Opts::new(name, help).const_label("model_name", model_name);
        let hist = |name: &str, help: &str, buckets: &[f64]| {
            Histogram::with_opts(
                HistogramOpts::new(name, help)
                    .const_label("model_name", model_name)
                    .buckets(buckets.to_vec()),
            )
        };
        Ok(EngineMetrics {
            running: Gauge::with_opts(opts(
                "vllm:num_requests_running",
                "Number of requests in model execution batches.",
            ))?,
            waiting: Gauge::with_opts(opts(
                "vllm:num_requests_waiting",
                "Number of requests waiting to be processed.",
            ))?,
            kv_usage: Gauge::with_opts(opts(
                "vllm:kv_cache_usage_perc",
                "KV-cache usage. 1 means 100 percent usage.",
            ))?,
            ttft: hist(
                "vllm:time_to_first_token_seconds",
                "Histogram of time to first token in seconds.",
                TTFT_BUCKETS,
            )?,
            tpot: hist(
                "vllm:time_per_output_token_seconds",
                "Histogram of time per output token in seconds.",
                TPOT_BUCKETS,
            )?,
            e2e: hist(
                "vllm:e2e_request_latency_seconds",
                "Histogram of e2e request latency in seconds.",
                E2E_BUCKETS,
            )?,
            prompt_tokens: IntCounter::with_opts(opts(
                "vllm:prompt_tokens_total",
                "Number of prefill tokens processed.",
            ))?,
            generation_tokens: IntCounter::with_opts(opts(
                "vllm:generation_tokens_total",
                "Number of generation tokens processed.",
            ))?,
            success: IntCounterVec::new(
                opts(
                    "vllm:request_success_total",
                    "Count of successfully processed requests.",
                ),
                &["finished_reason"],
            )?,
        })
    }

    /// A request's last sequence finished.
    pub fn finished(&self, reason: FinishReason, e2e: Duration) {
        self.e2e.observe(e2e.as_secs_f64());
        self.success.with_label_values(&[reason.as_str()]).inc();
    }
}
