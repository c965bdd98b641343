//! Bulk jobs: the OpenAI Batch API served by the gateway, on the capacity interactive
//! requests leave free.
//!
//! A batch is created from an uploaded JSONL file (`/v1/files`, purpose `batch`), stored
//! durably before the create call is answered, and then driven by one runner task
//! ([`runner`]): validation of the whole file ([`input`]), then every line through the same
//! driver as an interactive request (`crate::dispatch`), as a bulk request that the queue
//! admits only into each worker's `batch_share` and after every interactive request. Output
//! and error lines are appended to files as lines finish and recorded in the store in groups;
//! a restart resumes every unfinished batch from what the store recorded (see
//! `crate::store` for why no line is written twice).
//!
//! The runner runs where the batch was created: one gateway process owns its batches (its
//! `--data-dir`). On Kubernetes with several gateway replicas, batches go to one replica (a
//! StatefulSet with a volume for `--data-dir`, or a separate batch Deployment), or shard the
//! input into Indexed Jobs; see deploy/README.md.

pub mod input;
pub mod runner;

use crate::error::GatewayError;
use crate::files::{internal, Files};
use crate::metrics::Metrics;
use crate::state::AppState;
use crate::store::{self, BatchRow, Shared, Status, Usage};
use crate::tenant::Caller;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The endpoints a batch may target.
pub const ENDPOINTS: [&str; 2] = ["/v1/chat/completions", "/v1/completions"];
/// The only completion window there is (how long it lasts is `--batch-window-secs`).
pub const COMPLETION_WINDOW: &str = "24h";
const MAX_METADATA_PAIRS: usize = 16;
const MAX_METADATA_KEY: usize = 64;
const MAX_METADATA_VALUE: usize = 512;

/// The batch service: the store, the files, and the runners' stop switches.
#[derive(Debug, Clone)]
pub struct Batches {
    pub files: Files,
    store: Shared,
    window: Duration,
    pub max_in_flight: usize,
    metrics: Metrics,
    /// Running batches by id: cancelling one stops its runner from starting lines.
    running: Arc<Mutex<HashMap<String, CancellationToken>>>,
}

/// `POST /v1/batches`' body.
#[derive(Debug, Deserialize)]
pub struct CreateBatch {
    pub input_file_id: Option<Value>,
    pub endpoint: Option<Value>,
    pub completion_window: Option<Value>,
    pub metadata: Option<Value>,
}

impl Batches {
    pub fn new(files: Files, window: Duration, max_in_flight: usize, metrics: Metrics) -> Batches {
        Batches {
            store: files.store.clone(),
            files,
            window,
            max_in_flight,
            metrics,
            running: Arc::default(),
        }
    }

    /// Start a runner for every batch an earlier run left unfinished, and the file sweeper.
    pub fn resume(&self, state: &AppState) -> anyhow::Result<()> {
        let unfinished = self.store.0.unfinished_batches()?;
        for b in unfinished {
            tracing::info!(batch = %b.id, status = b.status.as_str(), completed = b.completed, failed = b.failed, total = b.total, "resuming batch");
            self.spawn(state, b.id);
        }
        state
            .tasks
            .spawn(self.files.clone().sweep(state.cancel.clone()));
        self.update_gauges_blocking();
        Ok(())
    }

    fn spawn(&self, state: &AppState, id: String) {
        let stop = state.cancel.child_token();
        self.lock_running().insert(id.clone(), stop.clone());
        let this = self.clone();
        let st = state.clone();
        state.tasks.spawn(async move {
            runner::run(st, this.clone(), id.clone(), stop).await;
            this.lock_running().remove(&id);
        });
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, HashMap<String, CancellationToken>> {
        // A panic while holding this lock cannot leave the map inconsistent: take it anyway.
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn store(&self) -> &Shared {
        &self.store
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn update_gauges_blocking(&self) {
        if let Ok(counts) = self.store.0.count_by_status() {
            self.metrics.set_batches(&counts);
        }
    }

    pub async fn update_gauges(&self) {
        if let Ok(counts) = self.store.run(|s| s.count_by_status()).await {
            self.metrics.set_batches(&counts);
        }
    }

    /// Create a batch owned by `caller`: check the parameters, store it (validating), start
    /// its runner. The input file must be the caller's own (another's is not found).
    pub async fn create(
        &self,
        state: &AppState,
        caller: &Caller,
        req: CreateBatch,
    ) -> Result<Value, GatewayError> {
        let input_file_id = match req.input_file_id {
            Some(Value::String(s)) if !s.is_empty() => s,
            Some(_) => return Err(bad("input_file_id must be a file id", "input_file_id")),
            None => return Err(GatewayError::missing("input_file_id")),
        };
        let endpoint = match req.endpoint {
            Some(Value::String(s)) if ENDPOINTS.contains(&s.as_str()) => s,
            Some(other) => {
                return Err(bad(
                    format!(
                        "unsupported endpoint {other}: a batch may target {}",
                        ENDPOINTS.join(", ")
                    ),
                    "endpoint",
                ))
            }
            None => return Err(GatewayError::missing("endpoint")),
        };
        match req.completion_window {
            Some(Value::String(s)) if s == COMPLETION_WINDOW => {}
            Some(other) => {
                return Err(bad(
                    format!("completion_window must be \"{COMPLETION_WINDOW}\", not {other}"),
                    "completion_window",
                ))
            }
            None => return Err(GatewayError::missing("completion_window")),
        }
        let metadata = match req.metadata {
            None | Some(Value::Null) => None,
            Some(m) => Some(check_metadata(m)?),
        };
        let file = self
            .files
            .get(&input_file_id, caller.owner())
            .await
            .map_err(|e| match e {
                GatewayError::NotFound { message, .. } => GatewayError::NotFound {
                    message,
                    param: Some("input_file_id".into()),
                },
                other => other,
            })?;
        if file.purpose != "batch" {
            return Err(bad(
                format!(
                    "file {} has purpose `{}`: a batch's input must be uploaded with purpose \
                     `batch`",
                    file.id, file.purpose
                ),
                "input_file_id",
            ));
        }
        let now = store::now();
        let row = BatchRow {
            id: format!("batch_{}", uuid::Uuid::new_v4().simple()),
            owner: caller.owner().to_string(),
            endpoint,
            model: None,
            input_file_id,
            completion_window: COMPLETION_WINDOW.into(),
            status: Status::Validating,
            output_file_id: crate::files::new_file_id(),
            error_file_id: crate::files::new_file_id(),
            published: false,
            created_at: now,
            in_progress_at: None,
            expires_at: now + self.window.as_secs().max(1) as i64,
            finalizing_at: None,
            completed_at: None,
            failed_at: None,
            expired_at: None,
            cancelling_at: None,
            cancelled_at: None,
            total: 0,
            completed: 0,
            failed: 0,
            usage: Usage::default(),
            metadata: metadata.map(|m| m.to_string()),
            errors: None,
            output_bytes: 0,
            error_bytes: 0,
        };
        let stored = row.clone();
        // Answered only once stored: the openai client retries a create that timed out.
        self.store
            .run(move |s| s.insert_batch(&stored))
            .await
            .map_err(internal)?;
        tracing::info!(batch = %row.id, owner = %row.owner, input_file = %row.input_file_id, status = "validating", "batch created");
        self.spawn(state, row.id.clone());
        self.update_gauges().await;
        Ok(object(&row))
    }

    /// The batch `id` if `owner` owns it; another owner's batch is answered exactly as one
    /// that does not exist.
    pub async fn get(&self, id: &str, owner: &str) -> Result<BatchRow, GatewayError> {
        let key = id.to_string();
        self.store
            .run(move |s| s.batch(&key))
            .await
            .map_err(internal)?
            .filter(|b| b.owner == owner)
            .ok_or_else(|| no_such_batch(id))
    }

    /// `owner`'s batches, newest first, after `after`, `limit` of them, with OpenAI's list
    /// envelope.
    pub async fn list(
        &self,
        owner: &str,
        after: Option<String>,
        limit: usize,
    ) -> Result<Value, GatewayError> {
        let owner = owner.to_string();
        let rows = self
            .store
            .run(move |s| s.list_batches(&owner, after.as_deref(), limit + 1))
            .await
            .map_err(internal)?;
        let has_more = rows.len() > limit;
        let data: Vec<Value> = rows.iter().take(limit).map(object).collect();
        Ok(list_envelope(data, has_more))
    }

    /// Cancel: a running batch becomes `cancelling` (its in-flight lines finish, the rest are
    /// not started) and then `cancelled`. Cancelling a cancelling or cancelled batch changes
    /// nothing; a batch that ended otherwise is a 409.
    pub async fn cancel(&self, id: &str, owner: &str) -> Result<Value, GatewayError> {
        let b = self.get(id, owner).await?;
        match b.status {
            Status::Cancelling | Status::Cancelled | Status::Finalizing => return Ok(object(&b)),
            Status::Completed | Status::Failed | Status::Expired => {
                return Err(GatewayError::Conflict(format!(
                    "Cannot cancel a batch with status {}.",
                    b.status.as_str()
                )))
            }
            Status::Validating | Status::InProgress => {}
        }
        let key = id.to_string();
        let after = self
            .store
            .run(move |s| s.transition(&key, Status::Cancelling, store::now()))
            .await
            .map_err(internal)?
            .ok_or_else(|| no_such_batch(id))?;
        if after.status == Status::Cancelling {
            tracing::info!(batch = %id, status = "cancelling", "batch cancelling");
            if let Some(stop) = self.lock_running().get(id) {
                stop.cancel();
            }
        }
        self.update_gauges().await;
        Ok(object(&after))
    }
}

fn bad(message: impl Into<String>, param: &str) -> GatewayError {
    GatewayError::invalid(message, Some(param.to_string()))
}

fn no_such_batch(id: &str) -> GatewayError {
    GatewayError::NotFound {
        message: format!("No such Batch object: {id}"),
        param: Some("batch_id".into()),
    }
}

/// OpenAI's metadata rules: at most 16 pairs, keys up to 64 characters, string values up to
/// 512.
fn check_metadata(m: Value) -> Result<Value, GatewayError> {
    let Value::Object(map) = m else {
        return Err(bad("metadata must be an object of strings", "metadata"));
    };
    if map.len() > MAX_METADATA_PAIRS {
        return Err(bad(
            format!(
                "metadata has {} pairs; at most {MAX_METADATA_PAIRS}",
                map.len()
            ),
            "metadata",
        ));
    }
    for (k, v) in &map {
        if k.chars().count() > MAX_METADATA_KEY {
            return Err(bad(
                format!("metadata key `{k}` is longer than {MAX_METADATA_KEY} characters"),
                "metadata",
            ));
        }
        match v {
            Value::String(s) if s.chars().count() <= MAX_METADATA_VALUE => {}
            Value::String(_) => {
                return Err(bad(
                    format!(
                        "metadata value of `{k}` is longer than {MAX_METADATA_VALUE} characters"
                    ),
                    "metadata",
                ))
            }
            _ => {
                return Err(bad(
                    format!("metadata value of `{k}` must be a string"),
                    "metadata",
                ))
            }
        }
    }
    Ok(Value::Object(map))
}

/// OpenAI's list envelope; `first_id` and `last_id` are null for an empty page.
pub fn list_envelope(data: Vec<Value>, has_more: bool) -> Value {
    let id = |v: Option<&Value>| v.and_then(|b| b.get("id")).cloned().unwrap_or(Value::Null);
    json!({
        "object": "list",
        "first_id": id(data.first()),
        "last_id": id(data.last()),
        "has_more": has_more,
        "data": data,
    })
}

/// The Batch object, every key present (null when unset).
pub fn object(b: &BatchRow) -> Value {
    let published = |id: &str| {
        if b.published && !id.is_empty() {
            Value::String(id.to_string())
        } else {
            Value::Null
        }
    };
    let parse = |text: &Option<String>| {
        text.as_deref()
            .and_then(|t| serde_json::from_str::<Value>(t).ok())
            .unwrap_or(Value::Null)
    };
    let mut o = Map::new();
    o.insert("id".into(), b.id.clone().into());
    o.insert("object".into(), "batch".into());
    o.insert("endpoint".into(), b.endpoint.clone().into());
    o.insert(
        "model".into(),
        b.model.clone().map_or(Value::Null, Value::from),
    );
    o.insert("errors".into(), parse(&b.errors));
    o.insert("input_file_id".into(), b.input_file_id.clone().into());
    o.insert(
        "completion_window".into(),
        b.completion_window.clone().into(),
    );
    o.insert("status".into(), b.status.as_str().into());
    o.insert("output_file_id".into(), published(&b.output_file_id));
    o.insert("error_file_id".into(), published(&b.error_file_id));
    o.insert("created_at".into(), b.created_at.into());
    let at = |t: Option<i64>| t.map_or(Value::Null, Value::from);
    o.insert("in_progress_at".into(), at(b.in_progress_at));
    o.insert("expires_at".into(), b.expires_at.into());
    o.insert("finalizing_at".into(), at(b.finalizing_at));
    o.insert("completed_at".into(), at(b.completed_at));
    o.insert("failed_at".into(), at(b.failed_at));
    o.insert("expired_at".into(), at(b.expired_at));
    o.insert("cancelling_at".into(), at(b.cancelling_at));
    o.insert("cancelled_at".into(), at(b.cancelled_at));
    o.insert(
        "request_counts".into(),
        json!({"total": b.total, "completed": b.completed, "failed": b.failed}),
    );
    o.insert(
        "usage".into(),
        json!({
            "input_tokens": b.usage.input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": b.usage.output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": b.usage.input_tokens + b.usage.output_tokens,
        }),
    );
    o.insert("metadata".into(), parse(&b.metadata));
    Value::Object(o)
}
