//! The embedded store: one SQLite database under `--data-dir` (WAL, `synchronous=NORMAL`).
//!
//! WAL with `synchronous=NORMAL` makes each commit survive a crash of the process (SIGKILL
//! included) at once; after a power loss the last commits before it may be rolled back, which
//! is consistent too (the file bytes of a rolled-back commit are cut off at restart, and those
//! lines run again). One connection behind a mutex: every method is a short transaction, and
//! the batch runner groups many lines into one commit.

use super::{
    BatchRow, Commit, FileRow, LineOutcome, LineRow, Order, Result, Status, Store, StoreError,
    Usage,
};
use rusqlite::{params, Connection, OptionalExtension, Row};
use std::path::Path;
use std::sync::Mutex;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    filename TEXT NOT NULL,
    purpose TEXT NOT NULL,
    expires_at INTEGER,
    owner TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS files_expiry ON files (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    endpoint TEXT NOT NULL,
    model TEXT,
    input_file_id TEXT NOT NULL,
    completion_window TEXT NOT NULL,
    status TEXT NOT NULL,
    output_file_id TEXT NOT NULL,
    error_file_id TEXT NOT NULL,
    published INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    in_progress_at INTEGER,
    expires_at INTEGER NOT NULL,
    finalizing_at INTEGER,
    completed_at INTEGER,
    failed_at INTEGER,
    expired_at INTEGER,
    cancelling_at INTEGER,
    cancelled_at INTEGER,
    total INTEGER NOT NULL DEFAULT 0,
    completed INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    metadata TEXT,
    errors TEXT,
    output_bytes INTEGER NOT NULL DEFAULT 0,
    error_bytes INTEGER NOT NULL DEFAULT 0,
    owner TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS lines (
    batch_id TEXT NOT NULL,
    line INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    len INTEGER NOT NULL,
    custom_id TEXT NOT NULL,
    -- 0 pending, 1 completed (output file), 2 failed (error file)
    state INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (batch_id, line)
) WITHOUT ROWID;
";

/// Run once the `owner` columns exist (a database from before them is migrated first).
const OWNER_INDEXES: &str = "
CREATE INDEX IF NOT EXISTS files_owner ON files (owner, seq);
CREATE INDEX IF NOT EXISTS batches_owner ON batches (owner, seq);
";

/// Tables that gained a column since the first schema, and the column as it is added to a
/// database created before it (rows from before get the default).
const ADDED_COLUMNS: [(&str, &str, &str); 2] = [
    ("files", "owner", "owner TEXT NOT NULL DEFAULT ''"),
    ("batches", "owner", "owner TEXT NOT NULL DEFAULT ''"),
];

const FILE_COLUMNS: &str = "id, bytes, created_at, filename, purpose, expires_at, owner";

const BATCH_COLUMNS: &str = "id, endpoint, model, input_file_id, completion_window, status, \
    output_file_id, error_file_id, published, created_at, in_progress_at, expires_at, \
    finalizing_at, completed_at, failed_at, expired_at, cancelling_at, cancelled_at, total, \
    completed, failed, input_tokens, output_tokens, metadata, errors, output_bytes, error_bytes, \
    owner";

#[derive(Debug)]
pub struct Sqlite {
    conn: Mutex<Connection>,
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

impl Sqlite {
    /// Open (or create) the database at `path`.
    pub fn open(path: &Path) -> Result<Sqlite> {
        let conn = Connection::open(path).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        migrate(&conn).map_err(err)?;
        conn.execute_batch(OWNER_INDEXES).map_err(err)?;
        Ok(Sqlite {
            conn: Mutex::new(conn),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T> {
        let mut conn = self
            .conn
            .lock()
            .map_err(|_| StoreError("the store's lock was poisoned".into()))?;
        f(&mut conn).map_err(err)
    }
}

/// Add the columns a database created by an earlier version lacks.
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    for (table, column, definition) in ADDED_COLUMNS {
        let has = {
            let mut st = conn.prepare(&format!("PRAGMA table_info({table})"))?;
            let names = st.query_map([], |r| r.get::<_, String>(1))?;
            let mut found = false;
            for name in names {
                found |= name? == column;
            }
            found
        };
        if !has {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {definition}"))?;
            tracing::info!(table, column, "store migrated: column added");
        }
    }
    Ok(())
}

fn file_row(r: &Row<'_>) -> rusqlite::Result<FileRow> {
    Ok(FileRow {
        id: r.get(0)?,
        bytes: r.get::<_, i64>(1)? as u64,
        created_at: r.get(2)?,
        filename: r.get(3)?,
        purpose: r.get(4)?,
        expires_at: r.get(5)?,
        owner: r.get(6)?,
    })
}

fn batch_row(r: &Row<'_>) -> rusqlite::Result<BatchRow> {
    let status: String = r.get(5)?;
    let status = Status::parse(&status).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            5,
            rusqlite::types::Type::Text,
            format!("unknown batch status {status:?}").into(),
        )
    })?;
    let u = |i: usize| -> rusqlite::Result<u64> { Ok(r.get::<_, i64>(i)? as u64) };
    Ok(BatchRow {
        id: r.get(0)?,
        endpoint: r.get(1)?,
        model: r.get(2)?,
        input_file_id: r.get(3)?,
        completion_window: r.get(4)?,
        status,
        output_file_id: r.get(6)?,
        error_file_id: r.get(7)?,
        published: r.get::<_, i64>(8)? != 0,
        created_at: r.get(9)?,
        in_progress_at: r.get(10)?,
        expires_at: r.get(11)?,
        finalizing_at: r.get(12)?,
        completed_at: r.get(13)?,
        failed_at: r.get(14)?,
        expired_at: r.get(15)?,
        cancelling_at: r.get(16)?,
        cancelled_at: r.get(17)?,
        total: u(18)?,
        completed: u(19)?,
        failed: u(20)?,
        usage: Usage {
            input_tokens: u(21)?,
            output_tokens: u(22)?,
        },
        metadata: r.get(23)?,
        errors: r.get(24)?,
        output_bytes: u(25)?,
        error_bytes: u(26)?,
        owner: r.get(27)?,
    })
}

fn get_batch(conn: &Connection, id: &str) -> rusqlite::Result<Option<BatchRow>> {
    conn.query_row(
        &format!("SELECT {BATCH_COLUMNS} FROM batches WHERE id = ?1"),
        [id],
        batch_row,
    )
    .optional()
}

/// The column holding the time `status` was entered.
fn timestamp_column(status: Status) -> &'static str {
    match status {
        Status::Validating => "created_at",
        Status::Failed => "failed_at",
        Status::InProgress => "in_progress_at",
        Status::Finalizing => "finalizing_at",
        Status::Completed => "completed_at",
        Status::Expired => "expired_at",
        Status::Cancelling => "cancelling_at",
        Status::Cancelled => "cancelled_at",
    }
}

/// Set `to` and its timestamp (only if not set yet), checking the transition is allowed.
fn enter(tx: &Connection, id: &str, from: Status, to: Status, at: i64) -> rusqlite::Result<()> {
    debug_assert!(from.may_become(to), "{from:?} -> {to:?}");
    let column = timestamp_column(to);
    tx.execute(
        &format!(
            "UPDATE batches SET status = ?2, {column} = COALESCE({column}, ?3) \
             WHERE id = ?1 AND status = ?4"
        ),
        params![id, to.as_str(), at, from.as_str()],
    )?;
    Ok(())
}

impl Store for Sqlite {
    fn insert_file(&self, f: &FileRow) -> Result<()> {
        self.with(|c| {
            c.execute(
                &format!("INSERT INTO files ({FILE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"),
                params![
                    f.id,
                    f.bytes as i64,
                    f.created_at,
                    f.filename,
                    f.purpose,
                    f.expires_at,
                    f.owner
                ],
            )?;
            Ok(())
        })
    }

    fn file(&self, id: &str) -> Result<Option<FileRow>> {
        self.with(|c| {
            c.query_row(
                &format!("SELECT {FILE_COLUMNS} FROM files WHERE id = ?1"),
                [id],
                file_row,
            )
            .optional()
        })
    }

    fn list_files(
        &self,
        owner: &str,
        purpose: Option<&str>,
        after: Option<&str>,
        limit: usize,
        order: Order,
    ) -> Result<Vec<FileRow>> {
        let (cmp, dir) = match order {
            Order::Asc => (">", "ASC"),
            Order::Desc => ("<", "DESC"),
        };
        self.with(|c| {
            // An unknown `after` id (or another owner's) yields nothing, as a cursor past the
            // end would.
            let sql = format!(
                "SELECT {FILE_COLUMNS} FROM files \
                 WHERE owner = ?4 AND (?1 IS NULL OR purpose = ?1) \
                 AND (?2 IS NULL OR seq {cmp} (SELECT seq FROM files WHERE id = ?2 AND owner = ?4)) \
                 ORDER BY seq {dir} LIMIT ?3"
            );
            let mut st = c.prepare_cached(&sql)?;
            let rows = st.query_map(params![purpose, after, limit as i64, owner], file_row)?;
            rows.collect()
        })
    }

    fn delete_file(&self, id: &str) -> Result<bool> {
        self.with(|c| Ok(c.execute("DELETE FROM files WHERE id = ?1", [id])? > 0))
    }

    fn expired_files(&self, now: i64, limit: usize) -> Result<Vec<FileRow>> {
        self.with(|c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT {FILE_COLUMNS} FROM files \
                 WHERE expires_at IS NOT NULL AND expires_at <= ?1 ORDER BY expires_at LIMIT ?2"
            ))?;
            let rows = st.query_map(params![now, limit as i64], file_row)?;
            rows.collect()
        })
    }

    fn used_bytes(&self) -> Result<u64> {
        self.with(|c| {
            let files: i64 = c.query_row("SELECT COALESCE(SUM(bytes), 0) FROM files", [], |r| {
                r.get(0)
            })?;
            let running: i64 = c.query_row(
                "SELECT COALESCE(SUM(output_bytes + error_bytes), 0) FROM batches \
                 WHERE published = 0",
                [],
                |r| r.get(0),
            )?;
            Ok((files + running) as u64)
        })
    }

    fn batch_reading(&self, file_id: &str) -> Result<Option<String>> {
        self.with(|c| {
            c.query_row(
                "SELECT id FROM batches WHERE input_file_id = ?1 AND status IN \
                 ('validating', 'in_progress', 'finalizing', 'cancelling') LIMIT 1",
                [file_id],
                |r| r.get(0),
            )
            .optional()
        })
    }

    fn insert_batch(&self, b: &BatchRow) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO batches (id, endpoint, model, input_file_id, completion_window, \
                 status, output_file_id, error_file_id, created_at, expires_at, metadata, owner) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                params![
                    b.id,
                    b.endpoint,
                    b.model,
                    b.input_file_id,
                    b.completion_window,
                    b.status.as_str(),
                    b.output_file_id,
                    b.error_file_id,
                    b.created_at,
                    b.expires_at,
                    b.metadata,
                    b.owner
                ],
            )?;
            Ok(())
        })
    }

    fn batch(&self, id: &str) -> Result<Option<BatchRow>> {
        self.with(|c| get_batch(c, id))
    }

    fn list_batches(
        &self,
        owner: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<BatchRow>> {
        self.with(|c| {
            let sql = format!(
                "SELECT {BATCH_COLUMNS} FROM batches WHERE owner = ?3 \
                 AND (?1 IS NULL OR seq < (SELECT seq FROM batches WHERE id = ?1 AND owner = ?3)) \
                 ORDER BY seq DESC LIMIT ?2"
            );
            let mut st = c.prepare_cached(&sql)?;
            let rows = st.query_map(params![after, limit as i64, owner], batch_row)?;
            rows.collect()
        })
    }

    fn unfinished_batches(&self) -> Result<Vec<BatchRow>> {
        self.with(|c| {
            let sql = format!(
                "SELECT {BATCH_COLUMNS} FROM batches WHERE status IN \
                 ('validating', 'in_progress', 'finalizing', 'cancelling') ORDER BY seq"
            );
            let mut st = c.prepare(&sql)?;
            let rows = st.query_map([], batch_row)?;
            rows.collect()
        })
    }

    fn count_by_status(&self) -> Result<Vec<(Status, u64)>> {
        self.with(|c| {
            let mut st =
                c.prepare_cached("SELECT status, COUNT(*) FROM batches GROUP BY status")?;
            let rows = st.query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (s, n) = row?;
                if let Some(s) = Status::parse(&s) {
                    out.push((s, n));
                }
            }
            Ok(out)
        })
    }

    fn transition(&self, id: &str, to: Status, at: i64) -> Result<Option<BatchRow>> {
        self.with(|c| {
            let tx = c.transaction()?;
            let Some(b) = get_batch(&tx, id)? else {
                return Ok(None);
            };
            if b.status.may_become(to) {
                enter(&tx, id, b.status, to, at)?;
            }
            let after = get_batch(&tx, id)?;
            tx.commit()?;
            Ok(after)
        })
    }

    fn start_batch(
        &self,
        id: &str,
        model: &str,
        lines: &mut dyn Iterator<Item = LineRow>,
        at: i64,
    ) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute("DELETE FROM lines WHERE batch_id = ?1", [id])?;
            let mut total: i64 = 0;
            {
                let mut st = tx.prepare_cached(
                    "INSERT INTO lines (batch_id, line, offset, len, custom_id) \
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?;
                for l in lines {
                    st.execute(params![
                        id,
                        l.line as i64,
                        l.offset as i64,
                        l.len as i64,
                        l.custom_id
                    ])?;
                    total += 1;
                }
            }
            tx.execute(
                "UPDATE batches SET model = ?2, total = ?3 WHERE id = ?1",
                params![id, model, total],
            )?;
            enter(&tx, id, Status::Validating, Status::InProgress, at)?;
            tx.commit()
        })
    }

    fn fail_batch(&self, id: &str, errors_json: &str, at: i64) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute("DELETE FROM lines WHERE batch_id = ?1", [id])?;
            tx.execute(
                "UPDATE batches SET errors = ?2 WHERE id = ?1",
                params![id, errors_json],
            )?;
            enter(&tx, id, Status::Validating, Status::Failed, at)?;
            tx.commit()
        })
    }

    fn pending_lines(&self, id: &str, after: u64, limit: usize) -> Result<Vec<LineRow>> {
        self.with(|c| {
            let mut st = c.prepare_cached(
                "SELECT line, offset, len, custom_id FROM lines \
                 WHERE batch_id = ?1 AND state = 0 AND line > ?2 ORDER BY line LIMIT ?3",
            )?;
            let rows = st.query_map(params![id, after as i64, limit as i64], |r| {
                Ok(LineRow {
                    line: r.get::<_, i64>(0)? as u64,
                    offset: r.get::<_, i64>(1)? as u64,
                    len: r.get::<_, i64>(2)? as u64,
                    custom_id: r.get(3)?,
                })
            })?;
            rows.collect()
        })
    }

    fn commit_lines(&self, id: &str, commit: &Commit) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            let (mut done, mut failed) = (0i64, 0i64);
            {
                let mut st = tx.prepare_cached(
                    "UPDATE lines SET state = ?3 WHERE batch_id = ?1 AND line = ?2 AND state = 0",
                )?;
                for (line, outcome) in &commit.lines {
                    let state = match outcome {
                        LineOutcome::Completed => 1,
                        LineOutcome::Failed => 2,
                    };
                    if st.execute(params![id, *line as i64, state])? == 1 {
                        match outcome {
                            LineOutcome::Completed => done += 1,
                            LineOutcome::Failed => failed += 1,
                        }
                    }
                }
            }
            tx.execute(
                "UPDATE batches SET completed = completed + ?2, failed = failed + ?3, \
                 input_tokens = input_tokens + ?4, output_tokens = output_tokens + ?5, \
                 output_bytes = ?6, error_bytes = ?7 WHERE id = ?1",
                params![
                    id,
                    done,
                    failed,
                    commit.usage.input_tokens as i64,
                    commit.usage.output_tokens as i64,
                    commit.output_bytes as i64,
                    commit.error_bytes as i64
                ],
            )?;
            tx.commit()
        })
    }

    fn finish_batch(&self, id: &str, to: Status, files: &[FileRow], at: i64) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            let Some(b) = get_batch(&tx, id)? else {
                return Ok(());
            };
            if b.published {
                return Ok(());
            }
            for f in files {
                // A batch's output belongs to the batch's owner, whatever the row says.
                tx.execute(
                    &format!(
                        "INSERT OR IGNORE INTO files ({FILE_COLUMNS}) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
                    ),
                    params![
                        f.id,
                        f.bytes as i64,
                        f.created_at,
                        f.filename,
                        f.purpose,
                        f.expires_at,
                        b.owner
                    ],
                )?;
            }
            let has = |fid: &str| files.iter().any(|f| f.id == fid);
            // A file with no line in it is not published: its id becomes null.
            tx.execute(
                "UPDATE batches SET published = 1, \
                 output_file_id = CASE WHEN ?2 THEN output_file_id ELSE '' END, \
                 error_file_id = CASE WHEN ?3 THEN error_file_id ELSE '' END WHERE id = ?1",
                params![id, has(&b.output_file_id), has(&b.error_file_id)],
            )?;
            let mut from = b.status;
            if to == Status::Completed && from == Status::InProgress {
                enter(&tx, id, from, Status::Finalizing, at)?;
                from = Status::Finalizing;
            }
            if from.may_become(to) {
                enter(&tx, id, from, to, at)?;
            }
            tx.commit()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(id: &str) -> BatchRow {
        BatchRow {
            id: id.into(),
            endpoint: "/v1/chat/completions".into(),
            model: None,
            input_file_id: "file-in".into(),
            completion_window: "24h".into(),
            status: Status::Validating,
            output_file_id: format!("file-out-{id}"),
            error_file_id: format!("file-err-{id}"),
            published: false,
            created_at: 100,
            in_progress_at: None,
            expires_at: 100 + 86400,
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
            metadata: None,
            errors: None,
            output_bytes: 0,
            error_bytes: 0,
            owner: String::new(),
        }
    }

    fn line(n: u64) -> LineRow {
        LineRow {
            line: n,
            offset: n * 10,
            len: 9,
            custom_id: format!("c{n}"),
        }
    }

    #[test]
    fn lines_commit_once_and_state_survives_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.db");
        {
            let s = Sqlite::open(&path).expect("open");
            s.insert_batch(&batch("b1")).expect("insert");
            s.start_batch("b1", "caprl", &mut (1..=5).map(line), 101)
                .expect("start");
            let commit = Commit {
                lines: vec![(1, LineOutcome::Completed), (2, LineOutcome::Failed)],
                output_bytes: 50,
                error_bytes: 20,
                usage: Usage {
                    input_tokens: 7,
                    output_tokens: 3,
                },
            };
            s.commit_lines("b1", &commit).expect("commit");
            // The same lines again (a retried commit) count once.
            s.commit_lines("b1", &commit).expect("commit again");
        }
        let s = Sqlite::open(&path).expect("reopen");
        let b = s.batch("b1").expect("get").expect("exists");
        assert_eq!(b.status, Status::InProgress);
        assert_eq!(b.in_progress_at, Some(101));
        assert_eq!((b.total, b.completed, b.failed), (5, 1, 1));
        assert_eq!((b.output_bytes, b.error_bytes), (50, 20));
        assert_eq!(b.usage.input_tokens, 14, "usage adds per commit call");
        let pending: Vec<u64> = s
            .pending_lines("b1", 0, 10)
            .expect("pending")
            .iter()
            .map(|l| l.line)
            .collect();
        assert_eq!(pending, vec![3, 4, 5]);
        assert_eq!(s.pending_lines("b1", 3, 1).expect("page")[0].line, 4);
        assert_eq!(s.unfinished_batches().expect("unfinished").len(), 1);
    }

    #[test]
    fn only_allowed_transitions_happen_and_timestamps_are_set_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Sqlite::open(&dir.path().join("state.db")).expect("open");
        s.insert_batch(&batch("b1")).expect("insert");
        // validating -> completed is not a transition: nothing changes.
        let b = s
            .transition("b1", Status::Completed, 5)
            .expect("t")
            .expect("b");
        assert_eq!(b.status, Status::Validating);
        assert_eq!(b.completed_at, None);
        let b = s
            .transition("b1", Status::Cancelling, 7)
            .expect("t")
            .expect("b");
        assert_eq!((b.status, b.cancelling_at), (Status::Cancelling, Some(7)));
        let b = s
            .transition("b1", Status::Cancelling, 9)
            .expect("t")
            .expect("b");
        assert_eq!(b.cancelling_at, Some(7), "set once");
        s.finish_batch("b1", Status::Cancelled, &[], 11)
            .expect("finish");
        let b = s.batch("b1").expect("get").expect("b");
        assert_eq!((b.status, b.cancelled_at), (Status::Cancelled, Some(11)));
        assert_eq!(b.output_file_id, "", "no output file was published");
        assert!(s
            .transition("nope", Status::Failed, 1)
            .expect("t")
            .is_none());
    }

    #[test]
    fn file_listing_pages_in_both_orders() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Sqlite::open(&dir.path().join("state.db")).expect("open");
        for i in 0..5 {
            s.insert_file(&FileRow {
                id: format!("file-{i}"),
                bytes: 10,
                created_at: 1000 + i,
                filename: "a.jsonl".into(),
                purpose: if i % 2 == 0 { "batch" } else { "vision" }.into(),
                expires_at: (i == 4).then_some(1500),
                owner: String::new(),
            })
            .expect("insert");
        }
        let ids = |v: Vec<FileRow>| v.into_iter().map(|f| f.id).collect::<Vec<_>>();
        let asc = s
            .list_files("", None, Some("file-1"), 2, Order::Asc)
            .expect("list");
        assert_eq!(ids(asc), ["file-2", "file-3"]);
        let desc = s.list_files("", None, None, 2, Order::Desc).expect("list");
        assert_eq!(ids(desc), ["file-4", "file-3"]);
        let batch_only = s
            .list_files("", Some("batch"), None, 10, Order::Asc)
            .expect("list");
        assert_eq!(ids(batch_only), ["file-0", "file-2", "file-4"]);
        assert_eq!(ids(s.expired_files(1500, 10).expect("expired")), ["file-4"]);
        assert_eq!(s.used_bytes().expect("used"), 50);
        assert!(s.delete_file("file-4").expect("delete"));
        assert!(!s.delete_file("file-4").expect("delete again"));
    }

    #[test]
    fn listings_page_within_the_owners_rows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Sqlite::open(&dir.path().join("state.db")).expect("open");
        // a's and b's rows interleaved: a page of a's must not come back short or empty.
        for i in 0..6 {
            let owner = if i % 2 == 0 { "a" } else { "b" };
            s.insert_file(&FileRow {
                id: format!("file-{i}"),
                bytes: 1,
                created_at: i,
                filename: "x".into(),
                purpose: "batch".into(),
                expires_at: None,
                owner: owner.into(),
            })
            .expect("insert");
            let mut b = batch(&format!("b{i}"));
            b.owner = owner.into();
            s.insert_batch(&b).expect("insert");
        }
        let ids = |v: Vec<FileRow>| v.into_iter().map(|f| f.id).collect::<Vec<_>>();
        let first = s.list_files("a", None, None, 2, Order::Asc).expect("list");
        assert_eq!(ids(first), ["file-0", "file-2"]);
        let next = s
            .list_files("a", None, Some("file-2"), 2, Order::Asc)
            .expect("list");
        assert_eq!(ids(next), ["file-4"]);
        // Another owner's id is no cursor: nothing, as for an unknown id.
        assert!(s
            .list_files("a", None, Some("file-1"), 10, Order::Asc)
            .expect("list")
            .is_empty());
        let bids = |v: Vec<BatchRow>| v.into_iter().map(|b| b.id).collect::<Vec<_>>();
        assert_eq!(
            bids(s.list_batches("b", None, 2).expect("list")),
            ["b5", "b3"]
        );
        assert_eq!(
            bids(s.list_batches("b", Some("b3"), 2).expect("list")),
            ["b1"]
        );
        assert!(s.list_batches("b", Some("b4"), 2).expect("list").is_empty());
        assert!(s.list_batches("", None, 10).expect("list").is_empty());
        assert_eq!(s.batch("b4").expect("get").expect("b4").owner, "a");
        // A batch's output file is its owner's, whatever the row handed in says.
        let out = FileRow {
            id: "file-out-b0".into(),
            bytes: 3,
            created_at: 9,
            filename: "b0_output.jsonl".into(),
            purpose: "batch_output".into(),
            expires_at: None,
            owner: String::new(),
        };
        s.finish_batch("b0", Status::Cancelled, &[out], 9)
            .expect("finish");
        let published = s.file("file-out-b0").expect("get").expect("published");
        assert_eq!(published.owner, "a");
    }
}
