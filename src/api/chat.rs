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

/// One message.
#[derive(Debug, Deserialize)]
pub struct MessageView<'a> {
    #[serde(borrow, default)]
    pub role: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub content: Content<'a>,
}

/// A message's `content`, read in the same pass as the rest of the body: a data URL of a
/// megabyte is scanned once, not once per nesting level.
#[derive(Debug, Default)]
pub enum Content<'a> {
    /// Absent or null (assistant messages with tool calls).
    #[default]
    None,
    /// A string; only its length matters here.
    Text(usize),
    Parts(Vec<PartView<'a>>),
    /// Anything else: an error for validation to report with the field's name.
    Invalid,
}

impl<'de: 'a, 'a> Deserialize<'de> for Content<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = Content<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or an array of content parts")
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Content::Text(v.len()))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Content::None)
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(Content::None)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut parts = Vec::with_capacity(seq.size_hint().unwrap_or(2));
                while let Some(p) = seq.next_element::<PartView<'a>>()? {
                    parts.push(p);
                }
                Ok(Content::Parts(parts))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Content::Invalid)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Content::Invalid)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Content::Invalid)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Content::Invalid)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                while map
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(Content::Invalid)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// A content part of an array `content`.
#[derive(Debug, Deserialize)]
pub struct PartView<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(default)]
    pub text: Option<TextLen>,
    #[serde(borrow, default)]
    pub image_url: Option<ImageUrl<'a>>,
}

/// The length of a string field, without keeping it.
#[derive(Debug, Clone, Copy)]
pub struct TextLen(pub usize);

impl<'de> Deserialize<'de> for TextLen {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = TextLen;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E>(self, v: &str) -> Result<TextLen, E> {
                Ok(TextLen(v.len()))
            }
        }
        d.deserialize_str(V)
    }
}

/// `image_url` is `{"url": "...", "detail": ...}` (OpenAI) or, leniently, the URL string.
#[derive(Debug)]
pub struct ImageUrl<'a>(pub Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for ImageUrl<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = ImageUrl<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object with a `url` string, or a URL string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(ImageUrl(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(ImageUrl(Cow::Owned(v.to_string())))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut url = None;
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    if key == "url" {
                        url = Some(map.next_value::<ImageUrl<'a>>()?.0);
                    } else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                url.map(ImageUrl)
                    .ok_or_else(|| serde::de::Error::missing_field("url"))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
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
