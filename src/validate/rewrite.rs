//! The one place the gateway changes a client's body: top-level fields only, every value kept
//! as the client's raw JSON text (a 1 MB image string is copied, never re-escaped).

use crate::error::GatewayError;
use bytes::Bytes;
use serde_json::value::RawValue;

/// Drop `priority` and/or ask for `stream_options.include_usage`, keeping everything else.
pub fn rewrite_body(
    body: &[u8],
    strip_priority: bool,
    add_usage: bool,
) -> Result<Bytes, GatewayError> {
    // A Vec of pairs keeps the client's field order.
    let fields: Vec<(std::borrow::Cow<'_, str>, &RawValue)> = {
        let map: RawObject<'_> = serde_json::from_slice(body)
            .map_err(|e| GatewayError::invalid(format!("invalid JSON body: {e}"), None))?;
        map.0
    };
    let mut out = Vec::with_capacity(body.len() + 48);
    out.push(b'{');
    let mut first = true;
    let mut push = |out: &mut Vec<u8>, key: &str, value: &str| {
        if !first {
            out.push(b',');
        }
        first = false;
        serde_json::to_writer(&mut *out, key).expect("writing to a Vec cannot fail; this is a bug");
        out.push(b':');
        out.extend_from_slice(value.as_bytes());
    };
    for (key, value) in &fields {
        match key.as_ref() {
            "priority" if strip_priority => {}
            "stream_options" if add_usage => {}
            _ => push(&mut out, key, value.get()),
        }
    }
    if add_usage {
        // Keep the client's other stream options, if any, and turn usage on.
        let mut options: serde_json::Map<String, serde_json::Value> = fields
            .iter()
            .find(|(k, _)| k == "stream_options")
            .and_then(|(_, v)| serde_json::from_str(v.get()).ok())
            .unwrap_or_default();
        options.insert("include_usage".into(), serde_json::Value::Bool(true));
        let options = serde_json::to_string(&options).expect("a map serializes; this is a bug");
        push(&mut out, "stream_options", &options);
    }
    out.push(b'}');
    Ok(Bytes::from(out))
}

/// Replace the content parts at (message, part) by `image_url` parts with the given data URLs:
/// images the client named by file id, inlined for the worker.
pub fn inline_images(body: &[u8], parts: &[(usize, usize, String)]) -> Result<Bytes, GatewayError> {
    edit_parts(body, parts, |part, url| {
        *part = serde_json::json!({"type": "image_url", "image_url": {"url": url}});
        Some(())
    })
}

/// Set `messages[i].content[j].image_url.url` of each `(i, j, url)` (remote images fetched by
/// the gateway, as data URLs), keeping the part's other fields (`detail`, …).
pub fn replace_image_urls(
    body: &[u8],
    urls: &[(usize, usize, String)],
) -> Result<Bytes, GatewayError> {
    edit_parts(body, urls, |part, url| {
        *part.get_mut("image_url")?.get_mut("url")? = serde_json::Value::String(url.to_string());
        Some(())
    })
}

/// Apply `edit` to the content part at each (message, part) with its URL. The body is parsed
/// and written again whole (keys in sorted order): only requests that name files or fetched
/// images pay for it. A part that is not where validation saw it is a bug, not the client's.
fn edit_parts(
    body: &[u8],
    parts: &[(usize, usize, String)],
    edit: impl Fn(&mut serde_json::Value, &str) -> Option<()>,
) -> Result<Bytes, GatewayError> {
    let invalid =
        |e: serde_json::Error| GatewayError::invalid(format!("invalid JSON body: {e}"), None);
    let mut value: serde_json::Value = serde_json::from_slice(body).map_err(invalid)?;
    for (i, j, url) in parts {
        value
            .get_mut("messages")
            .and_then(|m| m.get_mut(*i))
            .and_then(|m| m.get_mut("content"))
            .and_then(|c| c.get_mut(*j))
            .and_then(|part| edit(part, url))
            .ok_or_else(|| {
                GatewayError::Internal(format!(
                    "the image part messages[{i}].content[{j}] is not where validation saw it"
                ))
            })?;
    }
    Ok(Bytes::from(serde_json::to_vec(&value).map_err(invalid)?))
}

/// Ask for the usage chunk by prepending the field: one copy, no scan. Only valid when the
/// body has no `stream_options` (a duplicate key would be ambiguous) and is a non-empty object.
pub fn prepend_usage(body: &[u8]) -> Option<Bytes> {
    let start = body.iter().position(|b| !b.is_ascii_whitespace())?;
    if body[start] != b'{' {
        return None;
    }
    const FIELD: &[u8] = br#"{"stream_options":{"include_usage":true},"#;
    let mut out = Vec::with_capacity(body.len() + FIELD.len());
    out.extend_from_slice(FIELD);
    out.extend_from_slice(&body[start + 1..]);
    Some(Bytes::from(out))
}

/// A JSON object as ordered (key, raw value) pairs.
struct RawObject<'a>(Vec<(std::borrow::Cow<'a, str>, &'a RawValue)>);

impl<'de> serde::Deserialize<'de> for RawObject<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawObject<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(16));
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    let value: &'de RawValue = map.next_value()?;
                    fields.push((key, value));
                }
                Ok(RawObject(fields))
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_priority_and_adds_usage_keeping_the_rest() {
        let body = br#"{"model":"caprl","priority":-3,"stream":true,"stream_options":{"continuous_usage_stats":false},"top_k":5,"messages":[{"role":"user","content":"hi \u00e9"}]}"#;
        let out = rewrite_body(body, true, true).expect("rewrites");
        let v: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
        assert!(v.get("priority").is_none());
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["stream_options"]["continuous_usage_stats"], false);
        assert_eq!(v["top_k"], 5);
        // The message text is the client's raw text, escapes included.
        assert!(std::str::from_utf8(&out)
            .expect("utf-8")
            .contains(r#""hi \u00e9""#));
    }

    #[test]
    fn prepends_usage_without_rewriting() {
        let body = br#" {"model":"caprl","stream":true,"messages":[]}"#;
        let out = prepend_usage(body).expect("an object");
        let v: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["model"], "caprl");
        assert!(prepend_usage(b"[1]").is_none());
    }

    #[test]
    fn replaces_only_the_url_of_the_named_parts() {
        let body = br#"{"model":"caprl","messages":[{"role":"user","content":[{"type":"text","text":"hi"},{"type":"image_url","image_url":{"url":"https://a/x.png","detail":"high"}}]}]}"#;
        let out = replace_image_urls(body, &[(0, 1, "data:image/png;base64,AAAA".into())])
            .expect("rewrites");
        let v: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
        let part = &v["messages"][0]["content"][1];
        assert_eq!(part["image_url"]["url"], "data:image/png;base64,AAAA");
        assert_eq!(part["image_url"]["detail"], "high");
        assert_eq!(v["messages"][0]["content"][0]["text"], "hi");
        assert!(
            replace_image_urls(body, &[(0, 0, "x".into())]).is_err(),
            "a text part"
        );
    }

    #[test]
    fn leaves_fields_alone_when_not_asked() {
        let body = br#"{"a":1,"priority":2}"#;
        let out = rewrite_body(body, false, false).expect("rewrites");
        assert_eq!(&out[..], &body[..]);
    }
}
