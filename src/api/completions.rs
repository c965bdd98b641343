//! `POST /v1/completions` (text prompts: Prism's stage 2 and CapRL's reward use raw prompts), as
//! far as the gateway interprets it. Same visitors as chat: only objects, duplicate fields
//! refused, unknown fields kept raw and forwarded.

use super::chat::{entries, fill, object_view, Extra, Str, StreamOptions};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

#[derive(Debug, Default)]
pub struct CompletionRequestView<'a> {
    pub model: Option<Cow<'a, str>>,
    /// A string, an array of strings, an array of token ids, or an array of such arrays: kept
    /// raw and measured by validation.
    pub prompt: Option<&'a RawValue>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions<'a>>,
    pub max_tokens: Option<u64>,
    pub n: Option<u32>,
    pub priority: Option<i64>,
    pub extra: Vec<Extra<'a>>,
}

object_view!(
    CompletionRequestView,
    "a completion request (a JSON object)",
    |map| {
        let (mut model, mut prompt, mut stream, mut stream_options) = (None, None, None, None);
        let (mut max_tokens, mut n, mut priority) = (None, None, None);
        let extra = entries(map, |key, map| {
            match key {
                "model" => fill(map, &mut model, "model")?,
                "prompt" => fill(map, &mut prompt, "prompt")?,
                "stream" => fill(map, &mut stream, "stream")?,
                "stream_options" => fill(map, &mut stream_options, "stream_options")?,
                "max_tokens" => fill(map, &mut max_tokens, "max_tokens")?,
                "n" => fill(map, &mut n, "n")?,
                "priority" => fill(map, &mut priority, "priority")?,
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok(CompletionRequestView {
            model: model.flatten().map(|s: Str<'a>| s.0),
            prompt: prompt.flatten(),
            stream: stream.flatten(),
            stream_options: stream_options.flatten(),
            max_tokens: max_tokens.flatten(),
            n: n.flatten(),
            priority: priority.flatten(),
            extra,
        })
    }
);
