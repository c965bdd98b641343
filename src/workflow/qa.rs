//! `caprl-gateway qa`: CapRL's QA curation as four resumable steps, and `qa curate` for all.
//!
//! 1. `generate`: a large VLM writes five multiple-choice questions per image, in a fixed format
//!    (`#### N. **question**`, `   - A) …` to `D)`, `**Answer:** X) …`, `------`); temperature
//!    0.1, max_tokens 2048, repetition_penalty 1.05. -> `DIR/generated.jsonl` (raw responses).
//! 2. `extract`: each response split into blocks; a block that does not parse is dropped on its
//!    own, with its reason; at most five per image, de-duplicated. -> `DIR/extracted.jsonl`.
//! 3. `answer`: a small VLM answers each question `--rotate-num` times with the image and as many
//!    without; each round shuffles the options afresh (seeded: reproducible) and relabels them;
//!    with the image an extra `None of the above` is offered; temperature 0.1, max_tokens 4; an
//!    answer is right when the gold letter occurs in it. -> `DIR/answers.jsonl`.
//! 4. `filter`: a question is kept when its accuracy with the image is above `--min-visual`
//!    (0.75) and without below `--max-text` (0.25). -> `DIR/curated.jsonl` (CapRL-QA-75K's
//!    shape: `reward_model.ground_truth = [{question, choices, answer}]`) and
//!    `DIR/dropped.jsonl` (every question or image dropped, with why).
//!
//! Where this differs from CapRL's scripts, and why: a malformed block drops only itself (theirs
//! drops the image's whole response); failed requests are retried and then recorded with their
//! reason (theirs are dropped silently); every step resumes from its journal (theirs resume by a
//! window counter); the option shuffles are seeded, so a run is reproducible.

use super::client::{Client, Failure};
use super::journal::Journal;
use super::progress::Progress;
use super::source::{self, Shard};
use clap::{Args, Subcommand};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The generator's instructions (our wording; the format is CapRL's, so results compare).
pub const GENERATE_SYSTEM: &str = "You write multiple-choice questions about an image. Write \
five questions that can be answered only by looking at this image (what is in it, how many, \
which colour, what the text says, where things are, what is happening), not from general \
knowledge. Each question has four options, exactly one of them right. Write each question in \
exactly this format and nothing else:\n\n#### 1. **The question?**\n   - A) first option\n   - \
B) second option\n   - C) third option\n   - D) fourth option\n\n**Answer:** X) the right \
option\n------";
/// The user turn after the image.
pub const GENERATE_USER: &str = "Here is the image";
/// What follows each question block when it is answered.
pub const ANSWER_SUFFIX: &str = ". Answer the question with only the correct letter";
/// The extra option offered with the image.
pub const NONE_OF_THE_ABOVE: &str = "None of the above";
/// Most questions kept per image.
pub const MAX_QUESTIONS: usize = 5;

/// `caprl-gateway qa STEP …`
#[derive(Debug, Clone, Args)]
pub struct QaArgs {
    #[command(subcommand)]
    pub step: QaCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum QaCommand {
    /// Step 1: questions from the generator model, raw.
    Generate(GenerateArgs),
    /// Step 2: parse the raw responses into questions.
    Extract(StepArgs),
    /// Step 3: answer each question with and without the image.
    Answer(AnswerArgs),
    /// Step 4: keep the questions that need the image.
    Filter(FilterArgs),
    /// All four steps.
    Curate(CurateArgs),
}

/// What every step takes.
#[derive(Debug, Clone, Args)]
pub struct StepArgs {
    /// The directory of the steps' files.
    #[arg(long)]
    pub out: PathBuf,
}

/// The server options of a step that sends requests.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// The server, as the openai client takes it: `http://127.0.0.1:8000/v1`.
    #[arg(long, env = "OPENAI_BASE_URL")]
    pub base_url: String,
    #[arg(long, env = "OPENAI_API_KEY")]
    pub api_key: Option<String>,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Retries of a request that failed with 429, 5xx or a connection error.
    #[arg(long, default_value_t = 8)]
    pub max_retries: u32,
    #[arg(long, default_value_t = 900.0)]
    pub request_timeout_secs: f64,
}

#[derive(Debug, Clone, Args)]
pub struct GenerateArgs {
    /// A directory, a `.json` list or a `.jsonl` manifest of images (as for `caption`).
    pub images: PathBuf,
    #[command(flatten)]
    pub step: StepArgs,
    #[command(flatten)]
    pub server: ServerArgs,
    /// The generator's model name (CapRL used Qwen2.5-VL-72B).
    #[arg(long)]
    pub generator_model: String,
    /// The generator's server, if not `--base-url`.
    #[arg(long)]
    pub generator_base_url: Option<String>,
    #[arg(long)]
    pub image_root: Option<PathBuf>,
    #[arg(long, default_value = "image")]
    pub image_field: String,
    #[arg(long)]
    pub shard: Option<String>,
    #[arg(long, default_value_t = 0.1)]
    pub generate_temperature: f64,
    #[arg(long, default_value_t = 2048)]
    pub generate_max_tokens: u32,
    #[arg(long, default_value_t = 1.05)]
    pub repetition_penalty: f64,
}

#[derive(Debug, Clone, Args)]
pub struct AnswerArgs {
    #[command(flatten)]
    pub step: StepArgs,
    #[command(flatten)]
    pub server: ServerArgs,
    /// The answering model's name (CapRL used Qwen2.5-VL-3B).
    #[arg(long)]
    pub answer_model: String,
    /// The answerer's server, if not `--base-url`.
    #[arg(long)]
    pub answer_base_url: Option<String>,
    /// Rounds per question, each with the options shuffled afresh (CapRL's ROTATE_NUM).
    #[arg(long, default_value_t = 4)]
    pub rotate_num: u32,
    /// Seed of the option shuffles.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 0.1)]
    pub answer_temperature: f64,
    #[arg(long, default_value_t = 4)]
    pub answer_max_tokens: u32,
}

#[derive(Debug, Clone, Args)]
pub struct FilterArgs {
    #[command(flatten)]
    pub step: StepArgs,
    /// Keep a question whose accuracy with the image is above this.
    #[arg(long, default_value_t = 0.75)]
    pub min_visual: f64,
    /// … and whose accuracy without the image is below this.
    #[arg(long, default_value_t = 0.25)]
    pub max_text: f64,
}

#[derive(Debug, Clone, Args)]
pub struct CurateArgs {
    #[command(flatten)]
    pub generate: GenerateArgs,
    #[arg(long)]
    pub answer_model: String,
    #[arg(long)]
    pub answer_base_url: Option<String>,
    #[arg(long, default_value_t = 4)]
    pub rotate_num: u32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 0.1)]
    pub answer_temperature: f64,
    #[arg(long, default_value_t = 4)]
    pub answer_max_tokens: u32,
    #[arg(long, default_value_t = 0.75)]
    pub min_visual: f64,
    #[arg(long, default_value_t = 0.25)]
    pub max_text: f64,
}

/// One extracted question: its text, its options in the generator's order, the right one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Question {
    pub question: String,
    pub options: Vec<String>,
    /// Index into `options`.
    pub gold: usize,
}

impl Question {
    /// CapRL-QA-75K's form: `choices` labelled `A) …`, `answer` the letter.
    pub fn ground_truth(&self) -> Value {
        let choices: Vec<String> = self
            .options
            .iter()
            .enumerate()
            .map(|(i, o)| format!("{}) {o}", letter(i)))
            .collect();
        json!({"question": self.question, "choices": choices, "answer": letter(self.gold).to_string()})
    }
}

fn letter(i: usize) -> char {
    (b'A' + i as u8) as char
}

/// Parse a generator's response: the questions, and each block dropped with its reason.
pub fn extract(response: &str) -> (Vec<Question>, Vec<(String, String)>) {
    let mut questions: Vec<Question> = Vec::new();
    let mut dropped = Vec::new();
    let mut seen = HashSet::new();
    for block in response.split("------") {
        let block = block.trim();
        if block.is_empty() {
            continue;
        }
        match parse_block(block) {
            Ok(q) => {
                if questions.len() >= MAX_QUESTIONS {
                    dropped.push((block.to_string(), "more than five questions".to_string()));
                } else if !seen.insert(q.question.to_lowercase()) {
                    dropped.push((block.to_string(), "a repeat of an earlier question".into()));
                } else {
                    questions.push(q);
                }
            }
            Err(why) => dropped.push((block.to_string(), why)),
        }
    }
    (questions, dropped)
}

fn parse_block(block: &str) -> Result<Question, String> {
    let mut question = None;
    let mut options: Vec<(char, String)> = Vec::new();
    let mut answer = None;
    for line in block.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("####") {
            // `#### 1. **text**`
            let text = rest
                .trim()
                .trim_start_matches(|c: char| c.is_ascii_digit())
                .trim_start_matches('.')
                .trim()
                .trim_matches('*')
                .trim();
            if !text.is_empty() {
                question = Some(text.to_string());
            }
        } else if let Some(rest) = line.strip_prefix("**Answer:**") {
            answer = rest.trim().chars().next().filter(char::is_ascii_uppercase);
        } else if let Some(rest) = line.strip_prefix('-') {
            let rest = rest.trim();
            let mut chars = rest.chars();
            if let (Some(l), Some(')')) = (chars.next(), chars.next()) {
                if l.is_ascii_uppercase() {
                    let text = chars.as_str().trim();
                    if !text.is_empty() {
                        options.push((l, text.to_string()));
                    }
                }
            }
        }
    }
    let question = question.ok_or("no `#### N. **question**` line")?;
    if options.len() < 2 {
        return Err(format!(
            "{} options; at least two are needed",
            options.len()
        ));
    }
    for (i, (l, _)) in options.iter().enumerate() {
        if *l != letter(i) {
            return Err(format!(
                "option {} is labelled {l}, not {}",
                i + 1,
                letter(i)
            ));
        }
    }
    let answer = answer.ok_or("no `**Answer:** X)` line")?;
    let gold = options
        .iter()
        .position(|(l, _)| *l == answer)
        .ok_or_else(|| format!("the answer {answer} is not one of the options"))?;
    Ok(Question {
        question,
        options: options.into_iter().map(|(_, t)| t).collect(),
        gold,
    })
}

/// The options of one round: shuffled by a generator seeded from the run's seed, the image
/// and the question and round, so a re-run (or another machine) shuffles the same way.
pub fn shuffled(
    q: &Question,
    seed: u64,
    key: &str,
    index: usize,
    round: u32,
) -> (Vec<String>, usize) {
    let s = xxhash_rust::xxh3::xxh3_64_with_seed(
        format!("{key}\u{0}{index}\u{0}{round}").as_bytes(),
        seed,
    );
    let mut rng = fastrand::Rng::with_seed(s);
    let mut order: Vec<usize> = (0..q.options.len()).collect();
    rng.shuffle(&mut order);
    let gold = order
        .iter()
        .position(|&i| i == q.gold)
        .expect("the gold option is among the options; this is a bug");
    (
        order.into_iter().map(|i| q.options[i].clone()).collect(),
        gold,
    )
}

/// The answering prompt: the question block (relabelled options; `None of the above` added
/// with the image), then CapRL's instruction.
pub fn answer_prompt(question: &str, options: &[String], with_image: bool) -> String {
    let mut block = question.to_string();
    let extra = with_image.then_some(NONE_OF_THE_ABOVE.to_string());
    for (i, o) in options.iter().chain(extra.iter()).enumerate() {
        block.push('\n');
        block.push_str(&format!("{}) {o}", letter(i)));
    }
    block.push_str(ANSWER_SUFFIX);
    block
}

fn client(server: &ServerArgs, base: Option<&str>) -> Client {
    Client::new(
        base.unwrap_or(&server.base_url),
        server.api_key.clone(),
        Duration::from_secs_f64(server.request_timeout_secs),
        server.max_retries,
    )
}

/// Read a step's JSONL input line by line (streamed).
fn read_lines(path: &Path) -> anyhow::Result<impl Iterator<Item = anyhow::Result<Value>>> {
    let file = std::fs::File::open(path).map_err(|e| {
        anyhow::anyhow!("cannot read {}: {e} (run the step before)", path.display())
    })?;
    Ok(std::io::BufReader::new(file)
        .lines()
        .filter_map(|line| match line {
            Ok(l) if l.trim().is_empty() => None,
            Ok(l) => Some(serde_json::from_str(&l).map_err(Into::into)),
            Err(e) => Some(Err(e.into())),
        }))
}

fn summary(step: &str, progress: &Progress, done: u64, skipped: u64, failed: u64, extra: &str) {
    eprintln!(
        "qa {step}: done={done} skipped={skipped} failed={failed}{extra} in {:.1} s",
        progress.elapsed().as_secs_f64()
    );
}

pub async fn run(args: QaArgs) -> anyhow::Result<i32> {
    match args.step {
        QaCommand::Generate(a) => generate(&a).await,
        QaCommand::Extract(a) => extract_step(&a),
        QaCommand::Answer(a) => answer(&a).await,
        QaCommand::Filter(a) => filter(&a),
        QaCommand::Curate(c) => {
            generate(&c.generate).await?;
            let step = c.generate.step.clone();
            extract_step(&step)?;
            answer(&AnswerArgs {
                step: step.clone(),
                server: c.generate.server.clone(),
                answer_model: c.answer_model.clone(),
                answer_base_url: c.answer_base_url.clone(),
                rotate_num: c.rotate_num,
                seed: c.seed,
                answer_temperature: c.answer_temperature,
                answer_max_tokens: c.answer_max_tokens,
            })
            .await?;
            filter(&FilterArgs {
                step,
                min_visual: c.min_visual,
                max_text: c.max_text,
            })
        }
    }
}

async fn generate(a: &GenerateArgs) -> anyhow::Result<i32> {
    anyhow::ensure!(a.server.concurrency > 0, "--concurrency must be positive");
    std::fs::create_dir_all(&a.step.out)?;
    let mut out = Journal::open_keyed(&a.step.out.join("generated.jsonl"), "image")?;
    let mut errors = Journal::open_keyed(&a.step.out.join("generated.errors.jsonl"), "image")?;
    let client = client(&a.server, a.generator_base_url.as_deref());
    let items = source::open(
        &a.images,
        a.image_root.as_deref(),
        &a.image_field,
        Shard::parse(a.shard.as_deref())?,
    )?;
    let progress = Progress::new("qa generate");
    let todo = super::fresh(items, &[&out, &errors], &progress);
    let client = &client;
    let mut results = todo
        .map(|item| async move {
            let item = match item {
                Ok(i) => i,
                Err(e) => {
                    return (
                        e.key.clone(),
                        Err(error_record(&e.key, &e.message, None, false)),
                    )
                }
            };
            let bytes = match tokio::fs::read(&item.path).await {
                Ok(b) => b,
                Err(e) => {
                    return (
                        item.key.clone(),
                        Err(error_record(
                            &item.key,
                            &format!("cannot read {}: {e}", item.path.display()),
                            None,
                            false,
                        )),
                    )
                }
            };
            if image::guess_format(&bytes).is_err() {
                return (
                    item.key.clone(),
                    Err(error_record(&item.key, "not an image", None, false)),
                );
            }
            let hash = format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&bytes));
            let body = json!({
                "model": a.generator_model,
                "messages": [
                    {"role": "system", "content": GENERATE_SYSTEM},
                    {"role": "user", "content": [
                        {"type": "image_url", "image_url": {"url": super::data_url(&bytes)}},
                        {"type": "text", "text": GENERATE_USER},
                    ]},
                ],
                "temperature": a.generate_temperature,
                "max_tokens": a.generate_max_tokens,
                "repetition_penalty": a.repetition_penalty,
            });
            drop(bytes);
            match client.post("/chat/completions", &body).await {
                Ok(resp) => match resp
                    .pointer("/choices/0/message/content")
                    .and_then(Value::as_str)
                {
                    Some(text) => (
                        item.key.clone(),
                        Ok(json!({
                            "image": item.key,
                            "path": item.path,
                            "hash": hash,
                            "response": text,
                            "finish_reason": resp.pointer("/choices/0/finish_reason"),
                            "model": resp.get("model"),
                            "usage": resp.get("usage"),
                            "time": super::now(),
                        })),
                    ),
                    None => (
                        item.key.clone(),
                        Err(error_record(
                            &item.key,
                            "the answer has no text",
                            Some(200),
                            true,
                        )),
                    ),
                },
                Err(Failure {
                    status,
                    message,
                    retryable,
                }) => (
                    item.key.clone(),
                    Err(error_record(&item.key, &message, status, retryable)),
                ),
            }
        })
        .buffer_unordered(a.server.concurrency);
    let (mut done, mut failed) = (0u64, 0u64);
    while let Some((key, result)) = results.next().await {
        match result {
            Ok(record) => {
                out.append(&key, &record, true)?;
                done += 1;
                progress.done(0);
            }
            Err(record) => {
                let retryable = record["retryable"].as_bool().unwrap_or(false);
                errors.append(&key, &record, !retryable)?;
                failed += 1;
                progress.failed();
            }
        }
    }
    drop(results);
    progress.finish();
    summary(
        "generate",
        &progress,
        done,
        progress.skipped_count(),
        failed,
        "",
    );
    Ok(0)
}

fn error_record(key: &str, message: &str, status: Option<u16>, retryable: bool) -> Value {
    json!({"image": key, "error": message, "status": status, "retryable": retryable, "time": super::now()})
}

fn extract_step(a: &StepArgs) -> anyhow::Result<i32> {
    let progress = Progress::new("qa extract");
    let mut out = Journal::open_keyed(&a.out.join("extracted.jsonl"), "image")?;
    let (mut done, mut skipped, mut questions, mut dropped) = (0u64, 0u64, 0u64, 0u64);
    for record in read_lines(&a.out.join("generated.jsonl"))? {
        let record = record?;
        let Some(key) = record["image"].as_str() else {
            continue;
        };
        if out.is_done(key) {
            skipped += 1;
            continue;
        }
        let (qs, drops) = extract(record["response"].as_str().unwrap_or_default());
        questions += qs.len() as u64;
        dropped += drops.len() as u64;
        let drops: Vec<Value> = drops
            .into_iter()
            .map(|(block, reason)| json!({"block": block, "reason": reason}))
            .collect();
        out.append(
            key,
            &json!({
                "image": key,
                "path": record["path"],
                "hash": record["hash"],
                "questions": qs,
                "dropped": drops,
            }),
            true,
        )?;
        done += 1;
        progress.done(0);
    }
    progress.finish();
    summary(
        "extract",
        &progress,
        done,
        skipped,
        0,
        &format!(" questions={questions} dropped_blocks={dropped}"),
    );
    Ok(0)
}

#[derive(Debug, Clone)]
struct Task {
    image: String,
    path: PathBuf,
    index: usize,
    question: Question,
}

async fn answer(a: &AnswerArgs) -> anyhow::Result<i32> {
    anyhow::ensure!(a.server.concurrency > 0, "--concurrency must be positive");
    anyhow::ensure!(a.rotate_num > 0, "--rotate-num must be positive");
    let mut out = Journal::open_keyed(&a.step.out.join("answers.jsonl"), "key")?;
    let mut errors = Journal::open_keyed(&a.step.out.join("answers.errors.jsonl"), "key")?;
    let client = client(&a.server, a.answer_base_url.as_deref());
    let progress = Progress::new("qa answer");
    let mut tasks = Vec::new();
    let mut skipped = 0u64;
    for record in read_lines(&a.step.out.join("extracted.jsonl"))? {
        let record = record?;
        let (Some(image), Some(path)) = (record["image"].as_str(), record["path"].as_str()) else {
            continue;
        };
        let questions: Vec<Question> =
            serde_json::from_value(record["questions"].clone()).unwrap_or_default();
        for (index, question) in questions.into_iter().enumerate() {
            let key = format!("{image}#{index}");
            if out.is_done(&key) || errors.is_done(&key) {
                skipped += 1;
                continue;
            }
            tasks.push(Task {
                image: image.to_string(),
                path: PathBuf::from(path),
                index,
                question,
            });
        }
    }
    progress.skipped(skipped);
    let client = &client;
    let mut results = futures::stream::iter(tasks)
        .map(|t| async move {
            let key = format!("{}#{}", t.image, t.index);
            (key, answer_one(a, client, &t).await)
        })
        .buffer_unordered(a.server.concurrency);
    let (mut done, mut failed) = (0u64, 0u64);
    while let Some((key, result)) = results.next().await {
        match result {
            Ok(record) => {
                out.append(&key, &record, true)?;
                done += 1;
                progress.done(0);
            }
            Err(mut record) => {
                record["key"] = json!(key);
                let retryable = record["retryable"].as_bool().unwrap_or(false);
                errors.append(&key, &record, !retryable)?;
                failed += 1;
                progress.failed();
            }
        }
    }
    drop(results);
    progress.finish();
    summary("answer", &progress, done, skipped, failed, "");
    Ok(0)
}

async fn answer_one(a: &AnswerArgs, client: &Client, t: &Task) -> Result<Value, Value> {
    let bytes = tokio::fs::read(&t.path).await.map_err(|e| {
        error_record(
            &t.image,
            &format!("cannot read {}: {e}", t.path.display()),
            None,
            false,
        )
    })?;
    let url = super::data_url(&bytes);
    drop(bytes);
    let mut rounds = Vec::new();
    let (mut visual, mut text) = (0u32, 0u32);
    for round in 0..a.rotate_num {
        let (options, gold) = shuffled(&t.question, a.seed, &t.image, t.index, round);
        let gold_letter = letter(gold).to_string();
        let mut verdicts = Vec::new();
        for with_image in [true, false] {
            let prompt = answer_prompt(&t.question.question, &options, with_image);
            let content = if with_image {
                json!([{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": prompt}])
            } else {
                json!(prompt)
            };
            let body = json!({
                "model": a.answer_model,
                "messages": [{"role": "user", "content": content}],
                "temperature": a.answer_temperature,
                "max_tokens": a.answer_max_tokens,
            });
            let resp = client
                .post("/chat/completions", &body)
                .await
                .map_err(|f| error_record(&t.image, &f.message, f.status, f.retryable))?;
            let output = resp
                .pointer("/choices/0/message/content")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            // CapRL's rule: right when the gold letter occurs in the output.
            let correct = output.contains(&gold_letter);
            if correct {
                if with_image {
                    visual += 1;
                } else {
                    text += 1;
                }
            }
            verdicts.push(json!({"with_image": with_image, "output": output, "correct": correct}));
        }
        rounds.push(
            json!({"round": round, "options": options, "gold": gold_letter, "verdicts": verdicts}),
        );
    }
    let n = f64::from(a.rotate_num);
    Ok(json!({
        "key": format!("{}#{}", t.image, t.index),
        "image": t.image,
        "index": t.index,
        "question": t.question,
        "rounds": rounds,
        "visual_accuracy": f64::from(visual) / n,
        "text_accuracy": f64::from(text) / n,
        "seed": a.seed,
        "model": a.answer_model,
        "time": super::now(),
    }))
}

fn filter(a: &FilterArgs) -> anyhow::Result<i32> {
    let progress = Progress::new("qa filter");
    // Kept questions by image, in the order answers.jsonl lists them (question order within
    // an image is restored below); bounded by the number of images with answers.
    let mut by_image: std::collections::BTreeMap<String, Vec<(usize, Question)>> =
        Default::default();
    let mut dropped = Journal::open_keyed(&a.step.out.join("dropped.jsonl"), "key")?;
    let (mut kept, mut rejected) = (0u64, 0u64);
    let mut images: HashSet<String> = HashSet::new();
    for record in read_lines(&a.step.out.join("answers.jsonl"))? {
        let record = record?;
        let (Some(image), Some(index)) = (record["image"].as_str(), record["index"].as_u64())
        else {
            continue;
        };
        images.insert(image.to_string());
        let question: Question = match serde_json::from_value(record["question"].clone()) {
            Ok(q) => q,
            Err(_) => continue,
        };
        let visual = record["visual_accuracy"].as_f64().unwrap_or(0.0);
        let text = record["text_accuracy"].as_f64().unwrap_or(1.0);
        if visual > a.min_visual && text < a.max_text {
            by_image
                .entry(image.to_string())
                .or_default()
                .push((index as usize, question));
            kept += 1;
        } else {
            rejected += 1;
            let key = format!("{image}#{index}");
            if !dropped.is_done(&key) {
                let reason = if visual <= a.min_visual {
                    format!(
                        "accuracy with the image {visual} is not above {}",
                        a.min_visual
                    )
                } else {
                    format!(
                        "accuracy without the image {text} is not below {}: the text gives it away",
                        a.max_text
                    )
                };
                dropped.append(&key, &json!({"key": key, "image": image, "question": question.question, "reason": reason}), true)?;
            }
        }
    }
    // The curated set is written whole from the answers each time: it is a pure function of
    // them, so a re-run after more answers arrived is complete, never doubled.
    let path = a.step.out.join("curated.jsonl");
    let tmp = a.step.out.join("curated.jsonl.part");
    {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        for (image, mut qs) in by_image.iter().map(|(k, v)| (k.clone(), v.clone())) {
            qs.sort_by_key(|(i, _)| *i);
            let truth: Vec<Value> = qs.iter().map(|(_, q)| q.ground_truth()).collect();
            serde_json::to_writer(
                &mut w,
                &json!({
                    "image": image,
                    "images": [image],
                    "reward_model": {"ground_truth": truth, "style": "rule"},
                }),
            )?;
            std::io::Write::write_all(&mut w, b"\n")?;
        }
        std::io::Write::flush(&mut w)?;
    }
    std::fs::rename(&tmp, &path)?;
    let without = images.len() - by_image.len();
    progress.finish();
    summary(
        "filter",
        &progress,
        kept,
        0,
        0,
        &format!(
            " kept={kept} rejected={rejected} images={} images_without_questions={without}",
            by_image.len()
        ),
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESPONSE: &str = "#### 1. **What colour is the kite?**\n   - A) Blue\n   - B) Red\n   - C) Green\n   - D) Yellow\n\n**Answer:** B) Red\n------\n#### 2. **How many people watch?**\n   - A) One\n   - B) Two\n\n**Answer:** B) Two\n------\n#### 3. **Broken?**\n   - A) x\n   - C) y\n\n**Answer:** A) x\n------\n#### 4. **What colour is the kite?**\n   - A) Red\n   - B) Blue\n\n**Answer:** A) Red\n------\nno question here\n------";

    #[test]
    fn blocks_parse_and_a_bad_one_drops_only_itself() {
        let (qs, dropped) = extract(RESPONSE);
        assert_eq!(qs.len(), 2);
        assert_eq!(qs[0].question, "What colour is the kite?");
        assert_eq!(qs[0].options, ["Blue", "Red", "Green", "Yellow"]);
        assert_eq!(qs[0].gold, 1);
        assert_eq!(qs[1].gold, 1);
        let reasons: Vec<&str> = dropped.iter().map(|(_, r)| r.as_str()).collect();
        assert_eq!(reasons.len(), 3, "{reasons:?}");
        assert!(reasons[0].contains("labelled C"), "{reasons:?}");
        assert!(reasons[1].contains("repeat"), "{reasons:?}");
        assert!(reasons[2].contains("no `#### N."), "{reasons:?}");
        assert_eq!(
            qs[0].ground_truth(),
            json!({"question": "What colour is the kite?", "choices": ["A) Blue", "B) Red", "C) Green", "D) Yellow"], "answer": "B"})
        );
    }

    #[test]
    fn shuffles_are_seeded_and_keep_the_gold() {
        let (qs, _) = extract(RESPONSE);
        let q = &qs[0];
        let a = shuffled(q, 7, "img.png", 0, 1);
        assert_eq!(a, shuffled(q, 7, "img.png", 0, 1), "reproducible");
        assert_eq!(a.0[a.1], "Red", "the gold moves with its option");
        let rounds: HashSet<Vec<String>> =
            (0..8).map(|r| shuffled(q, 7, "img.png", 0, r).0).collect();
        assert!(rounds.len() > 1, "rounds shuffle afresh");
    }

    #[test]
    fn the_answer_prompt_is_the_block_and_capr_l_instruction() {
        let opts = vec!["Red".to_string(), "Blue".to_string()];
        assert_eq!(
            answer_prompt("What colour?", &opts, true),
            "What colour?\nA) Red\nB) Blue\nC) None of the above. Answer the question with only the correct letter"
        );
        assert_eq!(
            answer_prompt("What colour?", &opts, false),
            "What colour?\nA) Red\nB) Blue. Answer the question with only the correct letter"
        );
    }
}
