//! The CapRL workflows as commands: clients of the OpenAI API (the gateway, or any
//! OpenAI-compatible server), resumable, with progress. They share no state with the server
//! side of this crate; they only speak HTTP to it.
//!
//! - [`caption`]: caption a directory, a JSON list or a JSONL manifest of images.
//! - [`qa`]: CapRL's QA curation in four steps (generate, extract, answer, filter).
//! - [`prism`]: the Prism evaluation (captions, answers from the caption alone, scores), with
//!   [`score`], the answer scorer.
//! - [`source`]: the input, read as a stream, sharded for Kubernetes Indexed Jobs.
//! - [`journal`]: a resumable JSONL output (what is done; a torn last line is cut).
//! - [`client`]: one POST with retries and backoff, honouring `retry-after`.
//! - [`progress`]: a bar on a terminal, plain lines otherwise.

pub mod caption;
pub mod client;
pub mod journal;
pub mod prism;
pub mod progress;
pub mod qa;
pub mod score;
pub mod source;
