//! Prompts: plain chat messages become the token ids the model prefills.
//!
//! A [`Message`] is a role and its content: a string, or ordered parts of text and images
//! (the image bytes travel beside the messages, in the order their parts appear). The caller
//! builds them (the gateway's adapter reads them from the OpenAI request; this crate knows no
//! wire format). [`PromptBuilder`] renders the model's own chat template with minijinja as
//! transformers' `apply_chat_template` does (image parts become `{"type": "image"}`,
//! `trim_blocks` and `lstrip_blocks` on, `add_generation_prompt` true), tokenizes the text
//! with special tokens kept, and expands each `<|image_pad|>` to the number of tokens its
//! image occupies after the 2x2 merge. The result, a [`PromptInput`], goes to the scheduler's
//! waiting queue (`scheduler.rs`).

use crate::backend::{ProcessedImage, PromptInput};
use anyhow::{anyhow, bail, Context, Result};
use minijinja::value::{Value, ValueKind};
use minijinja::{Environment, ErrorKind, State};
use serde_json::json;
use std::path::Path;
use tokenizers::Tokenizer;

/// The placeholder the chat template writes for each image.
pub const IMAGE_PAD: &str = "<|image_pad|>";

/// One part of a message's content, in the template's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Text(String),
    Image,
}

/// A message's content: a plain string, or parts. A string is not made one text part: a chat
/// template may render the two differently, and transformers passes each as it came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: String,
    pub content: Content,
}

impl Message {
    pub fn text(role: &str, text: &str) -> Message {
        Message {
            role: role.into(),
            content: Content::Text(text.into()),
        }
    }

    /// A message of ordered text and image parts.
    pub fn parts(role: &str, parts: Vec<Part>) -> Message {
        Message {
            role: role.into(),
            content: Content::Parts(parts),
        }
    }

    pub fn image_count(&self) -> usize {
        match &self.content {
            Content::Text(_) => 0,
            Content::Parts(p) => p.iter().filter(|p| **p == Part::Image).count(),
        }
    }

    fn to_template(&self) -> serde_json::Value {
        let content = match &self.content {
            Content::Text(s) => json!(s),
            Content::Parts(parts) => parts
                .iter()
                .map(|p| match p {
                    Part::Text(t) => json!({"type": "text", "text": t}),
                    Part::Image => json!({"type": "image"}),
                })
                .collect(),
        };
        json!({"role": self.role, "content": content})
    }
}

/// A prompt ready for the scheduler, and the text it came from (for logs and tests).
#[derive(Debug, Clone)]
pub struct BuiltPrompt {
    pub input: PromptInput,
    pub text: String,
}

/// Renders and tokenizes prompts for one model. Cheap to share behind an `Arc`.
pub struct PromptBuilder {
    env: Environment<'static>,
    tokenizer: Tokenizer,
    image_pad_id: u32,
    merge_size: usize,
}

impl std::fmt::Debug for PromptBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptBuilder")
            .field("image_pad_id", &self.image_pad_id)
            .field("merge_size", &self.merge_size)
            .finish()
    }
}

impl PromptBuilder {
    /// Load `tokenizer.json` and the chat template from a Hugging Face model directory.
    pub fn from_model_dir(dir: &Path, merge_size: usize) -> Result<PromptBuilder> {
        let tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| anyhow!("{}: {e}", dir.join("tokenizer.json").display()))?;
        PromptBuilder::new(find_chat_template(dir)?, tokenizer, merge_size)
    }

    pub fn new(template: String, tokenizer: Tokenizer, merge_size: usize) -> Result<Self> {
        let image_pad_id = tokenizer
            .token_to_id(IMAGE_PAD)
            .ok_or_else(|| anyhow!("the tokenizer has no {IMAGE_PAD} token"))?;
        let mut env = Environment::new();
        // As transformers' chat template environment.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(python_methods);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned("chat", template)
            .context("compiling the chat template")?;
        Ok(PromptBuilder {
            env,
            tokenizer,
            image_pad_id,
            merge_size,
        })
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn merge_size(&self) -> usize {
        self.merge_size
    }

    /// The chat template's text for these messages, with the generation prompt.
    pub fn render(&self, messages: &[Message]) -> Result<String> {
        let msgs: Vec<serde_json::Value> = messages.iter().map(Message::to_template).collect();
        let tmpl = self.env.get_template("chat")?;
        let ctx = json!({"messages": msgs, "add_generation_prompt": true});
        tmpl.render(Value::from_serialize(&ctx))
            .context("rendering the chat template")
    }

    /// Render, tokenize and expand image pads; `images` in order of appearance.
    pub fn build(&self, messages: &[Message], images: Vec<ProcessedImage>) -> Result<BuiltPrompt> {
        let text = self.render(messages)?;
        let enc = self
            .tokenizer
            .encode(text.as_str(), false)
            .map_err(|e| anyhow!("tokenizing the prompt: {e}"))?;
        let ids = enc.get_ids();
        let pads = ids.iter().filter(|&&t| t == self.image_pad_id).count();
        if pads != images.len() {
            bail!(
                "the prompt has {pads} image placeholders but {} images",
                images.len()
            );
        }
        let extra: usize = images.iter().map(|i| i.tokens(self.merge_size)).sum();
        let mut input_ids = Vec::with_capacity(ids.len() + extra);
        let mut next = images.iter();
        for &t in ids {
            if t == self.image_pad_id {
                let n = next.next().map_or(0, |i| i.tokens(self.merge_size));
                input_ids.extend(std::iter::repeat_n(t, n));
            } else {
                input_ids.push(t);
            }
        }
        Ok(BuiltPrompt {
            input: PromptInput { input_ids, images },
            text,
        })
    }
}

/// The chat template of a model directory, in transformers' order of preference.
pub fn find_chat_template(dir: &Path) -> Result<String> {
    if let Ok(t) = std::fs::read_to_string(dir.join("chat_template.jinja")) {
        return Ok(t);
    }
    for file in ["chat_template.json", "tokenizer_config.json"] {
        let Ok(bytes) = std::fs::read(dir.join(file)) else {
            continue;
        };
        let v: serde_json::Value =
            serde_json::from_slice(&bytes).with_context(|| format!("{file} is not JSON"))?;
        match v.get("chat_template") {
            Some(serde_json::Value::String(s)) => return Ok(s.clone()),
            // A list of named templates: take "default".
            Some(serde_json::Value::Array(list)) => {
                if let Some(t) = list
                    .iter()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                    .and_then(|t| t.get("template"))
                    .and_then(|t| t.as_str())
                {
                    return Ok(t.to_string());
                }
            }
            _ => {}
        }
    }
    bail!("{}: no chat template found", dir.display())
}

fn raise_exception(msg: String) -> Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
}

/// The few Python string and dict methods chat templates call (`.startswith`, `.strip`,
/// `.items`, `.get`, …), which minijinja does not have.
fn python_methods(
    _state: &State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, minijinja::Error> {
    let arg = |i: usize| args.get(i).and_then(|a| a.as_str()).unwrap_or_default();
    if let Some(s) = value.as_str() {
        return match method {
            "startswith" => Ok(Value::from(s.starts_with(arg(0)))),
            "endswith" => Ok(Value::from(s.ends_with(arg(0)))),
            "strip" => Ok(Value::from(s.trim())),
            "lstrip" => Ok(Value::from(s.trim_start())),
            "rstrip" => Ok(Value::from(s.trim_end())),
            "lower" => Ok(Value::from(s.to_lowercase())),
            "upper" => Ok(Value::from(s.to_uppercase())),
            "split" => Ok(Value::from(
                s.split(arg(0)).map(Value::from).collect::<Vec<_>>(),
            )),
            _ => Err(minijinja::Error::from(ErrorKind::UnknownMethod)),
        };
    }
    if value.kind() == ValueKind::Map {
        return match method {
            "items" => {
                let mut out = Vec::new();
                for k in value.try_iter()? {
                    let v = value.get_item(&k)?;
                    out.push(Value::from(vec![k, v]));
                }
                Ok(Value::from(out))
            }
            "get" => {
                let v = value.get_item(args.first().unwrap_or(&Value::UNDEFINED))?;
                Ok(if v.is_undefined() {
                    args.get(1).cloned().unwrap_or(Value::from(()))
                } else {
                    v
                })
            }
            _ => Err(minijinja::Error::from(ErrorKind::UnknownMethod)),
        };
    }
    Err(minijinja::Error::from(ErrorKind::UnknownMethod))
}
