//! The request body, read for the engine: plain messages and every sampling parameter vLLM
//! takes.
//!
//! Validation (`crate::validate`) already checked the body's shape, model, messages and images;
//! what is read here are the fields only the engine interprets, in one typed pass over the
//! body ([`Body`], read through `serde_path_to_error`, so a wrong type or range becomes a 400
//! naming the field, as vLLM answers). The messages become the engine's plain
//! [`Message`]s: a role and a string, or ordered text and image parts, the content types
//! validation accepts (`text` and `image_url`); an image part's URL is skipped, not copied,
//! since validation kept the image's bytes.

use crate::error::GatewayError;
use caprl_engine::{Content, Message, Part, RequestSampling};
use serde::de::{Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::Deserialize;

/// What the adapter needs from a chat completion body.
#[derive(Debug)]
pub struct ChatParams {
    pub messages: Vec<Message>,
    pub sampling: RequestSampling,
}

/// The fields of a chat completion body the engine reads; the rest is skipped.
#[derive(Deserialize)]
struct Body {
    messages: Vec<MessageBody>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<i64>,
    min_p: Option<f32>,
    repetition_penalty: Option<f32>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    /// vLLM takes any integer seed; a negative one is used as its two's complement.
    seed: Option<i64>,
    max_tokens: Option<usize>,
    /// OpenAI's newer name for `max_tokens`; it wins when both are given.
    max_completion_tokens: Option<usize>,
    min_tokens: Option<usize>,
    n: Option<usize>,
    #[serde(default, deserialize_with = "string_or_list")]
    stop: Vec<String>,
    stop_token_ids: Option<Vec<u32>>,
}

#[derive(Deserialize)]
struct MessageBody {
    role: String,
    /// Absent or null (an assistant message with tool calls) reads as empty text.
    content: Option<ContentBody>,
}

/// A message's `content`: a string, or an array of parts.
struct ContentBody(Content);

impl<'de> Deserialize<'de> for ContentBody {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Content;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or an array of content parts")
            }
            fn visit_str<E>(self, v: &str) -> Result<Content, E> {
                Ok(Content::Text(v.to_string()))
            }
            fn visit_string<E>(self, v: String) -> Result<Content, E> {
                Ok(Content::Text(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Content, A::Error> {
                let mut parts = Vec::with_capacity(seq.size_hint().unwrap_or(2));
                while let Some(PartBody(p)) = seq.next_element()? {
                    parts.push(p);
                }
                Ok(Content::Parts(parts))
            }
        }
        d.deserialize_any(V).map(ContentBody)
    }
}

/// One content part, as validation accepts it.
#[derive(Deserialize)]
#[serde(try_from = "RawPart")]
struct PartBody(Part);

#[derive(Deserialize)]
struct RawPart {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
    /// Only its presence: the bytes were decoded and kept by validation.
    image_url: Option<IgnoredAny>,
}

impl TryFrom<RawPart> for PartBody {
    type Error = String;

    fn try_from(p: RawPart) -> Result<Self, String> {
        match (p.kind.as_str(), p.text, p.image_url) {
            ("text", Some(text), _) => Ok(PartBody(Part::Text(text))),
            ("text", None, _) => Err("a text part needs `text`".into()),
            ("image_url", _, Some(_)) => Ok(PartBody(Part::Image)),
            ("image_url", _, None) => Err("an image_url part needs `image_url`".into()),
            (other, _, _) => Err(format!(
                "unsupported content part type `{other}`; expected `text` or `image_url`"
            )),
        }
    }
}

/// `stop`: one string or a list of them; absent or null is none.
fn string_or_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Stop {
        One(String),
        Many(Vec<String>),
    }
    match Option::<Stop>::deserialize(d) {
        Ok(None) => Ok(Vec::new()),
        Ok(Some(Stop::One(s))) => Ok(vec![s]),
        Ok(Some(Stop::Many(v))) => Ok(v),
        Err(_) => Err(serde::de::Error::custom(
            "must be a string or a list of strings",
        )),
    }
}

/// Read the body the gateway would forward to a worker.
pub fn parse(body: &[u8]) -> Result<ChatParams, GatewayError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let b: Body = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        // serde_path_to_error says "." for the root and "?" where it has no path.
        if path == "." || path == "?" {
            GatewayError::invalid(format!("invalid JSON body: {inner}"), None)
        } else {
            GatewayError::invalid(format!("`{path}`: {inner}"), Some(path))
        }
    })?;
    de.end()
        .map_err(|e| GatewayError::invalid(format!("invalid JSON body: {e}"), None))?;
    let messages = b
        .messages
        .into_iter()
        .map(|m| Message {
            role: m.role,
            content: m.content.map_or(Content::Text(String::new()), |c| c.0),
        })
        .collect();
    let sampling = RequestSampling {
        temperature: b.temperature,
        top_p: b.top_p,
        top_k: b.top_k,
        min_p: b.min_p,
        repetition_penalty: b.repetition_penalty,
        presence_penalty: b.presence_penalty,
        frequency_penalty: b.frequency_penalty,
        seed: b.seed.map(|s| s as u64),
        max_tokens: b.max_completion_tokens.or(b.max_tokens),
        min_tokens: b.min_tokens,
        stop: b.stop,
        stop_token_ids: b.stop_token_ids.unwrap_or_default(),
        n: b.n,
    };
    Ok(ChatParams { messages, sampling })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::LimitArgs;
    use crate::validate::{validate_chat, ValidateOptions};

    fn param(e: &GatewayError) -> Option<String> {
        serde_json::to_value(e.envelope()).unwrap()["error"]["param"]
            .as_str()
            .map(str::to_string)
    }

    #[test]
    fn reads_every_sampling_field() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":"hi"}],
            "max_tokens":7,"n":2,"temperature":0.5,"top_p":0.9,"top_k":40,"min_p":0.1,
            "repetition_penalty":1.1,"presence_penalty":0.2,"frequency_penalty":0.3,"seed":-1,
            "stop":"x","stop_token_ids":[5],"stream":true,"stream_options":{"include_usage":true}}"#;
        let p = parse(body).unwrap();
        let s = &p.sampling;
        assert_eq!(s.max_tokens, Some(7));
        assert_eq!(s.n, Some(2));
        assert_eq!(s.top_k, Some(40));
        assert_eq!(s.seed, Some(u64::MAX));
        assert_eq!(s.stop, vec!["x".to_string()]);
        assert_eq!(s.stop_token_ids, vec![5]);
    }

    #[test]
    fn bad_types_name_the_field() {
        let e = parse(br#"{"messages":[{"role":"user","content":"hi"}],"temperature":"hot"}"#)
            .unwrap_err();
        assert!(e.to_string().contains("temperature"), "{e}");
        let e =
            parse(br#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":-3}"#).unwrap_err();
        assert!(e.to_string().contains("max_tokens"), "{e}");
        assert_eq!(param(&e).as_deref(), Some("max_tokens"));
        let e = parse(br#"{"messages":[{"role":"user","content":"hi"}],"stop":[1]}"#).unwrap_err();
        assert_eq!(param(&e).as_deref(), Some("stop"));
        assert!(
            e.to_string().contains("a string or a list of strings"),
            "{e}"
        );
    }

    #[test]
    fn messages_become_plain_messages() {
        let body = br#"{"messages":[{"role":"system","content":"be brief"},
            {"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}},
                {"type":"text","text":"what is this"}]},
            {"role":"assistant","content":null},{"role":"assistant"}],
            "stop":["a","b"],"max_tokens":3,"max_completion_tokens":9}"#;
        let p = parse(body).unwrap();
        assert_eq!(
            p.messages,
            vec![
                Message::text("system", "be brief"),
                Message::parts("user", vec![Part::Image, Part::Text("what is this".into())]),
                Message::text("assistant", ""),
                Message::text("assistant", ""),
            ]
        );
        assert_eq!(p.sampling.stop, vec!["a".to_string(), "b".to_string()]);
        assert_eq!(p.sampling.max_tokens, Some(9), "max_completion_tokens wins");
    }

    /// Moved from the engine crate (which no longer reads OpenAI JSON): what it refused, the
    /// adapter refuses, naming the message.
    #[test]
    fn bad_content_is_refused() {
        for (msg, want) in [
            (r#"{"role":"user","content":5}"#, "messages[0].content"),
            (r#"{"content":"x"}"#, "messages[0]"),
            (
                r#"{"role":"user","content":[{"type":"audio"}]}"#,
                "messages[0].content[0]",
            ),
        ] {
            let body = format!(r#"{{"messages":[{msg}]}}"#);
            let e = parse(body.as_bytes()).unwrap_err();
            assert_eq!(param(&e).as_deref(), Some(want), "{msg}: {e}");
        }
    }

    /// The content the adapter accepts is exactly the content validation accepts.
    #[test]
    fn accepted_content_agrees_with_validation() {
        let limits = LimitArgs::default();
        let opts = ValidateOptions {
            limits: &limits,
            is_served: &|m| m == "caprl",
            keep_image_bytes: &|_| false,
            image_rejected: &|_| {},
            read_file: &|id| Err(format!("no such file: {id}")),
            reported_max_model_len: &|_| None,
        };
        let image = r#"{"type":"image_url","image_url":{"url":"https://example.com/a.png"}}"#;
        let contents = [
            r#""a string""#.to_string(),
            "null".into(),
            r#"[{"type":"text","text":"t"}]"#.into(),
            format!("[{image}]"),
            format!(r#"[{image},{{"type":"text","text":"t"}}]"#),
            "[]".into(),
            r#"[{"type":"input_text","text":"t"}]"#.into(),
            r#"[{"type":"input_image","image_url":{"url":"https://example.com/a.png"}}]"#.into(),
            r#"[{"type":"image","image":"x"}]"#.into(),
            r#"[{"type":"text"}]"#.into(),
            r#"[{"type":"text","text":null}]"#.into(),
            r#"[{"type":"image_url"}]"#.into(),
            r#"[{"text":"no type"}]"#.into(),
            "5".into(),
            "true".into(),
            r#"{"type":"text","text":"t"}"#.into(),
        ];
        let mut accepted = 0;
        for content in &contents {
            let body = format!(
                r#"{{"model":"caprl","messages":[{{"role":"user","content":{content}}}]}}"#
            );
            let valid = validate_chat(bytes::Bytes::from(body.clone()), &opts);
            let parsed = parse(body.as_bytes());
            assert_eq!(
                valid.is_ok(),
                parsed.is_ok(),
                "{content}: validation {:?}, adapter {:?}",
                valid.err(),
                parsed.err()
            );
            accepted += usize::from(parsed.is_ok());
        }
        assert_eq!(accepted, 6, "the first six contents are valid");
    }
}
