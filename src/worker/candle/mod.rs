//! The in-process Qwen2.5-VL engine (feature `candle`), behind the same seam as an HTTP worker.
//!
//! [`CandleWorker::load`] loads the model directory on the configured device and dtype and
//! starts `caprl_engine`'s scheduler thread. [`CandleWorker::send`] reads the validated body for
//! the engine ([`params`]), hands it the image bytes validation kept, and answers with what vLLM
//! would send, as typed chunks built from the engine's events ([`wire`]); a bad parameter is
//! the client's error (a 400 naming the field, as vLLM answers). A client that hangs up drops
//! the body and so cancels the sequence.

mod params;
mod wire;

use super::{Fault, SendError, Upstream, UpstreamBody};
use crate::config::{EngineArgs, EngineDtype};
use crate::error::GatewayError;
use crate::validate::ValidRequest;
use axum::http::StatusCode;
use bytes::Bytes;
use caprl_engine::engine::{
    parse_device, DType, EngineConfig, EngineHandle as Engine, EngineMetrics, GenerateRequest,
    SubmitError,
};
use caprl_engine::model::Qwen25VL;
use caprl_engine::processor;
use caprl_engine::prompt::PromptBuilder;
use caprl_engine::sampling::SamplingDefaults;
use caprl_engine::scheduler::SchedulerConfig;
use std::path::Path;
use std::sync::Arc;

/// A cloneable handle on a running engine.
#[derive(Debug, Clone)]
pub struct CandleWorker {
    engine: Engine,
}

impl CandleWorker {
    /// Load a Hugging Face model directory and start the engine's scheduler.
    pub fn load(
        dir: &Path,
        args: &EngineArgs,
        served_model_name: &str,
        registry: &prometheus::Registry,
    ) -> anyhow::Result<CandleWorker> {
        let device = parse_device(&args.device)?;
        let dtype = match args.dtype {
            EngineDtype::F32 => DType::F32,
            EngineDtype::Bf16 => DType::BF16,
            EngineDtype::F16 => DType::F16,
        };
        let model = Qwen25VL::load(dir, &device, dtype)?;
        let merge = model.spatial_merge_size();
        let pre = model.preprocessor_config().clone();
        let max_position = model.config().text.max_position_embeddings;
        let mut defaults = SamplingDefaults::from_model_dir(dir, args.use_generation_config)?;
        if defaults.eos_token_ids.is_empty() {
            defaults.eos_token_ids = model.eos_token_ids();
        }
        let prompts = PromptBuilder::from_model_dir(dir, merge)?;
        let images = Arc::new(move |bytes: &[u8]| {
            let img = processor::decode_image(bytes)?;
            processor::preprocess(&img, &pre)
        });
        let cfg = EngineConfig {
            scheduler: SchedulerConfig {
                max_sequences: args.max_sequences.max(1),
                step_token_budget: args.step_token_budget.max(1),
                kv_cache_tokens: args.kv_cache_tokens,
            },
            max_model_len: max_position.min(args.kv_cache_tokens),
            defaults,
        };
        let metrics = match EngineMetrics::register(registry, served_model_name) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, model = served_model_name, "engine metrics not registered");
                EngineMetrics::new(served_model_name)?
            }
        };
        tracing::info!(dir = %dir.display(), device = %args.device, ?dtype, ?cfg, "candle engine loaded");
        let engine = Engine::start(model, prompts, images, cfg, Arc::new(metrics))?;
        Ok(CandleWorker { engine })
    }

    /// Start one request; the answer streams as the engine produces it. A request the engine
    /// refuses is the client's error, returned as such (never as a fake worker answer).
    pub fn send(&self, req: &ValidRequest, request_id: &str) -> Result<Upstream, SendError> {
        let p = params::parse(&req.body).map_err(SendError::client)?;
        if req.remote_images > 0 {
            return Err(SendError::client(GatewayError::invalid(
                "the in-process engine takes images as data URLs only",
                Some("messages".to_string()),
            )));
        }
        let images = req
            .images
            .iter()
            .map(|i| i.data.clone())
            .collect::<Option<Vec<Bytes>>>()
            .ok_or_else(|| SendError {
                error: GatewayError::Internal("image bytes were not kept for the engine".into()),
                retryable: false,
                fault: Fault::None,
            })?;
        let request = GenerateRequest {
            messages: p.messages,
            images,
            sampling: p.sampling,
        };
        // Image preprocessing and tokenization are CPU work: on a multi-threaded runtime, let
        // tokio move this worker's other tasks elsewhere while it runs.
        let on_multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let prepared = if on_multi_thread {
            tokio::task::block_in_place(|| self.engine.generate(request))
        } else {
            self.engine.generate(request)
        };
        let generation = match prepared {
            Ok(g) => g,
            Err(SubmitError::Invalid { message, param }) => {
                return Err(SendError::client(GatewayError::invalid(
                    message,
                    param.map(str::to_string),
                )))
            }
            Err(SubmitError::Stopped) => {
                return Err(SendError {
                    error: GatewayError::BadGateway("the engine has stopped".into()),
                    retryable: true,
                    fault: Fault::Worker,
                })
            }
        };
        let head = wire::Head {
            id: format!("chatcmpl-{request_id}"),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            model: req.model.clone(),
        };
        let body = if req.stream {
            UpstreamBody::Events(wire::events(head, generation))
        } else {
            UpstreamBody::Json(wire::json_body(head, generation))
        };
        Ok(Upstream {
            status: StatusCode::OK,
            body,
        })
    }
}
