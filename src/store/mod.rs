//! Durable state of the files and batch APIs: file records, batches, and each batch's lines.
//!
//! [`Store`] is the whole interface the rest of the gateway uses, so that a server database
//! could stand in for the embedded one ([`sqlite::Sqlite`], the default) when several
//! replicas must share batches. Every method is one transaction: a state change is either
//! stored whole or not at all. The methods are blocking; async callers run them on the
//! blocking pool ([`Shared::run`]).
//!
//! Exactly once per line rests on one rule: a line counts as done only when
//! [`Store::commit_lines`] has stored it together with the new committed lengths of the
//! batch's output and error files. Bytes past a committed length belong to lines that were not
//! recorded (a kill between the write and the commit) and are cut off before a batch resumes.

pub mod sqlite;

use std::sync::Arc;

/// A stored file (`/v1/files`), as the Files API describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRow {
    pub id: String,
    pub bytes: u64,
    pub created_at: i64,
    pub filename: String,
    pub purpose: String,
    pub expires_at: Option<i64>,
    /// Who may see it: the name of the key that uploaded it (a batch's output: the batch's
    /// owner), or "" when it was made without keys.
    pub owner: String,
}

/// Where a listing starts and which way it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Asc,
    Desc,
}

/// A batch's lifecycle, with OpenAI's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Validating,
    Failed,
    InProgress,
    Finalizing,
    Completed,
    Expired,
    Cancelling,
    Cancelled,
}

impl Status {
    pub const ALL: [Status; 8] = [
        Status::Validating,
        Status::Failed,
        Status::InProgress,
        Status::Finalizing,
        Status::Completed,
        Status::Expired,
        Status::Cancelling,
        Status::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Validating => "validating",
            Status::Failed => "failed",
            Status::InProgress => "in_progress",
            Status::Finalizing => "finalizing",
            Status::Completed => "completed",
            Status::Expired => "expired",
            Status::Cancelling => "cancelling",
            Status::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// No transition leaves this status.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Status::Failed | Status::Completed | Status::Expired | Status::Cancelled
        )
    }

    /// The only transitions there are: validating → in_progress | failed | cancelling;
    /// in_progress → finalizing | cancelling | expired; finalizing → completed;
    /// cancelling → cancelled.
    pub fn may_become(self, next: Status) -> bool {
        use Status::*;
        matches!(
            (self, next),
            (Validating, InProgress | Failed | Cancelling)
                | (InProgress, Finalizing | Cancelling | Expired)
                | (Finalizing, Completed)
                | (Cancelling, Cancelled)
        )
    }
}

/// Token counts summed over a batch's lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// A batch as stored. Each `*_at` is set once, when its status is entered.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchRow {
    pub id: String,
    /// The name of the key that created it ("" without keys): only that key sees it, and its
    /// lines run as that key.
    pub owner: String,
    pub endpoint: String,
    pub model: Option<String>,
    pub input_file_id: String,
    pub completion_window: String,
    pub status: Status,
    pub output_file_id: String,
    pub error_file_id: String,
    /// Whether the output and error files have been published (file rows exist).
    pub published: bool,
    pub created_at: i64,
    pub in_progress_at: Option<i64>,
    pub expires_at: i64,
    pub finalizing_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub failed_at: Option<i64>,
    pub expired_at: Option<i64>,
    pub cancelling_at: Option<i64>,
    pub cancelled_at: Option<i64>,
    pub total: u64,
    pub completed: u64,
    pub failed: u64,
    pub usage: Usage,
    /// `metadata` as JSON text (an object of strings), or None.
    pub metadata: Option<String>,
    /// The validation errors as JSON text (`{"object": "list", "data": [...]}`), or None.
    pub errors: Option<String>,
    /// Committed lengths of the output and error files: bytes past these belong to lines that
    /// were never recorded.
    pub output_bytes: u64,
    pub error_bytes: u64,
}

/// One line of an input file that passed validation: where it is and its `custom_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineRow {
    /// 1-based line number in the input file.
    pub line: u64,
    pub offset: u64,
    pub len: u64,
    pub custom_id: String,
}

/// How a line ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineOutcome {
    /// In the output file.
    Completed,
    /// In the error file (a failed request, or not executed: cancelled, expired).
    Failed,
}

/// A group of finished lines, recorded together with the files' new committed lengths.
#[derive(Debug, Default)]
pub struct Commit {
    pub lines: Vec<(u64, LineOutcome)>,
    pub output_bytes: u64,
    pub error_bytes: u64,
    pub usage: Usage,
}

/// A store error: the database failed (I/O, corruption, a bug). Callers answer 500.
#[derive(Debug, thiserror::Error)]
#[error("store: {0}")]
pub struct StoreError(pub String);

pub type Result<T> = std::result::Result<T, StoreError>;

/// The durable state behind `/v1/files` and `/v1/batches`. Every method is one transaction.
pub trait Store: Send + Sync + std::fmt::Debug {
    fn insert_file(&self, file: &FileRow) -> Result<()>;
    /// The file `id`, whoever owns it (callers that answer a client check the owner).
    fn file(&self, id: &str) -> Result<Option<FileRow>>;
    /// `owner`'s files in creation order (`order`), after `owner`'s file `after` if given, at
    /// most `limit`.
    fn list_files(
        &self,
        owner: &str,
        purpose: Option<&str>,
        after: Option<&str>,
        limit: usize,
        order: Order,
    ) -> Result<Vec<FileRow>>;
    /// Remove the record; false if there was none.
    fn delete_file(&self, id: &str) -> Result<bool>;
    /// Files whose `expires_at` is at or before `now`.
    fn expired_files(&self, now: i64, limit: usize) -> Result<Vec<FileRow>>;
    /// Bytes of every stored file, plus the committed output of unpublished batches.
    fn used_bytes(&self) -> Result<u64>;
    /// The id of a batch that is not terminal and reads `file_id`, if any.
    fn batch_reading(&self, file_id: &str) -> Result<Option<String>>;

    fn insert_batch(&self, batch: &BatchRow) -> Result<()>;
    /// The batch `id`, whoever owns it (callers that answer a client check the owner).
    fn batch(&self, id: &str) -> Result<Option<BatchRow>>;
    /// `owner`'s batches, newest first, after `owner`'s batch `after` if given, at most
    /// `limit`.
    fn list_batches(&self, owner: &str, after: Option<&str>, limit: usize)
        -> Result<Vec<BatchRow>>;
    /// Batches a runner must pick up after a restart (validating, in progress, finalizing,
    /// cancelling), oldest first.
    fn unfinished_batches(&self) -> Result<Vec<BatchRow>>;
    /// How many batches are in each status.
    fn count_by_status(&self) -> Result<Vec<(Status, u64)>>;
    /// Move the batch to `to` if its status allows it, setting `to`'s timestamp to `at`.
    /// Returns the batch as it is afterwards, changed or not (None if unknown).
    fn transition(&self, id: &str, to: Status, at: i64) -> Result<Option<BatchRow>>;
    /// Validation passed: store the lines, the model and the total, and enter in_progress.
    /// Any lines from an earlier, interrupted validation are replaced.
    fn start_batch(
        &self,
        id: &str,
        model: &str,
        lines: &mut dyn Iterator<Item = LineRow>,
        at: i64,
    ) -> Result<()>;
    /// Validation failed: store the errors and enter failed.
    fn fail_batch(&self, id: &str, errors_json: &str, at: i64) -> Result<()>;
    /// Lines not yet done, in line order, after line `after`, at most `limit`.
    fn pending_lines(&self, id: &str, after: u64, limit: usize) -> Result<Vec<LineRow>>;
    /// Record finished lines and the new committed file lengths, and add to the counts.
    fn commit_lines(&self, id: &str, commit: &Commit) -> Result<()>;
    /// Publish the output and error files (their rows, only those with bytes) and enter the
    /// terminal status `to` (completed through finalizing, cancelled, expired), at once.
    fn finish_batch(&self, id: &str, to: Status, files: &[FileRow], at: i64) -> Result<()>;
}

/// The store, shared, with an async face: each call runs on the blocking pool.
#[derive(Debug, Clone)]
pub struct Shared(pub Arc<dyn Store>);

impl Shared {
    pub async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Store) -> Result<T> + Send + 'static,
    {
        let store = self.0.clone();
        tokio::task::spawn_blocking(move || f(store.as_ref()))
            .await
            .map_err(|e| StoreError(format!("store task failed: {e}")))?
    }
}

/// Seconds since the Unix epoch, as the APIs give times.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
