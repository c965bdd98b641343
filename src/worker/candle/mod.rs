//! The in-process Qwen2.5-VL engine (feature `candle`), behind the same seam as an HTTP worker.
//!
//! [`CandleWorker::load`] hands the model directory and the engine flags to [`Engine::load`],
//! which loads the model and starts `caprl_engine`'s scheduler thread. [`CandleWorker::send`] reads the validated body for
//! the engine ([`params`]), hands it the image bytes validation kept, and answers with what vLLM
//! would send, as typed chunks built from the engine's events ([`wire`]); a bad parameter is
//! the client's error (a 400 naming the field, as vLLM answers). A client that hangs up drops
//! the body and so cancels the sequence.

mod params;
mod wire;

use super::{Fault, SendError, Upstream, UpstreamBody};
use crate::config::{EngineArgs, EngineDtype};
use crate::error::GatewayError;
use crate::validate::{Endpoint, ValidRequest};
use axum::http::StatusCode;
use bytes::Bytes;
use caprl_engine::{Dtype, Engine, EngineOptions, GenerateRequest, SubmitError};
use std::path::Path;

/// A cloneable handle on a running engine: the gateway's worker for it.
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
        let opts = EngineOptions {
            device: args.device.clone(),
            dtype: match args.dtype {
                EngineDtype::F32 => Dtype::F32,
                EngineDtype::Bf16 => Dtype::Bf16,
                EngineDtype::F16 => Dtype::F16,
            },
            max_sequences: args.max_sequences,
            step_token_budget: args.step_token_budget,
            kv_cache_tokens: args.kv_cache_tokens,
            use_generation_config: args.use_generation_config,
            image_resize: args.image_resize.into(),
        };
        let engine = Engine::load(dir, &opts, registry, served_model_name)?;
        Ok(CandleWorker { engine })
    }

    /// Start one request; the answer streams as the engine produces it. A request the engine
    /// refuses is the client's error, returned as such (never as a fake worker answer).
    pub fn send(&self, req: &ValidRequest, request_id: &str) -> Result<Upstream, SendError> {
        if req.endpoint != Endpoint::Chat {
            return Err(SendError::client(GatewayError::invalid(
                format!(
                    "the in-process engine serves /v1/chat/completions only, not {}",
                    req.endpoint.path()
                ),
                None,
            )));
        }
        let p = params::parse(&req.body).map_err(SendError::client)?;
        if !req.remote.is_empty() {
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
