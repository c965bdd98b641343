//! caprl-gateway: an OpenAI-compatible serving gateway for CapRL-3B (Qwen2.5-VL) captioning.
//!
//! # The path of one request
//! ```text
//! POST /v1/chat/completions
//!  ① http/        middleware: request id, span, metrics; API key; body limit (extract.rs)
//!  ② validate/    bytes -> ValidRequest: model -> pool, messages, every image data URL decoded
//!                 once (format sniffed, size and pixel limits, xxh3 hash, visual tokens)
//!  ③ queue/       the model's admission queue: waits for a worker with room, 429 past its
//!                 bounds, hands out batches (batch.rs: the rule, a pure function)
//!  ④ pool/        which worker (policy/: one file per policy), a Lease on it released on
//!                 Drop, health (probes + passive ejection), discovery (static, DNS)
//!  ⑤ worker/      http.rs: forward to vLLM or any OpenAI-compatible server;
//!                 candle/: the in-process Qwen2.5-VL engine
//!  ⑥ http/relay   the answer back: whole, or SSE events relayed one by one
//!  ⑦ metrics.rs   every metric named once; error.rs: one error enum, one OpenAI envelope
//! ```
//! A failure before the worker's first byte goes back to ③ for another worker (`http/chat.rs`).
//!
//! # Modules
//! - [`config`]: the clap/TOML configuration, validated at start-up.
//! - [`serve`], [`state`], [`shutdown`], [`telemetry`]: process life: build, serve, drain, log.
//! - [`api`]: OpenAI wire types (only the fields the gateway reads).
//! - `fake_worker` (feature `fake-worker`, on by default, off in the production images): a
//!   vLLM-compatible fake worker for tests and benchmarks.

pub mod api;
pub mod config;
pub mod error;
#[cfg(feature = "fake-worker")]
pub mod fake_worker;
pub mod http;
pub mod metrics;
pub mod pool;
pub mod queue;
pub mod serve;
pub mod shutdown;
pub mod state;
pub mod telemetry;
pub mod validate;
pub mod worker;
