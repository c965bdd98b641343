//! The in-process Qwen2.5-VL engine (feature `candle`), behind the same [`Upstream`] an HTTP
//! worker answers with.
//!
//! [`CandleWorker::load`] hands the model directory and the engine flags to [`Engine::load`],
//! which loads the model on the configured device and dtype and starts `caprl_engine`'s
//! scheduler thread. [`CandleWorker::submit`] reads the validated body for the engine
//! ([`params`]), hands it the image bytes validation kept, and answers with a
//! body that streams exactly what vLLM would send ([`wire`]); a bad parameter is a 400 with an
//! OpenAI error body, as from vLLM. The relay (`crate::http::relay`) then treats the answer
//! as any worker's; a client that hangs up drops the body and so cancels the sequence.

mod params;
mod wire;

use super::{SendError, Upstream};
use crate::config::{EngineArgs, EngineDtype};
use crate::error::GatewayError;
use crate::validate::ValidRequest;
use axum::http::StatusCode;
use bytes::Bytes;
use caprl_engine::{Dtype, Engine, EngineOptions, GenerateRequest, SubmitError};
use futures::StreamExt;
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
        };
        let engine = Engine::load(dir, &opts, registry, served_model_name)?;
        Ok(CandleWorker { engine })
    }

    /// Start one request; the answer streams as the engine produces it.
    pub fn submit(&self, req: &ValidRequest, request_id: &str) -> Result<Upstream, SendError> {
        let p = match params::parse(&req.body) {
            Ok(p) => p,
            Err(e) => return Ok(error_upstream(&e)),
        };
        if req.remote_images > 0 {
            let e = GatewayError::invalid(
                "the in-process engine takes images as data URLs only",
                Some("messages".to_string()),
            );
            return Ok(error_upstream(&e));
        }
        let images = req
            .images
            .iter()
            .map(|i| i.data.clone())
            .collect::<Option<Vec<Bytes>>>()
            .ok_or_else(|| SendError {
                error: GatewayError::Internal("image bytes were not kept for the engine".into()),
                retryable: false,
                worker_fault: false,
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
                let e = GatewayError::invalid(message, param.map(str::to_string));
                return Ok(error_upstream(&e));
            }
            Err(SubmitError::Stopped) => {
                return Err(SendError {
                    error: GatewayError::BadGateway("the engine has stopped".into()),
                    retryable: true,
                    worker_fault: true,
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
        let body = if p.stream {
            wire::sse_body(head, generation, p.include_usage)
        } else {
            wire::json_body(head, generation)
        };
        Ok(Upstream {
            status: StatusCode::OK,
            body,
        })
    }
}

/// A client error as the worker's answer: its status and OpenAI error body.
fn error_upstream(e: &GatewayError) -> Upstream {
    let body = serde_json::to_vec(&e.envelope()).unwrap_or_default();
    Upstream {
        status: e.status(),
        body: futures::stream::once(async move { Ok(Bytes::from(body)) }).boxed(),
    }
}
