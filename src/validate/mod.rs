//! Validation: the client's bytes become a [`ValidRequest`], or an error naming the field.
//!
//! This is the only place a request is inspected. Images are decoded and checked here, once
//! ([`images`]); what goes on to the queue (`crate::queue`) is a `ValidRequest`, which carries
//! the client's body to forward (unchanged unless the gateway must add to it) and the
//! measurements the queue and the pool decide with.

pub mod images;
mod rewrite;

use crate::api::chat::{ChatRequestView, Content, MessageView, PartView, ROLES};
use crate::config::LimitArgs;
use crate::error::GatewayError;
use bytes::Bytes;
pub use images::{ImageFormat, ImageInfo, ImageLimits};

/// Visual tokens assumed for an `http(s)://` image the gateway does not fetch: Qwen2.5-VL's
/// tokens for a 1024×1024 image, a typical captioning input.
pub const REMOTE_IMAGE_TOKENS: u64 = 1369;
/// Output tokens assumed when the request names no `max_tokens`: CapRL's dense captions run
/// to several hundred tokens.
pub const DEFAULT_MAX_TOKENS_ESTIMATE: u64 = 1024;
/// Bytes of prompt text per token, for the admission estimate (BPE on English averages ~4).
const BYTES_PER_TOKEN: u64 = 4;

/// A request that passed every check: the only thing the queue accepts.
#[derive(Debug)]
pub struct ValidRequest {
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
    /// `http(s)://` images forwarded unchecked.
    pub remote_images: usize,
    /// Estimated prompt tokens: text bytes / 4 plus every image's visual tokens.
    pub prompt_tokens: u64,
    /// The images' share of `prompt_tokens`.
    pub image_tokens: u64,
    /// Requested output tokens (or [`DEFAULT_MAX_TOKENS_ESTIMATE`]) times `n`.
    pub max_output_tokens: u64,
    /// Lower is served first; 0 by default.
    pub priority: i64,
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
}

/// Check a chat completion body.
pub fn validate_chat(
    body: Bytes,
    opts: &ValidateOptions<'_>,
) -> Result<ValidRequest, GatewayError> {
    let mut de = serde_json::Deserializer::from_slice(&body);
    let view: ChatRequestView<'_> = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        // serde_path_to_error says "." for the root and "?" where it has no path.
        let param = (path != "." && path != "?").then_some(path);
        GatewayError::invalid(format!("invalid JSON body: {inner}"), param)
    })?;
    de.end()
        .map_err(|e| GatewayError::invalid(format!("invalid JSON body: {e}"), None))?;

    let model = match view.model.as_deref() {
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
    let n = view.n.unwrap_or(1);
    if n == 0 {
        return Err(GatewayError::invalid(
            "`n` must be at least 1",
            Some("n".into()),
        ));
    }

    let limits = ImageLimits::from(opts.limits);
    let keep = (opts.keep_image_bytes)(&model);
    let mut scan = Scan::default();
    for (i, message) in messages.iter().enumerate() {
        scan_message(i, message, &limits, keep, opts, &mut scan)?;
    }

    let stream = view.stream.unwrap_or(false);
    let client_wants_usage = view
        .stream_options
        .as_ref()
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    let max_tokens = view
        .max_completion_tokens
        .or(view.max_tokens)
        .unwrap_or(DEFAULT_MAX_TOKENS_ESTIMATE);
    let priority = view.priority.unwrap_or(0);
    let image_tokens = scan.images.iter().map(|i| i.tokens).sum::<u64>()
        + scan.remote_images as u64 * REMOTE_IMAGE_TOKENS;

    // The body changes only when it must: `priority` is the gateway's (vLLM refuses it unless
    // started with priority scheduling), and a stream without usage gets it asked for.
    let strip_priority = view.priority.is_some();
    let add_usage = stream && !client_wants_usage;
    let has_stream_options = view.stream_options.is_some();
    drop(view);
    let body = match (strip_priority, add_usage) {
        (false, false) => body,
        // The common streaming case: one prepended field, no re-serialization.
        (false, true) if !has_stream_options => match rewrite::prepend_usage(&body) {
            Some(b) => b,
            None => rewrite::rewrite_body(&body, false, true)?,
        },
        _ => rewrite::rewrite_body(&body, strip_priority, add_usage)?,
    };

    Ok(ValidRequest {
        model,
        body,
        stream,
        client_wants_usage,
        images: scan.images,
        remote_images: scan.remote_images,
        prompt_tokens: scan.text_bytes.div_ceil(BYTES_PER_TOKEN) + image_tokens,
        image_tokens,
        max_output_tokens: max_tokens.saturating_mul(n as u64),
        priority,
    })
}

#[derive(Default)]
struct Scan {
    images: Vec<ImageInfo>,
    remote_images: usize,
    text_bytes: u64,
}

fn scan_message(
    i: usize,
    message: &MessageView<'_>,
    limits: &ImageLimits,
    keep: bool,
    opts: &ValidateOptions<'_>,
    scan: &mut Scan,
) -> Result<(), GatewayError> {
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
        "image_url" => {
            let param = format!("{}.image_url", param());
            let url = &part
                .image_url
                .as_ref()
                .ok_or_else(|| {
                    GatewayError::invalid(
                        "an image_url part needs `image_url`",
                        Some(param.clone()),
                    )
                })?
                .0;
            if scan.images.len() + scan.remote_images >= max_images {
                return Err(GatewayError::too_large(
                    format!("more than {max_images} images in one request"),
                    Some(param),
                ));
            }
            let scheme = url.split_once(':').map(|(s, _)| s.to_ascii_lowercase());
            match scheme.as_deref() {
                Some("data") => {
                    let mut sniffed = None;
                    match images::check_data_url_sniffed(url, limits, keep, &param, &mut sniffed) {
                        Ok(info) => scan.images.push(info),
                        Err(e) => {
                            (opts.image_rejected)(sniffed);
                            return Err(e);
                        }
                    }
                }
                Some("http" | "https") => scan.remote_images += 1,
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
            format!("unsupported content part type `{other}`; expected `text` or `image_url`"),
            Some(format!("{}.type", param())),
        )),
    }
}

#[cfg(test)]
mod tests;
