//! `POST /v1/chat/completions`: the parts of the request and of the answer that the gateway
//! reads. They borrow from the client's bytes; nothing here is serialized back, so every field
//! not named here (`temperature`, `repetition_penalty`, `chat_template_kwargs`, …) reaches the
//! worker exactly as the client wrote it.
//!
//! The request's objects are read by hand-written visitors rather than `derive`, for two
//! reasons. A derived struct also accepts a JSON array (its fields by position), which no
//! OpenAI server reads; these accept only objects. And a derived struct skips unknown fields
//! with `IgnoredAny`, which serde_json does without its recursion limit, without checking
//! UTF-8 and without bounding integers; these keep each unknown field as its raw JSON
//! ([`Extra`]), which serde_json checks for UTF-8 while capturing it, so validation can check
//! depth and integer size before the worker sees them (`validate::json`).

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

/// A field the gateway does not read: its name and the client's raw JSON for its value.
pub type Extra<'a> = (Cow<'a, str>, &'a RawValue);

/// A string borrowed from the body when it has no escapes (serde's own `Cow<str>` always
/// copies).
#[derive(Debug)]
pub struct Str<'a>(pub Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Str<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

/// Read one known field's value into its slot; a second occurrence is an error (a body with
/// the key twice would mean one thing here and, to a worker that keeps the last, another).
pub(crate) fn fill<'de, A: MapAccess<'de>, T: Deserialize<'de>>(
    map: &mut A,
    slot: &mut Option<Option<T>>,
    name: &'static str,
) -> Result<(), A::Error> {
    if slot.is_some() {
        return Err(de::Error::duplicate_field(name));
    }
    *slot = Some(map.next_value()?);
    Ok(())
}

/// Walk an object's entries: `known` reads the fields it names and answers `true`; every
/// other field is kept raw in the returned list.
pub(crate) fn entries<'de, A, F>(mut map: A, mut known: F) -> Result<Vec<Extra<'de>>, A::Error>
where
    A: MapAccess<'de>,
    F: FnMut(&str, &mut A) -> Result<bool, A::Error>,
{
    let mut extra = Vec::new();
    while let Some(Str(key)) = map.next_key::<Str<'de>>()? {
        if !known(&key, &mut map)? {
            let raw: &'de RawValue = map.next_value()?;
            extra.push((key, raw));
        }
    }
    Ok(extra)
}

/// `impl Deserialize` for a view read by [`entries`]: only a JSON object is accepted.
macro_rules! object_view {
    ($ty:ident, $what:literal, |$map:ident| $body:expr) => {
        impl<'de: 'a, 'a> Deserialize<'de> for $ty<'a> {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V<'a>(std::marker::PhantomData<&'a ()>);
                impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
                    type Value = $ty<'a>;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($what)
                    }
                    fn visit_map<A: MapAccess<'de>>(
                        self,
                        $map: A,
                    ) -> Result<Self::Value, A::Error> {
                        $body
                    }
                }
                d.deserialize_map(V(std::marker::PhantomData))
            }
        }
    };
}
pub(crate) use object_view;

/// A chat completion request, as far as the gateway interprets it.
#[derive(Debug, Default)]
pub struct ChatRequestView<'a> {
    pub model: Option<Cow<'a, str>>,
    pub messages: Option<Vec<MessageView<'a>>>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions<'a>>,
    pub max_tokens: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    pub n: Option<u32>,
    /// Lower runs first (vLLM's convention). The gateway's queue honours it.
    pub priority: Option<i64>,
    /// Every other top-level field, forwarded as it is.
    pub extra: Vec<Extra<'a>>,
}

object_view!(
    ChatRequestView,
    "a chat completion request (a JSON object)",
    |map| {
        let (mut model, mut messages, mut stream, mut stream_options) = (None, None, None, None);
        let (mut max_tokens, mut max_completion_tokens, mut n, mut priority) =
            (None, None, None, None);
        let extra = entries(map, |key, map| {
            match key {
                "model" => fill(map, &mut model, "model")?,
                "messages" => fill(map, &mut messages, "messages")?,
                "stream" => fill(map, &mut stream, "stream")?,
                "stream_options" => fill(map, &mut stream_options, "stream_options")?,
                "max_tokens" => fill(map, &mut max_tokens, "max_tokens")?,
                "max_completion_tokens" => {
                    fill(map, &mut max_completion_tokens, "max_completion_tokens")?
                }
                "n" => fill(map, &mut n, "n")?,
                "priority" => fill(map, &mut priority, "priority")?,
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok(ChatRequestView {
            model: model.flatten().map(|s: Str<'a>| s.0),
            messages: messages.flatten(),
            stream: stream.flatten(),
            stream_options: stream_options.flatten(),
            max_tokens: max_tokens.flatten(),
            max_completion_tokens: max_completion_tokens.flatten(),
            n: n.flatten(),
            priority: priority.flatten(),
            extra,
        })
    }
);

#[derive(Debug, Default)]
pub struct StreamOptions<'a> {
    pub include_usage: Option<bool>,
    pub extra: Vec<Extra<'a>>,
}

object_view!(StreamOptions, "an object of stream options", |map| {
    let mut include_usage = None;
    let extra = entries(map, |key, map| match key {
        "include_usage" => fill(map, &mut include_usage, "include_usage").map(|()| true),
        _ => Ok(false),
    })?;
    Ok(StreamOptions {
        include_usage: include_usage.flatten(),
        extra,
    })
});

/// One message.
#[derive(Debug, Default)]
pub struct MessageView<'a> {
    pub role: Option<Cow<'a, str>>,
    pub content: Content<'a>,
    /// `name`, `tool_calls`, `tool_call_id`, …: forwarded as they are.
    pub extra: Vec<Extra<'a>>,
}

object_view!(MessageView, "a message (a JSON object)", |map| {
    let (mut role, mut content) = (None, None);
    let extra = entries(map, |key, map| {
        match key {
            "role" => fill(map, &mut role, "role")?,
            "content" => fill::<_, Content<'a>>(map, &mut content, "content")?,
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(MessageView {
        role: role.flatten().map(|s: Str<'a>| s.0),
        // Absent and null are the same: no content (assistant messages with tool calls).
        content: content.flatten().unwrap_or_default(),
        extra,
    })
});

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
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
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
#[derive(Debug, Default)]
pub struct PartView<'a> {
    pub kind: Cow<'a, str>,
    pub text: Option<TextLen>,
    pub image_url: Option<ImageUrl<'a>>,
    /// `{"type": "file", "file": {"file_id": "file-…"}}`: an image uploaded to `/v1/files`.
    pub file: Option<FileRef<'a>>,
    pub extra: Vec<Extra<'a>>,
}

object_view!(PartView, "a content part (a JSON object)", |map| {
    let (mut kind, mut text, mut image_url, mut file) = (None, None, None, None);
    let extra = entries(map, |key, map| {
        match key {
            "type" => fill(map, &mut kind, "type")?,
            "text" => fill(map, &mut text, "text")?,
            "image_url" => fill(map, &mut image_url, "image_url")?,
            "file" => fill(map, &mut file, "file")?,
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    let kind: Option<Str<'a>> = kind.flatten();
    Ok(PartView {
        kind: kind.ok_or_else(|| de::Error::missing_field("type"))?.0,
        text: text.flatten(),
        image_url: image_url.flatten(),
        file: file.flatten(),
        extra,
    })
});

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

/// `image_url` is `{"url": "...", "detail": ...}`, as OpenAI defines it: an object with a
/// string `url`. A bare string or an object `url` is refused (vLLM reads neither).
#[derive(Debug, Default)]
pub struct ImageUrl<'a> {
    pub url: RawUrl<'a>,
    /// `detail` and anything else: forwarded as it is.
    pub extra: Vec<Extra<'a>>,
}

object_view!(ImageUrl, "an object with a string `url`", |map| {
    let mut url = None;
    let extra = entries(map, |key, map| match key {
        "url" => fill(map, &mut url, "url").map(|()| true),
        _ => Ok(false),
    })?;
    let url: Option<RawUrl<'a>> = url.flatten();
    Ok(ImageUrl {
        url: url.ok_or_else(|| de::Error::missing_field("url"))?,
        extra,
    })
});

/// An image URL's bytes, escapes decoded, **not yet checked as text**: the one string that
/// may be megabytes long (a data URL) is read with serde_json's raw string read, which finds
/// the closing quote with `memchr` and skips the UTF-8 and control-character checks its text
/// read makes byte by byte. Validation checks every byte instead, in the pass it makes anyway:
/// a data URL's payload must be base64 (a subset of ASCII), its head a known media type;
/// any other URL goes through [`RawUrl::text`]. Borrowed exactly when the JSON string had no
/// escapes, so the bytes are the body's own.
#[derive(Debug, Default)]
pub struct RawUrl<'a>(pub Cow<'a, [u8]>);

impl RawUrl<'_> {
    /// Whether the scheme is `data:` (any case).
    pub fn is_data(&self) -> bool {
        self.0
            .get(..5)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"data:"))
    }

    /// Whether these are the body's own bytes (the JSON string had no escapes).
    pub fn is_verbatim(&self) -> bool {
        matches!(self.0, Cow::Borrowed(_))
    }

    /// The URL as text: UTF-8 without control characters (which serde_json's text read
    /// refuses raw, and which no URL holds escaped either).
    pub fn text(&self) -> Result<&str, &'static str> {
        plain_text(&self.0).map_err(|why| match why {
            NotText::Utf8 => "the image URL is not UTF-8",
            NotText::Control => "the image URL holds control characters",
        })
    }
}

/// Why bytes are not plain text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotText {
    Utf8,
    Control,
}

/// `bytes` as text that JSON could hold raw: UTF-8 without control characters (U+0000–U+001F).
/// The check a raw-read string needs before it is used as text.
pub fn plain_text(bytes: &[u8]) -> Result<&str, NotText> {
    let text = std::str::from_utf8(bytes).map_err(|_| NotText::Utf8)?;
    if text.bytes().any(|b| b < 0x20) {
        return Err(NotText::Control);
    }
    Ok(text)
}

impl<'de: 'a, 'a> Deserialize<'de> for RawUrl<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = RawUrl<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_bytes<E>(self, v: &'de [u8]) -> Result<Self::Value, E> {
                Ok(RawUrl(Cow::Borrowed(v)))
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Self::Value, E> {
                Ok(RawUrl(Cow::Owned(v.to_vec())))
            }
            // Other deserializers (serde_json::Value in tests, or a `from_str` read) hand over
            // text.
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(RawUrl(Cow::Borrowed(v.as_bytes())))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RawUrl(Cow::Owned(v.as_bytes().to_vec())))
            }
        }
        // serde_json reads a string asked for as bytes raw (`parse_str_raw`); anything but a
        // string is still refused with "invalid type".
        d.deserialize_bytes(V(std::marker::PhantomData))
    }
}

/// A `file` content part's object: `{"file_id": "file-…"}` (OpenAI's `filename` and
/// `file_data` are not taken: an image goes inline as an `image_url` data URL).
#[derive(Debug, Default)]
pub struct FileRef<'a> {
    pub file_id: Option<Cow<'a, str>>,
    pub extra: Vec<Extra<'a>>,
}

object_view!(FileRef, "an object with a string `file_id`", |map| {
    let mut file_id = None;
    let extra = entries(map, |key, map| match key {
        "file_id" => fill(map, &mut file_id, "file_id").map(|()| true),
        _ => Ok(false),
    })?;
    let file_id: Option<Str<'a>> = file_id.flatten();
    Ok(FileRef {
        file_id: file_id.map(|s| s.0),
        extra,
    })
});

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
