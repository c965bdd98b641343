//! `caprl-gateway caption`: caption a set of images through an OpenAI-compatible server, as
//! CapRL's captioning script does, but resumable, with nothing dropped and a progress bar.
//!
//! Input is a directory tree, a JSON array of paths, or a JSONL manifest, read as a stream
//! (never whole). Each image is read, sniffed (a file that is no image is an error without a
//! request), sent as a `data:image;base64,` URL with bounded concurrency, and its captions are
//! appended to the output JSONL as they come. Failures go to the errors file with their
//! reason; the run goes on. Re-running the same command skips what is done (see
//! [`super::journal`]).

use super::client::{Client, Failure};
use super::journal::Journal;
use super::progress::Progress;
use super::source::{self, Item, Shard};
use clap::Args;
use futures::StreamExt;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// `caprl-gateway caption INPUT --base-url URL --model NAME --out FILE …`
#[derive(Debug, Clone, Args)]
pub struct CaptionArgs {
    /// A directory (walked recursively for png/jpg/jpeg/webp/gif/bmp files), a `.json` array of
    /// image paths, or a `.jsonl` manifest (one object per line, the path in `--image-field`).
    pub input: PathBuf,
    /// The server, as the openai client takes it: `http://127.0.0.1:8000/v1`.
    #[arg(long, env = "OPENAI_BASE_URL")]
    pub base_url: String,
    /// The model name to ask for (`caprl` behind the gateway).
    #[arg(long)]
    pub model: String,
    /// Where the captions go (JSONL, appended; re-running resumes it).
    #[arg(long)]
    pub out: PathBuf,
    /// Where failed images go (default: `--out` with `.errors.jsonl` for `.jsonl`).
    #[arg(long)]
    pub errors: Option<PathBuf>,
    /// Paths in a `.json` or `.jsonl` input are relative to this (default: the input file's
    /// directory).
    #[arg(long)]
    pub image_root: Option<PathBuf>,
    /// The manifest's field holding the image path.
    #[arg(long, default_value = "image")]
    pub image_field: String,
    /// Captions per image (the request's `n`).
    #[arg(long, default_value_t = 1)]
    pub n: u32,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Only this share of the input: `I/N` takes the images whose position is I mod N; `N`
    /// alone takes I from `JOB_COMPLETION_INDEX` (a Kubernetes Indexed Job).
    #[arg(long)]
    pub shard: Option<String>,
    /// The user prompt after the image (CapRL's).
    #[arg(long, default_value = "Please describe the image in detail.")]
    pub prompt: String,
    /// The system message; empty sends none.
    #[arg(long, default_value = "You are a helpful assistant.")]
    pub system: String,
    #[arg(long, default_value_t = 2048)]
    pub max_tokens: u32,
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Retries of a request that failed with 429, 5xx or a connection error.
    #[arg(long, default_value_t = 8)]
    pub max_retries: u32,
    /// Longest one request may take.
    #[arg(long, default_value_t = 900.0)]
    pub request_timeout_secs: f64,
    /// Sent as `Authorization: Bearer KEY`.
    #[arg(long, env = "OPENAI_API_KEY")]
    pub api_key: Option<String>,
}

/// How one image ended.
enum Outcome {
    Captioned { record: Value, truncated: u32 },
    Failed { record: Value, retryable: bool },
}

fn errors_path(args: &CaptionArgs) -> PathBuf {
    if let Some(p) = &args.errors {
        return p.clone();
    }
    let out = args.out.to_string_lossy();
    match out.strip_suffix(".jsonl") {
        Some(stem) => PathBuf::from(format!("{stem}.errors.jsonl")),
        None => PathBuf::from(format!("{out}.errors.jsonl")),
    }
}

/// Run the command; the exit code (0 when every image ended in the output or the errors file).
pub async fn run(args: CaptionArgs) -> anyhow::Result<i32> {
    anyhow::ensure!(args.concurrency > 0, "--concurrency must be positive");
    anyhow::ensure!(args.n > 0, "--n must be positive");
    let shard = Shard::parse(args.shard.as_deref())?;
    let errors_path = errors_path(&args);
    let mut out = Journal::open_keyed(&args.out, "image")?;
    let mut errors = Journal::open_keyed(&errors_path, "image")?;
    let client = Client::new(
        &args.base_url,
        args.api_key.clone(),
        Duration::from_secs_f64(args.request_timeout_secs),
        args.max_retries,
    );
    let items = source::open(
        &args.input,
        args.image_root.as_deref(),
        &args.image_field,
        shard,
    )?;
    let progress = Progress::new("caption");
    let todo = super::fresh(items, &[&out, &errors], &progress);
    let args_ref = &args;
    let client_ref = &client;
    let mut results = todo
        .map(|item| async move {
            match item {
                Ok(item) => {
                    let key = item.key.clone();
                    (key, caption_one(args_ref, client_ref, item).await)
                }
                Err(e) => (e.key.clone(), failed_item(&e.key, &e.message, None, false)),
            }
        })
        .buffer_unordered(args.concurrency);
    let (mut captioned, mut failed, mut truncated, mut retry_later) = (0u64, 0u64, 0u64, 0u64);
    while let Some((key, outcome)) = results.next().await {
        match outcome {
            Outcome::Captioned {
                record,
                truncated: t,
            } => {
                let tokens = record
                    .pointer("/usage/completion_tokens")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                out.append(&key, &record, true)?;
                captioned += 1;
                truncated += u64::from(t > 0);
                progress.done(tokens);
            }
            Outcome::Failed { record, retryable } => {
                errors.append(&key, &record, !retryable)?;
                failed += 1;
                retry_later += u64::from(retryable);
                progress.failed();
            }
        }
    }
    drop(results);
    let skipped = progress.skipped_count();
    progress.finish();
    let elapsed = progress.elapsed();
    eprintln!(
        "caption: captioned={captioned} skipped={skipped} failed={failed} truncated={truncated} \
         retry_later={retry_later} in {:.1} s ({:.1} images/s); output {} , errors {}",
        elapsed.as_secs_f64(),
        captioned as f64 / elapsed.as_secs_f64().max(1e-9),
        out.path().display(),
        errors.path().display(),
    );
    if captioned > 0 {
        eprintln!(
            "caption: {:.1} % of captioned images had a caption cut by --max-tokens {}",
            truncated as f64 * 100.0 / captioned as f64,
            args.max_tokens
        );
    }
    Ok(0)
}

fn failed_item(key: &str, message: &str, status: Option<u16>, retryable: bool) -> Outcome {
    Outcome::Failed {
        record: json!({
            "image": key,
            "error": message,
            "status": status,
            "retryable": retryable,
            "time": super::now(),
        }),
        retryable,
    }
}

async fn caption_one(args: &CaptionArgs, client: &Client, item: Item) -> Outcome {
    let bytes = match tokio::fs::read(&item.path).await {
        Ok(b) => b,
        Err(e) => {
            return failed_item(
                &item.key,
                &format!("cannot read {}: {e}", item.path.display()),
                None,
                false,
            )
        }
    };
    if image::guess_format(&bytes).is_err() {
        return failed_item(
            &item.key,
            "not an image (png, jpeg, webp, gif, bmp): its bytes say otherwise",
            None,
            false,
        );
    }
    let hash = format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&bytes));
    let url = super::data_url(&bytes);
    drop(bytes);
    let mut messages = Vec::new();
    if !args.system.is_empty() {
        messages.push(json!({"role": "system", "content": args.system}));
    }
    messages.push(json!({"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}},
        {"type": "text", "text": args.prompt},
    ]}));
    let body = json!({
        "model": args.model,
        "messages": messages,
        "n": args.n,
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
    });
    let started = Instant::now();
    match client.post("/chat/completions", &body).await {
        Ok(resp) => {
            let choices = resp
                .get("choices")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let captions: Vec<Value> = choices
                .iter()
                .map(|c| {
                    c.pointer("/message/content")
                        .cloned()
                        .unwrap_or(Value::Null)
                })
                .collect();
            let finish: Vec<Value> = choices
                .iter()
                .map(|c| c.get("finish_reason").cloned().unwrap_or(Value::Null))
                .collect();
            if captions.is_empty() || captions.iter().any(|c| !c.is_string()) {
                return failed_item(&item.key, "the answer has no caption", Some(200), true);
            }
            let truncated = finish
                .iter()
                .filter(|f| f.as_str() == Some("length"))
                .count() as u32;
            Outcome::Captioned {
                record: json!({
                    "image": item.key,
                    "hash": hash,
                    "captions": captions,
                    "finish_reasons": finish,
                    "usage": resp.get("usage").cloned().unwrap_or(Value::Null),
                    "model": resp.get("model").cloned().unwrap_or_else(|| json!(args.model)),
                    "prompt": args.prompt,
                    "system": args.system,
                    "params": {
                        "n": args.n,
                        "max_tokens": args.max_tokens,
                        "temperature": args.temperature,
                        "top_p": args.top_p,
                    },
                    "time": super::now(),
                    "latency_ms": started.elapsed().as_secs_f64() * 1000.0,
                }),
                truncated,
            }
        }
        Err(Failure {
            status,
            message,
            retryable,
        }) => failed_item(&item.key, &message, status, retryable),
    }
}
