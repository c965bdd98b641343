//! caprl-engine: Qwen2.5-VL (CapRL-3B) inference on Candle, with continuous batching.
//!
//! # The front door
//! A caller needs only what the crate root re-exports: [`Engine::load`] a model directory with
//! [`EngineOptions`], build a [`GenerateRequest`] from plain [`Message`]s (a role and text or
//! image [`Part`]s; the image bytes travel beside them, in order) and [`RequestSampling`],
//! [`Engine::generate`] it, and read the [`Generation`]'s [`Event`]s. A request the engine
//! refuses is a [`SubmitError`]. The engine knows nothing of HTTP or the OpenAI wire format:
//! the gateway's adapter (`src/worker/candle/` in caprl-gateway) reads the request body into
//! these types and writes the events out.
//!
//! # The path of one request
//! ```text
//! engine.rs      the handle: check the sampling parameters, preprocess the images, build the
//!                prompt, check lengths, queue; Engine::load assembles all of the below
//! prompt.rs      plain messages -> chat template -> token ids, each <|image_pad|> expanded
//! processor.rs   image bytes -> smart_resize and resize (caprl-image: torchvision's or Pillow's
//!                bicubic, bit-exact), rescale and normalise in that processor's arithmetic,
//!                patchify -> pixel_values (grid_t*grid_h*grid_w, 3*2*14*14) and grid_thw
//! scheduler.rs   the engine's thread: joins the running batch at a step boundary under the
//!                token budget and the KV cache, one batched decode step for every sequence
//! model/         vision tower (window attention) -> merged image embeddings spliced into the
//!                text embeddings -> Qwen2 decoder with M-RoPE and a KV cache -> logits
//! sampling.rs    logits -> next token (temperature, top-p/k, min-p, penalties, seed)
//! detokenize.rs  token ids -> text, incrementally, cut at stop strings
//! event.rs       what the reader receives: Token, Finished (reason, usage), Error
//! ```
//! Beside the path: `config.rs` reads the model directory's JSON files (`config.json`,
//! `preprocessor_config.json`, `generation_config.json`, each once); `metrics.rs` holds the
//! engine's Prometheus series under vLLM's names; `backend.rs` is the seam between the
//! scheduler and the model ([`backend::StepModel`]), so batching is tested with a scripted
//! model and the model is tested against transformers.
//!
//! The floors, each importing only from those below it: `engine` -> `scheduler` ->
//! {`model`, `prompt`, `processor`, `sampling`, `metrics`, `detokenize`} -> {`config`,
//! `backend`, `event`}.

pub mod backend;
pub mod config;
pub mod detokenize;
// The handle's module is private: its types are re-exported below, the one way in.
mod engine;
pub mod event;
pub mod metrics;
pub mod model;
pub mod processor;
pub mod prompt;
pub mod sampling;
pub mod scheduler;

/// The image resize reference (`EngineOptions::image_resize`).
pub use caprl_image::Resample;
pub use engine::{
    Dtype, Engine, EngineOptions, GenerateRequest, Generation, SubmitError, EVENT_CHANNEL,
};
pub use event::{Event, FinishReason, StopReason, Usage};
pub use prompt::{Content, Message, Part};
pub use sampling::RequestSampling;

/// Below the front door: [`Engine::start`] with any [`backend::StepModel`] (tests and benches).
pub use engine::{parse_device, EngineConfig, ImageProcessor};
