//! The request body, read for the engine: messages and every sampling parameter vLLM takes.
//!
//! Validation (`crate::validate`) already checked the body's shape, model, messages and images;
//! what is read here are the fields only the engine interprets. A wrong type or range becomes
//! a 400 naming the field, as vLLM answers.

use crate::error::GatewayError;
use caprl_engine::prompt::Message;
use caprl_engine::sampling::RequestSampling;
use serde_json::Value;

/// What the adapter needs from a chat completion body.
#[derive(Debug)]
pub struct ChatParams {
    pub messages: Vec<Message>,
    pub sampling: RequestSampling,
}

fn invalid(param: &str, message: impl Into<String>) -> GatewayError {
    GatewayError::invalid(message, Some(param.to_string()))
}

fn f32_of(body: &Value, key: &str) -> Result<Option<f32>, GatewayError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(|f| Some(f as f32))
            .ok_or_else(|| invalid(key, format!("`{key}` must be a number"))),
    }
}

fn i64_of(body: &Value, key: &str) -> Result<Option<i64>, GatewayError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .map(Some)
            .ok_or_else(|| invalid(key, format!("`{key}` must be an integer"))),
    }
}

fn count_of(body: &Value, key: &str) -> Result<Option<usize>, GatewayError> {
    match i64_of(body, key)? {
        None => Ok(None),
        Some(v) => usize::try_from(v)
            .map(Some)
            .map_err(|_| invalid(key, format!("`{key}` must not be negative"))),
    }
}

/// Read the body the gateway would forward to a worker.
pub fn parse(body: &[u8]) -> Result<ChatParams, GatewayError> {
    let body: Value = serde_json::from_slice(body)
        .map_err(|e| GatewayError::invalid(format!("invalid JSON body: {e}"), None))?;
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("messages", "`messages` is required"))?
        .iter()
        .enumerate()
        .map(|(i, m)| {
            Message::from_openai(m)
                .map_err(|e| invalid(&format!("messages[{i}]"), format!("{e:#}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let stop = match body.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| s.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| invalid("stop", "`stop` must be a string or a list of strings"))?,
        Some(_) => {
            return Err(invalid(
                "stop",
                "`stop` must be a string or a list of strings",
            ))
        }
    };
    let stop_token_ids = match body.get("stop_token_ids") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|t| t.as_u64().and_then(|t| u32::try_from(t).ok()))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| invalid("stop_token_ids", "`stop_token_ids` must be token ids"))?,
        Some(_) => return Err(invalid("stop_token_ids", "`stop_token_ids` must be a list")),
    };
    let max_tokens = match count_of(&body, "max_completion_tokens")? {
        Some(m) => Some(m),
        None => count_of(&body, "max_tokens")?,
    };
    let sampling = RequestSampling {
        temperature: f32_of(&body, "temperature")?,
        top_p: f32_of(&body, "top_p")?,
        top_k: i64_of(&body, "top_k")?,
        min_p: f32_of(&body, "min_p")?,
        repetition_penalty: f32_of(&body, "repetition_penalty")?,
        presence_penalty: f32_of(&body, "presence_penalty")?,
        frequency_penalty: f32_of(&body, "frequency_penalty")?,
        // vLLM takes any integer seed; a negative one is used as its two's complement.
        seed: i64_of(&body, "seed")?.map(|s| s as u64),
        max_tokens,
        min_tokens: count_of(&body, "min_tokens")?,
        stop,
        stop_token_ids,
        n: count_of(&body, "n")?,
    };
    Ok(ChatParams { messages, sampling })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
    }
}
