//! One batch's runner: validate its input, run its lines through the driver, write their
//! results, and end the batch (completed, cancelled or expired). The same function resumes a
//! batch after a restart, from whatever status the store last recorded.
//!
//! Lines start in file order, at most `batch_max_in_flight` at a time; each is read back from
//! the input file by offset, validated as the synchronous endpoint validates it, admitted as a
//! bulk request and sent with failover. A finished line goes to one writer task, which appends
//! lines to the output or error file in groups, syncs them and records the group in the store
//! with the files' new lengths (see `crate::store`): a line is done exactly when that record
//! is. After a kill, the files are cut back to the recorded lengths and only lines not
//! recorded run again.
//!
//! Every line runs as the batch's owner, the key that created it, as that key is when the line
//! starts: a model the key may no longer use fails the line as the synchronous endpoint would
//! (404 `model_not_found`), and once the key is revoked no further line runs (each goes to the
//! error file with `invalid_api_key`); the batch still ends.
//!
//! Failures that say nothing about the line (no worker, a full queue, a worker that broke
//! down after every retry) are retried with backoff until the batch is stopped or expires; a
//! failure the request itself caused goes to the error file with the status and envelope the
//! synchronous endpoint would have answered.

use super::{input, Batches};
use crate::dispatch::{read_answer, send_admitted, Whole};
use crate::error::GatewayError;
use crate::files::{Files, OUTPUT_PURPOSE};
use crate::resize::ResizeChoice;
use crate::state::AppState;
use crate::store::{self, BatchRow, Commit, FileRow, LineOutcome, LineRow, Status, Usage};
use crate::tenant::Caller;
use crate::validate::Endpoint;
use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Lines read from the store per page.
const PAGE: usize = 1000;
/// Most finished lines written and recorded in one group.
const GROUP: usize = 512;
/// Backoff between tries of a line that failed for a reason outside it.
const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Tries of a line whose worker failed it (after the driver's own failover) before the failure
/// goes to the error file.
const MAX_WORKER_FAILURES: u32 = 4;
/// Longest one admission wait; then the line waits again (so a stop is seen).
const ADMIT_WAIT: Duration = Duration::from_secs(60);
/// Extra room over `max_body_bytes` for the line's envelope (`custom_id`, `method`, `url`).
const LINE_ENVELOPE: u64 = 64 << 10;
/// A line not run because its batch's key is gone.
const REVOKED_CODE: &str = "invalid_api_key";
const REVOKED_MESSAGE: &str =
    "This request was not executed because the API key that created the batch was revoked.";

/// A finished line, ready to be written.
struct Finished {
    line: u64,
    record: Vec<u8>,
    outcome: LineOutcome,
    usage: Usage,
    /// The line's place among the batch's lines in flight, given back only once its result
    /// is recorded: so `batch_max_in_flight` bounds the lines that a kill would run again.
    permit: Option<OwnedSemaphorePermit>,
}

/// Why the runner stopped starting lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Every line started.
    Done,
    /// Cancelled by the client.
    Cancelled,
    /// Past `expires_at`.
    Expired,
    /// The gateway is shutting down: leave the batch as it is, to resume at the next start.
    Shutdown,
}

/// Drive batch `id` to its end (or until the gateway stops).
pub async fn run(state: AppState, batches: Batches, id: String, stop: CancellationToken) {
    if let Err(e) = drive(&state, &batches, &id, &stop).await {
        // The store or the disk failed: the batch stays as recorded and resumes at the next
        // start.
        tracing::error!(batch = %id, error = %e, "batch runner stopped");
    }
    batches.update_gauges().await;
}

async fn drive(
    state: &AppState,
    batches: &Batches,
    id: &str,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let store = batches.store().clone();
    let mut b = load(batches, id).await?;
    if b.status == Status::Validating {
        validate(state, batches, &b).await?;
        b = load(batches, id).await?;
        batches.update_gauges().await;
    }
    let mut ended = match b.status {
        Status::InProgress => Stop::Done,
        Status::Finalizing => Stop::Done,
        Status::Cancelling => Stop::Cancelled,
        _ => return Ok(()),
    };
    let dir = batches.files.batches_dir().join(&b.id);
    let mut sink = Sink::open(&batches.files, &b, dir.clone()).await?;
    if b.status == Status::InProgress {
        let (s, why) = run_lines(state, batches, &b, sink, stop).await?;
        sink = s;
        ended = why;
        b = load(batches, id).await?;
        if b.status == Status::Cancelling {
            ended = Stop::Cancelled;
        }
    }
    let to = match ended {
        Stop::Shutdown => return Ok(()),
        Stop::Done => Status::Completed,
        Stop::Cancelled => Status::Cancelled,
        Stop::Expired => Status::Expired,
    };
    if to != Status::Completed {
        let (code, message) = match to {
            Status::Cancelled => (
                "batch_cancelled",
                "This request was not executed because the batch was cancelled.",
            ),
            _ => (
                "batch_expired",
                "This request was not executed because the batch expired before it could run.",
            ),
        };
        sink = not_executed(&store, &b, sink, code, message).await?;
    }
    let files = sink.publish(&batches.files, &b).await?;
    let key = b.id.clone();
    store
        .run(move |s| s.finish_batch(&key, to, &files, store::now()))
        .await?;
    let _ = tokio::fs::remove_dir_all(&dir).await;
    batches.files.update_gauge().await;
    let b = load(batches, id).await?;
    tracing::info!(batch = %id, status = b.status.as_str(), total = b.total, completed = b.completed, failed = b.failed, "batch ended");
    Ok(())
}

/// Who a batch's lines run as: its owner's key as it is now (limits on models included).
/// None when keys are required and the owner's key no longer exists (revoked). A batch made
/// without keys (owner "") runs as anyone.
fn owner_caller(state: &AppState, owner: &str) -> Option<Caller> {
    if owner.is_empty() {
        return Some(Caller::default());
    }
    match state.tenants.by_name(owner) {
        Some(tenant) => Some(Caller(Some(tenant))),
        None if state.tenants.required() => None,
        // Keys were turned off since: everyone may use everything.
        None => Some(Caller::default()),
    }
}

async fn load(batches: &Batches, id: &str) -> anyhow::Result<BatchRow> {
    let key = id.to_string();
    batches
        .store()
        .run(move |s| s.batch(&key))
        .await?
        .ok_or_else(|| anyhow::anyhow!("batch {id} is not in the store"))
}

/// Check the whole input file; the batch becomes in_progress (with its lines) or failed.
async fn validate(state: &AppState, batches: &Batches, b: &BatchRow) -> anyhow::Result<()> {
    let path = batches.files.path(&b.input_file_id);
    let endpoint = b.endpoint.clone();
    // A model the owner's key may not use is not served, as far as the owner can tell. A
    // revoked owner's lines pass here and are refused one by one when they would run.
    let owner = owner_caller(state, &b.owner);
    let served: Vec<String> = state
        .pools
        .keys()
        .filter(|m| owner.as_ref().is_none_or(|c| c.may_use(m)))
        .cloned()
        .collect();
    let max_line = state.config.limits.max_body_bytes + LINE_ENVELOPE;
    let store = batches.store().clone();
    let id = b.id.clone();
    let scanned = tokio::task::spawn_blocking(move || {
        input::scan(
            &path,
            &endpoint,
            &|m| served.iter().any(|s| s == m),
            max_line,
        )
    })
    .await?;
    let now = store::now();
    match scanned {
        Ok(scan) if scan.errors.is_empty() => {
            let model = scan.model.unwrap_or_default();
            let total = scan.lines.len();
            store
                .run(move |s| s.start_batch(&id, &model, &mut scan.lines.into_iter(), now))
                .await?;
            tracing::info!(batch = %b.id, lines = total, status = "in_progress", "batch validated");
        }
        Ok(scan) => {
            let n = scan.errors.len();
            let errors = serde_json::json!({"object": "list", "data": scan.errors}).to_string();
            store.run(move |s| s.fail_batch(&id, &errors, now)).await?;
            tracing::info!(batch = %b.id, bad_lines = n, status = "failed", "batch failed validation");
        }
        Err(e) => {
            let errors = serde_json::json!({"object": "list", "data": [{
                "code": "invalid_file",
                "line": null,
                "message": format!("the input file cannot be read: {e}"),
                "param": "input_file_id",
            }]})
            .to_string();
            store.run(move |s| s.fail_batch(&id, &errors, now)).await?;
            tracing::warn!(batch = %b.id, error = %e, status = "failed", "batch input unreadable");
        }
    }
    Ok(())
}

/// Start every pending line, bounded; wait for those started; return why it stopped.
async fn run_lines(
    state: &AppState,
    batches: &Batches,
    b: &BatchRow,
    sink: Sink,
    stop: &CancellationToken,
) -> anyhow::Result<(Sink, Stop)> {
    let store = batches.store().clone();
    let input = Arc::new(File::open(batches.files.path(&b.input_file_id))?);
    let (tx, rx) = mpsc::channel::<Finished>(GROUP * 2);
    let model = b.model.clone().unwrap_or_default();
    let writer = tokio::spawn(write_loop(
        rx,
        sink,
        store.clone(),
        b.id.clone(),
        batches.metrics().clone(),
        model,
    ));
    let limit = batches.max_in_flight;
    let permits = Arc::new(Semaphore::new(limit));
    let expires = expiry_instant(b.expires_at);
    // Stops line tasks that are still waiting for a worker: a line not yet admitted is not
    // started, and is reported as not executed.
    let halt = stop.child_token();
    let endpoint = Endpoint::from_path(&b.endpoint).unwrap_or(Endpoint::Chat);
    let mut after = 0;
    let mut why = Stop::Done;
    'pages: loop {
        let key = b.id.clone();
        let page = store
            .run(move |s| s.pending_lines(&key, after, PAGE))
            .await?;
        if page.is_empty() {
            break;
        }
        for line in page {
            after = line.line;
            let permit = tokio::select! {
                biased;
                () = stop.cancelled() => {
                    why = if state.cancel.is_cancelled() { Stop::Shutdown } else { Stop::Cancelled };
                    break 'pages;
                }
                () = tokio::time::sleep_until(expires) => {
                    why = Stop::Expired;
                    break 'pages;
                }
                p = permits.clone().acquire_owned() => p?,
            };
            let task = LineTask {
                state: state.clone(),
                input: input.clone(),
                halt: halt.clone(),
                expires,
                batch_id: b.id.clone(),
                owner: b.owner.clone(),
                endpoint,
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Some(mut done) = task.run(line).await {
                    done.permit = Some(permit);
                    let _ = tx.send(done).await;
                }
            });
        }
    }
    // Lines waiting for a worker are not started once the batch stops; lines admitted finish.
    if why != Stop::Done {
        halt.cancel();
    }
    let expiry = async {
        tokio::time::sleep_until(expires).await;
        halt.cancel();
    };
    tokio::select! {
        r = permits.acquire_many(limit as u32) => { drop(r?); }
        () = expiry => {
            // Lines waiting past the window end are not started either.
            let _ = permits.acquire_many(limit as u32).await?;
            if why == Stop::Done {
                why = Stop::Expired;
            }
        }
    }
    drop(tx);
    let sink = writer.await??;
    if why == Stop::Done {
        // Lines that could not start before the window ended are still pending.
        let key = b.id.clone();
        let left = store.run(move |s| s.pending_lines(&key, 0, 1)).await?;
        if !left.is_empty() {
            why = if Instant::now() >= expires {
                Stop::Expired
            } else if state.cancel.is_cancelled() {
                Stop::Shutdown
            } else if stop.is_cancelled() {
                Stop::Cancelled
            } else {
                // Not stopped, yet lines did not run (the input could not be read back): leave
                // the batch in progress, to resume at the next start, rather than end it.
                anyhow::bail!("lines of batch {} could not be started", b.id);
            };
        }
    }
    Ok((sink, why))
}

fn expiry_instant(expires_at: i64) -> Instant {
    let left = (expires_at - store::now()).max(0) as u64;
    Instant::now() + Duration::from_secs(left)
}

/// What one line needs to run.
struct LineTask {
    state: AppState,
    input: Arc<File>,
    halt: CancellationToken,
    expires: Instant,
    batch_id: String,
    /// The batch's owner: the line is validated (model scope, images by file id) as this key.
    owner: String,
    endpoint: Endpoint,
}

#[derive(serde::Deserialize)]
struct LineBody<'a> {
    #[serde(borrow)]
    body: &'a RawValue,
}

impl LineTask {
    /// Run the line; None when it did not start (stopped while waiting for a worker, or the
    /// gateway is shutting down): it stays pending.
    async fn run(self, line: LineRow) -> Option<Finished> {
        let Some(caller) = owner_caller(&self.state, &self.owner) else {
            return Some(not_run(&line, REVOKED_CODE, REVOKED_MESSAGE));
        };
        let (offset, len) = (line.offset, line.len);
        let input = self.input.clone();
        let bytes = match tokio::task::spawn_blocking(move || input::read_at(&input, offset, len))
            .await
        {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                tracing::error!(batch = %self.batch_id, line = line.line, error = %e, "cannot read the line back");
                return None;
            }
            Err(_) => return None,
        };
        let request_id = uuid::Uuid::new_v4().simple().to_string();
        let body = match serde_json::from_slice::<LineBody<'_>>(&bytes) {
            Ok(l) => Bytes::copy_from_slice(l.body.get().as_bytes()),
            Err(e) => {
                // Validation read this line; it changed on disk since.
                let err = GatewayError::invalid(format!("the line cannot be read: {e}"), None);
                return Some(failed(&line, &request_id, &err));
            }
        };
        drop(bytes);
        // Remote images are fetched here when the gateway fetches them: a line whose fetch
        // fails is that line's error, and the batch goes on.
        let checked = tokio::select! {
            r = self.state.validate_as(self.endpoint, body, &caller, ResizeChoice::AsPool) => r,
            () = self.halt.cancelled() => return None,
        };
        let mut req = match checked {
            Ok(req) => req,
            Err(err) => return Some(failed(&line, &request_id, &err)),
        };
        req.bulk = true;
        let pool = self
            .state
            .pools
            .get(&req.model)
            .expect("validation only passes served models; this is a bug");
        let mut backoff = BACKOFF_FIRST;
        let mut worker_failures = 0;
        loop {
            let admit_by = (Instant::now() + ADMIT_WAIT).min(self.expires);
            let admitted = tokio::select! {
                r = pool.queue.admit(&req, Vec::new(), admit_by) => r,
                () = self.halt.cancelled() => return None,
            };
            let err = match admitted {
                Ok(lease) => {
                    let deadline = Instant::now() + pool.request_timeout();
                    match send_admitted(pool, &req, &request_id, deadline, lease).await {
                        Ok((up, lease)) => {
                            match read_answer(up, &lease, &req.model, deadline).await {
                                Ok(whole) => return Some(answered(&line, &request_id, whole)),
                                Err(e) => e,
                            }
                        }
                        Err(f) => f.error,
                    }
                }
                Err(e) => e,
            };
            match err {
                GatewayError::ShuttingDown => return None,
                // Nothing to do with the line: wait and try again.
                GatewayError::Overloaded { .. } | GatewayError::NoWorker(_) => {}
                GatewayError::BadGateway(_)
                | GatewayError::Timeout(_)
                | GatewayError::WorkerStatus { .. } => {
                    worker_failures += 1;
                    if worker_failures >= MAX_WORKER_FAILURES {
                        return Some(failed(&line, &request_id, &err));
                    }
                }
                other => return Some(failed(&line, &request_id, &other)),
            }
            tracing::debug!(batch = %self.batch_id, line = line.line, error = %err, backoff_ms = backoff.as_millis() as u64, "line will be tried again");
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = self.halt.cancelled() => return None,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

#[derive(Serialize)]
struct Record<'a> {
    id: String,
    custom_id: &'a str,
    response: Option<Response<'a>>,
    error: Option<LineError<'a>>,
}

#[derive(Serialize)]
struct Response<'a> {
    status_code: u16,
    request_id: &'a str,
    body: &'a RawValue,
}

#[derive(Serialize)]
struct LineError<'a> {
    code: &'a str,
    message: &'a str,
}

fn line_id() -> String {
    format!("batch_req_{}", uuid::Uuid::new_v4().simple())
}

fn encode(record: &Record<'_>) -> Vec<u8> {
    let mut out =
        serde_json::to_vec(record).expect("a batch record always serializes; this is a bug");
    out.push(b'\n');
    out
}

/// A worker's answer: 2xx to the output file, anything else to the error file.
fn answered(line: &LineRow, request_id: &str, whole: Whole) -> Finished {
    let text = String::from_utf8_lossy(&whole.body);
    // A body that is not JSON (it should always be) is kept as a JSON string.
    let raw = serde_json::from_str::<&RawValue>(&text)
        .map(|r| r.to_owned())
        .unwrap_or_else(|_| {
            RawValue::from_string(
                serde_json::to_string(&text).expect("a string serializes; this is a bug"),
            )
            .expect("a serialized string is JSON; this is a bug")
        });
    let ok = whole.status.is_success();
    let record = encode(&Record {
        id: line_id(),
        custom_id: &line.custom_id,
        response: Some(Response {
            status_code: whole.status.as_u16(),
            request_id,
            body: &raw,
        }),
        error: None,
    });
    let usage = match (ok, whole.usage) {
        (true, Some(u)) => Usage {
            input_tokens: u.prompt_tokens,
            output_tokens: u.completion_tokens,
        },
        _ => Usage::default(),
    };
    Finished {
        line: line.line,
        record,
        outcome: if ok {
            LineOutcome::Completed
        } else {
            LineOutcome::Failed
        },
        usage,
        permit: None,
    }
}

/// A request the gateway refused or could not get answered: its status and envelope, as the
/// synchronous endpoint would answer.
fn failed(line: &LineRow, request_id: &str, err: &GatewayError) -> Finished {
    let envelope = serde_json::to_string(&err.envelope())
        .expect("the error envelope always serializes; this is a bug");
    let raw = RawValue::from_string(envelope).expect("the envelope is JSON; this is a bug");
    let record = encode(&Record {
        id: line_id(),
        custom_id: &line.custom_id,
        response: Some(Response {
            status_code: err.status().as_u16(),
            request_id,
            body: &raw,
        }),
        error: None,
    });
    Finished {
        line: line.line,
        record,
        outcome: LineOutcome::Failed,
        usage: Usage::default(),
        permit: None,
    }
}

/// A line that was not executed: no response, only the reason, for the error file.
fn not_run(line: &LineRow, code: &str, message: &str) -> Finished {
    Finished {
        line: line.line,
        record: encode(&Record {
            id: line_id(),
            custom_id: &line.custom_id,
            response: None,
            error: Some(LineError { code, message }),
        }),
        outcome: LineOutcome::Failed,
        usage: Usage::default(),
        permit: None,
    }
}

/// Take finished lines off the channel in groups; write and record each group.
async fn write_loop(
    mut rx: mpsc::Receiver<Finished>,
    mut sink: Sink,
    store: store::Shared,
    id: String,
    metrics: crate::metrics::Metrics,
    model: String,
) -> anyhow::Result<Sink> {
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        while group.len() < GROUP {
            match rx.try_recv() {
                Ok(f) => group.push(f),
                Err(_) => break,
            }
        }
        let (completed, failed) = group.iter().fold((0, 0), |(c, f), d| match d.outcome {
            LineOutcome::Completed => (c + 1, f),
            LineOutcome::Failed => (c, f + 1),
        });
        sink = append(sink, group, store.clone(), id.clone()).await?;
        metrics.batch_lines_done(&model, completed, failed);
    }
    Ok(sink)
}

async fn append(
    mut sink: Sink,
    group: Vec<Finished>,
    store: store::Shared,
    id: String,
) -> anyhow::Result<Sink> {
    tokio::task::spawn_blocking(move || -> anyhow::Result<Sink> {
        let commit = sink.write(&group)?;
        store.0.commit_lines(&id, &commit)?;
        // Recorded: the lines' places in flight are free again.
        drop(group);
        Ok(sink)
    })
    .await?
}

/// Lines never started (the batch was cancelled or expired) go to the error file.
async fn not_executed(
    store: &store::Shared,
    b: &BatchRow,
    mut sink: Sink,
    code: &'static str,
    message: &'static str,
) -> anyhow::Result<Sink> {
    loop {
        let key = b.id.clone();
        let page = store.run(move |s| s.pending_lines(&key, 0, PAGE)).await?;
        if page.is_empty() {
            return Ok(sink);
        }
        let group: Vec<Finished> = page
            .iter()
            .map(|line| not_run(line, code, message))
            .collect();
        sink = append(sink, group, store.clone(), b.id.clone()).await?;
    }
}

/// A batch's output and error files while it runs, with their committed lengths.
struct Sink {
    output: File,
    errors: File,
    output_path: PathBuf,
    error_path: PathBuf,
    output_len: u64,
    error_len: u64,
}

impl Sink {
    /// Open (or create) the files and cut off anything past the committed lengths: the bytes
    /// of lines whose record never made it to the store.
    async fn open(files: &Files, b: &BatchRow, dir: PathBuf) -> anyhow::Result<Sink> {
        let published = [files.path(&b.output_file_id), files.path(&b.error_file_id)];
        let (output_len, error_len) = (b.output_bytes, b.error_bytes);
        tokio::task::spawn_blocking(move || -> anyhow::Result<Sink> {
            std::fs::create_dir_all(&dir)?;
            let output_path = dir.join("output.jsonl");
            let error_path = dir.join("errors.jsonl");
            // A kill between publishing (the rename) and recording it left the file in place.
            for (local, public) in [&output_path, &error_path].into_iter().zip(&published) {
                if !local.exists() && public.exists() {
                    std::fs::rename(public, local)?;
                }
            }
            let open = |path: &PathBuf, len: u64| -> std::io::Result<File> {
                let f = OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .read(true)
                    .write(true)
                    .open(path)?;
                if f.metadata()?.len() != len {
                    f.set_len(len)?;
                }
                Ok(f)
            };
            let mut output = open(&output_path, output_len)?;
            let mut errors = open(&error_path, error_len)?;
            use std::io::{Seek, SeekFrom};
            output.seek(SeekFrom::Start(output_len))?;
            errors.seek(SeekFrom::Start(error_len))?;
            Ok(Sink {
                output,
                errors,
                output_path,
                error_path,
                output_len,
                error_len,
            })
        })
        .await?
    }

    /// Append a group of lines and sync it; the commit that records it.
    fn write(&mut self, group: &[Finished]) -> std::io::Result<Commit> {
        let mut commit = Commit::default();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        for f in group {
            match f.outcome {
                LineOutcome::Completed => out.extend_from_slice(&f.record),
                LineOutcome::Failed => err.extend_from_slice(&f.record),
            }
            commit.lines.push((f.line, f.outcome));
            commit.usage.input_tokens += f.usage.input_tokens;
            commit.usage.output_tokens += f.usage.output_tokens;
        }
        if !out.is_empty() {
            self.output.write_all(&out)?;
            self.output.sync_data()?;
            self.output_len += out.len() as u64;
        }
        if !err.is_empty() {
            self.errors.write_all(&err)?;
            self.errors.sync_data()?;
            self.error_len += err.len() as u64;
        }
        commit.output_bytes = self.output_len;
        commit.error_bytes = self.error_len;
        Ok(commit)
    }

    /// Move the files that have lines into the files store; the records to publish them with.
    async fn publish(self, files: &Files, b: &BatchRow) -> anyhow::Result<Vec<FileRow>> {
        let now = store::now();
        let plan = [
            (
                self.output_path,
                self.output_len,
                b.output_file_id.clone(),
                format!("{}_output.jsonl", b.id),
            ),
            (
                self.error_path,
                self.error_len,
                b.error_file_id.clone(),
                format!("{}_error.jsonl", b.id),
            ),
        ];
        drop((self.output, self.errors));
        let mut rows = Vec::new();
        for (local, len, id, filename) in plan {
            if len == 0 {
                continue;
            }
            tokio::fs::rename(&local, files.path(&id)).await?;
            rows.push(FileRow {
                id,
                bytes: len,
                created_at: now,
                filename,
                purpose: OUTPUT_PURPOSE.into(),
                expires_at: None,
                owner: b.owner.clone(),
            });
        }
        Ok(rows)
    }
}
