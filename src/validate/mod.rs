//! Validation: the client's bytes become a [`ValidRequest`], or an error naming the field.
//!
//! This is the only place a request is inspected. Images are decoded and checked here, once
//! ([`images`]); what goes on to the queue (`crate::queue`) is a `ValidRequest`, which carries
//! the client's body to forward (unchanged unless the gateway must add to it) and the
//! measurements the queue and the pool decide with.

pub mod images;
pub mod json;
mod rewrite;

use crate::api::chat::{ChatRequestView, Content, MessageView, PartView, ROLES};
use crate::api::completions::CompletionRequestView;
use crate::config::LimitArgs;
use crate::error::GatewayError;
use bytes::Bytes;
pub use images::{ImageFormat, ImageInfo, ImageLimits};
pub use rewrite::replace_image_urls;

/// Visual tokens assumed for an `http(s)://` image the gateway does not fetch (or not yet):
/// Qwen2.5-VL's tokens for a 1024×1024 image, a typical captioning input.
pub const REMOTE_IMAGE_TOKENS: u64 = 1369;
/// Output tokens assumed when the request names no `max_tokens`: CapRL's dense captions run
/// to several hundred tokens.
pub const DEFAULT_MAX_TOKENS_ESTIMATE: u64 = 1024;
/// Bytes of prompt text per token, for the admission estimate (BPE on English averages ~4).
const BYTES_PER_TOKEN: u64 = 4;
/// Most choices one request may ask for: OpenAI's own cap on `n`. Each choice is a sequence
/// in the worker's batch, so `n` multiplies a request's cost.
pub const MAX_N: u32 = 128;

/// How deep each object the gateway reads sits in the body (the body is 1), for the depth
/// limit on the unknown fields inside it.
mod depth {
    pub const BODY: usize = 1;
    pub const STREAM_OPTIONS: usize = 2;
    pub const MESSAGE: usize = 3;
    pub const PART: usize = 5;
    pub const IMAGE_URL: usize = 6;
}

/// Which OpenAI endpoint a request is for: the worker gets it on the same path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/chat/completions`: messages, images.
    Chat,
    /// `/v1/completions`: a raw text prompt (or token ids).
    Completions,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
        }
    }

    pub fn from_path(path: &str) -> Option<Endpoint> {
        [Endpoint::Chat, Endpoint::Completions]
            .into_iter()
            .find(|e| e.path() == path)
    }
}

/// A request that passed every check: the only thing the queue accepts.
#[derive(Debug)]
pub struct ValidRequest {
    pub endpoint: Endpoint,
    /// The model name the client asked for, which selects the pool.
    pub model: String,
    /// The body to send a worker: the client's bytes, unless the gateway had to change them.
    pub body: Bytes,
    pub stream: bool,
    /// The client asked for the usage chunk; when it did not, the gateway asks the worker for
    /// it anyway (to count tokens) and drops it from the relayed stream.
    pub client_wants_usage: bool,
    /// Images checked from data URLs, in order of appearance.
    pub images: Vec<ImageInfo>,
    /// `http(s)://` images, forwarded unchecked unless the gateway fetches them
    /// (`crate::fetch`, which then validates the body again with data URLs in their place).
    pub remote: Vec<RemoteImage>,
    /// Estimated prompt tokens: text bytes / 4 plus every image's visual tokens.
    pub prompt_tokens: u64,
    /// The images' share of `prompt_tokens`.
    pub image_tokens: u64,
    /// Requested output tokens (or [`DEFAULT_MAX_TOKENS_ESTIMATE`]) times `n`.
    pub max_output_tokens: u64,
    /// Lower is served first; 0 by default.
    pub priority: i64,
    /// A batch line: admitted after every interactive request and only into the share of
    /// each worker that interactive traffic leaves (`batch_share`). False from validation;
    /// the batch runner sets it.
    pub bulk: bool,
}

/// An `http(s)://` image URL and where it stands in the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteImage {
    /// Index into `messages`.
    pub message: usize,
    /// Index into that message's `content`.
    pub part: usize,
    pub url: String,
}

impl RemoteImage {
    /// The field errors about this URL name: `messages[i].content[j].image_url.url`.
    pub fn param(&self) -> String {
        format!(
            "messages[{}].content[{}].image_url.url",
            self.message, self.part
        )
    }
}

impl ValidRequest {
    /// Tokens this request may hold in a worker's KV cache at once: its admission cost.
    pub fn token_cost(&self) -> u64 {
        self.prompt_tokens + self.max_output_tokens
    }

    /// The first image's content hash: the affinity key.
    pub fn affinity_key(&self) -> Option<u64> {
        self.images.first().map(|i| i.hash as u64)
    }
}

/// What validation needs to know besides the body.
pub struct ValidateOptions<'a> {
    pub limits: &'a LimitArgs,
    /// Served model names; anything else is 404.
    pub is_served: &'a dyn Fn(&str) -> bool,
    /// Keep decoded image bytes (for in-process engines).
    pub keep_image_bytes: &'a dyn Fn(&str) -> bool,
    /// Told of each image that failed its checks, with its format when it was sniffed.
    pub image_rejected: &'a dyn Fn(Option<ImageFormat>),
    /// The bytes of an image uploaded to `/v1/files` (purpose `vision`), by id; Err says why
    /// there are none (unknown, deleted, not an image upload, the files API off).
    pub read_file: &'a dyn Fn(&str) -> Result<Vec<u8>, String>,
    /// The context `model`'s workers report, when they do.
    pub reported_max_model_len: &'a dyn Fn(&str) -> Option<u64>,
}

impl ValidateOptions<'_> {
    /// The longest context `model`'s workers accept, which bounds `max_tokens`: what the
    /// workers report on `/v1/models` (vLLM's `max_model_len`), else `--max-model-len`.
    pub fn max_model_len(&self, model: &str) -> u64 {
        (self.reported_max_model_len)(model).unwrap_or(self.limits.max_model_len)
    }
}

/// Check a chat completion body.
pub fn validate_chat(
    body: Bytes,
    opts: &ValidateOptions<'_>,
) -> Result<ValidRequest, GatewayError> {
    let view: ChatRequestView<'_> = parse_view(&body)?;
    let model = served_model(view.model.as_deref(), opts)?;
    let messages = view
        .messages
        .as_ref()
        .ok_or_else(|| GatewayError::invalid("`messages` is required", Some("messages".into())))?;
    if messages.is_empty() {
        return Err(GatewayError::invalid(
            "`messages` must not be empty",
            Some("messages".into()),
        ));
    }
    let n = check_n(view.n)?;
    check_max_tokens(
        &[
            ("max_tokens", view.max_tokens),
            ("max_completion_tokens", view.max_completion_tokens),
        ],
        opts.max_model_len(&model),
    )?;
    check_unknown_fields(&view.extra, view.stream_options.as_ref(), opts)?;

    let limits = ImageLimits::from(opts.limits);
    let keep = (opts.keep_image_bytes)(&model);
    let mut scan = Scan::default();
    for (i, message) in messages.iter().enumerate() {
        scan_message(i, message, &limits, keep, opts, &mut scan)?;
    }

    let stream = view.stream.unwrap_or(false);
    let client_wants_usage = wants_usage(view.stream_options.as_ref());
    let max_tokens = view
        .max_completion_tokens
        .or(view.max_tokens)
        .unwrap_or(DEFAULT_MAX_TOKENS_ESTIMATE);
    let priority = view.priority.unwrap_or(0);
    let image_tokens = scan.images.iter().map(|i| i.tokens).sum::<u64>()
        + scan.remote.len() as u64 * REMOTE_IMAGE_TOKENS;

    let forward = Forward {
        strip_priority: view.priority.is_some(),
        add_usage: stream && !client_wants_usage,
        has_stream_options: view.stream_options.is_some(),
    };
    drop(view);
    // Images by file id go to the worker inline, as data URLs: workers know nothing of files.
    let body = if scan.inline.is_empty() {
        body
    } else {
        rewrite::inline_images(&body, &scan.inline)?
    };
    let body = forward.apply(body)?;

    Ok(ValidRequest {
        endpoint: Endpoint::Chat,
        model,
        body,
        stream,
        client_wants_usage,
        images: scan.images,
        remote: scan.remote,
        prompt_tokens: scan.text_bytes.div_ceil(BYTES_PER_TOKEN) + image_tokens,
        image_tokens,
        max_output_tokens: max_tokens.saturating_mul(n as u64),
        priority,
        bulk: false,
    })
}

/// Check a completion body (`/v1/completions`): the model, a non-empty prompt (a string, an
/// array of strings, token ids, or arrays of token ids), `n`, `max_tokens` against the
/// context, and the unknown fields' depth and integers, as for chat. No images.
pub fn validate_completion(
    body: Bytes,
    opts: &ValidateOptions<'_>,
) -> Result<ValidRequest, GatewayError> {
    let view: CompletionRequestView<'_> = parse_view(&body)?;
    let model = served_model(view.model.as_deref(), opts)?;
    let prompt = view
        .prompt
        .ok_or_else(|| GatewayError::invalid("`prompt` is required", Some("prompt".into())))?;
    let (prompts, prompt_tokens) = measure_prompt(prompt)?;
    let n = check_n(view.n)?;
    check_max_tokens(
        &[("max_tokens", view.max_tokens)],
        opts.max_model_len(&model),
    )?;
    check_unknown_fields(&view.extra, view.stream_options.as_ref(), opts)?;
    let stream = view.stream.unwrap_or(false);
    let client_wants_usage = wants_usage(view.stream_options.as_ref());
    // OpenAI's (and vLLM's) default for completions.
    let max_tokens = view.max_tokens.unwrap_or(COMPLETION_DEFAULT_MAX_TOKENS);
    let priority = view.priority.unwrap_or(0);
    let forward = Forward {
        strip_priority: view.priority.is_some(),
        add_usage: stream && !client_wants_usage,
        has_stream_options: view.stream_options.is_some(),
    };
    drop(view);
    let body = forward.apply(body)?;
    Ok(ValidRequest {
        endpoint: Endpoint::Completions,
        model,
        body,
        stream,
        client_wants_usage,
        images: Vec::new(),
        remote: Vec::new(),
        prompt_tokens,
        image_tokens: 0,
        max_output_tokens: max_tokens
            .saturating_mul(u64::from(n))
            .saturating_mul(prompts),
        priority,
        bulk: false,
    })
}

/// Parse a body into its view, naming the field of the first error.
fn parse_view<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> Result<T, GatewayError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let view: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        // serde_path_to_error says "." for the root and "?" where it has no path (a key
        // that failed to parse): name the object that holds it.
        let path = path.trim_end_matches(".?").to_string();
        let param = (path != "." && path != "?").then_some(path);
        GatewayError::invalid(format!("invalid JSON body: {inner}"), param)
    })?;
    de.end()
        .map_err(|e| GatewayError::invalid(format!("invalid JSON body: {e}"), None))?;
    Ok(view)
}

/// The request's model, required and served (else 404, as from vLLM).
fn served_model(model: Option<&str>, opts: &ValidateOptions<'_>) -> Result<String, GatewayError> {
    let model = match model {
        None | Some("") => {
            return Err(GatewayError::invalid(
                "`model` is required",
                Some("model".into()),
            ))
        }
        Some(m) => m.to_string(),
    };
    if !(opts.is_served)(&model) {
        return Err(GatewayError::ModelNotFound(model));
    }
    Ok(model)
}

/// `n`, 1 by default, in 1..=[`MAX_N`].
fn check_n(n: Option<u32>) -> Result<u32, GatewayError> {
    let n = n.unwrap_or(1);
    if n == 0 {
        return Err(GatewayError::invalid(
            "`n` must be at least 1",
            Some("n".into()),
        ));
    }
    if n > MAX_N {
        return Err(GatewayError::invalid(
            format!("`n` must be at most {MAX_N}"),
            Some("n".into()),
        ));
    }
    Ok(n)
}

/// Each named output-token bound is at least 1 and at most the model's `context`.
fn check_max_tokens(fields: &[(&str, Option<u64>)], context: u64) -> Result<(), GatewayError> {
    for &(name, value) in fields {
        match value {
            Some(0) => {
                return Err(GatewayError::invalid(
                    format!("`{name}` must be at least 1"),
                    Some(name.into()),
                ))
            }
            // Prompt and output must both fit; the prompt's length is only estimated here,
            // so refuse only what cannot fit even with an empty prompt.
            Some(t) if t > context => {
                return Err(GatewayError::invalid(
                    format!("`{name}` is {t}; the model's context is {context} tokens"),
                    Some(name.into()),
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// The depth and integers of the fields the gateway forwards unread (see [`json`]).
fn check_unknown_fields(
    extra: &[crate::api::chat::Extra<'_>],
    stream_options: Option<&crate::api::chat::StreamOptions<'_>>,
    opts: &ValidateOptions<'_>,
) -> Result<(), GatewayError> {
    let max_depth = opts.limits.max_json_depth;
    json::check_extras(extra, depth::BODY, max_depth, &String::new)?;
    if let Some(options) = stream_options {
        json::check_extras(&options.extra, depth::STREAM_OPTIONS, max_depth, &|| {
            "stream_options.".into()
        })?;
    }
    Ok(())
}

fn wants_usage(stream_options: Option<&crate::api::chat::StreamOptions<'_>>) -> bool {
    stream_options
        .and_then(|o| o.include_usage)
        .unwrap_or(false)
}

/// How the body must change before a worker gets it. It changes only when it must:
/// `priority` is the gateway's (vLLM refuses it unless started with priority scheduling), and
/// a stream without usage gets it asked for.
struct Forward {
    strip_priority: bool,
    add_usage: bool,
    has_stream_options: bool,
}

impl Forward {
    fn apply(&self, body: Bytes) -> Result<Bytes, GatewayError> {
        Ok(match (self.strip_priority, self.add_usage) {
            (false, false) => body,
            // The common streaming case: one prepended field, no re-serialization.
            (false, true) if !self.has_stream_options => match rewrite::prepend_usage(&body) {
                Some(b) => b,
                None => rewrite::rewrite_body(&body, false, true)?,
            },
            _ => rewrite::rewrite_body(&body, self.strip_priority, self.add_usage)?,
        })
    }
}

/// `max_tokens` of a completion that names none: OpenAI's and vLLM's default.
pub const COMPLETION_DEFAULT_MAX_TOKENS: u64 = 16;

/// How many prompts a completion's `prompt` holds and their estimated tokens together.
fn measure_prompt(raw: &serde_json::value::RawValue) -> Result<(u64, u64), GatewayError> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum One {
        Text(String),
        Tokens(Vec<u32>),
    }
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Prompt {
        One(One),
        Many(Vec<One>),
    }
    let bad = || {
        GatewayError::invalid(
            "`prompt` must be a string, an array of strings, an array of token ids, or an \
             array of arrays of token ids",
            Some("prompt".into()),
        )
    };
    let prompt: Prompt = serde_json::from_str(raw.get()).map_err(|_| bad())?;
    let tokens = |one: &One| match one {
        One::Text(t) => (t.len() as u64).div_ceil(BYTES_PER_TOKEN),
        One::Tokens(ids) => ids.len() as u64,
    };
    let empty = |one: &One| match one {
        One::Text(t) => t.is_empty(),
        One::Tokens(ids) => ids.is_empty(),
    };
    let list = match prompt {
        Prompt::One(one) => vec![one],
        Prompt::Many(many) => many,
    };
    if list.is_empty() || list.iter().any(empty) {
        return Err(GatewayError::invalid(
            "`prompt` must not be empty",
            Some("prompt".into()),
        ));
    }
    Ok((list.len() as u64, list.iter().map(tokens).sum()))
}

#[derive(Default)]
struct Scan {
    images: Vec<ImageInfo>,
    remote: Vec<RemoteImage>,
    text_bytes: u64,
    /// Parts given as file ids, to be replaced by their data URL: (message, part, URL).
    inline: Vec<(usize, usize, String)>,
}

fn scan_message(
    i: usize,
    message: &MessageView<'_>,
    limits: &ImageLimits,
    keep: bool,
    opts: &ValidateOptions<'_>,
    scan: &mut Scan,
) -> Result<(), GatewayError> {
    json::check_extras(
        &message.extra,
        depth::MESSAGE,
        opts.limits.max_json_depth,
        &|| format!("messages[{i}]."),
    )?;
    let role = message.role.as_deref().ok_or_else(|| {
        GatewayError::invalid(
            "each message needs a `role`",
            Some(format!("messages[{i}].role")),
        )
    })?;
    if !ROLES.contains(&role) {
        return Err(GatewayError::invalid(
            format!(
                "unknown role `{role}`; expected one of {}",
                ROLES.join(", ")
            ),
            Some(format!("messages[{i}].role")),
        ));
    }
    match &message.content {
        // Assistant messages with tool calls may have no content.
        Content::None => Ok(()),
        Content::Text(len) => {
            scan.text_bytes += *len as u64;
            Ok(())
        }
        Content::Parts(parts) => {
            for (j, part) in parts.iter().enumerate() {
                scan_part(i, j, part, limits, keep, opts, scan)?;
            }
            Ok(())
        }
        Content::Invalid => Err(GatewayError::invalid(
            "`content` must be a string or an array of content parts",
            Some(format!("messages[{i}].content")),
        )),
    }
}

fn scan_part(
    i: usize,
    j: usize,
    part: &PartView<'_>,
    limits: &ImageLimits,
    keep: bool,
    opts: &ValidateOptions<'_>,
    scan: &mut Scan,
) -> Result<(), GatewayError> {
    let max_images = opts.limits.max_images_per_request;
    let param = || format!("messages[{i}].content[{j}]");
    json::check_extras(
        &part.extra,
        depth::PART,
        opts.limits.max_json_depth,
        &|| format!("{}.", param()),
    )?;
    match part.kind.as_ref() {
        "text" => {
            let text = part.text.ok_or_else(|| {
                GatewayError::invalid(
                    "a text part needs `text`",
                    Some(format!("{}.text", param())),
                )
            })?;
            scan.text_bytes += text.0 as u64;
            Ok(())
        }
        "file" => {
            let param = format!("{}.file", param());
            let file = part.file.as_ref().ok_or_else(|| {
                GatewayError::invalid("a file part needs `file`", Some(param.clone()))
            })?;
            let id = file.file_id.as_deref().ok_or_else(|| {
                GatewayError::invalid(
                    "a file part needs `file.file_id` (an image uploaded with purpose `vision`)",
                    Some(format!("{param}.file_id")),
                )
            })?;
            if scan.images.len() + scan.remote.len() >= max_images {
                return Err(GatewayError::too_large(
                    format!("more than {max_images} images in one request"),
                    Some(param),
                ));
            }
            inline_file(
                i,
                j,
                id,
                &format!("{param}.file_id"),
                limits,
                keep,
                opts,
                scan,
            )
        }
        "image_url" => {
            let param = format!("{}.image_url", param());
            let image_url = part.image_url.as_ref().ok_or_else(|| {
                GatewayError::invalid("an image_url part needs `image_url`", Some(param.clone()))
            })?;
            json::check_extras(
                &image_url.extra,
                depth::IMAGE_URL,
                opts.limits.max_json_depth,
                &|| format!("{param}."),
            )?;
            if scan.images.len() + scan.remote.len() >= max_images {
                return Err(GatewayError::too_large(
                    format!("more than {max_images} images in one request"),
                    Some(param),
                ));
            }
            let raw = &image_url.url;
            if raw.is_data() {
                let mut sniffed = None;
                let checked = images::check_data_url_bytes(
                    &raw.0,
                    raw.is_verbatim(),
                    limits,
                    keep,
                    &param,
                    &mut sniffed,
                );
                match checked {
                    Ok(info) => scan.images.push(ImageInfo {
                        part: (i, j),
                        ..info
                    }),
                    Err(e) => {
                        (opts.image_rejected)(sniffed);
                        return Err(e);
                    }
                }
                return Ok(());
            }
            let url = raw
                .text()
                .map_err(|why| GatewayError::invalid(why, Some(format!("{param}.url"))))?;
            let scheme = url.split_once(':').map(|(s, _)| s.to_ascii_lowercase());
            match scheme.as_deref() {
                Some("http" | "https") if images::has_host(url) => scan.remote.push(RemoteImage {
                    message: i,
                    part: j,
                    url: url.to_string(),
                }),
                None if url.starts_with("file-") => {
                    inline_file(i, j, url, &format!("{param}.url"), limits, keep, opts, scan)?
                }
                Some("http" | "https") => {
                    return Err(GatewayError::invalid(
                        "an http(s) image URL needs a host (http://host/path)",
                        Some(param),
                    ))
                }
                _ => {
                    return Err(GatewayError::invalid(
                        "image URLs must be data: URLs (data:image/png;base64,...) or http(s)://",
                        Some(param),
                    ))
                }
            }
            Ok(())
        }
        other => Err(GatewayError::invalid(
            format!(
                "unsupported content part type `{other}`; expected `text`, `image_url` or `file`"
            ),
            Some(format!("{}.type", param())),
        )),
    }
}

/// An image given by file id: read it, check it as a data URL's bytes are checked, and note
/// the part for replacement by its data URL.
#[allow(clippy::too_many_arguments)]
fn inline_file(
    i: usize,
    j: usize,
    id: &str,
    param: &str,
    limits: &ImageLimits,
    keep: bool,
    opts: &ValidateOptions<'_>,
    scan: &mut Scan,
) -> Result<(), GatewayError> {
    let started = std::time::Instant::now();
    let data =
        (opts.read_file)(id).map_err(|why| GatewayError::invalid(why, Some(param.to_string())))?;
    let mut sniffed = None;
    // Checked with its bytes kept: they become the data URL.
    match images::check_image(data, limits, true, param, &mut sniffed, started) {
        Ok(mut info) => {
            let bytes = info.data.take().unwrap_or_default();
            scan.inline
                .push((i, j, images::data_url(info.format, &bytes)));
            if keep {
                info.data = Some(bytes);
            }
            info.part = (i, j);
            scan.images.push(info);
            Ok(())
        }
        Err(e) => {
            (opts.image_rejected)(sniffed);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests;
