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

use futures::{Stream, StreamExt};
use journal::{key_hash, Journal};
use progress::Progress;
use source::{Item, ItemError};
use std::collections::HashSet;

/// Seconds since the Unix epoch, as the output records give times.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// An image file's bytes as CapRL sends them: `data:image;base64,…`, no media type.
pub fn data_url(bytes: &[u8]) -> String {
    format!(
        "data:image;base64,{}",
        base64_simd::STANDARD.encode_to_string(bytes)
    )
}

/// The items not done yet by the `journals`, each key once (a key seen twice in the input is
/// done once); every skipped one is counted in `progress`.
pub fn fresh<'a>(
    items: source::Items,
    journals: &[&Journal],
    progress: &'a Progress,
) -> impl Stream<Item = Result<Item, ItemError>> + 'a {
    let mut seen: HashSet<u128> = journals.iter().flat_map(|j| j.done_hashes()).collect();
    items.filter(move |item| {
        let fresh = match item {
            Ok(i) => seen.insert(key_hash(&i.key)),
            Err(_) => true,
        };
        if !fresh {
            progress.skipped(1);
        }
        std::future::ready(fresh)
    })
}
