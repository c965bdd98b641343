//! The engine's front door: load a model directory, submit a request, receive its tokens as
//! they are produced.
//!
//! [`Engine::load`] assembles a running engine from a Hugging Face model directory and
//! [`EngineOptions`]: the model on its device and dtype (`model/`), sampling defaults from its
//! `generation_config.json`, the chat template and tokenizer (`prompt.rs`), the image
//! preprocessor (`processor.rs`), the scheduler's limits, and the metrics in the caller's
//! registry (`metrics.rs`). [`Engine::start`] is the step under it: it moves any
//! [`StepModel`] (tests use a scripted one) onto a dedicated OS thread running the
//! [`Scheduler`]. The cloneable handle checks and prepares each [`GenerateRequest`] on the
//! caller's thread (sampling parameters resolved against the model's defaults, images
//! preprocessed, prompt rendered and tokenized, lengths checked against the context and the
//! KV cache), then queues it. The caller reads [`Event`]s from a bounded channel: one
//! `Token` per generated token of each of the `n` sequences, then each sequence's
//! `Finished`. Dropping the receiver cancels the request at the next step boundary.

use crate::backend::{ProcessedImage, StepModel};
use crate::config::PreprocessorConfig;
use crate::event::Event;
use crate::metrics::EngineMetrics;
use crate::model::Qwen25VL;
use crate::processor;
use crate::prompt::{Message, PromptBuilder};
use crate::sampling::{ParamError, RequestSampling, SamplingDefaults};
use crate::scheduler::{Scheduler, SchedulerConfig, Submission};
use candle_core::{DType, Device};
use caprl_image::Resample;
use prometheus::Registry;
use std::path::Path;
use std::sync::{mpsc, Arc};
use std::time::Instant;
use tokio::sync::mpsc as tmpsc;

/// Events buffered per request between the scheduler and its reader; past it events wait in
/// the scheduler's outbox for the reader (a slow client never stalls a step).
pub const EVENT_CHANNEL: usize = 256;

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

/// How to run a model directory: [`Engine::load`]'s options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineOptions {
    /// `cpu`, `cuda` or `cuda:N` ([`parse_device`]).
    pub device: String,
    pub dtype: Dtype,
    /// Most sequences in one decode step (at least 1).
    pub max_sequences: usize,
    /// Most tokens in one step (at least 1); see [`SchedulerConfig::step_token_budget`].
    pub step_token_budget: usize,
    /// Tokens the KV cache holds over all sequences; also caps the context length.
    pub kv_cache_tokens: usize,
    /// Take sampling defaults from `generation_config.json`, as vLLM does (its eos ids are
    /// taken either way).
    pub use_generation_config: bool,
    /// Whose resize the image processor reproduces: torchvision's (vLLM's, the default) or
    /// Pillow's (transformers' slow processor).
    pub image_resize: Resample,
}

/// The type of the weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F32,
    Bf16,
    F16,
}

impl Dtype {
    /// Candle's name for it.
    pub fn candle(self) -> DType {
        match self {
            Dtype::F32 => DType::F32,
            Dtype::Bf16 => DType::BF16,
            Dtype::F16 => DType::F16,
        }
    }
}

/// A cloneable handle on a running engine; the engine stops when the last one is dropped.
#[derive(Clone)]
pub struct Engine {
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

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("config", &self.inner.cfg)
            .finish()
    }
}

impl Engine {
    /// Load a Hugging Face model directory (Qwen2.5-VL) and start its scheduler thread. The
    /// engine's series are registered in `registry` with the constant label `model_name` =
    /// `served_model_name`.
    pub fn load(
        dir: &Path,
        opts: &EngineOptions,
        registry: &Registry,
        served_model_name: &str,
    ) -> anyhow::Result<Engine> {
        let device = parse_device(&opts.device)?;
        let dtype = opts.dtype.candle();
        let model = Qwen25VL::load(dir, &device, dtype)?;
        let mut defaults = SamplingDefaults::from_generation_config(
            model.generation_config(),
            opts.use_generation_config,
        );
        if defaults.eos_token_ids.is_empty() {
            // generation_config.json names none: config.json's.
            defaults.eos_token_ids = model.eos_token_ids();
        }
        let prompts = PromptBuilder::from_model_dir(dir, model.spatial_merge_size())?;
        let pre = PreprocessorConfig {
            resample: opts.image_resize,
            ..model.preprocessor_config().clone()
        };
        let images: ImageProcessor = Arc::new(move |bytes: &[u8]| {
            let img = processor::decode_image(bytes)?;
            processor::preprocess(&img, &pre)
        });
        let cfg = EngineConfig {
            scheduler: SchedulerConfig {
                max_sequences: opts.max_sequences.max(1),
                step_token_budget: opts.step_token_budget.max(1),
                kv_cache_tokens: opts.kv_cache_tokens,
            },
            max_model_len: model
                .config()
                .text
                .max_position_embeddings
                .min(opts.kv_cache_tokens),
            defaults,
        };
        let metrics = match EngineMetrics::register(registry, served_model_name) {
            Ok(m) => m,
            // The same series already registered (a second engine under one served name): this
            // engine's series then go unexported rather than failing the start.
            Err(e) => {
                tracing::warn!(error = %e, model = served_model_name, "engine metrics not registered");
                EngineMetrics::new(served_model_name)?
            }
        };
        tracing::info!(dir = %dir.display(), device = %opts.device, ?dtype, ?cfg, "candle engine loaded");
        Engine::start(model, prompts, images, cfg, Arc::new(metrics))
    }

    /// Start the scheduler thread with this model.
    pub fn start<M: StepModel>(
        model: M,
        prompts: PromptBuilder,
        images: ImageProcessor,
        cfg: EngineConfig,
        metrics: Arc<EngineMetrics>,
    ) -> anyhow::Result<Engine> {
        let (tx, rx) = mpsc::channel();
        let prompts = Arc::new(prompts);
        let tokenizer = Arc::new(prompts.tokenizer().clone());
        let sched_cfg = cfg.scheduler.clone();
        std::thread::Builder::new()
            .name("caprl-engine".into())
            .spawn(move || Scheduler::new(model, sched_cfg, tokenizer, metrics, rx).run())?;
        Ok(Engine {
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
        })
    }
}

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
