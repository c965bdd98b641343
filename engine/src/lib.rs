//! caprl-engine: Qwen2.5-VL (CapRL-3B) inference on Candle, with continuous batching.
//!
//! The path of one request through the engine:
//! ```text
//! prompt.rs     OpenAI messages -> chat template -> token ids, each <|image_pad|> expanded
//! processor.rs  image bytes -> smart_resize, bicubic (antialiased, as the reference), normalise,
//!               patchify -> pixel_values (grid_t*grid_h*grid_w, 3*2*14*14) and grid_thw
//! scheduler.rs  joins the running batch at a step boundary under the token budget
//! model/        vision tower (window attention) -> merged image embeddings spliced into the
//!               text embeddings -> Qwen2 decoder with M-RoPE and a KV cache -> logits
//! sampling.rs   logits -> next token (temperature, top-p/k, min-p, penalties, seed)
//! engine.rs     the handle: submit a request, receive its tokens as they are produced
//! ```
//! `backend.rs` is the seam between the scheduler and the model ([`backend::StepModel`]), so
//! batching is tested with a scripted model and the model is tested against transformers.

pub mod backend;
pub mod config;
pub mod engine;
pub mod model;
pub mod processor;
pub mod prompt;
pub mod sampling;
pub mod scheduler;
