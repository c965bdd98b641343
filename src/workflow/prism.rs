//! `caprl-gateway eval prism`: the Prism evaluation of a captioner, as CapRL runs it, resumable.
//!
//! - Stage 1: each benchmark image is captioned `--n` times (4) by the captioner: the user turn
//!   `[image, "Please describe this image in detail"]`, temperature 1.0, top_p 1.0,
//!   max_tokens 2048. -> `DIR/captions.jsonl`.
//! - Stage 2: in each sample's raw prompt, the image is replaced by `Here is a detailed caption
//!   of an image: {caption}. Please answer the question based on the caption.`, and the
//!   text-only evaluation model answers once per caption through `/v1/completions` (the prompt
//!   is raw), temperature 1.0, top_p 1.0, max_tokens 2048. Each answer is scored
//!   ([`super::score`]). -> `DIR/answers.jsonl`.
//! - Then per benchmark: samples, Mean (over samples, of the mean over captions: what the
//!   paper reports), BoN (of the best caption), parse failures. -> `DIR/results.json`, a table
//!   on stdout, and `DIR/report.html` (self-contained).
//!
//! Benchmark files are CapRL's `lmm_eval_*.json` as they are: a JSON array (or JSONL) of
//! samples with `image` (a chat message list whose image part names the file, relative to
//! `--image-root`), `prompt` (a raw Qwen chat string with the vision placeholder) and
//! `answer`. They are read whole: a benchmark is thousands of samples, not millions.
//!
//! One difference from CapRL's script: stage 1 goes through the chat API, so the captioner's
//! chat template adds its default system message, where CapRL's raw prompt has none.

use super::client::Client;
use super::journal::Journal;
use super::progress::Progress;
use super::score::{self, Kind};
use clap::Args;
use futures::StreamExt;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const CAPTION_PROMPT: &str = "Please describe this image in detail";
/// What the image placeholder of a sample's prompt is replaced with (CapRL's).
pub const VISION_TURN: &str = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>";

/// `caprl-gateway eval prism …`
#[derive(Debug, Clone, Args)]
pub struct PrismArgs {
    /// A benchmark file (`lmm_eval_NAME.json` or `.jsonl`); repeat for several.
    #[arg(long = "data", required = true)]
    pub data: Vec<PathBuf>,
    /// Image paths in the benchmark files are relative to this.
    #[arg(long)]
    pub image_root: PathBuf,
    #[arg(long, env = "OPENAI_BASE_URL")]
    pub base_url: String,
    #[arg(long)]
    pub caption_base_url: Option<String>,
    #[arg(long)]
    pub eval_base_url: Option<String>,
    #[arg(long)]
    pub caption_model: String,
    #[arg(long)]
    pub eval_model: String,
    #[arg(long)]
    pub out: PathBuf,
    /// Captions per image.
    #[arg(long, default_value_t = 4)]
    pub n: u32,
    #[arg(long, default_value_t = 2048)]
    pub max_tokens: u32,
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    #[arg(long, default_value_t = 8)]
    pub max_retries: u32,
    #[arg(long, default_value_t = 900.0)]
    pub request_timeout_secs: f64,
    #[arg(long, env = "OPENAI_API_KEY")]
    pub api_key: Option<String>,
}

/// `caprl-gateway eval …`
#[derive(Debug, Clone, Args)]
pub struct EvalArgs {
    #[command(subcommand)]
    pub what: EvalCommand,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum EvalCommand {
    /// Prism: caption each benchmark image, answer its question from the caption alone.
    Prism(PrismArgs),
}

#[derive(Debug, Clone)]
struct Sample {
    key: String,
    bench: String,
    kind: Kind,
    image: PathBuf,
    prompt: String,
    answer: String,
}

/// The benchmark's name: the file's stem without `lmm_eval_`.
fn bench_name(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    stem.strip_prefix("lmm_eval_").unwrap_or(&stem).to_string()
}

/// The image file a sample's `image` message list names.
fn image_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Array(items) => items.iter().find_map(image_of),
        Value::Object(o) => {
            if o.get("type").and_then(Value::as_str) == Some("image") {
                if let Some(Value::String(s)) = o.get("image") {
                    return Some(s.clone());
                }
            }
            o.get("content").and_then(image_of)
        }
        _ => None,
    }
}

fn load(path: &Path, root: &Path) -> anyhow::Result<Vec<Sample>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let items: Vec<Value> = if path.extension().is_some_and(|e| e == "jsonl") {
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?
    } else {
        serde_json::from_str(&text)?
    };
    let bench = bench_name(path);
    let kind = Kind::for_benchmark(&path.file_name().unwrap_or_default().to_string_lossy());
    let mut samples = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let image = image_of(&item["image"])
            .ok_or_else(|| anyhow::anyhow!("{}: sample {i} names no image", path.display()))?;
        let image = image.strip_prefix("file://").unwrap_or(&image).to_string();
        let answer = match &item["answer"] {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        };
        samples.push(Sample {
            key: format!("{bench}/{i}"),
            bench: bench.clone(),
            kind,
            image: if Path::new(&image).is_absolute() {
                PathBuf::from(&image)
            } else {
                root.join(&image)
            },
            prompt: item["prompt"].as_str().unwrap_or_default().to_string(),
            answer,
        });
    }
    Ok(samples)
}

fn client(a: &PrismArgs, base: Option<&str>) -> Client {
    Client::new(
        base.unwrap_or(&a.base_url),
        a.api_key.clone(),
        Duration::from_secs_f64(a.request_timeout_secs),
        a.max_retries,
    )
}

pub async fn run(args: EvalArgs) -> anyhow::Result<i32> {
    let EvalCommand::Prism(a) = args.what;
    anyhow::ensure!(
        a.concurrency > 0 && a.n > 0,
        "--concurrency and --n must be positive"
    );
    std::fs::create_dir_all(&a.out)?;
    let mut samples = Vec::new();
    for path in &a.data {
        samples.extend(load(path, &a.image_root)?);
    }
    let captions = stage1(&a, &samples).await?;
    stage2(&a, &samples, &captions).await?;
    report(&a, &samples)
}

/// Stage 1: the captions of every sample (resumed from `captions.jsonl`).
async fn stage1(a: &PrismArgs, samples: &[Sample]) -> anyhow::Result<HashMap<String, Vec<String>>> {
    let path = a.out.join("captions.jsonl");
    let mut out = Journal::open_keyed(&path, "key")?;
    let mut errors = Journal::open_keyed(&a.out.join("captions.errors.jsonl"), "key")?;
    let client = client(a, a.caption_base_url.as_deref());
    let progress = Progress::new("prism captions");
    let todo: Vec<&Sample> = samples
        .iter()
        .filter(|s| !out.is_done(&s.key) && !errors.is_done(&s.key))
        .collect();
    progress.skipped((samples.len() - todo.len()) as u64);
    let client = &client;
    let mut results = futures::stream::iter(todo)
        .map(|s| async move {
            let bytes = match tokio::fs::read(&s.image).await {
                Ok(b) => b,
                Err(e) => return (s, Err(json!({"key": s.key, "error": format!("cannot read {}: {e}", s.image.display()), "retryable": false}))),
            };
            let url = super::data_url(&bytes);
            drop(bytes);
            let body = json!({
                "model": a.caption_model,
                "messages": [{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": url}},
                    {"type": "text", "text": CAPTION_PROMPT},
                ]}],
                "n": a.n,
                "temperature": 1.0,
                "top_p": 1.0,
                "max_tokens": a.max_tokens,
            });
            match client.post("/chat/completions", &body).await {
                Ok(resp) => {
                    let caps: Vec<String> = resp["choices"]
                        .as_array()
                        .map(|c| c.iter().filter_map(|c| c.pointer("/message/content")?.as_str().map(str::to_string)).collect())
                        .unwrap_or_default();
                    if caps.len() == a.n as usize {
                        (s, Ok(json!({"key": s.key, "bench": s.bench, "captions": caps})))
                    } else {
                        (s, Err(json!({"key": s.key, "error": format!("{} captions, not {}", caps.len(), a.n), "retryable": true})))
                    }
                }
                Err(f) => (s, Err(json!({"key": s.key, "error": f.message, "status": f.status, "retryable": f.retryable}))),
            }
        })
        .buffer_unordered(a.concurrency);
    while let Some((s, result)) = results.next().await {
        match result {
            Ok(record) => {
                out.append(&s.key, &record, true)?;
                progress.done(0);
            }
            Err(record) => {
                let retryable = record["retryable"].as_bool().unwrap_or(false);
                errors.append(&s.key, &record, !retryable)?;
                progress.failed();
            }
        }
    }
    drop(results);
    progress.finish();
    let mut captions = HashMap::new();
    for line in std::fs::read_to_string(&path)?.lines() {
        if let Ok(v) = serde_json::from_str::<Value>(line) {
            if let (Some(k), Some(c)) = (v["key"].as_str(), v["captions"].as_array()) {
                captions.insert(
                    k.to_string(),
                    c.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect(),
                );
            }
        }
    }
    eprintln!(
        "prism captions: {} of {} samples captioned",
        captions.len(),
        samples.len()
    );
    Ok(captions)
}

/// Stage 2: one answer per caption, scored (resumed from `answers.jsonl`).
async fn stage2(
    a: &PrismArgs,
    samples: &[Sample],
    captions: &HashMap<String, Vec<String>>,
) -> anyhow::Result<()> {
    let mut out = Journal::open_keyed(&a.out.join("answers.jsonl"), "key")?;
    let mut errors = Journal::open_keyed(&a.out.join("answers.errors.jsonl"), "key")?;
    let client = client(a, a.eval_base_url.as_deref());
    let progress = Progress::new("prism answers");
    let mut todo = Vec::new();
    for s in samples {
        for (j, cap) in captions.get(&s.key).into_iter().flatten().enumerate() {
            let key = format!("{}#{j}", s.key);
            if out.is_done(&key) || errors.is_done(&key) {
                progress.skipped(1);
            } else {
                todo.push((key, s, j, cap.clone()));
            }
        }
    }
    let client = &client;
    let mut results = futures::stream::iter(todo)
        .map(|(key, s, j, cap)| async move {
            let turn = format!("<|im_start|>user\nHere is a detailed caption of an image: {cap}. Please answer the question based on the caption.");
            let prompt = s.prompt.replace(VISION_TURN, &turn);
            let body = json!({
                "model": a.eval_model,
                "prompt": prompt,
                "temperature": 1.0,
                "top_p": 1.0,
                "max_tokens": a.max_tokens,
            });
            let result = match client.post("/completions", &body).await {
                Ok(resp) => {
                    let text = resp.pointer("/choices/0/text").and_then(Value::as_str).unwrap_or_default().to_string();
                    let parsed = score::extract_answer(&text);
                    let verdict = score::score(s.kind, &text, &s.answer);
                    Ok(json!({"key": key, "sample": s.key, "bench": s.bench, "caption": j, "text": text, "parsed": parsed, "gold": s.answer, "score": verdict}))
                }
                Err(f) => Err(json!({"key": key, "error": f.message, "status": f.status, "retryable": f.retryable})),
            };
            (key, result)
        })
        .buffer_unordered(a.concurrency);
    while let Some((key, result)) = results.next().await {
        match result {
            Ok(record) => {
                out.append(&key, &record, true)?;
                progress.done(0);
            }
            Err(record) => {
                let retryable = record["retryable"].as_bool().unwrap_or(false);
                errors.append(&key, &record, !retryable)?;
                progress.failed();
            }
        }
    }
    drop(results);
    progress.finish();
    Ok(())
}

#[derive(Debug, Default)]
struct Bench {
    samples: u64,
    mean_sum: f64,
    bon_sum: f64,
    parse_failures: u64,
    answers: u64,
}

/// Aggregate the answers per benchmark; the table, results.json and report.html.
fn report(a: &PrismArgs, samples: &[Sample]) -> anyhow::Result<i32> {
    let mut by_sample: HashMap<String, Vec<(f64, bool)>> = HashMap::new();
    let mut examples: Vec<Value> = Vec::new();
    let mut caption_lengths: Vec<usize> = Vec::new();
    for line in std::fs::read_to_string(a.out.join("answers.jsonl"))?.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let (Some(sample), Some(s)) = (v["sample"].as_str(), v["score"].as_f64()) else {
            continue;
        };
        by_sample
            .entry(sample.to_string())
            .or_default()
            .push((s, v["parsed"].is_null()));
        if examples.len() < 6 {
            examples.push(v.clone());
        }
    }
    for line in std::fs::read_to_string(a.out.join("captions.jsonl"))?.lines() {
        if let Ok(v) = serde_json::from_str::<Value>(line) {
            for c in v["captions"].as_array().into_iter().flatten() {
                caption_lengths.push(c.as_str().map_or(0, |c| c.chars().count()));
            }
        }
    }
    let mut benches: BTreeMap<String, Bench> = BTreeMap::new();
    for s in samples {
        let b = benches.entry(s.bench.clone()).or_default();
        let Some(scores) = by_sample.get(&s.key) else {
            continue;
        };
        b.samples += 1;
        b.mean_sum += scores.iter().map(|x| x.0).sum::<f64>() / scores.len() as f64;
        b.bon_sum += scores.iter().map(|x| x.0).fold(0.0, f64::max);
        b.parse_failures += scores.iter().filter(|x| x.1).count() as u64;
        b.answers += scores.len() as u64;
    }
    let mut results = serde_json::Map::new();
    println!("| benchmark | samples | Mean | BoN | parse failures |");
    println!("|---|---|---|---|---|");
    for (name, b) in &benches {
        let n = b.samples.max(1) as f64;
        let (mean, bon) = (b.mean_sum / n, b.bon_sum / n);
        println!(
            "| {name} | {} | {:.2} | {:.2} | {} of {} |",
            b.samples,
            mean * 100.0,
            bon * 100.0,
            b.parse_failures,
            b.answers
        );
        results.insert(name.clone(), json!({"samples": b.samples, "mean": mean, "bon": bon, "parse_failures": b.parse_failures, "answers": b.answers}));
    }
    let results = Value::Object(results);
    std::fs::write(
        a.out.join("results.json"),
        serde_json::to_vec_pretty(&results)?,
    )?;
    std::fs::write(
        a.out.join("report.html"),
        html(&results, &caption_lengths, &examples),
    )?;
    let complete = benches.values().map(|b| b.samples as usize).sum::<usize>();
    if complete < samples.len() {
        eprintln!(
            "prism: {} of {} samples have answers; re-run to finish the rest",
            complete,
            samples.len()
        );
    }
    Ok(0)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A self-contained page: per-benchmark bars, the caption length distribution, samples.
fn html(results: &Value, lengths: &[usize], examples: &[Value]) -> String {
    let mut bars = String::new();
    let entries: Vec<(&String, &Value)> = results
        .as_object()
        .map(|m| m.iter().collect())
        .unwrap_or_default();
    for (i, (name, r)) in entries.iter().enumerate() {
        let y = 10 + i * 44;
        let mean = r["mean"].as_f64().unwrap_or(0.0);
        let bon = r["bon"].as_f64().unwrap_or(0.0);
        bars.push_str(&format!(
            "<text x=\"0\" y=\"{}\">{}</text><rect class=\"mean\" x=\"160\" y=\"{}\" width=\"{:.1}\" height=\"16\"/><text x=\"{:.1}\" y=\"{}\">Mean {:.1}</text><rect class=\"bon\" x=\"160\" y=\"{}\" width=\"{:.1}\" height=\"16\"/><text x=\"{:.1}\" y=\"{}\">BoN {:.1}</text>",
            y + 14, escape(name), y, mean * 400.0, 165.0 + mean * 400.0, y + 13, mean * 100.0,
            y + 18, bon * 400.0, 165.0 + bon * 400.0, y + 31, bon * 100.0
        ));
    }
    let max_len = lengths.iter().copied().max().unwrap_or(0).max(1);
    let bins = 20usize;
    let mut counts = vec![0usize; bins];
    for &l in lengths {
        counts[(l * bins / (max_len + 1)).min(bins - 1)] += 1;
    }
    let top = counts.iter().copied().max().unwrap_or(0).max(1);
    let mut hist = String::new();
    for (i, c) in counts.iter().enumerate() {
        let h = *c as f64 / top as f64 * 120.0;
        hist.push_str(&format!("<rect class=\"len\" x=\"{}\" y=\"{:.1}\" width=\"26\" height=\"{:.1}\"><title>{} captions</title></rect>", i * 28, 130.0 - h, h, c));
    }
    let mut rows = String::new();
    for e in examples {
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"verdict\">{}</td></tr>",
            escape(e["sample"].as_str().unwrap_or_default()),
            escape(
                &e["text"]
                    .as_str()
                    .unwrap_or_default()
                    .chars()
                    .take(300)
                    .collect::<String>()
            ),
            escape(e["parsed"].as_str().unwrap_or("(none)")),
            escape(e["gold"].as_str().unwrap_or_default()),
            e["score"].as_f64().unwrap_or(0.0)
        ));
    }
    let table: String = entries
        .iter()
        .map(|(name, r)| format!(
            "<tr class=\"bench\"><td>{}</td><td>{}</td><td>{:.2}</td><td>{:.2}</td><td>{}</td></tr>",
            escape(name), r["samples"], r["mean"].as_f64().unwrap_or(0.0) * 100.0, r["bon"].as_f64().unwrap_or(0.0) * 100.0, r["parse_failures"]
        ))
        .collect();
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Prism report</title><style>\
body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top}}\
.mean{{fill:#3b82f6}}.bon{{fill:#f59e0b}}.len{{fill:#10b981}}svg text{{font-size:12px}}</style></head><body>\
<h1>Prism evaluation</h1><table id=\"results\"><tr><th>benchmark</th><th>samples</th><th>Mean</th><th>BoN</th><th>parse failures</th></tr>{table}</table>\
<h2>Accuracy</h2><svg id=\"bars\" width=\"700\" height=\"{}\">{bars}</svg>\
<h2>Caption length (characters, {} captions, longest {max_len})</h2><svg id=\"lengths\" width=\"580\" height=\"140\">{hist}</svg>\
<h2>Samples</h2><table id=\"samples\"><tr><th>sample</th><th>answer text</th><th>parsed</th><th>gold</th><th>score</th></tr>{rows}</table></body></html>",
        20 + entries.len() * 44,
        lengths.len()
    )
}
