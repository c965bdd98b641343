//! caprl-gateway: an OpenAI-compatible serving gateway for CapRL-3B (Qwen2.5-VL) captioning.
//!
//! # The path of one request
//! ```text
//! POST /v1/chat/completions (and /v1/completions: the same path, a text prompt)
//!  ⓪ serve.rs     the accept loop: connection bound, head deadline and size (hyper)
//!  ① http/        middleware: request id, span, metrics; the head (edge.rs: Host, a declared
//!                 length over the limit; budget.rs: the in-flight body budget; deadline.rs:
//!                 the body's deadline); the caller (tenant/: its key, its requests per
//!                 minute); body limit; the handler (chat.rs) owns what is HTTP: the record,
//!                 the key's tokens and concurrency slot, the drain guard, and the caption
//!                 cache (cache.rs) in front of ③ for deterministic requests
//!  ② validate/    bytes -> ValidRequest: model -> pool, messages, every image data URL decoded
//!                 once, a block at a time into its xxh3 hash (format sniffed, size and pixel
//!                 limits from the header, visual tokens), its bytes checked in that pass;
//!     fetch/      with --fetch-remote-images, state.rs's validate_as (the one entry for the
//!                 handler and the batch runner) fetches each http(s) image under the SSRF
//!                 guard (guard.rs, ip.rs) and validates again with data URLs in their place
//!     resize.rs   for pools with resize = "max-pixels", images above the pixel budget
//!                 resized to their smart_resize target as vLLM's processor would (caprl-image)
//!                 and sent as PNG; validated again, the client's image hashes kept
//!  ③ dispatch     the one driver: admit through ④, send through ⑥, fail over before the
//!                 first byte, report each worker's outcome to ⑤; imports nothing from http/
//!  ④ queue/       the model's admission queue: waits for a worker with room, 429 past its
//!                 bounds, grants leases in priority and arrival order
//!  ⑤ pool/        which worker (policy/: one file per policy), a Lease on it released on
//!                 Drop, health (probes, gateway-failure ejection, failure-rate outliers),
//!                 discovery (static, DNS)
//!  ⑥ worker/      one seam, Backend::send -> a JSON document or typed chunks:
//!                 http.rs (vLLM or any OpenAI server; SSE decoded there), candle/ (the
//!                 in-process engine; chunks built from its events, no SSE text)
//!  ⑦ http/relay   the answer back: whole, or chunks framed as SSE; TTFT; hidden usage
//!  ⑧ metrics.rs   every metric named once; error.rs: one error enum, one OpenAI envelope
//! ```
//! `http/chat.rs` validates (②) and hands the request to ③, which drives ④–⑥ and returns the
//! worker's answer head with its lease; the handler relays it (⑦). Anything else that sends
//! requests as a client would (the batch runner, the cache) calls ③ the same way.
//!
//! # The path of a batch line
//! ```text
//! POST /v1/files, /v1/batches   http/files.rs, http/batches.rs: HTTP only
//!  files.rs      an upload streamed to disk, its record stored; quota, expiry
//!  batch/        the service: create (stored before answering), cancel, list, resume at start
//!   input.rs     the whole input file checked once; every bad line reported
//!   runner.rs    each line read back by offset, validated by ②, sent by ③ as a bulk request
//!                (④ admits it after interactive ones, into `batch_share` of a worker), its
//!                answer appended to the output or error file and recorded in groups
//!  store/        the durable state behind one trait (`Store`); SQLite in sqlite.rs
//! ```
//!
//! # Modules
//! - [`config`]: the clap/TOML configuration (`args.rs`), validated once at start-up into
//!   resolved settings (`resolve.rs`: workers parsed, per-model pools merged).
//! - [`serve`], [`state`], [`shutdown`], [`telemetry`]: process life: build, serve, drain, log.
//! - [`cache`]: the caption cache: whole answers to deterministic requests, by content hash.
//! - [`resize`]: images shrunk to the model's pixel budget at the edge (opt-in per pool), with
//!   the pixels vLLM's processor would make, so the answer is unchanged.
//! - [`fetch`]: remote images fetched by the gateway (opt-in): public addresses only, the
//!   checked address is the one connected to, every redirect checked again; bounded in bytes,
//!   time and concurrency.
//! - [`tenant`]: API keys (a reloadable keys file) and each key's limits on this replica.
//! - [`api`]: OpenAI wire types (only the fields the gateway reads).
//! - [`workflow`]: the CapRL workflows as commands (`caprl-gateway caption`): OpenAI clients
//!   of the gateway or of any OpenAI-compatible server, resumable, with progress.
//! - `fake_worker` (feature `fake-worker`, on by default, off in the production images): a
//!   vLLM-compatible fake worker for tests and benchmarks.

pub mod api;
pub mod batch;
pub mod cache;
pub mod config;
pub mod dispatch;
pub mod error;
#[cfg(feature = "fake-worker")]
pub mod fake_worker;
pub mod fetch;
pub mod files;
pub mod http;
pub mod metrics;
pub mod pool;
pub mod queue;
pub mod resize;
pub mod serve;
pub mod shutdown;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod tenant;
pub mod validate;
pub mod worker;
pub mod workflow;
