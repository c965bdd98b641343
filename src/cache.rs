//! The caption cache: whole answers to deterministic requests, keyed by what determines them.
//!
//! QA curation and evaluation caption the same image with the same prompt again and again; a
//! greedy or seeded request has one right answer, so it is answered once by a worker and then
//! from here. On with `--cache-max-bytes` (0, the default, is off).
//!
//! - **Key**: xxh3-128 of the endpoint and the body the worker would get, as canonical JSON
//!   (sorted keys), with every image data URL replaced by the image's content hash (so a
//!   `data:image/png;base64,` and a `data:image;base64,` copy of the same bytes, or an image
//!   named by file id, hit the same entry) and `stream` / `stream_options` left out (a stream
//!   and a whole answer share an entry). Every sampling field stays in the key, and so does
//!   the caller's API key name: one team's hit must not tell it what another team sent.
//! - **Cacheable** when deterministic: `temperature` 0, or a `seed`, or the client says
//!   `x-caprl-cache: allow`; `x-caprl-cache: bypass` skips the cache. `n`, `logprobs` and the
//!   rest are part of the key, so they are cached correctly (a seeded `n: 4` is four fixed
//!   answers).
//! - **Whole answers** are loaded once per key: concurrent identical requests wait for the one
//!   sent to a worker (moka's `try_get_with`), and only a 200 is kept. A streamed request is
//!   answered from an entry as a stream (the chunks rebuilt from the whole answer); a streamed
//!   request that misses goes to the worker as usual and is not stored.
//! - **Bounded** by bytes (each entry weighs its body and key), with a TTL; moka evicts by
//!   TinyLFU/LRU. A hit never reaches a worker and never takes a worker slot.

use crate::api::chat::Usage;
use crate::metrics::{Metrics, Outcome};
use crate::validate::{Endpoint, ValidRequest};
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// A cached answer: the body as the client got it (model renamed), and its usage.
#[derive(Debug)]
pub struct Answer {
    pub body: Bytes,
    pub usage: Option<Usage>,
}

/// An answer that is not cached, as the leader of a coalesced load got it: every request that
/// waited for it gets the same (a JSON body; `headers` are the error's own, `retry-after` …).
#[derive(Debug)]
pub struct Failure {
    pub status: StatusCode,
    pub outcome: Outcome,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// What the cache says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Not cacheable (not deterministic, opted out, or not a shape the cache reads).
    Bypass,
    /// Cacheable under this key.
    Key(u128),
}

pub struct Cache {
    entries: moka::future::Cache<u128, Arc<Answer>>,
    metrics: Metrics,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("entries", &self.entries.entry_count())
            .field("bytes", &self.entries.weighted_size())
            .finish()
    }
}

/// The header a client uses to opt in (`allow`) or out (`bypass`).
pub const CONTROL_HEADER: &str = "x-caprl-cache";

impl Cache {
    /// The cache, or None when `max_bytes` is 0.
    pub fn new(max_bytes: u64, ttl: Duration, metrics: Metrics) -> Option<Cache> {
        if max_bytes == 0 {
            return None;
        }
        let evictions = metrics.clone();
        let entries = moka::future::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_k: &u128, v: &Arc<Answer>| {
                u32::try_from(v.body.len() + 16 + std::mem::size_of::<Answer>()).unwrap_or(u32::MAX)
            })
            .time_to_live(ttl)
            .eviction_listener(move |_k, _v, cause| {
                let cause = match cause {
                    moka::notification::RemovalCause::Expired => "expired",
                    moka::notification::RemovalCause::Size => "size",
                    moka::notification::RemovalCause::Explicit => "explicit",
                    moka::notification::RemovalCause::Replaced => "replaced",
                };
                evictions.cache_evicted(cause);
            })
            .build();
        Some(Cache { entries, metrics })
    }

    /// Whether `req` of `owner` (the caller's key name, "" without keys) may be answered from
    /// the cache, and under which key.
    pub fn decide(&self, req: &ValidRequest, headers: &HeaderMap, owner: &str) -> Decision {
        let control = headers
            .get(CONTROL_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::trim);
        if control.is_some_and(|c| c.eq_ignore_ascii_case("bypass")) {
            return Decision::Bypass;
        }
        let allow = control.is_some_and(|c| c.eq_ignore_ascii_case("allow"));
        match key(req, allow, owner) {
            Some(k) => Decision::Key(k),
            None => Decision::Bypass,
        }
    }

    /// The entry for `key`, if any.
    pub async fn get(&self, key: u128) -> Option<Arc<Answer>> {
        let got = self.entries.get(&key).await;
        self.observe(got.is_some());
        got
    }

    /// The entry for `key`, loading it with `load` when there is none: concurrent callers with
    /// the same key wait for one load. `Ok((answer, true))` when this caller's load ran (a miss).
    pub async fn get_or_load<F>(
        &self,
        key: u128,
        load: F,
    ) -> Result<(Arc<Answer>, bool), Arc<Failure>>
    where
        F: std::future::Future<Output = Result<Arc<Answer>, Failure>>,
    {
        let ran = std::sync::atomic::AtomicBool::new(false);
        let result = self
            .entries
            .try_get_with(key, async {
                ran.store(true, std::sync::atomic::Ordering::Relaxed);
                load.await
            })
            .await;
        let missed = ran.load(std::sync::atomic::Ordering::Relaxed);
        self.observe(!missed);
        result.map(|a| (a, missed))
    }

    fn observe(&self, hit: bool) {
        self.metrics.cache_lookup(hit);
        self.metrics
            .cache_size(self.entries.weighted_size(), self.entries.entry_count());
    }

    /// Apply pending evictions now (tests and the gauges; moka does it lazily otherwise).
    pub async fn settle(&self) {
        self.entries.run_pending_tasks().await;
        self.metrics
            .cache_size(self.entries.weighted_size(), self.entries.entry_count());
    }

    pub fn weighted_size(&self) -> u64 {
        self.entries.weighted_size()
    }

    pub fn entry_count(&self) -> u64 {
        self.entries.entry_count()
    }
}

/// The key of a deterministic request, or None.
fn key(req: &ValidRequest, allow: bool, owner: &str) -> Option<u128> {
    let mut body: Value = serde_json::from_slice(&req.body).ok()?;
    let obj = body.as_object_mut()?;
    let greedy = obj
        .get("temperature")
        .and_then(Value::as_f64)
        .is_some_and(|t| t == 0.0);
    let seeded = obj.get("seed").is_some_and(|s| !s.is_null());
    if !(greedy || seeded || allow) {
        return None;
    }
    obj.remove("stream");
    obj.remove("stream_options");
    // Each data URL, in order of appearance, is the image validation checked at that place.
    let mut hashes = req.images.iter().map(|i| i.hash);
    let mut replaced = 0;
    if let Some(messages) = obj.get_mut("messages").and_then(Value::as_array_mut) {
        for m in messages {
            let Some(parts) = m.get_mut("content").and_then(Value::as_array_mut) else {
                continue;
            };
            for p in parts {
                let Some(url) = p.pointer_mut("/image_url/url") else {
                    continue;
                };
                if url
                    .as_str()
                    .is_some_and(|u| u.len() >= 5 && u[..5].eq_ignore_ascii_case("data:"))
                {
                    *url = Value::String(format!("xxh3:{:032x}", hashes.next()?));
                    replaced += 1;
                }
            }
        }
    }
    if replaced != req.images.len() {
        // Images where the cache does not look for them: no key rather than a wrong one.
        return None;
    }
    let endpoint = match req.endpoint {
        Endpoint::Chat => "chat",
        Endpoint::Completions => "completions",
    };
    let canonical = serde_json::to_vec(&json!([owner, endpoint, body])).ok()?;
    Some(xxhash_rust::xxh3::xxh3_128(&canonical))
}

/// A cached whole answer as the server-sent events a stream of it would have been: per choice
/// its text (or content and role) then its finish reason, the usage chunk if the client asked
/// for it, then `[DONE]`.
pub fn as_stream(answer: &Answer, endpoint: Endpoint, with_usage: bool) -> Option<Bytes> {
    let whole: Value = serde_json::from_slice(&answer.body).ok()?;
    let (object, id, created, model) = (
        match endpoint {
            Endpoint::Chat => "chat.completion.chunk",
            Endpoint::Completions => "text_completion",
        },
        whole.get("id").cloned().unwrap_or(Value::Null),
        whole.get("created").cloned().unwrap_or(Value::Null),
        whole.get("model").cloned().unwrap_or(Value::Null),
    );
    let mut out = String::new();
    let mut event = |choices: Value, usage: Option<&Value>| {
        let mut chunk = json!({"id": id, "object": object, "created": created, "model": model, "choices": choices});
        if let Some(u) = usage {
            chunk["usage"] = u.clone();
        }
        out.push_str("data: ");
        out.push_str(&chunk.to_string());
        out.push_str("\n\n");
    };
    for c in whole.get("choices")?.as_array()? {
        let index = c.get("index").cloned().unwrap_or(json!(0));
        let finish = c.get("finish_reason").cloned().unwrap_or(Value::Null);
        match endpoint {
            Endpoint::Chat => {
                let msg = c.get("message")?;
                let delta = json!({"role": msg.get("role").cloned().unwrap_or(json!("assistant")), "content": msg.get("content").cloned().unwrap_or(Value::Null)});
                event(
                    json!([{"index": index, "delta": delta, "finish_reason": null}]),
                    None,
                );
                event(
                    json!([{"index": index, "delta": {}, "finish_reason": finish}]),
                    None,
                );
            }
            Endpoint::Completions => {
                let text = c.get("text").cloned().unwrap_or(json!(""));
                event(
                    json!([{"index": index, "text": text, "finish_reason": null}]),
                    None,
                );
                event(
                    json!([{"index": index, "text": "", "finish_reason": finish}]),
                    None,
                );
            }
        }
    }
    if with_usage {
        if let Some(u) = whole.get("usage") {
            event(json!([]), Some(u));
        }
    }
    out.push_str("data: [DONE]\n\n");
    Some(Bytes::from(out))
}
