//! The in-process Qwen2.5-VL engine (feature `candle`). Interface only for now: the engine
//! itself lands with its own issue.

use super::{SendError, Upstream};
use crate::config::EngineArgs;
use crate::validate::ValidRequest;
use std::path::Path;

/// A cloneable handle on a running engine.
#[derive(Debug, Clone)]
pub struct EngineHandle {
    _private: (),
}

impl EngineHandle {
    /// Load a Hugging Face model directory and start the engine's scheduler.
    pub fn load(
        dir: &Path,
        _args: &EngineArgs,
        _served_model_name: &str,
        _registry: &prometheus::Registry,
    ) -> anyhow::Result<EngineHandle> {
        anyhow::bail!(
            "{}: the candle engine is not available in this build yet",
            dir.display()
        )
    }

    /// Start one request; the answer streams as the engine produces it.
    pub fn submit(&self, _req: &ValidRequest, _request_id: &str) -> Result<Upstream, SendError> {
        Err(SendError {
            error: crate::error::GatewayError::Internal(
                "the candle engine is not available".into(),
            ),
            retryable: false,
            worker_fault: true,
        })
    }
}
