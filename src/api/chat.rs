//! `POST /v1/chat/completions`: the parts of the request and of the answer that the gateway
//! reads. They borrow from the client's bytes; nothing here is serialized back, so every field
//! not named here (`temperature`, `repetition_penalty`, `chat_template_kwargs`, …) reaches the
//! worker exactly as the client wrote it.

use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

/// A chat completion request, as far as the gateway interprets it.
#[derive(Debug, Deserialize)]
pub struct ChatRequestView<'a> {
    #[serde(borrow, default)]
    pub model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub messages: Option<Vec<MessageView<'a>>>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub max_tokens: Option<u64>,
    #[serde(default)]
    pub max_completion_tokens: Option<u64>,
    #[serde(default)]
    pub n: Option<u32>,
    /// Lower runs first (vLLM's convention). The gateway's queue honours it.
    #[serde(default)]
    pub priority: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// One message. `content` is kept raw and read by [`MessageView::content`].
#[derive(Debug, Deserialize)]
pub struct MessageView<'a> {
    #[serde(borrow, default)]
    pub role: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub content: Option<&'a RawValue>,
}

/// A content part of an array `content`.
#[derive(Debug, Deserialize)]
pub struct PartView<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(borrow, default)]
    pub text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub image_url: Option<&'a RawValue>,
}

/// `image_url` is `{"url": "...", "detail": ...}` (OpenAI) or, leniently, the URL string.
#[derive(Debug, Deserialize)]
pub struct ImageUrlView<'a> {
    #[serde(borrow)]
    pub url: Cow<'a, str>,
}

/// The roles the OpenAI API defines.
pub const ROLES: &[&str] = &[
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];

/// What a worker's answer (a whole response, or one streamed chunk) tells the gateway.
#[derive(Debug, Default, Deserialize)]
pub struct ResponsePeek<'a> {
    #[serde(borrow, default)]
    pub model: Option<Cow<'a, str>>,
    #[serde(default)]
    pub usage: Option<Usage>,
    #[serde(borrow, default)]
    pub choices: Option<Vec<&'a RawValue>>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize, PartialEq, Eq)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
}
