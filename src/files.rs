//! Stored files (`/v1/files`): their bytes on disk under `--data-dir`, their records in the
//! store. An upload is streamed to a temporary file, never held whole; it becomes a file when
//! its bytes are synced to disk and renamed into place, and only then is its record stored.
//! Expired files are removed by a background task; the total is bounded by a quota.
//!
//! Layout of the data directory:
//! ```text
//! DATA_DIR/state.db            the store (SQLite)
//! DATA_DIR/files/FILE_ID       a file's exact bytes
//! DATA_DIR/files/FILE_ID.part  an upload in progress (removed at start-up)
//! DATA_DIR/batches/BATCH_ID/   a running batch's output and error lines, until published
//! ```

use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::store::{self, FileRow, Shared};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// How often expired files are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// Most expired files removed per sweep (the rest wait for the next one).
const SWEEP_MAX: usize = 1000;

/// What a file may be uploaded for. `batch` files are a batch's input (JSONL); `vision` files
/// are images referenced by id; `user_data` is kept as it is.
pub const UPLOAD_PURPOSES: [&str; 3] = ["batch", "vision", "user_data"];
/// The purpose of the files a batch writes.
pub const OUTPUT_PURPOSE: &str = "batch_output";

#[derive(Debug, Clone)]
pub struct Files {
    dir: PathBuf,
    pub store: Shared,
    pub max_file_bytes: u64,
    pub quota_bytes: u64,
    metrics: Metrics,
}

/// An upload being written: its bytes so far.
#[derive(Debug)]
pub struct Upload {
    id: String,
    part: PathBuf,
    file: tokio::fs::File,
    pub written: u64,
    /// Bytes the store held when the upload began, for the quota.
    used_before: u64,
}

impl Files {
    /// Open the data directory (creating it) and remove what an interrupted run left: partial
    /// uploads, and file bytes whose record was never stored. Blocking: called once at
    /// start-up, before anything is served.
    pub fn open(
        data_dir: &Path,
        store: Shared,
        max_file_bytes: u64,
        quota_bytes: u64,
        metrics: Metrics,
    ) -> anyhow::Result<Files> {
        let files = Files {
            dir: data_dir.to_path_buf(),
            store,
            max_file_bytes,
            quota_bytes,
            metrics,
        };
        std::fs::create_dir_all(files.files_dir())?;
        std::fs::create_dir_all(files.batches_dir())?;
        files.remove_orphans()?;
        if let Ok(used) = files.store.0.used_bytes() {
            files.metrics.set_files_bytes(used);
        }
        Ok(files)
    }

    fn files_dir(&self) -> PathBuf {
        self.dir.join("files")
    }

    pub fn batches_dir(&self) -> PathBuf {
        self.dir.join("batches")
    }

    /// Where a stored file's bytes are.
    pub fn path(&self, id: &str) -> PathBuf {
        self.files_dir().join(id)
    }

    fn remove_orphans(&self) -> anyhow::Result<()> {
        let store = &self.store.0;
        // Outputs of batches not yet published have bytes but no record yet.
        let pending: Vec<String> = store
            .unfinished_batches()?
            .into_iter()
            .flat_map(|b| [b.output_file_id, b.error_file_id])
            .collect();
        for entry in std::fs::read_dir(self.files_dir())? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let orphan = name.ends_with(".part")
                || (!pending.contains(&name) && store.file(&name)?.is_none());
            if orphan {
                tracing::info!(file = %name, "removing a file left by an interrupted run");
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    /// Start an upload: a new id and an empty temporary file. Refused with 413 when the store
    /// is already at its quota.
    pub async fn begin_upload(&self) -> Result<Upload, GatewayError> {
        let used_before = self.store.run(|s| s.used_bytes()).await.map_err(internal)?;
        if used_before >= self.quota_bytes {
            return Err(self.over_quota(used_before));
        }
        let id = new_file_id();
        let part = self.files_dir().join(format!("{id}.part"));
        let file = tokio::fs::File::create(&part)
            .await
            .map_err(|e| GatewayError::Internal(format!("cannot create an upload file: {e}")))?;
        Ok(Upload {
            id,
            part,
            file,
            written: 0,
            used_before,
        })
    }

    fn over_quota(&self, used: u64) -> GatewayError {
        GatewayError::TooLarge {
            message: format!(
                "storing this file would exceed the gateway's files quota ({} bytes; {used} \
                 in use): delete files or wait for them to expire",
                self.quota_bytes
            ),
            param: Some("file".into()),
        }
    }

    /// Append a piece of the upload, refusing it once it passes the size limit or the quota.
    pub async fn write(&self, up: &mut Upload, chunk: &[u8]) -> Result<(), GatewayError> {
        let written = up.written + chunk.len() as u64;
        if written > self.max_file_bytes {
            return Err(GatewayError::too_large(
                format!(
                    "the file exceeds the gateway's max_file_bytes ({})",
                    self.max_file_bytes
                ),
                Some("file".into()),
            ));
        }
        if up.used_before + written > self.quota_bytes {
            return Err(self.over_quota(up.used_before));
        }
        up.file
            .write_all(chunk)
            .await
            .map_err(|e| GatewayError::Internal(format!("cannot write the upload: {e}")))?;
        up.written = written;
        Ok(())
    }

    /// The upload is complete: sync it, move it into place and store its record, owned by
    /// `owner` (the uploading key's name, "" without keys).
    pub async fn finish_upload(
        &self,
        mut up: Upload,
        filename: String,
        purpose: String,
        expires_at: Option<i64>,
        owner: &str,
    ) -> Result<FileRow, GatewayError> {
        let io = |e: std::io::Error| GatewayError::Internal(format!("cannot store the file: {e}"));
        up.file.flush().await.map_err(io)?;
        up.file.sync_all().await.map_err(io)?;
        drop(up.file);
        let path = self.path(&up.id);
        tokio::fs::rename(&up.part, &path).await.map_err(io)?;
        let row = FileRow {
            id: up.id,
            bytes: up.written,
            created_at: store::now(),
            filename,
            purpose,
            expires_at,
            owner: owner.to_string(),
        };
        let stored = row.clone();
        if let Err(e) = self.store.run(move |s| s.insert_file(&stored)).await {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(internal(e));
        }
        self.update_gauge().await;
        Ok(row)
    }

    /// Give up an upload: its temporary file is removed.
    pub async fn abandon(&self, up: Upload) {
        drop(up.file);
        let _ = tokio::fs::remove_file(&up.part).await;
    }

    /// The file `id` if `owner` owns it; another owner's file is answered exactly as one that
    /// does not exist.
    pub async fn get(&self, id: &str, owner: &str) -> Result<FileRow, GatewayError> {
        let key = id.to_string();
        self.store
            .run(move |s| s.file(&key))
            .await
            .map_err(internal)?
            .filter(|f| f.owner == owner)
            .ok_or_else(|| no_such_file(id))
    }

    /// Delete a file: its record, then its bytes. A batch's input file cannot be deleted while
    /// the batch runs (409). With `owner`, only that owner's file (another's is not found,
    /// checked before anything else so that a 409 tells nothing of others' files); None is
    /// the expiry sweep, for every owner.
    pub async fn delete(&self, id: &str, owner: Option<&str>) -> Result<(), GatewayError> {
        if let Some(owner) = owner {
            self.get(id, owner).await?;
        }
        let key = id.to_string();
        if let Some(batch) = self
            .store
            .run(move |s| s.batch_reading(&key))
            .await
            .map_err(internal)?
        {
            return Err(GatewayError::Conflict(format!(
                "file {id} is the input of batch {batch}, which is still running"
            )));
        }
        let key = id.to_string();
        if !self
            .store
            .run(move |s| s.delete_file(&key))
            .await
            .map_err(internal)?
        {
            return Err(no_such_file(id));
        }
        let _ = tokio::fs::remove_file(self.path(id)).await;
        self.update_gauge().await;
        Ok(())
    }

    pub async fn update_gauge(&self) {
        if let Ok(used) = self.store.run(|s| s.used_bytes()).await {
            self.metrics.set_files_bytes(used);
        }
    }

    /// Remove expired files, every minute, until cancelled.
    pub async fn sweep(self, cancel: tokio_util::sync::CancellationToken) {
        loop {
            match self
                .store
                .run(|s| s.expired_files(store::now(), SWEEP_MAX))
                .await
            {
                Ok(expired) => {
                    for f in expired {
                        let id = f.id.clone();
                        match self.delete(&id, None).await {
                            Ok(()) => tracing::info!(file = %id, "expired file removed"),
                            Err(e) => tracing::debug!(file = %id, error = %e, "expired file kept"),
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot look for expired files"),
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(SWEEP_EVERY) => {}
            }
        }
    }
}

pub fn new_file_id() -> String {
    format!("file-{}", uuid::Uuid::new_v4().simple())
}

pub fn no_such_file(id: &str) -> GatewayError {
    GatewayError::NotFound {
        message: format!("No such File object: {id}"),
        param: Some("file_id".into()),
    }
}

/// A store failure, as the client sees it: a 500 with no detail of the database.
pub fn internal(e: store::StoreError) -> GatewayError {
    tracing::error!(error = %e, "store failed");
    GatewayError::Internal("the gateway's store failed".into())
}
